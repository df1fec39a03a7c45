"""COCO instance-segmentation JSON, as CATCH and most public detection datasets ship it.

``images`` ``[{id, file_name, width, height}]``, ``categories`` ``[{id, name}]`` and
``annotations`` ``[{id, image_id, category_id, segmentation, bbox, iscrowd}]``. A segmentation
is either polygons ``[[x1, y1, x2, y2, ...], ...]`` (several lists are parts of one object) or
run-length encoding ``{"counts": ..., "size": [h, w]}`` over the image's pixels in column-major
order, starting with a run of background; ``counts`` is a list of ints (uncompressed) or COCO's
compact string (compressed). Polygon coordinates are pixels of the image, x then y, read as
they are (pixel ``i`` covering ``[i, i + 1)``); RLE masks are traced along pixel edges with
`mask_to_geometry`, so they rasterise back to exactly the same pixels.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from ..errors import AnnotationError
from ..polygons import Areal, as_areal, exterior_parts, mask_to_geometry, polygonal
from .file_io import read_json, write_text_atomic
from .format import Format, ImageRef
from .records import AnnotationObject, ImportResult

logger = logging.getLogger(__name__)


# -- reading ---------------------------------------------------------------------------------
def read_coco(path: str | os.PathLike[str], *,
              image: str | None = None) -> dict[str, ImportResult]:
    """Read a COCO JSON file: ``{image file name: ImportResult}``, one entry per image.

    Keys are the base names of ``file_name`` (``"a/b/c.png"`` -> ``"c.png"``; the full name
    where two images share a base name). Every image has an entry, also those without
    annotations. ``image`` picks one image by base name, full name or stem (``"c"``), and
    raises `AnnotationError` naming a few available images when absent.

    Object ids are the annotations' ``id`` (new ids where missing or repeated), classes the
    category names; ``properties`` keep ``category_id``, and ``iscrowd`` and ``score`` when
    present. Annotations without a usable segmentation (bbox only, empty, malformed) are
    skipped, one line each in that image's ``skipped``.
    """
    source = Path(path)
    data = _load_json(source)
    names = _image_names(data, source)
    wanted = set(names)
    if image is not None:
        wanted = {_match_image(image, names, source)}
    categories = _categories(data, source)
    pending: dict[Any, list[tuple[int, dict[str, Any]]]] = {k: [] for k in wanted}
    skipped: dict[Any, list[str]] = {k: [] for k in wanted}
    orphans = 0
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping):
            continue
        image_id = ann.get("image_id")
        if not isinstance(image_id, int | str) or image_id not in names:
            orphans += 1
            continue
        if image_id not in wanted:
            continue
        try:
            parsed = _parse_annotation(ann, categories)
        except _Skip as why:
            skipped[image_id].append(f"annotation {index} (id {ann.get('id')!r}): {why}")
            continue
        pending[image_id].append((index, parsed))
    if orphans:
        logger.warning("%s: %d annotations name an image_id that is not in 'images'; "
                       "ignored", source.name, orphans)
    out: dict[str, ImportResult] = {}
    for image_id in names:
        if image_id in wanted:
            out[names[image_id]] = ImportResult(objects=_with_ids(pending[image_id]),
                                                skipped=skipped[image_id])
    return out


class _Skip(Exception):
    """An annotation we cannot turn into an area."""


def _load_json(source: Path) -> dict[str, Any]:
    data = read_json(source, expected="a COCO JSON annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{source.name} is not COCO JSON (no 'images' and 'annotations' "
                              f"lists at the top level); give a COCO instance annotation file")
    return data


def _image_names(data: dict[str, Any], source: Path) -> dict[Any, str]:
    """image id -> key: the base name of file_name, or the full name where base names clash."""
    full: dict[Any, str] = {}
    for entry in data["images"]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), int | str):
            raise AnnotationError(f"{source.name}: an entry of 'images' has no 'id' (a number "
                                  f"or string); the file is not valid COCO")
        full[entry["id"]] = str(entry.get("file_name") or entry["id"])
    bases = {k: _basename(v) for k, v in full.items()}
    counts: dict[str, int] = {}
    for base in bases.values():
        counts[base] = counts.get(base, 0) + 1
    return {k: (bases[k] if counts[bases[k]] == 1 else full[k]) for k in full}


def _basename(name: str) -> str:
    return re.split(r"[\\/]", name)[-1]


def _match_image(image: str, names: dict[Any, str], source: Path) -> Any:
    for pick in (lambda n: n == image, lambda n: _basename(n) == _basename(image),
                 lambda n: Path(_basename(n)).stem == image):
        hits = [k for k, n in names.items() if pick(n)]
        if len(hits) == 1:
            return hits[0]
    listed = sorted(names.values())
    more = f" and {len(listed) - 5} more" if len(listed) > 5 else ""
    raise AnnotationError(f"{source.name} has no (single) image {image!r}; it has "
                          f"{', '.join(listed[:5]) or 'no images'}{more}")


def _categories(data: dict[str, Any], source: Path) -> dict[Any, str]:
    cats = data.get("categories") or []
    if not isinstance(cats, list):
        raise AnnotationError(f"{source.name}: 'categories' is not a list; the file is not "
                              f"valid COCO")
    return {c["id"]: str(c.get("name", c["id"])) for c in cats
            if isinstance(c, Mapping) and isinstance(c.get("id"), int | str)}


def _parse_annotation(ann: Mapping[str, Any], categories: dict[Any, str]) -> dict[str, Any]:
    seg = ann.get("segmentation")
    if isinstance(seg, Mapping):
        geom = _rle_geometry(seg)
    elif isinstance(seg, list) and seg:
        geom = _polygon_geometry(seg)
    else:
        raise _Skip("no segmentation (bounding box only or empty)")
    cid = ann.get("category_id")
    if not isinstance(cid, int | str):
        cid = None
    props: dict[str, Any] = {"category_id": cid}
    if ann.get("iscrowd"):
        props["iscrowd"] = int(bool(ann.get("iscrowd")))
    if isinstance(ann.get("score"), int | float):
        props["score"] = float(ann["score"])
    ident = ann.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int) or ident <= 0:
        ident = None
    return {"id": ident, "geometry": geom, "class_name": categories.get(cid),
            "properties": props}


def _polygon_geometry(seg: list[Any]) -> Areal:
    if all(isinstance(v, int | float) for v in seg):
        seg = [seg]                                 # a flat list: one ring
    parts = []
    for ring in seg:
        try:
            xy = np.asarray(ring, dtype=float)
        except (TypeError, ValueError) as err:
            raise _Skip("polygon coordinates are not numbers") from err
        if xy.ndim != 1 or xy.size % 2 or xy.size < 6 or not np.isfinite(xy).all():
            continue
        part, _ = as_areal(Polygon(xy.reshape(-1, 2)))
        if part is not None:
            parts.append(part)
    if not parts:
        raise _Skip("no polygon with three or more points and an area")
    geom = parts[0] if len(parts) == 1 else polygonal(shapely.union_all(parts))
    if geom.is_empty:
        raise _Skip("polygon parts have no area")
    return geom


def _rle_geometry(seg: Mapping[str, Any]) -> Areal:
    try:
        h, w = (int(v) for v in seg["size"])
        counts = seg["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise _Skip("RLE without 'size' [h, w] and 'counts'") from err
    if h <= 0 or w <= 0:
        raise _Skip(f"RLE of an empty {h} x {w} mask")
    if isinstance(counts, str):
        try:
            counts = decode_rle_string(counts)
        except ValueError as err:
            raise _Skip(f"compressed RLE cannot be decoded ({err})") from err
    try:
        runs = np.asarray(counts, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise _Skip("RLE counts are not integers") from err
    if runs.ndim != 1 or (runs < 0).any():
        raise _Skip("RLE counts must be a list of non-negative integers")
    if int(runs.sum()) != h * w:
        raise _Skip(f"RLE runs cover {int(runs.sum())} pixels, not the {h} x {w} = {h * w} "
                    f"of its size")
    mask, window = rle_window(runs, h)
    if mask is None:
        raise _Skip("empty RLE mask")
    return mask_to_geometry(mask, window)


def rle_window(runs: np.ndarray, h: int) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
    """The columns of a column-major RLE mask that hold its foreground: ``(mask, window)``.

    Decoding only those columns keeps one nucleus of a 100,000 px slide cheap.
    """
    ends = np.cumsum(runs)
    starts = ends - runs
    s, e = starts[1::2], ends[1::2]                 # odd runs are foreground
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return None, (0, 0, 0, 0)
    c0, c1 = int(s.min()) // h, (int(e.max()) - 1) // h + 1
    offset = c0 * h
    edges = np.zeros((c1 - c0) * h + 1, dtype=np.int32)
    np.add.at(edges, s - offset, 1)
    np.add.at(edges, e - offset, -1)
    flat = np.cumsum(edges[:-1]) > 0
    return flat.reshape(c1 - c0, h).T, (c0, 0, c1, h)


def decode_rle_string(text: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths.

    Each run is a little-endian series of 6-bit chars (``ord(c) - 48``): 5 value bits, and
    0x20 set while more chars follow; the last char's 0x10 bit is the sign. From the fourth
    run on, each is stored as the difference to the run two places before it.
    """
    counts: list[int] = []
    value = shift = 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise ValueError(f"character {ch!r} is outside COCO's RLE alphabet")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift                     # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    if shift:
        raise ValueError("the string ends in the middle of a number")
    return counts


