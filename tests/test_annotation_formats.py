"""Readers of public training-data formats, on real annotations: histolytics' HGSC nuclei
(GeoParquet polygons and instance/type masks) carried through ASAP XML and COCO."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile
from shapely.geometry import MultiPolygon, Polygon, box

from napari_wsi_sam.errors import AnnotationError
from napari_wsi_sam.formats import (
    HISTOLYTICS_NUCLEI_CLASSES,
    AnnotationObject,
    instance_mask_objects,
    read_asap_xml,
    read_coco,
    read_geoparquet,
    read_instance_masks,
    write_asap_xml,
    write_coco,
)
from napari_wsi_sam.formats.coco import decode_rle_string
from napari_wsi_sam.polygons import geometry_to_mask

STROMAL_CLASSES = {"connective": 387, "inflammatory": 31, "neoplastic": 5}


@pytest.fixture(scope="module")
def stromal(asset_path):
    return read_geoparquet(asset_path("hgsc_stromal_cells.parquet"))


@pytest.fixture(scope="module")
def nest(asset_path):
    labels = np.load(asset_path("hgsc_nest_inst_mask.npz"))["nuc_raster"]
    types = np.load(asset_path("hgsc_nest_type_mask.npz"))["nuc_raster"]
    return labels, types


def _same_geometries(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert shapely.symmetric_difference(x.geometry, y.geometry).area < 1e-6


# -- GeoParquet ------------------------------------------------------------------------------
def test_geoparquet_reads_the_real_stromal_nuclei(stromal):
    assert stromal.skipped == []
    assert len(stromal.objects) == 423
    assert [o.id for o in stromal.objects] == list(range(1, 424))
    assert Counter(o.class_name for o in stromal.objects) == STROMAL_CLASSES
    geoms = [o.geometry for o in stromal.objects]
    assert all(isinstance(g, Polygon) and g.is_valid and g.area > 0 for g in geoms)
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    assert 0 <= minx and 0 <= miny and maxx <= 1500 and maxy <= 1500


def test_geoparquet_skips_points_and_lines_and_repairs(tmp_path, stromal):
    nucleus = stromal.objects[0].geometry
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    geoms = [nucleus, shapely.Point(5, 5), shapely.LineString([(0, 0), (5, 5)]), bowtie, None]
    table = pa.table({
        "geom": pa.array([None if g is None else shapely.to_wkb(g) for g in geoms],
                         pa.binary()),
        "label": ["a", "b", "c", None, "e"],
        "score": [0.9, 0.8, 0.7, 0.6, 0.5]})
    meta = {"primary_column": "geom", "columns": {"geom": {"encoding": "WKB"}}}
    table = table.replace_schema_metadata({"geo": json.dumps(meta)})
    path = tmp_path / "mixed.parquet"
    pq.write_table(table, path)
    res = read_geoparquet(path, class_column="label")
    assert [o.id for o in res.objects] == [1, 4]
    assert res.objects[0].class_name == "a" and res.objects[1].class_name is None
    assert res.objects[0].properties == {"score": 0.9}
    assert res.objects[1].geometry.is_valid and res.objects[1].geometry.area == pytest.approx(50)
    assert len(res.skipped) == 3
    assert "row 1" in res.skipped[0] and "Point" in res.skipped[0]
    assert "LineString" in res.skipped[1] and "no geometry" in res.skipped[2]
    with pytest.raises(AnnotationError, match=r"no column 'cell_type'.*geom, label, score"):
        read_geoparquet(path, class_column="cell_type")


def test_geoparquet_errors_are_one_line(tmp_path, asset_path):
    with pytest.raises(AnnotationError, match="not a readable Parquet file"):
        read_geoparquet(asset_path("hgsc_stromal_he.jpg"))
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(AnnotationError, match="no geometry column 'geometry'"):
        read_geoparquet(plain)


# -- ASAP XML --------------------------------------------------------------------------------
def test_asap_round_trip_of_real_polygons(tmp_path, stromal):
    path = write_asap_xml(stromal.objects, tmp_path / "stromal.xml")
    text = path.read_text()
    assert text.startswith('<?xml version="1.0"?>\n<ASAP_Annotations>')
    assert text.count('<Group Name="') == 3
    back = read_asap_xml(path)
    assert back.skipped == []
    assert [o.class_name for o in back.objects] == [o.class_name for o in stromal.objects]
    _same_geometries(back.objects, stromal.objects)


CAMELYON_LIKE = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="110,5" Y="120,25" />
        <Coordinate Order="0" X="100,5" Y="100" />
        <Coordinate Order="1" X="110,5" Y="100" />
        <Coordinate Order="3" X="100,5" Y="120,25" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Dot" PartOfGroup="None" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Spline" PartOfGroup="_2" Color="">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="10" Y="10" />
        <Coordinate Order="2" X="10" Y="0" /><Coordinate Order="3" X="0" Y="10" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 3" Type="PointSet" PartOfGroup="_1" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="1" Y="1" /><Coordinate Order="1" X="2" Y="2" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 4" Type="Rectangle" PartOfGroup="None" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="20" Y="30" /><Coordinate Order="1" X="60" Y="30" />
        <Coordinate Order="2" X="60" Y="50" /><Coordinate Order="3" X="20" Y="50" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_asap_camelyon_style_file(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(CAMELYON_LIKE)
    res = read_asap_xml(path)
    assert [o.id for o in res.objects] == [1, 3, 5]
    tumour, excluded, rect = res.objects
    assert tumour.class_name == "_0" and tumour.color == (244, 250, 88)
    assert tumour.geometry.equals(box(100.5, 100, 110.5, 120.25))     # decimal commas, sorted
    assert tumour.properties == {"name": "Annotation 0", "asap_type": "Polygon"}
    assert excluded.class_name == "_2" and excluded.color == (0, 255, 0)   # the group's colour
    assert excluded.geometry.is_valid and excluded.geometry.area == pytest.approx(50)  # bow-tie
    assert rect.class_name is None and rect.geometry.equals(box(20, 30, 60, 50))
    assert len(res.skipped) == 2
    assert "annotation 1 ('Annotation 1'): Dot" in res.skipped[0]
    assert "annotation 3 ('Annotation 3'): PointSet" in res.skipped[1]


def test_asap_writer_splits_multipolygons_and_drops_holes(tmp_path, caplog):
    ring = box(0, 0, 10, 10).difference(box(3, 3, 6, 6))
    obj = AnnotationObject(id=7, geometry=MultiPolygon([ring, box(20, 0, 25, 5)]),
                           class_name="Tumor", color=(200, 0, 0))
    with caplog.at_level(logging.WARNING):
        back = read_asap_xml(write_asap_xml([obj], tmp_path / "m.xml")).objects
    assert "holes" in caplog.text
    assert [o.geometry.area for o in back] == [100, 25]
    assert {o.class_name for o in back} == {"Tumor"} and back[0].color == (200, 0, 0)


def test_asap_rejects_other_xml_and_truncated_files(tmp_path, stromal):
    other = tmp_path / "other.xml"
    other.write_text('<?xml version="1.0"?><Annotations><Annotation/></Annotations>')
    with pytest.raises(AnnotationError, match=r"other.xml is not ASAP XML \(root <Annotations>"):
        read_asap_xml(other)
    full = write_asap_xml(stromal.objects[:20], tmp_path / "full.xml").read_bytes()
    cut = tmp_path / "cut.xml"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(AnnotationError, match=r"cut\.xml is not well-formed XML.*truncated"):
        read_asap_xml(cut)
    with pytest.raises(AnnotationError, match="cannot read"):
        read_asap_xml(tmp_path / "missing.xml")


# -- COCO ------------------------------------------------------------------------------------
def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE: column-major run lengths, starting with background."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _rle_string(counts: list[int]) -> str:
    """Compressed COCO RLE, the inverse of the reader's decoding."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | (0x20 if more else 0)) + 48))
            if not more:
                break
    return "".join(out)


