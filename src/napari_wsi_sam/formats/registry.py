"""Which format a file of objects is in, told by its suffix (and, where two formats share one,
by its content): the one table the CLI, the widget's Import/Export and every writer of
results use.

A format is one module of `formats/` that defines ``FORMAT = Format(...)`` (`formats.format`)
and one line in `FORMATS` below. Readers and writers take the image the objects belong to
(`ImageRef`), so a format that needs it (COCO names images and their sizes; GeoJSON can add
areas in µm²) finds it, and one that does not ignores it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import AnnotationError
from . import asap_xml, coco, geojson, geoparquet, instance_masks
from .file_io import check_output_path
from .format import Format, ImageRef
from .records import AnnotationObject, ImportResult

FORMATS: tuple[Format, ...] = (
    geojson.FORMAT,
    coco.FORMAT,
    asap_xml.FORMAT,
    geoparquet.FORMAT,
    instance_masks.FORMAT,
)
"""Every format, in the order a suffix is looked up (the first writer of a suffix wins)."""


def by_name(name: str) -> Format:
    """The format called `name` (``geojson``, ``coco``, ``asap-xml``, ...)."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise AnnotationError(f"unknown format {name!r}; use one of "
                          f"{', '.join(f.name for f in FORMATS)}")


def format_for_reading(path: str | os.PathLike[str], *, name: str | None = None) -> Format:
    """The format to read `path` in: `name` when given, else by suffix and content."""
    source = Path(path)
    if name is not None:
        fmt = by_name(name)
        if fmt.read is None:
            raise AnnotationError(f"{fmt.title} files are written, not read; import "
                                  f"{_listing(readable=True)}")
        return fmt
    suffix = source.suffix.lower()
    found = [f for f in FORMATS if f.read is not None and suffix in f.suffixes]
    found.sort(key=lambda f: f.claims is None)       # content checks before catch-alls
    for fmt in found:
        if fmt.claims is None or fmt.claims(source):
            return fmt
    raise AnnotationError(f"{source.name}: unknown annotation format {suffix or '(none)'!r}; "
                          f"import {_listing(readable=True)}")


def format_for_writing(path: str | os.PathLike[str], *, name: str | None = None) -> Format:
    """The format to write `path` in: `name` when given, else the first writer of its suffix."""
    target = Path(path)
    if name is not None:
        fmt = by_name(name)
        if fmt.write is None:
            raise AnnotationError(f"{fmt.title} files are read, not written; export "
                                  f"{_listing(readable=False)}")
        return fmt
    suffix = target.suffix.lower()
    for fmt in FORMATS:
        if fmt.write is not None and suffix in fmt.suffixes:
            return fmt
    raise AnnotationError(f"{target.name}: cannot write {suffix or 'a file without suffix'!r}; "
                          f"export {_listing(readable=False)}")


def check_export_path(path: str | os.PathLike[str], *, flag: str = "--out",
                      name: str | None = None) -> Format:
    """Before any work: `path` can be written (`file_io.check_output_path`) and its suffix
    (or `name`) names a format we write. Returns that format."""
    target = Path(path)
    check_output_path(target, flag=flag)
    return format_for_writing(target, name=name)


def read_annotations(path: str | os.PathLike[str], *, image: ImageRef | None = None,
                     name: str | None = None) -> ImportResult:
    """The objects of one image in `path`, in the format its suffix (or `name`) tells."""
    source = Path(path)
    if not source.exists():
        raise AnnotationError(f"annotation file {source} does not exist")
    fmt = format_for_reading(source, name=name)
    assert fmt.read is not None  # format_for_reading returns readers only
    return fmt.read(source, image or ImageRef())


def write_annotations(objects: Iterable[AnnotationObject], path: str | os.PathLike[str], *,
                      image: ImageRef | None = None, name: str | None = None) -> Path:
    """Write `objects` to `path` atomically, in the format its suffix (or `name`) tells."""
    target = Path(path)
    fmt = format_for_writing(target, name=name)
    assert fmt.write is not None  # format_for_writing returns writers only
    return fmt.write(list(objects), target, image or ImageRef())


def dialog_filters(*, readable: bool) -> list[str]:
    """File-dialog filters of every format that can be read (or written), GeoJSON first."""
    return [f.pattern() for f in FORMATS if (f.read if readable else f.write) is not None]


def _listing(*, readable: bool) -> str:
    kinds = [f"{f.title} ({'/'.join(f.suffixes)})" for f in FORMATS
             if (f.read if readable else f.write) is not None]
    return ", ".join(kinds)
