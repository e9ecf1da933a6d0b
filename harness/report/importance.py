"""Which searched parameters a tune study's scores depend on: fANOVA importance.

fANOVA (Hutter, Hoos and Leyton-Brown, ICML 2014) fits a random forest to the trials (parameters
-> score) and splits the variance of its prediction over the search space into the parts each
parameter explains on its own. Computed with Optuna's evaluator, the default of
`optuna.importance` and of the importance plot RL Baselines3 Zoo's tuning shows, on the report's
own per-trial scores (the final IQM the ranking uses), over the parameters and distributions
each trial was sampled with; the forest is scikit-learn's, which MLflow requires. With few
trials the forest is rough and so are the shares: the report says how many trials they rest on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIN_TRIALS = 2  # a variance to split needs two scores


def parameter_importance(
    scores: Mapping[str, float], sampled: Mapping[str, tuple[dict[str, Any], dict[str, Any]]], seed: int
) -> dict[str, float]:
    """Each searched parameter's share of the variance of the trials' `scores` (trial -> score),
    given each trial's Optuna `(params, distributions)`; the shares sum to 1, largest first.
    Empty when the scores do not vary (fewer than MIN_TRIALS trials, or all equal)."""

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    if len(scores) < MIN_TRIALS or len(set(scores.values())) == 1:
        return {}
    trials = [
        optuna.trial.create_trial(
            params=sampled[trial][0], distributions=sampled[trial][1], value=float(score)
        )
        for trial, score in scores.items()
    ]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return {name: float(share) for name, share in shares.items()}
