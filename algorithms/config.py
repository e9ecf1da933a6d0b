"""Resolving a typed config: class defaults -> preset -> task overrides -> user `--set` values.

Every value is checked against the dataclass field type and the config's own
`validate()` before anything runs, so that a typo or a negative learning rate is refused
with one clear message rather than a traceback minutes into a run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from algorithms.registry import AlgorithmSpec, unknown_keys, unknown_name
from harness.errors import UserError


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings from the command line; values are Python/TOML-like literals."""

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}.")
        if key.strip() in out:  # the last one won silently: a slip in a long command went unseen
            raise UserError(f"--set {key.strip()} is given twice; give each key once.")
        try:
            out[key.strip()] = _parse_literal(raw.strip())
        except RecursionError:  # Python's and TOML's parsers recurse once per bracket
            raise UserError(
                f"--set {key.strip()}: the value is nested too deeply for a config value."
            ) from None
    return out


def _parse_literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    if raw.startswith("["):
        try:
            return tomllib.loads(f"value = {raw}")["value"]  # a TOML list, e.g. [true, false]
        except tomllib.TOMLDecodeError:
            pass
    return raw  # a bare string such as `kl` or `fast`


def resolve(spec: AlgorithmSpec, preset: str, task: str, overrides: Mapping[str, Any]) -> Any:
    """Build the frozen config for `spec` from its preset, the task and user overrides."""

    if preset not in spec.presets:
        raise UserError(unknown_name("preset", preset, sorted(spec.presets), owner=spec.name))
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    unknown = [key for key in overrides if key not in fields]
    if unknown:
        hints = unknown_keys(unknown, fields)
        raise UserError(
            f"unknown config key {hints} for {spec.name}. Valid keys: {', '.join(sorted(fields))}."
        )
    values: dict[str, Any] = {}
    values.update(spec.presets[preset])
    for_task = spec.task_overrides(preset, task)
    slips = sorted(set(for_task) - set(fields))
    if slips:  # the algorithm's own slip, found on the task it concerns
        named = unknown_keys(slips, fields)
        raise UserError(f"the task overrides of {spec.name} for {task} set unknown config keys: {named}.")
    values.update(for_task)
    values.update(overrides)
    hints = typing.get_type_hints(spec.config_cls)
    coerced = {key: _coerce(spec.name, key, value, hints[key]) for key, value in values.items()}
    try:
        config = spec.config_cls(**coerced)
    except (TypeError, ValueError) as error:
        raise UserError(f"invalid config for {spec.name}: {error}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            raise UserError(f"invalid config for {spec.name}: {error}") from None
    return config


def origins(
    spec: AlgorithmSpec,
    preset: str,
    task: str,
    overrides: Mapping[str, Any],
    config_file: tuple[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Which layer of `resolve` set each key: "--set", the config file's name (`config_file` is the
    name and the values it gives, which `--set` overrides), "task <task>", "preset <preset>" or
    "default"."""

    layers = [("--set", overrides), config_file or ("", {}),
              (f"task {task}", spec.task_overrides(preset, task)),
              (f"preset {preset}", spec.presets.get(preset, {}))]  # fmt: skip
    return {
        f.name: next((label for label, values in layers if f.name in values), "default")
        for f in dataclasses.fields(spec.config_cls)
    }


def field_notes(config_cls: type) -> dict[str, str]:
    """Each field's source comment in the class that last sets its default: the comment on the
    field's line, or else the comment lines just above it ("" where there is none)."""

    fields = {f.name for f in dataclasses.fields(config_cls)}
    notes: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):  # base classes first, so subclasses overwrite
        if not dataclasses.is_dataclass(cls):
            continue
        lines = inspect.getsource(cls).splitlines()
        for name in fields & set(vars(cls).get("__annotations__", {})):
            index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
            inline = lines[index].partition("  # ")[2].strip()
            above: list[str] = []
            for line in reversed(lines[:index] if not inline else []):
                if not line.strip().startswith("#"):
                    break
                above.insert(0, line.strip().removeprefix("#").strip())
            notes[name] = inline or " ".join(above)
    return notes


def _coerce(algo: str, key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's type, converting the lossless cases (int -> float, list -> tuple)."""

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        # TOML has no null, so a study spec writes "none" for it, as `--set key=none` may.
        none_word = isinstance(value, str) and value.lower() == "none" and str not in args
        if (value is None or none_word) and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(algo, key, value, option)
            except UserError as error:
                errors.append(str(error))
        raise UserError(errors[0] if errors else f"{algo}: {key} cannot be {_shown(value)}.")
    if origin is typing.Literal:
        if value is None and "none" in args:
            return "none"  # `--set latent_reg=none` parses as None; the option is the word itself
        if value not in args:
            options = ", ".join(map(repr, args))
            raise UserError(f"{algo}: {key} must be one of {options}, got {_shown(value)}.")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{algo}: {key} must be a list, got {_shown(value)}.")
        item_type = args[0] if args else Any
        return tuple(_coerce(algo, key, item, item_type) for item in value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{algo}: {key} must be a number, got {_shown(value)}.")
        try:
            number = float(value)
        except OverflowError:  # an integer of 400 digits
            number = math.inf
        if not math.isfinite(number):  # 1e999 parses as inf
            raise UserError(f"{algo}: {key} must be a finite number, got {_shown(value)}.")
        return number
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{algo}: {key} must be an integer, got {_shown(value)}.")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{algo}: {key} must be true or false, got {_shown(value)}.")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{algo}: {key} must be a string, got {_shown(value)}.")
        return value
    return value


def _shown(value: Any) -> str:
    """`repr(value)` for an error message, cut short when long (a 5,000-digit --set value)."""

    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def as_dict(config: Any) -> dict[str, Any]:
    """The config as a flat dict (tuples become lists) for TOML files and MLflow params."""

    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }
