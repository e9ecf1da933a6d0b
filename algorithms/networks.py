"""Plain MLPs for actors and critics, with the two initialisations the references use.

* `lecun`: LeCun-uniform weights (variance 1 / fan_in) and zero biases, the Flax/Brax
  default and therefore what the official GoRL/FPO code and MuJoCo Playground use.
* `orthogonal`: orthogonal weights with gain sqrt(2) on hidden layers and a chosen gain on
  the output layer (CleanRL: 0.01 for the policy mean so initial actions are near zero, 1.0
  for the value), zero biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["silu", "tanh", "relu", "elu"]
Init = Literal["lecun", "orthogonal"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def lecun_uniform_(linear: nn.Linear, generator: torch.Generator) -> None:
    """LeCun-uniform weights (variance 1 / fan_in, which keeps activations O(1) through the depth)
    and zero biases, drawn from `generator`."""

    bound = math.sqrt(3.0 / linear.in_features)  # uniform(-b, b) has variance b^2 / 3 = 1 / fan_in
    nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
    nn.init.zeros_(linear.bias)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: Activation = "silu",
    init: Init = "lecun",
    out_gain: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """in_dim -> hidden[0] -> ... -> hidden[-1] -> out_dim, activation between layers, linear output.

    `out_gain` scales the output layer's initial weights (only used by `orthogonal`; LeCun
    initialisation has no gain, as in Brax). Weights are drawn from `generator` (a CPU
    generator owned by the agent), so they do not depend on torch's global RNG (`nn.Linear`'s own
    initialisation still draws from it before being overwritten).
    """

    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        if init == "lecun":
            lecun_uniform_(linear, generator)
        else:
            nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2.0), generator=generator)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
