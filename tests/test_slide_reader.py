"""open_slide on real slides, written pyramids of real H&E tiles, plain images and bad files."""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections import Counter

import dask.array as da
import numpy as np
import psutil
import pytest
import tifffile
import tifffile.zarr

from napari_wsi_sam.errors import MppMissingError, SlideError
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import Slide, concentric_crops, open_slide
from napari_wsi_sam.slide.metadata import parse_aperio_description, parse_ome_xml
from slide_factory import he_image, make_image, make_pyramid

BIG = 100_000


@pytest.fixture(scope="session")
def big_slide(tmp_path_factory) -> tuple:
    """A 100,000 x 100,000 px, 8-level tiled JPEG SVS of real H&E tiles; (path, write seconds)."""
    path = tmp_path_factory.mktemp("big") / "big.svs"
    start = time.perf_counter()
    make_pyramid(path, width=BIG, height=BIG, layout="svs", mpp=0.25, tile=256)
    return path, time.perf_counter() - start


# -- the real CMU Aperio slide ----------------------------------------------------------------
def test_cmu_svs_metadata_and_levels(sample_slide):
    with open_slide(sample_slide) as slide:
        assert isinstance(slide, Slide)
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == (0.499, 0.499)
        assert slide.objective_power == 20.0
        assert slide.native_level_count == 1
        assert slide.level_dimensions == [(2220, 2967), (1110, 1483), (555, 741)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert all(isinstance(a, da.Array) and a.dtype == np.uint8 and a.shape[2] == 3
                   for a in slide.levels)
        assert slide.levels[0].chunksize[:2] == (240, 240)
        assert {k: a.shape for k, a in slide.associated.items()} == {
            "thumbnail": (768, 574, 3), "label": (463, 387, 3), "macro": (431, 1280, 3)}
        assert slide.properties["AppMag"] == "20"


def test_virtual_level_is_exact_2x2_mean(sample_slide):
    with open_slide(sample_slide) as slide:
        l0 = slide.levels[0][1000:1064, 600:664].compute().astype(int)
        l1 = slide.levels[1][500:532, 300:332].compute().astype(int)
        l2 = slide.levels[2][250:266, 150:166].compute().astype(int)
    mean = (l0[0::2, 0::2] + l0[1::2, 0::2] + l0[0::2, 1::2] + l0[1::2, 1::2] + 2) // 4
    assert np.array_equal(l1, mean)
    mean2 = (l1[0::2, 0::2] + l1[1::2, 0::2] + l1[0::2, 1::2] + l1[1::2, 1::2] + 2) // 4
    assert np.array_equal(l2, mean2)


def test_level_mpp_and_best_level(sample_slide):
    with open_slide(sample_slide) as slide:
        assert slide.level_mpp(1) == pytest.approx((0.998, 0.998))
        assert slide.best_level_for_mpp(0.25) == 0
        assert slide.best_level_for_mpp(0.9) == 0
        assert slide.best_level_for_mpp(1.0) == 1
        assert slide.best_level_for_mpp(1.99) == 2  # within 1% of level 2's 1.996
        assert slide.best_level_for_mpp(50.0) == 2
        with pytest.raises(SlideError, match="level 3 does not exist"):
            slide.level_scale(3)


def test_with_mpp_and_override(sample_slide, caplog):
    with caplog.at_level(logging.INFO), open_slide(sample_slide, mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5)
        assert "instead of the file's" in caplog.text
        other = slide.with_mpp(0.25)
        assert other.mpp == (0.25, 0.25) and slide.mpp == (0.5, 0.5)
        assert other.levels[0] is slide.levels[0]
    with pytest.raises(SlideError, match=r"must be 0.01..100 µm/px"):
        open_slide(sample_slide, mpp=-1)
    with pytest.raises(SlideError, match="must be a number"):
        open_slide(sample_slide, mpp="fast")
    with open_slide(sample_slide, mpp=np.float32(0.25)) as slide:
        assert slide.mpp == (0.25, 0.25)


# -- openslide's fixtures and bad input -----------------------------------------------------
def test_boxes_tiff_pyramid_without_plausible_mpp(asset_path, caplog):
    with caplog.at_level(logging.INFO), open_slide(asset_path("boxes.tiff")) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.native_level_count == 4 and slide.level_count == 4
        assert slide.level_dimensions[0] == (300, 250)
        assert slide.mpp is None
        assert "72 dpi" in caplog.text
        with pytest.raises(MppMissingError, match=r"boxes.tiff has no pixel size; give one with "
                                                  r"--mpp or the widget's µm/px field"):
            slide.require_mpp()
        assert slide.with_mpp(0.5).level_mpp(1) == (1.0, 1.0)


def test_small_svs(asset_path):
    with open_slide(asset_path("small.svs")) as slide:
        assert slide.dimensions == (16, 16) and slide.level_count == 1
        assert slide.read_window(0, x0=0, y0=0, x1=16, y1=16).mean() > 200


def _one_strip_tiff_claiming(width: int, height: int) -> bytes:
    """A 132-byte grey TIFF whose single strip claims width x height pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, 10)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII" if kind == 4 else "<HHIHxx", tag, kind, 1, value)
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 18) + bytes(10) + ifd


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, with one tiny data chunk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def _bad_files(tmp_path, sample_slide, asset_path):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide at all\n")
    empty = tmp_path / "empty.tiff"
    empty.write_bytes(b"")
    data = sample_slide.read_bytes()
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(data[: len(data) // 2])
    cut_tail = tmp_path / "cut_tail.svs"  # IFDs intact, tile data (written last) cut off
    make_pyramid(cut_tail, width=2048, height=2048, layout="svs")
    cut_tail.write_bytes(cut_tail.read_bytes()[:-5000])
    jpeg = asset_path("hgsc_nest.jpg").read_bytes()
    half_jpeg = tmp_path / "half.jpg"
    half_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    strip_bomb = tmp_path / "strip_bomb.tiff"
    strip_bomb.write_bytes(_one_strip_tiff_claiming(1_000_000, 1_000_000))
    png_bomb = tmp_path / "bomb.png"
    png_bomb.write_bytes(_png_claiming(30_000, 30_000))
    return {
        "strip_bomb": (strip_bomb, "931 GiB strips or tiles.*tiled TIFF"),
        "png_bomb": (png_bomb, "too large to decode whole.*900 megapixels"),
        "missing": (tmp_path / "nope.svs", "does not exist"),
        "directory": (tmp_path, "is a directory"),
        "empty": (empty, "is empty"),
        "text": (text, "neither a slide nor an image"),
        "unreadable": (asset_path("unreadable.svs"), "cannot be decoded"),
        "unopenable": (asset_path("unopenable.tiff"), "unsupported compression"),
        "truncated": (truncated, "complete"),
        "cut_tail": (cut_tail, "is truncated: image data runs past its end"),
        "half_jpeg": (half_jpeg, "cannot be decoded"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "unreadable",
                                  "unopenable", "truncated", "cut_tail", "half_jpeg",
                                  "strip_bomb", "png_bomb"])
def test_bad_input_is_one_clear_line(case, tmp_path, sample_slide, asset_path):
    path, expected = _bad_files(tmp_path, sample_slide, asset_path)[case]
    with pytest.raises(SlideError, match=expected) as info:
        open_slide(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message


# -- written pyramids -------------------------------------------------------------------------
@pytest.mark.parametrize(("layout", "vendor", "native"), [
    ("svs", "aperio", 3), ("ome", "ome", 3), ("generic", "generic-tiff", 3),
    ("single", "generic-tiff", 1), ("strip", "generic-tiff", 1)])
def test_written_layouts(tmp_path, layout, vendor, native):
    path = make_pyramid(tmp_path / f"s.{layout}.tif", width=4096, height=3000, layout=layout,
                        mpp=0.25)
    with open_slide(path) as slide:
        assert slide.vendor == vendor
        assert slide.mpp == pytest.approx((0.25, 0.25))
        assert slide.native_level_count == native
        assert slide.level_dimensions[:3] == [(4096, 3000), (2048, 1500), (1024, 750)]
        assert slide.level_count == 3
        window = slide.read_window(0, x0=300, y0=200, x1=556, y1=456)
    reference = path.with_name("ref.tif")
    make_pyramid(reference, width=4096, height=3000, layout="single", mpp=0.25)
    with open_slide(reference) as ref:
        expected = ref.read_window(0, x0=300, y0=200, x1=556, y1=456)
    # same tiles at the same places; the strip layout is JPEG-encoded once more, so close only
    tolerance = 40 if layout == "strip" else 0
    assert np.abs(window.astype(int) - expected.astype(int)).mean() <= tolerance / 4


def test_unflagged_pages_become_levels_and_extra_images_associated(tmp_path):
    """A TIFF whose smaller pages carry no 'reduced' flag: same-aspect tiled pages are levels."""
    image = he_image()[:1024, :1280]
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for step in (1, 2, 4):
            tif.write(image[::step, ::step], tile=(128, 128), photometric="rgb",
                      compression="zlib", metadata=None)
        tif.write(image[:100, :300], photometric="rgb", metadata=None)  # a label, untiled
    with open_slide(path) as slide:
        assert slide.native_level_count == 3
        assert slide.level_dimensions == [(1280, 1024), (640, 512), (320, 256)]
        assert np.array_equal(slide.levels[2].compute(), image[::4, ::4])
        assert [a.shape for a in slide.associated.values()] == [(100, 300, 3)]


def test_read_window_padding(sample_slide):
    with open_slide(sample_slide) as slide:
        edge = slide.read_window(0, x0=-3, y0=2960, x1=2, y1=2970)
        assert edge.shape == (10, 5, 3)
        corner = slide.levels[0][2966, 0].compute()
        assert (edge[-1, 0] == corner).all() and (edge[-1, :3] == corner).all()
        beyond = slide.read_window(0, x0=5000, y0=5000, x1=5004, y1=5002)
        assert (beyond == slide.levels[0][2966, 2219].compute()).all()
        const = slide.read_window(0, x0=-2, y0=-2, x1=2, y1=2, pad=7)
        assert (const[:2] == 7).all() and (const[2:, 2:] == slide.levels[0][:2, :2].compute()).all()
        with pytest.raises(SlideError, match="empty window"):
            slide.read_window(0, x0=5, y0=0, x1=5, y1=3)


def test_resolution_tags_in_inches_and_ome_units(tmp_path):
    path = tmp_path / "inch.tif"
    tifffile.imwrite(path, he_image()[:512, :512], resolution=(25400 / 0.5, 25400 / 0.4),
                     resolutionunit="INCH", photometric="rgb")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx((0.5, 0.4))
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Instrument>'
           '<Objective ID="O:0" NominalMagnification="40"/></Instrument><Image ID="I:0">'
           '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.00025" '
           'PhysicalSizeYUnit="mm" SizeX="1" SizeY="1"/></Image></OME>')
    mpp, power, _ = parse_ome_xml(xml)
    assert mpp == pytest.approx((0.25, 0.25)) and power == 40.0
    fields = parse_aperio_description("Aperio Image Library v1\r\n1x1|AppMag = 40|MPP = 0.2520")
    assert fields["MPP"] == "0.2520" and fields["AppMag"] == "40"


# -- plain images and pixel types -------------------------------------------------------------
def test_plain_jpeg(asset_path):
    with open_slide(asset_path("hgsc_nest.jpg")) as slide:
        assert slide.vendor == "image" and slide.mpp is None
        assert slide.level_dimensions == [(1500, 1500), (750, 750)]
        with pytest.raises(MppMissingError, match="--mpp"):
            concentric_crops(slide, Prompt.from_points([[700, 700]]))
    with open_slide(asset_path("hgsc_nest.jpg"), mpp=0.5) as slide:
        pair = concentric_crops(slide, Prompt.from_points([[700, 700]]), size=256)
        assert pair.hr.image.shape == (256, 256, 3)


@pytest.mark.parametrize(("name", "note"), [("rgba.png", "alpha"), ("grey.png", "grayscale"),
                                            ("grey16.tif", "uint16"), ("rgb16.tif", "uint16")])
def test_pixel_types_become_rgb8(tmp_path, caplog, name, note):
    rgb = he_image()[:300, :400]
    grey = rgb.mean(axis=2)
    arrays = {"rgba.png": np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]),
              "grey.png": grey.astype(np.uint8),
              "grey16.tif": (grey * 16).astype(np.uint16),
              "rgb16.tif": rgb.astype(np.uint16) * 257}
    path = make_image(tmp_path / name, arrays[name])
    with caplog.at_level(logging.INFO), open_slide(path) as slide:
        out = slide.levels[0].compute()
    assert out.shape == (300, 400, 3) and out.dtype == np.uint8
    assert note in caplog.text
    if name == "rgba.png":
        assert np.array_equal(out, rgb)
    elif name == "rgb16.tif":
        assert np.abs(out.astype(int) - rgb).max() <= 1
    else:
        assert np.array_equal(out[..., 0], out[..., 2])
        assert np.corrcoef(out[..., 0].ravel(), grey.ravel())[0, 1] > 0.99


# -- laziness on a 100,000 x 100,000 slide ----------------------------------------------------
def test_big_slide_written_fast_and_small(big_slide):
    path, seconds = big_slide
    assert seconds < 30  # a few tenths of a second on a quiet machine
    assert path.stat().st_size < 20e6


def test_big_slide_opens_lazily(big_slide):
    path, _ = big_slide
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    start = time.perf_counter()
    slide = open_slide(path)
    elapsed = time.perf_counter() - start
    grown = process.memory_info().rss - before
    with slide:
        assert slide.dimensions == (BIG, BIG)
        assert slide.native_level_count == slide.level_count == 8
        assert slide.mpp == (0.25, 0.25)
    assert grown < 300e6
    assert elapsed < 1.0


@pytest.fixture
def tile_reads(monkeypatch) -> Counter:
    """Counts tile reads from tifffile's zarr stores: (store id, chunk key) -> reads.

    Chunk keys are ``"row.col.0"``; metadata keys (``zarr.json``, ``.zarray``) are not counted.
    """
    counts: Counter = Counter()
    original = tifffile.zarr.ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if key[:1].isdigit():
            counts[(id(self), key)] += 1
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(tifffile.zarr.ZarrTiffStore, "get", counting_get)
    return counts


def test_reading_decodes_only_needed_tiles(big_slide, tile_reads):
    path, _ = big_slide
    with open_slide(path) as slide:
        tile_reads.clear()
        window = slide.read_window(0, x0=50_000, y0=60_000, x1=51_000, y1=61_000)
        assert window.shape == (1000, 1000, 3) and window.std() > 10  # real tissue
        # 1000 px from 50,000 (= 195.3 tiles of 256) span tiles 195-199: 5 x 5, each read once
        assert len(tile_reads) == 25 and max(tile_reads.values()) == 1
        tile_reads.clear()
        pair = concentric_crops(slide, Prompt.from_box([50_000, 60_000, 50_300, 60_200]),
                                hr_mpp=1.0, size=1024)
    assert (pair.hr.level, pair.lr.level) == (2, 3)  # 1.0 and 2.0 µm/px levels, read directly
    # each crop covers 1024 level px (+1 for sub-pixel footprints): at most 6 x 6 tiles each,
    # of the ~200,000 tiles in the file
    assert 2 * 5 * 5 <= sum(tile_reads.values()) <= 2 * 6 * 6
    assert max(tile_reads.values()) == 1
