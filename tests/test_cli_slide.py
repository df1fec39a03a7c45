"""``napari-wsi-sam info`` and ``napari-wsi-sam crops`` on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_wsi_sam.cli import main


def test_info_text(sample_slide, capsys):
    assert main(["info", str(sample_slide)]) == 0
    out = capsys.readouterr().out
    assert "vendor: aperio" in out and "2220 x 2967 px" in out
    assert "0.499 x 0.499 µm/px" in out and "objective: 20x" in out
    assert "1: 1110 x 1483  downsample 2  0.998 µm/px  virtual" in out
    assert "thumbnail (574x768)" in out and "macro (1280x431)" in out


def test_info_json(sample_slide, capsys):
    assert main(["info", str(sample_slide), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "aperio" and info["mpp"] == [0.499, 0.499]
    assert info["objective_power"] == 20.0
    assert [(lv["width"], lv["height"]) for lv in info["levels"]] == [
        (2220, 2967), (1110, 1483), (555, 741)]
    assert [lv["downsample"] for lv in info["levels"]] == [1.0, 2.0, 4.0]
    assert [lv["virtual"] for lv in info["levels"]] == [False, True, True]
    assert set(info["associated"]) == {"thumbnail", "label", "macro"}


def test_info_image_without_and_with_mpp(asset_path, capsys):
    path = str(asset_path("hgsc_nest.jpg"))
    assert main(["info", path]) == 0
    assert "pixel size: none (give one with --mpp)" in capsys.readouterr().out
    assert main(["info", path, "--json", "--mpp", "0.5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == [0.5, 0.5] and info["levels"][1]["mpp"] == [1.0, 1.0]


def test_crops_box(sample_slide, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["crops", str(sample_slide), "--box", "1000", "1400", "1300", "1600",
                 "--size", "256", "--out", str(out)])
    assert code == 0
    assert "HR 1 µm/px" in capsys.readouterr().out
    hr = np.asarray(Image.open(out / "hr.png"))
    lr = np.asarray(Image.open(out / "lr.png"))
    assert hr.shape == lr.shape == (256, 256, 3)
    record = json.loads((out / "crops.json").read_text())
    assert record["center"] == [1150.0, 1500.0]
    assert record["hr_mpp"] == record["hr_mpp_requested"] == 1.0
    assert record["hr"]["level"] == 1 and record["lr"]["level"] == 2
    assert record["hr"]["valid_fraction"] == 1.0 and record["lr"]["padding_fraction"] == 0.0
    assert record["hr_field_in_lr"] == [64.0, 64.0, 192.0, 192.0]
    assert record["prompt"]["box"] == [1000.0, 1400.0, 1300.0, 1600.0]
    origin = np.array(record["hr"]["map"]["origin"])
    scale = np.array(record["hr"]["map"]["scale"])
    x0, y0 = (np.array([1000, 1400]) - origin) / scale
    # the prompt box is drawn just outside its crop position, in the box colour
    assert tuple(hr[round(y0) + 5, round(x0) - 1]) == (0, 200, 255)


def test_crops_points_and_raised_mpp(sample_slide, tmp_path):
    out = tmp_path / "pts"
    assert main(["crops", str(sample_slide), "--point", "200", "300", "--point", "2000", "2800",
                 "--size", "128", "--out", str(out)]) == 0
    record = json.loads((out / "crops.json").read_text())
    assert record["mpp_raised"] and record["hr_mpp"] > 1.0
    assert record["prompt"]["labels"] == [1, 1]


@pytest.mark.parametrize(("args", "message"), [
    (["info", "/no/such/slide.svs"], "does not exist"),
    (["crops", "{jpg}", "--point", "10", "10", "--out", "{tmp}"], "has no pixel size"),
    (["crops", "{svs}", "--box", "5000", "5000", "5100", "5100", "--out", "{tmp}"],
     "entirely outside"),
    (["crops", "{svs}", "--box", "50", "50", "10", "10", "--out", "{tmp}"], "empty or inverted"),
])
def test_errors_are_one_line_exit_2(args, message, sample_slide, asset_path, tmp_path, capsys):
    values = {"jpg": asset_path("hgsc_nest.jpg"), "svs": sample_slide, "tmp": tmp_path}
    argv = [a.format(**values) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("napari-wsi-sam: error:") and "\n" not in err
