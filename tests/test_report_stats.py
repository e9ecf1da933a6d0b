"""Report statistics: exact metrics, the seedable stratified bootstrap, and agreement with rliable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rliable import metrics

from harness.report import stats
from harness.report.scores import curve_arrays, final_score_arrays

REPS = 2000

# Three tasks x four runs, built so that every aggregate is known by hand:
#   all twelve sorted: 0 .1 .1 .1 | .1 .2 .2 .4 .4 .6 | .8 2  -> IQM = 1.4 / 6
#   per-task means .3, .85, .1 -> mean 1.25 / 3, median .3
#   scores capped at 1 sum to 4 -> optimality gap 1 - 4 / 12
KNOWN = np.array([[0.0, 0.2, 0.1], [0.2, 0.4, 0.1], [0.4, 0.8, 0.1], [0.6, 2.0, 0.1]])
EXPECTED = {"Median": 0.3, "IQM": 1.4 / 6, "Mean": 1.25 / 3, "Optimality Gap": 1 - 4 / 12}


def test_aggregates_are_exact_on_known_scores():
    points, intervals = stats.interval_estimates({"a": KNOWN}, stats.aggregates, reps=REPS, seed=0)
    assert dict(zip(stats.AGGREGATES, points["a"], strict=True)) == pytest.approx(EXPECTED, abs=1e-12)
    assert intervals["a"].shape == (2, len(stats.AGGREGATES))
    assert np.all(intervals["a"][0] <= points["a"]) and np.all(points["a"] <= intervals["a"][1])


def test_batched_metrics_equal_rliable_on_every_resample():
    rng = np.random.default_rng(1)
    batch = rng.gamma(2.0, 0.3, size=(20, 7, 5))  # 20 resamples of (7 runs, 5 tasks), some above 1
    rliable = [metrics.aggregate_median, metrics.aggregate_iqm, metrics.aggregate_mean]
    rliable.append(metrics.aggregate_optimality_gap)
    expected = np.array([[metric(scores) for metric in rliable] for scores in batch])
    np.testing.assert_allclose(stats.aggregates(batch), expected, rtol=1e-12)
    xs, ys = batch.round(1), rng.gamma(2.0, 0.3, size=(20, 4, 5)).round(1)  # rounded: ties happen
    pairs = np.array([metrics.probability_of_improvement(x, y) for x, y in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(stats.probability_of_improvement(xs, ys), pairs, rtol=1e-12)


def test_probability_of_improvement_extremes():
    low, high = np.zeros((3, 2)), np.ones((4, 2))
    points, _ = stats.interval_estimates(
        {"high|low": (high, low), "tie": (low, low)}, stats.probability_of_improvement, reps=REPS, seed=0
    )
    assert points == {"high|low": 1.0, "tie": 0.5}


def test_constant_runs_give_a_degenerate_interval():
    scores = np.tile([0.2, 0.5, 0.9], (5, 1))
    points, intervals = stats.interval_estimates({"c": scores}, stats.iqm, reps=REPS, seed=3)
    assert intervals["c"] == pytest.approx([points["c"], points["c"]])


def test_intervals_contain_the_population_value():
    # Uniform(0, 1) scores: the population IQM, median, mean and optimality gap are all 0.5.
    scores = np.random.default_rng(7).uniform(size=(40, 4))
    _, intervals = stats.interval_estimates({"u": scores}, stats.aggregates, reps=REPS, seed=0)
    lower, upper = intervals["u"]
    assert np.all(lower < 0.5) and np.all(upper > 0.5)
    assert np.all(upper - lower < 0.25)


def test_intervals_are_the_percentiles_of_the_confidence_level():
    """The 2.5th and 97.5th percentiles of the resampled statistic at 95%; the 5th and 95th at 90%
    (a 90% interval labelled 95% passed every other test)."""

    scores = np.random.default_rng(4).uniform(size=(12, 3))
    samples = stats.bootstrap_samples((scores,), stats.iqm, reps=REPS, rng=stats._generator(0, "u"))
    for confidence, tails in ((0.95, [2.5, 97.5]), (0.9, [5.0, 95.0])):
        options = {"reps": REPS, "seed": 0, "confidence": confidence}
        _, intervals = stats.interval_estimates({"u": scores}, stats.iqm, **options)
        np.testing.assert_array_equal(intervals["u"], np.percentile(samples, tails, axis=0))


def test_intervals_are_bit_identical_for_a_seed_and_change_with_it():
    scores = np.random.default_rng(0).uniform(size=(5, 3))
    first = stats.interval_estimates({"a": scores, "b": scores / 2}, stats.aggregates, reps=REPS, seed=11)
    again = stats.interval_estimates({"a": scores, "b": scores / 2}, stats.aggregates, reps=REPS, seed=11)
    alone = stats.interval_estimates({"a": scores}, stats.aggregates, reps=REPS, seed=11)
    other = stats.interval_estimates({"a": scores}, stats.aggregates, reps=REPS, seed=12)
    assert np.array_equal(first[1]["a"], again[1]["a"]) and np.array_equal(first[1]["b"], again[1]["b"])
    assert np.array_equal(first[1]["a"], alone[1]["a"])  # independent of the other variants
    assert not np.array_equal(first[1]["a"], other[1]["a"])


def test_curves_resample_whole_runs():
    curves = np.random.default_rng(2).uniform(size=(6, 3, 4))
    points, intervals = stats.interval_estimates({"a": curves}, stats.iqm_curve, reps=REPS, seed=0)
    assert points["a"].shape == (4,) and intervals["a"].shape == (2, 4)
    for t in range(4):
        assert points["a"][t] == pytest.approx(metrics.aggregate_iqm(curves[..., t]))
    # A resample draws each run's whole curve: runs whose scores stay the same at every point give
    # intervals that stay the same too (runs redrawn at each point would give each its own).
    flat = np.repeat(curves[..., :1], 4, axis=-1)
    _, flat_intervals = stats.interval_estimates({"a": flat}, stats.iqm_curve, reps=REPS, seed=0)
    assert np.array_equal(flat_intervals["a"], np.repeat(flat_intervals["a"][:, :1], 4, axis=1))


def test_agrees_with_rliable_library_within_bootstrap_noise():
    from rliable import library

    rng = np.random.default_rng(5)
    score_dict = {"a": rng.uniform(size=(10, 5)), "b": rng.beta(2, 5, size=(8, 5))}

    def rliable_aggregates(scores):
        return np.array([
            metrics.aggregate_median(scores),
            metrics.aggregate_iqm(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_optimality_gap(scores),
        ])  # fmt: skip

    np.random.seed(0)  # rliable draws from NumPy's global generator; its random_state seeds nothing
    theirs_points, theirs = library.get_interval_estimates(score_dict, rliable_aggregates, reps=REPS)
    ours_points, ours = stats.interval_estimates(score_dict, stats.aggregates, reps=REPS, seed=0)
    for name in score_dict:
        np.testing.assert_allclose(ours_points[name], theirs_points[name], rtol=1e-12)
        width = theirs[name][1] - theirs[name][0]
        assert np.all(np.abs(ours[name] - theirs[name]) < 0.15 * width + 1e-9)


def test_curves_span_the_budget_when_units_have_different_numbers_of_evaluations():
    """A large-batch unit evaluates once for several points; the x axis must still reach the budget,
    and must not start before that unit's first evaluation (its curve would show an unmeasured score)."""

    def unit(variant: str, steps: list[int]) -> pd.DataFrame:
        scores = np.asarray(steps) / 8192
        return pd.DataFrame({"variant": variant, "task": "toy", "seed": 0, "env_step": steps,
                             "score": scores})  # fmt: skip

    small_batch = unit("small-batch", [*range(819, 8192, 819), 8192])
    table = pd.concat([small_batch, unit("large-batch", [2048, 4096, 6144, 8192])])
    steps, arrays, _ = curve_arrays(table, ["toy"])
    # 819 and 1638 lie before large-batch's first evaluation (2048) by more than half a spacing.
    assert list(steps[:2]) == [2457, 3276] and len(steps) == 9 and steps[-1] == 8192
    assert arrays["small-batch"][0, 0, -1] == arrays["large-batch"][0, 0, -1] == 1.0


