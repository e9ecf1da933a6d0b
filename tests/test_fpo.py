"""FPO: presets and validation, stored Monte-Carlo draws (ratio 1 at the start of an update), the CFM
targets, evaluation noise, learning the easy toy task, and the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import algorithms
from algorithms.config import resolve
from algorithms.fpo import FPOAgent
from algorithms.onpolicy import EpisodeReturns, clipped_surrogate, collect_rollout, torch_threads
from harness.errors import UserError

EASY_TOY = "toy-bimodal-easy"
CPU = torch.device("cpu")


def make(task: str = EASY_TOY, seed: int = 0, preset: str = "cpu", **overrides) -> FPOAgent:
    return FPOAgent(resolve(algorithms.get("fpo"), preset, task, overrides), task, seed, 0, CPU)


def test_paper_preset_is_the_official_release():
    config = resolve(algorithms.get("fpo"), "paper", "cheetah-run", {})
    assert config.batch_size == 2048 * 480 and config.batch_size // config.num_minibatches == 30 * 1024
    assert (config.clip, config.lr, config.epochs, config.gamma) == (0.05, 3e-4, 16, 0.995)
    assert (config.samples_per_action, config.flow_steps, config.t_discrete) == (8, 10, True)
    assert (config.output_scale, config.reward_scale) == (0.25, 10.0)
    assert (config.actor_width, config.actor_depth, config.critic_hidden) == (32, 4, (256,) * 5)
    assert config.cfm_target == "eps" and config.eval_noise == "sample" and config.max_grad_norm is None


def test_cpu_preset_is_ppos_for_the_shared_core():
    fpo = resolve(algorithms.get("fpo"), "cpu", "cheetah-run", {})
    ppo = resolve(algorithms.get("ppo"), "cpu", "cheetah-run", {})
    shared = ("num_envs", "rollout_steps", "epochs", "num_minibatches", "gamma", "value_coef", "reward_scale",
              "max_grad_norm", "grad_norm_scope", "critic_hidden", "update_threads",
              "eval_episodes")  # fmt: skip
    for key in shared:
        assert getattr(fpo, key) == getattr(ppo, key), key
    assert (fpo.critic_activation, fpo.critic_init) == (ppo.activation, ppo.init)
    assert fpo.clip == 0.05  # the paper's FPO clip in every preset


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_finger_spin_uses_gamma_095_in_every_preset(preset):
    assert resolve(algorithms.get("fpo"), preset, "finger-spin", {}).gamma == 0.95


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"clip": 0.0}, "clip must be > 0"),
        ({"samples_per_action": 0}, "samples_per_action must be >= 1"),
        ({"flow_steps": 0}, "flow_steps must be >= 1"),
        ({"actor_width": 0}, "actor_width must be >= 1"),
        ({"output_scale": 0.0}, "output_scale must be > 0"),
        ({"num_minibatches": 3}, "must divide"),
        ({"critic_hidden": []}, "critic_hidden"),
        ({"eval_noise": "mean"}, "eval_noise must be one of 'sample', 'zero'"),
        ({"cfm_target": "noise"}, "cfm_target must be one of 'eps', 'velocity'"),
        ({"t_discrete": "yes"}, "t_discrete must be true or false"),
        ({"entropy_coef": 0.01}, "unknown config key 'entropy_coef'"),  # FPO has no entropy bonus
        ({"max_log_ratio": 0.0}, "max_log_ratio must be > 0"),
    ],
)
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve(algorithms.get("fpo"), "cpu", "cheetah-run", overrides)


def randomise(agent: FPOAgent) -> None:
    """Random actor weights: a fresh actor's zero output layer would hide errors in the loss."""

    generator = torch.Generator().manual_seed(123)
    for p in agent.model.actor.parameters():
        p.data.normal_(0.0, 0.3, generator=generator)


