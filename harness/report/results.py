"""Load a study's results: its Optuna trials joined with their MLflow runs, as one tidy table.

Data contract (what `gorl-bench study run` and its workers write; this module reads nothing else):

Optuna study, in `--storage` (default the journal file `runs/studies.journal`; a value with
`://` is an RDB URL such as sqlite:///... or postgresql://...). Study user attrs:
  spec                  the study spec as a dict: name, kind in {grid, compare, tune}, tasks, ...
  tracking_uri          the MLflow store of the study's runs
  mlflow_experiment_id  its MLflow experiment
  mlflow_parent_run_id  the study's parent run (the report's artifacts go there)
  units_expected        unit keys of a grid or compare study ("variant|task|seedN")
  swept                 names of the parameters a grid study varies

Trial user attrs, grid and compare studies (one trial = one unit = configuration x task x seed):
  unit, variant, algo, task, seed (the seed index, an int), params (the unit's config overrides,
  swept ones included), mlflow_run_id; FAILED trials carry fail_reason.
Tune studies: one trial = one sampled configuration (variant "trial-<number>"); its user attr
  `units` lists one record per finished unit with the same keys (unit, variant, algo, task,
  seed, params, mlflow_run_id) and its normalised `score` (which a retry of the trial reuses);
  a unit that diverged is marked `diverged` (its score: 0, the task's worst). The trial's own
  Optuna params and distributions (what its worker sampled) give the parameter importance.
  A trial without `units` is read as a single unit record.

Trials left out: lost attempts (a FAILED trial whose worker died, marked `lost` or without a
fail_reason, always re-enqueued), failed trials that a rerun replaced (`study run
--retry-failed` or `--retry-diverged`) and duplicates (`duplicate_of`). Pruned tune trials are left
out too: their configuration was stopped early by design and has not run on every task.

MLflow: each unit's run has the metric history `eval/return_mean` (and `eval/return_std`) with
step = counted env steps; every point is already the mean over that evaluation's episodes, so
the runs axis of the statistics holds independent seeds only. A unit's final score is its last
evaluation.

The table has one row per (unit, evaluation): study, variant, algo, task, seed, env_step,
eval_return, then one column per swept parameter (grid) or searched parameter (tune).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from harness.errors import UserError
from harness.progress import count
from harness.tracking import open_store
from studies.storage import DIVERGED, counted_trials, failure_kind, in_claim_order, trial_label

RETURN_METRIC = "eval/return_mean"
COLUMNS = ["study", "variant", "algo", "task", "seed", "env_step", "eval_return"]


@dataclass(frozen=True)
class StudyResults:
    """Everything the report needs to know about one study."""

    study: str
    kind: str
    table: pd.DataFrame
    missing: list[str]  # units (tune: trials) not finished yet
    not_run: list[str]  # grid / compare units that the spec's `max_trials` keeps from ever running
    failed: list[tuple[str, str]]  # (unit or trial, reason)
    parameters: list[str]  # parameter columns of `table`
    tracking_uri: str
    parent_run_id: str | None
    tasks: list[str]  # the spec's tasks that have results, in spec order
    tasks_without_results: list[str]  # the spec's tasks on which no unit has finished
    pruned: list[str]  # tune: each pruned trial, how far it got
    # Units whose training diverged: a result, scored at the task's worst return
    # at the end of the budget (rows like `table`'s); they have no curve.
    diverged: pd.DataFrame
    # Variants (tune: trials) whose evaluation plays sampled actions (`eval_noise = "sample"`);
    # the others' plays each policy's noise-free action.
    sampled_variants: list[str] = field(default_factory=list)
    # Tune: each finished trial's Optuna (params, distributions), what its worker sampled.
    search_points: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    # Each variant's algorithm and config overrides (a tune trial's: `[fixed]` and the sampled
    # values), and the study's preset: what `run --config` needs to train a variant again.
    configs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # The order of the variants in the report's tables and figures (a grid or compare study's: its
    # plan's; runs by hand: that of their first run given); empty: that of their first rows, those
    # of `table` before `diverged`'s.
    variant_order: list[str] = field(default_factory=list)
    preset: str = "cpu"

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def load_results(
    study_name: str, storage: str | None = None, tracking_uri: str | None = None
) -> tuple[pd.DataFrame, list[str], list[tuple[str, str]]]:
    """The study's tidy table, its missing units and its failed (unit, reason) pairs.

    `storage` and `tracking_uri` default to the embedded journal and the study's own store.
    """

    results = load_study_results(study_name, storage, tracking_uri)
    return results.table, results.missing, results.failed


def load_study_results(
    study_name: str, storage: str | None = None, tracking_uri: str | None = None
) -> StudyResults:
    """`load_results` with the study's metadata (kind, parameters, tasks, MLflow parent run)."""

    import envs
    from studies.spec import parse_spec

    study = open_study(study_name, storage)
    attrs = study.user_attrs
    spec = attrs["spec"]
    kind = spec["kind"]
    parameters = list(attrs.get("swept") or []) if kind != "tune" else list(spec.get("space", {}))
    given_uri = tracking_uri or attrs["tracking_uri"]
    uri = _tracking_uri(given_uri)
    client = open_store(uri)

    # The spec's tasks in their canonical names (the units' names): a spec may write an alias.
    parsed = parse_spec(spec, check_configs=False)
    spec_tasks = parsed.tasks
    trials = counted_trials(study.get_trials(deepcopy=False))
    tally = _TrialTally(study_name, kind, parameters, len(spec_tasks) * parsed.seeds, client)
    for trial in trials:
        tally.add(trial)

    if kind == "tune":
        settled = sum(t.state.is_finished() for t in trials)
        left = (spec.get("max_trials") or 0) - settled - len(tally.unfinished)
        missing = tally.unfinished + ([f"{count(left, 'trial')} not started"] if left > 0 else [])
        not_run = []
    else:
        settled = tally.done | set(tally.failed)
        missing = [unit for unit in attrs.get("units_expected", []) if unit not in settled]
        not_run = _beyond_trial_limit(missing, trials, spec.get("max_trials"))
        never = set(not_run)
        missing = [unit for unit in missing if unit not in never]
    failed_units = [(unit, reason) for unit, reason in tally.failed.items() if unit not in tally.done]
    if not tally.rows and tally.looked_up and not any(_run_exists(uri, run_id) for run_id in tally.looked_up):
        # Not the units' failure: the store is the wrong one (a mistyped --tracking-uri, another
        # project's store, or a study's recorded store replaced by a fresh one).
        recorded = f"the study recorded {attrs['tracking_uri']}" if tracking_uri else "the study recorded it"
        raise UserError(
            f"the MLflow store {given_uri} has none of the {len(tally.looked_up)} runs of study "
            f"{study_name!r}'s finished units ({recorded}); check --tracking-uri: pass the store the study "
            "ran with."
        )
    # A study whose finished units all diverged is reported: a divergence is a result (scored as
    # its task's worst), unlike an error, which leaves nothing to report.
    if not tally.rows and not tally.diverged:
        if failed_units and not missing:  # nothing left to run: resuming would change nothing
            from studies.status import study_status

            reasons = "; ".join(f"{unit}: {reason}" for unit, reason in failed_units[:3])
            # What `study run` advises for these kinds of failure (an error, a divergence, an
            # invalid sampled combination), after its first line, which counts them.
            advice = " ".join(study_status(study).advice("gorl-bench study run SPEC")[1:])
            raise UserError(
                f"every unit of study {study_name!r} failed ({len(failed_units)}; {reasons}). {advice} "
                "Then report again."
            )
        raise UserError(
            f"study {study_name!r} has no finished unit with evaluations yet ({len(missing)} missing, "
            f"{len(failed_units)} failed); run or resume it with `gorl-bench study run`, then report again."
        )
    diverged_rows = [
        _row(study_name, record, parameters, parsed.steps, envs.score_range(record["task"])[0])
        for unit, record in tally.diverged.items()
        if unit not in tally.done
    ]
    if kind != "tune":
        # In the plan's order of the units, not in their trials': a unit retried after its worker
        # was lost has a later trial, and the report's rows (and the order of the variants in its
        # tables) would otherwise depend on where a study was interrupted.
        plan = {unit: position for position, unit in enumerate(attrs.get("units_expected", []))}
        for rows in (tally.rows, diverged_rows):
            rows.sort(key=lambda row: plan.get(row["unit"], len(plan)))  # stable: steps stay in order
    table = _frame(tally.rows, parameters)
    diverged = _frame(diverged_rows, parameters)
    # A task whose every unit diverged stays: its units count with its worst score, as elsewhere.
    present = set(table["task"]) | set(diverged["task"])
    tasks = [task for task in spec_tasks if task in present] or sorted(present)
    return StudyResults(
        study=study_name,
        kind=kind,
        table=table,
        missing=missing,
        not_run=not_run,
        failed=failed_units,
        parameters=parameters,
        tracking_uri=uri,
        parent_run_id=attrs.get("mlflow_parent_run_id"),
        tasks=tasks,
        tasks_without_results=[task for task in spec_tasks if task not in present],
        pruned=tally.pruned,
        diverged=diverged,
        sampled_variants=_sampled_variants(tally.configs, parsed.preset),
        search_points=tally.search_points,
        configs={variant: (algo, params) for variant, (algo, _, params) in tally.configs.items()},
        preset=parsed.preset,
        variant_order=list(dict.fromkeys(unit.rsplit("|", 2)[0] for unit in attrs.get("units_expected", []))),
    )


