"""`run --config FILE` and `config --config FILE`: settings from a TOML file, such as a run's config.toml."""

from __future__ import annotations

import contextlib
import io
import tomllib
from pathlib import Path

import pytest
from test_config_command import table
from test_run import SMALL, TINY, TOY, sets

from harness.checkpoint import load_checkpoint
from harness.cli import main
from harness.config_file import choices, load_config_file


def run_cli(*argv: str, tracking_uri: str) -> int:
    return main(["run", *argv, "--tracking-uri", tracking_uri, "--no-progress"])


def config_output(*argv: str) -> str:
    """What `gorl-bench config ARGV` prints."""

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["config", *argv]) == 0
    return text.getvalue()


def write_config(path: Path, *argv: str) -> Path:
    """The `config ... --toml` output for `argv`, saved in `path`."""

    path.write_text(config_output(*argv, "--toml"))
    return path


def test_a_run_s_config_file_runs_it_again_exactly(tmp_path, tracking_uri):
    first, again, other_seed = tmp_path / "first", tmp_path / "again", tmp_path / "other-seed"
    argv = ["--algo", "ppo", "--task", TOY, "--seed", "3", "--steps", str(TINY["steps"]), *sets(SMALL)]
    assert run_cli(*argv, "--set", "lr=0.001", "--out", str(first), tracking_uri=tracking_uri) == 0
    assert (
        run_cli("--config", str(first / "config.toml"), "--out", str(again), tracking_uri=tracking_uri) == 0
    )
    assert (again / "config.toml").read_text() == (first / "config.toml").read_text()
    history = load_checkpoint(first)["progress"]["history"]
    assert load_checkpoint(again)["progress"]["history"] == history
    # An option on the command line wins over the file's [run] table.
    assert run_cli("--config", str(first / "config.toml"), "--seed", "4", "--out", str(other_seed),
                   tracking_uri=tracking_uri) == 0  # fmt: skip
    written = tomllib.loads((other_seed / "config.toml").read_text())
    assert written["run"]["seed"] == 4 and written["config"]["lr"] == 0.001
    assert load_checkpoint(other_seed)["progress"]["history"] != history


def test_a_run_s_choices_carry_to_another_task_whose_overrides_stay(tmp_path):
    """finger-spin's gamma 0.95 is a task override: a finger-spin run's file does not carry it to
    cheetah-run, and a cheetah-run run's file does not take it from finger-spin."""

    finger = write_config(tmp_path / "finger.toml", "ppo", "--task", "finger-spin", "--set", "lr=0.002")
    cheetah = write_config(tmp_path / "cheetah.toml", "ppo", "--task", "cheetah-run", "--set", "lr=0.002")
    for path in (finger, cheetah):
        assert choices(load_config_file(path), "ppo") == {"lr": 0.002}
    for path, task, gamma in ((finger, "cheetah-run", "0.99"), (cheetah, "finger-spin", "0.95")):
        rows = table(config_output("--config", str(path), "--task", task))
        assert rows["gamma"][:2] == [gamma, "preset cpu" if task == "cheetah-run" else f"task {task}"]
        assert rows["lr"][:2] == ["0.002", path.name]
    # Without the [run] table naming what it was resolved for, every value applies as written.
    verbatim = tmp_path / "verbatim.toml"
    verbatim.write_text(finger.read_text().split("[config]")[1].join(["[config]", ""]))
    rows = table(config_output("--config", str(verbatim), "ppo", "--task", "cheetah-run"))
    assert rows["gamma"][:2] == ["0.95", "verbatim.toml"]


def test_a_file_with_a_byte_order_mark_is_read(tmp_path):
    """Saved by an editor that starts UTF-8 files with a BOM: "not valid TOML (at line 1, column 1)"."""

    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[config]\nlr = 0.002\n".encode())
    assert load_config_file(path).config == {"lr": 0.002}


def test_a_budget_in_scientific_notation_is_read_as_the_command_line_reads_it(tmp_path):
    path = tmp_path / "budget.toml"
    path.write_text("[run]\nsteps = 1e6\nseed = 2.0\n")
    run = load_config_file(path).run
    assert run == {"steps": 1_000_000, "seed": 2} and all(type(value) is int for value in run.values())


