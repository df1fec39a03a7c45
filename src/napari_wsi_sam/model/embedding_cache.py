"""A least-recently-used cache of image encoder outputs, bounded in bytes.

Keys are any hashables the caller picks; the pipeline uses (slide path, crop centre, mpp) so
that every prompt on a crop it has seen costs the decoder alone. One MobileSAM crop costs
6.5 MiB in float32 (256x64x64 embedding + 160x64x64 early feature), half that in float16.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 2**20
"""Default bound: 512 MiB, about 78 float32 crops (39 HR/LR pairs)."""


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in `value` (a tensor or a tuple/list of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


class EmbeddingCache:
    """LRU mapping key -> tensors, holding at most `max_bytes` (0 disables caching).

    A value larger than the bound is not kept. Thread-safe. ``hits`` and ``misses`` count
    lookups, for tests and the benchmark.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def get(self, key: Hashable) -> Any | None:
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Store `value`, evicting the least recently used entries to stay within the bound."""
        size = nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                logger.debug("not caching %r: %d bytes > bound %d", key, size, self.max_bytes)
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def discard(self, predicate: Any) -> int:
        """Drop every entry whose key satisfies ``predicate(key)``; returns how many."""
        with self._lock:
            doomed = [k for k in self._items if predicate(k)]
            for key in doomed:
                self._bytes -= self._items.pop(key)[1]
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def map_values(self, fn: Any) -> None:
        """Replace every value by ``fn(value)`` (e.g. move tensors to another device)."""
        with self._lock:
            for key, (value, _) in list(self._items.items()):
                new = fn(value)
                self._items[key] = (new, nbytes(new))
            self._bytes = sum(size for _, size in self._items.values())
