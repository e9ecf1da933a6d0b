"""Study specifications: one TOML file describes one study, validated completely on load.

A study is a set of *units*; a unit is one training run, (configuration x task x seed index).
Three kinds of study decide where the configurations come from:

* `grid`    - an ablation: one algorithm, the Cartesian product of declared parameter values
              (`[grid]`), or a union of such products (`[[grid]]` tables), on top of `[fixed]`.
* `compare` - named, fixed configurations (`[variants.<label>]`, each with its own `algo`).
* `tune`    - a search space (`[space.<key>]`) explored by TPE or CMA-ES; one trial is one
              sampled configuration evaluated on every (task, seed) pair, scored by the IQM of
              normalised final scores.

Everything that can be checked before a single env step is checked here: unknown keys, empty
grids, unknown algorithms, presets or tasks, tasks without a score range, bad config values
(through the algorithm's own `algorithms.config.resolve`) and budgets that do not fit a
configuration's schedule. Errors are `UserError`s naming the file and the offending key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from algorithms.registry import unknown_keys, unknown_name
from harness.config_file import read_toml
from harness.errors import UserError
from harness.progress import count
from studies import SPEC_DIR

KINDS = ("grid", "compare", "tune")
# The first of each is a tune study's default, as it is Optuna's: TPE and the median pruner.
SAMPLERS = ("tpe", "cmaes")
PRUNERS = ("median", "hyperband", "none")

# A bound on a tune study's concurrent_trials: every worker beyond it would only wait.
MAX_CONCURRENT_TRIALS = 1024
_COMMON_KEYS = {"name", "kind", "description", "tasks", "seeds", "seed", "steps", "preset", "max_trials"}
_KIND_KEYS = {
    "grid": {"algo", "fixed", "grid"},
    "compare": {"variants"},
    "tune": {"algo", "fixed", "space", "sampler", "pruner", "concurrent_trials"},
}
_SPACE_KEYS = {"low", "high", "log", "choices"}
# A grid or compare study lists all its units up front (to queue them, for `study status` and the
# report), and a tune trial runs its units one after the other; every unit is a training run, and
# 100,000 runs of one minute are 70 machine-days. Larger is a slip (`seeds = 1e9` filled memory
# for minutes before any output) or a design to split into several studies.
MAX_UNITS = 100_000


@dataclass(frozen=True)
class Unit:
    """One training run of a study: a configuration on one task with one seed index."""

    variant: str  # label of the configuration, e.g. "num_refits=2" or "ppo"
    algo: str
    task: str
    seed_index: int
    params: Mapping[str, Any]  # config overrides on top of the preset, swept ones included
    seed: int  # derived, see `derive_seed`

    @property
    def key(self) -> str:
        return unit_key(self.variant, self.task, self.seed_index)

    def record(self) -> dict[str, Any]:
        """The unit as plain data, the shape stored in Optuna trial attributes."""

        return {
            "unit": self.key,
            "variant": self.variant,
            "algo": self.algo,
            "task": self.task,
            "seed": self.seed_index,  # the index 0..seeds-1 (results.csv's `seed`), not `Unit.seed`
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class SearchDim:
    """One dimension of a tune study's search space."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Spec:
    """A validated study specification; `raw` is the TOML content it was built from."""

    name: str
    kind: str
    description: str
    algo: str | None  # grid and tune studies; compare studies name one per variant
    tasks: tuple[str, ...]
    seeds: int
    seed: int
    steps: int
    preset: str
    max_trials: int | None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grids: tuple[Mapping[str, tuple[Any, ...]], ...] = ()  # grid: union of Cartesian products
    variants: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)  # compare
    space: tuple[SearchDim, ...] = ()  # tune
    sampler: str = SAMPLERS[0]  # tune studies only (`parse_spec` sets both for every kind)
    pruner: str = PRUNERS[0]
    # tune: trial n is proposed from trials up to n - concurrent_trials (`studies.proposals`);
    # None: the number of workers of the `study run` that creates the study
    concurrent_trials: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def swept(self) -> list[str]:
        """Names of the parameters a grid study varies, in declaration order."""

        return list(dict.fromkeys(name for grid in self.grids for name in grid))

    def configurations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(variant label, algo, overrides) for each configuration of a grid or compare study.

        `[[grid]]` tables are a union: a configuration that several tables produce is listed once,
        under the label of its first table. Overlap is the natural way to write some designs (one
        parameter at a time around a centre point puts the centre in every table), and running
        it once per table would repeat identical units (same overrides, same derived seeds), so
        it is merged rather than refused. A label that two different configurations share (`1`
        and `"1"`) is refused: a unit's key and output directory come from its label.
        """

        if self.kind == "compare":
            return [(label, algo, dict(params)) for label, (algo, params) in self.variants.items()]
        out = []
        seen: set[str] = set()
        labels: dict[str, dict[str, Any]] = {}
        for grid in self.grids:
            names = list(grid)
            for values in itertools.product(*grid.values()):
                point = dict(zip(names, values, strict=True))
                label = ",".join(f"{k}={label_value(v)}" for k, v in point.items())
                params = {**self.fixed, **point}
                identity = json.dumps(_canonical(params))
                if identity in seen:
                    continue
                if label in labels:
                    raise UserError(
                        f"grid label {label!r} names two different configurations, {labels[label]} and "
                        f"{params}; give the values distinct spellings."
                    )
                seen.add(identity)
                labels[label] = params
                out.append((label, self.algo, params))
        return out

    def units(self) -> list[Unit]:
        """Every unit of a grid or compare study, seed-major: a partial study (or one cut by
        `max_trials`) has results of every configuration on every task, to compare."""

        configurations = self.configurations()
        return [
            self.unit(label, algo, params, task, index)
            for index in range(self.seeds)
            for label, algo, params in configurations
            for task in self.tasks
        ]

    def trial_units(self, variant: str, params: Mapping[str, Any]) -> list[Unit]:
        """The (task, seed) units that make up one trial of a tune study, in reporting order."""

        return [
            self.unit(variant, self.algo, {**self.fixed, **params}, task, index)
            for index in range(self.seeds)
            for task in self.tasks
        ]

    def unit(self, variant: str, algo: str, params: Mapping[str, Any], task: str, index: int) -> Unit:
        seed = derive_seed(self.seed, algo, self.preset, params, task, index)
        return Unit(variant, algo, task, index, dict(params), seed)


def unit_key(variant: str, task: str, seed_index: int) -> str:
    return f"{variant}|{task}|seed{seed_index}"


# A study's name: a plain directory name (at most 255 bytes on most file systems), never hidden,
# never taken for an option (`-x`), and short enough to read in tables and commands.
_STUDY_NAME_MAX = 64
_STUDY_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{_STUDY_NAME_MAX - 1}}}")

# A directory name that is the label itself: no separators, no spaces, never hidden, "." or "..".
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")
_NAME_MAX = 100  # well below the usual 255-byte limit on a file name


def variant_dir(label: str) -> str:
    """The directory, under the study's folder, of a configuration's units.

    A plain label (`ppo`, `lr=0.001`, `num_refits=3`) is its own directory name. Any other label
    gets a readable slug plus a hash of the exact label: two labels that slug alike ("ppo a",
    "ppo/a") stay apart, and no label can name the study's folder itself or one outside it (".",
    "..", "") or a hidden directory.
    """

    if _PLAIN_NAME.fullmatch(label) and len(label) <= _NAME_MAX:
        return label
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label).lstrip("._-")[: _NAME_MAX - 11] or "variant"
    return f"{slug}-{hashlib.sha256(label.encode()).hexdigest()[:10]}"


def _check_variant_dirs(labels: list[str]) -> None:
    """Refuse two labels whose directories a file system that ignores case (macOS, Windows by
    default) would take for one: their units would write into each other's directories."""

    seen: dict[str, str] = {}
    for label in labels:
        other = seen.setdefault(variant_dir(label).casefold(), label)
        if other != label:
            raise UserError(
                f"labels {other!r} and {label!r} would write to one output directory "
                f"({variant_dir(other)!r} and {variant_dir(label)!r} differ at most in case); "
                "rename one, or give the values distinct spellings."
            )


