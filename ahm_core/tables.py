"""The one writer of results: a report is Markdown text and tables, written as `<name>.md` beside
`<name>.json` (every figure, machine-readable) and one CSV per table that names a file."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahm_core.io import atomic_write


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def interval(bounds: Sequence[float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def cluster_interval(bounds: Sequence[float]) -> str:
    """An interval clustered by identity, in braces beside the bracketed one that is not."""
    return f"{{{bounds[0]:.3f}, {bounds[1]:.3f}}}"


def accuracy_cell(
    value: float | None,
    folds: Sequence[float] | None = None,
    clustered: Sequence[float] | None = None,
) -> str:
    """An accuracy, its 95% interval over the folds in brackets and, in braces, its bootstrap 95%
    interval clustered by identity (pairs share images and identities): each when known."""
    cells = [fmt(value)]
    if folds is not None:
        cells.append(interval(folds))
    if clustered is not None:
        cells.append(cluster_interval(clustered))
    return " ".join(cells)


def index_cell(entry: dict | None, digits: int = 3) -> str:
    """A scored index: value, bootstrap interval, and in brackets its floor (the mean face) and the
    gain over it (how much closer to the originals the attack got; <= 0: it learned nothing)."""
    if entry is None:
        return "-"
    return (
        f"{fmt(entry['value'], digits)} {interval(entry['ci95'])} "
        f"({fmt(entry['floor'], digits)}; {entry['gain']:+.{digits}f})"
    )


def rate_cell(entry: dict | None) -> str:
    """A re-identification rate with its Wilson interval in brackets, its interval clustered by
    victim identity in braces (when measured) and, in parentheses, chance."""
    if entry is None or "rank1" not in entry:
        return "-" if entry is None else entry.get("skipped", "-")
    clustered = entry.get("rank1_cluster_ci95")
    return (
        f"{fmt(entry['rank1'])} {interval(entry['rank1_ci95'])}"
        f"{'' if clustered is None else ' ' + cluster_interval(clustered)} ({fmt(entry['chance'])})"
    )


def named_cell(entry: dict | None, cell: Callable[[dict], str]) -> str:
    """A worst-case cell: the entry as `cell` writes it, and the attack that set it."""
    return "-" if entry is None else f"{cell(entry)} {entry['attack']}"


@dataclass
class Table:
    """A table of strings; written to `csv` too when it names one."""

    header: list[str]
    rows: list[list[str]]
    csv: str | None = None

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])

    def csv_text(self) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([self.header, *self.rows])
        return buffer.getvalue()


def write_report(path: Path, parts: Sequence[str | Table], data: dict[str, Any]) -> Path:
    """`path` (.md) from text and tables, the JSON of `data` beside it, and each table's CSV;
    every file atomically. Returns the Markdown's path."""
    text = json.dumps(data, indent=2)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    for part in parts:
        if isinstance(part, Table) and part.csv:
            body = part.csv_text()
            atomic_write(path.parent / part.csv, lambda tmp, body=body: tmp.write_text(body))
    markdown = "\n".join(p.markdown() if isinstance(p, Table) else p for p in parts)
    return atomic_write(path, lambda tmp: tmp.write_text(markdown + "\n"))
