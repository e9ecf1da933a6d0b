"""`gorl-bench evaluate`: a saved policy scored again, by default exactly as its last evaluation."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from hangs import alarm_after

from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.cli import main
from harness.run import RunRequest, execute

SMALL = {"num_envs": 16, "rollout_steps": 16, "epochs": 2, "num_minibatches": 2, "eval_episodes": 8,
         "eval_points": 2}  # fmt: skip
# Two refits within 2,048 steps: the last evaluation follows a stage boundary and a best-encoder choice.
ROOT = Path(__file__).resolve().parents[1]
GORL = {"refit_episodes": 32, "decoder_steps": 50, "decoder_batch_size": 64, "num_refits": 2}


# A DMC run of one update that a video test can play: 2 evaluation episodes of 1,000 steps
CARTPOLE = {**SMALL, "num_envs": 4, "eval_episodes": 2}


def _run(tmp_path, tracking_uri, algo, task, overrides, steps, name=None):
    request = RunRequest(algo=algo, task=task, steps=steps, overrides=overrides,
                         out_dir=tmp_path / (name or algo), tracking_uri=tracking_uri)  # fmt: skip
    return execute(request, progress=False)


def test_by_default_a_run_is_evaluated_exactly_as_its_last_evaluation(tmp_path, tracking_uri, capsys):
    gorl = _run(tmp_path, tracking_uri, "gorl-fm", "toy-bimodal", {**SMALL, **GORL}, 8 * 256)
    # A DMC task on the batched backend: episodes of 1000 steps, each env its own initial state.
    ppo = _run(tmp_path, tracking_uri, "ppo", "cartpole-balance",
               {**SMALL, "num_envs": 4, "eval_episodes": 3}, 128)  # fmt: skip
    # FPO and DPPO evaluate with seeded noise: its generator was saved as the evaluation left it,
    # and a loaded run drew other noise (other returns) than the evaluation it repeats.
    flows = [_run(tmp_path, tracking_uri, algo, "toy-bimodal", SMALL, 512) for algo in ("fpo", "dppo")]
    # GoRL evaluating its stochastic policy, with its stage-start and -end evaluations (refit_from
    # "best") drawing their own noise: the harness's evaluations are repeated all the same.
    sampling = {**SMALL, **GORL, "eval_noise": "sample", "refit_from": "best"}
    sampled = _run(tmp_path, tracking_uri, "gorl-fm", "toy-bimodal", sampling, 8 * 256, "sampled")
    runs = [gorl, ppo, *flows, sampled]
    out = tmp_path / "returns.json"
    assert main(["evaluate", *(str(run.out_dir) for run in runs), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for result, run in zip(results, runs, strict=True):
        assert len(result["returns"]) == (3 if result["algo"] == "ppo" else 8)
        assert result["mean"] == run.final_score and result["std"] == run.eval_history[-1][2]
        assert result["counted_steps"] == run.counted_steps and result["deterministic"]
        assert result["seeded_noise"] == (result["algo"] in ("fpo", "dppo") or run is sampled)
    printed = capsys.readouterr().out
    assert f"the run's last evaluation: {gorl.final_score:.2f}" in printed and "normalised score" in printed
    assert "8 seeded-noise episodes" in printed and "earlier policy" not in printed


def test_more_episodes_other_seeds_and_stochastic_actions(tmp_path, tracking_uri, capsys):
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    run_dir = str(tmp_path / "ppo")

    def returns(*options: str) -> np.ndarray:
        out = tmp_path / "returns.json"
        assert main(["evaluate", run_dir, "--json", str(out), *options]) == 0
        return np.array(json.loads(out.read_text())[0]["returns"])

    many = returns("--episodes", "40", "--seed", "7")
    assert many.shape == (40,) and many.std() > 0
    np.testing.assert_array_equal(returns("--episodes", "40", "--seed", "7"), many)  # reproducible
    assert not np.array_equal(returns("--episodes", "40", "--seed", "8"), many)
    sampled = returns("--episodes", "40", "--seed", "7", "--stochastic")
    assert not np.array_equal(sampled, many)
    np.testing.assert_array_equal(returns("--episodes", "40", "--seed", "7", "--stochastic"), sampled)


def test_a_run_not_yet_evaluated_needs_a_seed(tmp_path, tracking_uri, capsys):
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    checkpoint = load_checkpoint(tmp_path / "ppo")
    checkpoint["progress"].update(history=[], next_point=0)
    save_checkpoint(tmp_path / "ppo", checkpoint)
    assert main(["evaluate", str(tmp_path / "ppo")]) == 2
    assert "no evaluation to repeat; give --seed" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "ppo"), "--seed", "0"]) == 0
    assert "the run's last evaluation" not in capsys.readouterr().out


def test_json_to_standard_output(tmp_path, tracking_uri, capsys, monkeypatch):
    """`--json -` wrote a file named "-"; it now writes the JSON to standard output alone (the
    summaries go to standard error), so that it can be piped."""

    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    out = tmp_path / "returns.json"
    assert main(["evaluate", str(run.out_dir), "--json", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run.out_dir), "--json", "-"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == json.loads(out.read_text())
    assert "the run's last evaluation" in printed.err and not (tmp_path / "-").exists()


def test_the_runs_evaluated_before_a_run_is_refused_are_kept_in_the_json(tmp_path, tracking_uri, capsys):
    """--json was written after the last run only: the first run's evaluation was lost."""

    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512, name="evaluated")
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512, name="never")
    checkpoint = load_checkpoint(tmp_path / "never")
    checkpoint["progress"].update(history=[], next_point=0)
    save_checkpoint(tmp_path / "never", checkpoint)
    out = tmp_path / "returns.json"
    assert main(["evaluate", str(tmp_path / "evaluated"), str(tmp_path / "never"), "--json", str(out)]) == 2
    assert f"what was evaluated before (1 run) is in {out}" in capsys.readouterr().err
    (kept,) = json.loads(out.read_text())
    assert kept["run"] == str(tmp_path / "evaluated") and len(kept["returns"]) == SMALL["eval_episodes"]


