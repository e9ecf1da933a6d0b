"""Study specs: validation errors, unit expansion and seed derivation (no training runs)."""

from __future__ import annotations

import os
import textwrap
import tomllib

import pytest

import algorithms
import studies
from harness.errors import UserError
from studies.spec import SPEC_DIR, derive_seed, load_spec, parse_spec, variant_dir

GRID = """
kind = "grid"
description = "test"
algo = "ppo"
tasks = ["toy-bimodal"]
seeds = 2
steps = 4096
"""


def write(tmp_path, text: str, name: str = "study"):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def ppo_key() -> str:
    """A float config key of the ppo algorithm, to sweep in these tests."""

    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(algorithms.get("ppo").config_cls)}
    return next(name for name in ("lr", "learning_rate") if name in fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GRID + "seedz = 3\n[grid]\nlr = [1e-3]\n", "unknown key 'seedz'"),
        (GRID.replace('"grid"', '"gird"') + "[grid]\nlr = [1e-3]\n", "unknown study kind 'gird'"),
        (GRID + "[grid]\nlr = []\n", "non-empty list"),
        (GRID + "[grid]\n", "[grid] table is empty"),
        (
            GRID + "grid = [{lr = [1e-3]}, 5]\n",
            "each [[grid]] entry must be a table of parameter lists, got 5.",
        ),
        (GRID + 'grid = [["lr"]]\n', "must be a table of parameter lists, got ['lr']."),
        (GRID, "needs a [grid] table"),
        (GRID.replace('"ppo"', '"ppp"') + "[grid]\nlr = [1e-3]\n", "unknown algorithm 'ppp'"),
        (GRID.replace('"toy-bimodal"', '"no-such-task"') + "[grid]\nlr = [1e-3]\n", "no-such-task"),
        (GRID.replace("seeds = 2", "seeds = 0") + "[grid]\nlr = [1e-3]\n", "seeds must be at least 1"),
        (
            GRID.replace("steps = 4096", "steps = 1") + "[grid]\nlr = [1e-3]\n",
            "steps 1 is less than one policy update (4,096 env steps)",
        ),
        (GRID + "[grid]\neval_points = [5000]\n", "eval_points 5000 is more than steps 4096"),
        (GRID + "[grid]\nno_such_key = [1, 2]\n", "unknown config key 'no_such_key'"),
        (  # the grid's values used to win silently
            GRID + "[fixed]\nlr = 1e-3\n[grid]\nlr = [1e-4, 1e-2]\n",
            "keys ['lr'] are in [fixed] and swept by every grid table, so their [fixed] values",
        ),
        (GRID.replace('"grid"', '"compare"').replace('algo = "ppo"\n', ""), "[variants.<label>]"),
        (GRID.replace('"grid"', '"tune"') + "[space.lr]\nlow = 1e-3\nhigh = 1e-2\n", "needs max_trials"),
        (
            GRID.replace('"grid"', '"tune"') + "max_trials = 3\n[space.lr]\nlow = 1e-2\nhigh = 1e-3\n",
            "low < high",
        ),
        (
            GRID.replace('"grid"', '"tune"')
            + 'max_trials = 3\npruner = "mediane"\n[space.lr]\nchoices = [1e-3]\n',
            "Did you mean median",
        ),
        (GRID.replace("seeds = 2", 'seeds = "2"') + "[grid]\nlr = [1e-3]\n", "seeds must be an integer"),
        (
            GRID.replace("seeds = 2", "seeds = 1_000_000_000") + "[grid]\nlr = [1e-3, 2e-3]\n",
            "the study lists 2,000,000,000 units (2 configurations x 1,000,000,000 seeds x 1 task); "
            "a study holds at most 100,000",
        ),
        (  # ten parameters of ten values: listing the grid alone would never end
            GRID + "[grid]\n" + "".join(f"p{i} = {list(range(10))}\n" for i in range(10)),
            "the study lists 20,000,000,000 units (10,000,000,000 configurations",
        ),
        (
            GRID.replace('"grid"', '"tune"').replace("seeds = 2", "seeds = 200_000")
            + "max_trials = 3\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n",
            "each trial of the study runs 200,000 units",
        ),
        (
            GRID.replace('"grid"', '"tune"') + "max_trials = true\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n",
            "max_trials must be a positive integer, got True",
        ),
        (GRID + "max_trials = 0\n[grid]\nlr = [1e-3]\n", "max_trials must be a positive integer, got 0"),
        (
            GRID.replace('"grid"', '"tune"')
            + "max_trials = 4\nconcurrent_trials = 0\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n",
            "concurrent_trials must be an integer from 1 to 1024 (the most trials that run at once;",
        ),
        (
            GRID.replace('"grid"', '"tune"')
            + "max_trials = 4\nconcurrent_trials = 2.5\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n",
            "concurrent_trials must be an integer from 1 to 1024 (the most trials that run at once; each "
            "new trial is proposed from the trials that many before it), got 2.5.",
        ),
        (  # said "did you mean ..." of a key that belongs to another kind of study
            GRID + "concurrent_trials = 2\n[grid]\nlr = [1e-3]\n",
            "unknown key 'concurrent_trials' (a key of tune studies) in the spec of a grid study",
        ),
        (  # no hint where a config key goes
            GRID + "lr = 1e-3\n[grid]\nclip = [0.1]\n",
            "unknown key 'lr' (a config key: give it in [fixed], or sweep it in [grid])",
        ),
        (  # "'algo', 'grid' (did you mean 'kind'?)"
            GRID.replace('"grid"', '"compare"') + "[grid]\nclip = [0.1]\n",
            "unknown keys 'algo' (a key of grid and tune studies), 'grid' (a key of grid studies) in the "
            "spec of a compare study. Valid keys: description, kind, max_trials, name, preset, seed, "
            "seeds, steps, tasks, variants (each [[variants]] table names its algo and settings).",
        ),
        (  # `study run` and `study status` overflowed computing the ETA after the first trial
            GRID.replace('"grid"', '"tune"')
            + "max_trials = 1_000_000_000_000\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n",
            "a tune study's max_trials must be at most 100,000, got 1,000,000,000,000",
        ),
        (
            GRID.replace('"grid"', '"tune"') + "max_trials = 3\n[space.epochs]\nlow = 1.5\nhigh = 4\n",
            "epochs is an integer, so low and high must be whole numbers, got low=1.5",
        ),
        (
            GRID.replace('"grid"', '"tune"')
            + 'max_trials = 3\nsampler = "cmaes"\n[space.lr]\nlow = 1e-3\nhigh = 1e-2\n'
            + "[space.gamma]\nchoices = [0.99, 0.995]\n",
            "it would draw ['gamma'] at random in every trial",
        ),
        (  # the space's corner checked, named as such (it was "configuration 'low'")
            GRID.replace('"grid"', '"tune"') + "max_trials = 3\n[space.num_refit]\nlow = 1\nhigh = 3\n",
            "the search space's lower corner (every range at its low end) on toy-bimodal: unknown config "
            "key 'num_refit'",
        ),
        (
            GRID.replace('"grid"', '"tune"') + "max_trials = 3\n[space.gae_lambda]\nlow = 0.9\nhigh = 1.5\n",
            "the search space's upper corner (every range at its high end) on toy-bimodal: invalid config "
            "for ppo: need 0 < gamma",
        ),
        (
            GRID.replace('"grid"', '"tune"')
            + "max_trials = 3\n[space.normalize_obs]\nchoices = [true, 3, false]\n",
            "the search space's choice normalize_obs=3 on toy-bimodal",
        ),
        # Only 'seed' was offered, though a count of seeds was the likelier meaning.
        (GRID + "seedz = 2\n", "unknown key 'seedz' (did you mean 'seed' or 'seeds'?) in the spec"),
        (
            GRID.replace('"grid"', '"compare"').replace('algo = "ppo"\n', "")
            + '[variants." "]\nalgo = "ppo"\n',
            "variant label ' ' is empty; give the variant a name",
        ),
    ],
)
def test_bad_specs_fail_with_a_clear_message(tmp_path, text, message):
    text = text.replace("lr", ppo_key())
    with pytest.raises(UserError) as error:
        load_spec(write(tmp_path, text))
    assert message.replace("lr", ppo_key()) in str(error.value)
    assert str(error.value).startswith("study.toml: ")
    assert "--steps" not in str(error.value)  # a spec's budget is its `steps` key


