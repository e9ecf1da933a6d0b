"""What a study will run, before it runs: `gorl-bench study show SPEC`.

A study of 70 units of 1M env steps is hours of machine time; its spec says so only after some
arithmetic (the product of its grid, times tasks, times seeds). The plan lists the
configurations (or the search space), counts the units, and adds up their counted env steps as
`gorl-bench run` trains them: each unit's budget rounded up to whole updates of its own
configuration (`harness.run.trained_steps`), which a grid over `num_envs` or `rollout_steps`
changes. A tune study's configurations are not known in advance, so its count is a bound.
"""

from __future__ import annotations

from typing import Any

from harness.progress import count
from studies.spec import SearchDim, Spec, label_value


def plan_lines(spec: Spec) -> list[str]:
    """The plan of `spec` as printable lines."""

    algo = f", algo {spec.algo}" if spec.algo else ""
    description = f": {spec.description}" if spec.description else ""
    lines = [f"study {spec.name} ({spec.kind}{algo}, preset {spec.preset}){description}"]
    per = "trial" if spec.kind == "tune" else "configuration"
    lines.append(
        f"tasks: {', '.join(spec.tasks)}; {count(spec.seeds, 'seed')} per {per} and task; "
        f"{spec.steps:,} counted env steps per unit"
    )
    if spec.fixed:
        lines.append(f"fixed: {_settings(spec.fixed)}")
    return lines + (_tune_lines(spec) if spec.kind == "tune" else _configuration_lines(spec))


def _configuration_lines(spec: Spec) -> list[str]:
    configurations = spec.configurations()
    lines = [f"configurations ({len(configurations)}):"]
    units = steps = 0
    for label, algo, params in configurations:
        if spec.kind == "compare":
            lines.append(f"  {label}: {algo}" + (f", {_settings(params)}" if params else ""))
        else:
            lines.append(f"  {label}")
        for task in spec.tasks:
            units += spec.seeds
            steps += spec.seeds * _trained_steps(spec, algo, task, params)
    capped = spec.max_trials is not None and spec.max_trials < units
    total = f"{units:,} units, {steps:,} counted env steps in all"
    if capped:
        total += f"; max_trials ends the study after {spec.max_trials:,} of them"
    if any(_refits_decoders(algo) for _, algo, _ in configurations):
        total += ", plus the env steps GoRL's decoder refits collect (logged as steps/total)"
    return [*lines, total]


def _tune_lines(spec: Spec) -> list[str]:
    lines = [f"search space (sampler {spec.sampler}, pruner {spec.pruner}):"]
    lines += [f"  {dim.name}: {_dimension(dim)}" for dim in spec.space]
    per_trial = spec.seeds * len(spec.tasks)
    assert spec.max_trials is not None  # a tune spec needs it (`parse_spec`)
    units = spec.max_trials * per_trial
    pruned = "" if spec.pruner == "none" else ", fewer where the pruner stops a trial"
    lines.append(
        f"at most {spec.max_trials:,} trials of {count(per_trial, 'unit')}: {units:,} units, about "
        f"{units * spec.steps:,} counted env steps in all (before each budget is rounded up to whole "
        f"updates{pruned})"
    )
    if spec.concurrent_trials is None:
        lines.append("concurrent_trials unset: the --workers of the `study run` that creates the study")
    else:
        k = spec.concurrent_trials
        lines.append(
            f"concurrent_trials {k}: trial n is proposed from the trials up to n - {k}, whatever the workers"
        )
    return lines


def _trained_steps(spec: Spec, algo: str, task: str, params: dict[str, Any]) -> int:
    """The counted env steps a unit trains, as `gorl-bench run` trains them."""

    import algorithms
    from algorithms.config import resolve
    from harness.run import trained_steps

    return trained_steps(resolve(algorithms.get(algo), spec.preset, task, dict(params)), spec.steps)


def _refits_decoders(algo: str) -> bool:
    """Whether `algo` collects refit episodes outside its counted budget (GoRL's two timescales)."""

    import algorithms
    from algorithms.gorl import GoRLConfig

    return issubclass(algorithms.get(algo).config_cls, GoRLConfig)


def _dimension(dim: SearchDim) -> str:
    if dim.choices:
        return "one of " + ", ".join(label_value(choice) for choice in dim.choices)
    return f"{dim.low} to {dim.high}" + (", log scale" if dim.log else "")


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={label_value(value)}" for key, value in params.items())
