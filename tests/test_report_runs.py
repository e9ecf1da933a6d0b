"""`gorl-bench report --runs DIR ...`: the statistics of runs started by hand, grouped into variants."""

from __future__ import annotations

import pandas as pd
import pytest
from test_run import TINY, request, stopped_run

from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.cli import main
from harness.report import build_runs_report
from harness.run import execute

REPS = 200


def trained(tmp_path, tracking_uri, name, **changes):
    """A finished tiny run in tmp_path / name (PPO on the toy task unless `changes` say otherwise)."""

    overrides = {**TINY["overrides"], **changes.pop("overrides", {})}
    done = execute(request(tmp_path, tracking_uri, out_dir=tmp_path / name, overrides=overrides, **changes),
                   progress=False)  # fmt: skip
    assert done.status == "FINISHED"
    return tmp_path / name


def test_runs_are_grouped_into_variants_by_their_settings(tmp_path, tracking_uri):
    runs = [
        trained(tmp_path, tracking_uri, "a0", seed=0),
        trained(tmp_path, tracking_uri, "a1", seed=1),
        # The preset's own clip, given with --set: the same variant as the two above.
        trained(tmp_path, tracking_uri, "a2", seed=2, overrides={"clip": 0.2}),
        trained(tmp_path, tracking_uri, "b0", seed=0, overrides={"clip": 0.3}),
        trained(tmp_path, tracking_uri, "b1", seed=1, overrides={"clip": 0.3}),
    ]
    report = build_runs_report(runs, "by-hand", tmp_path / "report", reps=REPS)
    assert not report.partial and report.notes == []
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert summary.startswith("# Report: by-hand (runs)")
    assert "| ppo clip=0.2 | " in summary and "(n=3)" in summary and "(n=2)" in summary
    # Variants in the order of their first run given; no section of a study's failed units.
    assert summary.index("| ppo clip=0.2 | ") < summary.index("| ppo clip=0.3 | ")
    assert "## Missing runs (0)" in summary and "Failed units" not in summary
    # Each run's evaluations, as its checkpoint holds them.
    table = pd.read_csv(tmp_path / "report" / "results.csv")
    ours = table[(table.variant == "ppo clip=0.3") & (table.seed == 1)]
    history = load_checkpoint(runs[4])["progress"]["history"]
    assert list(ours.env_step) == [step for step, _, _ in history]
    assert list(ours.eval_return) == pytest.approx([mean for _, mean, _ in history], rel=1e-12)


def test_a_run_of_a_version_whose_defaults_differed_is_another_variant(tmp_path, tracking_uri):
    """Grouped by the settings this version resolves, a run trained with another default lr was
    counted as a seed of today's default."""

    runs = [trained(tmp_path, tracking_uri, "now", seed=0), trained(tmp_path, tracking_uri, "then", seed=1)]
    checkpoint = load_checkpoint(runs[1])
    checkpoint["config"]["lr"] = 1e-3  # as an earlier version's preset gave it
    save_checkpoint(runs[1], checkpoint)
    build_runs_report(runs, "versions", tmp_path / "report", reps=REPS)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| ppo lr=0.0003 | " in summary and "| ppo lr=0.001 | " in summary


def test_one_configuration_on_two_tasks_is_one_variant(tmp_path, tracking_uri):
    """finger-spin's own gamma (0.95) does not make its run another variant than the toy task's,
    nor does giving it with --set (as a preset's own value given with --set does not)."""

    once = {"eval_episodes": 1, "eval_points": 1}  # a finger-spin episode is 1,000 steps
    runs = [
        trained(tmp_path, tracking_uri, "toy", overrides=once),
        trained(tmp_path, tracking_uri, "finger", task="finger-spin", overrides=once),
        trained(
            tmp_path,
            tracking_uri,
            "finger-set",
            task="finger-spin",
            seed=1,
            overrides={**once, "gamma": 0.95},
        ),
    ]
    assert build_runs_report(runs, "tasks", tmp_path / "report", reps=REPS)
    summary = (tmp_path / "report" / "summary.md").read_text()
    # Not one variant per task (ppo gamma=0.95, ppo gamma=0.99): one row with both tasks' returns.
    assert "\n| ppo | " in summary and "gamma" not in summary


def test_a_shorter_budget_s_curve_is_said_to_be_held_to_the_end_of_the_axis(tmp_path, tracking_uri):
    runs = [trained(tmp_path, tracking_uri, "short"), trained(tmp_path, tracking_uri, "long", steps=2048)]
    report = build_runs_report(runs, "budgets", tmp_path / "report", reps=REPS)
    held = [note for note in report.notes if note.startswith("sample-efficiency curves:")]
    assert held == [
        "sample-efficiency curves: ppo steps=1024's runs end at 1,024 env steps; its curve is held at "
        "their last scores to 2,048"
    ]