def _sampled_variants(configs: dict[str, tuple[str, str, dict[str, Any]]], preset: str) -> list[str]:
    """The variants among `configs` (variant -> (algo, task, overrides)) whose resolved config
    evaluates sampled actions: FPO's and DPPO's default, PPO's and GoRL's with `eval_noise`."""

    import algorithms
    from algorithms.config import resolve

    sampled = []
    for variant, (algo, task, params) in configs.items():
        try:
            config = resolve(algorithms.get(algo), preset, task, dict(params))
        except UserError:  # a unit of another version's settings: not this report's to judge
            continue
        if getattr(config, "eval_noise", "zero") == "sample":
            sampled.append(variant)
    return sampled


def _beyond_trial_limit(missing: list[str], trials: list[Any], max_trials: int | None) -> list[str]:
    """The missing units of a grid or compare study that its `max_trials` keeps from running.

    Workers start units until `max_trials` of the counted trials have started, taking the waiting
    ones in the order they claim them (units not enqueued yet come after them); the waiting units
    past what is left of the limit never run, so the study is complete without them. A unit whose
    trial has started (running, or stopped and to be retried) is not among them.
    """

    if max_trials is None:
        return []
    waiting = [
        t.user_attrs.get("unit") for t in in_claim_order([t for t in trials if t.state == TrialState.WAITING])
    ]
    left = max(max_trials - (len(trials) - len(waiting)), 0)
    enqueued, pending = {t.user_attrs.get("unit") for t in trials}, set(missing)
    queue = waiting + [unit for unit in missing if unit not in enqueued]
    return [unit for unit in queue[left:] if unit in pending]