def derive_seed(
    study_seed: int, algo: str, preset: str, params: Mapping[str, Any], task: str, seed_index: int
) -> int:
    """A unit's training seed, a pure function of the study seed, configuration, task and seed index.

    Hashing (rather than, say, `study_seed + seed_index`) keeps seeds of different units
    unrelated, and makes a re-run of a study reproduce every unit's numbers no matter which
    worker picks it up or in which order.
    """

    return stable_seed(study_seed, algo, preset, _canonical(params), task, seed_index)


def _concurrent_trials(value: Any) -> int | None:
    if value is not None and (type(value) is not int or not 1 <= value <= MAX_CONCURRENT_TRIALS):
        raise UserError(
            f"concurrent_trials must be an integer from 1 to {MAX_CONCURRENT_TRIALS} (the most trials that "
            f"run at once; each new trial is proposed from the trials that many before it), got {value!r}."
        )
    return value


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed hashed from JSON-serialisable `parts`: the same on every machine and in every
    process (unlike `hash()`), and unrelated for parts that differ in any way."""

    blob = json.dumps(list(parts))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _canonical(params: Mapping[str, Any]) -> dict[str, Any]:
    """Config overrides in key order: two configurations are the same when these dump equal."""

    return dict(sorted(params.items()))


def names_a_file(name_or_path: str | Path) -> bool:
    """Whether a spec argument is a path (it ends in `.toml` or holds a `/`), not a study's name."""

    text = str(name_or_path)
    return Path(text).suffix == ".toml" or any(sep in text for sep in {"/", os.sep})


