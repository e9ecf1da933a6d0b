"""`gorl-bench report STUDY` (or `--runs DIR ...`): rliable statistics, figures and tables of a study,
logged to its MLflow run, or of runs started by hand."""

from __future__ import annotations

import argparse
import sys

from harness.commands.arguments import directory, integer, non_empty
from harness.commands.study import STORAGE_HELP
from harness.progress import count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rliable statistics, figures and tables of a study or of runs (a study's: also logged to "
        "its MLflow run)",
        description="Aggregate a study's final scores with stratified bootstrap intervals (IQM, median, "
        "mean, optimality gap, probability of improvement, performance profiles, sample-efficiency "
        "curves, and ablations of grid studies) and write figures, tables and the tidy results CSV. "
        "With --runs, the same for runs started by hand, grouped into variants by configuration.",
    )
    parser.add_argument("study", nargs="?", help="the study name (or --runs)")
    parser.add_argument(
        "--runs",
        nargs="+",
        type=directory,
        metavar="DIR",
        help="run directories to report instead of a study: each run is a seed of the variant its "
        "algorithm, budget and settings make",
    )
    parser.add_argument(
        "--name", type=non_empty, help="with --runs: the report's title and folder name (default runs)"
    )
    parser.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    parser.add_argument(
        "--tracking-uri", type=non_empty, help="MLflow tracking URI (default: the one the study recorded)"
    )
    parser.add_argument(
        "--out", type=directory, help="output directory (default runs/reports/STUDY, or runs/reports/NAME)"
    )
    # harness.report.DEFAULT_REPS, not imported while parsing: the report's imports take a second.
    parser.add_argument(
        "--reps", type=integer, default=50_000, help="bootstrap resamples, 100 to 500,000 (default 50,000)"
    )
    parser.add_argument("--seed", type=integer, default=0, help="seed of the bootstrap (default 0)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.commands.arguments import check_distinct_runs, check_out_dir
    from harness.errors import UserError
    from harness.progress import DelayedProgress
    from harness.report import DEFAULT_OUT, RUNS_NAME, build_report, build_runs_report
    from studies.spec import check_plain_name

    if (args.study is None) == (args.runs is None):
        raise UserError("give a study name or --runs DIR ..., one of the two.")
    if args.runs is not None:
        study_options = [flag for flag, value in (("--storage", args.storage),
                         ("--tracking-uri", args.tracking_uri)) if value is not None]  # fmt: skip
        if study_options:
            raise UserError(
                f"{' and '.join(study_options)}: a study's; --runs reads the run directories alone."
            )
        check_distinct_runs(args.runs)
        if args.name is not None:  # a folder of runs/reports/, as a study's name is
            check_plain_name(args.name, "--name", "a report name")
    elif args.name is not None:
        raise UserError("--name names a report of --runs; a study's report is named after the study.")
    title = args.study or args.name or RUNS_NAME
    out = args.out or DEFAULT_OUT / title
    check_out_dir(out)  # before the study is read and bootstrapped, not when the first file is written
    with DelayedProgress("bootstrap: {task.completed:,.0f} resamples") as progress:
        options = {"reps": args.reps, "seed": args.seed, "progress": progress.advance}
        if args.runs is not None:
            report = build_runs_report(args.runs, title, out, **options)
        else:
            report = build_report(args.study, args.storage, args.tracking_uri, out, **options)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for unit, reason in report.failed:
        print(f"failed: {unit}: {reason}")
    if report.partial:
        print(
            f"PARTIAL report: {count(len(report.missing), 'run' if args.runs else 'unit')} not finished yet:"
        )
        print("\n".join(f"  {unit}" for unit in report.missing))
    print(f"report of {title} written to {report.out_dir} (summary.md, figures, tables.tex, results.csv)")
    return 0
