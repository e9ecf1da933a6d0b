"""Vectorised environments: DeepMind Control (dm_control loop or batched `fast`), toy tasks, gym ids.

    env = envs.make("walker-walk", num_envs=64, seed=0)    # backend "auto": fast where it exists
    obs, info = env.reset()
    obs, reward, terminated, truncated, info = env.step(actions)   # actions in [-1, 1]

Every env follows the conventions of `envs.base` (float32 batches, SAME_STEP autoreset with
`info["final_obs"]`, reproducible seeding, bit-identical `get_state`/`set_state`). Task names
and their helpers live in `envs.tasks`; the backends in `envs.dmc` (dm_control loop, every
suite task), `envs.fast` (batched MuJoCo stepping for `FAST_TASKS`), `envs.toy` and `envs.gym`.
"""

from __future__ import annotations

import functools
import os

import gymnasium

from envs.base import check_num_envs
from envs.tasks import (
    ALIASES,
    FAST_TASKS,
    GYM_PREFIX,
    PAPER_TASKS,
    canonical_task,
    describe_tasks,
    is_dmc,
    max_episode_steps,
    normalised_score,
    score_range,
    task_names,
)
from harness.errors import UserError

# dm_control picks a rendering backend on import; simulation needs none.
os.environ.setdefault("MUJOCO_GL", "disable")

BACKENDS = ("auto", "fast", "dm_control")

__all__ = [
    "ALIASES",
    "BACKENDS",
    "FAST_TASKS",
    "PAPER_TASKS",
    "canonical_task",
    "check_backend",
    "check_installed",
    "describe_tasks",
    "dimensions",
    "make",
    "max_episode_steps",
    "normalised_score",
    "score_range",
    "task_names",
]


def check_backend(task: str, backend: str) -> None:
    """Refuse a backend that does not exist or that `task` (canonical) has no implementation for."""

    if backend not in BACKENDS:
        raise UserError(f"Unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}.")
    if backend == "fast" and task not in FAST_TASKS:
        others = "'dm_control' or 'auto'" if is_dmc(task) else "'auto'"
        raise UserError(
            f"{task} has no fast backend; use the backend (a config's env_backend) {others}. "
            f"Fast tasks: {', '.join(FAST_TASKS)}."
        )
    if backend == "dm_control" and not is_dmc(task):
        raise UserError(f"{task} is not a dm_control task; use the backend (a config's env_backend) 'auto'.")


def check_installed(task: str) -> None:
    """Refuse a `gym:<id>` task (canonical) whose optional dependency (Box2D, say) is not installed.

    Gymnasium registers such ids anyway and fails only when one is made, so one env is made and
    closed here: a run checks this before it creates its directory or its MLflow run.
    """

    if task.startswith(GYM_PREFIX):
        from envs.gym import make_one

        make_one(task[len(GYM_PREFIX) :]).close()


def make(task: str, num_envs: int, seed: int, backend: str = "auto") -> gymnasium.vector.VectorEnv:
    """A vector env of `num_envs` copies of `task`, seeded by `seed`, reset with that seed.

    `backend` applies to dm_control tasks: "fast" (batched stepping, `FAST_TASKS` only),
    "dm_control" (a loop over dm_control envs, every suite task) or "auto" (fast where it
    exists). Toy and gym tasks have one implementation each and accept "auto" only.
    """

    task = canonical_task(task)
    check_num_envs(num_envs)
    check_backend(task, backend)

    if task.startswith(GYM_PREFIX):
        from envs.gym import GymVectorEnv as env_class
    elif not is_dmc(task):
        from envs.toy import ToyBimodalEnv as env_class
    elif backend == "dm_control" or task not in FAST_TASKS:
        from envs.dmc import DMCVectorEnv as env_class
    else:
        from envs.fast import FastVectorEnv as env_class
    try:
        env = env_class(task, int(num_envs), int(seed))
    except Exception as error:
        # MuJoCo reports a failed allocation with this text, as a ValueError ("engine error") or as
        # its own FatalError, depending on which allocation failed; anything else propagates as is.
        if "Could not allocate memory" in str(error):
            raise MemoryError(f"MuJoCo could not allocate {num_envs} envs of {task}") from None
        raise
    env.reset(seed=seed)
    return env


@functools.cache
def dimensions(task: str) -> tuple[int, int]:
    """(observation size, action size) of `task`, read from one env built for the question (cached:
    a study's checks ask it for every configuration)."""

    env = make(task, 1, 0)
    try:
        return env.single_observation_space.shape[0], env.single_action_space.shape[0]
    finally:
        env.close()
