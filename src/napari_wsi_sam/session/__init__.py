"""Annotating a slide without Qt: `AnnotationSession` and the requests it runs."""

from .annotation_session import AnnotationSession
from .classes import DEFAULT_CLASSES, ClassRegistry
from .requests import (
    BatchRequest,
    BoxRequest,
    DeleteRequest,
    ImportRequest,
    Outcome,
    PointRequest,
    ReclassRequest,
    Request,
    SegmentAllRequest,
    SyncRequest,
    UndoRequest,
)

__all__ = ["DEFAULT_CLASSES", "AnnotationSession", "BatchRequest", "BoxRequest",
           "ClassRegistry", "DeleteRequest", "ImportRequest", "Outcome", "PointRequest",
           "ReclassRequest", "Request", "SegmentAllRequest", "SyncRequest",
           "UndoRequest"]
