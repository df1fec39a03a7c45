"""Draw prompts and field-of-view boxes onto crop images (for the CLI and the docs figure).

Coordinates are crop pixels, x then y, corner convention (see `cropmap`).
"""

from __future__ import annotations

import numpy as np
from skimage import draw

from ..prompts import Prompt

BOX = (0, 200, 255)
POSITIVE = (40, 220, 40)
NEGATIVE = (255, 40, 40)
FIELD = (255, 200, 0)


def draw_box(image: np.ndarray, box: np.ndarray, *, color: tuple[int, int, int] = BOX,
             width: int = 3, dashed: bool = False) -> np.ndarray:
    """Draw an XYXY `box` outline in place on an (H, W, 3) uint8 image; returns the image."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    for k in range(width):
        r0, c0 = round(y0) + k, round(x0) + k
        r1, c1 = round(y1) - 1 - k, round(x1) - 1 - k
        if r1 < r0 or c1 < c0:
            break
        rr, cc = draw.rectangle_perimeter((r0, c0), end=(r1, c1), shape=(h, w), clip=True)
        if dashed:
            keep = ((rr + cc) // 12) % 2 == 0
            rr, cc = rr[keep], cc[keep]
        image[rr, cc] = color
    return image


def draw_prompt(image: np.ndarray, prompt: Prompt, *, radius: int = 6) -> np.ndarray:
    """Draw a prompt already mapped to crop pixels: box outline, points as filled discs
    (green positive, red negative) with a dark rim. In place; returns the image."""
    h, w = image.shape[:2]
    if prompt.box is not None:
        draw_box(image, prompt.box)
    for (x, y), label in zip(prompt.points, prompt.labels, strict=True):
        rr, cc = draw.disk((y, x), radius + 2, shape=(h, w))
        image[rr, cc] = (20, 20, 20)
        rr, cc = draw.disk((y, x), radius, shape=(h, w))
        image[rr, cc] = POSITIVE if label == 1 else NEGATIVE
    return image
