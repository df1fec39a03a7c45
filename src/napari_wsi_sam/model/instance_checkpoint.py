"""Save and load an instance decoder with what it is: its scale, post-processing and proof.

A torch file ``{"format": "napari-wsi-sam-instance-decoder", "settings": {...},
"state_dict": {...}}`` of plain numbers and strings, so it loads with ``weights_only=True``
(a file holding Python objects is refused, never unpickled). Like a head, a decoder carries the
HR µm/px it learnt at, the LR factor of its context crop, what it segments, the watershed
thresholds tuned for it and its held-out result.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import __version__
from ..errors import WeightsError, one_line
from .instance_decoder import InstanceDecoder, InstanceDecoderConfig
from .instance_watershed import WatershedSettings

logger = logging.getLogger(__name__)

FORMAT = "napari-wsi-sam-instance-decoder"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class InstanceDecoderSettings:
    """What a decoder is and how it was made (written into its file).

    heldout: its measured held-out result (F1@0.5, mean matched IoU, PQ, counts, where), or
    None; train_config: the `InstanceTrainConfig` it was trained with.
    """

    config: InstanceDecoderConfig = field(default_factory=InstanceDecoderConfig)
    watershed: WatershedSettings = field(default_factory=WatershedSettings)
    hr_mpp: float = 0.25
    lr_factor: float = 2.0
    base_model: str = "mobile_sam"
    name: str = ""
    structure: str = "nuclei"
    classes: tuple[str, ...] = ()
    training_data: str = ""
    heldout: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config"] = self.config.to_dict()
        out["watershed"] = self.watershed.to_dict()
        out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> InstanceDecoderSettings:
        values = dict(raw)
        config = InstanceDecoderConfig.from_dict(dict(values.pop("config", None) or {}))
        watershed = WatershedSettings.from_dict(dict(values.pop("watershed", None) or {}))
        known = {f.name for f in fields(cls)} - {"config", "watershed"}
        rest = {k: v for k, v in values.items() if k in known}
        if "classes" in rest:
            rest["classes"] = tuple(rest["classes"])
        return cls(config=config, watershed=watershed, **rest)

    def with_training(self, *, config: InstanceDecoderConfig, hr_mpp: float, lr_factor: float,
                      training_data: str, train_config: dict[str, Any]
                      ) -> InstanceDecoderSettings:
        return replace(self, config=config, hr_mpp=float(hr_mpp), lr_factor=float(lr_factor),
                       training_data=training_data, train_config=train_config)


class LoadedInstanceDecoder(NamedTuple):
    decoder: InstanceDecoder
    settings: InstanceDecoderSettings


def save_instance_decoder(decoder: InstanceDecoder, path: Path, *,
                          settings: InstanceDecoderSettings, **overrides: Any) -> Path:
    """Write `decoder` with `settings` (any field overridden by keyword) to `path`,
    atomically (a temporary file renamed into place)."""
    final = replace(settings, **overrides, config=decoder.config,
                    package_version=__version__, format_version=FORMAT_VERSION)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
    tmp = path.with_name(f".{path.name}.part")
    torch.save({"format": FORMAT, "settings": final.to_dict(), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def is_instance_decoder_file(data: Any) -> bool:
    return isinstance(data, Mapping) and data.get("format") == FORMAT


def load_instance_decoder(path: Path, *, device: str | torch.device = "cpu"
                          ) -> LoadedInstanceDecoder:
    """Read a decoder written by `save_instance_decoder`; `WeightsError` (one line) else."""
    path = Path(path)
    data = read_checkpoint(path)
    if not is_instance_decoder_file(data):
        raise WeightsError(f"{path} is not a napari-wsi-sam instance decoder (no format "
                           f"{FORMAT!r}); train one with `napari-wsi-sam train --task "
                           "instances`")
    raw = dict(data.get("settings") or {})
    if int(raw.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(f"{path} has instance-decoder format {raw['format_version']}, newer "
                           "than this package reads; upgrade napari-wsi-sam")
    try:
        settings = InstanceDecoderSettings.from_dict(raw)
        decoder = InstanceDecoder(settings.config)
        decoder.load_state_dict(dict(data.get("state_dict") or {}), strict=True)
    except (ValueError, TypeError, RuntimeError) as error:
        raise WeightsError(f"{path} does not fit an instance decoder: "
                           f"{one_line(error, 300)}") from error
    return LoadedInstanceDecoder(decoder.eval().requires_grad_(False).to(device), settings)


def read_checkpoint(path: Path) -> Any:
    """A torch file's contents, plain data only; one-line `WeightsError` otherwise."""
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle of Python objects, or a damaged file
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise WeightsError(f"{path} is not a file written by train (it holds Python "
                               "objects, which are never loaded)") from error
        raise WeightsError(f"{path} is not a readable torch checkpoint "
                           f"({one_line(error)})") from error
