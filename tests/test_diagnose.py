"""`gorl-bench diagnose multimodality`: figure, statistics in MLflow, and refusals."""

from __future__ import annotations

import shutil

import matplotlib.image
import pytest
from mlflow.tracking import MlflowClient

from algorithms.ppo import PPOAgent
from harness.checkpoint import load_checkpoint
from harness.cli import main
from harness.commands.diagnose import fixed_state_steps
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
    capsys.readouterr()
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # It was silent for as long as it sampled: a log gets a line per step.
    assert "diagnose: sampling 500 actions of run 2 of 2 and their KDE" in err
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
    assert "whose kernel width is 0.8 x the sample's std" in out  # the paper's factor by default
    assert metrics["diagnose/multimodality/kde_bandwidth_factor"] == 0.8

    assert main([*argv, "--bandwidth", "0.16"]) == 0
    assert "whose kernel width is 0.16 x the sample's std" in capsys.readouterr().out
    metrics = client.get_run(runs["ppo"].mlflow_run_id).data.metrics
    assert metrics["diagnose/multimodality/kde_bandwidth_factor"] == 0.16
    assert main([*argv, "--bandwidth", "0.16"]) == 0  # a repeat logs no copies of its values
    history = client.get_metric_history(
        runs["ppo"].mlflow_run_id, "diagnose/multimodality/kde_bandwidth_factor"
    )
    assert sorted(m.value for m in history) == [0.16, 0.8]
    statistic = "diagnose/multimodality/bimodality_coefficient"
    assert len(client.get_metric_history(runs["ppo"].mlflow_run_id, statistic)) == 1  # no bandwidth in it


def test_runs_that_differ_only_in_settings_are_told_apart_by_their_directories(
    tmp_path, tracking_uri, capsys
):
    """Two PPO runs of seed 0 with other clips were printed and drawn as one label twice."""

    for name, clip in (("narrow", 0.1), ("wide", 0.3)):
        request = RunRequest(algo="ppo", task="toy-bimodal", steps=2 * 256, overrides={**SMALL, "clip": clip},
                             out_dir=tmp_path / name, tracking_uri=tracking_uri)  # fmt: skip
        execute(request, progress=False)
    argv = ["diagnose", "multimodality", str(tmp_path / "narrow"), str(tmp_path / "wide"),
            "--samples", "500", "--state-steps", "3", "--out", str(tmp_path / "figures")]  # fmt: skip
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "bimodality coefficient" in line]
    assert [line.split(":")[0] for line in lines] == ["narrow", "wide"]
    assert lines[0].startswith("narrow: ppo toy-bimodal s0 @ 512 steps: ")


def test_a_policy_whose_samples_all_coincide_is_refused_with_a_message(
    tmp_path, tracking_uri, capsys, monkeypatch
):
    # A std of 1e-12 around the mean: every sampled action is the same float32 value.
    overrides = {**SMALL, "min_std": 1e-12, "max_std": 2e-12}
    request = RunRequest(algo="ppo", task="toy-bimodal", steps=256, overrides=overrides,
                         out_dir=tmp_path / "ppo", tracking_uri=tracking_uri)  # fmt: skip
    execute(request, progress=False)
    closed, close = [], PPOAgent.close
    monkeypatch.setattr(PPOAgent, "close", lambda agent: (closed.append(agent), close(agent)))
    shutil.copytree(tmp_path / "ppo", tmp_path / "copy")
    argv = ["diagnose", "multimodality", str(tmp_path / "ppo"), str(tmp_path / "copy"), "--samples", "100"]
    assert main(argv) == 2
    assert "at this state are all the same (a collapsed or saturated policy)" in capsys.readouterr().err
    assert len(closed) == 2  # the second run's envs too, although the error came at the first


def test_a_run_given_twice_is_refused(tmp_path, capsys):
    """Its panel was drawn twice and its statistics logged twice to its MLflow run."""

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # only its presence is checked first
    run = str(tmp_path / "run")
    assert main(["diagnose", "multimodality", run, f"{run}/"]) == 2
    assert f"the run {run} is given more than once" in capsys.readouterr().err


def test_a_run_started_on_cuda_is_diagnosed_on_the_cpu_with_device(
    tmp_path, tracking_uri, capsys, as_if_trained_on_cuda
):
    import torch

    request = RunRequest(algo="ppo", task="toy-bimodal", steps=256, overrides=SMALL,
                         out_dir=tmp_path / "ppo", tracking_uri=tracking_uri)  # fmt: skip
    execute(request, progress=False)
    as_if_trained_on_cuda(tmp_path / "ppo")
    argv = ["diagnose", "multimodality", str(tmp_path / "ppo"), "--samples", "100"]
    if not torch.cuda.is_available():
        assert main(argv) == 2
        assert "use --device cpu" in capsys.readouterr().err
    assert main([*argv, "--device", "cpu"]) == 0


@pytest.mark.parametrize("samples", ["3", "1e8"])
def test_a_sample_count_out_of_range_is_refused_while_parsing(tmp_path, capsys, samples):
    """10^8 actions at one state failed in torch's allocator with a traceback."""

    with pytest.raises(SystemExit) as exited:
        main(["diagnose", "multimodality", str(tmp_path), "--samples", samples])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --samples: must be an integer from 4 to 1,000,000, got {samples}" in err