def _with_ids(pending: list[tuple[int, dict[str, Any]]]) -> list[AnnotationObject]:
    used: set[int] = set()
    for _, parsed in pending:
        if parsed["id"] in used:
            parsed["id"] = None
        elif parsed["id"] is not None:
            used.add(parsed["id"])
    next_id = max(used, default=0) + 1
    objects = []
    for _, parsed in pending:
        if parsed["id"] is None:
            parsed["id"], next_id = next_id, next_id + 1
        objects.append(AnnotationObject(**parsed))
    return objects


# -- writing ---------------------------------------------------------------------------------
def write_coco(objects_by_image: Mapping[str, tuple[list[AnnotationObject], tuple[int, int]]],
               path: str | os.PathLike[str]) -> Path:
    """Write ``{file_name: (objects, (width, height))}`` as COCO JSON with polygon
    segmentations, atomically; returns the path written.

    Categories are the class names, sorted, ids from 1. COCO needs a category for every
    annotation: unclassified objects get ``category_id`` 0, which no category names, and read
    back unclassified. A MultiPolygon becomes one annotation with several polygons; COCO
    polygons have no holes, so holes are dropped with a logged warning. Annotation ids run
    from 1 over the whole file (COCO wants them unique per file, ours are unique per image).
    """
    target = Path(path)
    names = sorted({o.class_name for objs, _ in objects_by_image.values() for o in objs
                    if o.class_name is not None})
    cat_ids = {n: k + 1 for k, n in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (file_name, (objs, size)) in enumerate(objects_by_image.items(), start=1):
        width, height = (int(v) for v in size)
        images.append({"id": image_id, "file_name": file_name, "width": width,
                       "height": height})
        for obj in objs:
            parts = exterior_parts(obj.geometry, f"object {obj.id}", "COCO polygons")
            if not parts:
                continue
            minx, miny, maxx, maxy = obj.geometry.bounds
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": cat_ids.get(obj.class_name, 0) if obj.class_name else 0,
                "segmentation": [_flat(p) for p in parts],
                "area": float(sum(p.area for p in parts)),
                "bbox": [minx, miny, maxx - minx, maxy - miny],
                "iscrowd": int(bool(obj.properties.get("iscrowd", 0)))})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": cat_ids[n], "name": n} for n in names]}
    write_text_atomic(target, json.dumps(data, separators=(",", ":")) + "\n")
    logger.info("wrote %d COCO annotations on %d images to %s", len(annotations), len(images),
                target)
    return target


