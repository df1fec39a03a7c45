"""The model registry: the one place that names the models and the WSI-SAM heads.

Base models (`BASE_MODELS`): ``sam`` (MobileSAM on the HR crop), ``wsi-sam`` (HR and LR crops
with a trained head), ``medsam`` (LiteMedSAM) and ``sam-decoder`` (SAM*, a fine-tuned mask
decoder). Heads come from three places: shipped in the package (``heads/*.pt``), installed in
the cache (``<cache>/heads/*.pt``, `install_head`), or a head file given by path. Every head
carries its settings (`HeadSettings`): its HR µm/px, LR factor, what it learnt and its measured
held-out result against SAM.

A `ModelChoice` is what a user picks: a base model with its head or decoder checkpoint. The
default at each magnification follows the measured rule (`rule_at`): the head that beat SAM
held out at that magnification, else SAM. ``heads/default.json`` records the rule's output for
the shipped heads. The widget, the CLI and ``evaluate`` all read this module; no other module
spells out model names. Importing it does not import torch (head files are read on demand).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import UsageError, WeightsError
from ..paths import cache_home
from ..scale import DEFAULT_HR_MPP, MAGNIFICATIONS, magnification, same_scale, scale_text

if TYPE_CHECKING:
    from .head_checkpoint import HeadSettings

logger = logging.getLogger(__name__)

SHIPPED_HEADS_DIR = Path(__file__).resolve().parent.parent / "heads"
DEFAULT_RULE_FILE = SHIPPED_HEADS_DIR / "default.json"
RULE = ("At each magnification the default is the head that measured best held out there and "
        "beat SAM (mean Dice over the prompt settings at least SAM's, and with boxes too); "
        "an installed head of the user's comes before a shipped one. Where no head has been "
        "measured, or none beat SAM, the default is SAM.")

Checkpoint = Literal["none", "head", "decoder"]
ScoreKind = Literal["predicted_iou", "stability"]
SCORE_NAMES: dict[str, str] = {"predicted_iou": "SAM's predicted IoU",
                               "stability": "stability of the mask logits"}
"""What an object's score measures, by `BaseModel.score_kind` (shown with every score)."""


@dataclass(frozen=True)
class BaseModel:
    """A model family. weights: the SAM variant it runs on (`weights.WEIGHTS_FILES`).

    checkpoint: what it takes besides SAM's weights ("head": a WSI-SAM head; "decoder": a
    fine-tuned SAM mask decoder). box_only: prompts are boxes only. score_kind: what the
    score of its masks is (`SCORE_NAMES`).
    """

    name: str
    weights: str
    summary: str
    checkpoint: Checkpoint = "none"
    box_only: bool = False
    score_kind: ScoreKind = "predicted_iou"

    @property
    def uses_context(self) -> bool:
        """True when the model reads the LR context crop as well as the HR crop."""
        return self.checkpoint == "head"


BASE_MODELS: dict[str, BaseModel] = {m.name: m for m in (
    BaseModel("sam", "mobile_sam", "MobileSAM on the HR crop"),
    BaseModel("wsi-sam", "mobile_sam", "WSI-SAM: MobileSAM on the HR and LR crops with a "
              "trained head", checkpoint="head", score_kind="stability"),
    BaseModel("medsam", "lite_medsam", "LiteMedSAM on the HR crop (boxes only)",
              box_only=True),
    BaseModel("sam-decoder", "mobile_sam", "SAM*: MobileSAM with a fine-tuned mask decoder",
              checkpoint="decoder"),
)}
MODEL_NAMES: tuple[str, ...] = tuple(BASE_MODELS)


@dataclass(frozen=True, eq=False)
class Head:
    """A WSI-SAM head file and its settings. source: "shipped", "installed" or "file"."""

    name: str
    path: Path
    source: str
    settings: HeadSettings

    @property
    def hr_mpp(self) -> float:
        return float(self.settings.hr_mpp)

    @property
    def label(self) -> str:
        """How model lists show it: 'wsi-sam · nuclei · 40x', and ' · joint' after it for a
        head that takes SAM's mask from its HR pass (two decoder passes a prompt)."""
        what = self.settings.structure or self.name
        joint = " · joint" if self.settings.config.sam_mask == "joint" else ""
        return f"wsi-sam · {what} · {magnification(self.hr_mpp)}{joint}"

    @property
    def heldout(self) -> dict[str, Any] | None:
        return self.settings.heldout

    @property
    def beats_sam(self) -> bool:
        return bool(self.heldout and self.heldout.get("beats_baseline"))


