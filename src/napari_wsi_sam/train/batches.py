"""Training batches: prompts and targets for objects of one crop pair, drawn with seeded noise.

Per object one prompt kind is drawn (box, k positive points, or a noisy mask); objects of the
same kind in a step form one decoder call. HR prompts are built in HR-crop pixels and mapped
into the LR crop with the same function inference uses (`prompt_arrays.lr_prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.prompt_arrays import (
    concentric_hr_to_lr,
    lr_prompts,
    prompt_arrays,
    to_prompts,
)
from ..model.wsi_sam import Prompts
from ..scale import CROP_SIZE as CROP
from .prompt_noise import PROMPT_KINDS, PromptKind, noisy_box, noisy_mask_logits, sample_points
from .sampler import ViewObject


@dataclass
class Batch:
    """One decoder call: N prompts of one kind on one crop pair, with their targets."""

    kind: PromptKind
    hr: Prompts
    lr: Prompts
    hr_target: torch.Tensor
    """(N,1,1024,1024) float: the objects' masks on the HR crop."""
    lr_target: torch.Tensor
    """(N,1,1024,1024) float: the same objects on the LR crop."""


def draw_kinds(n: int, rng: np.random.Generator,
               kinds: tuple[PromptKind, ...] = PROMPT_KINDS) -> list[PromptKind]:
    return [kinds[i] for i in rng.integers(0, len(kinds), n)]


def make_batches(objects: list[ViewObject], kinds: list[PromptKind], rng: np.random.Generator,
                 *, lr_factor: float, max_points: int = 10,
                 device: torch.device | str = "cpu") -> list[Batch]:
    """Group `objects` by their drawn prompt kind and build each group's prompts and targets."""
    batches = []
    for kind in PROMPT_KINDS:
        group = [o for o, k in zip(objects, kinds, strict=True) if k == kind]
        if not group:
            continue
        boxes = points = labels = masks = None
        if kind == "box":
            boxes = np.stack([np.clip(noisy_box(o.hr.box, rng), 0, CROP) for o in group])
        elif kind == "points":
            counts = rng.integers(1, max_points + 1, len(group))
            k = int(counts.max())
            points = np.zeros((len(group), k, 2))
            labels = np.full((len(group), k), -1, dtype=np.int64)
            for i, (obj, count) in enumerate(zip(group, counts, strict=True)):
                points[i, :count] = sample_points(obj.hr, int(count), rng)
                labels[i, :count] = 1
        else:
            masks = np.stack([noisy_mask_logits(o.hr, rng) for o in group])
        hr = prompt_arrays(boxes, points, labels, masks, role="HR")
        lr = lr_prompts(hr, None, None, None,
                        lambda xy: concentric_hr_to_lr(xy, factor=lr_factor))
        batches.append(Batch(
            kind=kind,
            hr=to_prompts(hr, device=device),
            lr=to_prompts(lr, device=device),
            hr_target=_targets([o.hr.dense(CROP) for o in group], device),
            lr_target=_targets([o.lr.dense(CROP) for o in group], device),
        ))
    return batches


def _targets(masks: list[np.ndarray], device: torch.device | str) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)).to(device)
