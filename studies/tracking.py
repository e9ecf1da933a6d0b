"""The Optuna -> MLflow adapter: a study is one MLflow parent run, each unit a nested child run.

Optuna's own MLflowCallback is deprecated, and it cannot nest per-seed runs anyway. This
adapter talks to MLflow through an explicit `MlflowClient` (never the process-global "active
run"), because the run harness logs the unit's own run in the same process.

The coordinating process calls `prepare_study_tracking` before any worker starts: the first
use of an SQLite tracking store creates its schema, and two workers doing that at once fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from harness.progress import count
from studies.spec import Spec
from studies.status import StudyStatus, unit_noun

# MLflow's UI shows this tag as the run's description.
NOTE_TAG = "mlflow.note.content"


def study_tags(spec: Spec) -> dict[str, str]:
    """The tags of a study's parent run: its kind, and its description as the run's note."""

    return {"gorl.kind": spec.kind, **({NOTE_TAG: spec.description} if spec.description else {})}


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def prepare_study_tracking(
    tracking_uri: str, spec: Spec, parent_run_id: str | None = None
) -> tuple[str, str]:
    """Create (or find) the study's experiment and parent run; returns (experiment id, parent run id).

    `parent_run_id` is the run recorded by an earlier `study run` of the same study; it is
    reused so that a resumed study keeps one parent, and its tags are set again (a study resumes
    under an edited description, which becomes the run's note).
    """

    from harness.tracking import RunTracker, check_run_continuable

    tags = study_tags(spec)
    if parent_run_id is None:
        # The run harness's own start: the experiment it creates (named after the study, which the
        # units log to as well) keeps its artifacts where every run's go, mlartifacts/ next to
        # an SQLite store, not ./mlruns of whichever directory the coordinator runs in.
        tags = {"gorl.role": "study", **tags}
        parent_run_id = RunTracker.start(tracking_uri, spec.name, spec.name, None, tags).run_id
    else:
        # A store that has moved, or a parent run deleted in the UI, is named before any unit runs:
        # each unit would otherwise fail on it, and MLflow would create an empty store in its place.
        # Reopened as a run is resumed: running again, its tags set, an earlier close's status_reason
        # ("units failed", before a --retry-failed) removed.
        RunTracker.reopen(tracking_uri, check_run_continuable(tracking_uri, parent_run_id), tags)
    return _client(tracking_uri).get_run(parent_run_id).info.experiment_id, parent_run_id


def start_trial_run(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    study_name: str,
    number: int,
    params: Mapping[str, Any],
) -> str:
    """A tune trial's own run, nested under the study; its units nest under it in turn."""

    client = _client(tracking_uri)
    run = client.create_run(
        experiment_id,
        run_name=f"trial-{number}",
        tags={"mlflow.parentRunId": parent_run_id, "gorl.role": "trial", **_optuna_tags(study_name, number)},
    )
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def log_trial_step(tracking_uri: str, run_id: str, objective: float, step: int) -> None:
    _client(tracking_uri).log_metric(run_id, "objective", objective, step=step)


def tag_unit_run(tracking_uri: str, run_id: str, study_name: str, number: int, state: str) -> None:
    """Link a unit's run (created by the run harness) back to its Optuna trial."""

    client = _client(tracking_uri)
    for key, value in {**_optuna_tags(study_name, number), "optuna.state": state}.items():
        client.set_tag(run_id, key, value)


def note_reused_units(tracking_uri: str, trial_run_id: str, reused: list[str]) -> None:
    """Record on a tune trial's run which of its units are finished runs of an earlier trial of
    the same configuration ("unit = run id", one per line), nested under that trial's run."""

    _client(tracking_uri).set_tag(trial_run_id, "gorl.reused_units", "\n".join(reused))


def close_study_run(tracking_uri: str, run_id: str, status: StudyStatus) -> None:
    """Close the MLflow run of a study with nothing left to run: FINISHED, or FAILED with the count
    in its status_reason when some units failed (`study run` then exits 1, too)."""

    if status.failed:
        noun = unit_noun(status.kind)
        reason = f"{count(status.failed, noun)} failed; `gorl-bench study status {status.name}` lists them"
        _client(tracking_uri).set_tag(run_id, "status_reason", reason)
    finish_run(tracking_uri, run_id, "FAIL" if status.failed else "COMPLETE")


def stop_study_run(tracking_uri: str, run_id: str) -> None:
    """Mark KILLED the MLflow run of a study whose `study run` was stopped (Ctrl-C), which its next
    `study run` sets running again. Best effort: the store may be what the interrupt cut short."""

    with contextlib.suppress(Exception):  # the interrupt, not this write, is what the user sees
        _client(tracking_uri).set_terminated(run_id, status="KILLED")


def discard_run(tracking_uri: str, run_id: str) -> None:
    """Delete a run that lost a race to be the study's (restorable, as any deleted run, until the
    store's garbage collection)."""

    _client(tracking_uri).delete_run(run_id)


def finish_run(tracking_uri: str, run_id: str, state: str, value: float | None = None) -> None:
    """Close a trial or study run with the Optuna state it ended in."""

    client = _client(tracking_uri)
    client.set_tag(run_id, "optuna.state", state)
    if value is not None:
        client.log_metric(run_id, "objective_final", value)
    client.set_terminated(run_id, status={"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))


def close_orphan_runs(
    tracking_uri: str,
    experiment_id: str,
    *,
    unit: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> None:
    """Mark KILLED the runs that a killed worker left RUNNING: those of `unit` (its key), the run
    `run_id`, and the runs nested under `parent_run_id`.

    Called when a lost unit is retried, so `mlflow ui` does not show it running forever.
    """

    from harness.tracking import kill_running_runs

    wanted = {"run_id": run_id, "gorl.unit": unit, "mlflow.parentRunId": parent_run_id}

    def orphan(run: Any) -> bool:
        found = {**run.data.tags, "run_id": run.info.run_id}
        return any(value is not None and found.get(key) == value for key, value in wanted.items())

    kill_running_runs(tracking_uri, experiment_id, orphan)


def _optuna_tags(study_name: str, number: int) -> dict[str, str]:
    return {"optuna.study": study_name, "optuna.trial": str(number)}
