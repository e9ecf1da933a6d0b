"""`gorl-bench config`: the configuration a run would use, where each value comes from and why.

Every key of the algorithm's resolved config (class default -> preset -> task -> `--set`) is
printed with the layer that set it and the source comment of its class default (paper table,
official code, or the reason it was chosen here). `--toml` prints the resolved values as the
`config.toml` a run logs to MLflow instead. For an algorithm with a stage schedule (GoRL), the
stages of a `--steps` run follow, with the settings that change per stage.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show an algorithm's resolved config, where each value comes from and its source",
        description="Show the config `gorl-bench run` would use: each key's value, the layer that set it "
        "(default, preset, task, --set) and the source of its default.",
    )
    parser.add_argument("algo", help="registered algorithm (see `gorl-bench list`)")
    parser.add_argument("--preset", default="cpu", help="config preset (default cpu; paper: the paper's)")
    parser.add_argument(
        "--task", default="walker-walk", help="task whose overrides apply (default walker-walk)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument(
        "--steps", type=int, default=1_000_000, help="run budget for a stage schedule (default 1000000)"
    )
    parser.add_argument("--toml", action="store_true", help="print the resolved values as TOML only")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import dataclasses

    import algorithms
    import envs
    from algorithms.config import as_dict, field_notes, origins, parse_assignments, resolve
    from harness.errors import UserError
    from harness.tracking import to_toml

    spec = algorithms.get(args.algo)
    task = envs.canonical_task(args.task)
    overrides = parse_assignments(args.overrides)
    config = resolve(spec, args.preset, task, overrides)
    values = as_dict(config)
    if args.toml:
        print(to_toml({"config": values}), end="")
        return 0
    stage_rows = []
    if hasattr(config, "stage_table"):  # an algorithm with a stage schedule (GoRL)
        try:
            stage_rows = config.stage_table(args.steps)
        except ValueError as error:
            raise UserError(str(error)) from None
    set_by = origins(spec, args.preset, task, overrides)
    notes = field_notes(spec.config_cls)
    defaults = {f.name: f.default for f in dataclasses.fields(spec.config_cls)}
    print(f"{args.algo}, preset {args.preset}, task {task}: {len(values)} keys\n")
    print("| key | value | set by | default and its source |\n|---|---|---|---|")
    for key, value in values.items():
        default = defaults[key]
        default = list(default) if isinstance(default, tuple) else default
        print(f"| {key} | {value!r} | {set_by[key]} | {default!r}: {notes[key]} |")
    if stage_rows:
        print(f"\nStages of a {args.steps:,}-step run (a decoder refit between consecutive stages):\n")
        print("| " + " | ".join(stage_rows[0]) + " |\n" + "|---" * len(stage_rows[0]) + "|")
        for row in stage_rows:
            print("| " + " | ".join(str(value) for value in row.values()) + " |")
    return 0