def test_a_range_samples_the_type_of_its_config_field_however_the_bounds_are_written(tmp_path):
    tune = GRID.replace('"grid"', '"tune"') + "max_trials = 3\n"
    spec = load_spec(write(tmp_path, tune + "[space.epochs]\nlow = 1.0\nhigh = 4.0\n"))
    assert (spec.space[0].low, spec.space[0].high) == (1, 4) and isinstance(spec.space[0].low, int)
    spec = load_spec(write(tmp_path, tune + "[space.max_grad_norm]\nlow = 1\nhigh = 10\n"))
    assert isinstance(spec.space[0].low, float) and isinstance(spec.space[0].high, float)


def test_an_unreadable_spec_file_is_a_clear_error(tmp_path):
    (tmp_path / "latin.toml").write_bytes(b'\xff\xfekind = "tune"\n')
    with pytest.raises(UserError, match="latin.toml: not valid TOML"):
        load_spec(tmp_path / "latin.toml")
    (tmp_path / "adir.toml").mkdir()
    with pytest.raises(UserError, match="is a directory, not a TOML file"):
        load_spec(tmp_path / "adir.toml")
    os.mkfifo(tmp_path / "pipe")  # opening a pipe to read it would wait for a writer forever
    with pytest.raises(UserError, match="is not a regular file"):
        load_spec(tmp_path / "pipe")


