"""Print a benchmark's result table, in a terminal (rich) or as Markdown for the docs."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class Report:
    """A titled table; the first ``left`` columns are text, the others numbers."""

    title: str
    columns: list[str]
    caption: str = ""
    left: int = 2
    rows: list[list[str]] = field(default_factory=list)

    def add_row(self, *cells: str) -> None:
        """Append one row (as many cells as columns)."""
        self.rows.append(list(cells))


def to_markdown(report: Report) -> str:
    """A GitHub Markdown table with the title above and the caption below."""
    align = ["---" if i < report.left else "---:" for i in range(len(report.columns))]
    lines = [f"**{report.title}**", "", "| " + " | ".join(report.columns) + " |",
             "|" + "|".join(align) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in report.rows]
    if report.caption:
        lines += ["", report.caption]
    return "\n".join(lines)


def show(report: Report, markdown: bool) -> None:
    """Print ``report`` to stdout."""
    if markdown:
        print(to_markdown(report))
        return
    table = Table(title=report.title, caption=report.caption)
    for i, column in enumerate(report.columns):
        table.add_column(column, justify="left" if i < report.left else "right")
    for row in report.rows:
        table.add_row(*row)
    Console(width=150).print(table)
