"""The shared on-policy core: GAE, the observation normaliser, collection and the minibatch loop."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

from algorithms.normalization import RunningMeanStd
from algorithms.onpolicy import (
    EpisodeReturns,
    PolicyStep,
    clipped_surrogate,
    collect_rollout,
    compute_gae,
    make_adam,
    minibatch_update,
)


def test_gae_matches_a_hand_computed_example_with_truncation_and_termination():
    # One env, 4 steps: the episode is truncated after step 1 (bootstrap from V(final_obs) = 5)
    # and the next one terminates after step 3 (no bootstrap). gamma != lam, so that one used
    # for the other (a bootstrap discounted by lam) cannot pass.
    gamma, lam = 0.5, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    next_values = torch.tensor([[20.0], [5.0], [40.0], [99.0]])  # 5 = V(final_obs); 99 must be ignored
    terminated = torch.tensor([[False], [False], [False], [True]])
    truncated = torch.tensor([[False], [True], [False], [False]])
    adv, ret = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    d3 = 4.0 - 40.0  # terminal: no bootstrap
    d2 = 3.0 + 0.5 * 40.0 - 30.0
    d1 = 2.0 + 0.5 * 5.0 - 20.0  # truncated: bootstrap from the final obs, recursion cut
    d0 = 1.0 + 0.5 * 20.0 - 10.0
    a3 = d3
    a2 = d2 + 0.4 * a3  # gamma * lam
    a1 = d1
    a0 = d0 + 0.4 * a1
    expected = torch.tensor([[a0], [a1], [a2], [a3]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_normaliser_matches_numpy_over_merged_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 5)) * np.arange(1, 6) for n in (1, 7, 300, 64, 2)]
    norm = RunningMeanStd((5,))
    for batch in batches:
        norm.update(batch)
    data = np.concatenate(batches)
    np.testing.assert_allclose(norm.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.var, data.var(axis=0), rtol=1e-10)
    assert norm.count == len(data)
    np.testing.assert_allclose(norm.normalize(data[:3]), (data[:3] - data.mean(0)) / data.std(0), rtol=1e-5)

    restored = RunningMeanStd((5,))
    restored.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored.std, norm.std)


def test_normaliser_std_does_not_shrink_with_many_updates():
    rng = np.random.default_rng(1)
    norm = RunningMeanStd((1,))
    for _ in range(200):
        norm.update(rng.normal(0.0, 3.0, size=(256, 1)))
    assert norm.std[0] == pytest.approx(3.0, rel=0.02)


def test_a_constant_dimension_is_divided_by_the_square_root_of_epsilon():
    """sqrt(var + eps) = 1e-4, not sqrt(var) + eps = 1e-8: a touch sensor's first contact after
    a constant start would otherwise reach the networks as an input of 1e8."""

    norm = RunningMeanStd((2,))
    norm.update(np.stack([np.full(100, 3.0), np.arange(100.0)], axis=1))
    assert norm.std[0] == pytest.approx(1e-4)
    assert norm.normalize(np.array([[4.0, 0.0]]))[0, 0] == pytest.approx(1e4, rel=1e-3)


def test_normaliser_is_the_identity_before_data():
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    np.testing.assert_allclose(RunningMeanStd((2,)).normalize(x), x, rtol=1e-6)


class CountingEnv(gymnasium.vector.VectorEnv):
    """Obs = step index within the episode; episodes last 3 steps (truncated); reward 1 per step."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.single_action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed=None, options=None):
        self.t[:] = 0
        return self.t[:, None].astype(np.float32), {}

    def step(self, actions):
        self.t += 1
        truncated = self.t == 3
        final = self.t[:, None].astype(np.float32)
        self.t[truncated] = 0
        info = {"final_obs": final, "_final_obs": truncated} if truncated.any() else {}
        obs = self.t[:, None].astype(np.float32)
        return obs, np.ones(self.num_envs, np.float32), np.zeros(self.num_envs, bool), truncated, info


