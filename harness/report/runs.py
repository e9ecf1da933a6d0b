"""Results of runs started by hand (`gorl-bench report --runs DIR ...`), read as a study's are.

Each run directory's checkpoint holds the run's request (algorithm, task, seed, budget, preset,
`--set` overrides), the config it trained with and its evaluation history, so the report needs
neither the Optuna study nor the MLflow store. Runs are grouped into variants by what they
trained: algorithm, env steps trained (and evaluated at: `--steps 20000` and `20480` train the
same 5 updates of 4,096) and config, except the values a task's own overrides set (so one
configuration's runs on finger-spin and on cheetah-run are one variant). An override equal to
its preset's value changes nothing; a preset that gave other values in the version a run ran
with makes another variant. A variant is named after its algorithm, followed by the settings
that tell it apart from the algorithm's other variants (`gorl-fm num_refits=0`). A variant's
runs on a task are its seeds; the same variant, task and seed given twice would count one run
as two independent ones and is refused. A run that has not reached its budget is listed as
missing, and the report is PARTIAL; except a run whose training diverged (its directory holds
`diverged.txt`): a result, as in a study, counted with its task's worst score.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UserError
from harness.progress import count
from harness.report.results import COLUMNS, StudyResults

KIND = "runs"  # the report's title says "(runs)" where a study's says its kind


@dataclass(frozen=True)
class _SavedRun:
    directory: Path
    request: Any  # harness.run.RunRequest
    config: Any  # the config it trains with, on its task
    history: list[tuple[int, float, float]]  # (counted steps, mean return, std) per evaluation
    chosen: dict[str, Any]  # the config it trained with, apart from the values its task set (`_chosen`)
    diverged: bool  # its training diverged (`harness.run.DIVERGED_NAME`)

    @functools.cached_property  # read for every pair of variants when they are labelled
    def evaluated(self) -> tuple[int, ...]:
        """The counted env steps it is evaluated at, the last its trained steps: a budget that is no
        whole number of updates trains up to the next one, so `--steps 20000` and `--steps 20480`
        (5 updates of 4,096) train and evaluate alike."""

        from harness.evaluation import evaluation_points
        from harness.run import trained_steps

        points = evaluation_points(self.request.steps, self.config.eval_points)
        return tuple(trained_steps(self.config, point) for point in points)

    @property
    def variant_key(self) -> tuple[str, str, tuple[int, ...], str]:
        return (self.request.algo, self.request.preset, self.evaluated, repr(sorted(self.chosen.items())))

    @property
    def finished(self) -> bool:
        return bool(self.history) and self.history[-1][0] >= self.request.steps


def load_run_results(run_dirs: Sequence[Path], name: str) -> StudyResults:
    """The runs in `run_dirs` as the results of a study named `name` (see the module docstring)."""

    import envs
    from harness.run import DIVERGED_NAME, saved_run

    runs = []
    for run_dir in run_dirs:
        request, config, state = saved_run(run_dir)
        history, diverged = state["progress"]["history"], (Path(run_dir) / DIVERGED_NAME).is_file()
        runs.append(_SavedRun(Path(run_dir), request, config, history, _chosen(request, state), diverged))
    labels = _labels({run.variant_key: run for run in runs})

    rows: list[dict[str, Any]] = []
    diverged: list[dict[str, Any]] = []  # at the budget, with the task's worst return
    missing: list[str] = []
    seen: dict[tuple[str, str, int], Path] = {}
    for run in runs:
        variant, request = labels[run.variant_key], run.request
        unit = (variant, request.task, request.seed)
        if unit in seen:
            raise UserError(
                f"{seen[unit]} and {run.directory} are both {variant} on {request.task} with seed "
                f"{request.seed}; give each run once (the statistics take every run as an independent seed)."
            )
        seen[unit] = run.directory
        unit_row = {"study": name, "variant": variant, "algo": request.algo, "task": request.task,
                    "seed": request.seed}  # fmt: skip
        if not run.finished and run.diverged:
            worst = envs.score_range(request.task)[0]
            diverged.append({**unit_row, "env_step": request.steps, "eval_return": worst})
            continue
        if not run.finished:
            reached = run.history[-1][0] if run.history else 0
            missing.append(
                f"{run.directory} ({variant}, {request.task}, seed {request.seed}): evaluated up to "
                f"{reached:,} of {request.steps:,} steps"
            )
            continue
        rows += [
            {**unit_row, "env_step": int(step), "eval_return": float(mean)} for step, mean, _ in run.history
        ]
    if not rows and not diverged:
        raise UserError(
            f"no run has reached its budget yet ({count(len(runs), 'run')} given: {'; '.join(missing[:3])}); "
            "finish them (gorl-bench run --resume DIR), then report again."
        )
    table, diverged_table = pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(diverged, columns=COLUMNS)
    present = list(dict.fromkeys([*table["task"], *diverged_table["task"]]))
    sampled = {labels[run.variant_key] for run in runs if getattr(run.config, "eval_noise", "") == "sample"}
    return StudyResults(
        study=name,
        kind=KIND,
        table=table,
        missing=missing,
        not_run=[],
        failed=[],
        parameters=[],
        tracking_uri="",
        parent_run_id=None,
        tasks=present,
        tasks_without_results=[
            task for task in dict.fromkeys(run.request.task for run in runs) if task not in present
        ],
        pruned=[],
        diverged=diverged_table,
        sampled_variants=sorted(sampled),
        variant_order=list(dict.fromkeys(labels[run.variant_key] for run in runs)),
    )


def _chosen(request: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The config a run trained with, as its checkpoint recorded it when it started, except the
    values its task's own overrides set (given by them or, as a preset's own value, by --set),
    which are those its preset and overrides give for no task. (A checkpoint of a version that
    recorded no config: its preset and overrides resolved by this version.)"""

    import algorithms
    from algorithms.config import as_dict, resolve

    spec = algorithms.get(request.algo)
    task_values = spec.task_overrides(request.preset, request.task)
    # An override that only repeats the task's own value chooses nothing.
    overrides = {
        key: v for key, v in request.overrides.items() if key not in task_values or task_values[key] != v
    }
    untasked = as_dict(resolve(spec, request.preset, "", overrides))
    recorded = state.get("config")
    if not isinstance(recorded, Mapping):
        return untasked
    by_task = task_values.keys() - overrides.keys()
    return {**untasked, **{key: value for key, value in recorded.items() if key not in by_task}}


