"""`gorl-bench`: one command line for every algorithm, task, study and report.

Each sub-command lives in its own module under `harness.commands` and registers itself
with `register(subparsers)`; this file only wires them together, turns `UserError` (and
running out of memory) into a short message instead of a traceback, and has `kill PID` stop
any command as Ctrl-C does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from harness.errors import UserError, out_of_memory
from harness.signals import interrupts_unwrapped, stop_on_interrupts, stopping

# Rendering is never needed; this keeps dm_control from probing for OpenGL.
os.environ.setdefault("MUJOCO_GL", "disable")
# The commands say what they do: MLflow's INFO lines ("Creating initial MLflow database tables...")
# would interleave with them (a user's own MLFLOW_LOGGING_LEVEL is kept).
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# MLflow logs a database error with its whole traceback before it raises it; the commands turn the
# raised error into one line ("cannot write to the MLflow store ..."), which came after ~90 lines.
DATABASE_ERROR_LOGGER = "mlflow.store.db.utils"
# The values dm_control's renderer accepts (dm_control/_render/constants.py), canonical name first.
MUJOCO_GL_VALUES = ("glfw", "on", "enable", "enabled", "true", "1", "", "egl", "osmesa", "off", "disable",
                    "disabled", "false", "0")  # fmt: skip

COMMAND_MODULES = ("catalog", "config", "run", "evaluate", "bench", "study", "report", "diagnose", "demo")


def build_parser() -> argparse.ArgumentParser:
    import importlib
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="gorl-bench",
        description="Benchmarks and ablations for online RL with generative policies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('gorl-bench')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"harness.commands.{name}").register(subparsers)
    return parser


def check_environment() -> None:
    """Refuse the environment variables that make a library fail with a traceback at import or at
    its first log line, rather than where the command uses them."""

    backend = os.environ["MUJOCO_GL"]
    if backend not in MUJOCO_GL_VALUES:
        raise UserError(
            f"MUJOCO_GL is {backend!r}, which dm_control does not know: use egl (headless, GPU or Mesa), "
            "osmesa (software), glfw (a display) or disable (no rendering, what gorl-bench sets if unset)."
        )
    level = os.environ["MLFLOW_LOGGING_LEVEL"]
    if not isinstance(logging.getLevelName(level.upper()), int):  # how MLflow reads it
        raise UserError(
            f"MLFLOW_LOGGING_LEVEL is {level!r}, which names no logging level: use DEBUG, INFO, WARNING "
            "(what gorl-bench sets if unset), ERROR or CRITICAL."
        )


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_interrupts()
    logging.getLogger(DATABASE_ERROR_LOGGER).setLevel(logging.CRITICAL)
    prog = "gorl-bench"
    try:
        with interrupts_unwrapped():
            # Inside: importing the command modules takes a second or two (torch), and Ctrl-C
            # then is no error either.
            args = build_parser().parse_args(argv)
            prog = f"gorl-bench {args.command}"
            check_environment()
            return int(args.func(args) or 0)
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        stopping()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whatever read the output has stopped (`gorl-bench config ppo | head`): no error of ours.
        # Python's own flush of stdout at exit would fail again, so stdout goes to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a command its pipe's reader left
    except OSError as error:
        # A path the file system refuses where no check expected it (a name over 255 bytes makes
        # even `Path.exists` raise): the path and the reason, not a traceback.
        if error.filename is None:
            raise
        paths = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
        print(f"{prog}: error: {paths}: {error.strerror}.", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        detail = out_of_memory(error)
        if detail is None:
            raise
        print(
            f"{prog}: error: out of memory ({detail}). Lower the sizes that grow with "
            "the config (num_envs, rollout_steps, eval_episodes, network widths, the decoder's batch "
            "sizes) or the command's counts, or give the process more memory.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
