"""`gorl-bench report` end to end on a real Optuna journal study and a real MLflow SQLite store.

The module builds one small grid study the way the study runner records it (study and trial
user attrs, one nested MLflow run per unit with an `eval/return_mean` history), with one
FAILED unit and one unit that never ran, plus a tune study and an empty study.
"""

from __future__ import annotations

import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.image import imread
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from harness.cli import main
from harness.config_file import choices, load_config_file
from harness.errors import UserError
from harness.report import MARKER, REPORT_FILES, build_report, check_bootstrap, load_results

REPS = 2000
TASKS = ["cartpole-swingup", "pendulum-swingup"]
REFITS = [1, 2, 3]
SEEDS = 3
STEPS = [1000, 2000, 3000]
FAILED = "num_refits=3|pendulum-swingup|seed2"
MISSING = "num_refits=2|cartpole-swingup|seed1"


def eval_return(refits: int, task_index: int, seed: int, step: int) -> float:
    """Returns that grow with training and with the number of refits, distinct per seed."""

    return 100.0 * refits * step / STEPS[-1] + 50.0 * task_index + 7.0 * seed


@pytest.fixture(scope="module")
def stores(tmp_path_factory, migrated_mlflow_db):
    """(storage path, tracking URI) of a journal holding the studies and the MLflow store of their runs."""

    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("report")
    shutil.copy(migrated_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    storage_path = root / "studies.journal"
    storage = JournalStorage(JournalFileBackend(str(storage_path)))
    client = MlflowClient(tracking_uri=uri)
    _grid_study(storage, client, uri, root)
    _tune_study(storage, client, uri, root)
    _tune_with_an_outlier(storage, client, uri, root)
    _aliased_study(storage, client, uri, root)
    _diverging_study(storage, client, uri, root)
    _learning_rate_sweep(storage, client, uri, root)
    _crossed_divergence(storage, client, uri, root)
    _task_diverged(storage, client, uri, root)
    _all_diverged(storage, client, uri, root)
    _retried_and_not(storage, client, uri, root)
    for name, max_trials in (("capped", 1), ("capped-midway", 2)):
        _capped_study(storage, client, uri, root, name, max_trials)
    _capped_study(storage, client, uri, root, "capped-running", 2, running=True)
    optuna.create_study(study_name="empty", storage=storage)
    return storage_path, uri


def _study(storage, client, uri, root, name, spec, units_expected, swept):
    experiment = client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    parent = client.create_run(experiment, run_name=name).info.run_id
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    attrs = {
        "spec": spec,
        "tracking_uri": uri,
        "mlflow_experiment_id": experiment,
        "mlflow_parent_run_id": parent,
        "units_expected": units_expected,
        "swept": swept,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study, experiment, parent


def _unit_run(client, experiment, parent, key, returns):
    run_id = client.create_run(experiment, run_name=key, tags={"mlflow.parentRunId": parent}).info.run_id
    for step, value in zip(STEPS, returns, strict=True):
        client.log_metric(run_id, "eval/return_mean", value, step=step)
        client.log_metric(run_id, "eval/return_std", 1.0, step=step)
    client.set_terminated(run_id)
    return run_id


def _grid_study(storage, client, uri, root):
    spec = {"name": "ablation", "kind": "grid", "algo": "gorl-fm", "tasks": TASKS, "seeds": SEEDS}
    spec |= {"steps": STEPS[-1], "grid": {"num_refits": REFITS}}
    keys = [f"num_refits={r}|{task}|seed{s}" for r in REFITS for s in range(SEEDS) for task in TASKS]
    study, experiment, parent = _study(storage, client, uri, root, "ablation", spec, keys, ["num_refits"])
    for refits in REFITS:
        for seed in range(SEEDS):
            for task_index, task in enumerate(TASKS):
                key = f"num_refits={refits}|{task}|seed{seed}"
                record = {"unit": key, "variant": f"num_refits={refits}", "algo": "gorl-fm", "task": task}
                record |= {"seed": seed, "params": {"num_refits": refits, "lr": 3e-4}}
                if key == MISSING:
                    continue
                if key == FAILED:
                    record |= {"fail_reason": "FloatingPointError: loss is nan"}
                    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=record))
                    # A lost attempt of the same unit (worker died) is not a failure of the unit.
                    lost = {**record, "lost": True, "fail_reason": "worker lost: process 1 is gone"}
                    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=lost))
                    continue
                returns = [eval_return(refits, task_index, seed, step) for step in STEPS]
                record["mlflow_run_id"] = _unit_run(client, experiment, parent, key, returns)
                study.add_trial(create_trial(value=returns[-1] / 1000, user_attrs=record))