def collect(agent: FPOAgent, steps: int = 4):
    episodes = EpisodeReturns(agent.config.num_envs)
    with torch_threads(agent.config.collect_threads):
        rollout, _ = collect_rollout(agent.env, agent.obs, steps, agent.policy_step, agent.model.value,
                                     agent.normalizer, 1.0, episodes, CPU)  # fmt: skip
    return rollout


def test_draws_are_stored_and_the_ratio_is_one_at_the_start_of_an_update():
    agent = make(num_envs=16)
    randomise(agent)
    rollout = collect(agent)
    n, d = agent.config.samples_per_action, agent.act_dim
    assert rollout.actions.shape == (4, 16, d + n * d + n) and rollout.log_probs.shape == (4, 16)
    t = rollout.actions[..., -n:]
    assert set((t * 10).round().unique().tolist()) <= set(range(1, 11))  # t on the 10-step grid
    assert torch.allclose(t * 10, (t * 10).round())
    eps = rollout.actions[..., d : d + n * d]
    assert abs(eps.std().item() - 1.0) < 0.1 and eps.unique().numel() == eps.numel()

    with torch_threads(agent.config.collect_threads):
        for step in range(4):  # same rows, same batch shapes as while collecting: exactly equal
            new = agent.cfm_loss(rollout.obs[step], rollout.actions[step])
            assert torch.equal(rollout.log_probs[step] - new, torch.zeros_like(new))
    # As a minibatch of the update sees them (another batch shape): 1 up to float rounding, nothing clipped.
    new = agent.cfm_loss(rollout.obs.flatten(0, 1), rollout.actions.flatten(0, 1))
    log_ratio = rollout.log_probs.flatten() - new
    assert log_ratio.abs().max().item() < 1e-5
    _, metrics = clipped_surrogate(log_ratio, torch.randn(log_ratio.shape), agent.config.clip)
    assert metrics["train/clip_fraction"].item() == 0.0 and metrics["train/approx_kl"].abs().item() < 1e-9
    agent.close()


def test_max_log_ratio_bounds_the_ratio_once_the_policy_has_moved():
    agent = make(num_envs=16, max_log_ratio=0.01)
    rollout = collect(agent)
    randomise(agent)  # the policy moves away from the one that collected
    batch = {"obs": rollout.obs.flatten(0, 1), "actions": rollout.actions.flatten(0, 1),
             "log_probs": rollout.log_probs.flatten(), "advantages": torch.ones(64),
             "returns": torch.zeros(64)}  # fmt: skip
    _, metrics = agent.loss(batch)
    # approx_kl = E[r - 1 - log r] with |log r| <= 0.01: at most e^0.01 - 1.01 ~ 5e-5.
    assert 0 < metrics["train/approx_kl"].item() <= np.expm1(0.01) - 0.01 + 1e-7
    agent.close()


def test_continuous_t_and_the_eps_target_is_the_weighted_velocity_loss():
    agent = make(num_envs=8, t_discrete=False, samples_per_action=1)
    randomise(agent)
    obs = torch.randn(8, 2)
    actions = agent.sample_pre_tanh(obs, agent.action_rng)
    eps, t = agent.draws(8)
    assert not torch.allclose(t * 10, (t * 10).round())  # off the grid
    stored = torch.cat([actions, eps.flatten(1), t], dim=-1)
    eps_loss = agent.cfm_loss(obs, stored)
    velocity = agent.model.actor(obs, t[:, 0, None] * eps[:, 0] + (1 - t) * actions, t[:, 0])
    plain = (eps[:, 0] - actions - velocity).pow(2).mean(-1)
    torch.testing.assert_close(eps_loss, (1 - t[:, 0]) ** 2 * plain)
    agent.config = dataclasses.replace(agent.config, cfm_target="velocity")
    torch.testing.assert_close(agent.cfm_loss(obs, stored), plain)
    agent.close()


