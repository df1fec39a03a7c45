"""The objects every format reads and writes: `AnnotationObject` (one outline in level-0 px
with its class, colour and properties) and `ImportResult` (what a reader kept and skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shapely.geometry import MultiPolygon, Polygon

from ..errors import AnnotationError
from ..polygons import Areal

RGB = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class AnnotationObject:
    """One annotated object.

    id : a positive int, unique within a set of objects (the label value in a labels layer).
    geometry : Polygon or MultiPolygon (holes allowed), level-0 px (x, y).
    class_name : its classification, or None when unclassified.
    color : (r, g, b) 0..255 of the classification, or None.
    properties : anything else: ``model`` (str), ``score`` (float), ``measurements``, ...
    object_type : QuPath's object type, "annotation" (default) or "detection" (or what a file
        read from QuPath says, e.g. "cell").
    """

    id: int
    geometry: Areal
    class_name: str | None = None
    color: RGB | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    object_type: str = "annotation"

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise AnnotationError(f"object id must be an int, got {self.id!r}")
        if not isinstance(self.geometry, Polygon | MultiPolygon):
            raise AnnotationError(f"object {self.id}: geometry must be a Polygon or "
                                  f"MultiPolygon, got {type(self.geometry).__name__}")
        if self.color is not None:
            object.__setattr__(self, "color", as_rgb_triple(self.color, f"object {self.id}"))
        object.__setattr__(self, "properties", dict(self.properties))

    @property
    def model(self) -> str | None:
        """The model that made this object (``properties["model"]``), if known."""
        value = self.properties.get("model")
        return None if value is None else str(value)

    @property
    def score(self) -> float | None:
        """The model's confidence (``properties["score"]``), if known."""
        value = self.properties.get("score")
        return None if value is None else float(value)


@dataclass(frozen=True)
class ImportResult:
    """What a reader found: the objects kept, and one line per Feature it skipped."""

    objects: list[AnnotationObject]
    skipped: list[str]


def as_rgb_triple(value: Any, what: str) -> RGB:
    """`value` as (r, g, b) ints 0..255, or a one-line error naming `what`."""
    try:
        r, g, b = (int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"{what}: colour must be (r, g, b) ints, got {value!r}") from err
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise AnnotationError(f"{what}: colour values must be 0..255, got {value!r}")
    return r, g, b