def spec_path(name_or_path: str | Path) -> Path:
    """A spec file from a path (ending in `.toml` or holding a `/`), or else the name of a spec
    shipped in `studies/`.

    The form decides, not what exists: a file or directory `demo` in the current directory does
    not hide the shipped `demo` (`./demo` names it).
    """

    text = str(name_or_path)
    path = Path(name_or_path)
    if names_a_file(text):
        return path  # `read_toml` refuses a directory, a pipe or a missing file
    shipped = SPEC_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SPEC_DIR.glob("*.toml"))
    local = f" (for the file {text!r} here, pass ./{text})" if path.is_file() else ""
    raise UserError(unknown_name("study spec", text, names) + f" Or pass the path of a TOML file{local}.")


def load_spec(name_or_path: str | Path, *, check_configs: bool = True) -> Spec:
    """Load and validate a spec file (see `spec_path`).

    With `check_configs`, every unit's configuration is resolved through its algorithm's
    registry entry, so unknown algorithms and bad values fail now rather than mid-study.
    """

    path = spec_path(name_or_path)
    raw = read_toml(path, "study spec", shown=str(name_or_path))
    raw.setdefault("name", path.stem)
    try:
        # Here rather than in parse_spec: a study created under the looser rule of earlier versions
        # (a space in its name) keeps resuming and reporting from its stored spec.
        _check_study_name(raw["name"])
        return parse_spec(raw, check_configs=check_configs)
    except UserError as error:
        raise UserError(f"{path.name}: {error}") from None


