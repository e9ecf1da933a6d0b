"""`--config FILE`: a run's settings read from a TOML file, such as the `config.toml` a run writes.

The file holds up to two tables:

* `[run]`: values for the options of `run` (algo, task, seed, steps, preset, device); an option
  given on the command line wins over the file's.
* `[config]`: config keys, as `--set` takes them; `--set` wins over the file.

A run's `config.toml` holds every config key, resolved for its preset and task. Applied as it is
to another task, it would carry its own task's overrides there (finger-spin's gamma 0.95 to
cheetah-run, or the default 0.99 to finger-spin). So when the `[run]` table names the algo,
preset and task its `[config]` was resolved for, the file gives that run's *choices*: the keys
whose values differ from what that preset and task give, which then apply on top of the preset
and task the new run uses. The same preset and task therefore resolve to exactly the file's
values, and a value whose default has changed since the file was written is kept. Without those
three names every `[config]` key applies as written (a hand-written file of a few keys).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.limits import check_steps_and_seed

#: The `[run]` keys and their types: the options of `gorl-bench run` a file can give.
RUN_OPTIONS: dict[str, type] = {
    "algo": str,
    "task": str,
    "seed": int,
    "steps": int,
    "preset": str,
    "device": str,
}

# The largest integers a TOML float (a double) holds exactly: `steps = 1e6` is 1,000,000, while
# 1e23 would be 99,999,999,999,999,991,611,392 (the command line reads `--steps 1e23` exactly).
EXACT_FLOAT_INT = 2**53


def read_toml(path: Path, what: str, shown: str | None = None) -> dict[str, Any]:
    """The TOML document in `path`, or a one-line UserError naming `what` the file was meant to be
    and the path as the user wrote it (`shown`: `./demo`, which `Path` shortens to `demo`)."""

    shown = repr(shown or str(path))
    if path.is_dir():
        raise UserError(f"{what} {shown} is a directory, not a TOML file.")
    if path.exists() and not path.is_file():  # reading a pipe or a device could wait for ever
        raise UserError(f"{what} {shown} is not a regular file; pass a TOML file.")
    if not path.is_file():
        raise UserError(f"{what} {shown} does not exist.")
    try:
        # A byte-order mark, which some Windows editors write, is no part of the document.
        return tomllib.loads(path.read_bytes().decode("utf-8").removeprefix("\ufeff"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML files are UTF-8
        raise UserError(f"{path.name}: not valid TOML: {error}.") from None
    except OSError as error:
        raise UserError(f"cannot read the {what} {shown}: {error.strerror}.") from None


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    run: dict[str, Any]  # `[run]` values, checked against RUN_OPTIONS
    config: dict[str, Any]  # `[config]` values, as written (resolved against an algorithm later)

    @property
    def resolved_for(self) -> tuple[str, str, str] | None:
        """(algo, preset, task) the `[config]` table was resolved for, if the `[run]` table says."""

        names = tuple(self.run.get(key) for key in ("algo", "preset", "task"))
        return names if all(names) else None  # type: ignore[return-value]

    def fill_options(self, args: Any, names: Iterable[str] = RUN_OPTIONS) -> None:
        """Give each option of `names` that the command line left unset (None in the parsed
        `args`) the `[run]` table's value, where the table has one."""

        for name in names:
            if getattr(args, name) is None and name in self.run:
                setattr(args, name, self.run[name])


def load_config_file(path: Path) -> ConfigFile:
    """Read and check the shape of a config file; its config values are checked by `choices`."""

    document = read_toml(path, "config file")
    for key, value in document.items():
        if key not in ("run", "config") or not isinstance(value, dict):
            where = "config keys go under [config]" if not isinstance(value, dict) else "no such table"
            raise UserError(
                f"{path.name}: {key!r} ({where}): a config file holds a [run] table "
                f"({', '.join(RUN_OPTIONS)}) and a [config] table."
            )
    run = dict(document.get("run", {}))
    for key, value in run.items():
        kind = RUN_OPTIONS.get(key)
        if kind is None:
            raise UserError(f"{path.name}: [run] has no key {key!r}; it takes {', '.join(RUN_OPTIONS)}.")
        if kind is int and isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_FLOAT_INT:
            run[key] = value = int(value)  # `steps = 1e6`, as the command line takes `--steps 1e6`
        if not isinstance(value, kind) or isinstance(value, bool):
            expected = "an integer" if kind is int else "a string"
            raise UserError(f"{path.name}: [run] {key} must be {expected}, got {value!r}.")
    # The checks `run` makes again, named here as the file's keys, not as the options.
    check_steps_and_seed(
        run.get("steps", 1), run.get("seed", 0), f"{path.name}: [run] steps", f"{path.name}: [run] seed"
    )
    return ConfigFile(path, run, dict(document.get("config", {})))


def choices(file: ConfigFile, algo: str) -> dict[str, Any]:
    """The config values `file` gives a run of `algo` (see the module docstring), checked."""

    import algorithms
    import envs
    from algorithms.config import as_dict, resolve
    from algorithms.registry import unknown_keys

    given = file.config
    if file.resolved_for is not None:
        own_algo, preset, task = file.resolved_for
        try:
            spec, task = algorithms.get(own_algo), envs.canonical_task(task)
            base, written = (as_dict(resolve(spec, preset, task, values)) for values in ({}, given))
        except UserError as error:
            raise UserError(f"{file.path.name}: {error}") from None
        given = {key: value for key, value in given.items() if written[key] != base[key]}
    fields = [field.name for field in dataclasses.fields(algorithms.get(algo).config_cls)]
    unknown = [key for key in given if key not in fields]
    if unknown:
        raise UserError(
            f"{file.path.name} sets config keys that {algo} does not have: {unknown_keys(unknown, fields)}."
        )
    return given
