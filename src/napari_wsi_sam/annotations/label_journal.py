"""The label store's journal: undo blocks, the pending-operation marker, atomic JSON files.

Undo data of one object is one file, ``undo/<id>.npz``: for every chunk the object touched on
every level, the chunk's contents *before* the object was written, Blosc-compressed, under the
key ``"<level>_<chunk row>_<chunk col>"``. It serves both undo (pixels still showing the object
get these values back) and crash recovery (the whole chunk is written back).

The marker ``pending.json`` says which operation was under way (``{"op": "add", "id": 7}`` or
``{"op": "remove", "id": 7}``); it exists only while the levels may be half-written.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Blosc

from ..errors import LabelStoreError

ChunkKey = tuple[int, int, int]
"""(level, chunk row, chunk column)."""

_CODEC = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def write_json(path: Path, payload: Any, *, durable: bool = True) -> None:
    """Write `payload` as JSON to `path` atomically: a temporary file, fsync, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in `path`; LabelStoreError with the path when it is unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise LabelStoreError(f"{path}: cannot read label store file ({err})") from err


def encode_block(block: np.ndarray) -> bytes:
    """Compress one chunk's pixels (any 2-D unsigned array)."""
    return bytes(_CODEC.encode(np.ascontiguousarray(block)))


def decode_block(data: bytes, *, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """The (h, w) array that `encode_block` compressed."""
    out = np.empty(shape, dtype)
    _CODEC.decode(data, out=out)
    return out


class UndoBlocks:
    """Compressed pre-images of the chunks one object touched, keyed by (level, row, col)."""

    def __init__(self, blocks: dict[ChunkKey, bytes] | None = None) -> None:
        self.blocks: dict[ChunkKey, bytes] = dict(blocks or {})

    def __contains__(self, key: ChunkKey) -> bool:
        return key in self.blocks

    def __iter__(self) -> Iterator[ChunkKey]:
        return iter(sorted(self.blocks))

    def keys_on(self, level: int) -> list[tuple[int, int]]:
        """(row, col) of the chunks touched on `level`."""
        return sorted((r, c) for lv, r, c in self.blocks if lv == level)

    def get(self, key: ChunkKey, *, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        return decode_block(self.blocks[key], shape=shape, dtype=dtype)

    def put(self, key: ChunkKey, block: np.ndarray) -> None:
        self.blocks[key] = encode_block(block)

    def save(self, path: Path, *, durable: bool = True) -> None:
        """Write all blocks to `path` (an uncompressed zip of compressed blocks), atomically."""
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for (lv, r, c), data in self.blocks.items():
                zf.writestr(f"{lv}_{r}_{c}", data)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> UndoBlocks:
        """Read the blocks `save` wrote; LabelStoreError naming the file if it is damaged."""
        try:
            with zipfile.ZipFile(path) as zf:
                blocks = {}
                for name in zf.namelist():
                    lv, r, c = (int(v) for v in name.split("_"))
                    blocks[(lv, r, c)] = zf.read(name)
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise LabelStoreError(f"{path}: undo data is unreadable ({err})") from err
        return cls(blocks)