def parse_spec(raw: Mapping[str, Any], *, check_configs: bool = True) -> Spec:
    """Validate spec content (a TOML document as a dict, or a study's stored `spec` attribute)."""

    _check_value_types(raw)
    kind = _get(raw, "kind", str)
    if kind not in KINDS:
        raise UserError(unknown_name("study kind", kind, list(KINDS)))
    _check_spec_keys(raw, kind)
    name = _get(raw, "name", str)
    seeds = _get(raw, "seeds", int)
    steps = _get(raw, "steps", int)
    if seeds < 1:
        raise UserError(f"seeds must be at least 1, got {seeds}.")
    if steps < 1:
        raise UserError(f"steps (counted env steps per unit) must be positive, got {steps}.")
    max_trials = raw.get("max_trials")
    if max_trials is not None and (type(max_trials) is not int or max_trials < 1):
        raise UserError(f"max_trials must be a positive integer, got {max_trials!r}.")
    if kind == "tune" and max_trials is not None and max_trials > MAX_UNITS:
        # A bound as for units (a grid's max_trials only caps its units): the progress display's
        # ETA overflowed on 10^21 trials.
        raise UserError(f"a tune study's max_trials must be at most {MAX_UNITS:,}, got {max_trials:,}.")
    if kind == "tune" and max_trials is None:
        raise UserError("a tune study needs max_trials, the number of configurations to try.")

    spec = Spec(
        name=name,
        kind=kind,
        description=str(raw.get("description", "")).strip(),  # free text, compared by no one
        algo=_get(raw, "algo", str) if kind != "compare" else None,
        tasks=_parse_tasks(raw.get("tasks")),
        seeds=seeds,
        seed=_get(raw, "seed", int, default=0),  # as `gorl-bench run --seed`
        steps=steps,
        preset=_get(raw, "preset", str, default="cpu"),  # as `gorl-bench run`: this machine's size
        max_trials=max_trials,
        fixed=_table(raw, "fixed"),
        grids=_parse_grids(raw.get("grid")) if kind == "grid" else (),
        variants=_parse_variants(raw.get("variants")) if kind == "compare" else {},
        space=_parse_space(raw.get("space"), _get(raw, "algo", str)) if kind == "tune" else (),
        sampler=_choice(raw, "sampler", SAMPLERS) if kind == "tune" else "tpe",
        pruner=_choice(raw, "pruner", PRUNERS) if kind == "tune" else "none",
        concurrent_trials=_concurrent_trials(raw.get("concurrent_trials")),
        raw=dict(raw),
    )
    _check_size(spec)
    if kind != "tune":
        # Refuses a grid label shared by two configurations, and labels whose directories clash.
        _check_variant_dirs([label for label, _, _ in spec.configurations()])
    if kind == "grid":
        # A [fixed] value that some [[grid]] table leaves alone is a centre point; one that every
        # table sweeps is never used.
        unused = set(spec.fixed).intersection(*(set(grid) for grid in spec.grids))
        if unused:
            raise UserError(
                f"keys {sorted(unused)} are in [fixed] and swept by every grid table, so their [fixed] "
                "values are never used; keep one."
            )
    if kind == "tune":
        overlap = set(spec.fixed) & {dim.name for dim in spec.space}
        if overlap:
            raise UserError(f"keys {sorted(overlap)} are both in [fixed] and in [space]; keep one.")
        categorical = [dim.name for dim in spec.space if dim.choices]
        if spec.sampler == "cmaes" and categorical:
            raise UserError(
                f'sampler = "cmaes" optimises numeric ranges only; it would draw {categorical} at random in '
                'every trial. Use sampler = "tpe", or give them as ranges or [fixed] values.'
            )
    if check_configs:
        check_configurations(spec)
    return spec


def _check_study_name(name: Any) -> None:
    """Refuse a new study's name unless it is a plain, short directory name (`check_plain_name`).
    A name that is not a string is left to parse_spec's type check."""

    if isinstance(name, str):
        check_plain_name(name, "name", "a study name", " (without `name`, a spec takes its file's name)")


def check_plain_name(name: str, what: str, kind: str, hint: str = "") -> None:
    """Refuse `name` (`what` names where it was given) unless it is a plain, short directory name
    (`_STUDY_NAME`), as a study's name and a report's are.

    Such a name is a directory under runs/studies/ and runs/reports/, an MLflow run name and part
    of shell commands; anything else failed later (a 300-character name in every unit's path, a
    NUL byte once the study and its MLflow run existed) or named another directory ("..").
    """

    if _STUDY_NAME.fullmatch(name):
        return
    shown = repr(name) if len(name) <= _STUDY_NAME_MAX else f"{name[:20]!r}... ({len(name)} characters)"
    raise UserError(
        f"{what} {shown} is not {kind}: use at most {_STUDY_NAME_MAX} letters, digits, '-', '_' or '.', "
        f"starting with a letter or digit{hint}."
    )


