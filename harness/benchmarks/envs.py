"""`gorl-bench bench envs`: env steps/s of the `fast` backend vs `dm_control`, and the raw physics limit.

For every task and batch size N, with the same seeded random actions:

* `dm_control`: `envs.make(task, N, seed, backend="dm_control").step(actions)`, a loop over N
  dm_control envs;
* `fast`: the same with `backend="fast"`;
* `raw physics`: the fast env's own MjData on its own thread pool and split, doing only
  `data.ctrl[:] = a; mj_step(model, data, nstep=n_sub)` per sub-env: no observations, no
  rewards, no dm_control step structure. It is the ceiling for any in-process backend.

Each cell is the median of `--repeats` timed runs of `--steps` control steps of all N envs
(aggregate env steps/s = N x steps / seconds), after one untimed warm-up run; the three modes
alternate within every repeat. No episode resets happen while (repeats + 1) x steps < 1000
(the defaults: 800), which times pure stepping; resets cost the same in both backends.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from harness.commands.arguments import add_tasks_option, int_between
from harness.progress import count

if TYPE_CHECKING:
    from envs.base import VectorEnv
    from envs.fast import FastVectorEnv

DEFAULT_TASKS = ("walker-walk", "cheetah-run", "hopper-stand", "humanoid-stand")
DEFAULT_SIZES = (8, 32, 64)
# Up to twice the paper's 2,048 envs (a MuJoCo env holds about 1 MB, and both backends are
# built); the random actions of a timed run are drawn beforehand, steps x N x act float32,
# at most 3.4 GB for humanoid's 21 actions.
MAX_SIZE = 4096
MAX_STEPS = 10_000
MAX_REPEATS = 1_000  # a median of more timed runs is no better measured; more is a slip that runs for days
DEFAULT_STEPS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_tasks_option(parser, DEFAULT_TASKS, "fast tasks to time")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int_between(1, MAX_SIZE),
        default=list(DEFAULT_SIZES),
        help=f"numbers of envs N, 1 to {MAX_SIZE:,} (default {' '.join(map(str, DEFAULT_SIZES))})",
    )
    parser.add_argument(
        "--steps",
        type=int_between(1, MAX_STEPS),
        default=DEFAULT_STEPS,
        help=f"control steps per timed run, 1 to {MAX_STEPS:,} (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--repeats",
        type=int_between(1, MAX_REPEATS),
        default=3,
        help="timed runs per cell; the median is shown (default 3)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")


def median_rates(runs: dict[str, Callable[[], None]], env_steps: int, repeats: int) -> dict[str, float]:
    """Median env steps/s of each run (which performs `env_steps` env steps) over `repeats` timings.

    The runs alternate within every repeat, so a burst of load from other processes hits all of
    them alike and their ratios stay meaningful on a shared machine.
    """

    for run in runs.values():
        run()  # warm-up: caches, thread start, first-touch allocations
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: env_steps / statistics.median(times) for name, times in seconds.items()}


def stepping(env: VectorEnv, actions: np.ndarray) -> Callable[[], None]:
    """`env.step` on each of `actions` (steps, num_envs, act_dim), as training steps it."""

    def run() -> None:
        for a in actions:
            env.step(a)

    return run


def raw_physics(env: FastVectorEnv, actions: np.ndarray) -> Callable[[], None]:
    """`mj_step(nstep=n_sub)` on the fast env's MjData, split over its thread pool like its step."""

    import mujoco

    def chunk(start: int, stop: int, a: np.ndarray) -> None:
        for i in range(start, stop):
            env.datas[i].ctrl[:] = a[i]
            mujoco.mj_step(env.models[i], env.datas[i], env.n_sub)

    def run() -> None:
        for a in actions:
            if env.pool is None:
                chunk(*env.chunks[0], a)
                continue
            future = env.pool.submit(chunk, *env.chunks[0], a)
            chunk(*env.chunks[1], a)
            future.result()

    return run


def measure(task: str, num_envs: int, steps: int, repeats: int) -> dict[str, float]:
    import envs

    reference = envs.make(task, num_envs, seed=0, backend="dm_control")
    fast = envs.make(task, num_envs, seed=0, backend="fast")
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, num_envs, fast.act_dim)).astype(np.float32)
    runs = {
        "dm_control": stepping(reference, actions),
        "fast": stepping(fast, actions),
        "raw": raw_physics(fast, actions),
    }
    try:
        return median_rates(runs, num_envs * steps, repeats)
    finally:
        reference.close()
        fast.close()


def main(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    from rich import box
    from rich.console import Console
    from rich.table import Table

    import envs
    from harness.progress import DelayedProgress

    tasks = [envs.canonical_task(t) for t in args.tasks]
    for task in tasks:
        if task not in envs.FAST_TASKS:
            from harness.errors import UserError

            raise UserError(f"{task} has no fast backend; choose from {', '.join(envs.FAST_TASKS)}.")
    console = Console(width=120)  # wide enough for the whole table, also when piped to a file
    console.print(
        f"Env stepping, aggregate env (control) steps/s, median of {count(args.repeats, 'run')} of "
        f"{args.steps} steps after a warm-up; {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, mujoco {version('mujoco')}, "
        f"dm-control {version('dm-control')}, numpy {np.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    table = Table(box=box.MARKDOWN if args.markdown else box.SIMPLE_HEAD)
    for column in ("task", "N", "dm_control", "fast", "fast / dm_control", "raw physics", "fast % of raw"):
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=True)
    label = "{task.completed:.0f}/{task.total:.0f} task x N measurements"
    try:
        with DelayedProgress(label, total=len(tasks) * len(args.sizes)) as progress:
            for task in tasks:
                for num_envs in args.sizes:
                    r = measure(task, num_envs, args.steps, args.repeats)
                    table.add_row(
                        task,
                        str(num_envs),
                        f"{r['dm_control']:,.0f}",
                        f"{r['fast']:,.0f}",
                        f"{r['fast'] / r['dm_control']:.2f}x",
                        f"{r['raw']:,.0f}",
                        f"{r['fast'] / r['raw']:.0%}",
                    )
                    progress.advance(1)
    finally:  # also the rows measured before an interrupt or an error
        if table.rows:
            console.print(table)
    return 0
