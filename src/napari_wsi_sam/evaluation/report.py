"""Paper-shaped tables, a Figure-4-like plot and a Markdown report from per-object Dice records.

Tables follow the paper's layout (Table 1: box prompt, Table 4: one table per number of points)
but every cell also carries its 95% bootstrap interval, so a reader can see which differences
are larger than the noise. Matplotlib is imported only when a figure is drawn, through the Agg
canvas directly, so this module never touches a GUI backend (napari's Qt included).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..spreadsheet import safe_frame
from .stats import (
    ALL_CLASSES,
    class_order,
    points_count,
    prompt_sort_key,
    summarise,
)

MISSING = "\u2013"  # en dash, as in printed tables
_LEADING_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def format_cell(mean: float, low: float, high: float) -> str:
    """Dice as the paper prints it (x100, two decimals) followed by the interval, one decimal."""
    return f"{mean * 100:.2f} [{low * 100:.1f}, {high * 100:.1f}]"


def _models(summary: pd.DataFrame, dataset: str) -> list[str]:
    """Models of a dataset in order of first appearance (summarise keeps the records' order)."""
    return list(pd.unique(summary.loc[summary["dataset"] == dataset, "model"]))


def prompt_table(summary: pd.DataFrame, *, dataset: str, prompt: str) -> pd.DataFrame:
    """One prompt setting as a table: rows models, columns classes (most objects first) then "all".

    Every model of the dataset gets a row, with an en dash where it has no records for the setting
    (MedSAM under point prompts), so the table shows what was not run instead of hiding it.
    A header says the class's object count; a cell whose model saw a different count says so.
    """
    frame = summary[(summary["dataset"] == dataset) & (summary["prompt"] == prompt)]
    models = _models(summary, dataset)
    present = set(frame["class_name"])
    classes = [c for c in class_order(summary, dataset) if c in present]
    if ALL_CLASSES in present:
        classes.append(ALL_CLASSES)
    columns: dict[str, list[str]] = {}
    for class_name in classes:
        rows = frame[frame["class_name"] == class_name].set_index("model")
        n_column = int(rows["n"].max())
        cells = []
        for model in models:
            if model not in rows.index:
                cells.append(MISSING)
                continue
            row = rows.loc[model]
            cell = format_cell(float(row["mean"]), float(row["low"]), float(row["high"]))
            if int(row["n"]) != n_column:
                cell += f" (n={int(row['n'])})"
            cells.append(cell)
        columns[f"{class_name} (n={n_column})"] = cells
    table = pd.DataFrame(columns, index=pd.Index(models, name="model"), dtype=object)
    return table


def box_table(summary: pd.DataFrame, *, dataset: str) -> pd.DataFrame:
    """The paper's Table 1 for one dataset: box prompt, rows models, columns classes + "all"."""
    return prompt_table(summary, dataset=dataset, prompt="box")


def points_tables(summary: pd.DataFrame, *, dataset: str) -> dict[str, pd.DataFrame]:
    """The paper's Table 4 for one dataset: {"points:K": table}, K ascending numerically."""
    prompts = summary.loc[summary["dataset"] == dataset, "prompt"].unique()
    point_prompts = sorted((p for p in prompts if points_count(p) is not None), key=prompt_sort_key)
    return {p: prompt_table(summary, dataset=dataset, prompt=p) for p in point_prompts}


def _escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _leading_number(cell: str) -> float | None:
    match = _LEADING_NUMBER.match(cell)
    return float(match.group(1)) if match else None


def _bold_best(column: list[str]) -> list[str]:
    """Bold the leading mean of every cell that ties for the best; one value has no contest."""
    values = [_leading_number(c) for c in column]
    numbers = [v for v in values if v is not None]
    if len(numbers) < 2:
        return column
    best = max(numbers)
    out = []
    for cell, value in zip(column, values, strict=True):
        if value is not None and value == best:
            head = _LEADING_NUMBER.match(cell)
            assert head is not None
            cell = f"**{head.group(1)}**{cell[head.end() :]}"
        out.append(cell)
    return out


def to_markdown(table: pd.DataFrame, *, bold_best: bool = True) -> str:
    """A GitHub Markdown table (index as the first column), the best mean per column in bold.

    Written by hand so the package needs no ``tabulate``; "|" inside a cell is escaped so every
    row keeps the same number of columns.
    """
    header = [table.index.name or "", *(str(c) for c in table.columns)]
    body_columns = []
    for column in table.columns:
        cells = [MISSING if pd.isna(v) else str(v) for v in table[column]]
        body_columns.append(_bold_best(cells) if bold_best else cells)
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * len(table.columns)) + "|",
    ]
    for i, label in enumerate(table.index):
        cells = [_escape(label), *(_escape(col[i]) for col in body_columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_points(summary: pd.DataFrame, path: str | Path, *, dataset: str | None = None) -> Path:
    """Figure-4-like PNG: Dice x100 against the number of points, one line and 95% band per model.

    Uses the pooled "all" class; the box prompt is not a number of points, so it is left out,
    and so are models without point records (MedSAM). One panel per dataset.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    datasets = [dataset] if dataset is not None else list(pd.unique(summary["dataset"]))
    fig = Figure(figsize=(max(7.0, 4.5 * len(datasets)), 4.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    for ax, name in zip(axes, datasets, strict=True):
        _draw_points_panel(ax, summary, name)
    fig.savefig(path, dpi=150)
    return path


def _draw_points_panel(ax, summary: pd.DataFrame, dataset: str) -> None:
    frame = summary[(summary["dataset"] == dataset) & (summary["class_name"] == ALL_CLASSES)]
    k = frame["prompt"].map(points_count)
    frame = frame.assign(k=k)[k.notna()]
    if frame.empty:
        ax.set_title(f"{dataset}: no point-prompt records")
        ax.set_axis_off()
        return
    frame = frame.assign(k=frame["k"].astype(int))
    for model in pd.unique(frame["model"]):
        rows = frame[frame["model"] == model].sort_values("k")
        x = rows["k"].to_numpy()
        (line,) = ax.plot(x, rows["mean"].to_numpy() * 100, marker="o", label=model)
        ax.fill_between(
            x,
            rows["low"].to_numpy() * 100,
            rows["high"].to_numpy() * 100,
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    ks = np.sort(frame["k"].unique())
    ax.set_xticks(ks)
    ax.set_xlabel("number of points")
    ax.set_ylabel("Dice \u00d7100 (mean, 95% CI)")
    ax.set_title(f"{dataset} (n={int(frame['n'].max())} objects)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("_") or "dataset"


def write_report(
    records: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> Path:
    """Write the records, the summary, both tables, the figure and ``report.md``; return its path.

    Per-dataset files get a ``_<dataset>`` suffix only when there is more than one dataset, so
    the common single-dataset run has the paper's plain names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe_frame(records).to_csv(out / "dice_per_object.csv", index=False)
    summary = summarise(records, n_boot=n_boot, seed=seed)
    safe_frame(summary).to_csv(out / "summary.csv", index=False)
    datasets = list(pd.unique(summary["dataset"]))
    parts = [
        f"# {title}\n",
        f"Mean Dice \u00d7100 over objects, with its 95% percentile-bootstrap interval ({n_boot} "
        f"resamples of the objects, seed {seed}). The best mean per column is in bold; "
        f'{MISSING} means the model was not run with that prompt. "{ALL_CLASSES}" pools every '
        "object of the dataset (object-weighted). Per-object scores: `dice_per_object.csv`; "
        "every number: `summary.csv`.\n",
    ]
    for dataset in datasets:
        suffix = f"_{_safe(dataset)}" if len(datasets) > 1 else ""
        parts.append(_write_dataset(summary, out, dataset, suffix))
    report = out / "report.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    return report


def _write_dataset(summary: pd.DataFrame, out: Path, dataset: str, suffix: str) -> str:
    """Write one dataset's tables and figure; return its section of report.md."""
    frame = summary[summary["dataset"] == dataset]
    n_objects = int(frame.loc[frame["class_name"] == ALL_CLASSES, "n"].max())
    section = [f"## {dataset} ({n_objects} objects)\n", "### Box prompt (Table 1)\n"]

    box = box_table(summary, dataset=dataset)
    box_md = to_markdown(box) if box.shape[1] else "_No box-prompt records._\n"
    (out / f"table1_box{suffix}.md").write_text(box_md, encoding="utf-8")
    safe_frame(box).to_csv(out / f"table1_box{suffix}.csv")
    section.append(box_md)

    section.append("### Point prompts (Table 4)\n")
    points = points_tables(summary, dataset=dataset)
    points_md = "\n".join(
        f"#### {points_count(p)} point{'s' if points_count(p) != 1 else ''}\n\n{to_markdown(t)}"
        for p, t in points.items()
    )
    points_md = points_md or "_No point-prompt records._\n"
    (out / f"table4_points{suffix}.md").write_text(points_md, encoding="utf-8")
    long_points = frame[frame["prompt"].map(points_count).notna()]
    safe_frame(long_points).to_csv(out / f"table4_points{suffix}.csv", index=False)
    section.append(points_md)

    figure = plot_points(summary, out / f"figure4_points{suffix}.png", dataset=dataset)
    section.append(f"![Dice against number of points, {dataset}]({figure.name})\n")

    others = sorted(
        (p for p in frame["prompt"].unique() if p != "box" and points_count(p) is None),
        key=prompt_sort_key,
    )
    if others:
        section.append("### Other prompt settings\n")
        for prompt in others:
            table = prompt_table(summary, dataset=dataset, prompt=prompt)
            section.append(f"#### `{prompt}`\n\n{to_markdown(table)}")
    return "\n".join(section)
