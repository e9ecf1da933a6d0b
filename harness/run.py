"""Running one (algorithm, task, seed) to its budget: evaluation, MLflow, checkpoints and resume.

`execute(request)` starts a run and `resume(out_dir)` continues one from its checkpoint; both
return a `RunResult`. This module is the only place that orders the pieces: the agent
trains, `harness.evaluation` scores it, `harness.tracking` records it and
`harness.checkpoint` saves it.

Checkpoints hold the agent's complete state (weights, optimiser, normaliser, env snapshots,
random generators) plus the run's own progress, so a resumed run continues bit-identically
on the same machine: its evaluation history equals that of an uninterrupted run.

A non-finite loss or parameter stops the run: the MLflow run is marked FAILED with a
`status_reason` tag, the last good checkpoint stays on disk, and the result has status
FAILED and a NaN score. An exception from `on_evaluation` (a study worker's, when its unit was
taken over) or Ctrl-C ends the MLflow run as KILLED, keeps the checkpoint and propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import algorithms
import envs
from algorithms.config import as_dict, resolve
from harness.atomic import write_atomically
from harness.checkpoint import (
    LOCK_NAME,
    checkpoint_path,
    hold_run_directory,
    load_checkpoint,
    require_checkpoint,
    save_checkpoint,
)
from harness.errors import UserError, describe
from harness.evaluation import Evaluator, evaluation_points
from harness.limits import MAX_EPISODES, MAX_EVAL_POINTS
from harness.progress import LogHeartbeat, PhaseSpinner, compact_count, count
from harness.signals import caused_by_interrupt, interrupts_unwrapped, raise_if_interrupted
from harness.tracking import (
    STEP_METRIC,
    RunTracker,
    check_run_continuable,
    git_commit,
    machine_changes,
    machine_tags,
    resolve_tracking_uri,
    to_toml,
)

EvaluationCallback = Callable[[int, float], None]
CONFIG_NAME = "config.toml"  # the run's resolved config, in its directory and its MLflow artifacts
OUT_DIR_TAG = "gorl.out_dir"  # the run directory, in the MLflow run's tags
# Written into the run directory when its training diverges (its reason): the checkpoint is the last
# good one, so without it `report --runs` could not tell the run from one stopped on the way.
DIVERGED_NAME = "diverged.txt"


@dataclass(frozen=True)
class RunRequest:
    """Everything that defines a run; stored in its checkpoint so `resume` needs only the directory."""

    algo: str
    task: str
    seed: int = 0  # weights, actions and minibatch order draw from it; a study derives its units' seeds
    steps: int = 1_000_000  # a CPU-scale budget: 1 to 3 minutes per run on 2 cores (docs/performance.md)
    preset: str = "cpu"  # the machine a run starts on by default: a laptop or CI runner, no GPU
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # the device every machine has; `--device cuda` where there is a GPU
    out_dir: Path | str | None = None  # default runs/<algo>-<task>-s<seed>-<timestamp>
    tracking_uri: str | None = None  # default MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db
    experiment: str | None = None  # default "gorl-bench"
    parent_run_id: str | None = None  # nest the MLflow run under a study's run
    run_name: str | None = None  # of the MLflow run; default: the run directory's name
    tags: Mapping[str, str] = field(default_factory=dict)
    checkpoint_every: int | None = None  # counted env steps; default: at every evaluation point


@dataclass(frozen=True)
class RunResult:
    mlflow_run_id: str
    final_score: float  # mean return at the budget's last evaluation point; NaN if the run failed
    eval_history: list[tuple[int, float, float]]  # (counted env steps, mean return, std)
    counted_steps: int
    total_steps: int
    out_dir: Path
    status: str  # "FINISHED" or "FAILED"


@dataclass
class _RunPosition:
    """The run's own position, saved with the agent."""

    history: list[tuple[int, float, float]] = field(default_factory=list)
    next_point: int = 0  # index into the evaluation points of the next one to run
    next_checkpoint: int = 0  # counted steps at which the next periodic checkpoint is due


