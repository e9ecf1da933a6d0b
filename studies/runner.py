"""`study run`: create or resume a study, then run local worker processes until it is done.

The coordinating process does everything that must happen exactly once, before any worker
starts: it validates the spec and the device, creates the study and records the spec in it,
creates the MLflow experiment and parent run, re-enqueues units of dead workers (and, when
asked, failed units) and enqueues the units that have no trial yet. Workers (here or on other
machines) only claim and run units.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.errors import UserError
from harness.progress import count
from harness.signals import caused_by_interrupt, interrupts_unwrapped
from harness.tracking import resolve_tracking_uri, sqlite_path
from studies import tracking
from studies.proposals import CONCURRENT_ATTR, concurrent_trials
from studies.spec import Spec, load_spec, names_a_file, parse_spec
from studies.status import StudyStatus, study_status, unit_noun
from studies.storage import (
    DIVERGED,
    ERROR,
    check_sqlite_storage,
    counted_trials,
    failure_kind,
    open_storage,
    rerun_failed_trial,
    serialized,
    sqlite_file,
    storage_location,
    sweep_lost_units,
)
from studies.worker import runs_dir_here, work_left

POLL_S = 1.0
# Workers share the cores (each sets its torch threads to its share), so a few per core still
# overlap one's env stepping with another's update; far more only multiplies processes of about
# half a GB each (1,000 on one machine would exhaust its memory before any unit trains).
WORKERS_PER_CORE = 4


@interrupts_unwrapped()
def run_study(
    spec_ref: str | Path,
    location: str | None = None,
    *,
    workers: int = 1,
    tracking_uri: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    retry_failed: bool = False,
    retry_diverged: bool = False,
) -> StudyStatus:
    """Create or resume the study described by `spec_ref` and run `workers` local processes on it.

    Units (tune: trials) that failed on their own are settled and not run again, unless
    `retry_failed` (those that failed with an error) or `retry_diverged` (those whose training
    diverged) enqueues them once more.
    """

    from harness.run import resolve_device

    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}.")
    cores = os.cpu_count() or 1
    if workers > WORKERS_PER_CORE * cores:
        raise UserError(
            f"--workers {workers} is more than {WORKERS_PER_CORE} per core ({WORKERS_PER_CORE * cores} on "
            f"this machine's {cores}): each worker is a process with torch loaded (about half a GB) training "
            "units on its share of the cores. To run more at once, start workers on other machines "
            "against the same --storage (`gorl-bench study worker`)."
        )
    resolve_device(device)  # every unit would fail for it, each after its worker had started
    location = storage_location(location)
    # Before the check that the two stores are apart: an MLflow store given as --storage is told so.
    check_sqlite_storage(location, create=True)
    spec = _spec_to_run(spec_ref, location)
    tracking_moved = tracking_uri is not None
    # Its directory is created only if the study logs there (`prepare_study`), not for a study
    # created elsewhere with its own store.
    tracking_uri = resolve_tracking_uri(tracking_uri, create=False)
    _check_separate_stores(location, tracking_uri)
    if "://" in location and not location.startswith("sqlite") and tracking_uri.startswith("sqlite:"):
        print(
            f"note: the tracking store {tracking_uri} is a local file; workers on other machines need a "
            "shared one (--tracking-uri http://<mlflow server> or postgresql://...).",
            file=sys.stderr,
        )
    study = prepare_study(spec, location, tracking_uri, tracking_moved=tracking_moved, workers=workers)
    if spec.kind == "tune" and workers > (lag := concurrent_trials(study)):
        # More would only wait, each with torch loaded.
        print(
            f"note: starting {count(lag, 'worker')}, not {workers}: study {spec.name!r} runs at most "
            f"{count(lag, 'trial')} "
            f"at once, each proposed from the trials up to {lag} before it, so that it proposes the same "
            "configurations however many workers run (`concurrent_trials` in the spec of a new study "
            "sets how many).",
            file=sys.stderr,
        )
        workers = lag
    if study.user_attrs.get("device") != device:  # what `study worker` defaults to
        study.set_user_attr("device", device)
    kinds = {ERROR} if retry_failed else set()
    kinds |= {DIVERGED} if retry_diverged else set()
    rerun = rerun_failed(study, kinds)
    if rerun and progress:
        print(f"rerunning {count(rerun, 'failed ' + unit_noun(spec.kind))}.", file=sys.stderr)
    # A second round is only needed when a worker died and its unit was re-enqueued after the
    # other workers had run out of units; the bound keeps workers that crash at start from looping.
    for _ in range(3):
        sweep_lost_units(study)
        enqueue_missing_units(study, spec)
        if not work_left(study, spec):
            break
        try:
            _run_workers(study, location, workers, device, progress)
        except BaseException as error:
            if caused_by_interrupt(error):  # its workers stopped with it: the study no longer runs
                tracking.stop_study_run(
                    study.user_attrs["tracking_uri"], study.user_attrs["mlflow_parent_run_id"]
                )
            raise
    status = study_status(study)
    if status.finished:
        tracking.close_study_run(
            study.user_attrs["tracking_uri"], study.user_attrs["mlflow_parent_run_id"], status
        )
    return status


def _check_separate_stores(location: str, tracking_uri: str) -> None:
    """Refuse one SQLite file as both stores: Optuna's and MLflow's schemas would share one version
    table, and whichever comes second fails to open it (with a traceback, after the first wrote)."""

    storage_file, tracking_file = sqlite_file(location), sqlite_path(tracking_uri)
    if storage_file is None or tracking_file is None or storage_file.resolve() != tracking_file.resolve():
        return
    raise UserError(
        f"--storage and --tracking-uri name the same file {storage_file.resolve()}: the study storage and "
        "the MLflow tracking store need a database each."
    )


def _spec_to_run(spec_ref: str | Path, location: str) -> Spec:
    """The spec file or shipped spec `spec_ref`, or else, for the name of a study already in the
    storage (one created from a file elsewhere), the spec it was created with: a study resumes by
    its name as `study status` and `report` find it."""

    from studies.worker import StudyNotFound, load_study

    try:
        return load_spec(spec_ref)
    except UserError as error:
        name = str(spec_ref)
        if names_a_file(name):  # "exp.v2" is a study's name, "exp.toml" a file that failed
            raise
        try:
            stored = load_study(name, location).user_attrs.get("spec")
        except StudyNotFound:  # a storage that cannot be read is its own error, not an unknown spec
            raise error from None
        if stored is None:
            raise
        return parse_spec(stored)


def prepare_study(
    spec: Spec, location: str, tracking_uri: str, *, tracking_moved: bool = False, workers: int = 1
) -> optuna.Study:
    """Create the study (or check that the existing one has the same spec) and its MLflow runs.

    A tune study records its `concurrent_trials` when it is created: the spec's, else `workers`.

    An existing study logs to the tracking store it was created with, unless `tracking_moved`
    (`--tracking-uri` given for it: the store has moved there). The store is checked before the
    study is created, so that one that cannot be used leaves no study behind without its runs.
    """

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # `study run` says what it does itself
    storage = open_storage(location)
    attrs = _checked_attrs(storage, spec, location)
    if "tracking_uri" in attrs and not tracking_moved:
        tracking_uri = attrs["tracking_uri"]
        resolve_tracking_uri(tracking_uri, create=False)  # a store that is down, named in seconds
    else:
        tracking_uri = resolve_tracking_uri(tracking_uri)  # creates an SQLite store's directory
    # MLflow is prepared outside the storage's lock, which would otherwise keep every worker of
    # every study in the file waiting while MLflow retries a store it cannot reach (minutes).
    experiment_id, parent_run_id = tracking.prepare_study_tracking(
        tracking_uri, spec, attrs.get("mlflow_parent_run_id")
    )
    with serialized(storage):
        latest = _checked_attrs(storage, spec, location)
        if "mlflow_parent_run_id" in latest and "mlflow_parent_run_id" not in attrs:
            # Another `study run` created the study meanwhile: its runs are the study's.
            tracking.discard_run(tracking_uri, parent_run_id)
            attrs, tracking_uri = latest, latest["tracking_uri"]
            experiment_id, parent_run_id = latest["mlflow_experiment_id"], latest["mlflow_parent_run_id"]
        study = optuna.create_study(
            study_name=spec.name, storage=storage, direction="maximize", load_if_exists=True
        )
        # The unit runs' directory is recorded when the study is created, before its spec: a study
        # with a spec and no directory was created before directories were recorded, and its units
        # stay where its workers' working directories put them.
        runs_dir = attrs.get("runs_dir")
        if runs_dir is None and "spec" not in attrs:
            runs_dir = str(runs_dir_here(spec.name))
        attrs = {
            **({"runs_dir": runs_dir} if runs_dir is not None else {}),
            "spec": spec.raw,
            "tracking_uri": tracking_uri,
            "mlflow_experiment_id": experiment_id,
            "mlflow_parent_run_id": parent_run_id,
            "units_expected": [unit.key for unit in spec.units()] if spec.kind != "tune" else [],
            "swept": spec.swept,
        }
        if spec.kind == "tune":  # kept once recorded: the trials it proposes depend on it
            attrs[CONCURRENT_ATTR] = study.user_attrs.get(CONCURRENT_ATTR, spec.concurrent_trials or workers)
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
    return study


def _checked_attrs(storage: optuna.storages.BaseStorage, spec: Spec, location: str) -> dict:
    """The stored attrs of the spec's study ({} for a new one); refuses a study of that name whose
    spec differs."""

    attrs = _stored_attrs(storage, spec.name)
    differing = _spec_differences(attrs.get("spec", spec.raw), spec.raw)
    if differing:
        raise UserError(
            f"study {spec.name!r} already exists in {location} with a different spec (it differs in "
            f"{', '.join(differing)}). Give the spec a new `name`, or delete the old study: optuna "
            f"delete-study --study-name {spec.name} --storage {shlex.quote(location)}"
        )
    return attrs


def _spec_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The top-level keys whose values differ between two raw specs, but `description`: a study
    resumes under an edited description (which changes no unit), and the new one is stored."""

    keys = (stored.keys() | new.keys()) - {"description"}
    return sorted(key for key in keys if stored.get(key) != new.get(key))


