"""Running studies: units done exactly once, MLflow nesting, failures, budgets, pruning, status.

The end-to-end tests run real `ppo` units on the fast `toy-bimodal` task in worker
processes; the bookkeeping tests run a worker in-process with the run harness replaced by a
fake, so they take no training time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from interrupts import interrupted_inside_a_c_extension_import
from optuna.trial import TrialState
from tiny_ppo import TINY_PPO

from harness import run as run_harness
from harness.cli import main
from harness.errors import UserError
from harness.report.results import load_study_results
from harness.tracking import resolve_tracking_uri
from studies import runner
from studies.spec import load_spec, variant_dir
from studies.status import study_status
from studies.storage import counted_trials, open_storage, storage_location
from studies.worker import load_study, run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec_file(tmp_path: Path, top: str, tables: str, steps: int = 1024) -> Path:
    """A spec with `top`-level keys, the tiny PPO settings as [fixed], then `tables`."""

    head = f"""
        description = "test study"
        algo = "ppo"
        tasks = ["toy-bimodal"]
        steps = {steps}
        preset = "cpu"
    """
    path = tmp_path / "tiny.toml"
    fixed = "\n[fixed]" + TINY_PPO
    path.write_text(textwrap.dedent(head) + textwrap.dedent(top) + fixed + textwrap.dedent(tables))
    return path


def grid_spec(tmp_path: Path, seeds: int, coefs: list[float], top: str = "", steps: int = 1024) -> Path:
    """A grid over PPO's entropy coefficient (the fake harness fails 0.25 and 0.5)."""

    top = f'kind = "grid"\nseeds = {seeds}\n{top}'
    return spec_file(tmp_path, top, f"[grid]\nentropy_coef = {coefs}\n", steps)


@pytest.fixture
def workdir(tmp_path, monkeypatch, migrated_mlflow_db) -> Path:
    """Run in a fresh directory: `runs/` (journal, MLflow store, unit outputs) lands there.

    The MLflow store is a copy of the session's migrated one (conftest.py), at the default path.
    """

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copy(migrated_mlflow_db, tmp_path / "runs" / "mlflow.db")
    return tmp_path


@dataclasses.dataclass
class FakeResult:
    mlflow_run_id: str
    final_score: float
    status: str


def unit_run(request) -> str:
    """The MLflow run a faked unit logs to, nested under the study's (or trial's) run."""

    from mlflow.tracking import MlflowClient

    client = MlflowClient(request.tracking_uri)
    experiment = client.get_experiment_by_name(request.experiment)
    return client.create_run(
        experiment.experiment_id, tags={"mlflow.parentRunId": request.parent_run_id}
    ).info.run_id


@pytest.fixture
def fake_execute(monkeypatch):
    """Replace the run harness: scores fall with every call; two entropy_coef values fail."""

    calls = []

    def execute(request, *, on_evaluation=None, progress=True):
        calls.append(request)
        run_id = unit_run(request)
        if request.overrides.get("entropy_coef") == 0.5:
            raise RuntimeError("synthetic failure")
        score = float("nan") if request.overrides.get("entropy_coef") == 0.25 else 1000.0 / len(calls)
        if on_evaluation is not None:
            on_evaluation(1, score)
        return FakeResult(run_id, score, "FINISHED" if math.isfinite(score) else "FAILED")

    monkeypatch.setattr(run_harness, "execute", execute)
    return calls


@pytest.fixture
def disk_full_until_fixed(monkeypatch, fake_execute) -> list[bool]:
    """The faked harness, with entropy_coef = 0.1 failing on a full disk until the returned list
    is emptied (the disk has space again)."""

    fake, broken = run_harness.execute, [True]

    def out_of_disk_space_until_fixed(request, **kwargs):
        if request.overrides.get("entropy_coef") == 0.1 and broken:
            raise OSError("No space left on device")
        return fake(request, **kwargs)

    monkeypatch.setattr(run_harness, "execute", out_of_disk_space_until_fixed)
    return broken


@pytest.fixture
def workers_in_process(monkeypatch):
    """`study run` with its worker in this process, so that it runs units with the faked harness."""

    def run_workers(study, location, workers, device, progress):
        run_worker(study.study_name, location, device=device)

    monkeypatch.setattr(runner, "_run_workers", run_workers)


def compare_spec(tmp_path: Path, labels: list[str], seeds: int = 1) -> Path:
    """A compare study of tiny PPO variants with the given (TOML-quoted) labels; each variant has its
    own entropy bonus, as two variants of one configuration are refused."""

    head = f'kind = "compare"\ndescription = "test"\ntasks = ["toy-bimodal"]\nseeds = {seeds}\nsteps = 1024\n'
    variants = "".join(
        f'\n[variants.{json.dumps(label)}]\nalgo = "ppo"\nentropy_coef = {index / 1000}' + TINY_PPO
        for index, label in enumerate(labels)
    )
    path = tmp_path / "tiny.toml"
    path.write_text(head + variants)
    return path


def prepared(path: Path) -> optuna.Study:
    spec = load_spec(path)
    study = runner.prepare_study(spec, storage_location(None), resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    return study


def owned_by_a_dead_process(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Record as the trial's owner a process of this host that has exited, as a killed worker's."""

    import socket
    import subprocess
    import time

    from studies.storage import OWNER_ATTR

    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = {"host": socket.gethostname(), "pid": gone.pid, "beat": time.time()}
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)


def assert_each_unit_complete_once(study: optuna.Study) -> None:
    complete = Counter(t.user_attrs["unit"] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert sorted(complete) == sorted(study.user_attrs["units_expected"])
    assert set(complete.values()) == {1}


# --- End to end, real training runs ---------------------------------------------------------------


def test_grid_study_completes_with_nested_mlflow_runs_and_a_diverged_unit(workdir):
    from mlflow.tracking import MlflowClient

    # Two entropy coefficients, and a learning rate that makes the loss non-finite.
    grids = "[[grid]]\nentropy_coef = [0.0, 0.01]\n[[grid]]\nlr = [1e30]\n"
    status = runner.run_study(spec_file(workdir, 'kind = "grid"\nseeds = 1\n', grids), progress=False)
    assert status.finished and (status.complete, status.failed) == (2, 1)

    study = load_study("tiny", None)
    assert study.user_attrs["swept"] == ["entropy_coef", "lr"]
    assert sorted(t.user_attrs["unit"] for t in study.trials) == sorted(study.user_attrs["units_expected"])
    client = MlflowClient(study.user_attrs["tracking_uri"])
    parent = study.user_attrs["mlflow_parent_run_id"]
    for trial in study.trials:
        assert {"unit", "variant", "algo", "task", "seed", "params", "mlflow_run_id"} <= set(trial.user_attrs)
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent
        if trial.user_attrs["params"].get("lr") == 1e30:
            assert trial.state == TrialState.FAIL and "ended FAILED" in trial.user_attrs["fail_reason"]
            assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
            assert run.data.tags["optuna.trial"] == str(trial.number)  # told apart from a rerun's
        else:
            assert trial.state == TrialState.COMPLETE and run.data.tags["optuna.trial"] == str(trial.number)
            # Its pace at its last evaluation, which the ETA reads while it runs
            progress = trial.user_attrs["progress"]
            assert progress["step"] == max(trial.intermediate_values) and progress["seconds"] > 0
    # As `study run` exits 1: the study's run was FINISHED with its units failed.
    study_run = client.get_run(parent)
    assert study_run.info.status == "FAILED" and study_run.data.tags["optuna.state"] == "FAIL"
    assert study_run.data.tags["status_reason"].startswith("1 unit failed; `gorl-bench study status tiny`")
    # The diverged variant is ranked, so the report knows its config (e.g. how it was evaluated).
    assert set(load_study_results("tiny").configs) == {t.user_attrs["variant"] for t in study.trials}


def run_and_kill_one_worker(workdir: Path, path: Path, storage: str) -> None:
    """Start `study run --workers 2`; SIGKILL a worker whose unit is past its first evaluation.

    The harness checkpoints at every evaluation, so the retried unit resumes from there.
    """

    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "harness.cli", "study", "run", str(path), "--workers", "2"]
    coordinator = subprocess.Popen([*command, "--storage", storage], cwd=workdir)
    study, killed = None, None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and coordinator.poll() is None:
        time.sleep(0.2)
        if study is None:
            try:
                study = load_study("tiny", storage)
            except UserError:  # the coordinator has not created it yet
                continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.intermediate_values and "gorl:owner" in trial.system_attrs:
                killed = trial.system_attrs["gorl:owner"]["pid"]
                os.kill(killed, signal.SIGKILL)
                break
    assert killed is not None, "no unit was ever seen past its first evaluation"
    coordinator.wait(timeout=180)


def check_recovered(workdir: Path, path: Path, storage: str) -> None:
    status = runner.run_study(path, storage, workers=1, progress=False)
    assert status.finished and status.failed == 0
    study = load_study("tiny", storage)
    assert_each_unit_complete_once(study)
    lost = [t for t in study.trials if t.state == TrialState.FAIL]
    assert lost and all(t.user_attrs.get("lost") for t in lost)
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") in {t.number for t in lost}]
    assert len(retries) == len(lost)
    # Resumed from the checkpoint at the first evaluation: only the last one was left to report.
    assert all(len(t.intermediate_values) == 1 for t in retries if t.state == TrialState.COMPLETE)
    # The killed unit's MLflow run was closed when the unit was retried: nothing is left RUNNING.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.user_attrs["tracking_uri"])
    runs = client.search_runs([study.user_attrs["mlflow_experiment_id"]])
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}


def with_an_earlier_run_in_its_directory(workdir: Path) -> tuple[optuna.Study, Path, str]:
    """A one-unit study of 1024 steps whose unit directory holds the finished checkpoint of a
    512-step run of the same unit: an earlier study of the same name, deleted and created again
    with another budget. Returns the study, the directory and the earlier run's MLflow run id."""

    path = grid_spec(workdir, 1, [0.0], steps=1024)
    study = prepared(path)
    (unit,) = load_spec(path).units()
    out_dir = workdir / "runs" / "studies" / "tiny" / variant_dir(unit.variant) / f"{unit.task}-seed0"
    request = run_harness.RunRequest(
        unit.algo, unit.task, unit.seed, 512, overrides=unit.params, out_dir=out_dir
    )
    return study, out_dir, run_harness.execute(request, progress=False).mlflow_run_id


@pytest.mark.parametrize("attempt", ["a retry", "a first attempt"])
def test_a_checkpoint_of_another_run_is_moved_aside_not_resumed(workdir, capsys, attempt):
    """A retry must not resume another run's checkpoint, and no attempt may overwrite it without
    a trace."""

    from mlflow.tracking import MlflowClient

    from studies import storage

    study, out_dir, old_run_id = with_an_earlier_run_in_its_directory(workdir)
    if attempt == "a retry":  # of a first attempt killed before its first checkpoint
        claimed = storage.claim_waiting_trial(study)
        owned_by_a_dead_process(study, study.trials[claimed.number])
    assert run_worker("tiny", None) == 1

    (done,) = load_study("tiny", None).get_trials(states=(TrialState.COMPLETE,))
    run = MlflowClient(study.user_attrs["tracking_uri"]).get_run(done.user_attrs["mlflow_run_id"])
    assert run.info.run_id != old_run_id and run.data.params["steps"] == "1024"
    (aside,) = out_dir.parent.glob(f"{out_dir.name}.stale-*")
    assert run_harness.load_run(aside)[0].steps == 512 and run_harness.load_run(out_dir)[0].steps == 1024
    assert f"moved it to {aside.name}" in capsys.readouterr().out


def test_the_directory_of_a_run_still_training_is_not_moved_aside(workdir):
    from harness.checkpoint import hold_run_directory

    study, out_dir, _ = with_an_earlier_run_in_its_directory(workdir)
    with hold_run_directory(out_dir):  # the earlier study's worker, still training
        assert run_worker("tiny", None) == 1
    (trial,) = load_study("tiny", None).trials
    assert trial.state == TrialState.FAIL and "still training" in trial.user_attrs["fail_reason"]
    assert run_harness.load_run(out_dir)[0].steps == 512
    assert not list(out_dir.parent.glob(f"{out_dir.name}.stale-*"))


def test_a_unit_rerun_after_an_error_resumes_its_checkpoint(workdir, monkeypatch):
    """`--retry-failed` reruns a unit stopped by an error from its last checkpoint, in its MLflow run."""

    real = run_harness.execute

    def disk_full_after_the_first_evaluation(request, *, on_evaluation=None, progress=True):
        def stop(step, mean_return):
            raise OSError("No space left on device")

        return real(request, on_evaluation=stop, progress=progress)

    path = grid_spec(workdir, 1, [0.0])
    prepared(path)
    monkeypatch.setattr(run_harness, "execute", disk_full_after_the_first_evaluation)
    assert run_worker("tiny", None) == 1
    # As if the first attempt ran on a GPU that then failed: the rerun trains on the study's device.
    from harness.checkpoint import load_checkpoint, save_checkpoint

    (checkpoint,) = (workdir / "runs").rglob("checkpoint.pt")
    state = load_checkpoint(checkpoint.parent)
    state["request"]["device"] = "cuda:7"
    save_checkpoint(checkpoint.parent, state)
    monkeypatch.setattr(run_harness, "execute", real)
    status = runner.run_study(path, retry_failed=True, progress=False)
    assert (status.complete, status.failed, status.rerun) == (1, 0, 1)
    failed, rerun = load_study("tiny", None).trials
    assert failed.user_attrs["failure"] == "error" and rerun.user_attrs["rerun_of"] == failed.number
    assert len(rerun.intermediate_values) == 1  # only the evaluation after the checkpoint was left
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_tracking_uri(None))
    experiment = client.get_experiment_by_name("tiny").experiment_id
    (run,) = client.search_runs([experiment], "tags.`gorl.unit` != ''")  # the unit's one run
    assert run.info.run_id == rerun.user_attrs["mlflow_run_id"] and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "eval/return_mean")) == 2


