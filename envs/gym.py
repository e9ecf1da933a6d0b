"""`gym:<id>`: any installed gymnasium env with a Box action space, under this package's conventions.

One `gymnasium.make(id)` per sub-env, stepped in a loop. Actions in [-1, 1] are mapped
affinely onto the env's action bounds (unbounded dimensions pass through), observations are
flattened to float32. Episode ends (termination or the env's own time limit) follow the
SAME_STEP autoreset convention of `envs.base`.

Seeding: `reset(seed)` resets sub-env i with an integer drawn from the i-th spawned seed
sequence; later episodes continue each sub-env's own generator. Snapshots pickle the
sub-envs (wrappers included: the time limit's step count), which restores classic-control
envs exactly. A MuJoCo env pickles as a freshly constructed one (gymnasium's `EzPickle`), so
its simulation data (the whole MjData) and its generator are stored beside the pickle and put
back after it.
"""

from __future__ import annotations

import copy
import pickle
import zlib
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from envs.base import VectorEnv, sub_seeds
from envs.physics_state import set_integration_state
from envs.tasks import GYM_PREFIX
from harness.errors import UserError


class GymVectorEnv(VectorEnv):
    def __init__(self, task: str, num_envs: int, seed: int) -> None:
        env_id = task[len(GYM_PREFIX) :]
        first = make_one(env_id)  # checked before the others are made
        action_space = first.action_space
        if not isinstance(action_space, gymnasium.spaces.Box):
            first.close()
            raise UserError(f"{task}: only continuous (Box) action spaces are supported, got {action_space}.")
        self.envs = [first] + [make_one(env_id) for _ in range(num_envs - 1)]
        obs_dim = gymnasium.spaces.flatdim(self.envs[0].observation_space)
        super().__init__(task, num_envs, obs_dim, int(np.prod(action_space.shape)), seed)
        self.action_shape = action_space.shape
        self.low = action_space.low.astype(np.float64).ravel()
        self.high = action_space.high.astype(np.float64).ravel()
        self.bounded = np.isfinite(self.low) & np.isfinite(self.high)
        self.obs = np.zeros((num_envs, obs_dim), np.float32)

    def _flat(self, observation: Any) -> np.ndarray:
        return gymnasium.spaces.flatten(self.envs[0].observation_space, observation)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        for i, seed_sequence in enumerate(sub_seeds(self.seed if seed is None else seed, self.num_envs)):
            observation, _ = self.envs[i].reset(seed=int(seed_sequence.generate_state(1)[0]))
            self.obs[i] = self._flat(observation)
        return self.obs.copy(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        a = self.checked_actions(actions)
        a = np.where(self.bounded, self.low + (a + 1.0) * (self.high - self.low) / 2, a)
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        final_obs = np.zeros_like(self.obs)
        for i, env in enumerate(self.envs):
            action = a[i].reshape(self.action_shape).astype(env.action_space.dtype)
            observation, reward, terminated[i], truncated[i], _ = env.step(action)
            rewards[i] = reward
            self.obs[i] = self._flat(observation)
            if terminated[i] or truncated[i]:
                final_obs[i] = self.obs[i]
                observation, _ = env.reset()
                self.obs[i] = self._flat(observation)
        ended = terminated | truncated
        return self.obs.copy(), rewards, terminated, truncated, self.end_info(final_obs, ended)

    def get_state(self) -> dict[str, Any]:
        return {
            "envs": pickle.dumps(self.envs),
            "mujoco": [_mujoco_state(env.unwrapped) for env in self.envs],
            "obs": self.obs.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        for env in self.envs:
            env.close()
        self.envs = pickle.loads(state["envs"])
        # (Snapshots written before MuJoCo states were stored hold classic-control envs only.)
        for env, mujoco_state in zip(self.envs, state.get("mujoco") or [None] * self.num_envs, strict=True):
            if mujoco_state is not None:
                _set_mujoco_state(env.unwrapped, mujoco_state)
        self.obs[:] = state["obs"]

    def close(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def make_one(env_id: str) -> gymnasium.Env:
    """`gymnasium.make(env_id)`; an env whose optional dependency is missing, or a registered id
    that this gymnasium can no longer build (`Hopper-v2`: moved to gymnasium-robotics), is a
    `UserError` that passes on gymnasium's message, which names the package or the version to use."""

    try:
        return gymnasium.make(env_id)
    except (gymnasium.error.DependencyNotInstalled, ImportError) as error:
        raise UserError(f"cannot make {GYM_PREFIX}{env_id}: {error}") from None


def _mujoco_state(env: gymnasium.Env) -> dict[str, Any] | None:
    """What a pickle of a gymnasium MuJoCo env loses: its simulation data and its generator.

    The whole MjData, not only the integration state: after `mj_step` the derived quantities
    (body positions, centres of mass) are those of the step's start, and Ant and Humanoid read
    them before their next step (the x-velocity reward); recomputing them from the restored
    state changed the first reward after a resume. Compressed, as most of it is an empty arena
    (~700 kB -> ~45 kB for Ant, ~5 ms).
    """

    if not isinstance(env, MujocoEnv):
        return None
    data = zlib.compress(pickle.dumps(copy.copy(env.data)), 1)
    return {"data": data, "np_random": copy.deepcopy(env.np_random)}


def _set_mujoco_state(env: MujocoEnv, state: dict[str, Any]) -> None:
    if "data" in state:
        mujoco.mj_copyData(env.data, env.model, pickle.loads(zlib.decompress(state["data"])))
    else:  # a snapshot written before whole MjData copies were stored
        set_integration_state(env.model, env.data, state["integration"])
    env.np_random = copy.deepcopy(state["np_random"])
