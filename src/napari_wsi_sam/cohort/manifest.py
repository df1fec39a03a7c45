"""The manifest of a cohort: one CSV row per slide, naming its prompts and its output.

Columns ``slide,prompts,out`` are required; ``class,model,head,hr_mpp,mpp`` are optional (an
empty cell means the default: class "object", the measured default model at 10x, the slide's
own pixel size). Relative paths are relative to the manifest's folder. A manifest that is
not such a CSV is one error; a row whose values are unusable becomes that row's one-line
failure, and the other rows go on.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..model.registry import MODEL_NAMES
from ..slide.crops import MAX_HR_MPP, MIN_HR_MPP
from ..slide.reader import MAX_MPP, MIN_MPP

REQUIRED = ("slide", "prompts", "out")
OPTIONAL = ("class", "model", "head", "hr_mpp", "mpp")


@dataclass(frozen=True)
class CohortRow:
    """One slide of the cohort: where its prompts come from, where its objects go."""

    line: int
    slide: Path
    prompts: Path | None = None
    out: Path | None = None
    class_name: str = "object"
    model: str | None = None
    head: str | None = None
    hr_mpp: float | None = None
    mpp: float | None = None
    error: str | None = None
    """Why the row cannot run (one line), or None."""
    class_explicit: bool = False
    """Whether the row's class cell was filled (else the batch's default applies)."""

    def describe(self) -> str:
        return f"{self.slide.name} (line {self.line})"


def read_manifest(path: Path) -> list[CohortRow]:
    """The rows of a manifest CSV; UsageError when the file is not a usable manifest."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"manifest {path} does not exist; give a CSV with columns "
                         f"{','.join(REQUIRED)}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"manifest {path} is not a readable CSV ({error})") from None
    table = [row for row in table if any(cell.strip() for cell in row)]
    if not table:
        raise UsageError(f"manifest {path} is empty; its first line names the columns "
                         f"{','.join(REQUIRED)}")
    header = [cell.strip().lower() for cell in table[0]]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in (*REQUIRED, *OPTIONAL)]
    if missing or unknown:
        what = (f"lacks the column(s) {', '.join(missing)}" if missing
                else f"has unknown column(s) {', '.join(unknown)}")
        raise UsageError(f"manifest {path} {what}; columns are {','.join(REQUIRED)} and "
                         f"optionally {','.join(OPTIONAL)}")
    if len(table) == 1:
        raise UsageError(f"manifest {path} names no slide (only its header line)")
    rows = [_row(path.parent, header, cells, number)
            for number, cells in enumerate(table[1:], start=2)]
    outs = [r.out.resolve() for r in rows if r.out is not None and r.error is None]
    twice = sorted({str(o) for o in outs if outs.count(o) > 1})
    if twice:
        raise UsageError(f"manifest {path} writes {twice[0]} from two rows; give each row its "
                         "own out")
    return rows


def _row(root: Path, header: list[str], cells: list[str], line: int) -> CohortRow:
    values = {name: (cells[k].strip() if k < len(cells) else "")
              for k, name in enumerate(header)}
    slide = root / values["slide"] if values["slide"] else root / f"<no slide on line {line}>"

    def failed(reason: str) -> CohortRow:
        return CohortRow(line, slide, error=f"line {line}: {reason}")

    if len(cells) > len(header):
        return failed(f"{len(cells)} cells for {len(header)} columns")
    for name in REQUIRED:
        if not values[name]:
            return failed(f"the {name} cell is empty")
    model = values.get("model") or None
    if model is not None and model not in MODEL_NAMES:
        return failed(f"unknown model {model!r}; use one of {', '.join(MODEL_NAMES)}")
    try:
        hr_mpp = _number(values.get("hr_mpp"), "hr_mpp", MIN_HR_MPP, MAX_HR_MPP)
        mpp = _number(values.get("mpp"), "mpp", MIN_MPP, MAX_MPP)
    except ValueError as error:
        return failed(str(error))
    return CohortRow(line, slide, root / values["prompts"], root / values["out"],
                     class_name=values.get("class") or "object",
                     class_explicit=bool(values.get("class")), model=model,
                     head=values.get("head") or None, hr_mpp=hr_mpp, mpp=mpp)


def _number(text: str | None, name: str, low: float, high: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must lie in {low:g}..{high:g} µm/px, got {text}")
    return value
