"""Pruners for tune studies, whose intermediate values are not learning curves.

A tune trial runs its units (seed, task) one after another and reports, after each, the IQM of
the normalised final scores so far, at step = the number of units done. A value at step k is
therefore a statistic over other tasks than the value at step k - 1, and it can fall as well as
rise. Optuna's `MedianPruner` compares a trial's *best* value over its steps so far with the
median at the current step, which suits learning curves but not this: a trial that scores well
on an easy first task would beat every later median and never be pruned. `MedianAtStep`
compares the current value instead. Hyperband's successive halving already compares the values
at each rung; it needs the steps to count units done (a first rung at step 1). Both judge a trial
by the proposals it was drawn from (`PastOnly`), so that a study's decisions do not depend on
which trials other workers finished meanwhile.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial

from studies.proposals import history, proposal_numbers


class MedianAtStep(optuna.pruners.BasePruner):
    """Prune a trial whose value at its last step is below the completed trials' median there.

    Nothing is pruned before `n_startup_trials` trials have completed (Optuna's MedianPruner
    default is 5; 3 here, because a tune trial is several training runs), and only in studies
    that maximise, as tune studies do.
    """

    def __init__(self, n_startup_trials: int = 3) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if len(values) < self.n_startup_trials:
            return False
        return trial.intermediate_values[step] < float(np.median(values))


class PastOnly(optuna.pruners.BasePruner):
    """Judge a trial of proposal n as `inner` would in a study of the proposals up to n - `lag`
    alone: those it was drawn from (`studies.proposals`), all finished when it started. Other
    workers' trials reporting meanwhile would make the decision, and so every later proposal,
    depend on timing.

    The study is replayed into memory, numbered by proposal, with failed placeholders in place of
    the proposals left out so that the trial takes number n (Hyperband assigns brackets by it; a
    retry is judged as the attempt it repeats); what `inner` records on the trial there (Hyperband:
    its value at each rung) is copied back for the next judgements.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, lag: int) -> None:
        self.inner, self.lag = inner, lag

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        trials = study.get_trials(deepcopy=False)
        number = proposal_numbers(trials)[trial.number]
        past = history(trials, number, self.lag)
        replay = optuna.create_study(study_name=study.study_name, direction="maximize")
        replay.add_trials(past)
        replay.add_trials([create_trial(state=TrialState.FAIL)] * (number - len(past)))
        replay.add_trial(trial)
        decision = self.inner.prune(replay, replay.trials[-1])
        for key, value in replay.trials[-1].system_attrs.items():  # read again: what `inner` wrote
            if trial.system_attrs.get(key) != value:
                study._storage.set_trial_system_attr(trial._trial_id, key, value)
        return decision


def make_pruner(name: str, units_per_trial: int, lag: int = 1) -> optuna.pruners.BasePruner:
    """The pruner a tune spec names; steps count the units a trial has done (1 to units_per_trial);
    `lag`: the study's `concurrent_trials` (see `PastOnly`)."""

    if name == "hyperband":
        return PastOnly(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=units_per_trial), lag)
    if name == "median":
        return PastOnly(MedianAtStep(), lag)
    return optuna.pruners.NopPruner()
