"""The benchmark commands run and print their tables (tiny settings: this checks the code, not speed)."""

from __future__ import annotations

import math
import re
import time

import pytest
from markdown_table import table_rows

from harness.benchmarks import envs as bench_envs
from harness.benchmarks import gorl as bench_gorl
from harness.benchmarks import train as bench_train
from harness.cli import main

# The benchmark modules are imported here, before any test patches one: `bench gorl` imports
# `measure_together` from `bench train` by name, so a first import while a test had patched it
# would keep the patch for every later test in the process.


def test_bench_train_times_every_algorithm_against_the_first(capsys):
    argv = ["bench", "train", "--algos", "ppo", "fpo", "gorl-fm", "--tasks", "toy-bimodal",
            "--iterations", "1", "--set", "num_envs=8", "--set", "rollout_steps=8"]  # fmt: skip
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row[:3] for row in rows] == [["toy-bimodal", algo, "64"] for algo in ("ppo", "fpo", "gorl-fm")]
    assert rows[0][-1] == "1.00x"
    assert all(float(row[4].replace(",", "")) > 0 and re.fullmatch(r"\d+\.\d\dx", row[-1]) for row in rows)


def test_bench_gorl_adds_up_a_run(capsys):
    assert main(["bench", "gorl", "--task", "toy-bimodal", "--iterations", "1", "--steps", "100000"]) == 0
    out = capsys.readouterr().out
    assert [row[0] for row in table_rows(out)] == [
        "PPO", "GoRL-FM stage 0 (identity decoder)", "GoRL-FM stage >= 1 (flow decoder)"
    ]  # fmt: skip
    assert re.search(r"One refit: 512 env steps and 1,000 decoder steps in \d+\.\d s\.", out)
    assert re.search(r"A 100,000-step run \(3 refits\): .* = \d+\.\d\dx per counted env step\.", out)


def test_the_agents_timed_together_take_their_iterations_in_turn():
    """Timed one after another, the phases of `bench gorl` met a machine whose speed drifted:
    one code measured 1.13x to 1.44x PPO's time on walker-walk."""

    calls = []

    class Agent:
        def __init__(self, name: str, batch_size: int, metrics: dict[str, float]) -> None:
            self.name, self.batch_size, self.metrics, self.counted_steps = name, batch_size, metrics, 0

        def train_iteration(self) -> dict[str, float]:
            calls.append(self.name)
            self.counted_steps += self.batch_size
            return self.metrics

    # b times no learner share (an algorithm of another family): not required
    agents = {"a": Agent("a", 64, {"perf/learner_fraction": 0.5}), "b": Agent("b", 32, {})}
    *_, results = bench_train.measure_together(agents, iterations=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # a warm-up each, then rounds
    assert results["a"]["rounds"] == 3 and results["a"]["steps"] == 192 and results["b"]["steps"] == 96
    assert all(r["seconds"] > 0 for r in results.values())
    assert results["a"]["learner"] == pytest.approx(0.5) and math.isnan(results["b"]["learner"])


def test_a_log_shows_the_benchmark_alive_during_a_long_warm_up(capsys, slow_work):
    """`bench train --preset paper` wrote nothing to a log for minutes: the warm-up iteration ran
    before the progress display opened, and lines came only as iterations ended. Here the warm-up
    takes 0.6 s, the timed iteration no time, and a line is due every 0.2 s."""

    class SlowAgent:
        counted_steps = 0

        def train_iteration(self) -> dict[str, float]:
            if self.counted_steps == 0:
                time.sleep(0.6)
            self.counted_steps += 1
            return {}

    *_, results = bench_train.measure_together({"slow": SlowAgent()}, iterations=1)
    assert results["slow"]["steps"] == 1
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("slow: 0/1 iterations after a warm-up (") for line in lines), lines


def test_a_log_shows_bench_gorl_alive_while_it_times_a_refit(capsys, slow_work):
    """The refit was timed with no display: the `paper` preset's (4,096 episodes and 50,000
    decoder steps) left a log silent for as long as it ran. Here it takes 0.6 s more than its own
    and a line is due every 0.2 s."""

    import algorithms

    slow_work(algorithms.get("gorl-fm").agent_cls, "refit")
    assert main(["bench", "gorl", "--task", "toy-bimodal", "--iterations", "1", "--steps", "100000"]) == 0
    assert "timing one refit: 0/1 (" in capsys.readouterr().err