def test_unknown_spec_name_lists_the_shipped_ones():
    with pytest.raises(UserError, match="Valid study specs: .*timescale"):
        load_spec("timescal")


def test_grid_union_expands_to_every_unit_once(tmp_path):
    key = ppo_key()
    spec = load_spec(write(tmp_path, GRID + f"[[grid]]\n{key} = [1e-3, 2e-3]\n[[grid]]\n{key} = [5e-4]\n"))
    units = spec.units()
    assert len(units) == 3 * 2  # three configurations x one task x two seeds
    assert len({u.key for u in units}) == len(units)
    assert spec.swept == [key]
    assert {u.variant for u in units} == {f"{key}=0.001", f"{key}=0.002", f"{key}=0.0005"}


def test_overlapping_grid_tables_name_each_configuration_once(tmp_path):
    """A configuration in two tables is one configuration: its units would otherwise run twice,
    identically (the same derived seeds), into one directory."""

    key = ppo_key()
    spec = load_spec(write(tmp_path, GRID + f"[[grid]]\n{key} = [3e-4, 1e-3]\n[[grid]]\n{key} = [1e-3]\n"))
    assert [label for label, _, _ in spec.configurations()] == [f"{key}=0.0003", f"{key}=0.001"]
    assert len({u.key for u in spec.units()}) == len(spec.units()) == 2 * 2
    # One parameter at a time around a centre point: the centre is in both tables, under two labels.
    centre = f"[fixed]\n{key} = 3e-4\nclip = 0.2\n"
    tables = f"[[grid]]\n{key} = [1e-4, 3e-4]\n[[grid]]\nclip = [0.1, 0.2]\n"
    spec = load_spec(write(tmp_path, GRID + centre + tables))
    assert [label for label, _, _ in spec.configurations()] == [f"{key}=0.0001", f"{key}=0.0003", "clip=0.1"]


def test_one_label_for_two_configurations_is_refused(tmp_path):
    text = GRID + '[[grid]]\nclip = [1]\n[[grid]]\nclip = ["1"]\n'
    with pytest.raises(UserError, match="label 'clip=1' names two different configurations"):
        load_spec(write(tmp_path, text), check_configs=False)


def test_unit_seeds_are_deterministic_and_distinct(tmp_path):
    spec = load_spec(write(tmp_path, GRID + f"[grid]\n{ppo_key()} = [1e-3, 2e-3]\n"))
    seeds = [u.seed for u in spec.units()]
    assert seeds == [
        u.seed for u in load_spec(write(tmp_path, GRID + f"[grid]\n{ppo_key()} = [1e-3, 2e-3]\n")).units()
    ]
    assert len(set(seeds)) == len(seeds)
    base = derive_seed(0, "ppo", "cpu", {"lr": 1e-3}, "toy-bimodal", 0)
    assert base == derive_seed(0, "ppo", "cpu", {"lr": 1e-3}, "toy-bimodal", 0)
    others = [
        derive_seed(1, "ppo", "cpu", {"lr": 1e-3}, "toy-bimodal", 0),
        derive_seed(0, "ppo", "cpu", {"lr": 2e-3}, "toy-bimodal", 0),
        derive_seed(0, "ppo", "cpu", {"lr": 1e-3}, "walker-walk", 0),
        derive_seed(0, "ppo", "cpu", {"lr": 1e-3}, "toy-bimodal", 1),
    ]
    assert base not in others and len(set(others)) == len(others)
    assert all(0 <= s < 2**31 for s in [base, *others])
    # The overrides' order is not part of the configuration (a storage may return them sorted).
    assert derive_seed(0, "ppo", "cpu", {"lr": 1e-3, "clip": 0.2}, "toy-bimodal", 0) == derive_seed(
        0, "ppo", "cpu", {"clip": 0.2, "lr": 1e-3}, "toy-bimodal", 0
    )


