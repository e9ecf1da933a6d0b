"""How far a study has come: trial counts by state, units done, failures and an ETA.

Shared by `study status` and the progress display and summary of `study run`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import first_line
from harness.progress import count, duration
from studies.storage import (
    DIVERGED,
    ERROR,
    INVALID,
    PROGRESS_ATTR,
    RETRY_ATTRS,
    counted_trials,
    failure_kind,
    is_lost,
    rerun_trials,
    trial_label,
    worker_gone_here,
)

SHOWN_FAILURES = 5  # `gorl-bench report` lists them all


@dataclass(frozen=True)
class Failure:
    """A unit (tune: a trial) that failed on its own, and was not rerun since."""

    label: str  # the unit ("variant|task|seedN"), or the tune trial ("trial-N")
    kind: str  # studies.storage.ERROR, DIVERGED or INVALID
    reason: str  # its first line


@dataclass(frozen=True)
class StudyStatus:
    name: str
    kind: str
    complete: int
    running: int
    stopped: int  # of the running ones: their worker on this host is gone; the next sweep retries them
    waiting: int
    failures: tuple[Failure, ...]  # units (or tune trials) that failed on their own: NaN, exceptions
    lost: int  # attempts whose worker died; each was re-enqueued
    rerun: int  # failed attempts that `study run --retry-failed` (or --retry-diverged) replaced
    pruned: int
    total: int  # units of a grid/compare study (at most max_trials), max_trials of a tune study
    eta: timedelta | None
    best: str | None = None  # tune: the best complete trial so far, its objective and parameters
    not_run: int = 0  # grid/compare: units queued past max_trials, which never run

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def active(self) -> int:
        """Units (tune: trials) a live worker is running: a stopped one's trial is RUNNING too."""

        return self.running - self.stopped

    @property
    def done(self) -> int:
        """Settled units or trials: nothing more will happen to them."""

        return self.complete + self.failed + self.pruned

    @property
    def finished(self) -> bool:
        return self.done >= self.total and self.running == 0

    @property
    def eta_text(self) -> str:
        if self.stopped and self.stopped >= self.running and not self.finished:
            return "ETA - (no worker is running)"  # the ETA assumed workers that are gone
        return "ETA " + ("-" if self.eta is None else duration(self.eta.total_seconds()))

    def lines(self) -> list[str]:
        ending = ""
        if self.finished:
            ending = f" - finished, {self.failed} failed" if self.failed else " - finished"
        rerun = f"  failed+rerun {self.rerun}" if self.rerun else ""
        stopped = f"  stopped {self.stopped}" if self.stopped else ""
        lines = [
            f"study {self.name} ({self.kind}): {self.done}/{self.total} done{ending}",
            f"  complete {self.complete}  running {self.active}{stopped}  waiting {self.waiting}  "
            f"failed {self.failed}  pruned {self.pruned}  retried {self.lost}{rerun}",
            f"  {self.eta_text}",
        ]
        if self.not_run:
            lines.append(
                f"  {count(self.not_run, 'more unit')} never run: the spec's max_trials ends the study "
                "before them"
            )
        if self.best:
            lines.append(f"  best so far: {self.best}")
        if self.stopped:
            # A unit resumes its checkpoint; a tune trial is retried as a new trial that reuses the
            # units its attempt finished and runs the others from their start.
            tune = self.kind == "tune"
            retried = "as new trials, reusing their finished units" if tune else "from their last checkpoint"
            lines.append(
                f"  {count(self.stopped, unit_noun(self.kind))} lost to a stopped or crashed worker: "
                f"`gorl-bench study run` retries them {retried}"
            )
        for failure in self.failures[:SHOWN_FAILURES]:
            lines.append(f"  failed {failure.label}: {failure.reason[:300]}")
        if self.failed > SHOWN_FAILURES:
            more = self.failed - SHOWN_FAILURES
            lines.append(f"  ... and {more} more (`gorl-bench report` lists them all)")
        return lines

    def advice(self, command: str) -> list[str]:
        """What to do about the failures, for a study run again with `command` (`gorl-bench study run
        SPEC ...`); empty when nothing failed."""

        if not self.failures:
            return []
        noun = unit_noun(self.kind)
        kinds = {failure.kind for failure in self.failures}
        lines = [f"{count(self.failed, noun)} failed (listed above): the study did not fully succeed."]
        if ERROR in kinds:
            lines.append(
                f"Failed {noun}s are not rerun by default. Once the cause of an error is fixed (a full disk, "
                f"a directory in use, CUDA out of memory), rerun the {noun}s it failed: "
                f"{command} --retry-failed"
            )
        if DIVERGED in kinds:
            lines.append(
                f"Diverged {noun}s (a non-finite loss or score) are kept as results: on the same code and "
                f"machine their seeds diverge again. To rerun them from the start: {command} --retry-diverged"
            )
        if INVALID in kinds:
            lines.append(
                "Sampled combinations that the configuration refuses are never rerun: narrow [space] so that "
                "every combination is valid (a changed spec needs a new study `name`)."
            )
        return lines


def unit_noun(kind: str) -> str:
    """What a study of `kind` runs one by one: units, or the trials (configurations) of a tune study."""

    return "trial" if kind == "tune" else "unit"


