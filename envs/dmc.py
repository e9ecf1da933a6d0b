"""The `dm_control` backend: a loop over one dm_control suite environment per sub-env.

This is the reference every other DMC backend is tested against, and it runs every suite
task. Per sub-env it keeps the `control.Environment` from `suite.load`, whose task draws its
randomness from its own seeded `np.random.RandomState`.

Episodes: dm_control envs are loaded without a time limit and this class truncates every
episode after `tasks.DMC_EPISODE_STEPS` (1000) control steps itself, which is what every
suite task's default time limit amounts to (lqr, the one suite domain without a limit, gets
the same). A dm_control termination (discount 0) is reported as `terminated`.

Actions in [-1, 1] map affinely onto the action spec's bounds; dimensions that already have
bounds [-1, 1] (every paper task) or that are effectively unbounded (lqr's +-1e10) pass through
unchanged, so the values reaching MuJoCo are exactly the agent's.

Snapshots (`get_state`) hold per sub-env the MuJoCo integration state (`mj_getState` with
`mjSTATE_INTEGRATION`, which keeps `qacc_warmstart`), the model fields the task changed since
loading (finger's target site, fish's target geom, ...) or drew at loading (lqr's stiffness),
the task object's attributes (its RandomState included) and the step counter. lqr draws its
model when it is loaded, so its `reset(seed=...)` re-draws the initial state but not the model.

A step after which MuJoCo has raised a new warning (dm_control's `PhysicsError`: a NaN, inf or
huge position, velocity or acceleration, a full contact buffer) raises `SimulationDiverged`, a
`FloatingPointError`: the run stops as a diverged one, as on a non-finite loss.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from envs import tasks
from envs.base import VectorEnv, sub_seeds

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering backend is needed, and none may exist

import mujoco  # noqa: E402
from dm_control import suite  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.suite import common  # noqa: E402

from envs.physics_state import get_integration_state, set_integration_state  # noqa: E402

# MuJoCo's own warnings (e.g. an unstable simulation) would go to MUJOCO_LOG.TXT in the current
# directory; importing dm_control installs a handler that sends them to absl logging instead.


class SimulationDiverged(FloatingPointError):
    """A MuJoCo step of a sub-env raised a warning: its simulation is no longer valid."""


class _DropSettotalmassDeprecation(logging.Filter):
    """dm_control's cheetah XML uses `settotalmass`; the compiler's deprecation notice comes per env."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'settotalmass' is deprecated" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropSettotalmassDeprecation())

# Bounds at least this wide are treated as unbounded: the action passes through unscaled.
_UNBOUNDED = 1e6


def _seed_words(seed_sequence: np.random.SeedSequence) -> np.ndarray:
    """128 bits from a seed sequence, the form `np.random.RandomState(...)` and `.seed(...)` accept."""

    return seed_sequence.generate_state(4)


# Every suite domain's skybox is a builtin 800 x 4800 RGB texture: 11 MB of each sub-env's MjModel,
# which would make 2048 sub-envs (the `paper` preset) need ~25 GB. Textures are only drawn, never
# simulated, so sub-envs are loaded with 1 x 6 skyboxes; `tests/test_envs_parity.py` checks that
# trajectories stay bit-identical to those of the suite's own models.
_SKYBOX_ASSET = "./common/skybox.xml"
_SKYBOX_TEXTURE = re.compile(rb'<texture[^>]*type="skybox"[^>]*>')
_TEXTURE_SIZE = re.compile(rb'(width|height)="\d+"')


def _shrink_skybox(xml: bytes) -> bytes:
    return _SKYBOX_TEXTURE.sub(lambda texture: _TEXTURE_SIZE.sub(rb'\1="1"', texture.group(0)), xml)


_LOADING = threading.Lock()


@contextlib.contextmanager
def _small_skyboxes() -> Iterator[None]:
    """While loading: the shared skybox asset and every domain XML read with 1 x 1 skybox faces."""

    asset, read_model = common.ASSETS[_SKYBOX_ASSET], common.read_model
    common.ASSETS[_SKYBOX_ASSET] = _shrink_skybox(asset)
    common.read_model = lambda filename: _shrink_skybox(read_model(filename))
    try:
        yield
    finally:
        common.ASSETS[_SKYBOX_ASSET], common.read_model = asset, read_model


def load(task: str, seed_sequence: np.random.SeedSequence, small_skybox: bool = True) -> control.Environment:
    """A dm_control suite env for canonical `domain-task`, with its own seeded RandomState.

    `small_skybox=False` keeps the suite's full-size skybox texture (for rendering).
    """

    domain, name = task.split("-", 1)
    random = np.random.RandomState(_seed_words(seed_sequence))
    # The small skyboxes patch dm_control module globals while one env loads; loads take turns so
    # that a load on another thread never sees the patch half applied or meant for another load.
    with _LOADING, _small_skyboxes() if small_skybox else contextlib.nullcontext():
        env = suite.load(domain, name, task_kwargs={"random": random, "time_limit": float("inf")})
    if os.environ.get("MUJOCO_GL") == "disable":
        env.physics.__class__ = _without_rendering(type(env.physics))
    return env


@functools.cache
def _without_rendering(physics_class: type) -> type:
    """`physics_class` with no rendering contexts, for processes without a rendering backend.

    Reading dm_control's `Physics.contexts` creates a rendering context, which fails without
    one. quadruped-escape reads it at every reset to re-upload its new terrain for drawing (it
    skips the upload when there are none), so without this the task could not run at all.
    """

    return type(physics_class.__name__, (physics_class,), {"contexts": None})


def flatten(observation: dict[str, Any], out: np.ndarray) -> None:
    """dm_control's observation dict, each entry flattened, in the dict's order, into `out`."""

    start = 0
    for value in observation.values():
        flat = np.asarray(value).ravel()
        out[start : start + flat.size] = flat
        start += flat.size


