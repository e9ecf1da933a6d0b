"""GoRL's decoders g_phi(s, z): deterministic maps from a latent z to a pre-tanh action.

GoRL factorises the policy as pi(a | s) = integral pi_theta(z | s) g_phi(s, z) dz: PPO
trains a Gaussian latent policy (the encoder) while the decoder is frozen, and at stage
boundaries a fresh decoder is fitted on on-policy data (obs, pre-tanh action) so that
pushing z ~ N(0, I) through it reproduces the behaviour (paper Eq. 4, the "fixed-prior
anchor"). The environment receives tanh(decode(obs, z)).

Three decoders share one interface (`Decoder`):

* `IdentityDecoder`: a_pre = z, GoRL's stage-0 decoder (official release).
* `FlowMatchingDecoder`: straight-path flow matching, Euler ODE from x(1) = z to x(0).
* `DiffusionDecoder`: DDPM noise prediction decoded by deterministic DDIM from x_T = z.

Both generative decoders use `algorithms.generative.ConditionalMLP` with a zero final
layer, so a freshly built one is exactly the identity, like the official release.

Observation normalisation lives inside the decoder: it stores a fixed mean/std (computed by
`fit_decoder` on its training split, official release's `ObsNormalizedDecoder`) as buffers,
so `decode` takes raw observations, the normaliser is saved in `state_dict`, and the
decoder stays valid however the encoder's running normaliser drifts afterwards.

`decode` does not switch off autograd; callers collecting rollouts wrap it in
`torch.no_grad()`.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from algorithms.generative import ConditionalMLP, flow_path, integrate_flow
from algorithms.onpolicy import make_adam
from harness.progress import count

DecoderKind = Literal["identity", "flow", "diffusion"]

#: Official-release per-kind defaults used when `hidden_width` / `output_scale` are None:
#: FM decoder 4x128 with output scale 1.0, diffusion decoder 4x64 with output scale 0.25.
_RELEASE_WIDTH = {"flow": 128, "diffusion": 64}
_RELEASE_OUTPUT_SCALE = {"flow": 1.0, "diffusion": 0.25}


_AS_IS: Mapping[str, str] = MappingProxyType({})  # validation messages name the fields themselves


def _check_counts(config: Any, fields: tuple[str, ...], names: Mapping[str, str]) -> None:
    for field in fields:
        if getattr(config, field) < 1:
            raise ValueError(f"{names.get(field, field)} must be >= 1, got {getattr(config, field)}")


@dataclass(frozen=True)
class DecoderConfig:
    """What a decoder is: its kind, network and generative-model settings."""

    kind: DecoderKind = "flow"  # paper's GoRL-FM; "diffusion" for GoRL-Diff; "identity" for stage 0
    # None: the official release's value for the kind (flow 128, diffusion 64); paper App. E.4 says 32.
    hidden_width: int | None = None
    depth: int = 4  # paper App. E.4 and official release: 4 hidden layers
    # None: the official release's value for the kind (flow 1.0, diffusion 0.25).
    output_scale: float | None = None
    sampling_steps: int = 10  # paper App. E.4: 10 Euler (FM) / 10 DDIM (diffusion) steps, T_train = 10
    samples_per_action: int = 8  # official release: 8 (eps, t) draws per action in the loss
    target_clip: float | None = 3.0  # official release: clip pre-tanh targets to +-3; 0 or None disables
    alpha_bar_min: float = 1e-3  # official release: linear alpha-bar schedule from 1 down to 1e-3
    obs_std_eps: float = 1e-8  # official release: added to the decoder's fixed obs std

    def validate(self, names: Mapping[str, str] = _AS_IS) -> None:
        """Raise ValueError for an invalid field, named by `names` (field -> the key a user sets)."""

        if self.kind not in ("identity", "flow", "diffusion"):
            raise ValueError(f"kind must be 'identity', 'flow' or 'diffusion', got {self.kind!r}")
        if self.hidden_width is not None and self.hidden_width < 1:
            raise ValueError(
                f"{names.get('hidden_width', 'hidden_width')} must be >= 1, got {self.hidden_width}"
            )
        _check_counts(self, ("depth", "sampling_steps", "samples_per_action"), names)
        if self.output_scale is not None and self.output_scale <= 0:
            raise ValueError(f"output_scale must be > 0, got {self.output_scale}")
        if self.target_clip is not None and self.target_clip < 0:
            raise ValueError(f"target_clip must be >= 0 (0 disables), got {self.target_clip}")
        if not 0.0 < self.alpha_bar_min < 1.0:
            raise ValueError(f"alpha_bar_min must lie in (0, 1), got {self.alpha_bar_min}")
        if self.obs_std_eps < 0:
            raise ValueError(f"obs_std_eps must be >= 0, got {self.obs_std_eps}")

    @property
    def resolved_width(self) -> int:
        return self.hidden_width if self.hidden_width is not None else _RELEASE_WIDTH[self.kind]

    @property
    def resolved_output_scale(self) -> float:
        return self.output_scale if self.output_scale is not None else _RELEASE_OUTPUT_SCALE[self.kind]


class Decoder(nn.Module, abc.ABC):
    """A deterministic map (raw obs (B, obs_dim), latent z (B, act_dim)) -> pre-tanh action (B, act_dim)."""

    def __init__(self, config: DecoderConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.config = config
        self.obs_dim = obs_dim
        self.act_dim = act_dim

    def decode(self, obs: Tensor, z: Tensor) -> Tensor:
        if obs.ndim != 2 or z.ndim != 2 or obs.shape[0] != z.shape[0]:
            raise ValueError(f"decode expects obs (B, obs_dim), z (B, act_dim); got {obs.shape}, {z.shape}")
        if obs.shape[1] != self.obs_dim or z.shape[1] != self.act_dim:
            raise ValueError(
                f"decoder built for obs_dim={self.obs_dim}, latent dim = act_dim={self.act_dim}; "
                f"got obs dim {obs.shape[1]} and latent dim {z.shape[1]}"
            )
        return self._decode(obs, z)

    @abc.abstractmethod
    def _decode(self, obs: Tensor, z: Tensor) -> Tensor: ...


class IdentityDecoder(Decoder):
    """a_pre = z exactly: GoRL's stage-0 decoder, which makes stage 0 plain tanh-Gaussian PPO."""

    def _decode(self, obs: Tensor, z: Tensor) -> Tensor:
        return z