def test_rle_string_matches_pycocotools_output(nest):
    labels, _ = nest
    # pycocotools.mask.encode of these two real nuclei (computed once, kept as constants).
    known = {1: "jPTo1:a^11O2N100O100000000000O1O2N2NeXk4",
             500: "^iW7;`^11O100O10001OO100O1O1O1O1O1O1NWQfl1"}
    for label, text in known.items():
        runs = _runs(labels == label)
        assert decode_rle_string(text) == runs
        assert _rle_string(runs) == text


def test_coco_round_trip_of_real_polygons(tmp_path, stromal):
    path = write_coco({"tiles/hgsc_stromal_he.jpg": (stromal.objects, (1500, 1500))},
                      tmp_path / "coco.json")
    data = json.loads(path.read_text())
    assert [c["name"] for c in data["categories"]] == sorted(STROMAL_CLASSES)
    results = read_coco(path)
    assert list(results) == ["hgsc_stromal_he.jpg"]
    back = results["hgsc_stromal_he.jpg"]
    assert back.skipped == []
    assert [o.id for o in back.objects] == list(range(1, 424))
    assert [o.class_name for o in back.objects] == [o.class_name for o in stromal.objects]
    _same_geometries(back.objects, stromal.objects)


def test_coco_rle_masks_of_real_nuclei(tmp_path, nest):
    labels, types = nest
    objects = {o.id: o for o in instance_mask_objects(labels, types=types,
                                                      class_names=HISTOLYTICS_NUCLEI_CLASSES)}
    sample = sorted(objects)[::6]                      # 216 nuclei, every sixth
    annotations = []
    for k, label in enumerate(sample):
        runs = _runs(labels == label)
        counts = runs if k % 2 else _rle_string(runs)
        cls = objects[label].class_name
        cid = {v: i for i, v in HISTOLYTICS_NUCLEI_CLASSES.items()}[cls]
        annotations.append({"id": int(label), "image_id": 7, "category_id": cid, "iscrowd": 0,
                            "segmentation": {"counts": counts, "size": [1500, 1500]},
                            "bbox": [0, 0, 1, 1]})
    annotations.append({"id": 99999, "image_id": 7, "category_id": 1, "bbox": [5, 5, 2, 2],
                        "segmentation": []})
    annotations.append({"id": 100000, "image_id": 8, "category_id": 1,
                        "segmentation": [[0, 0, 4, 0, 4, 4]]})
    data = {"images": [{"id": 7, "file_name": "slides/hgsc_nest.jpg", "width": 1500,
                        "height": 1500},
                       {"id": 8, "file_name": "other.png", "width": 10, "height": 10}],
            "categories": [{"id": k, "name": v} for k, v in HISTOLYTICS_NUCLEI_CLASSES.items()],
            "annotations": annotations}
    path = tmp_path / "nest.json"
    path.write_text(json.dumps(data))
    only = read_coco(path, image="hgsc_nest")          # by stem
    assert list(only) == ["hgsc_nest.jpg"]
    res = only["hgsc_nest.jpg"]
    assert [o.id for o in res.objects] == sample
    assert res.skipped == ["annotation 216 (id 99999): no segmentation (bounding box only or "
                           "empty)"]
    for obj in res.objects:
        assert obj.class_name == objects[obj.id].class_name
        assert obj.geometry.is_valid
        mask, (x0, y0, x1, y1) = geometry_to_mask(obj.geometry)
        assert np.array_equal(mask, labels[y0:y1, x0:x1] == obj.id), obj.id
    assert read_coco(path)["other.png"].objects[0].geometry.area == pytest.approx(8)
    with pytest.raises(AnnotationError,
                       match=r"no .*image 'tumor_001'.*hgsc_nest\.jpg, other\.png"):
        read_coco(path, image="tumor_001")


