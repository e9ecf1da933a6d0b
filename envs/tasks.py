"""Task names: canonical forms, the paper's aliases, score ranges and episode lengths.

Canonical names are

* dm_control suite tasks as `domain-task` (`cheetah-run`, `finger-turn_hard`, `ball_in_cup-catch`);
* the toy tasks of `envs.toy` (`toy-bimodal`, `toy-bimodal-easy`);
* any installed gymnasium id as `gym:<id>` (`gym:Pendulum-v1`).

The GoRL paper names its tasks after MuJoCo Playground's environments (`CheetahRun`, ...);
those names are accepted as aliases of the dm_control task they re-implement. Note that
this harness always runs dm_control itself, so scores are dm_control scores.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from envs import toy
from harness.errors import UserError

# The GoRL paper's main tasks (Table 1), canonical.
PAPER_TASKS: tuple[str, ...] = (
    "cheetah-run",
    "finger-spin",
    "finger-turn_hard",
    "fish-swim",
    "hopper-stand",
    "walker-walk",
)

# Tasks with a batched `fast` backend: the paper's main tasks plus its humanoid tasks (v3).
FAST_TASKS: tuple[str, ...] = (*PAPER_TASKS, "humanoid-stand", "humanoid-run")

# MuJoCo Playground names used by the paper -> dm_control task.
ALIASES: dict[str, str] = {
    "CheetahRun": "cheetah-run",
    "FingerSpin": "finger-spin",
    "FingerTurnHard": "finger-turn_hard",
    "FishSwim": "fish-swim",
    "HopperStand": "hopper-stand",
    "WalkerWalk": "walker-walk",
    "HumanoidStand": "humanoid-stand",
    "HumanoidRun": "humanoid-run",
}

GYM_PREFIX = "gym:"

# Every dm_control suite task ends after 1000 control steps; dm_control's per-step reward is
# in [0, 1], so an episode's return is in [0, 1000]. The exception is the lqr domain, whose
# reward is 1 minus a quadratic cost and so unbounded below (`score_range` refuses it).
DMC_EPISODE_STEPS = 1000
DMC_SCORE_RANGE = (0.0, 1000.0)


@functools.cache
def dmc_task_names() -> tuple[str, ...]:
    """Every dm_control suite task as `domain-task` (imports dm_control on first use)."""

    from envs.dmc import suite

    return tuple(f"{domain}-{task}" for domain, task in suite.ALL_TASKS)


def task_names() -> list[str]:
    """Every canonical task name except `gym:<id>` (which accepts any installed gymnasium id)."""

    return [*dmc_task_names(), *toy.TASKS]


def _lookup() -> dict[str, str]:
    """Lower-cased accepted name -> canonical name."""

    names = {name.lower(): name for name in task_names()}
    names.update({alias.lower(): task for alias, task in ALIASES.items()})
    return names


def canonical_task(name: str) -> str:
    """The canonical form of a task name or alias; unknown names raise `UserError` with close matches."""

    if name.startswith(GYM_PREFIX):
        return GYM_PREFIX + _checked_gym_id(name[len(GYM_PREFIX) :])
    lookup = _lookup()
    if name.lower() in lookup:
        return lookup[name.lower()]
    # Matched in lower case, as names are looked up; an alias is offered as its task, once.
    close = difflib.get_close_matches(name.lower(), list(lookup), n=8, cutoff=0.5)
    offered = list(dict.fromkeys(lookup[match] for match in close))[:5]
    hint = f" Did you mean: {', '.join(offered)}?" if offered else ""
    raise UserError(
        f"unknown task {name!r}.{hint} Run `gorl-bench list` for the tasks; every dm_control suite task "
        f"works as domain-task (e.g. cheetah-run) and any installed gymnasium id as gym:<id>."
    )


def _checked_gym_id(env_id: str) -> str:
    import gymnasium

    if env_id in gymnasium.registry:
        return env_id
    close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(GYM_PREFIX + c for c in close)}?" if close else ""
    raise UserError(f"unknown gymnasium id {env_id!r} in task {GYM_PREFIX + env_id!r}.{hint}")


def is_dmc(task: str) -> bool:
    """Whether a canonical task name is a dm_control suite task."""

    return not task.startswith(GYM_PREFIX) and task not in toy.TASKS


def score_range(task: str) -> tuple[float, float]:
    """(worst, best) episode return used to normalise scores of `task`.

    DMC: (0, 1000). Toy tasks: their declared range. gym:<id> (gymnasium declares no reward
    range) and dm_control's lqr tasks (a reward unbounded below) raise `UserError`.
    """

    task = canonical_task(task)
    if task in toy.TASKS:
        return toy.TASKS[task].score_range
    if is_dmc(task) and not task.startswith("lqr-"):
        return DMC_SCORE_RANGE
    raise UserError(
        f"{task} has no declared score range; normalised scores need a dm_control task (other than "
        "lqr, whose reward is unbounded below) or a toy task."
    )


def normalised_score(task: str, episode_return: Any) -> Any:
    """`episode_return` (a number or an array) mapped to [0, 1] by `score_range(task)`: DMC
    return / 1000; `UserError` for a task without a range."""

    worst, best = score_range(task)
    return (episode_return - worst) / (best - worst)


def max_episode_steps(task: str) -> int | None:
    """Control steps after which an episode of `task` is truncated (None: gymnasium id without a limit)."""

    task = canonical_task(task)
    if task in toy.TASKS:
        return toy.TASKS[task].episode_steps
    if is_dmc(task):
        return DMC_EPISODE_STEPS
    import gymnasium

    return gymnasium.spec(task[len(GYM_PREFIX) :]).max_episode_steps


def describe_tasks() -> list[str]:
    """Lines for `gorl-bench list`."""

    by_task = {task: alias for alias, task in ALIASES.items()}
    lines = []
    for task in FAST_TASKS:
        paper = "paper main task" if task in PAPER_TASKS else "paper humanoid task"
        alias = by_task.get(task, "-")
        lines.append(f"{task:18s} alias {alias:15s} backends: fast (default), dm_control  [{paper}]")
    for name, spec in toy.TASKS.items():
        lines.append(f"{name:18s} {spec.summary}")
    lines.append("Every dm_control suite task works as domain-task (dm_control backend), e.g. reacher-easy.")
    lines.append("Any installed gymnasium id works as gym:<id>, e.g. gym:Pendulum-v1 (actions in [-1, 1]).")
    return lines
