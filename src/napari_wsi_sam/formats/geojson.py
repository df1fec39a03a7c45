"""QuPath-compatible GeoJSON: write annotation objects, read them back.

Geometries are in level-0 slide pixels, x then y, origin at the top-left corner of the
full-resolution image (pixel ``i`` covers ``[i, i + 1)``), as QuPath expects. We write a
FeatureCollection, one Feature per object, with QuPath's ``properties``: ``objectType``,
``classification`` ``{name, color: [r, g, b]}`` and ``measurements``, plus our own ``id``,
``model`` and ``score``. We read what QuPath writes in any version: a FeatureCollection, a bare
array of Features or one Feature, and ``color`` or the older packed ``colorRGB``.
See docs/geojson.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon

from ..errors import AnnotationError
from ..polygons import Areal, as_areal
from .file_io import read_json, write_text_atomic
from .format import Format, ImageRef
from .records import RGB, AnnotationObject, ImportResult, as_rgb_triple

logger = logging.getLogger(__name__)

# Keys of ``properties`` that map onto AnnotationObject fields rather than into ``properties``.
_OWN_KEYS = ("objectType", "classification", "id")
# QuPath 0.2 named the object type in the Feature's "id".
_LEGACY_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                 "PathCellObject": "cell", "PathTileObject": "tile",
                 "TMACoreObject": "tma_core", "PathRootObject": "root"}


# -- writing ---------------------------------------------------------------------------------
def objects_to_feature_collection(objects: Iterable[AnnotationObject], *,
                                  mpp: tuple[float, float] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (a plain dict) with one Feature per object.

    mpp : (x, y) µm per level-0 pixel; when given, ``measurements`` also carry the area in µm².
    """
    return {"type": "FeatureCollection",
            "features": [_feature(obj, mpp=mpp) for obj in objects]}


def write_geojson(objects: Iterable[AnnotationObject], path: str | os.PathLike[str], *,
                  mpp: tuple[float, float] | None = None) -> Path:
    """Write ``objects`` to ``path`` as a FeatureCollection (one Feature per line), atomically.

    The file appears complete or not at all: it is written beside ``path`` and moved in place.
    Returns the path written.
    """
    target = Path(path)
    count = 0

    def pieces() -> Iterator[str]:  # one Feature at a time: memory stays flat
        nonlocal count
        yield '{"type":"FeatureCollection","features":[\n'
        for obj in objects:
            line = json.dumps(_feature(obj, mpp=mpp), ensure_ascii=False, separators=(",", ":"))
            yield (",\n" if count else "") + line
            count += 1
        yield "\n]}\n"

    write_text_atomic(target, pieces())
    logger.info("wrote %d objects to %s", count, target)
    return target


def _feature(obj: AnnotationObject, *, mpp: tuple[float, float] | None) -> dict[str, Any]:
    props: dict[str, Any] = {"objectType": obj.object_type, "id": obj.id}
    if obj.class_name is not None:
        cls: dict[str, Any] = {"name": obj.class_name}
        if obj.color is not None:
            cls["color"] = list(obj.color)
        props["classification"] = cls
    extra = {k: v for k, v in obj.properties.items() if k not in _OWN_KEYS}
    measurements = dict(extra.pop("measurements", None) or {})
    area = float(obj.geometry.area)
    measurements["Area px^2"] = area
    if mpp is not None:
        mx, my = (float(v) for v in mpp)
        if not (mx > 0 and my > 0):
            raise AnnotationError(f"mpp must be two positive numbers (x, y) µm/px, got {mpp!r}")
        measurements["Area µm^2"] = area * mx * my
    uid = extra.pop("uuid", None)
    props.update(extra)
    props["measurements"] = measurements
    feature: dict[str, Any] = {"type": "Feature"}
    if uid is not None:  # QuPath writes an object's UUID as the Feature's own id
        feature["id"] = str(uid)
    feature["geometry"] = _geometry_json(obj.geometry)
    feature["properties"] = props
    return feature


def geometry_json(geom: Areal) -> dict[str, Any]:
    """A (Multi)Polygon as a GeoJSON geometry, rings oriented as GeoJSON wants."""
    return _geometry_json(geom)


def _geometry_json(geom: Areal) -> dict[str, Any]:
    geom = shapely.orient_polygons(geom)
    if isinstance(geom, Polygon):
        return {"type": "Polygon", "coordinates": _rings(geom)}
    return {"type": "MultiPolygon", "coordinates": [_rings(p) for p in geom.geoms]}


def _rings(poly: Polygon) -> list[list[list[float]]]:
    if poly.is_empty:
        return []
    out = []
    for ring in (poly.exterior, *poly.interiors):
        xy = shapely.get_coordinates(ring)
        ints = xy.astype(int)
        out.append(ints.tolist() if (ints == xy).all() else xy.tolist())
    return out


# -- reading ---------------------------------------------------------------------------------
def read_geojson(path: str | os.PathLike[str]) -> ImportResult:
    """Read objects from a GeoJSON file as QuPath writes it (any version).

    Accepts a FeatureCollection, a bare JSON array of Features, or a single Feature. Polygon
    and MultiPolygon features (with holes) become objects; any other geometry (Point,
    LineString, ...) is skipped, with one line in ``skipped`` saying which and why. Invalid
    JSON or a file that is not GeoJSON raises `AnnotationError`.
    """
    source = Path(path)
    data = read_json(source, expected="a GeoJSON FeatureCollection or Feature")
    return features_to_objects(data, source=str(source))


