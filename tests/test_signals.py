"""`harness.signals`: Ctrl-C and `kill` wait for the store write in progress."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from harness.signals import signals_deferred


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_inside_the_block_is_handled_after_it(name):
    """Even when the signal reaches another thread (torch's, say: the kernel may hand a
    process-directed signal to any thread not blocking it)."""

    signum = getattr(signal, name)
    events = []
    go = threading.Event()
    sender = threading.Thread(target=lambda: (go.wait(), os.kill(os.getpid(), signum)))
    sender.start()  # before the block, like a worker's torch threads
    previous = signal.signal(signum, lambda *_: events.append("handled"))
    try:
        with signals_deferred():
            go.set()
            sender.join()
            time.sleep(0.2)  # where a handler run inside the block would run
            events.append("body done")
        events.append("after the block")
    finally:
        signal.signal(signum, previous)
    assert events == ["body done", "handled", "after the block"]


def test_ctrl_c_while_the_commands_load_is_no_traceback(monkeypatch, capsys):
    """Loading the command modules imports torch (a second or two): Ctrl-C then escaped `main`
    as a KeyboardInterrupt traceback, in `run` as in each worker of `study run`."""

    from interrupts import interrupted_inside_a_c_extension_import

    import harness.cli

    monkeypatch.setattr(harness.cli, "build_parser", interrupted_inside_a_c_extension_import)
    assert harness.cli.main(["list"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_second_signal_while_the_command_says_it_stopped_is_no_traceback(monkeypatch, capsys):
    """A study worker gets the terminal's Ctrl-C and then its coordinator's SIGTERM: the second,
    raised inside the handler of the first while it printed "interrupted", was a traceback."""

    import builtins

    import harness.cli
    from harness.signals import interrupt

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_print = builtins.print

    def print_then_terminated(*args, **kwargs):
        real_print(*args, **kwargs)
        interrupt(signal.SIGTERM, None)  # as if SIGTERM arrived right then

    monkeypatch.setattr(harness.cli, "build_parser", interrupted)
    monkeypatch.setattr(builtins, "print", print_then_terminated)
    try:
        code = harness.cli.main(["list"])
    except KeyboardInterrupt:
        code = None  # escaped main: the traceback
    monkeypatch.setattr(builtins, "print", real_print)
    assert code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_an_interrupt_dropped_in_a_garbage_collection_callback_prints_no_traceback():
    """A Ctrl-C that lands in a weakref callback (importlib's module locks, while a study worker
    imports torch) printed "Exception ignored in ... Traceback ..." under the command's one line;
    the interrupt itself is remembered and stops the command. Other dropped errors still print."""

    import subprocess
    import sys

    script = """
import signal
from harness.signals import interrupt, raise_if_interrupted, stop_on_interrupts
stop_on_interrupts()
class Collected:
    def __init__(self, error):
        self.error = error
    def __del__(self):
        if self.error:
            raise ValueError("a real bug")
        interrupt(signal.SIGINT, None)
Collected(False)
try:
    raise_if_interrupted()
except KeyboardInterrupt:
    print("stopped")
Collected(True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout == "stopped\n"
    assert "KeyboardInterrupt" not in done.stderr
    assert "Exception ignored" in done.stderr and "ValueError: a real bug" in done.stderr
