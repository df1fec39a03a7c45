"""Make docs/images/architecture_imports.png: which room of the package imports which, read
from the code (every ``import`` of every module, at import time or inside functions).

Run: ``.venv/bin/python docs/make_architecture_figure.py [--out PATH]``

Rooms are the subpackages; the shared top-level modules (errors, prompts, polygons, scale,
windows, assets, paths, progress) sit in a band at the bottom that every room may use, and
their arrows are left out. An arrow's width grows with the number of module-to-module
imports it stands for; an arrow that points up would break the layering and is drawn red.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "napari_wsi_sam"
# (column, row) of each room: higher rows may import lower rows only
PLACES = {
    "ui": (1.0, 5), "cli": (3.2, 5),
    "session": (2.1, 4), "serve": (4.2, 4),
    "cohort": (0.6, 3), "evaluation": (3.4, 3),
    "pipeline": (1.4, 2), "train": (3.4, 2),
    "model": (0.2, 1), "slide": (1.5, 1), "store": (2.8, 1), "formats": (4.1, 1),
}
SHARED_ROW = 0


def room_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PLACES else None


def imports_of(path: Path) -> set[str]:
    """Dotted names of the package's modules and packages that `path` imports."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = list(rel[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("napari_wsi_sam"):
                found |= {f"{base}.{a.name}" for a in node.names} if not node.module else {base}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("napari_wsi_sam")}
    return found


def room_edges() -> Counter[tuple[str, str]]:
    edges: Counter[tuple[str, str]] = Counter()
    for path in PACKAGE.rglob("*.py"):
        source = room_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if source is None:
            continue
        for target in imports_of(path):
            room = room_of(target)
            if room is not None and room != source:
                edges[(source, room)] += 1
    return edges


def draw(out: Path) -> None:
    edges = room_edges()
    fig, ax = plt.subplots(figsize=(10, 7.2), dpi=110)
    ax.set_xlim(-0.6, 5.0)
    ax.set_ylim(-0.8, 5.7)
    ax.axis("off")
    box_w, box_h = 0.9, 0.42
    for (src, dst), count in sorted(edges.items()):
        (x0, y0), (x1, y1) = PLACES[src], PLACES[dst]
        upward = y1 > y0
        if y1 == y0:  # side by side: from one box's side to the other's
            side = box_w / 2 if x1 > x0 else -box_w / 2
            start, end = (x0 + side, y0), (x1 - side, y1)
        else:
            start, end = (x0, y0 - box_h / 2), (x1, y1 + box_h / 2)
        arrow = FancyArrowPatch(start, end,
                                arrowstyle="-|>", mutation_scale=12,
                                linewidth=0.6 + 0.35 * min(count, 12) ** 0.5 * 2,
                                color="#c62828" if upward else "#607d8b", alpha=0.75,
                                connectionstyle="arc3,rad=0.06", zorder=1)
        ax.add_patch(arrow)
    for room, (x, y) in PLACES.items():
        ax.add_patch(FancyBboxPatch((x - box_w / 2, y - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0.03", facecolor="#e3f2fd",
                                    edgecolor="#1565c0", linewidth=1.2, zorder=2))
        ax.text(x, y, f"{room}/", ha="center", va="center", fontsize=11, zorder=3)
    shared = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    ax.add_patch(FancyBboxPatch((-0.3, SHARED_ROW - 0.35), 4.9, 0.5, boxstyle="round,pad=0.03",
                                facecolor="#f5f5f5", edgecolor="#9e9e9e", zorder=2))
    ax.text(2.15, SHARED_ROW - 0.1, "shared by every room: " + ", ".join(f"{s}.py" for s in shared),
            ha="center", va="center", fontsize=8.5, zorder=3)
    ax.set_title("napari_wsi_sam: which room imports which (drawn from the code)", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    print(f"wrote {out}: {sum(edges.values())} imports between {len(edges)} pairs of rooms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "images" / "architecture_imports.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
