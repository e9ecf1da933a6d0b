"""`gorl-bench evaluate RUN [RUN ...]`: score saved policies again, with more episodes or other seeds.

Each run's checkpoint is loaded and its policy plays `--episodes` episodes, one per env of a
fresh evaluation env (1,024 at a time), as in training (`harness.evaluation`). Without
`--stochastic` every method evaluates as in training, with its configured `eval_noise` ("zero",
PPO's and GoRL's default: the mean action; "sample", FPO's and DPPO's: noise reseeded from the
run's seed and counted steps); with it every method samples its behaviour policy from its
training noise generator, whatever `eval_noise` says. By default the episodes, their
number and their reset seed are those of the run's last evaluation, so `evaluate RUN` repeats
that evaluation: for a finished run it prints the final score again, which shows that the
checkpoint is the policy that was scored. Runs are only read: nothing is written to the run
directory or to MLflow; `--json` keeps the returns.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness.commands.arguments import (
    check_distinct_runs,
    check_out_dir,
    check_replaceable,
    directory,
    file_path,
    int_between,
    non_negative_int,
)
from harness.limits import MAX_EPISODES
from harness.progress import count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saved runs again (more episodes, other seeds, stochastic actions)",
        description="Evaluate the policies saved in run directories; by default repeat each run's last "
        "evaluation exactly.",
    )
    parser.add_argument("runs", nargs="+", type=directory, metavar="RUN", help="run directories")
    parser.add_argument(
        "--episodes",
        type=int_between(1, MAX_EPISODES),
        help=f"episodes per run, at most {MAX_EPISODES:,} (default: the run's eval_episodes)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        help="reset seed of the evaluation env (default: the one of the run's last evaluation)",
    )
    parser.add_argument(
        "--stochastic", action="store_true", help="sample actions from the policy instead of its mean"
    )
    parser.add_argument("--device", help="torch device to load the policies on (default: each run's)")
    parser.add_argument(
        "--json",
        type=file_path,
        metavar="FILE",
        help="also write every episode's return here (-: standard output; the summaries go to stderr)",
    )
    parser.add_argument(
        "--video",
        type=directory,
        metavar="DIR",
        help="also write each run's first episode as DIR/<run>.gif (needs MUJOCO_GL=egl, osmesa or glfw)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from harness.run import saved_run

    check_distinct_runs(args.runs)  # before any checkpoint is read, none twice
    # All of them readable and whole before the first is evaluated
    tasks = [saved_run(run_dir)[0].task for run_dir in args.runs]
    json_to_stdout = args.json is not None and str(args.json) == "-"
    json_file = None if json_to_stdout else args.json
    if json_file is not None:
        check_json_target(json_file, args.runs)
    videos: list[Path | None] = [None] * len(args.runs)
    if args.video is not None:
        from harness.video import check_rendering, check_simulated

        for task in tasks:  # first: no backend would render a toy task
            check_simulated(task)
        check_rendering()
        check_out_dir(args.video, "--video")
        check_outside_runs(args.video, "--video", args.runs)
        videos = [args.video / f"{Path(run_dir).resolve().name}.gif" for run_dir in args.runs]
        if len(set(videos)) < len(videos):
            raise UserError(
                "--video names each video after its run directory, and two runs' directories share a "
                "name: evaluate them one at a time, with a --video directory each."
            )
        for video in videos:
            check_replaceable(video, b"GIF8", "an earlier video (a GIF)", "--video")
    results: list[dict] = []
    for run_dir, video in zip(args.runs, videos, strict=True):
        try:
            result = evaluate_run(run_dir, args.episodes, args.seed, not args.stochastic, args.device, video)
        except (UserError, KeyboardInterrupt):
            if results and json_file is not None:
                print(
                    f"what was evaluated before ({count(len(results), 'run')}) is in {json_file}",
                    file=sys.stderr,
                )
            raise
        print(describe(result), file=sys.stderr if json_to_stdout else sys.stdout)
        results.append(result)
        if json_file is not None:  # after each run: a later run refused or interrupted loses none
            _write_json(json_file, results)
    if json_to_stdout:
        print(json.dumps(results, indent=2))
    elif json_file is not None:
        print(f"returns written to {json_file}")
    return 0


def _write_json(path: Path, results: list[dict]) -> None:
    """Replace `path` atomically: a full disk left a cut-off file where the earlier output was."""

    from harness.atomic import write_atomically
    from harness.errors import UserError

    try:
        write_atomically(path, (json.dumps(results, indent=2) + "\n").encode(), f".{path.name}-")
    except OSError as error:
        raise UserError(f"cannot write --json {path}: {error.strerror}.") from None


def check_outside_runs(path: Path, option: str, run_dirs: list[Path]) -> None:
    """Refuse an output `path` inside one of the run directories, which evaluate leaves as they are."""

    from harness.errors import UserError

    for run_dir in run_dirs:
        if path.resolve().is_relative_to(Path(run_dir).resolve()):
            raise UserError(
                f"{option} {path} lies in the run directory {run_dir}, which evaluate leaves as it is; "
                "give a path elsewhere."
            )


def check_json_target(path: Path, run_dirs: list[Path]) -> None:
    """Refuse a `--json` file that writing would lose data with: one in a run directory (its
    checkpoint, say) or an existing file that holds something else than JSON."""

    from harness.errors import UserError

    if path.is_dir() or not path.parent.is_dir():
        raise UserError(f"--json {path}: give a file in an existing directory.")
    check_outside_runs(path, "--json", run_dirs)
    if path.exists():
        if not path.is_file():  # reading a pipe or a terminal would wait for ever, /dev/zero fill memory
            raise UserError(f"--json {path} is not a regular file; give a file path.")
        try:
            # Far above any earlier output (a few kB per run): a larger file is not one.
            earlier = json.loads(path.read_text()) if path.stat().st_size < 2**30 else None
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
        # An earlier --json output: a list of results, each with its run and its returns.
        if not (
            isinstance(earlier, list)
            and all(isinstance(r, dict) and {"run", "returns"} <= r.keys() for r in earlier)
        ):
            raise UserError(
                f"--json {path} exists and is not an earlier output of evaluate --json, the only file "
                "evaluate replaces. Give another file, or remove this one first."
            )


def evaluate_run(
    run_dir: Path,
    episodes: int | None,
    seed: int | None,
    deterministic: bool,
    device: str | None,
    video: Path | None = None,
) -> dict:
    """Play the saved policy of `run_dir`, recording its first episode as the GIF `video` if
    given; the result as a JSON-ready dict (see `describe`)."""

    import envs
    from harness.errors import UserError
    from harness.evaluation import Evaluator, point_seed
    from harness.progress import DelayedProgress
    from harness.run import load_run
    from harness.video import EpisodeRecorder

    request, config, agent, checkpoint = load_run(run_dir, device)
    try:
        history = checkpoint["progress"]["history"]
        last_point = checkpoint["progress"]["next_point"] - 1
        if seed is None:
            if not history:
                raise UserError(
                    f"{run_dir} has not been evaluated yet, so there is no evaluation to repeat; give --seed."
                )
            seed = point_seed(request.seed, last_point)
        episodes = episodes or config.eval_episodes
        evaluator = Evaluator(request.task, episodes, request.seed, config.env_backend)
        try:
            recorder = EpisodeRecorder(evaluator.env) if video is not None else None
            agent.begin_evaluation()
            act = lambda obs: agent.act(obs, deterministic=deterministic)  # noqa: E731
            text = f"evaluating {Path(run_dir).name}: {{task.completed:,.0f}}/{{task.total:,.0f}} episodes"
            with DelayedProgress(text, total=episodes) as progress:
                returns = evaluator.episode_returns(act, seed, recorder, progress.advance)
            if recorder is not None:
                video.parent.mkdir(parents=True, exist_ok=True)  # not before: a refused task leaves none
                recorder.save(video)
        finally:
            evaluator.close()
        counted_steps = agent.counted_steps
        # eval_noise "sample": noise drawn from a generator seeded by (run seed, counted steps).
        seeded_noise = deterministic and agent.evaluation_draws_noise
    finally:
        agent.close()
    try:
        score = float(envs.normalised_score(request.task, returns.mean()))
    except UserError:  # gym ids and lqr declare no range: returns only
        score = math.nan
    return {
        "run": str(run_dir),
        "algo": request.algo,
        "task": request.task,
        "run_seed": request.seed,
        "counted_steps": counted_steps,
        "reset_seed": seed,
        "deterministic": deterministic,
        "seeded_noise": seeded_noise,
        "returns": returns.tolist(),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "normalised_score": None if math.isnan(score) else score,
        "last_evaluation": list(history[-1]) if history else None,  # (counted steps, mean, std)
        "video": None if video is None else str(video),
    }


def describe(result: dict) -> str:
    """One line for the terminal: what was evaluated, the returns, and the run's own last evaluation."""

    import numpy as np

    returns = np.asarray(result["returns"])
    actions = "deterministic" if result["deterministic"] else "stochastic"
    if result["seeded_noise"]:
        actions = "seeded-noise"
    line = (
        f"{result['run']}: {result['algo']} {result['task']} s{result['run_seed']} @ "
        f"{result['counted_steps']:,} steps, {len(returns)} {actions} episodes (reset seed "
        f"{result['reset_seed']}): return {result['mean']:.2f} +- {result['std']:.2f} "
        f"(min {returns.min():.2f}, max {returns.max():.2f})"
    )
    if result["normalised_score"] is not None:
        line += f", normalised score {result['normalised_score']:.3f}"
    if result["last_evaluation"] is not None:
        step, mean, _ = result["last_evaluation"]
        line += f"; the run's last evaluation: {mean:.2f} at {step:,} steps"
        if step != result["counted_steps"]:  # a checkpoint between evaluation points (--checkpoint-every)
            line += ", of an earlier policy than this checkpoint's"
    if result["video"] is not None:
        line += f"; video of its first episode: {result['video']}"
    return line
