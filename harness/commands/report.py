"""`gorl-bench report STUDY`: rliable statistics, figures and tables of a study, logged to MLflow."""

from __future__ import annotations

import argparse
import sys

from harness.commands.arguments import directory, integer, non_empty
from harness.commands.study import STORAGE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rliable statistics, figures and tables of a study (also logged to its MLflow run)",
        description="Aggregate a study's final scores with stratified bootstrap intervals (IQM, median, "
        "mean, optimality gap, probability of improvement, performance profiles, sample-efficiency "
        "curves, and ablations of grid studies) and write figures, tables and the tidy results CSV.",
    )
    parser.add_argument("study", help="the study name")
    parser.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    parser.add_argument(
        "--tracking-uri", type=non_empty, help="MLflow tracking URI (default: the one the study recorded)"
    )
    parser.add_argument("--out", type=directory, help="output directory (default runs/reports/STUDY)")
    # harness.report.DEFAULT_REPS, not imported while parsing: the report's imports take a second.
    parser.add_argument(
        "--reps", type=integer, default=50_000, help="bootstrap resamples, 100 to 500,000 (default 50,000)"
    )
    parser.add_argument("--seed", type=integer, default=0, help="seed of the bootstrap (default 0)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.commands.arguments import check_out_dir
    from harness.progress import DelayedProgress
    from harness.report import DEFAULT_OUT, build_report

    out = args.out or DEFAULT_OUT / args.study
    check_out_dir(out)  # before the study is read and bootstrapped, not when the first file is written
    with DelayedProgress("bootstrap: {task.completed:,.0f} resamples") as progress:
        report = build_report(
            args.study,
            args.storage,
            args.tracking_uri,
            out,
            reps=args.reps,
            seed=args.seed,
            progress=progress.advance,
        )
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for unit, reason in report.failed:
        print(f"failed: {unit}: {reason}")
    if report.partial:
        print(f"PARTIAL report: {len(report.missing)} unit(s) not finished yet:")
        print("\n".join(f"  {unit}" for unit in report.missing))
    print(
        f"report of {args.study} written to {report.out_dir} (summary.md, figures, tables.tex, results.csv)"
    )
    return 0
