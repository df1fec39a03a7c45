"""Where the crops of a prompt go, so that neighbouring prompts share them.

Crop centres snap to a grid of nodes half an HR crop apart. Prompts near each other then get
the same crop pair, and the second one finds the pair (`CropPairCache`) and its embeddings
(the predictor's cache) ready: it costs the decoder alone. A prompt that would not fit around
its node with the crop margin keeps its own centre.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..prompts import Prompt
from ..scale import CROP_SIZE
from .crops import CropPair
from .reader import Slide
from .tissue import TissueMask


def grid_step(slide: Slide, *, hr_mpp: float, size: int = CROP_SIZE) -> tuple[float, float]:
    """Level-0 px (x, y) between neighbouring nodes: half an HR crop."""
    mpp_x, mpp_y = slide.require_mpp()
    return size / 2 * hr_mpp / mpp_x, size / 2 * hr_mpp / mpp_y


def grid_nodes(slide: Slide, *, hr_mpp: float, tissue: TissueMask | None = None,
               size: int = CROP_SIZE) -> list[tuple[float, float]]:
    """Every node (level-0 x, y) prompts on the slide can snap to, row by row; with
    `tissue`, only nodes whose cell (the points nearer to it than to any other node) holds
    tissue."""
    step_x, step_y = grid_step(slide, hr_mpp=hr_mpp, size=size)
    width, height = slide.dimensions
    nodes = []
    for j in range(round(height / step_y) + 1):
        for i in range(round(width / step_x) + 1):
            x, y = i * step_x, j * step_y
            if tissue is None or tissue.any_in(x - step_x / 2, y - step_y / 2,
                                               x + step_x / 2, y + step_y / 2):
                nodes.append((x, y))
    return nodes


def snapped_center(slide: Slide, prompt: Prompt, *, hr_mpp: float, size: int = CROP_SIZE,
                   margin: float = 0.1) -> tuple[float, float]:
    """The grid node nearest the prompt's centre (level-0 x, y) when the prompt's bounds
    stay ``margin * size`` HR pixels inside the HR crop around it; else the prompt's centre."""
    mpp_x, mpp_y = slide.require_mpp()
    step_x, step_y = grid_step(slide, hr_mpp=hr_mpp, size=size)
    cx, cy = (float(v) for v in prompt.center())
    node = (round(cx / step_x) * step_x, round(cy / step_y) * step_y)
    x0, y0, x1, y1 = prompt.bounds()
    reach_x = max(abs(x0 - node[0]), abs(x1 - node[0])) * mpp_x / hr_mpp
    reach_y = max(abs(y0 - node[1]), abs(y1 - node[1])) * mpp_y / hr_mpp
    if max(reach_x, reach_y) <= (0.5 - margin) * size:
        return node
    return cx, cy


class CropPairCache:
    """The last few crop pairs (about 8 MB each at 1024²), least recently used out first."""

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = max_items
        self._pairs: OrderedDict[Hashable, CropPair] = OrderedDict()
        self.hits = 0

    def get_or_cut(self, key: Hashable, cut: Callable[[], CropPair]) -> CropPair:
        if key in self._pairs:
            self._pairs.move_to_end(key)
            self.hits += 1
            return self._pairs[key]
        pair = cut()
        if self.max_items > 0:
            self._pairs[key] = pair
            while len(self._pairs) > self.max_items:
                self._pairs.popitem(last=False)
        return pair
