"""The actor-critic agent skeleton shared by Gaussian PPO, FPO and DPPO (and GoRL through PPO).

The three methods differ only in their policy: what it returns while collecting (a pre-tanh
action, an action with its Monte-Carlo draws, a denoising chain) and how the loss turns that
into a ratio. Everything else is one piece of code here:

* construction: the training envs, the explicit random generators, the model (built by the
  subclass), Adam, the observation normaliser and the episode-return tracker;
* `train_iteration`: collect with `policy_step`, GAE, then `minibatch_update` with `loss`,
  clipping the gradients to `max_grad_norm` (if set) over all parameters or per network
  (`grad_norm_scope`);
* `state_dict` / `load_state_dict`: weights, optimiser, normaliser, envs, the generators, and
  the seed that later draws derive from.

A subclass implements `build_model` (a module with `actor`, `critic` and `value(obs)`),
`policy_step`, `loss` and `act`, and draws its noise with `noise` (or from the CPU generators,
moved to the device).

`CoreConfigMixin` gives a config dataclass with the PPO core's keys its `batch_size` and the
checks of those keys, so every method refuses the same bad values with the same message.
"""

from __future__ import annotations

import abc
import time
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

import envs
from algorithms.base import Agent
from algorithms.memory import check_fits, check_network_fits, mlp_parameters
from algorithms.normalization import RunningMeanStd
from algorithms.onpolicy import (
    INIT_THREADS,
    Batch,
    EpisodeReturns,
    PolicyStep,
    collect_rollout,
    compute_gae,
    flatten,
    make_adam,
    minibatch_update,
    torch_threads,
)
from envs.base import derived_seed
from harness.limits import MAX_THREADS

#: What an evaluation's actions are: a draw of the policy's own noise ("sample"), from a generator
#: reseeded by `begin_evaluation` (`ActorCriticAgent`), or its noise-free action ("zero").
EvalNoise = Literal["sample", "zero"]


