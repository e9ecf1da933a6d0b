"""A test that would wait for ever fails instead."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def alarm_after(seconds: int) -> Iterator[None]:
    """Raise in the main thread if the body is still running after `seconds`."""

    def hung(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it would have waited for ever")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
