"""Gaussian PPO: config presets and validation, the tanh-Gaussian policy, and learning the easy toy task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import algorithms
from algorithms.config import resolve
from algorithms.ppo import PPOAgent, tanh_log_jacobian
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
        ({"num_envs": 1, "rollout_steps": 4, "num_minibatches": 4}, "at least 2 transitions"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": 1.5}, r"gae_lambda <= 1, got .*, 1\.5"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"actor_hidden": []}, "actor_hidden"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"clip": float("inf")}, "clip must be a finite number, got inf"),
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


def test_a_loaded_state_continues_the_episodes_in_progress():
    """Rollouts that end mid-episode (10 of the toy's 16 steps): a load that dropped the episode
    tracker made the first returns logged after every resume cover only the steps since."""

    from conftest import assert_same_state

    config = resolve(algorithms.get("ppo"), "cpu", EASY_TOY, {"num_envs": 4, "rollout_steps": 10})
    agent, clone = (PPOAgent(config, EASY_TOY, seed, 0, torch.device("cpu")) for seed in (0, 1))
    agent.train_iteration()
    assert agent.episodes.running.any()  # mid-episode
    clone.load_state_dict(agent.state_dict())
    assert_same_state(clone.state_dict(), agent.state_dict())
    # The next rollout ends the episodes that began before the load: their whole returns.
    assert agent.train_iteration()["train/episode_return"] == clone.train_iteration()["train/episode_return"]
    agent.close(), clone.close()


@pytest.mark.parametrize("algo", ["ppo", "gorl-fm"])
def test_eval_noise_sample_evaluates_the_stochastic_policy_without_touching_the_training_noise(algo):
    assert resolve(algorithms.get(algo), "paper", EASY_TOY, {}).eval_noise == "zero"  # official code
    spec = algorithms.get(algo)

    def make(eval_noise: str):
        config = resolve(spec, "cpu", EASY_TOY, {"eval_noise": eval_noise})
        return spec.agent_cls(config, EASY_TOY, seed=0, budget=10**6, device=torch.device("cpu"))

    zero, sample = make("zero"), make("sample")
    obs = sample.obs.copy()
    training_noise = sample.action_rng.get_state()
    sample.begin_evaluation()
    first = sample.act(obs, deterministic=True)
    sample.begin_evaluation()  # reseeded from (run seed, counted steps): the same draws again
    np.testing.assert_array_equal(sample.act(obs, deterministic=True), first)
    assert torch.equal(sample.action_rng.get_state(), training_noise)
    # The same weights: the mean action is zero's evaluation, and the draws spread around it.
    mean = zero.act(obs, deterministic=True)
    assert not zero.evaluation_draws_noise and sample.evaluation_draws_noise
    assert 0.3 < np.abs(np.arctanh(first) - np.arctanh(mean)).mean() < 2.0  # |N(0, 1)| averages 0.8
    zero.close()
    sample.close()


def test_tanh_entropy_adds_the_squashing_jacobian_and_pulls_saturated_means_back():
    u = torch.linspace(-4.0, 4.0, 81)
    assert torch.allclose(tanh_log_jacobian(u), torch.log(1 - torch.tanh(u.double()) ** 2).float(), atol=1e-5)
    assert torch.isfinite(tanh_log_jacobian(torch.tensor([-100.0, 100.0]))).all()  # where tanh^2 rounds to 1

    def entropy_gradient(tanh_entropy: bool) -> torch.Tensor:
        settings = {"tanh_entropy": tanh_entropy, "entropy_coef": 1.0, "value_coef": 0.0}
        config = resolve(algorithms.get("ppo"), "cpu", EASY_TOY, settings)
        agent = PPOAgent(config, EASY_TOY, seed=0, budget=0, device=torch.device("cpu"))
        mean = torch.full((256, 2), 2.5, requires_grad=True)  # a saturated mean: tanh(2.5) = 0.987
        dist = torch.distributions.Normal(mean, torch.full((256, 2), 0.7))
        batch = {"obs": torch.zeros(256, 2), "actions": torch.zeros(256, 2), "log_probs": torch.zeros(256),
                 "advantages": torch.zeros(256), "returns": torch.zeros(256)}  # fmt: skip
        loss, metrics = agent.gaussian_loss(batch, dist)
        loss.backward()
        agent.close()
        return mean.grad.sum()

    # Minimising -entropy: the Gaussian's entropy ignores the mean; the tanh term pushes it towards 0.
    assert entropy_gradient(False) == 0.0
    assert entropy_gradient(True) > 0.5


@pytest.mark.parametrize("scope", ["global", "per_network"])
def test_a_large_value_gradient_shrinks_the_policy_step_only_under_global_clipping(scope):
    config = resolve(algorithms.get("ppo"), "cpu", EASY_TOY, {"grad_norm_scope": scope, "max_grad_norm": 0.5})
    agent = PPOAgent(config, EASY_TOY, seed=0, budget=0, device=torch.device("cpu"))
    for net, value in ((agent.model.actor, 1e-3), (agent.model.critic, 10.0)):
        for p in net.parameters():
            p.grad = torch.full_like(p, value)
    actor_norm = torch.nn.utils.get_total_norm([p.grad for p in agent.model.actor.parameters()])
    for group in agent.clip_groups():
        torch.nn.utils.clip_grad_norm_(group, config.max_grad_norm)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in agent.model.actor.parameters()])
    if scope == "global":
        assert clipped < 1e-3 * actor_norm  # scaled by 0.5 / (the critic's norm)
    else:
        assert clipped == actor_norm < 0.5  # below the limit on its own: untouched
    agent.close()
