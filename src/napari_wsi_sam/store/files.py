"""Where a slide's object store lives, and opening it: create, open, or convert from 0.1.

``<slide stem>.wsi-sam/objects.sqlite`` beside the slide, or in a folder the user chose. A
store that already exists beside the slide is opened even when that folder is read-only (then
read-only, with a notice). A new store goes beside the slide when that folder can be written,
else into ``<cache>/labels/<stem>-<hash of the path>.wsi-sam``. A release-0.1 label store found
in the folder is converted once (`store_migration`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from .migration import has_legacy_store, migrate
from .object_store import ObjectStore
from .schema import DB_NAME

if TYPE_CHECKING:
    from ..slide.reader import Slide

logger = logging.getLogger(__name__)

SUFFIX = ".wsi-sam"


def beside(slide_path: Path) -> Path:
    slide_path = Path(slide_path)
    return slide_path.parent / f"{slide_path.stem}{SUFFIX}"


def cache_folder(slide_path: Path) -> Path:
    from ..paths import cache_home

    slide_path = Path(slide_path)
    digest = hashlib.sha1(str(slide_path.resolve()).encode()).hexdigest()[:10]
    return cache_home() / "labels" / f"{slide_path.stem}-{digest}{SUFFIX}"


def default_folder(slide_path: Path) -> Path:
    """The store folder of a slide: beside it when a store is there or can be made there,
    else the cache (logged)."""
    here = beside(slide_path)
    if (here / DB_NAME).is_file():
        return here
    if _can_write(here) or (not here.exists() and _can_write(here.parent)):
        return here
    fallback = cache_folder(slide_path)
    logger.info("cannot write beside %s; the objects go to %s", slide_path, fallback)
    return fallback


def slide_meta(slide: Slide) -> dict[str, Any]:
    """What a store records of its slide."""
    return {"format": "napari-wsi-sam-objects", "store_id": uuid.uuid4().hex,
            "slide_path": str(Path(slide.path).resolve()), "slide_name": Path(slide.path).name,
            "dimensions": list(slide.dimensions),
            "mpp": None if slide.mpp is None else [float(v) for v in slide.mpp],
            "downsamples": [float(d) for d in slide.downsamples]}


def open_store(slide: Slide, *, folder: Path | None = None, writer: str | None = None
               ) -> ObjectStore:
    """The object store of `slide` (in `folder`, default `default_folder`): opened,
    converted from release 0.1, or created. Refuses a store made for another slide size."""
    target = Path(folder) if folder is not None else default_folder(slide.path)
    db = target / DB_NAME
    if db.is_file():
        store = ObjectStore.open(db, writer=writer)
    else:
        legacy = target if has_legacy_store(target) else None
        if legacy is None and folder is None and has_legacy_store(beside(slide.path)):
            legacy = beside(slide.path)  # a read-only 0.1 store beside; convert into the cache
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot make the labels folder {target} ({error}); choose a "
                             "folder you can write to") from error
        if legacy is not None:
            store = migrate(legacy, db, meta=slide_meta(slide))
        else:
            (target / f"{DB_NAME}.migrating").unlink(missing_ok=True)
            store = ObjectStore.create(db, meta=slide_meta(slide), writer=writer,
                                       exist_ok=True)
        if writer is not None:
            store.writer = writer
    dims = store.dimensions
    if dims is not None and tuple(dims) != tuple(slide.dimensions):
        store.close()
        w, h = slide.dimensions
        raise StoreError(f"{db} holds objects of a {dims[0]}x{dims[1]} px slide but "
                         f"{Path(slide.path).name} is {w}x{h}; choose another labels folder")
    return store


def _can_write(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