def test_options_and_set_win_over_the_file(tmp_path):
    path = write_config(tmp_path / "mine.toml", "gorl-fm", "--task", "cheetah-run", "--set", "num_refits=2",
                        "--set", "lr=0.002")  # fmt: skip
    out = config_output("--config", str(path), "--preset", "paper", "--set", "lr=0.1")
    assert out.startswith("gorl-fm, preset paper, task cheetah-run: ")  # algo and task from the file
    rows = table(out.split("\n\n")[1])  # the keys, not the note on the paper preset's budget
    assert rows["lr"][:2] == ["0.1", "--set"] and rows["num_refits"][:2] == ["2", "mine.toml"]
    assert rows["num_envs"][:2] == ["2048", "default"]  # the paper preset, not the file's cpu values


GORL_FILE = '[run]\nalgo = "gorl-fm"\npreset = "cpu"\ntask = "toy-bimodal"\n[config]\nnum_refits = 2\n'


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (None, [], "config file 'settings.toml' does not exist."),
        ("directory", [], "config file 'settings.toml' is a directory, not a TOML file."),
        ("[config\n", [], "settings.toml: not valid TOML: "),
        ("lr = 0.1\n", [], "'lr' (config keys go under [config]): a config file holds a [run] table"),
        ("[runs]\nseed = 1\n", [], "'runs' (no such table)"),
        (
            "[run]\nsead = 1\n",
            [],
            "[run] has no key 'sead'; it takes algo, task, seed, steps, preset, device.",
        ),
        ('[run]\nseed = "1"\n', [], "[run] seed must be an integer, got '1'."),
        ("[run]\nsteps = true\n", [], "[run] steps must be an integer, got True."),
        ("[run]\nsteps = 4096.5\n", [], "[run] steps must be an integer, got 4096.5."),
        ("[run]\nsteps = 1e23\n", [], "[run] steps must be an integer, got 1e+23."),  # not exact
        ("[run]\nsteps = -5\n", [], "[run] steps must be a positive number of env steps, got -5."),
        ("[run]\nseed = -1\n", [], "[run] seed must be an integer from 0 to 2**32 - 1, got -1."),
        ('[run]\nalgo = "nope"\npreset = "cpu"\ntask = "toy-bimodal"\n', [], "Valid algorithms: "),
        ('[run]\nalgo = "ppo"\npreset = "cpu"\ntask = "cheeta-run"\n', [], "settings.toml: unknown task"),
        ("[config]\nentropy_coeff = 0.1\n", [], "'entropy_coeff' (did you mean 'entropy_coef'?)"),
        ("[config]\nlr = -1.0\n", [], "lr must be > 0"),
        (GORL_FILE, ["--algo", "ppo"], "settings.toml sets config keys that ppo does not have: 'num_refits'"),
        (GORL_FILE, ["--resume", "run-dir"], "its checkpoint fixes --config."),
    ],
)
def test_a_bad_config_file_is_one_clear_error(
    tmp_path, tracking_uri, capsys, monkeypatch, content, argv, message
):
    monkeypatch.chdir(tmp_path)
    if content == "directory":
        Path("settings.toml").mkdir()
    elif content is not None:
        Path("settings.toml").write_text(content)
    given = [] if "--algo" in argv or "algo" in (content or "") else ["--algo", "ppo"]
    argv = [*given, "--task", TOY, *argv] if "--resume" not in argv else argv
    assert run_cli("--config", "settings.toml", *argv, tracking_uri=tracking_uri) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not Path("runs").exists()  # refused before anything was created


def test_config_without_an_algorithm_or_a_file_naming_one_is_one_clear_error(tmp_path, capsys):
    assert main(["config"]) == 2
    assert "name the algorithm (gorl-bench config ALGO), or give a --config file" in capsys.readouterr().err
    (tmp_path / "bare.toml").write_text("[config]\nlr = 0.001\n")
    assert main(["config", "--config", str(tmp_path / "bare.toml")]) == 2
    assert "name the algorithm" in capsys.readouterr().err
