"""`gorl-bench bench NAME`: speed benchmarks that print ratios against a reference measured in the same run.

Each benchmark lives in `harness/benchmarks/<name>.py` with `add_arguments(parser)` and
`main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib

from harness.commands.arguments import add_command

BENCHMARKS = {
    "envs": "env steps/s of the fast backend vs dm_control, and the raw physics limit",
    "train": "end-to-end training env steps/s per algorithm (--algos), the learner's share, ratios",
    "gorl": "GoRL (--algo gorl-fm or gorl-diffusion) wall-clock per counted env step relative to PPO",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "bench", "speed benchmarks (ratios against an in-run reference)")
    names = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, summary in BENCHMARKS.items():
        module = importlib.import_module(f"harness.benchmarks.{name}")
        sub = add_command(names, name, summary)
        module.add_arguments(sub)
        sub.set_defaults(func=module.main)
