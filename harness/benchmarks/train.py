"""`gorl-bench bench train`: end-to-end training throughput (collection + update) per task.

Times `train_iteration` of each registered agent in `--algos` (default: `ppo` alone; `cpu`
preset) after one warm-up iteration, and reports env steps/s, the learner's (update's) share
of the wall time and, with several algorithms, each one's wall time per env step relative to
the first, measured in the same run, one algorithm after another (so that only one agent is
held at a time; `bench gorl` interleaves its phases instead). Evaluation and tracking are
excluded: they cost a fixed amount per evaluation point, not per env step.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from harness.commands.arguments import Distinct, add_set_option, add_tasks_option, positive_int
from harness.progress import count

DEFAULT_TASKS = ("walker-walk", "cheetah-run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_tasks_option(parser, DEFAULT_TASKS, "tasks to time")
    parser.add_argument(
        "--algos",
        nargs="+",
        action=Distinct,
        default=["ppo"],
        help="algorithms, the first the reference (default ppo)",
    )
    parser.add_argument("--preset", default="cpu", help="preset of every algorithm (default cpu)")
    add_set_option(parser)
    parser.add_argument(
        "--iterations", type=positive_int, default=8, help="timed iterations per task (default 8)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def build_agent(
    task: str,
    preset: str,
    overrides: dict,
    iterations: int,
    device: torch.device,
    algo: str = "ppo",
    prepare: Callable[[Any], None] | None = None,
) -> Any:
    """A fresh agent of `algo` to time. `prepare(agent)`, if given, runs on it first (e.g. to put
    GoRL in a later stage); the agent is closed if that fails."""

    import algorithms
    import envs
    from algorithms.config import resolve

    spec = algorithms.get(algo)
    task = envs.canonical_task(task)
    config = resolve(spec, preset, task, overrides)
    agent = spec.agent_cls(config, task, 0, budget(config, iterations), device)
    try:
        if prepare is not None:
            prepare(agent)
    except BaseException:
        agent.close()
        raise
    return agent


def measure_together(agents: dict[str, Any], iterations: int) -> Iterator[dict[str, dict[str, float]]]:
    """Steps/s and learner share of each of `agents` ({name: agent}) over `iterations` rounds,
    each round one training iteration of every agent in turn, after one warm-up iteration each.

    Interleaved, because a machine's speed drifts (other processes, clock changes) over the
    minutes a benchmark takes: timed one after another, agents meet different machines and
    their ratio moves with the drift (`bench gorl` on walker-walk gave 1.13x to 1.44x for one
    code); interleaved, the drift falls on every agent alike. A progress display shows once the
    work, warm-up included, takes more than a second (the `paper` preset's iterations take minutes
    each; a log gets a line at least once a minute).

    Yields the totals after every round (`rounds` says how many), so that a caller interrupted
    midway still has the rounds measured so far to print.
    """

    from harness.progress import DelayedProgress

    wall = dict.fromkeys(agents, 0.0)
    learner = dict.fromkeys(agents, 0.0)
    steps = dict.fromkeys(agents, 0)
    rounds = 0
    label = f"{', '.join(agents)}: " + "{task.completed:.0f}/{task.total:.0f} iterations after a warm-up"
    with DelayedProgress(label, total=iterations * len(agents)) as progress:
        for agent in agents.values():
            agent.train_iteration()
        for _ in range(iterations):
            for name, agent in agents.items():
                before, start = agent.counted_steps, time.perf_counter()
                metrics = agent.train_iteration()
                seconds = time.perf_counter() - start
                _refuse_refit(metrics, name)
                wall[name] += seconds
                steps[name] += agent.counted_steps - before
                # An agent that does not time its update apart reports no learner share (nan).
                learner[name] += metrics.get("perf/learner_fraction", math.nan) * seconds
                progress.advance(1)
            rounds += 1
            yield {
                name: {
                    "rounds": rounds,
                    "steps": steps[name],
                    "seconds": wall[name],
                    "steps_per_s": steps[name] / wall[name],
                    "learner": learner[name] / wall[name],
                }
                for name in agents
            }


def rounds_measured(results: dict[str, dict[str, float]], iterations: int) -> str:
    """A note for results cut short (by Ctrl-C or an error); "" when all `iterations` rounds were
    timed."""

    rounds = next(iter(results.values()))["rounds"]
    return "" if rounds == iterations else f"stopped early: {rounds} of {iterations} iterations timed"


def _refuse_refit(metrics: dict[str, float], name: str) -> None:
    from harness.errors import UserError

    if "refit/env_steps" in metrics:  # a GoRL stage shorter than the timed iterations
        raise UserError(
            f"a decoder refit fell inside the timed iterations of {name} (its stages are set "
            "shorter than them); `gorl-bench bench gorl` times refits apart."
        )


def budget(config: Any, iterations: int) -> int:
    """A run budget far beyond the timed steps: it only matters to agents with a stage schedule
    (GoRL), whose timed iterations then all fall in stage 0 (`bench gorl` times the rest). An
    algorithm whose config names no update size (`batch_size`) gets 10^9 steps."""

    per_update = getattr(config, "batch_size", None)
    return 10**9 if per_update is None else 1000 * (iterations + 1) * per_update


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
            # The budget is the benchmark's own, so a refusal of it names it, not a --steps.
            check_run(config, task, budget(config, args.iterations), steps_name="the benchmark's run budget")
    device = resolve_device(args.device)
    settings = "".join(f" {pair}" for pair in args.overrides)
    print(f"{', '.join(args.algos)} end to end, preset {args.preset}{settings}, "
          f"{count(args.iterations, 'iteration')} after one warm-up; torch {torch.__version__}, "
          f"{platform.machine()}, device {device}")  # fmt: skip
    print("| task | algorithm | env steps | seconds | env steps/s | learner share | time vs "
          f"{args.algos[0]} |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for task in args.tasks:
        reference = None
        for algo in args.algos:
            agent = build_agent(task, args.preset, overrides, args.iterations, device, algo=algo)
            results = {}
            try:  # one algorithm at a time: the `paper` preset's agents take GBs each
                for totals in measure_together({algo: agent}, args.iterations):
                    results = totals  # kept when a later round is interrupted
            finally:  # also the rounds timed before an interrupt
                agent.close()
                if results:
                    reference = reference or results[algo]["steps_per_s"]
                    _print_row(task, algo, results[algo], reference)
                    if note := rounds_measured(results, args.iterations):
                        print(f"\n{task}, {algo} {note}.")
    return 0


def _print_row(task: str, algo: str, r: dict[str, float], reference: float) -> None:
    """One algorithm's row; `reference`: the first algorithm's env steps/s on the task."""

    row = (
        task,
        algo,
        f"{r['steps']:,d}",
        f"{r['seconds']:.1f}",
        f"{r['steps_per_s']:,.0f}",
        "n/a" if math.isnan(r["learner"]) else f"{r['learner']:.0%}",
        f"{reference / r['steps_per_s']:.2f}x",
    )
    print("| " + " | ".join(row) + " |")
