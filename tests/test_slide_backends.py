"""Both slide backends on real files: pixels equal OpenSlide's own ``read_region`` at every
level, DICOM WSI through OpenSlide, OME-Zarr written by ``ome-zarr`` from real tiles, the
backend chosen per file, and one-line errors from each backend."""

from __future__ import annotations

import shutil

import numpy as np
import openslide
import pytest
import zarr

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import SlideError
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.slide.backends import choose_backend
from slide_factory import make_pyramid

UNICODE_SVS = "\N{NEUTRAL FACE}.svs"
BOTH_READ = ["cmu_small_region.svs", "boxes.tiff", "small.svs", UNICODE_SVS]


def _reference_levels(path) -> list[np.ndarray]:
    """Every level as OpenSlide's read_region gives it whole, RGB (all these are opaque)."""
    with openslide.OpenSlide(str(path)) as ref:
        out = []
        for k, (w, h) in enumerate(ref.level_dimensions):
            rgba = np.asarray(ref.read_region((0, 0), k, (w, h)))
            assert (rgba[..., 3] == 255).all()
            out.append(rgba[..., :3])
    return out


@pytest.mark.parametrize("name", BOTH_READ)
@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_levels_equal_read_region(asset_path, name, backend):
    path = asset_path(name)
    expected = _reference_levels(path)
    with open_slide(path, backend=backend) as slide:
        assert slide.backend == backend
        assert slide.native_level_count == len(expected)
        for k, reference in enumerate(expected):
            assert np.array_equal(np.asarray(slide.levels[k]), reference), f"level {k}"


def test_openslide_metadata_matches_tifffile(asset_path, sample_slide):
    with open_slide(sample_slide, backend="openslide") as os_slide, \
            open_slide(sample_slide, backend="tifffile") as tf_slide:
        assert os_slide.mpp == tf_slide.mpp == pytest.approx((0.499, 0.499))
        assert os_slide.objective_power == tf_slide.objective_power == 20.0
        assert os_slide.vendor == tf_slide.vendor == "aperio"
        assert set(os_slide.associated) == set(tf_slide.associated) == {
            "thumbnail", "label", "macro"}
        label = np.asarray(os_slide.associated["label"])
        assert label.shape == (463, 387, 3) and label.dtype == np.uint8
        assert os_slide.level_count == tf_slide.level_count  # the same virtual levels
        window = dict(x0=700, y0=900, x1=1500, y1=1900)
        assert np.array_equal(os_slide.read_window(1, **window), tf_slide.read_window(1, **window))


def test_openslide_chunks_are_lazy_tiles_of_a_multilevel_pyramid(tmp_path):
    """A written 3-level pyramid of real tiles: many chunks per level, each one read_region."""
    path = make_pyramid(tmp_path / "p.tif", width=3000, height=2200, layout="generic", mpp=0.5)
    expected = _reference_levels(path)
    with open_slide(path, backend="openslide") as slide:
        assert slide.levels[0].numblocks[:2] == (5, 6)  # 512-px chunks of 256-px tiles
        assert slide.mpp == pytest.approx((0.5, 0.5))
        for k, reference in enumerate(expected):
            assert np.array_equal(np.asarray(slide.levels[k]), reference), f"level {k}"


def test_openslide_levels_read_only_the_tiles_under_a_window(tmp_path, monkeypatch):
    """Opening reads one region (the probe); a window is one read_region per 512² chunk it
    touches, of just the part under the window (dask fuses the slice into the read)."""
    calls: list[tuple] = []
    real = openslide.OpenSlide.read_region

    def counted(self, location, level, size):
        calls.append((location, level, size))
        return real(self, location, level, size)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", counted)
    path = make_pyramid(tmp_path / "p.tif", width=6000, height=5000, layout="generic")
    with open_slide(path, backend="openslide") as slide:
        assert len(calls) == 1  # the probe of the coarsest level
        calls.clear()
        slide.read_window(0, x0=600, y0=600, x1=700, y1=700)  # inside one 512² chunk
        assert calls == [((600, 600), 0, (100, 100))]
        calls.clear()
        slide.read_window(1, x0=500, y0=500, x1=600, y1=600)  # straddles four chunks
        assert sorted(calls) == [((1000, 1000), 1, (12, 12)), ((1000, 1024), 1, (12, 88)),
                                 ((1024, 1000), 1, (88, 12)), ((1024, 1024), 1, (88, 88))]


