"""`gorl-bench run` end to end on the toy task: MLflow records, determinism, resume after SIGKILL,
failures and bad input."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_state
from hangs import alarm_after
from interrupts import interrupted_inside_a_c_extension_import
from mlflow.tracking import MlflowClient

import algorithms
from harness.checkpoint import checkpoint_path, hold_run_directory, load_checkpoint
from harness.cli import main
from harness.errors import UserError
from harness.run import RunRequest, execute, load_run, resolve_device, resume
from harness.signals import interrupt
from harness.tracking import RunTracker, machine_changes, machine_tags, resolve_tracking_uri

TOY = "toy-bimodal"
# Small PPO updates (16 envs x 16 steps, 2 epochs): the harness, not learning, is under test.
SMALL = {"num_envs": 16, "rollout_steps": 16, "epochs": 2, "eval_points": 4}
TINY = {"steps": 4 * 16 * 16, "overrides": SMALL}


def sets(overrides: dict) -> list[str]:
    """`--set key=value` arguments for the CLI."""

    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def request(tmp_path: Path, tracking_uri: str, **changes) -> RunRequest:
    fields = {
        "algo": "ppo",
        "task": TOY,
        "seed": 0,
        "out_dir": tmp_path / "run",
        "tracking_uri": tracking_uri,
    }
    return RunRequest(**{**fields, **TINY, **changes})


@pytest.mark.parametrize("algo", ["ppo", "fpo", "gorl-fm"])
def test_training_does_not_depend_on_when_the_run_is_evaluated(tmp_path, tracking_uri, algo):
    """A run evaluated 4 times and one evaluated once end in the same state: evaluations play
    their own envs and draw from their own generator (FPO's evaluation draws noise). GoRL-FM's `cpu`
    preset refits from the stage's last encoder; `refit_from = "best"` depends on them on purpose."""

    overrides = (
        {**SMALL, "refit_episodes": 32, "decoder_steps": 20, "num_refits": 1} if algo == "gorl-fm" else SMALL
    )
    states = []
    for points in (4, 1):
        out = tmp_path / f"points-{points}"
        changes = {"algo": algo, "out_dir": out, "overrides": {**overrides, "eval_points": points}}
        execute(request(tmp_path, tracking_uri, **changes), progress=False)
        state = load_checkpoint(out)["agent"]
        state.pop("evaluated_at", None)  # GoRL's step of its last evaluation: the schedule's own
        states.append(state)
    assert_same_state(states[1], states[0], "agent")  # weights, optimiser, normaliser, envs, generators


class Stop(Exception):
    """Raised by an evaluation callback to stop a run part-way (as a pruner does)."""


def stopped_run(tmp_path: Path, tracking_uri: str) -> Path:
    """The directory of a run stopped at its first evaluation (its MLflow run KILLED), for tests of
    what resuming does; resuming a finished run leaves its MLflow run alone."""

    def stop(step: int, mean: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        execute(request(tmp_path, tracking_uri), on_evaluation=stop, progress=False)
    return tmp_path / "run"


def test_a_resume_into_a_store_it_may_not_write_is_one_clear_error(
    tmp_path, tracking_uri, capsys, monkeypatch
):
    """A store this user may read but not write ended the resume in MLflow's traceback."""

    from mlflow.exceptions import MlflowException

    out = stopped_run(tmp_path, tracking_uri)

    def read_only(self, run_id, status=None, **kwargs):
        raise MlflowException(
            "(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: UPDATE]"
        )

    monkeypatch.setattr(MlflowClient, "update_run", read_only)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    # MLflow's own log of a database error (its traceback, ~90 lines) is silenced by the commands.
    assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.ERROR)
    err = capsys.readouterr().err
    assert (
        f"cannot write to the MLflow store {tracking_uri}: (sqlite3.OperationalError) attempt to write" in err
    )
    assert "Traceback" not in err


def test_a_store_error_without_a_message_is_still_one_clear_error(tracking_uri):
    """The error's first line was taken by indexing, so an empty message raised IndexError."""

    from mlflow.exceptions import MlflowException

    from harness.tracking import writing_to

    message = r"cannot write to the MLflow store .*: no reason given$"
    with pytest.raises(UserError, match=message), writing_to(tracking_uri):
        raise MlflowException("")


def test_cli_run_records_params_metrics_tags_and_artifacts(tmp_path, tracking_uri, capsys):
    out = tmp_path / "cli-run"
    argv = ["run", "--algo", "ppo", "--task", TOY, "--seed", "3", "--steps", str(TINY["steps"]),
            *sets(SMALL), "--out", str(out), "--tracking-uri", tracking_uri,
            "--experiment", "cli-test", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "FINISHED: final return" in capsys.readouterr().out

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "cli-run"  # named after its directory
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["lr"] == "0.0003" and params["task"] == TOY and params["seed"] == "3"
    assert params["preset"] == "cpu" and params["eval_points"] == "4" and params["device"] == "cpu"
    assert params["max_std"] == "none"  # as --set and the specs write it, not Python's None
    assert 'task = "toy-bimodal"' in (out / "config.toml").read_text()  # also in the run directory
    assert tags["algorithm"] == "ppo" and tags["task"] == TOY and tags["seed"] == "3"
    assert tags["preset"] == "cpu" and tags["git_commit"]
    # What else decides the numbers: the CPU model and the numeric libraries' builds.
    assert tags["machine.cpu"] not in ("", "unknown") and tags["version.python"].startswith("3.")
    assert tags["version.torch"] == torch.__version__ and tags["version.mujoco"].startswith("3.")
    assert "machine.gpu" not in tags and "version.cuda" not in tags  # a CPU run's
    for key in ("eval/return_mean", "eval/return_std", "train/episode_return", "loss/policy", "loss/value",
                "loss/entropy", "train/approx_kl", "train/clip_fraction", "train/entropy",
                "perf/env_steps_per_s", "perf/learner_fraction", "steps/counted", "steps/total"):  # fmt: skip
        assert key in metrics, key
    history = client.get_metric_history(run.info.run_id, "eval/return_mean")
    saved = load_checkpoint(out)["progress"]["history"]
    assert [(m.step, m.value) for m in history] == [(s, mean) for s, mean, _ in saved]
    assert saved[-1][0] == TINY["steps"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.toml", "checkpoint"}
    config_text = Path(client.download_artifacts(run.info.run_id, "config.toml", str(tmp_path))).read_text()
    assert "lr = 0.0003" in config_text and 'task = "toy-bimodal"' in config_text


def test_same_seed_gives_identical_evaluations(tmp_path, tracking_uri):
    first = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / "a"), progress=False)
    second = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / "b"), progress=False)
    assert first.status == second.status == "FINISHED"
    assert len(first.eval_history) == 4
    assert first.eval_history == second.eval_history
    assert first.final_score == first.eval_history[-1][1]
    other = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / "c", seed=1), progress=False)
    assert other.eval_history != first.eval_history


