"""Segment all, measured: WSI-SAM (shipped head) against SAM's own automatic mask generator.

Protocol (docs/results.md, "Segment all"):

- tune on hgsc_nest only: the model's masks for every grid point of the tuning regions are
  computed once; the grid density (32 or 16 points per HR crop side, the 16-grid being every
  other point of the 32-grid) and the thresholds are then chosen by panoptic quality (PQ).
  SAM's `SamAutomaticMaskGenerator` (MobileSAM) gets the same points on one 1024² HR crop
  around each region, run once with its filters off; its thresholds (predicted IoU,
  stability) are chosen on the same regions by applying its own filters afterwards (score
  filters, then its box NMS at 0.7: what the generator does with one crop);
- test on hgsc_stromal: the chosen settings through the CLI (`segment --auto`) for WSI-SAM,
  and the generator with its chosen thresholds, on the same region(s), scored with
  `evaluation.instances` (F1 at IoU 0.5, mean IoU of matches, PQ). The truth is the
  histolytics polygons, which are themselves model-made (a segmentation model's output).

All at 0.25 µm/px HR (40x; the images are 0.5 µm/px). Writes outputs/auto_eval/.
Run: ``.venv/bin/python scripts/auto_segment_eval.py [--stage tune|test|all]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import shapely
import torch

from napari_wsi_sam.evaluation.instances import cut_to, match_instances
from napari_wsi_sam.pipeline.auto_grid import (
    AutoSettings,
    Candidates,
    crop_candidates,
    crop_objects,
    plan_crops,
)
from napari_wsi_sam.pipeline.auto_region import Accepted, as_region
from napari_wsi_sam.pipeline.segment import mask_to_level0
from napari_wsi_sam.polygons import mask_to_geometry, polygonal
from napari_wsi_sam.prompts import Prompt
from napari_wsi_sam.slide import concentric_crops, open_slide
from napari_wsi_sam.train.datasets import load_data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "auto_eval"
HR_MPP = 0.25
IMAGE_MPP = 0.5
TUNE_REGIONS = [(600, 600, 856, 856), (150, 1000, 406, 1256)]
TEST_REGIONS = [(494, 494, 1006, 1006)]
"""Level-0 px of the 1500² images; the test region is the central 512² (one HR crop)."""
GENERATOR_CHUNK = 1024
"""Points per generator call: its masks of 1024 points x 3 outputs take 3 GB."""
MIN_TRUE_AREA = 16.0
"""True objects cut by the region to under this many image px (4 µm²) are not scored."""


# ------------------------------------------------------------------ WSI-SAM candidates
def wsi_candidates(image, region_box, predictor, pps: int, *, multimask: bool = False
                   ) -> list[Candidates]:
    region = as_region(region_box)
    out = []
    with open_slide(image.image, mpp=IMAGE_MPP) as slide:
        settings = AutoSettings(points_per_side=pps, multimask=multimask)
        for planned in plan_crops(slide, region, hr_mpp=HR_MPP, points_per_side=pps):
            for cand in crop_candidates(slide, planned, predictor, hr_mpp=HR_MPP,
                                        settings=settings):
                out.append(replace(cand, logits=cand.logits.astype(np.float16)))
    return out


def subsample(cands: list[Candidates], image_step: float) -> list[Candidates]:
    """Every other point of the grid in both axes (the 16-grid from the 32-grid)."""
    out = []
    for c in cands:
        idx = np.round((c.points - image_step / 2) / image_step).astype(int)
        keep = np.flatnonzero((idx[:, 0] % 2 == 0) & (idx[:, 1] % 2 == 0))
        if keep.size:
            out.append(Candidates(c.crops, c.points[keep], c.logits[keep], c.scores[keep],
                                  c.stability[keep], c.model, c.score_kind))
    return out


def wsi_objects(slide, cands: list[Candidates], region_box, settings: AutoSettings) -> list:
    region = as_region(region_box)
    accepted = Accepted(settings.duplicate_overlap)
    geoms = []
    for cand in cands:
        geoms += [o.geometry for o in crop_objects(slide, cand, settings=settings,
                                                   region=region, accepted=accepted,
                                                   hr_mpp=HR_MPP)]
    return geoms


# ------------------------------------------------------------------ SAM's generator
def generator_records(image, region_box, pps: int, sam_model) -> dict:
    """SAM's generator with its filters off on the HR crop around the region, the region's
    grid points only (the same points the pipeline prompts)."""
    from mobile_sam import SamAutomaticMaskGenerator

    region = as_region(region_box)
    with open_slide(image.image, mpp=IMAGE_MPP) as slide:
        cx, cy = region.centroid.x, region.centroid.y
        crops = concentric_crops(slide, Prompt(points=np.array([[cx, cy]])), hr_mpp=HR_MPP,
                                 center=(cx, cy))
        settings = AutoSettings(points_per_side=pps)
        points = np.concatenate([p.points for p in plan_crops(
            slide, region, hr_mpp=HR_MPP, points_per_side=settings.points_per_side)])
        local = crops.hr.map.to_crop(points) / crops.hr.image.shape[1]
        records, geoms, seconds = [], [], 0.0
        for start in range(0, len(local), GENERATOR_CHUNK):  # its filters are off: exact
            generator = SamAutomaticMaskGenerator(
                sam_model, points_per_side=None, point_grids=[local[start:start + GENERATOR_CHUNK]],
                points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                box_nms_thresh=1.0)
            started = time.perf_counter()
            chunk = generator.generate(crops.hr.image)
            seconds += time.perf_counter() - started
            for r in chunk:
                placed = mask_to_level0(crops, r["segmentation"], dimensions=slide.dimensions)
                geoms.append(None if placed is None else mask_to_geometry(*placed))
                del r["segmentation"]
            records += chunk
    return {"records": [{k: r[k] for k in ("predicted_iou", "stability_score", "bbox")}
                        for r in records], "geoms": geoms, "points": points,
            "seconds": seconds}


def generator_objects(run: dict, region_box, pred_iou: float, stability: float) -> list:
    from torchvision.ops import nms

    region = as_region(region_box)
    keep = [i for i, r in enumerate(run["records"]) if r["predicted_iou"] > pred_iou
            and r["stability_score"] >= stability and run["geoms"][i] is not None]
    if not keep:
        return []
    boxes = torch.tensor([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                           r["bbox"][1] + r["bbox"][3]] for r in (run["records"][i]
                                                                   for i in keep)]).float()
    scores = torch.tensor([run["records"][i]["predicted_iou"] for i in keep]).float()
    order = nms(boxes, scores, 0.7).tolist()
    out = []
    for k in order:
        cut = polygonal(shapely.intersection(run["geoms"][keep[k]], region))
        if not cut.is_empty and cut.area >= 1.0:
            out.append(cut)
    return out


def truth_in(image, region_box) -> list:
    return cut_to([o.geometry for o in image.objects], as_region(region_box),
                  min_area=MIN_TRUE_AREA)


def pooled(scores: list) -> dict:
    """Counts summed over regions; matched IoU weighted by matches."""
    tp = sum(s.true_positives for s in scores)
    fp = sum(s.false_positives for s in scores)
    fn = sum(s.false_negatives for s in scores)
    iou = sum(s.matched_iou * s.true_positives for s in scores) / tp if tp else 0.0
    from napari_wsi_sam.evaluation.instances import InstanceScores

    return InstanceScores(tp, fp, fn, iou).as_dict()


def load_sam_model():
    from mobile_sam import sam_model_registry

    from napari_wsi_sam.assets import fetch

    path = fetch(["mobile_sam.pt"])["mobile_sam.pt"]
    return sam_model_registry["vit_t"](checkpoint=str(path)).eval()


# ------------------------------------------------------------------ stages
PQ_TOLERANCE = 0.01
"""A denser grid costs its square in time: the sparsest grid within this PQ of the best wins."""


def choose(rows: list[dict], density) -> dict:
    """The best row (by PQ) of the sparsest grid whose best is within `PQ_TOLERANCE` of the
    overall best."""
    best = max(r["pq"] for r in rows)
    good = [r for r in rows if r["pq"] >= best - PQ_TOLERANCE]
    sparsest = min(density(r) for r in good)
    return max((r for r in good if density(r) == sparsest), key=lambda r: r["pq"])


def tune() -> dict:
    from napari_wsi_sam.model.predictor import WsiSamPredictor

    nest = load_data("builtin:hgsc_nest")[0]
    predictor = WsiSamPredictor(model="wsi-sam", head="hgsc_nuclei", device="cpu",
                                decoder_batch=64)
    step64 = 1024 / 64 * HR_MPP / IMAGE_MPP
    started = time.perf_counter()
    cands64 = {r: wsi_candidates(nest, r, predictor, 64) for r in TUNE_REGIONS}
    multi32 = {r: wsi_candidates(nest, r, predictor, 32, multimask=True) for r in TUNE_REGIONS}
    print(f"WSI-SAM candidates: {time.perf_counter() - started:.0f} s", flush=True)
    cands32 = {r: subsample(c, step64) for r, c in cands64.items()}
    grids = {(64, False): cands64, (32, False): cands32,
             (16, False): {r: subsample(c, 2 * step64) for r, c in cands32.items()},
             (32, True): multi32}
    truths = {r: truth_in(nest, r) for r in TUNE_REGIONS}
    rows = []
    with open_slide(nest.image, mpp=IMAGE_MPP) as slide:
        for (pps, multi), score, overlap in itertools.product(
                grids, (0.6, 0.7, 0.75, 0.8, 0.85, 0.9), (0.3, 0.5, 0.7)):
            settings = AutoSettings(points_per_side=pps, min_score=score, multimask=multi,
                                    min_stability=score, duplicate_overlap=overlap)
            scores = [match_instances(wsi_objects(slide, grids[pps, multi][r], r, settings),
                                      truths[r]) for r in TUNE_REGIONS]
            rows.append({"model": "wsi-sam", "settings": asdict(settings), **pooled(scores)})
            print(json.dumps({k: rows[-1][k] for k in ("f1", "mean_iou", "pq")}),
                  pps, multi, score, overlap, flush=True)
    best_wsi = choose(rows, lambda r: r["settings"]["points_per_side"])
    sam_model = load_sam_model()
    gen_rows = []
    for pps in (32, 64):
        runs = {r: generator_records(nest, r, pps, sam_model) for r in TUNE_REGIONS}
        for pred_iou, stability in itertools.product((0.7, 0.8, 0.88, 0.92),
                                                     (0.8, 0.9, 0.95, 0.97)):
            scores = [match_instances(generator_objects(runs[r], r, pred_iou, stability),
                                      truths[r]) for r in TUNE_REGIONS]
            gen_rows.append({"model": "sam-generator", "points_per_side": pps,
                             "pred_iou_thresh": pred_iou, "stability_score_thresh": stability,
                             **pooled(scores)})
    best_gen = choose(gen_rows, lambda r: r["points_per_side"])
    chosen = {"wsi-sam": best_wsi, "sam-generator": best_gen}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tuning.json").write_text(json.dumps({"rows": rows + gen_rows, "chosen": chosen},
                                                indent=1))
    print("chosen:", json.dumps(chosen, indent=1))
    return chosen


def cli_run(image: Path, region, model: str, settings: AutoSettings, work: Path
            ) -> tuple[list, float]:
    """`segment --auto` on a fresh store: the objects found and the wall time."""
    from napari_wsi_sam.formats import read_geojson

    out = work / f"{model}_{region[0]}_{region[1]}.geojson"
    store = work / f"store_{model}_{region[0]}_{region[1]}"
    shutil.rmtree(store, ignore_errors=True)  # a fresh store: the run's own objects
    args = [sys.executable, "-m", "napari_wsi_sam.cli", "segment", str(image), "--auto",
            "--region", *map(str, region), "--mpp", str(IMAGE_MPP), "--model", model,
            "--hr-mpp", str(HR_MPP), "--class", "nucleus", "--labels", str(store),
            "--points-per-side", str(settings.points_per_side),
            "--min-score", str(settings.min_score),
            "--min-stability", str(settings.min_stability),
            "--duplicate-overlap", str(settings.duplicate_overlap), "--out", str(out)]
    if model == "wsi-sam":
        args += ["--head", "hgsc_nuclei"]
    if settings.max_area_um2 is not None:
        args += ["--max-area", str(settings.max_area_um2)]
    started = time.perf_counter()
    subprocess.run(args, check=True)
    seconds = time.perf_counter() - started
    return [o.geometry for o in read_geojson(out).objects], seconds


def test(chosen: dict) -> None:
    stromal = load_data("builtin:hgsc_stromal")[0]
    wsi = AutoSettings(**chosen["wsi-sam"]["settings"])
    gen = chosen["sam-generator"]
    results = []
    work = OUT / "stromal"
    work.mkdir(parents=True, exist_ok=True)
    image = work / stromal.image.name
    if not image.exists():
        image.write_bytes(stromal.image.read_bytes())
    for region in TEST_REGIONS:
        truth = truth_in(stromal, region)
        area_mm2 = as_region(region).area * IMAGE_MPP ** 2 / 1e6
        found_by: dict[str, list] = {}
        for label, model, settings in (
                ("WSI-SAM (hgsc_nuclei head), segment --auto", "wsi-sam", wsi),):
            predicted, seconds = cli_run(image, region, model, settings, work)
            found_by[model] = predicted
            results.append({"model": label, "region": region, "n_true": len(truth),
                            "n_found": len(predicted), "seconds": seconds,
                            "s_per_mm2": seconds / area_mm2,
                            **match_instances(predicted, truth).as_dict()})
        predicted = found_by["wsi-sam"]
        run = generator_records(stromal, region, gen["points_per_side"], load_sam_model())
        found = generator_objects(run, region, gen["pred_iou_thresh"],
                                  gen["stability_score_thresh"])
        results.append({"model": "SAM's SamAutomaticMaskGenerator (MobileSAM)",
                        "region": region, "n_true": len(truth), "n_found": len(found),
                        "seconds": run["seconds"], "s_per_mm2": run["seconds"] / area_mm2,
                        **match_instances(found, truth).as_dict()})
        (work / f"generator_{region[0]}_{region[1]}.json").write_text(json.dumps(
            [shapely.to_geojson(g) for g in found]))
        print(json.dumps(results[-2:], indent=1), flush=True)
        figure(image, region, {"ground truth": truth, "WSI-SAM": predicted,
                               "SAM generator": found},
               {"WSI-SAM": results[-2], "SAM generator": results[-1]},
               ROOT / "docs" / "images" / "segment_all_overlay.png")
    (OUT / "test.json").write_text(json.dumps(results, indent=1))


def figure(image_path: Path, region, panels: dict[str, list], scores: dict[str, dict],
           out: Path) -> None:
    """The region with the truth's and each method's outlines, one panel each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    x0, y0, x1, y1 = region
    pixels = np.asarray(Image.open(image_path).convert("RGB"))[y0:y1, x0:x1]
    colours = {"ground truth": "#00dc00", "WSI-SAM": "#ff00c8", "SAM generator": "#2878ff"}
    fig = Figure(figsize=(4.2 * len(panels), 4.6), dpi=110)
    FigureCanvasAgg(fig)
    for i, (name, geoms) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(pixels, extent=(x0, x1, y1, y0))
        for geom in geoms:
            for poly in getattr(geom, "geoms", [geom]):
                xs, ys = poly.exterior.xy
                ax.plot(xs, ys, color=colours[name], linewidth=0.9)
        score = scores.get(name)
        title = name if score is None else (f"{name}: {score['tp'] + score['fp']} found, "
                                            f"F1 {score['f1']:.2f}, PQ {score['pq']:.2f}")
        ax.set_title(title if name != "ground truth" else f"ground truth: {len(geoms)} nuclei",
                     fontsize=9)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=("tune", "test", "all"), default="all")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    chosen = tune() if args.stage in ("tune", "all") else json.loads(
        (OUT / "tuning.json").read_text())["chosen"]
    if args.stage in ("test", "all"):
        test(chosen)


if __name__ == "__main__":
    main()