def test_bad_runs_and_outputs_are_refused_before_any_run_loads(tmp_path, tracking_uri, capsys):
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    good = str(tmp_path / "ppo")
    assert main(["evaluate", good, str(tmp_path / "missing")]) == 2
    assert "holds no run checkpoint: the directory does not exist" in capsys.readouterr().err
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "checkpoint.pt").write_bytes(b"")
    assert main(["evaluate", good, str(tmp_path / "truncated")]) == 2
    refused = capsys.readouterr()
    assert "checkpoint.pt cannot be read" in refused.err and refused.out == ""  # `good` was not played
    # A hand-edited request: refused before `good` is played, not after (minutes, on a DMC task).
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512, name="edited")
    state = load_checkpoint(tmp_path / "edited")
    state["request"]["seed"] = -1
    save_checkpoint(tmp_path / "edited", state)
    assert main(["evaluate", good, str(tmp_path / "edited")]) == 2
    refused = capsys.readouterr()
    assert "holds a damaged run request" in refused.err and refused.out == ""
    assert main(["evaluate", good, "--json", str(tmp_path / "no" / "such.json")]) == 2
    assert "give a file in an existing directory" in capsys.readouterr().err
    assert main(["evaluate", good, "--json", str(tmp_path)]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):  # an empty value was taken for the current directory
        main(["evaluate", good, "--json", ""])
    assert "--json: must name a file, got an empty value" in capsys.readouterr().err
    # Files that --json would have destroyed: the run's checkpoint, a file of something else.
    checkpoint = tmp_path / "ppo" / "checkpoint.pt"
    saved = checkpoint.read_bytes()
    assert main(["evaluate", good, "--json", str(checkpoint)]) == 2
    assert "lies in the run directory" in capsys.readouterr().err and checkpoint.read_bytes() == saved
    for name, text in (("notes.txt", "my notes\n"), ("settings.json", '{"keep": "me"}\n')):
        (tmp_path / name).write_text(text)  # a JSON file of something else is no output either
        assert main(["evaluate", good, "--json", str(tmp_path / name)]) == 2
        assert "exists and is not an earlier output of evaluate --json" in capsys.readouterr().err
        assert (tmp_path / name).read_text() == text
    os.mkfifo(tmp_path / "pipe")  # reading it to check its contents waited for a writer for ever
    with alarm_after(30):
        assert main(["evaluate", good, "--json", str(tmp_path / "pipe")]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    # A name over 255 bytes: even Path.exists raised (a traceback).
    assert main(["evaluate", good, "--json", str(tmp_path / ("a" * 300))]) == 2
    assert f"{'a' * 300}: File name too long." in capsys.readouterr().err
    assert main(["evaluate", good, f"{good}/"]) == 2  # it was played and printed twice
    assert f"the run {good} is given more than once" in capsys.readouterr().err
    assert capsys.readouterr().out == ""  # nothing was evaluated
    with pytest.raises(SystemExit) as exited:  # 10^9 returns, kept in memory, would fill it
        main(["evaluate", good, "--episodes", "1e9"])
    assert exited.value.code == 2
    assert "argument --episodes: must be an integer from 1 to 1,000,000, got 1e9" in capsys.readouterr().err


def test_every_evaluation_point_plays_other_episodes_and_a_point_replays_its_own():
    """With one reset seed for every point, a learning curve scores one fixed set of start
    states throughout, its noise correlated from point to point."""

    from harness import evaluation

    act = lambda obs: 0.75 * obs[:, ::-1]  # noqa: E731 - a fixed policy whose toy returns vary by context
    evaluator = evaluation.Evaluator("toy-bimodal", 8, run_seed=3)
    points = [evaluator.evaluate(act, point) for point in (0, 1, 2, 0)]
    assert len({points[0], points[1], points[2]}) == 3
    assert points[3] == points[0]
    other_run = evaluation.Evaluator("toy-bimodal", 8, run_seed=4).evaluate(act, 0)
    assert other_run != points[0]


def test_more_episodes_than_play_at_once_play_in_equal_rounds(monkeypatch):
    """`evaluate --episodes 100000` on walker-walk would have built 100,000 MuJoCo envs at once."""

    from harness import evaluation

    monkeypatch.setattr(evaluation, "MAX_PARALLEL_EPISODES", 16)
    act = lambda obs: 0.75 * obs[:, ::-1]  # noqa: E731 - a fixed policy whose toy returns vary by context
    evaluator = evaluation.Evaluator("toy-bimodal", 40, run_seed=0)
    assert evaluator.env.num_envs == 14  # rounds of 14, 14 and 12 episodes
    ended: list[int] = []
    returns = evaluator.episode_returns(act, reset_seed=5, progress=ended.append)
    assert returns.shape == (40,) and len(np.unique(returns)) == 40 and sum(ended) == 40
    np.testing.assert_array_equal(evaluator.episode_returns(act, reset_seed=5), returns)
    # The first round is the evaluation of as many episodes as fit at once, with the same seed.
    one_round = evaluation.Evaluator("toy-bimodal", 14, run_seed=0).episode_returns(act, reset_seed=5)
    np.testing.assert_array_equal(one_round, returns[:14])


@functools.cache  # a subprocess each: asked once per backend, not once per test
def _can_render_with(backend: str) -> bool:
    probe = "import mujoco; mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8).close()"
    env = {**os.environ, "MUJOCO_GL": backend}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0


def _evaluate_with_video(
    tmp_path: Path, video_dir: Path, backend: str = "egl"
) -> subprocess.CompletedProcess:
    """`gorl-bench evaluate RUN --video DIR` of the run in tmp_path/ppo with MuJoCo's `backend`, in
    a process of its own: MuJoCo chooses its OpenGL backend when it is first imported."""

    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "evaluate",
        str(tmp_path / "ppo"),
        "--video",
        str(video_dir),
    ]
    env = {**os.environ, "MUJOCO_GL": backend}
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.skipif(not _can_render_with("egl"), reason="MuJoCo cannot render with EGL on this machine")
def test_a_video_shows_the_first_evaluated_episode(tmp_path, tracking_uri):
    _run(tmp_path, tracking_uri, "ppo", "cartpole-swingup", CARTPOLE, 128)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "ppo.gif").write_bytes(b"GIF89a, an earlier video")  # replaced
    done = _evaluate_with_video(tmp_path, tmp_path / "videos")
    assert done.returncode == 0, done.stderr
    frames = iio.imread(tmp_path / "videos" / "ppo.gif")
    # cartpole: 1000 steps of 0.01 s, a frame every 3 steps (30 per second) and the initial state.
    assert frames.shape == (1 + 1000 // 3, 240, 320, 3)
    assert frames.std() > 10 and np.abs(frames[0].astype(int) - frames[-1]).mean() > 1  # drawn, moving
    assert iio.immeta(tmp_path / "videos" / "ppo.gif")["duration"] == 30  # ms: real time
    assert "video of its first episode" in done.stdout


@pytest.mark.skipif(not _can_render_with("egl"), reason="MuJoCo cannot render with EGL on this machine")
def test_a_video_replaces_no_file_but_an_earlier_video(tmp_path, tracking_uri):
    """evaluate names each video after its run: a user's own ppo.gif that is no GIF was replaced,
    and a --video that is a file was refused naming an option evaluate does not have (--out)."""

    _run(tmp_path, tracking_uri, "ppo", "cartpole-swingup", CARTPOLE, 128)
    (tmp_path / "notes").write_text("mine\n")
    done = _evaluate_with_video(tmp_path, tmp_path / "notes")
    assert done.returncode == 2 and "Choose another directory with --video" in done.stderr, done.stderr
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "ppo.gif").write_text("mine\n")
    done = _evaluate_with_video(tmp_path, tmp_path / "videos")
    assert done.returncode == 2 and "exists and is not an earlier video (a GIF)" in done.stderr, done.stderr
    assert (tmp_path / "videos" / "ppo.gif").read_text() == "mine\n"