def _tune_study(storage, client, uri, root):
    spec = {"name": "tuning", "kind": "tune", "algo": "ppo", "tasks": TASKS, "seeds": 2, "steps": STEPS[-1]}
    spec |= {"max_trials": 3, "space": {"lr": {"low": 1e-4, "high": 1e-3, "log": True}}}
    study, experiment, parent = _study(storage, client, uri, root, "tuning", spec, [], [])
    # Trial 0 failed for a reason a rerun fixes (`study run --retry-failed`); trial 1 replaced it.
    failed = {"variant": "trial-0", "fail_reason": "OSError: No space left on device", "failure": "error"}
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=failed))
    for number, lr in enumerate([2e-4, 5e-4]):
        variant = f"trial-{number}"
        trial_run = client.create_run(experiment, run_name=variant, tags={"mlflow.parentRunId": parent})
        records = []
        for seed in range(2):
            for task_index, task in enumerate(TASKS):
                key = f"{variant}|{task}|seed{seed}"
                returns = [eval_return(number + 1, task_index, seed, step) for step in STEPS]
                run_id = _unit_run(client, experiment, trial_run.info.run_id, key, returns)
                records.append({"unit": key, "variant": variant, "algo": "ppo", "task": task, "seed": seed})
                records[-1] |= {"params": {"lr": lr}, "mlflow_run_id": run_id}
        attrs = {"variant": variant, "algo": "ppo", "params": {"lr": lr}, "units": records}
        attrs["mlflow_run_id"] = trial_run.info.run_id
        attrs |= {"rerun_of": 0} if number == 0 else {}
        study.add_trial(create_trial(value=0.5, params={"lr": lr}, user_attrs=attrs, distributions=_lr()))
    # Trial 2: pruned after its first unit.
    pruned = {"variant": "trial-2", "algo": "ppo", "params": {"lr": 1e-4}, "units": [{"unit": "u"}]}
    study.add_trial(
        create_trial(state=TrialState.PRUNED, value=0.125, intermediate_values={1: 0.125}, user_attrs=pruned)
    )


def _tune_with_an_outlier(storage, client, uri, root):
    """Trial 0 scores 0, 0, 0 and 1 on its four units (mean 0.25, IQM 0), trial 1 0.1 on each."""

    spec = {"name": "outlier", "kind": "tune", "algo": "ppo", "tasks": TASKS, "seeds": 2, "steps": STEPS[-1]}
    spec |= {"max_trials": 2, "space": {"lr": {"low": 1e-4, "high": 1e-3, "log": True}}}
    study, experiment, parent = _study(storage, client, uri, root, "outlier", spec, [], [])
    for number, finals in enumerate([[0.0, 0.0, 0.0, 1000.0], [100.0] * 4]):
        variant, lr, records = f"trial-{number}", 2e-4 * (number + 1), []
        trial_run = client.create_run(experiment, run_name=variant, tags={"mlflow.parentRunId": parent})
        units = [(seed, task) for seed in range(2) for task in TASKS]
        for (seed, task), final in zip(units, finals, strict=True):
            key = f"{variant}|{task}|seed{seed}"
            run_id = _unit_run(client, experiment, trial_run.info.run_id, key, [final] * len(STEPS))
            records.append({"unit": key, "variant": variant, "algo": "ppo", "task": task, "seed": seed,
                            "params": {"lr": lr}, "mlflow_run_id": run_id})  # fmt: skip
        attrs = {"variant": variant, "algo": "ppo", "params": {"lr": lr}, "units": records}
        attrs["mlflow_run_id"] = trial_run.info.run_id
        study.add_trial(create_trial(value=0.1, params={"lr": lr}, user_attrs=attrs, distributions=_lr()))


def _refits_grid(storage, client, uri, root, name, spec_tasks, tasks, failure, retried=()):
    """A `num_refits` 1-vs-2 grid over `tasks` (the spec names them `spec_tasks`), 2 seeds, as the
    study runner records it; `failure(unit)` gives the attrs of a unit that failed, or None. The
    `retried` units lost their worker: a lost attempt in their place, the retry after all others."""

    spec = {"name": name, "kind": "grid", "algo": "gorl-fm", "tasks": spec_tasks, "seeds": 2}
    spec |= {"steps": STEPS[-1], "grid": {"num_refits": [1, 2]}}
    keys = [f"num_refits={r}|{task}|seed{s}" for r in (1, 2) for s in range(2) for task in tasks]
    study, experiment, parent = _study(storage, client, uri, root, name, spec, keys, ["num_refits"])
    for key in retried:
        lost = {"unit": key, "lost": True, "fail_reason": "worker lost: process 1 is gone"}
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=lost))
    for key in [key for key in keys if key not in retried] + list(retried):
        refits, task, seed = key.split("|")
        record = {"unit": key, "variant": refits, "algo": "gorl-fm", "task": task, "seed": int(seed[-1])}
        record["params"] = {"num_refits": int(refits[-1])}
        if failure(key):
            study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=record | failure(key)))
            continue
        returns = [eval_return(int(refits[-1]), tasks.index(task), int(seed[-1]), step) for step in STEPS]
        record["mlflow_run_id"] = _unit_run(client, experiment, parent, key, returns)
        study.add_trial(create_trial(value=returns[-1] / 1000, user_attrs=record))


def _aliased_study(storage, client, uri, root):
    """The spec names a task by another spelling, and no unit finished on its last task."""

    def failure(unit):
        return {"fail_reason": "FloatingPointError: loss is nan"} if "cheetah-run" in unit else None

    tasks = ["cartpole-swingup", "pendulum-swingup", "cheetah-run"]  # as the study runner names units
    spec_tasks = ["Cartpole-Swingup", "pendulum-swingup", "cheetah-run"]
    _refits_grid(storage, client, uri, root, "aliased", spec_tasks, tasks, failure)


def _diverging_study(storage, client, uri, root):
    """Two variants on one task, 2 seeds; seed 1 of `num_refits=2` diverged."""

    def failure(unit):
        diverged = {"fail_reason": "DivergedError: final score nan", "failure": "diverged"}
        return diverged if unit == "num_refits=2|cartpole-swingup|seed1" else None

    tasks = ["cartpole-swingup"]
    _refits_grid(storage, client, uri, root, "diverging", tasks, tasks, failure)