def test_a_retry_of_a_lost_rerun_of_a_diverged_unit_still_starts_from_the_beginning(
    workdir, fake_execute, monkeypatch
):
    """A rerun of a diverged unit whose worker died before it moved the diverged checkpoint aside is
    retried as a rerun: the retry must not resume that checkpoint either."""

    from studies import storage, worker

    path = grid_spec(workdir, 1, [0.25])  # the fake harness diverges on 0.25
    prepared(path)
    assert run_worker("tiny", None) == 1
    study = load_study("tiny", None)
    assert runner.rerun_failed(study, {storage.DIVERGED}) == 1
    rerun = storage.claim_waiting_trial(study)
    owned_by_a_dead_process(study, study.trials[rerun.number])
    resumed = []
    execute = worker._execute

    def spy(*args, **kwargs):
        resumed.append(kwargs["resume"])
        return execute(*args, **kwargs)

    monkeypatch.setattr(worker, "_execute", spy)
    assert run_worker("tiny", None) == 1
    diverged, lost, retry = load_study("tiny", None).trials
    assert storage.is_lost(lost) and retry.user_attrs["retry_of"] == lost.number
    assert retry.user_attrs["rerun_of"] == diverged.number
    assert resumed == [False]


def test_a_unit_whose_rerun_was_lost_without_a_retry_is_enqueued_again(workdir, fake_execute):
    """A sweep that stopped between failing a lost rerun and enqueueing its retry leaves the unit
    only a failure that the rerun replaced, which no longer counts: the unit is enqueued again, or
    the study could never finish."""

    from studies import storage

    path = grid_spec(workdir, 1, [0.5])  # the fake harness fails 0.5 with an error
    prepared(path)
    assert run_worker("tiny", None) == 1
    study = load_study("tiny", None)
    assert runner.rerun_failed(study, {storage.ERROR}) == 1
    rerun = storage.claim_waiting_trial(study)
    study._storage.set_trial_user_attr(rerun._trial_id, "lost", True)
    study._storage.set_trial_state_values(rerun._trial_id, TrialState.FAIL)
    assert runner.enqueue_missing_units(study, load_spec(path)) == 1


# Long enough (a few seconds per unit) for a worker to be killed in the middle of one.
KILLABLE_STEPS = 8192


def test_killed_worker_leaves_units_recoverable_on_the_journal(workdir):
    path = grid_spec(workdir, 1, [0.0, 0.01], steps=KILLABLE_STEPS)
    storage = str(workdir / "runs" / "studies.journal")
    run_and_kill_one_worker(workdir, path, storage)
    check_recovered(workdir, path, storage)


@pytest.fixture
def postgres_url():
    """A fresh database on the PostgreSQL server named by GORL_TEST_POSTGRES_URL, dropped afterwards."""

    import os
    import uuid

    url = os.environ.get("GORL_TEST_POSTGRES_URL")
    # Skip reasons are printed in the run's summary (pytest -ra, set in pyproject.toml).
    if not url:
        pytest.skip("GORL_TEST_POSTGRES_URL is not set; .ci/run starts a server and sets it")
    import psycopg2

    try:
        admin = psycopg2.connect(url, connect_timeout=5)
    except psycopg2.OperationalError as error:
        pytest.skip(f"cannot connect to {url}: {error}")
    admin.autocommit = True
    name = f"gorl_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.mark.postgres
def test_killed_worker_leaves_units_recoverable_on_postgresql(workdir, postgres_url):
    path = grid_spec(workdir, 1, [0.0, 0.01], steps=KILLABLE_STEPS)
    run_and_kill_one_worker(workdir, path, postgres_url)
    check_recovered(workdir, path, postgres_url)


# --- Bookkeeping, with the run harness faked ------------------------------------------------------


def test_failing_units_are_recorded_and_the_study_goes_on(workdir, fake_execute):
    path = grid_spec(workdir, 1, [0.0, 0.25, 0.5])
    study = prepared(path)
    assert run_worker("tiny", None) == 3
    by_coef = {t.user_attrs["params"]["entropy_coef"]: t for t in load_study("tiny", None).trials}
    assert by_coef[0.0].state == TrialState.COMPLETE
    assert (
        by_coef[0.25].state == TrialState.FAIL and "ended FAILED" in by_coef[0.25].user_attrs["fail_reason"]
    )
    assert by_coef[0.5].state == TrialState.FAIL
    assert by_coef[0.5].user_attrs["fail_reason"] == "RuntimeError: synthetic failure"
    # A failed unit is settled: resuming the study does not run it again.
    assert runner.enqueue_missing_units(study, load_spec(path)) == 0


def test_a_report_of_a_study_whose_every_unit_failed_says_to_retry_them(workdir, fake_execute, capsys):
    """It said "run or resume it", which changes nothing: failed units are settled."""

    prepared(grid_spec(workdir, 2, [0.5]))  # the fake fails 0.5 with an error
    assert run_worker("tiny", None) == 2
    assert main(["report", "tiny", "--reps", "200"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "every unit of study 'tiny' failed (2; entropy_coef=0.5|toy-bimodal|seed0: RuntimeError: synthetic"
        in err
    )
    assert "rerun the units it failed: gorl-bench study run SPEC --retry-failed" in err
    # A diverged unit is a result (its task's worst score): with one, the study is reported.
    spec = grid_spec(workdir, 1, [0.5, 0.25], top='name = "with-a-diverged-unit"')
    runner.enqueue_missing_units(
        runner.prepare_study(load_spec(spec), storage_location(None), resolve_tracking_uri(None)),
        load_spec(spec),
    )
    assert run_worker("with-a-diverged-unit", None) == 2
    assert main(["report", "with-a-diverged-unit", "--reps", "200"]) == 0


def test_a_tune_trial_scores_a_diverged_unit_at_its_task_s_worst(workdir, fake_execute, workers_in_process):
    """A trial with a diverged unit failed, and TPE learns from complete and pruned trials only: it
    went on sampling the region that diverges."""

    top = 'kind = "tune"\nseeds = 1\nmax_trials = 2\npruner = "none"\n'
    path = spec_file(workdir, top, "[space.entropy_coef]\nchoices = [0.0, 0.25]\n")
    study = prepared(path)
    study.enqueue_trial({"entropy_coef": 0.25})  # the fake harness diverges on 0.25
    study.enqueue_trial({"entropy_coef": 0.0})
    assert main(["study", "run", str(path)]) == 0
    diverged, finished = load_study("tiny", None).trials
    assert (diverged.state, diverged.value) == (TrialState.COMPLETE, 0.0)
    assert diverged.user_attrs["units"][0]["diverged"] and "diverged" not in finished.user_attrs["units"][0]
    assert finished.state == TrialState.COMPLETE and finished.value > 0
    assert main(["report", "tiny", "--reps", "200", "--out", str(workdir / "report")]) == 0
    summary = (workdir / "report" / "summary.md").read_text()
    # Ranked with its worst score (the fake harness logs no evaluations: trial 1 has none to rank).
    assert "| 1 | trial-0 | 0.000 [0.000, 0.000] | 0.25 |" in summary
    # The best-ranked trial's settings, although its one unit diverged (a KeyError ended the report).
    assert "entropy_coef = 0.25" in (workdir / "report" / "best_config.toml").read_text()
    assert "1 diverged unit counted with the task's worst score" in summary
    csv = (workdir / "report" / "results.csv").read_text().splitlines()
    assert sum(line.endswith(",True") for line in csv) == 1


def test_labels_that_slug_alike_get_their_own_directories_inside_the_study(workdir, fake_execute):
    """Labels "ppo a" and "ppo/a" once shared one directory (the second unit overwrote the first's
    checkpoint), and ".." wrote next to the study's folder instead of inside it."""

    labels = ["ppo a", "ppo/a", "..", ".", "lr=0.001"]
    prepared(compare_spec(workdir, labels))
    assert run_worker("tiny", None) == len(labels)
    study_dir = (workdir / "runs" / "studies" / "tiny").resolve()
    variant_dirs = {Path(request.out_dir).parent for request in fake_execute}
    assert len(variant_dirs) == len(labels)
    assert all(path.parent == study_dir and not path.name.startswith(".") for path in variant_dirs)
    assert study_dir / "lr=0.001" in variant_dirs  # a plain label keeps its own name


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_a_device_that_cannot_run_is_refused_before_any_unit(
    workdir, fake_execute, workers_in_process, monkeypatch, capsys, device
):
    """Every unit failed with "CUDA is not available", and the study ended "finished" with status 0."""

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    path = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(path), "--device", device]) == 2
    assert not (workdir / "runs" / "studies.journal").exists()  # refused before the study was created
    prepared(path)
    assert main(["study", "worker", "tiny", "--device", device]) == 2
    assert capsys.readouterr().err.count(f"device {device!r}") == 2
    assert fake_execute == [] and load_study("tiny", None).trials[0].state == TrialState.WAITING


def test_the_workers_of_a_study_on_cuda_take_the_gpus_in_turn():
    """Every worker trained on cuda:0, leaving a machine's other GPUs idle."""

    assert [runner.worker_device("cuda", index, 2) for index in range(5)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"
    ]  # fmt: skip
    assert [runner.worker_device("cuda", index, 1) for index in range(2)] == ["cuda", "cuda"]
    assert runner.worker_device("cuda:2", 1, 4) == "cuda:2"  # a numbered GPU is every worker's
    assert runner.worker_device("cpu", 1, 4) == "cpu"


