"""`toy-bimodal`: a tiny vectorised task whose best action distribution has two separated modes.

Every step shows a fresh context: an angle theta ~ U[0, 2 pi), observed as
`(cos theta, sin theta)`. The two modes are the actions `m+ = R (cos theta, sin theta)` and
`m- = -m+`, and the reward of an action `a` in [-1, 1]^2 is a Gaussian bump around the
nearer mode:

    r(a) = exp(-min(|a - m+|, |a - m-|)^2 / (2 w^2))    in [0, 1]

Episodes last T steps and end truncated (never terminated). So

* a policy that picks either mode (any mixture of the two, e.g. a generative policy that
  covers both) earns 1 per step: the optimal return is T;
* a Gaussian policy whose mean averages the two modes sits at a = 0, |a - m| = R, and
  earns exp(-R^2 / (2 w^2)) per step;
* the score range (worst, best) is (0, T).

| task | R | w | T | optimal return | averaging return |
|---|---|---|---|---|---|
| `toy-bimodal` | 0.75 | 0.25 | 16 | 16 | 16 exp(-4.5) = 0.18 |
| `toy-bimodal-easy` | 0.75 | 0.5 | 16 | 16 | 16 exp(-1.125) = 5.19 |

The modes are far apart relative to w, so a Gaussian whose spread covers both is not pulled
to their average for long and PPO breaks the symmetry quickly. Measured with the `ppo` `cpu`
preset (64 envs x 64 steps per update, greedy evaluation, 3 seeds): `toy-bimodal-easy` goes
from 5.2 to 12-15 in 10 updates (41k steps), `toy-bimodal` from 0.18 to 15-15.7 in 13
updates (53k steps). One step of N envs is a handful of numpy operations (thousands of
episodes per second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.base import VectorEnv


@dataclass(frozen=True)
class ToySpec:
    radius: float  # R: distance of each mode from the origin
    width: float  # w: standard deviation of the reward bump around a mode
    episode_steps: int  # T
    summary: str

    @property
    def score_range(self) -> tuple[float, float]:
        return (0.0, float(self.episode_steps))

    @property
    def averaging_return(self) -> float:
        """Return of the policy that always plays a = 0, the average of the two modes."""

        return self.episode_steps * math.exp(-(self.radius**2) / (2 * self.width**2))


TASKS: dict[str, ToySpec] = {
    "toy-bimodal": ToySpec(0.75, 0.25, 16, "two reward modes; averaging them earns 1% of the best"),
    "toy-bimodal-easy": ToySpec(0.75, 0.5, 16, "toy-bimodal with wide reward bumps (averaging earns 32%)"),
}


def modes(obs: np.ndarray, spec: ToySpec) -> tuple[np.ndarray, np.ndarray]:
    """The two optimal actions (m+, m-) for observations `obs` of shape (..., 2)."""

    plus = spec.radius * np.asarray(obs, dtype=np.float64)
    return plus, -plus


def reward(obs: np.ndarray, actions: np.ndarray, spec: ToySpec) -> np.ndarray:
    """Per-step reward of `actions` (..., 2) in the contexts `obs` (..., 2)."""

    plus, minus = modes(obs, spec)
    d2 = np.minimum(((actions - plus) ** 2).sum(-1), ((actions - minus) ** 2).sum(-1))
    return np.exp(-d2 / (2 * spec.width**2))


class ToyBimodalEnv(VectorEnv):
    """The vectorised toy task; one numpy Generator drives all contexts of the batch."""

    def __init__(self, task: str, num_envs: int, seed: int) -> None:
        super().__init__(task, num_envs, obs_dim=2, act_dim=2, seed=seed)
        self.spec = TASKS[task]
        self.rng = np.random.default_rng(seed)
        self.obs = np.zeros((num_envs, 2), np.float64)
        self.steps = np.zeros(num_envs, np.int64)

    def _draw_contexts(self, rows: np.ndarray | slice) -> None:
        """Fresh contexts for the sub-envs selected by `rows` (a slice or a boolean mask)."""

        theta = self.rng.uniform(0.0, 2 * np.pi, size=len(self.obs[rows]))
        self.obs[rows] = np.stack([np.cos(theta), np.sin(theta)], axis=-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.rng = np.random.default_rng(self.seed if seed is None else seed)
        self.steps[:] = 0
        self._draw_contexts(slice(None))
        return self.obs.astype(np.float32), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = self.checked_actions(actions)
        rewards = reward(self.obs, a, self.spec).astype(np.float32)
        self.steps += 1
        truncated = self.steps >= self.spec.episode_steps
        # Every step shows a fresh context: the ended episodes' would-be next context is their
        # final obs, and their new episodes start from yet another one.
        self._draw_contexts(slice(None))
        final_obs = np.where(truncated[:, None], self.obs, 0.0).astype(np.float32)
        self._draw_contexts(truncated)
        self.steps[truncated] = 0
        terminated = np.zeros(self.num_envs, bool)
        info = self.end_info(final_obs, truncated)
        return self.obs.astype(np.float32), rewards, terminated, truncated, info

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "obs": self.obs.copy(), "steps": self.steps.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.obs[:] = state["obs"]
        self.steps[:] = state["steps"]
