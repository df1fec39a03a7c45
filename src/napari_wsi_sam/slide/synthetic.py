"""Write large tiled pyramidal TIFFs from a few real H&E tiles, fast, for tests and benchmarks.

A 100,000 x 100,000 slide has ~40,000 tiles per level; JPEG-encoding that many tiles would take
minutes and the file would weigh gigabytes. Instead, tifffile writes the whole TIFF structure
(IFDs, SubIFDs, descriptions, resolution tags) with a one-byte placeholder per tile, then the few
real JPEG tiles are appended once and every tile's offset and byte count is pointed at one of
them. The result is a valid TIFF of a few megabytes that any reader decodes tile by tile.

Layouts (``layout=``): ``"svs"`` (Aperio: description with ``MPP``/``AppMag``, thumbnail, levels
as pages, label and macro), ``"ome"`` (OME-TIFF, levels in SubIFDs, ``PhysicalSizeX`` in µm),
``"generic"`` (levels as reduced-resolution pages, mpp in the resolution tags in cm),
``"single"`` (one tiled level) and ``"strip"`` (one level in JPEG strips, not tiled; written
plainly, so keep it small).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile

logger = logging.getLogger(__name__)

Layout = Literal["svs", "ome", "generic", "single", "strip"]
LAYOUTS: tuple[Layout, ...] = ("svs", "ome", "generic", "single", "strip")
_PLACEHOLDER = b"\0"


def he_tiles(image: np.ndarray, *, tile: int = 512, count: int = 8,
             seed: int = 0) -> list[np.ndarray]:
    """Cut `count` real tiles of `tile` x `tile` from an (H, W, 3) uint8 H&E image.

    Tiles that are mostly background (bright) are skipped when enough tissue tiles exist.
    """
    image = np.ascontiguousarray(np.asarray(image)[..., :3])
    h, w = image.shape[:2]
    if h < tile or w < tile:
        raise ValueError(f"image of {w}x{h} px is smaller than one {tile} px tile; "
                         "use a smaller tile")
    rng = np.random.default_rng(seed)
    candidates = [(y, x) for y in range(0, h - tile + 1, tile // 2)
                  for x in range(0, w - tile + 1, tile // 2)]
    rng.shuffle(candidates)
    tissue = [c for c in candidates if image[c[0]:c[0] + tile, c[1]:c[1] + tile].mean() < 215]
    chosen = (tissue + [c for c in candidates if c not in tissue])[:count]
    return [image[y:y + tile, x:x + tile].copy() for y, x in chosen]


def level_shapes(width: int, height: int, *, min_side: int = 1024) -> list[tuple[int, int]]:
    """(height, width) of each level, halving until the smaller side is below `min_side`."""
    shapes = [(height, width)]
    while min(shapes[-1]) >= min_side:
        h, w = shapes[-1]
        shapes.append((max(1, h // 2), max(1, w // 2)))
    return shapes


def write_pyramid(
    path: str | Path,
    tiles: Sequence[np.ndarray],
    *,
    width: int,
    height: int,
    layout: Layout = "svs",
    mpp: float | None = 0.25,
    magnification: float | None = 40.0,
    quality: int = 80,
    min_side: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a `width` x `height` RGB pyramid whose tiles are drawn from `tiles` (real H&E).

    All tiles must share one square size, which becomes the TIFF tile size (``"strip"`` uses
    strips of that many rows). Returns the path. The tile drawn at each position depends only
    on `seed`, so two files written alike are identical.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    tile = int(tiles[0].shape[0])
    if any(t.shape != (tile, tile, 3) or t.dtype != np.uint8 for t in tiles):
        raise ValueError(f"tiles must all be ({tile}, {tile}, 3) uint8")
    shapes = level_shapes(width, height, min_side=min_side)
    if layout in ("single", "strip"):
        shapes = shapes[:1]
    if layout == "strip":
        res: dict[str, Any] = _resolution(mpp)
        tifffile.imwrite(path, _mosaic(tiles, shapes[0], seed=seed), photometric="rgb",
                         compression="jpeg", compressionargs={"level": quality},
                         rowsperstrip=tile, metadata=None, **res)
        return path
    encoded = _encode_tiles(tiles, quality=quality)
    with tifffile.TiffWriter(path, bigtiff=True, ome=layout == "ome") as tif:
        _write_layout(tif, layout, shapes, tile=tile, mpp=mpp, magnification=magnification)
    _point_tiles_at(path, encoded, seed=seed)
    logger.info("wrote %s: %dx%d, %d levels, %s, %.1f MB", path, width, height, len(shapes),
                layout, path.stat().st_size / 1e6)
    return path


def _encode_tiles(tiles: Sequence[np.ndarray], *, quality: int) -> list[bytes]:
    """JPEG bytes of each tile exactly as tifffile writes them (so tifffile decodes them alike)."""
    buffer = io.BytesIO()
    tile = tiles[0].shape[0]
    tifffile.imwrite(buffer, np.concatenate(list(tiles), axis=1), photometric="rgb",
                     compression="jpeg", compressionargs={"level": quality}, tile=(tile, tile))
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        page = tif.pages.first
        return [_read_segment(tif, o, n)
                for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]


def _mosaic(tiles: Sequence[np.ndarray], shape: tuple[int, int], *, seed: int) -> np.ndarray:
    """An (H, W, 3) image made of `tiles` at random; only for small images (strip layout)."""
    h, w = shape
    tile = tiles[0].shape[0]
    rows, cols = math.ceil(h / tile), math.ceil(w / tile)
    pick = np.random.default_rng(seed).integers(0, len(tiles), (rows, cols))
    grid = np.stack([np.stack([tiles[k] for k in row]) for row in pick])
    image = grid.transpose(0, 2, 1, 3, 4).reshape(rows * tile, cols * tile, 3)
    return np.ascontiguousarray(image[:h, :w])


def _read_segment(tif: tifffile.TiffFile, offset: int, count: int) -> bytes:
    tif.filehandle.seek(offset)
    return tif.filehandle.read(count)


def _placeholders(shape: tuple[int, int], tile: int) -> Iterator[bytes]:
    h, w = shape
    n = math.ceil(h / tile) * math.ceil(w / tile)
    for _ in range(n):
        yield _PLACEHOLDER


def _resolution(mpp: float | None) -> dict[str, Any]:
    """TIFF resolution arguments for `mpp` µm/px (pixels per centimetre)."""
    if not mpp:
        return {}
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def _write_layout(tif: tifffile.TiffWriter, layout: Layout, shapes: list[tuple[int, int]], *,
                  tile: int, mpp: float | None, magnification: float | None) -> None:
    common: dict[str, Any] = {"dtype": np.uint8, "photometric": "rgb", "compression": "jpeg"}
    tiled: dict[str, Any] = {**common, "tile": (tile, tile)}
    h0, w0 = shapes[0]
    if layout == "svs":
        fields = [f"AppMag = {magnification:g}" if magnification else "",
                  f"MPP = {mpp:.4f}" if mpp else ""]
        desc = (f"Aperio Image Library v12.0.0 \r\n{w0}x{h0} ({tile}x{tile}) JPEG/RGB Q=80|"
                + "|".join(f for f in fields if f))
        tif.write(_placeholders(shapes[0], tile), shape=(h0, w0, 3), description=desc,
                  metadata=None, **tiled)
        thumb = np.full((max(1, h0 * 256 // w0), 256, 3), 230, np.uint8)
        tif.write(thumb, description=f"Aperio Image Library v12.0.0 \r\n{w0}x{h0} -> 256",
                  metadata=None, photometric="rgb")
        for h, w in shapes[1:]:
            tif.write(_placeholders((h, w), tile), shape=(h, w, 3), description=desc,
                      metadata=None, **tiled)
        label = np.full((128, 128, 3), 200, np.uint8)
        tif.write(label, subfiletype=1, description="Aperio Image Library label", metadata=None,
                  photometric="rgb")
        macro = np.full((128, 384, 3), 180, np.uint8)
        tif.write(macro, subfiletype=9, description="Aperio Image Library macro", metadata=None,
                  photometric="rgb")
    elif layout == "ome":
        meta: dict[str, Any] = {"axes": "YXS"}
        if mpp:
            meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
        tif.write(_placeholders(shapes[0], tile), shape=(h0, w0, 3), subifds=len(shapes) - 1,
                  metadata=meta, **tiled)
        for h, w in shapes[1:]:
            tif.write(_placeholders((h, w), tile), shape=(h, w, 3), subfiletype=1,
                      metadata=None, **tiled)
    else:
        res: dict[str, Any] = _resolution(mpp)
        for i, (h, w) in enumerate(shapes):
            tif.write(_placeholders((h, w), tile), shape=(h, w, 3), subfiletype=1 if i else 0,
                      metadata=None, **tiled, **res)


def _point_tiles_at(path: Path, encoded: list[bytes], *, seed: int) -> None:
    """Append the real tiles once and point every placeholder segment at one of them."""
    with tifffile.TiffFile(path) as tif:
        pages: list[tifffile.TiffPage] = []
        for page in tif.pages:
            if not isinstance(page, tifffile.TiffPage):
                continue
            pages.append(page)
            pages.extend(p for p in (page.pages or []) if isinstance(p, tifffile.TiffPage))
        patches = []
        for page in pages:
            if not all(n == len(_PLACEHOLDER) for n in page.databytecounts):
                continue  # a real image (thumbnail, label, macro)
            offsets_tag, counts_tag = page.tags[324], page.tags[325]
            patches.append((offsets_tag.valueoffset, _width(offsets_tag.dtype),
                            counts_tag.valueoffset, _width(counts_tag.dtype),
                            len(page.dataoffsets)))
    with open(path, "r+b") as fh:
        fh.seek(0, 2)
        starts = []
        for blob in encoded:
            starts.append(fh.tell())
            fh.write(blob)
        starts_arr = np.array(starts, np.uint64)
        sizes_arr = np.array([len(b) for b in encoded], np.uint64)
        rng = np.random.default_rng(seed)
        for off_at, off_kind, cnt_at, cnt_kind, n in patches:
            pick = rng.integers(0, len(encoded), n)
            fh.seek(off_at)
            fh.write(starts_arr[pick].astype(off_kind).tobytes())
            fh.seek(cnt_at)
            fh.write(sizes_arr[pick].astype(cnt_kind).tobytes())


def _width(datatype: int) -> str:
    """NumPy little-endian dtype of a TIFF SHORT (3), LONG (4) or LONG8 (16) array."""
    kinds = {3: "<u2", 4: "<u4", 16: "<u8"}
    if int(datatype) not in kinds:
        raise ValueError(f"unexpected TIFF datatype {datatype} for tile offsets or counts")
    return kinds[int(datatype)]
