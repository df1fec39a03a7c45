"""Instance label images (HoVer-Net / PanNuke / histolytics style) -> objects.

An instance mask is a 2-D integer image, 0 = background, one value per object; an optional
type (semantic) mask of the same shape gives each pixel a class index, 0 = none. Every object
is traced exactly along pixel edges (`labels_to_geometries`), so it rasterises back to the
very same pixels: these masks are training targets, and approximating them would move them.
Pixel ``(col i, row j)`` is level-0 ``[i, i + 1) x [j, j + 1)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import AnnotationError
from ..polygons import labels_to_geometries
from .format import Format, ImageRef
from .records import AnnotationObject, ImportResult

logger = logging.getLogger(__name__)

# The type values of histolytics' sample nucleus masks (``hgsc_nest_type_mask.npz``).
# histolytics does not document them; we inferred them from the data: the 288 objects of
# type 3 are exactly the 288 "neoplastic" nuclei that histolytics' own docstring examples
# count in the paired hgsc_nest.parquet (83 + 205 in the cluster_feats example), and they are
# the largest (median 569 px); type 1 nuclei are the most elongated (median eccentricity
# 0.87: stromal spindle cells) and type 2 the smallest and roundest (lymphocytes). That is
# also the alphabetical order of the class names in histolytics' GeoParquet files.
HISTOLYTICS_NUCLEI_CLASSES: dict[int, str] = {1: "connective", 2: "inflammatory",
                                              3: "neoplastic"}

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


def instance_mask_objects(labels: np.ndarray, *, types: np.ndarray | None = None,
                          class_names: Mapping[int, str] | None = None,
                          min_area: int = 1) -> list[AnnotationObject]:
    """One object per nonzero label of ``labels`` (h, w), its id the label value.

    types : (h, w) ints, a class index per pixel (0 = none). An object's class is the most
        common nonzero type under it (ties: the smaller index), named through
        ``class_names`` (``"type_<k>"`` for indices it lacks); ``properties["type"]`` keeps
        the index. Without ``types`` objects are unclassified.
    min_area : objects with fewer pixels are left out (noise specks in predicted masks).
    """
    lab = _as_labels(labels, "labels")
    names = dict(class_names or {})
    majority: dict[int, int] = {}
    if types is not None:
        typ = _as_labels(types, "types")
        if typ.shape != lab.shape:
            raise AnnotationError(f"types {typ.shape} and labels {lab.shape} must have the "
                                  f"same shape")
        majority = _majority_types(lab, typ)
    values, areas = np.unique(lab[lab != 0], return_counts=True)
    too_small = set(values[areas < min_area].tolist())
    objects = []
    for label, geom in labels_to_geometries(lab):
        if label in too_small or geom.is_empty:
            continue
        k = majority.get(label, 0)
        cls = None if types is None or k == 0 else names.get(k, f"type_{k}")
        props = {} if types is None else {"type": k}
        objects.append(AnnotationObject(id=label, geometry=geom, class_name=cls,
                                        properties=props))
    if too_small:
        logger.info("left out %d objects smaller than %d px", len(too_small), min_area)
    return objects


def read_instance_masks(path: str | os.PathLike[str], *, key: str | None = None,
                        types_path: str | os.PathLike[str] | None = None,
                        types_key: str | None = None,
                        class_names: Mapping[int, str] | None = None,
                        min_area: int = 1) -> list[AnnotationObject]:
    """`instance_mask_objects` of a label image on disk.

    path : ``.npz`` (``key`` names the array; it may be left out when there is only one),
        ``.npy``, or a single-channel PNG / TIFF label image.
    types_path, types_key : the type mask, read the same way; a ``types_key`` without
        ``types_path`` reads it from the same ``.npz`` as the labels.
    """
    labels = _load(Path(path), key)
    types = None
    if types_path is not None or types_key is not None:
        types = _load(Path(types_path if types_path is not None else path), types_key)
    return instance_mask_objects(labels, types=types, class_names=class_names,
                                 min_area=min_area)


def _majority_types(lab: np.ndarray, typ: np.ndarray) -> dict[int, int]:
    """label -> its most common nonzero type (0 when none), counted in one pass."""
    on = (lab != 0) & (typ != 0)
    if not on.any():
        return {}
    labels, inverse = np.unique(lab[on], return_inverse=True)
    kinds, kind_index = np.unique(typ[on], return_inverse=True)
    votes = np.zeros((labels.size, kinds.size), dtype=np.int64)
    np.add.at(votes, (inverse.ravel(), kind_index.ravel()), 1)
    return dict(zip(labels.tolist(), kinds[votes.argmax(axis=1)].tolist(), strict=True))


def _as_labels(arr: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise AnnotationError(f"{what} must be a 2-D label image (h, w), got shape {a.shape}; "
                              f"a colour image is not a label image")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise AnnotationError(f"{what} holds non-integer values; give an integer label "
                                  f"image")
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise AnnotationError(f"{what} must hold integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise AnnotationError(f"{what} must be >= 0 (0 = background), found {int(a.min())}")
    return a


def _load(path: Path, key: str | None) -> np.ndarray:
    if not path.is_file():
        raise AnnotationError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        with path.open("rb") as fh:
            head = fh.read(6)
        if head[:4] != b"PK\x03\x04" and head != b"\x93NUMPY":
            raise AnnotationError(f"{path.name} is not a NumPy {suffix} file; save labels with "
                                  f"numpy.save / numpy.savez")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.files)
                if key is None and len(keys) == 1:
                    key = keys[0]
                if key is None or key not in keys:
                    what = "holds several arrays" if key is None else f"has no array {key!r}"
                    raise AnnotationError(f"{path.name} {what}; pick one with key= "
                                          f"({', '.join(keys) or 'none'})")
                return data[key]
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".tif", ".tiff"):
            import tifffile
            return tifffile.imread(path)
        if suffix in _IMAGE_SUFFIXES:
            from skimage import io
            return io.imread(path)
    except AnnotationError:
        raise
    except Exception as err:                    # zip, tiff and image decoders all differ
        why = (str(err).strip().splitlines() or [""])[0]
        raise AnnotationError(f"cannot read {path.name} as a label image "
                              f"({type(err).__name__}: {why}); give an .npz, .npy, PNG or TIFF "
                              f"label image") from err
    raise AnnotationError(f"{path.name}: unsupported label file type {suffix!r}; give an .npz, "
                          f".npy, PNG or TIFF label image")


def _read(path: Path, image: ImageRef) -> ImportResult:
    return ImportResult(objects=read_instance_masks(path), skipped=[])


FORMAT = Format("instance-mask", "instance label image", (".npz", ".npy", *_IMAGE_SUFFIXES),
                read=_read)
