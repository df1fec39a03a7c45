"""`CropMap`: the exact affine map between a crop's pixels and level-0 slide pixels.

Continuous coordinates, x then y, corner convention: pixel ``(i, j)`` (column i, row j) covers
``[i, i + 1) x [j, j + 1)``. ``crop_xy = (slide_xy - origin) / scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..prompts import Prompt


@dataclass(frozen=True)
class CropMap:
    """Crop <-> level-0 map.

    origin : (x, y) level-0 position of the crop's corner (0, 0).
    scale : (sx, sy) level-0 pixels per crop pixel (crop mpp / slide mpp).
    size : (width, height) of the crop in crop pixels.
    """

    origin: tuple[float, float]
    scale: tuple[float, float]
    size: tuple[int, int]

    # -- points and boxes -----------------------------------------------------------------
    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) level-0 (x, y) -> (N, 2) crop (x, y), float."""
        return (_xy(xy) - np.asarray(self.origin)) / np.asarray(self.scale)

    def to_slide(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) crop (x, y) -> (N, 2) level-0 (x, y), float."""
        return _xy(xy) * np.asarray(self.scale) + np.asarray(self.origin)

    def box_to_crop(self, boxes: np.ndarray) -> np.ndarray:
        """(4,) or (N, 4) XYXY level-0 boxes -> the same shape in crop pixels."""
        return self._boxes(boxes, self.to_crop)

    def box_to_slide(self, boxes: np.ndarray) -> np.ndarray:
        """(4,) or (N, 4) XYXY crop boxes -> the same shape in level-0 pixels."""
        return self._boxes(boxes, self.to_slide)

    def prompt_to_crop(self, prompt: Prompt) -> Prompt:
        """`prompt` with its box and points in crop pixels (for the predictor)."""
        return prompt.transformed(self.to_crop)

    def prompt_to_slide(self, prompt: Prompt) -> Prompt:
        """A prompt given in crop pixels, in level-0 pixels."""
        return prompt.transformed(self.to_slide)

    def matrix(self) -> np.ndarray:
        """(3, 3) homogeneous matrix taking crop (x, y, 1) to level-0 (x, y, 1)."""
        return np.array([[self.scale[0], 0.0, self.origin[0]],
                         [0.0, self.scale[1], self.origin[1]],
                         [0.0, 0.0, 1.0]])

    # -- masks ------------------------------------------------------------------------------
    def slide_window(self, *, downsample: float = 1.0,
                     clip: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) integer pixel window the crop covers, on a grid of `downsample`
        level-0 pixels per pixel (1: level 0), optionally clipped to `clip` = (width, height)
        of that grid. x1/y1 are exclusive; the window may be empty after clipping."""
        x0, y0 = (np.asarray(self.origin) / downsample).tolist()
        x1, y1 = ((np.asarray(self.origin) + np.asarray(self.size) * np.asarray(self.scale))
                  / downsample).tolist()
        win = [math.floor(x0 + 1e-9), math.floor(y0 + 1e-9), math.ceil(x1 - 1e-9),
               math.ceil(y1 - 1e-9)]
        if clip is not None:
            win = [min(max(win[0], 0), clip[0]), min(max(win[1], 0), clip[1]),
                   min(max(win[2], 0), clip[0]), min(max(win[3], 0), clip[1])]
        return win[0], win[1], win[2], win[3]

    def mask_to_slide(self, mask: np.ndarray, *, window: tuple[int, int, int, int] | None = None,
                      downsample: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Resample a crop mask (H, W) onto a slide window by nearest sampling.

        Each output pixel takes the crop pixel under its centre; pixels whose centre falls
        outside the crop get 0 / False. `window` is (x0, y0, x1, y1) on the grid of
        `downsample` level-0 pixels (default: `slide_window` on that grid). Returns
        ``(values (y1 - y0, x1 - x0) of mask.dtype, window)``.
        """
        mask = np.asarray(mask)
        if mask.shape[:2] != (self.size[1], self.size[0]):
            raise ValueError(f"mask shape {mask.shape} does not match the crop size "
                             f"{self.size[0]}x{self.size[1]} (width x height)")
        if window is None:
            window = self.slide_window(downsample=downsample)
        x0, y0, x1, y1 = window
        cols = self._indices(np.arange(x0, x1), axis=0, downsample=downsample)
        rows = self._indices(np.arange(y0, y1), axis=1, downsample=downsample)
        out = mask[np.ix_(np.clip(rows, 0, self.size[1] - 1), np.clip(cols, 0, self.size[0] - 1))]
        inside = (rows >= 0)[:, None] & (rows < self.size[1])[:, None] \
            & (cols >= 0)[None, :] & (cols < self.size[0])[None, :]
        return np.where(inside, out, np.zeros((), mask.dtype)), (x0, y0, x1, y1)

    def to_dict(self) -> dict:
        return {"origin": [float(v) for v in self.origin],
                "scale": [float(v) for v in self.scale], "size": [int(v) for v in self.size],
                "slide_window": list(self.slide_window())}

    # -- helpers ----------------------------------------------------------------------------
    def _indices(self, pixels: np.ndarray, *, axis: int, downsample: float) -> np.ndarray:
        centres = (pixels + 0.5) * downsample
        return np.floor((centres - self.origin[axis]) / self.scale[axis]).astype(np.int64)

    @staticmethod
    def _boxes(boxes: np.ndarray, fn) -> np.ndarray:
        arr = np.asarray(boxes, dtype=float)
        out = fn(arr.reshape(-1, 2)).reshape(arr.shape)
        return out


def _xy(xy: np.ndarray) -> np.ndarray:
    arr = np.asarray(xy, dtype=float)
    if arr.shape[-1:] != (2,):
        raise ValueError(f"coordinates must have shape (N, 2) as x, y; got {arr.shape}")
    return arr.reshape(-1, 2)
