"""The instance decoders the package knows: shipped, installed, or a file given by path.

Shipped decoders live in the package (``heads/instances/*.pt``), installed ones in
``<cache>/instance_decoders/*.pt`` (`install_instance_decoder`, what ``train --task instances
--install`` does). Each carries its scale and held-out result (`InstanceDecoderSettings`). The
default at a magnification is the decoder with the best held-out PQ there, an installed one
before a shipped one at equal PQ; Segment all uses it unless told otherwise. Importing this
module does not import torch.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, WeightsError
from ..paths import cache_home
from ..scale import same_scale, scale_text
from .registry import registry_name

if TYPE_CHECKING:
    from .instance_checkpoint import InstanceDecoderSettings

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "heads" / "instances"


@dataclass(frozen=True)
class InstanceDecoderEntry:
    """A decoder file the registry lists: name, path, where it came from and its settings."""

    name: str
    path: Path
    source: str
    settings: InstanceDecoderSettings

    @property
    def hr_mpp(self) -> float:
        return float(self.settings.hr_mpp)

    @property
    def heldout(self) -> dict[str, Any] | None:
        return self.settings.heldout

    @property
    def heldout_pq(self) -> float | None:
        heldout = self.heldout or {}
        value = heldout.get("pq")
        return float(value) if isinstance(value, (int, float)) else None

    def summary(self) -> str:
        what = self.settings.structure or "objects"
        held = self.heldout or {}
        if "pq" in held:
            proof = (f"held out on {held.get('data', 'its held-out data')}: F1 "
                     f"{held.get('f1', float('nan')):.2f}, PQ {held['pq']:.2f}")
        else:
            proof = "not measured held out"
        return f"{what} at {scale_text(self.hr_mpp)}, {proof}"


def installed_dir() -> Path:
    return cache_home() / "instance_decoders"


def instance_decoders() -> list[InstanceDecoderEntry]:
    """Every decoder known: the shipped ones, then the installed ones."""
    return [*_entries_in(SHIPPED_DIR, "shipped"), *_entries_in(installed_dir(), "installed")]


def find_instance_decoder(name_or_path: str | Path) -> InstanceDecoderEntry:
    """A decoder by registry name or by the path of a decoder file (one-line errors)."""
    text = str(name_or_path).strip()
    known = instance_decoders()
    for entry in reversed(known):  # an installed decoder of the same name wins
        if entry.name == text:
            return entry
    path = Path(text).expanduser()
    if path.suffix == ".pt" or path.exists() or "/" in text or "\\" in text:
        if not path.is_file():
            raise WeightsError(f"instance decoder file {path} does not exist")
        return _entry(path.resolve(), "file")
    names = ", ".join(e.name for e in known) or "none"
    raise UsageError(f"unknown instance decoder {text!r}; known: {names} (or give the path "
                     "of a decoder .pt file written by `train --task instances`)")


def default_instance_decoder(hr_mpp: float | None = None) -> InstanceDecoderEntry | None:
    """The decoder with the best held-out PQ at `hr_mpp` (None: at any scale), installed
    before shipped at equal PQ; None when no decoder suits."""
    known = [e for e in instance_decoders()
             if hr_mpp is None or same_scale(e.hr_mpp, hr_mpp)]
    if not known:
        return None
    ranked = sorted(enumerate(known), key=lambda item: (
        item[1].heldout_pq if item[1].heldout_pq is not None else -1.0,
        item[1].source == "installed", item[0]))
    return ranked[-1][1]


def install_instance_decoder(path: Path, *, name: str | None = None) -> InstanceDecoderEntry:
    """Copy a decoder file into the cache (checked first, renamed into place)."""
    source = _entry(Path(path).resolve(), "file")
    final = registry_name(name or source.settings.name or Path(path).stem)
    target = installed_dir() / f"{final}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(source.path, tmp)
    tmp.replace(target)
    _settings_cached.cache_clear()
    return _entry(target, "installed")


def _entries_in(folder: Path, source: str) -> list[InstanceDecoderEntry]:
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.pt")):
        if path.name.startswith("."):
            continue
        try:
            out.append(_entry(path.resolve(), source))
        except WeightsError as error:  # one broken file must not hide the others
            logger.warning("skipping instance decoder %s: %s", path, error)
    return out


def _entry(path: Path, source: str) -> InstanceDecoderEntry:
    if not path.is_file():
        raise WeightsError(f"instance decoder file {path} does not exist")
    stat = path.stat()
    settings = _settings_cached(str(path), stat.st_mtime_ns, stat.st_size)
    return InstanceDecoderEntry(settings.name or path.stem, path, source, settings)


@lru_cache(maxsize=32)
def _settings_cached(path: str, _mtime: int, _size: int) -> InstanceDecoderSettings:
    from .instance_checkpoint import load_instance_decoder

    return load_instance_decoder(Path(path)).settings
