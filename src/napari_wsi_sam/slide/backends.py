"""Which backend reads a slide: tifffile where it reads the format, OpenSlide otherwise,
zarr for OME-Zarr; or the one the caller forces.

``auto`` decides per path, from the file itself rather than trusting the suffix alone:

- a folder: OME-Zarr when it carries NGFF multiscales, OpenSlide when it holds a DICOM series;
- a TIFF: tifffile, except Philips, Ventana (BIF) and Leica (SCN) TIFFs, whose sparse,
  overlapping or multi-image layouts OpenSlide stitches and tifffile does not (when OpenSlide
  cannot open such a TIFF, tifffile's series are read instead);
- a DICOM file (``DICM`` at byte 128) or an MRXS, VMS, VMU, SCN or BIF file: OpenSlide;
- anything else: a plain image through Pillow (part of the tifffile backend).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Literal

import tifffile

from ..errors import SlideError
from . import ome_zarr_source, sources
from .metadata import vendor_of

logger = logging.getLogger(__name__)

Backend = Literal["tifffile", "openslide", "ome-zarr"]
BACKENDS: tuple[str, ...] = ("auto", "tifffile", "openslide", "ome-zarr")
"""The values of ``open_slide(backend=)`` and ``--backend``."""
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm")
OPENSLIDE_TIFF_VENDORS = ("philips", "ventana", "leica")
"""TIFF flavours tifffile flags but OpenSlide assembles correctly."""
_DICOM_MAGIC_OFFSET = 128


def check_path(path: Path) -> None:
    """SlideError unless `path` is a non-empty regular file or a folder, told from `os.stat`
    alone: a named pipe or a device is refused before anything opens it (opening a pipe
    would wait forever for a writer). Every command's slide goes through here (`open_slide`)."""
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SlideError(f"{path} is a symlink loop (a link that points back at itself); "
                             "point it at the slide file") from None
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise SlideError(f"{path} does not exist; check the path and spelling") from None
        raise SlideError(f"cannot read {path} ({error.strerror}); check that you may read "
                         "it") from None
    if stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise SlideError(f"{path} is {_kind_of(info.st_mode)}, not a slide file; give the "
                         "slide file itself (.svs, .tif, .ndpi, ...) or an OME-Zarr folder")
    if info.st_size == 0:
        raise SlideError(f"{path} is empty (0 bytes); re-copy or re-export the slide")


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def choose_backend(path: Path, backend: str = "auto") -> Backend:
    """The backend that reads `path`: `backend` itself unless it is ``"auto"``."""
    if backend not in BACKENDS:
        raise SlideError(f"unknown slide backend {backend!r}; choose one of "
                         f"{', '.join(BACKENDS)}")
    if backend != "auto":
        return backend  # type: ignore[return-value]
    if path.is_dir():
        if ome_zarr_source.is_ome_zarr(path):
            return "ome-zarr"
        first_dicom_file(path)  # a DICOM series folder, or a one-line error naming both
        return "openslide"
    if path.suffix.lower() in OPENSLIDE_SUFFIXES or _is_dicom(path):
        return "openslide"
    head = _head(path, 4)
    if head in sources.TIFF_MAGIC:
        return "openslide" if _tiff_vendor(path) in OPENSLIDE_TIFF_VENDORS else "tifffile"
    return "tifffile"


def open_source(path: Path, backend: str = "auto") -> tuple[Backend, sources.Opened]:
    """(the backend used, the opened native levels) for `path`."""
    check_path(path)
    chosen = choose_backend(path, backend)
    if chosen == "ome-zarr":
        if not path.is_dir():
            raise SlideError(f"{path} is a file, not an OME-Zarr folder; give the .zarr folder "
                             "or another --backend")
        return chosen, ome_zarr_source.open_ome_zarr(path)
    if chosen == "openslide":
        from .openslide_source import open_openslide

        member = first_dicom_file(path) if path.is_dir() else None
        try:
            return chosen, open_openslide(path, member=member)
        except SlideError as err:
            if backend != "auto" or path.is_dir() or _head(path, 4) not in sources.TIFF_MAGIC:
                raise
            logger.info("%s: OpenSlide cannot read this TIFF (%s); reading tifffile's series",
                        path.name, err)
            chosen = "tifffile"
    if path.is_dir():
        raise SlideError(f"{path} is a directory; the tifffile backend reads slide files "
                         "(.svs, .tif, .ndpi, .jpg, ...)")
    if backend == "tifffile" and choose_backend(path) == "openslide" \
            and _head(path, 4) not in sources.TIFF_MAGIC:
        raise SlideError(f"{path} is neither a TIFF nor a plain image, which the tifffile "
                         "backend reads; use --backend openslide (or auto) for it")
    return chosen, sources.open_source(path)


def first_dicom_file(folder: Path) -> Path:
    """A DICOM file in `folder` (by its ``DICM`` magic), or SlideError saying what to give."""
    for candidate in sorted(folder.iterdir()):
        try:
            if candidate.is_file() and _is_dicom(candidate):
                return candidate
        except SlideError:  # an unreadable file beside the series is not ours to judge
            continue
    raise SlideError(f"{folder} is a directory without an OME-Zarr image or a DICOM WSI series; "
                     "give a slide file (.svs, .tif, .ndpi, .mrxs, .jpg, ...) or such a folder")


def _head(path: Path, size: int, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)
    except OSError as err:
        raise SlideError(f"{path} cannot be read ({err.strerror}); check its permissions"
                         ) from err


def _is_dicom(path: Path) -> bool:
    return _head(path, 4, _DICOM_MAGIC_OFFSET) == b"DICM"


def _tiff_vendor(path: Path) -> str | None:
    """tifffile's flavour of a TIFF, or None when tifffile cannot parse it (it will say why)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return vendor_of(tif)
    except sources.READ_ERRORS:
        return None
