"""GoRL decoders: identity at init, the DDIM algebra, multimodal fitting, and `fit_decoder`'s contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms.decoders import (
    DecoderConfig,
    DiffusionDecoder,
    FitConfig,
    IdentityDecoder,
    _elite_rows,
    _EpisodeSplit,
    _split_by_episode,
    endpoint_error,
    evaluate_loss,
    fit_decoder,
    make_decoder,
)
from algorithms.generative import ConditionalMLP, time_embedding

GENERATIVE = ["flow", "diffusion"]
# Small and fast: every fit in this file takes about a second on 2 cores.
SMALL = {"hidden_width": 32, "depth": 2}
QUICK = FitConfig(steps=100, batch_size=128, lr=3e-3, eval_every=25)


def bimodal_buffer(n: int = 4000, episode_len: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Actions from a mixture of two Gaussians at (+-1.5, 0), one dummy observation, equal episodes."""

    rng = np.random.default_rng(seed)
    centre = 1.5 * rng.choice([-1.0, 1.0], n)
    actions = np.stack([centre, np.zeros(n)], axis=1) + 0.2 * rng.standard_normal((n, 2))
    return {
        "obs": rng.standard_normal((n, 3)).astype(np.float32),
        "actions": actions.astype(np.float32),
        "episode_ids": np.arange(n) // episode_len,
    }


