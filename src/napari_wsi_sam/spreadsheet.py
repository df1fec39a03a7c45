"""CSV cells that a spreadsheet shows as text, never runs: formula injection is escaped.

Excel, LibreOffice and Google Sheets run a cell that starts with ``=``, ``+``, ``-`` or ``@``
(and some a tab or carriage return before one) as a formula. Slide names, class names and
error messages in our CSV reports come from users' files, so such a cell gets a leading
``'`` (OWASP's advice). Numbers stay numbers: a cell that is a plain number is left alone.
"""

from __future__ import annotations

import re
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def safe_cell(value: Any) -> Any:
    """`value`, with ``'`` before it when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) \
            and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: safe_cell(value) for key, value in row.items()}


def safe_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells (and index and column names) are safe;
    numeric columns are untouched."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        kind = out[column].dtype
        if not (is_numeric_dtype(kind) or is_bool_dtype(kind)):
            out[column] = out[column].astype(object).map(safe_cell)
    out.index = out.index.map(_safe_label)
    out.columns = out.columns.map(_safe_label)
    return out


def _safe_label(label: Any) -> Any:
    if isinstance(label, tuple):
        return tuple(safe_cell(part) for part in label)
    return safe_cell(label)
