"""Reports of a study: rliable statistics, paper-ready figures and tables, logged to MLflow.

    report = build_report("timescale", reps=50_000, seed=0)

reads the study's results (`results`: Optuna joined with MLflow), normalises them (`scores`),
bootstraps aggregate metrics, probabilities of improvement, performance profiles, IQM
sample-efficiency curves and, for grid studies, the ablation of each swept parameter
(`stats`), then writes into the output directory:

  results.csv                 the tidy table, one row per (unit, evaluation), with `score`, and
                              one per diverged unit at its task's worst score (`diverged`)
  summary.md                  all tables, notes, missing and failed units (title marks PARTIAL)
  best_config.toml            tune studies: the best trial's settings, for `run --config`
  tables.tex                  the same tables for LaTeX (booktabs)
  aggregates, probability_of_improvement, performance_profile, sample_efficiency, ablation,
  parameter_importance        figures, each as .png and .pdf

and logs these files (not the rest of the directory) as the `report/` artifacts of the study's
MLflow parent run. The files are written into a folder of their own inside the output directory
and moved into place once all are written: a report stopped half-way (Ctrl-C, a full disk)
leaves an earlier report there as it was.

A diverged unit is a result: it counts with its task's worst score in the final-score
statistics and tables (in a tune study also in the trial's objective), and has no curve.

Tune studies also get their trials ranked by final IQM (the objective) with the sampled
parameters, each parameter's fANOVA importance for that IQM (`importance`; table and figure
`parameter_importance`), the best trial's settings as a file `run --config` takes
(`best_config.toml`), and the list of pruned trials (left out of the statistics, which need
every unit).
Probabilities of improvement are computed between the `MAX_COMPARED` variants with the highest
IQM.

Ablations: each swept parameter gets its own panel; at each of its values, the runs of every
configuration with that value are pooled (marginalising over the other swept parameters).
Configurations that do not set the parameter (another table of a union of grids) are left out
of its panel.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import UserError
from harness.progress import count
from harness.report import figures, stats
from harness.report.importance import parameter_importance
from harness.report.results import StudyResults, load_results, load_study_results
from harness.report.runs import KIND as RUNS_KIND
from harness.report.runs import load_run_results
from harness.report.scores import (
    curve_arrays,
    final_score_arrays,
    held_curve_notes,
    normalise,
    pooled_by_value,
)
from harness.report.tables import (
    Table,
    ablation_table,
    aggregate_table,
    importance_table,
    improvement_table,
    per_task_table,
    ranked_trials_table,
)
from harness.signals import signals_deferred

__all__ = [
    "Report",
    "build_report",
    "build_runs_report",
    "check_bootstrap",
    "check_report_dir",
    "load_results",
]

DEFAULT_OUT = Path("runs") / "reports"
RUNS_NAME = "runs"  # the title, and the folder in DEFAULT_OUT, of a report of runs started by hand
CONFIDENCE = 0.95  # rliable's default interval size (get_interval_estimates, performance profiles)
# Bootstrap resamples: rliable's default for interval estimates (Agarwal et al. 2021, 50,000), used
# here for every statistic: its README draws 2,000 for probabilities of improvement and profiles
# only to save time, and one count keeps every interval equally precise. The bound is ten times
# that, as every resample of every statistic is kept in memory.
DEFAULT_REPS = 50_000
MAX_REPS = 500_000
# Probabilities of improvement are computed between the variants with the highest IQM only, at
# most this many (28 pairs): a 40-trial tune study would otherwise give 780 pairs.
MAX_COMPARED = 8
# Every file a report writes into its directory, where an earlier report's are replaced.
FIGURES = ("aggregates", "probability_of_improvement", "performance_profile", "sample_efficiency", "ablation",
           "parameter_importance")  # fmt: skip
BEST_CONFIG = "best_config.toml"  # a tune report's: the best trial's settings, for `run --config`
# Written first, so that a report stopped half-way (Ctrl-C in the bootstrap, out of memory) is
# known for one, and the next report replaces its files.
MARKER = ".gorl-report"
STAGING_DIR = ".gorl-report-in-progress"  # the report being written, moved into place at the end
REPORT_FILES = frozenset(
    {"summary.md", "tables.tex", "results.csv", BEST_CONFIG, MARKER}
    | {f"{name}.{kind}" for name in FIGURES for kind in ("png", "pdf")}
)
SUMMARY_TITLE = "# Report: "  # an earlier version's report, which wrote no marker


@dataclass(frozen=True)
class Report:
    out_dir: Path
    partial: bool
    missing: list[str]
    failed: list[tuple[str, str]]
    files: list[Path]
    notes: list[str] = field(default_factory=list)  # trimmed variants, an MLflow upload that failed


def build_report(
    study_name: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    progress: stats.Progress | None = None,
) -> Report:
    """Write the report of study `study_name` (see the module docstring) and return what was written.

    The intervals are a pure function of the results, `reps` and `seed`. `progress` is called
    with the number of bootstrap resamples done, as they are done.
    """

    check_bootstrap(reps, seed)
    out = Path(out_dir or DEFAULT_OUT / study_name)
    check_report_dir(out)
    return _write(load_study_results(study_name, storage, tracking_uri), out, reps, seed, progress)


def build_runs_report(
    run_dirs: list[Path],
    name: str = RUNS_NAME,
    out_dir: Path | None = None,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    progress: stats.Progress | None = None,
) -> Report:
    """`build_report` of runs started by hand, grouped into variants by configuration
    (`harness.report.runs`), under the title `name`; nothing is logged to MLflow."""

    check_bootstrap(reps, seed)
    out = Path(out_dir or DEFAULT_OUT / name)
    check_report_dir(out)
    return _write(load_run_results(run_dirs, name), out, reps, seed, progress)


def _write(results: StudyResults, out: Path, reps: int, seed: int, progress: stats.Progress | None) -> Report:
    """Write the report of `results` into `out` (see the module docstring)."""

    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by gorl-bench report: the report replaces its files here\n")
        staging = out / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)  # left by a process killed while writing
        staging.mkdir()
    except OSError as error:
        raise UserError(f"cannot write the report in {out}: {error.strerror}.") from None
    try:
        # Written aside, then moved in at once: a report stopped half-way (Ctrl-C in a long
        # bootstrap, a full disk) left its new files beside the earlier report's others.
        files, notes = _write_report(staging, results, reps, seed, progress)
        with signals_deferred():
            for path in files:
                os.replace(path, out / path.name)
            # An earlier report's files that this one does not write (a figure of a pair, where one
            # variant is left) would stay beside a summary that does not show them.
            for name in REPORT_FILES - {MARKER} - {path.name for path in files}:
                (out / name).unlink(missing_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot write the report in {out}: {error.strerror}; the earlier report there, if any, is kept."
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [out / path.name for path in files]
    if results.kind != RUNS_KIND:  # runs started by hand have no study run to attach it to
        notes += _log_artifacts(results, files)
    return Report(out, results.partial, results.missing, results.failed, files, notes)


def _write_report(
    directory: Path, results: StudyResults, reps: int, seed: int, progress: stats.Progress | None
) -> tuple[list[Path], list[str]]:
    """Compute the statistics and write every file of the report into `directory`; returns the
    files and the notes."""

    table = results.table.copy()
    table.insert(table.columns.get_loc("eval_return") + 1, "score", normalise(table))
    ends, finals, notes = _final_scores(table, results)
    # Every evaluation of every unit, also of runs that a trim leaves out of the statistics (notes)
    ends.to_csv(directory / "results.csv", index=False)
    files = [directory / "results.csv"]
    notes += _single_run_notes(finals)
    if results.not_run:
        notes.append(
            f"{count(len(results.not_run), 'unit')} never run: the spec's max_trials ends the study before "
            "them, so the report is complete without them"
        )
    options = {"reps": reps, "seed": seed, "confidence": CONFIDENCE, "progress": progress}
    sections: list[tuple[str, Table]] = []
    colors = figures.variant_colors(list(finals))

    aggregates, aggregate_cis = stats.interval_estimates(finals, stats.aggregates, **options)
    sections.append(
        ("Aggregate metrics of final normalised scores", aggregate_table(aggregates, aggregate_cis))
    )
    files += figures.save(
        figures.aggregates_figure(aggregates, aggregate_cis, colors), directory, "aggregates"
    )
    at = list(stats.AGGREGATES).index("IQM")
    ranked = sorted(finals, key=lambda variant: -aggregates[variant][at])
    if results.kind == "tune":
        first = ends.drop_duplicates("variant").set_index("variant")  # a trial whose units all diverged too
        params = {v: {name: first.at[v, name] for name in results.parameters} for v in ranked}
        iqms = {v: (aggregates[v][at], aggregate_cis[v][:, at]) for v in ranked}
        ranking = ranked_trials_table(iqms, params)
        sections.append(("Trials ranked by final IQM (the tune objective)", ranking))
        files.append(_write_best_config(directory, results, ranked[0]))
        best = directory.parent / BEST_CONFIG  # where it ends up: `directory` is the report's staging one
        notes.append(
            f"the settings of {ranked[0]}, the trial with the highest final IQM, are in {best}: "
            f"`gorl-bench run --config {shlex.quote(str(best))} --task TASK` trains with them"
        )
        scores = {v: float(aggregates[v][at]) for v in ranked if v in results.search_points}
        shares = parameter_importance(scores, results.search_points, seed)
        if shares:
            heading = f"Parameter importance (fANOVA, over the final IQM of {len(scores)} trials)"
            sections.append((heading, importance_table(shares)))
            files += figures.save(figures.importance_figure(shares), directory, "parameter_importance")
        else:
            notes.append("parameter importance: needs two or more trials whose final IQMs differ")

    compared = ranked[:MAX_COMPARED]
    if len(ranked) > MAX_COMPARED:
        notes.append(
            f"probability of improvement: between the {MAX_COMPARED} variants with the highest IQM "
            f"({len(ranked)} in all)"
        )
    pairs = {
        f"{x}{stats.PAIR_SEPARATOR}{y}": (finals[x], finals[y])
        for x, y in itertools.combinations(compared, 2)
    }
    if pairs:
        improvements, improvement_cis = stats.interval_estimates(
            pairs, stats.probability_of_improvement, **options
        )
        sections.append(("Probability of improvement", improvement_table(improvements, improvement_cis)))
        files += figures.save(
            figures.improvement_figure(improvements, improvement_cis), directory, "probability_of_improvement"
        )

    # Thresholds from 0 to the best normalised score (at least 1), in steps of 1% of that range.
    taus = np.linspace(0.0, max(1.0, max(float(a.max()) for a in finals.values())), 101)
    profiles, profile_cis = stats.interval_estimates(finals, stats.performance_profile(taus), **options)
    files += figures.save(
        figures.profile_figure(taus, profiles, profile_cis, colors), directory, "performance_profile"
    )

    steps, curves, _ = curve_arrays(table, results.tasks)
    notes += _curve_notes(finals, curves) + held_curve_notes(table, steps)
    if curves:
        iqm_curves, iqm_curve_cis = stats.interval_estimates(curves, stats.iqm_curve, **options)
        files += figures.save(
            figures.sample_efficiency_figure(steps, iqm_curves, iqm_curve_cis, colors),
            directory,
            "sample_efficiency",
        )

    sections.append(("Final return per task (mean ± std over seeds)", per_task_table(ends, results.tasks)))
    panels = _ablations(results, ends, finals, options) if results.kind == "grid" else {}
    if panels:
        sections += [
            (f"Ablation of {name}: final IQM", ablation_table(*panel, name)) for name, panel in panels.items()
        ]
        files += figures.save(figures.ablation_figure(panels), directory, "ablation")

    files += _write_tables(directory, results, sections, notes, files, reps, seed)
    return files, notes


def _final_scores(
    table: pd.DataFrame, results: StudyResults
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """(the rows of every unit's end, each variant's final-score array, notes on what was left out).

    The ends are the finished units' evaluations and the diverged units at their task's worst
    score (marked `diverged`): a diverged seed is the method's failure, and leaving it out would
    flatter it.
    """

    ends, diverged = table.assign(diverged=False), results.diverged
    if len(diverged):
        scored = diverged.assign(score=normalise(diverged), diverged=True)[ends.columns]
        # pandas deprecates concatenating an empty frame (every unit diverged): its columns' dtypes
        # would start to count, so the diverged rows alone are the ends then.
        ends = pd.concat([ends, scored], ignore_index=True) if len(ends) else scored.reset_index(drop=True)
    if results.variant_order:  # a variant whose every unit diverged keeps its place, not the last
        place = {variant: i for i, variant in enumerate(results.variant_order)}
        ends = ends.sort_values("variant", key=lambda v: v.map(place), kind="stable", ignore_index=True)
    finals, notes = final_score_arrays(ends, results.tasks)
    notes = [
        f"{task}: no finished run of any variant; the statistics cover {', '.join(results.tasks)} only"
        for task in results.tasks_without_results
    ] + notes
    if len(diverged):
        units = ", ".join(f"{row.variant}|{row.task}|seed{row.seed}" for row in diverged.itertuples())
        notes.append(
            f"{count(len(diverged), 'diverged unit')} counted with the task's worst score in the final-score "
            f"statistics and tables, without a curve: {units}"
        )
    if not finals:
        if results.kind == RUNS_KIND:  # runs started by hand: no study will add the missing ones
            subject, advice = "of the runs given", "Give each variant a finished run on every task."
        else:
            subject, advice = f"of study {results.study!r}", "Report again when more units are done."
        raise UserError(
            f"no variant {subject} has a finished run on every task yet; " + "; ".join(notes) + ". " + advice
        )
    return ends, finals, notes


def _curve_notes(finals: dict[str, np.ndarray], curves: dict[str, np.ndarray]) -> list[str]:
    """Where the curves hold fewer runs than the final scores: diverged units count in the final
    scores but have no curve, so a variant's curves may use fewer runs per task, or none."""

    fewer = [variant for variant, runs in curves.items() if runs.shape[0] < finals[variant].shape[0]]
    none = [variant for variant in finals if variant not in curves]
    notes = []
    if fewer:
        shown = ", ".join(fewer)
        notes.append(f"sample-efficiency curves: fewer runs per task than the final scores for {shown}")
    if none:
        notes.append(
            f"sample-efficiency curves: none for {', '.join(none)} (on some task every run of it diverged)"
        )
    if not curves:
        notes.append("no sample-efficiency figure: no variant has a finished run on every task")
    return notes


