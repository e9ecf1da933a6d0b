"""The evaluation protocol: episodes of the evaluation policy on a separate env, at fixed points.

* Points: the counted env steps ceil(k * budget / points), k = 1..points, are thresholds: an
  evaluation runs after the first update that reaches one (an update that passes several evaluates
  once, so updates larger than the spacing give fewer than `points` evaluations); the score of a
  run is the mean return at its last point (the paper reports the last evaluation, not the best).
* Each point runs E envs of a separate evaluation env for one full episode each with
  `agent.act(obs, deterministic=True)`: the mean action for PPO and GoRL, unless their
  `eval_noise` is "sample" (FPO's and DPPO's default), which draws the policy's noise from a
  generator seeded by the run seed and the counted steps; more than MAX_PARALLEL_EPISODES
  episodes play in rounds of that many.
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
from envs.base import derived_seed, episode_rounds

# The evaluation env's seed is the run seed + this, apart from the training env's (the run seed).
# Any constant would do (every evaluation also resets it with `point_seed`); this one drew every
# evaluation recorded so far.
EVAL_SEED_OFFSET = 10_000
# Episodes played at once. A MuJoCo env holds about 1 MB (walker-walk: 1.1 GB for 1,000), so
# `evaluate --episodes 100000` in one vector env would not fit in memory; the release evaluates
# 128 at a time, and 1,024 keep the policy's batches large.
MAX_PARALLEL_EPISODES = 1024


def evaluation_points(budget: int, points: int) -> list[int]:
    """Counted env steps at which to evaluate; the last is the budget itself."""

    return sorted({math.ceil(k * budget / points) for k in range(1, points + 1)})


def point_seed(run_seed: int, point: int) -> int:
    """The evaluation env's reset seed at point `point`: independent of everything but these two."""

    return derived_seed(run_seed + EVAL_SEED_OFFSET, point)


def round_seed(reset_seed: int, round_index: int) -> int:
    """The reset seed of round `round_index` >= 1 of an evaluation larger than one vector env."""

    return derived_seed(reset_seed, round_index)


class EpisodeObserver(Protocol):
    def reset(self) -> None: ...

    def step(self, ended: np.ndarray) -> None:
        """After a step; `ended[i]`: sub-env i's episode ended at it (and the sub-env was reset)."""


class Evaluator:
    """Runs `episodes` episodes of a policy, one per env of its own vector env (in rounds when
    there are more than MAX_PARALLEL_EPISODES)."""

    def __init__(self, task: str, episodes: int, run_seed: int, backend: str = "auto") -> None:
        self.run_seed = run_seed
        self.episodes = episodes
        # Rounds of equal size: 1,500 episodes play as 2 x 750, not 1,024 and 476 in 1,024 envs.
        parallel = math.ceil(episodes / math.ceil(episodes / MAX_PARALLEL_EPISODES))
        self.env = envs.make(task, parallel, run_seed + EVAL_SEED_OFFSET, backend=backend)

    def evaluate(self, act: Callable[[np.ndarray], np.ndarray], point: int) -> tuple[float, float]:
        """(mean, std) of the first episode's return in every env, at evaluation point `point`."""

        returns = self.episode_returns(act, point_seed(self.run_seed, point))
        return float(returns.mean()), float(returns.std())

    def episode_returns(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        reset_seed: int,
        observer: EpisodeObserver | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """The returns of `episodes` episodes: the first episode of every env after a reset with
        `reset_seed`, and, beyond MAX_PARALLEL_EPISODES, of further rounds, each reset with a seed
        derived from (`reset_seed`, round). `observer` (a video recorder) sees the first round's
        reset and steps; `progress` is told the number of episodes that end at each step."""

        rounds = []
        with torch_threads(1):
            for index, keep in enumerate(episode_rounds(self.episodes, self.env.num_envs)):
                seed = reset_seed if index == 0 else round_seed(reset_seed, index)
                watch = observer if index == 0 else None
                rounds.append(self._play_round(act, seed, keep, watch, progress))
        return np.concatenate(rounds)

    def _play_round(
        self,
        act: Callable[[np.ndarray], np.ndarray],
        reset_seed: int,
        keep: int,
        observer: EpisodeObserver | None,
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        """The first episode's return in the first `keep` envs (a last round's envs beyond them
        still step, but are not waited for)."""

        obs, _ = self.env.reset(seed=reset_seed)
        if observer is not None:
            observer.reset()
        returns = np.zeros(obs.shape[0], dtype=np.float64)
        done = np.arange(obs.shape[0]) >= keep
        while not done.all():
            obs, reward, terminated, truncated, _ = self.env.step(act(obs))
            returns += np.where(done, 0.0, reward)
            ended = np.asarray(terminated) | np.asarray(truncated)
            if observer is not None:
                observer.step(ended)
            if progress is not None:
                progress(int((ended & ~done).sum()))
            done |= ended
        return returns[:keep]

    def close(self) -> None:
        self.env.close()
