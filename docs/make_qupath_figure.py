"""Make docs/images/qupath_serve.png: how QuPath's SAM extension reaches WSI-SAM, and what a
served answer looks like on the real CMU SVS.

Run: ``.venv/bin/python docs/make_qupath_figure.py [--out docs/images/qupath_serve.png]``

Left: the path of one request (QuPath -> ``napari-wsi-sam serve`` -> the slide's HR and LR
crops -> the object store -> napari). Right: the viewer image QuPath would send (a region at
downsample 2) with the objects two real requests got back from a real server: the same box,
once naming the slide and its region (WSI-SAM, the slide's own 5x context) and once with the
sent image alone (SAM, no 5x context), drawn where QuPath draws them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from shapely.geometry import shape

from napari_wsi_sam.assets import fetch
from napari_wsi_sam.serve import ServeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_serve import (
    REGION,
    SAMPLE_BOX,
    Server,
    b64png,
    box_request,
    sent_bbox,
    viewer_image,
)


def diagram(ax) -> None:
    steps = [("QuPath + SAM extension", "server URL http://127.0.0.1:8000/sam/\nbox / points / "
              "everything on the viewer image", "#dbe9f6"),
             ("napari-wsi-sam serve", "samapi's routes; optional slide + region:\nthe model, "
              "scale and context of each answer", "#fde9c9"),
             ("the slide itself", "HR crop at the head's µm/px, LR crop at 2x\n(WSI-SAM's 5x "
              "context)", "#e3f1dc"),
             ("the slide's object store", "prompt, model, head, score, UUID\n= the Feature's "
              "id QuPath keeps", "#efe0f3"),
             ("napari", "the same objects, live; GET /sam/objects/\nbrings napari's to QuPath",
              "#dbe9f6")]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(steps))
    ax.axis("off")
    for i, (title, text, color) in enumerate(steps):
        y = len(steps) - 1 - i
        ax.add_patch(FancyBboxPatch((0.04, y + 0.14), 0.92, 0.72, boxstyle="round,pad=0.02",
                                    fc=color, ec="#555555"))
        ax.text(0.5, y + 0.62, title, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(0.5, y + 0.34, text, ha="center", va="center", fontsize=8.5)
        if i:
            ax.add_patch(FancyArrowPatch((0.5, y + 1.14), (0.5, y + 0.86), arrowstyle="-|>",
                                         mutation_scale=14, color="#333333"))


def served(server: Server, slide: Path) -> dict[str, object]:
    image = b64png(viewer_image(slide))
    weights = httpx.get(f"{server.url}/sam/weights/?type=vit_t").json()
    wsi = next(w for w in weights if w["url"].startswith("napari-wsi-sam:wsi-sam:"))
    bbox = sent_bbox(SAMPLE_BOX)
    with_slide = httpx.post(f"{server.url}/sam/", timeout=600, json=box_request(
        image, bbox, checkpoint_url=wsi["url"], slide=slide.name, region=list(REGION))).json()
    alone = httpx.post(f"{server.url}/sam/", timeout=600,
                       json=box_request(image, bbox)).json()
    return {"bbox": bbox, "with_slide": with_slide[0], "alone": alone[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/qupath_serve.png"))
    args = parser.parse_args()
    sample = fetch("cmu_small_region.svs")["cmu_small_region.svs"]
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / sample.name
        shutil.copyfile(sample, slide)
        server = Server(ServeConfig(slides=slide.parent, device="cpu"))
        try:
            answer = served(server, slide)
        finally:
            server.stop()
        pixels = viewer_image(slide)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6.2),
                                      gridspec_kw={"width_ratios": [1, 1.15]})
    diagram(left)
    right.imshow(pixels)
    x0, y0, x1, y1 = answer["bbox"]
    right.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5,
                              ls="--"))
    for key, color in (("with_slide", "#ffcc00"), ("alone", "#00d5ff")):
        feature = answer[key]
        geometry = shape(feature["geometry"])
        parts = getattr(geometry, "geoms", [geometry])
        props = feature["properties"]
        where = ("HR + LR crops from the slide" if props["context"].startswith("slide")
                 else "the sent image alone, no 5x context")
        label = f"{props['model']} ({props['scale'].split(' (')[0]}): {where}"
        for k, part in enumerate(parts):
            xs, ys = part.exterior.xy
            right.plot(xs, ys, color=color, lw=2, label=label if k == 0 else None)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    right.set_xlim(cx - 160, cx + 160)
    right.set_ylim(cy + 160, cy - 160)
    right.set_title("one box, two requests: with the slide named, and the sent image alone",
                    fontsize=10)
    right.legend(loc="lower center", fontsize=8, framealpha=0.9)
    right.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