def test_every_curve_ends_at_its_run_s_final_score():
    """A unit whose update size does not divide the budget evaluates last past the others; its
    curve ended at a value interpolated before that, below its final score in the tables."""

    table = pd.DataFrame({
        "variant": ["small"] * 10 + ["big"] * 4, "task": "toy", "seed": 0,
        "env_step": [*range(1000, 10_001, 1000), 3000, 6000, 9000, 12_000],
        "score": [0.1] * 10 + [0.2, 0.4, 0.6, 1.0],
    })  # fmt: skip
    steps, arrays, _ = curve_arrays(table, ["toy"])
    assert steps[-1] == 12_000
    assert arrays["big"][0, 0, -1] == 1.0 and arrays["small"][0, 0, -1] == 0.1


@pytest.mark.parametrize("variants", [1, 8])
def test_the_aggregates_x_label_sits_below_the_tick_labels(variants):
    from harness.report import figures

    rng = np.random.default_rng(0)
    finals = {f"variant-{i}": rng.uniform(size=(3, 2)) for i in range(variants)}
    points, intervals = stats.interval_estimates(finals, stats.aggregates, reps=100, seed=0)
    fig = figures.aggregates_figure(points, intervals, figures.variant_colors(list(finals)))
    renderer = fig.canvas.get_renderer()
    (label,) = [text for text in fig.texts if text.get_text() == figures.SCORE_LABEL]
    ticks = [tick for ax in fig.axes for tick in ax.get_xticklabels() if tick.get_text()]
    ticks_bottom = min(tick.get_window_extent(renderer).y0 for tick in ticks)
    assert label.get_window_extent(renderer).y1 < ticks_bottom


