"""`kill` treated as Ctrl-C, and both held back while a write to a store must not be cut in half.

Used where an interrupted write would leave a store inconsistent: a study's claim of a trial
and the owner written with it, and every MLflow write of a run (an SQLite write cut by
KeyboardInterrupt keeps its lock, so the run could not even be marked KILLED afterwards).

An interrupt is also remembered (`raise_if_interrupted`): Python drops an exception raised
inside a garbage-collection callback ("Exception ignored in ..."), so a Ctrl-C that lands in
one (SQLAlchemy's, while an MLflow store is created) would otherwise be lost and the run
would train to its end.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness.errors import UserError, describe

_received: list[int] = []  # the interrupts `interrupt` raised in this command
_stopping: list[bool] = []  # non-empty once the command is stopping: later interrupts only recorded
PARENT_POLL_S = 1.0  # how often a worker checks that the process that started it still runs


def interrupt(signum: int, frame: object) -> None:
    """The SIGINT and SIGTERM handler: stop the command as Ctrl-C does (a run ends KILLED with
    its last checkpoint, a study's coordinator stops its workers, which would otherwise train
    on, orphaned, and says how to resume), and remember it for `raise_if_interrupted`."""

    _received.append(signum)
    if not _stopping:
        raise KeyboardInterrupt(f"signal {signum}")


def stopping() -> None:
    """The command is stopping (saying so, exiting): a further interrupt, such as the SIGTERM a
    study coordinator sends its workers after the Ctrl-C they got too, is recorded, not raised
    inside the handler of the first (a traceback)."""

    _stopping.append(True)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if an interrupt came in this command: called between training
    iterations, where nothing would still run had its KeyboardInterrupt not been dropped."""

    if _received:
        raise KeyboardInterrupt(f"signal {_received[0]}")


def forget_interrupts() -> None:
    """Forget the interrupts of an earlier command run in this process."""

    _received.clear()
    _stopping.clear()


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether `error` is an interrupt or was caused by one. A KeyboardInterrupt raised while a C
    extension module initialises (mujoco's, torch's: imported lazily, often in the first seconds
    of a command) leaves the import as an ImportError, "initialization failed", whose cause it is;
    `except KeyboardInterrupt` misses that, and the interrupt would be reported as a failure."""

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def interrupts_unwrapped() -> Iterator[None]:
    """Raise an error that an interrupt caused as a KeyboardInterrupt, which Ctrl-C's handlers
    catch (also usable as a decorator)."""

    try:
        yield
    except Exception as error:
        if caused_by_interrupt(error):
            raise KeyboardInterrupt(f"interrupted: {describe(error)}") from error
        raise


def _quiet_dropped_interrupts(unraisable: sys.UnraisableHookArgs) -> None:
    """`sys.unraisablehook`: Python drops an exception raised in a garbage-collection or weakref
    callback (importlib's module locks have one) and prints "Exception ignored in ..." with a
    traceback. An interrupt is remembered by `interrupt` and stops the command at the next
    `raise_if_interrupted`, so it prints nothing here; anything else prints as before."""

    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _received:
        return
    sys.__unraisablehook__(unraisable)


def stop_on_interrupts() -> None:
    """Install `interrupt` for SIGINT and SIGTERM (`kill PID`), forgetting earlier interrupts (a
    command run again in the same process); a no-op outside the main thread, where Python can
    set no handler. A dropped interrupt prints no traceback (`_quiet_dropped_interrupts`)."""

    forget_interrupts()
    sys.unraisablehook = _quiet_dropped_interrupts
    if threading.current_thread() is threading.main_thread():
        # SIGINT only where Python's own handler is set: one ignored (a background job's) stays so.
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, interrupt)
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


def interrupt_when_parent_ends(parent_pid: int) -> None:
    """Send this process SIGTERM (handled as `kill PID`) once its parent is no longer `parent_pid`.

    A study's coordinator stops its workers when it is interrupted, but one killed outright
    (SIGKILL, the out-of-memory killer, a closed SSH session) cannot, and its workers would train
    on, orphaned, beside the workers of the next `study run`. An orphan is adopted by another
    process, which changes its parent pid: a watching thread sees that within PARENT_POLL_S. The
    pid is the one the coordinator passed, not the one read at start-up, so a coordinator that
    died before the worker got here is noticed too.
    """

    if os.getppid() != parent_pid:
        raise UserError(
            f"--parent-pid {parent_pid}: this worker was started by process {os.getppid()}, not by that one "
            "(or that one has already ended)."
        )

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        print(f"the process that started this worker ({parent_pid}) has ended; stopping", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
