"""Labels out as OME-Zarr: the rendered class pyramid as an NGFF labels image, on the real CMU
slide and on an OME-Zarr image written by ome-zarr from its tiles; opened by napari-ome-zarr."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from shapely.geometry import Point, box

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import AnnotationError
from napari_wsi_sam.formats.ome_zarr_labels import export_ome_zarr_labels
from napari_wsi_sam.slide import open_slide
from napari_wsi_sam.store.files import open_store
from napari_wsi_sam.store.rendering import ObjectRasters

TUMOUR = box(100, 100, 900, 700)
STROMA = Point(1500, 2000).buffer(300)


def _annotate(slide):
    store = open_store(slide)
    store.set_class("tumour", "#e41a1c")
    store.set_class("stroma", "#4daf4a")
    store.add(TUMOUR, class_name="tumour")
    store.add(STROMA, class_name="stroma")
    w, h = slide.dimensions
    return store, ObjectRasters(store, shape=(h, w), downsamples=slide.downsamples)


@pytest.fixture
def cmu_copy(tmp_path, sample_slide):
    path = tmp_path / "cmu.svs"
    shutil.copy(sample_slide, path)
    return path


def _attrs(node: zarr.Group, version: str) -> dict:
    attrs = dict(node.attrs)
    return attrs["ome"] if version == "0.5" else attrs


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_export_values_names_colours_and_scale(cmu_copy, tmp_path, version):
    out = tmp_path / "labels.zarr"
    with open_slide(cmu_copy) as slide:
        store, rasters = _annotate(slide)
        with store:
            meta = export_ome_zarr_labels(rasters, out, mpp=slide.mpp, version=version)
            expected = [np.asarray(lvl[:]) for lvl in rasters.levels("tumour")]
    assert [p["class"] for p in meta["properties"]] == ["tumour", "stroma"]
    labels = zarr.open_group(out / "labels", mode="r")
    assert labels.metadata.zarr_format == (2 if version == "0.4" else 3)
    assert _attrs(labels, version)["labels"] == ["classes"]
    image = zarr.open_group(out / "labels" / "classes", mode="r")
    attrs = _attrs(image, version)
    assert attrs["image-label"]["colors"][0] == {"label-value": 1, "rgba": [228, 26, 28, 255]}
    scales = [d["coordinateTransformations"][0]["scale"]
              for d in attrs["multiscales"][0]["datasets"]]
    assert scales == [pytest.approx([0.499 * d] * 2) for d in (1.0, 2.0, 4.0)]
    level0 = np.asarray(image["0"][:])
    assert level0.shape == (2967, 2220) and level0.dtype == np.uint8
    assert (level0[200:600, 200:800] == 1).all() and (level0[2000, 1500] == 2)
    assert level0[1500, 100] == 0
    for k, tumour in enumerate(expected):  # each level is the rendered pyramid, as classes
        assert np.array_equal(np.asarray(image[str(k)][:]) == 1, tumour > 0)


def test_cli_export_labels_and_its_one_line_errors(cmu_copy, tmp_path, capsys):
    with open_slide(cmu_copy) as slide:
        store, _ = _annotate(slide)
        store.close()
    out = tmp_path / "cli.zarr"
    assert main(["objects", "export-labels", str(cmu_copy), "--out", str(out),
                 "--classes", "stroma"]) == 0
    assert "1=stroma" in capsys.readouterr().out
    level0 = zarr.open_array(out / "labels" / "classes" / "0", mode="r")
    assert int(np.asarray(level0[2000, 1500])) == 1 and int(np.asarray(level0[300, 300])) == 0
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not zarr")
    for extra, expected in [(["--classes", "nucleus"], "no class 'nucleus'"),
                            (["--out", str(tmp_path / "plain")], "not a zarr group"),
                            (["--out", str(tmp_path / "no" / "x.zarr")], "does not exist")]:
        argv = ["objects", "export-labels", str(cmu_copy), "--out", str(out), *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and expected in err
    with pytest.raises(AnnotationError, match=r"0\.4 or 0\.5"):
        export_ome_zarr_labels(None, out, mpp=None, version="0.6")  # type: ignore[arg-type]


def _ome_zarr_image(path, tiles: np.ndarray, *, mpp: float) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscale

    group = zarr.open_group(path, mode="w", zarr_format=3)
    pyramid = [np.ascontiguousarray(tiles[::d, ::d].transpose(2, 0, 1)) for d in (1, 2, 4)]
    axes = [{"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    write_multiscale(pyramid, group, fmt=FormatV05(), axes=axes,
                     coordinate_transformations=[[{"type": "scale",
                                                   "scale": [1, mpp * d, mpp * d]}]
                                                 for d in (1, 2, 4)])


@pytest.mark.napari
@pytest.mark.slow  # a Qt viewer under Xvfb
def test_labels_added_to_an_ome_zarr_image_open_in_napari(make_napari_viewer, tmp_path,
                                                          sample_slide):
    with open_slide(sample_slide) as source:
        tiles = source.read_window(0, x0=0, y0=0, x1=2048, y1=2560)
    image_path = tmp_path / "cmu.ome.zarr"
    _ome_zarr_image(image_path, tiles, mpp=0.499)
    with open_slide(image_path) as slide:
        assert slide.backend == "ome-zarr"
        store, rasters = _annotate(slide)
        with store:
            export_ome_zarr_labels(rasters, image_path, mpp=slide.mpp)
    viewer = make_napari_viewer()
    layers = viewer.open(str(image_path / "labels" / "classes"), plugin="napari-ome-zarr")
    labels = next(layer for layer in layers if layer._type_string == "labels")
    assert list(labels.properties["class"]) == ["tumour", "stroma"]
    np.testing.assert_allclose(labels.scale[-2:], [0.499, 0.499])
    level0 = np.asarray(labels.data[0])
    assert level0.shape[-2:] == (2560, 2048) and level0[..., 2000, 1500].max() == 2
    ours = viewer.open(str(image_path), plugin="napari-wsi-sam")  # and the image, as a slide
    assert ours[0].rgb and ours[0].data[0].shape == (2560, 2048, 3)
