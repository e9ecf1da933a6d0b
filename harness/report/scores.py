"""From the tidy results table to rliable-shaped arrays of normalised scores.

Normalised score = (return - lo) / (hi - lo) with (lo, hi) = `envs.score_range(task)`: DMC
returns lie in [0, 1000], so a DMC score is return / 1000; toy tasks declare their own range.

rliable wants one rectangular array per variant, (runs, tasks[, checkpoints]). A finished study
gives every variant the same seeds on every task; a study in progress may not. Then each
variant keeps, on every task, as many runs as its least-covered task has (the lowest seed
indices), and a variant with no run at all on some task is left out of the aggregates. Each
such trim is returned as a note for the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.progress import count

UNIT = ["variant", "task", "seed"]


def normalise(table: pd.DataFrame) -> pd.Series:
    """The normalised score of every row of a results table (by its `task` and `eval_return`)."""

    import envs

    returns = table.groupby("task", sort=False)["eval_return"]
    return returns.transform(lambda task_returns: envs.normalised_score(task_returns.name, task_returns))


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Each unit's last evaluation (its final score), units in the order of the table."""

    return table.loc[table.groupby(UNIT, sort=False)["env_step"].idxmax()].reset_index(drop=True)


def final_score_arrays(table: pd.DataFrame, tasks: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """{variant: (runs, tasks) final normalised scores} and notes on trimmed or left-out variants."""

    finals = final_rows(table)
    values = {tuple(row[UNIT]): np.float64(row["score"]) for _, row in finals.iterrows()}
    return _rectangular(values, tasks)


def curve_arrays(
    table: pd.DataFrame, tasks: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """(env steps, {variant: (runs, tasks, checkpoints) normalised scores}, notes).

    Evaluations happen at the first update boundary past each evaluation point, so the exact
    step differs between configurations with different update sizes, and an update larger than
    the spacing of the points evaluates once for several of them. The common x axis is that of
    the units with the most evaluations (the median step of their k-th evaluation), so it spans
    the whole budget, and each run's curve is linearly interpolated onto it (held constant
    beyond its last evaluation); its last point is the latest last evaluation of any run. The
    axis starts where every run has been evaluated: a point is kept only if no run's first
    evaluation lies past the middle between it and the next point, so that no curve shows a
    score from before its run was first measured.
    """

    units = {key: group.sort_values("env_step") for key, group in table.groupby(UNIT, sort=False)}
    if not units:  # every unit diverged: no curve at all
        return np.array([]), {}, []
    most = max(len(group) for group in units.values())
    steps = np.median(
        np.stack([group["env_step"].to_numpy() for group in units.values() if len(group) == most]), axis=0
    )
    # The axis ends at the latest last evaluation, so that every curve ends at its run's final
    # score, the one in the tables (a larger update size evaluates last past the others).
    steps[-1] = max(steps[-1], max(group["env_step"].iloc[-1] for group in units.values()))
    latest_first = max(group["env_step"].iloc[0] for group in units.values())
    steps = steps[np.append((steps[:-1] + steps[1:]) / 2, np.inf) >= latest_first]
    values = {
        key: np.interp(steps, group["env_step"].to_numpy(), group["score"].to_numpy())
        for key, group in units.items()
    }
    arrays, notes = _rectangular(values, tasks)
    return steps, arrays, notes


def held_curve_notes(table: pd.DataFrame, steps: np.ndarray) -> list[str]:
    """A note for each variant whose runs all end an axis interval or more before the axis does
    (hand-started runs of a shorter budget): its curve is held at their last scores from there."""

    if len(steps) < 2:
        return []
    ends = table.groupby(UNIT, sort=False)["env_step"].max().groupby(level="variant", sort=False).max()
    return [
        f"sample-efficiency curves: {variant}'s runs end at {last:,.0f} env steps; its curve is held at "
        f"their last scores to {steps[-1]:,.0f}"
        for variant, last in ends.items()
        if last < steps[-2]
    ]


def pooled_by_value(arrays: Mapping[str, np.ndarray], values: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Stack the runs of all variants sharing one value of a parameter: {value: (runs, tasks)}.

    `values` maps each variant to (the text of) its value of the parameter; variants without one
    are skipped.
    Used for the ablation of one swept parameter, marginalising over the others.
    """

    pooled: dict[str, list[np.ndarray]] = {}
    for variant, array in arrays.items():
        if variant in values:
            pooled.setdefault(values[variant], []).append(array)
    return {value: np.concatenate(parts) for value, parts in pooled.items()}


def _rectangular(
    values: Mapping[tuple, np.ndarray], tasks: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    by_variant: dict[str, dict[str, list[tuple[int, np.ndarray]]]] = {}
    for (variant, task, seed), value in values.items():
        by_variant.setdefault(variant, {}).setdefault(task, []).append((seed, value))
    arrays, notes = {}, []
    for variant, per_task in by_variant.items():
        absent = [task for task in tasks if task not in per_task]
        if absent:
            notes.append(f"{variant}: left out of the aggregates, no finished run on {', '.join(absent)}")
            continue
        runs = min(len(per_task[task]) for task in tasks)
        if any(len(per_task[task]) > runs for task in tasks):
            notes.append(
                f"{variant}: {count(runs, 'run')} per task used, as many as its least-covered task has"
            )
        columns = [sorted(per_task[task], key=lambda pair: pair[0])[:runs] for task in tasks]
        arrays[variant] = np.stack([np.stack([value for _, value in column]) for column in columns], axis=1)
    return arrays, notes
