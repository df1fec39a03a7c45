"""What a format of objects is: its name, suffixes, reader and writer (`Format`), and the image
a set of objects belongs to (`ImageRef`). The table of formats is `formats.registry`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .records import AnnotationObject, ImportResult


@dataclass(frozen=True)
class ImageRef:
    """The image a set of objects belongs to: its file name, level-0 size (width, height) px
    and µm/px (x, y), each None when unknown."""

    name: str | None = None
    size: tuple[int, int] | None = None
    mpp: tuple[float, float] | None = None


Reader = Callable[[Path, ImageRef], ImportResult]
Writer = Callable[[list[AnnotationObject], Path, ImageRef], Path]


@dataclass(frozen=True)
class Format:
    """One file format for objects. ``claims`` tells a file of a shared suffix apart by its
    content (COCO and GeoJSON are both ``.json``); None claims every file of its suffixes."""

    name: str
    title: str
    suffixes: tuple[str, ...]
    read: Reader | None = None
    write: Writer | None = None
    claims: Callable[[Path], bool] | None = None

    def pattern(self) -> str:
        """A file-dialog filter: ``QuPath GeoJSON (*.geojson *.json)``."""
        return f"{self.title} ({' '.join('*' + s for s in self.suffixes)})"