def features_to_objects(data: Any, *, source: str = "GeoJSON") -> ImportResult:
    """`read_geojson` for already-parsed JSON (a dict or a list)."""
    features = _features(data, source)
    objects: list[AnnotationObject] = []
    skipped: list[str] = []
    used: set[int] = set()
    pending: list[tuple[int, dict[str, Any]]] = []
    for index, feature in enumerate(features):
        try:
            parsed = _parse_feature(feature)
        except _Skip as why:
            skipped.append(f"feature {index}{_describe(feature)}: {why}")
            continue
        ident = parsed.pop("id")
        if ident is not None and ident in used:
            logger.warning("%s: feature %d repeats id %d; giving it a new id", source, index,
                           ident)
            ident = None
        if ident is not None:
            used.add(ident)
        pending.append((-1 if ident is None else ident, parsed))
    next_id = max(used, default=0) + 1
    for ident, parsed in pending:
        if ident < 0:
            ident, next_id = next_id, next_id + 1
        objects.append(AnnotationObject(id=ident, **parsed))
    if skipped:
        logger.info("%s: kept %d objects, skipped %d features", source, len(objects),
                    len(skipped))
    return ImportResult(objects=objects, skipped=skipped)


class _Skip(Exception):
    """A Feature that is readable GeoJSON but not an area we can keep."""


def _features(data: Any, source: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise AnnotationError(f"{source} is not GeoJSON: top level is a "
                              f"{type(data).__name__}, expected an object or an array")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{source}: FeatureCollection has no 'features' array")
        return features
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise AnnotationError(f"{source} is not GeoJSON: expected a FeatureCollection, an array of "
                          f"Features or a Feature, got type {kind!r}")


def _parse_feature(feature: Any) -> dict[str, Any]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise _Skip("not a GeoJSON Feature")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise _Skip("'properties' is not an object")
    geometry = _geometry(feature.get("geometry"))
    class_name, color = _classification(props.get("classification"))
    if color is None and props.get("color") is not None:
        color = _color_or_none(props.get("color"))
    object_type = props.get("objectType") or props.get("object_type")
    if not isinstance(object_type, str):
        object_type = _LEGACY_TYPES.get(str(feature.get("id")), "annotation")
    ident = props.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int) or ident <= 0:
        ident = None
    extra = {k: v for k, v in props.items() if k not in _OWN_KEYS}
    fid = feature.get("id")
    if isinstance(fid, str) and fid not in _LEGACY_TYPES:
        extra.setdefault("uuid", fid)
    return {"id": ident, "geometry": geometry, "class_name": class_name, "color": color,
            "properties": extra, "object_type": object_type}


def _geometry(geom: Any) -> Areal:
    if not isinstance(geom, dict):
        raise _Skip("no geometry")
    kind = geom.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        raise _Skip(f"{kind} geometry is not an area; only Polygon and MultiPolygon are read")
    try:
        coords = geom["coordinates"]
        if kind == "Polygon":
            shape: Areal = Polygon(coords[0], coords[1:]) if coords else Polygon()
        else:
            shape = MultiPolygon([Polygon(p[0], p[1:]) for p in coords if p])
    except (KeyError, IndexError, TypeError, ValueError, shapely.errors.ShapelyError) as err:
        raise _Skip(f"malformed {kind} coordinates ({err})") from err
    area, why = as_areal(shape)
    if area is None:
        raise _Skip(why)
    return area


def _classification(cls: Any) -> tuple[str | None, RGB | None]:
    if cls is None:
        return None, None
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, Mapping):
        return None, None
    name = cls.get("name")
    names = cls.get("names")                      # QuPath's derived classes: ["Tumor", "Positive"]
    if name is None and isinstance(names, list) and names:
        name = ": ".join(str(n) for n in names)
    color = _color_or_none(cls.get("color"))
    if color is None and cls.get("colorRGB") is not None:
        color = _color_or_none(cls.get("colorRGB"))
    return (None if name is None else str(name)), color


def _color_or_none(value: Any) -> RGB | None:
    """[r, g, b] (or [r, g, b, a]) or a packed (A)RGB int, possibly negative, -> (r, g, b)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        packed = value & 0xFFFFFFFF                # QuPath packs ARGB in a signed 32-bit int
        return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
    if isinstance(value, list) and len(value) in (3, 4):
        try:
            return as_rgb_triple(tuple(value[:3]), "colour")
        except AnnotationError:
            return None
    return None


def _describe(feature: Any) -> str:
    if not isinstance(feature, dict):
        return ""
    props = feature.get("properties")
    if not isinstance(props, dict):
        return ""
    bits = []
    if props.get("id") is not None:
        bits.append(f"id={props['id']}")
    name = _classification(props.get("classification"))[0]
    if name is not None:
        bits.append(f"class {name!r}")
    return f" ({', '.join(bits)})" if bits else ""


def _read(path: Path, image: ImageRef) -> ImportResult:
    return read_geojson(path)


def _write(objects: list[AnnotationObject], path: Path, image: ImageRef) -> Path:
    return write_geojson(objects, path, mpp=image.mpp)


FORMAT = Format("geojson", "QuPath GeoJSON", (".geojson", ".json"), read=_read, write=_write)
