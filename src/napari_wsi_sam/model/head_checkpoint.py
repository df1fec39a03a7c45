"""Save and load a WSI-SAM head alone (~3.6 MB), and import the WSI-SAM authors' checkpoints.

Our format: a torch file holding ``{"format": "napari-wsi-sam-head", "settings": {...},
"state_dict": {...}}``; settings are plain numbers and strings (`HeadSettings`), so the file
loads with ``torch.load(map_location="cpu", weights_only=True)``.

The authors' code (HQ-SAM style) saves one decoder per resolution, ``net_high.pth`` and
``net_low.pth``, each a dict whose ``"model"`` entry is the state dict of a whole mask decoder:
SAM's frozen decoder weights plus the new ones, named ``hf_token``, ``hf_mlp``,
``compress_vit_feat``, ``embedding_encoder`` and ``embedding_maskfeature``. `reference_filter_fn`
maps those names onto ours (table in docs/model.md) and drops SAM's frozen weights.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import __version__
from ..errors import UsageError, WeightsError, one_line
from ..scale import DEFAULT_HR_MPP, LR_FACTOR
from .wsi_sam import HeadConfig, WsiSamHead

logger = logging.getLogger(__name__)

FORMAT = "napari-wsi-sam-head"
FORMAT_VERSION = 2
"""2: settings nest the `HeadConfig` and carry the head's structure, classes and held-out
result; files of format 1 still load."""


@dataclass(frozen=True)
class HeadSettings:
    """What a head is, the scale it works at and how it was made; written into every head file.

    config: what the head computes (`wsi_sam.HeadConfig`: aggregation, SAM mask source).
    lam: λ of the loss λ·L_HR + (1-λ)·L_LR. hr_mpp: HR pixel size in µm/px the head was
    trained at (its magnification); lr_factor: LR pixel size / HR. base_model: the SAM variant
    under it. name: short name in the registry (default: the file's stem). structure: what it
    segments, in a word ("nuclei", "glands"), shown in model lists. classes: the annotation
    classes it learnt from. training_data: free text (data, split, epochs). heldout: its
    measured held-out comparison with SAM (`evaluation.decision.decide`), or None.
    trained_objects: image name -> the ids of the objects it trained on, when known.
    """

    config: HeadConfig = field(default_factory=HeadConfig)
    lam: float = 0.5
    hr_mpp: float = DEFAULT_HR_MPP
    lr_factor: float = LR_FACTOR
    base_model: str = "mobile_sam"
    name: str = ""
    structure: str = ""
    classes: tuple[str, ...] = ()
    training_data: str = ""
    heldout: dict[str, Any] | None = None
    trained_objects: dict[str, list[int]] | None = None
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, strings, lists and dicts (what ``weights_only`` loading allows)."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> HeadSettings:
        """Settings from `to_dict`, or from a format-1 file (config fields at the top level)."""
        values = dict(raw)
        config = values.pop("config", None)
        if not isinstance(config, Mapping):
            config = {k: values[k] for k in ("aggregation", "sam_mask") if k in values}
        known = {f.name for f in fields(cls)} - {"config"}
        kept = {k: v for k, v in values.items() if k in known}
        if "classes" in kept:
            kept["classes"] = tuple(str(c) for c in kept["classes"] or ())
        try:
            return cls(config=HeadConfig(**{k: v for k, v in config.items()
                                            if k in ("aggregation", "sam_mask")}), **kept)
        except (TypeError, ValueError) as error:
            raise WeightsError(f"head settings are damaged ({error})") from error


class LoadedHead(NamedTuple):
    head: WsiSamHead
    settings: HeadSettings


def save_head(head: WsiSamHead, path: Path, *, settings: HeadSettings | None = None,
              **overrides: Any) -> Path:
    """Write `head` and its settings to `path`; the `HeadConfig` comes from the head itself.

    overrides: any other `HeadSettings` field (lam=, hr_mpp=, structure=, heldout=, ...).
    """
    base = settings or HeadSettings()
    known = {f.name for f in fields(HeadSettings)} - {"config"}
    unknown = set(overrides) - known
    if unknown:
        raise UsageError(f"unknown head settings {sorted(unknown)}; known: {sorted(known)}")
    if "classes" in overrides:
        overrides["classes"] = tuple(overrides["classes"])
    final = replace(base, **overrides, config=head.config, package_version=__version__,
                    format_version=FORMAT_VERSION)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    tmp = path.with_name(f".{path.name}.part")
    torch.save({"format": FORMAT, "settings": final.to_dict(), "state_dict": state}, tmp)
    tmp.replace(path)
    logger.info("saved WSI-SAM head (%s) to %s", final.config.aggregation, path)
    return path


def load_head(path: Path, *, device: str | torch.device = "cpu") -> LoadedHead:
    """Read a head written by `save_head`; raises `WeightsError` naming the problem."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a napari-wsi-sam head checkpoint (no format "
                           f"{FORMAT!r}); for the WSI-SAM authors' net_high.pth/net_low.pth "
                           "use import_reference_heads")
    raw = dict(data.get("settings") or {})
    version = raw.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise WeightsError(f"{path} has head format {version}, newer than this package reads "
                           f"({FORMAT_VERSION}); upgrade napari-wsi-sam")
    settings = HeadSettings.from_dict(raw)
    head = _build(settings, data.get("state_dict") or {}, source=str(path))
    return LoadedHead(head.to(device), settings)


def read_head_settings(path: Path) -> HeadSettings:
    """The settings of a head file, checked to fit a head (for listing heads)."""
    return load_head(path).settings


