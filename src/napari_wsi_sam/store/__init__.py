"""The object store: a slide's objects in SQLite (the truth), their hierarchy and history, and
the label pyramids drawn from them. Never imports torch or napari."""

from __future__ import annotations

from .files import default_folder, open_store
from .object_store import Change, NewObject, ObjectStore, StoredObject
from .rendering import ObjectRasters

__all__ = ["Change", "NewObject", "ObjectRasters", "ObjectStore", "StoredObject",
           "default_folder", "open_store"]
