"""A study worker: claims units from the study's storage and runs them one after another.

Any number of workers, on any number of machines sharing an RDB storage, can serve one study;
everything a worker needs (the spec, the MLflow experiment and parent run) is read from the
study itself. Each unit is one call of the run harness.

* grid / compare: a trial is one unit, claimed from the queue that `study run` filled.
* tune: a trial is one sampled configuration; its units run in a fixed (seed, task) order and
  the IQM of normalised final scores so far is reported after each, so the pruner can stop a
  bad configuration after its first units.

A unit that fails (an exception, a non-finite score) is recorded FAILED with its reason and kind
(`storage.failure_kind`) and the worker moves on: `study run --retry-failed` (an error) or
`--retry-diverged` (a non-finite score) reruns it later. In a tune trial a diverged unit is
instead scored at its task's worst (as the report scores one), and the trial goes on. A
sampled tune configuration that the algorithm's config refuses fails before any of its units
starts; a worker that dies is handled by `storage.sweep_lost_units` (the retry of a lost tune
trial reuses the units it had finished). A worker that was
only silent (a suspended machine) and whose unit was re-queued meanwhile gives the unit up at
its next evaluation, or drops its result, and moves on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

import envs
from harness.errors import UserError, describe
from harness.signals import caused_by_interrupt
from harness.tracking import check_run_continuable, sqlite_store_missing
from studies import SPEC_DIR, tracking
from studies.proposals import concurrent_trials, proposer, suggest
from studies.pruning import make_pruner
from studies.spec import Spec, Unit, check_on_every_task, parse_spec, variant_dir
from studies.status import study_status
from studies.storage import (
    DIVERGED,
    ERROR,
    INVALID,
    PROGRESS_ATTR,
    Proposer,
    StudyNotFound,
    ask_owned,
    claim_waiting_trial,
    counted_trials,
    failure_kind,
    heartbeat,
    is_alive,
    open_storage,
    owns,
    sweep_lost_units,
)

if TYPE_CHECKING:  # imported where it runs: the run harness loads torch
    from harness.run import RunRequest, RunResult


class InvalidConfiguration(UserError):
    """A sampled tune configuration that the algorithm's config, or the budget, refuses."""


class ClaimLost(Exception):
    """The worker's trial was failed as lost elsewhere, and its unit re-queued: stop working on it."""