@interrupts_unwrapped()
def execute(
    request: RunRequest, *, on_evaluation: EvaluationCallback | None = None, progress: bool = True
) -> RunResult:
    """Run `request` from scratch. `on_evaluation(counted_steps, mean_return)` follows every evaluation."""

    task, spec, config, device = check_request(request)
    if request.out_dir is None:
        out_dir, created = create_default_out_dir(dataclasses.replace(request, task=task)).resolve(), True
    else:
        out_dir = Path(request.out_dir).resolve()
        created = not out_dir.exists()
    lock_file = out_dir / LOCK_NAME
    lock_was_there = lock_file.exists()
    try:
        with hold_run_directory(out_dir):
            try:
                if checkpoint_path(out_dir).exists():
                    raise UserError(
                        f"{str(out_dir)!r} already holds a run's checkpoint; continue it with --resume "
                        f"{out_dir}, or choose another --out directory."
                    )
                _check_foreign_config(out_dir / CONFIG_NAME)
                # After the directory: a refused --out leaves no store behind, a refused store no directory.
                tracking_uri = resolve_tracking_uri(request.tracking_uri)
                request = dataclasses.replace(request, task=task, out_dir=out_dir, tracking_uri=tracking_uri)
                with PhaseSpinner(f"{request.algo} {task} s{request.seed}", progress) as starting:
                    return _start(request, spec, config, device, on_evaluation, starting)
            except UserError:
                # A refused directory is left as it was found. Removed while still held: a process
                # waiting on this lock file then sees it gone and locks the new one.
                if not lock_was_there:
                    lock_file.unlink(missing_ok=True)
                raise
    except UserError:
        if created:
            remove_if_unused(out_dir)
        raise


def check_request(request: RunRequest) -> tuple[str, algorithms.registry.AlgorithmSpec, Any, torch.device]:
    """The canonical task, algorithm, resolved config and device of `request`; a UserError for
    anything that would stop the run before it trains (settings, budget, memory, device)."""

    _check_numbers(request)
    # Undecodable bytes on the command line: MLflow cannot store them (its error blamed the store).
    _check_utf8(request.experiment, "--experiment")
    if request.out_dir is not None:  # tagged on the MLflow run
        _check_utf8(str(Path(request.out_dir).absolute()), "--out")
    task = envs.canonical_task(request.task)
    spec = algorithms.get(request.algo)
    config = resolve(spec, request.preset, task, dict(request.overrides))
    check_run(config, task, request.steps)
    return task, spec, config, resolve_device(request.device)


def _check_utf8(text: str | None, option: str) -> None:
    try:
        (text or "").encode()
    except UnicodeEncodeError:
        raise UserError(
            f"{option} {text!r} is not valid text (UTF-8), which MLflow records; rename it."
        ) from None


def _check_numbers(request: RunRequest) -> None:
    from harness.limits import check_steps_and_seed

    check_steps_and_seed(request.steps, request.seed, "--steps", "--seed")
    if request.checkpoint_every is not None and request.checkpoint_every < 1:
        raise UserError(f"--checkpoint-every must be positive, got {request.checkpoint_every}.")


def _check_foreign_config(path: Path) -> None:
    """Refuse to replace a `config.toml` that no run wrote (one of a run that failed before its
    first checkpoint is replaced: a study reruns its failed units in their directories)."""

    if not path.exists():
        return
    if not path.is_file():  # reading a pipe would wait for ever
        raise UserError(f"{path} exists and is not a regular file; choose another --out directory.")
    if not _written_by_a_run(path):
        raise UserError(
            f"{path} exists and is not a run's config, which a run writes there; choose another --out "
            "directory (a new or empty one)."
        )


def _written_by_a_run(path: Path) -> bool:
    """Whether the regular file `path` (or none, since removed) is a `config.toml` a run wrote."""

    try:
        return {"run", "config"} <= tomllib.loads(path.read_text()).keys()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def _check_started(out_dir: Path) -> None:
    """A run stopped while it started (after writing its config, before its first checkpoint) has
    nothing to resume: say how to start it again, with the settings its directory holds."""

    config = out_dir / CONFIG_NAME
    if checkpoint_path(out_dir).exists() or not config.is_file() or not _written_by_a_run(config):
        return
    raise UserError(
        f"{str(out_dir)!r} holds no run checkpoint: its run was stopped while it started, before its first "
        f"checkpoint, so nothing was trained. Start it again with the same settings: gorl-bench run "
        f"--config {config} --out {out_dir} (and the --tracking-uri it was given, if any)."
    )


def remove_if_unused(out_dir: Path) -> None:
    """Remove a run directory this process created and wrote nothing into but its lock file."""

    with contextlib.suppress(OSError):
        if {path.name for path in out_dir.iterdir()} <= {LOCK_NAME}:
            (out_dir / LOCK_NAME).unlink(missing_ok=True)
            out_dir.rmdir()


