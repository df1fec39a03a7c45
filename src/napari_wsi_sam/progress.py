"""Progress reporting for long loops (training, evaluation), chosen by the caller.

A `Progress` wraps an iterator with its length and a label; library code takes one and
defaults to `no_progress`, the CLI passes `tqdm_progress` (bars on stderr) unless told not to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Progress = Callable[[Iterator[Any], int, str], Iterator[Any]]


def no_progress(items: Iterator[Any], total: int, desc: str) -> Iterator[Any]:
    return items


def tqdm_progress(items: Iterator[Any], total: int, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr that disappears when the loop ends."""
    from tqdm import tqdm

    return iter(tqdm(items, total=total, desc=desc, unit="it", leave=False))


def cli_progress(quiet: bool) -> Progress:
    """The CLI's choice: bars unless ``--no-progress``."""
    return no_progress if quiet else tqdm_progress
