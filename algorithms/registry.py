"""The algorithm registry: one name -> one config class, its presets and its agent.

Adding an algorithm is one new module in `algorithms/` that defines a frozen config
dataclass and an agent class, decorated with `@register(...)`, plus its import line in
`algorithms/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the harness needs to know about one algorithm."""

    name: str
    summary: str
    config_cls: type
    agent_cls: type
    # preset name -> field overrides applied on top of the config class defaults.
    presets: Mapping[str, Mapping[str, Any]]
    # (preset, task) -> overrides that a task needs in that preset (e.g. finger-spin's gamma).
    task_overrides: Callable[[str, str], Mapping[str, Any]] = lambda preset, task: {}


#: The config keys the run harness reads from every algorithm's config: how often and on how
#: many episodes it evaluates, and the env backend of its evaluation envs.
HARNESS_KEYS = frozenset({"eval_points", "eval_episodes", "env_backend"})
#: The preset every algorithm has: the default of `run`, `config`, `bench` and study specs.
DEFAULT_PRESET = "cpu"

_REGISTRY: dict[str, AlgorithmSpec] = {}


def register(
    name: str,
    *,
    config: type,
    presets: Mapping[str, Mapping[str, Any]],
    summary: str,
    task_overrides: Callable[[str, str], Mapping[str, Any]] | None = None,
) -> Callable[[type], type]:
    """Class decorator registering an agent class under `name`."""

    if not dataclasses.is_dataclass(config) or not config.__dataclass_params__.frozen:
        raise TypeError(f"config for {name!r} must be a frozen dataclass")
    field_names = {f.name for f in dataclasses.fields(config)}
    missing = sorted(HARNESS_KEYS - field_names)
    if missing:
        raise TypeError(f"config for {name!r} lacks the keys the run harness reads: {missing}")
    if DEFAULT_PRESET not in presets:
        raise TypeError(
            f"presets of {name!r} lack {DEFAULT_PRESET!r}, the preset run, config, bench and studies take "
            "by default"
        )
    for preset, values in presets.items():
        unknown = set(values) - field_names
        if unknown:
            raise TypeError(f"preset {preset!r} of {name!r} sets unknown keys {sorted(unknown)}")

    def decorate(agent_cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} registered twice")
        if inspect.isabstract(agent_cls):  # found here, not when a run has started
            missing = ", ".join(sorted(agent_cls.__abstractmethods__))
            raise TypeError(f"agent class of {name!r} does not implement {missing} (algorithms.base.Agent)")
        _REGISTRY[name] = AlgorithmSpec(
            name=name,
            summary=summary,
            config_cls=config,
            agent_cls=agent_cls,
            presets=presets,
            task_overrides=task_overrides or (lambda preset, task: {}),
        )
        return agent_cls

    return decorate


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> AlgorithmSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(unknown_name("algorithm", name, names())) from None


def unknown_name(kind: str, value: str, valid: list[str], owner: str = "") -> str:
    close = _close(value, valid)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    of = f" of {owner}" if owner else ""
    return f"unknown {kind}{of} {value!r}.{hint} Valid {kind}s{of}: {', '.join(valid)}."


def unknown_keys(unknown: list[str], valid: Collection[str]) -> str:
    """The unknown keys, each with the valid ones it may be a slip for: 'seedz' (did you mean
    'seeds' or 'seed'?)."""

    hints = []
    for key in unknown:
        close = " or ".join(repr(match) for match in _close(key, valid))
        hints.append(repr(key) + (f" (did you mean {close}?)" if close else ""))
    return ", ".join(hints)


def _close(value: str, valid: Collection[str]) -> list[str]:
    """The valid names `value` may be a slip for, best first: those nearly as close as the closest
    (seedz: seed 0.89 and seeds 0.80 of a full match; entropy_coeff: entropy_coef 0.96 alone, not
    tanh_entropy 0.56)."""

    # In lower case: `PPO` is a slip for `ppo` (a full match), not a name of its own.
    scored = [(difflib.SequenceMatcher(None, value.lower(), name.lower()).ratio(), name) for name in valid]
    best = max((score for score, _ in scored), default=0.0)
    return [name for score, name in sorted(scored, reverse=True) if score >= max(0.5, best - 0.1)][:3]
