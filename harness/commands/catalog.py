"""`gorl-bench list`: what can be run — algorithms (with presets), tasks and studies."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list registered algorithms, tasks and studies")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import algorithms
    import envs
    import studies

    print("Algorithms:")
    for name in algorithms.names():
        spec = algorithms.get(name)
        print(f"  {name:16s} {spec.summary}  [presets: {', '.join(sorted(spec.presets))}]")
    print("Tasks:")
    for line in envs.describe_tasks():
        print(f"  {line}")
    print("Studies:")
    catalog = studies.catalog()
    width = max([16, *(len(name) for name, _ in catalog)])
    for name, summary in catalog:
        print(f"  {name:{width}s} {summary}")
    return 0
