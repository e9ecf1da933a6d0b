"""Reading the Markdown tables that CLI commands print (bench, config), shared by their tests."""

from __future__ import annotations


def table_rows(out: str) -> list[list[str]]:
    """The body rows of the one Markdown table in `out`, as lists of cells."""

    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header
