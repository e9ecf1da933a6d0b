"""The evaluation protocol: deterministic episodes on a separate env, at fixed points of the budget.

* Points: `points` evaluations at counted env steps ceil(k * budget / points), k = 1..points;
  the score of a run is the mean return at its last point (the paper reports the last
  evaluation, not the best).
* Each point runs E envs of a separate evaluation env for one full episode each with
  `agent.act(obs, deterministic=True)`.
* Each point resets the evaluation env with its own seed, derived from the run seed and the
  point index only, so a score never depends on what ran before it: an uninterrupted run and
  a resumed one evaluate identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

import envs
from algorithms.onpolicy import torch_threads

EVAL_SEED_OFFSET = 10_000  # the evaluation env's seed is the run seed + this


def evaluation_points(budget: int, points: int) -> list[int]:
    """Counted env steps at which to evaluate; the last is the budget itself."""

    return sorted({math.ceil(k * budget / points) for k in range(1, points + 1)})


def point_seed(run_seed: int, point: int) -> int:
    """The evaluation env's reset seed at point `point`: independent of everything but these two."""

    return int(np.random.SeedSequence([run_seed + EVAL_SEED_OFFSET, point]).generate_state(1)[0])


class EpisodeObserver(Protocol):
    def reset(self) -> None: ...

    def step(self, ended: np.ndarray) -> None:
        """After a step; `ended[i]`: sub-env i's episode ended at it (and the sub-env was reset)."""


class Evaluator:
    """Runs `episodes` deterministic episodes in parallel, one per env of its own vector env."""

    def __init__(self, task: str, episodes: int, run_seed: int, backend: str = "auto") -> None:
        self.run_seed = run_seed
        self.env = envs.make(task, episodes, run_seed + EVAL_SEED_OFFSET, backend=backend)

    def evaluate(self, act: Callable[[np.ndarray], np.ndarray], point: int) -> tuple[float, float]:
        """(mean, std) of the first episode's return in every env, at evaluation point `point`."""

        returns = self.episode_returns(act, point_seed(self.run_seed, point))
        return float(returns.mean()), float(returns.std())

    def episode_returns(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        reset_seed: int,
        observer: EpisodeObserver | None = None,
    ) -> np.ndarray:
        """The return of the first episode in every env after a reset with `reset_seed`; `observer`
        (a video recorder) sees the reset and every step."""

        obs, _ = self.env.reset(seed=reset_seed)
        if observer is not None:
            observer.reset()
        n = obs.shape[0]
        returns = np.zeros(n, dtype=np.float64)
        done = np.zeros(n, dtype=bool)
        with torch_threads(1):
            while not done.all():
                obs, reward, terminated, truncated, _ = self.env.step(act(obs))
                returns += np.where(done, 0.0, reward)
                ended = np.asarray(terminated) | np.asarray(truncated)
                if observer is not None:
                    observer.step(ended)
                done |= ended
        return returns

    def close(self) -> None:
        self.env.close()