def _flat(poly: Polygon) -> list[float]:
    out: list[float] = []
    for x, y in poly.exterior.coords[:-1]:
        out += [_num(x), _num(y)]
    return out


def _num(v: float) -> float:
    return int(v) if float(v).is_integer() and math.isfinite(v) else float(v)


def is_coco(path: Path) -> bool:
    """Whether a ``.json`` file is COCO (its first 64 kB name ``images``, or ``annotations``
    and ``categories``) rather than GeoJSON."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return False
    return '"images"' in head or ('"annotations"' in head and '"categories"' in head)


def _read(path: Path, image: ImageRef) -> ImportResult:
    by_image = read_coco(path, image=image.name)
    if len(by_image) != 1:
        raise AnnotationError(f"{path.name} holds {len(by_image)} images; name the image it "
                              "belongs to (a training manifest reads them all)")
    return next(iter(by_image.values()))


def _write(objects: list[AnnotationObject], path: Path, image: ImageRef) -> Path:
    if image.name is None or image.size is None:
        raise AnnotationError(f"{path.name}: COCO names its image and size; export from a "
                              "slide (its file name and size go into 'images')")
    return write_coco({image.name: (objects, image.size)}, path)


FORMAT = Format("coco", "COCO JSON", (".json",), read=_read, write=_write, claims=is_coco)
