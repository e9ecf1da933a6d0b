"""`gorl-bench run`: train one algorithm on one task with one seed, or resume such a run."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="train one algorithm on one task (MLflow tracking, checkpoints, resume)",
        description="Train one algorithm on one task with one seed; evaluate, track in MLflow, checkpoint.",
    )
    parser.add_argument("--algo", help="registered algorithm (see `gorl-bench list`)")
    parser.add_argument("--task", help="task name, e.g. walker-walk")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="counted env steps (default 1000000)")
    parser.add_argument("--preset", default="cpu", help="config preset (default cpu; paper: the paper's)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<algo>-<task>-s<seed>-<time>)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    parser.add_argument("--experiment", help="MLflow experiment name (default gorl-bench)")
    parser.add_argument(
        "--checkpoint-every", type=int, metavar="STEPS", help="checkpoint period (default: every evaluation)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run saved in DIR (its checkpoint holds every other option)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from algorithms.config import parse_assignments
    from harness.checkpoint import checkpoint_path
    from harness.errors import UserError
    from harness.run import RunRequest, execute, resume

    # `kill PID` ends the MLflow run as KILLED (like Ctrl-C) instead of leaving it RUNNING.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.resume is not None:
        result = resume(args.resume, progress=not args.no_progress)
    else:
        if not args.algo or not args.task:
            raise UserError("--algo and --task are required (or --resume DIR to continue a run).")
        if args.out is not None and checkpoint_path(args.out).exists():
            raise UserError(
                f"{str(args.out)!r} already holds a run's checkpoint; continue it with --resume "
                f"{args.out}, or choose another --out directory."
            )
        request = RunRequest(
            algo=args.algo,
            task=args.task,
            seed=args.seed,
            steps=args.steps,
            preset=args.preset,
            overrides=parse_assignments(args.overrides),
            device=args.device,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            checkpoint_every=args.checkpoint_every,
        )
        result = execute(request, progress=not args.no_progress)
    for step, mean, std in result.eval_history:
        print(f"eval @ {step:>10,d} steps: {mean:8.2f} +- {std:.2f}")
    print(
        f"{result.status}: final score {result.final_score:.2f} after {result.counted_steps:,d} counted env "
        f"steps; MLflow run {result.mlflow_run_id}; checkpoint in {result.out_dir}"
    )
    return 0 if result.status == "FINISHED" else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
