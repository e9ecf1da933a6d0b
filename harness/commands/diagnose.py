"""`gorl-bench diagnose multimodality RUN [RUN ...]`: the paper's Figure 6 for trained runs.

At one fixed state, sample many actions from each run's stochastic policy, project them on
their first principal component and draw the Gaussian KDE (bandwidth factor 0.8), one panel
per run, so that a GoRL run can be set beside a Gaussian-PPO one. The state is reached by
running the first run's deterministic policy for `--state-steps` steps from a seeded reset:
a state in the middle of the behaviour, not an initial one. Sarle's bimodality coefficient
and the KDE's peak count (`algorithms.multimodality`) go to the terminal and, with the
figure, to each run's MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_SAMPLES = 10_000  # paper Fig. 6: 10,000 actions at one state
DEFAULT_STATE_STEPS = 200  # chosen here, because 200 steps leave the reset pose on every DMC task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="diagnostics of trained runs (multimodality: paper Fig. 6)"
    )
    kinds = parser.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    multimodality = kinds.add_parser(
        "multimodality",
        help="KDE of sampled actions at one state, projected on PC1, with a bimodality statistic",
    )
    multimodality.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run directories (same task)"
    )
    multimodality.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="actions per run (10000)")
    multimodality.add_argument(
        "--state-steps", type=int, default=DEFAULT_STATE_STEPS, help="policy steps to the fixed state (200)"
    )
    multimodality.add_argument("--seed", type=int, default=0, help="seed of the state's reset (default 0)")
    multimodality.add_argument(
        "--out", type=Path, help="figure directory (default: the first run's diagnostics/)"
    )
    multimodality.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.errors import UserError

    if args.samples < 4 or args.state_steps < 0:
        raise UserError("--samples must be >= 4 and --state-steps >= 0.")
    figure, reports = diagnose_multimodality(args.runs, args.samples, args.state_steps, args.seed, args.out)
    for run, report in reports:
        verdict = "bimodal" if report.bimodal else "not bimodal"
        statistics = f"{report.kde_peaks} KDE peak(s), PC1 explains {report.explained_variance:.0%}"
        print(
            f"{run}: bimodality coefficient {report.bimodality_coefficient:.3f} (5/9 = 0.556), "
            f"{statistics}: {verdict}"
        )
    print(f"figure: {figure}")
    return 0


def diagnose_multimodality(
    run_dirs: list[Path], samples: int, state_steps: int, seed: int, out: Path | None
) -> tuple[Path, list[tuple[str, object]]]:
    """Analyse every run at one state; returns the figure path and (run label, MultimodalityReport) pairs."""

    import torch
    from mlflow.tracking import MlflowClient

    from algorithms.multimodality import analyse_actions
    from harness.checkpoint import checkpoint_path
    from harness.errors import UserError
    from harness.run import load_run

    for run_dir in run_dirs:
        if not checkpoint_path(run_dir).exists():
            raise UserError(f"{str(run_dir)!r} holds no run checkpoint; give the --out directory of a run.")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    tasks = {request.task for request, *_ in runs}
    if len(tasks) > 1:
        raise UserError(
            f"the runs are on different tasks ({', '.join(sorted(tasks))}); give runs of one task."
        )
    first_request, _, first_agent, _ = runs[0]
    state = _fixed_state(first_request.task, first_agent, state_steps, seed)

    labelled = []
    for request, _, agent, checkpoint in runs:
        with torch.no_grad():
            actions = agent.act(np.repeat(state[None], samples, axis=0), deterministic=False)
        agent.close()
        label = f"{request.algo} {request.task} s{request.seed} @ {agent.counted_steps:,} steps"
        labelled.append((request, checkpoint, label, analyse_actions(actions)))

    out = Path(out) if out is not None else Path(run_dirs[0]) / "diagnostics"
    out.mkdir(parents=True, exist_ok=True)
    figure = _plot([(label, report) for _, _, label, report in labelled], out / "multimodality.png")
    for request, checkpoint, _, report in labelled:
        client = MlflowClient(request.tracking_uri)
        run_id = checkpoint["mlflow_run_id"]
        for key, value in report.metrics("diagnose/multimodality/").items():
            client.log_metric(run_id, key, value, step=checkpoint["agent"]["counted_steps"])
        client.log_artifact(run_id, str(figure), "diagnostics")
    return figure, [(label, report) for _, _, label, report in labelled]


def _fixed_state(task: str, agent: object, steps: int, seed: int) -> np.ndarray:
    """The observation after `steps` deterministic policy steps from a reset seeded by `seed`."""

    import envs

    env = envs.make(task, 1, seed)
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(steps):
            obs, *_ = env.step(agent.act(obs, deterministic=True))
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
            f"{label}\nb = {report.bimodality_coefficient:.2f}, {report.kde_peaks} peak(s)", fontsize=9
        )
        ax.set_xlabel("action projected on PC1")
        ax.set_ylabel("density (KDE, bandwidth 0.8)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path