def test_implausible_resolution_is_no_pixel_size_in_both_backends(asset_path):
    path = asset_path("boxes.tiff")  # 72 dpi resolution tags: 352.8 µm/px
    with openslide.OpenSlide(str(path)) as ref:
        assert float(ref.properties[openslide.PROPERTY_NAME_MPP_X]) > 300
    for backend in ("tifffile", "openslide"):
        with open_slide(path, backend=backend) as slide:
            assert slide.mpp is None


@pytest.mark.parametrize("name", ["boxes_0.dcm", "boxes_1.dcm"])
def test_dicom_file_opens_through_openslide(asset_path, name):
    path = asset_path(name)
    expected = _reference_levels(path)
    assert choose_backend(path) == "openslide"
    with open_slide(path) as slide:
        assert (slide.backend, slide.vendor) == ("openslide", "dicom")
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.objective_power == 20.0
        assert "thumbnail" in slide.associated
        for k, reference in enumerate(expected):
            assert np.array_equal(np.asarray(slide.levels[k]), reference)


def test_dicom_series_folder(asset_path, tmp_path, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(asset_path(name), folder / name)
    with open_slide(folder) as slide:
        assert (slide.backend, slide.vendor, slide.dimensions) == ("openslide", "dicom", (16, 16))
    assert main(["info", str(folder)]) == 0
    assert "backend: openslide" in capsys.readouterr().out


def test_backend_is_chosen_per_file_and_named_by_info(asset_path, sample_slide, capsys):
    assert choose_backend(sample_slide) == "tifffile"
    assert choose_backend(asset_path("hgsc_nest.jpg")) == "tifffile"
    assert main(["info", str(sample_slide), "--backend", "openslide", "--json"]) == 0
    assert '"backend": "openslide"' in capsys.readouterr().out


@pytest.mark.parametrize("tiled", [True, False])
def test_tiffs_flagged_philips_go_to_openslide_else_tifffile(tmp_path, tiled):
    """Routing only (no real Philips slide ships in a package we can fetch): a TIFF of real
    tiles that tifffile flags as Philips goes to OpenSlide; when OpenSlide cannot open it
    (here: stripped, which OpenSlide refuses), tifffile reads it instead."""
    import tifffile

    from slide_factory import he_image

    path = tmp_path / "philips_like.tiff"
    tifffile.imwrite(path, he_image()[:512, :768], tile=(256, 256) if tiled else None,
                     compression="jpeg", software="Philips DP v1.0",
                     description='<?xml version="1.0"?><DataObject ObjectType="DPUfsImport">'
                                 "</DataObject>")
    assert choose_backend(path) == "openslide"
    with open_slide(path) as slide, open_slide(path, backend="tifffile") as reference:
        assert slide.backend == ("openslide" if tiled else "tifffile")
        assert np.array_equal(np.asarray(slide.levels[0]), np.asarray(reference.levels[0]))


# -- OME-Zarr -------------------------------------------------------------------------------
def _write_ome_zarr(path, image: np.ndarray, *, version: str, mpp: float) -> list[np.ndarray]:
    """Write a 3-level CYX pyramid with ome-zarr's own writer; returns the levels (YXC)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

    fmt = FormatV05() if version == "0.5" else FormatV04()
    pyramid = [image[::d, ::d] for d in (1, 2, 4)]
    group = zarr.open_group(path, mode="w", zarr_format=fmt.zarr_format)
    axes = [{"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    write_multiscale([np.ascontiguousarray(p.transpose(2, 0, 1)) for p in pyramid], group,
                     fmt=fmt, axes=axes, storage_options={"chunks": (3, 256, 256)},
                     coordinate_transformations=[[{"type": "scale", "scale": [1, mpp * d,
                                                                                mpp * d]}]
                                                 for d in (1, 2, 4)])
    return pyramid


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trips_levels_mpp_and_pixels(tmp_path, sample_slide, version):
    with open_slide(sample_slide) as source:
        tiles = source.read_window(0, x0=300, y0=400, x1=1324, y1=1424)
    path = tmp_path / f"cmu_{version}.ome.zarr"
    expected = _write_ome_zarr(path, tiles, version=version, mpp=0.499)
    assert choose_backend(path) == "ome-zarr"
    with open_slide(path) as slide:
        assert (slide.backend, slide.vendor) == ("ome-zarr", "ome-zarr")
        assert slide.properties["ngff.version"] == version
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.level_dimensions == [(1024, 1024), (512, 512), (256, 256)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        for k, level in enumerate(expected):
            assert np.array_equal(np.asarray(slide.levels[k]), level)


def test_ome_zarr_in_the_bioformats2raw_layout(tmp_path, sample_slide):
    """Converted slides put the image in series "0" under a root that only names the layout."""
    with open_slide(sample_slide) as source:
        tiles = source.read_window(0, x0=0, y0=0, x1=768, y1=512)
    root = tmp_path / "converted.zarr"
    expected = _write_ome_zarr(root / "0", tiles, version="0.4", mpp=0.25)
    zarr.open_group(root, mode="a", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    with open_slide(root) as slide:
        assert slide.backend == "ome-zarr" and slide.mpp == pytest.approx((0.25, 0.25))
        assert np.array_equal(np.asarray(slide.levels[2]), expected[2])


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("unreadable.svs", "cannot be decoded"), ("unopenable.tiff", "cannot be"),
    ("hgsc_nest.jpg", "not a format OpenSlide reads")])
def test_openslide_backend_errors_are_one_line(asset_path, name, expected):
    path = asset_path(name)
    with pytest.raises(SlideError, match=expected) as info:
        open_slide(path, backend="openslide")
    assert "\n" not in str(info.value) and path.name in str(info.value)


def test_forced_backend_on_the_wrong_input_is_one_line(asset_path, tmp_path, sample_slide,
                                                       capsys):
    cases = [(asset_path("boxes_0.dcm"), "tifffile", "use --backend openslide"),
             (sample_slide, "ome-zarr", "not an OME-Zarr folder"),
             (tmp_path, "ome-zarr", "not a readable zarr group|no OME-Zarr"),
             (tmp_path, "auto", "is a directory without an OME-Zarr image or a DICOM")]
    for path, backend, expected in cases:
        with pytest.raises(SlideError, match=expected) as info:
            open_slide(path, backend=backend)
        assert "\n" not in str(info.value)
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is a directory" in err
    broken = tmp_path / "broken.ome.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(SlideError, match=r"broken\.ome\.zarr") as info:
        open_slide(broken, backend="ome-zarr")
    assert "\n" not in str(info.value)


def test_reader_contribution_and_dicom_sample(asset_path, tmp_path, sample_slide):
    from napari_wsi_sam.ui.reader import napari_get_reader
    from napari_wsi_sam.ui.sample_data import make_sample_dicom

    assert callable(napari_get_reader(str(asset_path("boxes_0.dcm"))))
    image = tmp_path / "img.ome.zarr"
    with open_slide(sample_slide) as source:
        _write_ome_zarr(image, source.read_window(0, x0=0, y0=0, x1=512, y1=512),
                        version="0.5", mpp=0.499)
    assert callable(napari_get_reader(str(image)))
    assert napari_get_reader(str(tmp_path / "missing")) is None
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(str(tmp_path / "empty")) is None
    [(data, kwargs, kind)] = make_sample_dicom()
    assert kind == "image" and data[0].shape == (16, 16, 3)
    assert kwargs["metadata"]["napari_wsi_sam"]["backend"] == "openslide"


@pytest.mark.parametrize("case", ["missing", "empty", "text", "unreadable", "unopenable",
                                  "truncated", "cut_tail", "half_jpeg", "strip_bomb",
                                  "png_bomb"])
def test_bad_input_is_one_line_through_openslide_too(case, tmp_path, sample_slide, asset_path):
    """The reader tests' damaged files, forced through OpenSlide: refused at open, or the
    first read of the damaged pixels is, always in one line naming the file."""
    from test_slide_reader import _bad_files

    path, _ = _bad_files(tmp_path, sample_slide, asset_path)[case]
    with pytest.raises(SlideError) as info:  # at open or at the first read
        with open_slide(path, backend="openslide") as slide:
            for k in range(slide.native_level_count):
                w, h = slide.level_dimensions[k]
                slide.read_window(k, x0=0, y0=0, x1=w, y1=h)
    message = str(info.value)
    assert "\n" not in message and path.name in message


def test_close_waits_for_openslide_reads_in_flight(tmp_path):
    """A failing chunk makes dask raise while other chunks are still read in its threads;
    closing then must not free OpenSlide's handle under them (this crashed the process)."""
    path = make_pyramid(tmp_path / "cut.svs", width=2048, height=2048, layout="svs")
    path.write_bytes(path.read_bytes()[:-5000])  # the last tiles cut off
    for _ in range(10):
        slide = open_slide(path, backend="openslide")
        with pytest.raises(SlideError, match=r"cut\.svs"):
            slide.read_window(0, x0=0, y0=0, x1=2048, y1=2048)
        slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_window(0, x0=0, y0=0, x1=16, y1=16)
