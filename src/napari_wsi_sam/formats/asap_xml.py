"""ASAP XML, the annotation format of ASAP and of the CAMELYON16/17 challenges.

A file looks like::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="1234.5" Y="678"/>...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#FF0000"/></AnnotationGroups>
    </ASAP_Annotations>

Coordinates are level-0 pixels, x then y, which we read as they are (pixel ``i`` covering
``[i, i + 1)``). The class of an annotation is its ``PartOfGroup``, kept raw: CAMELYON16 names
its tumour groups ``_0`` and ``_1`` and its exclusion regions ``_2``; ``"None"`` means no class.
Polygon, Spline and Rectangle annotations become polygons (a Spline's control points joined by
straight lines); Dot and PointSet annotations carry no area and are skipped and reported. Some
exports write a decimal comma (``X="1234,5"``); we accept it.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from shapely.geometry import Polygon

from ..errors import AnnotationError
from ..polygons import as_areal, exterior_parts
from .file_io import write_text_atomic
from .format import Format, ImageRef
from .records import RGB, AnnotationObject, ImportResult

logger = logging.getLogger(__name__)

_AREA_TYPES = {"polygon", "spline", "rectangle"}
_POINT_TYPES = {"dot", "pointset"}
_DEFAULT_COLOR = "#F4FA58"                       # ASAP's default annotation colour


# -- reading ---------------------------------------------------------------------------------
def read_asap_xml(path: str | os.PathLike[str]) -> ImportResult:
    """Read the polygons of an ASAP XML file (CAMELYON16/17) as objects.

    Object ids are the annotation's position in the file, from 1, so a skipped annotation
    leaves a gap rather than renumbering the rest. ``properties`` keep ``name`` (the
    annotation's Name) and ``asap_type``. Dots, point sets and annotations with fewer than
    three points are skipped, one line each in ``skipped``. A file that is not ASAP XML, or
    not well-formed XML (e.g. truncated), raises `AnnotationError`.
    """
    source = Path(path)
    try:
        root = ET.parse(source).getroot()
    except OSError as err:
        raise AnnotationError(f"cannot read {source}: {err.strerror or err}") from err
    except ET.ParseError as err:
        line, col = err.position
        raise AnnotationError(f"{source.name} is not well-formed XML (line {line}, column "
                              f"{col}); the file may be truncated: re-copy or re-export it "
                              f"from ASAP") from err
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{source.name} is not ASAP XML (root <{root.tag}>, not "
                              f"<ASAP_Annotations>); export annotations from ASAP or give "
                              f"QuPath GeoJSON")
    group_colors = {g.get("Name"): _color(g.get("Color"))
                    for g in root.iter("Group") if g.get("Name")}
    objects: list[AnnotationObject] = []
    skipped: list[str] = []
    container = root.find("Annotations")
    annotations = [] if container is None else container.findall("Annotation")
    for index, element in enumerate(annotations):
        name = element.get("Name") or f"annotation {index}"
        try:
            obj = _parse_annotation(element, index + 1, group_colors)
        except _Skip as why:
            skipped.append(f"annotation {index} ({name!r}): {why}")
            continue
        objects.append(obj)
    if skipped:
        logger.info("%s: kept %d annotations, skipped %d", source.name, len(objects),
                    len(skipped))
    return ImportResult(objects=objects, skipped=skipped)


class _Skip(Exception):
    """An annotation that is valid ASAP XML but not an area we can keep."""


def _parse_annotation(element: ET.Element, ident: int,
                      group_colors: dict[str | None, RGB | None]) -> AnnotationObject:
    kind = (element.get("Type") or "Polygon").strip()
    if kind.lower() in _POINT_TYPES:
        raise _Skip(f"{kind} annotations are points, not areas")
    if kind.lower() not in _AREA_TYPES:
        raise _Skip(f"{kind} annotations are not read; only Polygon, Spline and Rectangle")
    points = []
    for position, coord in enumerate(element.iter("Coordinate")):
        try:
            order = float(_number(coord.get("Order", str(position))))
            x, y = float(_number(coord.get("X"))), float(_number(coord.get("Y")))
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError("not finite")
        except (TypeError, ValueError) as err:
            raise _Skip(f"coordinate {position} is not numbers (Order={coord.get('Order')!r}, "
                        f"X={coord.get('X')!r}, Y={coord.get('Y')!r})") from err
        points.append((order, position, x, y))
    points.sort()
    xy = [(x, y) for _, _, x, y in points]
    if kind.lower() == "rectangle" and len(xy) == 2:
        (xa, ya), (xb, yb) = xy
        xy = [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]
    if len(set(xy)) < 3:
        raise _Skip(f"{kind} with {len(set(xy))} distinct points has no area")
    geom, why = as_areal(Polygon(xy))
    if geom is None:
        raise _Skip(why)
    group = element.get("PartOfGroup")
    class_name = None if group in (None, "", "None") else group
    color = _color(element.get("Color")) or group_colors.get(group)
    props = {"name": element.get("Name"), "asap_type": kind}
    return AnnotationObject(id=ident, geometry=geom, class_name=class_name, color=color,
                            properties={k: v for k, v in props.items() if v is not None})


def _number(text: str | None) -> str:
    """ASAP writes ``1234.5``, some locales ``1234,5``; float() wants the former."""
    if text is None:
        raise ValueError("missing")
    text = text.strip()
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    return text


def _color(text: str | None) -> RGB | None:
    if not text:
        return None
    value = text.strip().lstrip("#")
    if len(value) != 6:
        return None
    try:
        packed = int(value, 16)
    except ValueError:
        return None
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


# -- writing ---------------------------------------------------------------------------------
def write_asap_xml(objects: Iterable[AnnotationObject], path: str | os.PathLike[str]) -> Path:
    """Write ``objects`` as ASAP XML that ASAP opens, atomically; returns the path written.

    Each polygon becomes one ``Polygon`` annotation through its exterior ring; a MultiPolygon
    becomes one annotation per part. ASAP polygons have no holes: holes are dropped, with a
    logged warning. The class becomes ``PartOfGroup`` (``"None"`` when unclassified), and
    every class gets a ``<Group>``. Coordinates are written exactly (shortest round-trip
    decimal, integers without a fraction).
    """
    target = Path(path)
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    count = 0
    for obj in objects:
        group = "None" if obj.class_name is None else obj.class_name
        color = _DEFAULT_COLOR if obj.color is None else "#{:02X}{:02X}{:02X}".format(*obj.color)
        if group != "None":
            groups.setdefault(group, color)
        name = obj.properties.get("name") or f"Annotation {obj.id}"
        parts = exterior_parts(obj.geometry, f"object {obj.id}", "ASAP XML")
        for k, part in enumerate(parts):
            element = ET.SubElement(annotations, "Annotation", {
                "Name": str(name) if len(parts) == 1 else f"{name} part {k + 1}",
                "Type": "Polygon", "PartOfGroup": group, "Color": color})
            coords = ET.SubElement(element, "Coordinates")
            for order, (x, y) in enumerate(part.exterior.coords[:-1]):
                ET.SubElement(coords, "Coordinate",
                              {"Order": str(order), "X": _fmt(x), "Y": _fmt(y)})
            count += 1
    group_root = ET.SubElement(root, "AnnotationGroups")
    for group, color in groups.items():
        element = ET.SubElement(group_root, "Group",
                                {"Name": group, "PartOfGroup": "None", "Color": color})
        ET.SubElement(element, "Attributes")
    ET.indent(root, space="\t")
    text = '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    write_text_atomic(target, text)
    logger.info("wrote %d ASAP annotations to %s", count, target)
    return target


def _fmt(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _read(path: Path, image: ImageRef) -> ImportResult:
    return read_asap_xml(path)


def _write(objects: list[AnnotationObject], path: Path, image: ImageRef) -> Path:
    return write_asap_xml(objects, path)


FORMAT = Format("asap-xml", "ASAP XML", (".xml",), read=_read, write=_write)