def _check_value_types(value: Any, where: str = "") -> None:
    """Refuse TOML's dates and times anywhere in the spec. A spec is stored as JSON in the study and
    its config values are hashed as JSON (labels, derived seeds), which has no such type, and no
    config key or spec key takes one: true/false, numbers, strings, lists and tables are all."""

    if isinstance(value, dict):
        for key, item in value.items():
            _check_value_types(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_value_types(item, f"{where}[{index}]")
    elif not isinstance(value, bool | int | float | str):
        raise UserError(
            f"{where} = {value} is a TOML {type(value).__name__}; a spec's values are true or false, "
            "numbers, strings and lists of them."
        )


def _check_size(spec: Spec) -> None:
    """Refuse a study of more than MAX_UNITS units (a tune study: per trial) before listing them."""

    per_configuration = spec.seeds * len(spec.tasks)
    if spec.kind == "tune":
        configurations, what = 1, "each trial of the study runs"
    else:
        what = "the study lists"
        # The grid tables' products before overlaps are merged: that is what listing them walks.
        configurations = len(spec.variants) or sum(math.prod(map(len, grid.values())) for grid in spec.grids)
    units = configurations * per_configuration
    if units > MAX_UNITS:
        counts = {"configuration": configurations, "seed": spec.seeds, "task": len(spec.tasks)}
        factors = " x ".join(count(n, noun) for noun, n in counts.items())
        raise UserError(
            f"{what} {units:,} units ({factors}); a study holds at most {MAX_UNITS:,}. Check `seeds` and "
            "the grid's lists, or split the design into several studies."
        )


def check_configurations(spec: Spec) -> None:
    """Resolve every distinct configuration on every task and check it fits the unit budget."""

    if spec.kind == "tune":
        # The corners of the space and each categorical choice: enough to catch unknown keys,
        # wrong types and values the config's own validate() refuses.
        low = {**spec.fixed, **{d.name: _corner(d, 0) for d in spec.space}}
        high = {**spec.fixed, **{d.name: _corner(d, -1) for d in spec.space}}
        configs = [("the search space's lower corner (every range at its low end)", low),
                   ("the search space's upper corner (every range at its high end)", high)]  # fmt: skip
        for dim in spec.space:
            configs += [
                (f"the search space's choice {dim.name}={c!r}", {**low, dim.name: c}) for c in dim.choices
            ]
        described = [(label, spec.algo, params) for label, params in configs]
    else:
        described = [
            (f"configuration {label!r}", algo, params) for label, algo, params in spec.configurations()
        ]
    for label, algo, params in described:
        check_on_every_task(spec, algo, params, label)


def check_on_every_task(spec: Spec, algo: str, params: Mapping[str, Any], described: str) -> None:
    """`check_unit` on each of the spec's tasks; the error starts with `described` (the configuration)
    and the task."""

    for task in spec.tasks:
        try:
            check_unit(spec, algo, task, params)
        except UserError as error:
            raise UserError(f"{described} on {task}: {error}") from None


def check_unit(spec: Spec, algo: str, task: str, params: Mapping[str, Any]) -> None:
    """Refuse a unit that `gorl-bench run` would refuse: bad config values, a budget below one
    update or outside the configuration's schedule, or a task the configuration cannot run."""

    import algorithms
    from algorithms.config import resolve
    from harness.run import check_run

    config = resolve(algorithms.get(algo), spec.preset, task, dict(params))
    check_run(config, task, spec.steps, steps_name="steps")


def _parse_tasks(value: Any) -> tuple[str, ...]:
    import envs

    if value == "paper":
        return tuple(envs.PAPER_TASKS)
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise UserError(
            'tasks must be a non-empty list of task names, or "paper" for the paper\'s six tasks.'
        )
    tasks = tuple(envs.canonical_task(t) for t in value)
    if len(set(tasks)) != len(tasks):
        raise UserError(f"tasks lists a task twice: {list(value)}.")
    for task in tasks:
        # Every unit is scored by its normalised return; without a range each would fail at its
        # first evaluation, after the study had started.
        try:
            envs.score_range(task)
        except UserError as error:
            raise UserError(f"{error} Studies score every unit by its normalised return.") from None
    return tasks


def _parse_grids(value: Any) -> tuple[dict[str, tuple[Any, ...]], ...]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UserError("a grid study needs a [grid] table (or several [[grid]] tables) of parameter lists.")
    grids = []
    for table in value:
        if not isinstance(table, dict):  # `grid = [{lr = [1e-3]}, 5]`
            raise UserError(f"each [[grid]] entry must be a table of parameter lists, got {table!r}.")
        if not table:
            raise UserError("a [grid] table is empty; list at least one parameter and its values.")
        grid = {}
        for key, values in table.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"grid parameter {key!r} needs a non-empty list of values, got {values!r}.")
            if _repeats(values):
                raise UserError(f"grid parameter {key!r} lists a value twice: {values!r}.")
            grid[key] = tuple(values)
        grids.append(grid)
    return tuple(grids)


