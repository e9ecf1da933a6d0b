"""`gorl-bench bench gorl`: GoRL's wall-clock per counted env step, relative to Gaussian PPO.

Measured in one run, on the same task and preset, for `--algo` (default `gorl-fm`) with the
`--set` overrides (applied to GoRL only), the first three interleaved (one iteration of each in
turn, `measure_together`; the three agents are held at once, with the `paper` preset each
about as large as a PPO process, which peaks at 5.4-5.9 GB: docs/performance.md):

* PPO: `train_iteration` of the `ppo` agent (the reference);
* GoRL, stage 0: the encoder's PPO with the identity decoder;
* GoRL, stage >= 1: the same with a decoder of the preset's kind and size in the loop (a fresh
  decoder costs exactly what a trained one does: 10 Euler or DDIM steps per env step);
* one decoder refit: collecting `refit_episodes` episodes and fitting the decoder.

The ratio for a whole run combines them along the preset's stage schedule at `--steps`
counted env steps: (stage-0 time + later-stage time + refits) / PPO time. Evaluation and
tracking are left out: they cost about the same for both, except that GoRL's evaluation episodes
after stage 0 also decode (about 0.5 s per evaluation point of the `cpu` preset, 16 episodes).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch

from harness.benchmarks.train import build_agent, measure_together, rounds_measured
from harness.commands.arguments import add_set_option, positive_int
from harness.progress import DelayedProgress, count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="gorl-fm", choices=["gorl-fm", "gorl-diffusion"],
                        help="GoRL variant (default gorl-fm)")  # fmt: skip
    parser.add_argument("--task", default="walker-walk", help="task (default walker-walk)")
    add_set_option(parser, "GoRL config override")
    parser.add_argument("--preset", default="cpu", help="preset of both algorithms (default cpu)")
    parser.add_argument(
        "--iterations", type=positive_int, default=8, help="timed iterations per phase (default 8)"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=1_000_000,
        help="run budget for the schedule (default 1,000,000)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def main(args: argparse.Namespace) -> int:
    import algorithms
    import envs
    from algorithms.config import parse_assignments, resolve
    from algorithms.gorl import stage_ends
    from harness.run import check_run, resolve_device

    device = resolve_device(args.device)
    task = envs.canonical_task(args.task)
    overrides = parse_assignments(args.overrides)
    config = resolve(algorithms.get(args.algo), args.preset, task, overrides)
    # The schedule at --steps must be one `gorl-bench run` would accept; refused before any timing.
    check_run(config, task, args.steps)
    ends = stage_ends(config, args.steps)
    name = {"gorl-fm": "GoRL-FM", "gorl-diffusion": "GoRL-Diffusion"}[args.algo]
    settings = "".join(f" {pair}" for pair in args.overrides)
    print(f"{name} vs PPO on {task}, preset {args.preset}{settings}, "
          f"{count(args.iterations, 'iteration')} per phase after one warm-up; torch {torch.__version__}, "
          f"{platform.machine()}, device {device}")  # fmt: skip

    def later_stage(agent: algorithms.gorl.GoRLAgent) -> None:
        from algorithms.decoders import make_decoder

        agent.env.decoder = make_decoder(config.decoder_config(), agent.obs_dim, agent.act_dim).to(device)
        agent.begin_stage(1)

    # One stage only, so that no refit falls inside the timed iterations; refits are timed apart.
    # (`encoder_steps_per_refit` would take precedence over `num_refits`.)
    one_stage = {**overrides, "num_refits": 0, "encoder_steps_per_refit": None}
    phases = {
        "PPO": ({}, "ppo", None),
        f"{name} stage 0 (identity decoder)": (one_stage, args.algo, None),
        f"{name} stage >= 1 ({config.decoder_kind} decoder)": (one_stage, args.algo, later_stage),
    }
    results = {}
    try:
        with contextlib.ExitStack() as built:  # the three agents at once: their iterations interleave
            agents = {}
            for phase, (phase_overrides, algo, prepare) in phases.items():
                agents[phase] = build_agent(
                    task, args.preset, phase_overrides, args.iterations, device, algo, prepare
                )
                built.callback(agents[phase].close)
            for totals in measure_together(agents, args.iterations):
                results = totals  # kept when a later round is interrupted
    finally:  # also the rounds timed before an interrupt
        if results:
            _print_phases(results)
            if note := rounds_measured(results, args.iterations):
                print(f"\n{note}; no refit timed.")
    ppo, stage0, later = results.values()
    agent = algorithms.get(args.algo).agent_cls(config, task, 0, args.steps, device)
    # A display as for the iterations: the `paper` preset's refit (4,096 episodes, 50,000 decoder
    # steps) runs for a long time on a CPU, and a log gets a line a minute meanwhile.
    try:
        with DelayedProgress("timing one refit: {task.completed:.0f}/{task.total:.0f}", total=1) as progress:
            start = time.perf_counter()
            refit_steps = agent.refit()["refit/env_steps"]
            refit_seconds = time.perf_counter() - start
            progress.advance(1)
    finally:
        agent.close()

    print(f"\nOne refit: {refit_steps:,.0f} env steps and {config.decoder_steps:,} decoder steps in "
          f"{refit_seconds:.1f} s.")  # fmt: skip
    run_seconds = ends[0] / stage0["steps_per_s"] + (args.steps - ends[0]) / later["steps_per_s"]
    run_seconds += (len(ends) - 1) * refit_seconds
    ppo_seconds = args.steps / ppo["steps_per_s"]
    print(f"A {args.steps:,}-step run ({len(ends) - 1} refits): {name} {run_seconds:.0f} s vs PPO "
          f"{ppo_seconds:.0f} s = {run_seconds / ppo_seconds:.2f}x per counted env step.")  # fmt: skip
    return 0


def _print_phases(results: dict[str, dict[str, float]]) -> None:
    """The phases' table; the first phase (PPO) is the reference."""

    reference = next(iter(results.values()))["steps_per_s"]
    print("| phase | env steps/s | seconds per 1M counted steps | vs PPO |\n|---|---|---|---|")
    for phase, result in results.items():
        per_million = 1e6 / result["steps_per_s"]
        print(f"| {phase} | {result['steps_per_s']:,.0f} | {per_million:.0f} | "
              f"{reference / result['steps_per_s']:.2f}x |")  # fmt: skip