def study_status(study: optuna.Study, workers: int | None = None) -> StudyStatus:
    """Count the study's trials; the ETA assumes `workers` (default: the running trials) in parallel."""

    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    kind = attrs["spec"]["kind"]
    counted = counted_trials(trials)
    counts = Counter(trial.state for trial in counted)
    failures = [
        Failure(
            trial_label(trial),
            failure_kind(trial),
            first_line(trial.user_attrs["fail_reason"], empty="no reason recorded"),
        )
        for trial in counted
        if trial.state == TrialState.FAIL
    ]
    # With a trial budget smaller than the grid, the study is finished when the budget is spent.
    budget = attrs["spec"].get("max_trials")
    total = min(len(attrs["units_expected"]), budget or math.inf) if kind != "tune" else int(budget)
    done = counts[TrialState.COMPLETE] + counts[TrialState.FAIL] + counts[TrialState.PRUNED]
    # Workers start grid/compare units until max_trials have started; the rest wait forever. (A tune
    # study's waiting trials are retries of started ones, which run whatever the budget.)
    waiting = counts[TrialState.WAITING]
    started = len(counted) - waiting
    not_run = max(waiting - max(total - started, 0), 0) if kind != "tune" else 0
    return StudyStatus(
        name=study.study_name,
        kind=kind,
        complete=counts[TrialState.COMPLETE],
        running=counts[TrialState.RUNNING],
        stopped=sum(worker_gone_here(t) for t in counted if t.state == TrialState.RUNNING),
        waiting=waiting - not_run,
        failures=tuple(failures),
        lost=sum(is_lost(trial) for trial in trials),
        rerun=len(rerun_trials(trials)),  # each names the failed trial it replaced
        pruned=counts[TrialState.PRUNED],
        total=total,
        eta=_eta(
            counted, max(total - done, 0), workers or counts[TrialState.RUNNING] or 1, attrs["spec"]["steps"]
        ),
        best=_best_trial(counted) if kind == "tune" else None,
        not_run=not_run,
    )


def _best_trial(trials: list[FrozenTrial]) -> str | None:
    """`trial-N: IQM 0.612, lr=0.0003 clip=0.2` for the complete trial of the highest objective."""

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    best = max(complete, key=lambda t: t.value)
    used = best.user_attrs.get("params", {})  # as the runs got them (a list choice is JSON to Optuna)
    values = {name: used.get(name, value) for name, value in best.params.items()}
    params = " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                      for name, value in values.items())  # fmt: skip
    return f"{trial_label(best)}: IQM {best.value:.3f}, {params}"


def _eta(
    trials: list[FrozenTrial], remaining: int, parallel: int, steps: int, now: datetime | None = None
) -> timedelta | None:
    """Time until the `remaining` units not yet done are: each is expected to take the median time
    of the complete units of its variant on its task (a study's variants can differ in length
    several times), a running one less the time it has run so far. Where none of its
    configuration has finished, a running unit's own pace says how long it takes (`_paced`), and
    any other the median of all complete units, or before the first has finished, that of the
    running units' paces. `parallel` workers share that work, and the study ends no sooner than its
    longest unit left. `steps`: the spec's counted env steps per unit."""

    if remaining == 0:
        return timedelta(0)
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t in trials:
        if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete:
            durations[_configuration(t)].append((t.datetime_complete - t.datetime_start).total_seconds())
    paced = {t.number: seconds for t in trials if (seconds := _paced(t, steps)) is not None}
    if not durations and not paced:
        return None
    completed = [seconds for group in durations.values() for seconds in group]
    overall = statistics.median(completed or list(paced.values()))
    now = now or datetime.now()  # Optuna stamps trials with the local time, without a zone
    outstanding = [t for t in trials if t.state == TrialState.RUNNING]
    outstanding += [t for t in trials if t.state == TrialState.WAITING]
    left = []
    for t in outstanding[:remaining]:
        group = durations.get(_configuration(t))
        expected = statistics.median(group) if group else paced.get(t.number, overall)
        if t.state == TrialState.RUNNING and t.datetime_start:
            expected = max(expected - (now - t.datetime_start).total_seconds(), 0.0)
        left.append(expected)
    # Tune trials are created as they start: the rest of the budget has no trial yet.
    left += [overall] * (remaining - len(left))
    return timedelta(seconds=round(max(sum(left) / parallel, max(left))))


def _paced(trial: FrozenTrial, steps: int) -> float | None:
    """A running grid or compare unit's whole duration, from its pace up to its last evaluation
    (`PROGRESS_ATTR`: the seconds it took to reach the counted steps evaluated there); None before
    its first evaluation, and for a retried or rerun attempt, which may have resumed mid-way."""

    progress = trial.user_attrs.get(PROGRESS_ATTR)
    if trial.state != TrialState.RUNNING or not progress or RETRY_ATTRS & trial.user_attrs.keys():
        return None
    return progress["seconds"] / min(progress["step"] / steps, 1.0) if progress["step"] > 0 else None


def _configuration(trial: FrozenTrial) -> tuple[str, str]:
    """(variant, task) of a unit; a tune trial's variant is the trial itself."""

    return trial.user_attrs.get("variant", ""), trial.user_attrs.get("task", "")