def _learning_rate_sweep(storage, client, uri, root):
    """An `entropy_coef` [0, 0.01] x `lr` [3e-4, 1e-2] grid on one task, 2 seeds, whose
    lr = 1e-2 units all diverged."""

    task, grid = "cartpole-swingup", {"entropy_coef": [0, 0.01], "lr": [3e-4, 1e-2]}
    spec = {"name": "lr-sweep", "kind": "grid", "algo": "ppo", "tasks": [task], "seeds": 2}
    spec |= {"steps": STEPS[-1], "grid": grid}
    variants = [{"entropy_coef": coef, "lr": lr} for coef in grid["entropy_coef"] for lr in grid["lr"]]
    labels = [",".join(f"{name}={value}" for name, value in params.items()) for params in variants]
    keys = [f"{label}|{task}|seed{seed}" for label in labels for seed in range(2)]
    study, experiment, parent = _study(storage, client, uri, root, "lr-sweep", spec, keys, list(grid))
    for params, label in zip(variants, labels, strict=True):
        for seed in range(2):
            key = f"{label}|{task}|seed{seed}"
            record = {"unit": key, "variant": label, "algo": "ppo", "task": task, "seed": seed}
            record["params"] = params
            if params["lr"] == 1e-2:
                record |= {"fail_reason": "DivergedError: final score nan", "failure": "diverged"}
                study.add_trial(create_trial(state=TrialState.FAIL, user_attrs=record))
                continue
            returns = [eval_return(1, 0, seed, step) for step in STEPS]
            record["mlflow_run_id"] = _unit_run(client, experiment, parent, key, returns)
            study.add_trial(create_trial(value=returns[-1] / 1000, user_attrs=record))


def _crossed_divergence(storage, client, uri, root):
    """`num_refits=1` diverged on every seed of pendulum-swingup, `num_refits=2` on every seed of
    cartpole-swingup: each has final scores on both tasks, neither a curve on both."""

    def failure(unit):
        crossed = unit.startswith(("num_refits=1|pendulum", "num_refits=2|cartpole"))
        return {"fail_reason": "DivergedError: final score nan", "failure": "diverged"} if crossed else None

    tasks = ["cartpole-swingup", "pendulum-swingup"]
    _refits_grid(storage, client, uri, root, "crossed", tasks, tasks, failure)


def _task_diverged(storage, client, uri, root):
    """Both variants diverged on every seed of pendulum-swingup."""

    def failure(unit):
        diverged = "|pendulum-swingup|" in unit
        return {"fail_reason": "DivergedError: final score nan", "failure": "diverged"} if diverged else None

    tasks = ["cartpole-swingup", "pendulum-swingup"]
    _refits_grid(storage, client, uri, root, "task-diverged", tasks, tasks, failure)


def _all_diverged(storage, client, uri, root):
    """Every unit diverged."""

    def failure(unit):
        return {"fail_reason": "DivergedError: final score nan", "failure": "diverged"}

    tasks = ["cartpole-swingup"]
    _refits_grid(storage, client, uri, root, "all-diverged", tasks, tasks, failure)


def _retried_and_not(storage, client, uri, root):
    """One grid twice: run without interruption, and with two units (one of which diverges)
    retried after their workers were lost, so that their trials come last."""

    def failure(unit):
        diverged = unit == "num_refits=1|pendulum-swingup|seed1"
        return {"fail_reason": "DivergedError: final score nan", "failure": "diverged"} if diverged else None

    tasks = ["cartpole-swingup", "pendulum-swingup"]
    retried = ("num_refits=1|cartpole-swingup|seed0", "num_refits=1|pendulum-swingup|seed1")
    _refits_grid(storage, client, uri, root, "uninterrupted", tasks, tasks, failure)
    _refits_grid(storage, client, uri, root, "retried", tasks, tasks, failure, retried)


def _capped_study(storage, client, uri, root, name, max_trials, running=False):
    """A grid of 4 units (num_refits 1 and 2, 2 seeds, one task) with `max_trials`: the first unit
    ran, the other three are queued as the study runner enqueues them, in spec order; with
    `running`, the second is running (claimed by a worker)."""

    task = "cartpole-swingup"
    spec = {"name": name, "kind": "grid", "algo": "gorl-fm", "tasks": [task], "seeds": 2}
    spec |= {"steps": STEPS[-1], "grid": {"num_refits": [1, 2]}, "max_trials": max_trials}
    keys = [f"num_refits={r}|{task}|seed{s}" for r in (1, 2) for s in range(2)]
    study, experiment, parent = _study(storage, client, uri, root, name, spec, keys, ["num_refits"])
    for number, key in enumerate(keys):
        refits, _, seed = key.split("|")
        record = {"unit": key, "variant": refits, "algo": "gorl-fm", "task": task, "seed": int(seed[-1])}
        record["params"] = {"num_refits": int(refits[-1])}
        if number == 1 and running:
            study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs=record))
            continue
        if number:
            study.enqueue_trial({"unit": key}, user_attrs=record)
            continue
        returns = [eval_return(int(refits[-1]), 0, int(seed[-1]), step) for step in STEPS]
        record["mlflow_run_id"] = _unit_run(client, experiment, parent, key, returns)
        study.add_trial(create_trial(value=returns[-1] / 1000, user_attrs=record))


def _lr():
    return {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)}


