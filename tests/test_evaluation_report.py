"""Statistics and reporting of per-object Dice records (pure math on constructed numbers)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_wsi_sam.evaluation import (
    bootstrap_ci,
    box_table,
    paired_difference,
    points_tables,
    summarise,
    to_markdown,
    write_report,
)
from napari_wsi_sam.evaluation.report import format_cell

DASH = "\u2013"


def _records(rows: list[tuple[str, str, int, str, str, float]]) -> pd.DataFrame:
    columns = ["dataset", "class_name", "object_id", "model", "prompt", "dice"]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_interval_contains_mean_and_is_reproducible():
    values = np.random.default_rng(1).uniform(0.4, 0.9, size=50)
    mean, low, high = bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert bootstrap_ci(values, seed=3) == (mean, low, high)
    assert bootstrap_ci(values, seed=4) != (mean, low, high)


def test_bootstrap_interval_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 200, 2000):
        _, low, high = bootstrap_ci(rng.normal(0.7, 0.1, size=n), n_boot=1000)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_constant_values_have_zero_width():
    assert bootstrap_ci([0.8] * 30) == pytest.approx((0.8, 0.8, 0.8))


def test_bootstrap_matches_normal_theory():
    sigma, n = 0.1, 4000
    values = np.random.default_rng(5).normal(0.6, sigma, size=n)
    _, low, high = bootstrap_ci(values, n_boot=2000)
    expected = 2 * 1.959964 * sigma / np.sqrt(n)
    assert high - low == pytest.approx(expected, rel=0.10)


def test_bootstrap_edge_cases():
    assert bootstrap_ci([0.42]) == (0.42, 0.42, 0.42)
    assert bootstrap_ci(iter([0.5, 0.7]), n_boot=100)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.5, 0.6], level=1.0)


# ----------------------------------------------------------------------------- summarise


def test_summarise_all_is_pooled_object_weighted_mean():
    rows = [("d", "big", i, "sam", "box", 0.9) for i in range(8)]
    rows += [("d", "small", 100 + i, "sam", "box", 0.5) for i in range(2)]
    summary = summarise(_records(rows), n_boot=200)
    columns = ["dataset", "class_name", "model", "prompt", "n", "mean", "low", "high"]
    assert list(summary.columns) == columns
    assert list(summary["class_name"]) == ["big", "small", "all"]
    pooled = summary[summary["class_name"] == "all"].iloc[0]
    assert pooled["n"] == 10
    assert pooled["mean"] == pytest.approx((8 * 0.9 + 2 * 0.5) / 10)  # not (0.9 + 0.5) / 2
    assert pooled["low"] <= pooled["mean"] <= pooled["high"]


def test_summarise_keeps_model_order_and_averages_repeated_objects():
    rows = [("d", "c", 1, "wsi-sam", "box", 0.8), ("d", "c", 1, "wsi-sam", "box", 0.6)]
    rows += [("d", "c", 1, "medsam", "box", 0.7), ("d", "c", 2, "medsam", "box", 0.7)]
    summary = summarise(_records(rows), n_boot=50)
    assert list(pd.unique(summary["model"])) == ["wsi-sam", "medsam"]
    wsi = summary[(summary["model"] == "wsi-sam") & (summary["class_name"] == "c")].iloc[0]
    assert (wsi["n"], wsi["mean"]) == (1, pytest.approx(0.7))


def test_summarise_rejects_bad_records():
    with pytest.raises(ValueError, match="dice"):
        summarise(_records([("d", "c", 1, "sam", "box", 1.5)]))
    with pytest.raises(ValueError, match="column"):
        summarise(pd.DataFrame({"dataset": ["d"], "dice": [0.5]}))


# ----------------------------------------------------------------------------- paired_difference


def test_paired_difference_sign_interval_and_pairing():
    rng = np.random.default_rng(7)
    base = rng.uniform(0.3, 0.9, size=60)  # large spread shared by both models
    rows = [("d", "c", i, "sam", "box", float(v)) for i, v in enumerate(base)]
    better = np.clip(base + 0.03 + rng.normal(0, 0.005, size=60), 0, 1)
    rows += [("d", "c", i, "wsi-sam", "box", float(v)) for i, v in enumerate(better[:50])]
    records = _records(rows)

    diff, low, high, n = paired_difference(records, "wsi-sam", "sam", prompt="box", dataset="d")
    assert n == 50  # only the objects both models have
    assert diff == pytest.approx(float(np.mean(better[:50] - base[:50])))
    assert 0 < low < diff < high
    assert high - low < 0.01  # pairing removes the shared object-to-object spread

    back = paired_difference(records, "sam", "wsi-sam", prompt="box", dataset="d")
    assert back[0] == pytest.approx(-diff)
    assert back[2] < 0

    with pytest.raises(ValueError, match="both"):
        paired_difference(records, "sam", "medsam", prompt="box", dataset="d")


# ----------------------------------------------------------------------------- tables


@pytest.fixture
def three_models() -> pd.DataFrame:
    """sam / medsam (box only) / wsi-sam on 3 neoplastic + 2 connective objects.

    Dice is constant per (model, class, prompt) so every per-class interval has zero width and
    the cell strings are exact; records are in non-alphabetical model order on purpose.
    """
    dice = {
        ("sam", "neoplastic"): 0.80,
        ("sam", "connective"): 0.60,
        ("medsam", "neoplastic"): 0.70,
        ("medsam", "connective"): 0.65,
        ("wsi-sam", "neoplastic"): 0.85,
        ("wsi-sam", "connective"): 0.55,
    }
    objects = [(1, "neoplastic"), (2, "neoplastic"), (3, "neoplastic")]
    objects += [(4, "connective"), (5, "connective")]
    rows = []
    for model in ("sam", "medsam", "wsi-sam"):
        prompts = ["box"] if model == "medsam" else ["box", "points:10", "points:1", "points:3"]
        for prompt in prompts:
            k_bonus = 0.0 if prompt == "box" else 0.01 * int(prompt.split(":")[1])
            for object_id, class_name in objects:
                value = round(dice[(model, class_name)] + k_bonus, 4)
                rows.append(("dcis", class_name, object_id, model, prompt, value))
    return _records(rows)


def _all_cell(records: pd.DataFrame, model: str, prompt: str) -> str:
    values = records[(records["model"] == model) & (records["prompt"] == prompt)]["dice"]
    return format_cell(*bootstrap_ci(values.to_numpy(), n_boot=300))


def test_box_table_exact_cells(three_models):
    table = box_table(summarise(three_models, n_boot=300), dataset="dcis")
    assert list(table.index) == ["sam", "medsam", "wsi-sam"]
    assert list(table.columns) == ["neoplastic (n=3)", "connective (n=2)", "all (n=5)"]
    assert list(table["neoplastic (n=3)"]) == [
        "80.00 [80.0, 80.0]",
        "70.00 [70.0, 70.0]",
        "85.00 [85.0, 85.0]",
    ]
    assert list(table["connective (n=2)"]) == [
        "60.00 [60.0, 60.0]",
        "65.00 [65.0, 65.0]",
        "55.00 [55.0, 55.0]",
    ]
    sam_all = table.loc["sam", "all (n=5)"]
    assert sam_all.startswith("72.00 [")  # (3 * 0.80 + 2 * 0.60) / 5
    assert sam_all == _all_cell(three_models, "sam", "box")
    assert table.loc["medsam", "all (n=5)"] == _all_cell(three_models, "medsam", "box")


def test_points_tables_sorted_numerically_with_dash_for_medsam(three_models):
    tables = points_tables(summarise(three_models, n_boot=300), dataset="dcis")
    assert list(tables) == ["points:1", "points:3", "points:10"]
    ten = tables["points:10"]
    assert list(ten.index) == ["sam", "medsam", "wsi-sam"]
    assert list(ten.loc["medsam"]) == [DASH, DASH, DASH]
    assert ten.loc["wsi-sam", "neoplastic (n=3)"] == "95.00 [95.0, 95.0]"
    assert ten.loc["sam", "all (n=5)"] == _all_cell(three_models, "sam", "points:10")


def test_cell_names_its_own_n_when_a_model_missed_objects(three_models):
    records = three_models.drop(
        three_models[(three_models["model"] == "sam") & (three_models["object_id"] == 1)].index
    )
    table = box_table(summarise(records, n_boot=100), dataset="dcis")
    assert table.loc["sam", "neoplastic (n=3)"] == "80.00 [80.0, 80.0] (n=2)"
    assert table.loc["wsi-sam", "neoplastic (n=3)"] == "85.00 [85.0, 85.0]"


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_is_well_formed_and_bolds_best(three_models):
    markdown = to_markdown(box_table(summarise(three_models, n_boot=300), dataset="dcis"))
    lines = markdown.strip().split("\n")
    assert len(lines) == 2 + 3
    assert len({_pipes(line) for line in lines}) == 1
    assert lines[0] == "| model | neoplastic (n=3) | connective (n=2) | all (n=5) |"
    assert lines[1] == "| --- | ---: | ---: | ---: |"
    assert lines[2].startswith("| sam | 80.00 [80.0, 80.0] | 60.00 [60.0, 60.0] | ")
    assert "| medsam | 70.00 [70.0, 70.0] | **65.00** [65.0, 65.0] | " in lines[3]
    assert lines[4].startswith("| wsi-sam | **85.00** [85.0, 85.0] | 55.00 [55.0, 55.0] | ")
    assert markdown.count("**") == 2 * 3  # exactly one best per column here
    assert not re.search(r"\bnan\b", markdown, flags=re.IGNORECASE)

    table = box_table(summarise(three_models, n_boot=300), dataset="dcis")
    plain = to_markdown(table, bold_best=False)
    assert "**" not in plain


def test_markdown_escapes_pipes_marks_ties_and_nan():
    table = pd.DataFrame(
        {"a (n=2)": ["50.00 [40.0, 60.0]", "50.00 [45.0, 55.0]", np.nan]},
        index=pd.Index(["x|y", "z", "w"], name="model"),
    )
    lines = to_markdown(table).strip().split("\n")
    assert len({_pipes(line) for line in lines}) == 1
    assert "x\\|y" in lines[2]
    assert lines[2].count("**50.00**") == lines[3].count("**50.00**") == 1  # a tie: both bold
    assert lines[4] == f"| w | {DASH} |"


# ----------------------------------------------------------------------------- write_report


def test_write_report_single_dataset(three_models, tmp_path):
    report = write_report(three_models, tmp_path / "out", title="WSI-SAM on DCIS", n_boot=200)
    out = tmp_path / "out"
    assert report == out / "report.md"
    for name in (
        "dice_per_object.csv",
        "summary.csv",
        "table1_box.md",
        "table1_box.csv",
        "table4_points.md",
        "table4_points.csv",
        "figure4_points.png",
        "report.md",
    ):
        assert (out / name).stat().st_size > 0, name
    with Image.open(out / "figure4_points.png") as image:
        image.verify()
    with Image.open(out / "figure4_points.png") as image:
        assert image.format == "PNG"
        assert image.size[0] > 500 and image.size[1] > 300

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# WSI-SAM on DCIS\n")
    assert (out / "table1_box.md").read_text(encoding="utf-8") in text
    assert "#### 10 points" in text and "](figure4_points.png)" in text
    assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)
    assert len(pd.read_csv(out / "dice_per_object.csv")) == len(three_models)
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["prompt"]) == {"box", "points:1", "points:3", "points:10"}
    points_long = pd.read_csv(out / "table4_points.csv")
    assert set(points_long["prompt"]) == {"points:1", "points:3", "points:10"}


def test_write_report_two_datasets_get_suffixes(three_models, tmp_path):
    other = three_models[three_models["prompt"] == "box"].assign(dataset="camelyon16")
    records = pd.concat([three_models, other], ignore_index=True)
    report = write_report(records, tmp_path, title="Two", n_boot=100)
    for dataset in ("dcis", "camelyon16"):
        for stem in ("table1_box", "table4_points"):
            assert (tmp_path / f"{stem}_{dataset}.md").is_file()
            assert (tmp_path / f"{stem}_{dataset}.csv").is_file()
        assert (tmp_path / f"figure4_points_{dataset}.png").stat().st_size > 0
    assert not (tmp_path / "table1_box.md").exists()
    text = report.read_text(encoding="utf-8")
    assert "## dcis" in text and "## camelyon16" in text
    assert "_No point-prompt records._" in text  # camelyon16 has box rows only here


def test_package_import_stays_light():
    code = (
        "import sys, napari_wsi_sam.evaluation as e; "
        "assert 'pandas' not in sys.modules; e.summarise; e.write_report; "
        "assert not {'torch', 'napari', 'matplotlib', 'matplotlib.pyplot'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- formula cells
def test_csv_cells_a_spreadsheet_would_run_are_escaped_and_numbers_stay(three_models, tmp_path):
    """A class named ``=HYPERLINK(...)`` (or starting with + - @ tab CR) is written as text
    with a leading ', in every CSV of the report; Dice and counts stay numbers."""
    import csv

    hostile = ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
               "\tTAB", "\rCR"]
    records = three_models.copy()
    names = {"neoplastic": hostile[0], "connective": hostile[1]}
    records["class_name"] = records["class_name"].map(names)
    records["dataset"] = hostile[3]
    out = tmp_path / "out"
    write_report(records, out, title="hostile", n_boot=50)
    csvs = sorted(out.glob("*.csv"))
    assert {p.name for p in csvs} >= {"dice_per_object.csv", "summary.csv"}
    for path in csvs:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    assert not cell.startswith(("=", "+", "@", "\t", "\r")), (path.name, cell)
                    if cell.startswith("-"):
                        float(cell)  # only a negative number may start with -
    per_object = pd.read_csv(out / "dice_per_object.csv")
    assert set(per_object["class_name"]) == {"'" + hostile[0], "'" + hostile[1]}
    assert set(per_object["dataset"]) == {"'" + hostile[3]}
    assert per_object["dice"].dtype.kind == "f" and per_object["object_id"].dtype.kind == "i"


def test_cohort_report_escapes_formula_cells(tmp_path):
    import csv

    from napari_wsi_sam.cohort.report import SlideReport
    from napari_wsi_sam.cohort.report import write_report as write_cohort

    path = write_cohort(tmp_path / "report.csv", [
        SlideReport(slide="=cmd|' /C calc'!A0", line=2, prompts=3, seconds=1.5,
                    status="failed", error="@bad"),
        SlideReport(slide="-5", line=3, objects=4)])
    rows = list(csv.DictReader(path.open(newline="")))
    assert rows[0]["slide"] == "'=cmd|' /C calc'!A0" and rows[0]["error"] == "'@bad"
    assert rows[1]["slide"] == "-5" and rows[1]["objects"] == "4" and rows[0]["seconds"] == "1.5"
