"""samapi's model vocabulary (``type``, ``checkpoint_url``, registered weights) mapped onto
the model registry.

Every model here runs on MobileSAM, samapi's ``vit_t``. So ``GET /sam/weights/?type=vit_t``
lists the registry's choices (``sam``, ``medsam``, ``wsi-sam`` with each head) as weights
whose ``url`` is ``napari-wsi-sam:<spec>``; the extension sends the chosen one back as
``checkpoint_url``. ``type`` may also name a registry model directly (``sam``, ``wsi-sam``,
``medsam``), for scripts. Registering weights (``POST /sam/weights/``) installs a WSI-SAM head
file, as ``napari-wsi-sam heads install`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ServeError, WsiSamError
from ..model.registry import (
    MODEL_NAMES,
    ModelChoice,
    choices,
    default_choice,
    install_head,
    parse_choice,
)
from ..scale import DEFAULT_HR_MPP

SAMAPI_TYPE = "vit_t"
"""samapi's name for MobileSAM, the encoder under every model served here."""
URL_SCHEME = "napari-wsi-sam:"
SAMAPI_TYPES = ("vit_h", "vit_l", "vit_b", "vit_t", "sam2_l", "sam2_bp", "sam2_s", "sam2_t",
                "sam3")


@dataclass(frozen=True)
class Chosen:
    """The model a request runs, at which HR µm/px, and why it is not the one asked for."""

    choice: ModelChoice
    hr_mpp: float
    note: str | None = None


def weights_list(kind: str | None) -> list[dict[str, str]]:
    """samapi's weights listing: {type, name, url} per registry choice, for vit_t (or all)."""
    if kind is not None and kind != SAMAPI_TYPE and kind not in MODEL_NAMES:
        if kind not in SAMAPI_TYPES:
            raise ServeError(f"unknown model type {kind!r}; this server lists {SAMAPI_TYPE}")
        return []
    return [{"type": SAMAPI_TYPE, "name": c.label, "url": URL_SCHEME + c.spec}
            for c in choices() if kind in (None, SAMAPI_TYPE, c.model)]


def choose(kind: str | None, checkpoint_url: str | None, *, on_slide: bool) -> Chosen:
    """The model for a request's ``type`` and ``checkpoint_url``; on the sent image alone a
    model that needs the slide's context gives way to SAM, and says so."""
    kind = (kind or SAMAPI_TYPE).strip()
    if kind not in MODEL_NAMES and kind != SAMAPI_TYPE:
        if kind in SAMAPI_TYPES:
            raise ServeError(f"model type {kind!r} is not served here: every model of "
                             f"napari-wsi-sam runs on MobileSAM; choose '{SAMAPI_TYPE} "
                             "(mobile)' in the extension, then a weight from its list")
        raise ServeError(f"unknown model type {kind!r}; use {SAMAPI_TYPE} or one of "
                         "sam, wsi-sam, medsam")
    url = (checkpoint_url or "").strip()
    try:
        if url.startswith(URL_SCHEME):
            choice = parse_choice(url[len(URL_SCHEME):])
        elif url:
            raise ServeError(f"unknown checkpoint_url {url[:120]!r}; pick a weight listed by "
                             f"GET /sam/weights/?type={SAMAPI_TYPE}")
        elif kind in MODEL_NAMES:
            choice = parse_choice(kind)
        elif on_slide:
            choice = default_choice(DEFAULT_HR_MPP)[0]
        else:
            choice = ModelChoice("sam")
    except ServeError:
        raise
    except WsiSamError as error:
        raise ServeError(str(error)) from error
    if choice.model == "sam-decoder":
        raise ServeError("sam-decoder is not served; pick sam, medsam or a wsi-sam head")
    if choice.base.uses_context and not on_slide:
        return Chosen(ModelChoice("sam"), DEFAULT_HR_MPP,
                      note=f"{choice.label} needs the slide's 5x context; ran sam instead")
    return Chosen(choice, choice.hr_mpp or DEFAULT_HR_MPP)


def register_weights(kind: str, name: str, url: str) -> str:
    """Install the head file at `url` (a path or file:// URL on the server's machine) under
    `name`; samapi's plain-text answer."""
    if kind != SAMAPI_TYPE and kind != "wsi-sam":
        raise ServeError(f"weights of type {kind!r} cannot be registered here: only WSI-SAM "
                         f"heads (type {SAMAPI_TYPE} or wsi-sam) can")
    parsed = urlparse(url.strip())
    if parsed.scheme in ("http", "https", "ftp"):
        raise ServeError("this server does not download weights: copy the head .pt file to "
                         "the server's machine and register its path")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else url.strip()).expanduser()
    if not path.is_file():
        raise ServeError(f"head file {str(path)[:200]} does not exist on the server's machine",
                         status=404)
    known = {w["name"] for w in weights_list(None)} | {c.spec for c in choices()}
    if name in known or f"wsi-sam:{name}" in known:
        return f"Model file with the name '{name}' already exists. Skip registration."
    try:
        head = install_head(path, name=name)
    except WsiSamError as error:
        raise ServeError(str(error)) from error
    return f"{head.name} ({url}) is registered as {URL_SCHEME}wsi-sam:{head.name}."
