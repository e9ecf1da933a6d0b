"""Aggregate metrics of normalised scores and their seedable stratified bootstrap intervals.

Scores follow rliable's layout: one array per variant of shape (runs, tasks) for final scores,
or (runs, tasks, checkpoints) for curves. Runs are independent training seeds only (evaluation
episodes are averaged before the scores get here); otherwise the intervals come out far too narrow.

Why not `rliable.library.get_interval_estimates`: its `random_state` argument seeds nothing
(it draws from NumPy's global generator), and it calls the statistic once per resample in
Python, which at 50,000 resamples takes seconds per variant and minutes for probability of
improvement. Here every resample is drawn from a `numpy.random.Generator` seeded from
(`seed`, the variant's label), so a variant's interval depends on nothing else in the report,
and the statistics work on a whole batch of resamples at once. The batched statistics below
are the definitions of `rliable.metrics` (IQM, median, mean, optimality gap, probability of
improvement) written for a leading batch axis; the tests check them against rliable's
functions.

The bootstrap is rliable's stratified one: within each task, the runs are drawn with
replacement, independently of the other tasks; arrays of a pair (probability of improvement)
are drawn independently of each other. A curve is resampled as a whole run, so each
checkpoint's interval is the same as rliable's per-checkpoint one. Intervals are percentile
intervals.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import trim_mean

# Resamples drawn and evaluated together: bounds memory (a batch of (runs, tasks, checkpoints)
# arrays) and paces the progress display. Fixed, so the draws never depend on it changing.
CHUNK = 1000

# A batched statistic maps arrays of shape (batch, runs, tasks, ...) to (batch, ...).
Statistic = Callable[..., np.ndarray]
Progress = Callable[[int], None]


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean over all runs and tasks (`rliable.metrics.aggregate_iqm`)."""

    return trim_mean(scores.reshape(len(scores), -1), 0.25, axis=1)


def median(scores: np.ndarray) -> np.ndarray:
    """Median over tasks of the per-task mean over runs (`rliable.metrics.aggregate_median`)."""

    return np.median(scores.mean(axis=1), axis=1)


def mean(scores: np.ndarray) -> np.ndarray:
    """Mean over tasks of the per-task mean over runs (`rliable.metrics.aggregate_mean`)."""

    return scores.mean(axis=1).mean(axis=1)


def optimality_gap(scores: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """How far scores fall short of `gamma` (`rliable.metrics.aggregate_optimality_gap`)."""

    return gamma - np.minimum(scores, gamma).reshape(len(scores), -1).mean(axis=1)


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Median": median,
    "IQM": iqm,
    "Mean": mean,
    "Optimality Gap": optimality_gap,
}


def aggregates(scores: np.ndarray) -> np.ndarray:
    """All of `AGGREGATES` for a batch of (runs, tasks) arrays: shape (batch, len(AGGREGATES))."""

    return np.stack([metric(scores) for metric in AGGREGATES.values()], axis=1)


def iqm_curve(scores: np.ndarray) -> np.ndarray:
    """IQM at each checkpoint of a batch of (runs, tasks, checkpoints) arrays: (batch, checkpoints)."""

    batch, checkpoints = scores.shape[0], scores.shape[-1]
    return trim_mean(scores.reshape(batch, -1, checkpoints), 0.25, axis=1)


# Joins the two labels of a pair ("X|Y"); variant labels never contain it (unit keys use it).
PAIR_SEPARATOR = "|"


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y), ties counting half, averaged over tasks (`rliable.metrics.probability_of_improvement`).

    For each task this is the Mann-Whitney U statistic divided by n_x * n_y, computed here by
    comparing every run of X with every run of Y.
    """

    xs, ys = x[:, :, None, :], y[:, None, :, :]
    wins = (xs > ys).mean(axis=(1, 2)) + 0.5 * (xs == ys).mean(axis=(1, 2))
    return wins.mean(axis=1)


def performance_profile(taus: np.ndarray) -> Statistic:
    """The score distribution: fraction of runs above each tau, averaged over tasks (rliable's default)."""

    def profile(scores: np.ndarray) -> np.ndarray:
        above = scores[..., None] > taus  # (batch, runs, tasks, taus)
        return above.mean(axis=1).mean(axis=1)

    return profile


def interval_estimates(
    score_dict: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    statistic: Statistic,
    *,
    reps: int,
    seed: int,
    confidence: float = 0.95,  # rliable's confidence_interval_size
    progress: Progress | None = None,
    streams: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Point estimates and stratified bootstrap intervals of `statistic`, rliable's return shape.

    `score_dict` maps a label to one score array, or to a tuple of arrays that `statistic` takes
    together (a pair for probability of improvement). Returns (points, intervals): points[label]
    has the statistic's shape, intervals[label] the shape (2, ...) with the lower bound first.
    `progress`, if given, is called with the number of resamples done after each chunk.
    `streams` names the random stream of a label drawn from another label's (default: its own),
    so that the same runs under two labels get the same interval.
    """

    points, intervals = {}, {}
    for label, value in score_dict.items():
        arrays = (value,) if isinstance(value, np.ndarray) else tuple(value)
        points[label] = statistic(*(a[None] for a in arrays))[0]
        samples = bootstrap_samples(
            arrays,
            statistic,
            reps=reps,
            rng=_generator(seed, (streams or {}).get(label, label)),
            progress=progress,
        )
        tail = 100 * (1 - confidence) / 2
        intervals[label] = np.percentile(samples, [tail, 100 - tail], axis=0)
    return points, intervals


def bootstrap_samples(
    arrays: Sequence[np.ndarray],
    statistic: Statistic,
    *,
    reps: int,
    rng: np.random.Generator,
    progress: Progress | None = None,
) -> np.ndarray:
    """`statistic` on `reps` stratified resamples of `arrays`: shape (reps, ...)."""

    out = []
    for start in range(0, reps, CHUNK):
        size = min(CHUNK, reps - start)
        out.append(statistic(*(stratified_resample(a, size, rng) for a in arrays)))
        if progress is not None:
            progress(size)
    return np.concatenate(out)


def stratified_resample(scores: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` resamples of a (runs, tasks, ...) array: runs drawn with replacement within each task."""

    runs, tasks = scores.shape[:2]
    rows = rng.integers(0, runs, size=(size, runs, tasks))
    return scores[rows, np.arange(tasks)]


def _generator(seed: int, label: str) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process.
    return np.random.default_rng([seed, zlib.crc32(label.encode())])