def _repeats(values: list[Any]) -> list[Any]:
    """The values of `values` that set a config as an earlier one does, in order: numbers by value
    (`epochs = [4, 4.0]` made two variants, labelled apart, that trained alike), booleans apart
    from them (true is no 1), anything else as written."""

    settings = [_setting(value) for value in values]
    return [value for i, value in enumerate(values) if settings[i] in settings[:i]]


def _setting(value: Any) -> Any:
    """What `value` sets, for comparison: 4 and 4.0 equal, True and 1 not, lists item by item."""

    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)  # Python compares 4 and 4.0 equal, also past a float's range
    if isinstance(value, list):
        return ("list", tuple(_setting(item) for item in value))
    return ("other", repr(value))


def _parse_variants(value: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    if not isinstance(value, dict) or not value:
        raise UserError("a compare study needs [variants.<label>] tables, each with an `algo` key.")
    variants = {}
    for label, table in value.items():
        if not isinstance(table, dict) or not isinstance(table.get("algo"), str):
            raise UserError(f'variant {label!r} needs `algo = "<algorithm>"` and config overrides.')
        if "|" in label:
            raise UserError(f"variant label {label!r} must not contain '|'.")
        if not label.strip():  # its units' keys would start with '|', its directory have no name
            raise UserError(f"variant label {label!r} is empty; give the variant a name.")
        params = {k: v for k, v in table.items() if k != "algo"}
        variants[label] = (table["algo"], params)
    # Two variants of one configuration would train identical units (the derived seeds do not
    # depend on the label) and report the same numbers twice under two names.
    seen: dict[str, str] = {}
    for label, (algo, params) in variants.items():
        first = seen.setdefault(repr((algo, _canonical(params))), label)
        if first != label:
            raise UserError(
                f"variants {first!r} and {label!r} are the same configuration (algo {algo!r}, overrides "
                f"{params}); remove one or make them differ."
            )
    return variants


def _parse_space(value: Any, algo: str) -> tuple[SearchDim, ...]:
    if not isinstance(value, dict) or not value:
        raise UserError("a tune study needs [space.<key>] tables with `low`/`high` (and `log`) or `choices`.")
    dims = []
    for name, table in value.items():
        if not isinstance(table, dict):
            raise UserError(
                f"space entry {name!r} must be a table, e.g. [space.{name}] low = 1e-4 high = 1e-3."
            )
        _check_keys(f"[space.{name}]", table, _SPACE_KEYS)
        if "choices" in table:
            choices = table["choices"]
            if set(table) != {"choices"} or not isinstance(choices, list) or not choices:
                raise UserError(f"[space.{name}] with choices takes only a non-empty `choices` list.")
            # Optuna takes a repeated choice for one more option: the sampler would favour that value.
            repeated = _repeats(choices)
            if repeated:
                raise UserError(
                    f"[space.{name}] lists the choice {repeated[0]!r} twice: {choices!r}; list each value "
                    "once."
                )
            dims.append(SearchDim(name, choices=tuple(choices)))
            continue
        low, high, log = table.get("low"), table.get("high"), table.get("log", False)
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high))
        if not numbers or not low < high:
            raise UserError(f"[space.{name}] needs numbers low < high, got low={low!r}, high={high!r}.")
        if not isinstance(log, bool) or (log and low <= 0):
            raise UserError(f"[space.{name}]: log must be true or false, and log needs low > 0.")
        dims.append(_typed_range(SearchDim(name, low=low, high=high, log=log), algo))
    return tuple(dims)