@dataclass
class _TrialTally:
    """The counted trials of a study read one by one (see the module's data contract): finished
    units' evaluation rows, failures, pruned and unfinished tune trials, diverged units."""

    study_name: str
    kind: str
    parameters: list[str]
    units_per_trial: int
    client: Any  # the MLflow store of the units' runs
    rows: list[dict[str, Any]] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # units with evaluations
    failed: dict[str, str] = field(default_factory=dict)  # unit or trial -> reason
    unfinished: list[str] = field(default_factory=list)  # tune trials running or waiting
    pruned: list[str] = field(default_factory=list)
    diverged: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit -> its record
    looked_up: list[str] = field(default_factory=list)  # MLflow run ids of finished units
    # variant -> (algo, task, config overrides) of its first finished or diverged unit
    configs: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    search_points: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)  # tune

    def add(self, trial: Any) -> None:
        if trial.state == TrialState.FAIL:
            self.failed[trial_label(trial)] = trial.user_attrs.get("fail_reason", "no reason recorded")
            if self.kind != "tune" and failure_kind(trial) == DIVERGED and "task" in trial.user_attrs:
                self.diverged[trial.user_attrs["unit"]] = trial.user_attrs
                self._add_config(trial.user_attrs)
        elif trial.state == TrialState.COMPLETE:
            if self.kind == "tune" and "variant" in trial.user_attrs:
                self.search_points[trial.user_attrs["variant"]] = (trial.params, trial.distributions)
            for record in trial.user_attrs.get("units") or [trial.user_attrs]:
                self._add_config(record)
                if record.get("diverged"):  # a tune trial's unit, scored at its task's worst
                    self.diverged[record["unit"]] = record
                    continue
                run_id = record.get("mlflow_run_id")
                self.looked_up += [run_id] if run_id else []
                history = _return_history(self.client, run_id)
                if not history:
                    self.failed[record["unit"]] = f"no {RETURN_METRIC} history in MLflow run {run_id}"
                    continue
                self.done.add(record["unit"])
                self.rows += [
                    _row(self.study_name, record, self.parameters, step, value) for step, value in history
                ]
        elif trial.state == TrialState.PRUNED:
            done_units = len(trial.user_attrs.get("units") or [])
            so_far = f", IQM so far {trial.value:.3f}" if trial.value is not None else ""
            self.pruned.append(
                f"{trial_label(trial)}: after {done_units} of {self.units_per_trial} units{so_far}"
            )
        elif trial.state in (TrialState.RUNNING, TrialState.WAITING) and self.kind == "tune":
            variant = trial.user_attrs.get("variant", f"trial-{trial.number}")
            self.unfinished.append(f"{variant} ({trial.state.name.lower()})")

    def _add_config(self, record: dict[str, Any]) -> None:
        """Note the variant's config from a unit's record: a diverged unit's too, as it is ranked."""

        config = (record["algo"], record["task"], record.get("params") or {})
        self.configs.setdefault(record["variant"], config)


