"""The on-policy core shared by Gaussian PPO, GoRL's latent PPO, FPO and DPPO.

Pure functions and small state holders, no orchestration (in the spirit of Brax's
`ppo/train.py` split): an algorithm module calls

1. `collect_rollout(env, obs, num_steps, policy, value, ...)` with its own `policy` callable,
   which returns whatever the algorithm needs later in `PolicyStep.action` (a pre-tanh
   action, a latent, a denoising chain) and its log-probability (or any per-sample
   statistic the loss needs);
2. `compute_gae(...)` on the rollout;
3. `minibatch_update(batch, loss_fn, optimizer, ...)` with its own
   `loss_fn(minibatch) -> (loss, metrics)`, built from `clipped_surrogate` when the method
   has a likelihood ratio.

Conventions:

* Observations are normalised with the statistics frozen for the whole rollout, and the
  statistics are updated with the rollout's raw observations only after it ("rollout
  consistent", like GoRL's encoder): the stored log-probs and the update see the same inputs.
* DMC episodes end by truncation (time limit): GAE bootstraps from V(final_obs) there and
  only a true termination gets a zero next value. With SAME_STEP autoreset the obs row
  returned at an episode end is already the next episode's reset obs; the true last obs is
  `info["final_obs"]`.
* Torch uses `collect_threads` while collecting and `update_threads` in the update (defaults
  1 and 2: inference on one step's small batch is too little work to share between threads,
  while a wide network's update is not; the `cpu` presets update with 1, see docs/performance.md),
  and `INIT_THREADS` while drawing initial weights: with every thread count fixed, a run's
  numbers do not depend on the process's own (a plain run takes every core, a study's worker
  its share).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from algorithms.normalization import RunningMeanStd

Batch = dict[str, Tensor]
LossFn = Callable[[Batch], tuple[Tensor, Mapping[str, Tensor]]]


@dataclass
class PolicyStep:
    """What a policy returns for one batch of (normalised) observations during collection."""

    env_action: Tensor  # (N, act_dim) in [-1, 1], sent to the env
    action: Tensor  # (N, ...) what the loss re-evaluates: pre-tanh action, latent, chain, ...
    # (N,) behaviour log-probability of `action`, or the method's per-sample statistics: (N, K) per-step
    # log-probabilities of a denoising chain, FPO's flow-matching loss
    log_prob: Tensor
    value: Tensor  # (N,) V(obs)


@dataclass
class Rollout:
    """T steps of N envs, time-major, on the learner's device."""

    obs: Tensor  # (T, N, obs_dim) normalised policy inputs
    actions: Tensor  # (T, N, ...)
    log_probs: Tensor  # (T, N, ...) as `PolicyStep.log_prob`
    values: Tensor  # (T, N)
    rewards: Tensor  # (T, N), already multiplied by the reward scale
    # (T, N) V of the next state: of final_obs at a truncation, of the next episode's first
    # observation at a termination (never used: GAE zeroes the bootstrap there)
    next_values: Tensor
    terminated: Tensor  # (T, N) bool
    truncated: Tensor  # (T, N) bool

    @property
    def num_transitions(self) -> int:
        return self.rewards.numel()


