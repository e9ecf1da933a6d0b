"""`gorl-bench list [algorithms|tasks|studies]`: what can be run — algorithms (with presets),
tasks and studies; all three, or the one named."""

from __future__ import annotations

import argparse

from harness.commands.arguments import add_command

SECTIONS = ("algorithms", "tasks", "studies")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "list", "list registered algorithms, tasks and studies")
    parser.add_argument("section", nargs="?", choices=SECTIONS, help="list only these (default: all three)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sections = [args.section] if args.section else list(SECTIONS)
    for section in sections:
        if len(sections) > 1:
            print(f"{section.capitalize()}:")
        for line in _LINES[section]():
            print(f"  {line}" if len(sections) > 1 else line)
    return 0


def _algorithms() -> list[str]:
    import algorithms

    lines = []
    for name in algorithms.names():
        spec = algorithms.get(name)
        lines.append(f"{name:16s} {spec.summary}  [presets: {', '.join(sorted(spec.presets))}]")
    return lines


def _tasks() -> list[str]:
    import envs

    return list(envs.describe_tasks())


def _studies() -> list[str]:
    import studies

    catalog = studies.catalog()
    width = max([16, *(len(name) for name, _ in catalog)])
    return [f"{name:{width}s} {summary}" for name, summary in catalog]


_LINES = {"algorithms": _algorithms, "tasks": _tasks, "studies": _studies}