def test_on_evaluation_exception_ends_the_run_killed_and_keeps_the_checkpoint(tmp_path, tracking_uri):
    class Pruned(Exception):
        pass

    seen = []

    def prune(step: int, mean_return: float) -> None:
        seen.append(step)
        raise Pruned()

    with pytest.raises(Pruned):
        execute(request(tmp_path, tracking_uri), on_evaluation=prune, progress=False)
    state = load_checkpoint(tmp_path / "run")
    assert seen == [state["progress"]["history"][0][0]]
    run = MlflowClient(tracking_uri).get_run(state["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_diverging_run_is_marked_failed_and_writes_no_bad_checkpoint(tmp_path, tracking_uri, capsys):
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--set", "lr=1e30", "--out", str(tmp_path / "nan"), "--tracking-uri", tracking_uri,
            "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "the last good checkpoint is kept in" in captured.err
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["status_reason"]
    # The start's checkpoint, not one of the diverged weights.
    assert load_checkpoint(tmp_path / "nan")["agent"]["counted_steps"] == 0


def test_failed_run_result_has_nan_score(tmp_path, tracking_uri):
    result = execute(request(tmp_path, tracking_uri, overrides={**SMALL, "lr": 1e30}), progress=False)
    assert result.status == "FAILED" and math.isnan(result.final_score)


def test_a_run_that_diverges_after_evaluations_has_no_final_score(tmp_path, tracking_uri, monkeypatch):
    """Its last evaluation scores part of the budget, which a study must not take for the result."""

    agent_cls = algorithms.get("ppo").agent_cls
    train_iteration = agent_cls.train_iteration

    def diverge_halfway(agent):
        if agent.counted_steps >= TINY["steps"] // 2:
            raise FloatingPointError("non-finite loss/total")
        return train_iteration(agent)

    monkeypatch.setattr(agent_cls, "train_iteration", diverge_halfway)
    result = execute(request(tmp_path, tracking_uri), progress=False)
    assert result.status == "FAILED" and len(result.eval_history) == 2 and math.isnan(result.final_score)


def test_a_failed_artifact_upload_ends_the_mlflow_run(tmp_path, tracking_uri, monkeypatch):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunTracker, "log_artifact", disk_full)
    with pytest.raises(OSError):
        execute(request(tmp_path, tracking_uri), progress=False)
    run = MlflowClient(tracking_uri).get_run(load_checkpoint(tmp_path / "run")["mlflow_run_id"])
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["status_reason"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algo", "nope", "--task", TOY], "Valid algorithms: "),
        (["--algo", "ppo", "--task", TOY, "--preset", "fast"], "Valid presets of ppo: "),
        (["--algo", "ppo", "--task", TOY, "--set", "entropy_coeff=0.1"], "did you mean 'entropy_coef'?"),
        (["--algo", "ppo", "--task", TOY, "--set", "lr=-1"], "lr must be > 0"),
        (["--algo", "ppo", "--task", TOY, "--set", "lr=1e-3", "--set", "lr=1e-4"], "--set lr is given twice"),
        (["--algo", "ppo", "--task", TOY, "--set", "num_minibatches=3"], "must divide"),
        (["--algo", "ppo", "--task", TOY, "--steps", "0"], "positive number of env steps"),
        (["--algo", "ppo", "--task", TOY, "--steps", "1e2"], "100 is less than one policy update"),
        (["--algo", "ppo", "--task", TOY, "--seed", "-1"], "from 0 to 2**32 - 1"),
        (["--algo", "ppo", "--task", TOY, "--seed", str(2**70)], "from 0 to 2**32 - 1"),
        (["--algo", "ppo", "--task", "walker-wlak"], "walker-walk"),
        (["--task", TOY], "--algo and --task are required"),
        (["--resume", "does-not-exist"], "holds no run checkpoint: the directory does not exist"),
        (["--algo", "ppo", "--task", TOY, "--steps", "100"], "less than one policy update (4,096 env steps)"),
        (["--algo", "ppo", "--task", TOY, "--steps", "8192", "--set", "eval_points=9000"], "than --steps"),
        (["--algo", "ppo", "--task", TOY, "--set", "min_std=1e999"], "min_std must be a finite number"),
        # Tracebacks from the parsers: a RecursionError, and an error line of 5,000 digits.
        (
            ["--algo", "ppo", "--task", TOY, "--set", f"actor_hidden={'[' * 1000}64{']' * 1000}"],
            "nested too deeply",
        ),
        (["--algo", "ppo", "--task", TOY, "--set", f"lr={'1' * 5000}"], "... (5,002 characters)."),
        # 100,000 threads crashed the process (no message, the MLflow run left RUNNING).
        (
            ["--algo", "gorl-fm", "--task", TOY, "--set", "collect_threads=1e5"],
            "collect_threads must be at most",
        ),
        (
            ["--algo", "ppo", "--task", TOY, "--set", "update_threads=1e12"],
            "update_threads must be at most 256",
        ),
        (
            ["--algo", "ppo", "--task", TOY, "--set", "eval_episodes=1e9"],
            "eval_episodes must be at most 1,000,000",
        ),
        # Undecodable bytes: an MLflow traceback, and the run directory left behind.
        (
            ["--algo", "ppo", "--task", TOY, "--experiment", "e\udcff"],
            "is not valid text (UTF-8)",
        ),
        # ... and in the run directory's path, which the MLflow run records: blamed on the store.
        (["--algo", "ppo", "--task", TOY, "--out", "runs/r\udcff"], "--out '"),
        # The list of points took 5 GB and 50 s before the run failed.
        (
            ["--algo", "ppo", "--task", TOY, "--set", "eval_points=1e9", "--steps", "1e12"],
            "eval_points must be at most 100,000, got 1,000,000,000",
        ),
        # Rollouts that cannot fit grew for minutes until the kernel killed the run without a word:
        # FPO keeps each action's noise draws, DPPO its denoising chain.
        (
            ["--algo", "fpo", "--task", TOY, "--set", "samples_per_action=1e12"],
            "more than any device's memory here",
        ),
        (
            ["--algo", "dppo", "--task", TOY, "--set", "flow_steps=1e12"],
            "lower num_envs or rollout_steps or flow_steps",
        ),
        # Without the budget it needs: refused for its memory, not told to give that budget first.
        (["--algo", "ppo", "--task", TOY, "--set", "rollout_steps=1e9"], "more than this machine's"),
        (
            ["--algo", "ppo", "--task", TOY, "--set", "rollout_steps=1e12", "--steps", "6.4e13"],
            "rollout_steps of toy-bimodal hold at least 715,255.7 GiB, more than this machine's",
        ),  # fmt: skip
        # Networks that cannot fit grew until the kernel's out-of-memory killer ended the run unannounced
        (
            ["--algo", "ppo", "--task", TOY, "--set", "actor_hidden=[1e10]", "--steps", "8192"],
            "the actor's 50,000,000,002 weights with their gradients and Adam's moments hold at least 745.1",
        ),
        (
            ["--algo", "gorl-fm", "--task", TOY, "--set", "critic_hidden=[64,1e10]", "--steps", "65536"],
            "lower critic_hidden",
        ),
        (
            ["--algo", "fpo", "--task", TOY, "--set", "actor_width=1e10", "--steps", "8192"],
            "lower actor_width or actor_depth",
        ),
        (["--resume", "run-dir", "--steps", "5", "--set", "lr=0.1"], "checkpoint fixes --steps, --set."),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, tracking_uri, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *argv, "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before anything ran


@pytest.mark.parametrize(
    ("tracking", "message"),
    [
        ("foo://bar", "names no MLflow store"),
        ("sqlite:///{tmp}/not-a-db", "cannot open the MLflow store"),
        ("http://127.0.0.1:1", "cannot reach the MLflow tracking server at http://127.0.0.1:1"),
        ("deleted", "MLflow experiment 'gone' was deleted; restore it"),
        # MLflow itself retries a directory for ~100 s before failing
        ("sqlite:///{tmp}", "is a directory; name a file in it"),
        ("sqlite:///{tmp}/not-a-db/mlflow.db", "cannot create the MLflow store's directory"),
        ("sqlite://", "in-memory SQLite store, which keeps nothing"),
        ("sqlite:///{tmp}/" + "a" * 300 + ".db", "cannot use the MLflow store"),  # a traceback, run dir left
        # malformed addresses ended in tracebacks from the URL parsers
        ("http://host:abc", "address http://host:abc is not a valid URL (nonnumeric port"),
        ("http://[::1", "address http://[::1 is not a valid URL (Invalid IPv6 URL)"),
        ("postgresql://u@host:abc/db", "host:abc/db: it is not a valid database URL"),
    ],
)
def test_a_tracking_store_that_cannot_take_the_run_is_one_clear_error(tmp_path, capsys, tracking, message):
    if tracking == "deleted":
        tracking = f"sqlite:///{tmp_path}/mlflow.db"
        client = MlflowClient(tracking)
        client.delete_experiment(client.create_experiment("gone"))
    else:
        (tmp_path / "not-a-db").write_text("plain text, not SQLite\n" * 100)
        tracking = tracking.format(tmp=tmp_path)
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--experiment", "gone", "--tracking-uri", tracking, "--out", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # the run directory it created is gone again


@pytest.mark.parametrize("kind", ["study storage", "other database"])
def test_a_database_of_something_else_is_no_tracking_store_and_is_left_untouched(tmp_path, capsys, kind):
    """MLflow adds its tables to any SQLite file it is given, and an Optuna storage's schema
    version table (a name both use) made it fail with a traceback, after which the study could no
    longer be opened (its storage now looked like an MLflow store)."""

    import sqlite3

    import optuna

    database = tmp_path / "other.db"
    if kind == "study storage":
        optuna.create_study(study_name="s", storage=f"sqlite:///{database}")
        message = "is an Optuna study storage, not an MLflow tracking store, so it is left untouched"
    else:
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE users (name TEXT)")
        connection.close()
        message = "is an SQLite database of something else (tables users), not an MLflow tracking store"
    before = database.read_bytes()
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--tracking-uri", f"sqlite:///{database}", "--out", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert database.read_bytes() == before and not (tmp_path / "run").exists()
    if kind == "study storage":
        assert optuna.load_study(study_name="s", storage=f"sqlite:///{database}").trials == []


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MUJOCO_GL", "bogus", "MUJOCO_GL is 'bogus', which dm_control does not know: use egl"),
        ("MLFLOW_LOGGING_LEVEL", "LOUD", "MLFLOW_LOGGING_LEVEL is 'LOUD', which names no logging level"),
    ],
)
def test_a_bad_environment_variable_is_one_clear_error(
    tmp_path, capsys, monkeypatch, variable, value, message
):
    """Both made a library raise a traceback: dm_control when the task is made, MLflow at its first
    log line (which also left the run directory holding only its lock)."""

    monkeypatch.setenv(variable, value)
    argv = ["run", "--algo", "ppo", "--task", "cartpole-swingup", "--steps", "1000", "--out",
            str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_store_whose_set_up_was_cut_short_is_set_up_again(tmp_path, monkeypatch):
    """MLflow sets a new SQLite store's tables up one migration at a time; a Ctrl-C or a kill in
    between left a store that every later command refused ("table ... already exists")."""

    import mlflow.store.db.utils as mlflow_db

    from harness.tracking import open_store

    def cut_short(engine):
        raise KeyboardInterrupt  # the initial tables exist, their migrations have not run

    store = tmp_path / "mlflow.db"
    with monkeypatch.context() as patched:
        patched.setattr(mlflow_db, "_upgrade_db", cut_short)
        with pytest.raises(KeyboardInterrupt):
            open_store(f"sqlite:///{store}")
    assert not store.exists()
    client = open_store(f"sqlite:///{store}")
    assert client.get_experiment_by_name("Default") is not None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db"]  # the leftover removed


def test_databricks_is_a_store_and_a_path_a_file_store():
    """MLflow takes the bare word `databricks` for the default profile's workspace, not a path:
    resolving it (which connects to nothing) keeps it. Unity Catalog names no tracking store."""

    assert resolve_tracking_uri("databricks") == "databricks"
    assert resolve_tracking_uri("databricks://team") == "databricks://team"
    with pytest.raises(UserError, match="tracking URI 'databricks-uc' names no MLflow store"):
        resolve_tracking_uri("databricks-uc")
    for path in ("mlruns", "file:./mlruns"):
        with pytest.raises(UserError, match=f"tracking URI '{path}' is a file store"):
            resolve_tracking_uri(path)
    with pytest.raises(UserError, match="for an SQLite store there, write sqlite:///runs/mlflow.db"):
        resolve_tracking_uri("runs/mlflow.db")  # the path of the default store, without its scheme


def test_resume_of_a_run_deleted_in_mlflow_is_one_clear_error(tmp_path, tracking_uri, capsys):
    result = execute(request(tmp_path, tracking_uri), progress=False)
    MlflowClient(tracking_uri).delete_run(result.mlflow_run_id)
    assert main(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow run {result.mlflow_run_id} was deleted; restore it" in err and "Traceback" not in err


@pytest.mark.parametrize("when", ["start", "resume"])
def test_ctrl_c_while_the_mlflow_run_is_set_up_ends_it_killed(tmp_path, tracking_uri, monkeypatch, when):
    """A SIGINT held back during the first MLflow writes of a run (or of its resumption) is raised
    when they end: the run must end KILLED, not FAILED or RUNNING."""

    if when == "resume":
        stopped_run(tmp_path, tracking_uri)
    owner, method = (RunTracker, "log_params") if when == "start" else (MlflowClient, "update_run")
    original = getattr(owner, method)

    def interrupted(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the write holds signals back
        return result

    monkeypatch.setattr(owner, method, interrupted)
    # Python turns SIGINT into KeyboardInterrupt only if it started with SIGINT not ignored, and a
    # shell's background job starts with it ignored: install the handler a terminal's run has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            if when == "start":
                execute(request(tmp_path, tracking_uri), progress=False)
            else:
                resume(tmp_path / "run", progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert run.info.status == "KILLED"


def test_a_run_stopped_while_it_started_is_started_again_from_its_config(
    tmp_path, tracking_uri, monkeypatch, capsys
):
    """Killed after its config was written and before its first checkpoint (while its envs were
    built: seconds with many envs), a run has nothing to resume; the error says how to start it
    again in its directory, and that trains what an uninterrupted run trains and closes the MLflow
    run the killed process left RUNNING."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(algorithms.get("ppo").agent_cls, "__init__", killed)
        patched.setattr(RunTracker, "end", lambda *args, **kwargs: None)  # a killed process ends nothing
        with pytest.raises(KeyboardInterrupt):
            execute(request(tmp_path, tracking_uri), progress=False)
    client = MlflowClient(tracking_uri)
    (left,) = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert left.info.status == "RUNNING"
    run_dir = tmp_path / "run"
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    again = f"gorl-bench run --config {run_dir / 'config.toml'} --out {run_dir}"
    assert "its run was stopped while it started, before its first checkpoint" in err and again in err
    assert main([*again.split()[1:], "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    uninterrupted = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / "whole"), progress=False)
    assert client.get_run(left.info.run_id).info.status == "KILLED"
    restarted = [tuple(point) for point in load_checkpoint(run_dir)["progress"]["history"]]
    assert restarted == [tuple(point) for point in uninterrupted.eval_history] and len(restarted) == 4


def test_ctrl_c_dropped_by_a_garbage_collection_callback_still_stops_the_run(
    tmp_path, tracking_uri, monkeypatch, capsys
):
    """Python drops an exception raised in a garbage-collection callback (SQLAlchemy's, while the
    MLflow store was created): the run trained to its end after Ctrl-C."""

    import harness.run

    class CollectedDuringCtrlC:
        def __del__(self):
            interrupt(signal.SIGINT, None)  # as the handler runs inside the callback

    def resolve_with_a_dropped_interrupt(uri):
        CollectedDuringCtrlC()  # collected at once: "Exception ignored in ... KeyboardInterrupt"
        return resolve_tracking_uri(uri)

    monkeypatch.setattr(harness.run, "resolve_tracking_uri", resolve_with_a_dropped_interrupt)
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--out", str(tmp_path / "run"), "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    assert main(argv) == 130
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert run.info.status == "KILLED"
    assert "steps/counted" not in run.data.metrics  # stopped before its first update


def test_ctrl_c_inside_a_c_extension_import_stops_the_run_as_ctrl_c(
    tmp_path, tracking_uri, monkeypatch, capsys
):
    """It was a traceback and a FAILED MLflow run (seen when a study was stopped right after its
    workers started)."""

    import algorithms.actor_critic

    # The first optimiser built in a process imports torch._dynamo.
    monkeypatch.setattr(algorithms.actor_critic, "make_adam", interrupted_inside_a_c_extension_import)
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--out", str(tmp_path / "run"), "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert run.info.status == "KILLED"


def test_a_gym_task_without_its_optional_dependency_is_refused_before_anything_is_created(
    tmp_path, tracking_uri, capsys
):
    if importlib.util.find_spec("Box2D") is not None:
        pytest.skip("Box2D is installed, so BipedalWalker-v3 can be made")
    argv = ["run", "--algo", "ppo", "--task", "gym:BipedalWalker-v3", "--steps", "4096", "--out",
            str(tmp_path / "run"), "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Box2D is not installed" in err and 'pip install "gymnasium[box2d]"' in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert MlflowClient(tracking_uri).get_experiment_by_name("gorl-bench") is None  # no MLflow run either


def test_a_registered_gym_id_that_gymnasium_no_longer_builds_is_one_clear_error(capsys):
    """Hopper-v2 is still registered, but making it raised an ImportError with a traceback."""

    assert main(["config", "ppo", "--task", "gym:Hopper-v2"]) == 2
    err = capsys.readouterr().err
    assert "cannot make gym:Hopper-v2: The mujoco v2 and v3 based environments have been moved" in err
    assert "Traceback" not in err


def test_an_empty_out_directory_is_refused_while_parsing(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--algo", "ppo", "--task", TOY, "--out", ""])
    assert exited.value.code == 2
    assert "--out: must name a directory, got an empty value" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_is_one_clear_error_and_leaves_no_temporary_file(tmp_path):
    from harness.checkpoint import save_checkpoint

    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="cannot write the checkpoint in .*a-file/run: Not a directory"):
        save_checkpoint(tmp_path / "a-file" / "run", {"x": 1})
    # A process killed while saving leaves its temporary file; the next holder of the directory
    # removes it.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".checkpoint-abc123.tmp").write_bytes(b"half a checkpoint")
    with hold_run_directory(tmp_path / "run"):
        assert list((tmp_path / "run").glob("*.tmp")) == []


def test_an_agent_whose_iteration_counts_no_step_fails_instead_of_looping_for_ever(
    tmp_path, tracking_uri, monkeypatch
):
    """The README's skeleton of a new algorithm, without `counted_steps += ...`: the run hung."""

    import dataclasses

    from algorithms import registry
    from algorithms.base import Agent

    @dataclasses.dataclass(frozen=True)
    class StuckConfig:
        eval_points: int = 1
        eval_episodes: int = 1
        env_backend: str = "auto"

    class StuckAgent(Agent):
        def __init__(self, config, task, seed, budget, device) -> None: ...
        def train_iteration(self) -> dict[str, float]:
            return {}

        def act(self, obs, deterministic=True):
            return np.zeros((len(obs), 2), np.float32)

        def state_dict(self):
            return {}

        def load_state_dict(self, state) -> None: ...

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # registered for this test only
    registry.register("stuck", config=StuckConfig, presets={"cpu": {}}, summary="")(StuckAgent)
    request = RunRequest(
        algo="stuck", task=TOY, steps=1024, out_dir=tmp_path / "run", tracking_uri=tracking_uri
    )
    with pytest.raises(UserError, match="stuck: train_iteration took no counted env step"):
        execute(request, progress=False)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED" and "took no counted env step" in run.data.tags["status_reason"]


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_previous_one(tmp_path, monkeypatch):
    """Renamed before its data is on disk, a checkpoint can be empty after a power loss on common
    filesystems (ext4 without auto_da_alloc, XFS), and the run cannot resume; the rename itself
    is on disk once the directory is synced."""

    from harness import checkpoint

    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target) -> None:
        calls.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    target = checkpoint.save_checkpoint(tmp_path, {"x": 1})
    assert [call for call, _ in calls] == ["fsync", "replace", "fsync"]
    directory = tmp_path.resolve()  # /proc names descriptors by their resolved paths
    assert Path(calls[0][1]).parent == directory and Path(calls[0][1]).name.endswith(".tmp")
    assert calls[1][1] == str(target) and calls[2][1] == str(directory)


def test_a_checkpoint_gets_the_permissions_the_umask_gives_any_file(tmp_path):
    """It was readable by its owner alone (mkstemp's 0600), and so was its MLflow copy."""

    from harness.checkpoint import save_checkpoint

    previous = os.umask(0o022)
    try:
        assert save_checkpoint(tmp_path, {"x": 1}).stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert save_checkpoint(tmp_path, {"x": 2}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_resume_of_a_directory_without_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--resume", str(tmp_path / "empty")]) == 2
    assert "has no checkpoint.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "cannot be read (EOFError"),
        (b"not a checkpoint", "cannot be read (UnpicklingError"),
        ({"weights": [1.0]}, "is not a gorl-bench run checkpoint"),
        ({"request": {}, "agent": {}, "progress": {}}, "is not a gorl-bench run checkpoint"),
        ({"request": {}, "agent": {}, "progress": {}, "mlflow_run_id": "x"}, "no valid run request"),
        # Hand-edited values: a TypeError traceback deep in the run, or a run of -5 steps.
        (
            {
                "request": {
                    "algo": "ppo",
                    "task": "toy-bimodal",
                    "steps": "abc",
                    "tracking_uri": "sqlite:///m.db",
                },
                "agent": {},
                "progress": {},
                "mlflow_run_id": "x",
            },
            "a run request with values of the wrong type (steps = 'abc'); it is damaged",
        ),
        (
            {
                "request": {
                    "algo": "ppo",
                    "task": "toy-bimodal",
                    "steps": -5,
                    "tracking_uri": "sqlite:///m.db",
                },
                "agent": {},
                "progress": {},
                "mlflow_run_id": "x",
            },
            "a damaged run request: --steps must be a positive number of env steps, got -5",
        ),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_one_clear_error(tmp_path, capsys, content, message):
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    if isinstance(content, bytes):
        checkpoint_path(run_dir).write_bytes(content)
    else:
        torch.save(content, checkpoint_path(run_dir))
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["progress"].update(history=[(4096, 0.3)]), "ill-formed evaluations"),
        (lambda s: s["progress"].update(next_point="x"), "ill-formed evaluations"),
        (lambda s: s["progress"].update(next_point=10**6), "ill-formed evaluations"),
        (lambda s: s.update(mlflow_run_id=None), "ill-formed evaluations, positions or MLflow run id"),
        (lambda s: s["request"].update(tracking_uri=None), "values of the wrong type (tracking_uri = None)"),
        # Resumed, it trained past its budget and ended FINISHED.
        (lambda s: s["agent"].update(counted_steps=-5), "counted and total env steps -5"),
        (lambda s: s["agent"].update(counted_steps="x"), "counted and total env steps 'x'"),
        # NaN weights reached the env as NaN actions: a traceback from the action check
        (
            lambda s: next(iter(s["agent"]["model"].values())).fill_(float("nan")),
            "its agent state holds NaN or inf (agent['model']['",
        ),
    ],
)
def test_hand_edited_checkpoint_values_are_refused_by_resume_and_evaluate(
    tmp_path, tracking_uri, capsys, edit, message
):
    """Each gave a traceback deep in the run or in evaluate, or trained on from a wrong position."""

    out = stopped_run(tmp_path, tracking_uri)
    state = load_checkpoint(out)
    edit(state)
    torch.save(state, checkpoint_path(out))
    for command in (["run", "--resume", str(out), "--no-progress"], ["evaluate", str(out)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_a_checkpoint_with_a_flipped_bit_is_refused_as_damaged(tmp_path, tracking_uri, capsys):
    """torch.load does not check the zip archive's checksums: the run resumed from changed
    weights and was recorded as diverged ("non-finite loss, the learning rate may be too high")."""

    import struct
    import zipfile

    out = stopped_run(tmp_path, tracking_uri)
    path = checkpoint_path(out)
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)  # a weights record
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", raw[largest.header_offset + 26 : largest.header_offset + 30]
    )
    raw[largest.header_offset + 30 + name_length + extra_length + largest.file_size // 2] ^= 0x40
    path.write_bytes(raw)
    for command in (["run", "--resume", str(out), "--no-progress"], ["evaluate", str(out)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{path} is damaged: {largest.filename} fails its checksum" in err and "Traceback" not in err


def test_resume_of_a_checkpoint_from_another_version_is_one_clear_error_and_leaves_mlflow_as_it_was(
    tmp_path, tracking_uri, capsys
):
    from harness.checkpoint import save_checkpoint

    out = stopped_run(tmp_path, tracking_uri)  # to be reopened by a resume, unlike a finished run
    saved = load_checkpoint(out)
    for edit, message in [
        (lambda position: position.update(lr_schedule=[1.0]), "(unexpected fields: lr_schedule)"),
        (lambda position: position.pop("next_point"), "(missing fields: next_point)"),
    ]:
        state = {**saved, "progress": dict(saved["progress"])}
        edit(state["progress"])
        save_checkpoint(out, state)
        assert main(["run", "--resume", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "was written by another version of gorl-bench " + message in err and "Traceback" not in err
        assert MlflowClient(tracking_uri).get_run(saved["mlflow_run_id"]).info.status == "KILLED"


def test_a_resume_whose_preset_resolves_otherwise_now_is_refused(tmp_path, tracking_uri, capsys, monkeypatch):
    """A preset changed since the run started (a `git pull`) was silently used for the rest of it."""

    from algorithms import ppo

    out = stopped_run(tmp_path, tracking_uri)
    monkeypatch.setitem(ppo.PRESETS["cpu"], "gamma", 0.9)
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "resolve to other settings in this version than when it started (gamma 0.99 -> 0.9)" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0


def test_a_resume_refuses_ill_formed_settings_as_damage(tmp_path, tracking_uri, capsys):
    out = stopped_run(tmp_path, tracking_uri)
    state = load_checkpoint(out)
    state["config"] = ["lr", 3e-4]  # a hand edit
    torch.save(state, checkpoint_path(out))
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{checkpoint_path(out)} holds ill-formed settings; it is damaged." in err and "Traceback" not in err
    )


def test_settings_a_version_added_or_removed_are_not_compared():
    from harness.run import changed_settings

    assert changed_settings(None, {"lr": 1e-3}) == []  # a checkpoint of an earlier version
    assert changed_settings({"lr": 1e-3, "gone": 1}, {"lr": 1e-3, "new_knob": None}) == []
    assert changed_settings({"lr": 1e-3, "clip": 0.2}, {"lr": 3e-4, "clip": 0.2}) == ["lr 0.001 -> 0.0003"]


def test_a_run_directory_in_use_or_unusable_is_refused_before_anything_runs(tmp_path, tracking_uri, capsys):
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(TINY["steps"]), *sets(SMALL),
            "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    with hold_run_directory(tmp_path / "busy"):  # as a run training there holds it
        assert main([*argv, "--out", str(tmp_path / "busy")]) == 2
        assert f"in use by a run that is still training (process {os.getpid()})" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    for out, what in [("a-file", "it"), ("a-file/run", str(tmp_path / "a-file"))]:
        assert main([*argv, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert f"{what} exists and is not a directory. Choose another directory with --out" in err
    assert MlflowClient(tracking_uri).search_experiments(filter_string="name = 'gorl-bench'") == []
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.toml").write_text("my_setting = 1\n")  # not a run's: kept
    assert main([*argv, "--out", str(tmp_path / "project")]) == 2
    assert "config.toml exists and is not a run's config" in capsys.readouterr().err
    (tmp_path / "piped").mkdir()
    os.mkfifo(tmp_path / "piped" / "config.toml")  # reading it to check it waited for ever
    with alarm_after(30):
        assert main([*argv, "--out", str(tmp_path / "piped")]) == 2
    assert "config.toml exists and is not a regular file" in capsys.readouterr().err
    assert (tmp_path / "project" / "config.toml").read_text() == "my_setting = 1\n"
    assert sorted(path.name for path in (tmp_path / "project").iterdir()) == ["config.toml"]  # no .lock left
    assert main([*argv, "--out", str(tmp_path / "busy")]) == 0  # the lock went with its holder
    assert main([*argv, "--out", str(tmp_path / "busy")]) == 2  # a finished run is not overwritten
    assert "already holds a run's checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--tracking-uri", "--experiment"])
def test_an_empty_store_or_experiment_is_refused_while_parsing(option, capsys):
    """It meant the default store (or experiment) without a word; with --resume, a store with no such run."""

    with pytest.raises(SystemExit) as exited:
        main(["run", "--algo", "ppo", "--task", TOY, option, ""])
    assert exited.value.code == 2
    assert f"argument {option}: must not be empty" in capsys.readouterr().err


def test_counts_are_read_exactly_and_absurd_ones_refused():
    from harness.commands.arguments import integer

    assert integer("1e23") == 10**23  # the float 1e23 is 99,999,999,999,999,991,611,392
    assert integer("2.5e3") == 2500 and integer("1_000") == 1000
    for text in ("1e1000000000", "2.5", "inf", "ten"):  # the first: a gigabyte of digits
        with pytest.raises(argparse.ArgumentTypeError):
            integer(text)


def test_runs_started_in_the_same_second_without_out_get_directories_of_their_own(tmp_path, monkeypatch):
    """Three runs differing only in --set, started together, collided on one default directory."""

    import datetime

    import harness.run

    class SameSecond(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 12, 52, 47)

    monkeypatch.setattr(harness.run, "datetime", SameSecond)
    monkeypatch.chdir(tmp_path)
    made = [harness.run.create_default_out_dir(request(tmp_path, "unused", out_dir=None)) for _ in range(3)]
    base = "runs/ppo-toy-bimodal-s0-20261201-125247"
    assert [str(path) for path in made] == [base, f"{base}-2", f"{base}-3"]
    assert all(path.is_dir() for path in made)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused(tmp_path, tracking_uri, capsys):
    argv = ["run", "--algo", "ppo", "--task", TOY, "--device", "cuda", "--tracking-uri", tracking_uri]
    assert main(argv) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_gpu_this_machine_lacks_is_refused_with_the_ones_it_has(monkeypatch):
    """cuda:7 on a one-GPU machine failed at the first tensor moved there, "invalid device ordinal".
    (This machine's GPU count stands in for a real one's: the check only reads the count.)"""

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"unsupported device 'cpu:1'. Valid devices: cpu, cuda, cuda:N"):
        resolve_device("cpu:1")  # torch takes it for the one CPU device
    with pytest.raises(UserError, match=r"'cuda:7': this machine has 2 GPUs, cuda:0 to cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algo", ["ppo", "fpo", "gorl-fm"])
def test_a_run_trained_on_cuda_evaluates_and_resumes_on_the_cpu(tmp_path, tracking_uri, capsys, algo):
    # Its generators are CPU generators: a CUDA generator's saved state does not load into a CPU one.
    steps = 8 * 16 * 16  # GoRL: a refit within the budget, so its decoder is on the device too
    out = tmp_path / "run"
    argv = ["run", "--algo", algo, "--task", TOY, "--steps", str(steps), *sets(SMALL), "--device", "cuda",
            "--out", str(out), "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    tags = MlflowClient(tracking_uri).get_run(load_checkpoint(out)["mlflow_run_id"]).data.tags
    assert tags["machine.gpu"] == torch.cuda.get_device_name() and tags["version.cuda"] == torch.version.cuda
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    assert "does not fit" not in capsys.readouterr().err
    load_run(out, device="cpu")[2].close()  # as a study's rerun on another device loads it


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_run_started_on_cuda_resumes_on_the_cpu_with_device(
    tmp_path, tracking_uri, capsys, as_if_trained_on_cuda
):
    """The error said "use --device cpu", which --resume refused as an option its checkpoint fixes."""

    execute(request(tmp_path, tracking_uri), progress=False)
    as_if_trained_on_cuda(tmp_path / "run")
    assert main(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "CUDA is not available here; use --device cpu" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0


def test_a_resume_on_another_device_rewrites_the_config_file_without_a_warning(
    tmp_path, tracking_uri, capsys, as_if_trained_on_cuda
):
    """`--device cpu` for a run started on cuda said the config file was edited by hand."""

    out = stopped_run(tmp_path, tracking_uri)
    as_if_trained_on_cuda(out)
    assert 'device = "cuda"' in (out / "config.toml").read_text()
    assert main(["run", "--resume", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "is not what the run was started with" not in capsys.readouterr().err
    assert 'device = "cpu"' in (out / "config.toml").read_text()


POINTS = 6
STEPS = 60 * 16 * 16  # 60 small updates: the run is still going when its first checkpoint appears
OVERRIDES = {**SMALL, "eval_points": POINTS}


def test_list_shows_one_section_when_named(capsys):
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "toy-bimodal" in out and "Algorithms:" not in out and "Tasks:" not in out
    assert main(["list", "algorithms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == algorithms.names()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.index("Algorithms:") < out.index("Tasks:") < out.index("Studies:")


def test_version_is_the_installed_package_s(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"gorl-bench {version('gorl-bench')}\n"


@pytest.mark.parametrize(
    ("algo", "param", "value", "metric"),
    [("fpo", "samples_per_action", "8", "train/cfm_loss"), ("dppo", "sigma", "0.2", "train/approx_kl")],
)
def test_generative_baselines_are_listed_and_run_by_the_cli(tmp_path, tracking_uri, capsys, algo, param,
                                                            value, metric):  # fmt: skip
    assert main(["list"]) == 0
    assert f"{algo} " in capsys.readouterr().out
    argv = ["run", "--algo", algo, "--task", "toy-bimodal", "--steps", "512", "--set", "num_envs=16",
            "--set", "rollout_steps=16", "--set", "eval_points=2", "--out", str(tmp_path / "run"),
            "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    run = MlflowClient(tracking_uri).get_run(load_checkpoint(tmp_path / "run")["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params[param] == value
    for key in ("eval/return_mean", "loss/policy", "loss/value", "train/clip_fraction", metric):
        assert key in run.data.metrics, key


@pytest.mark.parametrize("algo", ["ppo", "fpo", "dppo"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tracking_uri, algo, calls_to):
    reference = execute(
        RunRequest(algo=algo, task="toy-bimodal", seed=5, steps=STEPS, overrides=OVERRIDES,
                   out_dir=tmp_path / "reference", tracking_uri=tracking_uri),
        progress=False,
    )  # fmt: skip
    assert len(reference.eval_history) == POINTS

    out = tmp_path / "killed"
    argv = ["run", "--algo", algo, "--task", "toy-bimodal", "--seed", "5", "--steps", str(STEPS),
            *sets(OVERRIDES), "--out", str(out), "--tracking-uri", tracking_uri,
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "disable"}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, saved_at = time.monotonic() + 120, 0
    while saved_at == 0:  # past the checkpoint of the start: one that holds training
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
        if checkpoint_path(out).exists():
            saved_at = load_checkpoint(out)["agent"]["counted_steps"]
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved_at = load_checkpoint(out)["agent"]["counted_steps"]  # the last before the kill
    assert saved_at < STEPS, "the run finished before it was killed"

    updates = calls_to(algorithms.get(algo).agent_cls, "train_iteration")
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert len(updates) == (STEPS - saved_at) // (16 * 16)  # from the checkpoint on, not from the start
    state = load_checkpoint(out)
    assert [tuple(point) for point in state["progress"]["history"]] == reference.eval_history

    client = MlflowClient(tracking_uri)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for key in ("eval/return_mean", "steps/counted"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at one step after resume"
    means = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert [(m.step, m.value) for m in means] == [(s, mean) for s, mean, _ in reference.eval_history]


def test_a_run_killed_between_evaluation_points_resumes_from_checkpoint_every(
    tmp_path, tracking_uri, calls_to
):
    """--checkpoint-every saves between evaluations; a resume from such a checkpoint must neither
    repeat nor skip an evaluation, nor log a step twice, and match a run without the option."""

    reference = execute(
        RunRequest(algo="ppo", task="toy-bimodal", seed=5, steps=STEPS, overrides=OVERRIDES,
                   out_dir=tmp_path / "reference", tracking_uri=tracking_uri),
        progress=False,
    )  # fmt: skip
    out, between = tmp_path / "killed", STEPS // POINTS  # evaluations every 10 updates
    argv = ["run", "--algo", "ppo", "--task", "toy-bimodal", "--seed", "5", "--steps", str(STEPS),
            *sets(OVERRIDES), "--out", str(out), "--tracking-uri", tracking_uri, "--no-progress",
            "--checkpoint-every", str(3 * 256)]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "disable"}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, saved_at = time.monotonic() + 120, 0
    while saved_at <= between or saved_at % between == 0:  # past the first point, between two
        assert process.poll() is None, "the run ended before a checkpoint between evaluation points"
        assert time.monotonic() < deadline
        time.sleep(0.05)
        if checkpoint_path(out).exists():
            saved_at = load_checkpoint(out)["agent"]["counted_steps"]
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved_at = load_checkpoint(out)["agent"]["counted_steps"]  # the last before the kill

    updates = calls_to(algorithms.get("ppo").agent_cls, "train_iteration")
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert len(updates) == (STEPS - saved_at) // 256  # from the checkpoint between points on
    state = load_checkpoint(out)
    assert [tuple(point) for point in state["progress"]["history"]] == reference.eval_history
    client = MlflowClient(tracking_uri)
    for key in ("eval/return_mean", "steps/counted"):
        steps = [m.step for m in client.get_metric_history(state["mlflow_run_id"], key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at one step after resume"


def test_resume_writes_back_a_config_file_edited_in_the_run_directory(tmp_path, tracking_uri, capsys):
    """The run continues with its checkpoint's settings; the edited file stayed, describing others."""

    out = stopped_run(tmp_path, tracking_uri)
    config_file = out / "config.toml"
    original = config_file.read_text()
    config_file.write_text(original.replace("epochs = 2", "epochs = 1"))
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert f"{config_file} is not what the run was started with" in capsys.readouterr().err
    assert config_file.read_text() == original


def test_resume_writes_back_a_config_file_that_is_not_text_and_refuses_a_directory(
    tmp_path, tracking_uri, capsys
):
    """A binary config.toml ended the resume in a UnicodeDecodeError traceback, and a directory in
    an IsADirectoryError one, each after the MLflow run was reopened: it stayed RUNNING."""

    out = stopped_run(tmp_path, tracking_uri)
    config_file = out / "config.toml"
    original = config_file.read_text()
    config_file.unlink()
    config_file.mkdir()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    assert f"{config_file} is not a file; remove it" in capsys.readouterr().err
    run_id = load_checkpoint(out)["mlflow_run_id"]
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "KILLED"  # left as it was
    config_file.rmdir()
    config_file.write_bytes(b"\xff\xfe\x00 not text")
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert f"{config_file} is not what the run was started with" in capsys.readouterr().err
    assert config_file.read_text() == original


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tracking_uri):
    """Not even the MLflow run: it was reopened, which moved its end time, and the checkpoint
    uploaded again."""

    request = RunRequest(algo="ppo", task="toy-bimodal", steps=4 * 16 * 16, overrides=SMALL,
                         out_dir=tmp_path / "done", tracking_uri=tracking_uri)  # fmt: skip
    first = execute(request, progress=False)
    client = MlflowClient(tracking_uri)
    before = client.get_run(first.mlflow_run_id).info
    written = checkpoint_path(first.out_dir).stat().st_mtime_ns

    again = resume(Path(first.out_dir), progress=False)
    assert again == first
    after = client.get_run(first.mlflow_run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert checkpoint_path(first.out_dir).stat().st_mtime_ns == written


def test_a_copy_of_a_run_directory_does_not_resume_while_the_original_holds_the_run(tmp_path, tracking_uri,
                                                                                   capsys):  # fmt: skip
    """Both resumed into one MLflow run, each logging its own evaluations there."""

    import shutil

    original = stopped_run(tmp_path, tracking_uri)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    assert main(["run", "--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{copy} is a copy of the run directory {original}, which still holds the same run" in err
    assert "Traceback" not in err
    run_id = load_checkpoint(original)["mlflow_run_id"]
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "KILLED"  # not reopened
    shutil.rmtree(original)  # now the copy is the run, moved
    assert main(["run", "--resume", str(copy), "--no-progress"]) == 0
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"


def test_resume_finds_a_moved_tracking_store_when_told_where(tmp_path, capsys):
    store = tmp_path / "old" / "mlflow.db"  # with its artifacts in old/mlartifacts
    out = stopped_run(tmp_path, f"sqlite:///{store}")
    run_id = load_checkpoint(out)["mlflow_run_id"]
    (tmp_path / "old").rename(tmp_path / "new")
    moved = tmp_path / "new" / "mlflow.db"
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"has no run {run_id}" in err and "--tracking-uri" in err and "Traceback" not in err
    assert not store.exists()  # no empty store left at the old path
    typo = tmp_path / "nowhere" / "mlflow.db"
    assert main(["run", "--resume", str(out), "--tracking-uri", f"sqlite:///{typo}"]) == 2
    assert "has no run" in capsys.readouterr().err and not typo.parent.exists()  # nothing created
    argv = ["run", "--resume", str(out), "--tracking-uri", f"sqlite:///{moved}", "--no-progress"]
    assert main(argv) == 0
    assert "the checkpoint was not attached" in capsys.readouterr().err
    assert MlflowClient(f"sqlite:///{moved}").get_run(run_id).info.status == "FINISHED"
    assert not (tmp_path / "old").exists()  # MLflow's absolute artifact path was not recreated


def test_sigterm_ends_the_mlflow_run_killed(tmp_path, tracking_uri):
    out = tmp_path / "terminated"
    argv = ["run", "--algo", "ppo", "--task", "toy-bimodal", "--steps", str(STEPS), *sets(OVERRIDES),
            "--out", str(out), "--tracking-uri", tracking_uri, "--no-progress"]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "disable"}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not checkpoint_path(out).exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 130
    assert f"continue with gorl-bench run --resume {out}" in process.stderr.read()
    run = MlflowClient(tracking_uri).get_run(load_checkpoint(out)["mlflow_run_id"])
    assert run.info.status == "KILLED" and "KeyboardInterrupt" in run.data.tags["status_reason"]


def test_the_lock_follows_a_run_directory_moved_aside_while_taking_it(tmp_path, monkeypatch):
    """A study moves a stale run directory aside while holding its lock; a process that opened the
    old lock file just before must end up holding the new directory's lock, not the moved one's."""

    import fcntl

    run_dir, real_flock = tmp_path / "unit", fcntl.flock

    def moved_aside_first(fd, operation):
        if not (tmp_path / "unit.stale").exists():
            run_dir.rename(tmp_path / "unit.stale")  # what the lock holder did meanwhile
        return real_flock(fd, operation)

    run_dir.mkdir()
    monkeypatch.setattr(fcntl, "flock", moved_aside_first)
    with hold_run_directory(run_dir):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        probe = os.open(run_dir / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):  # held: by us
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)


def test_without_a_terminal_progress_is_one_line_per_evaluation(tmp_path, tracking_uri, capsys):
    """A log file (nohup, a batch job) gets each evaluation as it happens, not a silent bar."""

    execute(request(tmp_path, tracking_uri), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppo toy-bimodal s0: ")]
    assert len(lines) == SMALL["eval_points"]
    assert lines[-1].startswith(f"ppo toy-bimodal s0: {TINY['steps']:,}/{TINY['steps']:,} env steps")


def test_in_a_terminal_a_run_says_what_it_does_before_its_bar_starts(
    tmp_path, tracking_uri, capsys, monkeypatch
):
    """The first seconds (the MLflow store, building envs) showed nothing; the spinner that says
    so must end before the bar starts (rich shows one live display at a time)."""

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = execute(request(tmp_path, tracking_uri), progress=True)
    assert result.status == "FINISHED"
    err = capsys.readouterr().err
    for phase in (
        "opening the MLflow store",
        "building the agent and its envs",
        "building the evaluation envs",
    ):
        assert f"ppo toy-bimodal s0: {phase}" in err
    assert "1,024/1,024" in err and "steps/s" in err  # the bar
    assert err.rindex("building the evaluation envs") < err.index("/1,024")  # after the spinner stopped

    result = resume(tmp_path / "run", progress=True)  # finished: says so, with nothing left running
    assert result.status == "FINISHED" and "had already finished" in capsys.readouterr().err


def test_in_an_80_column_terminal_the_bar_shows_every_number_whole(monkeypatch):
    """During a GoRL refit the step count and the ETA were cut to "8…" and "0…"."""

    import io

    from rich.console import Console

    import harness.progress
    import harness.run

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run = RunRequest(algo="gorl-fm", task="cartpole-swingup", seed=0, steps=1_000_000)
    bar = harness.run._ProgressBar(run, 1_003_520, enabled=True)
    screen = io.StringIO()
    bar.progress.live.console = Console(file=screen, width=80, force_terminal=True, color_system=None)
    bar.update(0, [])
    bar.origin = (time.perf_counter() - 30.0, 0)  # 336k steps in 30 s
    bar.update(336_000, [(327_680, 874.6, 12.0)])
    for note in ("refit 1 of 3", ""):
        bar.note(note)
        bar.progress.live.console.print(bar.progress.make_tasks_table(bar.progress.tasks))
    during, after = screen.getvalue().splitlines()
    assert "…" not in during + after
    assert "336k/1.00M" in during and "refit 1 of 3" in during and "eval 874.6" in during
    assert re.search(r" 11,[12]\d\d steps/s ", after) and "refit" not in after
    assert [harness.progress.compact_count(n) for n in (9_999, 10_000, 336_000, 1_003_520, 180_000_000)] == [
        "9,999", "10k", "336k", "1.00M", "180M"
    ]  # fmt: skip


def test_the_bar_has_an_eta_when_updates_are_minutes_apart(monkeypatch):
    """rich estimates speed from the updates of its window (30 s by default): a `paper` preset's
    updates on a CPU, minutes apart, left one update in it and the ETA at --:-- for the whole run."""

    import rich.console

    import harness.run

    clock = [1000.0]
    monkeypatch.setattr(rich.console, "monotonic", lambda: clock[0])  # the bar's clock
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run = RunRequest(algo="ppo", task="walker-walk", seed=0, steps=10 * 983_040)
    bar = harness.run._ProgressBar(run, 10 * 983_040, enabled=True)
    for update in range(4):  # 45 s per update of 983,040 env steps
        bar.update(update * 983_040, [])
        clock[0] += 45.0
    assert bar.progress.tasks[0].time_remaining == pytest.approx(7 * 45.0)


def test_without_a_terminal_progress_lines_also_come_between_distant_evaluations(
    tmp_path, tracking_uri, capsys, monkeypatch
):
    """One evaluation at the end of 4 updates: a line after every update once PLAIN_INTERVAL_S has
    passed (set to 0 here; 60 s in use), so a long run's log never falls silent for hours."""

    import harness.progress

    monkeypatch.setattr(harness.progress, "PLAIN_INTERVAL_S", 0.0)
    execute(request(tmp_path, tracking_uri, overrides={**SMALL, "eval_points": 1}), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppo toy-bimodal s0: ")]
    lines = [line for line in lines if "still working" not in line]  # lines during an update, tested below
    steps = [int(line.split()[3].split("/")[0].replace(",", "")) for line in lines]
    assert steps == [0, 256, 512, 768, 1024]
    assert lines[-2].endswith("eval -") and not lines[-1].endswith("eval -")  # the one evaluation


def test_without_a_terminal_progress_lines_also_come_during_a_long_update(
    tmp_path, tracking_uri, capsys, slow_work
):
    """A `paper` preset's update on a CPU or a decoder refit takes minutes: the log printed nothing
    until it ended. Here each update takes 0.6 s and a line is due every 0.2 s."""

    slow_work(algorithms.get("ppo").agent_cls, "train_iteration")
    execute(request(tmp_path, tracking_uri, steps=512, overrides={**SMALL, "eval_points": 1}), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppo toy-bimodal s0: ")]
    working = [line for line in lines if line.endswith("(still working: an update or evaluation)")]
    # During each of the two updates, after the line of the step before it
    assert any(line.startswith("ppo toy-bimodal s0: 0/512 env steps") for line in working), lines
    assert any(line.startswith("ppo toy-bimodal s0: 256/512 env steps") for line in working), lines


@pytest.mark.parametrize(
    ("settings", "detail"),
    [
        # 3 x 10^8 toy envs, whose one-step rollout would fit this machine: numpy's MemoryError.
        (
            [f"num_envs={3 * 10**8}", "--set", "rollout_steps=1", "--steps", str(3 * 10**8)],
            "(Unable to allocate",
        ),
        # A 35,000 x 35,000 actor layer (which the memory check of the run's settings lets through
        # on this machine): torch's allocator raises a RuntimeError, not a MemoryError.
        (["actor_hidden=[35000, 35000]"], "(torch could not allocate 4.56 GiB)"),
    ],
)
def test_running_out_of_memory_under_a_limit_is_one_clear_error(tmp_path, tracking_uri, settings, detail):
    """Under a memory limit (`ulimit -v`, as batch systems set) these allocations failed with a
    traceback."""

    import resource

    limit = 4 * 2**30  # room for the interpreter and torch, not for these arrays

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = ["run", "--algo", "ppo", "--task", "toy-bimodal", "--set", *settings, "--no-progress",
            "--out", str(tmp_path / "run"), "--tracking-uri", tracking_uri]  # fmt: skip
    command = [sys.executable, "-m", "harness.cli", *argv]
    env = {**os.environ, "MUJOCO_GL": "disable"}
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limited, timeout=120, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"gorl-bench run: error: out of memory {detail}" in done.stderr
    assert "Lower the sizes that grow with the config (num_envs" in done.stderr
    client = MlflowClient(tracking_uri)  # the run's record says the same, not torch's internals
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert run.data.tags["status_reason"].startswith(f"out of memory {detail}")


def test_runs_started_together_on_a_new_store_all_finish(tmp_path):
    """Each process ran MLflow's table creation on the new SQLite file, and all but one failed
    ("table ... already exists", "duplicate column name"); then each created the experiment."""

    store = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    argv = [sys.executable, "-m", "harness.cli", "run", "--algo", "ppo", "--task", "toy-bimodal",
            "--steps", "256", "--set", "num_envs=16", "--set", "rollout_steps=16", "--set", "eval_episodes=2",
            "--no-progress", "--tracking-uri", store]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "disable"}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    runs = [subprocess.Popen([*argv, "--out", str(tmp_path / f"r{i}")], env=env, **output) for i in range(3)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gorl-bench"]
    assert len(client.search_runs([experiment.experiment_id])) == 3


def test_a_budget_of_no_whole_number_of_updates_is_said_to_round_up(tmp_path, tracking_uri, capsys):
    """--steps 5000 trained 8,192 steps while the progress lines counted to 5,000, then to 8,192."""

    update = SMALL["num_envs"] * SMALL["rollout_steps"]
    argv = ["run", "--algo", "ppo", "--task", TOY, "--steps", str(update + 1), *sets(SMALL),
            "--out", str(tmp_path / "run"), "--tracking-uri", tracking_uri]  # fmt: skip
    assert main(argv) == 0  # with progress: plain lines, as stderr is no terminal here
    err = capsys.readouterr().err
    assert f"whole updates of {update:,} env steps: {2 * update:,} counted env steps for --steps" in err
    assert f"{update:,}/{2 * update:,} env steps" in err and f"/{update + 1:,} env steps" not in err


def test_a_run_stopped_before_its_first_evaluation_resumes_into_the_same_mlflow_run(
    tmp_path, tracking_uri, monkeypatch
):
    """It had no checkpoint yet: a study's unit started afresh in a second MLflow run, and the
    first stayed in the experiment, KILLED and empty."""

    reference = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / "reference"), progress=False)
    agent_cls = algorithms.get("ppo").agent_cls
    train_iteration = agent_cls.train_iteration

    def interrupted(self):
        monkeypatch.setattr(agent_cls, "train_iteration", train_iteration)  # once
        raise KeyboardInterrupt

    monkeypatch.setattr(agent_cls, "train_iteration", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(request(tmp_path, tracking_uri), progress=False)
    assert load_checkpoint(tmp_path / "run")["agent"]["counted_steps"] == 0
    resumed = resume(tmp_path / "run", progress=False)
    assert resumed.eval_history == reference.eval_history
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("gorl-bench").experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED", "FINISHED"]  # this one and the reference


def _only_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gorl-bench"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


@pytest.mark.parametrize("where", ["creating the MLflow run", "loading the progress bar"])
def test_a_ctrl_c_while_a_run_starts_ends_its_mlflow_run_killed(tmp_path, tracking_uri, monkeypatch, where):
    """Held back until MLflow had written the run, or raised before training's try, the interrupt
    left the run RUNNING for ever."""

    import harness.run

    if where == "creating the MLflow run":
        real = MlflowClient.create_run

        def create_then_interrupt(self, *args, **kwargs):
            created = real(self, *args, **kwargs)
            signal.raise_signal(signal.SIGINT)  # held back by the write, raised after it
            return created

        monkeypatch.setattr(MlflowClient, "create_run", create_then_interrupt)
    else:

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(harness.run, "_ProgressBar", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(request(tmp_path, tracking_uri), progress=False)
    assert _only_run(tracking_uri).info.status == "KILLED"


def test_a_floating_point_error_of_the_evaluation_callback_is_the_callback_s_not_a_divergence(
    tmp_path, tracking_uri
):
    """It was taken for the training's divergence: the run was recorded FAILED and its result returned."""

    def callback(step: int, mean: float) -> None:
        raise FloatingPointError("the caller's own arithmetic")

    with pytest.raises(FloatingPointError, match="the caller's own"):
        execute(request(tmp_path, tracking_uri), on_evaluation=callback, progress=False)
    assert _only_run(tracking_uri).info.status == "KILLED"


def record_checkpoints(monkeypatch) -> list[int]:
    """The counted steps of every checkpoint the run writes from now on."""

    import harness.run

    saved_at, real = [], harness.run.save_checkpoint

    def recording(out_dir, state):
        saved_at.append(state["agent"]["counted_steps"])
        return real(out_dir, state)

    monkeypatch.setattr(harness.run, "save_checkpoint", recording)
    return saved_at


def test_checkpoint_every_counts_from_the_start_checkpoint(tmp_path, tracking_uri, monkeypatch):
    """The first periodic checkpoint came after the first update, whatever the period."""

    saved_at = record_checkpoints(monkeypatch)
    overrides = {**SMALL, "eval_points": 1}
    execute(request(tmp_path, tracking_uri, steps=8 * 256, overrides=overrides, checkpoint_every=3 * 256),
            progress=False)  # fmt: skip
    assert saved_at == [0, 3 * 256, 6 * 256, 8 * 256]


def test_by_default_a_run_checkpoints_its_start_and_every_evaluation_point(
    tmp_path, tracking_uri, monkeypatch
):
    """Only a test of a callback that stops the run saw the evaluation checkpoints: a run killed
    later would resume from its start."""

    saved_at = record_checkpoints(monkeypatch)
    result = execute(request(tmp_path, tracking_uri, steps=8 * 256), progress=False)  # 4 points
    evaluated = [step for step, *_ in load_checkpoint(tmp_path / "run")["progress"]["history"]]
    assert evaluated == [2 * 256, 4 * 256, 6 * 256, 8 * 256] and result.final_score is not None
    assert saved_at == [0, *evaluated]


def test_a_numpy_step_count_is_refused_before_it_reaches_mlflow(tmp_path, tracking_uri, monkeypatch):
    """An np.int64 counted_steps broke MLflow's metric step and then every resume of the run."""

    from algorithms.ppo import PPOAgent

    real = PPOAgent.train_iteration

    def numpy_count(self):
        metrics = real(self)
        self.counted_steps = np.int64(self.counted_steps)
        return metrics

    monkeypatch.setattr(PPOAgent, "train_iteration", numpy_count)
    with pytest.raises(
        UserError, match="left counted_steps and total_steps as int64 and int; keep them Python"
    ):
        execute(request(tmp_path, tracking_uri), progress=False)
    assert _only_run(tracking_uri).info.status == "FAILED"


def test_a_resumed_run_that_finishes_keeps_no_reason_of_its_earlier_stop(tmp_path, tracking_uri, capsys):
    out = stopped_run(tmp_path, tracking_uri)
    run_id = load_checkpoint(out)["mlflow_run_id"]
    assert "status_reason" in MlflowClient(tracking_uri).get_run(run_id).data.tags  # KILLED, with why
    resume(out, progress=False)
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and "status_reason" not in run.data.tags
    # The same machine: nothing said, nothing tagged.
    assert "another machine" not in capsys.readouterr().err
    assert not [key for key in run.data.tags if key.startswith("resumed.")]


def test_a_resume_on_another_machine_says_so_and_tags_the_run(tmp_path, tracking_uri, capsys):
    """Machine tags were written when a run started only: a run resumed on another CPU or with
    another torch kept the first machine's, and nothing said its numbers were no longer those of
    an uninterrupted run."""

    out = stopped_run(tmp_path, tracking_uri)
    client, run_id = MlflowClient(tracking_uri), load_checkpoint(out)["mlflow_run_id"]
    client.set_tag(run_id, "machine.cpu", "Another CPU (family 6, model 85)")
    client.set_tag(run_id, "version.torch", "2.0.0")
    client.set_tag(run_id, "machine.gpu", "A GPU")  # as a run started on cuda, resumed with --device cpu
    resume(out, progress=False)
    err = capsys.readouterr().err
    assert "resuming on another machine or software than the run started on (machine.cpu 'Another CPU" in err
    assert "machine.gpu 'A GPU' -> 'none'" in err and "version.torch '2.0.0' -> " in err
    tags = client.get_run(run_id).data.tags
    resumed = {key: value for key, value in tags.items() if key.startswith("resumed.")}
    here = machine_tags()
    assert resumed == {"resumed.machine.cpu": here["machine.cpu"], "resumed.machine.gpu": "none",
                       "resumed.version.torch": torch.__version__}  # fmt: skip
    assert tags["machine.cpu"] == "Another CPU (family 6, model 85)"  # the start's stay


def test_the_machine_tags_leave_out_the_kernel_release():
    """A resume on a node alike but for its kernel build is no other machine: it rounds nothing."""

    import platform

    tags = machine_tags()
    assert platform.release() not in tags["machine.platform"]
    assert platform.machine() in tags["machine.platform"] and platform.system() in tags["machine.platform"]
    # A run that recorded it with the kernel release (before 2026-12-02), resumed on its own machine.
    assert machine_changes({**tags, "machine.platform": platform.platform()}) == {}
    assert machine_changes({**tags, "machine.platform": "Linux-5.4.0-x86_64-with-glibc2.31"}) != {}


def test_a_run_from_before_machine_tags_resumes_without_a_word(tmp_path, tracking_uri, capsys):
    out = stopped_run(tmp_path, tracking_uri)
    client, run_id = MlflowClient(tracking_uri), load_checkpoint(out)["mlflow_run_id"]
    for key in machine_tags():
        client.delete_tag(run_id, key)
    resume(out, progress=False)
    assert "another machine" not in capsys.readouterr().err
    assert not [key for key in client.get_run(run_id).data.tags if key.startswith("resumed.")]


def test_the_tracking_uri_given_wins_over_the_environment_s(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI is MLflow's usual setting; a `--tracking-uri` it overrode would send
    runs and studies to another store without a word."""

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/environment.db")
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/given.db").endswith("given.db")
    assert resolve_tracking_uri(None).endswith("environment.db")


def test_a_resumed_run_does_not_log_again_the_steps_its_store_has(tracking_uri):
    """A run killed between logging a step's metrics and saving its checkpoint logs that step
    again after the resume (the store then holds it twice)."""

    started = RunTracker.start(tracking_uri, "x", "r", None, {})
    tracker = RunTracker(tracking_uri, started.run_id, logged_through=512)
    tracker.log_metrics({"m": 1.0}, 512)
    tracker.log_metrics({"m": 2.0}, 768)
    assert [m.step for m in MlflowClient(tracking_uri).get_metric_history(started.run_id, "m")] == [768]
