"""The TinyViT encoder on timm loads the official weights strictly and reproduces MobileSAM.

The oracle is the official MobileSAM code (``mobile_sam`` from mobilesam-mirror, test-only),
run on the same weights and a real H&E crop. Each model is built once per module.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from skimage.io import imread

from napari_wsi_sam.errors import WeightsError
from napari_wsi_sam.model import (
    ENCODER_CONFIGS,
    PIXEL_MEAN,
    PIXEL_STD,
    EncoderOutput,
    build_encoder,
    checkpoint_filter_fn,
    load_sam,
    optimise_for_inference,
    preprocess,
)
from napari_wsi_sam.model.sam import read_checkpoint

pytestmark = pytest.mark.slow  # the real model on CPU

TOLERANCE = 1e-4  # relative L2 error against the official encoder


def rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def he_crop(asset_path) -> np.ndarray:
    """(1024,1024,3) uint8: a real H&E crop from hgsc_nest.jpg."""
    image = imread(asset_path("hgsc_nest.jpg"))
    return np.ascontiguousarray(image[200:1224, 300:1324, :3])


@pytest.fixture(scope="module")
def mobile_sam_state(asset_path) -> dict[str, torch.Tensor]:
    return read_checkpoint(asset_path("mobile_sam.pt"), name="mobile_sam")


@pytest.fixture(scope="module")
def parts_by_name(asset_path):
    """name -> loaded SamParts, loaded on first use (one per variant per module)."""
    cache = {}

    def _get(name: str):
        if name not in cache:
            file = {"mobile_sam": "mobile_sam.pt", "lite_medsam": "lite_medsam.pth"}[name]
            cache[name] = load_sam(name, checkpoint=asset_path(file))
        return cache[name]

    return _get


@pytest.fixture(scope="module")
def ours_on_crop(parts_by_name, he_crop) -> EncoderOutput:
    encoder = parts_by_name("mobile_sam").encoder
    with torch.inference_mode():
        return encoder(encoder.preprocess(he_crop))


@pytest.fixture(scope="module")
def official_on_crop(mobile_sam_state, he_crop) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding (1,256,64,64), early (1,160,64,64)) from the official MobileSAM encoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_vit = pytest.importorskip("mobile_sam.modeling.tiny_vit_sam")
    official = tiny_vit.TinyViT(
        img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, mbconv_expand_ratio=4.0,
        local_conv_size=3, layer_lr_decay=0.8,
    )
    prefix = "image_encoder."
    official.load_state_dict(
        {k[len(prefix):]: v for k, v in mobile_sam_state.items() if k.startswith(prefix)}
    )
    official.eval()  # after loading: it caches attention biases in eval mode
    grabbed = {}
    # WSI-SAM's early feature: official layers[1] output, (B, 64*64 tokens, 160).
    official.layers[1].register_forward_hook(lambda _m, _i, out: grabbed.setdefault("early", out))
    x = preprocess(he_crop, img_size=1024)
    with torch.inference_mode():
        embedding = official(x)
    early = grabbed["early"].view(1, 64, 64, -1).permute(0, 3, 1, 2)
    return embedding, early


def test_filter_maps_all_302_official_encoder_keys(mobile_sam_state):
    prefix = "image_encoder."
    official = {k[len(prefix):]: v for k, v in mobile_sam_state.items() if k.startswith(prefix)}
    assert len(official) == 302
    mapped, dropped = checkpoint_filter_fn(official)
    assert sorted(dropped) == ["head.bias", "head.weight", "norm_head.bias", "norm_head.weight"]
    assert len(mapped) + len(dropped) == 302
    encoder = build_encoder("mobile_sam")
    result = encoder.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(encoder.state_dict()) == set(mapped)
    assert "stages.2.downsample.conv1.conv.weight" in mapped  # from layers.1.downsample
    assert "patch_embed.conv2.conv.weight" in mapped  # from patch_embed.seq.2.c


def test_load_sam_gives_frozen_eval_parts(parts_by_name):
    parts = parts_by_name("mobile_sam")
    assert parts.img_size == 1024 and parts.name == "mobile_sam"
    for module in parts.modules():
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert parts.prompt_encoder.input_image_size == (1024, 1024)
    assert parts.prompt_encoder.image_embedding_size == (64, 64)
    assert parts.mask_decoder.num_mask_tokens == 4


def test_matches_official_mobile_sam_on_real_he(ours_on_crop, official_on_crop):
    embedding, early = official_on_crop
    assert ours_on_crop.embedding.shape == (1, 256, 64, 64)
    assert ours_on_crop.early.shape == (1, 160, 64, 64)
    assert ours_on_crop.embedding.dtype == torch.float32
    assert rel_error(ours_on_crop.embedding, embedding) < TOLERANCE
    assert rel_error(ours_on_crop.early, early) < TOLERANCE


def test_stale_attention_bias_cache_is_cleared_on_load(mobile_sam_state):
    encoder = build_encoder("mobile_sam").eval()
    attention = encoder.stages[1].blocks[0].attn
    stale = attention.get_attention_biases(torch.device("cpu"))  # cached from random weights
    prefix = "image_encoder."
    encoder.load_official(
        {k[len(prefix):]: v for k, v in mobile_sam_state.items() if k.startswith(prefix)}
    )
    cached = attention.get_attention_biases(torch.device("cpu"))
    expected = attention.attention_biases[:, attention.attention_bias_idxs]
    assert not torch.equal(stale, expected)
    assert torch.equal(cached, expected)


def test_channels_last_gives_the_same_output(parts_by_name, he_crop, ours_on_crop):
    encoder = optimise_for_inference(copy.deepcopy(parts_by_name("mobile_sam").encoder))
    assert encoder.channels_last
    assert encoder.neck[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = encoder(encoder.preprocess(he_crop))
    assert out.embedding.is_contiguous()
    assert rel_error(out.embedding, ours_on_crop.embedding) < 1e-5
    assert rel_error(out.early, ours_on_crop.early) < 1e-5


def test_lite_medsam_loads_strictly_and_encodes_256(parts_by_name, he_crop, asset_path):
    parts = parts_by_name("lite_medsam")
    assert parts.img_size == 256
    assert parts.encoder.patch_embed.conv1.conv.kernel_size == (1, 1)
    assert parts.prompt_encoder.input_image_size == (256, 256)
    state = read_checkpoint(asset_path("lite_medsam.pth"), name="lite_medsam")
    encoder_keys = [k for k in state if k.startswith("image_encoder.")]
    assert len(encoder_keys) == len(parts.encoder.state_dict()) == 298  # no classifier head
    x = parts.encoder.preprocess(he_crop)  # 1024 crop -> 256
    assert x.shape == (1, 3, 256, 256)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.inference_mode():
        out = parts.encoder(x)
    assert out.embedding.shape == (1, 256, 64, 64)
    assert out.early.shape == (1, 160, 64, 64)
    assert torch.isfinite(out.embedding).all()


def test_mobile_sam_weights_do_not_fit_lite_medsam(asset_path):
    with pytest.raises(WeightsError, match="napari-wsi-sam weights install lite_medsam"):
        load_sam("lite_medsam", checkpoint=asset_path("mobile_sam.pt"))


@pytest.mark.parametrize("name", sorted(ENCODER_CONFIGS))
def test_every_variant_builds_and_encodes(name):
    torch.manual_seed(0)
    encoder = build_encoder(name).eval()
    size = ENCODER_CONFIGS[name]["img_size"]
    assert encoder.img_size == size
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        out = encoder(x)
    assert isinstance(out, EncoderOutput)
    assert out.embedding.shape == (1, 256, 64, 64)
    assert out.early.shape == (1, 160, 64, 64)
    with pytest.raises(ValueError, match=f"img_size={size}"):
        encoder(torch.zeros(1, 3, size // 2, size // 2))


def test_preprocess_normalises_with_imagenet_statistics():
    image = np.zeros((1024, 1024, 3), np.uint8)
    image[..., 0] = 255
    x = preprocess(image, img_size=1024)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    expected = [(255 - PIXEL_MEAN[0]) / PIXEL_STD[0], -PIXEL_MEAN[1] / PIXEL_STD[1],
                -PIXEL_MEAN[2] / PIXEL_STD[2]]
    assert torch.allclose(x[0, :, 5, 7], torch.tensor(expected), atol=1e-6)


def test_preprocess_batches_and_resizes_with_antialiasing(he_crop):
    batch = np.stack([he_crop, he_crop[::-1]])
    x = preprocess(batch, img_size=256, pixel_mean=(0, 0, 0), pixel_std=(255, 255, 255))
    assert x.shape == (2, 3, 256, 256)
    # Antialiased: each output pixel is close to the mean of its 4x4 input block.
    block_mean = he_crop[:4, :4].reshape(-1, 3).mean(0) / 255
    assert np.allclose(x[0, :, 0, 0].numpy(), block_mean, atol=0.05)
    assert torch.allclose(x[1], preprocess(he_crop[::-1], img_size=256, pixel_mean=(0, 0, 0),
                                           pixel_std=(255, 255, 255))[0])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((64, 64), np.uint8), "RGB"),
        (np.zeros((64, 64, 4), np.uint8), "RGB"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 32, 3), np.uint8), "square"),
    ],
)
def test_preprocess_rejects_bad_input(array, message):
    with pytest.raises(ValueError, match=message):
        preprocess(array, img_size=1024)
