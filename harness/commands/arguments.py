"""Checks of command-line arguments shared by the sub-commands.

A value that can never work (a count of zero, a negative seed) is refused by argparse while
the command line is parsed, before anything is loaded, trained or timed, with the usual
`gorl-bench COMMAND: error: argument --NAME: ...` line and exit status 2. An output directory
is checked by `check_out_dir` in the command's `main`, also before any work.
"""

from __future__ import annotations

import argparse
import decimal
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import UserError


def positive_int(text: str) -> int:
    """argparse `type` of a count that must be at least 1 (iterations, steps, repeats, resamples)."""

    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse `type` of a value that must be 0 or more (a seed: numpy refuses negative ones)."""

    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def int_between(least: int, most: int) -> Callable[[str], int]:
    """argparse `type` of an integer from `least` to `most` (a count whose memory grows with it)."""

    def parse(text: str) -> int:
        value = integer(text)
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be an integer from {least:,} to {most:,}, got {text}")
        return value

    return parse


def float_between(least: float, most: float) -> Callable[[str], float]:
    """argparse `type` of a number from `least` to `most`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not least <= value <= most:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be a number from {least:g} to {most:g}, got {text}")
        return value

    return parse


def non_empty(text: str) -> str:
    """argparse `type` of a name or address (a tracking URI, a storage, an experiment): an empty
    value would silently mean the default one."""

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for its default)")
    return text


def directory(text: str) -> Path:
    """argparse `type` of a directory option: an empty value would silently mean the current one."""

    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty value")
    return Path(text)


def file_path(text: str) -> Path:
    """argparse `type` of an output file option: an empty value would name the current directory."""

    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, got an empty value")
    return Path(text)


# Larger integers are no count or seed of this harness: a slip, and 1e1000000000 written out in
# full would take a gigabyte.
MAX_DIGITS = 30


def integer(text: str) -> int:
    """argparse `type` of an integer, also written in scientific notation (`--steps 1e6`), read
    exactly: 1e23 is 10**23, not the float 99,999,999,999,999,991,611,392."""

    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    if not (value.is_finite() and value == value.to_integral_value()):
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
    if value and value.adjusted() >= MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"must have at most {MAX_DIGITS} digits, got {text!r}")
    return int(value)


def check_out_dir(path: Path, option: str = "--out") -> None:
    """Refuse an output directory that cannot be created or written into, before any work.

    Called in a command's `main` rather than as an argparse `type`, because a default directory
    (one named after the study, say) needs the check as much as a given one: otherwise the
    mistake only shows once the figures are written, after the study or analysis has run.
    """

    path = Path(path)
    existing = path.absolute()
    # The nearest part of the path that exists (a dangling link counts: mkdir cannot replace it).
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        where = "it" if existing == path.absolute() else str(existing)
        raise UserError(
            f"cannot write to the output directory {path}: {where} exists and is not a directory. "
            f"Choose another directory with {option} (it is created if missing)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write to the output directory {path}: {existing} is not writable by this user. "
            f"Choose another directory with {option}."
        )


def check_replaceable(path: Path, signature: bytes, earlier: str, option: str) -> None:
    """Refuse to replace an existing file at `path` unless it starts with `signature`, the mark of
    the command's own earlier output (`earlier`, e.g. "an earlier video (a GIF)"): a command that
    names its output files itself would otherwise write over a user's file of that name."""

    if not (path.exists() or path.is_symlink()):
        return
    ours = False
    if path.is_file():  # not opened otherwise: reading a pipe would wait for ever
        try:
            with path.open("rb") as handle:
                ours = handle.read(len(signature)) == signature
        except OSError:  # a file this user may not read
            pass
    if not ours:
        raise UserError(
            f"{option}: {path} exists and is not {earlier}, the only file there that this command "
            f"replaces. Give another {option} directory, or remove this file first."
        )


def check_distinct_runs(run_dirs: list[Path]) -> None:
    """Refuse a run directory given twice (by the same or another path): a command that plays each
    run once would score, draw or log it twice."""

    resolved = [Path(run_dir).resolve() for run_dir in run_dirs]
    for run_dir, path in zip(run_dirs, resolved, strict=True):
        if resolved.count(path) > 1:
            raise UserError(f"the run {run_dir} is given more than once; give each run once.")


class Distinct(argparse.Action):
    """An `nargs="+"` option whose values must differ: a benchmark would time one twice (and show
    a row of it against itself)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise argparse.ArgumentError(self, f"{', '.join(map(str, repeated))} given twice; give each once")
        setattr(namespace, self.dest, values)


def add_tasks_option(parser: argparse.ArgumentParser, defaults: tuple[str, ...], what: str) -> None:
    """A benchmark's `--tasks`: the `what` it times, with its defaults shown in --help."""

    shown = " ".join(defaults)
    parser.add_argument(
        "--tasks", nargs="+", action=Distinct, default=list(defaults), help=f"{what} (default {shown})"
    )


def add_set_option(
    parser: argparse.ArgumentParser, what: str = "config override", *, none_when_absent: bool = False
) -> None:
    """`--set KEY=VALUE`, every command's config override, collected in `overrides`: a list, or
    None when absent and `none_when_absent` (run's, which tells "not given" apart for --resume)."""

    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None if none_when_absent else [],
        metavar="KEY=VALUE",
        help=f"{what} (repeatable)",
    )


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose `summary` shows in its parent's list and, as a sentence, atop its own
    --help (which argparse leaves empty unless told)."""

    return subparsers.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.")