def test_video_frames_last_whole_gif_delays_so_that_it_plays_in_real_time():
    """GIF delays count 10 ms: a frame per walker step (25 ms) would be stored as 20 ms."""

    from harness.video import frame_steps

    # (control step of cartpole/cheetah, hopper/finger, walker/humanoid, fish; an odd one) -> steps
    steps = {0.01: 3, 0.02: 2, 0.025: 2, 0.04: 1, 0.0123: 3}
    assert {dt: frame_steps(dt) for dt in steps} == steps


def test_a_video_needs_a_mujoco_task_and_then_a_rendering_backend(tmp_path, tracking_uri, capsys):
    """A toy run was first sent to set MUJOCO_GL=egl, and only then told it has nothing to render."""

    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    assert os.environ["MUJOCO_GL"] == "disable"
    assert main(["evaluate", str(tmp_path / "ppo"), "--video", str(tmp_path / "videos")]) == 2
    assert "toy-bimodal is not simulated with MuJoCo, so it has nothing to render." in capsys.readouterr().err
    _run(tmp_path / "dmc", tracking_uri, "ppo", "cartpole-swingup", CARTPOLE, 128)
    assert main(["evaluate", str(tmp_path / "dmc" / "ppo"), "--video", str(tmp_path / "videos")]) == 2
    # Not "MUJOCO_GL is 'disable'": the user may not have set it (gorl-bench sets it where unset).
    assert (
        "a video needs an OpenGL backend for MuJoCo, and rendering is off (MUJOCO_GL unset or 'disable')"
        in (capsys.readouterr().err)
    )
    assert not (tmp_path / "videos").exists()


