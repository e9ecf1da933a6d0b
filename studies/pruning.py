"""Pruners for tune studies, whose intermediate values are not learning curves.

A tune trial runs its units (seed, task) one after another and reports, after each, the IQM of
the normalised final scores so far, at step = the number of units done. A value at step k is
therefore a statistic over other tasks than the value at step k - 1, and it can fall as well as
rise. Optuna's `MedianPruner` compares a trial's *best* value over its steps so far with the
median at the current step, which suits learning curves but not this: a trial that scores well
on an easy first task would beat every later median and never be pruned. `MedianAtStep`
compares the current value instead. Hyperband's successive halving already compares the values
at each rung; it needs the steps to count units done (a first rung at step 1).
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState


class MedianAtStep(optuna.pruners.BasePruner):
    """Prune a trial whose value at its last step is below the completed trials' median there.

    Nothing is pruned before `n_startup_trials` trials have completed (Optuna's MedianPruner
    default is 5; 3 here, because a tune trial is several training runs), and only in studies
    that maximise, as tune studies do. Trial n is judged by the completed trials numbered up to
    n - `lag`, those it was proposed from (`studies.proposals`), which have all finished when it
    starts: trials completing meanwhile on other workers would make the decision depend on timing.
    """

    def __init__(self, n_startup_trials: int = 3, lag: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.lag = lag

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        known = [t for t in completed if t.number <= trial.number - self.lag]
        values = [t.intermediate_values[step] for t in known if step in t.intermediate_values]
        if len(values) < self.n_startup_trials:
            return False
        return trial.intermediate_values[step] < float(np.median(values))


def make_pruner(name: str, units_per_trial: int, lag: int = 1) -> optuna.pruners.BasePruner:
    """The pruner a tune spec names; steps count the units a trial has done (1 to units_per_trial);
    `lag`: the study's `concurrent_trials` (see `MedianAtStep`)."""

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=units_per_trial)
    if name == "median":
        return MedianAtStep(lag=lag)
    return optuna.pruners.NopPruner()
