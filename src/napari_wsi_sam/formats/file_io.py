"""Reading JSON and writing text files for every annotation format, with one-line errors.

Writes are atomic (written beside the target, then moved in place), so an interrupted export
never leaves half a file where the user's annotations were. A write killed half-way leaves its
temp file (``.<name>.<pid>-<host>.<random>.part``) beside the target; the next write of that
target removes it once its writer is gone (`remove_stale_temp_files`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import AnnotationError

logger = logging.getLogger(__name__)

STALE_AFTER_S = 600.0
"""A temp file of an atomic write left untouched this long is a leftover, whoever wrote it."""
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
"""This machine, in temp file names: a process id only says something on its own host."""


def write_text_atomic(target: Path, text: str | Iterable[str]) -> Path:
    """Write ``text`` (a string, or pieces written as they come, so a large export need not
    be held in memory) beside ``target`` and move it in place: the file is complete or
    absent. Temp files that killed writes of ``target`` left behind are removed before and
    after, so kills in a row never pile them up."""
    target = Path(target)
    remove_stale_temp_files(target)
    tmp = _folder(target) / f".{target.name}.{os.getpid()}-{_HOST}.{secrets.token_hex(4)}.part"
    try:
        # os.open with 0o666 honours the umask, as any file the user makes (mkstemp: 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise AnnotationError(f"cannot write {target}: {error.strerror or error}") from error
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for piece in [text] if isinstance(text, str) else text:
                fh.write(piece)
        os.replace(tmp, target)
    except OSError as error:  # a full disk, a folder gone: the old file stays as it was
        Path(tmp).unlink(missing_ok=True)
        raise AnnotationError(f"cannot write {target}: {error.strerror or error}; nothing "
                              "was changed there") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remove_stale_temp_files(target)
    return target


def remove_stale_temp_files(target: Path) -> list[Path]:
    """Remove the temp files earlier atomic writes of ``target`` left beside it: those whose
    writer (a process of this machine) is gone, and any untouched for `STALE_AFTER_S`. A temp
    file that a live process may be writing is kept; other files are never touched. Best
    effort (a file that cannot be removed is left); returns the files removed."""
    target = Path(target)
    folder = _folder(target)
    prefix = f".{target.name}."
    # .<name>.<pid>-<host>.<random>.part, or .<name>.<random>.part (earlier releases)
    pattern = re.compile(re.escape(prefix) + r"(?:(\d+)-([0-9a-f]{6})\.[a-z0-9_]+|[a-z0-9_]{8})"
                         r"\.part")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        pid, host = match.group(1), match.group(2)
        gone = pid is not None and host == _HOST and not _process_alive(int(pid))
        if not (gone or now - info.st_mtime > STALE_AFTER_S):
            continue
        path = Path(entry.path)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            logger.debug("cannot remove the leftover %s (%s)", path, error)
            continue
        logger.info("removed %s, left by an interrupted write of %s", path, target.name)
        removed.append(path)
    return removed


def _folder(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


def _process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine may still run (True when it cannot be told)."""
    if pid <= 0 or pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def read_json(source: Path, *, expected: str) -> Any:
    """Parse a JSON file (a BOM is allowed); AnnotationError naming `expected` when it is not."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"cannot read {source}: {err}") from err
    try:
        return json.loads(text)
    except RecursionError:
        raise AnnotationError(f"{source.name} nests its JSON too deeply to be GeoJSON; give "
                              f"{expected}") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{source.name} is not valid JSON ({err.msg} at line "
                              f"{err.lineno}, column {err.colno}); give {expected}") from err


def check_output_path(path: Path, *, flag: str = "--out") -> None:
    """`path` must be a file we may write, in a folder that exists: said before any work. A
    probe file is made and removed, as permissions alone miss read-only file systems (and
    everything is writable to root). `flag` names the option in the message."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AnnotationError(f"{flag} {path} is a folder; give a file name, e.g. "
                              f"{path / 'objects.geojson'}")
    if not parent.is_dir():
        raise AnnotationError(f"cannot write {path}: folder {parent} does not exist")
    probe = parent / f".{path.name}.{os.getpid()}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as error:
        raise AnnotationError(f"cannot write {path}: {error.strerror or error}; choose "
                              f"another {flag}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise AnnotationError(f"cannot write {path}: no permission to write it; choose "
                              f"another {flag}")
