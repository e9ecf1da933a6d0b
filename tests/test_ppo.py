"""Gaussian PPO: config presets and validation, the tanh-Gaussian policy, and learning the easy toy task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import algorithms
from algorithms.config import resolve
from algorithms.ppo import PPOAgent
from harness.errors import UserError

EASY_TOY = "toy-bimodal-easy"


def test_paper_preset_is_the_playground_configuration():
    config = resolve(algorithms.get("ppo"), "paper", "cheetah-run", {})
    assert config.batch_size == 2048 * 480 == 983_040
    assert config.batch_size // config.num_minibatches == 30 * 1024
    assert (config.epochs, config.lr, config.gamma, config.reward_scale) == (16, 1e-3, 0.995, 10.0)
    assert config.actor_hidden == (32,) * 4 and config.critic_hidden == (256,) * 5


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_finger_spin_uses_gamma_095_in_every_preset(preset):
    assert resolve(algorithms.get("ppo"), preset, "finger-spin", {}).gamma == 0.95
    assert resolve(algorithms.get("ppo"), preset, "finger-spin", {"gamma": 0.9}).gamma == 0.9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"num_minibatches": 3}, "must divide"),
        ({"gamma": 1.5}, "gamma"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"actor_hidden": []}, "actor_hidden"),
        ({"lr": "fast"}, "lr must be a number"),
    ],
)
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve(algorithms.get("ppo"), "cpu", "cheetah-run", overrides)


def test_easy_toy_task_is_learned_and_state_round_trips(learns_easy_toy):
    config = resolve(algorithms.get("ppo"), "cpu", EASY_TOY, {})
    agent = PPOAgent(config, EASY_TOY, seed=0, budget=0, device=torch.device("cpu"))
    metrics, clone, obs = learns_easy_toy(
        agent, lambda: PPOAgent(config, EASY_TOY, seed=1, budget=0, device=torch.device("cpu")), 10
    )
    assert {"loss/policy", "loss/value", "train/approx_kl", "perf/learner_fraction"} <= set(metrics)
    assert agent.counted_steps == 10 * config.batch_size
    actions = agent.act(obs, deterministic=True)
    assert actions.shape == (obs.shape[0], agent.env.single_action_space.shape[0])
    assert np.all(np.abs(actions) <= 1.0)
    agent.close()
    clone.close()
