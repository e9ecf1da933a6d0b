"""The report's figures: rliable's four standard plots, the ablation plot and a tune study's
parameter importances, each as PNG and PDF.

rliable.plot_utils draws everything it has a plot for, so the figures look like the ones
reviewers know from rliable-based papers. The ablation plot (final IQM against the value of a
swept parameter) has no rliable counterpart and is drawn here with the same conventions: point
estimate with its 95% interval. The importance plot is the horizontal bar chart of Optuna's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window, and no display needed on servers

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
from rliable import plot_utils  # noqa: E402

from harness.report.stats import AGGREGATES, PAIR_SEPARATOR  # noqa: E402

FORMATS = ("png", "pdf")
SCORE_LABEL = "Normalized score"
# Inches from the axes' lower edge down to the x label's baseline: rliable's tick labels take ~0.35.
XLABEL_DROP = 0.7


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `fig` as name.png and name.pdf and close it; returns the paths."""

    paths = [out_dir / f"{name}.{fmt}" for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


Colors = Mapping[str, tuple[float, float, float]]


def variant_colors(variants: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per variant, given to every figure: rliable colours by position in each figure's
    own list, so a variant missing from one figure (no curve) shifted the colours of those after
    it there. rliable's colour-blind palette has 10 colours and then repeats; more variants (a
    tune study's trials) get evenly spaced hues instead."""

    import seaborn as sns  # rliable's plotting library, whose palettes rliable itself uses

    palette = sns.color_palette("colorblind" if len(variants) <= 10 else "husl", len(variants))
    return dict(zip(variants, palette, strict=True))


def aggregates_figure(
    points: Mapping[str, np.ndarray], intervals: Mapping[str, np.ndarray], colors: Colors
) -> plt.Figure:
    """Median, IQM, mean and optimality gap of each variant with their intervals."""

    row_height = 0.37  # rliable's default, in inches per variant
    height = row_height * len(points)  # rliable's figure height
    axes_bottom = plt.rcParams["figure.subplot.bottom"] * height  # inches above the figure's edge
    fig, _ = plot_utils.plot_interval_estimates(
        dict(points),
        dict(intervals),
        metric_names=list(AGGREGATES),
        algorithms=list(points),
        colors=dict(colors),
        xlabel=SCORE_LABEL,
        row_height=row_height,
        # rliable places the label's baseline in figure coordinates; keep it a fixed distance below
        # the axes (under rliable's large tick labels) however many rows, i.e. inches, there are.
        xlabel_y_coordinate=(axes_bottom - XLABEL_DROP) / height,
    )
    return fig


def improvement_figure(points: Mapping[str, float], intervals: Mapping[str, np.ndarray]) -> plt.Figure:
    """P(X > Y) for each pair of variants."""

    fig, ax = plt.subplots(figsize=(4, 0.5 + 0.45 * len(points)))
    plot_utils.plot_probability_of_improvement(
        dict(points),
        {pair: np.ravel(ci) for pair, ci in intervals.items()},
        pair_separator=PAIR_SEPARATOR,
        ax=ax,
        xticks=[0.0, 0.25, 0.5, 0.75, 1.0],
    )
    ax.set_xlim(-0.02, 1.02)  # a pair at exactly 0 or 1 drew its bar on the frame, unseen
    return fig


def importance_figure(shares: Mapping[str, float]) -> plt.Figure:
    """Each searched parameter's fANOVA importance, largest on top (as Optuna's importance plot)."""

    fig, ax = plt.subplots(figsize=(5, 0.8 + 0.4 * len(shares)))
    names = list(shares)[::-1]
    ax.barh(names, [shares[name] for name in names], color="tab:blue")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Importance for the final IQM (fANOVA)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def profile_figure(
    taus: np.ndarray, profiles: Mapping[str, np.ndarray], intervals: Mapping[str, np.ndarray], colors: Colors
) -> plt.Figure:
    """Fraction of runs above each normalised score (the score distribution)."""

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        dict(profiles),
        taus,
        performance_profile_cis=dict(intervals),
        ax=ax,
        colors=dict(colors),
        xlabel=r"Normalized score $(\tau)$",
        ylabel=r"Fraction of runs with score $> \tau$",
    )
    ax.legend(loc="upper right", fontsize="small")
    return fig


def sample_efficiency_figure(
    steps: np.ndarray, points: Mapping[str, np.ndarray], intervals: Mapping[str, np.ndarray], colors: Colors
) -> plt.Figure:
    """IQM of normalised scores against counted env steps."""

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_sample_efficiency_curve(
        steps,
        dict(points),
        dict(intervals),
        algorithms=list(points),
        colors={variant: colors[variant] for variant in points},
        ax=ax,
        xlabel="Env steps",
        ylabel="IQM normalized score",
    )
    ax.legend(loc="lower right", fontsize="small")
    return fig


def ablation_figure(
    panels: Mapping[str, tuple[Mapping[str, float], Mapping[str, np.ndarray]]],
) -> plt.Figure:
    """One panel per swept parameter: final IQM with its interval at each of its values.

    `panels` maps a parameter to (points, intervals) keyed by the value's label, in axis order.
    Values sit at evenly spaced positions (they may be categorical, or unevenly spaced numbers).
    """

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (parameter, (points, intervals)) in zip(axes[0], panels.items(), strict=True):
        labels: Sequence[str] = list(points)
        y = np.array([points[label] for label in labels], dtype=float)
        bounds = np.array([intervals[label] for label in labels], dtype=float)  # (values, 2)
        x = np.arange(len(labels))
        # Points and error bars only: a line or band between the values (evenly spaced whatever
        # their numbers) would draw scores where nothing was run.
        ax.errorbar(x, y, yerr=[y - bounds[:, 0], bounds[:, 1] - y], marker="o", linestyle="none", capsize=4)
        ax.set_xticks(x, labels)
        ax.set_xlabel(parameter)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Final IQM normalized score")
    fig.tight_layout()
    return fig
