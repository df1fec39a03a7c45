"""One registry of object formats by suffix: `objects import` / `objects export` read and write
every format it lists, on real nuclei (histolytics' hgsc_nest instance mask, 1,294 nuclei)."""

from __future__ import annotations

import contextlib
import io

import pytest
import shapely

from napari_wsi_sam.cli import main
from napari_wsi_sam.errors import AnnotationError
from napari_wsi_sam.formats import read_instance_masks
from napari_wsi_sam.formats.registry import (
    FORMATS,
    ImageRef,
    dialog_filters,
    format_for_reading,
    format_for_writing,
    read_annotations,
    write_annotations,
)
from napari_wsi_sam.store import ObjectStore


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def nuclei(asset_path):
    """The first 60 real nuclei of hgsc_nest, as read from its instance mask."""
    return read_instance_masks(asset_path("hgsc_nest_inst_mask.npz"), key="nuc_raster")[:60]


def test_suffixes_name_one_format_each(tmp_path):
    assert format_for_writing(tmp_path / "a.geojson").name == "geojson"
    assert format_for_writing(tmp_path / "a.json").name == "geojson"
    assert format_for_writing(tmp_path / "a.XML").name == "asap-xml"
    assert format_for_writing(tmp_path / "a.json", name="coco").name == "coco"
    for bad in ("a.parquet", "a.npz", "a.txt", "a"):
        with pytest.raises(AnnotationError, match="export QuPath GeoJSON"):
            format_for_writing(tmp_path / bad)
    with pytest.raises(AnnotationError, match="unknown format 'shp'"):
        format_for_writing(tmp_path / "a.json", name="shp")
    assert dialog_filters(readable=False)[0] == "QuPath GeoJSON (*.geojson *.json)"
    assert len(dialog_filters(readable=True)) == len(FORMATS)


def test_a_json_file_is_read_as_what_it_holds(nuclei, tmp_path):
    image = ImageRef(name="hgsc_nest.jpg", size=(1500, 1500), mpp=(0.5, 0.5))
    write_annotations(nuclei, tmp_path / "coco.json", image=image, name="coco")
    write_annotations(nuclei, tmp_path / "qupath.json", image=image)
    assert format_for_reading(tmp_path / "coco.json").name == "coco"
    assert format_for_reading(tmp_path / "qupath.json").name == "geojson"
    for name in ("coco.json", "qupath.json"):
        back = read_annotations(tmp_path / name, image=image).objects
        assert len(back) == len(nuclei)
        assert all(a.geometry.equals(b.geometry) for a, b in zip(nuclei, back, strict=True))


@pytest.mark.parametrize(("out", "flags"), [("objects.geojson", []), ("objects.xml", []),
                                            ("objects.json", ["--format", "coco"])])
def test_objects_export_and_import_round_trip_every_writable_format(
        out, flags, nuclei, asset_path, tmp_path):
    slide = asset_path("hgsc_nest.jpg")
    source = tmp_path / "source.geojson"
    write_annotations(nuclei, source)
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    common = ["--mpp", "0.5"]
    code, _, err = cli(["objects", "import", slide, source, "--labels", store_a, *common])
    assert code == 0, err
    target = tmp_path / out
    code, text, err = cli(["objects", "export", slide, "--out", target, "--labels", store_a,
                           *common, *flags])
    assert code == 0 and f"{len(nuclei)} objects written" in text, err
    code, text, err = cli(["objects", "import", slide, target, "--labels", store_b, *common])
    assert code == 0 and f"{len(nuclei)} objects imported" in text, err
    with ObjectStore.open(store_b / "objects.sqlite", read_only=True) as store:
        back = sorted(store.iter_live(), key=lambda o: o.geometry.centroid.coords[0])
    want = sorted(nuclei, key=lambda o: o.geometry.centroid.coords[0])
    assert len(back) == len(want)
    # ASAP and COCO keep exteriors only; the nuclei have no holes, so all three are exact
    assert all(shapely.equals(a.geometry, b.geometry) for a, b in zip(want, back, strict=True))


def test_a_format_we_cannot_write_is_one_line_before_the_slide_opens(asset_path, tmp_path):
    code, _, err = cli(["objects", "export", asset_path("hgsc_nest.jpg"), "--mpp", "0.5",
                        "--labels", tmp_path / "s", "--out", tmp_path / "x.parquet"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot write '.parquet'" in err and not (tmp_path / "s").exists()