def _stored_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict:
    """The user attrs of study `name` if the storage holds it, else {}; creates nothing."""

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return {}
    return storage.get_study_user_attrs(study_id)


def enqueue_missing_units(study: optuna.Study, spec: Spec) -> int:
    """Enqueue each grid/compare unit that has no waiting, live, complete or genuinely failed trial
    (a failure that a rerun replaced does not count: the unit is done only once its rerun is)."""

    if spec.kind == "tune":
        return 0
    with serialized(study._storage):
        covered = {t.user_attrs.get("unit") for t in counted_trials(study.get_trials(deepcopy=False))}
        enqueued = 0
        for unit in spec.units():
            if unit.key in covered:
                continue
            study.enqueue_trial({"unit": unit.key}, user_attrs=unit.record())
            covered.add(unit.key)  # a unit listed twice is still enqueued once
            enqueued += 1
    return enqueued


def rerun_failed(study: optuna.Study, kinds: set[str]) -> int:
    """Enqueue again each unit (tune: trial) that failed on its own for a reason in `kinds` and has
    not been rerun yet; returns how many. Done once per `study run`, outside its rounds of
    workers: a unit that fails again stays failed until the next `--retry-failed` or
    `--retry-diverged`."""

    if not kinds:
        return 0
    with serialized(study._storage):
        counted = counted_trials(study.get_trials(deepcopy=False))
        failed = [t for t in counted if t.state == TrialState.FAIL and failure_kind(t) in kinds]
        for trial in failed:
            rerun_failed_trial(study, trial)
    return len(failed)


