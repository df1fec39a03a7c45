"""Reading JSON and writing text files for every annotation format, with one-line errors.

Writes are atomic (written beside the target, then moved in place), so an interrupted export
never leaves half a file where the user's annotations were.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import AnnotationError


def write_text_atomic(target: Path, text: str) -> Path:
    """Write ``text`` beside ``target`` and move it in place: the file is complete or absent."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                               dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_json(source: Path, *, expected: str) -> Any:
    """Parse a JSON file (a BOM is allowed); AnnotationError naming `expected` when it is not."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"cannot read {source}: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{source.name} is not valid JSON ({err.msg} at line "
                              f"{err.lineno}, column {err.colno}); give {expected}") from err