def _start(
    request: RunRequest,
    spec: algorithms.registry.AlgorithmSpec,
    config: Any,
    device: torch.device,
    on_evaluation: EvaluationCallback | None,
    starting: PhaseSpinner,
) -> RunResult:
    """Open the MLflow run, build the agent and train it (in its locked run directory)."""

    task, tracking_uri = request.task, str(request.tracking_uri)
    commit = git_commit()
    tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,  # shown by the MLflow UI
        "algorithm": request.algo,
        "task": task,
        "seed": str(request.seed),
        "preset": request.preset,
        OUT_DIR_TAG: str(request.out_dir),
        **machine_tags(request.device),
        **request.tags,
    }
    # Named after its run directory by default, so the MLflow UI and the directory name each other.
    run_name = request.run_name or Path(request.out_dir).name
    starting.say("opening the MLflow store")
    tracker = RunTracker.start(tracking_uri, request.experiment, run_name, request.parent_run_id, tags)
    try:
        tracker.close_stopped_starts(OUT_DIR_TAG)
        tracker.log_params({**_run_info(request), **as_dict(config)})
        config_toml = _config_toml(request, config)
        tracker.log_text(config_toml, CONFIG_NAME)
        # Also next to the checkpoint, where a reader of the run directory looks for it first.
        (Path(request.out_dir) / CONFIG_NAME).write_text(config_toml)
        starting.say("building the agent and its envs")
        agent = spec.agent_cls(config, task, request.seed, request.steps, device)
    except BaseException as error:
        stopped = caused_by_interrupt(error)
        tracker.end("KILLED" if stopped else "FAILED", describe(error))
        if isinstance(error, OSError):  # e.g. an MLflow artifact directory it may not write
            raise UserError(f"cannot start the run: {error}") from None
        raise
    return _train(request, config, agent, _RunPosition(), tracker, on_evaluation, starting)


@interrupts_unwrapped()
def resume(
    out_dir: Path | str,
    *,
    tracking_uri: str | None = None,
    device: str | None = None,
    on_evaluation: EvaluationCallback | None = None,
    progress: bool = True,
) -> RunResult:
    """Continue the run saved in `out_dir` from its last checkpoint, in the same MLflow run. A run
    that had finished (its budget trained, its MLflow run FINISHED) is returned as it is.

    `tracking_uri`: where that run's MLflow store is now, if it moved since the run started.
    `device`: train on another device than the run started on (a study rerun after a device
    failure); the result is then no longer bit-identical to an uninterrupted run.
    """

    _check_started(Path(out_dir))
    require_checkpoint(Path(out_dir))  # before the lock, which would create a missing directory
    with (
        hold_run_directory(Path(out_dir)),
        PhaseSpinner(f"resuming {Path(out_dir).name}", progress) as starting,
    ):
        starting.say("loading the checkpoint and building the agent")
        request, config, agent, state = load_run(out_dir, device)
        position, run_id = _RunPosition(**state["progress"]), state["mlflow_run_id"]
        try:
            _check_not_a_copy(Path(out_dir), state)
            if tracking_uri is not None:
                moved_to = resolve_tracking_uri(tracking_uri, create=False)
                request = dataclasses.replace(request, tracking_uri=moved_to)
            starting.say("opening the MLflow store")
            mlflow_run = check_run_continuable(request.tracking_uri, run_id)
            finished = agent.counted_steps >= request.steps and mlflow_run.info.status == "FINISHED"
            if not finished:  # before the MLflow run is reopened: a refusal leaves it as it was
                _check_settings_unchanged(
                    state.get("config"), as_dict(config), checkpoint_path(Path(out_dir))
                )
                _restore_config_file(
                    Path(out_dir), request, config, state["request"].get("device", request.device)
                )
            # A machine or software other than the start's: recorded as the MLflow tags resumed.*.
            changed = {} if finished else machine_changes(mlflow_run.data.tags, request.device)
            resumed_tags = {f"resumed.{key}": value for key, value in changed.items()}
            # Reopening a finished run would only move its end time and upload its checkpoint again.
            tracker = None if finished else RunTracker.reopen(request.tracking_uri, mlflow_run, resumed_tags)
            if not finished:  # trained again from its last good checkpoint
                (Path(out_dir) / DIVERGED_NAME).unlink(missing_ok=True)
        except BaseException:
            agent.close()
            raise
        if tracker is None:
            agent.close()
            starting.done()
            print(f"the run in {out_dir} had already finished; nothing was trained", file=sys.stderr)
            return _result(request, agent, position, run_id, "FINISHED")
        if changed:
            starting.done()
            differences = "; ".join(
                f"{key} {mlflow_run.data.tags.get(key, 'none')!r} -> {value!r}"
                for key, value in changed.items()
            )
            print(
                f"resuming on another machine or software than the run started on ({differences}): from "
                "here its numbers may differ from an uninterrupted run's (MLflow tags resumed.*)",
                file=sys.stderr,
            )
        return _train(request, config, agent, position, tracker, on_evaluation, starting)


def _run_info(request: RunRequest) -> dict[str, Any]:
    return {"algo": request.algo, "task": request.task, "seed": request.seed, "steps": request.steps,
            "preset": request.preset, "device": request.device}  # fmt: skip


def _config_toml(request: RunRequest, config: Any) -> str:
    return to_toml({"run": _run_info(request), "config": as_dict(config)})


