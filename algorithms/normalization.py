"""Running observation mean / standard deviation, merged batch by batch.

The statistics are merged with the parallel-variance formula of Chan, Golub and LeVeque
(1979): for two sets with counts n_a, n_b, means m_a, m_b and sums of squared deviations
M_a, M_b,

    n = n_a + n_b,  delta = m_b - m_a,  m = m_a + delta * n_b / n,
    M = M_a + M_b + delta^2 * n_a * n_b / n,

which equals the statistics of the concatenated data exactly. The upstream FPO baselines
instead replaced M by the newest batch's M while the count kept growing, so their std shrinks
like 1 / sqrt(updates); this class must never do that (tested against numpy).

Statistics are float64 numpy arrays: observations arrive from the envs as numpy, and
normalising there keeps the normaliser independent of the torch device.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMeanStd:
    """Mean and variance of every observation seen so far, per dimension."""

    # epsilon: 1e-8 as Stable-Baselines3's VecNormalize, so that a constant dimension divides by 1e-4.
    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-8) -> None:
        self.epsilon = epsilon
        self.mean = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)  # sum of squared deviations from the mean
        self.count = 0

    @property
    def var(self) -> np.ndarray:
        """Population variance; 1 before any data so that normalising is the identity."""

        return self.m2 / self.count if self.count > 0 else np.ones_like(self.m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var + self.epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch of shape (n, *shape)."""

        batch = np.asarray(batch, dtype=np.float64).reshape(-1, *self.mean.shape)
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """(obs - mean) / std as float32 (not clipped, like the official code)."""

        return ((obs - self.mean) / self.std).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "m2": self.m2.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.m2 = np.array(state["m2"], dtype=np.float64)
        self.count = int(state["count"])
