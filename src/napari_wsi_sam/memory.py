"""Giving freed heap memory back to the system during long runs (Segment all by decoder or grid).

glibc raises its mmap threshold as large blocks are freed, so later 4-8 MB tensors (crop
embeddings, fused features) come from the heap, where long-lived cache entries between them
pin freed pages: a 4 mm² Segment all grew ~15 MB a tile, to 3.6 GB, with a cache bounded at
512 MiB. `malloc_trim` returns those pages (1.9 GB flat, measured); it costs a few ms, so it
runs once per tile or crop, never per prompt. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc `malloc_trim`), where there is one."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
