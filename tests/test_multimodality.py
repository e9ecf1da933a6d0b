"""Figure-6 multimodality statistics on synthetic unimodal and bimodal action samples."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.multimodality import (
    BIMODALITY_THRESHOLD,
    analyse_actions,
    bimodality_coefficient,
    count_peaks,
    kde_curve,
    principal_projection,
)

N = 10_000  # paper Fig. 6: 10,000 actions per state


def gaussian_actions(seed: int = 0) -> np.ndarray:
    """Unimodal, elongated along (1, 1)."""

    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, 2)) * [1.0, 0.3] @ (np.array([[1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2))


def two_mode_actions(seed: int = 0) -> np.ndarray:
    """Mixture of two Gaussians at (+-1.5, 0, 0)."""

    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.choice([-1.0, 1.0], N)[:, None] * [1.0, 0.0, 0.0]
    return centres + 0.2 * rng.standard_normal((N, 3))


def test_unimodal_gaussian_is_not_flagged():
    report = analyse_actions(gaussian_actions())
    assert report.bimodality_coefficient == pytest.approx(1 / 3, abs=0.03)
    assert report.kde_peaks == 1
    assert not report.bimodal
    np.testing.assert_allclose(np.abs(report.direction), [2**-0.5, 2**-0.5], atol=0.02)
    assert report.explained_variance == pytest.approx(1 / 1.09, abs=0.02)


def test_two_modes_are_flagged_along_the_axis_joining_them():
    report = analyse_actions(two_mode_actions())
    assert report.bimodality_coefficient > 0.85 > BIMODALITY_THRESHOLD
    assert report.kde_peaks == 2
    assert report.bimodal
    np.testing.assert_allclose(report.direction, [1.0, 0.0, 0.0], atol=0.02)
    inner = report.density[1:-1]
    peaks = report.grid[1:-1][(inner > report.density[:-2]) & (inner > report.density[2:])]
    assert np.all(np.abs(np.abs(peaks) - 1.5) < 0.5), peaks


def test_skewed_unimodal_sample_is_not_called_bimodal():
    """Sarle's coefficient alone is fooled by strong skew (b near 5/9); the single KDE peak is not."""

    x = np.random.default_rng(0).exponential(size=N)
    assert bimodality_coefficient(x) > 0.5
    assert not analyse_actions(x).bimodal


def test_coefficient_of_a_uniform_sample_is_five_ninths():
    x = np.random.default_rng(1).uniform(size=200_000)
    assert bimodality_coefficient(x) == pytest.approx(5 / 9, abs=0.01)


def test_kde_uses_the_bandwidth_factor_as_kernel_width_over_sample_std():
    x = np.random.default_rng(2).standard_normal(N)
    grid, density = kde_curve(x, bw_factor=0.8)
    # N(0, 1) data smoothed by a N(0, 0.8^2) kernel is N(0, 1.64): its peak is 1 / sqrt(2 pi 1.64).
    assert density.max() == pytest.approx(1 / np.sqrt(2 * np.pi * 1.64), rel=0.03)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert count_peaks(density) == 1


def test_principal_projection_fixes_the_sign_and_accepts_1d():
    projections, direction, explained = principal_projection(-gaussian_actions())
    assert direction[np.argmax(np.abs(direction))] > 0
    assert projections.shape == (N,)
    one_d, direction_1d, explained_1d = principal_projection(np.arange(10.0))
    np.testing.assert_allclose(one_d, np.arange(10.0) - 4.5)
    assert direction_1d.tolist() == [1.0] and explained_1d == 1.0


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="at least 4"):
        bimodality_coefficient(np.ones(10))
    with pytest.raises(ValueError, match="NaN"):
        principal_projection(np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="n >= 2"):
        principal_projection(np.zeros((1, 3)))
    # All samples equal (a saturated policy): a clear error, not scipy's singular-covariance one.
    with pytest.raises(ValueError, match="not all equal"):
        analyse_actions(np.ones((10_000, 3), np.float32))


def test_the_paper_s_bandwidth_merges_modes_that_scott_s_rule_separates():
    """The numbers in the module docstring: 10,000 samples of an even mixture of N(-m, 1), N(m, 1)."""

    def mixture(m: float, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.choice([-m, m], N) + rng.standard_normal(N)
        return np.stack([x, 0.1 * rng.standard_normal(N)], axis=1)

    assert [analyse_actions(mixture(m)).kde_peaks for m in (2.5, 2.75)] == [1, 2]
    assert [analyse_actions(mixture(m), 0.16).kde_peaks for m in (1.0, 1.25)] == [1, 2]
    gaussians = [np.random.default_rng(seed).standard_normal((N, 1)) for seed in range(20)]
    peaks = {bw: [analyse_actions(x, bw).kde_peaks for x in gaussians] for bw in (0.1, 0.13, 0.16)}
    assert peaks[0.1].count(2) == 4 and peaks[0.13] == peaks[0.16] == [1] * 20
