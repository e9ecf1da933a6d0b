"""`gorl-bench study run|worker|status`: Optuna-driven ablations, comparisons and tuning.

A study's storage is a journal file under `runs/` by default (several processes, one machine)
or an RDB URL such as `postgresql://user@host/db` (several machines).
"""

from __future__ import annotations

import argparse
import os
import sys

from harness.commands.arguments import add_command, int_between, non_empty, positive_int
from harness.limits import MAX_THREADS
from harness.progress import count

STORAGE_HELP = (
    "journal file path, sqlite:///PATH, or postgresql://... for several machines; "
    "default runs/studies.journal"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "study", "run Optuna studies: ablation grids, comparisons, tuning")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    run = add_command(actions, "run", "create or resume a study and run local workers until it is done")
    run.add_argument("spec", help="a spec shipped in studies/ (e.g. demo) or the path of a TOML file")
    run.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    run.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default 1)")
    run.add_argument(
        "--tracking-uri",
        type=non_empty,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db); for a study "
        "that exists: where its store is now, if it moved (otherwise it keeps the store it was created with)",
    )
    run.add_argument("--device", default="cpu", help="torch device for every unit (default cpu)")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun the units (tune: trials) that failed with an error, such as a full disk, a directory in "
        "use or CUDA out of memory: a unit from its last checkpoint where it has one, a tune trial's "
        "configuration as a new trial that reuses the units the failed one finished; failed units are "
        "otherwise settled",
    )
    run.add_argument(
        "--retry-diverged",
        action="store_true",
        help="rerun the units whose training diverged (a non-finite loss or score), from the start; on "
        "the same code and machine a seed diverges again (a tune trial scores its diverged units at "
        "their task's worst: there this reruns only trials an earlier version failed for a divergence)",
    )
    run.set_defaults(func=_run)

    worker = add_command(actions, "worker", "attach one more worker to an existing study, from any machine")
    worker.add_argument("name", help="the study name (the spec's `name`, by default its file name)")
    worker.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    worker.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        help=f"torch threads for this worker, 1 to {MAX_THREADS} (default: torch's choice)",
    )
    worker.add_argument(
        "--device", help="torch device (default: the one of the study's latest `study run`, else cpu)"
    )
    worker.add_argument(
        "--parent-pid",
        type=positive_int,
        # Internal: `study run` starts its workers so, and they end with it (as `kill PID` stops one)
        # when the process that started them is gone.
        help=argparse.SUPPRESS,
    )
    worker.set_defaults(func=_worker)

    show = add_command(
        actions, "show", "what a study will run, before it runs: its configurations, units and env steps"
    )
    show.add_argument("spec", help="a spec shipped in studies/ (e.g. demo) or the path of a TOML file")
    show.set_defaults(func=_show)

    status = add_command(actions, "status", "complete / running / failed / pruned counts and an ETA")
    status.add_argument("name", help="the study name")
    status.add_argument("--storage", type=non_empty, help=STORAGE_HELP)
    status.set_defaults(func=_status)


def _run(args: argparse.Namespace) -> int:
    from studies.runner import run_study

    try:
        status = run_study(
            args.spec,
            args.storage,
            workers=args.workers,
            tracking_uri=args.tracking_uri,
            device=args.device,
            retry_failed=args.retry_failed,
            retry_diverged=args.retry_diverged,
        )
    except KeyboardInterrupt:
        print(
            f"\nstopped: finished units are kept; `{run_command(args.spec, args.storage)}` resumes the study "
            "(an interrupted unit from its last checkpoint; in a tune study, an interrupted trial's unit "
            "from its start).",
            file=sys.stderr,
        )
        raise
    print("\n".join(status.lines()))
    if not status.finished and status.active and not status.waiting:
        print(
            f"Not finished: {count(status.active, 'unit')} still training in workers of other "
            f"processes (`study worker`); `gorl-bench study status {status.name}` follows them, and the "
            "worker that ends the last one closes the study's MLflow run."
        )
        return 1
    if not status.finished:
        print("Not finished: run the same command again to resume.")
        return 1
    if status.failed:
        # A study with failed units is not a success, even with nothing left to run.
        print("\n".join(status.advice(run_command(args.spec, args.storage))))
        return 1
    return 0


def run_command(spec: str, storage: str | None) -> str:
    """The `study run` command line to suggest, quoted for a shell: spec and storage as given."""

    import shlex

    storage_option = f" --storage {shlex.quote(storage)}" if storage else ""
    return f"gorl-bench study run {shlex.quote(spec)}{storage_option}"


def _worker(args: argparse.Namespace) -> int:
    import signal

    from harness.signals import caused_by_interrupt, interrupt, interrupt_when_parent_ends

    def ignore(signum: int, frame: object) -> None:
        pass

    def interrupt_once(signum: int, frame: object) -> None:
        # Ctrl-C reaches the worker from the terminal and then SIGTERM from the coordinator that
        # stops it: a second interrupt in the middle of saving and shutting down would only
        # break the cleanup (an atexit traceback), so after the first one both are ignored.
        # A no-op handler, not SIG_IGN: one already pending when SIG_IGN is set makes Python print
        # "Signal 15 ignored due to race condition" with a traceback.
        signal.signal(signal.SIGINT, ignore)
        signal.signal(signal.SIGTERM, ignore)
        interrupt(signum, frame)

    # `kill PID` (or the coordinator stopping its workers) ends the unit's MLflow run as KILLED and
    # keeps its checkpoint, as Ctrl-C does, instead of leaving the run RUNNING.
    signal.signal(signal.SIGINT, interrupt_once)
    signal.signal(signal.SIGTERM, interrupt_once)
    if args.parent_pid:
        interrupt_when_parent_ends(args.parent_pid)
    try:
        from studies.worker import run_worker

        count = run_worker(
            args.name,
            args.storage,
            threads=args.threads,
            device=args.device,
            announce=not args.parent_pid,  # `study run` shows its workers' progress itself
        )
    except BaseException as error:
        # A worker of `study run`, which says once for all that it was interrupted (an interrupt
        # may arrive as another error: an import it broke).
        if args.parent_pid and caused_by_interrupt(error):
            return 130
        raise
    print(f"worker {os.getpid()}: nothing left to claim ({count} claimed here).")
    return 0


def _status(args: argparse.Namespace) -> int:
    from harness.report.results import open_study
    from studies.status import study_status

    # As `report` does: opening a journal path that does not exist would create an empty one.
    status = study_status(open_study(args.name, args.storage))
    print("\n".join(status.lines() + status.advice(run_command("SPEC", args.storage))))
    return 0


def _show(args: argparse.Namespace) -> int:
    from studies.plan import plan_lines
    from studies.spec import load_spec

    print("\n".join(plan_lines(load_spec(args.spec))))
    print(f"run it: {run_command(args.spec, None)} --workers N")
    return 0
