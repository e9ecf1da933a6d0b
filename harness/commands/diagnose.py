"""`gorl-bench diagnose multimodality RUN [RUN ...]`: the paper's Figure 6 for trained runs.

At one fixed state, sample many actions from each run's stochastic policy, project them on
their first principal component and draw the Gaussian KDE (bandwidth factor 0.8, the paper's;
`--bandwidth` sets another: `algorithms.multimodality` says what each can separate), one panel
per run, so that a GoRL run can be set beside a Gaussian-PPO one. The state is reached by
running the first run's evaluation policy for `--state-steps` steps from a seeded reset:
a state in the middle of the behaviour, not an initial one. Sarle's bimodality coefficient
and the KDE's peak count (`algorithms.multimodality`) go to the terminal and, with the
figure, to each run's MLflow run (`--tracking-uri` if the store has moved since the run);
the figure is kept and the statistics printed even when that logging fails.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.commands.arguments import (
    add_command,
    check_distinct_runs,
    check_out_dir,
    check_replaceable,
    directory,
    float_between,
    int_between,
    non_empty,
    non_negative_int,
)
from harness.progress import count

FIGURE_NAME = "multimodality.png"  # and its .pdf beside it
DEFAULT_SAMPLES = 10_000  # paper Fig. 6: 10,000 actions at one state
# 4: a distribution to analyse. A million: the KDE of a 1-D projection no longer changes, and
# the batch of actions (the decoder's activations for GoRL) grows with it.
SAMPLES_RANGE = (4, 1_000_000)
# Chosen here: at 0.05 the KDE of 10,000 samples already shows several noise peaks, and above 10
# it is one bump whatever the samples.
BANDWIDTH_RANGE = (0.05, 10.0)
# Chosen here, because 200 steps leave the reset pose on every DMC task; a task with shorter
# episodes (toy-bimodal: 16) takes its episode's last step instead.
DEFAULT_STATE_STEPS = 200


@dataclass
class Diagnosis:
    """What `diagnose_multimodality` wrote and found."""

    figure: Path
    reports: list[tuple[str, object]]  # (run label, MultimodalityReport)
    unlogged: list[str] = field(default_factory=list)  # "RUN: why" for each run MLflow could not take
    notes: list[str] = field(default_factory=list)  # a figure not attached to an MLflow run, and why


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "diagnose", "diagnostics of trained runs (multimodality: paper Fig. 6)")
    kinds = parser.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    multimodality = add_command(
        kinds,
        "multimodality",
        "KDE of sampled actions at one state, projected on PC1, with a bimodality statistic",
    )
    multimodality.add_argument(
        "runs", nargs="+", type=directory, metavar="RUN", help="run directories (same task)"
    )
    multimodality.add_argument(
        "--samples",
        type=int_between(*SAMPLES_RANGE),
        default=DEFAULT_SAMPLES,
        help=f"actions per run, {SAMPLES_RANGE[0]:,} to {SAMPLES_RANGE[1]:,} (default {DEFAULT_SAMPLES:,})",
    )
    multimodality.add_argument(
        "--state-steps",
        type=non_negative_int,
        help="policy steps to the fixed state, within one episode (default 200, or the episode's last)",
    )
    multimodality.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the state's reset (default 0)"
    )
    multimodality.add_argument(
        "--bandwidth",
        type=float_between(*BANDWIDTH_RANGE),
        help=f"KDE kernel width over the sample's std, {BANDWIDTH_RANGE[0]} to {BANDWIDTH_RANGE[1]:g} "
        "(default: the paper's factor, 0.8; Scott's rule for 10,000 samples, 0.16, separates closer modes)",
    )
    multimodality.add_argument(
        "--out", type=directory, help="figure directory (default: the first run's diagnostics/)"
    )
    multimodality.add_argument("--device", help="torch device to load the runs on (default: each run's own)")
    multimodality.add_argument(
        "--tracking-uri",
        type=non_empty,
        help="MLflow store of the runs, if it moved since they ran (default: the one each run recorded)",
    )
    multimodality.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from harness.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri, create=False) if args.tracking_uri else None
    diagnosis = diagnose_multimodality(
        args.runs,
        args.samples,
        args.state_steps,
        args.seed,
        args.out,
        tracking_uri,
        args.device,
        bandwidth=args.bandwidth,
    )
    bandwidth = diagnosis.reports[0][1].bw_factor
    for run, report in diagnosis.reports:
        verdict = "bimodal" if report.bimodal else "not bimodal"
        statistics = f"{count(report.kde_peaks, 'KDE peak')}, PC1 explains {report.explained_variance:.0%}"
        print(
            f"{run}: bimodality coefficient {report.bimodality_coefficient:.3f}, {statistics}: {verdict} "
            "(bimodal: a coefficient above 5/9 = 0.556 and at least 2 peaks of the KDE, whose kernel "
            f"width is {bandwidth:g} x the sample's std)"
        )
    print(f"figure: {diagnosis.figure}")
    for note in diagnosis.notes:
        print(f"note: {note}", file=sys.stderr)
    if diagnosis.unlogged:
        raise UserError(
            f"the figure was written to {diagnosis.figure} and the statistics are above, but logging them "
            f"to MLflow failed: {'; '.join(reason.rstrip('.') for reason in diagnosis.unlogged)}."
        )
    return 0


def diagnose_multimodality(
    run_dirs: list[Path],
    samples: int,
    state_steps: int | None,
    seed: int,
    out: Path | None,
    tracking_uri: str | None = None,
    device: str | None = None,
    *,
    bandwidth: float | None = None,
) -> Diagnosis:
    """Analyse every run at one state, draw the figure into `out` and log the results to each
    run's MLflow run (in `tracking_uri` if given, else in the store the run recorded).
    `state_steps` None: `DEFAULT_STATE_STEPS`, or the last step of a shorter episode. `device`:
    where to load the runs (a GPU-trained run on a machine without one), else each run's own.
    `bandwidth`: the KDE's kernel width over the sample's std (None: the paper's factor)."""

    from harness.checkpoint import require_checkpoint
    from harness.progress import PhaseSpinner
    from harness.run import load_run

    for run_dir in run_dirs:  # all of them before the first is loaded
        require_checkpoint(run_dir)
    check_distinct_runs(run_dirs)  # its panel would be drawn, and its metrics logged, twice
    out = Path(out) if out is not None else Path(run_dirs[0]) / "diagnostics"
    check_out_dir(out)
    figure_path = out / FIGURE_NAME
    check_replaceable(figure_path, b"\x89PNG", "an earlier figure (a PNG)", "--out")
    check_replaceable(figure_path.with_suffix(".pdf"), b"%PDF", "an earlier figure (a PDF)", "--out")
    # Every loaded agent's envs closed, also on an error; the spinner says which step takes the time.
    with contextlib.ExitStack() as loaded, PhaseSpinner("diagnose", log_lines=True) as phases:
        runs = []
        for number, run_dir in enumerate(run_dirs, 1):
            phases.say(f"loading run {number} of {len(run_dirs)} ({Path(run_dir).name})")
            runs.append(load_run(run_dir, device))
            loaded.callback(runs[-1][2].close)
        labelled = _sample_runs(runs, samples, state_steps, seed, tracking_uri, bandwidth, phases.say)
        labelled = _told_apart(labelled, run_dirs)

        phases.say("drawing the figure")
        out.mkdir(parents=True, exist_ok=True)
        figure = _plot([(label, report) for *_, label, report in labelled], figure_path)
        diagnosis = Diagnosis(figure, [(label, report) for *_, label, report in labelled])
        phases.say("logging to MLflow")
        for request, run_id, step, _, report in labelled:
            _log(
                tracking_uri or request.tracking_uri, run_id, step, report, figure, request.out_dir, diagnosis
            )
    return diagnosis


def _told_apart(labelled: list[tuple[Any, str, int, str, Any]], run_dirs: list[Path]) -> list[tuple]:
    """`labelled` (`_sample_runs`) with each label that several runs share (runs of one algorithm,
    task and seed with other settings: printed and drawn alike) led by its run directory's name."""

    labels = [label for _, _, _, label, _ in labelled]
    return [
        (
            request,
            run_id,
            step,
            f"{Path(run_dir).name}: {label}" if labels.count(label) > 1 else label,
            report,
        )
        for (request, run_id, step, label, report), run_dir in zip(labelled, run_dirs, strict=True)
    ]


def _sample_runs(
    runs: list[tuple],
    samples: int,
    state_steps: int | None,
    seed: int,
    tracking_uri: str | None,
    bandwidth: float | None,
    say: Callable[[str], None],
) -> list[tuple[Any, str, int, str, Any]]:
    """(request, MLflow run id, counted steps, label, MultimodalityReport) of every loaded run, from
    `samples` actions sampled at the fixed state that the first run's policy reaches."""

    import torch

    from algorithms.multimodality import KDE_BANDWIDTH_FACTOR, analyse_actions
    from harness.errors import UserError
    from harness.tracking import check_run_exists

    if tracking_uri is not None:  # a store named on purpose must hold the runs: checked before the work
        for _, _, _, checkpoint in runs:
            check_run_exists(tracking_uri, checkpoint["mlflow_run_id"])
    tasks = {request.task for request, *_ in runs}
    if len(tasks) > 1:
        raise UserError(
            f"the runs are on different tasks ({', '.join(sorted(tasks))}); give runs of one task."
        )
    first_request, _, first_agent, _ = runs[0]
    state_steps = fixed_state_steps(first_request.task, state_steps)
    say(f"playing {state_steps:,} steps to the fixed state")
    state = _fixed_state(first_request.task, first_agent, state_steps, seed)

    labelled = []
    for number, (request, _, agent, checkpoint) in enumerate(runs, 1):
        # A million actions of a GoRL decoder and their KDE take a while per run.
        say(f"sampling {samples:,} actions of run {number} of {len(runs)} and their KDE")
        with torch.no_grad():
            actions = agent.act(np.repeat(state[None], samples, axis=0), deterministic=False)
        label = f"{request.algo} {request.task} s{request.seed} @ {agent.counted_steps:,} steps"
        if np.ptp(actions, axis=0).max() == 0:
            raise UserError(
                f"the {samples:,} actions sampled from {label} at this state are all the same (a "
                "collapsed or saturated policy): there is no distribution to analyse."
            )
        report = analyse_actions(actions, KDE_BANDWIDTH_FACTOR if bandwidth is None else bandwidth)
        labelled.append((request, checkpoint["mlflow_run_id"], agent.counted_steps, label, report))
    return labelled


def _log(
    tracking_uri: str,
    run_id: str,
    step: int,
    report: object,
    figure: Path,
    run_dir: Path,
    diagnosis: Diagnosis,
) -> None:
    """Log `report` and `figure` to MLflow run `run_id` at counted step `step`; what could not be
    goes to `diagnosis`."""

    from mlflow.exceptions import MlflowException

    from harness.errors import UserError
    from harness.tracking import RunTracker, check_run_exists

    try:
        check_run_exists(tracking_uri, run_id)
    except UserError as error:
        diagnosis.unlogged.append(f"{run_dir}: {error}")
        return
    tracker = RunTracker(tracking_uri, run_id)
    try:
        metrics = report.metrics("diagnose/multimodality/")
        # MLflow keeps every value logged: a repeat of a diagnosis added a copy of each at the step.
        # A value of other settings (--bandwidth) is logged next to the earlier one, the latest shown.
        new = {
            key: value
            for key, value in metrics.items()
            if not any(
                m.step == step and m.value == value for m in tracker.client.get_metric_history(run_id, key)
            )
        }
        if new:
            tracker.log_metrics(new, step)
        if not tracker.log_artifact(figure, "diagnostics"):
            diagnosis.notes.append(
                f"the figure was not attached to MLflow run {run_id}: its artifact directory does not "
                "exist (has the store moved?); its statistics were logged"
            )
    except (MlflowException, OSError) as error:  # a server that went away, an unwritable artifact store
        diagnosis.unlogged.append(
            f"{run_dir}: logging to MLflow run {run_id} in {tracking_uri} failed: {error}"
        )


def fixed_state_steps(task: str, steps: int | None) -> int:
    """The steps to the fixed state: within the first episode, since past its end the env resets
    and the state would be an early one of another episode."""

    import envs
    from harness.errors import UserError

    episode_steps = envs.max_episode_steps(task)  # None: a gymnasium id without a time limit
    if steps is None:
        return DEFAULT_STATE_STEPS if episode_steps is None else min(DEFAULT_STATE_STEPS, episode_steps - 1)
    if episode_steps is not None and steps >= episode_steps:
        raise UserError(
            f"--state-steps {steps} is past the end of a {task} episode ({episode_steps} steps); give at "
            f"most {episode_steps - 1}."
        )
    return steps


def _fixed_state(task: str, agent: object, steps: int, seed: int) -> np.ndarray:
    """The observation after `steps` steps of the evaluation policy (its noise-free action, or
    with `eval_noise = "sample"` a draw seeded as an evaluation's) from a reset seeded by `seed`;
    a UserError if the episode ends before (a gym task's early termination), as the env would
    then have reset and the state would be an early one of the next episode."""

    import envs
    from harness.errors import UserError

    agent.begin_evaluation()
    env = envs.make(task, 1, seed)
    try:
        obs, _ = env.reset(seed=seed)
        for step in range(1, steps + 1):
            obs, _, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
            if terminated[0] or truncated[0]:
                raise UserError(
                    f"the policy's {task} episode (reset seed {seed}) ends after {step} steps, before the "
                    f"fixed state at step {steps}: give --state-steps {step - 1} or fewer."
                )
    finally:
        env.close()
    return obs[0]


def _plot(panels: list[tuple[str, object]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (label, report) in zip(axes[0], panels, strict=True):
        ax.fill_between(report.grid, report.density, alpha=0.3)
        ax.plot(report.grid, report.density)
        ax.set_title(
            f"{label}\nb = {report.bimodality_coefficient:.2f}, {count(report.kde_peaks, 'peak')}", fontsize=9
        )
        ax.set_xlabel("action projected on PC1")
        ax.set_ylabel(f"density (KDE, bandwidth {report.bw_factor:g})")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=150)
        fig.savefig(path.with_suffix(".pdf"))
    except OSError as error:  # a full disk: matplotlib's error names no file
        from harness.errors import UserError

        raise UserError(f"cannot write the figure {path}: {error.strerror}.") from None
    finally:
        plt.close(fig)
    return path
