"""The contract between an algorithm and the harness that runs it.

An `Agent` is one training run of one algorithm on one task: it owns its environments,
networks, optimiser and random generators. The harness (`harness.run`) only calls the
methods below, which keeps logging, evaluation, checkpoints and the CLI identical for
every algorithm.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch


class Agent(abc.ABC):
    """One training run. Subclasses are registered with `algorithms.registry.register`."""

    #: Env steps that count against the budget (the paper's convention).
    counted_steps: int = 0
    #: Every env step taken, including steps a method spends outside its budget
    #: (GoRL's decoder-refinement collection). Equal to `counted_steps` for most methods.
    total_steps: int = 0

    @abc.abstractmethod
    def __init__(self, config: Any, task: str, seed: int, budget: int, device: torch.device) -> None:
        """Build envs and networks. `budget` is the number of counted env steps the run will take."""

    @abc.abstractmethod
    def train_iteration(self) -> dict[str, float]:
        """Collect one batch and update; returns scalar metrics named like `loss/policy`, `train/...`."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions in [-1, 1], shape (n, act_dim), for a batch of raw env observations."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: weights, optimiser, normaliser, envs, RNGs."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    def evaluation_draws_noise(self) -> bool:
        """Whether `act(obs, deterministic=True)` still draws noise, seeded by `begin_evaluation`
        (`eval_noise = "sample"`: FPO's and DPPO's official evaluation keeps the sampler's noise, and
        PPO and GoRL can evaluate their stochastic policy); False: the noise-free action. The
        report, which builds no agent, reads the same from the config's `eval_noise`."""

        return False

    def begin_evaluation(self) -> None:  # noqa: B027 - optional hook
        """Called before each evaluation's first `act`. An agent whose evaluation draws noise
        (`evaluation_draws_noise`) reseeds it here, so that an evaluation depends on the run's
        seed and counted steps only, whether it runs in training, after a resume or in
        `gorl-bench evaluate`."""

    def observe_evaluation(self, mean_return: float) -> None:  # noqa: B027 - optional hook
        """Called after every evaluation of the current policy with its mean return (GoRL keeps
        the best-evaluated encoder of each stage, as the official release does)."""

    def next_iteration_note(self) -> str:
        """What the next `train_iteration` does beyond one batch and update, in a few words, for
        the progress bar (GoRL: a decoder refit, minutes at full scale); "" when nothing."""

        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release envs and threads."""
