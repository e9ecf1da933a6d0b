"""What FPO and DPPO share: a flow-velocity actor with a value critic, its config keys and its evaluation.

Both baselines of the paper are policies that turn Gaussian noise into a pre-tanh action
by integrating a learned velocity field v(obs, x_t, t) with 10 Euler steps from t = 1
(noise) to t = 0 (action), in this project's time convention (`algorithms.generative`):

    x_{t - dt} = x_t - dt * v(obs, x_t, t),   t = 1, 0.9, ..., 0.1,   env action = tanh(x_0).

They differ in how PPO gets a likelihood ratio for such a policy: FPO (`algorithms.fpo`)
uses the change of a conditional flow-matching loss, DPPO (`algorithms.dppo`) adds Gaussian
noise to every step and gives PPO one clipped ratio per denoising step. Neither has an entropy bonus
(paper App. E.4: entropy 0 for both): neither likelihood gives a tractable entropy.

The actor is `ConditionalMLP` on [normalised obs, x_t, time embedding]: SiLU and
LeCun-uniform weights like the official flow MLP, but with a zero-initialised last layer
(the official one is LeCun-initialised too, so it starts from a small random velocity field,
scaled by `output_scale`): an untrained policy here plays exactly tanh of its starting
noise. The critic is a plain MLP like PPO's.

Evaluation (`eval_noise`). The official baselines' "deterministic" evaluation is still
stochastic: FPO draws a fresh x_1 ~ N(0, I) for every action and DPPO also keeps its
per-step noise; PPO's and GoRL's evaluation is the mean action (by default). `eval_noise =
"sample"` (the default here) evaluates that way, drawing from a generator of its own
(`eval_rng`, `algorithms.actor_critic`) so evaluating never shifts the training noise.
`begin_evaluation`, which the harness calls before every evaluation, reseeds it from (run seed,
counted steps), so the score at a point depends on the run's seed and training only, not on how
many evaluations came before it (the harness's rule for evaluation envs), and checkpoints need
not hold its state. `eval_noise = "zero"` starts the chain at x_1 = 0 and adds no per-step
noise: a deterministic policy (the flow's image of the prior's mode), comparable with PPO's
mean-action evaluation; for a multimodal policy that image need not lie on any of its modes.

Observation normalisation is the harness's corrected running normaliser, frozen during a
rollout, and the update re-reads the normalised inputs the rollout stored. The upstream
baselines used a normaliser whose std shrinks like 1 / sqrt(updates), and updated it between
collecting and the epochs (so their stored log-probabilities or losses were computed on
differently normalised inputs than the update's); neither is reproduced.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

import envs
from algorithms.actor_critic import ActorCriticAgent, CoreConfigMixin, EvalNoise
from algorithms.generative import ConditionalMLP, integrate_flow
from algorithms.memory import check_network_fits
from algorithms.networks import Activation, Init, mlp
from algorithms.onpolicy import policy_input
from algorithms.ppo import PRESETS as PPO_PRESETS


@dataclass(frozen=True)
class FlowPolicyConfig(CoreConfigMixin):
    """The keys FPO and DPPO share; defaults are the `paper` preset (the release's fpo.toml / dppo.toml).

    Each method's config adds its own `clip` and method keys.
    """

    # official release fpo.toml / dppo.toml [ppo]: 2048 envs, 32 minibatches of 1024 x unroll 30
    num_envs: int = 2048
    rollout_steps: int = 480  # official release: 32 x 1024 x 30 / 2048 envs = 480 steps per env per update
    num_minibatches: int = 32  # official release num_minibatches (30,720 transitions each)
    epochs: int = 16  # official release num_updates_per_batch (paper table 4)
    lr: float = 3e-4  # paper App. E.4 and official release: lr 3e-4 for FPO and DPPO
    gamma: float = 0.995  # paper table 4 (finger-spin 0.95: see `task_overrides`)
    gae_lambda: float = 0.95  # paper table 4 and official release
    value_coef: float = 0.25  # paper table 4 and official release value_loss_coeff
    reward_scale: float = 10.0  # official release reward_scaling
    max_grad_norm: float | None = None  # official code: the upstream FPO/DPPO update has no clipping
    grad_norm_scope: Literal["global", "per_network"] = "global"  # as PPO's (no clipping by default)
    normalize_obs: bool = True  # official release normalize_observations (its normaliser bug aside)
    flow_steps: int = 10  # paper App. E.4: 10 flow / denoising steps
    actor_width: int = 32  # paper App. E.3 and official code: velocity MLP 4 x 32
    actor_depth: int = 4  # paper App. E.3 and official code: velocity MLP 4 x 32
    # official code: policy_mlp_output_scale 0.25 (the paper does not say); it is what produced the
    # paper's FPO and DPPO numbers, and it scales the actor's output layer's effective learning rate
    output_scale: float = 0.25
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256, 256)  # paper App. E.3: 5 x 256 critic
    critic_activation: Activation = "silu"  # paper App. E.3 / official code (swish)
    critic_init: Init = "lecun"  # official code: Flax default LeCun-uniform weights, zero biases
    # official code: its "deterministic" evaluation still draws the starting noise (and DPPO's
    # per-step noise); "zero" is the deterministic alternative (see the module docstring)
    eval_noise: EvalNoise = "sample"
    # chosen here, because the batched backend is faster and bit-identical where it exists (envs.make)
    env_backend: Literal["auto", "fast", "dm_control"] = "auto"
    eval_episodes: int = 128  # official release: 128 evaluation episodes per point
    eval_points: int = 30  # paper's experimental setup: an evaluation every 6M env steps of 180M
    # chosen here, as for PPO (algorithms.ppo): one step's batch is too little work to share
    collect_threads: int = 1
    # chosen here, as for PPO: a second thread speeds up the update on idle cores (docs/performance.md)
    update_threads: int = 2

    def validate(self) -> None:
        self.validate_core()
        for name in ("flow_steps", "actor_width", "actor_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.output_scale > 0:
            raise ValueError(f"output_scale must be > 0, got {self.output_scale}")

    def check_task(self, task: str, dims: tuple[int, int] | None = None) -> None:
        """The core's checks, and an actor that fits in memory."""

        obs_dim, act_dim = dims or envs.dimensions(task)
        super().check_task(task, (obs_dim, act_dim))
        parameters = ConditionalMLP.parameter_count(obs_dim, act_dim, self.actor_width, self.actor_depth)
        check_network_fits(parameters, "the actor", "actor_width or actor_depth")


#: The `cpu` preset's shared part: PPO's `cpu` preset for every key of the PPO core, so that the
#: methods compare at the same batch, epochs, returns and critic on a 2-core machine.
CPU_PRESET: dict[str, Any] = {
    **{
        key: PPO_PRESETS["cpu"][key]
        for key in (
            "num_envs",
            "rollout_steps",
            "epochs",
            "num_minibatches",
            "lr",
            "gamma",
            "value_coef",
            "reward_scale",
            "max_grad_norm",
            "grad_norm_scope",
            "critic_hidden",
            "update_threads",
            "eval_episodes",
            "eval_points",
        )
    },
    "critic_activation": PPO_PRESETS["cpu"]["activation"],
    "critic_init": PPO_PRESETS["cpu"]["init"],
}


class FlowActorCritic(nn.Module):
    """Velocity actor v(obs, x_t, t) and value critic V(obs), both on normalised observations."""

    def __init__(self, obs_dim: int, act_dim: int, c: FlowPolicyConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.actor = ConditionalMLP(obs_dim, act_dim, c.actor_width, c.actor_depth, c.output_scale, generator)
        self.critic = mlp(
            obs_dim, c.critic_hidden, 1, c.critic_activation, c.critic_init, out_gain=1.0, generator=generator
        )

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)


class FlowPolicyAgent(ActorCriticAgent):
    """An actor-critic agent whose actor is a flow velocity field; subclasses define sampling and the loss."""

    def build_model(self, obs_dim: int, act_dim: int) -> FlowActorCritic:
        return FlowActorCritic(obs_dim, act_dim, self.config, self.init_rng)

    @abc.abstractmethod
    def sample_pre_tanh(self, obs: Tensor, generator: torch.Generator) -> Tensor:
        """Pre-tanh actions (B, act_dim) of the method's sampler, all noise drawn from `generator`."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        x = policy_input(obs, self.normalizer, self.device)
        generator = self.act_generator(deterministic)
        if generator is None:
            start = torch.zeros(x.shape[0], self.act_dim, device=self.device)
            pre_tanh = integrate_flow(self.model.actor, x, start, self.config.flow_steps)
        else:
            pre_tanh = self.sample_pre_tanh(x, generator)
        return torch.tanh(pre_tanh).cpu().numpy()
