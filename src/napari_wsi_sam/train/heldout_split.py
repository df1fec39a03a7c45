"""The held-out split of a head trained from the user's own objects.

`plan_head` chooses what trains and what is held out: objects too small to see at the chosen
magnification are left out (and counted); the rest are split by spatial blocks, so objects
near each other never straddle the split. Each block is held out or not by a seeded draw on
its own position, so when new objects arrive the same places stay held out (the active loop
keeps measuring on objects the head never saw); training objects within a guard distance of a
held-out one are not used either. Training and measuring on the split is
`session.own_head.train_and_measure`, which sees both `train/` and `evaluation/`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from shapely.strtree import STRtree

from ..errors import TrainingError
from ..scale import CROP_SIZE, scale_text
from ..slide import open_slide
from .datasets import AnnotatedImage

logger = logging.getLogger(__name__)

MIN_TRAIN = 20
"""Fewest objects a head trains on."""
MIN_HELDOUT = 5
"""Fewest held-out objects its comparison with SAM is made on."""
MIN_HR_AREA = 16
"""Fewest HR pixels an object needs to be seen at all (a 4 x 4 px patch)."""
HELDOUT_FRACTION = 0.2
GUARD = 0.125
"""Training objects this far (in HR crop widths) from a held-out one are not used."""


@dataclass(frozen=True)
class HeadPlan:
    """What trains and what measures a head, at one HR µm/px."""

    train: list[AnnotatedImage]
    heldout: list[AnnotatedImage]
    hr_mpp: float
    too_small: int
    guarded: int

    @property
    def n_train(self) -> int:
        return sum(len(i.objects) for i in self.train)

    @property
    def n_heldout(self) -> int:
        return sum(len(i.objects) for i in self.heldout)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({o.class_name for i in self.train for o in i.objects
                             if o.class_name}))

    def describe(self) -> str:
        counts = Counter(o.class_name or "unclassified" for i in self.train for o in i.objects)
        what = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
        return (f"{self.n_train} objects ({what}) on {len(self.train)} image(s) at "
                f"{scale_text(self.hr_mpp)}; {self.n_heldout} held out by spatial blocks")


def plan_head(images: list[AnnotatedImage], *, hr_mpp: float,
              heldout_fraction: float = HELDOUT_FRACTION, seed: int = 0) -> HeadPlan:
    """Split the objects for training and for the held-out comparison (see the module)."""
    if not 0.0 < heldout_fraction < 1.0:
        raise TrainingError(f"the held-out fraction must lie in (0, 1), got {heldout_fraction}")
    train_images, held_images = [], []
    too_small = guarded = 0
    for index, image in enumerate(images):
        mpp = _mpp_of(image)
        scale = (mpp / hr_mpp) ** 2
        seen = [o for o in image.objects if o.geometry.area * scale >= MIN_HR_AREA]
        too_small += len(image.objects) - len(seen)
        if not seen:
            continue
        field = CROP_SIZE * hr_mpp / mpp  # one HR crop, in level-0 px
        held, kept = _split(seen, block=field / 2, fraction=heldout_fraction,
                            seed=[seed, index])
        kept, dropped = _guard(kept, held, distance=GUARD * field)
        guarded += dropped
        train_images.append(AnnotatedImage(image.dataset, image.image, tuple(kept), image.mpp))
        held_images.append(AnnotatedImage(image.dataset, image.image, tuple(held), image.mpp))
    plan = HeadPlan([i for i in train_images if i.objects], [i for i in held_images
                                                             if i.objects],
                    hr_mpp, too_small, guarded)
    _check(plan, total=sum(len(i.objects) for i in images))
    return plan


def _mpp_of(image: AnnotatedImage) -> float:
    if image.mpp is not None:
        return float(image.mpp)
    with open_slide(image.image) as slide:
        return float(slide.require_mpp()[0])


def _split(objects: list, *, block: float, fraction: float, seed: list[int]
           ) -> tuple[list, list]:
    """(held out, kept): a block is held out when the seeded draw on its position falls below
    `fraction`, so the same places stay held out as objects are added; when that holds out
    too few, the blocks with the next lowest draws join (never every block)."""
    centres = np.array([o.geometry.centroid.coords[0] for o in objects])
    blocks = [tuple(b) for b in np.floor(centres / block).astype(int)]
    draw = {b: np.random.default_rng([*seed, b[0] + 2**20, b[1] + 2**20]).random()
            for b in set(blocks)}
    per_block = Counter(blocks)
    held_blocks = {b for b, value in draw.items() if value < fraction}
    count = sum(per_block[b] for b in held_blocks)
    for b in sorted(set(draw) - held_blocks, key=draw.__getitem__):
        if count >= MIN_HELDOUT or len(held_blocks) >= len(draw) - 1:
            break
        held_blocks.add(b)
        count += per_block[b]
    if len(held_blocks) == len(draw) and len(draw) > 1:  # keep something to train on
        held_blocks.discard(max(held_blocks, key=draw.__getitem__))
    held = [o for o, b in zip(objects, blocks, strict=True) if b in held_blocks]
    kept = [o for o, b in zip(objects, blocks, strict=True) if b not in held_blocks]
    return held, kept


def _guard(kept: list, held: list, *, distance: float) -> tuple[list, int]:
    """The kept objects that stay `distance` away from every held-out one."""
    if not held or not kept:
        return kept, 0
    tree = STRtree([o.geometry for o in held])
    near = tree.query([o.geometry for o in kept], predicate="dwithin", distance=distance)
    close = set(near[0].tolist())
    return [o for i, o in enumerate(kept) if i not in close], len(close)


def _check(plan: HeadPlan, *, total: int) -> None:
    """One line when the plan cannot give a head worth measuring."""
    small = (f"; {plan.too_small} of {total} objects are smaller than {MIN_HR_AREA} HR pixels "
             f"at {scale_text(plan.hr_mpp)}, pick a finer magnification for them"
             if plan.too_small else "")
    if plan.n_train < MIN_TRAIN or plan.n_heldout < MIN_HELDOUT:
        need = MIN_TRAIN + MIN_HELDOUT
        usable = plan.n_train + plan.n_heldout
        raise TrainingError(
            f"a head needs at least {need} usable objects ({MIN_TRAIN} to train on, "
            f"{MIN_HELDOUT} held out to measure it); these give {plan.n_train} to train and "
            f"{plan.n_heldout} held out ({usable} usable"
            f"{f', {plan.guarded} too near held-out ones' if plan.guarded else ''}): "
            f"annotate about {max(need - usable, 1) + plan.guarded} more{small}")
    if plan.too_small:
        logger.info("left out %d objects too small at %s", plan.too_small,
                    scale_text(plan.hr_mpp))


__all__ = ["GUARD", "HELDOUT_FRACTION", "MIN_HELDOUT", "MIN_HR_AREA", "MIN_TRAIN", "HeadPlan",
           "plan_head"]
