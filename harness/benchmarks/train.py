"""`gorl-bench bench train`: end-to-end PPO training throughput (collection + update) per task.

Times `train_iteration` of the registered `ppo` agent (default `cpu` preset) after one
warm-up iteration, and reports env steps/s and the learner's (update's) share of the wall
time. Evaluation and tracking are excluded: they cost a fixed amount per evaluation point,
not per env step.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

DEFAULT_TASKS = ("walker-walk", "cheetah-run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="tasks to time")
    parser.add_argument("--preset", default="cpu", help="ppo preset (default cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iterations", type=int, default=8, help="timed PPO iterations per task (default 8)")
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
    """Steps/s and learner share of `iterations` iterations of `algo` on `task`, after one warm-up.

    `prepare(agent)`, if given, runs on the fresh agent first (e.g. to put GoRL in a later stage).
    """

    import algorithms
    import envs
    from algorithms.config import resolve

    spec = algorithms.get(algo)
    task = envs.canonical_task(task)
    config = resolve(spec, preset, task, overrides)
    agent = spec.agent_cls(config, task, 0, (iterations + 1) * config.batch_size, device)
    try:
        if prepare is not None:
            prepare(agent)
        agent.train_iteration()
        learner_seconds = 0.0
        start = time.perf_counter()
        for _ in range(iterations):
            iteration_start = time.perf_counter()
            metrics = agent.train_iteration()
            learner_seconds += metrics["perf/learner_fraction"] * (time.perf_counter() - iteration_start)
        wall = time.perf_counter() - start
    finally:
        agent.close()
    steps = iterations * config.batch_size
    return {"steps": steps, "seconds": wall, "steps_per_s": steps / wall, "learner": learner_seconds / wall}


def main(args: argparse.Namespace) -> int:
    from algorithms.config import parse_assignments
    from harness.run import resolve_device

    overrides = parse_assignments(args.overrides)
    device = resolve_device(args.device)
    print(f"PPO end to end, preset {args.preset}{' ' + ' '.join(args.overrides) if args.overrides else ''}, "
          f"{args.iterations} iterations after one warm-up; torch {torch.__version__}, "
          f"{platform.machine()}, device {device}")  # fmt: skip
    print("| task | env steps | seconds | env steps/s | learner share |\n|---|---|---|---|---|")
    for task in args.tasks:
        r = measure(task, args.preset, overrides, args.iterations, device)
        row = (
            task,
            f"{r['steps']:,d}",
            f"{r['seconds']:.1f}",
            f"{r['steps_per_s']:,.0f}",
            f"{r['learner']:.0%}",
        )
        print("| " + " | ".join(row) + " |")
    return 0