class DivergedError(FloatingPointError):
    """A unit that ended without a finite score; its MLflow run exists and says why."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(
            f"the run ended {result.status} with final score {result.final_score} (a non-finite loss or "
            "parameter; the MLflow run's status_reason tag has the details)"
        )
        self.mlflow_run_id = result.mlflow_run_id


@dataclass(frozen=True)
class Context:
    """What every unit of one study shares: where to log and where to write."""

    study: optuna.Study
    spec: Spec
    tracking_uri: str
    parent_run_id: str
    out_root: Path
    device: str
    propose: Proposer | None = None  # tune: the params of a new trial (`studies.proposals`)

    @cached_property
    def units(self) -> dict[str, Unit]:
        """The units of a grid or compare study by key, listed once per worker, not per claim."""

        return {unit.key: unit for unit in self.spec.units()}


def run_worker(
    name: str,
    location: str | None,
    *,
    threads: int | None = None,
    device: str | None = None,
    announce: bool = False,
) -> int:
    """Serve study `name` until no unit is left (or the trial budget is spent); returns how many
    units (tune: trials) it claimed, whether it ran them, found them duplicates or gave them up.
    With `announce` (a worker started by hand, whose units show no progress of their own) it
    prints a line when it starts and the study's state after each unit.
    """

    from harness.run import resolve_device

    if threads:
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the coordinator shows progress
    study = load_study(name, location)
    # By default the device `study run` trains on: a worker joining from another machine would
    # otherwise train on its CPU, far slower and with other numbers, without a word.
    recorded = device is None and "device" in study.user_attrs
    device = device or study.user_attrs.get("device", "cpu")
    try:
        resolve_device(device)  # before any claim: otherwise every unit fails with the same reason
    except UserError as error:
        if recorded:
            raise UserError(
                f"{error} (the device of the study's latest `study run`; --device chooses another)"
            ) from None
        raise
    if "spec" not in study.user_attrs:  # created by hand, or a `study run` stopped while creating it
        raise UserError(
            f"study {name!r} has no spec recorded, so it has no units: create it with `gorl-bench study run "
            "SPEC` (with the same --storage) before attaching workers."
        )
    spec = parse_spec(study.user_attrs["spec"], check_configs=False)  # validated by `study run`
    tracking_uri = study.user_attrs["tracking_uri"]
    if sqlite_store_missing(tracking_uri):
        raise UserError(
            f"study {name!r} logs to {tracking_uri}, a file on the machine that created the study. "
            "Workers on other machines need a shared tracking store: create the study with "
            "`study run ... --tracking-uri http://<mlflow server>` (or a postgresql:// URL)."
        )
    # As `study run` refuses it: the units' runs would nest under a deleted run, and closing the
    # study at its end would fail.
    check_run_continuable(tracking_uri, study.user_attrs["mlflow_parent_run_id"])
    propose = None
    if spec.kind == "tune":
        # New trials take the params `propose` draws; the study's own sampler only fills Optuna's
        # start of a trial, which the random sampler does at no cost.
        lag = concurrent_trials(study)
        study.sampler = optuna.samplers.RandomSampler()
        study.pruner = make_pruner(spec.pruner, spec.seeds * len(spec.tasks), lag)
        propose = proposer(spec, lag)
    context = Context(
        study=study,
        spec=spec,
        tracking_uri=tracking_uri,
        parent_run_id=study.user_attrs["mlflow_parent_run_id"],
        out_root=_runs_root(study),
        device=device,
        propose=propose,
    )
    serve = _next_tune_trial if spec.kind == "tune" else _next_unit
    count = 0
    if announce:
        print(f"worker {os.getpid()}: serving study {name!r} on {device}", flush=True)
    while serve(context):
        count += 1
        if announce:
            status = study_status(study)
            print(
                f"worker {os.getpid()}: {count} claimed here; {status.lines()[0]}, {status.eta_text}",
                flush=True,
            )
    # The worker that settles a study's last unit closes the study's MLflow run: with workers from
    # other machines, the `study run` that created it may have stopped before (its MLflow run then
    # stayed RUNNING until `study run` was started again).
    if (status := study_status(study)).finished:
        tracking.close_study_run(tracking_uri, context.parent_run_id, status)
    return count


def runs_dir_here(name: str) -> Path:
    """Where the unit runs of study `name` go from the current directory: runs/studies/NAME."""

    return (Path("runs") / "studies" / name).resolve()


def _runs_root(study: optuna.Study) -> Path:
    """The directory of the study's unit runs: the one recorded when the study was created, so that
    a unit resumed from another working directory finds its checkpoint there.

    A worker on another machine uses it where the directory the study was created from exists (a
    shared file system, or the same layout); elsewhere its runs go under its own working directory,
    with a line saying so. A study created before the directory was recorded keeps its runs
    under the working directory of each worker, as it always did.
    """

    here = runs_dir_here(study.study_name)
    recorded = study.user_attrs.get("runs_dir")
    if recorded is None:
        return here
    recorded = Path(recorded)
    origin = recorded.parents[2]  # ORIGIN/runs/studies/NAME
    # Only under an existing origin: creating the first machine's path from its root on another
    # machine would scatter the runs in a place nobody looks.
    if origin.is_dir():
        try:
            recorded.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = error.strerror or str(error)
        else:
            if os.access(recorded, os.W_OK | os.X_OK):
                return recorded
            reason = "not writable"
    else:
        reason = f"{origin} does not exist here"
    print(
        f"[worker {os.getpid()}] study {study.study_name!r} keeps its unit runs in {recorded}, which this "
        f"machine cannot use ({reason}); this worker's runs go to {here} instead.",
        flush=True,
    )
    return here


def load_study(name: str, location: str | None) -> optuna.Study:
    """The existing study `name`; a storage file that does not exist, or is not a regular file, is an
    error (nothing is created)."""

    from studies.storage import DEFAULT_JOURNAL, check_storage_file, sqlite_file

    where = location or str(DEFAULT_JOURNAL)
    path = sqlite_file(where) if "://" in where else Path(where)  # a journal or an SQLite file
    if path is not None:
        expected = (
            "the --storage a study was run with (a journal file path or an RDB URL such as postgresql://...)"
        )
        check_storage_file(path, where, expected)
        if not path.is_file():
            raise StudyNotFound(f"no study storage at {where}: the file does not exist. Pass {expected}.")
    storage = open_storage(location, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        )
        shipped = (SPEC_DIR / f"{name}.toml").is_file()  # a shipped spec's study is named after it
        raise StudyNotFound(
            f"no study {name!r} in this storage. Studies there: {', '.join(names) or 'none'}. "
            f"Create it with `gorl-bench study run {name if shipped else 'SPEC'}` (with the same --storage)."
        ) from None


def work_left(study: optuna.Study, spec: Spec) -> bool:
    """Whether a worker should claim (grid, compare) or start (tune) one more trial.

    Enqueued trials of a tune study are retries of lost trials: they already count against
    the budget, so they run even when it is spent.
    """

    waiting = bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if spec.kind == "tune":
        return waiting or not _over_budget(study, spec)
    return waiting and not _over_budget(study, spec)


def _over_budget(study: optuna.Study, spec: Spec) -> bool:
    """True when the global trial budget (`max_trials`) is spent, counting every worker's trials."""

    if spec.max_trials is None:
        return False
    counted = counted_trials(study.get_trials(deepcopy=False))
    started = [t for t in counted if t.state != TrialState.WAITING]
    return len(started) >= spec.max_trials


