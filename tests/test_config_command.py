"""`gorl-bench config`: the resolved config, the layer that set each key, and its source."""

from __future__ import annotations

import tomllib

import pytest
from markdown_table import table_rows

import algorithms
from algorithms.config import as_dict, field_notes, origins, resolve
from harness.cli import main


def table(out: str) -> dict[str, list[str]]:
    """The one Markdown table in `out`, keyed by its first column."""

    return {row[0]: row[1:] for row in table_rows(out)}


def test_each_key_names_the_layer_that_set_it():
    spec = algorithms.get("gorl-fm")
    layers = origins(spec, "paper", "walker-walk", {"lr": 1e-4})
    assert layers["lr"] == "--set" and layers["warm_value"] == "task walker-walk"
    assert layers["num_envs"] == "default"  # the paper preset is the class defaults
    assert origins(spec, "cpu", "cheetah-run", {})["num_envs"] == "preset cpu"


def test_the_command_prints_values_layers_and_sources(capsys):
    assert main(["config", "gorl-fm", "--task", "walker-walk", "--set", "num_refits=3"]) == 0
    out = capsys.readouterr().out
    rows = table(out[: out.index("Stages of a")])
    assert len(rows) == len(as_dict(resolve(algorithms.get("gorl-fm"), "cpu", "walker-walk", {})))
    assert rows["num_refits"][:2] == ["3", "--set"]
    assert rows["num_envs"][:2] == ["64", "preset cpu"]
    assert rows["clip"][2].startswith("0.15: official release")  # the class default and its citation


@pytest.mark.parametrize("algo", algorithms.names())
def test_every_default_says_where_it_comes_from(algo):
    notes = field_notes(algorithms.get(algo).config_cls)
    assert [key for key, note in notes.items() if not note.strip()] == []


def test_the_header_says_when_the_task_is_the_default(capsys):
    """Without --task, walker-walk's overrides applied without a word (rows read "task walker-walk")."""

    assert main(["config", "ppo"]) == 0
    assert capsys.readouterr().out.startswith("ppo, preset cpu, task walker-walk (the default; --task for")
    assert main(["config", "ppo", "--task", "walker-walk"]) == 0
    assert capsys.readouterr().out.startswith("ppo, preset cpu, task walker-walk: ")


def test_toml_output_is_the_resolved_config(capsys):
    assert main(["config", "gorl-diffusion", "--preset", "paper", "--task", "hopper-stand", "--toml"]) == 0
    loaded = tomllib.loads(capsys.readouterr().out)["config"]
    expected = as_dict(resolve(algorithms.get("gorl-diffusion"), "paper", "hopper-stand", {}))
    assert loaded == {key: "none" if value is None else value for key, value in expected.items()}
    assert loaded["later_reset_encoder"] == [True, False]


