"""Draw docs/images/wsi_sam_flow.png: token and feature flow of the WSI-SAM head.

Run: ``python docs/make_model_figure.py`` (needs matplotlib, a docs-only dependency).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).parent / "images" / "wsi_sam_flow.png"
FROZEN, NEW, DATA = "#d9e2f3", "#fde2c4", "#eeeeee"


def box(ax, x, y, w, h, text, color, *, size=8.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="#444444", linewidth=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)
    return (x, y, w, h)


def arrow(ax, start, end, *, color="#333333", style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11,
                                 color=color, linewidth=1.1, linestyle=ls,
                                 shrinkA=2, shrinkB=2))


def right(b):
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b):
    return (b[0], b[1] + b[3] / 2)


def top(b):
    return (b[0] + b[2] / 2, b[1] + b[3])


def bottom(b):
    return (b[0] + b[2] / 2, b[1])


def main() -> None:
    fig, ax = plt.subplots(figsize=(13, 7.6))
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 7.6)
    ax.axis("off")
    for row, (name, y) in enumerate((("HR", 4.6), ("LR", 1.0))):
        crop = box(ax, 0.1, y + 0.9, 1.5, 0.8,
                   f"{name} crop\n1024² RGB\n({'1' if row == 0 else '2'}x mpp)", DATA)
        enc = box(ax, 2.0, y + 0.9, 1.6, 0.8, "TinyViT encoder\n(frozen, shared)", FROZEN)
        arrow(ax, right(crop), left(enc))
        emb = box(ax, 4.0, y + 1.45, 1.7, 0.55, "embedding 256x64²", DATA, size=8)
        early = box(ax, 4.0, y + 0.6, 1.7, 0.55, "early 160x64²", DATA, size=8)
        arrow(ax, right(enc), left(emb))
        arrow(ax, right(enc), left(early))
        tokens = box(ax, 1.7, y + 2.1, 4.1, 0.55,
                     f"tokens: IoU + 4 mask (SAM) + {name} token (new) + {name} prompts",
                     NEW, size=7.5)
        twt = box(ax, 6.1, y + 1.2, 1.8, 1.2,
                  f"SAM two-way\ntransformer\n(frozen)\n{name} pass", FROZEN)
        arrow(ax, right(emb), left(twt))
        arrow(ax, right(tokens), top(twt))
        mlp = box(ax, 8.3, y + 1.75, 1.6, 0.6, f"{name} hypernet MLP\n256→256→32", NEW, size=8)
        arrow(ax, (twt[0] + twt[2], twt[1] + 0.85), left(mlp))
        fusion = box(ax, 8.3, y + 0.05, 1.6, 1.2,
                     f"{name} fusion\n(256→64→32) +\n(160→256→32) +\n(mask 32→64→32)\n= 32x256²",
                     NEW, size=7.5)
        arrow(ax, right(emb), (fusion[0], fusion[1] + 0.95), ls="--")
        arrow(ax, right(early), (fusion[0], fusion[1] + 0.6), ls="--")
        arrow(ax, (twt[0] + twt[2], twt[1] + 0.2), (fusion[0], fusion[1] + 0.25), ls="--")
        if row == 0:
            ax.text(6.1, y + 0.9, "mask features: upscaled\nfrom SAM's own pass",
                    fontsize=7, color="#555555")
        ax.text(0.1, y + 2.0, name, fontsize=14, fontweight="bold")
        if row == 0:
            hr_mlp, hr_fusion = mlp, fusion
        else:
            lr_mlp, lr_fusion = mlp, fusion
    agg = box(ax, 10.3, 3.55, 1.35, 0.8, "aggregate\naverage | max |\nconcat_fc | sum", NEW,
              size=7.5)
    arrow(ax, right(hr_mlp), left(agg))
    arrow(ax, right(lr_mlp), bottom(agg))
    hr_mask = box(ax, 10.3, 4.75, 1.35, 0.7, "· HR features\n→ residual", NEW, size=8)
    arrow(ax, right(hr_fusion), left(hr_mask))
    arrow(ax, top(agg), bottom(hr_mask))
    lr_mask = box(ax, 10.3, 1.05, 1.35, 0.7, "· LR features\n→ LR mask\n(training, 1-λ)",
                  NEW, size=7.5)
    arrow(ax, right(lr_fusion), left(lr_mask))
    arrow(ax, bottom(agg), top(lr_mask))
    sam = box(ax, 10.3, 6.6, 1.35, 0.75, "SAM's own pass\n→ SAM mask", FROZEN, size=8)
    final = box(ax, 11.85, 5.45, 1.1, 1.0, "HR mask =\nSAM +\nresidual", NEW, size=8)
    arrow(ax, right(sam), top(final))
    arrow(ax, right(hr_mask), left(final))
    ax.text(0.1, 0.25, "blue: frozen SAM parts   orange: new, trainable (~0.45 M per "
            "resolution; last hypernet layer zero-initialised, so a fresh head returns "
            "SAM's mask exactly)   dashed: features", fontsize=8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