def _restore_config_file(out_dir: Path, request: RunRequest, config: Any, saved_device: str) -> None:
    """Write the run directory's config file again from the checkpoint, which a resume follows: an
    edited file would otherwise describe settings the run does not use. The device the checkpoint
    recorded (`saved_device`) may differ from the resume's (`resume --device`) without a word."""

    path, written = out_dir / CONFIG_NAME, _config_toml(request, config)
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a file; remove it, and the resume writes the run's config there.")
    # Compared as bytes: an edit may have left text that is not UTF-8.
    as_started = _config_toml(dataclasses.replace(request, device=saved_device), config)
    if path.is_file() and path.read_bytes() not in (written.encode(), as_started.encode()):
        print(
            f"{path} is not what the run was started with: the run continues with its checkpoint's "
            "settings, written there again (a run's settings cannot change; start a new run instead)",
            file=sys.stderr,
        )
    try:
        path.write_text(written)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}.") from None


def _check_not_a_copy(out_dir: Path, state: dict[str, Any]) -> None:
    """Refuse to resume a copy of a run directory while the original still holds the run: both
    would write into one MLflow run (a moved directory, whose original is gone, resumes)."""

    if state["request"].get("out_dir") is None:
        return
    saved_in = Path(state["request"]["out_dir"])  # where the checkpoint was last written
    if saved_in == out_dir.resolve() or not checkpoint_path(saved_in).is_file():
        return
    with contextlib.suppress(OSError):
        if saved_in.samefile(out_dir):  # the same directory by another path (a bind mount, say)
            return
    try:
        original_run = load_checkpoint(saved_in)["mlflow_run_id"]
    except (UserError, KeyError, TypeError):
        return  # not a run the copy could collide with
    if original_run == state["mlflow_run_id"]:
        raise UserError(
            f"{out_dir} is a copy of the run directory {saved_in}, which still holds the same run "
            f"(MLflow run {original_run}): resuming both would mix their training in one MLflow run. "
            f"Resume {saved_in}, or move the copy in its place."
        )


def saved_run(out_dir: Path | str) -> tuple[RunRequest, Any, dict[str, Any]]:
    """The request and config of the run in `out_dir` and its checkpoint, each checked as a resume
    checks them, without building the agent (what reading its evaluations needs)."""

    state, path = load_checkpoint(Path(out_dir)), checkpoint_path(Path(out_dir))
    try:
        # The directory may have moved since the run started.
        request = dataclasses.replace(RunRequest(**state["request"]), out_dir=Path(out_dir).resolve())
    except TypeError as error:
        raise UserError(f"{path} holds no valid run request ({error}).") from None
    _check_request_types(request, path)
    try:  # as `run` checked them when the run started: a hand-edited checkpoint may not pass
        _check_numbers(request)
    except UserError as error:
        raise UserError(f"{path} holds a damaged run request: {error}") from None
    _check_position(state["progress"], path)
    config = resolve(algorithms.get(request.algo), request.preset, request.task, dict(request.overrides))
    if not 1 <= config.eval_points <= MAX_EVAL_POINTS:  # before a list of that many points is built
        raise UserError(f"{path} holds a damaged run request: eval_points {config.eval_points:,}.")
    _check_position_values(state, len(evaluation_points(request.steps, config.eval_points)), path)
    return request, config, state


def load_run(
    out_dir: Path | str, device: str | None = None
) -> tuple[RunRequest, Any, algorithms.base.Agent, dict[str, Any]]:
    """The request, config and agent (in its saved state, on `device` if given) of the run in
    `out_dir`, and the checkpoint."""

    request, config, state = saved_run(out_dir)
    path = checkpoint_path(Path(out_dir))
    if device is not None:
        request = dataclasses.replace(request, device=device)
    spec = algorithms.get(request.algo)
    device = resolve_device(request.device)
    try:
        agent = spec.agent_cls(config, request.task, request.seed, request.steps, device)
    except ValueError as error:  # a schedule, say, that this version refuses
        reason = str(error).rstrip(".")
        raise UserError(f"{path} holds a run this version cannot continue: {reason}.") from None
    try:
        agent.load_state_dict(state["agent"])
        steps = (agent.counted_steps, agent.total_steps)
        if not all(type(n) is int for n in steps) or not 0 <= steps[0] <= steps[1]:
            raise ValueError(f"counted and total env steps {steps[0]!r}, {steps[1]!r}")
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        agent.close()
        raise UserError(
            f"{path} does not fit a {request.algo} agent ({type(error).__name__}: "
            f"{error}); it is damaged or was written by another version."
        ) from None
    where = non_finite_entry(state["agent"])
    if where is not None:
        agent.close()
        raise UserError(
            f"{path} is damaged: its agent state holds NaN or inf ({where}), which no run saves (a run "
            "that diverges stops before its next checkpoint)."
        )
    return request, config, agent, state


