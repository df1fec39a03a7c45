"""Bootstrap statistics over per-object Dice records. Pure numpy/pandas.

The unit of resampling is the object: the paper reports one mean Dice per (method, class), and
objects differ far more from each other than repeated runs on one object do, so the interval
says how much that mean would move on another draw of objects from the same slides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

RECORD_COLUMNS = ("dataset", "class_name", "object_id", "model", "prompt", "dice")
SUMMARY_COLUMNS = ("dataset", "class_name", "model", "prompt", "n", "mean", "low", "high")
ALL_CLASSES = "all"

_POINTS = re.compile(r"^points:(\d+)$")
# Resample in chunks of at most this many drawn indices, so 10^4 objects x 2000 draws stays small.
_CHUNK_ELEMENTS = 2_000_000


def points_count(prompt: str) -> int | None:
    """K for a ``"points:K"`` prompt, None for anything else (box, or an unknown setting)."""
    match = _POINTS.match(prompt)
    return int(match.group(1)) if match else None


def prompt_sort_key(prompt: str) -> tuple[int, int, str]:
    """Box first, then points by K numerically (so 10 comes after 5), then anything else."""
    if prompt == "box":
        return (0, 0, prompt)
    k = points_count(prompt)
    if k is not None:
        return (1, k, prompt)
    return (2, 0, prompt)


def bootstrap_ci(
    values: Iterable[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap interval.

    One value has no spread to resample, so it gives (v, v, v). Empty or non-finite input
    raises ValueError rather than reporting a silent NaN.
    """
    x = np.asarray(values if hasattr(values, "__len__") else list(values), dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value, got none")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_ci got {int((~np.isfinite(x)).sum())} non-finite value(s)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    mean = float(x.mean())
    n = x.size
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # Clamp so float rounding in the quantile can never put the mean outside its own interval.
    return mean, float(min(low, mean)), float(max(high, mean))


def check_records(records: pd.DataFrame) -> None:
    """Raise ValueError naming the first problem: a missing column, a null, or a bad Dice."""
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; need {list(RECORD_COLUMNS)}")
    for column in RECORD_COLUMNS:
        if records[column].isna().any():
            raise ValueError(f"records column {column!r} has null values")
    dice = records["dice"].to_numpy(dtype=float)
    bad = ~np.isfinite(dice) | (dice < 0.0) | (dice > 1.0)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} dice value(s) outside [0, 1], e.g. {dice[bad][0]}")


def _per_object(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, class, object, model, prompt); repeats of a row are averaged so
    that an object counted twice does not get twice the weight in the bootstrap."""
    keys = ["dataset", "class_name", "object_id", "model", "prompt"]
    return records.groupby(keys, sort=False, as_index=False)["dice"].mean()


def _order(values: Sequence[str] | pd.Series) -> dict[str, int]:
    """Rank of each distinct value by first appearance."""
    return {v: i for i, v in enumerate(pd.unique(pd.Series(values)))}


def class_order(records_or_summary: pd.DataFrame, dataset: str) -> list[str]:
    """Classes of one dataset, most objects first then by name; never includes "all".

    Works on records (counts distinct objects) and on a summary (largest n of the class).
    """
    frame = records_or_summary[records_or_summary["dataset"] == dataset]
    frame = frame[frame["class_name"] != ALL_CLASSES]
    if "object_id" in frame.columns:
        counts = frame.groupby("class_name")["object_id"].nunique()
    else:
        counts = frame.groupby("class_name")["n"].max()
    return sorted(counts.index, key=lambda c: (-int(counts[c]), str(c)))


def summarise(records: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean Dice with a bootstrap interval per (dataset, class, model, prompt), plus "all".

    The "all" rows pool every object of the dataset, so they are object-weighted (not the mean
    of class means). Rows come ordered by dataset, then model in order of first appearance in
    ``records`` (the table order), then class (largest first, "all" last), then prompt.
    """
    check_records(records)
    per_object = _per_object(records)
    rows: list[dict[str, object]] = []
    group_keys = ["dataset", "class_name", "model", "prompt"]
    for (dataset, class_name, model, prompt), group in per_object.groupby(group_keys, sort=False):
        mean, low, high = bootstrap_ci(group["dice"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append(_summary_row(dataset, class_name, model, prompt, len(group), mean, low, high))
    for (dataset, model, prompt), group in per_object.groupby(
        ["dataset", "model", "prompt"], sort=False
    ):
        mean, low, high = bootstrap_ci(group["dice"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append(_summary_row(dataset, ALL_CLASSES, model, prompt, len(group), mean, low, high))
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return _sort_summary(summary, records)


def _summary_row(
    dataset: str,
    class_name: str,
    model: str,
    prompt: str,
    n: int,
    mean: float,
    low: float,
    high: float,
) -> dict[str, object]:
    return {
        "dataset": dataset,
        "class_name": class_name,
        "model": model,
        "prompt": prompt,
        "n": int(n),
        "mean": mean,
        "low": low,
        "high": high,
    }


def _sort_summary(summary: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    dataset_rank = _order(records["dataset"])
    model_rank = _order(records["model"])
    class_rank: dict[tuple[str, str], int] = {}
    for dataset in dataset_rank:
        for i, name in enumerate(class_order(records, dataset)):
            class_rank[(dataset, name)] = i
    keys = [
        (
            dataset_rank[d],
            model_rank[m],
            class_rank.get((d, c), len(class_rank)),
            prompt_sort_key(p),
        )
        for d, m, c, p in zip(
            summary["dataset"],
            summary["model"],
            summary["class_name"],
            summary["prompt"],
            strict=True,
        )
    ]
    order = sorted(range(len(summary)), key=keys.__getitem__)
    return summary.iloc[order].reset_index(drop=True)


def paired_difference(
    records: pd.DataFrame,
    model_a: str,
    model_b: str,
    *,
    prompt: str,
    dataset: str,
    class_name: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """(mean of a - b, low, high, n) over the objects both models were scored on.

    Pairing removes the object-to-object spread that both models share, so this interval is
    much tighter than comparing two marginal intervals; a ``low`` above 0 means a beats b.
    ``class_name=None`` pools every class of the dataset.
    """
    check_records(records)
    per_object = _per_object(records)
    sel = (per_object["dataset"] == dataset) & (per_object["prompt"] == prompt)
    if class_name is not None and class_name != ALL_CLASSES:
        sel &= per_object["class_name"] == class_name
    frame = per_object[sel]
    keys = ["class_name", "object_id"]
    a = frame[frame["model"] == model_a][[*keys, "dice"]]
    b = frame[frame["model"] == model_b][[*keys, "dice"]]
    paired = a.merge(b, on=keys, suffixes=("_a", "_b"))
    if paired.empty:
        raise ValueError(
            f"no object of dataset {dataset!r} has {prompt!r} records for both "
            f"{model_a!r} and {model_b!r}"
        )
    diff = paired["dice_a"].to_numpy() - paired["dice_b"].to_numpy()
    mean, low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return mean, low, high, len(diff)
