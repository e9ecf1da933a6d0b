"""fANOVA importance of a tune study's searched parameters for the trials' scores."""

from __future__ import annotations

import json

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from harness.report.importance import parameter_importance

SPACE = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "clip": FloatDistribution(0.1, 0.3),
    "epochs": IntDistribution(1, 16),
    # A list-valued choice, sampled as JSON text as the tune worker samples it.
    "actor_hidden": CategoricalDistribution([json.dumps([64, 64]), json.dumps([256, 256])]),
}


def trials(score, count=30, seed=0):
    """`count` trials drawn over SPACE, each scored by `score(params)`: (scores, search points)."""

    rng = np.random.default_rng(seed)
    scores, points = {}, {}
    for number in range(count):
        params = {
            "lr": float(10 ** rng.uniform(-5, -2)),
            "clip": float(rng.uniform(0.1, 0.3)),
            "epochs": int(rng.integers(1, 17)),
            "actor_hidden": SPACE["actor_hidden"].choices[number % 2],
        }
        scores[f"trial-{number}"] = score(params)
        points[f"trial-{number}"] = (params, SPACE)
    return scores, points


def test_the_parameter_the_score_depends_on_takes_most_of_the_importance():
    for name, score in [
        ("lr", lambda p: -abs(np.log10(p["lr"]) + 3.5)),  # best at lr = 10^-3.5
        ("clip", lambda p: p["clip"] ** 2),
        ("actor_hidden", lambda p: float(p["actor_hidden"] == "[256, 256]")),
    ]:
        shares = parameter_importance(*trials(score), seed=0)
        assert set(shares) == set(SPACE) and abs(sum(shares.values()) - 1.0) < 1e-9
        assert next(iter(shares)) == name and shares[name] > 0.7, (name, shares)


def test_importance_is_seeded():
    scores, points = trials(lambda p: p["clip"] + 0.1 * p["epochs"] / 16)
    assert parameter_importance(scores, points, seed=3) == parameter_importance(scores, points, seed=3)
    assert parameter_importance(scores, points, seed=4) != parameter_importance(scores, points, seed=3)


def test_no_importance_without_a_variance_to_split():
    scores, points = trials(lambda p: 0.5, count=5)
    assert parameter_importance(scores, points, seed=0) == {}  # every trial scored the same
    one = dict(list(trials(lambda p: p["clip"])[0].items())[:1])
    assert parameter_importance(one, points, seed=0) == {}