@dataclass(frozen=True, eq=False)
class ModelChoice:
    """A base model with its head (wsi-sam) or decoder checkpoint (sam-decoder)."""

    model: str
    head: Head | None = None
    decoder: Path | None = None

    @property
    def base(self) -> BaseModel:
        return BASE_MODELS[self.model]

    @property
    def label(self) -> str:
        if self.head is not None:
            return self.head.label
        if self.decoder is not None:
            return f"sam-decoder · {self.decoder.parent.name or self.decoder.stem}"
        return self.model

    @property
    def spec(self) -> str:
        """Text that `parse_choice` turns back into this choice ('wsi-sam:hgsc_nuclei')."""
        if self.head is not None:
            where = self.head.name if self.head.source != "file" else str(self.head.path)
            return f"wsi-sam:{where}"
        if self.decoder is not None:
            return f"sam-decoder:{self.decoder}"
        return self.model

    @property
    def hr_mpp(self) -> float | None:
        """The HR µm/px the choice was trained at (its head's), None for SAM and MedSAM."""
        return None if self.head is None else self.head.hr_mpp

    @property
    def score_name(self) -> str:
        return SCORE_NAMES[self.base.score_kind]

    def same_as(self, other: ModelChoice) -> bool:
        return self.spec == other.spec


# -------------------------------------------------------------------------------- heads
def installed_heads_dir() -> Path:
    """Where `install_head` puts heads: ``<cache>/heads``."""
    return cache_home() / "heads"


def shipped_heads() -> list[Head]:
    return _heads_in(SHIPPED_HEADS_DIR, "shipped")


def installed_heads() -> list[Head]:
    return _heads_in(installed_heads_dir(), "installed")


def heads() -> list[Head]:
    """Every head the registry knows: the shipped ones, then the installed ones."""
    return [*shipped_heads(), *installed_heads()]


def find_head(name_or_path: str | Path) -> Head:
    """A head by registry name (shipped or installed) or by the path of a head file."""
    text = str(name_or_path).strip()
    known = heads()
    for head in known:
        if head.name == text:
            return head
    path = Path(text).expanduser()
    if path.suffix == ".pt" or path.exists() or "/" in text or "\\" in text:
        if not path.is_file():
            raise WeightsError(f"head file {path} does not exist")
        return _read_head(path.resolve(), "file")
    names = ", ".join(h.name for h in known) or "none"
    raise UsageError(f"unknown head {text!r}; known heads: {names} "
                     "(or give the path of a head .pt file)")


def install_head(path: Path, *, name: str | None = None) -> Head:
    """Copy a head file into the cache so that every model list offers it; returns it."""
    source = _read_head(Path(path).resolve(), "file")
    final = registry_name(name or Path(path).stem)
    if any(h.name == final for h in shipped_heads()):
        raise UsageError(f"{final!r} is the name of a shipped head; install under --name")
    target = installed_heads_dir() / f"{final}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(source.path, tmp)
    tmp.replace(target)
    _read_head_cached.cache_clear()
    logger.info("installed head %s as %s", path, target)
    return _read_head(target, "installed")


