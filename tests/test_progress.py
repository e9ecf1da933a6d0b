"""`harness.progress`: long work is seen to progress, in a terminal or in a log."""

from __future__ import annotations

import time

import harness.progress
from harness.progress import DelayedProgress, count, duration


def test_without_a_terminal_the_progress_is_a_plain_line_now_and_then(monkeypatch, capsys):
    """A rich display draws nothing into a log: `bench train` with the paper preset, `evaluate`
    and `report` were silent there for as long as they ran."""

    monkeypatch.setattr(harness.progress, "PLAIN_INTERVAL_S", 0.0)
    with DelayedProgress("work: {task.completed:,.0f}/{task.total:,.0f} items", total=2000) as progress:
        progress.advance(1500)
        progress.advance(500)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout keeps the command's own output (tables, JSON paths)
    lines = captured.err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["work: 1,500/2,000 items", "work: 2,000/2,000 items"]


def test_without_a_terminal_a_line_comes_also_while_one_step_of_the_work_runs_long(monkeypatch, capsys):
    """Lines came only from `advance`: a count whose steps take minutes (a `paper` preset's
    training iteration) left a log silent for as long as each one ran."""

    monkeypatch.setattr(harness.progress, "FIRST_PLAIN_LINE_S", 0.1)
    monkeypatch.setattr(harness.progress, "HEARTBEAT_POLL_S", 0.02)
    with DelayedProgress("work: {task.completed:,.0f}/{task.total:,.0f} steps", total=2):
        time.sleep(0.5)  # the first step, never advanced past
    assert capsys.readouterr().err.startswith("work: 0/2 steps (0s)\n")


def test_without_a_terminal_short_work_prints_nothing(capsys):
    with DelayedProgress("work: {task.completed:,.0f} items") as progress:
        progress.advance(10)
    assert capsys.readouterr().err == ""


def test_the_first_plain_line_comes_within_seconds_then_every_interval(monkeypatch):
    """A log waited PLAIN_INTERVAL_S (a minute) for its first line: `evaluate` of a million episodes
    or a large `report` looked hung for that long."""

    from harness.progress import FIRST_PLAIN_LINE_S, PLAIN_INTERVAL_S, PlainLines

    now = [1000.0]
    monkeypatch.setattr(harness.progress.time, "monotonic", lambda: now[0])
    lines = PlainLines()
    due = []
    for t in (
        FIRST_PLAIN_LINE_S - 1,
        FIRST_PLAIN_LINE_S,
        FIRST_PLAIN_LINE_S + 10,
        FIRST_PLAIN_LINE_S + PLAIN_INTERVAL_S,
    ):
        now[0] = 1000.0 + t
        due.append(lines.due())
    assert due == [False, True, False, True]


def test_every_command_writes_a_duration_one_way():
    """`demo` said `Done in 0m07s`, `study status` `ETA 1h02m`, progress lines `(3725 s)`."""

    assert [duration(s) for s in (0, 7.4, 65, 3599.6, 3725)] == ["0s", "7s", "1m05s", "1h00m", "1h02m"]


def test_counts_are_plural_unless_one():
    """`bench train --iterations 1` printed "1 iterations"."""

    assert count(1, "iteration") == "1 iteration"
    assert count(0, "unit") == "0 units" and count(2048, "unit") == "2,048 units"
