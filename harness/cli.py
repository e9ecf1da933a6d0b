"""`gorl-bench`: one command line for every algorithm, task, study and report.

Each sub-command lives in its own module under `harness.commands` and registers itself
with `register(subparsers)`; this file only wires them together, turns `UserError` (and
running out of memory) into a short message instead of a traceback, and has `kill PID` stop
any command as Ctrl-C does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from harness.errors import UserError
from harness.signals import stop_on_sigterm

# Rendering is never needed; this keeps dm_control from probing for OpenGL.
os.environ.setdefault("MUJOCO_GL", "disable")

COMMAND_MODULES = ("catalog", "config", "run", "evaluate", "bench", "study", "report", "diagnose", "demo")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="gorl-bench",
        description="Benchmarks and ablations for online RL with generative policies.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"harness.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"gorl-bench {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as error:
        detail = out_of_memory(error)
        if detail is None:
            raise
        print(
            f"gorl-bench {args.command}: error: out of memory ({detail}). Lower the sizes that grow with "
            "the config (num_envs, rollout_steps, eval_episodes, network widths, the decoder's batch "
            "sizes) or give the process more memory.",
            file=sys.stderr,
        )
        return 1


def out_of_memory(error: BaseException) -> str | None:
    """What failed to allocate, when `error` is running out of memory: a MemoryError (Python, numpy,
    and any allocation under a limit such as `ulimit -v`) or torch's RuntimeError (its CPU
    allocator's "can't allocate memory", CUDA's "out of memory"); None for any other error."""

    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, MemoryError):
        return text or "an allocation failed"
    if "can't allocate memory" in text:  # torch's CPU allocator: "... you tried to allocate N bytes ..."
        size = re.search(r"tried to allocate (\d+) bytes", text)
        return f"torch could not allocate {int(size[1]) / 2**30:,.2f} GiB" if size else text
    if "out of memory" in text:  # CUDA's: "CUDA out of memory. Tried to allocate 20.00 GiB ..."
        return text
    return None


if __name__ == "__main__":
    sys.exit(main())
