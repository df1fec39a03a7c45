"""The OME-Zarr backend: an NGFF 0.4 (zarr v2) or 0.5 (zarr v3) multiscale image as a slide.

Read with zarr 3 alone. The first multiscale of the group (or of its first series, in the
bioformats2raw layout that converted vendor slides come in) is the slide; its datasets are the
levels, finest first, each a dask array over the zarr chunks. The pixel size is level 0's
``scale`` transformation on the ``y``/``x`` axes (times the multiscale's own, if any), in the
axes' unit; labels and other groups in the container are left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from ..errors import SlideError, one_line
from .metadata import UM_PER, plausible_mpp
from .pyramid import to_rgb8
from .sources import READ_ERRORS, Opened, check_chunks, probe, value_factor

logger = logging.getLogger(__name__)

_AXIS_LETTER = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_UNIT_ALIASES = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm",
                 "meter": "m", "angstrom": "Å", "picometer": "pm"}
_FIX = "check that the folder is a complete OME-Zarr image (NGFF 0.4 or 0.5)"


def is_ome_zarr(path: Path) -> bool:
    """True when `path` is a zarr group whose attributes carry NGFF multiscales."""
    if not path.is_dir():
        return False
    try:
        return multiscales_of(zarr.open_group(path, mode="r")) is not None
    except (*READ_ERRORS, FileNotFoundError):
        return False


def image_group(group: zarr.Group) -> zarr.Group:
    """The group holding the image: `group` itself, or the first series (``0``) of a
    bioformats2raw layout, which is how converted vendor slides usually arrive."""
    attrs: dict[str, Any] = dict(group.attrs)
    ome = attrs.get("ome")
    layout = attrs.get("bioformats2raw.layout") or (
        ome.get("bioformats2raw.layout") if isinstance(ome, dict) else None)
    if layout is not None and "0" in group:
        series = group["0"]
        if isinstance(series, zarr.Group):
            return series
    return group


def multiscales_of(group: zarr.Group) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of NGFF 0.5 (under ``ome``) or 0.4 (top level), or None."""
    attrs = dict(image_group(group).attrs)
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    return found if isinstance(found, list) and found else None


def open_ome_zarr(path: Path) -> Opened:
    """Open the first multiscale image of the OME-Zarr group at `path`."""
    try:
        group = image_group(zarr.open_group(path, mode="r"))
        multiscales = multiscales_of(group)
    except (*READ_ERRORS, FileNotFoundError) as err:
        raise SlideError(f"{path} is not a readable zarr group ({one_line(err)}); {_FIX}"
                         ) from err
    if multiscales is None:
        raise SlideError(f"{path} has no OME-Zarr multiscales metadata; {_FIX}")
    meta = multiscales[0]
    try:
        axes = _axes(meta)
        datasets = list(meta["datasets"])
        raw = [da.from_zarr(group[d["path"]]) for d in datasets]
    except (*READ_ERRORS, TypeError) as err:
        raise SlideError(f"{path} has unreadable multiscales metadata ({one_line(err)}); {_FIX}"
                         ) from err
    if not raw or any(a.ndim != len(axes) for a in raw):
        raise SlideError(f"{path}: the multiscales axes {axes!r} do not match its arrays; {_FIX}")
    for arr in raw:
        check_chunks(arr, path)
    factor = value_factor(raw[-1], axes)
    levels = [to_rgb8(a, axes, scale=factor, name=path.name, log=i == 0)
              for i, a in enumerate(raw)]
    if any(0 in a.shape[:2] for a in levels):
        raise SlideError(f"{path} claims an image of 0 pixels; {_FIX}")
    probe(levels[-1], path)
    h0, w0 = levels[0].shape[:2]
    scales = [(w0 / a.shape[1], h0 / a.shape[0]) for a in levels]
    ome = dict(group.attrs).get("ome")
    version = str((ome.get("version") if isinstance(ome, dict) else None)
                  or meta.get("version") or "0.4")
    properties = {"ngff.version": version, "ngff.axes": axes,
                  "ngff.name": str(meta.get("name", ""))}
    return Opened(levels=levels, scales=scales, vendor="ome-zarr",
                  mpp=plausible_mpp(pixel_size(meta, datasets[0]), source="OME-Zarr scale"),
                  properties=properties)


def _axes(meta: dict[str, Any]) -> str:
    names = [a["name"] if isinstance(a, dict) else a for a in meta["axes"]]
    return "".join(_AXIS_LETTER.get(str(n).lower(), "Q") for n in names)


def pixel_size(meta: dict[str, Any], dataset: dict[str, Any]) -> tuple[float, float] | None:
    """(x, y) µm/px of a dataset from its scale transformations and the axes' units."""
    axes = [a if isinstance(a, dict) else {"name": a} for a in meta["axes"]]
    scale = [1.0] * len(axes)
    for transforms in (dataset.get("coordinateTransformations") or [],
                       meta.get("coordinateTransformations") or []):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                scale = [s * float(v) for s, v in zip(scale, t["scale"], strict=True)]
    out = []
    for name in ("x", "y"):
        index = next((i for i, a in enumerate(axes) if str(a.get("name")).lower() == name), None)
        if index is None:
            return None
        unit = str(axes[index].get("unit") or "")
        um = UM_PER.get(_UNIT_ALIASES.get(unit, unit))
        if um is None:
            logger.info("OME-Zarr axis %s has unit %r, not a length; no pixel size", name, unit)
            return None
        out.append(scale[index] * um)
    return out[0], out[1]
