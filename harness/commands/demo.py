"""`gorl-bench demo`: the main job in one command — an ablation with a baseline, its statistics and figures.

Runs the `studies/demo.toml` study through the code path of `gorl-bench study run`, builds its
report through the code path of `gorl-bench report`, then says where the figures and tables are
and how to open the MLflow UI and the Optuna dashboard on the study's stores.

Running it again resumes: the study storage completes every unit exactly once, so only the
units not yet done run, and the report is rebuilt from all of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import time
from pathlib import Path

from harness.commands.arguments import directory, integer, non_empty, positive_int
from harness.commands.study import STORAGE_HELP, run_command
from harness.progress import duration

# The demo is sized for two cores; more workers only help on a machine with more.
DEFAULT_WORKERS = max(2, min(os.cpu_count() or 2, 8))
# Fewer resamples than `report`'s paper-ready default: the demo's intervals are for looking at,
# and 10,000 keeps the report to seconds on two cores.
DEFAULT_REPS = 10_000
# What each figure of the report shows, for the closing message.
FIGURES = {
    "aggregates": "IQM, median, mean and optimality gap of final scores, 95% intervals",
    "sample_efficiency": "IQM against env steps",
    "performance_profile": "fraction of runs above each score",
    "probability_of_improvement": "P(X > Y) for each pair of variants",
    "ablation": "final IQM against each swept parameter",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo study (GoRL-FM at two timescales vs Gaussian PPO) and report it",
        description="Run the demo study (studies/demo.toml), build its rliable report, and print "
        "where the figures are and how to open the MLflow UI and the Optuna dashboard. Running "
        "it again resumes: finished units are reused, the report is rebuilt.",
    )
    parser.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    parser.add_argument(
        "--tracking-uri",
        type=non_empty,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=DEFAULT_WORKERS,
        help="local worker processes (default: one per core, 2-8)",
    )
    parser.add_argument("--out", type=directory, help="report directory (default runs/reports/demo)")
    parser.add_argument(
        "--reps",
        type=integer,
        default=DEFAULT_REPS,
        help=f"bootstrap resamples, 100 to 500,000 (default {DEFAULT_REPS:,})",
    )
    # Lets the tests point the demo at a tiny spec; users run `study run` for other specs.
    parser.add_argument("--spec", default="demo", help=argparse.SUPPRESS)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import optuna

    from harness.commands import report
    from harness.commands.arguments import check_out_dir
    from harness.report import DEFAULT_OUT, check_bootstrap, check_report_dir
    from studies.runner import run_study
    from studies.spec import load_spec
    from studies.storage import storage_location
    from studies.worker import load_study

    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the demo says itself what it creates or resumes
    spec = load_spec(args.spec)
    out = args.out or DEFAULT_OUT / spec.name
    # The report's own checks, made before the study: otherwise they fail only after it has trained.
    check_bootstrap(args.reps, seed=0)
    check_out_dir(out)
    check_report_dir(out)
    location = storage_location(args.storage)
    total = len(spec.units())
    reused = _units_done(spec.name, location)
    print(f"Demo study {spec.name!r}: {spec.description}")
    if reused == total:
        print(f"All {total} units are already done: reusing them and rebuilding the report.")
    elif reused:
        print(f"Resuming: {reused} of {total} units are already done and are reused.")
    try:
        status = run_study(args.spec, location, workers=args.workers, tracking_uri=args.tracking_uri)
    except KeyboardInterrupt:
        done = _units_done(spec.name, location)
        print(f"\nInterrupted: {done} of {total} units done and kept; run the same command again to resume.")
        return 130
    print("\n".join(status.lines()))
    ran = max(status.done - reused, 0)
    print(f"Units: {ran} run now, {reused} reused from an earlier run.")

    report_args = argparse.Namespace(
        study=spec.name, runs=None, name=None, storage=location, tracking_uri=args.tracking_uri, out=out,
        reps=args.reps, seed=0,
    )  # fmt: skip
    try:
        report.main(report_args)
    except KeyboardInterrupt:
        print("\nInterrupted while building the report; the study is kept: run the same command again.")
        return 130

    # The study's store: the one it was created with, unless --tracking-uri said where it moved.
    tracking_uri = load_study(spec.name, location).user_attrs["tracking_uri"]
    print()
    print(f"Done in {duration(time.monotonic() - started)}.")
    print(f"Summary and tables: {_shown(out / 'summary.md')}, {_shown(out / 'tables.tex')}")
    print("Figures:")
    for png in sorted(out.glob("*.png")):
        print(f"  {_shown(png):60s} {FIGURES.get(png.stem, '')}".rstrip())
    print("MLflow UI (then open http://127.0.0.1:5000):")
    print(f"  {mlflow_ui_command(tracking_uri)}")
    print("Optuna dashboard (then open http://127.0.0.1:8080):")
    print(f"  {dashboard_command(location)}")
    if not status.finished:
        print("The study did not finish (see the counts above): run the same command again to resume.")
        return 1
    if status.failed:  # the report above is built from the units that did finish
        print("\n".join(status.advice(run_command(args.spec, location))))
        return 1
    return 0


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that serves the MLflow UI on `tracking_uri` (a server URI is the UI itself)."""

    from harness.tracking import sqlite_path

    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser (it is an MLflow tracking server)"
    store = sqlite_path(tracking_uri)
    if store is not None:
        tracking_uri = "sqlite:///" + _shown(store)
    return f"{_tool('mlflow')} ui --backend-store-uri {shlex.quote(tracking_uri)}"


def dashboard_command(location: str) -> str:
    """The command that serves the Optuna dashboard on a journal file or an RDB URL.

    optuna-dashboard opens a path to an existing file as a journal file, anything else as an
    RDB URL. It is an optional extra, so the command installs it first when it is missing.
    """

    target = location if "://" in location else _shown(Path(location))
    command = f"{_tool('optuna-dashboard')} {shlex.quote(target)}"
    if importlib.util.find_spec("optuna_dashboard") is None:
        command = f"{_tool('pip')} install optuna-dashboard && {command}"
    return command


def _units_done(name: str, location: str) -> int:
    """Settled units of study `name` (0 when it does not exist yet)."""

    import optuna

    from studies.status import study_status
    from studies.storage import open_storage

    if "://" not in location and not Path(location).is_file():
        return 0  # no journal yet; opening one would create the file
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(location))
    except KeyError:
        return 0
    if "spec" not in study.user_attrs:
        return 0  # created by an earlier run interrupted before it recorded the spec
    return study_status(study).done


def _tool(name: str) -> str:
    """A console script of this installation (e.g. .venv/bin/mlflow), as the user would type it."""

    return _shown(Path(sys.executable).parent / name)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies under it, else absolute."""

    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
