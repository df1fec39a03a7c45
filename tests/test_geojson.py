"""GeoJSON export/import and exact mask <-> polygon conversion, on real nuclei and QuPath files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import MultiPolygon, Polygon

from napari_wsi_sam.errors import AnnotationError, WsiSamError
from napari_wsi_sam.formats import (
    AnnotationObject,
    objects_to_feature_collection,
    read_geojson,
    write_geojson,
)
from napari_wsi_sam.polygons import geometry_to_mask, labels_to_geometries, mask_to_geometry

ORIGIN = (40_000, 25_000)   # put the real tile somewhere inside a large virtual slide


@pytest.fixture(scope="module")
def nuclei(asset_path) -> np.ndarray:
    """The real hgsc_nest instance mask: (1500, 1500) int32, 1,294 nuclei."""
    return np.load(asset_path("hgsc_nest_inst_mask.npz"))["nuc_raster"]


def _roundtrip_mask(mask: np.ndarray, window) -> np.ndarray:
    geom = mask_to_geometry(mask, window)
    back, win = geometry_to_mask(geom, window)
    assert win == tuple(window)
    return back


# -- real data ---------------------------------------------------------------------------------
def test_real_nuclei_labels_to_file_and_back(nuclei, tmp_path):
    geoms = dict(labels_to_geometries(nuclei, origin=ORIGIN))
    assert len(geoms) == 1294 == len(np.unique(nuclei)) - 1
    assert all(g.is_valid and not g.is_empty for g in geoms.values())
    objects = [AnnotationObject(id=k, geometry=g, class_name="Nucleus", color=(0, 160, 255),
                                properties={"model": "wsi-sam", "score": 0.5})
               for k, g in geoms.items()]
    path = write_geojson(objects, tmp_path / "nuclei.geojson", mpp=(0.25, 0.25))
    result = read_geojson(path)
    assert result.skipped == []
    assert [o.id for o in result.objects] == sorted(geoms)
    areas = np.bincount(nuclei.ravel())
    ious = []
    for obj in result.objects:
        mask, (x0, y0, x1, y1) = geometry_to_mask(obj.geometry)
        ref = nuclei[y0 - ORIGIN[1]:y1 - ORIGIN[1], x0 - ORIGIN[0]:x1 - ORIGIN[0]] == obj.id
        ious.append((mask & ref).sum() / (mask | ref).sum())
        assert ref.sum() == areas[obj.id]          # the window holds the whole nucleus
    assert min(ious) >= 0.99
    assert min(ious) == 1.0                        # exact tracing: the very same pixels
    first = result.objects[0]
    assert (first.class_name, first.color, first.model, first.score) == (
        "Nucleus", (0, 160, 255), "wsi-sam", 0.5)
    area = first.properties["measurements"]
    assert area["Area px^2"] == (nuclei == first.id).sum()
    assert area["Area µm^2"] == pytest.approx(area["Area px^2"] * 0.0625)


def test_tolerance_simplifies_but_stays_close(nuclei):
    ys, xs = np.nonzero(nuclei == 500)
    sl = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    mask = nuclei[sl] == 500
    window = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    exact = mask_to_geometry(mask, window)
    simple = mask_to_geometry(mask, window, tolerance=1.0)
    assert simple.is_valid
    assert shapely.get_num_coordinates(simple) < shapely.get_num_coordinates(exact)
    assert exact.intersection(simple).area / exact.union(simple).area > 0.9
    with pytest.raises(AnnotationError, match="tolerance"):
        mask_to_geometry(mask, window, tolerance=-1)


# -- shapes ------------------------------------------------------------------------------------
def test_ring_has_a_hole():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    geom = mask_to_geometry(mask, (100, 200, 109, 209))
    assert isinstance(geom, Polygon) and len(geom.interiors) == 1
    assert geom.area == mask.sum() == 40
    assert geom.exterior.bounds == (101, 201, 108, 208)
    assert geom.interiors[0].bounds == (103, 203, 106, 206)
    assert shapely.is_ccw(geom.exterior) and not shapely.is_ccw(geom.interiors[0])
    assert (_roundtrip_mask(mask, (100, 200, 109, 209)) == mask).all()


def test_two_blobs_one_id_make_a_multipolygon(tmp_path):
    mask = np.zeros((6, 12), bool)
    mask[1:4, 1:4] = True
    mask[2:5, 7:11] = True
    mask[3, 8] = False                            # a hole in the second blob
    geom = mask_to_geometry(mask, (0, 0, 12, 6))
    assert isinstance(geom, MultiPolygon) and len(geom.geoms) == 2
    assert sorted(len(p.interiors) for p in geom.geoms) == [0, 1]
    path = write_geojson([AnnotationObject(id=7, geometry=geom)], tmp_path / "m.geojson")
    feature = json.loads(path.read_text())["features"][0]
    assert feature["geometry"]["type"] == "MultiPolygon"
    back = read_geojson(path).objects[0]
    assert back.id == 7 and back.geometry.equals(geom)
    assert (geometry_to_mask(back.geometry, (0, 0, 12, 6))[0] == mask).all()


def test_objects_touching_the_window_edge():
    mask = np.zeros((5, 7), bool)
    mask[0, :] = True                             # top edge, full width
    mask[:, 6] = True                             # right edge
    mask[4, 0:2] = True                           # bottom-left corner
    window = (-3, 10, 4, 15)                      # negative x is fine: level-0 maths only
    geom = mask_to_geometry(mask, window)
    assert geom.bounds == (-3, 10, 4, 15)
    assert (_roundtrip_mask(mask, window) == mask).all()


def test_one_pixel_object():
    mask = np.zeros((3, 3), bool)
    mask[1, 2] = True
    geom = mask_to_geometry(mask, (10, 20, 13, 23))
    assert geom.equals(shapely.box(12, 21, 13, 22))
    back, window = geometry_to_mask(geom)
    assert window == (12, 21, 13, 22) and back.tolist() == [[True]]


def test_diagonal_touches_stay_valid_and_exact():
    diag = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    pinched = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]], bool)
    for mask in (diag, pinched, ~pinched):
        window = (5, 5, 5 + mask.shape[1], 5 + mask.shape[0])
        geom = mask_to_geometry(mask, window)
        assert geom.is_valid and geom.area == mask.sum()
        assert (_roundtrip_mask(mask, window) == mask).all()


def test_empty_mask_and_bad_windows():
    assert mask_to_geometry(np.zeros((4, 4), bool), (0, 0, 4, 4)).is_empty
    with pytest.raises(AnnotationError, match="4x4"):
        mask_to_geometry(np.ones((4, 4), bool), (0, 0, 5, 4))
    with pytest.raises(AnnotationError, match="2-D"):
        mask_to_geometry(np.ones((2, 4, 4), bool), (0, 0, 4, 4))
    with pytest.raises(AnnotationError, match="empty geometry"):
        geometry_to_mask(Polygon())
    with pytest.raises(AnnotationError, match="LineString"):
        geometry_to_mask(shapely.LineString([(0, 0), (1, 1)]))


def test_rasterising_an_arbitrary_polygon_uses_pixel_centres():
    tri = Polygon([(0, 0), (4, 0), (0, 4)])       # centres (i+.5, j+.5) with i + j + 1 < 4
    mask, window = geometry_to_mask(tri)
    assert window == (0, 0, 4, 4)
    i, j = np.meshgrid(np.arange(4), np.arange(4))
    assert (mask == (i + j + 1 < 4)).all()


@settings(max_examples=150, deadline=None)
@given(mask=arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))),
       x0=st.integers(-50, 50), y0=st.integers(-50, 50))
def test_any_small_mask_round_trips_exactly(mask, x0, y0):
    window = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])
    geom = mask_to_geometry(mask, window)
    assert geom.is_valid
    assert geom.area == mask.sum()
    assert (_roundtrip_mask(mask, window) == mask).all()


# -- writing -----------------------------------------------------------------------------------
def test_feature_follows_qupath_conventions():
    obj = AnnotationObject(id=3, geometry=shapely.box(10, 20, 14, 25), class_name="Tumor",
                           color=(200, 0, 0), properties={"model": "wsi-sam", "score": 0.93},
                           object_type="detection")
    fc = objects_to_feature_collection([obj], mpp=(0.5, 0.25))
    json.dumps(fc)                                # plain JSON types only
    feature = fc["features"][0]
    assert fc["type"] == "FeatureCollection" and feature["type"] == "Feature"
    assert feature["geometry"]["type"] == "Polygon"
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and all(isinstance(v, int) for xy in ring for v in xy)
    props = feature["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert (props["id"], props["model"], props["score"]) == (3, "wsi-sam", 0.93)
    assert props["measurements"] == {"Area px^2": 20.0, "Area µm^2": 2.5}
    unclassified = objects_to_feature_collection([AnnotationObject(1, obj.geometry)])
    assert "classification" not in unclassified["features"][0]["properties"]
    assert "Area µm^2" not in unclassified["features"][0]["properties"]["measurements"]


def test_write_is_atomic(tmp_path):
    path = tmp_path / "a.geojson"
    path.write_text("old")
    obj = AnnotationObject(id=1, geometry=shapely.box(0, 0, 1, 1))
    with pytest.raises(AnnotationError, match="mpp"):
        write_geojson([obj], path, mpp=(0.0, 0.5))
    assert path.read_text() == "old"
    write_geojson([obj], path)
    assert json.loads(path.read_text())["features"][0]["properties"]["id"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson"]


def test_object_validation():
    with pytest.raises(AnnotationError, match="Point"):
        AnnotationObject(id=1, geometry=shapely.Point(0, 0))
    with pytest.raises(AnnotationError, match=r"0\.\.255"):
        AnnotationObject(id=1, geometry=shapely.box(0, 0, 1, 1), color=(0, 0, 300))
    with pytest.raises(AnnotationError, match="int"):
        AnnotationObject(id="a", geometry=shapely.box(0, 0, 1, 1))  # type: ignore[arg-type]


# -- reading what QuPath writes ------------------------------------------------------------------
SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
QUPATH_FEATURE = {
    "type": "Feature",
    "id": "5f0b2f7c-1c55-4c32-9a57-2d0c8b6f0a11",
    "geometry": SQUARE,
    "properties": {"objectType": "annotation", "isLocked": False,
                   "classification": {"name": "Stroma", "color": [150, 200, 150]},
                   "measurements": {"Area µm^2": 25.0}},
}


def _read(tmp_path, payload, name="in.geojson"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return read_geojson(path)


@pytest.mark.parametrize("form", ["collection", "array", "feature"])
def test_reads_every_qupath_form(tmp_path, form):
    payload = {"collection": {"type": "FeatureCollection", "features": [QUPATH_FEATURE]},
               "array": [QUPATH_FEATURE], "feature": QUPATH_FEATURE}[form]
    result = _read(tmp_path, payload)
    assert result.skipped == []
    (obj,) = result.objects
    assert obj.geometry.equals(shapely.box(0, 0, 10, 10))
    assert (obj.id, obj.class_name, obj.color, obj.object_type) == (
        1, "Stroma", (150, 200, 150), "annotation")
    assert obj.properties["uuid"] == QUPATH_FEATURE["id"]
    assert obj.properties["isLocked"] is False


def test_reads_legacy_packed_colour_and_skips_points(tmp_path):
    features = [
        {"type": "Feature", "id": "PathDetectionObject", "geometry": SQUARE,
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016},
                        "name": "my nucleus"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"objectType": "annotation", "classification": {"name": "Immune"}}},
        {"type": "Feature", "geometry": {"type": "LineString",
                                         "coordinates": [[0, 0], [3, 3]]}, "properties": {}},
        {"type": "Feature", "geometry": SQUARE, "properties": {"id": 9}},
    ]
    result = _read(tmp_path, features)
    assert [o.id for o in result.objects] == [10, 9]   # new ids never collide with given ones
    tumor, plain = result.objects
    assert (tumor.class_name, tumor.color) == ("Tumor", (200, 0, 0))   # 0xFFC80000 as ARGB
    assert tumor.object_type == "detection" and tumor.properties["name"] == "my nucleus"
    assert (plain.class_name, plain.color, plain.object_type) == (None, None, "annotation")
    assert len(result.skipped) == 2
    assert "feature 1" in result.skipped[0] and "Point" in result.skipped[0]
    assert "'Immune'" in result.skipped[0]
    assert "feature 2" in result.skipped[1] and "LineString" in result.skipped[1]


def test_reads_a_multipolygon_with_a_hole(tmp_path):
    outer = [[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]
    hole = [[5, 5], [5, 15], [15, 15], [15, 5], [5, 5]]
    island = [[30, 0], [34, 0], [34, 4], [30, 4], [30, 0]]
    feature = {"type": "Feature",
               "geometry": {"type": "MultiPolygon", "coordinates": [[outer, hole], [island]]},
               "properties": {"objectType": "annotation",
                              "classification": {"name": "Tumor", "color": [255, 0, 0]}}}
    (obj,) = _read(tmp_path, {"type": "FeatureCollection", "features": [feature]}).objects
    assert isinstance(obj.geometry, MultiPolygon)
    assert obj.geometry.area == 400 - 100 + 16
    mask, window = geometry_to_mask(obj.geometry)
    assert window == (0, 0, 34, 20) and mask.sum() == 316 and not mask[10, 10]


def test_invalid_polygon_is_repaired(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]}
    result = _read(tmp_path, [{"type": "Feature", "geometry": bowtie, "properties": {}}])
    (obj,) = result.objects
    assert obj.geometry.is_valid and obj.geometry.area == pytest.approx(8.0)


@pytest.mark.parametrize(("payload", "match"), [
    ("{not json", "not valid JSON"),
    ('{"type": "Topology"}', "not GeoJSON"),
    ("42", "not GeoJSON"),
    ('{"type": "FeatureCollection"}', "no 'features'"),
])
def test_not_geojson_raises_one_clear_line(tmp_path, payload, match):
    with pytest.raises(AnnotationError, match=match) as info:
        _read(tmp_path, payload)
    assert isinstance(info.value, WsiSamError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_missing_file_is_an_annotation_error(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        read_geojson(tmp_path / "nope.geojson")


def test_annotations_import_neither_torch_nor_napari():
    code = ("import sys, napari_wsi_sam.formats.geojson; "
            "print(','.join(m for m in ('torch', 'napari', 'qtpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
