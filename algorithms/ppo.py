"""Gaussian PPO with a tanh-squashed diagonal Gaussian policy (the paper's PPO baseline).

The algorithm on one screen, in the CleanRL style; collection, GAE and the minibatch loop
come from `algorithms.onpolicy`.

Log-probabilities: the rollout stores the *pre-tanh* action u and PPO's ratio uses the
Gaussian log-density of u. The env receives a = tanh(u), whose log-density adds the
Jacobian term -sum log(1 - tanh(u)^2); that term depends only on the stored u, not on the
parameters, so it cancels in pi_new / pi_old and the ratio is exactly that of the squashed
policy. Storing u also avoids atanh of actions that saturated to +-1 in float32.

Entropy bonus: with `tanh_entropy` (the `paper` preset: Brax's tanh-normal entropy, which the
official PPO baseline used) it is the Gaussian's analytic entropy plus the tanh log-Jacobian
sum log(1 - tanh(u)^2) at one reparameterised sample u, an estimate of the squashed policy's
entropy that also discourages saturated means; without it (the `cpu` preset, as CleanRL, and
GoRL's latent, which is not squashed) it is the Gaussian's entropy alone.

The actor outputs mean and raw scale; std = softplus(raw) + min_std, a state-dependent
std as in the official code's Brax-style `NormalTanhDistribution`. Deterministic actions
are tanh(mean), and so is the evaluation (official code); with `eval_noise = "sample"` it plays
tanh(u) for u drawn from the Gaussian instead, the stochastic policy whose expected return
PPO maximises.

Presets:

* `paper`: MuJoCo Playground's brax_ppo_config as the paper states it (Table 4). The release's
  PPO baseline, which produced Table 1's PPO column, departed from it in lr (3e-4) and clip
  (0.1): `--set lr=3e-4 --set clip=0.1` runs that baseline (GoRL's `paper` preset instead
  follows the release, see docs/gorl.md). One update collects 480
  steps of 2048 envs (983,040 transitions), computes GAE once over the whole rollout with
  the value network that collected it, and runs 16 epochs of 32 shuffled minibatches of
  30,720 single transitions. Brax instead cuts the rollout into 30-step segments, shuffles
  segments, and recomputes GAE inside every minibatch with the current value network,
  bootstrapping each segment from its last next-observation; the batch sizes are the same,
  the advantage targets differ slightly (fresher values in Brax, full-length GAE here). At a
  time-limit truncation (every DMC episode ends so) GAE bootstraps from V(final_obs) and the
  step is trained like any other; the release zeroes that step's TD error and advantage and
  masks it out of the value loss (one transition per 1000-step episode).
* `cpu`: CleanRL-style settings for a 2-core machine: 64 envs x 64 steps, 10 epochs of 4
  minibatches of 1024, 2 x 64 tanh networks, gamma 0.99, lr 3e-4. Reaches a cheetah-run
  score above 500 within 1M env steps (CleanRL's PPO reports 433 after 8M). It keeps the
  `paper` preset's policy and optimiser, not CleanRL's: a state-dependent softplus std (not a
  free log-std), a constant learning rate (CleanRL anneals it), no value clipping, Adam's
  default eps 1e-8 (CleanRL: 1e-5) and a fixed reward scale (CleanRL: running return
  normalisation), as the official code does (the class defaults below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

import envs
from algorithms.actor_critic import ActorCriticAgent, CoreConfigMixin, EvalNoise
from algorithms.memory import check_network_fits, mlp_parameters
from algorithms.networks import Activation, Init, mlp
from algorithms.onpolicy import Batch, PolicyStep, clipped_surrogate, policy_input
from algorithms.registry import register


def tanh_log_jacobian(u: Tensor) -> Tensor:
    """log(1 - tanh(u)^2), computed as 2 (log 2 - u - softplus(-2u)) to stay finite for large |u|."""

    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


@dataclass(frozen=True)
class PPOConfig(CoreConfigMixin):
    """Defaults are the `paper` preset (MuJoCo Playground's brax_ppo_config, as used by the paper)."""

    num_envs: int = 2048  # brax_ppo_config num_envs
    # official code: 32 minibatches x 1024 x unroll 30 / 2048 envs = 480 steps per env per update
    rollout_steps: int = 480
    epochs: int = 16  # paper table 4 (optimisation epochs)
    num_minibatches: int = 32  # brax_ppo_config num_minibatches (1024 x 30 = 30,720 transitions each)
    lr: float = 1e-3  # paper table 4
    gamma: float = 0.995  # paper table 4 (finger-spin 0.95: see `task_overrides`)
    gae_lambda: float = 0.95  # paper table 4
    clip: float = 0.2  # paper table 4 (the official code used 0.1 for its PPO baseline)
    value_coef: float = 0.25  # paper table 4
    entropy_coef: float = 0.01  # paper table 4
    tanh_entropy: bool = True  # official code: Brax's tanh-normal entropy (see the module docstring)
    reward_scale: float = 10.0  # brax_ppo_config reward_scaling
    max_grad_norm: float | None = None  # official code: no clipping in upstream PPO
    # official release (GoRL's optax.clip_by_global_norm) and CleanRL: one norm over all parameters
    grad_norm_scope: Literal["global", "per_network"] = "global"
    normalize_obs: bool = True  # brax_ppo_config normalize_observations
    actor_hidden: tuple[int, ...] = (32, 32, 32, 32)  # paper App. E.3: 4 x 32 actor
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256, 256)  # paper App. E.3: 5 x 256 critic
    activation: Activation = "silu"  # paper App. E.3 / official code (swish)
    init: Init = "lecun"  # official code: Flax default LeCun-uniform weights, zero biases
    min_std: float = 1e-3  # official code: std = softplus(raw) + 1e-3
    # official code: no cap for PPO, which produced Table 1's PPO column (paper App. E.3 states a
    # clip to [1e-3, 10]; GoRL's encoder caps at 10)
    max_std: float | None = None
    # chosen here, because the batched backend is faster and bit-identical where it exists (envs.make)
    env_backend: Literal["auto", "fast", "dm_control"] = "auto"
    eval_episodes: int = 128  # official code: 128 deterministic episodes per evaluation point
    eval_points: int = 30  # paper's experimental setup: an evaluation every 6M env steps of 180M
    # official code: the evaluation plays the mean action (GoRL: the mean latent); "sample" draws
    # the policy's noise, for the expected return of the stochastic policy (PPO's objective)
    eval_noise: EvalNoise = "zero"
    # chosen here, because inference on one step's batch is too little work to share between threads
    collect_threads: int = 1
    # chosen here, because a second thread speeds up an update on 2 idle cores (20% for 2 x 64 nets,
    # docs/performance.md; more for the FLOP-bound 5 x 256 critic); on cores shared with other
    # processes, spin-waiting threads are many times slower (same section), hence 1 in the cpu presets
    update_threads: int = 2

    def validate(self) -> None:
        self.validate_core()
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0, got {self.min_std}")
        if self.max_std is not None and not self.max_std > self.min_std:
            raise ValueError(f"max_std must exceed min_std ({self.min_std}) or be none, got {self.max_std}")
        if not self.entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
        if not self.actor_hidden or min(self.actor_hidden) < 1:
            raise ValueError("actor_hidden must be a non-empty list of positive widths")

    def check_task(self, task: str, dims: tuple[int, int] | None = None) -> None:
        """The core's checks, and an actor that fits in memory."""

        obs_dim, act_dim = dims or envs.dimensions(task)
        super().check_task(task, (obs_dim, act_dim))
        check_network_fits(mlp_parameters(obs_dim, self.actor_hidden, act_dim), "the actor", "actor_hidden")