def test_units_are_listed_seed_major_so_early_results_cover_every_task_and_configuration(tmp_path):
    """Task-major, a partial study (or one cut by max_trials) had no run at all on its last tasks;
    configuration-major, none of its last configurations (a compare study's second variant
    started once every seed of the first had run)."""

    text = GRID.replace('tasks = ["toy-bimodal"]', 'tasks = ["toy-bimodal", "toy-bimodal-easy"]')
    spec = load_spec(write(tmp_path, text + f"[grid]\n{ppo_key()} = [1e-3, 2e-3]\n"))
    low, high = f"{ppo_key()}=0.001", f"{ppo_key()}=0.002"
    toy, easy = "toy-bimodal", "toy-bimodal-easy"
    assert [(u.seed_index, u.variant, u.task) for u in spec.units()] == [
        (0, low, toy), (0, low, easy), (0, high, toy), (0, high, easy),
        (1, low, toy), (1, low, easy), (1, high, toy), (1, high, easy),
    ]  # fmt: skip


SHIPPED = sorted(p.stem for p in SPEC_DIR.glob("*.toml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_validate(name):
    """Every shipped spec validates fully once all of its algorithms are registered.

    Until then its structure and tasks are still checked, and the skip reason (printed by
    pytest -ra) names the missing algorithms.
    """

    spec = load_spec(name, check_configs=False)
    needed = {spec.algo} if spec.algo else {algo for algo, _ in spec.variants.values()}
    missing = sorted(needed - set(algorithms.names()))
    if missing:
        pytest.skip(f"{name}.toml: algorithms {missing} not registered yet; configs not validated")
    load_spec(name)


def test_catalog_lists_the_shipped_specs():
    names = [name for name, _ in studies.catalog()]
    assert {"timescale", "baselines", "regularizer", "prior-anchor", "tune-ppo", "demo"} <= set(names)


def test_compare_and_tune_units(tmp_path):
    key = ppo_key()
    compare = GRID.replace('"grid"', '"compare"').replace('algo = "ppo"\n', "")
    compare += f'[variants.base]\nalgo = "ppo"\n[variants.low]\nalgo = "ppo"\n{key} = 1e-4\n'
    spec = load_spec(write(tmp_path, compare))
    assert [u.key for u in spec.units()] == [
        "base|toy-bimodal|seed0",
        "low|toy-bimodal|seed0",
        "base|toy-bimodal|seed1",
        "low|toy-bimodal|seed1",
    ]
    assert spec.units()[1].params == {key: 1e-4}

    tune = (
        GRID.replace('"grid"', '"tune"') + f"max_trials = 5\n[fixed]\nclip = 0.2\n[space.{key}]\nlow = 1e-4\n"
    )
    spec = load_spec(write(tmp_path, tune + "high = 1e-3\nlog = true\n"))
    units = spec.trial_units("trial-3", {key: 5e-4})
    assert [(u.variant, u.seed_index) for u in units] == [("trial-3", 0), ("trial-3", 1)]
    assert units[0].params == {"clip": 0.2, key: 5e-4}


def test_a_task_without_a_score_range_is_refused(tmp_path):
    """Units are scored by normalised returns: a task with no declared range would fail every unit."""

    text = GRID.replace('"toy-bimodal"', '"gym:Pendulum-v1"') + f"[grid]\n{ppo_key()} = [1e-3]\n"
    with pytest.raises(UserError, match="gym:Pendulum-v1 has no declared score range"):
        load_spec(write(tmp_path, text), check_configs=False)


def test_variant_directories_are_plain_labels_or_distinct_safe_names():
    for plain in ("ppo", "gorl-fm-3-refits", "num_refits=3", "lr=0.001", "input=prior,reset=true"):
        assert variant_dir(plain) == plain  # the directories of existing studies keep their names
    odd = ["ppo a", "ppo/a", "ppo_a_", "", ".", "..", ".hidden", "a" * 300, "hidden=[64, 64]"]
    names = [variant_dir(label) for label in odd]
    assert len(set(names)) == len(names)
    assert all(0 < len(n) <= 100 and "/" not in n and not n.startswith((".", "-")) for n in names)
    # The same name in every process and version: a resumed study finds its units' directories.
    assert variant_dir("ppo a") == "ppo_a-64fe628dcb"


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "-x", "a b", "a/b", "a|b", "a\\u0000b", "a\\nb", "é", "a" * 65, "a" * 300],
)
def test_a_study_name_that_is_not_a_plain_short_folder_name_is_refused(tmp_path, name):
    """A 300-character name failed every unit (`File name too long`), a NUL byte raised a traceback
    after the study and its MLflow run were created, and a newline was accepted."""

    text = f'name = "{name}"\n' + GRID + "[grid]\nclip = [0.1]\n"
    with pytest.raises(
        UserError, match="is not a study name: use at most 64 letters, digits, '-', '_' or '.',"
    ):
        load_spec(write(tmp_path, text), check_configs=False)