def test_coco_rejects_garbage(tmp_path, asset_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"images": [1, 2')
    with pytest.raises(AnnotationError, match=r"garbage\.json is not valid JSON"):
        read_coco(garbage)
    geojson = tmp_path / "features.json"
    geojson.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(AnnotationError, match="is not COCO JSON"):
        read_coco(geojson)
    with pytest.raises(AnnotationError, match="cannot read"):
        read_coco(asset_path("hgsc_nest.jpg"))
    bad_rle = tmp_path / "bad_rle.json"
    bad_rle.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}], "categories": [],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3,
                         "segmentation": {"counts": [5, 3], "size": [4, 4]}},
                        {"id": 2, "image_id": 1, "category_id": 3,
                         "segmentation": {"counts": "ab\u00e9", "size": [4, 4]}}]}))
    res = read_coco(bad_rle)["a.png"]
    assert res.objects == []
    assert "cover 8 pixels, not the 4 x 4 = 16" in res.skipped[0]
    assert "cannot be decoded" in res.skipped[1]


# -- instance masks --------------------------------------------------------------------------
def test_instance_masks_of_the_real_nest(nest):
    labels, types = nest
    objects = instance_mask_objects(labels, types=types, class_names=HISTOLYTICS_NUCLEI_CLASSES)
    assert len(objects) == 1294
    assert [o.id for o in objects] == np.unique(labels)[1:].tolist()
    assert Counter(o.class_name for o in objects) == {"inflammatory": 633, "connective": 373,
                                                       "neoplastic": 288}
    for obj in objects:                               # all of them: ~0.1 s
        mask, (x0, y0, x1, y1) = geometry_to_mask(obj.geometry)
        assert np.array_equal(mask, labels[y0:y1, x0:x1] == obj.id), obj.id
    generic = instance_mask_objects(labels, types=types, min_area=300)
    assert {o.class_name for o in generic} == {"type_1", "type_2", "type_3"}
    assert all(o.geometry.area >= 300 for o in generic) and len(generic) < 1294
    assert {o.class_name for o in instance_mask_objects(labels)} == {None}


