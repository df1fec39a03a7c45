"""The ONNX Runtime decoder path: each rewritten piece against segment-anything's and ours,
the graphs against eager PyTorch, the disk cache, and the fallback to torch.

The pieces run on SAM's real modules with random weights (their shapes are what matters and
a random head is no special case); the real-weights, real-nuclei agreement is in
tests/test_predictor.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_wsi_sam.errors import UsageError
from napari_wsi_sam.model import onnx_decoder
from napari_wsi_sam.model.encoder import EncoderOutput
from napari_wsi_sam.model.folded_transformer import two_way
from napari_wsi_sam.model.fusion import ResolutionBranch
from napari_wsi_sam.model.onnx_encoder import OnnxEncoders
from napari_wsi_sam.model.predictor import WsiSamPredictor
from napari_wsi_sam.model.sam import build_sam_parts
from napari_wsi_sam.model.wsi_sam import Prompts, WsiSam, WsiSamHead

pytest.importorskip("onnxruntime", reason="the ONNX path needs onnxruntime (install_requires)")


@pytest.fixture(scope="module")
def random_parts():
    torch.manual_seed(0)
    return build_sam_parts("mobile_sam")


def trained_like_head() -> WsiSamHead:
    """A head whose last layers are not zero, so that its residual is not 0."""
    torch.manual_seed(1)
    head = WsiSamHead()
    for branch in (head.hr, head.lr):
        assert isinstance(branch, ResolutionBranch)
        last = branch.hypernet.layers[-1]
        torch.nn.init.normal_(last.weight, std=0.05)
        torch.nn.init.normal_(last.bias, std=0.05)
    return head.eval().requires_grad_(False)


@pytest.mark.parametrize(("n", "tokens"), [(1, 8), (3, 7), (2, 12)])
def test_folded_transformer_equals_sams(random_parts, n, tokens):
    transformer = random_parts.mask_decoder.transformer
    image, pe = torch.randn(n, 256, 64, 64), torch.randn(1, 256, 64, 64)
    points = torch.randn(n, tokens, 256)
    with torch.inference_mode():
        want = transformer(image, pe, points)
        got = two_way(transformer, image, pe, points)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_upscaling_and_fused_residual_equal_the_eager_modules(random_parts):
    decoder = random_parts.mask_decoder
    head = trained_like_head()
    src = torch.randn(3, 4096, 256)
    vectors = torch.randn(3, 32)
    features = torch.randn(1, 32, 256, 256)
    with torch.inference_mode():
        want_up = decoder.output_upscaling(src.transpose(1, 2).reshape(3, 256, 64, 64))
        got_up = onnx_decoder.upscale(decoder, src, (3, 256, 64, 64))
        torch.testing.assert_close(got_up, want_up, rtol=0, atol=1e-5)
        want = head.hr.fusion.project(vectors, want_up, features)
        got = onnx_decoder.fused_residual(head.hr.fusion, vectors, want_up, features)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


def test_graphs_on_onnx_runtime_match_eager_pytorch(random_parts, tmp_path):
    """Both graphs, through export, disk and an ONNX Runtime session, against `WsiSam`."""
    decoders = onnx_decoder.OnnxDecoders(folder=tmp_path)
    wsi = WsiSam(prompt_encoder=random_parts.prompt_encoder,
                 mask_decoder=random_parts.mask_decoder, head=trained_like_head()).eval()
    generator = torch.Generator().manual_seed(3)
    hr = EncoderOutput(torch.randn(1, 256, 64, 64, generator=generator),
                       torch.randn(1, 160, 64, 64, generator=generator))
    lr = EncoderOutput(torch.randn(1, 256, 64, 64, generator=generator),
                       torch.randn(1, 160, 64, 64, generator=generator))
    boxes = torch.tensor([[96.0, 312.0, 150.0, 360.0], [600.0, 410.0, 660.0, 470.0],
                          [10.0, 20.0, 300.0, 200.0]])
    points = torch.tensor([[[120.0, 330.0], [20.0, 20.0]]] * 3)
    labels = torch.tensor([[1, 0]] * 3)
    with torch.inference_mode():
        features = wsi.head.hr.fusion.image_features(*hr)
        masks = torch.randn(3, 1, 256, 256, generator=generator) * 5
        for prompt in (dict(boxes=boxes), dict(points=points, labels=labels),
                       dict(boxes=boxes, points=points, labels=labels),
                       dict(boxes=boxes, masks=masks)):
            hr_prompts = Prompts(**prompt)
            lr_args = {k: (v / 2 + 256 if k in ("boxes", "points") else v)
                       for k, v in prompt.items()}
            lr_prompts = Prompts(**lr_args)
            for joint in (False, True):
                for multimask in (False, True):
                    want = wsi(hr, lr, hr_prompts, lr_prompts, multimask=multimask,
                               with_lr_mask=False, hr_image_features=features,
                               sam_mask="joint" if joint else "separate")
                    logits, iou = decoders.wsi_sam(wsi, hr, lr, features, hr_prompts,
                                                   lr_prompts, multimask=multimask, joint=joint)
                    torch.testing.assert_close(logits, want.hr_logits, rtol=0, atol=2e-3)
                    torch.testing.assert_close(iou, want.iou, rtol=0, atol=1e-4)
            sam_logits, sam_iou = decoders.sam(wsi.prompt_encoder, wsi.mask_decoder,
                                               hr.embedding, hr_prompts)
            want_logits, want_iou = wsi.sam_forward(hr.embedding, hr_prompts)
            torch.testing.assert_close(sam_logits, want_logits, rtol=0, atol=2e-3)
            torch.testing.assert_close(sam_iou, want_iou, rtol=0, atol=1e-4)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.split("-")[0] for f in files] == ["sam", "wsi", "wsi"], files


def test_fresh_head_runs_sams_graph_alone(random_parts, tmp_path):
    """A fresh head adds exactly 0: WSI-SAM's masks are the "sam" graph's, bit for bit."""
    decoders = onnx_decoder.OnnxDecoders(folder=tmp_path)
    wsi = WsiSam(prompt_encoder=random_parts.prompt_encoder,
                 mask_decoder=random_parts.mask_decoder).eval()
    assert onnx_decoder.head_is_fresh(wsi.head)
    assert not onnx_decoder.head_is_fresh(trained_like_head())
    out = EncoderOutput(torch.randn(1, 256, 64, 64), torch.randn(1, 160, 64, 64))
    prompts = Prompts(boxes=torch.tensor([[96.0, 312.0, 150.0, 360.0]]))
    with torch.inference_mode():
        logits, iou = decoders.wsi_sam(wsi, out, out, torch.zeros(1, 32, 256, 256), prompts,
                                       prompts)
        sam_logits, sam_iou = decoders.sam(wsi.prompt_encoder, wsi.mask_decoder,
                                           out.embedding, prompts)
    assert torch.equal(logits, sam_logits) and torch.equal(iou, sam_iou)
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["sam"]


def test_graph_files_are_reused_and_named_by_their_weights(random_parts, tmp_path,
                                                           monkeypatch):
    exports = []
    real_export = onnx_decoder.export_graph
    monkeypatch.setattr(onnx_decoder, "export_graph",
                        lambda *a, **k: exports.append(a[-1]) or real_export(*a, **k))
    decoder, encoder = random_parts.mask_decoder, random_parts.prompt_encoder
    prompts = Prompts(boxes=torch.tensor([[96.0, 312.0, 150.0, 360.0]]))
    embedding = torch.randn(1, 256, 64, 64)
    with torch.inference_mode():
        first = onnx_decoder.OnnxDecoders(folder=tmp_path).sam(encoder, decoder, embedding,
                                                               prompts)
        second = onnx_decoder.OnnxDecoders(folder=tmp_path).sam(encoder, decoder, embedding,
                                                                prompts)
    assert len(exports) == 1 and torch.equal(first[0], second[0])
    other = build_sam_parts("mobile_sam").mask_decoder  # other random weights
    assert (onnx_decoder.graph_digest(onnx_decoder.SamGraph(encoder, other), "sam")
            != onnx_decoder.graph_digest(onnx_decoder.SamGraph(encoder, decoder), "sam"))


def test_runtime_choice_and_fallback_to_torch(random_parts, monkeypatch, caplog, tmp_path):
    parts = {"mobile_sam": random_parts}
    with pytest.raises(UsageError, match="runtime"):
        WsiSamPredictor(device="cpu", parts=parts, runtime="tensorrt")  # type: ignore
    monkeypatch.setenv("NAPARI_WSI_SAM_RUNTIME", "torch")
    assert WsiSamPredictor(device="cpu", parts=parts).runtime == "torch"
    monkeypatch.setenv("NAPARI_WSI_SAM_RUNTIME", "fast")
    with pytest.raises(UsageError, match="NAPARI_WSI_SAM_RUNTIME='fast'"):
        WsiSamPredictor(device="cpu", parts=parts)
    monkeypatch.delenv("NAPARI_WSI_SAM_RUNTIME")
    predictor = WsiSamPredictor(device="cpu", parts=parts, head=trained_like_head(),
                                precision="float32")
    assert predictor.runtime == "auto" and predictor.uses_onnx()
    predictor.decoder_precision = "bfloat16"
    assert not predictor.uses_onnx()  # bfloat16 is a torch lever
    predictor.decoder_precision = "float32"
    predictor._onnx = onnx_decoder.OnnxDecoders(folder=tmp_path)
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    lr = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    boxes = np.array([[96.0, 312.0, 150.0, 360.0]])
    predictor.runtime = "torch"
    eager = predictor.predict(hr, lr, boxes=boxes, cache_key="c")

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_decoder, "export_graph", broken)
    predictor.runtime = "onnx"
    with caplog.at_level(logging.WARNING):
        fallback = predictor.predict(hr, lr, boxes=boxes, cache_key="c")
        predictor.predict(hr, lr, boxes=boxes, cache_key="c")
    warnings = [r for r in caplog.records if "ONNX Runtime decoder unavailable" in r.message]
    assert len(warnings) == 1 and "exporter exploded" in warnings[0].getMessage()
    np.testing.assert_array_equal(fallback.logits, eager.logits)  # torch ran, unchanged
    assert not predictor.uses_onnx()

    import napari_wsi_sam.model.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "onnx_runtime_available", lambda: False)
    fresh = WsiSamPredictor(device="cpu", parts=parts)
    assert not fresh.uses_onnx() and not fresh.encodes_on_onnx()


def test_warm_up_loads_builds_and_caches_no_crop(random_parts, tmp_path):
    predictor = WsiSamPredictor(device="cpu", parts={"mobile_sam": random_parts},
                                head=trained_like_head())
    predictor._onnx = onnx_decoder.OnnxDecoders(folder=tmp_path)
    predictor._onnx_encoders = OnnxEncoders(folder=tmp_path)
    predictor.warm_up()
    assert predictor.encoder_calls == 1
    assert len(predictor.cache) == 0
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["encoder", "wsi"]
    predictor.warm_up("sam")
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["encoder", "sam", "wsi"]


def test_encoder_graph_gives_float32_outputs(random_parts, tmp_path):
    """The encoder on ONNX Runtime against eager float32 PyTorch on a real-looking crop."""
    rng = np.random.default_rng(5)
    crop = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    encoder = random_parts.encoder
    x = encoder.preprocess(crop)
    with torch.inference_mode():
        want = encoder(x)
    got = OnnxEncoders(folder=tmp_path).encode(encoder, x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), rtol=0, atol=1e-4)
    predictor = WsiSamPredictor(device="cpu", parts={"mobile_sam": random_parts})
    assert predictor.encodes_on_onnx()
    for settings in ({"precision": "bfloat16"}, {"compile": True}, {"runtime": "torch"}):
        for key, value in settings.items():
            setattr(predictor, key, value)
        assert not predictor.encodes_on_onnx(), settings
        predictor.precision, predictor.compile, predictor.runtime = "auto", False, "auto"


def test_image_tokens_are_kept_per_crop_and_never_handed_to_another(random_parts, tmp_path):
    """Without mask prompts a crop's image tokens are computed once and reused (by the
    embedding's identity); another embedding, or mask prompts, get their own, and only the
    last few crops are kept."""
    decoders = onnx_decoder.OnnxDecoders(folder=tmp_path)
    encoder = random_parts.prompt_encoder
    boxes = Prompts(boxes=torch.tensor([[96.0, 312.0, 150.0, 360.0]]))
    with torch.inference_mode():
        first = torch.randn(1, 256, 64, 64)
        tokens, _ = decoders.prompt_inputs(encoder, first, boxes)
        again, _ = decoders.prompt_inputs(encoder, first, boxes)
        assert again.image is tokens.image and again.keys is tokens.keys
        want = onnx_decoder.image_tokens(first, encoder.no_mask_embed.weight[0][None, :, None,
                                                                                   None],
                                         onnx_decoder.key_positions(encoder))
        torch.testing.assert_close(tokens.image, want.image, rtol=0, atol=0)
        torch.testing.assert_close(tokens.keys, want.keys, rtol=0, atol=0)
        other = first.clone() + 1
        other_tokens, _ = decoders.prompt_inputs(encoder, other, boxes)
        assert not torch.equal(other_tokens.image, tokens.image)
        masked = Prompts(boxes=boxes.boxes, masks=torch.randn(1, 1, 256, 256))
        mask_tokens, _ = decoders.prompt_inputs(encoder, first, masked)
        assert not torch.equal(mask_tokens.image, tokens.image)
        kept = [torch.randn(1, 256, 64, 64) for _ in range(onnx_decoder.IMAGE_TOKENS_KEPT + 2)]
        for embedding in kept:
            decoders.prompt_inputs(encoder, embedding, boxes)
    assert len(decoders._tokens) == onnx_decoder.IMAGE_TOKENS_KEPT