def _next_unit(context: Context) -> bool:
    study, spec = context.study, context.spec
    sweep_lost_units(study)
    # Checked again under the claim's lock: two workers that both saw the last unit of the
    # budget left would otherwise both claim a unit (`max_trials = 1` ran 2).
    trial = claim_waiting_trial(study, lambda: work_left(study, spec))
    if trial is None:
        return False
    # The unit is read from the claimed trial's attributes, not suggested as a parameter: an
    # Optuna categorical stores all its choices, every unit key, with each trial, which grew the
    # storage with the square of the number of units (a 10,000-unit grid: GBs of journal).
    unit = context.units[trial.user_attrs["unit"]]
    _set_attrs(trial, unit.record())
    original = _original_of(study, trial.number, unit.key)
    if original is not None:
        # Only possible when two coordinators enqueued the same unit; never run it twice.
        trial.set_user_attr("duplicate_of", original)
        study.tell(trial, state=TrialState.PRUNED)
        return True
    if "retry_of" in trial.user_attrs:
        _close_orphans(context, unit=unit.key)
    rerun_of = trial.user_attrs.get("rerun_of")
    if rerun_of is None:
        resume = "retry_of" in trial.user_attrs  # a lost attempt's checkpoint holds its training so far
    else:
        # An error may have stopped the unit mid-way: its checkpoint holds the training so far. A
        # diverged unit's last checkpoint would only diverge again.
        resume = failure_kind(study.get_trials(deepcopy=False)[rerun_of]) != DIVERGED
    claimed = time.monotonic()

    def report(score: float, step: int) -> None:
        trial.report(score, step)  # the unit's learning curve, in the study's storage
        # Its pace: `study status` can then tell an ETA before any unit of its configuration ends.
        trial.set_user_attr(PROGRESS_ATTR, {"step": step, "seconds": round(time.monotonic() - claimed, 1)})

    try:
        with heartbeat(study, trial._trial_id) as lost:
            result = _execute(context, unit, context.parent_run_id, report, lost, resume=resume)
        trial.set_user_attr("mlflow_run_id", result.mlflow_run_id)
        trial.set_user_attr("final_score", result.final_score)
        study.tell(trial, envs.normalised_score(unit.task, result.final_score))
    except Exception as error:  # noqa: BLE001 - recorded on the trial; the study goes on
        if _record_failure(study, trial, error) and isinstance(error, DivergedError):
            # Its run exists: linked to its trial, as any unit's.
            tracking.tag_unit_run(
                context.tracking_uri, error.mlflow_run_id, study.study_name, trial.number, "FAIL"
            )
        return True
    tracking.tag_unit_run(
        context.tracking_uri, result.mlflow_run_id, study.study_name, trial.number, "COMPLETE"
    )
    return True


