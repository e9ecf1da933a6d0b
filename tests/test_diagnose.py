"""`gorl-bench diagnose multimodality`: figure, statistics in MLflow, and refusals."""

from __future__ import annotations

import matplotlib.image
from mlflow.tracking import MlflowClient

from harness.checkpoint import load_checkpoint
from harness.cli import main
from harness.run import RunRequest, execute

SMALL = {"num_envs": 16, "rollout_steps": 16, "epochs": 2, "num_minibatches": 2, "eval_episodes": 8,
         "eval_points": 1}  # fmt: skip
GORL = {"refit_episodes": 32, "decoder_steps": 50, "decoder_batch_size": 64, "num_refits": 1}


def test_multimodality_of_a_gorl_and_a_ppo_run(tmp_path, tracking_uri, capsys):
    runs = {}
    for algo, extra in (("gorl-fm", GORL), ("ppo", {})):
        request = RunRequest(algo=algo, task="toy-bimodal", steps=4 * 256, overrides={**SMALL, **extra},
                             out_dir=tmp_path / algo, tracking_uri=tracking_uri)  # fmt: skip
        runs[algo] = execute(request, progress=False)
    argv = ["diagnose", "multimodality", str(tmp_path / "gorl-fm"), str(tmp_path / "ppo"),
            "--samples", "500", "--state-steps", "3", "--out", str(tmp_path / "figures")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        out.count("bimodality coefficient") == 2 and "gorl-fm toy-bimodal" in out and "ppo toy-bimodal" in out
    )
    image = matplotlib.image.imread(tmp_path / "figures" / "multimodality.png")
    assert image.std() > 0.01  # not blank
    assert (tmp_path / "figures" / "multimodality.pdf").exists()
    client = MlflowClient(tracking_uri)
    for algo, result in runs.items():
        metrics = client.get_run(result.mlflow_run_id).data.metrics
        assert 0 < metrics["diagnose/multimodality/bimodality_coefficient"] < 1, algo
        assert [a.path for a in client.list_artifacts(result.mlflow_run_id, "diagnostics")] == [
            "diagnostics/multimodality.png"
        ]
    assert load_checkpoint(tmp_path / "ppo")["agent"]["counted_steps"] == 4 * 256


def test_a_directory_without_a_run_is_refused(tmp_path, capsys):
    assert main(["diagnose", "multimodality", str(tmp_path)]) == 2
    assert "holds no run checkpoint" in capsys.readouterr().err