def test_latex_tables_escape_what_latex_would_misread():
    from harness.report.tables import Table

    latex = Table(["X > Y", "lr_max ^ 2"], [["[]", "50% & more"], ["[0.001]", "a < b"]]).latex("caption")
    rows = latex.splitlines()
    assert "X $>$ Y & lr\\_max \\textasciicircum{} 2 \\\\" in rows
    # After `\\midrule` or `\\\\`, a bare "[" would start an optional argument.
    assert "{}[] & 50\\% \\& more \\\\" in rows and "{}[0.001] & a $<$ b \\\\" in rows


def test_a_variant_keeps_its_colour_in_every_figure_and_many_variants_get_distinct_ones():
    """rliable colours by position in each figure's list: a variant without a curve shifted the
    colours of those after it in the sample-efficiency figure; past 10 the palette repeated."""

    from matplotlib.colors import to_rgb

    from harness.report import figures

    rng = np.random.default_rng(0)
    finals = {name: rng.uniform(size=(3, 2)) for name in ("A", "B", "C")}
    colors = figures.variant_colors(list(finals))
    curves = {name: rng.uniform(size=(3, 2, 4)) for name in ("A", "C")}  # B has no curve
    points, intervals = stats.interval_estimates(curves, stats.iqm_curve, reps=100, seed=0)
    fig = figures.sample_efficiency_figure(np.arange(4) * 1000, points, intervals, colors)
    drawn = {line.get_label(): to_rgb(line.get_color()) for line in fig.axes[0].get_lines()}
    assert drawn["C"] == pytest.approx(colors["C"]) and colors["C"] != pytest.approx(colors["B"])
    many = figures.variant_colors([f"trial-{i}" for i in range(40)])
    assert len({tuple(np.round(color, 6)) for color in many.values()}) == 40


def test_the_ablation_figure_draws_points_and_error_bars_but_nothing_between_values():
    from harness.report import figures

    points = {"0": 0.5, "1": 0.4, "3": 0.3}
    intervals = {label: np.array([value - 0.1, value + 0.1]) for label, value in points.items()}
    fig = figures.ablation_figure({"num_refits": (points, intervals)})
    (drawn,) = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert list(drawn.get_ydata()) == [0.5, 0.4, 0.3]
    assert drawn.get_linestyle() == "None"  # a line would join values that were never run
    bars = [segment for collection in fig.axes[0].collections for segment in collection.get_segments()]
    assert len(bars) == 3 and all(bottom[0] == top[0] for bottom, top in bars)  # vertical only


def test_a_study_in_progress_is_aggregated_over_each_task_s_lowest_seeds():
    """Kept from the highest seeds, a partial study compared variants on different seeds, and
    its numbers moved as units finished."""

    table = pd.DataFrame({
        "variant": "v", "task": ["a", "a", "a", "b", "b"], "seed": [2, 0, 1, 1, 0],
        "env_step": 100, "score": [0.2, 0.0, 0.1, 0.4, 0.3],
    })  # fmt: skip
    arrays, notes = final_score_arrays(table, ["a", "b"])
    np.testing.assert_array_equal(arrays["v"], [[0.0, 0.3], [0.1, 0.4]])  # seeds 0 and 1 of each task
    assert notes == ["v: 2 runs per task used, as many as its least-covered task has"]
