"""`harness.progress`: long work is seen to progress, in a terminal or in a log."""

from __future__ import annotations

import harness.progress
from harness.progress import DelayedProgress


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


def test_without_a_terminal_short_work_prints_nothing(capsys):
    with DelayedProgress("work: {task.completed:,.0f} items") as progress:
        progress.advance(10)
    assert capsys.readouterr().err == ""