def test_bench_gorl_prints_the_rounds_timed_before_an_interrupt(capsys, monkeypatch):
    """The three phases' table came after the refit's timing, at the very end: Ctrl-C after
    minutes of interleaved iterations showed nothing measured."""

    def one_round_then_interrupt(agents, iterations):
        rounds = bench_train.measure_together(agents, iterations)
        yield next(rounds)
        rounds.close()
        raise KeyboardInterrupt  # Ctrl-C during the second round

    monkeypatch.setattr(bench_gorl, "measure_together", one_round_then_interrupt)
    argv = ["bench", "gorl", "--task", "toy-bimodal", "--iterations", "2", "--steps", "100000"]
    assert main(argv) == 130
    out = capsys.readouterr().out
    assert [row[0] for row in table_rows(out)][0] == "PPO" and len(table_rows(out)) == 3
    assert "stopped early: 1 of 2 iterations timed; no refit timed." in out
    assert "One refit" not in out


def test_bench_train_prints_the_rounds_timed_before_an_interrupt(capsys, monkeypatch):

    original = bench_train.measure_together

    def interrupted_after_a_round(agents, iterations):
        rounds = original(agents, iterations)
        yield next(rounds)
        rounds.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_train, "measure_together", interrupted_after_a_round)
    assert main([*TRAIN, "--iterations", "3"]) == 130
    out = capsys.readouterr().out
    assert [row[:3] for row in table_rows(out)] == [["toy-bimodal", "ppo", "64"]]
    assert "toy-bimodal, ppo stopped early: 1 of 3 iterations timed." in out


def test_bench_gorl_times_the_diffusion_variant_with_overrides(capsys):
    argv = ["bench", "gorl", "--algo", "gorl-diffusion", "--set", "decoder_steps=20", "--task", "toy-bimodal",
            "--iterations", "1", "--steps", "100000"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "preset cpu decoder_steps=20" in out
    assert [row[0] for row in table_rows(out)][1:] == [
        "GoRL-Diffusion stage 0 (identity decoder)", "GoRL-Diffusion stage >= 1 (diffusion decoder)"
    ]  # fmt: skip
    assert re.search(r"One refit: 512 env steps and 20 decoder steps in \d+\.\d s\.", out)


def test_bench_envs_compares_the_backends(capsys):
    argv = ["bench", "envs", "--tasks", "cheetah-run", "--sizes", "2", "--steps", "5", "--repeats", "1",
            "--markdown"]  # fmt: skip
    assert main(argv) == 0
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0][0] == "cheetah-run" and rows[0][1] == "2"


def test_bench_envs_prints_the_rows_measured_before_an_interrupt(capsys, monkeypatch):
    """The table was printed at the end only: Ctrl-C after minutes of measuring showed nothing."""

    measured = iter([{"dm_control": 100.0, "fast": 300.0, "raw": 400.0}])

    def measure_then_interrupt(task, num_envs, steps, repeats):
        try:
            return next(measured)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C during the second measurement

    monkeypatch.setattr(bench_envs, "measure", measure_then_interrupt)
    argv = ["bench", "envs", "--tasks", "cheetah-run", "--sizes", "2", "4", "--markdown"]
    assert main(argv) == 130
    rows = table_rows(capsys.readouterr().out)
    assert rows == [["cheetah-run", "2", "100", "300", "3.00x", "400", "75%"]]


def test_bench_refuses_an_unknown_algorithm_or_task_before_printing(capsys):
    assert main(["bench", "train", "--algos", "ppo", "pop"]) == 2
    assert "unknown algorithm 'pop'" in capsys.readouterr().err
    assert main(["bench", "train", "--tasks", "walker-wlak"]) == 2
    captured = capsys.readouterr()
    assert "walker-walk" in captured.err and captured.out == ""  # no table header before the error