PRESETS = {
    "paper": {},
    "cpu": {
        # chosen here, because the fast backend's throughput grows up to 64 envs (docs/performance.md)
        "num_envs": 64,
        "rollout_steps": 64,  # chosen here, because 4096-step updates give 245 updates within 1M steps
        "epochs": 10,  # CleanRL
        "num_minibatches": 4,  # chosen here, because smaller minibatches than 1024 are overhead-bound
        "lr": 3e-4,  # CleanRL / official release baselines
        "gamma": 0.99,  # CleanRL
        "clip": 0.2,  # CleanRL
        # Stable-Baselines3's vf_coef 0.5 on the plain MSE (CleanRL's 0.5 on half the MSE would be 0.25)
        "value_coef": 0.5,
        "entropy_coef": 0.0,  # CleanRL
        "tanh_entropy": False,  # CleanRL: the Gaussian's entropy (its actions are clipped, not squashed)
        "reward_scale": 0.1,  # chosen here, because it keeps value targets near CleanRL's normalised scale
        "max_grad_norm": 0.5,  # CleanRL
        # chosen here: CleanRL clips one global norm, which scored the same on cheetah-run (1M steps,
        # seeds 0-2: 444.2 / 527.7 / 491.7 vs 562.4 / 489.6 / 410.8 apart, means 487.9 vs 487.6); the
        # cpu results in the docs were measured with actor and critic clipped apart
        "grad_norm_scope": "per_network",
        "actor_hidden": (64, 64),  # CleanRL's 2 x 64
        "critic_hidden": (64, 64),  # CleanRL's 2 x 64
        "activation": "tanh",  # CleanRL
        "init": "orthogonal",  # CleanRL
        # chosen here, because 2 x 64 nets are overhead-bound (a second thread gains <= 20% on idle cores)
        # while spin-waiting threads make the update over 10x slower when other processes share the cores
        "update_threads": 1,
        "eval_episodes": 16,  # chosen here, because 16 x 1000 steps cost ~2 s per point on 2 cores
        "eval_points": 10,  # chosen here, because each point costs ~2 s, and 10 points still draw a curve
    },
}