def _original_of(study: optuna.Study, number: int, key: str) -> int | None:
    """Another trial of unit `key` that makes trial `number` a duplicate: one that completed, or one
    that a live worker claimed before this one.

    Claims are ordered by their start times (ties: by trial number) so that of two workers
    claiming the same unit at once, each seeing the other's trial RUNNING, exactly one runs it.
    The times come from the workers' clocks: across machines whose clocks differ by more than
    the time between the two claims, both could run it.
    """

    trials = study.get_trials(deepcopy=False)
    mine = next(t for t in trials if t.number == number)
    same_unit = [t for t in trials if t.user_attrs.get("unit") == key and "duplicate_of" not in t.user_attrs]
    for other in same_unit:
        if other.number == number:
            continue
        if other.state == TrialState.COMPLETE:
            return other.number
        if other.state != TrialState.RUNNING:
            continue
        earlier = (other.datetime_start, other.number) < (mine.datetime_start, mine.number)
        if earlier and is_alive(study, other):
            return other.number
    return None


def _next_tune_trial(context: Context) -> bool:
    study, spec = context.study, context.spec
    sweep_lost_units(study)
    # A re-enqueued lost trial first, else a newly sampled configuration; the budget is checked
    # under the same lock, as for a grid's claim.
    trial = ask_owned(study, lambda: work_left(study, spec), context.propose)
    if trial is None:
        return False
    if "retry_of" in trial.user_attrs:
        lost_run = study.trials[trial.user_attrs["retry_of"]].user_attrs.get("mlflow_run_id")
        if lost_run:
            _close_orphans(context, run_id=lost_run, parent_run_id=lost_run)
    params = {dim.name: suggest(trial, dim) for dim in spec.space}
    variant = f"trial-{trial.number}"
    trial.set_user_attr("variant", variant)
    trial.set_user_attr("algo", spec.algo)
    trial.set_user_attr("params", {**spec.fixed, **params})
    try:
        _check_sampled(spec, params)
    except InvalidConfiguration as error:
        _fail(study, trial, error)
        return True
    run_id = tracking.start_trial_run(
        context.tracking_uri,
        study.user_attrs["mlflow_experiment_id"],
        context.parent_run_id,
        study.study_name,
        trial.number,
        params,
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    state, value = "COMPLETE", None
    try:
        with heartbeat(study, trial._trial_id) as lost:
            state, value = _run_trial_units(context, trial, spec.trial_units(variant, params), run_id, lost)
        if state == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    except Exception as error:  # noqa: BLE001 - recorded on the trial; the study goes on
        if not _record_failure(study, trial, error):
            # Its retry is another trial with its own run; this one stopped, as a lost one's does.
            _close_orphans(context, run_id=run_id)
            return True
        state = "FAIL"
    tracking.finish_run(context.tracking_uri, run_id, state, value if state == "COMPLETE" else None)
    return True


def _run_trial_units(
    context: Context, trial: optuna.Trial, units: list[Unit], run_id: str, lost: threading.Event
) -> tuple[str, float]:
    """Run a tune trial's units in order, reporting the IQM of the scores so far after each;
    return ("COMPLETE" or "PRUNED", the last IQM). Units the lost attempt it retries finished
    are reused, not rerun. A unit that diverges scores 0 (its record says `diverged`)."""

    finished = _finished_units(context.study, trial)
    reused: list[str] = []
    records: list[dict[str, Any]] = []
    scores: list[float] = []
    for done, unit in enumerate(units, start=1):
        earlier = finished.get((unit.task, unit.seed_index))
        if earlier is not None:
            run_id_of_unit, score = earlier["mlflow_run_id"], earlier["score"]
            diverged = bool(earlier.get("diverged"))
            # Its run stays nested under the trial that ran it: the trial's run names it.
            reused.append(f"{unit.key} = {run_id_of_unit}")
            tracking.note_reused_units(context.tracking_uri, run_id, reused)
        else:
            try:
                result = _execute(context, unit, run_id, None, lost, resume=False)
                run_id_of_unit, diverged = result.mlflow_run_id, False
                score = envs.normalised_score(unit.task, result.final_score)
            except DivergedError as error:
                # A result, as in the report: the task's worst score (normalised: 0). Failing the
                # trial instead hid the divergence from the sampler (TPE learns from complete and
                # pruned trials only), which went on sampling the region that diverges.
                run_id_of_unit, score, diverged = error.mlflow_run_id, 0.0, True
        record = {**unit.record(), "mlflow_run_id": run_id_of_unit, "score": score}
        records.append({**record, "diverged": True} if diverged else record)
        trial.set_user_attr("units", records)
        scores.append(score)
        value = iqm(scores)
        # Step = units done, the resource Hyperband counts (`studies.pruning`).
        trial.report(value, done)
        tracking.log_trial_step(context.tracking_uri, run_id, value, done)
        # After the last unit there is nothing left to save: the trial completes.
        if done < len(units) and trial.should_prune():
            return "PRUNED", value
    return "COMPLETE", value


def _finished_units(study: optuna.Study, trial: optuna.Trial) -> dict[tuple[str, int], dict[str, Any]]:
    """(task, seed index) -> record of each unit that an earlier attempt at the trial's
    configuration finished (its MLflow run and normalised score), which the trial reuses rather
    than train again: the lost attempt a retry repeats, and any trial for which the sampler drew
    the same values (its units have the same seeds, so the same results). Records of attempts made
    before scores were recorded are not reused."""

    params, retried = trial.user_attrs.get("params"), trial.user_attrs.get("retry_of")
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    for earlier in study.get_trials(deepcopy=False):
        if earlier.number == trial.number:
            continue
        if earlier.number == retried or (params is not None and earlier.user_attrs.get("params") == params):
            for record in earlier.user_attrs.get("units") or []:
                if "score" in record and record.get("mlflow_run_id"):
                    finished.setdefault((record["task"], record["seed"]), record)
    return finished


def _check_sampled(spec: Spec, params: dict[str, Any]) -> None:
    """Raise `InvalidConfiguration` for a sampled configuration that a unit would refuse.

    The spec's own check covers the corners of the space; a combination inside it can still be
    refused (a num_minibatches that does not divide the batch). Checked before any unit or MLflow
    run starts, it fails at once and is recorded as invalid, which `--retry-failed` never reruns.
    """

    try:
        check_on_every_task(spec, spec.algo, {**spec.fixed, **params}, f"the sampled configuration {params}")
    except UserError as error:
        raise InvalidConfiguration(str(error)) from None


def _execute(
    context: Context,
    unit: Unit,
    parent_run_id: str,
    report: Callable[[float, int], None] | None,
    lost: threading.Event,
    *,
    resume: bool,
) -> RunResult:
    """Run one unit through the run harness; raise if it did not produce a finite score.

    With `resume` (a retried unit, a rerun after an error) and a checkpoint left by the lost or
    failed attempt, the run continues from it, bit-identically and in the same MLflow run. A
    checkpoint of any other run in the unit's directory, or without `resume` one of this very run
    (a diverged unit's, which its rerun does not resume), is moved aside, with a line saying so.
    Once `lost` is set (the heartbeat found the claim gone) the unit stops at its next evaluation
    with `ClaimLost`.
    """

    from harness import run
    from harness.checkpoint import checkpoint_path, hold_run_directory

    def on_evaluation(step: int, mean_return: float) -> None:
        if lost.is_set():
            raise ClaimLost()
        if report is not None and math.isfinite(mean_return):
            report(envs.normalised_score(unit.task, mean_return), step)

    if lost.is_set():
        raise ClaimLost()

    request = _run_request(context, unit, parent_run_id)
    out_dir = Path(request.out_dir)
    if checkpoint_path(out_dir).is_file():
        # Under the directory's lock: a run still training there is an error, not moved away.
        with hold_run_directory(out_dir):
            differences = _differences(out_dir, request)
            resumable = resume and not differences
            # Another run's checkpoint (an earlier study of this name, another spec version): never
            # resumed, and never overwritten without a trace.
            aside = None if resumable else _move_aside(out_dir)
        if aside is None:
            # On the study's device: a rerun after a device failure must not go back to that device.
            # In the study's store, which `study run --tracking-uri` may have moved since the
            # checkpoint recorded it (the old path would lack the run, or be a stale copy).
            resumed = run.resume(
                out_dir,
                tracking_uri=context.tracking_uri,
                device=context.device,
                on_evaluation=on_evaluation,
                progress=False,
            )
            return _checked(resumed)
        if differences:
            held = f"the checkpoint of another run ({'; '.join(differences)})"
        else:
            # This very run's, yet not to be resumed: a diverged unit's rerun starts over. (So does, rarely,
            # a unit enqueued afresh because its rerun was lost before a retry was enqueued.)
            held = "its checkpoint, not resumed: a rerun of a diverged unit starts from the beginning"
        print(
            f"[worker {os.getpid()}] {unit.key}: {out_dir} held {held}; moved it to {aside.name}.", flush=True
        )
    return _checked(run.execute(request, on_evaluation=on_evaluation, progress=False))


def _run_request(context: Context, unit: Unit, parent_run_id: str) -> RunRequest:
    """The run harness's request for one unit: its directory, config layers and MLflow placement."""

    from harness import run

    out_dir = context.out_root / variant_dir(unit.variant) / f"{unit.task}-seed{unit.seed_index}"
    return run.RunRequest(
        algo=unit.algo,
        task=unit.task,
        seed=unit.seed,
        steps=context.spec.steps,
        preset=context.spec.preset,
        overrides=dict(unit.params),
        device=context.device,
        out_dir=out_dir,
        tracking_uri=context.tracking_uri,
        experiment=context.study.study_name,
        parent_run_id=parent_run_id,
        run_name=unit.key,
        tags={
            "gorl.study": context.study.study_name,
            "gorl.unit": unit.key,
            "gorl.variant": unit.variant,
        },
    )


def _checked(result: RunResult) -> RunResult:
    """The run harness's result, or `DivergedError` when the unit ended without a finite score."""

    if not math.isfinite(result.final_score):
        raise DivergedError(result)
    return result


# What makes two runs the same run: their training (algorithm, task, seed, budget, configuration)
# and their place in the study (the MLflow parent: a study, or a tune trial, of its own).
_RUN_IDENTITY = ("algo", "task", "seed", "steps", "preset", "overrides", "parent_run_id")


def _differences(out_dir: Path, request: RunRequest) -> list[str]:
    """How the run checkpointed in `out_dir` differs from `request` (empty: it is that run)."""

    from harness.checkpoint import load_checkpoint
    from harness.run import changed_settings, resolved_settings

    try:
        state = load_checkpoint(out_dir)
        saved = state["request"]
    except Exception as error:  # noqa: BLE001 - an unreadable checkpoint cannot be resumed either
        return [f"unreadable: {error}"]
    wanted = dataclasses.asdict(request)
    differing = [
        f"{key} {saved.get(key)!r}, not {wanted[key]!r}"
        for key in _RUN_IDENTITY
        if saved.get(key) != wanted[key]
    ]
    if differing:
        return differing
    # The same request, resolved by another version to other settings (a preset changed since):
    # its resume would be refused on every retry, so the unit starts over instead.
    try:
        changes = changed_settings(state.get("config"), resolved_settings(request))
    except ValueError as error:  # ill-formed settings: nothing to resume either
        return [str(error)]
    return [f"settings {change}" for change in changes]


def _move_aside(out_dir: Path) -> Path:
    """Rename `out_dir` to a free `<name>.stale-<time>` next to it; returns the new path."""

    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, attempt = out_dir.with_name(f"{out_dir.name}.stale-{stamp}"), 1
    while aside.exists():
        aside, attempt = out_dir.with_name(f"{out_dir.name}.stale-{stamp}-{attempt}"), attempt + 1
    return out_dir.rename(aside)


def _record_failure(study: optuna.Study, trial: optuna.Trial, error: Exception) -> bool:
    """Record `error`, which stopped `trial`: True if the trial is now failed, False if its claim
    was gone (it is given up here; its retry runs from the queue). An interrupt is raised again:
    the unit stays claimed, to be resumed as after any interrupt."""

    if caused_by_interrupt(error):
        raise error
    if _claim_gone(study, trial, error):
        _give_up(trial)
        return False
    _fail(study, trial, error)
    return True


def _claim_gone(study: optuna.Study, trial: optuna.Trial, error: Exception) -> bool:
    """Whether `error` comes from the claim on `trial` being gone rather than from the unit.

    Recording a result on a trial that a sweep failed meanwhile (after the unit's last
    evaluation) fails in Optuna, with an error that depends on the storage and the call; the
    trial's state tells it apart from a genuine error.
    """

    if isinstance(error, ClaimLost):
        return True
    try:
        return not owns(study, trial._trial_id)
    except Exception:  # noqa: BLE001 - the storage is unreachable: the original error stands
        return False


def _give_up(trial: optuna.Trial) -> None:
    print(
        f"[worker {os.getpid()}] trial {trial.number} was re-queued while this worker was silent for longer "
        "than the grace period (a suspended machine, a storage outage?); it is given up here and its retry "
        "runs from the queue.",
        flush=True,
    )


def _close_orphans(context: Context, **runs: str) -> None:
    """`tracking.close_orphan_runs` in the study's experiment; `runs`: which, as it takes them."""

    experiment_id = context.study.user_attrs["mlflow_experiment_id"]
    tracking.close_orphan_runs(context.tracking_uri, experiment_id, **runs)


def _fail(study: optuna.Study, trial: optuna.Trial, error: BaseException) -> None:
    reason = describe(error)
    trial.set_user_attr("fail_reason", reason)
    kinds = {DivergedError: DIVERGED, InvalidConfiguration: INVALID}
    trial.set_user_attr("failure", kinds.get(type(error), ERROR))
    if isinstance(error, DivergedError):
        trial.set_user_attr("mlflow_run_id", error.mlflow_run_id)
    trial.set_user_attr("traceback", "".join(traceback.format_exception(error))[-4000:])
    study.tell(trial, state=TrialState.FAIL)
    print(f"[worker {os.getpid()}] trial {trial.number} failed: {reason}", flush=True)


def iqm(values: list[float]) -> float:
    """Interquartile mean, as rliable's: the mean after cutting int(n / 4) values from each end
    (the plain mean below four values)."""

    from scipy.stats import trim_mean

    return float(trim_mean(values, 0.25))


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