def registry_name(text: str) -> str:
    """`text` as a registry name: letters, digits, - _ and . only (one-line error if none)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip()).strip("._")
    if not name:
        raise UsageError(f"{text!r} is not a usable name for a head or decoder; use letters, "
                         "digits, - and _")
    return name


def _heads_in(folder: Path, source: str) -> list[Head]:
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.pt")):
        try:
            out.append(_read_head(path.resolve(), source))
        except WeightsError as error:  # one broken file must not hide the others
            logger.warning("skipping head %s: %s", path, error)
    return out


def _read_head(path: Path, source: str) -> Head:
    stat = path.stat() if path.is_file() else None
    if stat is None:
        raise WeightsError(f"head file {path} does not exist")
    settings = _read_head_cached(str(path), stat.st_mtime_ns, stat.st_size)
    return Head(name=path.stem, path=path, source=source, settings=settings)


@lru_cache(maxsize=64)
def _read_head_cached(path: str, _mtime: int, _size: int) -> HeadSettings:
    from .head_checkpoint import read_head_settings

    return read_head_settings(Path(path))


# -------------------------------------------------------------------------------- choices
def choices() -> list[ModelChoice]:
    """What model lists offer: SAM, MedSAM, and wsi-sam with every known head."""
    return [ModelChoice("sam"), ModelChoice("medsam"),
            *(ModelChoice("wsi-sam", head=h) for h in heads())]


def parse_choice(text: str, *, head: str | Path | None = None) -> ModelChoice:
    """``sam``, ``medsam``, ``wsi-sam[:HEAD]``, ``sam-decoder:CHECKPOINT``; HEAD is a registry
    name or a head file. `head` (the CLI's ``--head``) names the head of a plain ``wsi-sam``.

    ``wsi-sam`` with no head takes the shipped head that measured best held out (the first
    one when none was measured). Unknown names are a `UsageError`.
    """
    name, _, rest = str(text).strip().partition(":")
    name = name.strip()
    if name not in BASE_MODELS:
        raise UsageError(f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}")
    base = BASE_MODELS[name]
    given = rest.strip() or (None if head is None else str(head))
    if rest.strip() and head is not None:
        raise UsageError(f"give the head once: either {text!r} or --head {head}")
    if base.checkpoint == "none":
        if given:
            raise UsageError(f"{name} takes no head or checkpoint (got {given!r})")
        return ModelChoice(name)
    if base.checkpoint == "decoder":
        if not given:
            raise UsageError("sam-decoder needs its checkpoint: sam-decoder:PATH/sam_decoder.pt")
        path = Path(given).expanduser()
        if not path.is_file():
            raise WeightsError(f"SAM* decoder {path} does not exist; train one with "
                               "`napari-wsi-sam train --mode sam-decoder`")
        return ModelChoice(name, decoder=path)
    if given:
        return ModelChoice(name, head=find_head(given))
    shipped = shipped_heads()
    if not shipped:
        raise WeightsError("no WSI-SAM head is shipped with this installation; give one with "
                           "--head PATH or reinstall napari-wsi-sam")
    return ModelChoice(name, head=best_shipped_head(shipped))


def best_shipped_head(shipped: list[Head]) -> Head:
    """The shipped head with the largest held-out gain over SAM among those that beat it;
    the first one when none did."""
    winners = [h for h in shipped if h.beats_sam and h.heldout is not None]
    return max(winners, key=lambda h: _gain(h.heldout or {})) if winners else shipped[0]


@dataclass(frozen=True, eq=False)
class Resolved:
    """What a command runs: the model, the HR µm/px, why (when it was the default), and a
    warning when the head was trained at another magnification."""

    choice: ModelChoice
    hr_mpp: float
    reason: str | None = None
    warning: str | None = None


def resolve(model: str | None = None, *, head: str | Path | None = None,
            hr_mpp: float | None = None) -> Resolved:
    """The CLI's rule for ``--model``, ``--head`` and ``--hr-mpp``: a head implies wsi-sam; the
    scale follows the head unless ``--hr-mpp`` is given; with no model and no head, the
    measured default at the HR µm/px (default 10x)."""
    if model is None and head is None:
        mpp = DEFAULT_HR_MPP if hr_mpp is None else float(hr_mpp)
        choice, reason = default_choice(mpp)
        return Resolved(choice, mpp, reason=reason)
    choice = parse_choice(model or "wsi-sam", head=head)
    mpp = float(hr_mpp) if hr_mpp is not None else (choice.hr_mpp or DEFAULT_HR_MPP)
    return Resolved(choice, mpp, warning=scale_warning(choice, mpp))


def scale_warning(choice: ModelChoice, hr_mpp: float) -> str | None:
    """One line when `choice`'s head was trained at another magnification than `hr_mpp`."""
    trained = choice.hr_mpp
    if trained is None or same_scale(trained, hr_mpp):
        return None
    return (f"the head {choice.head.name} was trained at {scale_text(trained)} but "  # type: ignore[union-attr]
            f"runs at {scale_text(hr_mpp)}; its masks may be worse than SAM's there "
            f"(pick {magnification(trained)} or another model)")


# -------------------------------------------------------------------------------- defaults
@dataclass(frozen=True)
class RuleEntry:
    """The default at one magnification: a model, its head (or None) and why."""

    hr_mpp: float
    model: str
    head: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"hr_mpp": self.hr_mpp, "model": self.model, "head": self.head,
                "reason": self.reason}


def rule_at(known: Iterable[Head], hr_mpp: float) -> RuleEntry:
    """The measured rule at one magnification, over the heads `known`."""
    here = [h for h in known if h.heldout and same_scale(h.hr_mpp, hr_mpp)]
    winners = [h for h in here if h.beats_sam]
    if winners:
        best = max(winners, key=lambda h: (h.source == "installed",
                                           _gain(h.heldout)))  # type: ignore[arg-type]
        return RuleEntry(hr_mpp, "wsi-sam", best.name,
                         f"{best.name}: {best.heldout.get('reason', 'beat SAM held out')}")  # type: ignore[union-attr]
    if here:
        names = ", ".join(h.name for h in here)
        return RuleEntry(hr_mpp, "sam", None,
                         f"the head(s) measured at {scale_text(hr_mpp)} ({names}) did not beat "
                         "SAM held out")
    return RuleEntry(hr_mpp, "sam", None,
                     f"no WSI-SAM head has been measured at {scale_text(hr_mpp)}, so SAM "
                     "(never worse than itself)")


def _gain(heldout: Mapping[str, Any]) -> float:
    return float(heldout.get("candidate_mean", 0.0)) - float(heldout.get("baseline_mean", 0.0))


def default_rule(known: Iterable[Head]) -> dict[str, Any]:
    """The rule's output at every offered magnification (what ``heads/default.json`` holds)."""
    known = list(known)
    return {"rule": RULE,
            "magnifications": {name: rule_at(known, mpp).to_dict()
                               for name, mpp in MAGNIFICATIONS}}


def default_choice(hr_mpp: float) -> tuple[ModelChoice, str]:
    """The default model at `hr_mpp` over every known head, and the reason."""
    known = heads()
    entry = rule_at(known, hr_mpp)
    if entry.model == "wsi-sam":
        head = next(h for h in known if h.name == entry.head)
        return ModelChoice("wsi-sam", head=head), entry.reason
    return ModelChoice("sam"), entry.reason


def recorded_rule() -> dict[str, Any]:
    """``heads/default.json`` as shipped (the rule's output for the shipped heads)."""
    try:
        return json.loads(DEFAULT_RULE_FILE.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{DEFAULT_RULE_FILE} is missing or damaged ({error}); reinstall "
                           "napari-wsi-sam") from error
