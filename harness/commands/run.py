"""`gorl-bench run`: train one algorithm on one task with one seed, or resume such a run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from harness.commands.arguments import add_set_option, check_out_dir, directory, file_path, integer, non_empty

DEFAULTS = {"seed": 0, "steps": 1_000_000, "preset": "cpu", "overrides": [], "device": "cpu"}
#: The options a run's checkpoint fixes (argparse dest: flag): --resume refuses them rather than ignore them.
FIXED_BY_CHECKPOINT = {"algo": "--algo", "task": "--task", "seed": "--seed", "steps": "--steps",
                       "preset": "--preset", "overrides": "--set", "out": "--out",
                       "experiment": "--experiment", "checkpoint_every": "--checkpoint-every",
                       "config": "--config"}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="train one algorithm on one task (MLflow tracking, checkpoints, resume)",
        description="Train one algorithm on one task with one seed; evaluate, track in MLflow, checkpoint.",
    )
    parser.add_argument("--algo", help="registered algorithm (see `gorl-bench list`)")
    parser.add_argument("--task", help="task name, e.g. walker-walk")
    # Defaults are applied in `main`, so that options given together with --resume can be told apart.
    parser.add_argument("--seed", type=integer, help=f"run seed (default {DEFAULTS['seed']})")
    parser.add_argument("--steps", type=integer, help=f"counted env steps (default {DEFAULTS['steps']})")
    parser.add_argument("--preset", help=f"config preset (default {DEFAULTS['preset']}; paper: the paper's)")
    add_set_option(parser, none_when_absent=True)
    parser.add_argument(
        "--config",
        type=file_path,
        metavar="FILE",
        help="TOML file of settings, e.g. a run's config.toml: its [run] table gives the options left out "
        "here, its [config] table the config values --set leaves (see README)",
    )
    parser.add_argument(
        "--device",
        help=f"torch device: cpu or cuda (default {DEFAULTS['device']}; with --resume: the run's own)",
    )
    parser.add_argument(
        "--out", type=directory, help="run directory (default runs/<algo>-<task>-s<seed>-<time>)"
    )
    parser.add_argument(
        "--tracking-uri",
        type=non_empty,
        help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db); with --resume: where "
        "the run's store is now, if it moved",
    )
    parser.add_argument("--experiment", type=non_empty, help="MLflow experiment name (default gorl-bench)")
    parser.add_argument(
        "--checkpoint-every",
        type=integer,
        metavar="STEPS",
        help="checkpoint period (default: every evaluation; a run also checkpoints its start and end)",
    )
    parser.add_argument(
        "--resume",
        type=directory,
        metavar="DIR",
        help="continue the run saved in DIR (its checkpoint holds every option but --tracking-uri and "
        "--device)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from algorithms.config import parse_assignments
    from envs import canonical_task
    from harness.checkpoint import checkpoint_path
    from harness.config_file import choices, load_config_file
    from harness.errors import UserError
    from harness.run import (
        RunRequest,
        check_request,
        create_default_out_dir,
        execute,
        remove_if_unused,
        resume,
    )

    if args.resume is not None:
        given = [flag for name, flag in FIXED_BY_CHECKPOINT.items() if getattr(args, name) is not None]
        if given:
            options = ", ".join(given)
            raise UserError(
                f"--resume continues the run exactly as it was started; its checkpoint fixes {options}. "
                f"To train with other settings, start a new run with another --out directory."
            )
        request, run_dir = None, Path(args.resume)
    else:
        config_file = load_config_file(args.config) if args.config is not None else None
        if config_file is not None:
            config_file.fill_options(args)
        apply_defaults(args)
        if not args.algo or not args.task:
            raise UserError("--algo and --task are required (or --resume DIR to continue a run).")
        from_file = choices(config_file, args.algo) if config_file else {}
        request = RunRequest(
            algo=args.algo,
            task=args.task,
            seed=args.seed,
            steps=args.steps,
            preset=args.preset,
            overrides={**from_file, **parse_assignments(args.overrides)},
            device=args.device,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            checkpoint_every=args.checkpoint_every,
        )
        # Named after the canonical task (`CheetahRun` -> cheetah-run), as the run's params are.
        named = dataclasses.replace(request, task=canonical_task(args.task))
        # Checked before it is created: creating it would report a file there as just "File exists".
        check_out_dir(request.out_dir or Path("runs"))
        if request.out_dir is None:
            check_request(named)  # a refused run creates no directory
        run_dir = Path(request.out_dir or create_default_out_dir(named))
        request = dataclasses.replace(request, out_dir=run_dir)
    try:
        if request is None:
            result = resume(
                run_dir, tracking_uri=args.tracking_uri, device=args.device, progress=not args.no_progress
            )
        else:
            result = execute(request, progress=not args.no_progress)
    except UserError:
        if args.resume is None and args.out is None:
            remove_if_unused(run_dir)  # the default directory made above, if the run was refused
        raise
    except KeyboardInterrupt:
        if checkpoint_path(run_dir).is_file():
            print(f"the last checkpoint is in {run_dir}: continue with gorl-bench run --resume {run_dir}",
                  file=sys.stderr)  # fmt: skip
        raise
    for step, mean, std in result.eval_history:
        print(f"eval @ {step:>10,d} steps: return {mean:8.2f} +- {std:.2f} (std over episodes)")
    saved = "no checkpoint"
    if checkpoint_path(result.out_dir).is_file():
        saved = f"checkpoint in {result.out_dir}"
    print(
        f"{result.status}: final return {result.final_score:.2f} after {result.counted_steps:,d} counted env "
        f"steps; MLflow run {result.mlflow_run_id}; {saved}"
    )
    return 0 if result.status == "FINISHED" else 1


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill in the defaults of the options a new run takes (left unset by the parser, see `register`)."""

    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
