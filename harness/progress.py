"""A progress display for work that is often short: it appears only once the work has run a second."""

from __future__ import annotations

import time
from typing import Any

# Work that ends sooner prints no display at all.
PROGRESS_DELAY_S = 1.0


class DelayedProgress:
    """A rich spinner with a count (and a bar when `total` is known), shown from PROGRESS_DELAY_S
    on and gone when the work ends.

    `text` formats the count, e.g. "bootstrap: {task.completed:,.0f} resamples".
    """

    def __init__(self, text: str, total: int | None = None) -> None:
        self.text = text
        self.total = total
        self.started = time.monotonic()
        self.done = 0
        self.display: Any = None
        self.task: Any = None

    def __enter__(self) -> DelayedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.display is not None:
            self.display.stop()

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.display is None:
            if time.monotonic() - self.started < PROGRESS_DELAY_S:
                return
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            columns = [SpinnerColumn(), TextColumn(self.text), TimeElapsedColumn()]
            if self.total is not None:
                columns.insert(2, BarColumn())
            self.display = Progress(*columns, transient=True)
            self.display.start()
            self.task = self.display.add_task("work", total=self.total)
        self.display.update(self.task, completed=self.done)
