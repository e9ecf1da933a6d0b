"""`kill` treated as Ctrl-C, and both held back while a write to a store must not be cut in half.

Used where an interrupted write would leave a store inconsistent: a study's claim of a trial
and the owner written with it, and every MLflow write of a run (an SQLite write cut by
KeyboardInterrupt keeps its lock, so the run could not even be marked KILLED afterwards).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def interrupt(signum: int, frame: object) -> None:
    """A SIGTERM handler that stops the command as Ctrl-C does: a run ends KILLED with its last
    checkpoint, a study's coordinator stops its workers (which would otherwise train on,
    orphaned) and says how to resume."""

    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Install `interrupt` for SIGTERM (`kill PID`); a no-op outside the main thread, where Python
    can set no handler."""

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Handle SIGINT and SIGTERM only once the body is done.

    Blocking them (pthread_sigmask) is not enough: a mask holds for the calling thread only, and
    with other threads running (torch's) the kernel hands the signal to one of those, after which
    Python runs the handler in the main thread all the same, inside the body. So for the body's
    duration the handlers only record a signal, and the signals recorded are raised again after
    the old handlers are back.
    """

    if threading.current_thread() is not threading.main_thread():
        yield  # Python handlers can only be set, and only run, in the main thread
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        # None: a handler installed outside Python, which could not be put back afterwards.
        if signal.getsignal(signum) is not None:
            previous[signum] = signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
