"""`gorl-bench demo` end to end on a tiny PPO-only spec: study, report, printed commands, resume.

The demo's own spec (`studies/demo.toml`) takes minutes; `--spec` points the same code path at
a spec of four tiny PPO units on the toy task, run by two real worker processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread
from tiny_ppo import TINY_PPO

from harness.cli import main
from harness.commands.demo import dashboard_command, mlflow_ui_command
from studies.spec import load_spec


@pytest.fixture
def workdir(tmp_path, monkeypatch, migrated_mlflow_db) -> Path:
    """A fresh working directory whose `runs/` holds a copy of the session's migrated MLflow store."""

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copy(migrated_mlflow_db, tmp_path / "runs" / "mlflow.db")
    return tmp_path


def tiny_spec(directory: Path, steps: int = 1024) -> Path:
    """Two PPO variants (entropy bonus off / on) x the toy task x 2 seeds: four short units."""

    text = textwrap.dedent(
        """
        name = "tiny-demo"
        kind = "compare"
        description = "a tiny demo"
        tasks = ["toy-bimodal"]
        seeds = 2
        steps = {steps}
        preset = "cpu"
        """
    ).format(steps=steps)
    for label, coef in (("no-bonus", 0.0), ("bonus", 0.01)):
        text += f'\n[variants.{label}]\nalgo = "ppo"\nentropy_coef = {coef}' + TINY_PPO
    path = directory / "tiny-demo.toml"
    path.write_text(text)
    return path