# The authors' per-resolution names -> ours (after the "hr."/"lr." prefix).
_REFERENCE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^hf_token\.weight$"), "token.weight"),
    (re.compile(r"^hf_mlp\.layers\.(\d)\.(weight|bias)$"), r"hypernet.layers.\1.\2"),
    (re.compile(r"^embedding_encoder\.(\d)\.(weight|bias)$"), r"fusion.final.\1.\2"),
    (re.compile(r"^compress_vit_feat\.(\d)\.(weight|bias)$"), r"fusion.early.\1.\2"),
    (re.compile(r"^embedding_maskfeature\.(\d)\.(weight|bias)$"), r"fusion.mask.\1.\2"),
)
_SAM_DECODER = re.compile(r"^(transformer|iou_token|mask_tokens|output_upscaling|"
                          r"output_hypernetworks_mlps|iou_prediction_head)\.")


def reference_filter_fn(high: Mapping[str, Tensor], low: Mapping[str, Tensor]
                        ) -> tuple[dict[str, Tensor], list[str]]:
    """The authors' ``net_high`` and ``net_low`` state dicts -> our head's state dict.

    A ``module.`` prefix (DataParallel) is removed; SAM's frozen decoder weights are dropped.
    Returns (mapped state dict, dropped keys). Raises `WeightsError` on an unknown key.
    """
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for role, state in (("hr", high), ("lr", low)):
        for key, value in state.items():
            name = key.removeprefix("module.")
            if _SAM_DECODER.match(name):
                dropped.append(f"{role}:{key}")
                continue
            for pattern, target in _REFERENCE_RULES:
                if pattern.match(name):
                    mapped[f"{role}.{pattern.sub(target, name)}"] = value
                    break
            else:
                raise WeightsError(f"unexpected key {key!r} in the WSI-SAM {role.upper()} "
                                   "checkpoint; is it an HQ-SAM/WSI-SAM decoder?")
    return mapped, dropped


def import_reference_heads(
    high: Path | Mapping[str, Any],
    low: Path | Mapping[str, Any],
    *,
    aggregation: str = "sum",
    sam_mask: str = "joint",
    settings: HeadSettings | None = None,
) -> LoadedHead:
    """Build a head from the authors' ``net_high.pth`` and ``net_low.pth`` (paths or loaded).

    Defaults reproduce their inference: tokens summed, SAM's mask from the joint HR pass
    (`wsi_sam.HeadConfig`). Choose aggregation="average" to follow the paper instead.
    """
    states = []
    for item in (high, low):
        data = _read(Path(item)) if isinstance(item, (str, Path)) else item
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
            data = data["model"]
        if not isinstance(data, Mapping):
            raise WeightsError(f"{item!r} holds no state dict (expected a dict with 'model')")
        states.append(data)
    mapped, dropped = reference_filter_fn(states[0], states[1])
    logger.debug("dropped %d frozen SAM decoder tensors from the reference heads", len(dropped))
    base = settings or HeadSettings(training_data="WSI-SAM authors' checkpoint (CATCH)",
                                    structure="regions", name="wsi-sam-authors")
    final = replace(base, config=HeadConfig(aggregation=aggregation,  # type: ignore[arg-type]
                                            sam_mask=sam_mask))  # type: ignore[arg-type]
    return LoadedHead(_build(final, mapped, source="WSI-SAM reference checkpoints"), final)


def _build(settings: HeadSettings, state: Mapping[str, Tensor], *, source: str) -> WsiSamHead:
    try:
        head = WsiSamHead(settings.config, zero_init=False)
    except ValueError as error:
        raise WeightsError(f"{source}: {error}") from error
    try:
        head.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        detail = one_line(error, 300)
        raise WeightsError(f"{source} does not fit a WSI-SAM head: {detail}") from error
    return head.eval()


MAX_UNPACKED_BYTES = 512 * 2**20
"""A head is ~3.6 MB; an archive that unpacks to more than this is refused unread."""
MAX_RATIO = 200
"""Weights hardly compress; a member packed tighter than this is a zip bomb."""


def _read(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"head checkpoint {path} does not exist")
    if zipfile.is_zipfile(path):
        check_archive(path)
    try:
        with warnings.catch_warnings():  # torch's warning would show a source line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged pickle can raise anything
        objects = "unsupported global" in str(error).lower()  # a class or function to call
        if isinstance(error, pickle.UnpicklingError) and objects:
            raise WeightsError(f"{path} is not a head written by train (it holds Python "
                               "objects, which are never loaded)") from None
        reason = one_line(error)
        raise WeightsError(f"{path} is not a readable torch checkpoint ({reason})") from error


def check_archive(path: Path) -> None:
    """Refuse a torch zip archive whose members climb out of it (``../``, absolute names) or
    that unpacks to far more than a head (declared sizes, read from its directory alone)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable torch checkpoint ({one_line(error)})"
                           ) from None
    total = 0
    for member in members:
        name = member.filename.replace("\\", "/")
        if name.startswith("/") or ".." in name.split("/") or re.match(r"^[A-Za-z]:", name):
            raise WeightsError(f"{path} is not a head written by train (its member "
                               f"{member.filename!r} points outside the archive)")
        total += member.file_size
        packed = max(member.compress_size, 1)
        if total > MAX_UNPACKED_BYTES or (member.file_size > 2**20
                                          and member.file_size / packed > MAX_RATIO):
            raise WeightsError(f"{path} is not a head written by train (it would unpack to "
                               f"{total / 2**20:.0f}+ MB, a zip bomb); nothing was extracted")
