"""The classes a session offers: a few defaults, plus every class stored with the slide.

A class's colour belongs to the class (as in QuPath), kept in the store's ``classes`` table;
a class is written there when it is first used or its colour is changed.
"""

from __future__ import annotations

from ..errors import UsageError
from ..store.colors import DEFAULT_CLASSES, EXTRA_COLORS, as_hex
from ..store.object_store import ObjectStore

__all__ = ["DEFAULT_CLASSES", "ClassRegistry"]


class ClassRegistry:
    """Class name -> '#rrggbb', defaults first, then the store's own, then new ones."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._colors = {**DEFAULT_CLASSES, **store.classes()}

    def names(self) -> list[str]:
        return list(self._colors)

    def color(self, name: str) -> str:
        return self._colors.get(name, EXTRA_COLORS[0])

    def __contains__(self, name: object) -> bool:
        return name in self._colors

    def add(self, name: str, color: object | None = None) -> str:
        """A new class (or the existing one of that name); returns its name."""
        name = str(name).strip()
        if not name:
            raise UsageError("a class needs a name: type one, then press Enter")
        if name not in self._colors:
            self._colors[name] = as_hex(color) if color is not None else EXTRA_COLORS[
                len(self._colors) % len(EXTRA_COLORS)]
        return name

    def set_color(self, name: str, color: object) -> None:
        """Change a class's colour; stored at once when the store has the class."""
        name = self.add(name)
        self._colors[name] = as_hex(color)
        if name in self._store.classes() and not self._store.read_only:
            self._store.set_class(name, self._colors[name])

    def ensure_stored(self, name: str) -> None:
        """Write the class and its colour before objects of it are stored."""
        name = self.add(name)
        if name not in self._store.classes():
            self._store.set_class(name, self._colors[name])

    def reload(self) -> None:
        """Take in classes another viewer or process stored."""
        self._colors.update(self._store.classes())