def randomise_head(decoder: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output layer random weights, so the network does something."""

    head = decoder.net.net[-1]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=generator))
        head.bias.copy_(0.3 * torch.randn(head.bias.shape, generator=generator))


def test_time_embedding_is_cos_sin_of_doubling_frequencies():
    t = torch.tensor([0.0, 0.3, 1.0])
    emb = time_embedding(t)
    assert emb.shape == (3, 8)
    angles = t[:, None] * torch.tensor([1.0, 2.0, 4.0, 8.0])
    torch.testing.assert_close(emb, torch.cat([angles.cos(), angles.sin()], dim=1))


def test_fresh_conditional_mlp_outputs_zero():
    net = ConditionalMLP(obs_dim=5, x_dim=3, hidden_width=16, depth=3, output_scale=0.25)
    out = net(torch.randn(7, 5), torch.randn(7, 3), torch.rand(7))
    assert out.shape == (7, 3)
    assert torch.count_nonzero(out) == 0


def test_on_grid_matches_forward_at_every_grid_time():
    """Samplers' precomputed obs/time terms give the network's own output (up to float rounding)."""

    generator = torch.Generator().manual_seed(0)
    net = ConditionalMLP(obs_dim=5, x_dim=3, hidden_width=16, depth=3, output_scale=0.25, generator=generator)
    obs, x = torch.randn(7, 5), torch.randn(7, 3)
    times = [1.0, 0.7, 0.1]
    with torch.no_grad():
        net.net[-1].weight.normal_(generator=generator)  # the zero-initialised head, made non-zero
        net.net[-1].bias.normal_(generator=generator)
        at = net.on_grid(obs, times)
        for i, t in enumerate(times):
            expected = net(obs, x, torch.full((7,), t))
            assert torch.count_nonzero(expected) > 0
            torch.testing.assert_close(at(x, i), expected, rtol=1e-5, atol=1e-6)


def test_identity_decoder_is_exact():
    decoder = make_decoder(DecoderConfig(kind="identity"), obs_dim=4, act_dim=3)
    assert isinstance(decoder, IdentityDecoder)
    z = torch.randn(10, 3)
    assert torch.equal(decoder.decode(torch.randn(10, 4), z), z)
    assert decoder.state_dict() == {}


@pytest.mark.parametrize("kind", GENERATIVE)
def test_fresh_generative_decoder_is_the_identity(kind):
    config = DecoderConfig(kind=kind, **SMALL)
    decoder = make_decoder(config, obs_dim=4, act_dim=3, obs_mean=np.ones(4), obs_std=2 * np.ones(4))
    obs, z = 10 * torch.randn(50, 4), 3 * torch.randn(50, 3)
    torch.testing.assert_close(decoder.decode(obs, z), z, atol=1e-6, rtol=0)


def test_diffusion_step_is_the_ddim_update():
    """The rearranged step x + c_k f equals DDIM (eta = 0) with eps_hat = f + ((1 - r_k) / c_k) x."""

    decoder = make_decoder(DecoderConfig(kind="diffusion", **SMALL), obs_dim=2, act_dim=2)
    assert isinstance(decoder, DiffusionDecoder)
    randomise_head(decoder)
    obs, z = torch.randn(20, 2), torch.randn(20, 2)
    alpha_bar = decoder.alpha_bar.double()
    with torch.no_grad():
        x = z.double()
        for k in range(decoder.config.sampling_steps, 0, -1):
            t = torch.full((20,), k / decoder.config.sampling_steps)
            f = decoder.net(obs, x.float(), t).double()
            eps_hat = f + decoder.residual_coef[k].double() * x
            x0_hat = (x - (1 - alpha_bar[k]).sqrt() * eps_hat) / alpha_bar[k].sqrt()
            x = alpha_bar[k - 1].sqrt() * x0_hat + (1 - alpha_bar[k - 1]).sqrt() * eps_hat
        torch.testing.assert_close(decoder.decode(obs, z), x.float(), atol=1e-4, rtol=1e-4)
    assert alpha_bar[0] == 1.0 and math.isclose(alpha_bar[-1].item(), 1e-3, rel_tol=1e-5)


@pytest.mark.parametrize("kind", GENERATIVE)
def test_decoder_trained_from_the_prior_reproduces_both_modes(kind):
    buffer = bimodal_buffer()
    fit = FitConfig(steps=400, batch_size=256, lr=3e-3, eval_every=100)
    decoder, result = fit_decoder(
        DecoderConfig(kind=kind, hidden_width=64, depth=3), **buffer, seed=0, fit=fit
    )
    assert result.best_val_loss < result.initial_val_loss
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        actions = decoder.decode(torch.randn(2000, 3), z).numpy()
    near_right = np.mean(np.linalg.norm(actions - [1.5, 0.0], axis=1) < 0.6)
    near_left = np.mean(np.linalg.norm(actions - [-1.5, 0.0], axis=1) < 0.6)
    between = np.mean(np.abs(actions[:, 0]) < 0.5)
    assert near_right > 0.3 and near_left > 0.3, (near_right, near_left)
    assert between < 0.1, between


def test_an_elite_share_leans_the_decoder_towards_the_better_episodes():
    """Episodes near (+1.5, 0) returned 1 (plus a little), those near (-1.5, 0) about 0: with
    every minibatch drawn from the best quarter of the episodes, all of them right ones, the
    decoder puts (nearly) all its actions in the better mode; without, it keeps both."""

    rng = np.random.default_rng(0)
    n, episode_len = 4000, 100
    right = np.arange(n // episode_len) % 2 == 0  # one mode per episode, half of them each
    centre = np.where(np.repeat(right, episode_len), 1.5, -1.5)
    episode_return = right + 0.01 * rng.random(n // episode_len)
    buffer = {
        "obs": rng.standard_normal((n, 3)).astype(np.float32),
        "actions": (np.stack([centre, np.zeros(n)], axis=1) + 0.2 * rng.standard_normal((n, 2))).astype(
            np.float32
        ),
        "episode_ids": np.arange(n) // episode_len,
        "scores": np.repeat(episode_return, episode_len),
    }
    config = DecoderConfig(kind="flow", hidden_width=64, depth=3)

    def share_near_right(elite_share: float) -> tuple[float, float | None]:
        fit = FitConfig(
            steps=400, batch_size=256, lr=3e-3, eval_every=100, elite_share=elite_share, elite_percentile=75
        )
        decoder, result = fit_decoder(config, **buffer, seed=0, fit=fit)
        with torch.no_grad():
            actions = decoder.decode(torch.randn(2000, 3), torch.randn(2000, 2)).numpy()
        return float(np.mean(actions[:, 0] > 0)), result.elite_threshold

    everything, threshold_off = share_near_right(0.0)
    elite, threshold = share_near_right(1.0)
    assert 0.35 < everything < 0.65, everything
    assert elite > 0.9, elite
    assert threshold_off is None and threshold is not None and threshold > 1.0


def test_elite_rows_are_the_episodes_at_or_above_the_training_episodes_percentile():
    episode_ids = np.repeat([0, 1, 2, 3, 4], [1, 2, 3, 4, 5])  # episodes of 1-5 rows
    returns = np.repeat([5.0, 1.0, 3.0, 4.0, 2.0], [1, 2, 3, 4, 5])
    is_val = episode_ids == 0  # episode 0 (the best) is held out
    split = _EpisodeSplit(np.flatnonzero(~is_val), np.flatnonzero(is_val), np.arange(1), (1, 2, 3, 4), (0,))
    # The training episodes' returns are 1, 3, 4, 2, each counted once: their median is 2.5.
    elite = _elite_rows(episode_ids, returns, split, FitConfig(elite_share=0.8))
    assert elite.threshold == 2.5
    np.testing.assert_array_equal(
        split.train_idx[elite.train_rows], np.flatnonzero(np.isin(episode_ids, [2, 3]))
    )
    np.testing.assert_array_equal(elite.val_rows, [0])


def test_advantage_elite_rows_are_the_transitions_at_or_above_the_training_transitions_percentile():
    episode_ids = np.repeat([0, 1, 2], [2, 3, 3])
    advantages = np.array([9.0, -9.0, 0.1, 0.5, -0.2, 0.3, 0.0, 0.4])
    is_val = episode_ids == 0
    split = _EpisodeSplit(np.flatnonzero(~is_val), np.flatnonzero(is_val), np.arange(2), (1, 2), (0,))
    # The six training transitions' median advantage is 0.2: each row counts, however its episode did.
    elite = _elite_rows(episode_ids, advantages, split, FitConfig(elite_share=1.0, elite_by="advantage"))
    assert elite.threshold == pytest.approx(0.2)
    np.testing.assert_array_equal(split.train_idx[elite.train_rows], [3, 5, 7])
    np.testing.assert_array_equal(elite.val_rows, [0])


def test_flow_decoder_follows_ten_euler_steps_of_the_exact_gaussian_flow():
    """Fitted on N(0.3, 0.5^2 I) from the prior, the flow's exact marginal velocity is linear:
    x(t) scales with sigma_t = sqrt(t^2 + (1 - t)^2 s^2). Ten Euler steps that evaluate the
    velocity at the start of each step (t = 1, 0.9, ..., 0.1) scale the latent's std by the
    product below, 0.431 rather than the exact 0.5 (0.527 if the velocity were read at the end
    of each step, 0.474 at its middle): the learnt decoder must land on that number, which
    checks the time convention, the direction and the grid of the sampler at once."""

    s, steps = 0.5, 10
    expected = 1.0
    for k in range(steps, 0, -1):
        t = k / steps
        expected *= 1 - (t - (1 - t) * s**2) / (t**2 + (1 - t) ** 2 * s**2) / steps
    rng = np.random.default_rng(0)
    actions = (0.3 + s * rng.standard_normal((8000, 2))).astype(np.float32)
    buffer = {"obs": np.zeros((8000, 1), np.float32), "actions": actions,
              "episode_ids": np.arange(8000) // 100}  # fmt: skip
    fit = FitConfig(steps=1500, batch_size=256, lr=3e-3, eval_every=500)
    decoder, _ = fit_decoder(DecoderConfig(kind="flow", hidden_width=32, depth=2), **buffer, seed=0, fit=fit)
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoded = decoder.decode(torch.zeros(20000, 1), z)
    assert abs(expected - 0.431) < 1e-3
    np.testing.assert_allclose(decoded.std(0).numpy(), expected, atol=0.02)
    np.testing.assert_allclose(decoded.mean(0).numpy(), 0.3, atol=0.03)


def test_encoder_latent_ablation_learns_the_collected_pairing():
    """With decoder_input='encoder_latent' the decoder regresses the map z -> a that produced the data."""

    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 2)).astype(np.float32)
    buffer = {
        "obs": np.zeros((2000, 1), np.float32),
        "actions": 0.5 * z + 1.0,
        "episode_ids": np.arange(2000) // 50,
    }
    fit = FitConfig(steps=300, batch_size=256, lr=3e-3, eval_every=100, decoder_input="encoder_latent")
    decoder, result = fit_decoder(DecoderConfig(kind="flow", **SMALL), **buffer, seed=0, fit=fit, latents=z)
    probe = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        decoded = decoder.decode(torch.zeros(200, 1), probe)
    assert (decoded - (0.5 * probe + 1.0)).abs().mean() < 0.1
    # The endpoint check decodes the collected latents too, so it measures the learnt pairing:
    # from fresh prior noise it would be the pairing's spread, 2 x 0.25 per dimension.
    assert result.best_endpoint_mse < 0.02


@pytest.mark.parametrize("kind", GENERATIVE)
def test_the_pairwise_anchor_pulls_the_decoder_to_the_collected_pairing(kind):
    """The buffer pairs each latent z with a = 1 - 0.5 z, a reflection that a transport of the
    prior has no reason to learn; the anchor (the release's diffusion term) pulls towards it."""

    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 2)).astype(np.float32)
    buffer = {"obs": np.zeros((2000, 1), np.float32), "actions": 1.0 - 0.5 * z,
              "episode_ids": np.arange(2000) // 50}  # fmt: skip
    probe = torch.randn(500, 2, generator=torch.Generator().manual_seed(3))

    def pairing_error(anchor_weight: float) -> float:
        fit = FitConfig(steps=300, batch_size=256, lr=3e-3, eval_every=100, anchor_weight=anchor_weight)
        decoder, _ = fit_decoder(DecoderConfig(kind=kind, **SMALL), **buffer, seed=0, fit=fit, latents=z)
        with torch.no_grad():
            return (decoder.decode(torch.zeros(500, 1), probe) - (1.0 - 0.5 * probe)).abs().mean().item()

    without, anchored = pairing_error(0.0), pairing_error(10.0)
    assert anchored < 0.7 * without, (anchored, without)

    decoder = make_decoder(DecoderConfig(kind=kind, target_clip=3.0, **SMALL), 1, 2)
    randomise_head(decoder)
    obs, latents, actions = torch.randn(8, 1), torch.randn(8, 2), 4.0 * torch.randn(8, 2)
    # Averaged over action dimensions too, as the release's decoder_loss does.
    expected = (decoder.decode(obs, latents) - actions.clamp(-3, 3)).square().mean()
    torch.testing.assert_close(decoder.anchor_loss(obs, latents, actions), expected)
    # Validation scores the loss that training minimises, anchor included.
    base = evaluate_loss(decoder, obs, actions, seed=5)
    anchored = evaluate_loss(decoder, obs, actions, seed=5, anchor=(0.5, latents))
    assert anchored == pytest.approx(base + 0.5 * expected.item(), rel=1e-5)


def test_endpoint_selection_keeps_the_weights_with_the_least_endpoint_error():
    buffer = bimodal_buffer(n=2000)
    fit = FitConfig(steps=120, batch_size=128, lr=0.05, eval_every=10, select_by="endpoint_mse")
    _, result = fit_decoder(DecoderConfig(kind="flow", **SMALL), **buffer, seed=0, fit=fit)
    endpoint = [result.initial_endpoint_mse] + [row[3] for row in result.curve]
    assert result.best_endpoint_mse == min(endpoint) < result.initial_endpoint_mse
    step_of_best = ([0] + [row[0] for row in result.curve])[endpoint.index(min(endpoint))]
    assert result.best_step == step_of_best


@pytest.mark.parametrize("kind", GENERATIVE)
def test_target_clip_clamps_pre_tanh_targets(kind):
    actions = 4.0 * torch.randn(64, 2)
    obs = torch.randn(64, 3)

    def loss(clip, targets):
        config = DecoderConfig(kind=kind, target_clip=clip, **SMALL)
        decoder = make_decoder(config, 3, 2, generator=torch.Generator().manual_seed(0))
        randomise_head(decoder)
        return decoder.loss(obs, targets, torch.Generator().manual_seed(1))

    clipped = loss(3.0, actions)
    torch.testing.assert_close(clipped, loss(None, actions.clamp(-3.0, 3.0)))
    torch.testing.assert_close(loss(0.0, actions), loss(None, actions))
    assert not torch.allclose(clipped, loss(None, actions))


def test_validation_split_is_by_episode():
    buffer = bimodal_buffer(n=3000, episode_len=100)
    _, result = fit_decoder(DecoderConfig(kind="flow", **SMALL), **buffer, seed=5, fit=QUICK)
    assert not set(result.train_episodes) & set(result.val_episodes)
    assert set(result.train_episodes) | set(result.val_episodes) == set(range(30))
    assert len(result.val_episodes) == 3  # 10% of 30 episodes
    assert (result.train_size, result.val_size) == (2700, 300)


def test_best_validation_checkpoint_is_kept():
    """A too-large learning rate makes validation loss bounce; the returned weights are the best ones."""

    buffer = bimodal_buffer(n=2000)
    config = DecoderConfig(kind="flow", **SMALL)
    fit = FitConfig(steps=120, batch_size=128, lr=0.05, eval_every=10)
    decoder, result = fit_decoder(config, **buffer, seed=0, fit=fit)
    val_losses = [result.initial_val_loss] + [row[2] for row in result.curve]
    assert result.best_val_loss == min(val_losses)
    assert 0 < result.best_step < fit.steps and result.final_val_loss > result.best_val_loss

    # Training is deterministic, so stopping at best_step reproduces the kept weights.
    shorter = FitConfig(steps=result.best_step, batch_size=128, lr=0.05, eval_every=10)
    reference, _ = fit_decoder(config, **buffer, seed=0, fit=shorter)
    for name, value in reference.state_dict().items():
        assert torch.equal(decoder.state_dict()[name], value), name


def test_the_endpoint_error_is_measured_on_the_validation_episodes():
    """`select_by = "endpoint_mse"` (the paper preset on finger-spin and fish-swim) measured on
    training rows would keep an overfitted decoder and report an optimistic error."""

    n = 2000
    buffer = {"obs": np.zeros((n, 3), np.float32), "actions": np.zeros((n, 2), np.float32),
              "episode_ids": np.arange(n) // 100}  # fmt: skip
    config = DecoderConfig(kind="flow", **SMALL)
    _, first = fit_decoder(config, **buffer, seed=0, fit=QUICK)
    # The split depends on the episode ids and the seed only: the same episodes validate again,
    # now with actions at 2 (training ones stay at 0).
    buffer["actions"][np.isin(buffer["episode_ids"], first.val_episodes)] = 2.0
    _, result = fit_decoder(config, **buffer, seed=0, fit=QUICK)
    assert result.val_episodes == first.val_episodes
    # The fresh decoder is the identity: z ~ N(0, I) against 2 gives E(z - 2)^2 = 5 (against 0: 1).
    assert result.initial_endpoint_mse == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("kind", GENERATIVE)
def test_same_seed_gives_identical_weights(kind):
    buffer = bimodal_buffer(n=1000)
    config = DecoderConfig(kind=kind, **SMALL)
    first, result_a = fit_decoder(config, **buffer, seed=3, fit=QUICK)
    second, result_b = fit_decoder(config, **buffer, seed=3, fit=QUICK)
    other, _ = fit_decoder(config, **buffer, seed=4, fit=QUICK)
    assert result_a.curve == result_b.curve
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name
    assert not torch.equal(other.state_dict()["net.net.0.weight"], first.state_dict()["net.net.0.weight"])


def test_state_dict_round_trip_restores_the_decoder():
    config = DecoderConfig(kind="diffusion", **SMALL)
    decoder, _ = fit_decoder(config, **bimodal_buffer(n=1000), seed=0, fit=QUICK)
    restored = make_decoder(config, obs_dim=3, act_dim=2)
    restored.load_state_dict(decoder.state_dict())
    obs, z = torch.randn(5, 3), torch.randn(5, 2)
    with torch.no_grad():
        assert torch.equal(restored.decode(obs, z), decoder.decode(obs, z))


def test_decoder_normalises_raw_obs_with_training_split_statistics():
    buffer = bimodal_buffer(n=1000)
    buffer["obs"] = 5.0 + 2.0 * buffer["obs"]
    buffer["obs"][:, 2] = 7.0  # constant: left unscaled rather than divided by ~0
    decoder, _ = fit_decoder(DecoderConfig(kind="flow", **SMALL), **buffer, seed=0, fit=QUICK)
    np.testing.assert_allclose(decoder.obs_mean.numpy(), [5.0, 5.0, 7.0], atol=0.2)
    np.testing.assert_allclose(decoder.obs_std.numpy(), [2.0, 2.0, 1.0], atol=0.2)


def test_the_identity_decoder_is_not_fitted():
    with pytest.raises(ValueError, match="identity decoder has no weights to fit"):
        fit_decoder(DecoderConfig(kind="identity"), **bimodal_buffer(n=500), seed=0)


def test_bad_inputs_are_refused():
    config = DecoderConfig(kind="flow", **SMALL)
    good = bimodal_buffer(n=400)

    def refused(match, fit=QUICK, **changes):
        with pytest.raises(ValueError, match=match):
            fit_decoder(config, **{**good, **changes}, seed=0, fit=fit)

    refused("at least 2 complete episodes", episode_ids=np.zeros(400, dtype=int))
    refused(
        "at least 2 complete episodes",
        obs=good["obs"][:0],
        actions=good["actions"][:0],
        episode_ids=good["episode_ids"][:0],
    )
    nan_obs = good["obs"].copy()
    nan_obs[7, 1] = np.nan
    refused("obs contains NaN", obs=nan_obs)
    refused("same length", actions=good["actions"][:-1])
    refused("latent dim = action dim", latents=np.zeros((400, 3), np.float32))
    refused("needs the encoder latents", fit=FitConfig(decoder_input="encoder_latent"))
    refused("anchor_weight > 0 needs the encoder latents", fit=FitConfig(anchor_weight=1e-3))
    elite = FitConfig(steps=10, elite_share=0.8)
    refused("elite_share > 0 needs the episode return", fit=elite)
    refused("one value per row", fit=elite, scores=np.zeros(399))
    refused("same value", fit=elite, scores=np.arange(400.0))
    refused("scores contains NaN", fit=elite, scores=np.full(400, np.nan))
    by_advantage = FitConfig(steps=10, elite_share=0.8, elite_by="advantage")
    refused("elite_share > 0 needs the advantage", fit=by_advantage)
    refused(r"elite_by must be 'return' or 'advantage', got 'reward'", fit=FitConfig(elite_by="reward"))
    refused(r"elite_share must lie in \[0, 1\]", fit=FitConfig(elite_share=1.5))
    refused(r"elite_percentile must lie in \[0, 100\]", fit=FitConfig(elite_share=0.5, elite_percentile=-1))
    with pytest.raises(ValueError, match="target_clip"):
        fit_decoder(DecoderConfig(target_clip=-1.0), **good, seed=0, fit=QUICK)
    decoder = make_decoder(config, obs_dim=3, act_dim=2)
    with pytest.raises(ValueError, match="latent dim"):
        decoder.decode(torch.zeros(4, 3), torch.zeros(4, 3))


def test_the_diffusion_schedule_is_the_release_s_linear_alpha_bar():
    """The DDIM checks read alpha-bar from the decoder and its endpoints only: a schedule of
    another shape with the same ends (1 - 0.999 t^2, say) passed them all."""

    decoder = make_decoder(DecoderConfig(kind="diffusion", hidden_width=8, depth=1, sampling_steps=10), 2, 2)
    k = torch.arange(11, dtype=torch.float64)
    torch.testing.assert_close(decoder.alpha_bar.double(), 1 - (1 - 1e-3) * k / 10, atol=1e-6, rtol=0)


def test_the_validation_rows_are_subsampled_across_the_validation_episodes():
    """The first rows instead of a random subset validate on the early steps of a few episodes
    (rows are stored step by step across envs); at paper scale the cap (65,536) is reached."""

    ids = np.repeat(np.arange(10), 100)
    split = _split_by_episode(ids, FitConfig(val_fraction=0.5, val_max_actions=50), 0, 1)
    assert len(split.val_idx) == 50 and set(ids[split.val_idx]) == set(split.val_episodes)


def test_the_endpoint_error_compares_with_the_clipped_targets():
    """The decoder learns clipped pre-tanh targets (+-3): compared with the raw ones, the error of
    `decoder_select = "endpoint_mse"` (paper preset, finger-spin and fish-swim) is dominated by
    targets no decoder is trained to reach."""

    decoder = make_decoder(DecoderConfig(kind="flow", hidden_width=8, depth=1, target_clip=3.0), 1, 2)
    error = endpoint_error(decoder, torch.zeros(4000, 1), torch.full((4000, 2), 10.0), seed=0)
    assert error == pytest.approx(10.0, rel=0.1)  # the identity: E(z - 3)^2 = 10, not E(z - 10)^2 = 101
