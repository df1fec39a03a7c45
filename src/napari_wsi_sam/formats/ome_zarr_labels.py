"""Labels out as OME-Zarr: the rendered class pyramids as one NGFF ``labels`` image.

The object store stays the truth and GeoJSON the object format; this is the raster view for
tools that read OME-Zarr (napari-ome-zarr, micro-sam, QuPath's and Fiji's OME-Zarr readers).
Each level of `ObjectRasters` becomes a level of a label image whose value is the class
index, 1-based in the store's class order (0 is background); where objects of different classes
overlap, the class stored later wins (the GeoJSON export keeps both). The ``image-label``
metadata carries every class's name (``properties``) and colour (``colors``); the scale
transformations are the slide's µm/px times each level's downsample (pixels without an mpp).

Layout, NGFF 0.4 (zarr v2) or 0.5 (zarr v3)::

    OUT.zarr/                 a new container, or an existing OME-Zarr image to add to
      labels/                 "labels": ["classes", ...]
        classes/0, 1, ...     multiscales + image-label
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import AnnotationError
from ..store.colors import as_rgb
from ..store.rendering import ObjectRasters

NGFF_VERSIONS = ("0.4", "0.5")
CHUNK = 1024
_WHAT_TO_DO = "give a new --out folder or an existing OME-Zarr image"


def export_ome_zarr_labels(rasters: ObjectRasters, out: Path, *,
                           mpp: tuple[float, float] | None, name: str = "classes",
                           classes: Sequence[str] | None = None,
                           version: str = "0.5") -> dict[str, Any]:
    """Write the class label pyramid of `rasters` into `out` (see the module); returns the
    ``image-label`` metadata written. Brings the rasters up to date with the store first."""
    if version not in NGFF_VERSIONS:
        raise AnnotationError(f"NGFF version {version!r} is not written; choose 0.4 or 0.5")
    stored = rasters.store.classes()
    names = list(classes) if classes is not None else list(stored)
    unknown = [c for c in names if c not in stored]
    if unknown:
        raise AnnotationError(f"no class {unknown[0]!r} in {rasters.store.path}; "
                              f"known: {', '.join(stored) or 'none'}")
    if not name or "/" in name or name.startswith("."):
        raise AnnotationError(f"label name {name!r} must be a plain folder name")
    out = Path(out)
    container, version = _container(out, version)
    rasters.sync()
    label_meta = _image_label(names, stored, version)
    staging = (container / "labels" / f".{name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(container, mode="a", zarr_format=fmt)  # type: ignore[arg-type]
    labels = root.require_group("labels")
    group = zarr.open_group(staging, mode="w", zarr_format=fmt)  # type: ignore[arg-type]
    datasets: list[dict[str, Any]] = []
    dtype = np.uint8 if len(names) < 256 else np.uint16
    for k, d in enumerate(rasters.downsamples):
        _write_level(group, str(k), rasters, names, k, dtype=dtype, zarr_format=fmt)
        scale = [d * mpp[1], d * mpp[0]] if mpp is not None else [d, d]
        datasets.append({"path": str(k),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    unit = {"unit": "micrometer"} if mpp is not None else {}
    multiscale: dict[str, Any] = {"name": name, "axes": [{"name": "y", "type": "space", **unit},
                                         {"name": "x", "type": "space", **unit}],
                  "datasets": datasets}
    if version == "0.4":
        group.attrs.update({"multiscales": [{"version": "0.4", **multiscale}],
                            "image-label": label_meta})
    else:
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale],
                                    "image-label": label_meta}})
    target = container / "labels" / name
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    listed = _listed_labels(labels, version)
    if name not in listed:
        listed.append(name)
    if version == "0.4":
        labels.attrs["labels"] = listed
    else:
        labels.attrs["ome"] = {"version": "0.5", "labels": listed}
    return label_meta


def _container(out: Path, version: str) -> tuple[Path, str]:
    """The folder to write into and the NGFF version it dictates (an existing image's own)."""
    if not out.exists():
        if not out.parent.is_dir():
            raise AnnotationError(f"folder {out.parent} does not exist; {_WHAT_TO_DO}")
        fmt = 2 if version == "0.4" else 3
        zarr.open_group(out, mode="w", zarr_format=fmt,  # type: ignore[arg-type]
                        attributes={"napari-wsi-sam": {"content": "labels"}})
        return out, version
    try:
        root = zarr.open_group(out, mode="r")
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError) as err:
        raise AnnotationError(f"{out} exists and is not a zarr group; {_WHAT_TO_DO}") from err
    attrs = dict(root.attrs)
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return out, "0.5"
    if "multiscales" in attrs:
        return out, "0.4"
    if "napari-wsi-sam" in attrs:  # an earlier export of ours
        return out, "0.5" if root.metadata.zarr_format == 3 else "0.4"
    raise AnnotationError(f"{out} exists and is neither an OME-Zarr image nor a labels "
                          f"export; {_WHAT_TO_DO}")


def _image_label(names: Sequence[str], stored: dict[str, str], version: str) -> dict[str, Any]:
    colors, properties = [], []
    for value, cls in enumerate(names, start=1):
        r, g, b = as_rgb(stored[cls]) or (255, 255, 0)
        colors.append({"label-value": value, "rgba": [r, g, b, 255]})
        properties.append({"label-value": value, "class": cls})
    meta: dict[str, Any] = {"colors": colors, "properties": properties,
                            "source": {"image": "../../"}}
    if version == "0.4":
        meta["version"] = "0.4"
    return meta


def _write_level(group: zarr.Group, path: str, rasters: ObjectRasters, names: Sequence[str],
                 level: int, *, dtype: type, zarr_format: int) -> None:
    h0, w0 = rasters.shape
    d = rasters.downsamples[level]
    shape = (math.ceil(h0 / d), math.ceil(w0 / d))
    chunks = (min(CHUNK, shape[0]), min(CHUNK, shape[1]))
    extra: dict[str, Any] = {"dimension_names": ("y", "x")} if zarr_format == 3 else {
        "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    array = group.create_array(path, shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                               **extra)
    sources = [rasters.levels(cls)[level] for cls in names]
    for y0 in range(0, shape[0], chunks[0]):
        for x0 in range(0, shape[1], chunks[1]):
            y1, x1 = min(y0 + chunks[0], shape[0]), min(x0 + chunks[1], shape[1])
            block: np.ndarray = np.zeros((y1 - y0, x1 - x0), dtype)
            for value, source in enumerate(sources, start=1):
                block[np.asarray(source[y0:y1, x0:x1]) > 0] = value
            if block.any():
                array[y0:y1, x0:x1] = block


def _listed_labels(labels: zarr.Group, version: str) -> list[str]:
    attrs: dict[str, Any] = dict(labels.attrs)
    ome = attrs.get("ome")
    found = (ome.get("labels") if isinstance(ome, dict) else None) if version == "0.5" \
        else attrs.get("labels")
    return [str(n) for n in found] if isinstance(found, list) else []
