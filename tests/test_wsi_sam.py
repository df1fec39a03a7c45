"""The WSI-SAM module: frozen SAM, trainable head, fresh head == SAM, every aggregation trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from napari_wsi_sam.model import load_sam
from napari_wsi_sam.model.encoder import EncoderOutput
from napari_wsi_sam.model.fusion import AGGREGATIONS, ResolutionBranch
from napari_wsi_sam.model.wsi_sam import (
    HeadConfig,
    Prompts,
    WsiSam,
    WsiSamHead,
    upsample_logits,
)

pytestmark = pytest.mark.slow  # the real model on CPU

PER_BRANCH = 448_512  # token 256 + MLP 139,808 + fusion 73,952 + 197,408 + 37,088
BOXES = torch.tensor([[96.0, 312.0, 150.0, 360.0], [600.0, 410.0, 660.0, 470.0]])


@pytest.fixture(scope="module")
def parts(asset_path):
    return load_sam("mobile_sam", checkpoint=asset_path("mobile_sam.pt"))


@pytest.fixture(scope="module")
def features(parts, asset_path):
    """Encoder outputs of a real H&E HR crop and its 2x-coarser LR context (no autograd)."""
    image = np.asarray(Image.open(asset_path("hgsc_nest.jpg")).convert("RGB"))
    hr = np.ascontiguousarray(image[:1024, :1024])
    lr = np.asarray(Image.fromarray(image).resize((750, 750), Image.BILINEAR))
    lr = np.pad(lr, ((0, 274), (0, 274), (0, 0)))  # the whole image at half resolution
    with torch.no_grad():
        return tuple(parts.encoder(parts.encoder.preprocess(x)) for x in (hr, lr))


def make(parts, **config) -> WsiSam:
    return WsiSam(prompt_encoder=parts.prompt_encoder, mask_decoder=parts.mask_decoder,
                  head=WsiSamHead(HeadConfig(**config)))


def test_trainable_parameters_are_the_head_only(parts):
    model = make(parts)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    total = sum(trainable.values())
    print(f"\ntrainable parameters: {total:,} ({total // 2:,} per resolution)")
    assert total == 2 * PER_BRANCH
    assert all(name.startswith("head.") for name in trainable)
    assert ResolutionBranch(role="lr").token.weight.shape == (1, 256)
    frozen = [p for m in (parts.prompt_encoder, parts.mask_decoder, parts.encoder)
              for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    concat = make(parts, aggregation="concat_fc").head.num_parameters()
    assert concat == 2 * PER_BRANCH + 64 * 32 + 32
    model.train()
    assert model.head.training and not model.mask_decoder.training


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("sam_mask", ["separate", "joint"])
def test_fresh_head_gives_sams_mask_exactly(parts, features, aggregation, sam_mask):
    hr, lr = features
    model = make(parts, aggregation=aggregation, sam_mask=sam_mask).eval()
    prompts = Prompts(boxes=BOXES)
    with torch.no_grad():
        out = model(hr, lr, prompts, Prompts(boxes=BOXES / 2 + 256), with_lr_mask=True)
        sparse, dense = model.encode_prompts(prompts)
        sam, iou = parts.mask_decoder(image_embeddings=hr.embedding,
                                      image_pe=parts.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=False)
    assert out.hr_logits.shape == out.sam_logits.shape == out.lr_logits.shape == (2, 1, 256, 256)
    assert torch.equal(out.hr_logits, out.sam_logits)
    if sam_mask == "separate":  # bit for bit segment-anything's own decoder
        assert torch.equal(out.sam_logits, sam) and torch.equal(out.iou, iou)
    assert (out.sam_logits > 0).float().mean() > 0.001  # a real mask, not an empty one
    assert upsample_logits(out.hr_logits).shape == (2, 1, 1024, 1024)


def test_fresh_head_equals_sam_with_points_masks_and_multimask(parts, features):
    hr, lr = features
    model = make(parts).eval()
    points = torch.tensor([[[123.0, 336.0], [20.0, 20.0]]])
    labels = torch.tensor([[1, 0]])
    masks = torch.randn(1, 1, 256, 256)
    prompts = Prompts(points=points, labels=labels, masks=masks)
    lr_prompts = Prompts(points=points / 2 + 256, labels=labels, masks=masks)
    with torch.no_grad():
        out = model(hr, lr, prompts, lr_prompts, multimask=True)
        sam, iou = model.sam_forward(hr.embedding, prompts, multimask=True)
    assert torch.equal(out.hr_logits, sam) and torch.equal(out.iou, iou)
    assert out.lr_logits is None  # eval mode: no LR mask unless asked


def test_folded_projection_equals_the_plain_product():
    torch.manual_seed(0)
    branch = ResolutionBranch(role="hr", zero_init=False)
    vectors = torch.randn(3, 32)
    upscaled = torch.randn(3, 32, 256, 256)
    image = branch.fusion.image_features(torch.randn(1, 256, 64, 64), torch.randn(1, 160, 64, 64))
    with torch.no_grad():
        folded = branch.fusion.project(vectors, upscaled, image)
        plain = torch.einsum("nc,nchw->nhw", vectors, branch.fusion(upscaled, image))[:, None]
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_every_aggregation_trains_the_new_parameters_only(parts, features, aggregation):
    torch.manual_seed(0)
    hr, lr = features
    model = make(parts, aggregation=aggregation).train()
    prompts = Prompts(boxes=BOXES[:1])
    lr_prompts = Prompts(boxes=BOXES[:1] / 2 + 256)
    target_hr = torch.zeros(1, 1, 256, 256)
    target_hr[..., 78:90, 24:38] = 1
    target_lr = torch.zeros(1, 1, 256, 256)
    target_lr[..., 103:109, 76:83] = 1
    lam = 0.5
    optimiser = torch.optim.SGD(model.head.parameters(), lr=0.1)

    def step() -> dict[str, torch.Tensor | None]:
        optimiser.zero_grad()
        out = model(hr, lr, prompts, lr_prompts)
        loss = (lam * F.binary_cross_entropy_with_logits(out.hr_logits, target_hr)
                + (1 - lam) * F.binary_cross_entropy_with_logits(out.lr_logits, target_lr))
        loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    grads = step()
    assert all(grads[n] is None for n in grads if not n.startswith("head."))
    for role in ("hr", "lr"):  # zero-initialised last layers: they move first
        assert grads[f"head.{role}.hypernet.layers.2.weight"].abs().sum() > 0
    optimiser.step()
    grads = step()
    missing = [n for n, g in grads.items() if n.startswith("head.")
               and (g is None or not g.abs().sum() > 0)]
    assert not missing, f"no gradient reached {missing}"
    assert all(grads[n] is None for n in grads if not n.startswith("head."))


def test_prompt_counts_must_agree(parts, features):
    hr, lr = features
    with pytest.raises(ValueError, match="LR prompts"):
        make(parts)(hr, lr, Prompts(boxes=BOXES), Prompts(boxes=BOXES[:1]))
    with pytest.raises(ValueError, match="one batch size"):
        Prompts()
    with pytest.raises(ValueError, match="aggregation"):
        WsiSamHead(HeadConfig(aggregation="median"))  # type: ignore[arg-type]


def test_one_prompt_per_crop_batches(parts, features):
    """Training batches: B crop pairs with one prompt each (embedding batch == prompt batch)."""
    hr, lr = features
    both = EncoderOutput(*(torch.cat([t, t]) for t in hr))
    both_lr = EncoderOutput(*(torch.cat([t, t]) for t in lr))
    model = make(parts).eval()
    with torch.no_grad():
        batched = model(both, both_lr, Prompts(boxes=BOXES), Prompts(boxes=BOXES / 2 + 256))
        single = model(hr, lr, Prompts(boxes=BOXES), Prompts(boxes=BOXES / 2 + 256))
    torch.testing.assert_close(batched.hr_logits, single.hr_logits, rtol=1e-4, atol=1e-4)


def test_stacked_passes_equal_separate_passes(parts, features):
    """HR and LR token passes as one transformer call of batch 2N: each half equals its own
    pass (a trained-like head, so the residuals are not zero)."""
    torch.manual_seed(0)
    hr, lr = features
    model = WsiSam(prompt_encoder=parts.prompt_encoder, mask_decoder=parts.mask_decoder,
                   head=WsiSamHead(zero_init=False)).eval()
    prompts, lr_prompts = Prompts(boxes=BOXES), Prompts(boxes=BOXES / 2 + 256)
    with torch.no_grad():
        for sam_mask in ("separate", "joint"):
            separate = model(hr, lr, prompts, lr_prompts, with_lr_mask=True, sam_mask=sam_mask)
            stacked = model(hr, lr, prompts, lr_prompts, with_lr_mask=True, sam_mask=sam_mask,
                            stack_passes=True)
            for a, b in zip(separate, stacked, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_joint_override_equals_a_joint_head(parts, features):
    """``sam_mask="joint"`` at call time computes what a head configured "joint" does."""
    hr, lr = features
    model = make(parts, sam_mask="joint").eval()
    torch.manual_seed(0)
    model.head.hr.hypernet.layers[-1].weight.data.normal_()
    separate_head = WsiSam(prompt_encoder=parts.prompt_encoder, mask_decoder=parts.mask_decoder,
                           head=model.head)
    prompts, lr_prompts = Prompts(boxes=BOXES), Prompts(boxes=BOXES / 2 + 256)
    with torch.no_grad():
        joint = model(hr, lr, prompts, lr_prompts)
        model.head.config = HeadConfig(sam_mask="separate")
        override = separate_head(hr, lr, prompts, lr_prompts, sam_mask="joint")
        exact = separate_head(hr, lr, prompts, lr_prompts)
    assert torch.equal(joint.hr_logits, override.hr_logits)
    assert not torch.equal(exact.sam_logits, override.sam_logits)  # SAM's own pass differs
