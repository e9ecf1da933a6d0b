"""`gorl-bench config`: the configuration a run would use, where each value comes from and why.

Every key of the algorithm's resolved config (class default -> preset -> task -> `--set`) is
printed with the layer that set it and the source comment of its class default (paper table,
official code, or the reason it was chosen here). `--toml` prints the resolved values as TOML
instead, with a `[run]` table naming the algorithm, preset and task: the shape of the
`config.toml` a run writes, and a file `run --config` takes. For an algorithm with a stage
schedule (GoRL), the stages of a `--steps` run follow, with the settings that change per stage.
"""

from __future__ import annotations

import argparse
import dataclasses

from harness.commands.arguments import add_set_option, file_path, non_empty, positive_int
from harness.commands.run import DEFAULTS as RUN_DEFAULTS

# A list longer than this is shortened in the table (its first and last items and its length):
# e.g. the `stages` of a many-refit schedule would otherwise fill a terminal line many times over.
MAX_LIST_ITEMS = 8
# The task whose overrides the table shows without --task: walker-walk, the task the README's
# first GoRL run and `bench gorl` use.
DEFAULT_TASK = "walker-walk"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show an algorithm's resolved config, where each value comes from and its source",
        description="Show the config `gorl-bench run` would use: each key's value, the layer that set it "
        "(default, preset, task, --set) and the source of its default.",
    )
    parser.add_argument("algo", nargs="?", help="registered algorithm (see `gorl-bench list`)")
    parser.add_argument("--preset", type=non_empty, help="config preset (default cpu; paper: the paper's)")
    parser.add_argument("--task", type=non_empty, help=f"task whose overrides apply (default {DEFAULT_TASK})")
    add_set_option(parser)
    parser.add_argument(
        "--config",
        type=file_path,
        metavar="FILE",
        help="TOML file of settings, as `run --config` reads it (its [run] table gives algo, preset, "
        "task and steps left out here)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        help=f"run budget, checked as `run` checks it; the table's stage schedule is for it (default "
        f"{RUN_DEFAULTS['steps']}; with --toml: no budget, so no budget check)",
    )
    parser.add_argument("--toml", action="store_true", help="print the resolved values as TOML only")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import algorithms
    import envs
    from algorithms.config import as_dict, field_notes, origins, parse_assignments, resolve
    from harness.config_file import choices, load_config_file
    from harness.errors import UserError
    from harness.run import check_run
    from harness.tracking import to_toml

    config_file = load_config_file(args.config) if args.config is not None else None
    if config_file is not None:  # `config` takes no seed or device
        config_file.fill_options(args, ("algo", "preset", "task", "steps"))
    if args.algo is None:
        raise UserError(
            "name the algorithm (gorl-bench config ALGO), or give a --config file whose [run] does."
        )
    args.preset = args.preset or RUN_DEFAULTS["preset"]
    spec = algorithms.get(args.algo)
    task = envs.canonical_task(args.task or DEFAULT_TASK)
    from_file = choices(config_file, args.algo) if config_file else {}
    overrides = parse_assignments(args.overrides)
    config = resolve(spec, args.preset, task, {**from_file, **overrides})
    steps = args.steps or RUN_DEFAULTS["steps"]
    # What `run` would refuse (a latent size the task cannot take, a budget below one update or
    # one the stage schedule cannot split) is refused here too, so that a config shown without
    # complaint is one that runs. The TOML holds no budget: without --steps it is not checked.
    budget_note = ""
    if args.steps is not None:
        check_run(config, task, steps)
    elif not args.toml:
        budget_note = _default_budget_problem(config, task, steps)
    values = as_dict(config)
    if args.toml:
        # The [run] table makes the output a config file that `run --config` reads as this
        # preset's and task's values (see harness/config_file.py).
        run_table = {"algo": args.algo, "preset": args.preset, "task": task}
        print(to_toml({"run": run_table, "config": values}), end="")
        return 0
    # An algorithm with a stage schedule (GoRL) whose budget check_run has passed.
    stage_rows = config.stage_table(steps) if hasattr(config, "stage_table") and not budget_note else []
    file_layer = (args.config.name, from_file) if config_file else None
    set_by = origins(spec, args.preset, task, overrides, config_file=file_layer)
    notes = field_notes(spec.config_cls)
    defaults = {f.name: _default(f) for f in dataclasses.fields(spec.config_cls)}
    task_note = " (the default; --task for another's overrides)" if args.task is None else ""
    print(f"{args.algo}, preset {args.preset}, task {task}{task_note}: {len(values)} keys\n")
    print("| key | value | set by | default and its source |\n|---|---|---|---|")
    for key, value in values.items():
        default = defaults[key]
        default = list(default) if isinstance(default, tuple) else default
        print(f"| {key} | {_cell(value)} | {set_by[key]} | {_cell(default)}: {notes[key]} |")
    if stage_rows:
        print(f"\nStages of a {steps:,}-step run (a decoder refit between consecutive stages):\n")
        print("| " + " | ".join(stage_rows[0]) + " |\n" + "|---" * len(stage_rows[0]) + "|")
        for row in stage_rows:
            print("| " + " | ".join(str(value) for value in row.values()) + " |")
    if budget_note:
        print(f"\n{budget_note}")
    return 0


def _default_budget_problem(config: object, task: str, steps: int) -> str:
    """Check the config as `run` would with its default budget: "" if it passes, else a note on why
    the default budget does not fit (a `paper` preset's 983,040-step updates, say). Any other
    refusal is raised: without --steps the config is shown, with a budget that does not fit it the
    run is refused."""

    from harness.errors import UserError
    from harness.run import check_run, check_setup

    try:
        check_run(config, task, steps)
        return ""
    except UserError as error:
        check_setup(config, task)  # a refusal that no budget lifts is the user's to see
        reason = str(error).removeprefix(f"--steps {steps}: ")
        return (
            f"No stage schedule shown: a run's default budget (--steps {steps:,}) does not fit this "
            f"config: {reason} Give --steps to see the stages of a budget that fits."
        )


def _default(field: dataclasses.Field) -> object:
    """A field's class default: its value, what its factory makes, or "(required)" without one."""

    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "(required)"


def _cell(value: object) -> str:
    """`repr(value)`, with a long list shortened to its first and last items and its length."""

    if not isinstance(value, list | tuple) or len(value) <= MAX_LIST_ITEMS:
        return repr(value)
    half = MAX_LIST_ITEMS // 2
    items = [repr(item) for item in value[:half]] + ["..."] + [repr(item) for item in value[-half:]]
    return f"[{', '.join(items)}] ({len(value)} items)"
