"""DPPO: presets and validation, the chain's per-step Gaussian likelihoods against an independent
computation, one clipped ratio per denoising step, evaluation noise, learning the easy toy task, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import algorithms
from algorithms.config import resolve
from algorithms.dppo import DPPOAgent
from harness.errors import UserError

EASY_TOY = "toy-bimodal-easy"
CPU = torch.device("cpu")


def make(task: str = EASY_TOY, seed: int = 0, preset: str = "cpu", **overrides) -> DPPOAgent:
    return DPPOAgent(resolve(algorithms.get("dppo"), preset, task, overrides), task, seed, 0, CPU)


def randomise(agent: DPPOAgent) -> None:
    """Random actor weights: a fresh actor's zero output layer makes every mean the identity."""

    generator = torch.Generator().manual_seed(7)
    for p in agent.model.actor.parameters():
        p.data.normal_(0.0, 0.3, generator=generator)


def test_paper_preset_is_the_official_release():
    config = resolve(algorithms.get("dppo"), "paper", "cheetah-run", {})
    assert config.batch_size == 2048 * 480 and config.batch_size // config.num_minibatches == 30 * 1024
    assert (config.clip, config.lr, config.sigma, config.flow_steps) == (0.2, 3e-4, 0.05, 10)
    assert (config.output_scale, config.actor_width, config.actor_depth) == (0.25, 32, 4)
    assert config.eval_noise == "sample"
    cpu = resolve(algorithms.get("dppo"), "cpu", "cheetah-run", {})
    assert (cpu.num_envs, cpu.rollout_steps, cpu.update_threads, cpu.eval_episodes) == (64, 64, 1, 16)


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_finger_spin_uses_gamma_095_in_every_preset(preset):
    assert resolve(algorithms.get("dppo"), preset, "finger-spin", {}).gamma == 0.95


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"sigma": "big"}, "sigma must be a number"),
        ({"clip": -0.2}, "clip must be > 0"),
        ({"flow_steps": 0}, "flow_steps must be >= 1"),
        ({"actor_depth": 0}, "actor_depth must be >= 1"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": 1.5}, r"gae_lambda <= 1, got .*, 1\.5"),
        ({"eval_noise": "none"}, "eval_noise must be one of 'sample', 'zero'"),
        ({"samples_per_action": 8}, "unknown config key 'samples_per_action'"),  # an FPO key
    ],
)
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve(algorithms.get("dppo"), "cpu", "cheetah-run", overrides)


def test_chain_log_likelihood_is_the_sum_of_gaussian_step_densities():
    agent = make(num_envs=5)
    randomise(agent)
    sigma, steps, d = agent.config.sigma, agent.config.flow_steps, agent.act_dim
    obs = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chains, sampled = agent.chain(obs, torch.Generator().manual_seed(1))
        recomputed = agent.step_log_probs(obs, chains)
        # The network's velocity at every (x_k, t_k) of the chain, then everything else in numpy.
        velocities = [
            agent.model.actor(obs, chains[:, i], torch.full((5,), (steps - i) / steps)).numpy()
            for i in range(steps)
        ]
    x = chains.numpy().astype(np.float64)
    assert x.shape == (5, steps + 1, d) and sampled.shape == recomputed.shape == (5, steps)
    expected = np.zeros((5, steps))
    residuals = []
    for i in range(steps):
        mean = x[:, i] - velocities[i] / steps
        z = (x[:, i + 1] - mean) / sigma
        residuals.append(z)
        expected[:, i] = (-0.5 * z**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
    # The chain's steps are drawn with noise of std sigma: their standardised residuals are N(0, 1)
    # (a likelihood recomputed from the same x cannot tell a wrong noise scale by itself).
    assert 0.75 < np.std(residuals) < 1.25  # 100 residuals
    np.testing.assert_allclose(sampled.numpy(), expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(recomputed.numpy(), expected, rtol=1e-4, atol=1e-3)
    # The chain's log-likelihood given its start x_K (whose N(0, I) has no parameters): the steps' sum.
    np.testing.assert_allclose(recomputed.sum(-1).numpy(), expected.sum(-1), rtol=1e-4)
    agent.close()


def test_one_clipped_ratio_per_step_with_the_shared_advantage():
    agent = make(num_envs=4)
    randomise(agent)
    obs = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chains, old = agent.chain(obs, agent.action_rng)
    mb = {"obs": obs, "actions": chains, "log_probs": old, "returns": torch.zeros(4),
          "advantages": torch.tensor([1.0, -1.0, 2.0, -0.5])}  # fmt: skip
    loss, metrics = agent.loss(mb)
    # At the behaviour parameters every step's ratio is 1: the policy loss is -mean(A).
    assert metrics["loss/policy"].item() == pytest.approx(-mb["advantages"].mean().item(), abs=1e-5)
    with torch.no_grad():
        for p in agent.model.actor.parameters():
            p.mul_(1.5)
        ratios = (agent.step_log_probs(obs, chains) - old).exp()
        clip, advantages = agent.config.clip, mb["advantages"][:, None]
        per_step = torch.minimum(ratios * advantages, ratios.clamp(1 - clip, 1 + clip) * advantages)
        _, metrics = agent.loss(mb)
    assert metrics["loss/policy"].item() == pytest.approx(-per_step.mean().item(), rel=1e-5)
    assert metrics["train/clip_fraction"].item() == ((ratios - 1).abs() > clip).float().mean().item()
    agent.close()


def test_evaluation_noise_modes():
    obs = np.random.default_rng(0).normal(size=(5, 2))
    zero = make(eval_noise="zero")
    assert np.array_equal(zero.act(obs), np.zeros((5, 2)))  # fresh net, no noise: x_0 = x_K = 0
    randomise(zero)
    np.testing.assert_array_equal(zero.act(obs), zero.act(obs))  # deterministic for any network
    sample = make()
    assert not np.array_equal(sample.act(obs), sample.act(obs))
    zero.close()
    sample.close()


# Cheap updates (64 envs x 32 steps, 10 epochs of 2 minibatches) and settings that learn the toy task in
# 30 of them: a larger step (DPPO's per-step ratios carry a weak signal, see the cpu preset's sigma).
TOY_LEARNING = {"rollout_steps": 32, "epochs": 10, "num_minibatches": 2, "lr": 3e-3, "sigma": 0.2}


def test_easy_toy_task_is_learned_and_state_round_trips(learns_easy_toy):
    agent = make(**TOY_LEARNING)
    metrics, clone, obs = learns_easy_toy(agent, lambda: make(seed=1, **TOY_LEARNING), 30)
    for key in ("loss/policy", "loss/value", "train/approx_kl", "train/clip_fraction",
                "perf/learner_fraction", "train/episode_return"):  # fmt: skip
        assert key in metrics, key
    x = torch.as_tensor(obs, dtype=torch.float32)
    torch.testing.assert_close(clone.policy_step(x).action, agent.policy_step(x).action, rtol=0, atol=0)
    agent.close()
    clone.close()