def test_a_study_name_of_letters_digits_dots_dashes_and_underscores_is_accepted(tmp_path):
    for name in ["a" * 64, "tune-ppo.v2", "Run_3", "9lives"]:
        text = f'name = "{name}"\n' + GRID + "[grid]\nclip = [0.1]\n"
        assert load_spec(write(tmp_path, text), check_configs=False).name == name
    # Without `name`, the file's name is the study's, and is held to the same rule.
    with pytest.raises(UserError, match="'my study' is not a study name"):
        load_spec(write(tmp_path, GRID + "[grid]\nclip = [0.1]\n", name="my study"), check_configs=False)
    # A study created before the rule keeps resuming and reporting from its stored spec.
    stored = {**tomllib.loads(GRID), "name": "my study", "grid": {"clip": [0.1]}}
    assert parse_spec(stored, check_configs=False).name == "my study"


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("description = 1979-05-27\n", "description = 1979-05-27 is a TOML date;"),
        ("[fixed]\nclip = 07:32:00\n", "fixed.clip = 07:32:00 is a TOML time;"),
        (
            "[grid]\nlr = [0.1, 1979-05-27T07:32:00Z]\n",
            "grid.lr[1] = 1979-05-27 07:32:00+00:00 is a TOML datetime;",
        ),
    ],
)
def test_a_toml_date_or_time_is_refused_as_a_spec_value(tmp_path, line, where):
    """A datetime in [grid] raised `TypeError: Object of type datetime is not JSON serializable`."""

    text = (
        GRID.replace('description = "test"\n', "")
        + line
        + ("" if "[grid]" in line else "[grid]\nclip = [0.1]\n")
    )
    with pytest.raises(UserError) as error:
        load_spec(write(tmp_path, text.replace("lr", ppo_key())))
    assert str(error.value) == (
        f"study.toml: {where.replace('lr', ppo_key())} a spec's values are true or false, numbers, "
        "strings and lists of them."
    )


def test_a_shipped_study_is_not_hidden_by_a_file_or_directory_of_its_name(tmp_path, monkeypatch):
    """`mkdir demo` made `study run demo` a directory error, a file `tune-ppo` made it invalid TOML."""

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "tune-ppo").write_text("not toml [")
    assert load_spec("demo", check_configs=False).name == "demo"
    assert load_spec("tune-ppo", check_configs=False).name == "tune-ppo"
    # A path is one that ends in .toml or holds a '/'.
    with pytest.raises(UserError, match="tune-ppo: not valid TOML"):
        load_spec("./tune-ppo", check_configs=False)
    with pytest.raises(UserError, match="study spec './demo' is a directory"):
        load_spec("./demo", check_configs=False)
    (tmp_path / "mine").write_text(GRID + "[grid]\nclip = [0.1]\n")
    with pytest.raises(
        UserError, match=r"unknown study spec 'mine'\..* \(for the file 'mine' here, pass ./mine\)\.$"
    ):
        load_spec("mine", check_configs=False)
    assert load_spec("./mine", check_configs=False).name == "mine"


def test_labels_whose_directories_differ_only_in_case_are_refused(tmp_path):
    compare = GRID.replace('"grid"', '"compare"').replace('algo = "ppo"\n', "")
    compare += '[variants.PPO]\nalgo = "ppo"\n[variants.ppo]\nalgo = "ppo"\nclip = 0.1\n'
    with pytest.raises(UserError, match="labels 'PPO' and 'ppo' would write to one output directory"):
        load_spec(write(tmp_path, compare), check_configs=False)