def test_study_run_starts_each_worker_on_its_own_gpu(workdir, monkeypatch):
    """The worker processes' command lines, on a machine with two GPUs (no GPU trains here)."""

    import torch

    started = []

    class ExitedWorker:  # a worker process that has already ended, having had nothing to do
        returncode = 0

        def __init__(self, args, env):
            self.args = args
            started.append(args)

        def poll(self):
            return 0

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runner.subprocess, "Popen", ExitedWorker)
    study = prepared(grid_spec(workdir, 1, [0.0]))
    runner._run_workers(study, storage_location(None), 3, "cuda", progress=False)
    devices = [args[args.index("--device") + 1] for args in started]
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]


def test_a_worker_whose_parent_is_not_the_one_named_stops_with_a_message(workdir, capsys):
    """It stopped at once with "interrupted" alone, like a worker whose coordinator had ended."""

    prepared(grid_spec(workdir, 1, [0.0]))
    assert main(["study", "worker", "tiny", "--parent-pid", "1"]) == 2
    assert f"--parent-pid 1: this worker was started by process {os.getppid()}" in capsys.readouterr().err
    assert load_study("tiny", None).trials[0].state == TrialState.WAITING


def test_a_worker_trains_on_the_device_of_the_study_run_by_default(
    workdir, fake_execute, workers_in_process, capsys
):
    """A worker joining from another machine trained on its CPU, whatever `study run --device` said."""

    path = grid_spec(workdir, 1, [0.0, 0.01])
    study = prepared(path)
    study.set_user_attr("device", "meta")  # as `study run --device` records it; refused by any worker here
    assert main(["study", "worker", "tiny"]) == 2
    assert (
        "(the device of the study's latest `study run`; --device chooses another)" in capsys.readouterr().err
    )
    assert main(["study", "worker", "tiny", "--device", "cpu"]) == 0  # given: as it says
    assert len(fake_execute) == 2
    # Started by hand, it says what it serves and how the study stands after each unit (it was
    # silent until it ended).
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("serving study 'tiny' on cpu")
    assert "1 claimed here; study tiny (grid): 1/2 done, ETA" in out[1]
    assert "2 claimed here; study tiny (grid): 2/2 done - finished" in out[2]
    assert main(["study", "run", str(path)]) == 0
    assert load_study("tiny", None).user_attrs["device"] == "cpu"  # recorded by each `study run`


def test_failed_units_fail_the_study_run_and_are_rerun_only_when_asked(
    workdir, fake_execute, workers_in_process, disk_full_until_fixed, capsys
):
    """A study whose units failed ended "finished" with status 0, and no rerun of `study run`
    could run them again once the cause was fixed."""

    path = str(grid_spec(workdir, 1, [0.0, 0.1, 0.25]))  # the fake diverges at 0.25
    assert main(["study", "run", path]) == 1
    out = capsys.readouterr().out
    assert "3/3 done - finished, 2 failed" in out
    assert "failed entropy_coef=0.1|toy-bimodal|seed0: OSError: No space left on device" in out
    assert f"gorl-bench study run {path} --retry-failed" in out and "--retry-diverged" in out

    assert main(["study", "run", path]) == 1  # settled: nothing runs again unasked
    assert len(fake_execute) == 2 and "--retry-failed" in capsys.readouterr().out

    disk_full_until_fixed.clear()  # the disk has space again
    assert main(["study", "run", path, "--retry-failed"]) == 1  # the diverged unit is still failed
    out = capsys.readouterr().out
    assert "3/3 done - finished, 1 failed" in out and "failed+rerun 1" in out
    assert [r.overrides["entropy_coef"] for r in fake_execute[2:]] == [0.1]

    assert main(["study", "run", path, "--retry-diverged"]) == 1  # it diverges again
    assert [r.overrides["entropy_coef"] for r in fake_execute[3:]] == [0.25]
    status = study_status(load_study("tiny", None))
    assert (status.complete, status.failed, status.rerun, status.finished) == (2, 1, 2, True)


def test_under_max_trials_a_rerun_runs_before_units_that_never_ran(
    workdir, fake_execute, workers_in_process, disk_full_until_fixed, capsys
):
    """The rerun of a failed unit was enqueued behind the unit that max_trials had kept from
    running; the freed slot went to that unit, the rerun waited for ever, and the failure was
    gone from the status."""

    path = str(grid_spec(workdir, 1, [0.0, 0.1, 0.01], top="max_trials = 2\n"))
    assert main(["study", "run", path]) == 1
    assert "2/2 done - finished, 1 failed" in capsys.readouterr().out
    disk_full_until_fixed.clear()
    assert main(["study", "run", path, "--retry-failed"]) == 0
    # The failed attempt never reached the harness: the runs are 0.0, then the rerun, not 0.01.
    assert [r.overrides["entropy_coef"] for r in fake_execute] == [0.0, 0.1]
    study = load_study("tiny", None)
    status = study_status(study)
    assert (status.complete, status.failed, status.rerun, status.finished) == (2, 0, 1, True)
    # The study's run finished without the reason the first close gave it ("1 unit failed").
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(study.user_attrs["tracking_uri"]).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "status_reason" not in parent.data.tags