def _typed_range(dim: SearchDim, algo: str) -> SearchDim:
    """The range with its config field's type, which decides whether integers or floats are
    sampled, however the TOML wrote the bounds (`1` or `1.0`). A key that is no numeric field is
    left as written: `check_configurations` names the problem."""

    import algorithms

    hints = typing.get_type_hints(algorithms.get(algo).config_cls)
    kinds = set(typing.get_args(hints.get(dim.name))) or {hints.get(dim.name)}
    if float in kinds:
        return replace(dim, low=float(dim.low), high=float(dim.high))
    if int in kinds:
        if not (float(dim.low).is_integer() and float(dim.high).is_integer()):
            raise UserError(
                f"[space.{dim.name}]: {dim.name} is an integer, so low and high must be whole numbers, "
                f"got low={dim.low!r}, high={dim.high!r}."
            )
        return replace(dim, low=int(dim.low), high=int(dim.high))
    return dim


def _corner(dim: SearchDim, end: int) -> Any:
    return dim.choices[end] if dim.choices else (dim.low, dim.high)[end]


_KIND_NAMES = {int: "an integer", str: "a string", float: "a number", bool: "true or false"}


def _get(raw: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    if key not in raw:
        if default is None:
            raise UserError(f"missing required key {key!r}.")
        return default
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{key} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}.")
    return value


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"[{key}] must be a table of config overrides.")
    return dict(value)


def _choice(raw: Mapping[str, Any], key: str, valid: tuple[str, ...]) -> str:
    value = _get(raw, key, str, default=valid[0])
    if value not in valid:
        raise UserError(unknown_name(key, value, list(valid)))
    return value


def _check_spec_keys(raw: Mapping[str, Any], kind: str) -> None:
    """Refuse top-level keys a `kind` study does not take, saying where each belongs when it is a
    key of another kind of study or an algorithm's config key (`lr = 1e-3` at the top instead of in
    [fixed] was offered no hint, and a compare study's `algo` "did you mean 'kind'?")."""

    import dataclasses

    import algorithms

    valid = _COMMON_KEYS | _KIND_KEYS[kind]
    unknown = sorted(set(raw) - valid)
    if not unknown:
        return
    config_keys = {
        field.name
        for name in algorithms.names()
        for field in dataclasses.fields(algorithms.get(name).config_cls)
    }
    home = {
        "grid": "in [fixed], or sweep it in [grid]",
        "compare": "in each [[variants]] table",
        "tune": "in [fixed], or search it in [space]",
    }[kind]
    hints = []
    for key in unknown:
        kinds = [other for other, keys in _KIND_KEYS.items() if key in keys]
        if kinds:
            hints.append(f"{key!r} (a key of {' and '.join(kinds)} studies)")
        elif key in config_keys:
            hints.append(f"{key!r} (a config key: give it {home})")
        else:
            hints.append(unknown_keys([key], valid))
    noun = "key" if len(unknown) == 1 else "keys"
    compare = " (each [[variants]] table names its algo and settings)" if kind == "compare" else ""
    raise UserError(
        f"unknown {noun} {', '.join(hints)} in the spec of a {kind} study. Valid keys: "
        f"{', '.join(sorted(valid))}{compare}."
    )


def _check_keys(where: str, table: Mapping[str, Any], valid: set[str]) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        hints = unknown_keys(unknown, valid)
        raise UserError(f"unknown key {hints} in {where}. Valid keys: {', '.join(sorted(valid))}.")


def label_value(value: Any) -> str:
    """A value as a grid label spells it (booleans as TOML writes them)."""

    return str(value).lower() if isinstance(value, bool) else str(value)