def test_load_results_joins_optuna_and_mlflow(stores):
    storage, _ = stores
    table, missing, failed = load_results("ablation", str(storage))
    assert list(table.columns) == [
        "study", "variant", "algo", "task", "seed", "env_step", "eval_return", "num_refits",
    ]  # fmt: skip
    assert len(table) == (len(REFITS) * SEEDS * len(TASKS) - 2) * len(STEPS)
    assert missing == [MISSING]
    assert failed == [(FAILED, "FloatingPointError: loss is nan")]
    row = table[(table.variant == "num_refits=2") & (table.task == TASKS[1]) & (table.seed == 2)]
    assert row.env_step.tolist() == STEPS
    assert row.eval_return.tolist() == [eval_return(2, 1, 2, step) for step in STEPS]
    assert row.num_refits.tolist() == [2, 2, 2]  # ints stay ints


def test_report_end_to_end(stores, tmp_path):
    from mlflow.tracking import MlflowClient

    storage, uri = stores
    out = tmp_path / "report"
    out.mkdir()
    (out / "stray.txt").write_text("not the report's")  # e.g. an earlier report's, or a run's file
    first = build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    assert first.partial and first.missing == [MISSING]
    assert not any("intervals need at least 2 runs" in note for note in first.notes)  # 2 or 3 seeds each

    for name in (
        "aggregates",
        "probability_of_improvement",
        "performance_profile",
        "sample_efficiency",
        "ablation",
    ):
        assert (out / f"{name}.pdf").stat().st_size > 1000
        pixels = imread(out / f"{name}.png")
        assert pixels.std() > 0.05, f"{name}.png looks blank"

    summary = (out / "summary.md").read_text()
    assert summary.splitlines()[0] == "# Report: ablation (grid) — PARTIAL"
    for text in (MISSING, FAILED, "Probability of improvement", "Ablation of num_refits", "IQM"):
        assert text in summary
    assert "Evaluation: each policy's noise-free action (eval_noise = zero)." in summary
    assert "\\begin{tabular}" in (out / "tables.tex").read_text()
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0] == "study,variant,algo,task,seed,env_step,eval_return,score,num_refits,diverged"

    # The per-task table holds raw returns: cartpole-swingup's finals with one refit are
    # 100, 107 and 114 over seeds 0-2.
    assert "| 107.0 ± 7.0 (n=3) |" in summary
    # Every run's score is 0.1 * refits at the end on the first task: IQM grows with refits.
    lines = [line for line in summary.splitlines() if line.startswith("| num_refits=")]
    iqms = [float(line.split("|")[3].split()[0]) for line in lines[:3]]
    assert iqms == sorted(iqms)

    parent = MlflowClient(tracking_uri=uri).get_experiment_by_name("ablation")
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [parent.experiment_id], "attributes.run_name = 'ablation'"
    )
    logged = {f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/summary.md", "report/results.csv", "report/ablation.png"} <= logged
    # Only what the report wrote: `--out runs` held the artifact store, which was copied into itself.
    assert logged == {f"report/{path.name}" for path in first.files}

    again = tmp_path / "again"
    build_report("ablation", str(storage), out_dir=again, reps=REPS, seed=0)
    assert (again / "summary.md").read_text() == summary  # intervals are reproducible for a seed
    # The files a report replaces are the earlier report's: REPORT_FILES names them all (and a
    # tune study's importance figure, which the tune test checks).
    tune_only = {"parameter_importance.png", "parameter_importance.pdf", "best_config.toml"}
    assert {path.name for path in first.files} | {MARKER} == REPORT_FILES - tune_only
    build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    assert (out / "summary.md").read_text() == summary


def test_a_report_does_not_depend_on_which_units_were_retried(stores, tmp_path):
    """A retried unit's trial comes after every other: its rows, and its variant in the tables,
    moved to the end of the report of an interrupted study."""

    storage, _ = stores
    reports = {}
    for name in ("uninterrupted", "retried"):
        build_report(name, str(storage), out_dir=tmp_path / name, reps=REPS, seed=0)
        reports[name] = [
            (tmp_path / name / file).read_text().replace(name, "STUDY")
            for file in ("results.csv", "summary.md")
        ]
    assert "num_refits=1,gorl-fm,cartpole-swingup,0," in reports["retried"][0].splitlines()[1]
    assert reports["retried"] == reports["uninterrupted"]


def test_a_report_replaces_an_earlier_report_but_no_other_file(stores, tmp_path):
    """`report --out mypaper` silently replaced the user's summary.md and results.csv."""

    storage, _ = stores
    out = tmp_path / "mypaper"
    out.mkdir()
    (out / "summary.md").write_text("MY NOTES\n")
    (out / "results.csv").write_text("my,data\n")
    with pytest.raises(UserError, match=r"holds results.csv, summary.md, which the report would replace"):
        build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    assert (out / "summary.md").read_text() == "MY NOTES\n"
    assert (out / "results.csv").read_text() == "my,data\n"


def test_a_report_stopped_half_way_is_replaced_by_the_next(stores, tmp_path, monkeypatch):
    """Its results.csv and first figure, without the summary.md written last, were refused as
    someone else's files: `demo` after a Ctrl-C in the bootstrap could not finish."""

    from harness.report import STAGING_DIR, stats

    storage, _ = stores
    out = tmp_path / "report"

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    with monkeypatch.context() as patched:
        patched.setattr(stats, "interval_estimates", out_of_memory)
        with pytest.raises(MemoryError):
            build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    assert [path.name for path in out.iterdir()] == [MARKER]  # nothing half-written, no staging left
    build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Report: ablation")
    complete = {path.name: path.read_bytes() for path in out.iterdir()}

    # A report stopped half-way over a complete one leaves it as it was: it wrote its results.csv
    # and first figures beside the earlier report's summary (an earlier version removed them all).
    with monkeypatch.context() as patched:
        patched.setattr(stats, "interval_estimates", out_of_memory)
        with pytest.raises(MemoryError):
            build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=7)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == complete
    assert not (out / STAGING_DIR).exists()