def mlflow_runs(experiment: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{Path('runs/mlflow.db').resolve()}")
    found = client.get_experiment_by_name(experiment)
    return len(client.search_runs([found.experiment_id])) if found else 0


def test_demo_runs_the_study_reports_it_and_resumes(workdir, capsys):
    spec = tiny_spec(workdir)
    argv = ["demo", "--spec", str(spec), "--workers", "2", "--reps", "200"]

    assert main(argv) == 0
    out = capsys.readouterr().out
    report = Path("runs/reports/tiny-demo")
    assert "Units: 4 run now, 0 reused" in out
    for name in ("aggregates", "sample_efficiency", "performance_profile", "probability_of_improvement"):
        assert f"{report / name}.png" in out
        pixels = imread(report / f"{name}.png")
        assert np.var(pixels) > 0  # drawn, not blank
    assert (report / "summary.md").is_file() and (report / "results.csv").is_file()
    assert "ui --backend-store-uri sqlite:///runs/mlflow.db" in out
    assert "optuna-dashboard runs/studies.journal" in out

    study = optuna.load_study(study_name="tiny-demo", storage=_journal())
    trials, runs = len(study.trials), mlflow_runs("tiny-demo")
    assert trials == 4 and runs == 5  # four units nested under the study's parent run
    (report / "aggregates.png").unlink()

    # Again: nothing is trained twice, the report is rebuilt.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "All 4 units are already done" in out and "Units: 0 run now, 4 reused" in out
    study = optuna.load_study(study_name="tiny-demo", storage=_journal())
    assert len(study.trials) == trials and mlflow_runs("tiny-demo") == runs
    assert (report / "aggregates.png").is_file()


def test_failed_units_fail_the_demo_and_it_says_what_to_do(workdir, capsys):
    spec = tiny_spec(workdir)
    spec.write_text(spec.read_text().replace("entropy_coef = 0.01", "entropy_coef = 0.01\nlr = 1e30"))
    assert main(["demo", "--spec", str(spec), "--workers", "1", "--reps", "200"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "2 units failed" in out and f"gorl-bench study run {spec} --storage" in out
    assert "--retry-diverged" in out and Path("runs/reports/tiny-demo/summary.md").is_file()


@pytest.mark.parametrize("how", ["ctrl-c", "kill", "kill -9"])
def test_an_interrupt_stops_the_workers_and_leaves_a_resumable_study(workdir, how):
    """Ctrl-C reaches the whole process group; `kill PID` only the demo, which left its workers
    training on, orphaned, and ended without a word; `kill -9 PID` gives the demo no chance to stop
    them, so the workers notice it is gone."""

    # Units long enough to be interrupted in the middle (several seconds each); after `kill -9`
    # long enough to outlast the test, so that only the coordinator's end can stop the workers.
    spec = tiny_spec(workdir, steps=409_600 if how == "kill -9" else 20_480)
    command = [sys.executable, "-m", "harness.cli", "demo", "--spec", str(spec), "--workers", "2"]
    command += ["--reps", "200"]

    def default_sigint() -> None:
        # A shell's background job ignores SIGINT; the demo must see it as a terminal would send it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    demo = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
        env={**os.environ, "MUJOCO_GL": "disable"},
    )
    try:
        deadline = time.monotonic() + 120
        while _running_trials() < 2:  # both workers are inside a unit
            assert demo.poll() is None and time.monotonic() < deadline, demo.communicate()[0]
            time.sleep(0.2)
        if how == "ctrl-c":
            os.killpg(demo.pid, signal.SIGINT)  # the whole foreground process group
        else:
            os.kill(demo.pid, signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
        out, _ = demo.communicate(timeout=60)
        deadline = time.monotonic() + 30
        while _group_alive(demo.pid):  # no worker is left in the demo's process group
            assert time.monotonic() < deadline, "the workers train on without their coordinator"
            time.sleep(0.2)
    finally:
        if _group_alive(demo.pid):
            os.killpg(demo.pid, signal.SIGKILL)
    if how == "kill -9":
        assert demo.returncode == -signal.SIGKILL
        return  # the workers left their units as a Ctrl-C does, whose resume is checked below
    assert demo.returncode == 130
    assert "Traceback" not in out
    assert "interrupted" not in out  # each worker printed it; the demo says "Interrupted: ..." once
    message = r"Interrupted: [0-3] of 4 units done and kept; run the same command again to resume\."
    assert re.fullmatch(message, out.rstrip().splitlines()[-1])

    if how == "kill":
        return  # what is left is the same as after ctrl-c, whose resume is checked below
    # Running it again finishes the study, retrying the interrupted units.
    from studies.status import study_status

    assert main(command[3:]) == 0
    status = study_status(optuna.load_study(study_name="tiny-demo", storage=_journal()))
    assert status.complete == 4 and status.lost >= 1


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _running_trials() -> int:
    from optuna.trial import TrialState

    if not Path("runs/studies.journal").is_file():
        return 0
    try:
        study = optuna.load_study(study_name="tiny-demo", storage=_journal())
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def test_demo_refuses_bad_input_with_a_message(workdir, capsys):
    assert main(["demo", "--spec", "no-such-spec"]) == 2
    assert "unknown study spec" in capsys.readouterr().err.lower()
    with pytest.raises(SystemExit) as exited:  # refused while parsing, before the demo's banner
        main(["demo", "--spec", str(tiny_spec(workdir)), "--workers", "0"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "argument --workers: must be a positive integer, got 0" in captured.err and captured.out == ""
    assert not Path("runs/studies.journal").exists()


def test_demo_checks_the_report_options_before_the_study_runs(workdir, capsys):
    spec = str(tiny_spec(workdir))
    assert main(["demo", "--spec", spec, "--reps", "0"]) == 2
    assert "--reps must be at least 100" in capsys.readouterr().err
    assert not Path("runs/studies.journal").exists()  # refused before the study ran
    Path("taken").write_text("")
    assert main(["demo", "--spec", spec, "--reps", "200", "--out", "taken"]) == 2
    assert "output directory taken: it exists and is not a directory" in capsys.readouterr().err
    assert main(["demo", "--spec", spec, "--reps", "200", "--out", "taken/report"]) == 2
    assert f"{workdir / 'taken'} exists and is not a directory" in capsys.readouterr().err
    assert not Path("runs/studies.journal").exists()


def test_printed_commands_name_the_stores():
    assert mlflow_ui_command("http://db:5000").startswith("open http://db:5000")
    command = mlflow_ui_command("postgresql+psycopg2://me@db/mlflow")
    assert command.endswith("mlflow ui --backend-store-uri postgresql+psycopg2://me@db/mlflow")
    assert dashboard_command("postgresql+psycopg2://me@db/gorl").endswith(
        "optuna-dashboard postgresql+psycopg2://me@db/gorl"
    )


def test_the_shipped_demo_spec_is_an_ablation_with_a_baseline():
    spec = load_spec("demo")
    algos = {algo for _, algo, _ in spec.configurations()}
    assert spec.kind == "compare" and algos == {"ppo", "gorl-fm"}
    assert spec.seeds >= 3 and len(spec.tasks) == 2
    refits = sorted(p["num_refits"] for _, algo, p in spec.configurations() if algo == "gorl-fm")
    assert len(refits) == 2 and refits[0] != refits[1]


def _journal() -> optuna.storages.BaseStorage:
    from studies.storage import open_storage

    return open_storage(None)
