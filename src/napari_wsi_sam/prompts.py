"""A SAM prompt in level-0 slide pixels: an optional box and labelled points. Pure numpy.

Coordinates are continuous level-0 pixel coordinates, x then y, pixel ``i`` covering
``[i, i + 1)`` (so the centre of pixel (col 10, row 20) is (10.5, 20.5)). Boxes are XYXY.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import PromptError

ArrayLike = np.ndarray | list | tuple


@dataclass(frozen=True, eq=False)
class Prompt:
    """One prompt: ``box`` (4,) float XYXY or None, ``points`` (N, 2) float (x, y), ``labels``
    (N,) int with 1 = positive (inside the object) and 0 = negative.

    Arrays are copied, converted and made read-only on construction; invalid input raises
    `PromptError` with one line naming the value. A prompt needs a box or at least one
    positive point.
    """

    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __post_init__(self) -> None:
        box = None if self.box is None else _floats(self.box, "box")
        if box is not None:
            if box.shape != (4,):
                raise PromptError(f"box must be 4 numbers x0 y0 x1 y1, got shape {box.shape}")
            if not (box[2] > box[0] and box[3] > box[1]):
                raise PromptError(f"box {box.tolist()} is empty or inverted; "
                                  "give x0 < x1 and y0 < y1 (XYXY, level-0 px)")
        points = _floats(self.points, "points")
        if points.size == 0:
            points = points.reshape(0, 2)
        if points.ndim != 2 or points.shape[1] != 2:
            raise PromptError(f"points must have shape (N, 2) as x, y; got {points.shape}")
        try:
            labels = np.asarray(self.labels).reshape(-1)
        except (TypeError, ValueError) as err:
            raise PromptError(f"labels must be 0/1 integers, got {self.labels!r}") from err
        if labels.size == 0 and len(points):
            labels = np.ones(len(points), dtype=np.int64)
        if labels.shape != (len(points),):
            raise PromptError(f"{len(points)} points but {labels.size} labels; give one label "
                              "(1 positive, 0 negative) per point")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise PromptError(f"labels must be 1 (positive) or 0 (negative), got "
                              f"{sorted(set(labels.tolist()))}")
        labels = labels.astype(np.int64)
        if box is None and not (labels == 1).any():
            raise PromptError("a prompt needs a box or at least one positive point")
        for value in (box, points, labels):
            if value is not None:
                value.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def from_box(cls, box: ArrayLike) -> Prompt:
        """A box-only prompt, XYXY in level-0 pixels."""
        return cls(box=np.asarray(box, dtype=float))

    @classmethod
    def from_points(cls, points: ArrayLike, labels: ArrayLike | None = None) -> Prompt:
        """Point prompts, (N, 2) x, y; labels default to all positive."""
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels)
        return cls(points=pts, labels=lab)

    def bounds(self) -> np.ndarray:
        """(4,) XYXY bounding box of the box and all points (points may make it zero-sized)."""
        parts = [self.points]
        if self.box is not None:
            parts.append(self.box.reshape(2, 2))
        xy = np.concatenate(parts, axis=0)
        return np.concatenate([xy.min(axis=0), xy.max(axis=0)])

    def center(self) -> np.ndarray:
        """(2,) x, y centre of `bounds`."""
        b = self.bounds()
        return np.array([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])

    def is_outside(self, width: float, height: float) -> bool:
        """True when no part of the prompt lies on a `width` x `height` image (level 0)."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < width and x1 > 0 and y0 < height and y1 > 0:
                return False
        pts = self.points
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
        return not inside.any()

    def transformed(self, xy: Callable[[np.ndarray], np.ndarray]) -> Prompt:
        """The prompt with every coordinate mapped by `xy` ((N, 2) -> (N, 2), monotone in x, y)."""
        box = None
        if self.box is not None:
            box = np.asarray(xy(self.box.reshape(2, 2)), dtype=float).reshape(4)
        points = np.asarray(xy(self.points), dtype=float).reshape(-1, 2) if len(self.points) \
            else self.points
        return Prompt(box=box, points=points, labels=self.labels)

    def to_dict(self) -> dict:
        return {"box": None if self.box is None else self.box.tolist(),
                "points": self.points.tolist(), "labels": self.labels.tolist()}

    def describe(self) -> str:
        """'box [10, 20, 300, 400] and 2 points' for error lines, in level-0 px."""
        parts = []
        if self.box is not None:
            parts.append("box [" + ", ".join(f"{v:g}" for v in self.box.tolist()) + "]")
        if len(self.points):
            parts.append(f"{len(self.points)} point" + ("s" if len(self.points) > 1 else ""))
        return " and ".join(parts)

    def __repr__(self) -> str:
        box = None if self.box is None else [round(v, 2) for v in self.box.tolist()]
        return f"Prompt(box={box}, points={len(self.points)}, positive={int(self.labels.sum())})"


MAX_COORDINATE = 1e8
"""Level-0 pixel coordinates beyond this are no slide's (the largest are about 2e5 px)."""


def _floats(value: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError, OverflowError) as err:
        raise PromptError(f"{name} must be numbers, got {str(value)[:80]}") from err
    if not np.isfinite(arr).all():
        raise PromptError(f"{name} must be finite numbers, got {str(arr.tolist())[:80]}")
    if arr.size and np.abs(arr).max() > MAX_COORDINATE:
        raise PromptError(f"{name} {str(arr.tolist())[:80]} lies beyond any slide: level-0 "
                          f"pixel coordinates are at most ±{MAX_COORDINATE:.0e}")
    return arr
