"""The learning curve of docs/results.md: how many annotated objects before a head helps.

For K = 25, 50, 100, 200, 400 nuclei of hgsc_nest (seeded, nested subsets: the first 25 are
among the first 50, as a user's annotations grow), the objects go into the image's object
store as a user would have made them, a WSI-SAM head and SAM* are trained from the store with
the CLI (`train --data IMAGE`, the shipped head's settings), and every head is evaluated on the
held-out hgsc_stromal nuclei with the evaluation protocol (boxes and 3 points), next to SAM.
Writes outputs/learning_curve/{table.md,table.csv,learning_curve.png} and the per-object
records. About 2 hours on a 2-core CPU.

Run: ``.venv/bin/python scripts/learning_curve.py [--ks 25 50 100 200 400] [--out DIR]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "napari_wsi_sam.cli"]
PROMPTS = "box,points:3"


def run(*args: str) -> None:
    print("+ napari-wsi-sam", " ".join(args), flush=True)
    subprocess.run([*CLI, *args], check=True)


def make_store(image: Path, objects: list, folder: Path) -> Path:
    """A copy of the image whose object store holds `objects` (imported like a user's)."""
    from napari_wsi_sam.formats import write_geojson

    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / image.name
    shutil.copy(image, copy)
    shutil.rmtree(folder / f"{image.stem}.wsi-sam", ignore_errors=True)
    geojson = folder / "annotated.geojson"
    write_geojson(objects, geojson)
    run("objects", "import", str(copy), str(geojson), "--mpp", "0.5")
    return copy


def summarise(records: pd.DataFrame, ks: list[int], out: Path) -> pd.DataFrame:
    from napari_wsi_sam.evaluation.stats import bootstrap_ci

    rows = []
    for (model, prompt), group in records.groupby(["model", "prompt"]):
        family, _, k = model.partition("@")
        mean, low, high = bootstrap_ci(group["dice"].to_numpy(), n_boot=2000, seed=0)
        rows.append({"model": family, "K": int(k) if k else None, "prompt": prompt,
                     "n": len(group), "dice": mean, "low": low, "high": high})
    table = pd.DataFrame(rows).sort_values(["prompt", "model", "K"])
    table.to_csv(out / "table.csv", index=False)
    lines = ["| prompt | K | SAM | SAM* | WSI-SAM |", "|---|---:|---:|---:|---:|"]
    for prompt in ("box", "points:3"):
        sam = table[(table.model == "SAM") & (table.prompt == prompt)].iloc[0]
        for k in ks:
            cells = [f"{sam.dice:.3f} [{sam.low:.3f}, {sam.high:.3f}]"]
            for family in ("SAM*", "WSI-SAM"):
                row = table[(table.model == family) & (table.K == k) & (table.prompt == prompt)]
                r = row.iloc[0]
                cells.append(f"{r.dice:.3f} [{r.low:.3f}, {r.high:.3f}]")
            lines.append(f"| {prompt} | {k} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return table


def plot(table: pd.DataFrame, ks: list[int], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    for i, prompt in enumerate(("box", "points:3")):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = table[table.prompt == prompt]
        sam = rows[rows.model == "SAM"].iloc[0]
        ax.axhline(sam.dice, color="0.4", linestyle="--", label="SAM (no training)")
        ax.axhspan(sam.low, sam.high, color="0.4", alpha=0.12)
        for family, colour in (("SAM*", "C1"), ("WSI-SAM", "C0")):
            part = rows[rows.model == family].sort_values("K")
            ax.errorbar(part.K, part.dice, yerr=[part.dice - part.low, part.high - part.dice],
                        marker="o", capsize=3, color=colour, label=family)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("annotated nuclei used for training (K)")
        ax.set_ylabel("held-out Dice (hgsc_stromal)")
        ax.set_title(f"{prompt} prompts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "learning_curve")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from napari_wsi_sam.train.datasets import load_data

    (nest,) = load_data("builtin:hgsc_nest")
    order = np.random.default_rng(args.seed).permutation(len(nest.objects))
    models = ["SAM=sam"]
    for k in args.ks:
        folder = args.out / f"K{k}"
        chosen = [nest.objects[i] for i in order[:k]]
        image = make_store(nest.image, chosen, folder)
        for mode, name in (("wsi-sam", "head.pt"), ("sam-decoder", "sam_decoder.pt")):
            target = folder / mode
            if not (target / name).is_file():
                run("train", "--data", str(image), "--mode", mode, "--out", str(target),
                    "--seed", str(args.seed), "--no-progress")
        models += [f"WSI-SAM@{k}=wsi-sam:{folder / 'wsi-sam' / 'head.pt'}",
                   f"SAM*@{k}=sam-decoder:{folder / 'sam-decoder' / 'sam_decoder.pt'}"]
    held = args.out / "heldout"
    if not (held / "dice_per_object.csv").is_file():
        run("evaluate", "--data", "builtin:hgsc_stromal", "--models", ",".join(models),
            "--prompts", PROMPTS, "--seed", str(args.seed), "--out", str(held), "--no-progress")
    table = summarise(pd.read_csv(held / "dice_per_object.csv"), args.ks, args.out)
    plot(table, args.ks, args.out / "learning_curve.png")
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