def _labels(variants: dict[tuple[Any, ...], _SavedRun]) -> dict[tuple[Any, ...], str]:
    """A name for each variant (its key -> one of its runs): its algorithm, then the preset and
    budget where the algorithm's variants differ in them, then each config value in which it
    differs from the algorithm's other variants of its preset.

    The budget is the env steps trained; where those are equal but the evaluations fall after
    other updates (`_SavedRun.evaluated`), the budget given."""

    labels = {}
    for key, run in variants.items():
        algo, preset = run.request.algo, run.request.preset
        same_algo = [other for other in variants.values() if other.request.algo == algo]
        parts = [algo]
        if len({other.request.preset for other in same_algo}) > 1:
            parts.append(f"preset={preset}")
        if len({other.evaluated[-1] for other in same_algo}) > 1:
            parts.append(f"steps={run.evaluated[-1]}")
        elif len({other.evaluated for other in same_algo}) > 1:
            parts.append(f"steps={run.request.steps}")
        peers = [
            other.chosen
            for other in variants.values()
            if (other.request.algo, other.request.preset) == (algo, preset)
        ]
        parts += [
            f"{name}={value}" for name, value in run.chosen.items() if any(p[name] != value for p in peers)
        ]
        labels[key] = " ".join(parts)
    return labels
