"""Tune-study pruners on in-memory Optuna studies: they compare like with like at each step."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from studies.pruning import MedianAtStep, make_pruner


def study_with(pruner: optuna.pruners.BasePruner, completed: list[dict[int, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for values in completed:
        study.add_trial(create_trial(value=values[max(values)], intermediate_values=values))
    return study


def prunes_after(study: optuna.Study, values: list[float], first_step: int = 1) -> int | None:
    """The step at which a new trial reporting `values` (one per unit, at steps counting from
    `first_step`) is pruned, or None; as the worker does, the last unit is never pruned."""

    trial = study.ask()
    for step, value in enumerate(values, start=first_step):
        trial.report(value, step)
        if step < first_step + len(values) - 1 and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, values[-1])
    return None


def test_the_median_pruner_compares_the_current_value_not_the_best_so_far():
    # An easy first task that every configuration solves (0.9), then the task that tells them
    # apart: good configurations average 0.7 after two units, this one 0.45.
    good = [{1: 0.9, 2: 0.7, 3: 0.6}] * 3
    assert prunes_after(study_with(MedianAtStep(), good), [0.9, 0.45, 0.3]) == 2
    # Optuna's own MedianPruner takes the trial's best value so far (0.9 at step 1), which beats
    # every later median: it never prunes once the first task was easy.
    optuna_median = optuna.pruners.MedianPruner(n_startup_trials=3)
    assert prunes_after(study_with(optuna_median, good), [0.9, 0.45, 0.3]) is None
    # A trial at or above the median runs to the end; nothing is pruned before 3 completed trials.
    assert prunes_after(study_with(MedianAtStep(), good), [0.9, 0.7, 0.8]) is None
    assert prunes_after(study_with(MedianAtStep(), good[:2]), [0.0, 0.0, 0.0]) is None


def test_hyperband_can_prune_after_the_first_of_two_units():
    """With steps counting units done, the first rung is after one unit: a trial of two units
    (one task, two seeds) can be stopped half-way. With steps counting from 0 it never could."""

    falling = (0.9, 0.8, 0.7, 0.1, 0.05, 0.01)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("hyperband", units_per_trial=2))
    pruned = [prunes_after(study, [value, value]) for value in falling]
    assert pruned[0] is None and pruned[1:] == [1] * 5
    study = optuna.create_study(direction="maximize", pruner=make_pruner("hyperband", units_per_trial=2))
    assert [prunes_after(study, [value, value], first_step=0) for value in falling] == [None] * 6


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_a_pruning_decision_does_not_depend_on_the_trial_running_beside_it(name):
    """With 2 trials at once, trial n is judged by the trials up to n - 2: whether trial n - 1, on
    another worker, completed before trial n's check is a matter of timing."""

    def pruned(lag: int, beside_completed: bool) -> bool:
        study = optuna.create_study(direction="maximize", pruner=make_pruner(name, 2, lag))
        for value in (0.4, 0.45, 0.5, 0.55):  # median 0.475 at the first unit
            study.add_trial(create_trial(value=value, intermediate_values={1: value, 2: value}))
        beside, judged = study.ask(), study.ask()
        if beside_completed:  # with it the median is 0.5
            beside.report(0.95, 1)
            beside.report(0.95, 2)
            study.tell(beside, 0.95)
        judged.report(0.48, 1)
        return judged.should_prune()

    assert pruned(2, beside_completed=True) == pruned(2, beside_completed=False)
    if name == "median":  # judged by every trial that has completed, it depended on the timing
        assert pruned(1, beside_completed=True) and not pruned(1, beside_completed=False)