# Each argv is otherwise tiny, so that before the counts were checked the test failed in seconds.
TRAIN = ["bench", "train", "--tasks", "toy-bimodal", "--set", "num_envs=8", "--set", "rollout_steps=8"]
GORL = ["bench", "gorl", "--task", "toy-bimodal", "--steps", "100000"]
ENVS = ["bench", "envs", "--tasks", "cheetah-run", "--sizes", "2", "--steps", "5", "--repeats", "1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*TRAIN, "--iterations", "-1"], "--iterations: must be a positive integer"),
        ([*TRAIN, "--iterations", "0"], "--iterations: must be a positive integer"),
        ([*GORL, "--iterations", "0"], "--iterations: must be a positive integer"),
        ([*GORL, "--iterations", "1", "--steps", "0"], "--steps: must be a positive integer"),
        ([*ENVS, "--steps", "0"], "--steps: must be an integer from 1 to 10,000, got 0"),
        ([*ENVS, "--steps", "-2"], "--steps: must be an integer from 1 to 10,000, got -2"),
        ([*ENVS, "--repeats", "0"], "--repeats: must be an integer from 1 to 1,000, got 0"),
        (
            [*ENVS, "--repeats", "1e9"],
            "--repeats: must be an integer from 1 to 1,000, got 1e9",
        ),  # ran for days
        # A row timed against itself
        ([*ENVS, "--tasks", "walker-walk", "cheetah-run", "walker-walk"], "--tasks: walker-walk given twice"),
        ([*TRAIN, "--algos", "ppo", "ppo"], "--algos: ppo given twice; give each once"),
        ([*ENVS, "--sizes", "2", "0"], "--sizes: must be an integer from 1 to 4,096, got 0"),
        # Their actions were drawn beforehand: 10^12 steps asked numpy for 349 TiB, a billion envs
        # built MuJoCo envs until memory ran out.
        ([*ENVS, "--steps", "1e12"], "--steps: must be an integer from 1 to 10,000, got 1e12"),
        ([*ENVS, "--sizes", "1000000000"], "--sizes: must be an integer from 1 to 4,096, got 1000000000"),
    ],
)
def test_bench_refuses_a_count_out_of_range_before_timing(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err


def test_bench_gorl_refuses_a_budget_run_would_refuse(capsys):
    argv = ["bench", "gorl", "--task", "toy-bimodal-easy", "--iterations", "1", "--steps"]
    assert main([*argv, "100", "--set", "num_refits=0"]) == 2
    assert "--steps 100 is less than one policy update" in capsys.readouterr().err
    assert main([*argv, "8192"]) == 2  # two PPO updates for four encoder stages
    assert "too few for 4 encoder stages" in capsys.readouterr().err
    # Below one update, the budget the four stages need, not one update's (refused next).
    assert main([*argv, "100"]) == 2
    assert "they need 5 updates, a budget of 20,480 env steps" in capsys.readouterr().err


def test_bench_train_checks_every_configuration_before_printing(capsys):
    # ppo has no `num_refits`; toy-bimodal has no fast backend: both refused before any timing.
    assert main([*TRAIN, "--algos", "gorl-fm", "ppo", "--set", "num_refits=1", "--iterations", "1"]) == 2
    captured = capsys.readouterr()
    assert "unknown config key 'num_refits'" in captured.err and captured.out == ""
    assert main([*TRAIN, "--set", "env_backend=fast", "--iterations", "1"]) == 2
    captured = capsys.readouterr()
    assert "toy-bimodal has no fast backend" in captured.err and captured.out == ""
    # Its budget is its own: a schedule that does not fit it names it, not a --steps it has none of.
    assert main([*TRAIN, "--algos", "gorl-fm", "--set", "stages=[98304,196608]", "--iterations", "1"]) == 2
    assert "error: the benchmark's run budget 128000: stages" in capsys.readouterr().err


def test_bench_gorl_keeps_refits_out_of_its_stage_timings(capsys):
    """`encoder_steps_per_refit` takes precedence over the `num_refits = 0` of the stage timings."""

    argv = [*GORL, "--iterations", "2", "--set", "num_envs=8", "--set", "rollout_steps=8",
            "--set", "encoder_steps_per_refit=64"]  # fmt: skip
    assert main(argv) == 0
    assert re.search(r"A 100,000-step run \(\d+ refits\)", capsys.readouterr().out)
    # bench train times stage 0 only, and says so when a refit would fall inside it.
    short_stages = ["--set", "encoder_steps_per_refit=64"]
    assert main([*TRAIN, "--algos", "gorl-fm", "--iterations", "2", *short_stages]) == 2
    assert "a decoder refit fell inside the timed iterations of gorl-fm" in capsys.readouterr().err
