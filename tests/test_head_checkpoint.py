"""Head checkpoints: our own format round trip, and the WSI-SAM authors' net_high/net_low."""

from __future__ import annotations

import pytest
import torch

from napari_wsi_sam.errors import UsageError, WeightsError
from napari_wsi_sam.model.head_checkpoint import (
    HeadSettings,
    import_reference_heads,
    load_head,
    reference_filter_fn,
    save_head,
)
from napari_wsi_sam.model.wsi_sam import HeadConfig, WsiSamHead

# The authors' new tensors per resolution (HQ-SAM names) and their shapes.
REFERENCE_SHAPES: dict[str, tuple[int, ...]] = {
    "hf_token.weight": (1, 256),
    "hf_mlp.layers.0.weight": (256, 256), "hf_mlp.layers.0.bias": (256,),
    "hf_mlp.layers.1.weight": (256, 256), "hf_mlp.layers.1.bias": (256,),
    "hf_mlp.layers.2.weight": (32, 256), "hf_mlp.layers.2.bias": (32,),
    "compress_vit_feat.0.weight": (160, 256, 2, 2), "compress_vit_feat.0.bias": (256,),
    "compress_vit_feat.1.weight": (256,), "compress_vit_feat.1.bias": (256,),
    "compress_vit_feat.3.weight": (256, 32, 2, 2), "compress_vit_feat.3.bias": (32,),
    "embedding_encoder.0.weight": (256, 64, 2, 2), "embedding_encoder.0.bias": (64,),
    "embedding_encoder.1.weight": (64,), "embedding_encoder.1.bias": (64,),
    "embedding_encoder.3.weight": (64, 32, 2, 2), "embedding_encoder.3.bias": (32,),
    "embedding_maskfeature.0.weight": (64, 32, 3, 3), "embedding_maskfeature.0.bias": (64,),
    "embedding_maskfeature.1.weight": (64,), "embedding_maskfeature.1.bias": (64,),
    "embedding_maskfeature.3.weight": (32, 64, 3, 3), "embedding_maskfeature.3.bias": (32,),
}
OURS = {"hf_token": "token", "hf_mlp": "hypernet", "compress_vit_feat": "fusion.early",
        "embedding_encoder": "fusion.final", "embedding_maskfeature": "fusion.mask"}
# A few of SAM's frozen decoder tensors, which the authors' files also hold.
SAM_DECODER = {"iou_token.weight": (1, 256), "mask_tokens.weight": (4, 256),
               "transformer.layers.0.self_attn.q_proj.weight": (256, 256),
               "output_upscaling.0.weight": (256, 64, 2, 2),
               "output_hypernetworks_mlps.0.layers.0.weight": (256, 256),
               "iou_prediction_head.layers.2.bias": (4,)}


def reference_state(seed: int, *, prefix: str = "") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {**REFERENCE_SHAPES, **SAM_DECODER}
    return {prefix + k: torch.randn(s, generator=generator) for k, s in shapes.items()}


def ours(key: str, role: str) -> str:
    module, _, rest = key.partition(".")
    return f"{role}.{OURS[module]}.{rest}"


def random_head(**config) -> WsiSamHead:
    torch.manual_seed(1)
    return WsiSamHead(HeadConfig(**config), zero_init=False)


@pytest.mark.parametrize("aggregation", ["average", "concat_fc"])
def test_round_trip_keeps_every_tensor_and_setting(tmp_path, aggregation):
    head = random_head(aggregation=aggregation)
    path = save_head(head, tmp_path / "head.pt", lam=0.7, hr_mpp=0.5,
                     training_data="CATCH train split, 20 epochs")
    assert path.stat().st_size < 5 * 2**20
    loaded, settings = load_head(path)
    assert settings.config.aggregation == aggregation and settings.lam == 0.7
    assert settings.config == head.config  # the settings contain the head's HeadConfig
    assert settings.hr_mpp == 0.5 and settings.lr_factor == 2.0
    assert settings.base_model == "mobile_sam" and settings.format_version == 2
    assert settings.training_data.startswith("CATCH")
    assert loaded.config == head.config
    expected = head.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["settings"]["package_version"]


def test_bad_head_files_raise_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_head(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable"):
        load_head(junk)
    hello = tmp_path / "hello.pt"  # an unpickler KeyError, not a torch error
    hello.write_text("hello")
    with pytest.raises(WeightsError, match=r"not a readable torch checkpoint \(KeyError"):
        load_head(hello)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, foreign)
    with pytest.raises(WeightsError, match="import_reference_heads"):
        load_head(foreign)
    with pytest.raises(UsageError, match="unknown head settings"):
        save_head(random_head(), tmp_path / "h.pt", learning_rate=1.0)
    assert HeadSettings().config == HeadConfig()


def test_heads_of_the_first_format_still_load(tmp_path):
    """Format 1 kept aggregation and sam_mask beside the other settings."""
    head = random_head(aggregation="max")
    old = {"aggregation": "max", "sam_mask": "joint", "lam": 0.5, "hr_mpp": 0.25,
           "lr_factor": 2.0, "base_model": "mobile_sam", "training_data": "old run",
           "package_version": "0.1.0", "format_version": 1}
    torch.save({"format": "napari-wsi-sam-head", "settings": old,
                "state_dict": head.state_dict()}, tmp_path / "v1.pt")
    loaded, settings = load_head(tmp_path / "v1.pt")
    assert settings.config == HeadConfig(aggregation="max", sam_mask="joint")
    assert settings.hr_mpp == 0.25 and settings.heldout is None and settings.classes == ()
    assert loaded.config == settings.config


@pytest.mark.parametrize("prefix", ["", "module."])
def test_authors_checkpoints_land_where_they_should(tmp_path, prefix):
    high, low = reference_state(1, prefix=prefix), reference_state(2, prefix=prefix)
    torch.save({"model": high}, tmp_path / "net_high.pth")
    torch.save({"model": low}, tmp_path / "net_low.pth")
    head, settings = import_reference_heads(tmp_path / "net_high.pth", tmp_path / "net_low.pth")
    assert settings.config == HeadConfig(aggregation="sum", sam_mask="joint")
    assert head.config == HeadConfig(aggregation="sum", sam_mask="joint")
    state = head.state_dict()
    assert len(state) == 2 * len(REFERENCE_SHAPES)
    for role, source in (("hr", high), ("lr", low)):
        for key in REFERENCE_SHAPES:
            assert torch.equal(state[ours(key, role)], source[prefix + key]), key
    # the paper's aggregation on the same weights
    paper, _ = import_reference_heads({"model": high}, {"model": low}, aggregation="average")
    assert paper.config.aggregation == "average"


def test_authors_checkpoint_with_unknown_keys_is_refused():
    high = reference_state(1)
    high["hf_extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match="hf_extra"):
        reference_filter_fn(high, reference_state(2))
    _, dropped = reference_filter_fn(reference_state(1), reference_state(2))
    assert len(dropped) == 2 * len(SAM_DECODER)
    incomplete = reference_state(1)
    del incomplete["hf_token.weight"]
    with pytest.raises(WeightsError, match="does not fit"):
        import_reference_heads({"model": incomplete}, {"model": reference_state(2)})