def test_collect_bootstraps_truncation_from_final_obs_and_records_episode_returns():
    env = CountingEnv(2)
    obs, _ = env.reset()

    def value(x):
        return 100.0 + x[:, 0]  # V(obs) = 100 + step index, so V(final_obs) = 103

    def policy(x):
        zeros = torch.zeros(x.shape[0], 1)
        return PolicyStep(zeros, zeros, torch.zeros(x.shape[0]), value(x))

    episodes = EpisodeReturns(2)
    rollout, next_obs = collect_rollout(env, obs, 4, policy, value, None, 2.0, episodes, torch.device("cpu"))
    np.testing.assert_array_equal(rollout.next_values[:, 0].numpy(), [101, 102, 103, 101])
    np.testing.assert_array_equal(rollout.truncated[:, 0].numpy(), [False, False, True, False])
    assert rollout.rewards.unique().tolist() == [2.0]
    assert episodes.pop() == [3.0, 3.0]
    assert next_obs[0, 0] == 1.0


def test_collect_values_the_final_obs_through_the_normaliser_like_every_other_obs():
    """V(final_obs) taken on raw observations bootstraps every time-limit end from a value of
    inputs the critic never sees."""

    env = CountingEnv(2)
    obs, _ = env.reset()
    normalizer = RunningMeanStd((1,))
    normalizer.update(np.array([[10.0], [20.0]]))  # mean 15, std 5

    def value(x):
        return 100.0 + x[:, 0]

    def policy(x):
        zeros = torch.zeros(x.shape[0], 1)
        return PolicyStep(zeros, zeros, torch.zeros(x.shape[0]), value(x))

    rollout, _ = collect_rollout(
        env, obs, 4, policy, value, normalizer, 1.0, EpisodeReturns(2), torch.device("cpu")
    )
    next_raw = np.array([1.0, 2.0, 3.0, 1.0])  # the obs after each step; 3 is the final obs
    np.testing.assert_allclose(rollout.next_values[:, 0].numpy(), 100.0 + (next_raw - 15.0) / 5.0, rtol=1e-6)


def test_clipped_surrogate_clips_the_ratio():
    # Clipping binds where it would reward a move in the advantage's direction (1.5 with A > 0,
    # 0.5 with A < 0); the minimum keeps the unclipped, pessimistic term where the move goes
    # against it (1.5 with A < 0 costs 1.5, not 1.2; 0.5 with A > 0 earns 0.5, not 0.8).
    ratio = torch.tensor([1.5, 0.5, 1.0, 1.5, 0.5])
    adv = torch.tensor([1.0, -1.0, 2.0, -1.0, 1.0])
    loss, metrics = clipped_surrogate(ratio.log(), adv, 0.2)
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.0 - 1.5 + 0.5) / 5)
    assert metrics["train/clip_fraction"].item() == pytest.approx(4 / 5)
    expected_kl = ((ratio - 1) - ratio.log()).mean()  # k3: (r - 1) - log r
    assert metrics["train/approx_kl"].item() == pytest.approx(expected_kl.item())


def test_minibatch_update_fits_a_loss_and_refuses_non_finite_parameters():
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(1))
    batch = {"x": torch.ones(64), "advantages": torch.randn(64, generator=generator)}

    def loss_fn(mb):
        loss = ((weight - mb["x"]) ** 2).mean()
        return loss, {"loss/fit": loss}

    optimizer = make_adam([weight], lr=0.1)
    metrics = minibatch_update(batch, loss_fn, optimizer, [[weight]], 20, 4, 1.0, generator)
    assert weight.item() == pytest.approx(1.0, abs=0.1)
    assert set(metrics) == {"loss/total", "loss/fit"}

    optimizer = torch.optim.SGD([weight], lr=1e30)
    with pytest.raises(FloatingPointError):
        minibatch_update(batch, loss_fn, optimizer, [[weight]], 3, 4, None, generator)


def test_minibatch_update_visits_every_transition_once_per_epoch_in_a_fresh_order():
    """Unshuffled minibatches are time-contiguous blocks, the same every epoch; a skipped
    minibatch drops a share of the batch. Neither stops the toy tasks from being learned."""

    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(1))
    batch = {"idx": torch.arange(64), "advantages": torch.zeros(64)}
    seen = []

    def loss_fn(mb):
        seen.append(mb["idx"].clone())
        loss = (weight**2).sum()
        return loss, {"loss/fit": loss}

    minibatch_update(batch, loss_fn, make_adam([weight], lr=0.1), [[weight]], 3, 4, None, generator)
    assert len(seen) == 12 and all(len(mb) == 16 for mb in seen)
    epochs = [torch.cat(seen[i : i + 4]) for i in (0, 4, 8)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(64))  # each transition once per epoch
        assert not torch.equal(order, torch.arange(64))  # shuffled
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