class GenerativeDecoder(Decoder):
    """A decoder learnt by regression of a `ConditionalMLP` on noisy actions (FM or diffusion).

    Subclasses define the noising process (`_training_pair`) and the deterministic sampler
    (`_sample`); normalisation, target clipping and the Monte-Carlo loss are shared here.
    """

    def __init__(
        self,
        config: DecoderConfig,
        obs_dim: int,
        act_dim: int,
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(config, obs_dim, act_dim)
        self.net = ConditionalMLP(
            obs_dim, act_dim, config.resolved_width, config.depth, config.resolved_output_scale, generator
        )
        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
        if mean.shape != (obs_dim,) or std.shape != (obs_dim,):
            raise ValueError(f"obs_mean and obs_std must have shape ({obs_dim},)")
        self.register_buffer("obs_mean", mean.clone())
        self.register_buffer("obs_std", std.clone())

    def normalise(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / (self.obs_std + self.config.obs_std_eps)

    def _decode(self, obs: Tensor, z: Tensor) -> Tensor:
        return self._sample(self.normalise(obs), z)

    def loss(
        self, obs: Tensor, actions: Tensor, generator: torch.Generator, latents: Tensor | None = None
    ) -> Tensor:
        """Mean squared regression error over `samples_per_action` noise/time draws per action.

        obs are raw, actions pre-tanh. The path's noise end is fresh eps ~ N(0, I) drawn from
        `generator` (paper Eq. 4: the decoder learns to transport the fixed prior onto the
        actions), or, when `latents` is given, the latent that produced each action (the
        "encoder_latent" ablation: the decoder then learns to reconstruct the pairing z -> a
        that the encoder induced, the variant the paper argues against).
        """

        actions = self.clipped_targets(actions)
        repeats = self.config.samples_per_action
        obs = self.normalise(obs).repeat_interleave(repeats, dim=0)
        actions = actions.repeat_interleave(repeats, dim=0)
        if latents is None:
            noise = torch.randn(
                actions.shape, generator=generator, dtype=actions.dtype, device=actions.device
            )
        else:
            noise = latents.repeat_interleave(repeats, dim=0)
        x_t, t, target = self._training_pair(actions, noise, generator)
        return (self.net(obs, x_t, t) - target).square().mean()

    def clipped_targets(self, actions: Tensor) -> Tensor:
        """Pre-tanh actions clamped to +-target_clip: rare huge ones (tanh is flat there) would
        dominate a squared loss."""

        clip = self.config.target_clip
        return actions.clamp(-clip, clip) if clip else actions

    def anchor_loss(self, obs: Tensor, latents: Tensor, actions: Tensor) -> Tensor:
        """The official release's "pairwise" anchor ||g(s, z) - a||^2 through the whole sampler.

        z is the latent that produced the action a at collection; the squared error is averaged
        over action dimensions and the batch, as the release's `decoder_loss` does (a sum over
        dimensions would weight it act_dim times more). It pulls the new decoder towards mapping
        each collected latent where the previous decoder did.
        """

        return (self.decode(obs, latents) - self.clipped_targets(actions)).square().mean()

    @abc.abstractmethod
    def _training_pair(
        self, actions: Tensor, noise: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw times; return (noisy action x_t, time t in [0, 1], regression target for the net)."""

    @abc.abstractmethod
    def _sample(self, obs_norm: Tensor, z: Tensor) -> Tensor:
        """Run the deterministic sampler from the latent z (the noise end) to an action."""


class FlowMatchingDecoder(GenerativeDecoder):
    """Conditional flow matching on the straight path x_t = t * eps + (1 - t) * a (t = 1: noise).

    Training regresses v(s, x_t, t) on the path velocity eps - a with t ~ U(0, 1) (official
    release). Decoding integrates the learnt ODE from x(1) = z to x(0) with `sampling_steps`
    Euler steps. The ODE is a deterministic transport map, so the encoder's Gaussian over z
    becomes an arbitrary (e.g. multimodal) distribution over actions. A zero velocity is the
    identity map.
    """

    def _training_pair(
        self, actions: Tensor, noise: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.rand(actions.shape[0], generator=generator, dtype=actions.dtype, device=actions.device)
        x_t, velocity = flow_path(actions, noise, t)
        return x_t, t, velocity

    def _sample(self, obs_norm: Tensor, z: Tensor) -> Tensor:
        return integrate_flow(self.net, obs_norm, z, self.config.sampling_steps)


class DiffusionDecoder(GenerativeDecoder):
    """DDPM with T = `sampling_steps` noise levels, decoded by deterministic DDIM (eta = 0) from x_T = z.

    Forward process at level k (time t_k = k / T): x_k = sqrt(abar_k) a + sqrt(1 - abar_k) eps,
    with the official release's linear schedule abar_k = 1 - (1 - alpha_bar_min) * t_k, so
    abar_0 = 1 (clean action) and abar_T = alpha_bar_min (x_T is almost pure noise, which is
    why decoding may start at x_T = z with z ~ N(0, I)).

    DDIM step k -> k - 1 with a noise estimate eps_hat:
        x0_hat  = (x_k - sqrt(1 - abar_k) eps_hat) / sqrt(abar_k)
        x_{k-1} = sqrt(abar_{k-1}) x0_hat + sqrt(1 - abar_{k-1}) eps_hat
                = r_k x_k + c_k eps_hat,
        r_k = sqrt(abar_{k-1} / abar_k),   c_k = sqrt(1 - abar_{k-1}) - r_k sqrt(1 - abar_k).
    With a plain eps-network, a zero output would give x_0 = (prod r_k) z: a rescaling, not the
    identity. So the network predicts instead the "identity-centred" residual (official
    release's `epsilon_delta`)
        f = eps_hat - ((1 - r_k) / c_k) x_k,   which turns the step into   x_{k-1} = x_k + c_k f,
    and a zero network leaves x unchanged at every step: x_0 = z exactly. Because
    f - f_target = eps_hat - eps, regressing f on eps - ((1 - r_k) / c_k) x_k is exactly the
    usual DDPM noise-prediction loss ||eps_hat - eps||^2 (paper App. C.1); only the meaning
    of a zero output changes. Training levels k ~ U{1, ..., T}.
    """

    def __init__(
        self,
        config: DecoderConfig,
        obs_dim: int,
        act_dim: int,
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(config, obs_dim, act_dim, obs_mean, obs_std, generator)
        steps = config.sampling_steps
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = 1.0 - (1.0 - config.alpha_bar_min) * t
        # Index k = 1..T of these holds the coefficients of the step k -> k - 1; index 0 is unused.
        ratio = torch.ones_like(alpha_bar)
        ratio[1:] = (alpha_bar[:-1] / alpha_bar[1:]).sqrt()
        step_coef = torch.zeros_like(alpha_bar)
        step_coef[1:] = (1.0 - alpha_bar[:-1]).sqrt() - ratio[1:] * (1.0 - alpha_bar[1:]).sqrt()
        residual_coef = torch.zeros_like(alpha_bar)
        residual_coef[1:] = (1.0 - ratio[1:]) / step_coef[1:]
        # Computed in float64, stored as float32 buffers (saved with the weights, moved with .to()).
        self.register_buffer("alpha_bar", alpha_bar.float())
        self.register_buffer("step_coef", step_coef.float())
        self.register_buffer("residual_coef", residual_coef.float())

    def _training_pair(
        self, actions: Tensor, noise: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        steps = self.config.sampling_steps
        k = torch.randint(1, steps + 1, (actions.shape[0],), generator=generator, device=actions.device)
        alpha_bar = self.alpha_bar[k].unsqueeze(-1)
        x_k = alpha_bar.sqrt() * actions + (1.0 - alpha_bar).sqrt() * noise
        target = noise - self.residual_coef[k].unsqueeze(-1) * x_k
        return x_k, k.to(actions.dtype) / steps, target

    def _sample(self, obs_norm: Tensor, z: Tensor) -> Tensor:
        steps = self.config.sampling_steps
        x = z
        residual_at = self.net.on_grid(obs_norm, [k / steps for k in range(steps, 0, -1)])
        for i, k in enumerate(range(steps, 0, -1)):
            x = x + self.step_coef[k] * residual_at(x, i)
        return x


def make_decoder(
    config: DecoderConfig,
    obs_dim: int,
    act_dim: int,
    obs_mean: Tensor | np.ndarray | None = None,
    obs_std: Tensor | np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> Decoder:
    """A fresh decoder (exactly the identity map) of `config.kind`.

    `obs_mean`/`obs_std` set the decoder's fixed observation normaliser (default 0 / 1);
    `generator` seeds the hidden-layer initialisation. To restore a saved decoder, build it
    with the same config and dimensions, then `load_state_dict`.
    """

    config.validate()
    if config.kind == "identity":
        return IdentityDecoder(config, obs_dim, act_dim)
    cls = FlowMatchingDecoder if config.kind == "flow" else DiffusionDecoder
    mean = None if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
    std = None if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
    return cls(config, obs_dim, act_dim, mean, std, generator)


# ---------------------------------------------------------------------------------------
# Fitting a decoder on a refinement buffer
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """How a fresh decoder is trained at a stage boundary."""

    steps: int = 50_000  # official release (FM): 50,000 Adam steps; paper App. E.4 says 50 epochs
    batch_size: int = 8192  # paper App. E.4: batch 8192 (actions; x samples_per_action rows)
    lr: float = 3e-4  # paper App. E.4: Adam, learning rate 3e-4, constant
    val_fraction: float = 0.1  # official release: 10% of the episodes held out
    eval_every: int = 100  # official release: validation every 100 steps
    # Official release: validation on 8 batches of 8192; here a fixed subset of that size.
    val_max_actions: int = 65_536
    # Paper Eq. 4: fresh eps ~ N(0, I) ("prior"); "encoder_latent" is the ablation
    # (paper Fig. 4a) that puts the latent which produced each action at the path's noise end.
    decoder_input: Literal["prior", "encoder_latent"] = "prior"
    # official release: the diffusion decoder adds 1e-3 x the pairwise anchor; 0 (FM): no anchor
    anchor_weight: float = 0.0
    # official release: the best `val_loss` checkpoint is kept (finger-spin and fish-swim FM: the
    # best "endpoint" error of decoding validation states from fresh N(0, I) latents, or from
    # the collected latents under `decoder_input = "encoder_latent"`)
    select_by: Literal["val_loss", "endpoint_mse"] = "val_loss"
    endpoint_actions: int = 4096  # official release: 4096 validation states in the endpoint check
    # The original (pre-release) code's optional "hybrid sampling", off in the runs the paper
    # reports (0): this share of every minibatch is drawn from the training episodes whose return
    # reaches the `elite_percentile`-th percentile of the training episodes' returns, the rest from
    # all of them, so the decoder leans towards the better behaviour (original code when on: 0.8, 50).
    elite_share: float = 0.0
    elite_percentile: float = 50.0
    # What the elite are: "return" ranks whole episodes by their return (the original code's);
    # "advantage" ranks single transitions by their advantage (chosen here: an episode's return
    # says little about any one of its actions, while an advantage scores the action itself, as in
    # the binary advantage filter of CRR, Wang et al. 2020).
    elite_by: Literal["return", "advantage"] = "return"

    def validate(self, names: Mapping[str, str] = _AS_IS) -> None:
        """Raise ValueError for an invalid field, named by `names` (field -> the key a user sets)."""

        _check_counts(
            self, ("steps", "batch_size", "eval_every", "val_max_actions", "endpoint_actions"), names
        )
        if not 0.0 <= self.elite_share <= 1.0:
            raise ValueError(
                f"{names.get('elite_share', 'elite_share')} must lie in [0, 1], got {self.elite_share}"
            )
        if not 0.0 <= self.elite_percentile <= 100.0:
            elite_percentile = names.get("elite_percentile", "elite_percentile")
            raise ValueError(f"{elite_percentile} must lie in [0, 100], got {self.elite_percentile}")
        if self.elite_by not in ("return", "advantage"):
            elite_by = names.get("elite_by", "elite_by")
            raise ValueError(f"{elite_by} must be 'return' or 'advantage', got {self.elite_by!r}")
        if not self.anchor_weight >= 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.select_by not in ("val_loss", "endpoint_mse"):
            select_by = names.get("select_by", "select_by")
            raise ValueError(f"{select_by} must be 'val_loss' or 'endpoint_mse', got {self.select_by!r}")
        if not self.lr > 0:
            raise ValueError(f"{names.get('lr', 'lr')} must be > 0, got {self.lr}")
        if not 0.0 < self.val_fraction < 1.0:
            val_fraction = names.get("val_fraction", "val_fraction")
            raise ValueError(f"{val_fraction} must lie in (0, 1), got {self.val_fraction}")
        if self.decoder_input not in ("prior", "encoder_latent"):
            raise ValueError(f"decoder_input must be 'prior' or 'encoder_latent', got {self.decoder_input!r}")


@dataclass(frozen=True)
class FitResult:
    """What happened while fitting a decoder: its losses before, during and after."""

    steps: int
    best_step: int  # step of the kept weights; 0: the fresh (identity) decoder was never beaten
    best_val_loss: float  # validation loss of the kept weights (the best by `select_by`)
    initial_val_loss: float  # validation loss of the fresh decoder (the identity map), for reference
    final_val_loss: float
    best_endpoint_mse: float  # endpoint error of the kept weights (see `endpoint_error`)
    initial_endpoint_mse: float
    #: (step, mean training loss since the previous evaluation, validation loss, endpoint error)
    #: at each evaluation.
    curve: tuple[tuple[int, float, float, float], ...]
    train_size: int
    val_size: int
    train_episodes: tuple[int, ...]
    val_episodes: tuple[int, ...]
    seconds: float
    elite_threshold: float | None = None  # the least score of an elite row (None: no elite share)

    def metrics(self, prefix: str = "decoder/") -> dict[str, float]:
        """Scalar summary for logging."""

        return {
            f"{prefix}steps": float(self.steps),
            f"{prefix}best_step": float(self.best_step),
            f"{prefix}best_val_loss": self.best_val_loss,
            f"{prefix}initial_val_loss": self.initial_val_loss,
            f"{prefix}final_val_loss": self.final_val_loss,
            f"{prefix}best_endpoint_mse": self.best_endpoint_mse,
            f"{prefix}initial_endpoint_mse": self.initial_endpoint_mse,
            f"{prefix}first_train_loss": self.curve[0][1] if self.curve else math.nan,
            f"{prefix}last_train_loss": self.curve[-1][1] if self.curve else math.nan,
            f"{prefix}train_size": float(self.train_size),
            f"{prefix}val_size": float(self.val_size),
            f"{prefix}seconds": self.seconds,
        } | ({} if self.elite_threshold is None else {f"{prefix}elite_threshold": self.elite_threshold})


def evaluate_loss(
    decoder: GenerativeDecoder,
    obs: Tensor,
    actions: Tensor,
    seed: int,
    latents: Tensor | None = None,
    batch_size: int = 8192,
    anchor: tuple[float, Tensor] | None = None,
) -> float:
    """The decoder's training loss on (obs, actions) with noise and times drawn from `seed`;
    with `anchor` = (weight, the collected latents), its anchor term too, as in training (the
    release validates on the same loss it trains).

    The same seed gives the same draws, so two decoders (or one decoder at two points of
    training) are compared on identical noise: differences are due to the weights alone.
    """

    generator = torch.Generator(device=actions.device).manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for start in range(0, actions.shape[0], batch_size):
            stop = min(start + batch_size, actions.shape[0])
            chunk_latents = None if latents is None else latents[start:stop]
            loss = decoder.loss(obs[start:stop], actions[start:stop], generator, chunk_latents)
            if anchor is not None:
                weight, collected = anchor
                loss = loss + weight * decoder.anchor_loss(
                    obs[start:stop], collected[start:stop], actions[start:stop]
                )
            total += loss.item() * (stop - start)
    return total / actions.shape[0]


def endpoint_error(
    decoder: GenerativeDecoder, obs: Tensor, actions: Tensor, seed: int, latents: Tensor | None = None
) -> float:
    """Mean squared error between decoded and stored (clipped) actions: the official release's
    "endpoint" check of a decoder. The decoder starts from `latents` when given (a decoder trained
    on the encoder's latents is checked on the pairing it learnt), else from fresh z ~ N(0, I)
    drawn from `seed`."""

    z = latents
    if z is None:
        generator = torch.Generator(device=actions.device).manual_seed(seed)
        z = torch.randn(actions.shape, generator=generator, dtype=actions.dtype, device=actions.device)
    with torch.no_grad():
        return (decoder.decode(obs, z) - decoder.clipped_targets(actions)).square().mean().item()


def fit_decoder(
    config: DecoderConfig,
    obs: np.ndarray,
    actions: np.ndarray,
    episode_ids: np.ndarray,
    *,
    seed: int,
    fit: FitConfig = FitConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    latents: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Decoder, FitResult]:
    """Train a fresh decoder of `config.kind` on a refinement buffer; keep the weights best on the
    validation episodes (by `fit.select_by`: flow or noise loss, or endpoint error).

    obs (N, obs_dim) raw observations, actions (N, act_dim) pre-tanh actions, episode_ids (N,)
    any integer labels, latents (N, act_dim) the encoder latents that produced the actions
    (needed only for `fit.decoder_input == "encoder_latent"` or a pairwise anchor), scores (N,)
    what `fit.elite_share` ranks rows by (needed only for it): the return of the episode each row
    belongs to (`fit.elite_by == "return"`) or the row's own advantage ("advantage"). Episodes, not
    transitions, are split into train and validation, so that validation measures
    generalisation to unseen trajectories rather than to neighbours of training steps. The
    fresh decoder is evaluated before the first step too, so the kept weights are never worse
    than the identity on the selection metric (`fit.select_by`).
    Deterministic for a seed, a device and a torch thread count; uses the threads torch is set
    to. The decoder is trained and returned on `device`.
    """

    config.validate()
    if config.kind == "identity":  # GoRL's stage 0 uses it as it is: there is nothing to fit
        raise ValueError("the identity decoder has no weights to fit; fit a flow or diffusion decoder")
    fit.validate()
    obs, actions, episode_ids, latents, scores = _checked_buffer(
        obs, actions, episode_ids, latents, scores, fit
    )
    obs_dim, act_dim = obs.shape[1], actions.shape[1]
    split_seed, init_seed, val_seed = np.random.SeedSequence(seed).generate_state(3)

    split = _split_by_episode(episode_ids, fit, int(split_seed), int(val_seed))
    train_idx, val_idx = split.train_idx, split.val_idx

    def tensors(idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        z = None if latents is None else torch.from_numpy(latents[idx]).to(device)
        return torch.from_numpy(obs[idx]).to(device), torch.from_numpy(actions[idx]).to(device), z

    train_obs, train_act, train_z = tensors(train_idx)
    val_obs, val_act, val_z = tensors(val_idx)
    # The latents at the path's noise end: the encoder's (ablation), or None for fresh prior noise.
    train_noise_z, val_noise_z = (train_z, val_z) if fit.decoder_input == "encoder_latent" else (None, None)
    elite = None if scores is None or fit.elite_share == 0 else _elite_rows(episode_ids, scores, split, fit)

    start_time = time.perf_counter()
    init_rng = torch.Generator().manual_seed(int(init_seed))
    mean, std = train_obs.mean(dim=0), train_obs.std(dim=0, correction=0)
    # Chosen here, because a dimension constant on the training split carries no information,
    # and dividing its later (possibly varying) values by ~1e-8 would blow the input up: scale 1.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    decoder = make_decoder(config, obs_dim, act_dim, mean, std, init_rng).to(device)
    # The minibatch indices and the noise are drawn where the data lives (no host-to-device copy of
    # a minibatch's noise per step), so a fit on a GPU draws other numbers than one on the CPU
    # (another generator: Philox, not the CPU's Mersenne twister); one device repeats its own.
    generator = torch.Generator(device=device).manual_seed(int(init_seed))

    # Validation scores the anchor too when training has one, as the release does.
    anchor = (fit.anchor_weight, val_z) if fit.anchor_weight and val_z is not None else None

    def scores_on(rows: np.ndarray) -> Callable[[], tuple[float, float]]:
        """validate()'s two numbers on the validation rows `rows` (positions in the split)."""

        rows_t = torch.from_numpy(rows).to(device)
        obs_v, act_v = val_obs[rows_t], val_act[rows_t]
        noise_z = None if val_noise_z is None else val_noise_z[rows_t]
        anchor_v = None if anchor is None else (anchor[0], anchor[1][rows_t])
        ends = np.flatnonzero(np.isin(rows, split.endpoint_rows))
        ends_t = torch.from_numpy(ends if len(ends) else np.arange(len(rows))).to(device)

        def scores() -> tuple[float, float]:
            return (
                evaluate_loss(decoder, obs_v, act_v, int(val_seed), noise_z, fit.batch_size, anchor_v),
                endpoint_error(
                    decoder,
                    obs_v[ends_t],
                    act_v[ends_t],
                    int(val_seed),
                    None if noise_z is None else noise_z[ends_t],
                ),
            )

        return scores

    # Validation measures what training minimises: with an elite share, the same mixture of the
    # elite validation episodes and all of them (all alone if none reaches the threshold).
    weighted_scores = [(1.0, scores_on(np.arange(len(val_idx))))]
    if elite is not None and len(elite.val_rows):
        share = fit.elite_share
        weighted_scores = [(1.0 - share, weighted_scores[0][1]), (share, scores_on(elite.val_rows))]

    def validate() -> tuple[float, float]:
        parts = [(weight, scores()) for weight, scores in weighted_scores if weight > 0]
        loss = sum(weight * part[0] for weight, part in parts)
        endpoint = sum(weight * part[1] for weight, part in parts)
        return loss, endpoint

    selected = 0 if fit.select_by == "val_loss" else 1  # which of validate()'s numbers picks the weights
    optimiser = make_adam(decoder.parameters(), fit.lr)
    best = initial = validate()
    best_step, best_state = 0, copy.deepcopy(decoder.state_dict())
    curve: list[tuple[int, float, float, float]] = []
    window_loss, window_steps = torch.zeros((), device=device), 0
    elite_draws = 0 if elite is None else round(fit.elite_share * fit.batch_size)
    elite_idx = None if elite is None else torch.from_numpy(elite.train_rows).to(device)
    for step in range(1, fit.steps + 1):
        # Minibatches with replacement by index: one gather per step, no per-sample Python work.
        idx = torch.randint(
            len(train_idx), (fit.batch_size - elite_draws,), generator=generator, device=device
        )
        if elite_idx is not None:
            picks = torch.randint(len(elite_idx), (elite_draws,), generator=generator, device=device)
            idx = torch.cat([elite_idx[picks], idx])
        obs_b, act_b = train_obs[idx], train_act[idx]
        loss = decoder.loss(obs_b, act_b, generator, None if train_noise_z is None else train_noise_z[idx])
        if fit.anchor_weight:
            loss = loss + fit.anchor_weight * decoder.anchor_loss(obs_b, train_z[idx], act_b)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window_loss += loss.detach()
        window_steps += 1
        if step % fit.eval_every == 0 or step == fit.steps:
            scores = validate()
            curve.append((step, window_loss.item() / window_steps, *scores))
            window_loss, window_steps = torch.zeros((), device=device), 0
            if scores[selected] < best[selected]:
                best, best_step, best_state = scores, step, copy.deepcopy(decoder.state_dict())
    decoder.load_state_dict(best_state)
    result = FitResult(
        steps=fit.steps,
        best_step=best_step,
        best_val_loss=best[0],
        initial_val_loss=initial[0],
        final_val_loss=curve[-1][2],
        best_endpoint_mse=best[1],
        initial_endpoint_mse=initial[1],
        curve=tuple(curve),
        seconds=time.perf_counter() - start_time,
        elite_threshold=None if elite is None else elite.threshold,
        **split.sizes(),
    )
    return decoder, result


@dataclass(frozen=True)
class _EliteRows:
    """The rows of the episodes that `fit.elite_share` of every minibatch is drawn from."""

    train_rows: np.ndarray  # positions in the training split of the elite episodes' rows
    val_rows: np.ndarray  # positions in the validation split of the elite episodes' rows
    threshold: float  # the least score of an elite row


def _elite_rows(
    episode_ids: np.ndarray, scores: np.ndarray, split: _EpisodeSplit, fit: FitConfig
) -> _EliteRows:
    """The rows whose score reaches the `fit.elite_percentile`-th percentile of the training
    split's: of its episodes' returns (each episode counted once, however long) with
    `fit.elite_by == "return"`, of its transitions' advantages with "advantage"."""

    train_scores = scores[split.train_idx]
    if fit.elite_by == "return":
        _, first = np.unique(episode_ids[split.train_idx], return_index=True)
        train_scores = train_scores[first]
    threshold = float(np.percentile(train_scores, fit.elite_percentile))
    is_elite = scores >= threshold
    return _EliteRows(
        np.flatnonzero(is_elite[split.train_idx]), np.flatnonzero(is_elite[split.val_idx]), threshold
    )


@dataclass(frozen=True)
class _EpisodeSplit:
    """Rows of a refinement buffer split by whole episodes into training and validation."""

    train_idx: np.ndarray  # buffer rows of the training episodes
    val_idx: np.ndarray  # buffer rows of the validation episodes (at most `fit.val_max_actions`)
    endpoint_rows: np.ndarray  # rows of `val_idx` whose endpoint error is measured
    train_episodes: tuple[int, ...]
    val_episodes: tuple[int, ...]

    def sizes(self) -> dict[str, Any]:
        """The split as FitResult records it."""

        return dict(
            train_size=len(self.train_idx),
            val_size=len(self.val_idx),
            train_episodes=self.train_episodes,
            val_episodes=self.val_episodes,
        )


def _split_by_episode(
    episode_ids: np.ndarray, fit: FitConfig, split_seed: int, val_seed: int
) -> _EpisodeSplit:
    """Hold out `fit.val_fraction` of the episodes (at least one, and at least one kept for
    training), then subsample the validation rows and the endpoint-error rows to their caps."""

    rng = np.random.default_rng(split_seed)
    episodes = np.unique(episode_ids)
    n_val_episodes = min(len(episodes) - 1, max(1, round(fit.val_fraction * len(episodes))))
    val_episodes = np.sort(rng.permutation(episodes)[:n_val_episodes])
    is_val = np.isin(episode_ids, val_episodes)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(val_idx) > fit.val_max_actions:
        val_idx = np.sort(rng.choice(val_idx, fit.val_max_actions, replace=False))
    endpoint_rows = np.arange(len(val_idx))
    if len(val_idx) > fit.endpoint_actions:
        endpoint_rows = np.sort(
            np.random.default_rng(val_seed).choice(endpoint_rows, fit.endpoint_actions, False)
        )
    return _EpisodeSplit(
        train_idx,
        val_idx,
        endpoint_rows,
        train_episodes=tuple(int(e) for e in np.setdiff1d(episodes, val_episodes)),
        val_episodes=tuple(int(e) for e in val_episodes),
    )


def _checked_buffer(
    obs: np.ndarray,
    actions: np.ndarray,
    episode_ids: np.ndarray,
    latents: np.ndarray | None,
    scores: np.ndarray | None,
    fit: FitConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Refuse malformed refinement buffers with a message naming the problem; return float32 copies."""

    obs = np.asarray(obs, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    episode_ids = np.asarray(episode_ids)
    if obs.ndim != 2 or actions.ndim != 2 or episode_ids.ndim != 1:
        raise ValueError(
            f"expected obs (N, obs_dim), actions (N, act_dim), episode_ids (N,); "
            f"got shapes {obs.shape}, {actions.shape}, {episode_ids.shape}"
        )
    n = obs.shape[0]
    if actions.shape[0] != n or episode_ids.shape[0] != n:
        raise ValueError(
            f"obs, actions and episode_ids must have the same length, got {n}, "
            f"{actions.shape[0]}, {episode_ids.shape[0]}"
        )
    if not np.issubdtype(episode_ids.dtype, np.integer):
        raise ValueError(f"episode_ids must be integers, got dtype {episode_ids.dtype}")
    n_episodes = len(np.unique(episode_ids))
    if n_episodes < 2:
        raise ValueError(
            f"the buffer holds {n} transitions from {count(n_episodes, 'episode')}; at least 2 complete "
            f"episodes are needed to split train and validation by episode"
        )
    if latents is not None:
        latents = np.asarray(latents, dtype=np.float32)
        if latents.shape != actions.shape:
            raise ValueError(
                f"latents must have the shape of actions {actions.shape} (latent dim = action dim), "
                f"got {latents.shape}"
            )
    elif fit.decoder_input == "encoder_latent" or fit.anchor_weight:
        needs = "decoder_input='encoder_latent'" if fit.anchor_weight == 0 else "anchor_weight > 0"
        raise ValueError(f"{needs} needs the encoder latents of the buffer")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"scores must hold one value per row, shape ({n},), got {scores.shape}")
        if fit.elite_by == "return":
            _, first, inverse = np.unique(episode_ids, return_index=True, return_inverse=True)
            if not np.array_equal(scores, scores[first][inverse], equal_nan=True):
                raise ValueError(
                    "scores must hold the same value (its episode's return) in every row of an episode "
                    "with elite_by='return'"
                )
    elif fit.elite_share:
        what = "episode return" if fit.elite_by == "return" else "advantage"
        raise ValueError(f"elite_share > 0 needs the {what} of every row of the buffer")
    for name, array in (("obs", obs), ("actions", actions), ("latents", latents), ("scores", scores)):
        if array is not None and not np.isfinite(array).all():
            bad = int((~np.isfinite(array.reshape(n, -1))).any(axis=1).sum())
            raise ValueError(f"{name} contains NaN or infinite values in {bad} of {n} rows")
    return obs, actions, episode_ids, latents, scores