@pytest.mark.skipif(not _can_render_with("egl"), reason="MuJoCo cannot render with EGL on this machine")
def test_a_video_directory_inside_a_run_is_refused(tmp_path, tracking_uri):
    """It wrote ppo.gif into the run directory, which evaluate leaves as it is (as --json does)."""

    _run(tmp_path, tracking_uri, "ppo", "cartpole-swingup", CARTPOLE, 128)
    done = _evaluate_with_video(tmp_path, tmp_path / "ppo")
    assert done.returncode == 2 and "lies in the run directory" in done.stderr, done.stderr
    assert sorted(path.name for path in (tmp_path / "ppo").iterdir()) == [
        ".lock",
        "checkpoint.pt",
        "config.toml",
    ]


@pytest.mark.skipif(not _can_render_with("egl"), reason="MuJoCo cannot render with EGL on this machine")
def test_a_video_of_a_task_without_rendering_is_refused_and_creates_no_directory(tmp_path, tracking_uri):
    _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", SMALL, 512)
    done = _evaluate_with_video(tmp_path, tmp_path / "videos")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "videos").exists()


def test_a_checkpoint_past_the_last_evaluation_is_said_to_hold_a_later_policy():
    """A run stopped between evaluation points (--checkpoint-every) saved a later policy than the
    one its last evaluation scored, so repeating that evaluation need not give its score."""

    from harness.commands.evaluate import describe

    result = {"run": "r", "algo": "ppo", "task": "toy-bimodal", "run_seed": 0, "counted_steps": 12_288,
              "reset_seed": 1, "deterministic": True, "seeded_noise": False, "returns": [1.0, 2.0],
              "mean": 1.5, "std": 0.5, "normalised_score": None, "last_evaluation": [8_192, 1.2, 0.1],
              "video": None}  # fmt: skip
    assert describe(result).endswith("the run's last evaluation: 1.20 at 8,192 steps, of an earlier policy "
                                     "than this checkpoint's")  # fmt: skip
    result["counted_steps"] = 8_192
    assert describe(result).endswith("the run's last evaluation: 1.20 at 8,192 steps")


