"""A run killed with SIGKILL and resumed ends with exactly the evaluation history of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.checkpoint import checkpoint_path, load_checkpoint
from harness.cli import main
from harness.run import RunRequest, execute, resume

STEPS = 12 * 64 * 64  # 12 PPO updates of the cpu preset on the toy task
POINTS = 6


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, tracking_uri):
    reference = execute(
        RunRequest(algo="ppo", task="toy-bimodal", seed=5, steps=STEPS, overrides={"eval_points": POINTS},
                   out_dir=tmp_path / "reference", tracking_uri=tracking_uri),
        progress=False,
    )  # fmt: skip
    assert len(reference.eval_history) == POINTS

    out = tmp_path / "killed"
    argv = ["run", "--algo", "ppo", "--task", "toy-bimodal", "--seed", "5", "--steps", str(STEPS),
            "--set", f"eval_points={POINTS}", "--out", str(out), "--tracking-uri", tracking_uri,
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "disable"}
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not checkpoint_path(out).exists():
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(out)["progress"]["history"]
    assert len(killed_at) < POINTS, "the run finished before it was killed"

    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
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


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tracking_uri):
    request = RunRequest(algo="ppo", task="toy-bimodal", steps=64 * 64, overrides={"eval_points": 1},
                         out_dir=tmp_path / "done", tracking_uri=tracking_uri)  # fmt: skip
    first = execute(request, progress=False)

    again = resume(Path(first.out_dir), progress=False)
    assert again.eval_history == first.eval_history and again.mlflow_run_id == first.mlflow_run_id
