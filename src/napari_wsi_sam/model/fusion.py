"""The new, trainable parts of WSI-SAM for one resolution, and the token aggregation.

One `ResolutionBranch` per resolution (role "hr" or "lr"), never two copies of the code:

- ``token``: the learnable HR or LR token, ``nn.Embedding(1, 256)``, joined to SAM's output
  and prompt tokens in the frozen two-way transformer;
- ``hypernet``: a 3-layer MLP 256 -> 256 -> 32 turning the updated token into a 32-d vector;
- ``fusion``: `FeatureFusion`, merging the final image embedding, the early TinyViT feature
  and the decoder's upscaled mask features into 32x256x256 mask features.

The last hypernetwork layer starts at zero, so a fresh branch contributes exactly nothing and
WSI-SAM starts as SAM; that layer's weight still receives gradients, so training moves it
first and then the rest (as a zero-initialised layer does in ControlNet-style adapters).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import Tensor, nn

Role = Literal["hr", "lr"]
Aggregation = Literal["average", "max", "concat_fc", "sum"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
"""Token aggregation modes: the paper's "average" (default), Table 3a's "max" and "concat_fc",
and "sum", what the authors' reference code does (for their checkpoints)."""

TOKEN_DIM = 256
"""Channels of SAM's tokens and image embedding."""
MASK_DIM = TOKEN_DIM // 8
"""Channels of the mask features at 256x256 (32), and length of a hypernetwork output."""


class FeatureFusion(nn.Module):
    """Fused 32x256x256 mask features from three sources, summed.

    - ``final``: the final image embedding (B,256,64,64) -> transposed convs 256->64->32;
    - ``early``: the early TinyViT feature (B,160,64,64) -> transposed convs 160->256->32;
    - ``mask``: the decoder's upscaled mask features (N,32,256,256) -> conv3x3 32->64,
      LayerNorm2d, GELU, conv3x3 64->32.

    The first two depend on the image only (`image_features`, cacheable per crop); the third
    depends on the prompt.
    """

    def __init__(self, *, dim: int = TOKEN_DIM, early_dim: int = 160) -> None:
        super().__init__()
        self.final = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        self.early = nn.Sequential(
            nn.ConvTranspose2d(early_dim, dim, kernel_size=2, stride=2),
            LayerNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )
        self.mask = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, kernel_size=3, padding=1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, kernel_size=3, padding=1),
        )

    def image_features(self, embedding: Tensor, early: Tensor) -> Tensor:
        """(B,256,64,64), (B,160,64,64) -> (B,32,256,256): the prompt-independent part."""
        return self.final(embedding) + self.early(early)

    def forward(self, upscaled: Tensor, image_features: Tensor) -> Tensor:
        """(N,32,256,256) mask features + (1 or N,32,256,256) image part -> (N,32,256,256)."""
        return self.mask(upscaled) + image_features

    def project(self, vectors: Tensor, upscaled: Tensor, image_features: Tensor) -> Tensor:
        """Mask logits ``vectors[n] . forward(upscaled, image_features)[n]``: (N,1,256,256).

        vectors: (N,32), one hypernetwork output per prompt. upscaled: (N,32,256,256).
        image_features: (1,32,256,256) shared by all prompts of one crop, or (N,32,256,256).
        Same value as projecting `forward`'s output, computed with the last 64->32 conv folded
        into each prompt's vector (a 64->1 conv): about 30x fewer operations per prompt.
        """
        n, _, height, width = upscaled.shape
        conv1, norm, act, conv2 = self.mask
        if not isinstance(conv2, nn.Conv2d) or conv2.bias is None:
            raise TypeError("the mask branch must end in a Conv2d with a bias")
        if not isinstance(norm, LayerNorm2d):
            raise TypeError("the mask branch must normalise with a LayerNorm2d")
        # channels-last: oneDNN's convolutions are faster, and the channel norm reads
        # contiguous memory (3-10x faster than LayerNorm2d's strided reductions, same value)
        hidden = conv1(upscaled.contiguous(memory_format=torch.channels_last))
        hidden = act(layer_norm_2d(norm, hidden))  # (N,64,H,W), channels-last
        weight = torch.einsum("nc,cikl->nikl", vectors, conv2.weight)  # (N,64,3,3)
        bias = vectors @ conv2.bias  # (N,)
        grouped = hidden.reshape(1, n * hidden.shape[1], height, width)
        logits = F.conv2d(grouped, weight, bias, padding=conv2.padding[0], groups=n)
        logits = logits.view(n, 1, height, width)
        flat = image_features.flatten(2)  # (1 or N, 32, H*W)
        if image_features.shape[0] == 1:
            image_term = vectors @ flat[0]  # (N, H*W)
        else:
            image_term = torch.bmm(vectors[:, None, :], flat)[:, 0]
        return logits + image_term.view(n, 1, height, width)


def layer_norm_2d(norm: LayerNorm2d, x: Tensor) -> Tensor:
    """`LayerNorm2d` over the channels of (N,C,H,W) as one `F.layer_norm` on the channel-last
    view: the same mean, biased variance and eps (within 1e-6), without strided reductions."""
    out = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps)
    return out.permute(0, 3, 1, 2)


class ResolutionBranch(nn.Module):
    """The trainable parameters of one resolution: token, hypernetwork MLP, fusion.

    ~0.45 M parameters (448,512 with the default sizes).
    """

    def __init__(self, *, role: Role, dim: int = TOKEN_DIM, early_dim: int = 160,
                 zero_init: bool = True) -> None:
        super().__init__()
        if role not in get_args(Role):
            raise ValueError(f"role must be 'hr' or 'lr', got {role!r}")
        self.role: Role = role
        self.token = nn.Embedding(1, dim)
        self.hypernet = MLP(dim, dim, dim // 8, 3)
        self.fusion = FeatureFusion(dim=dim, early_dim=early_dim)
        if zero_init:
            self.zero_output()

    def zero_output(self) -> None:
        """Zero the last hypernetwork layer: the branch then adds exactly 0 to any mask."""
        last = self.hypernet.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def vector(self, token_out: Tensor) -> Tensor:
        """(N,256) updated token -> (N,32) hypernetwork output."""
        return self.hypernet(token_out)

    def extra_repr(self) -> str:
        return f"role={self.role!r}"


class TokenAggregation(nn.Module):
    """Merge the HR and LR hypernetwork outputs (N,32) + (N,32) -> (N,32).

    "average" is the paper's choice (Table 3a: 77.50 Dice), "concat_fc" concatenates and
    applies one linear layer (77.24; initialised to the average, so it starts where "average"
    does), "max" is the element-wise maximum (75.91), "sum" is the authors' reference code.
    """

    def __init__(self, mode: Aggregation = "average", *, dim: int = MASK_DIM) -> None:
        super().__init__()
        if mode not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
        self.mode: Aggregation = mode
        self.fc: nn.Linear | None = None
        if mode == "concat_fc":
            self.fc = nn.Linear(2 * dim, dim)
            with torch.no_grad():
                eye = torch.eye(dim) * 0.5
                self.fc.weight.copy_(torch.cat([eye, eye], dim=1))
                self.fc.bias.zero_()

    def forward(self, hr: Tensor, lr: Tensor) -> Tensor:
        if self.mode == "average":
            return (hr + lr) * 0.5
        if self.mode == "max":
            return torch.maximum(hr, lr)
        if self.mode == "sum":
            return hr + lr
        if self.fc is None:  # pragma: no cover - constructor guarantees it
            raise RuntimeError("concat_fc aggregation without its layer")
        return self.fc(torch.cat([hr, lr], dim=-1))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
