"""The training loss of WSI-SAM: L = λ·L_high + (1 - λ)·L_low, each dice + binary cross-entropy.

Logits come at the decoder's 256x256 and are upsampled to the crop's 1024x1024 (as inference
does) before they meet the ground truth, so a thin boundary counts as much in training as in
the Dice the user sees.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class LossParts(NamedTuple):
    total: Tensor
    high: Tensor
    low: Tensor


def dice_loss(logits: Tensor, target: Tensor, *, eps: float = 1.0) -> Tensor:
    """1 - soft Dice per mask, averaged over the batch; logits, target (N,1,H,W)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def mask_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Dice + BCE of (N,1,256,256) logits against (N,1,S,S) float targets (S = crop side)."""
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=False)
    return dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


def wsi_sam_loss(hr_logits: Tensor, hr_target: Tensor, lr_logits: Tensor | None,
                 lr_target: Tensor | None, *, lam: float = 0.5) -> LossParts:
    """λ·L_high + (1 - λ)·L_low; with λ = 1 (or no LR logits) the LR term is skipped."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    high = mask_loss(hr_logits, hr_target)
    if lr_logits is None or lr_target is None or lam == 1.0:
        low = torch.zeros((), device=high.device)
    else:
        low = mask_loss(lr_logits, lr_target)
    return LossParts(lam * high + (1 - lam) * low, high.detach(), low.detach())
