"""Tune proposals: trial n's configuration depends on the study's seed, on n and on the trials up to
n - K, not on which other trials have finished when a worker asks."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from studies.proposals import proposer, settled_history
from studies.spec import parse_spec

RAW = {
    "name": "t", "kind": "tune", "algo": "ppo", "tasks": ["toy-bimodal"], "seeds": 1, "steps": 1024,
    "max_trials": 40,
    "space": {"clip": {"low": 0.1, "high": 0.3}, "lr": {"low": 1e-5, "high": 1e-2, "log": True}},
}  # fmt: skip


def score(params: dict[str, float]) -> float:
    """A smooth objective with its best at clip 0.27, lr 3e-4."""

    return -(((params["clip"] - 0.27) / 0.2) ** 2) - (math.log10(params["lr"]) + 3.5) ** 2


def start(study: optuna.Study, propose) -> optuna.Trial:
    """Start the next trial as `storage.ask_owned` does: enqueue the proposal, ask, keep its attrs."""

    params, attrs = propose(study.get_trials(deepcopy=False))
    study.enqueue_trial(params)
    trial = study.ask()
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    trial.suggest_float("clip", 0.1, 0.3)
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    return trial


def in_memory() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_proposal_does_not_depend_on_the_trials_still_running(sampler):
    spec = parse_spec({**RAW, "sampler": sampler}, check_configs=False)
    propose = proposer(spec, lag=2)
    study = in_memory()
    for _ in range(14):  # past TPE's 10 random start-up trials
        trial = start(study, propose)
        study.tell(trial, score(trial.params))
    # Trial 14 runs on one worker while another worker proposes trial 15 ...
    running = start(study, propose)
    early = propose(study.get_trials(deepcopy=False))
    # ... or only after trial 14 completed: the same configuration either way.
    study.tell(running, score(running.params))
    assert propose(study.get_trials(deepcopy=False)) == early
    # A fresh study given the same trials proposes it again (same seed, same number).
    again = in_memory()
    again.add_trials(study.get_trials(deepcopy=False)[:14])
    again.add_trials(study.get_trials(deepcopy=False)[14:])
    assert proposer(spec, lag=2)(again.get_trials(deepcopy=False)) == early


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_proposals_learn_from_the_history(sampler):
    """The sampler replayed from the trials so far still learns (CMA-ES from its state kept on the
    trials): the last 10 of 40 trials score better than when every proposal is drawn from no
    history (K = 40), and no configuration is tried twice."""

    spec = parse_spec({**RAW, "sampler": sampler}, check_configs=False)

    def last_ten(lag: int) -> float:
        propose, study, values = proposer(spec, lag), in_memory(), []
        for _ in range(40):
            trial = start(study, propose)
            values.append(score(trial.params))
            study.tell(trial, values[-1])
        assert len({tuple(t.params.values()) for t in study.trials}) == 40
        if sampler == "cmaes" and lag == 2:  # its generation, kept on the trial for the next replays
            assert "cma:generation" in study.trials[-1].system_attrs
        return sum(values[-10:]) / 10

    guided, blind = last_ten(2), last_ten(40)
    assert guided > blind + 0.2, (guided, blind)


def test_the_history_is_the_trials_up_to_n_minus_k_once_they_have_finished():
    study = in_memory()
    for _ in range(3):
        study.ask()
    study.tell(0, 1.0)
    trials = study.get_trials(deepcopy=False)
    # Trial 3 with K = 2: trials 0 and 1, and 1 is still running.
    assert settled_history(trials, 3, 2) is None
    study.tell(1, state=TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in settled_history(trials, 3, 2)] == [0, 1]  # trial 2 runs on: not needed
    assert settled_history(trials, 3, 1) is None  # K = 1 waits for trial 2 too
    assert settled_history(trials, 1, 2) == []  # the first K trials are proposed from nothing