def non_finite_entry(state: Any, where: str = "agent") -> str | None:
    """The first entry of a nested state (dicts, lists, tensors, arrays) holding NaN or inf, or None."""

    if isinstance(state, Mapping):
        entries = state.items()
    elif isinstance(state, list | tuple):
        entries = enumerate(state)
    elif isinstance(state, torch.Tensor) and state.is_floating_point():
        return None if bool(torch.isfinite(state).all()) else where
    elif isinstance(state, np.ndarray) and np.issubdtype(state.dtype, np.floating):
        return None if bool(np.isfinite(state).all()) else where
    else:
        return None
    for key, value in entries:
        found = non_finite_entry(value, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def changed_settings(started_with: Any, now: Mapping[str, Any]) -> list[str]:
    """The settings ("key old -> new") in which a run's resolved config `now` differs from the one
    its checkpoint holds (`started_with`; None in checkpoints of earlier versions: nothing to
    compare; ValueError if it is no mapping). Keys only one side has, a field that a version
    added or removed, are not compared: whether its default keeps the old behaviour is that
    version's business."""

    if started_with is None:
        return []
    if not isinstance(started_with, Mapping):  # a hand-edited checkpoint
        raise ValueError("ill-formed settings")
    return [
        f"{key} {started_with[key]!r} -> {now[key]!r}"
        for key in sorted(started_with.keys() & now.keys())
        if started_with[key] != now[key]
    ]


def resolved_settings(request: RunRequest) -> dict[str, Any]:
    """The config `request` resolves to in this version, as plain values (what checkpoints hold)."""

    return as_dict(
        resolve(algorithms.get(request.algo), request.preset, request.task, dict(request.overrides))
    )


def _check_settings_unchanged(started_with: Any, now: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a run whose request (preset and overrides) resolves to other settings than
    when it started: a preset or default changed since (a `git pull`), and the resume would
    silently train the rest of the run with the new values. (Evaluating it is not refused.)"""

    try:
        changed = changed_settings(started_with, now)
    except ValueError as error:
        raise UserError(f"{path} holds {error}; it is damaged.") from None
    if changed:
        raise UserError(
            f"{path}: the run's preset and overrides resolve to other settings in this version than when "
            f"it started ({'; '.join(changed)}). Resume it with the version it started with (its MLflow "
            "run's git_commit tag), or start a new run."
        )


def _check_request_types(request: RunRequest, path: Path) -> None:
    """Refuse a saved request whose values have the wrong types (a hand-edited checkpoint), which
    would otherwise fail deep inside the run with a TypeError."""

    types = {"algo": str, "task": str, "seed": int, "steps": int, "preset": str, "overrides": Mapping,
             "device": str, "checkpoint_every": (int, type(None)), "tracking_uri": str}  # fmt: skip
    wrong = [
        name
        for name, kind in types.items()
        if not isinstance(value := getattr(request, name), kind) or isinstance(value, bool)
    ]
    if wrong:
        shown = ", ".join(f"{name} = {getattr(request, name)!r}" for name in wrong)
        raise UserError(f"{path} holds a run request with values of the wrong type ({shown}); it is damaged.")


def _check_position(saved: Any, path: Path) -> None:
    """Refuse a saved run position whose fields are not `_RunPosition`'s, before a resume marks the
    MLflow run running again. A missing field would otherwise restart from its default (a lost
    evaluation history), an unknown one fail only once the run is reopened."""

    expected = {item.name for item in dataclasses.fields(_RunPosition)}
    if not isinstance(saved, Mapping):
        raise UserError(f"{path} holds no valid run position; start a new run with another --out directory.")
    unexpected = sorted(str(name) for name in saved if name not in expected)
    missing = sorted(expected.difference(saved))
    fields = [
        f"{kind} fields: {', '.join(names)}"
        for kind, names in (("unexpected", unexpected), ("missing", missing))
        if names
    ]
    if fields:
        raise UserError(
            f"{path} was written by another version of gorl-bench ({'; '.join(fields)}); start a new run "
            "with another --out directory."
        )


def _check_position_values(state: dict[str, Any], points: int, path: Path) -> None:
    """Refuse saved position values that a resume or an evaluation would trip over (a hand-edited
    checkpoint): each evaluation a (steps, mean, std) triple, the next point one of the run's."""

    saved = state["progress"]
    history, next_point, next_checkpoint = saved["history"], saved["next_point"], saved["next_checkpoint"]
    valid = (
        isinstance(history, list)
        and all(
            isinstance(entry, list | tuple)
            and len(entry) == 3
            and type(entry[0]) is int
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in entry[1:])
            for entry in history
        )
        and type(next_point) is int
        and 0 <= next_point <= points
        and type(next_checkpoint) is int
        and next_checkpoint >= 0
        and isinstance(state.get("mlflow_run_id"), str)
    )
    if not valid:
        raise UserError(f"{path} holds ill-formed evaluations, positions or MLflow run id; it is damaged.")


def _train(
    request: RunRequest,
    config: Any,
    agent: algorithms.base.Agent,
    position: _RunPosition,
    tracker: RunTracker,
    on_evaluation: EvaluationCallback | None,
    starting: PhaseSpinner,
) -> RunResult:
    out_dir = Path(request.out_dir)
    progress = starting.enabled
    points = evaluation_points(request.steps, config.eval_points)
    evaluator: Evaluator | None = None

    def checkpoint() -> Path:
        return _save(request, config, agent, position, tracker.run_id)

    per_update = update_size(config)
    trained = trained_steps(config, request.steps)
    fresh = not checkpoint_path(out_dir).exists()  # not a resume, even of the start's checkpoint
    in_callback = False
    try:  # from here on, every way out ends the MLflow run (a Ctrl-C while the bar loads left it RUNNING)
        if progress and trained != request.steps and fresh:
            print(
                f"note: the run trains whole updates of {per_update:,} env steps: {trained:,} counted env "
                f"steps for --steps {request.steps:,}",
                file=sys.stderr,
            )
        bar = _ProgressBar(request, trained, enabled=progress)
        starting.say("building the evaluation envs")
        evaluator = Evaluator(request.task, config.eval_episodes, request.seed, config.env_backend)
        if fresh:
            # The untrained start: a run stopped before its first evaluation resumes into the same
            # MLflow run (a study's unit then keeps one run) instead of starting a second one. It
            # counts as the first periodic checkpoint too.
            position.next_checkpoint = request.checkpoint_every or 0
            checkpoint()
        starting.done()  # a terminal shows one live display at a time: the bar's, from here on
        with bar:
            bar.update(agent.counted_steps, position.history)
            while agent.counted_steps < request.steps:
                raise_if_interrupted()
                before, start = agent.counted_steps, time.perf_counter()
                bar.note(agent.next_iteration_note())
                metrics = agent.train_iteration()
                elapsed = time.perf_counter() - start
                _check_step_counts(request.algo, agent, before)
                step = agent.counted_steps
                metrics.update({
                    "perf/env_steps_per_s": (step - before) / elapsed,
                    STEP_METRIC: step,
                    "steps/total": agent.total_steps,
                })  # fmt: skip
                evaluation = _evaluate_if_due(agent, evaluator, position, points)
                evaluated = bool(evaluation)
                metrics.update(evaluation)
                tracker.log_metrics(metrics, step)
                due = step >= position.next_checkpoint if request.checkpoint_every else evaluated
                if due or step >= request.steps:
                    if request.checkpoint_every:
                        position.next_checkpoint = step + request.checkpoint_every
                    checkpoint()
                bar.update(step, position.history)
                if evaluated and on_evaluation is not None:
                    in_callback = True
                    on_evaluation(step, position.history[-1][1])
                    in_callback = False
        if not tracker.log_artifact(checkpoint_path(out_dir), "checkpoint"):
            print(
                f"the checkpoint was not attached to MLflow run {tracker.run_id}: its artifact directory "
                f"does not exist (has the store moved?); it stays in {out_dir}",
                file=sys.stderr,
            )
    except BaseException as error:
        if isinstance(error, FloatingPointError) and not in_callback:  # the training diverged
            reason = f"stopped at {agent.counted_steps} counted env steps: {error}"
            tracker.end("FAILED", reason)
            write_atomically(out_dir / DIVERGED_NAME, f"{reason}\n".encode(), ".diverged-")
            print(f"run failed: {error}; the last good checkpoint is kept in {out_dir}", file=sys.stderr)
            return _result(request, agent, position, tracker.run_id, "FAILED")
        stopped = in_callback or caused_by_interrupt(error)
        reason = f"stopped at {agent.counted_steps} counted env steps: {describe(error)}"
        tracker.end("KILLED" if stopped else "FAILED", reason)
        raise
    finally:
        if evaluator is not None:
            evaluator.close()
        agent.close()
    tracker.end("FINISHED")
    return _result(request, agent, position, tracker.run_id, "FINISHED")


def _save(
    request: RunRequest, config: Any, agent: algorithms.base.Agent, position: _RunPosition, run_id: str
) -> Path:
    """Checkpoint the run: everything `resume` needs to continue it bit-identically."""

    return save_checkpoint(
        Path(request.out_dir),
        {
            "request": dataclasses.asdict(request),
            # The settings the request resolved to, which a resume checks it still resolves to.
            "config": as_dict(config),
            "agent": agent.state_dict(),
            "progress": dataclasses.asdict(position),
            "mlflow_run_id": run_id,
        },
    )


def _check_step_counts(algo: str, agent: algorithms.base.Agent, before: int) -> None:
    """Refuse the two slips a new algorithm's `train_iteration` can make with its step counts."""

    step = agent.counted_steps
    if type(step) is not int or type(agent.total_steps) is not int:
        # A numpy integer broke MLflow's step and then every resume of the checkpoint.
        kinds = f"{type(step).__name__} and {type(agent.total_steps).__name__}"
        raise UserError(
            f"{algo}: train_iteration left counted_steps and total_steps as {kinds}; "
            "keep them Python ints (add int(n) of a numpy count)."
        )
    if step <= before:  # the run would never end
        raise UserError(
            f"{algo}: train_iteration took no counted env step (counted_steps stayed "
            f"{before:,}); an agent adds the env steps each iteration spends to counted_steps."
        )


def _result(
    request: RunRequest, agent: algorithms.base.Agent, position: _RunPosition, run_id: str, status: str
) -> RunResult:
    return RunResult(
        mlflow_run_id=run_id,
        # A failed run's last evaluation scores part of the budget: no final score to compare.
        final_score=position.history[-1][1] if status == "FINISHED" else math.nan,
        eval_history=list(position.history),
        counted_steps=agent.counted_steps,
        total_steps=agent.total_steps,
        out_dir=Path(request.out_dir),
        status=status,
    )


def _evaluate_if_due(
    agent: algorithms.base.Agent, evaluator: Evaluator, position: _RunPosition, points: list[int]
) -> dict[str, float]:
    """Evaluate the policy (its mean action, or its noise with `eval_noise = "sample"`) if the
    agent's counted steps reached the next evaluation point (an iteration that stepped over
    several points evaluates once, at the last of them); record it in `position` and return its
    metrics, or nothing when no evaluation was due."""

    step = agent.counted_steps
    if step < points[position.next_point]:
        return {}
    while position.next_point < len(points) and step >= points[position.next_point]:
        position.next_point += 1
    agent.begin_evaluation()
    # The point's index seeds the evaluation episodes' resets: the same at every resume.
    mean, std = evaluator.evaluate(lambda obs: agent.act(obs, deterministic=True), position.next_point - 1)
    position.history.append((step, mean, std))
    agent.observe_evaluation(mean)
    return {"eval/return_mean": mean, "eval/return_std": std}


def update_size(config: Any) -> int:
    """Env steps of one policy update: the on-policy configs' `batch_size`, 1 for a config without one."""

    return int(getattr(config, "batch_size", 1))


def trained_steps(config: Any, steps: int) -> int:
    """The counted env steps a run of budget `steps` trains: training stops after the update that
    reaches the budget, so a budget that is no whole number of updates trains up to the next one."""

    per_update = update_size(config)
    return -(-steps // per_update) * per_update


def check_run(config: Any, task: str, steps: int, steps_name: str = "--steps") -> None:
    """Refuse, before anything is built or tracked, a budget below one policy update, one that does
    not fit the config's schedule (configs with a `check_budget` method), an env backend the task
    lacks, a gym task whose optional dependency is not installed, or a task the config cannot run
    (a `check_task` method: on-policy configs refuse a rollout larger than this machine's memory).

    The env steps of one update are `update_size(config)`. `steps_name` is what the user wrote
    the budget as: `--steps` on the command line, `steps` in a study spec.
    """

    check_setup(config, task)  # first: asking for a larger budget would not lift these
    # The schedule before the single update: a budget too small for GoRL's four stages is told the
    # budget that gives each one an update, not one update's, which it would refuse next.
    check_budget = getattr(config, "check_budget", None)
    if check_budget is not None:
        try:
            check_budget(steps)
        except ValueError as error:
            raise UserError(f"{steps_name} {steps}: {error}") from None
    per_update = update_size(config)
    if steps < per_update:
        raise UserError(
            f"{steps_name} {steps:,} is less than one policy update ({per_update:,} env steps); a run "
            f"would train {per_update:,} steps anyway. Give at least {per_update}."
        )
    if config.eval_points > steps:  # more points than env steps: a list of useless points
        raise UserError(
            f"eval_points {config.eval_points} is more than {steps_name} {steps}; give at most that."
        )


def check_setup(config: Any, task: str) -> None:
    """The refusals of `check_run` that no budget lifts."""

    if config.eval_episodes > MAX_EPISODES:
        raise UserError(f"eval_episodes must be at most {MAX_EPISODES:,}, got {config.eval_episodes:,}.")
    if config.eval_points > MAX_EVAL_POINTS:
        raise UserError(f"eval_points must be at most {MAX_EVAL_POINTS:,}, got {config.eval_points:,}.")
    envs.check_backend(task, config.env_backend)  # every config has one (`algorithms.registry`)
    envs.check_installed(task)
    check_task = getattr(config, "check_task", None)
    if check_task is not None:  # after the checks above: it may build one env of the task
        try:
            check_task(task)
        except ValueError as error:
            raise UserError(str(error)) from None


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}. Valid devices: cpu, cuda, cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was requested but CUDA is not available here; use --device cpu.")
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        # cpu:1 would train on the same CPU as cpu: an index there suggests a choice that is not made.
        raise UserError(f"unsupported device {name!r}. Valid devices: cpu, cuda, cuda:N.")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= gpus:
        # Otherwise "invalid device ordinal" from deep inside the first tensor moved there.
        raise UserError(f"device {name!r}: this machine has {count(gpus, 'GPU')}, cuda:0 to cuda:{gpus - 1}.")
    return device


def create_default_out_dir(request: RunRequest) -> Path:
    """Create and return runs/<algo>-<task>-s<seed>-<time>, where a run without --out writes;
    with -2, -3, ... appended when that exists (runs started in the same second, with other
    --set values say). Created here, not merely named, so that of two such runs neither can
    take the other's name."""

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{request.algo}-{request.task}-s{request.seed}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    out_dir, attempt = base, 1
    while True:
        try:
            out_dir.mkdir()  # atomic: of two processes, one creates it and the other moves on
            return out_dir
        except FileExistsError:
            attempt += 1
            out_dir = base.with_name(f"{base.name}-{attempt}")


ETA_WINDOW_S = 7 * 24 * 3600.0  # the progress bar's ETA averages the updates of the last week: all of them


class _ProgressBar:
    """A rich progress bar (env steps, steps/s, last evaluation, ETA), or nothing when disabled.

    When stderr is not a terminal (`nohup`, a batch job's log), a bar would show nothing until the
    run ends: then a line is printed at each evaluation, and between them after the first update
    that ends PLAIN_INTERVAL_S or more after the last line (a long run's evaluations can be hours
    apart), or during an iteration that runs longer (`LogHeartbeat`).
    """

    def __init__(self, request: RunRequest, total: int, enabled: bool) -> None:
        self.progress: Any = None
        self.origin: tuple[float, int] | None = None  # (time, step) of the first update
        self.label = f"{request.algo} {request.task} s{request.seed}"
        self.total = total
        self.plain = enabled and not sys.stderr.isatty()  # lines instead of a bar
        self.printed = 0  # evaluations printed as lines
        self.iteration_note = ""
        self.log = LogHeartbeat(self._still_working) if self.plain else None
        if enabled and not self.plain:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            # Short columns, so that an 80-column terminal shows every number whole (rich cuts
            # text columns that do not fit): steps as `336k/1.00M`, and a refit's note in place
            # of the steps/s it has none of.
            self.progress = Progress(
                TextColumn(self.label),
                BarColumn(),
                TextColumn("{task.fields[steps]}"),
                TextColumn("{task.fields[activity]}"),
                TextColumn("eval {task.fields[last_eval]}"),
                TimeRemainingColumn(compact=True),
                console=Console(stderr=True),
                # The ETA from the updates of the whole run: rich's default, those of the last 30 s,
                # keeps one update of a run whose updates are longer (a `paper` preset's on a CPU,
                # minutes each), which gives no ETA at all.
                speed_estimate_period=ETA_WINDOW_S,
            )
            self.task_id = self.progress.add_task(
                "run", total=self.total, steps=self._steps(0), activity="- steps/s", last_eval="-"
            )
            self.speed, self.activity_note = "-", ""

    def __enter__(self) -> _ProgressBar:
        if self.progress is not None:
            self.progress.start()
        if self.log is not None:
            self.log.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.log is not None:
            self.log.stop()

    def _still_working(self, last_line: str | None) -> str | None:
        """The log's line during a long iteration: none before the first update's."""

        if last_line is None:
            return None
        return f"{last_line} (still working: {self.iteration_note or 'an update or evaluation'})"

    def _steps(self, step: int) -> str:
        return f"{compact_count(step)}/{compact_count(self.total)}"

    def _activity(self) -> str:
        return self.activity_note or f"{self.speed} steps/s"

    def note(self, text: str) -> None:
        """Show what the coming iteration does when it is more than an update ("" clears it)."""

        if self.progress is not None:
            self.activity_note = text
            self.progress.update(self.task_id, activity=self._activity())
        self.iteration_note = text

    def update(self, step: int, history: list[tuple[int, float, float]]) -> None:
        if self.progress is None and not self.plain:
            return
        if self.origin is None:
            self.origin = (time.perf_counter(), step)
        elapsed, done = time.perf_counter() - self.origin[0], step - self.origin[1]
        speed = f"{done / elapsed:,.0f}" if done > 0 else "-"
        last = f"{history[-1][1]:.1f}" if history else "-"
        if self.progress is not None:
            self.speed, self.activity_note = speed, ""  # an update ends the iteration a note was for
            self.progress.update(
                self.task_id,
                completed=step,
                steps=self._steps(step),
                activity=self._activity(),
                last_eval=last,
            )
            return
        self.iteration_note = ""
        line = f"{self.label}: {step:,}/{self.total:,} env steps, {speed} steps/s, eval {last}"
        if self.log.show(line, news=len(history) > self.printed):
            self.printed = len(history)