def test_an_invalid_sampled_combination_fails_at_once_and_fails_the_study_run(
    workdir, fake_execute, workers_in_process, capsys
):
    """A tune study with a combination that the config refuses ended "finished" with status 0."""

    fixed = TINY_PPO.replace("num_minibatches = 2\n", "")  # 8 envs x 32 steps: a batch of 256
    top = 'kind = "tune"\nseeds = 1\nmax_trials = 1\n'
    path = spec_file(workdir, top, "[space.num_minibatches]\nlow = 2\nhigh = 4\n")
    path.write_text(path.read_text().replace(TINY_PPO, fixed))
    study = prepared(path)  # the corners, 2 and 4, divide the batch; 3 does not
    study.enqueue_trial({"num_minibatches": 3})
    assert main(["study", "run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1/1 done - finished, 1 failed" in out and "never rerun" in out
    (trial,) = load_study("tiny", None).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["failure"] == "invalid"
    assert "num_minibatches (3) must divide" in trial.user_attrs["fail_reason"]
    assert fake_execute == []  # no unit ran
    assert main(["study", "run", str(path), "--retry-failed"]) == 1 and fake_execute == []


def test_trial_budget_holds_across_workers(workdir, fake_execute):
    prepared(grid_spec(workdir, 3, [0.0, 0.01], top="max_trials = 4\n"))
    assert run_worker("tiny", None) + run_worker("tiny", None) == 4
    study = load_study("tiny", None)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert study_status(study).finished


@pytest.mark.parametrize("kind", ["grid", "tune"])
def test_the_budget_is_checked_with_the_claim(workdir, fake_execute, monkeypatch, kind):
    """Two workers that both saw one unit of `max_trials` left both claimed one: the budget was
    checked before the claim's lock was taken (`max_trials = 1` ran 2)."""

    from studies import storage, worker

    if kind == "grid":
        prepared(grid_spec(workdir, 1, [0.0, 0.01], top="max_trials = 1\n"))
        take, name = storage.claim_waiting_trial, "claim_waiting_trial"
    else:
        top = 'kind = "tune"\nseeds = 1\nmax_trials = 1\npruner = "none"\n'
        prepared(spec_file(workdir, top, "[space.entropy_coef]\nlow = 0.0\nhigh = 0.01\n"))
        take, name = storage.ask_owned, "ask_owned"

    def another_worker_takes_one_first(study, *args):
        take(study)  # its claim lands between this worker's budget check and this worker's claim
        return take(study, *args)

    monkeypatch.setattr(worker, name, another_worker_takes_one_first)
    assert run_worker("tiny", None) == 0
    study = load_study("tiny", None)
    assert len([t for t in study.trials if t.state != TrialState.WAITING]) == 1 and fake_execute == []


def test_overlapping_grid_tables_enqueue_and_run_each_unit_once(workdir, fake_execute):
    grids = "[[grid]]\nentropy_coef = [0.0, 0.01]\n[[grid]]\nentropy_coef = [0.01]\n"
    study = prepared(spec_file(workdir, 'kind = "grid"\nseeds = 1\n', grids))
    assert len(study.trials) == 2
    assert run_worker("tiny", None) == 2 and len(fake_execute) == 2
    assert_each_unit_complete_once(study)


def test_a_claimed_unit_stores_no_distribution_that_lists_every_unit(workdir, fake_execute):
    """Each claim suggested the unit as a categorical parameter over all the grid's unit keys, so
    every trial stored them all: the storage grew with the square of the number of units."""

    prepared(grid_spec(workdir, 2, [0.0, 0.01, 0.1]))
    assert run_worker("tiny", None) == 6
    trials = load_study("tiny", None).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(t.distributions == {} for t in trials)


def test_a_unit_running_under_a_live_worker_is_not_run_again(workdir, fake_execute):
    """Two coordinators that enqueued the same unit: the later claim of it is a duplicate."""

    from studies import storage

    path = grid_spec(workdir, 1, [0.0])
    study = prepared(path)
    (unit,) = load_spec(path).units()
    study.enqueue_trial({"unit": unit.key}, user_attrs=unit.record())  # the other coordinator's
    running = storage.claim_waiting_trial(study)  # a live worker (this process) runs it
    assert run_worker("tiny", None) == 1
    assert fake_execute == []
    first, second = load_study("tiny", None).trials
    assert first.number == running.number and first.state == TrialState.RUNNING
    assert second.state == TrialState.PRUNED and second.user_attrs["duplicate_of"] == first.number
    assert runner.enqueue_missing_units(study, load_spec(path)) == 0
    # The duplicate counts neither against the budget nor in status and reports.
    assert [t.number for t in storage.counted_trials([first, second])] == [first.number]


def test_a_tune_trial_scores_its_units_by_the_iqm_of_rliable():
    """With at most two units per trial in the tests, a median or a plain mean passed for it."""

    import numpy as np
    from rliable import metrics

    from studies.worker import iqm

    for values in ([0.2, 0.9, 0.5], [0.0, 1, 2, 3, 10, 11, 12, 100], [0.3] * 5 + [0.9], [0.7]):
        assert iqm(values) == pytest.approx(metrics.aggregate_iqm(np.array(values)[:, None]))
    assert iqm([0.0, 1, 2, 3, 10, 11, 12, 100]) == pytest.approx(6.5)  # mean of 2, 3, 10, 11


STEPS = 1_000_000  # counted env steps per unit, as a spec gives them


def test_the_eta_expects_each_unit_to_take_as_long_as_its_own_configuration():
    """Two PPO units took 1 minute, one GoRL unit 10: the median of all, 1 minute per unit, said
    the two GoRL units left would take 1 minute on 2 workers, and jumped as each variant finished."""

    from datetime import datetime, timedelta

    from optuna.trial import FrozenTrial

    from studies.status import _eta

    now = datetime(2026, 12, 2, 12, 0, 0)

    def trial(number: int, variant: str, state: TrialState, minutes: float | None = None) -> FrozenTrial:
        start = None if state == TrialState.WAITING else now - timedelta(minutes=minutes or 0)
        done = now if state == TrialState.COMPLETE else None
        attrs = {"variant": variant, "task": "cheetah-run"}
        return FrozenTrial(number, state, None, start, done, {}, {}, attrs, {}, {}, number)

    finished = [trial(0, "ppo", TrialState.COMPLETE, 1), trial(1, "ppo", TrialState.COMPLETE, 1),
                trial(2, "gorl", TrialState.COMPLETE, 10)]  # fmt: skip
    # One GoRL unit 4 minutes in (6 left), two waiting (10 each) and a PPO one waiting (1): 27
    # minutes of work on 2 workers, 13.5 minutes (the median of all: 1 minute x 2 waves).
    left = [trial(3, "gorl", TrialState.RUNNING, 4), trial(4, "gorl", TrialState.WAITING),
            trial(5, "gorl", TrialState.WAITING), trial(6, "ppo", TrialState.WAITING)]  # fmt: skip
    assert _eta(finished + left, 4, 2, STEPS, now) == timedelta(minutes=13.5)
    # No sooner than the longest unit: a 10-minute unit and a 1-minute one on 4 workers.
    assert _eta(finished + left[2:], 2, 4, STEPS, now) == timedelta(minutes=10)
    # A configuration none of whose units finished takes the median of all (1 minute), as do the
    # tune trials of the budget not yet created (2 more here).
    assert _eta(finished + [trial(7, "new", TrialState.WAITING)], 3, 1, STEPS, now) == timedelta(minutes=3)
    assert _eta(left, 3, 2, STEPS, now) is None and _eta(finished, 0, 2, STEPS, now) == timedelta(0)


def test_before_any_unit_finishes_the_eta_follows_the_running_units_pace():
    """The ETA said "-" until the first unit ended: hours, for units of the `paper` preset."""

    from datetime import datetime, timedelta

    from optuna.trial import FrozenTrial

    from studies.status import _eta

    now = datetime(2026, 12, 3, 12, 0, 0)

    def running(number: int, minutes: float, step: int, seconds: float, **attrs) -> FrozenTrial:
        user_attrs = {
            "variant": "gorl",
            "task": "cheetah-run",
            "progress": {"step": step, "seconds": seconds},
        }
        start = now - timedelta(minutes=minutes)
        return FrozenTrial(number, TrialState.RUNNING, None, start, None, {}, {}, {**user_attrs, **attrs},
                           {}, {}, number)  # fmt: skip

    waiting = FrozenTrial(9, TrialState.WAITING, None, None, None, {}, {}, {"variant": "gorl"}, {}, {}, 9)
    # A quarter of the budget in 60 s: 240 s in all, 150 s left 90 s in; the waiting unit is
    # expected to take the median pace's 240 s; on 2 workers no sooner than the longest, 240 s.
    paced = running(0, 1.5, STEPS // 4, 60.0)
    assert _eta([paced, waiting], 2, 2, STEPS, now) == timedelta(seconds=240)
    # A retried attempt may have resumed mid-way: its pace is not its whole run's.
    retried = running(1, 1.5, STEPS // 4, 60.0, retry_of=0)
    assert _eta([retried, waiting], 2, 2, STEPS, now) is None
    # Before its first evaluation (none yet recorded, or one at step 0) it has no pace.
    assert _eta([running(2, 0.5, 0, 0.0), waiting], 2, 2, STEPS, now) is None


def test_status_command_reports_counts_and_eta(workdir, fake_execute, capsys):
    path = grid_spec(workdir, 2, [0.0, 0.5])
    prepared(path)
    run_worker("tiny", None)
    assert main(["study", "status", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "study tiny (grid): 4/4 done - finished, 2 failed" in out
    assert "complete 2" in out and "failed 2" in out and "ETA" in out
    assert "failed entropy_coef=0.5|toy-bimodal|seed1: RuntimeError: synthetic failure" in out
    assert "gorl-bench study run SPEC --retry-failed" in out
    assert main(["study", "status", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "worker"])
def test_a_missing_storage_is_refused_and_nothing_is_created(workdir, capsys, command):
    missing = workdir / "nothere.journal"
    assert main(["study", command, "tiny", "--storage", str(missing)]) == 2
    assert not missing.exists()
    assert "no study storage at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["study", "worker", "x", "--threads"], ["study", "run", "x", "--workers"]]
)
def test_a_count_below_one_is_refused_while_parsing(workdir, capsys, option):
    """--threads -3 reached torch.set_num_threads, which raised a RuntimeError."""

    with pytest.raises(SystemExit) as raised:
        main([*option, "-3"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[-1]}: must be " in err and "got -3" in err


def test_worker_threads_beyond_any_cpu_are_refused_while_parsing(capsys):
    """--threads 100000 reached torch.set_num_threads and crashed the worker without a message."""

    with pytest.raises(SystemExit) as raised:
        main(["study", "worker", "x", "--threads", "1e5"])
    assert raised.value.code == 2
    assert "argument --threads: must be an integer from 1 to 256, got 1e5" in capsys.readouterr().err


def test_without_a_terminal_study_run_prints_its_progress_as_lines(workdir, capsys, monkeypatch):
    """A bar draws nothing into a log: a study's log stayed empty until the study ended."""

    import subprocess

    import harness.progress

    study = prepared(grid_spec(workdir, 1, [0.0]))
    monkeypatch.setattr(harness.progress, "PLAIN_INTERVAL_S", 0.0)
    worker = subprocess.Popen(["sleep", "2.5"])  # a worker that claims nothing before it exits
    runner._watch(study, [worker], 1, progress=True)
    assert "tiny: 0/1 units  running 0  failed 0  pruned 0" in capsys.readouterr().err


def test_more_workers_than_the_machine_can_hold_are_refused_before_anything_starts(workdir, capsys):
    """--workers 1000 started a thousand processes of half a GB each, more than the machine's memory."""

    import os

    most = runner.WORKERS_PER_CORE * (os.cpu_count() or 1)
    path = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(path), "--workers", str(most + 1)]) == 2
    assert f"--workers {most + 1} is more than {runner.WORKERS_PER_CORE} per core" in capsys.readouterr().err
    assert not (workdir / "runs" / "studies.journal").exists()  # refused before the study was created


@pytest.mark.parametrize("content", [bytes(range(256)) + b"\n", b"not a journal\n", b'{"op": 1}\n'])
def test_a_storage_file_that_is_not_a_journal_is_refused_and_left_untouched(workdir, capsys, content):
    """A binary file gave a UnicodeDecodeError, a text file a JSONDecodeError; `study run` appended
    the new study's records to the file."""

    path = grid_spec(workdir, 1, [0.0])
    storage = workdir / "notes.bin"
    storage.write_bytes(content)
    assert main(["study", "status", "tiny", "--storage", str(storage)]) == 2
    assert main(["study", "run", str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("is not an Optuna journal file") == 2 and "Traceback" not in err
    assert storage.read_bytes() == content


def test_a_storage_that_is_not_a_regular_file_is_refused(workdir, capsys):
    """A pipe blocked `study run` reading its first line, forever; /dev/null failed in os.fsync
    with a traceback."""

    path = grid_spec(workdir, 1, [0.0])
    os.mkfifo(workdir / "pipe")
    for storage in (workdir / "pipe", Path(os.devnull)):
        assert main(["study", "run", str(path), "--storage", str(storage)]) == 2
        assert main(["study", "status", "tiny", "--storage", str(storage)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err.count(f"the study storage {storage} is not a regular file; pass") == 2
        assert "Traceback" not in err


def test_a_journal_that_cannot_be_created_is_a_clear_error(workdir, capsys):
    """A FileNotFoundError traceback. (/proc takes no new files, even from root, as a read-only
    file system or a directory of another user would not.)"""

    path = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(path), "--storage", "/proc/studies.journal"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the study journal /proc/studies.journal: No such file or directory." in err
    assert "Traceback" not in err


def test_a_damaged_journal_is_a_clear_error(workdir, capsys):
    prepared(grid_spec(workdir, 1, [0.0]))
    journal = workdir / "runs" / "studies.journal"
    first, *rest = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([first, b"\xff\xfe not a record\n", *rest]))
    for command in (["study", "status", "tiny"], ["study", "run", "tiny"]):  # by its name: "unknown spec"
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"the study journal {journal} is damaged" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "tail", [b'{"op_code": 5, "worker_id": "ab', b"\0" * 64, b"\0" * 63 + b"\n", b"\n\n\n", b"\0\n\n{"]
)
def test_a_journal_with_an_incomplete_end_is_refused_and_left_as_it_was(
    workdir, capsys, fake_execute, workers_in_process, tail
):
    """A write cut short (a crash, a full disk) leaves a torn record or NUL bytes at the end, which
    Optuna skips on reading but appends after: the journal then failed every later read."""

    import subprocess

    path = grid_spec(workdir, 1, [0.0])
    prepared(path)
    journal = workdir / "runs" / "studies.journal"
    intact = journal.stat().st_size
    journal.write_bytes(journal.read_bytes() + tail)
    damaged = journal.read_bytes()
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ends in an incomplete record" in err and f"truncate -s {intact} {journal}" in err
    assert journal.read_bytes() == damaged and not fake_execute
    subprocess.run(["truncate", "-s", str(intact), str(journal)], check=True)  # the advice, followed
    assert main(["study", "run", str(path)]) == 0 and len(fake_execute) == 1


def test_tune_study_reports_iqm_per_unit_and_prunes(workdir, fake_execute):
    top = 'kind = "tune"\nseeds = 2\nmax_trials = 6\npruner = "median"\n'
    prepared(spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n"))
    assert run_worker("tiny", None) == 6
    study = load_study("tiny", None)
    assert len(study.trials) == 6
    for trial in study.trials:
        assert trial.user_attrs["variant"] == f"trial-{trial.number}"
        units = trial.user_attrs["units"]
        assert [u["seed"] for u in units] == [0, 1][: len(units)]
        assert all(u["mlflow_run_id"] and u["task"] == "toy-bimodal" for u in units)
        assert set(trial.intermediate_values) == set(range(1, len(units) + 1))  # units done
    # The fake's scores fall with every call, so later trials lose to the median after one unit.
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    best = study.best_trial
    assert best.value == best.intermediate_values[2]  # the IQM over both units
    status = study_status(study)
    assert status.best == f"trial-{best.number}: IQM {best.value:.3f}, clip={best.params['clip']:.4g}"
    assert f"  best so far: {status.best}" in status.lines()


def test_list_valued_choices_reach_the_runs_as_lists_without_optuna_warnings(workdir, fake_execute):
    import warnings

    top = 'kind = "tune"\nseeds = 1\nmax_trials = 2\npruner = "none"\n'
    spec = spec_file(workdir, top, "\n[space.critic_hidden]\nchoices = [[16], [8, 8]]\n")
    spec.write_text(spec.read_text().replace("critic_hidden = [16]\n", "", 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared(spec)
        assert run_worker("tiny", None) == 2
        study = load_study("tiny", None)  # reads the journal again
    assert not [w for w in caught if "categorical distribution" in str(w.message)]
    assert all(request.overrides["critic_hidden"] in ([16], [8, 8]) for request in fake_execute)
    assert all(t.user_attrs["params"]["critic_hidden"] in ([16], [8, 8]) for t in study.trials)


def test_a_study_created_from_a_file_resumes_by_its_name(workdir, fake_execute, workers_in_process):
    prepared(grid_spec(workdir, 1, [0.0, 0.01]))  # created (as by a `study run` stopped at once)
    (workdir / "tiny.toml").unlink()  # e.g. run from another directory: only the name is at hand
    status = runner.run_study("tiny", progress=False)
    assert status.finished and status.complete == 2
    with pytest.raises(UserError, match="unknown study spec 'tinny'"):
        runner.run_study("tinny", progress=False)


def test_the_worker_that_ends_the_last_unit_closes_the_study_s_mlflow_run(workdir, fake_execute):
    """A worker joined from elsewhere ended the last unit after `study run` had stopped: the
    study's MLflow run stayed RUNNING until `study run` was started again."""

    from mlflow.tracking import MlflowClient

    study = prepared(grid_spec(workdir, 1, [0.0, 0.01]))  # created, as by a `study run` stopped at once
    client = MlflowClient(study.user_attrs["tracking_uri"])
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "RUNNING"
    assert run_worker("tiny", None) == 2
    assert client.get_run(parent).info.status == "FINISHED"


def test_study_run_says_when_the_rest_trains_in_other_workers(workdir, fake_execute, monkeypatch, capsys):
    """It said "run the same command again to resume", which would only wait for those workers."""

    study = prepared(grid_spec(workdir, 1, [0.0, 0.01]))
    elsewhere = dataclasses.replace(study_status(study), complete=1, running=1, waiting=0)
    monkeypatch.setattr(runner, "run_study", lambda *args, **kwargs: elsewhere)
    assert main(["study", "run", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "1 unit still training in workers of other processes" in out and "study status tiny" in out


def test_a_study_whose_name_holds_a_dot_resumes_by_its_name(workdir, fake_execute, workers_in_process):
    """A dot is allowed in a study's name; it was taken for a file's suffix and never looked up."""

    prepared(grid_spec(workdir, 1, [0.0], top='name = "tiny.v2"\n'))
    (workdir / "tiny.toml").unlink()
    assert runner.run_study("tiny.v2", progress=False).finished


def test_a_retried_tune_trial_reuses_the_units_its_lost_attempt_finished(workdir, fake_execute):
    import subprocess
    import sys

    top = 'kind = "tune"\nseeds = 2\nmax_trials = 1\npruner = "none"\n'
    spec = load_spec(spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n"))
    location = storage_location(None)
    runner.prepare_study(spec, location, resolve_tracking_uri(None))
    # A worker that sampled the trial, finished its first unit (seed 0) and died.
    finished = {"unit": "trial-0|toy-bimodal|seed0", "variant": "trial-0", "algo": "ppo", "seed": 0,
                "task": "toy-bimodal", "params": {}, "mlflow_run_id": "run-of-seed-0",
                "score": 0.5}  # fmt: skip
    attempt = (
        "import optuna\n"
        "from studies.storage import ask_owned, open_storage\n"
        f"study = optuna.load_study(study_name={spec.name!r}, storage=open_storage({location!r}))\n"
        "trial = ask_owned(study)\n"
        "trial.suggest_float('clip', 0.1, 0.3)\n"
        f"trial.set_user_attr('units', [{finished!r}])\n"
    )
    subprocess.run([sys.executable, "-c", attempt], check=True)
    assert run_worker("tiny", None) == 1
    assert len(fake_execute) == 1  # the unit of seed 1 only
    retry = next(t for t in load_study("tiny", None).trials if t.state == TrialState.COMPLETE)
    first, second = retry.user_attrs["units"]
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["mlflow_run_id"] == "run-of-seed-0" and first["variant"] == retry.user_attrs["variant"]
    assert retry.value == (0.5 + second["score"]) / 2  # the IQM of two units is their mean


def test_a_configuration_sampled_again_reuses_the_units_it_finished(workdir, fake_execute):
    """TPE proposes a configuration again (here the only one there is): its units, with the same
    seeds, were trained again to the same results."""

    top = 'kind = "tune"\nseeds = 2\nmax_trials = 2\npruner = "none"\n'
    prepared(spec_file(workdir, top, "[space.clip]\nchoices = [0.2]\n"))
    assert run_worker("tiny", None) == 2
    assert len(fake_execute) == 2  # the first trial's two units; the second reused them
    first, second = load_study("tiny", None).trials
    assert second.value == first.value
    assert [r["mlflow_run_id"] for r in second.user_attrs["units"]] == [
        r["mlflow_run_id"] for r in first.user_attrs["units"]
    ]
    # The units' runs stay nested under the first trial's run; the second's names them.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(load_study("tiny", None).user_attrs["tracking_uri"])
    reused = client.get_run(second.user_attrs["mlflow_run_id"]).data.tags["gorl.reused_units"].splitlines()
    assert reused == [
        f"trial-1|{r['task']}|seed{r['seed']} = {r['mlflow_run_id']}" for r in first.user_attrs["units"]
    ]


def test_a_cmaes_tune_study_runs_past_its_random_first_trial(workdir, fake_execute):
    """CMA-ES samples its first trial at random and needs the `cmaes` package from the second on."""

    top = 'kind = "tune"\nseeds = 1\nmax_trials = 3\nsampler = "cmaes"\npruner = "none"\n'
    space = "[space.clip]\nlow = 0.1\nhigh = 0.3\n[space.lr]\nlow = 1e-4\nhigh = 1e-3\n"
    prepared(spec_file(workdir, top, space))
    assert run_worker("tiny", None) == 3
    study = load_study("tiny", None)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_a_tune_study_tries_the_same_trials_with_one_worker_or_two(workdir, migrated_mlflow_db, monkeypatch):
    """Optuna's samplers propose from whatever trials have finished when a worker asks, and each
    worker's sampler was seeded by its index: run twice with 2 workers, `tune-ppo-toy` tried other
    configurations and found another best trial."""

    top = 'kind = "tune"\nseeds = 1\nmax_trials = 4\npruner = "none"\nconcurrent_trials = 2\n'
    trials = {}
    for workers in (2, 1):
        here = workdir / f"workers-{workers}"
        (here / "runs").mkdir(parents=True)
        shutil.copy(migrated_mlflow_db, here / "runs" / "mlflow.db")
        monkeypatch.chdir(here)
        path = spec_file(here, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n")
        assert runner.run_study(path, workers=workers, progress=False).complete == 4
        trials[workers] = [(t.number, t.params, t.value) for t in load_study("tiny", None).trials]
        # The one worker in this process, which has loaded torch already: seconds less.
        monkeypatch.setattr(
            runner, "_run_workers", lambda study, location, *_: run_worker(study.study_name, location)
        )
    assert trials[1] == trials[2]
    assert len({params["clip"] for _, params, _ in trials[1]}) == 4


def test_a_tune_study_starts_no_more_workers_than_trials_run_at_once(
    workdir, fake_execute, monkeypatch, capsys
):
    """Workers beyond `concurrent_trials` would only wait for the trials before theirs, each with
    torch loaded."""

    started = []

    def run_workers(study, location, workers, device, progress):
        started.append(workers)
        run_worker(study.study_name, location)

    monkeypatch.setattr(runner, "_run_workers", run_workers)
    top = 'kind = "tune"\nseeds = 1\nmax_trials = 2\npruner = "none"\nconcurrent_trials = 1\n'
    path = spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n")
    assert runner.run_study(path, workers=2, progress=False).complete == 2
    assert started == [1]
    assert (
        "note: starting 1 worker, not 2: study 'tiny' runs at most 1 trial at once" in capsys.readouterr().err
    )


def test_study_artifacts_go_next_to_the_sqlite_store_as_a_run_s_do(workdir):
    """Not to ./mlruns of whichever directory the coordinator ran in."""

    from mlflow.tracking import MlflowClient

    study = prepared(grid_spec(workdir, 1, [0.0]))
    client = MlflowClient(study.user_attrs["tracking_uri"])
    experiment = client.get_experiment(study.user_attrs["mlflow_experiment_id"])
    assert experiment.name == "tiny"
    assert experiment.artifact_location == (workdir / "runs").resolve().joinpath("mlartifacts").as_uri()
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert (parent.info.run_name, parent.data.tags["gorl.role"]) == ("tiny", "study")
    assert parent.info.experiment_id == experiment.experiment_id


def test_a_resumed_tune_study_proposes_new_configurations(workdir, fake_execute, monkeypatch):
    """TPE's start-up trials are random draws whatever the history: samplers seeded by the worker's
    index alone (0, 1, ... in every session of `study run`) proposed the first session's
    configurations again. Seeded by the trial's number, each proposal is new."""

    top = 'kind = "tune"\nseeds = 1\nmax_trials = 4\npruner = "none"\n'
    prepared(spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n"))
    fake = run_harness.execute

    def interrupted_in_the_third(request, **kwargs):
        if len(fake_execute) == 2:
            raise KeyboardInterrupt  # Ctrl-C ends the first session
        return fake(request, **kwargs)

    monkeypatch.setattr(run_harness, "execute", interrupted_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_worker("tiny", None)
    # The interrupted trial's worker process is gone, so the next session retries it.
    study = load_study("tiny", None)
    (cut,) = study.get_trials(states=(TrialState.RUNNING,))
    owned_by_a_dead_process(study, cut)
    monkeypatch.setattr(run_harness, "execute", fake)
    run_worker("tiny", None)  # the second session's worker 0

    trials = load_study("tiny", None).trials
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, None, None, cut.number, None]
    proposed = [t.params["clip"] for t in trials if "retry_of" not in t.user_attrs]
    assert len(set(proposed)) == len(proposed) == 4, proposed


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_an_interrupted_tune_study_tries_what_an_uninterrupted_one_tries(
    workdir, migrated_mlflow_db, fake_execute, monkeypatch, sampler
):
    """The retry of the trial Ctrl-C cut is a new Optuna trial: numbered by trials, the proposals
    after it were seeded and shown the history one trial further on, and a configuration the
    uninterrupted study tries was never tried (CMA-ES also lost the retried trial's generation)."""

    # 8 trials: CMA-ES's first generation (6 in two dimensions) and proposals it updated from
    top = f'kind = "tune"\nseeds = 1\nmax_trials = 8\npruner = "none"\nsampler = "{sampler}"\n'
    space = "[space.clip]\nlow = 0.1\nhigh = 0.3\n[space.lr]\nlow = 1e-4\nhigh = 1e-3\n"
    fake = run_harness.execute

    def tried(name: str, interrupt: bool) -> list:
        here = workdir / name
        (here / "runs").mkdir(parents=True)
        shutil.copy(migrated_mlflow_db, here / "runs" / "mlflow.db")
        monkeypatch.chdir(here)
        prepared(spec_file(here, top, space))
        fake_execute.clear()  # the faked scores fall with every call: both studies see the same
        armed = [interrupt]

        def cut_in_the_third(request, **kwargs):
            if armed[0] and len(fake_execute) == 2:
                raise KeyboardInterrupt
            return fake(request, **kwargs)

        monkeypatch.setattr(run_harness, "execute", cut_in_the_third)
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                run_worker("tiny", None)
            study = load_study("tiny", None)
            (cut,) = study.get_trials(states=(TrialState.RUNNING,))
            owned_by_a_dead_process(study, cut)
            armed[0] = False  # the second session runs to the end
        run_worker("tiny", None)
        return [(t.params, t.value) for t in counted_trials(load_study("tiny", None).trials)]

    uninterrupted = tried("uninterrupted", False)
    assert tried("interrupted", True) == uninterrupted
    assert len({params["clip"] for params, _ in uninterrupted}) == 8


def test_resuming_with_a_changed_spec_is_refused_naming_what_changed(workdir, fake_execute):
    path = grid_spec(workdir, 1, [0.0])
    prepared(path)
    path.write_text(
        path.read_text().replace("seeds = 1", "seeds = 2").replace("steps = 1024", "steps = 2048")
    )
    with pytest.raises(
        UserError, match=r"already exists .* with a different spec \(it differs in seeds, steps\)"
    ) as refused:
        prepared(path)
    # The command it gives deletes the old study (it named the storage `<storage>`), and the new
    # spec then starts afresh.
    command = str(refused.value).rpartition("delete the old study: ")[2]
    assert command.startswith("optuna delete-study --study-name tiny --storage ")
    optuna_cli = str(Path(sys.executable).with_name("optuna"))  # the virtual environment's
    done = subprocess.run([optuna_cli, *shlex.split(command)[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prepared(path)


def test_a_study_resumes_under_an_edited_description(workdir, fake_execute):
    """An edited description (a `git pull` of a shipped spec) stranded a half-run study."""

    from mlflow.tracking import MlflowClient

    path = grid_spec(workdir, 1, [0.0, 0.01])
    prepared(path)
    path.write_text(path.read_text().replace('description = "test study"', 'description = "edited"'))
    study = prepared(path)
    assert study.user_attrs["spec"]["description"] == "edited" and len(study.trials) == 2
    # The study's MLflow run shows the description as its note (the UI's "Description"), the new one.
    parent = MlflowClient(study.user_attrs["tracking_uri"]).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["mlflow.note.content"] == "edited"
    # nan, which never equals itself, made a study impossible to resume while descriptions were compared
    path.write_text(path.read_text().replace('description = "edited"', "description = nan"))
    assert len(prepared(path).trials) == 2


@pytest.mark.parametrize(
    ("kind", "when"), [("grid", "during the run"), ("grid", "after the run"), ("tune", "during the run")]
)
def test_a_worker_whose_unit_was_requeued_gives_it_up_without_a_traceback(
    workdir, fake_execute, monkeypatch, capsys, kind, when
):
    """A worker silent for longer than the grace period (a suspended machine, a storage outage)
    has its unit re-queued by another worker's sweep: it stops the unit at its next evaluation,
    or gives up the result when the unit ended first, and goes on with the study."""

    import time

    from studies import storage

    monkeypatch.setattr(storage, "HEARTBEAT_INTERVAL_S", 0.05)
    if kind == "grid":
        prepared(grid_spec(workdir, 1, [0.0]))
    else:
        top = 'kind = "tune"\nseeds = 1\nmax_trials = 1\n'
        prepared(spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n"))
    fake, calls, stopped_by = run_harness.execute, [], []

    def requeued_while_running(request, *, on_evaluation=None, progress=True):
        calls.append(request)
        if len(calls) > 1:  # the retry
            return fake(request, on_evaluation=on_evaluation, progress=progress)
        study = load_study("tiny", None)
        (trial,) = study.get_trials(states=(TrialState.RUNNING,))
        # Another host's sweep, as it sees this worker's last heartbeat once the grace period is over
        # (on this host the worker's process is alive, which a sweep here would ask directly).
        with monkeypatch.context() as later:
            later.setattr(storage, "GRACE_PERIOD_S", -1)
            later.setattr(storage.socket, "gethostname", lambda: "elsewhere")
            assert storage.sweep_lost_units(study) == [trial.number]
        if when == "during the run":
            try:
                for step in range(100):
                    on_evaluation(step, math.nan)  # nothing to report: only the heartbeat can stop it
                    time.sleep(0.05)
            except Exception as error:
                stopped_by.append(type(error).__name__)
                raise
        else:
            time.sleep(0.5)  # several heartbeats, which find the claim gone
        return fake(request, progress=progress)

    monkeypatch.setattr(run_harness, "execute", requeued_while_running)
    assert run_worker("tiny", None) == 2
    lost, retry = load_study("tiny", None).trials
    assert lost.state == TrialState.FAIL and storage.is_lost(lost)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == lost.number
    assert stopped_by == (["ClaimLost"] if when == "during the run" else [])
    out = capsys.readouterr().out
    assert out.count("was re-queued") == 1 and "Traceback" not in out, out


@pytest.mark.parametrize("rdb", [False, True], ids=["journal", "sqlite-rdb"])
def test_a_silent_worker_on_another_host_is_declared_lost(workdir, monkeypatch, rdb):
    """Heartbeats older than the grace period: Optuna's table on RDB, a trial attribute on the journal."""

    import time

    from studies import storage

    monkeypatch.setattr(storage, "GRACE_PERIOD_S", 1)
    monkeypatch.setattr(storage, "HEARTBEAT_INTERVAL_S", 1)
    location = storage_location(f"sqlite:///{workdir}/runs/studies.db" if rdb else None)
    spec = load_spec(grid_spec(workdir, 1, [0.0]))
    study = runner.prepare_study(spec, location, resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    trial = storage.claim_waiting_trial(study)  # the claim's own beat; the worker then goes silent
    # A worker on another host (its PID means nothing here); on RDB storages Optuna's sweep knows
    # a silent worker only by the heartbeat the claim recorded.
    owner = {"host": "elsewhere", "pid": 1, "beat": time.time()}
    study._storage.set_trial_system_attr(trial._trial_id, storage.OWNER_ATTR, owner)
    if rdb:  # a beat just now: the claim's may be older than the 1 s grace on a loaded machine
        study._storage.record_heartbeat(trial._trial_id)
    assert storage.sweep_lost_units(study) == []
    time.sleep(2.5)
    storage.sweep_lost_units(study)
    lost, retry = study.get_trials()
    assert lost.state == TrialState.FAIL and storage.is_lost(lost)
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == lost.number
    assert retry.user_attrs["unit"] == lost.user_attrs["unit"]


def test_a_worker_refuses_a_study_whose_mlflow_run_was_deleted(workdir, fake_execute):
    """As `study run` does: an attached worker trained every unit under the deleted run, then
    failed with a traceback closing it."""

    from mlflow.tracking import MlflowClient

    study = prepared(grid_spec(workdir, 1, [0.0]))
    MlflowClient(study.user_attrs["tracking_uri"]).delete_run(study.user_attrs["mlflow_parent_run_id"])
    with pytest.raises(UserError, match="was deleted; restore it"):
        run_worker("tiny", None)
    assert fake_execute == []


@pytest.mark.parametrize("rdb", [False, True], ids=["journal", "sqlite-rdb"])
def test_a_live_worker_on_this_host_is_not_lost_however_old_its_heartbeat(workdir, monkeypatch, rdb):
    """After a suspend, a sweep may run before the worker's first beat; the worker is still there
    (and holds its unit's directory, so a retry could not run). On RDB too, whose heartbeat table
    then finds it silent."""

    import os
    import socket
    import time

    from studies import storage

    monkeypatch.setattr(storage, "GRACE_PERIOD_S", 1)
    location = storage_location(f"sqlite:///{workdir}/runs/studies.db" if rdb else None)
    spec = load_spec(grid_spec(workdir, 1, [0.0]))
    study = runner.prepare_study(spec, location, resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    trial = storage.claim_waiting_trial(study)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time() - 3600}
    study._storage.set_trial_system_attr(trial._trial_id, storage.OWNER_ATTR, owner)
    if rdb:
        time.sleep(2.5)  # the claim's beat in Optuna's table is older than the grace period
    assert storage.sweep_lost_units(study) == []
    assert storage.is_alive(study, study.get_trials()[0])
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_status_tells_a_unit_whose_worker_is_gone_from_one_that_runs(workdir):
    """After Ctrl-C of `study run`, its units stay RUNNING until the next sweep retries them."""

    import os
    import socket
    import subprocess
    import sys

    from studies import storage
    from studies.status import study_status

    spec = load_spec(grid_spec(workdir, 2, [0.0]))
    study = runner.prepare_study(spec, storage_location(None), resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    owners = []
    for pid in (os.getpid(), int(gone.stdout)):
        trial = storage.claim_waiting_trial(study)
        owners.append((trial, {"host": socket.gethostname(), "pid": pid, "beat": 0.0}))
        study._storage.set_trial_system_attr(trial._trial_id, storage.OWNER_ATTR, owners[-1][1])
    status = study_status(study)
    assert (status.running, status.stopped, status.active) == (2, 1, 1)
    # The stopped unit is not said to be running ("running 2 (1 stopped)" read as two running).
    assert "  complete 0  running 1  stopped 1  waiting 0" in status.lines()[1]
    assert "1 unit lost to a stopped or crashed worker" in "\n".join(status.lines())
    assert "no worker is running" not in status.eta_text
    # Once every running unit's worker is gone, no ETA is promised.
    trial, owner = owners[0]
    gone_owner = {**owner, "pid": int(gone.stdout)}
    study._storage.set_trial_system_attr(trial._trial_id, storage.OWNER_ATTR, gone_owner)
    assert study_status(study).eta_text == "ETA - (no worker is running)"


@pytest.mark.parametrize("kind", ["grid", "tune"])
def test_a_worker_that_dies_right_after_its_claim_is_retried_at_once(workdir, kind):
    """The owner is written with the claim (a grid unit) or the ask (a tune trial), so a worker
    that dies before its work starts (Ctrl-C just after claiming) is recognised as gone by the
    next sweep, not only after the grace period."""

    import subprocess
    import sys

    from studies import storage

    location = storage_location(None)
    if kind == "grid":
        path, take = grid_spec(workdir, 1, [0.0]), "claim_waiting_trial(study)"
    else:
        top = 'kind = "tune"\nseeds = 1\nmax_trials = 2\n'
        path, take = spec_file(workdir, top, "[space.clip]\nlow = 0.1\nhigh = 0.3\n"), "ask_owned(study)"
    spec = load_spec(path)
    study = runner.prepare_study(spec, location, resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    claim = (
        "import optuna\n"
        "from studies.storage import ask_owned, claim_waiting_trial, open_storage\n"
        f"study = optuna.load_study(study_name={spec.name!r}, storage=open_storage({location!r}))\n"
        f"assert {take} is not None\n"
    )
    subprocess.run([sys.executable, "-c", claim], check=True)
    (claimed,) = study.get_trials()
    assert claimed.state == TrialState.RUNNING and claimed.system_attrs[storage.OWNER_ATTR]["pid"] > 0
    assert storage.sweep_lost_units(study) == [claimed.number]
    lost, retry = study.get_trials()
    assert "is gone" in lost.user_attrs["fail_reason"] and retry.state == TrialState.WAITING


def test_workers_on_an_sqlite_file_never_claim_one_trial_twice(workdir):
    """SQLite ignores Optuna's row lock: four processes claiming 200 trials made 229 claims."""

    import subprocess
    import sys

    location = f"sqlite:///{workdir / 'studies.db'}"
    study = optuna.create_study(study_name="claims", storage=open_storage(location))
    for x in range(40):
        study.enqueue_trial({"x": x}, skip_if_exists=False)
    claim_all = (
        "import json, optuna\n"
        "from studies.storage import claim_waiting_trial, open_storage\n"
        f"study = optuna.load_study(study_name='claims', storage=open_storage({location!r}))\n"
        "claimed = []\n"
        "while (trial := claim_waiting_trial(study)) is not None:\n"
        "    claimed.append(trial.number)\n"
        "print(json.dumps(claimed))\n"
    )
    command = [sys.executable, "-c", claim_all]
    claimers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    claims = Counter(number for claimer in claimers for number in json.loads(claimer.communicate()[0]))
    assert all(claimer.returncode == 0 for claimer in claimers)
    assert sorted(claims) == list(range(40)) and set(claims.values()) == {1}


@pytest.mark.parametrize(
    "server", [False, pytest.param(True, marks=pytest.mark.postgres)], ids=["file", "postgresql"]
)
def test_two_study_runs_creating_one_study_at_once_make_one_parent_run_and_one_copy_of_each_unit(
    workdir, request, server
):
    """Both read "no such study", so each created a parent MLflow run (the loser's stayed RUNNING,
    empty) and enqueued every unit (each unit waited twice). On a database server too: the two
    `study run`s may be on two machines."""

    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    location = request.getfixturevalue("postgres_url") if server else None
    path = grid_spec(workdir, 2, [0.0, 0.01])
    go = workdir / "go"
    prepare = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from harness.tracking import resolve_tracking_uri\n"
        "from studies import runner\n"
        "from studies.spec import load_spec\n"
        "from studies.storage import storage_location\n"
        "import optuna\n"
        "create = optuna.create_study\n"
        # A second between reading "no such study" and creating it: the race, every time.
        "optuna.create_study = lambda *args, **kwargs: (time.sleep(1.0), create(*args, **kwargs))[1]\n"
        f"spec = load_spec({str(path)!r})\n"
        "Path(sys.argv[1]).touch()\n"  # imported: ready
        f"while not Path({str(go)!r}).exists():\n"  # both ready: start together
        "    time.sleep(0.01)\n"
        f"study = runner.prepare_study(spec, storage_location({location!r}), resolve_tracking_uri(None))\n"
        "runner.enqueue_missing_units(study, spec)\n"
    )
    ready = [workdir / f"ready-{index}" for index in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", prepare, str(flag)]) for flag in ready]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline and all(process.poll() is None for process in processes)
        time.sleep(0.05)
    go.touch()
    assert [process.wait(timeout=120) for process in processes] == [0, 0]

    study = load_study("tiny", location)
    assert len(study.get_trials()) == 4
    client = MlflowClient(resolve_tracking_uri(None))
    experiment = client.get_experiment_by_name("tiny")
    assert [run.info.run_id for run in client.search_runs([experiment.experiment_id])] == [
        study.user_attrs["mlflow_parent_run_id"]
    ]


def test_a_study_whose_recorded_tracking_server_is_down_is_refused_at_once(workdir, capsys, fake_execute):
    """MLflow retried the dead server for minutes (253 s), while holding the storage's lock: every
    worker of every study in the file waited."""

    import time

    spec = grid_spec(workdir, 1, [0.0])
    prepared(spec).set_user_attr("tracking_uri", "http://127.0.0.1:9")  # a port nothing listens on
    start = time.monotonic()
    assert main(["study", "run", str(spec)]) == 2
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in capsys.readouterr().err
    assert time.monotonic() - start < 60 and not fake_execute


def test_a_study_whose_parent_run_was_deleted_is_refused_before_any_unit(workdir, capsys, fake_execute):
    """The deleted parent run ended `study run` in an MLflow traceback."""

    from mlflow.tracking import MlflowClient

    spec = grid_spec(workdir, 1, [0.0])
    study = prepared(spec)
    parent = study.user_attrs["mlflow_parent_run_id"]
    MlflowClient(study.user_attrs["tracking_uri"]).delete_run(parent)
    assert main(["study", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"MLflow run {parent} was deleted; restore it (`mlflow runs restore" in err
    assert "Traceback" not in err
    assert not fake_execute


def test_a_study_s_moved_tracking_store_is_named_and_followed_with_tracking_uri(
    workdir, capsys, fake_execute, workers_in_process
):
    """--tracking-uri was ignored for an existing study: the recorded store, gone, was created empty."""

    spec = grid_spec(workdir, 1, [0.0])
    old = workdir / "runs" / "mlflow.db"
    parent = prepared(spec).user_attrs["mlflow_parent_run_id"]
    moved = workdir / "archive" / "mlflow.db"
    moved.parent.mkdir()
    old.rename(moved)
    assert main(["study", "run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"has no run {parent}. If the store has moved, pass its new location with --tracking-uri" in err
    assert not old.exists() and not fake_execute

    status = runner.run_study(spec, tracking_uri=f"sqlite:///{moved}", progress=False)
    assert status.finished and status.complete == 1
    study = load_study("tiny", None)
    assert study.user_attrs["tracking_uri"] == f"sqlite:///{moved}"
    assert study.user_attrs["mlflow_parent_run_id"] == parent and not old.exists()


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:///notes.txt", "cannot open the MLflow store"),
        ("mysql://user@127.0.0.1:1/db", "its database driver is not installed"),
        ("postgresql://user@127.0.0.1:1/db", "cannot reach the MLflow store"),
    ],
)
def test_a_tracking_store_that_cannot_be_used_leaves_no_study_behind(workdir, capsys, uri, message):
    """Each ended in a traceback (PostgreSQL after about 100 s of MLflow's retries) and left a study
    without a spec, on which a worker failed with KeyError: 'spec'."""

    (workdir / "notes.txt").write_text("not a database\n")
    spec = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(spec), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    journal = workdir / "runs" / "studies.journal"
    assert not journal.exists() or not optuna.get_all_study_names(open_storage(None))


def test_a_worker_on_a_study_without_a_spec_is_told_to_create_it(workdir, capsys):
    optuna.create_study(study_name="bare", storage=open_storage(None))
    assert main(["study", "worker", "bare"]) == 2
    err = capsys.readouterr().err
    assert "study 'bare' has no spec recorded" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "storage",
    [
        "mysql://user@127.0.0.1:1/db",
        "postgresql://user@127.0.0.1:1/db",
        "postgresql://user@127.0.0.1:abc/db",  # a malformed URL ended in the parser's traceback
        "postgresql://user@[::1:1/db",
    ],
)
def test_a_study_storage_that_cannot_be_reached_is_a_clear_error(workdir, capsys, storage):
    assert main(["study", "status", "tiny", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "the study storage" in err and "Traceback" not in err


@pytest.mark.parametrize("storage", ["mysql://user@127.0.0.1:1/db", "mssql+pyodbc://user@127.0.0.1:1/db"])
def test_a_study_storage_on_a_server_without_a_lock_is_refused(workdir, capsys, storage):
    """Only the claim of a grid unit was atomic there: two workers could propose one tune trial
    twice, pass the trial budget together, or both create a new study."""

    spec = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(spec), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "needs PostgreSQL (postgresql://...)" in err and "Traceback" not in err
    assert "driver" not in err  # refused before connecting, whatever is installed


def test_an_interrupt_inside_the_journal_lock_waits_until_the_append_is_done(tmp_path, monkeypatch):
    """SIGTERM landing in Optuna's lock release left the lock file behind (every process then
    waits out the 30 s grace period) and printed a traceback from the lock's cleanup."""

    import signal

    from harness.signals import interrupt

    journal = tmp_path / "studies.journal"
    storage = open_storage(str(journal))
    lock = storage._backend._lock
    real_release = lock.release

    def release_hit_by_a_signal() -> None:
        signal.raise_signal(signal.SIGTERM)  # as `kill PID` would, at the worst moment
        real_release()

    monkeypatch.setattr(lock, "release", release_hit_by_a_signal)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            optuna.create_study(study_name="s", storage=storage)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not Path(f"{journal}.lock").exists() and not list(tmp_path.glob("*.lock*"))
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(journal)))] == ["s"]


# --- Storages that are not study storages -----------------------------------------------------------


READ_ONLY_COMMANDS = [["study", "status", "tiny"], ["study", "worker", "tiny"], ["report", "tiny"]]


def test_an_mlflow_store_given_as_the_study_storage_is_refused_and_left_untouched(workdir, capsys):
    """Optuna added its tables to the MLflow store and then failed with a traceback advising to
    upgrade Optuna (MLflow's schema version table looked like its own)."""

    store = workdir / "runs" / "mlflow.db"
    before = store.read_bytes()
    path = grid_spec(workdir, 1, [0.0])
    for command in [*READ_ONLY_COMMANDS, ["study", "run", str(path)], ["study", "run", "tiny"]]:
        assert main([*command, "--storage", f"sqlite:///{store}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "is an MLflow tracking store, not a study storage" in err and "--tracking-uri" in err
    assert store.read_bytes() == before


def sqlite_without_studies(path: Path, tables: str) -> None:
    """An SQLite file of the given tables ("": a database with a header and no tables)."""

    import sqlite3

    connection = sqlite3.connect(path)
    connection.executescript(tables or "PRAGMA user_version = 7;")
    connection.close()


@pytest.mark.parametrize(
    "tables", [None, "", "CREATE TABLE notes (text);"], ids=["empty", "no-tables", "other"]
)
def test_a_sqlite_file_without_studies_is_not_written_by_reading_commands(
    workdir, capsys, fake_execute, workers_in_process, tables
):
    """`study status` and `report` created Optuna's tables in any SQLite file they were given. A new
    study may still go into an empty database, not into one of something else."""

    storage = workdir / "given.db"
    if tables is None:
        storage.touch()
    else:
        sqlite_without_studies(storage, tables)
    before = storage.read_bytes()
    for command in READ_ONLY_COMMANDS:
        assert main([*command, "--storage", f"sqlite:///{storage}"]) == 2
        err = capsys.readouterr().err
        assert f"no studies in sqlite:///{storage}" in err and "Traceback" not in err
        assert storage.read_bytes() == before
    created = main(["study", "run", str(grid_spec(workdir, 1, [0.0])), "--storage", f"sqlite:///{storage}"])
    if tables and "notes" in tables:
        assert created == 2 and storage.read_bytes() == before
        assert "an SQLite database of something else (tables notes)" in capsys.readouterr().err
    else:
        assert created == 0 and len(fake_execute) == 1


def test_one_sqlite_file_as_both_stores_is_refused_before_anything_is_written(workdir, capsys):
    """Optuna's tables went in first, then MLflow failed on their shared version table with a traceback."""

    shared = workdir / "both.db"
    uri = f"sqlite:///{shared}"
    path = grid_spec(workdir, 1, [0.0])
    assert main(["study", "run", str(path), "--storage", uri, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"--storage and --tracking-uri name the same file {shared}" in err and "Traceback" not in err
    assert not shared.exists()


# --- Where the units' runs live --------------------------------------------------------------------


def interrupt_units_after_their_first_evaluation(monkeypatch) -> Callable:
    """Make every unit stop with Ctrl-C after its first evaluation; returns the real harness."""

    real = run_harness.execute

    def interrupted_after_the_first_evaluation(request, *, on_evaluation=None, progress=True):
        def stop(step, mean_return):
            on_evaluation(step, mean_return)
            raise KeyboardInterrupt

        return real(request, on_evaluation=stop, progress=progress)

    monkeypatch.setattr(run_harness, "execute", interrupted_after_the_first_evaluation)
    return real


def test_a_study_resumed_from_another_directory_continues_its_interrupted_unit(
    workdir, tmp_path, monkeypatch, workers_in_process
):
    """Unit directories were relative to the current directory: resumed from another one, an
    interrupted unit started over there, in a new MLflow run, its checkpoint ignored."""

    from mlflow.tracking import MlflowClient

    from harness.checkpoint import load_checkpoint

    journal = str(workdir / "runs" / "studies.journal")
    path = grid_spec(workdir, 1, [0.0])  # evaluations at 512 and 1024 steps
    study = prepared(path)
    assert study.user_attrs["runs_dir"] == str(workdir / "runs" / "studies" / "tiny")
    real = interrupt_units_after_their_first_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_worker("tiny", journal)
    (stopped,) = load_study("tiny", journal).trials
    owned_by_a_dead_process(study, stopped)  # as a worker stopped by Ctrl-C leaves it
    monkeypatch.setattr(run_harness, "execute", real)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    status = runner.run_study("tiny", journal, progress=False)
    assert status.finished and (status.complete, status.lost) == (1, 1)
    lost, retry = load_study("tiny", journal).trials
    assert list(lost.intermediate_values) == [512]
    assert list(retry.intermediate_values) == [1024]  # continued after the checkpoint, not from 0
    (unit,) = load_spec(path).units()
    out_dir = workdir / "runs" / "studies" / "tiny" / variant_dir(unit.variant) / f"{unit.task}-seed0"
    assert load_checkpoint(out_dir)["progress"]["history"][-1][0] == 1024
    assert not (elsewhere / "runs").exists()  # neither unit runs nor an MLflow store of its own
    client = MlflowClient(study.user_attrs["tracking_uri"])
    (run,) = client.search_runs([study.user_attrs["mlflow_experiment_id"]], "tags.`gorl.unit` != ''")
    assert run.info.run_id == retry.user_attrs["mlflow_run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/return_mean")] == [512, 1024]


def test_a_stopped_study_run_leaves_its_mlflow_run_killed_until_resumed(
    workdir, monkeypatch, fake_execute, workers_in_process
):
    """Ctrl-C of `study run` ended its units' runs KILLED and left the study's RUNNING for good."""

    from mlflow.tracking import MlflowClient

    path = grid_spec(workdir, 1, [0.0])
    fake = run_harness.execute

    def interrupted(request, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_harness, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(path, progress=False)
    study = load_study("tiny", None)
    client = MlflowClient(study.user_attrs["tracking_uri"])
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
    owned_by_a_dead_process(study, study.trials[0])
    monkeypatch.setattr(run_harness, "execute", fake)
    assert runner.run_study(path, progress=False).finished
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


def a_unit_stopped_after_its_first_evaluation(workdir: Path, monkeypatch) -> Path:
    """The spec of a one-unit grid (evaluations at 512 and 1024 steps) whose unit a worker that is
    gone now stopped after its first evaluation, with a checkpoint to resume."""

    path = grid_spec(workdir, 1, [0.0])
    study = prepared(path)
    real = interrupt_units_after_their_first_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_worker("tiny", None)
    owned_by_a_dead_process(study, load_study("tiny", None).trials[0])
    monkeypatch.setattr(run_harness, "execute", real)
    return path


def test_an_interrupted_unit_resumes_into_the_study_s_moved_store(workdir, monkeypatch, workers_in_process):
    """The unit's resume looked for its MLflow run in the store its checkpoint recorded, which had
    moved: it failed, and failed again with --retry-failed."""

    from mlflow.tracking import MlflowClient

    path = a_unit_stopped_after_its_first_evaluation(workdir, monkeypatch)
    moved = workdir / "archive" / "mlflow.db"
    moved.parent.mkdir()
    (workdir / "runs" / "mlflow.db").rename(moved)

    status = runner.run_study(path, tracking_uri=f"sqlite:///{moved}", progress=False)
    assert status.finished and (status.complete, status.failed) == (1, 0)
    retry = load_study("tiny", None).trials[-1]
    assert list(retry.intermediate_values) == [1024]  # continued after the checkpoint
    run = MlflowClient(f"sqlite:///{moved}").get_run(retry.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and not (workdir / "runs" / "mlflow.db").exists()


def test_an_interrupted_unit_whose_preset_changed_since_starts_over(
    workdir, monkeypatch, workers_in_process, capsys
):
    """Its resume was refused (the settings changed), recorded as an error, and refused again on
    every --retry-failed: no study command could finish the unit."""

    from algorithms import ppo

    path = a_unit_stopped_after_its_first_evaluation(workdir, monkeypatch)
    monkeypatch.setitem(ppo.PRESETS["cpu"], "gamma", 0.9)

    status = runner.run_study(path, progress=False)
    assert status.finished and (status.complete, status.failed) == (1, 0)
    assert list(load_study("tiny", None).trials[-1].intermediate_values) == [512, 1024]  # from the start
    assert "settings gamma 0.99 -> 0.9" in capsys.readouterr().out


def test_an_interrupt_raised_as_another_error_leaves_its_unit_to_be_resumed(workdir, monkeypatch):
    """Ctrl-C inside a lazy import of a C extension: the unit was recorded FAILED with "ImportError:
    initialization failed", to be rerun only with --retry-failed, and the worker went on."""

    journal = str(workdir / "runs" / "studies.journal")
    prepared(grid_spec(workdir, 2, [0.0]))
    monkeypatch.setattr(run_harness, "execute", interrupted_inside_a_c_extension_import)
    with pytest.raises(ImportError):
        run_worker("tiny", journal)
    states = [trial.state for trial in load_study("tiny", journal).trials]
    assert states == [TrialState.RUNNING, TrialState.WAITING]  # claimed by a stopped worker: resumed later


def test_a_lost_unit_whose_label_holds_a_quote_is_retried(
    workdir, fake_execute, workers_in_process, monkeypatch
):
    """The retry looked for the lost attempt's MLflow run with the unit's key in a quoted filter
    string: the label's apostrophe ended the string, every retry crashed, and the study could not
    finish."""

    from mlflow.tracking import MlflowClient

    path = compare_spec(workdir, ["ppo (Schulman's)"])
    study = prepared(path)
    client, fake, orphans = MlflowClient(study.user_attrs["tracking_uri"]), run_harness.execute, []

    def killed_while_training(request, **kwargs):
        tags = {**request.tags, "mlflow.parentRunId": request.parent_run_id}
        orphans.append(client.create_run(study.user_attrs["mlflow_experiment_id"], tags=tags).info.run_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_harness, "execute", killed_while_training)
    with pytest.raises(KeyboardInterrupt):
        run_worker("tiny", None)
    (lost,) = load_study("tiny", None).trials
    owned_by_a_dead_process(study, lost)
    monkeypatch.setattr(run_harness, "execute", fake)
    status = runner.run_study(str(path), None, progress=False)
    assert status.finished and (status.complete, status.lost) == (1, 1)
    assert client.get_run(orphans[0]).info.status == "KILLED"  # closed by the retry


def test_a_new_study_creates_the_default_tracking_store_where_it_runs(
    tmp_path, monkeypatch, fake_execute, workers_in_process
):
    """And records it: the study logs there from any directory it resumes from, which gets no
    store of its own (the test above)."""

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    status = runner.run_study(str(compare_spec(tmp_path, ["a"])), str(tmp_path / "journal"), progress=False)
    assert status.finished and (fresh / "runs" / "mlflow.db").is_file()
    assert (
        load_study("tiny", str(tmp_path / "journal"))
        .user_attrs["tracking_uri"]
        .endswith("fresh/runs/mlflow.db")
    )


def test_a_worker_that_cannot_use_the_recorded_directory_says_so_and_uses_its_own(
    workdir, tmp_path, monkeypatch, fake_execute, capsys
):
    """Another machine, where the directory the study was created from does not exist."""

    journal = str(workdir / "runs" / "studies.journal")
    study = prepared(grid_spec(workdir, 1, [0.0]))
    study.set_user_attr("runs_dir", "/nonexistent-origin/runs/studies/tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_worker("tiny", journal) == 1
    (request,) = fake_execute
    assert Path(request.out_dir).is_relative_to(elsewhere / "runs" / "studies" / "tiny")
    out = capsys.readouterr().out
    assert (
        "keeps its unit runs in /nonexistent-origin/runs/studies/tiny, which this machine cannot use" in out
    )
    assert f"(/nonexistent-origin does not exist here); this worker's runs go to {elsewhere}/runs/" in out


def test_a_study_created_before_the_directory_was_recorded_keeps_its_runs_where_workers_run(
    workdir, tmp_path, monkeypatch, fake_execute, capsys
):
    path = grid_spec(workdir, 1, [0.0])
    spec = load_spec(path)
    old = optuna.create_study(study_name="tiny", storage=open_storage(None), direction="maximize")
    old.set_user_attr("spec", spec.raw)  # as the previous version recorded it: no runs_dir
    study = runner.prepare_study(spec, storage_location(None), resolve_tracking_uri(None))
    runner.enqueue_missing_units(study, spec)
    assert "runs_dir" not in study.user_attrs  # not pinned to whichever directory resumes it first
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_worker("tiny", str(workdir / "runs" / "studies.journal")) == 1
    (request,) = fake_execute
    assert Path(request.out_dir).is_relative_to(elsewhere / "runs" / "studies" / "tiny")
    assert "cannot use" not in capsys.readouterr().out


def test_a_study_resumed_into_a_store_it_may_not_write_is_one_clear_error(tracking_uri, monkeypatch):
    """`study run` of an existing study as a user who may read the store but not write it ended
    in MLflow's traceback."""

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from studies.spec import Spec
    from studies.tracking import prepare_study_tracking

    spec = Spec("readonly", "grid", "", "ppo", ("toy-bimodal",), 1, 0, 1024, "cpu", None)
    _, parent = prepare_study_tracking(tracking_uri, spec)

    def read_only(self, run_id, status=None, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database")

    monkeypatch.setattr(MlflowClient, "update_run", read_only)
    with pytest.raises(UserError, match="cannot write to the MLflow store .*attempt to write a readonly"):
        prepare_study_tracking(tracking_uri, spec, parent)


def test_a_journal_that_cannot_be_appended_to_is_one_clear_error(tmp_path, monkeypatch):
    """A full disk ended `study run` in tracebacks from the workers and the coordinator."""

    import errno

    from optuna.storages.journal import JournalFileBackend

    storage = open_storage(str(tmp_path / "studies.journal"))
    study = optuna.create_study(study_name="full", storage=storage)

    def full_disk(self, logs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(JournalFileBackend, "append_logs", full_disk)
    with pytest.raises(UserError, match=r"cannot write the study journal .*studies.journal: No space left"):
        study.set_user_attr("x", 1)


def test_a_second_retry_reruns_only_the_latest_failure_of_a_unit(workdir, fake_execute, workers_in_process):
    """Each `--retry-diverged` reran the unit once for every earlier failed attempt, replaced
    ones included: compute wasted, and FAIL trials piling up."""

    path = str(grid_spec(workdir, 1, [0.0, 0.25]))  # the fake diverges at 0.25
    main(["study", "run", path])
    main(["study", "run", path, "--retry-diverged"])
    main(["study", "run", path, "--retry-diverged"])
    assert [r.overrides["entropy_coef"] for r in fake_execute] == [0.0, 0.25, 0.25, 0.25]


def test_a_tune_trial_whose_every_unit_ran_completes_and_is_never_pruned(workdir, monkeypatch):
    """Pruned after its last unit, a trial that ran everything left `best_trial` and counted as
    pruned for TPE. (The fake harness's scores fall with every call, so no trial reached its last
    unit in the pruning tests.)"""

    calls = []

    def execute(request, *, on_evaluation=None, progress=True):
        calls.append(request)
        # Every trial's first unit scores alike; its second falls with every call.
        score = 1000.0 if str(request.out_dir).endswith("seed0") else 1000.0 / len(calls)
        return FakeResult(unit_run(request), score, "FINISHED")

    monkeypatch.setattr(run_harness, "execute", execute)
    prepared(spec_file(workdir, 'kind = "tune"\nseeds = 2\nmax_trials = 5\npruner = "median"\n',
                       "[space.clip]\nlow = 0.1\nhigh = 0.3\n"))  # fmt: skip
    assert run_worker("tiny", None) == 5
    trials = load_study("tiny", None).trials
    assert all(len(t.user_attrs["units"]) == 2 for t in trials)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5


def test_the_journal_lock_of_a_killed_process_is_taken_over_in_seconds(tmp_path):
    """A `kill -9` inside a journal append leaves Optuna's lock (a link beside the journal), and
    every process waited out Optuna's 30 s grace period before it could write to the study."""

    from hangs import alarm_after

    journal = tmp_path / "studies.journal"
    storage = open_storage(str(journal))
    holder = "import sys, time; from studies.storage import KernelGuardedLock; "
    holder += "KernelGuardedLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", holder, str(journal)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    child.kill()
    child.wait()
    assert Path(f"{journal}.lock").is_symlink()  # left behind, as by a kill inside an append
    with alarm_after(15):
        optuna.create_study(study_name="after-the-kill", storage=storage)
    assert not Path(f"{journal}.lock").exists()
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(str(journal)))] == [
        "after-the-kill"
    ]
