"""``napari-wsi-sam segment`` on the real CMU slide with the real weights, and its user errors."""

from __future__ import annotations

import json

import pytest

from napari_wsi_sam.cli import main
from napari_wsi_sam.cli.demo import SAMPLE_BOX
from napari_wsi_sam.store import ObjectStore

pytestmark = pytest.mark.slow  # the real model on CPU

BOX = [str(v) for v in SAMPLE_BOX]
SQUARE = [[1690, 2535], [1790, 2535], [1790, 2650], [1690, 2650], [1690, 2535]]
HOLE = [[1165, 1605], [1295, 1605], [1295, 1690], [1165, 1690], [1165, 1605]]


def feature(geometry_type, coordinates, **properties):
    return {"type": "Feature", "geometry": {"type": geometry_type, "coordinates": coordinates},
            "properties": properties}


def write_collection(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_segment_one_box_with_points(sample_slide, tmp_path, capsys):
    out, labels = tmp_path / "one.geojson", tmp_path / "labels"
    code = main(["segment", str(sample_slide), "--box", *BOX, "--point", "1265", "2080",
                 "--negative-point", "1250", "2150", "--class", "follicle",
                 "--color", "0", "200", "0", "--device", "cpu", "--labels", str(labels),
                 "--out", str(out)])
    assert code == 0
    features = json.loads(out.read_text())["features"]
    assert len(features) == 1
    props = features[0]["properties"]
    assert props["classification"] == {"name": "follicle", "color": [0, 200, 0]}
    assert props["measurements"]["Area µm^2"] > 1000
    with ObjectStore.open(labels / "objects.sqlite") as store:
        (record,) = store.iter_live()
        assert record.prompt["labels"] == [1, 0] and record.model == "sam"
        assert store.classes()["follicle"] == "#00c800"
    assert "1 objects written" in capsys.readouterr().out
    # The same command again finds its object done: nothing is added.
    assert main(["segment", str(sample_slide), "--box", *BOX, "--point", "1265", "2080",
                 "--negative-point", "1250", "2150", "--class", "follicle", "--device", "cpu",
                 "--labels", str(labels), "--out", str(out)]) == 0
    assert "already done" in capsys.readouterr().err
    with ObjectStore.open(labels / "objects.sqlite") as store:
        assert store.count() == 1


def test_segment_prompts_file_refines_every_polygon(sample_slide, tmp_path, capsys):
    prompts = write_collection(tmp_path / "coarse.geojson", [
        feature("Polygon", [SQUARE], classification={"name": "papilla", "color": [200, 0, 0]}),
        feature("Point", [10, 10]),
        feature("Polygon", [HOLE]),
    ])
    out, labels = tmp_path / "refined.geojson", tmp_path / "labels"
    assert main(["segment", str(sample_slide), "--prompts", str(prompts), "--class", "hole",
                 "--device", "cpu", "--labels", str(labels), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped feature 1" in err and "Point" in err
    assert "[1/2] object" in err and "[2/2] object" in err
    names = sorted(f["properties"]["classification"]["name"]
                   for f in json.loads(out.read_text())["features"])
    assert names == ["hole", "papilla"]
    # A second run adds one object; the file gets this run's object, or all with --all.
    again = tmp_path / "again.geojson"
    args = ["segment", str(sample_slide), "--box", *BOX, "--device", "cpu",
            "--labels", str(labels)]
    assert main([*args, "--out", str(again)]) == 0
    assert len(json.loads(again.read_text())["features"]) == 1
    args[3:7] = ["1595", "2665", "1685", "2840"]  # another papilla
    assert main([*args, "--out", str(again), "--all"]) == 0
    assert len(json.loads(again.read_text())["features"]) == 4
    with ObjectStore.open(labels / "objects.sqlite") as store:
        assert store.count() == 4


@pytest.mark.parametrize("case", ["missing slide", "off-slide box", "empty prompts",
                                  "bad geojson", "missing prompts", "points with prompts",
                                  "no output folder"])
def test_segment_user_errors_exit_2_with_one_line(case, sample_slide, tmp_path, capsys):
    slide, out = str(sample_slide), str(tmp_path / "out.geojson")
    empty = write_collection(tmp_path / "empty.geojson", [feature("Point", [5, 5])])
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    argv = {
        "missing slide": [str(tmp_path / "nope.svs"), "--box", *BOX],
        "off-slide box": [slide, "--box", "5000", "5000", "5100", "5100"],
        "empty prompts": [slide, "--prompts", str(empty)],
        "bad geojson": [slide, "--prompts", str(bad)],
        "missing prompts": [slide, "--prompts", str(tmp_path / "none.geojson")],
        "points with prompts": [slide, "--prompts", str(empty), "--point", "1", "2"],
        "no output folder": [slide, "--box", *BOX, "--out", str(tmp_path / "no" / "o.json")],
    }[case]
    if "--out" not in argv:
        argv += ["--out", out]
    code = main(["segment", *argv, "--device", "cpu", "--labels", str(tmp_path / "labels")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("napari-wsi-sam: error:"), err
    assert not (tmp_path / "out.geojson").exists()