class EpisodeReturns:
    """Undiscounted returns of the training envs' episodes, for `train/episode_return`."""

    def __init__(self, num_envs: int) -> None:
        self.running = np.zeros(num_envs, dtype=np.float64)
        self.completed: list[float] = []

    def record(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.running += rewards
        self.completed.extend(self.running[done].tolist())
        self.running[done] = 0.0

    def pop(self) -> list[float]:
        out, self.completed = self.completed, []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.copy(), "completed": list(self.completed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running = np.array(state["running"], dtype=np.float64)
        self.completed = list(state["completed"])


# Orthogonal initialisation (a QR decomposition) rounds differently on one thread than on
# several (up to 1e-7 on a 64 x 64 layer), which a run then carries to its end. Two, not one:
# every documented run drew its weights on two threads (any count above one gave the same).
INIT_THREADS = 2


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads, restoring the previous count afterwards."""

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam (defaults as `optax.scale_by_adam`), fused where the device supports it (faster by 5-20%)."""

    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def policy_input(obs: np.ndarray, normalizer: RunningMeanStd | None, device: torch.device) -> Tensor:
    """Raw env observations -> the (normalised) float32 tensor a policy takes, on `device`."""

    x = normalizer.normalize(obs) if normalizer is not None else np.asarray(obs, dtype=np.float32)
    return torch.from_numpy(x).to(device)


@torch.no_grad()
def collect_rollout(
    env: gymnasium.vector.VectorEnv,
    obs: np.ndarray,
    num_steps: int,
    policy: Callable[[Tensor], PolicyStep],
    value: Callable[[Tensor], Tensor],
    normalizer: RunningMeanStd | None,
    reward_scale: float,
    episodes: EpisodeReturns,
    device: torch.device,
) -> tuple[Rollout, np.ndarray]:
    """Step `env` `num_steps` times from raw observations `obs`; returns the rollout and the next raw obs.

    `policy` and `value` take normalised observations on `device`. The normaliser (if any) is
    updated with the raw observations of this rollout after it ends.
    """

    steps: dict[str, list[Tensor]] = {k: [] for k in ("obs", "actions", "log_probs", "values", "rewards")}
    terminated, truncated, raw_obs = [], [], []
    final_values: dict[int, tuple[np.ndarray, Tensor]] = {}  # step -> (env indices, V(final_obs))
    for t in range(num_steps):
        x = policy_input(obs, normalizer, device)
        step = policy(x)
        next_obs, reward, term, trunc, info = env.step(step.env_action.cpu().numpy())
        term, trunc = np.asarray(term, dtype=bool), np.asarray(trunc, dtype=bool)
        ended_by_time = time_limit_final_obs(term, trunc, info)
        if ended_by_time is not None:
            index, final_obs = ended_by_time
            final_values[t] = (index, value(policy_input(final_obs, normalizer, device)))
        episodes.record(np.asarray(reward, dtype=np.float64), term | trunc)
        steps["obs"].append(x)
        steps["actions"].append(step.action)
        steps["log_probs"].append(step.log_prob)
        steps["values"].append(step.value)
        steps["rewards"].append(torch.as_tensor(np.asarray(reward, dtype=np.float32) * reward_scale))
        terminated.append(torch.from_numpy(term))
        truncated.append(torch.from_numpy(trunc))
        raw_obs.append(obs)
        obs = next_obs

    values = torch.stack(steps["values"])
    next_values = next_state_values(values, value(policy_input(obs, normalizer, device)), final_values)
    if normalizer is not None:
        normalizer.update(np.stack(raw_obs))
    rollout = Rollout(
        obs=torch.stack(steps["obs"]),
        actions=torch.stack(steps["actions"]),
        log_probs=torch.stack(steps["log_probs"]),
        values=values,
        rewards=torch.stack(steps["rewards"]).to(device),
        next_values=next_values,
        terminated=torch.stack(terminated).to(device),
        truncated=torch.stack(truncated).to(device),
    )
    return rollout, obs


def time_limit_final_obs(
    terminated: np.ndarray, truncated: np.ndarray, info: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(sub-env indices, final observations) of the episodes a vector-env step ended by their time
    limit (truncated, not terminated), whose last step bootstraps from V(final obs); None if none."""

    ended_by_time = np.flatnonzero(truncated & ~terminated)
    if not ended_by_time.size:
        return None
    # Stacking rows also accepts gymnasium's object arrays (None where no episode ended).
    return ended_by_time, np.stack([info["final_obs"][i] for i in ended_by_time])


def next_state_values(
    values: Tensor, last_values: Tensor, final_values: Mapping[int, tuple[np.ndarray, Tensor]]
) -> Tensor:
    """V of the state after each step of time-major (T, N) `values`: the next step's, after the
    last step `last_values`, and where step t ended episodes by time, `final_values[t]` =
    (sub-env indices, V(final obs))."""

    next_values = torch.cat([values[1:], last_values[None]])
    for t, (index, v) in final_values.items():
        next_values[t, torch.from_numpy(index).to(values.device)] = v
    return next_values


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over time-major (T, N) tensors; returns (advantages, returns).

    `next_values[t]` is V of the state after step t (V(final_obs) at a truncation; at a
    termination it is not used). A termination zeroes the bootstrap; any episode end (termination or
    truncation) stops the recursion, so advantages never leak across episodes.
    """

    not_terminated = (~terminated).to(values.dtype)
    continues = (~(terminated | truncated)).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        running = deltas[t] + gamma * lam * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


def flatten(rollout: Rollout, advantages: Tensor, returns: Tensor) -> Batch:
    """The rollout as one batch of T*N transitions with the fields a loss needs.

    Only these fields are shuffled into minibatches (indexing costs time per field):
    obs, actions, log_probs, advantages, returns. The old values are not: no loss here clips
    the value loss around them.
    """

    fields = {
        "obs": rollout.obs,
        "actions": rollout.actions,
        "log_probs": rollout.log_probs,
        "advantages": advantages,
        "returns": returns,
    }
    return {key: x.reshape(-1, *x.shape[2:]) for key, x in fields.items()}


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped policy loss -E[min(r A, clip(r, 1-eps, 1+eps) A)] with its usual diagnostics.

    `log_ratio` = log pi_new - log pi_old per sample, from any likelihood (Gaussian, latent,
    denoising chain) or surrogate thereof. approx_kl is the low-variance k3 estimator
    E[(r - 1) - log r] of whatever ratio it is given, so it is comparable between PPO and GoRL
    (action and latent Gaussians) but not with DPPO (the mean over denoising steps of per-step
    ratios, about 1/K of the chain's KL) or FPO (a ratio of flow-matching losses, no likelihood).
    """

    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        metrics = {
            "train/approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "train/clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
        }
    return loss, metrics


def minibatch_update(
    batch: Batch,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    clip_groups: Sequence[Sequence[nn.Parameter]],
    epochs: int,
    num_minibatches: int,
    max_grad_norm: float | None,
    generator: torch.Generator,
) -> dict[str, float]:
    """`epochs` passes over `batch` in `num_minibatches` shuffled minibatches; mean of the loss metrics.

    Advantages are normalised per minibatch (mean 0, std 1). Gradients are clipped to
    `max_grad_norm` per group in `clip_groups` (all parameters at once, or actor and critic
    apart). `generator` (CPU) draws the shuffles.
    Raises FloatingPointError when a loss or a parameter is not finite, before the caller
    can checkpoint the broken state.
    """

    size = next(iter(batch.values())).shape[0]
    minibatch_size = size // num_minibatches
    device = batch["advantages"].device
    totals: dict[str, Tensor] = {}
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator).to(device)
        for start in range(0, minibatch_size * num_minibatches, minibatch_size):
            index = order[start : start + minibatch_size]
            minibatch = {key: value[index] for key, value in batch.items()}
            adv = minibatch["advantages"]
            minibatch["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)  # CleanRL's guard
            loss, metrics = loss_fn(minibatch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                for group in clip_groups:
                    nn.utils.clip_grad_norm_(group, max_grad_norm)
            optimizer.step()
            for key, value in {"loss/total": loss.detach(), **metrics}.items():
                totals[key] = totals.get(key, 0.0) + value.detach()
    steps = epochs * num_minibatches
    means = {key: float(value) / steps for key, value in totals.items()}
    bad = [key for key, value in means.items() if not np.isfinite(value)]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if bad or not all(bool(torch.isfinite(p).all()) for p in params):
        raise FloatingPointError(
            f"non-finite {', '.join(bad) if bad else 'parameters'} in the update "
            f"(loss/total = {means.get('loss/total')}); the learning rate or the reward scale may be too high"
        )
    return means