def test_two_variants_of_one_configuration_are_refused(tmp_path):
    """Two labels for one configuration would train the same units (same derived seeds) twice."""

    compare = GRID.replace('"grid"', '"compare"').replace('algo = "ppo"\n', "")
    same = compare + '[variants.a]\nalgo = "ppo"\nclip = 0.1\n[variants.b]\nclip = 0.1\nalgo = "ppo"\n'
    with pytest.raises(UserError) as error:
        load_spec(write(tmp_path, same), check_configs=False)
    assert str(error.value) == (
        "study.toml: variants 'a' and 'b' are the same configuration (algo 'ppo', overrides {'clip': 0.1}); "
        "remove one or make them differ."
    )
    # The same overrides on another algorithm make another configuration.
    other_algo = same.replace('clip = 0.1\nalgo = "ppo"', 'clip = 0.1\nalgo = "dppo"')
    assert list(load_spec(write(tmp_path, other_algo), check_configs=False).variants) == ["a", "b"]


def test_a_repeated_value_in_a_grid_list_or_a_choices_list_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"grid parameter 'clip' lists a value twice: \[0.1, 0.1\]"):
        load_spec(write(tmp_path, GRID + "[grid]\nclip = [0.1, 0.1]\n"), check_configs=False)
    # 4 and 4.0 set the same config (two variants, labelled apart, trained alike); true is no 1.
    with pytest.raises(UserError, match=r"grid parameter 'epochs' lists a value twice: \[4, 4.0\]"):
        load_spec(write(tmp_path, GRID + "[grid]\nepochs = [4, 4.0]\n"), check_configs=False)
    assert load_spec(write(tmp_path, GRID + "[grid]\nx = [1, true]\n"), check_configs=False).grids
    tune = GRID.replace('"grid"', '"tune"') + "max_trials = 3\n[space.hidden]\n"
    with pytest.raises(UserError) as error:
        load_spec(write(tmp_path, tune + "choices = [[64, 64], [32], [64, 64]]\n"), check_configs=False)
    assert str(error.value) == (
        "study.toml: [space.hidden] lists the choice [64, 64] twice: [[64, 64], [32], [64, 64]]; "
        "list each value once."
    )
    spec = load_spec(write(tmp_path, tune + "choices = [[64, 64], [32]]\n"), check_configs=False)
    assert spec.space[0].choices == ([64, 64], [32])


def test_a_grid_s_max_trials_may_exceed_its_units(tmp_path):
    """It only caps the units that run: a generous value is harmless, and a study created with one
    must stay readable (a bound for tune studies refused it at first)."""

    text = GRID.replace("kind", "max_trials = 1_000_000\nkind") + f"[grid]\n{ppo_key()} = [1e-3]\n"
    assert load_spec(write(tmp_path, text)).max_trials == 1_000_000


def test_show_counts_the_units_and_the_env_steps_each_configuration_trains(tmp_path, capsys):
    """Each unit's budget is rounded up to whole updates of its own configuration, as `run` trains it."""

    from harness.cli import main

    spec = write(tmp_path, GRID.replace("4096", "1600") + "max_trials = 3\n[grid]\nnum_envs = [16, 24]\n")
    assert main(["study", "show", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "study study (grid, algo ppo, preset cpu): test" in out
    assert "configurations (2):\n  num_envs=16\n  num_envs=24\n" in out
    # The cpu preset's 64-step rollouts: 1,600 steps are 2 updates of 1,024 or of 1,536; 2 seeds each.
    assert "4 units, 10,240 counted env steps in all; max_trials ends the study after 3 of them" in out
    assert f"run it: gorl-bench study run {spec} --workers N" in out
    # Without a description, no dangling colon
    bare = write(tmp_path, GRID.replace('description = "test"\n', "") + "[grid]\nnum_envs = [16]\n", "bare")
    assert main(["study", "show", str(bare)]) == 0
    assert capsys.readouterr().out.startswith("study bare (grid, algo ppo, preset cpu)\n")


def test_show_bounds_a_tune_study_and_refuses_a_bad_spec(tmp_path, capsys):
    from harness.cli import main

    assert main(["study", "show", "tune-ppo-toy"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.0001 to 0.003, log scale\n" in out and "  epochs: 2 to 16\n" in out
    assert "at most 24 trials of 3 units: 72 units, about 2,949,120 counted env steps" in out
    assert "concurrent_trials 2: trial n is proposed from the trials up to n - 2" in out
    assert main(["study", "show", str(write(tmp_path, GRID))]) == 2  # no [grid]
    assert "a grid study needs a [grid] table" in capsys.readouterr().err