def _single_run_notes(finals: dict[str, np.ndarray]) -> list[str]:
    """A note when some variant has one run per task: resampling its runs always draws that run, so
    its intervals have zero width (`0.023 [0.023, 0.023]`), which reads as certainty, not as
    "unknown"."""

    single = [variant for variant, runs in finals.items() if runs.shape[0] < 2]
    if not single:
        return []
    which = "every variant has" if len(single) == len(finals) else f"{', '.join(single)} have"
    return [
        f"{CONFIDENCE:.0%} intervals need at least 2 runs (seeds) per task and configuration; {which} 1, "
        "so the intervals shown for them are degenerate (zero width), not a measure of uncertainty"
    ]


def check_report_dir(out: Path) -> None:
    """Refuse an output directory where the report would replace files it did not write (a
    report replaces an earlier report's files: its marker, or its summary.md, says so), and a run
    directory."""

    from harness.checkpoint import CHECKPOINT_NAME

    summary = out / "summary.md"
    try:
        run_directory = (out / CHECKPOINT_NAME).is_file()
        clashing = sorted(name for name in REPORT_FILES if (out / name).exists())
        earlier = (out / MARKER).is_file()
        if not earlier and summary.is_file():
            with summary.open(errors="replace") as text:
                earlier = text.readline().startswith(SUMMARY_TITLE)
    except OSError as error:
        raise UserError(f"cannot check the report directory {out}: {error.strerror}.") from None
    if run_directory:  # as for `evaluate --json`: a run directory holds the run's files only
        raise UserError(
            f"{out} is a run directory (it holds {CHECKPOINT_NAME}); give another --out directory."
        )
    if clashing and not earlier:
        raise UserError(
            f"{out} holds {', '.join(clashing)}, which the report would replace, and no earlier report "
            "(the only files a report replaces). Give another --out directory, or move these files."
        )