def open_study(study_name: str, storage: str | None) -> Any:
    """Load a study without creating anything: a storage that does not exist is an error."""

    from studies.worker import load_study

    study = load_study(study_name, storage)
    if not study.get_trials(deepcopy=False):
        raise UserError(f"study {study_name!r} has no trials yet; start it with `gorl-bench study run`.")
    if "spec" not in study.user_attrs:
        raise UserError(
            f"study {study_name!r} was not created by `gorl-bench study run` (it has no `spec` attribute), "
            "so its units cannot be matched to MLflow runs."
        )
    return study


def _tracking_uri(uri: str) -> str:
    from harness.tracking import resolve_tracking_uri, sqlite_store_missing

    if sqlite_store_missing(uri):
        raise UserError(
            f"the MLflow store {uri} does not exist on this machine; pass the study's store with "
            "--tracking-uri."
        )
    return resolve_tracking_uri(uri)  # as the study's runs were logged: with the installed driver


def _run_exists(tracking_uri: str, run_id: str) -> bool:
    from harness.tracking import check_run_exists

    try:
        check_run_exists(tracking_uri, run_id)
    except UserError:
        return False
    return True


def _return_history(client: Any, run_id: str | None) -> list[tuple[int, float]]:
    """(env step, mean return) of each evaluation, in step order; the latest value wins at a repeated step."""

    from mlflow.exceptions import MlflowException

    if not run_id:
        return []
    try:
        metrics = client.get_metric_history(run_id, RETURN_METRIC)
    except MlflowException:
        return []
    by_step = {m.step: m.value for m in sorted(metrics, key=lambda m: (m.step, m.timestamp))}
    return sorted(by_step.items())


def _frame(rows: list[dict[str, Any]], parameters: list[str]) -> pd.DataFrame:
    """Rows of `_row` as a table whose parameter columns keep each value as the spec wrote it
    (object columns): pandas would turn an int next to a float or a missing value (a
    configuration that does not set the parameter) into a float, and values are pooled by their
    text in the ablations, where 0 and 0.0 would then be two values."""

    table = pd.DataFrame(rows, columns=COLUMNS + parameters)
    for name in parameters:
        table[name] = pd.Series([row[name] for row in rows], index=table.index, dtype=object)
    return table


def _row(
    study: str, record: dict[str, Any], parameters: list[str], step: int, value: float
) -> dict[str, Any]:
    params = record.get("params") or {}
    return {
        "unit": record["unit"],  # to order the rows by; not a column of the table
        "study": study,
        "variant": record["variant"],
        "algo": record["algo"],
        "task": record["task"],
        "seed": int(record["seed"]),
        "env_step": int(step),
        "eval_return": float(value),
        **{name: params.get(name) for name in parameters},
    }