def test_budgets_that_train_the_same_updates_are_one_variant(tmp_path, tracking_uri):
    """--steps 1000 trains 4 updates of 256 env steps, as --steps 1024 does, and evaluates after
    the same ones: grouped by the budget given, they were two variants, `steps=1000` and
    `steps=1024`, of one run each."""

    runs = [
        trained(tmp_path, tracking_uri, "whole", seed=0),
        trained(tmp_path, tracking_uri, "rounded", seed=1, steps=1000),
    ]
    build_runs_report(runs, "rounded", tmp_path / "report", reps=REPS)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "\n| ppo | " in summary and "steps=" not in summary and "(n=2)" in summary


def test_a_run_short_of_its_budget_is_missing_and_the_report_partial(tmp_path, tracking_uri, capsys):
    done = trained(tmp_path, tracking_uri, "done", seed=1)
    stopped = stopped_run(tmp_path, tracking_uri)
    assert (
        main(["report", "--runs", str(done), str(stopped), "--out", str(tmp_path / "r"), "--reps", "200"])
        == 0
    )
    out = capsys.readouterr().out
    assert "PARTIAL report: 1 run not finished yet:" in out
    assert f"{stopped} (ppo, toy-bimodal, seed 0): evaluated up to 256 of 1,024 steps" in out
    assert "## Missing runs (1)" in (tmp_path / "r" / "summary.md").read_text()


def test_runs_with_no_variant_on_every_task_are_refused_with_what_to_train(tmp_path, tracking_uri, capsys):
    """Runs started by hand: no study will add the missing ones, so the error names the runs to
    train, not a study to report again."""

    ppo = trained(tmp_path, tracking_uri, "ppo")
    other = trained(tmp_path, tracking_uri, "other", task="toy-bimodal-easy", overrides={"clip": 0.3})
    assert (
        main(["report", "--runs", str(ppo), str(other), "--out", str(tmp_path / "r"), "--reps", "200"]) == 2
    )
    err = capsys.readouterr().err
    assert "no variant of the runs given has a finished run on every task yet;" in err
    assert "ppo clip=0.3: left out of the aggregates, no finished run on toy-bimodal." in err
    assert err.rstrip().endswith("Give each variant a finished run on every task.")
    assert "study" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "a0", "./a0"], "the run a0 is given more than once"),
        (
            ["--runs", "a0", "again"],
            "a0 and again are both ppo on toy-bimodal with seed 0; give each run once",
        ),
        (["--runs", "a0", "nowhere"], "holds no run checkpoint"),
        # The folder of the runs, given for them.
        (["--runs", "."], "has no checkpoint.pt file, but 2 run directories inside it hold one (a0, again)"),
        (["demo", "--runs", "a0"], "give a study name or --runs DIR ..., one of the two."),
        ([], "give a study name or --runs DIR ..., one of the two."),
        (
            ["--runs", "a0", "--storage", "x.journal"],
            "--storage: a study's; --runs reads the run directories",
        ),
        (["demo", "--name", "mine"], "--name names a report of --runs"),
        (
            ["--runs", "a0", "--name", "../elsewhere"],
            "--name '../elsewhere' is not a report name: use at most 64",
        ),
    ],
)
def test_bad_runs_are_one_clear_error(tmp_path, tracking_uri, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    for name in ("a0", "again"):
        trained(tmp_path, tracking_uri, name)
    assert main(["report", *argv, "--reps", "200"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "reports").exists()


def test_a_run_whose_training_diverged_counts_at_its_tasks_worst_score(tmp_path, tracking_uri, capsys):
    """A diverged run keeps its last good checkpoint, short of its budget: the report called it
    "not finished yet" and PARTIAL, though it never will be; a study counts such a unit with its
    task's worst score, and now so does a report of runs."""

    good = trained(tmp_path, tracking_uri, "good", seed=0)
    overrides = {**TINY["overrides"], "reward_scale": 1e308}  # the returns overflow to inf
    done = execute(
        request(tmp_path, tracking_uri, out_dir=tmp_path / "bad", overrides=overrides), progress=False
    )
    assert done.status == "FAILED" and (tmp_path / "bad" / "diverged.txt").read_text().startswith(
        "stopped at"
    )
    assert main(["report", "--runs", str(tmp_path / "bad"), str(good), "--out", str(tmp_path / "report"),
                 "--reps", str(REPS)]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "PARTIAL" not in out.out and "counted with the task's worst score" in out.err
    table = pd.read_csv(tmp_path / "report" / "results.csv")
    bad = table[table.variant == "ppo reward_scale=1e+308"]
    assert list(bad.eval_return) == [0.0] and list(bad.env_step) == [TINY["steps"]]
    # Given first, it is the first variant, though its rows are not evaluations.
    assert table.variant.iloc[0] == "ppo reward_scale=1e+308"