def task_overrides(preset: str, task: str) -> dict[str, Any]:
    """finger-spin uses gamma 0.95 for every method and preset (brax_ppo_config, paper §E)."""

    return {"gamma": 0.95} if task == "finger-spin" else {}


class ActorCritic(nn.Module):
    """Separate actor (mean, raw scale) and critic MLPs on normalised observations."""

    def __init__(self, obs_dim: int, act_dim: int, config: PPOConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.min_std, self.max_std = config.min_std, config.max_std
        self.actor = mlp(
            obs_dim,
            config.actor_hidden,
            2 * act_dim,
            config.activation,
            config.init,
            out_gain=0.01,
            generator=generator,
        )
        self.critic = mlp(
            obs_dim,
            config.critic_hidden,
            1,
            config.activation,
            config.init,
            out_gain=1.0,
            generator=generator,
        )

    def dist(self, obs: Tensor) -> Normal:
        mean, raw_scale = self.actor(obs).chunk(2, dim=-1)
        std = F.softplus(raw_scale) + self.min_std
        if self.max_std is not None:
            std = std.clamp(max=self.max_std)
        return Normal(mean, std, validate_args=False)

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)


@register(
    "ppo",
    config=PPOConfig,
    presets=PRESETS,
    summary="Gaussian PPO, tanh-squashed diagonal Gaussian (paper baseline)",
    task_overrides=task_overrides,
)
class PPOAgent(ActorCriticAgent):
    def build_model(self, obs_dim: int, act_dim: int) -> ActorCritic:
        return ActorCritic(obs_dim, act_dim, self.config, self.init_rng)

    def sample(self, dist: Normal, generator: torch.Generator) -> Tensor:
        return dist.mean + dist.stddev * self.noise(dist.mean.shape, generator)

    def policy_step(self, obs: Tensor) -> PolicyStep:
        dist = self.model.dist(obs)
        u = self.sample(dist, self.action_rng)
        return PolicyStep(torch.tanh(u), u, dist.log_prob(u).sum(-1), self.model.value(obs))

    def loss(self, mb: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.gaussian_loss(mb, self.model.dist(mb["obs"]))

    def gaussian_loss(self, mb: Batch, dist: Normal) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate + value + entropy loss, given the policy's distribution on `mb["obs"]`."""

        c = self.config
        log_ratio = dist.log_prob(mb["actions"]).sum(-1) - mb["log_probs"]
        policy_loss, metrics = clipped_surrogate(log_ratio, mb["advantages"], c.clip)
        value_loss = self.value_loss(mb)
        entropy = dist.entropy().sum(-1)
        if c.tanh_entropy:
            u = self.sample(dist, self.action_rng)  # mean + std * noise: differentiable in both
            entropy = entropy + tanh_log_jacobian(u).sum(-1)
        entropy = entropy.mean()
        entropy_loss = -c.entropy_coef * entropy
        metrics.update(
            {
                "loss/policy": policy_loss,
                "loss/value": value_loss,
                "loss/entropy": entropy_loss,
                "train/entropy": entropy,
            }
        )
        return policy_loss + value_loss + entropy_loss, metrics

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        dist = self.model.dist(policy_input(obs, self.normalizer, self.device))
        return torch.tanh(self.act_draw(dist, deterministic)).cpu().numpy()

    def act_draw(self, dist: Normal, deterministic: bool) -> Tensor:
        """`act`'s Gaussian output: a draw from `act_generator`, or the mean where it gives none."""

        generator = self.act_generator(deterministic)
        return dist.mean if generator is None else self.sample(dist, generator)