@pytest.mark.skipif(_can_render_with("osmesa"), reason="OSMesa is installed here: nothing to refuse")
def test_a_rendering_backend_whose_library_is_missing_is_named_before_the_run_is_played(
    tmp_path, tracking_uri
):
    """MUJOCO_GL=osmesa without the OSMesa library ended in an AttributeError deep in MuJoCo's
    bindings and left an empty video directory behind."""

    _run(tmp_path, tracking_uri, "ppo", "cartpole-swingup", CARTPOLE, 128)
    done = _evaluate_with_video(tmp_path, tmp_path / "videos", backend="osmesa")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "MuJoCo cannot render with MUJOCO_GL=osmesa here" in done.stderr
    assert "try another MUJOCO_GL: egl, glfw." in done.stderr  # not the one that failed
    assert "it needs the OSMesa library" in done.stderr
    assert not (tmp_path / "videos").exists()


def test_a_json_output_that_cannot_be_written_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """On a full disk the earlier output was replaced by cut-off JSON, which the next run then
    refused as not an earlier output."""

    import errno
    import json
    import os

    from harness import atomic
    from harness.commands.evaluate import _write_json
    from harness.errors import UserError

    path = tmp_path / "returns.json"
    _write_json(path, [{"run": "a", "returns": [1.0]}])
    earlier = path.read_text()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(UserError, match=r"cannot write --json .*returns.json: No space left on device"):
        _write_json(path, [{"run": "a", "returns": [1.0]}, {"run": "b", "returns": [2.0] * 5000}])
    assert path.read_text() == earlier and json.loads(earlier)[0]["run"] == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["returns.json"]  # no temporary file left


class EndsEveryFewSteps:
    """Env i ends its episodes every i + 1 steps, reward 1 per step, restarting at once (as every
    vector env here); remembers its reset seeds."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs, self.t, self.seeds = num_envs, 0, []

    def reset(self, seed=None):
        self.seeds.append(seed)
        self.t = 0
        return np.zeros((self.num_envs, 1), np.float32), {}

    def step(self, actions):
        self.t += 1
        ended = np.array([self.t % (i + 1) == 0 for i in range(self.num_envs)])
        obs = np.zeros((self.num_envs, 1), np.float32)
        return obs, np.ones(self.num_envs), ended, np.zeros(self.num_envs, bool), {}

    def close(self) -> None:
        pass


def test_an_episode_s_return_stops_at_its_end_and_rounds_are_seeded_from_the_point_s_seed(monkeypatch):
    """Every tested task ends all its episodes at one step: rewards of the episode that starts
    after an early end (gym's Hopper falling) would have been added to the return unnoticed."""

    from harness import evaluation

    made = []
    monkeypatch.setattr(
        evaluation.envs,
        "make",
        lambda task, n, seed, backend="auto": made.append(EndsEveryFewSteps(n)) or made[-1],
    )
    monkeypatch.setattr(evaluation, "MAX_PARALLEL_EPISODES", 4)
    evaluator = evaluation.Evaluator("toy-bimodal", 8, run_seed=0)
    returns = evaluator.episode_returns(lambda obs: np.zeros((len(obs), 2)), reset_seed=5)
    np.testing.assert_array_equal(returns, [1, 2, 3, 4, 1, 2, 3, 4])
    # The first round is reset with the point's seed itself: `evaluate --seed S` replays it.
    assert made[0].seeds == [5, evaluation.round_seed(5, 1)]


def test_the_last_evaluation_is_repeated_when_one_update_passed_several_points(
    tmp_path, tracking_uri, capsys
):
    """Two updates of 256 steps pass four evaluation points of a 512-step run: the last evaluation
    is that of point 3, not the second one held in its history."""

    run = _run(tmp_path, tracking_uri, "ppo", "toy-bimodal", {**SMALL, "eval_points": 4}, 512)
    out = tmp_path / "returns.json"
    assert main(["evaluate", str(run.out_dir), "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["mean"] == run.final_score


def test_sampled_actions_of_a_flow_policy_are_not_called_seeded_noise(tmp_path, tracking_uri, capsys):
    fpo = _run(tmp_path, tracking_uri, "fpo", "toy-bimodal", SMALL, 512)
    out = tmp_path / "returns.json"
    assert main(["evaluate", str(fpo.out_dir), "--stochastic", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["seeded_noise"] is False
