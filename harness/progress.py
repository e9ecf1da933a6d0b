"""A progress display for work that is often short: it appears only once the work has run a second.

In a terminal it is a rich spinner (with a bar when the total is known) on stderr, gone when the
work ends. Without one (a log file, a pipe, a batch job) a bar would show nothing: a plain line
goes to stderr after a few seconds and then every PLAIN_INTERVAL_S instead, so a long command's
log still shows it is alive.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

# Work that ends sooner prints no display at all.
PROGRESS_DELAY_S = 1.0
# Lines without a terminal: often enough to tell a running command from a stuck one, rarely
# enough to keep a day-long log short.
PLAIN_INTERVAL_S = 60.0
# The first of them comes sooner: a log then shows within seconds that a long command is working
# (one that waited a minute for its first line looked hung).
FIRST_PLAIN_LINE_S = 5.0
# How often a log's heartbeat checks that a line is due while the work between two lines of the
# command's own runs long.
HEARTBEAT_POLL_S = 1.0


def duration(seconds: float) -> str:
    """A duration as every command prints one: `42s`, `3m05s`, `2h07m` (no seconds past an hour)."""

    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def count(n: int, noun: str) -> str:
    """`n` and its noun, plural unless n is 1, as every command counts things: `1 iteration`,
    `1,024 units`."""

    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def compact_count(n: int) -> str:
    """A count in at most 5 characters: 9,999, 336k, 1.00M, 180M, 1.80G."""

    if n < 10_000:
        return f"{n:,}"
    scale, suffix = next(
        (scale, suffix) for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if n >= scale
    )
    return f"{n / scale:.2f}{suffix}" if n < 10 * scale else f"{n / scale:.0f}{suffix}"


class PlainLines:
    """When a progress display without a terminal prints its next line: at news (an evaluation, a
    unit that ended), FIRST_PLAIN_LINE_S after the start, and at least every PLAIN_INTERVAL_S
    after that."""

    def __init__(self) -> None:
        self.printed_at = time.monotonic()
        self.interval = min(FIRST_PLAIN_LINE_S, PLAIN_INTERVAL_S)

    def due(self, news: bool = False) -> bool:
        now = time.monotonic()
        if news or now - self.printed_at >= self.interval:
            self.printed_at, self.interval = now, PLAIN_INTERVAL_S
            return True
        return False


class LogHeartbeat:
    """The progress lines of a log: the command's own (`show`), printed at news or when a line is
    due (`PlainLines`), and, while the work between two of them runs longer (a `paper` preset's
    iteration on a CPU, a decoder refit: minutes), `repeat(last line shown or None)` from a daemon
    thread that only prints, so that a log gets a line at least every PLAIN_INTERVAL_S. `repeat`
    returning None prints nothing. The thread runs from `start()` to `stop()`."""

    def __init__(self, repeat: Callable[[str | None], str | None]) -> None:
        self.repeat = repeat
        self.lines = PlainLines()
        self.last: str | None = None
        self.printing = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def show(self, line: str, news: bool = False) -> bool:
        """Print `line` if it is news or a line is due; whether it was printed."""

        with self.printing:
            self.last = line
            if self.lines.due(news):
                print(line, file=sys.stderr, flush=True)
                return True
            return False

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_POLL_S):
            with self.printing:
                line = self.repeat(self.last)
                if line is not None and self.lines.due():
                    print(line, file=sys.stderr, flush=True)


class PhaseSpinner:
    """What a command does during seconds that show no count (opening a store, building envs), as
    a spinner `label: phase` on a terminal; in a log, a line per phase if `log_lines` (a command
    whose own progress lines do not show it is working); nothing when not `enabled`. A terminal
    shows one live display at a time: `done()` before a progress bar starts."""

    def __init__(self, label: str, enabled: bool = True, *, log_lines: bool = False) -> None:
        self.label, self.enabled = label, enabled
        self.log_lines = enabled and log_lines and not sys.stderr.isatty()
        self.status: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status(f"{label}: starting")

    def __enter__(self) -> PhaseSpinner:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def say(self, text: str) -> None:
        if self.log_lines:
            print(f"{self.label}: {text}", file=sys.stderr, flush=True)
        if self.status is not None:
            # Naming the spinner draws the new text at once (a text alone waits for the next
            # refresh, which a short phase may not see).
            self.status.update(f"{self.label}: {text}", spinner="dots")

    def done(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class DelayedProgress:
    """A progress display shown from PROGRESS_DELAY_S on; in a log, lines (`LogHeartbeat`) from
    FIRST_PLAIN_LINE_S on, also while one step of the work runs for minutes.

    `text` formats the count, e.g. "bootstrap: {task.completed:,.0f} resamples" (`task.total`
    is `total`).
    """

    def __init__(self, text: str, total: int | None = None) -> None:
        self.text = text
        self.total = total
        self.started = time.monotonic()
        self.done = 0
        self.display: Any = None
        self.task: Any = None
        self.log = None if sys.stderr.isatty() else LogHeartbeat(lambda _last: self._line())

    def __enter__(self) -> DelayedProgress:
        if self.log is not None:
            self.log.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.display is not None:
            self.display.stop()
        if self.log is not None:
            self.log.stop()

    def _line(self) -> str:
        count = self.text.format(task=SimpleNamespace(completed=self.done, total=self.total))
        return f"{count} ({duration(time.monotonic() - self.started)})"

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.log is not None:
            self.log.show(self._line())
            return
        if self.display is None:
            if time.monotonic() - self.started < PROGRESS_DELAY_S:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            columns = [SpinnerColumn(), TextColumn(self.text), TimeElapsedColumn()]
            if self.total is not None:
                columns.insert(2, BarColumn())
            self.display = Progress(*columns, transient=True, console=Console(stderr=True))
            self.display.start()
            self.task = self.display.add_task("work", total=self.total)
        self.display.update(self.task, completed=self.done)
