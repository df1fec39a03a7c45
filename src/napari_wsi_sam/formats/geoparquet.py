"""GeoParquet: the table format geopandas writes (``to_parquet``), used by histolytics and
other nucleus-segmentation tools for millions of polygons per slide.

One row per object, a WKB geometry column (named by the file's ``geo`` metadata, else
``geometry``) and any other columns. Coordinates are read as level-0 pixels (x, y; pixel ``i``
covering ``[i, i + 1)``): the CRS in the metadata is ignored, since pixel data carries a
meaningless default (geopandas writes WGS 84). pyarrow is needed, and imported only here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ..errors import AnnotationError
from ..polygons import as_areal
from .format import Format, ImageRef
from .records import AnnotationObject, ImportResult

logger = logging.getLogger(__name__)


def read_geoparquet(path: str | os.PathLike[str], *,
                    class_column: str = "class_name") -> ImportResult:
    """Read the polygons of a GeoParquet file as objects, ids 1..N in row order.

    class_column : the column holding class names; a missing ``"class_name"`` (the default)
        leaves objects unclassified, any other missing name raises `AnnotationError`.

    Every other column (except pandas' ``__index...`` columns) goes into ``properties``.
    Points, lines and empty or unreadable geometries are skipped, one line each in
    ``skipped``; invalid polygons are repaired (`as_areal`). A skipped row leaves a gap in the
    ids, so ``id - 1`` is always the row.
    """
    source = Path(path)
    if not source.is_file():
        raise AnnotationError(f"{source} does not exist or is not a file; check the path")
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise AnnotationError("reading GeoParquet needs pyarrow; pip install pyarrow") from err
    try:
        table = pq.read_table(source)
    except (OSError, ValueError) as err:        # pyarrow's ArrowInvalid is a ValueError
        raise AnnotationError(f"{source.name} is not a readable Parquet file "
                              f"({_first_line(err)}); give a GeoParquet file written by "
                              f"geopandas") from err
    column = _geometry_column(table, source)
    if class_column not in table.column_names and class_column != "class_name":
        raise AnnotationError(f"{source.name} has no column {class_column!r}; its columns are "
                              f"{', '.join(table.column_names)}")
    geoms = _decode(table.column(column).to_pylist())
    classes = (table.column(class_column).to_pylist() if class_column in table.column_names
               else [None] * table.num_rows)
    extra = [c for c in table.column_names
             if c not in (column, class_column) and not c.startswith("__")]
    values = {c: table.column(c).to_pylist() for c in extra}
    objects: list[AnnotationObject] = []
    skipped: list[str] = []
    for row, (geom, cls) in enumerate(zip(geoms, classes, strict=True)):
        if isinstance(geom, str):
            skipped.append(f"row {row}: {geom}")
            continue
        area, why = as_areal(geom)
        if area is None:
            skipped.append(f"row {row}: {why}")
            continue
        props = {c: values[c][row] for c in extra if _plain(values[c][row])}
        objects.append(AnnotationObject(id=row + 1, geometry=area, class_name=_class(cls),
                                        properties=props))
    if skipped:
        logger.info("%s: kept %d rows, skipped %d", source.name, len(objects), len(skipped))
    return ImportResult(objects=objects, skipped=skipped)


def _geometry_column(table: Any, source: Path) -> str:
    meta = table.schema.metadata or {}
    column, encoding = "geometry", "WKB"
    if b"geo" in meta:
        try:
            geo = json.loads(meta[b"geo"])
            column = str(geo.get("primary_column", column))
            encoding = str(geo.get("columns", {}).get(column, {}).get("encoding", encoding))
        except (ValueError, AttributeError, TypeError):
            logger.warning("%s: unreadable 'geo' metadata; looking for a 'geometry' column",
                           source.name)
    if column not in table.column_names:
        raise AnnotationError(f"{source.name} has no geometry column {column!r} (columns: "
                              f"{', '.join(table.column_names)}); give a GeoParquet file")
    if encoding.upper() not in ("WKB", "WKT"):
        raise AnnotationError(f"{source.name} stores geometry as GeoArrow {encoding!r}; only "
                              f"WKB is read: rewrite it with geopandas' to_parquet("
                              f"geometry_encoding='WKB')")
    return column


def _decode(raw: list[Any]) -> list[Any]:
    """WKB bytes (or WKT text) -> geometries, all at once; for a value that does not decode,
    a string saying why."""
    out: list[Any] = [None] * len(raw)
    for kind, decode in ((bytes, shapely.from_wkb), (str, shapely.from_wkt)):
        rows = [i for i, v in enumerate(raw) if isinstance(v, kind)]
        if not rows:
            continue
        values = np.empty(len(rows), dtype=object)
        values[:] = [raw[i] for i in rows]
        for i, geom in zip(rows, decode(values, on_invalid="ignore"), strict=True):
            out[i] = "unreadable geometry" if geom is None else geom
    for i, v in enumerate(raw):
        if v is None:
            out[i] = "no geometry"
        elif not isinstance(v, bytes | str):
            out[i] = f"geometry is a {type(v).__name__}, not WKB"
    return out


def _class(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _plain(value: Any) -> bool:
    """Keep JSON-like cell values; drop nulls, NaN and binary blobs."""
    if value is None or isinstance(value, bytes | bytearray):
        return False
    return not (isinstance(value, float) and math.isnan(value))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read(path: Path, image: ImageRef) -> ImportResult:
    return read_geoparquet(path)


FORMAT = Format("geoparquet", "GeoParquet", (".parquet",), read=_read)
