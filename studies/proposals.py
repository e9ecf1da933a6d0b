"""Reproducible tune studies: which configuration proposal n tries depends on the study's seed, on n and
on the proposals numbered n - K and below, never on how many workers run, when their trials finish
or whether a worker was lost on the way.

Optuna's samplers propose from whatever trials have finished when a worker asks, which with several
workers is a matter of timing: two runs of `tune-ppo-toy` with 2 workers on one machine ended with
other best trials (lr 5.2e-4 and 16 epochs in one, lr 2.9e-3 and 2 epochs in the other). Here a new
proposal n is drawn by a fresh sampler seeded by (study seed, n) that is shown exactly the proposals
numbered up to n - K, K being the study's `concurrent_trials`; a worker about to propose n waits
until those have finished. Proposals are numbered apart from Optuna's trials: the retry of a lost
trial (or the rerun of a failed one) is a new trial that repeats a proposal and stands in for it, so
an interrupted study goes on with the proposals an uninterrupted one makes. With up to K workers and
trials of similar length no worker waits; more than K workers would wait for one another (`study
run` starts at most K; workers started by hand on other machines count too). The pruners judge
proposal n by the same proposals (`studies.pruning.PastOnly`).
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from studies.spec import SearchDim, Spec, stable_seed
from studies.storage import Proposer

# The study attribute that records K.
CONCURRENT_ATTR = "concurrent_trials"


def concurrent_trials(study: optuna.Study) -> int:
    """The study's K: recorded by the `study run` that created it (the spec's `concurrent_trials`,
    else that run's number of workers); 1 for a study created before it was recorded."""

    return int(study.user_attrs.get(CONCURRENT_ATTR, 1))


def proposer(spec: Spec, lag: int) -> Proposer:
    """What `storage.ask_owned` calls for a new trial: its params and the sampler's attrs, or
    None while the trials it is proposed from have not all finished."""

    def propose_next(trials: list[FrozenTrial]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        number = len(set(proposal_numbers(trials).values()))
        settled = settled_history(trials, number, lag)
        return None if settled is None else propose(spec, number, settled)

    return propose_next


def proposal_numbers(trials: list[FrozenTrial]) -> dict[int, int]:
    """Trial number -> proposal number: new proposals count 0, 1, ... in trial order, and a trial
    that repeats another (`retry_of` a lost attempt, `rerun_of` a failed one) takes the number of
    the proposal it repeats."""

    numbers: dict[int, int] = {}
    proposals = 0
    for trial in sorted(trials, key=lambda t: t.number):
        repeated = trial.user_attrs.get("retry_of", trial.user_attrs.get("rerun_of"))
        if repeated is None:
            numbers[trial.number], proposals = proposals, proposals + 1
        else:
            numbers[trial.number] = numbers[repeated]
    return numbers


def history(trials: list[FrozenTrial], number: int, lag: int) -> list[FrozenTrial]:
    """What proposal `number` is drawn from and judged by: the latest trial of each proposal
    numbered up to `number - lag`, in proposal order."""

    numbers = proposal_numbers(trials)
    latest = {numbers[t.number]: t for t in sorted(trials, key=lambda t: t.number)}
    return [latest[n] for n in sorted(latest) if n <= number - lag]


def settled_history(trials: list[FrozenTrial], number: int, lag: int) -> list[FrozenTrial] | None:
    """`history`, or None while one of its trials is still running or waiting."""

    past = history(trials, number, lag)
    if any(not t.state.is_finished() for t in past):
        return None
    return past


def make_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler the spec names, seeded."""

    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # Multivariate TPE models the parameters jointly: RL settings interact (lr with batch size,
    # clip with epochs), which independent per-parameter densities cannot see.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def propose(spec: Spec, number: int, history: list[FrozenTrial]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, system attrs) of proposal `number`, drawn from `history` alone by a sampler seeded by
    the study's seed and `number`: a study replayed into memory, asked once. The system attrs are
    what the sampler keeps on its trials (CMA-ES: its generation and state), for later replays."""

    replay = optuna.create_study(
        direction="maximize", sampler=make_sampler(spec, stable_seed(spec.seed, number))
    )
    # Failed trials carry no value; TPE and CMA-ES learn from complete and pruned ones only.
    replay.add_trials([t for t in history if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    trial = replay.ask()
    for dim in spec.space:
        suggest(trial, dim)
    proposed = replay._storage.get_trial(trial._trial_id)
    return proposed.params, proposed.system_attrs


def suggest(trial: optuna.Trial, dim: SearchDim) -> Any:
    """The value of search dimension `dim` for `trial` (as the config takes it)."""

    if dim.choices and all(c is None or isinstance(c, bool | int | float | str) for c in dim.choices):
        return trial.suggest_categorical(dim.name, list(dim.choices))
    if dim.choices:
        # Optuna's categorical choices are None, bool, int, float or str; other values (a network's
        # widths, a list) would warn in every command that reads the journal. They go as JSON text.
        return json.loads(trial.suggest_categorical(dim.name, [json.dumps(c) for c in dim.choices]))
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(dim.name, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)
