"""The decoder's inference fast path (reassociated transformer, matmul upscaling, composed resize).

It must give the official decoder's outputs to float rounding (1e-4 here), follow every change of
its inputs and weights despite its cache, stay out of training, and leave the AMG's records identical.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage import data
from torch.nn import functional as F

from conftest import make_pair, prompt_args
from reference import import_segment_anything, install_cv2_stand_in, install_pycocotools_stand_in
from sam_plugins.automatic import SamAutomaticMaskGenerator
from sam_plugins.modeling.fast_decoder import postprocess_masks, same_bits, upscale_masks
from sam_plugins.models.configs import VIT_B

TOL = 1e-4
KINDS = ["points", "box", "points+box", "mask", "points+mask"]


def _inputs(model, kind: str, n: int = 3, seed: int = 0):
    """Prompt and image embeddings for ``n`` prompt sets of one kind, plus a random image embedding."""
    pe_mod = model.prompt_encoder
    size, (h, w) = pe_mod.input_image_size[0], pe_mod.image_embedding_size
    g = torch.Generator().manual_seed(seed)
    points = (torch.rand(n, 2, 2, generator=g) * size, torch.tensor([[1, 0]] * n))
    boxes = torch.sort(torch.rand(n, 2, 2, generator=g) * size, dim=1).values.reshape(n, 4)
    masks = torch.randn(n, 1, 4 * h, 4 * w, generator=g) * 3
    args = prompt_args(kind, points, boxes, masks)
    emb = torch.randn(1, pe_mod.embed_dim, h, w, generator=g)
    with torch.no_grad():
        sparse, dense = pe_mod(*args)
    return emb, pe_mod.get_dense_pe(), sparse, dense


def _decode(decoder, emb, pe, sparse, dense, multimask: bool, fast: bool):
    decoder.fast_inference = fast
    try:
        with torch.no_grad():
            return decoder(emb, pe, sparse, dense, multimask)
    finally:
        decoder.fast_inference = True


@pytest.fixture(scope="module")
def vit_b_pair():
    return make_pair(VIT_B)


def _check_decoder(official, ours, kind: str, multimask: bool) -> None:
    emb, pe, sparse, dense = _inputs(ours, kind)
    with torch.no_grad():
        ref_low, ref_iou = official.mask_decoder(emb, pe, sparse, dense, multimask)
    plain_low, plain_iou = _decode(ours.mask_decoder, emb, pe, sparse, dense, multimask, fast=False)
    fast_low, fast_iou = _decode(ours.mask_decoder, emb, pe, sparse, dense, multimask, fast=True)
    assert torch.equal(plain_low, ref_low) and torch.equal(plain_iou, ref_iou)
    assert fast_low.shape == ref_low.shape and fast_iou.shape == ref_iou.shape
    assert (fast_low - ref_low).abs().max() <= TOL
    assert (fast_iou - ref_iou).abs().max() <= TOL
    assert not torch.equal(fast_low, ref_low)  # the fast path did run (it rounds differently)
    with torch.no_grad():
        ious = ours.mask_decoder.predict_ious(emb, pe, sparse, dense)
    cols = slice(1, None) if multimask else slice(0, 1)
    assert (ious[:, cols] - ref_iou).abs().max() <= TOL


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_matches_plain_and_official_tiny(tiny_pair, kind, multimask):
    _check_decoder(*tiny_pair, kind, multimask)


@pytest.mark.parametrize("kind,multimask", [("points", True), ("points+box", False), ("points+mask", True)])
def test_fast_path_matches_official_vit_b_decoder(vit_b_pair, kind, multimask):
    _check_decoder(*vit_b_pair, kind, multimask)


def test_cache_follows_embedding_dense_pe_and_weights(tiny_pair):
    _, model = tiny_pair
    model = copy.deepcopy(model)
    dec = model.mask_decoder
    emb, pe, sparse, dense = _inputs(model, "points")

    def both():
        fast = _decode(dec, emb, pe, sparse, dense, True, fast=True)
        plain = _decode(dec, emb, pe, sparse, dense, True, fast=False)
        assert all((a - b).abs().max() <= TOL for a, b in zip(fast, plain, strict=True))
        return fast

    first = both()
    assert all(torch.equal(a, b) for a, b in zip(first, both(), strict=True))  # cached: same bits
    emb.mul_(-1.0)  # in place: same tensor object, new values
    assert not torch.equal(both()[0], first[0])
    pe = pe.clone()
    pe[0, 0, 0, 0] += 1.0
    both()
    dense = dense + 0.5  # another (non-broadcast) dense prompt
    both()
    with torch.no_grad():
        dec.transformer.layers[0].cross_attn_image_to_token.q_proj.weight.mul_(1.5)
    both()
    # back to a prompt without mask input (one dense vector for all): the cached side, including the
    # upscaling's first convolution carried through every block's LayerNorm, follows weight changes
    _, _, sparse, dense = _inputs(model, "points")
    before = both()
    assert dec._side_cache is not None and dec._side_cache[-1].conv1_in is not None
    changes = [
        dec.transformer.layers[0].cross_attn_image_to_token.q_proj.weight,
        dec.transformer.layers[0].norm4.weight,
        dec.transformer.layers[-1].norm4.bias,
        dec.output_upscaling[0].weight,
        dec.output_upscaling[0].bias,
    ]
    for param in changes:
        with torch.no_grad():
            param.add_(0.3)
        after = both()
        assert not torch.equal(after[0], before[0])
        before = after


def test_inference_mode_tensors_and_grad_use_the_right_path(tiny_pair):
    official, ours = tiny_pair
    emb, pe, sparse, dense = _inputs(ours, "points")
    with torch.inference_mode():
        a = ours.mask_decoder(emb.clone(), pe.clone(), sparse, dense, True)
        b = ours.mask_decoder(emb.clone(), pe.clone(), sparse, dense, True)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # with grad enabled (training) the plain path runs: bit-identical to official, differentiable
    emb_g = emb.clone().requires_grad_(True)
    low, iou = ours.mask_decoder(emb_g, pe, sparse, dense, True)
    with torch.no_grad():
        ref_low, ref_iou = official.mask_decoder(emb, pe, sparse, dense, True)
    assert torch.equal(low.detach(), ref_low) and torch.equal(iou.detach(), ref_iou)
    (low.sum() + iou.sum()).backward()
    assert emb_g.grad is not None and emb_g.grad.abs().sum() > 0


def test_upscale_matmuls_match_the_conv_transposes(vit_b_pair):
    _, ours = vit_b_pair
    dec = ours.mask_decoder
    g = torch.Generator().manual_seed(1)
    src, tokens = torch.randn(2, 64 * 64, 256, generator=g), torch.randn(2, 4, 256, generator=g)
    with torch.no_grad():
        ref = dec.masks_from_tokens(tokens, src, (64, 64), exact=True)
        hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        got = upscale_masks(dec.output_upscaling, hyper, src, (64, 64))
    assert got.shape == ref.shape == (2, 4, 256, 256)
    assert (got - ref).abs().max() <= TOL


@pytest.mark.parametrize(
    "input_size,original_size",
    [
        ((1024, 1024), (512, 512)),
        ((683, 1024), (400, 600)),
        ((1024, 512), (100, 50)),
        ((768, 1024), (3, 4)),
        ((1024, 768), (2000, 1500)),
        ((1024, 1024), (1024, 1024)),
    ],
)
def test_composed_resize_matches_two_interpolations(input_size, original_size):
    masks = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 20
    ref = F.interpolate(masks, (1024, 1024), mode="bilinear", align_corners=False)
    ref = ref[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(ref, original_size, mode="bilinear", align_corners=False)
    got = postprocess_masks(masks, 1024, input_size, original_size)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= TOL


def test_same_bits():
    x = torch.randn(5, 7)
    assert same_bits(x, x.clone())
    y = x.clone()
    y[2, 3] = torch.nextafter(y[2, 3], torch.tensor(10.0))
    assert not same_bits(x, y)
    assert not same_bits(x, x[:4])
    assert same_bits(x.to(torch.bfloat16), x.to(torch.bfloat16).clone())
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))  # bitwise, stricter than ==


IMAGE = np.ascontiguousarray(data.astronaut()[::3, ::2][:150, :200])


@pytest.fixture(scope="module")
def amg_setup(tiny_pair):
    official, ours = tiny_pair
    official = copy.deepcopy(official)
    official.image_encoder = ours.image_encoder  # both generators see the same embedding
    install_cv2_stand_in()
    install_pycocotools_stand_in()
    sa = import_segment_anything()
    base = dict(points_per_side=8, stability_score_thresh=0.0, box_nms_thresh=1.0)
    everything = sa.SamAutomaticMaskGenerator(official, pred_iou_thresh=0.0, **base).generate(IMAGE)
    return sa, official, ours, base, sorted(r["predicted_iou"] for r in everything)


def _records(gen_cls, model, **kwargs):
    return gen_cls(model, output_mode="uncompressed_rle", **kwargs).generate(IMAGE)


@pytest.mark.parametrize("quantile", [0.3, 0.7, 0.95])
def test_amg_screening_keeps_the_official_records(amg_setup, quantile, monkeypatch):
    sa, official, ours, base, ious = amg_setup
    # a threshold equal to a candidate's IoU (exclusive: the official filter drops that one) and a hair
    # below another (kept): both borderline cases for a screen computed with other rounding
    near_top = np.nextafter(np.float32(ious[-3]), np.float32(-1.0))
    for thresh in (ious[int(quantile * len(ious))], near_top):
        ref = _records(sa.SamAutomaticMaskGenerator, official, pred_iou_thresh=float(thresh), **base)
        batches: list = []

        def recorded(*args, _plan=SamAutomaticMaskGenerator._exact_batches, _seen=batches):
            planned = _plan(*args)
            _seen.extend(planned)
            return planned

        monkeypatch.setattr(SamAutomaticMaskGenerator, "_exact_batches", recorded)
        got = _records(SamAutomaticMaskGenerator, ours, pred_iou_thresh=float(thresh), **base)
        monkeypatch.undo()
        assert len(got) == len(ref) >= 1
        for a, b in zip(ref, got, strict=True):
            assert a["segmentation"] == b["segmentation"]
            assert a["point_coords"] == b["point_coords"] and a["bbox"] == b["bbox"]
            assert a["predicted_iou"] == b["predicted_iou"]  # exact path: same bits
            assert a["stability_score"] == b["stability_score"]
        if thresh == near_top:  # at most 3 candidates pass: the screen drops the other prompts
            assert 1 <= sum(n_real for _, n_real in batches) <= 3
