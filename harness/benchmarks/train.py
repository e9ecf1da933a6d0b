"""`gorl-bench bench train`: end-to-end training throughput (collection + update) per task.

Times `train_iteration` of each registered agent in `--algos` (default: `ppo` alone; `cpu`
preset) after one warm-up iteration, and reports env steps/s, the learner's (update's) share
of the wall time and, with several algorithms, each one's wall time per env step relative to
the first, measured in the same run. Evaluation and tracking are excluded: they cost a fixed
amount per evaluation point, not per env step.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from harness.commands.arguments import add_tasks_option, positive_int

DEFAULT_TASKS = ("walker-walk", "cheetah-run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_tasks_option(parser, DEFAULT_TASKS, "tasks to time")
    parser.add_argument(
        "--algos", nargs="+", default=["ppo"], help="algorithms, the first the reference (default ppo)"
    )
    parser.add_argument("--preset", default="cpu", help="preset of every algorithm (default cpu)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=8, help="timed iterations per task (default 8)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def measure(
    task: str,
    preset: str,
    overrides: dict,
    iterations: int,
    device: torch.device,
    algo: str = "ppo",
    prepare: Callable[[Any], None] | None = None,
) -> dict[str, float]:
    """Steps/s and learner share of `iterations` iterations of `algo` on `task`, after one warm-up,
    with a progress display once it takes more than a second (the `paper` preset's iterations
    take minutes each).

    `prepare(agent)`, if given, runs on the fresh agent first (e.g. to put GoRL in a later stage).
    """

    import algorithms
    import envs
    from algorithms.config import resolve
    from harness.progress import DelayedProgress

    spec = algorithms.get(algo)
    task = envs.canonical_task(task)
    config = resolve(spec, preset, task, overrides)
    agent = spec.agent_cls(config, task, 0, budget(config, iterations), device)
    label = f"{algo} on {task}: " + "{task.completed:.0f}/{task.total:.0f} iterations after a warm-up"
    try:
        if prepare is not None:
            prepare(agent)
        with DelayedProgress(label, total=iterations) as progress:
            learner_seconds, wall = _timed_iterations(agent, iterations, algo, progress.advance)
    finally:
        agent.close()
    steps = iterations * config.batch_size
    return {"steps": steps, "seconds": wall, "steps_per_s": steps / wall, "learner": learner_seconds / wall}


def _timed_iterations(
    agent: Any, iterations: int, algo: str, progress: Callable[[int], None]
) -> tuple[float, float]:
    """(learner seconds, wall seconds) of `iterations` training iterations after one warm-up."""

    from harness.errors import UserError

    agent.train_iteration()
    learner_seconds = 0.0
    start = time.perf_counter()
    for _ in range(iterations):
        iteration_start = time.perf_counter()
        metrics = agent.train_iteration()
        if "refit/env_steps" in metrics:  # a GoRL stage shorter than the timed iterations
            raise UserError(
                f"a decoder refit fell inside the timed iterations of {algo} (its stages are set "
                "shorter than them); `gorl-bench bench gorl` times refits apart."
            )
        learner_seconds += metrics["perf/learner_fraction"] * (time.perf_counter() - iteration_start)
        progress(1)
    return learner_seconds, time.perf_counter() - start


def budget(config: Any, iterations: int) -> int:
    """A run budget far beyond the timed steps: it only matters to agents with a stage schedule
    (GoRL), whose timed iterations then all fall in stage 0 (`bench gorl` times the rest)."""

    return 1000 * (iterations + 1) * config.batch_size


def main(args: argparse.Namespace) -> int:
    import algorithms
    import envs
    from algorithms.config import parse_assignments, resolve
    from harness.run import check_run, resolve_device

    overrides = parse_assignments(args.overrides)
    # Every (task, algorithm) configuration is checked as `run` checks it, before anything is
    # timed or printed.
    for task in map(envs.canonical_task, args.tasks):
        for algo in args.algos:
            config = resolve(algorithms.get(algo), args.preset, task, overrides)
            check_run(config, task, budget(config, args.iterations))
    device = resolve_device(args.device)
    print(f"{', '.join(args.algos)} end to end, preset {args.preset}"
          f"{' ' + ' '.join(args.overrides) if args.overrides else ''}, {args.iterations} iterations after "
          f"one warm-up; torch {torch.__version__}, {platform.machine()}, device {device}")  # fmt: skip
    print("| task | algorithm | env steps | seconds | env steps/s | learner share | time vs "
          f"{args.algos[0]} |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for task in args.tasks:
        reference = None
        for algo in args.algos:
            r = measure(task, args.preset, overrides, args.iterations, device, algo=algo)
            reference = reference or r["steps_per_s"]
            row = (
                task,
                algo,
                f"{r['steps']:,d}",
                f"{r['seconds']:.1f}",
                f"{r['steps_per_s']:,.0f}",
                f"{r['learner']:.0%}",
                f"{reference / r['steps_per_s']:.2f}x",
            )
            print("| " + " | ".join(row) + " |")
    return 0