def test_an_action_s_cfm_loss_averages_its_draws_and_a_positive_advantage_lowers_it():
    """Every other check stores one (eps, t) draw per action, and only the learning test (10 s,
    a threshold) would notice a ratio of the wrong sign."""

    agent, single = make(num_envs=8, samples_per_action=2), make(num_envs=8, samples_per_action=1)
    randomise(agent)
    single.model.load_state_dict(agent.model.state_dict())
    obs = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        actions = agent.sample_pre_tanh(obs, agent.action_rng)
    eps, t = agent.draws(8)
    stored = torch.cat([actions, eps.flatten(1), t], dim=-1)
    with torch.no_grad():
        per_draw = [single.cfm_loss(obs, torch.cat([actions, eps[:, i], t[:, i, None]], -1)) for i in (0, 1)]
        cfm = agent.cfm_loss(obs, stored)
    torch.testing.assert_close(cfm, (per_draw[0] + per_draw[1]) / 2)

    # PPO raises the likelihood of actions with positive advantages: their CFM loss falls.
    batch = {
        "obs": obs,
        "actions": stored,
        "log_probs": cfm,
        "advantages": torch.ones(8),
        "returns": torch.zeros(8),
    }
    agent.loss(batch)[0].backward()
    with torch.no_grad():
        for p in agent.model.actor.parameters():
            p -= 1e-3 * p.grad
        assert (agent.cfm_loss(obs, stored) < cfm).float().mean() > 0.5
    agent.close(), single.close()


def test_evaluation_noise_modes():
    obs = np.random.default_rng(0).normal(size=(5, 2))
    zero = make(eval_noise="zero")
    assert np.array_equal(zero.act(obs), np.zeros((5, 2)))  # fresh net: zero velocity, so x_0 = x_1 = 0
    sample = make()
    sample.begin_evaluation()
    first, second = sample.act(obs), sample.act(obs)
    assert not np.array_equal(first, second) and np.all(np.abs(first) < 1)
    sample.begin_evaluation()  # each evaluation starts its noise afresh
    np.testing.assert_array_equal(sample.act(obs), first)
    # Evaluation draws from its own generator: training noise is the same with or without it, and after
    # an update the evaluation noise depends only on the seed and the counted steps.
    untouched = make()
    x = torch.as_tensor(obs, dtype=torch.float32)
    torch.testing.assert_close(sample.policy_step(x).action, untouched.policy_step(x).action, rtol=0, atol=0)
    small = {"num_envs": 16, "rollout_steps": 16}
    evaluated, fresh = make(**small), make(**small)
    evaluated.begin_evaluation()
    evaluated.act(obs)
    evaluated.train_iteration()
    fresh.train_iteration()
    evaluated.begin_evaluation(), fresh.begin_evaluation()
    np.testing.assert_array_equal(evaluated.act(obs), fresh.act(obs))
    for agent in (zero, sample, untouched, evaluated, fresh):
        agent.close()


# Cheap updates (64 envs x 32 steps, 10 epochs of 2 minibatches) and settings that learn the toy task in
# 20 of them: PPO's clip 0.2, a larger step and output scale (FPO's paper settings need ~10x more updates).
TOY_LEARNING = {"rollout_steps": 32, "epochs": 10, "num_minibatches": 2, "clip": 0.2, "lr": 1e-3,
                "output_scale": 1.0}  # fmt: skip


def test_easy_toy_task_is_learned_and_state_round_trips(learns_easy_toy):
    agent = make(**TOY_LEARNING)
    metrics, clone, obs = learns_easy_toy(agent, lambda: make(seed=1, **TOY_LEARNING), 20)
    for key in ("loss/policy", "loss/value", "train/approx_kl", "train/clip_fraction", "train/cfm_loss",
                "perf/learner_fraction", "train/episode_return"):  # fmt: skip
        assert key in metrics, key
    x = torch.as_tensor(obs, dtype=torch.float32)
    torch.testing.assert_close(clone.policy_step(x).action, agent.policy_step(x).action, rtol=0, atol=0)
    agent.close()
    clone.close()
