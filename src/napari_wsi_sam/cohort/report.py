"""What a cohort run did, per slide: a CSV beside the manifest and a table on the terminal."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..formats.file_io import write_text_atomic
from ..spreadsheet import safe_row


@dataclass
class SlideReport:
    """One slide (one manifest row) of a run. status: "done", "failed" or "precomputed"."""

    slide: str
    line: int
    prompts: int = 0
    """Prompts (areal features) the row's file holds."""
    objects: int = 0
    """Objects written by this run (new ones and new versions)."""
    skipped: int = 0
    """Prompts an earlier run had done (kept, not redone)."""
    failed: int = 0
    """Prompts that gave no object (off the slide, nothing found)."""
    ignored: int = 0
    """Features of the file that are no prompt (points, lines)."""
    seconds: float = 0.0
    status: str = "done"
    error: str = ""
    out: str = ""


def write_report(path: Path, reports: list[SlideReport]) -> Path:
    """The reports as CSV at `path`, written atomically; a cell a spreadsheet would run as a
    formula (a slide named ``=cmd|...``) is escaped (`spreadsheet`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(SlideReport)])
    writer.writeheader()
    for report in reports:
        row = asdict(report)
        row["seconds"] = f"{report.seconds:.1f}"
        writer.writerow(safe_row(row))
    return write_text_atomic(path, buffer.getvalue())


def summary_table(reports: list[SlideReport]) -> str:
    """A plain-text table, one line per slide and a total."""
    head = ("slide", "prompts", "objects", "skipped", "failed", "seconds", "status")
    rows = [(r.slide, str(r.prompts), str(r.objects), str(r.skipped), str(r.failed),
             f"{r.seconds:.1f}", r.status if not r.error else f"{r.status}: {r.error}")
            for r in reports]
    rows.append(("total", str(sum(r.prompts for r in reports)),
                 str(sum(r.objects for r in reports)), str(sum(r.skipped for r in reports)),
                 str(sum(r.failed for r in reports)), f"{sum(r.seconds for r in reports):.1f}",
                 f"{sum(r.status != 'failed' for r in reports)}/{len(reports)} slides"))
    widths = [max(len(row[k]) for row in [head, *rows]) for k in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        cells = [cell.ljust(widths[k]) if k == 0 else cell.rjust(widths[k])
                 for k, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)
