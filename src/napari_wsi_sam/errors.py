"""One error family, so callers (the CLI, the widget) can turn any of them into one clear line.

Each subclass also subclasses the matching built-in, as tifffile and zarr do, so code that
catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class WsiSamError(Exception):
    """Base of every error this package raises on purpose; its message is one line for a user."""


class SlideError(WsiSamError, ValueError):
    """A slide cannot be opened or read: missing, not a slide, corrupt, or unsupported."""


class MppMissingError(SlideError):
    """The slide has no pixel size, and an operation needs one (give it with --mpp / the widget)."""


class PromptError(WsiSamError, ValueError):
    """A prompt is unusable: empty, malformed, or entirely outside the slide."""


class AssetError(WsiSamError, FileNotFoundError):
    """A packaged file (weights, sample data) is missing, corrupt, or could not be fetched."""


class WeightsError(AssetError):
    """Model weights are missing, corrupt or do not fit the model."""


class DeviceError(WsiSamError, ValueError):
    """The requested compute device does not exist on this machine."""


class StoreError(WsiSamError, ValueError):
    """The object store cannot be opened or changed: damaged, read-only, full, locked, or asked
    for an object it does not hold. Nothing in it was changed."""


class LabelStoreError(StoreError):
    """The legacy label store (release 0.1) cannot be read for migration."""


class AnnotationError(WsiSamError, ValueError):
    """Annotations cannot be read, written or converted: not GeoJSON, a bad mask or window."""


class UsageError(WsiSamError, ValueError):
    """A setting or name the user gave is not one this package knows (a model, a head, a range)."""


class ServeError(WsiSamError, ValueError):
    """A request to ``napari-wsi-sam serve`` cannot be answered as asked (HTTP 4xx)."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class TrainingError(WsiSamError, ValueError):
    """Training cannot start or go on: bad settings, no usable objects, a foreign checkpoint."""


class TrainingCancelled(TrainingError):
    """The user stopped a training run; nothing it made is used."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """A foreign error (torch, Pillow, sqlite) as a short reason inside our own message: one
    line, cut to `limit` characters, with its type where the text alone says nothing."""
    text = " ".join(str(error).split())
    if not any(c.isalpha() for c in text):
        text = f"{type(error).__name__} {text}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
