"""Pixel size (µm/px), objective power and vendor of a TIFF slide, from its own metadata.

Where each format keeps the pixel size:

- Aperio SVS: ``MPP = 0.499`` and ``AppMag = 20`` in the ImageDescription (``|``-separated).
- OME-TIFF: ``Pixels`` ``PhysicalSizeX``/``PhysicalSizeY`` with ``PhysicalSizeXUnit`` (default
  µm), ``Objective`` ``NominalMagnification``.
- NDPI: TIFF resolution tags (centimetres) and Hamamatsu's magnification tag (65421).
- Anything else: TIFF resolution tags, unit inch, centimetre, millimetre or micrometre.

Resolution tags are often a meaningless default (72 dpi = 352.8 µm/px); values outside
`PLAUSIBLE_MPP` are ignored with a log note, and the slide is treated as having no pixel size.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import tifffile

logger = logging.getLogger(__name__)

PLAUSIBLE_MPP = (0.01, 100.0)
"""Pixel sizes (µm/px) believed when read from a file; others are treated as missing."""

UM_PER = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "A": 1e-4,
}
_UM_PER_RESUNIT = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}


@dataclass(frozen=True)
class SlideMetadata:
    """What a slide file says about itself."""

    vendor: str
    mpp: tuple[float, float] | None = None
    objective_power: float | None = None
    properties: dict[str, str] = field(default_factory=dict)


def vendor_of(tif: tifffile.TiffFile) -> str:
    """Short vendor/format name from tifffile's format flags."""
    for flag, name in (("is_svs", "aperio"), ("is_ome", "ome"), ("is_ndpi", "ndpi"),
                       ("is_philips", "philips"), ("is_bif", "ventana"), ("is_scn", "leica")):
        if getattr(tif, flag, False):
            return name
    return "generic-tiff"


def read_metadata(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> SlideMetadata:
    """Metadata of the slide whose level-0 page is `page`."""
    vendor = vendor_of(tif)
    properties: dict[str, str] = {}
    mpp: tuple[float, float] | None = None
    power: float | None = None
    if vendor == "aperio":
        properties = parse_aperio_description(page.description)
        value = _float(properties.get("MPP"))
        mpp = (value, value) if value else None
        power = _float(properties.get("AppMag"))
    elif vendor == "ome" and tif.ome_metadata:
        mpp, power, properties = parse_ome_xml(tif.ome_metadata)
    elif vendor == "ndpi":
        tags = page.ndpi_tags or {}
        properties = {str(k): str(v) for k, v in tags.items() if not isinstance(v, bytes)}
        power = _float(tags.get("Magnification"))
    if mpp is None:
        mpp = mpp_from_resolution_tags(page)
    mpp = plausible_mpp(mpp, source=f"{vendor} metadata")
    if power is not None and power <= 0:
        power = None
    return SlideMetadata(vendor=vendor, mpp=mpp, objective_power=power, properties=properties)


def parse_aperio_description(description: str) -> dict[str, str]:
    """``key = value`` fields of an Aperio ImageDescription; the header line is ``"header"``."""
    parts = description.split("|")
    fields = {"header": parts[0].strip()}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def parse_ome_xml(xml: str) -> tuple[tuple[float, float] | None, float | None, dict[str, str]]:
    """(mpp, objective power, properties) of the first image of an OME-XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        logger.warning("OME-XML does not parse (%s); ignoring its pixel size", err)
        return None, None, {}
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"),
                  None)
    objective = next((el for el in root.iter()
                      if el.tag.endswith("}Objective") or el.tag == "Objective"), None)
    power = _float(objective.get("NominalMagnification")) if objective is not None else None
    if pixels is None:
        return None, power, {}
    props = {k: v for k, v in pixels.attrib.items() if k.startswith("PhysicalSize")}
    sizes = []
    for axis in ("X", "Y"):
        value = _float(pixels.get(f"PhysicalSize{axis}"))
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if value is None or unit not in UM_PER:
            if value is not None:
                logger.warning("OME PhysicalSize%s unit %r is unknown; ignoring the pixel size",
                               axis, unit)
            return None, power, props
        sizes.append(value * UM_PER[unit])
    return (sizes[0], sizes[1]), power, props


def mpp_from_resolution_tags(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """(x, y) µm/px from XResolution/YResolution/ResolutionUnit, or None without a unit."""
    tags = page.tags
    unit = tags.valueof(296, 2)
    if int(unit) not in _UM_PER_RESUNIT:
        return None
    out = []
    for code in (282, 283):
        value = tags.valueof(code)
        if value is None:
            return None
        pixels_per_unit = value[0] / value[1] if isinstance(value, tuple) else float(value)
        if not pixels_per_unit or pixels_per_unit <= 0:
            return None
        out.append(_UM_PER_RESUNIT[int(unit)] / pixels_per_unit)
    return (out[0], out[1])


def plausible_mpp(mpp: tuple[float, float] | None, *, source: str) -> tuple[float, float] | None:
    if mpp is None:
        return None
    low, high = PLAUSIBLE_MPP
    if all(math.isfinite(v) and low <= v <= high for v in mpp):
        return (float(mpp[0]), float(mpp[1]))
    logger.info("ignoring pixel size %.4g x %.4g µm/px from %s: outside %g-%g µm/px "
                "(often a 72 dpi default); give one with mpp=", mpp[0], mpp[1], source, low, high)
    return None


def _float(value: object) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