def worker_device(device: str, index: int, gpus: int) -> str:
    """The device of worker `index` of a study run on `device`, on a machine with `gpus` GPUs: with a
    bare `cuda` the workers take the GPUs in turn (cuda:0, cuda:1, ..., again cuda:0), as one GPU
    for all of them would leave the others idle; a numbered GPU (`cuda:1`) or the CPU is every
    worker's."""

    return f"cuda:{index % gpus}" if device == "cuda" and gpus > 1 else device


def _run_workers(study: optuna.Study, location: str, workers: int, device: str, progress: bool) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    # One torch thread pool per worker, sized so that the workers together fill the machine.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "study",
        "worker",
        study.study_name,
        "--storage",
        location,
        "--threads",
        str(threads),
        "--parent-pid",
        str(os.getpid()),
    ]
    import torch  # here: `study status` and `report` need no torch

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    processes = [
        subprocess.Popen([*command, "--device", worker_device(device, index, gpus)], env=env)
        for index in range(workers)
    ]
    try:
        _watch(study, processes, workers, progress)
    except BaseException:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        raise


def _watch(study: optuna.Study, processes: list[subprocess.Popen], workers: int, progress: bool) -> None:
    """Wait for the workers, showing units done / total and the ETA: a bar in a terminal, else (a
    log, a pipe) a line whenever a unit ends and at least every PLAIN_INTERVAL_S."""

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from harness.progress import PlainLines

    status = study_status(study, workers)
    console = Console()
    plain = progress and not console.is_terminal  # lines only: a bar would print its last state too
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not progress or plain,
    ) as bar:
        task = bar.add_task(study.study_name, total=status.total, info="")
        printed_done, lines = status.done, PlainLines()
        while any(p.poll() is None for p in processes):
            time.sleep(POLL_S)
            status = study_status(study, workers)
            counts = f"running {status.active}  failed {status.failed}  pruned {status.pruned}"
            bar.update(task, completed=status.done, info=f"{counts}  {status.eta_text}")
            if plain and lines.due(news=status.done != printed_done):
                printed_done = status.done
                done = f"{status.done}/{status.total} {unit_noun(status.kind)}s"
                print(f"{study.study_name}: {done}  {counts}  {status.eta_text}", file=sys.stderr, flush=True)
    crashed = [str(p.pid) for p in processes if p.returncode not in (0, None)]
    if crashed:
        print(
            f"workers {', '.join(crashed)} exited abnormally; their units are re-enqueued.", file=sys.stderr
        )