def test_a_report_on_a_full_disk_is_one_clear_error_and_keeps_the_earlier_report(
    stores, tmp_path, monkeypatch
):
    """A full disk ended the report in a traceback, with some files of the new report written."""

    import errno
    import os

    from harness.report import figures

    storage, _ = stores
    out = tmp_path / "report"
    build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=0)
    complete = {path.name: path.read_bytes() for path in out.iterdir()}
    real_save, saved = figures.save, []

    def disk_fills(fig, directory, name):
        if saved:  # the second figure no longer fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(name)
        return real_save(fig, directory, name)

    monkeypatch.setattr(figures, "save", disk_fills)
    with pytest.raises(
        UserError, match=r"cannot write the report in .*: No space left on device; the earlier"
    ):
        build_report("ablation", str(storage), out_dir=out, reps=REPS, seed=7)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == complete


def test_the_summary_names_the_variants_scored_by_sampled_actions():
    """FPO's and DPPO's default and PPO's option: their scores are not comparable with mean actions'."""

    from harness.report import _evaluation_note
    from harness.report.results import StudyResults, _sampled_variants

    configs = {
        "ppo": ("ppo", "toy-bimodal", {}),
        "fpo": ("fpo", "toy-bimodal", {}),
        "ppo-sampled": ("ppo", "toy-bimodal", {"eval_noise": "sample"}),
        "fpo-zero": ("fpo", "toy-bimodal", {"eval_noise": "zero"}),
    }
    sampled = _sampled_variants(configs, "cpu")
    assert sampled == ["fpo", "ppo-sampled"]
    results = StudyResults("s", "compare", pd.DataFrame({"variant": list(configs)}), [], [], [], [], "", None,
                           ["toy-bimodal"], [], [], pd.DataFrame(), sampled)  # fmt: skip
    expected = "Evaluation: sampled actions (eval_noise = sample) for fpo, ppo-sampled; the noise-free action"
    assert _evaluation_note(results).startswith(expected)