def check_bootstrap(reps: int, seed: int) -> None:
    """Refuse bootstrap settings that cannot give the report's intervals (also checked by `demo`
    before its study runs, so that a typo does not cost the whole study)."""

    if reps < 100:
        raise UserError(f"--reps must be at least 100 for 95% intervals, got {reps}.")
    if reps > MAX_REPS:
        raise UserError(
            f"--reps must be at most {MAX_REPS:,} (every resample of every statistic is kept in memory, and "
            f"the report's default {DEFAULT_REPS:,} makes the resampling error small), got {reps:,}."
        )
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer (it seeds numpy's bootstrap), got {seed}.")


def _ablations(
    results: StudyResults, table: pd.DataFrame, finals: dict[str, np.ndarray], options: dict[str, Any]
) -> dict[str, tuple[dict[str, float], dict[str, np.ndarray]]]:
    """(points, intervals) of the final IQM at each value of each swept parameter, values in order."""

    first = table.drop_duplicates("variant").set_index("variant")
    panels = {}
    for name in results.parameters:
        # None: a configuration that does not set the parameter. Values are pooled by their text,
        # so that list values (unhashable) work too, and ordered by the values themselves.
        raw = {variant: value for variant, value in first[name].items() if value is not None}
        texts = {variant: str(value) for variant, value in sorted(raw.items()) if variant in finals}
        # Runs pooled in the order of their variants' labels, and each value's stream named by
        # them: the intervals do not depend on the order of the trials, and a value that holds one
        # configuration gets that configuration's IQM interval of the aggregate table.
        pooled = pooled_by_value({variant: finals[variant] for variant in texts}, texts)
        streams = {
            text: " + ".join(variant for variant, value in texts.items() if value == text) for text in pooled
        }
        order = sorted({str(value): value for value in raw.values()}.items(), key=lambda kv: _sort_key(kv[1]))
        ordered = {label: pooled[label] for label, _ in order if label in pooled}
        if ordered:
            panels[name] = stats.interval_estimates(ordered, stats.iqm, **options, streams=streams)
    return panels


def _sort_key(value: object) -> tuple:
    # Numbers in numeric order, then anything else by its text.
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return (0, float(value), "") if numeric else (1, 0.0, str(value))


def _write_tables(
    out: Path,
    results: StudyResults,
    sections: list[tuple[str, Table]],
    notes: list[str],
    files: list[Path],
    reps: int,
    seed: int,
) -> list[Path]:
    import envs

    title = f"{SUMMARY_TITLE}{results.study} ({results.kind})" + (" — PARTIAL" if results.partial else "")
    ranges = ", ".join(f"{task} {envs.score_range(task)}" for task in results.tasks)
    lines = [
        title,
        "",
        f"Normalised score = (return - worst) / (best - worst), with each task's (worst, best): {ranges}. "
        f"{CONFIDENCE:.0%} stratified bootstrap intervals over seeds, {reps} resamples, seed {seed}. "
        f"Tasks: {', '.join(results.tasks)}. {_evaluation_note(results)}",
        "",
    ]
    for heading, table in sections:
        lines += [f"## {heading}", "", table.markdown(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{path.stem}]({path.name})" for path in files if path.suffix == ".png"]
    noun = "runs" if results.kind == RUNS_KIND else "units"
    lines += ["", f"## Missing {noun} ({len(results.missing)})", ""]
    lines += [f"- {unit}" for unit in results.missing] or ["none"]
    if results.kind != RUNS_KIND:  # a run given by hand is finished, missing or diverged: none failed
        lines += ["", f"## Failed units ({len(results.failed)})", ""]
        lines += [f"- {unit}: {reason}" for unit, reason in results.failed] or ["none"]
    if results.kind == "tune":
        lines += ["", f"## Pruned trials ({len(results.pruned)}), left out of the statistics", ""]
        lines += [f"- {trial}" for trial in results.pruned] or ["none"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    latex = "\n".join(table.latex(f"{results.study}: {heading}") for heading, table in sections)
    (out / "tables.tex").write_text(latex)
    return [out / "summary.md", out / "tables.tex"]


def _write_best_config(directory: Path, results: StudyResults, trial: str) -> Path:
    """`trial`'s settings as a config file of `run --config`: its algorithm and the study's preset,
    and its config values. The [run] table names no task, so every value applies as written on
    whichever task the run trains (`harness.config_file`)."""

    from harness.tracking import to_toml

    algo, overrides = results.configs[trial]
    path = directory / BEST_CONFIG
    head = f"# {trial} of study {results.study}, the trial with the highest final IQM\n"
    path.write_text(head + to_toml({"run": {"algo": algo, "preset": results.preset}, "config": overrides}))
    return path


def _evaluation_note(results: StudyResults) -> str:
    """How the scores were evaluated: mean (noise-free) actions, as the paper evaluates PPO and
    GoRL, or sampled ones (`eval_noise = "sample"`: FPO's and DPPO's default)."""

    sampled = results.sampled_variants
    if not sampled:
        return "Evaluation: each policy's noise-free action (eval_noise = zero)."
    variants = set(results.table["variant"])
    if variants <= set(sampled):
        return "Evaluation: sampled actions (eval_noise = sample) for every variant."
    named = ", ".join(variant for variant in sorted(variants) if variant in sampled)
    return f"Evaluation: sampled actions (eval_noise = sample) for {named}; the noise-free action elsewhere."


def _log_artifacts(results: StudyResults, files: list[Path]) -> list[str]:
    """Attach the report's `files` to the study's MLflow parent run, in place of an earlier
    report's; a failure is a note, not an error. The files one by one, not `out` as a whole:
    whatever else `--out` holds (a run's checkpoint, even the artifact store itself, which was
    then copied into itself until the paths grew too long) is no part of this report."""

    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    run_id = results.parent_run_id
    if not run_id:
        return ["the study has no MLflow parent run; the report was not logged to MLflow"]
    try:
        client = MlflowClient(tracking_uri=results.tracking_uri)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="report")
    except (MlflowException, OSError) as error:
        return [f"logging the report to MLflow run {run_id} failed: {error}"]
    try:  # after the upload, which a store that cannot delete must not block
        written = {f"report/{path.name}" for path in files}
        earlier = {item.path for item in client.list_artifacts(run_id, "report")} - written
        if earlier:
            # With the study's tracking URI: a server's `mlflow-artifacts:` URI resolves through it.
            artifact_uri = client.get_run(run_id).info.artifact_uri
            repository = get_artifact_repository(artifact_uri, tracking_uri=results.tracking_uri)
            for path in sorted(earlier):
                if Path(path).name in REPORT_FILES:
                    repository.delete_artifacts(path)
    except (MlflowException, OSError, NotImplementedError) as error:
        return [f"the earlier report's files in MLflow run {run_id} that this one replaces stay: {error}"]
    return []
