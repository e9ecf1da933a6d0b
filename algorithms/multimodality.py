"""Is a policy's action distribution at one state multimodal? The paper's Figure 6 diagnostic.

The paper samples 10,000 actions at a fixed state, projects them on their first principal
component and plots a Gaussian KDE: GoRL-FM's actions become clearly bimodal late in
training while Gaussian PPO's stay unimodal. That figure is qualitative; this module adds
two numbers so that runs can be compared and tested:

* Sarle's bimodality coefficient b = (g^2 + 1) / (k + 3 (n - 1)^2 / ((n - 2)(n - 3))),
  with g the sample skewness and k the sample excess kurtosis (both bias-corrected). b is
  1/3 for a Gaussian and 5/9 for a uniform distribution; b > 5/9 suggests two modes
  (heavy mass at two places makes the distribution platykurtic). It is a screening
  statistic: a very skewed unimodal sample can also exceed 5/9, so it is reported together
  with the number of KDE peaks.
* The number of peaks of the KDE curve that the figure shows.

Bandwidth: the paper's "bandwidth factor 0.8" is passed to scipy's `gaussian_kde` as
`bw_method=0.8`, so the kernel standard deviation is 0.8 times the projection's standard
deviation. That is much wider than Scott's rule (about 0.16 for n = 10,000): the curve is
strongly smoothed, so close modes merge and two surviving peaks are strong evidence: of 10,000
samples of an even mixture of N(-m, 1) and N(m, 1), the KDE shows one peak at m = 2.5 and two
at m = 2.75, with Scott's factor 0.16 two from m = 1.25 (where the density's dip is shallow;
it has two modes for m > 1). `bw_factor` (the diagnostic's `--bandwidth`) sets another factor;
a narrow one also shows noise peaks in the tails: of 20 draws of 10,000 samples of a Gaussian,
0.1 gave 4 a second peak, 0.13 and 0.16 none (`tests/test_multimodality.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

KDE_BANDWIDTH_FACTOR = 0.8  # paper Fig. 6: Gaussian KDE, bandwidth factor 0.8
# Chosen here: the kernel's width is 0.8 x the samples' std and the grid spans their range plus
# 3 widths each side (about 13 stds for 10,000 samples), so 512 points put some 30 points across
# one kernel width and no peak falls between two of them (at the smallest factor, 0.05, still 3).
KDE_GRID_SIZE = 512
BIMODALITY_THRESHOLD = 5.0 / 9.0  # Sarle's coefficient of a uniform distribution, the usual cut-off
# Chosen here, because the KDE of a smooth density has no noise peaks: 1% of the highest
# peak only rejects flat shoulders and numerical ripples.
MIN_PEAK_PROMINENCE = 0.01


def principal_projection(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Project samples (n, d) or (n,) on their first principal component.

    Returns (projections (n,), unit direction (d,), explained variance ratio). The direction's
    sign is fixed (largest-magnitude entry positive) so that repeated analyses plot alike.
    """

    x = np.asarray(samples, dtype=np.float64)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"samples must have shape (n, d) with n >= 2, got {np.shape(samples)}")
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or infinite values")
    centred = x - x.mean(axis=0)
    # The right singular vectors of the centred data are the principal axes, in order of variance.
    _, singular_values, axes = np.linalg.svd(centred, full_matrices=False)
    direction = axes[0] * np.sign(axes[0][np.argmax(np.abs(axes[0]))])
    variance = singular_values**2
    explained = float(variance[0] / variance.sum()) if variance.sum() > 0 else 1.0
    return centred @ direction, direction, explained


def bimodality_coefficient(x: np.ndarray) -> float:
    """Sarle's bimodality coefficient of 1-D samples (needs n >= 4 and non-zero variance)."""

    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 4 or np.ptp(x) == 0:
        raise ValueError(f"need at least 4 samples that are not all equal, got n={n}")
    skew = stats.skew(x, bias=False)
    excess_kurtosis = stats.kurtosis(x, fisher=True, bias=False)
    return float((skew**2 + 1.0) / (excess_kurtosis + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def kde_curve(
    x: np.ndarray, bw_factor: float = KDE_BANDWIDTH_FACTOR, grid_size: int = KDE_GRID_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian KDE of 1-D samples on a grid spanning the samples +- 3 kernel widths: (grid, density)."""

    x = np.asarray(x, dtype=np.float64).ravel()
    kde = stats.gaussian_kde(x, bw_method=bw_factor)
    margin = 3.0 * float(np.sqrt(kde.covariance[0, 0]))
    grid = np.linspace(x.min() - margin, x.max() + margin, grid_size)
    return grid, kde(grid)


def count_peaks(density: np.ndarray, min_prominence: float = MIN_PEAK_PROMINENCE) -> int:
    """Number of local maxima whose prominence is at least `min_prominence` times the highest value."""

    density = np.asarray(density, dtype=np.float64)
    # Zero padding lets a maximum at the edge of the grid count as a peak.
    peaks, _ = signal.find_peaks(np.pad(density, 1), prominence=min_prominence * density.max())
    return len(peaks)


@dataclass(frozen=True)
class MultimodalityReport:
    """The Figure-6 analysis of one set of action samples."""

    n: int
    direction: np.ndarray  # first principal axis in action space
    explained_variance: float  # share of the total variance along that axis
    bimodality_coefficient: float
    kde_peaks: int
    bw_factor: float  # the KDE kernel's std over the projection's std
    grid: np.ndarray  # KDE abscissa (projection on the first principal axis)
    density: np.ndarray

    @property
    def bimodal(self) -> bool:
        """Both statistics agree: Sarle's coefficient above 5/9 and at least two KDE peaks."""

        return self.bimodality_coefficient > BIMODALITY_THRESHOLD and self.kde_peaks >= 2

    def metrics(self, prefix: str = "multimodality/") -> dict[str, float]:
        return {
            f"{prefix}bimodality_coefficient": self.bimodality_coefficient,
            f"{prefix}kde_peaks": float(self.kde_peaks),
            f"{prefix}explained_variance": self.explained_variance,
            f"{prefix}kde_bandwidth_factor": self.bw_factor,
        }


def analyse_actions(
    samples: np.ndarray, bw_factor: float = KDE_BANDWIDTH_FACTOR, grid_size: int = KDE_GRID_SIZE
) -> MultimodalityReport:
    """Project action samples (n, act_dim) on PC1, then compute Sarle's coefficient and the KDE."""

    projections, direction, explained = principal_projection(samples)
    coefficient = bimodality_coefficient(projections)  # first: its ValueError says why samples cannot do
    grid, density = kde_curve(projections, bw_factor, grid_size)
    return MultimodalityReport(
        n=projections.size,
        direction=direction,
        explained_variance=explained,
        bimodality_coefficient=coefficient,
        kde_peaks=count_peaks(density),
        bw_factor=bw_factor,
        grid=grid,
        density=density,
    )
