"""The `fast` backend: batched MuJoCo stepping of dm_control tasks without dm_control's per-step Python.

Same sub-envs, seeding, resets and snapshots as `envs.dmc` (it subclasses `DMCVectorEnv`,
whose dm_control envs also own each sub-env's MjModel and MjData), but a step is:

1. check the actions once for the batch;
2. per sub-env, in 2 threads (`mj_step` releases the GIL): write `data.ctrl`, advance the
   physics exactly as dm_control's legacy step does (`mj_step2; mj_step(n_sub - 1); mj_step1`,
   see `dm_control.mujoco.engine.Physics._step_with_up_to_date_position_velocity`), and copy
   the MjData arrays the task reads into that sub-env's row of a float64 gather buffer;
3. once for the batch: observations by column indexing and rewards with dm_control's own
   `rewards.tolerance` on arrays (`envs.fast_tasks`).

Resets are rare and reuse dm_control's task initialisation (`env.reset()` of the sub-env).
Everything per sub-env is precomputed: views of `data.ctrl`, (destination, source) view pairs
of the gather, so step 2 is a handful of C calls per sub-env and no allocation.

Observations and rewards are the same float32 values as dm_control's in every parity test
(`tests/test_envs_parity.py`, 1100 steps of every task). The float64 values behind them agree
to the last bit except where a batched einsum or norm stands for dm_control's per-row products
(egocentric vectors and distances of finger-turn, fish and humanoid), and where dm_control's
scalar `rewards.tolerance` squares through C's `pow` and the batched one on an array multiplies
(in the margin of walker's, fish's and humanoid's gaussian terms). These differ by an ulp or
two: rarely enough to change a float32 value (by an estimate, a few times in a 180M-step run),
after which the two backends' trajectories part. Runs on one backend are reproducible either
way.

A step after which a sub-env's MuJoCo warning counters grew raises `SimulationDiverged`, as the
`dm_control` backend does where dm_control raises `PhysicsError` (the same check: MuJoCo resets a
diverged simulation itself and steps on, so without it the episode would go on from MuJoCo's
default pose).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mujoco
import numpy as np

from envs.dmc import DMCVectorEnv
from envs.fast_tasks import TASKS

THREADS = 2  # one per core of the 2-core machine it was tuned on (docs/performance.md, env stepping)


class FastVectorEnv(DMCVectorEnv):
    def __init__(self, task: str, num_envs: int, seed: int) -> None:
        super().__init__(task, num_envs, seed)
        model = self.physics[0].model.ptr
        if model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            raise ValueError(f"{task}: the fast backend reproduces dm_control's Euler-family step only")
        if self.rescaled.any():
            raise ValueError(f"{task}: the fast backend needs action bounds [-1, 1]")
        self.n_sub = round(self.envs[0].control_timestep() / model.opt.timestep)
        self.fast_task = TASKS[task](self.envs[0])
        layout = self.fast_task.layout
        self.raw = np.zeros((num_envs, layout.width), np.float64)
        # Each sub-env's MuJoCo warning counters, gathered with the arrays the task reads.
        self.warnings = np.zeros((num_envs, mujoco.mjtWarning.mjNWARNING), np.int32)

        self.models = [p.model.ptr for p in self.physics]
        self.datas = [p.data.ptr for p in self.physics]
        # Per sub-env: model, data, its ctrl view and the gather's (row segment of the buffer, flat
        # MjData array) view pairs. Views stay valid for the lifetime of the MjData, which resets and
        # snapshots only ever write in place.
        self.per_env = [
            (
                model,
                data,
                data.ctrl,
                [(self.raw[i, layout.segment(f)], getattr(data, f).reshape(-1)) for f in layout.fields]
                + [(self.warnings[i], data.warning.number)],
            )
            for i, (model, data) in enumerate(zip(self.models, self.datas, strict=True))
        ]
        split = num_envs // 2
        self.chunks = [(0, split), (split, num_envs)] if num_envs >= THREADS else [(0, num_envs)]
        self.pool = None
        if len(self.chunks) > 1:
            self.pool = ThreadPoolExecutor(THREADS - 1, thread_name_prefix="envs-fast")

    def _gather(self, i: int) -> None:
        for destination, source in self.per_env[i][3]:
            destination[:] = source

    def _step_chunk(self, start: int, stop: int, ctrl: np.ndarray) -> None:
        """Step sub-envs start..stop-1; the hot loop, so the gather is inlined and names are local."""

        step1, step2, step = mujoco.mj_step1, mujoco.mj_step2, mujoco.mj_step
        middle_steps = self.n_sub - 1
        for i in range(start, stop):
            model, data, ctrl_view, gathers = self.per_env[i]
            ctrl_view[:] = ctrl[i]
            step2(model, data)
            if middle_steps:
                step(model, data, middle_steps)
            step1(model, data)
            for destination, source in gathers:
                destination[:] = source

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        ctrl = self.checked_actions(actions)
        warnings_before = self.warnings.copy()
        if self.pool is None:
            self._step_chunk(*self.chunks[0], ctrl)
        else:
            # The worker thread takes the first half while this thread steps the second.
            future = self.pool.submit(self._step_chunk, *self.chunks[0], ctrl)
            try:
                self._step_chunk(*self.chunks[1], ctrl)
            finally:
                future.result()
        raised = self.warnings > warnings_before
        if raised.any():
            i = int(np.flatnonzero(raised.any(axis=1))[0])
            names = [mujoco.mjtWarning(w).name for w in np.flatnonzero(raised[i])]
            raise self.diverged(i, f"Physics state is invalid. Warning(s) raised: {', '.join(names)}")
        self.obs[:] = self.fast_task.observe(self.raw)
        rewards = self.fast_task.reward(self.raw, ctrl).astype(np.float32)
        self.steps += 1
        return self.finish_step(rewards, np.zeros(self.num_envs, bool))

    def reset_env(self, i: int) -> None:
        self.envs[i].reset()
        self.steps[i] = 0
        self._gather(i)
        self.obs[i] = self.fast_task.observe(self.raw[i : i + 1])[0]

    def close_extras(self, **kwargs: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown()