def test_read_instance_masks_from_files(tmp_path, asset_path, nest):
    labels, _ = nest
    objects = read_instance_masks(asset_path("hgsc_nest_inst_mask.npz"),
                                  types_path=asset_path("hgsc_nest_type_mask.npz"),
                                  class_names=HISTOLYTICS_NUCLEI_CLASSES)
    assert len(objects) == 1294 and objects[0].properties["type"] in (1, 2, 3)
    crop = labels[:400, :400]
    tifffile.imwrite(tmp_path / "crop.tif", crop.astype(np.uint16))
    np.save(tmp_path / "crop.npy", crop)
    from_tif = read_instance_masks(tmp_path / "crop.tif")
    from_npy = read_instance_masks(tmp_path / "crop.npy")
    assert [o.id for o in from_tif] == [o.id for o in from_npy] == np.unique(crop)[1:].tolist()
    _same_geometries(from_tif, from_npy)
    both = tmp_path / "both.npz"
    np.savez(both, inst_map=crop, type_map=(crop > 0) * 2)
    with pytest.raises(AnnotationError, match=r"holds several arrays.*inst_map, type_map"):
        read_instance_masks(both)
    typed = read_instance_masks(both, key="inst_map", types_key="type_map")
    assert {o.class_name for o in typed} == {"type_2"}
    with pytest.raises(AnnotationError, match="no array 'nuclei'"):
        read_instance_masks(both, key="nuclei")
    with pytest.raises(AnnotationError, match=r"unsupported label file type '\.jpg'"):
        read_instance_masks(asset_path("hgsc_nest.jpg"))
    from skimage import io
    io.imsave(tmp_path / "crop.png", crop.astype(np.uint16), check_contrast=False)
    assert [o.id for o in read_instance_masks(tmp_path / "crop.png")] == [o.id for o in from_npy]
    io.imsave(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    with pytest.raises(AnnotationError, match="2-D label image"):
        read_instance_masks(tmp_path / "rgb.png")