def test_tune_study_reports_each_trial_configuration(stores, tmp_path):
    storage, _ = stores
    table, missing, failed = load_results("tuning", str(storage))
    assert sorted(table.variant.unique()) == ["trial-0", "trial-1"]
    assert list(table.columns)[-1] == "lr"
    assert missing == [] and failed == []  # 3 trials settled: failed-then-rerun, complete, pruned
    report = build_report("tuning", str(storage), out_dir=tmp_path, reps=REPS)
    assert not report.partial and not (tmp_path / "ablation.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    # Ranked best first with the sampled parameters: trial-1 (lr 5e-4) scores higher than trial-0.
    ranking = summary[summary.index("## Trials ranked by final IQM") :]
    assert ranking.index("| 1 | trial-1 |") < ranking.index("| 2 | trial-0 |")
    assert "| 0.0005 |" in ranking and "| 0.0002 |" in ranking
    # The one searched parameter explains all of the two trials' difference; the pruned trial is
    # not among them.
    importance = summary[summary.index("## Parameter importance (fANOVA, over the final IQM of 2 trials)") :]
    assert "| lr | 1.000 |" in importance and (tmp_path / "parameter_importance.png").is_file()
    assert {path.name for path in report.files} <= REPORT_FILES  # an earlier report's, replaced
    # The best trial's settings, as `run --config` reads them: the study's [fixed] and sampled values.
    best = load_config_file(tmp_path / "best_config.toml")
    assert best.run == {"algo": "ppo", "preset": "cpu"} and best.config == {"lr": 5e-4}
    assert choices(best, "ppo") == {"lr": 5e-4}
    # Its path, not its bare name, which `run --config` found only from the report's directory.
    assert f"`gorl-bench run --config {tmp_path / 'best_config.toml'} --task TASK`" in "\n".join(report.notes)
    assert "## Pruned trials (1)" in summary and "trial-2: after 1 of 4 units, IQM so far 0.125" in summary


def test_tune_trials_are_ranked_by_their_iqm_not_their_mean(stores, tmp_path):
    """One outlier unit lifts a trial's mean (0.25 against 0.1) but not its IQM (0 against 0.1),
    the tune objective."""

    storage, _ = stores
    build_report("outlier", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    ranking = summary[summary.index("## Trials ranked by final IQM") :]
    assert ranking.index("| 1 | trial-1 | 0.100") < ranking.index("| 2 | trial-0 | 0.000")


def test_probabilities_of_improvement_are_limited_to_the_best_variants(stores, tmp_path, monkeypatch):
    import harness.report

    monkeypatch.setattr(harness.report, "MAX_COMPARED", 2)
    storage, _ = stores
    report = build_report("ablation", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    section = summary[summary.index("## Probability of improvement") :].split("\n## ")[0]
    pairs = [line for line in section.splitlines() if line.startswith("| num_refits=")]
    assert len(pairs) == 1 and pairs[0].startswith("| num_refits=3 | num_refits=2 |")  # the two best only
    # Every run of 3 refits ends above every run of 2 on each task (eval_return): P(X > Y) = 1, not 0.
    assert pairs[0].split("|")[3].split()[0] == "1.000"
    note = "probability of improvement: between the 2 variants with the highest IQM (3 in all)"
    assert note in report.notes


def test_tasks_spelled_otherwise_are_kept_and_tasks_without_results_are_noted(stores, tmp_path):
    storage, _ = stores
    report = build_report("aliased", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    assert "Tasks: cartpole-swingup, pendulum-swingup." in summary
    assert "(worst, best): cartpole-swingup (0.0, 1000.0), pendulum-swingup (0.0, 1000.0)." in summary
    note = (
        "cheetah-run: no finished run of any variant; "
        "the statistics cover cartpole-swingup, pendulum-swingup only"
    )
    assert note in report.notes and note in summary


def test_a_diverged_unit_counts_with_its_task_s_worst_score(stores, tmp_path):
    """Leaving it out would rate `num_refits=2` by its surviving seed alone (0.2 here, not 0.1)."""

    storage, _ = stores
    report = build_report("diverging", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    aggregates = summary[summary.index("## Aggregate metrics") :].split("\n## ")[0]
    (row,) = [line for line in aggregates.splitlines() if line.startswith("| num_refits=2 |")]
    assert row.split("|")[4].split()[0] == "0.100"  # the mean of 0.2 (seed 0) and 0 (diverged)
    # results.csv holds every row the statistics use, the diverged unit too (it was left out).
    rows = pd.read_csv(tmp_path / "results.csv")
    (diverged,) = rows[rows["diverged"]].itertuples()
    assert (diverged.variant, diverged.seed, diverged.score) == ("num_refits=2", 1, 0.0)
    assert not rows[~rows["diverged"]]["score"].isna().any()
    assert "(n=2)" in summary.split("| num_refits=2 |")[-1].splitlines()[0]
    assert any("1 diverged unit counted with the task's worst score" in note for note in report.notes)
    fewer = "sample-efficiency curves: fewer runs per task than the final scores for num_refits=2"
    assert fewer in report.notes  # the diverged seed has no curve


def test_variants_that_diverged_on_every_unit_keep_their_parameter_values(stores, tmp_path):
    """Their rows alone made float columns: entropy_coef 0 became 0.0, an ablation row of its own
    that took the diverged runs away from the row of 0 (which then scored as if none diverged)."""

    storage, _ = stores
    report = build_report("lr-sweep", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    for name, values in (("entropy_coef", ["0", "0.01"]), ("lr", ["0.0003", "0.01"])):
        section = summary[summary.index(f"## Ablation of {name}") :].split("\n## ")[0]
        rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
        assert rows[1:] == values, section  # after the header: one row per value, each pooling 4 runs
    # The variants in the plan's order: the two whose every unit diverged came last.
    aggregates = summary[summary.index("## Aggregate metrics") :].split("\n## ")[0]
    rows = [line.split("|")[1].strip() for line in aggregates.splitlines() if line.startswith("| ")]
    assert rows[1:] == [f"entropy_coef={e},lr={lr}" for e in ("0", "0.01") for lr in ("0.0003", "0.01")]
    diverged = "entropy_coef=0,lr=0.01, entropy_coef=0.01,lr=0.01"
    assert (
        f"sample-efficiency curves: none for {diverged} (on some task every run of it diverged)"
        in report.notes
    )


def test_a_task_on_which_every_unit_diverged_counts_with_its_worst_score(stores, tmp_path):
    """The task was dropped ("the statistics cover cartpole-swingup only"): every score doubled."""

    storage, _ = stores
    report = build_report("task-diverged", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    assert not any("no finished run of any variant" in note for note in report.notes)
    aggregates = summary[summary.index("## Aggregate metrics") :].split("\n## ")[0]
    (row,) = [line for line in aggregates.splitlines() if line.startswith("| num_refits=1 |")]
    # Cartpole's seeds score 0.100 and 0.107, pendulum's 0 (diverged): the mean over the four runs.
    assert row.split("|")[4].split()[0] == "0.052"
    assert "pendulum-swingup" in summary[summary.index("## Final return per task") :].splitlines()[2]


def test_a_study_whose_every_unit_diverged_is_reported_with_worst_scores(stores, tmp_path):
    """It was refused as if every unit had failed with an error: a divergence is a result."""

    storage, _ = stores
    report = build_report("all-diverged", str(storage), out_dir=tmp_path, reps=REPS)
    summary = (tmp_path / "summary.md").read_text()
    aggregates = summary[summary.index("## Aggregate metrics") :].split("\n## ")[0]
    rows = [line for line in aggregates.splitlines() if line.startswith("| num_refits=")]
    assert len(rows) == 2 and all(row.split("|")[4].split()[0] == "0.000" for row in rows)
    assert any("4 diverged units counted with the task's worst score" in note for note in report.notes)
    assert not (tmp_path / "sample_efficiency.png").exists() and (tmp_path / "aggregates.png").is_file()


def test_a_study_without_a_curve_on_every_task_reports_its_final_scores_without_the_figure(stores, tmp_path):
    storage, _ = stores
    report = build_report("crossed", str(storage), out_dir=tmp_path, reps=REPS)
    assert "no sample-efficiency figure: no variant has a finished run on every task" in report.notes
    assert not (tmp_path / "sample_efficiency.png").exists() and (tmp_path / "aggregates.png").is_file()
    summary = (tmp_path / "summary.md").read_text()
    assert "| num_refits=1 |" in summary and "| num_refits=2 |" in summary


def test_a_grid_at_its_max_trials_is_complete_not_partial(stores, tmp_path, capsys):
    """`max_trials = 1` of 4 units: `study status` said finished yet `waiting 3`, and the report was
    PARTIAL with 3 units not finished, which never run."""

    from studies.status import study_status
    from studies.worker import load_study

    storage, _ = stores
    status = study_status(load_study("capped", str(storage)))
    assert status.finished and (status.waiting, status.not_run) == (0, 3)
    lines = status.lines()
    assert lines[0] == "study capped (grid): 1/1 done - finished" and "  waiting 0  " in lines[1]
    assert lines[3] == "  3 more units never run: the spec's max_trials ends the study before them"

    argv = ["report", "capped", "--storage", str(storage), "--out", str(tmp_path), "--reps", "500"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "PARTIAL" not in out and "PARTIAL" not in (tmp_path / "summary.md").read_text()
    never = "3 units never run: the spec's max_trials ends the study before them, so the report is complete"
    assert never in " ".join(err.split())
    assert "## Missing units (0)" in (tmp_path / "summary.md").read_text()


def test_a_grid_short_of_its_max_trials_misses_only_the_units_still_to_run(stores):
    """`max_trials = 2`: of the 3 queued units, the first (in queue order) runs, the others never do."""

    from studies.status import study_status
    from studies.worker import load_study

    storage, _ = stores
    status = study_status(load_study("capped-midway", str(storage)))
    assert not status.finished and (status.done, status.total, status.waiting, status.not_run) == (1, 2, 1, 2)
    _, missing, _ = load_results("capped-midway", str(storage))
    assert missing == ["num_refits=1|cartpole-swingup|seed1"]


def test_a_unit_running_at_the_trial_limit_is_missing_not_never_run(stores):
    """The running unit was counted among those never run, and the report called itself complete."""

    from harness.report.results import load_study_results

    storage, _ = stores
    results = load_study_results("capped-running", str(storage))
    assert results.missing == ["num_refits=1|cartpole-swingup|seed1"]
    assert results.not_run == ["num_refits=2|cartpole-swingup|seed0", "num_refits=2|cartpole-swingup|seed1"]


def test_one_run_per_task_and_configuration_is_noted_as_degenerate_intervals(stores, tmp_path):
    """With one seed, the report printed `0.023 [0.023, 0.023]` with no word on it."""

    from harness.report import _single_run_notes

    storage, _ = stores
    report = build_report("capped", str(storage), out_dir=tmp_path, reps=REPS)  # one unit ran
    note = (
        "95% intervals need at least 2 runs (seeds) per task and configuration; every variant has 1, so the "
        "intervals shown for them are degenerate (zero width), not a measure of uncertainty"
    )
    summary = (tmp_path / "summary.md").read_text()
    assert note in report.notes and note in summary
    aggregates = summary[summary.index("## Aggregate metrics") :].split("\n## ")[0]
    (row,) = [line for line in aggregates.splitlines() if line.startswith("| num_refits=1 |")]
    point = row.split("|")[3].split()[0]
    assert f"{point} [{point}, {point}]" in row  # the statistics themselves are unchanged
    mixed = _single_run_notes({"a": np.zeros((1, 2)), "b": np.zeros((3, 2)), "c": np.zeros((1, 2))})
    assert len(mixed) == 1 and "configuration; a, c have 1, so" in mixed[0]
    assert _single_run_notes({"b": np.zeros((2, 2))}) == []


def test_cli_errors_are_one_paragraph(stores, tmp_path, capsys):
    storage, _ = stores
    assert main(["report", "nope", "--storage", str(storage)]) == 2
    studies = "ablation, aliased, all-diverged, capped, capped-midway, capped-running, crossed, diverging, "
    studies += "empty, lr-sweep, outlier, retried, task-diverged, tuning, uninterrupted"
    err = capsys.readouterr().err
    assert f"Studies there: {studies}" in err and "Create it with `gorl-bench study run SPEC`" in err
    assert main(["report", "timescale", "--storage", str(storage)]) == 2  # a shipped spec: named
    assert (
        "Create it with `gorl-bench study run timescale` (with the same --storage)" in capsys.readouterr().err
    )
    assert main(["report", "empty", "--storage", str(storage)]) == 2
    assert "no trials yet" in capsys.readouterr().err
    assert main(["report", "ablation", "--storage", str(tmp_path / "absent.journal")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UserError, match="at least 100"):
        build_report("ablation", str(storage), out_dir=tmp_path, reps=10)
    assert main(["report", "ablation", "--storage", str(storage), "--reps", "10000000"]) == 2
    assert "--reps must be at most 500,000" in capsys.readouterr().err
    assert main(["report", "ablation", "--storage", str(storage), "--seed", "-1"]) == 2
    assert "--seed must be a non-negative integer" in capsys.readouterr().err


def test_a_wrong_output_or_store_is_refused_with_a_message(stores, tmp_path, migrated_mlflow_db, capsys):
    storage, uri = stores
    argv = ["report", "ablation", "--storage", str(storage), "--reps", "500"]
    (tmp_path / "taken").write_text("")
    assert main([*argv, "--out", str(tmp_path / "taken")]) == 2
    assert "output directory" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "taken" / "report")]) == 2
    assert f"{tmp_path / 'taken'} exists and is not a directory" in capsys.readouterr().err
    run = tmp_path / "run"  # a run directory: its files are the run's, as evaluate --json keeps them
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"weights")
    assert main([*argv, "--out", str(run)]) == 2
    assert f"{run} is a run directory (it holds checkpoint.pt)" in capsys.readouterr().err
    assert [path.name for path in run.iterdir()] == ["checkpoint.pt"]

    # An existing store that never held the study's runs: not "16 failed" units, a wrong store.
    other = tmp_path / "other.db"
    shutil.copy(migrated_mlflow_db, other)
    assert main([*argv, "--tracking-uri", f"sqlite:///{other}", "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the MLflow store sqlite:///{other} has none of the 16 runs of study 'ablation'" in err
    assert f"the study recorded {uri}" in err and "check --tracking-uri" in err


def test_cli_writes_a_partial_report(stores, tmp_path, capsys):
    storage, _ = stores
    code = main(["report", "ablation", "--storage", str(storage), "--out", str(tmp_path), "--reps", "500"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PARTIAL report: 1 unit not finished yet" in printed and MISSING in printed
    assert np.isfinite(np.loadtxt(tmp_path / "results.csv", delimiter=",", skiprows=1, usecols=6)).all()


@pytest.mark.parametrize("command", [["study", "status"], ["report"]])
@pytest.mark.parametrize("storage", ["{dir}", "sqlite:///{dir}"])
def test_a_storage_that_is_a_directory_is_named_one(tmp_path, capsys, command, storage):
    """Not "the file does not exist": it exists, and --storage wants a file or a URL."""

    storage = storage.format(dir=tmp_path)
    assert main([*command, "ablation", "--storage", storage]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the study storage {storage} is a directory; pass the --storage a study was run with" in err
    assert "a journal file path or an RDB URL" in err and "does not exist" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was created in it


def test_ablation_intervals_match_the_aggregates_and_ignore_the_order_of_the_trials():
    from types import SimpleNamespace

    from harness.report import _ablations, stats

    rng = np.random.default_rng(0)
    finals = {f"lr={lr}, epochs={epochs}": rng.uniform(size=(5, 2)) for lr in (1, 2) for epochs in (3, 4)}
    finals["lr=3"] = rng.uniform(size=(5, 2))  # the only configuration with lr 3
    # dtype object, as the results table has: a float column would turn None into nan.
    table = pd.DataFrame(
        {
            "variant": list(finals),
            "lr": [1, 1, 2, 2, 3],
            "epochs": [3, 4, 3, 4, None],
        },
        dtype=object,
    )
    results = SimpleNamespace(parameters=["lr", "epochs"])
    options = {"reps": REPS, "seed": 0}
    panels = _ablations(results, table, finals, options)
    points, intervals = stats.interval_estimates({"lr=3": finals["lr=3"]}, stats.aggregates, **options)
    at = list(stats.AGGREGATES).index("IQM")
    assert panels["lr"][0]["3"] == points["lr=3"][at]
    assert list(panels["epochs"][0]) == ["3", "4"]  # the configuration without epochs is no value
    np.testing.assert_array_equal(panels["lr"][1]["3"], intervals["lr=3"][:, at])

    reversed_finals = dict(reversed(finals.items()))
    again = _ablations(results, table.iloc[::-1], reversed_finals, options)
    for name in ("lr", "epochs"):
        for value in panels[name][1]:
            np.testing.assert_array_equal(again[name][1][value], panels[name][1][value])


def test_a_report_removes_the_earlier_report_s_figures_it_does_not_draw(stores, tmp_path, monkeypatch):
    """With fewer figures than the report before it (no pair to compare), the earlier report's
    probability-of-improvement figure stayed beside the new summary, and in MLflow."""

    from mlflow.tracking import MlflowClient

    import harness.report

    storage, uri = stores
    build_report("ablation", str(storage), out_dir=tmp_path, reps=REPS)
    assert (tmp_path / "probability_of_improvement.png").is_file()
    monkeypatch.setattr(harness.report, "MAX_COMPARED", 1)
    second = build_report("ablation", str(storage), out_dir=tmp_path, reps=REPS)
    left = {path.name for path in tmp_path.iterdir()}
    assert left == {path.name for path in second.files} | {MARKER}
    assert "probability_of_improvement.png" not in left

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ablation")
    parent = client.search_runs([experiment.experiment_id], "attributes.run_name = 'ablation'")[0]
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{path.name}" for path in second.files}


@pytest.mark.parametrize("command", [["report"], ["demo"]])
def test_the_help_states_the_range_of_reps_that_check_bootstrap_takes(command, capsys):
    from harness.report import MAX_REPS

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"bootstrap resamples, 100 to {MAX_REPS:,}" in help_text
    with pytest.raises(UserError, match="at least 100"):
        check_bootstrap(99, 0)


def test_at_a_step_logged_twice_the_later_value_is_the_run_s():
    """A unit resumed from a checkpoint logs its last evaluation step again: the report used the
    earlier value, not the one the run went on from."""

    from mlflow.entities import Metric

    from harness.report.results import RETURN_METRIC, _return_history

    class Client:
        def get_metric_history(self, run_id, key):
            assert key == RETURN_METRIC
            return [Metric(key, 5.0, timestamp=2, step=100), Metric(key, 4.0, timestamp=1, step=100),
                    Metric(key, 1.0, timestamp=0, step=50)]  # fmt: skip

    assert _return_history(Client(), "run") == [(50, 1.0), (100, 5.0)]
