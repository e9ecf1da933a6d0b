"""What every vector env of this package shares: spaces, seeding, action checks and episode-end info.

Conventions (the same for every backend):

* observations: float32 `(num_envs, obs_dim)`; actions: `(num_envs, act_dim)` in [-1, 1],
  clipped to that range (NaN or inf raise `ValueError`); rewards: float32 `(num_envs,)`.
* SAME_STEP autoreset: when a sub-env's episode ends, `step` returns the *reset* observation
  in its row, and the last observation of the ended episode in `info["final_obs"][i]`
  (float32 `(num_envs, obs_dim)`, rows of envs that did not end are zero) with the mask
  `info["_final_obs"]`. Both keys are present only on steps where some episode ended.
* seeding: `(task, num_envs, seed)` fixes every trajectory. The dm_control and gym backends
  give sub-env i the randomness of `SeedSequence(seed).spawn(num_envs)[i]`; the toy task draws
  the whole batch from one generator seeded with `seed`. `reset(seed=None)` re-seeds with the
  construction seed.
* `get_state()` returns a picklable snapshot; `set_state(snapshot)` continues bit-identically.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from harness.errors import UserError


def sub_seeds(seed: int, num_envs: int) -> list[np.random.SeedSequence]:
    """One independent, reproducible seed sequence per sub-env."""

    return np.random.SeedSequence(seed).spawn(num_envs)


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed drawn from `SeedSequence(entropy)`: independent streams for (seed, stage),
    (seed, evaluation point), (seed, round) ... that depend on nothing else."""

    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def episode_rounds(episodes: int, parallel: int) -> list[int]:
    """How many of `episodes` episodes each round plays when `parallel` envs play one each at a
    time: full rounds, then the rest (whose surplus envs step unwatched)."""

    return [min(parallel, episodes - start) for start in range(0, episodes, parallel)]


def check_num_envs(num_envs: int) -> None:
    if not isinstance(num_envs, int | np.integer) or num_envs < 1:
        raise UserError(f"num_envs must be a positive integer, got {num_envs!r}.")


class VectorEnv(gymnasium.vector.VectorEnv):
    """Base class: fixed-size float32 Box spaces, action checking and the final-obs info."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, task: str, num_envs: int, obs_dim: int, act_dim: int, seed: int) -> None:
        self.task = task
        self.num_envs = num_envs
        self.seed = seed
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.single_action_space = gymnasium.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    @property
    def obs_dim(self) -> int:
        return self.single_observation_space.shape[0]

    @property
    def act_dim(self) -> int:
        return self.single_action_space.shape[0]

    def checked_actions(self, actions: Any) -> np.ndarray:
        """Actions as float64 `(num_envs, act_dim)` clipped to [-1, 1]; bad shapes or values raise."""

        a = np.asarray(actions, dtype=np.float64)
        expected = (self.num_envs, self.act_dim)
        if a.shape != expected:
            raise ValueError(f"{self.task}: actions must have shape {expected}, got {a.shape}.")
        if not np.isfinite(a).all():
            rows = np.flatnonzero(~np.isfinite(a).all(axis=1))
            raise ValueError(f"{self.task}: actions contain NaN or inf (sub-envs {rows.tolist()}).")
        return np.clip(a, -1.0, 1.0)

    def end_info(self, final_obs: np.ndarray, ended: np.ndarray) -> dict[str, np.ndarray]:
        """gymnasium's SAME_STEP info keys for the rows in `ended` (empty if none ended)."""

        if not ended.any():
            return {}
        return {"final_obs": final_obs, "_final_obs": ended.copy()}
