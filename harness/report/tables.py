"""The report's tables, built once as rows of text and rendered as Markdown or LaTeX."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.scores import final_rows
from harness.report.stats import AGGREGATES, PAIR_SEPARATOR


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def latex(self, caption: str) -> str:
        """A booktabs table; the first column left-aligned, the others centred."""

        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_escape(caption)}}}",
            "\\begin{tabular}{l" + "c" * (len(self.header) - 1) + "}",
            "\\toprule",
            " & ".join(_escape(cell) for cell in self.header) + " \\\\",
            "\\midrule",
        ]
        for row in self.rows:
            lines.append(" & ".join(_escape(cell) for cell in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(lines)


def aggregate_table(points: Mapping[str, np.ndarray], intervals: Mapping[str, np.ndarray]) -> Table:
    """Variant x aggregate metric: point estimate [95% interval]."""

    rows = [
        [variant, *(_estimate(points[variant][i], intervals[variant][:, i]) for i in range(len(AGGREGATES)))]
        for variant in points
    ]
    return Table(["Variant", *AGGREGATES], rows)


def improvement_table(points: Mapping[str, float], intervals: Mapping[str, np.ndarray]) -> Table:
    """One row per pair of variants X, Y: P(X > Y) [95% interval]."""

    rows = []
    for pair, value in points.items():
        x, y = pair.split(PAIR_SEPARATOR, 1)
        rows.append([x, y, _estimate(value, np.ravel(intervals[pair]))])
    return Table(["X", "Y", "P(X > Y)"], rows)


def ranked_trials_table(
    iqms: Mapping[str, tuple[float, np.ndarray]], params: Mapping[str, Mapping[str, object]]
) -> Table:
    """Tune trials, best first: rank, trial, final IQM [95% interval] and the sampled parameters."""

    names = list(next(iter(params.values()), {}))
    rows = [
        [str(rank), trial, _estimate(*iqms[trial]), *(_parameter(params[trial][name]) for name in names)]
        for rank, trial in enumerate(iqms, start=1)
    ]
    return Table(["Rank", "Trial", "IQM", *names], rows)


def importance_table(shares: Mapping[str, float]) -> Table:
    """Each searched parameter's share of the variance of the trials' IQM, largest first."""

    return Table(["Parameter", "Importance"], [[name, f"{share:.3f}"] for name, share in shares.items()])


def _parameter(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def per_task_table(table: pd.DataFrame, tasks: Sequence[str]) -> Table:
    """Variant x task: mean ± std (over seeds) of the final raw return, with the number of seeds."""

    finals = final_rows(table)
    stats = finals.groupby(["variant", "task"], sort=False)["eval_return"].agg(["mean", "std", "count"])
    rows = []
    for variant in finals["variant"].unique():
        cells = [variant]
        for task in tasks:
            if (variant, task) not in stats.index:
                cells.append("-")
                continue
            mean, std, count = stats.loc[(variant, task)]
            spread = "" if count < 2 else f" ± {std:.1f}"
            cells.append(f"{mean:.1f}{spread} (n={count:.0f})")
        rows.append(cells)
    return Table(["Variant", *tasks], rows)


def ablation_table(
    points: Mapping[str, np.ndarray], intervals: Mapping[str, np.ndarray], parameter: str
) -> Table:
    """Value of one swept parameter x final IQM [95% interval]."""

    return Table(
        [parameter, "IQM"], [[value, _estimate(points[value], intervals[value])] for value in points]
    )


def _estimate(point: float, interval: np.ndarray) -> str:
    return f"{float(point):.3f} [{float(interval[0]):.3f}, {float(interval[1]):.3f}]"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {
    "\\": "\\textbackslash{}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    # LaTeX's default (OT1) font encoding prints these as "¡" and "¿" in text mode.
    "<": "$<$",
    ">": "$>$",
}


def _escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(char, char) for char in text)
    # A cell that starts with "[" (a list-valued parameter) would, first in its row, be read as the
    # optional argument of the `\\` or `\\midrule` before it; braces end that.
    return "{}" + escaped if escaped.startswith("[") else escaped
