"""Building blocks shared by every generative policy in this project.

GoRL's decoders (flow matching and diffusion, `algorithms.decoders`) and the FPO/DPPO
policies all need the same thing: a network that looks at an observation, a noisy action
x_t and a time t in [0, 1], and predicts a vector in action space (a velocity for flow
matching, a noise residual for diffusion). This module holds that network and the
flow-matching path, so that the methods differ only in what they do with its output.

Time convention (used everywhere in this project, the official release's "reverse" one,
shared with the FPO code base):

    x_t = t * eps + (1 - t) * a,   t in [0, 1],   eps ~ N(0, I)

so t = 1 is pure noise (the latent) and t = 0 is the action. The paper (App. C.2) writes
the same straight path with time running the other way, a_t = (1 - t) eps + t a; the two
differ only by t -> 1 - t and a sign of the velocity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from algorithms.networks import lecun_uniform_

#: Frequencies of the time embedding: cos/sin of t * 2^k for k = 0..3 (official code release).
TIME_EMBEDDING_FREQUENCIES = 4


def time_embedding(t: Tensor) -> Tensor:
    """Sinusoidal embedding of times t of shape (B,) or (B, 1) -> (B, 2 * TIME_EMBEDDING_FREQUENCIES).

    Low frequencies only (periods 2*pi down to pi/4): t lives in [0, 1], so these separate
    nearby times without aliasing, and the network gets a smooth input instead of a raw scalar.
    """

    t = t.reshape(-1, 1)
    scales = 2.0 ** torch.arange(TIME_EMBEDDING_FREQUENCIES, dtype=t.dtype, device=t.device)
    angles = t * scales
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ConditionalMLP(nn.Module):
    """MLP f(obs, x_t, t) -> R^x_dim on concat[obs, x_t, time_embedding(t)].

    `obs` is expected already normalised by the caller. SiLU hidden layers with LeCun-uniform
    weights and zero biases (official code's MLP); the final layer is zero-initialised, so a
    fresh network outputs exactly 0 for every input: a zero velocity or a zero noise residual,
    which is what makes a fresh GoRL decoder the identity map. `output_scale` multiplies the
    output (1.0 for the FM decoder, 0.25 for the diffusion decoder and the FPO/DPPO policies in
    the official release); it sets the effective learning rate of the output layer.
    """

    def __init__(
        self,
        obs_dim: int,
        x_dim: int,
        hidden_width: int,
        depth: int,
        output_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(obs_dim, x_dim, hidden_width, depth) < 1:
            raise ValueError(
                f"obs_dim, x_dim, hidden_width and depth must be >= 1, got "
                f"{obs_dim}, {x_dim}, {hidden_width}, {depth}"
            )
        self.output_scale = float(output_scale)
        widths = [self._input_width(obs_dim, x_dim)] + [hidden_width] * depth
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            linear = nn.Linear(fan_in, fan_out)
            lecun_uniform_(linear, generator)
            layers += [linear, nn.SiLU()]
        head = nn.Linear(hidden_width, x_dim)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(*layers, head)

    @staticmethod
    def _input_width(obs_dim: int, x_dim: int) -> int:
        return obs_dim + x_dim + 2 * TIME_EMBEDDING_FREQUENCIES

    @classmethod
    def parameter_count(cls, obs_dim: int, x_dim: int, hidden_width: int, depth: int) -> int:
        """Weights and biases of such a network, counted without building it (memory checks)."""

        first = (cls._input_width(obs_dim, x_dim) + 1) * hidden_width
        return first + (depth - 1) * (hidden_width + 1) * hidden_width + (hidden_width + 1) * x_dim

    def forward(self, obs: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """obs (B, obs_dim), x_t (B, x_dim), t (B,) or (B, 1) -> (B, x_dim)."""

        return self.output_scale * self.net(torch.cat([obs, x_t, time_embedding(t)], dim=-1))

    def on_grid(self, obs: Tensor, times: Sequence[float]) -> Callable[[Tensor, int], Tensor]:
        """`forward(obs, x, times[i])` as `f(x, i)`, for one batch of obs and a fixed time grid.

        A sampler calls the network once per grid time on the same obs: the obs and time terms
        of the first layer (a sum over the concatenated input) are computed once here, so each
        call is the x term and the hidden layers, about half the small tensor ops of `forward`
        (which is what a 64-env batch costs on a CPU). Equal to `forward` up to float rounding:
        the first layer's sum is split in three. Mirrors the layer stack built in `__init__`
        (Linear + SiLU, then the Linear head); `tests/test_decoders.py` checks the two agree.
        """

        first, *later = [layer for layer in self.net if isinstance(layer, nn.Linear)]
        obs_dim = obs.shape[1]
        x_dim = first.in_features - obs_dim - 2 * TIME_EMBEDDING_FREQUENCIES
        w_obs, w_x, w_t = first.weight.split([obs_dim, x_dim, 2 * TIME_EMBEDDING_FREQUENCIES], dim=1)
        t = torch.tensor(list(times), dtype=obs.dtype, device=obs.device)
        time_terms = torch.addmm(first.bias, time_embedding(t), w_t.T)  # (len(times), hidden)
        obs_and_time = (obs @ w_obs.T).unsqueeze(0) + time_terms.unsqueeze(1)  # (len(times), B, hidden)
        w_x = w_x.T
        # (bias, transposed weight) of the later layers: plain addmm calls skip nn.Module dispatch.
        hidden = [(layer.bias, layer.weight.T) for layer in later[:-1]]
        head_bias, head_weight = later[-1].bias, later[-1].weight.T

        def at(x: Tensor, i: int) -> Tensor:
            h = F.silu(torch.addmm(obs_and_time[i], x, w_x))
            for bias, weight in hidden:
                h = F.silu(torch.addmm(bias, h, weight))
            return self.output_scale * torch.addmm(head_bias, h, head_weight)

        return at


def flow_path(actions: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Point x_t on the straight path from the action (t = 0) to the noise (t = 1), and its velocity.

    Returns (x_t, dx_t/dt) = (t * noise + (1 - t) * actions, noise - actions). Conditional flow
    matching regresses the network on this velocity; its minimiser is the marginal velocity
    field, whose ODE transports N(0, I) at t = 1 onto the action distribution at t = 0.
    """

    t = t.reshape(-1, 1)
    return t * noise + (1.0 - t) * actions, noise - actions


def euler_times(steps: int) -> list[float]:
    """t_k = k / steps for k = steps..1: the start time of each Euler step from t = 1 down to 0."""

    dt = 1.0 / steps
    return [k * dt for k in range(steps, 0, -1)]


def integrate_flow(velocity: ConditionalMLP, obs: Tensor, x1: Tensor, steps: int) -> Tensor:
    """Deterministic Euler integration of dx/dt = velocity(obs, x, t) from t = 1 (x1) down to t = 0.

    Uses the uniform grid t_k = k / steps, evaluating the velocity at the start of each step
    (official code: `linspace(1, 0, steps + 1)`). A zero velocity returns x1 unchanged.
    """

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x1
    dt = 1.0 / steps
    velocity_at = velocity.on_grid(obs, euler_times(steps))
    for i in range(steps):
        x = x - dt * velocity_at(x, i)
    return x