def test_the_fixed_state_lies_within_the_first_episode(tmp_path, tracking_uri, capsys):
    """Past an episode's end the env resets: --state-steps 99999 on toy-bimodal ran for minutes to
    reach an early state of some later episode."""

    request = RunRequest(algo="ppo", task="toy-bimodal", steps=256, overrides=SMALL,
                         out_dir=tmp_path / "ppo", tracking_uri=tracking_uri)  # fmt: skip
    execute(request, progress=False)
    argv = ["diagnose", "multimodality", str(tmp_path / "ppo"), "--samples", "100", "--state-steps"]
    assert main([*argv, "16"]) == 2
    err = capsys.readouterr().err
    assert "--state-steps 16 is past the end of a toy-bimodal episode (16 steps); give at most 15." in err
    assert main([*argv, "15"]) == 0
    # The default, 200 steps, becomes the last step of a shorter episode.
    assert fixed_state_steps("toy-bimodal", None) == 15
    assert fixed_state_steps("cheetah-run", None) == 200


def test_an_episode_that_terminates_before_the_fixed_state_is_refused(tmp_path, tracking_uri, capsys):
    """gym:Hopper-v5 falls early; the default 200 steps took the state from the auto-reset next episode."""

    overrides = {**SMALL, "eval_episodes": 2}
    request = RunRequest(algo="ppo", task="gym:Hopper-v5", steps=256, overrides=overrides,
                         out_dir=tmp_path / "hopper", tracking_uri=tracking_uri)  # fmt: skip
    execute(request, progress=False)
    assert main(["diagnose", "multimodality", str(tmp_path / "hopper"), "--samples", "100"]) == 2
    err = capsys.readouterr().err
    assert "episode (reset seed 0) ends after" in err and "before the fixed state at step 200" in err
    steps = int(err.split("ends after ")[1].split()[0])
    assert main(["diagnose", "multimodality", str(tmp_path / "hopper"), "--samples", "100",
                 "--state-steps", str(steps - 1)]) == 0  # fmt: skip


def test_a_directory_without_a_run_is_refused(tmp_path, capsys):
    assert main(["diagnose", "multimodality", str(tmp_path)]) == 2
    assert "holds no run checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--seed", "-1"], "argument --seed: must be a non-negative integer, got -1"),
        (["--bandwidth", "0.01"], "argument --bandwidth: must be a number from 0.05 to 10, got 0.01"),
        (["--bandwidth", "nan"], "argument --bandwidth: must be a number from 0.05 to 10, got nan"),
        (["--bandwidth", "wide"], "argument --bandwidth: must be a number, got 'wide'"),
    ],
)
def test_bad_options_are_refused_before_the_runs_load(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exited:
        main(["diagnose", "multimodality", str(tmp_path), *option])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_moved_store_keeps_the_figure_and_says_how_to_log_it(tmp_path, migrated_mlflow_db, capsys):
    # A run and its MLflow store in one folder, which is then moved: the checkpoint still names
    # the store at its old, absolute path.
    old, moved = tmp_path / "project", tmp_path / "moved"
    old.mkdir()
    shutil.copy(migrated_mlflow_db, old / "mlflow.db")
    request = RunRequest(algo="ppo", task="toy-bimodal", steps=256, overrides=SMALL, out_dir=old / "run",
                         tracking_uri=f"sqlite:///{old / 'mlflow.db'}")  # fmt: skip
    run_id = execute(request, progress=False).mlflow_run_id
    (tmp_path / "taken").write_text("")
    argv = ["diagnose", "multimodality", str(old / "run"), "--samples", "100", "--state-steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "taken")]) == 2
    assert "output directory" in capsys.readouterr().err
    old.rename(moved)

    argv[2] = str(moved / "run")
    assert main(argv) == 2
    captured = capsys.readouterr()
    figure = moved / "run" / "diagnostics" / "multimodality.png"
    assert "bimodality coefficient" in captured.out and figure.is_file()
    error = " ".join(captured.err.split())  # the message as one paragraph, whatever the wrapping
    assert f"the figure was written to {figure}" in error
    assert f"the MLflow store sqlite:///{old / 'mlflow.db'} has no run {run_id}" in error
    assert "--tracking-uri" in error and "Traceback" not in captured.err
    assert not old.exists()  # no empty store made at the old path

    # A store that exists but never held the run (another project's, say) is named as such.
    other = tmp_path / "other.db"
    shutil.copy(migrated_mlflow_db, other)
    assert main([*argv, "--tracking-uri", f"sqlite:///{other}"]) == 2
    assert f"has no run {run_id}" in " ".join(capsys.readouterr().err.split())

    assert main([*argv, "--tracking-uri", f"sqlite:///{moved / 'mlflow.db'}"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"the figure was not attached to MLflow run {run_id}: its artifact directory" in err
    metrics = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}").get_run(run_id).data.metrics
    assert 0 < metrics["diagnose/multimodality/bimodality_coefficient"] < 1
    assert not old.exists()  # nor its artifact folder: MLflow records that one's old path too


def test_a_figure_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    """On a full disk matplotlib's OSError names no file: the command ended in a traceback."""

    import errno
    import os

    import numpy as np
    from matplotlib.figure import Figure

    from algorithms.multimodality import analyse_actions
    from harness.commands.diagnose import _plot
    from harness.errors import UserError

    report = analyse_actions(np.random.default_rng(0).normal(size=(500, 2)), 0.8)

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(
        UserError, match=r"cannot write the figure .*multimodality.png: No space left on device"
    ):
        _plot([("run", report)], tmp_path / "multimodality.png")


@pytest.mark.parametrize("name", ["multimodality.png", "multimodality.pdf"])
def test_a_users_file_of_the_figures_name_is_kept(tmp_path, capsys, name):
    """The figure's files were written over whatever --out held under their names."""

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # only its presence is checked first
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / name).write_text("my notes\n")
    argv = ["diagnose", "multimodality", str(tmp_path / "run"), "--out", str(tmp_path / "figures")]
    assert main(argv) == 2
    assert f"{tmp_path / 'figures' / name} exists and is not an earlier figure" in capsys.readouterr().err
    assert (tmp_path / "figures" / name).read_text() == "my notes\n"