def test_bad_input_is_one_line(capsys):
    assert main(["config", "gorl-fm", "--set", "lr=-1"]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    for option in ("--preset", "--task"):  # silently the default before, where `run` refuses it
        with pytest.raises(SystemExit):
            main(["config", "ppo", option, ""])
        assert f"argument {option}: must not be empty" in capsys.readouterr().err


def test_gorl_shows_its_stages_with_their_settings(capsys):
    argv = ["config", "gorl-fm", "--preset", "paper", "--task", "walker-walk", "--steps", "180000000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    stages = out[out.index("Stages of a 180,000,000-step run") :]
    rows = table(stages)  # keyed by stage number
    assert list(rows) == ["0", "1", "2", "3"]
    assert rows["0"][0] == "0-59,965,440" and rows["3"][0].endswith("180,879,360")  # 61/62/30/31 updates
    clip, lr, max_grad_norm = (0, 1, 3)  # columns after the steps: clip, lr, latent_reg_coef, grad-norm
    assert [rows[k][1 + clip] for k in "0123"] == ["0.15", "0.3", "0.3", "0.3"]
    assert [rows[k][1 + lr] for k in "0123"] == ["0.001", "0.001", "0.001", "0.0003"]
    assert [rows[k][1 + max_grad_norm] for k in "0123"] == ["0.5", "1.0", "1.0", "1.0"]
    assert main(["config", "gorl-fm", "--steps", "8192"]) == 2  # two PPO updates
    assert "too few for 4 encoder stages" in capsys.readouterr().err


def test_without_steps_a_preset_whose_schedule_needs_more_is_shown_with_a_note(capsys):
    """`config gorl-fm --preset paper` failed: the default budget is two of its 983,040-step updates."""

    assert main(["config", "gorl-fm", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert table(out)["num_envs"][:2] == ["2048", "default"] and "Stages of a" not in out
    assert "No stage schedule shown: a run's default budget (--steps 1,000,000) does not fit" in out
    assert "2 PPO updates of 983,040 steps, too few for 4 encoder stages" in out
    assert main(["config", "gorl-fm", "--preset", "paper", "--steps", "1000000"]) == 2  # given: refused
    assert "too few for 4 encoder stages" in capsys.readouterr().err
    # Stages in env steps fit their own sum, not the default budget (nor any made-up one).
    assert main(["config", "gorl-fm", "--task", "walker-walk", "--set", "stages=[98304,196608]"]) == 0
    assert "sum to 294912; give fractions of the budget" in capsys.readouterr().out
    # A refusal that no budget lifts is still one, with or without --steps.
    assert main(["config", "gorl-fm", "--preset", "paper", "--set", "latent_dim=3"]) == 2
    assert "the latent must have the action's size" in capsys.readouterr().err


def test_what_run_refuses_is_refused(capsys):
    argv = ["config", "gorl-fm", "--task", "toy-bimodal-easy", "--set", "latent_dim=5"]
    assert main(argv) == 2
    assert "the latent must have the action's size (2 for toy-bimodal-easy)" in capsys.readouterr().err
    assert main([*argv, "--toml", "--steps", "1000000"]) == 2  # --toml is checked once given a budget
    assert "the latent must have the action's size" in capsys.readouterr().err
    assert main(["config", "ppo", "--steps", "100"]) == 2
    assert "--steps 100 is less than one policy update" in capsys.readouterr().err
    assert main(["config", "ppo", "--task", "toy-bimodal", "--set", "env_backend=fast"]) == 2
    assert "toy-bimodal has no fast backend" in capsys.readouterr().err
    assert main(["config", "gorl-fm", "--set", "decoder_steps=0"]) == 2  # named as the user set it
    assert "decoder_steps must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["config", "ppo", "--steps", "-3"])
    assert exited.value.code == 2
    assert "argument --steps: must be a positive integer, got -3" in capsys.readouterr().err


def test_a_long_list_is_shortened_in_its_cell(capsys):
    stages = "[" + ", ".join(["0.1"] * 10) + "]"
    assert main(["config", "gorl-fm", "--set", f"stages={stages}", "--set", "num_refits=null"]) == 0
    out = capsys.readouterr().out
    assert table(out[: out.index("Stages of a")])["stages"][0] == (
        "[0.1, 0.1, 0.1, 0.1, ..., 0.1, 0.1, 0.1, 0.1] (10 items)"
    )
    assert len(table(out[out.index("Stages of a") :])) == 10  # every stage keeps its own row


def test_a_none_in_the_toml_output_reads_back_as_none(capsys):
    assert main(["config", "ppo", "--set", "max_grad_norm=none", "--toml"]) == 0
    written = tomllib.loads(capsys.readouterr().out)["config"]
    assert written["max_grad_norm"] == "none"
    assert resolve(algorithms.get("ppo"), "cpu", "walker-walk", written).max_grad_norm is None


def test_a_spec_writes_none_as_the_word_for_optional_keys():
    """TOML has no null: `max_grad_norm = "none"` in a study spec means None, as `--set` does; a
    string option whose value is the word "none" keeps it."""

    spec = algorithms.get("gorl-fm")
    config = resolve(spec, "cpu", "cheetah-run", {"max_grad_norm": "none", "latent_reg": "none"})
    assert config.max_grad_norm is None and config.latent_reg == "none"


def test_output_to_a_reader_that_has_gone_ends_quietly():
    """`gorl-bench config ppo | head` ended in a BrokenPipeError traceback."""

    import subprocess
    import sys

    command = [sys.executable, "-m", "harness.cli", "config", "ppo"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before the first line is written
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141 and err == "", err


def test_a_default_made_by_a_factory_or_missing_is_shown_as_a_value():
    """`config` printed <dataclasses._MISSING_TYPE object at 0x...> for such fields."""

    import dataclasses

    from harness.commands.config import _default

    @dataclasses.dataclass(frozen=True)
    class Config:
        needed: int
        hidden: list = dataclasses.field(default_factory=lambda: [64, 64])
        width: int = 32

    shown = {field.name: _default(field) for field in dataclasses.fields(Config)}
    assert shown == {"hidden": [64, 64], "width": 32, "needed": "(required)"}