def observation_size(env: control.Environment) -> int:
    return sum(int(np.prod(spec.shape)) for spec in env.observation_spec().values())


def _model_arrays(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every numpy field of an MjModel, by name (views into the model)."""

    fields = {}
    for name in dir(model):
        if not name.startswith("_"):
            value = getattr(model, name)
            if isinstance(value, np.ndarray):
                fields[name] = value
    return fields


class DMCVectorEnv(VectorEnv):
    """N dm_control suite envs stepped one after another."""

    def __init__(self, task: str, num_envs: int, seed: int) -> None:
        self.envs = [load(task, s) for s in sub_seeds(seed, num_envs)]
        spec = self.envs[0].action_spec()
        super().__init__(task, num_envs, observation_size(self.envs[0]), spec.shape[0], seed)
        low, high = spec.minimum * np.ones(spec.shape), spec.maximum * np.ones(spec.shape)
        # Only dimensions with real, non-unit bounds are rescaled: a = -1 + (a + 1) is not always a.
        self.rescaled = ((low != -1.0) | (high != 1.0)) & (high - low < _UNBOUNDED)
        self.low, self.high = low, high
        self.physics = [env.physics for env in self.envs]
        # The model as loaded with a fixed seed: a snapshot stores the fields in which a sub-env's
        # model differs from it, i.e. those a task changed since loading (finger's target site) and
        # those it drew at loading (lqr's joint stiffness), so it restores into an env of any seed.
        reference = load(task, np.random.SeedSequence(0))
        self.pristine_model = {k: v.copy() for k, v in _model_arrays(reference.physics.model.ptr).items()}
        self.steps = np.zeros(num_envs, np.int64)
        self.obs = np.zeros((num_envs, self.obs_dim), np.float32)

    def to_control(self, actions: np.ndarray) -> np.ndarray:
        """Checked actions in [-1, 1] -> MuJoCo controls."""

        if not self.rescaled.any():
            return actions
        scaled = self.low + (actions + 1.0) * (self.high - self.low) / 2
        return np.where(self.rescaled, scaled, actions)

    # --- episodes -----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        seed_sequences = sub_seeds(self.seed if seed is None else seed, self.num_envs)
        for env, seed_sequence in zip(self.envs, seed_sequences, strict=True):
            env.task.random.seed(_seed_words(seed_sequence))
        for i in range(self.num_envs):
            self.reset_env(i)
        return self.obs.copy(), {}

    def reset_env(self, i: int) -> None:
        """Start a new episode in sub-env i (dm_control's own task initialisation); writes obs[i]."""

        time_step = self.envs[i].reset()
        self.steps[i] = 0
        flatten(time_step.observation, self.obs[i])

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        control_ = self.to_control(self.checked_actions(actions))
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        for i, env in enumerate(self.envs):
            try:
                time_step = env.step(control_[i])
            except control.PhysicsError as error:
                raise self.diverged(i, str(error)) from None
            rewards[i] = time_step.reward
            flatten(time_step.observation, self.obs[i])
            terminated[i] = time_step.last() and time_step.discount == 0
        self.steps += 1
        return self.finish_step(rewards, terminated)

    def diverged(self, i: int, detail: str) -> SimulationDiverged:
        """The error of a step after which sub-env i's simulation is invalid (`detail`: which warnings)."""

        return SimulationDiverged(
            f"the MuJoCo simulation of {self.task} diverged in sub-env {i} at step {self.steps[i] + 1} "
            f"of its episode ({detail.rstrip('.')})"
        )

    def finish_step(
        self, rewards: np.ndarray, terminated: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Truncate at the episode length, autoreset ended sub-envs and return gymnasium's 5-tuple."""

        truncated = (self.steps >= tasks.DMC_EPISODE_STEPS) & ~terminated
        ended = terminated | truncated
        final_obs = np.zeros_like(self.obs)
        for i in np.flatnonzero(ended):
            final_obs[i] = self.obs[i]
            self.reset_env(i)
        return self.obs.copy(), rewards, terminated, truncated, self.end_info(final_obs, ended)

    # --- snapshots ----------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {
            "steps": self.steps.copy(),
            "obs": self.obs.copy(),
            "envs": [self._env_state(i) for i in range(self.num_envs)],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["envs"]) != self.num_envs:
            raise ValueError(f"snapshot of {len(state['envs'])} sub-envs, this env has {self.num_envs}")
        self.steps[:] = state["steps"]
        self.obs[:] = state["obs"]
        for i, env_state in enumerate(state["envs"]):
            self._set_env_state(i, env_state)

    def _changed_model_fields(self, model: mujoco.MjModel) -> dict[str, np.ndarray]:
        current = _model_arrays(model)
        return {k: v.copy() for k, v in current.items() if not np.array_equal(v, self.pristine_model[k])}

    def _env_state(self, i: int) -> dict[str, Any]:
        physics = self.physics[i]
        return {
            "integration": get_integration_state(physics.model.ptr, physics.data.ptr),
            "model": self._changed_model_fields(physics.model.ptr),
            "task": copy.deepcopy(self.envs[i].task.__dict__),
        }

    def _set_env_state(self, i: int, state: dict[str, Any]) -> None:
        physics = self.physics[i]
        model, data = physics.model.ptr, physics.data.ptr
        arrays = _model_arrays(model)
        for name in set(self._changed_model_fields(model)) | set(state["model"]):
            arrays[name][...] = state["model"].get(name, self.pristine_model[name])
        set_integration_state(model, data, state["integration"])
        self.envs[i].task.__dict__.update(copy.deepcopy(state["task"]))