class CoreConfigMixin:
    """For frozen config dataclasses that have the PPO core's keys. It declares no fields itself:
    the annotations below list the keys each such config defines, with its own cited defaults."""

    num_envs: int
    rollout_steps: int
    epochs: int
    num_minibatches: int
    lr: float
    clip: float
    gamma: float
    gae_lambda: float
    value_coef: float
    reward_scale: float
    max_grad_norm: float | None
    grad_norm_scope: Literal["global", "per_network"]
    critic_hidden: tuple[int, ...]
    normalize_obs: bool
    eval_episodes: int
    eval_points: int
    eval_noise: EvalNoise
    env_backend: str
    collect_threads: int
    update_threads: int

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.rollout_steps

    def stored_per_action(self, act_dim: int) -> tuple[int, str]:
        """Floats the rollout keeps per action for the loss to re-evaluate, and the keys beyond
        num_envs and rollout_steps that set their number ("" when none): here the pre-tanh action."""

        return act_dim, ""

    def check_task(self, task: str, dims: tuple[int, int] | None = None) -> None:
        """Raise ValueError when a rollout on `task` cannot fit in memory; `dims`: the task's
        (observation, action) sizes, read from the task if None."""

        obs_dim, act_dim = dims or envs.dimensions(task)
        per_action, keys = self.stored_per_action(act_dim)
        what = f"the rollout's {self.num_envs:,} num_envs x {self.rollout_steps:,} rollout_steps of {task}"
        fix = f"lower num_envs or rollout_steps{keys}"
        # Whatever the device, the host keeps each step's raw observations (for the normaliser)
        # and rewards until the rollout ends; the learner's device holds the normalised
        # observations, the stored actions, their log-probabilities, the values and the rewards.
        check_fits(self.batch_size * (obs_dim + 1) * 4, what, fix)
        check_fits(self.batch_size * (obs_dim + per_action + 3) * 4, what, fix, on_device=True)
        # A slip such as critic_hidden=[1e9] would grow until the kernel ends the process unannounced.
        check_network_fits(mlp_parameters(obs_dim, self.critic_hidden, 1), "the critic", "critic_hidden")

    def validate_core(self) -> None:
        """Raise ValueError naming the first PPO-core key with a bad value."""

        positive_ints = (
            "num_envs",
            "rollout_steps",
            "epochs",
            "num_minibatches",
            "eval_episodes",
            "eval_points",
            "collect_threads",
            "update_threads",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("collect_threads", "update_threads"):
            if getattr(self, name) > MAX_THREADS:
                raise ValueError(f"{name} must be at most {MAX_THREADS}, got {getattr(self, name):,}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide the batch num_envs x rollout_steps "
                f"= {self.batch_size}"
            )
        if self.batch_size // self.num_minibatches < 2:
            # A minibatch's advantages are normalised by their std, which one transition lacks.
            raise ValueError(
                f"a minibatch must hold at least 2 transitions to normalise its advantages: "
                f"num_minibatches ({self.num_minibatches}) splits the batch of {self.batch_size} finer"
            )
        for name in ("lr", "clip", "reward_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.value_coef >= 0:
            raise ValueError(f"value_coef must be >= 0, got {self.value_coef}")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(
                f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or none, got {self.max_grad_norm}")
        if not self.critic_hidden or min(self.critic_hidden) < 1:
            raise ValueError("critic_hidden must be a non-empty list of positive widths")


class ActorCriticAgent(Agent):
    """One on-policy run: envs, model, optimiser, normaliser and generators, trained by PPO-style updates."""

    def __init__(self, config: Any, task: str, seed: int, budget: int, device: torch.device) -> None:
        self.config, self.task, self.seed, self.device = config, task, seed, device
        self.env = envs.make(task, config.num_envs, seed, backend=config.env_backend)
        self.obs, _ = self.env.reset(seed=seed)
        self.obs_dim = obs_dim = self.env.single_observation_space.shape[0]
        self.act_dim = act_dim = self.env.single_action_space.shape[0]
        # Explicit generators (never torch's global RNG) so a checkpoint captures every random state.
        # All on the CPU, whatever the device: a seed then draws the same noise on every device, and
        # a checkpoint resumes on another one (a CUDA generator's state does not load into a CPU
        # generator, nor the reverse). Studies hash their units' seeds (31 bits), so units share a
        # stream only by rare chance; hand-started neighbouring seeds do (seed s's action stream is
        # seed s + 1's weight stream).
        self.init_rng = torch.Generator().manual_seed(seed)
        self.action_rng = torch.Generator().manual_seed(seed + 1)
        self.shuffle_rng = torch.Generator().manual_seed(seed + 2)
        # Not saved: `begin_evaluation` reseeds it from (run seed, counted steps), so an evaluation
        # that draws noise never shifts the training noise, and a loaded checkpoint (a resumed run,
        # `gorl-bench evaluate`) plays its evaluations again.
        self.eval_rng = torch.Generator()
        self.model = self.initial_model(obs_dim, act_dim)
        self.optimizer = make_adam(self.model.parameters(), config.lr)
        self.normalizer = RunningMeanStd((obs_dim,)) if config.normalize_obs else None
        self.episodes = EpisodeReturns(config.num_envs)
        self.counted_steps = self.total_steps = 0

    @abc.abstractmethod
    def build_model(self, obs_dim: int, act_dim: int) -> nn.Module:
        """The actor-critic, its weights drawn from `self.init_rng`: `actor`, `critic` and `value(obs)`."""

    def initial_model(self, obs_dim: int, act_dim: int) -> nn.Module:
        """`build_model` on `INIT_THREADS` threads (so that its weights do not depend on the process's
        thread count), on the agent's device."""

        with torch_threads(INIT_THREADS):
            return self.build_model(obs_dim, act_dim).to(self.device)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Standard normal noise from a CPU `generator`, on the agent's device."""

        return torch.randn(shape, generator=generator).to(self.device)

    @abc.abstractmethod
    def policy_step(self, obs: Tensor) -> PolicyStep:
        """The behaviour policy on a batch of normalised observations, drawing from `self.action_rng`."""

    @abc.abstractmethod
    def loss(self, mb: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The minibatch loss (policy + value [+ regularisers]) and its metrics."""

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The parameter groups whose gradient norms are each clipped to `max_grad_norm`."""

        if self.config.grad_norm_scope == "global":
            return [list(self.model.parameters())]
        # Clipped apart, a large value gradient does not shrink the policy step. Parameters outside
        # both networks (a subclass's free log-std, say; none of the built-in models has any) are a
        # third group, so that no parameter escapes the clipping.
        actor, critic = list(self.model.actor.parameters()), list(self.model.critic.parameters())
        grouped = {id(p) for p in actor + critic}
        rest = [p for p in self.model.parameters() if id(p) not in grouped]
        return [actor, critic] + ([rest] if rest else [])

    def value_loss(self, mb: Batch) -> Tensor:
        return self.config.value_coef * (self.model.value(mb["obs"]) - mb["returns"]).pow(2).mean()

    def train_iteration(self) -> dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        with torch_threads(c.collect_threads):
            rollout, self.obs = collect_rollout(
                self.env,
                self.obs,
                c.rollout_steps,
                self.policy_step,
                self.model.value,
                self.normalizer,
                c.reward_scale,
                self.episodes,
                self.device,
            )
        t1 = time.perf_counter()
        advantages, returns = compute_gae(
            rollout.rewards,
            rollout.values,
            rollout.next_values,
            rollout.terminated,
            rollout.truncated,
            c.gamma,
            c.gae_lambda,
        )
        with torch_threads(c.update_threads):
            metrics = minibatch_update(
                flatten(rollout, advantages, returns),
                self.loss,
                self.optimizer,
                self.clip_groups(),
                c.epochs,
                c.num_minibatches,
                c.max_grad_norm,
                self.shuffle_rng,
            )
        t2 = time.perf_counter()
        self.counted_steps += rollout.num_transitions
        self.total_steps += rollout.num_transitions
        metrics["perf/learner_fraction"] = (t2 - t1) / (t2 - t0)
        returns_done = self.episodes.pop()
        if returns_done:
            metrics["train/episode_return"] = float(np.mean(returns_done))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict() if self.normalizer else None,
            "episodes": self.episodes.state_dict(),
            "env": self.env.get_state(),
            "obs": self.obs.copy(),
            # `init_rng` is not saved: it draws initial weights only, at construction and (GoRL)
            # when a stage re-initialises its encoder, which re-seeds it first.
            "action_rng": self.action_rng.get_state(),
            "shuffle_rng": self.shuffle_rng.get_state(),
            "counted_steps": self.counted_steps,
            "total_steps": self.total_steps,
            "seed": self.seed,  # the seed later draws derive from (FPO/DPPO's evaluations, GoRL's stages)
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.normalizer:
            self.normalizer.load_state_dict(state["normalizer"])
        self.episodes.load_state_dict(state["episodes"])
        self.env.set_state(state["env"])
        self.obs = state["obs"].copy()
        self.action_rng.set_state(state["action_rng"])
        self.shuffle_rng.set_state(state["shuffle_rng"])
        self.counted_steps, self.total_steps = state["counted_steps"], state["total_steps"]
        self.seed = state.get("seed", self.seed)  # checkpoints from before it was saved: the run's seed

    @property
    def evaluation_draws_noise(self) -> bool:
        return self.config.eval_noise == "sample"

    def act_generator(self, deterministic: bool) -> torch.Generator | None:
        """Where `act` draws its noise: the behaviour's `action_rng`, or for an evaluation
        (`deterministic`) `eval_rng` if `eval_noise` is "sample"; None: the noise-free action."""

        if not deterministic:
            return self.action_rng
        return self.eval_rng if self.evaluation_draws_noise else None

    def begin_evaluation(self) -> None:
        self.eval_rng.manual_seed(derived_seed(self.seed, self.counted_steps))

    def close(self) -> None:
        self.env.close()
