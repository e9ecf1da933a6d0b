"""How far a study has come: trial counts by state, units done, and an ETA.

Shared by `study status` and the progress display of `study run`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies.storage import is_lost


@dataclass(frozen=True)
class StudyStatus:
    name: str
    kind: str
    complete: int
    running: int
    waiting: int
    failed: int  # units (or tune trials) that failed on their own: NaN, exceptions
    lost: int  # attempts whose worker died; each was re-enqueued
    pruned: int
    total: int  # units of a grid/compare study (at most max_trials), max_trials of a tune study
    eta: timedelta | None

    @property
    def done(self) -> int:
        """Settled units or trials: nothing more will happen to them."""

        return self.complete + self.failed + self.pruned

    @property
    def finished(self) -> bool:
        return self.done >= self.total and self.running == 0

    def lines(self) -> list[str]:
        eta = "-" if self.eta is None else _format(self.eta)
        return [
            f"study {self.name} ({self.kind}): {self.done}/{self.total} done"
            + (" - finished" if self.finished else ""),
            f"  complete {self.complete}  running {self.running}  waiting {self.waiting}  "
            f"failed {self.failed}  pruned {self.pruned}  lost+retried {self.lost}",
            f"  ETA {eta}",
        ]


def study_status(study: optuna.Study, workers: int | None = None) -> StudyStatus:
    """Count the study's trials; the ETA assumes `workers` (default: the running trials) in parallel."""

    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    kind = attrs["spec"]["kind"]
    counts = {state: 0 for state in TrialState}
    lost = 0
    for trial in trials:
        if is_lost(trial):
            lost += 1
        elif trial.user_attrs.get("duplicate_of") is None:
            counts[trial.state] += 1
    # With a trial budget smaller than the grid, the study is finished when the budget is spent.
    budget = attrs["spec"].get("max_trials")
    total = min(len(attrs["units_expected"]), budget or math.inf) if kind != "tune" else int(budget)
    done = counts[TrialState.COMPLETE] + counts[TrialState.FAIL] + counts[TrialState.PRUNED]
    return StudyStatus(
        name=study.study_name,
        kind=kind,
        complete=counts[TrialState.COMPLETE],
        running=counts[TrialState.RUNNING],
        waiting=counts[TrialState.WAITING],
        failed=counts[TrialState.FAIL],
        lost=lost,
        pruned=counts[TrialState.PRUNED],
        total=total,
        eta=_eta(trials, max(total - done, 0), workers or counts[TrialState.RUNNING] or 1),
    )


def _eta(trials: list[FrozenTrial], remaining: int, parallel: int) -> timedelta | None:
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
    ]
    if remaining == 0:
        return timedelta(0)
    if not durations:
        return None
    waves = -(-remaining // parallel)  # ceiling division: units run in waves of `parallel`
    return timedelta(seconds=round(statistics.median(durations) * waves))


def _format(delta: timedelta) -> str:
    minutes, seconds = divmod(int(delta.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
