"""Our network gives the official SAM's outputs for the same weights."""

from __future__ import annotations

import pytest
import torch

from conftest import build_official, make_pair, prompt_args
from reference import import_segment_anything
from sam_plugins.modeling.image_encoder import get_rel_pos
from sam_plugins.models.configs import TINY, VIT_B, VIT_H, VIT_L, build_sam, count_parameters

TOL = 1e-4


def _prompts(size: int):
    g = torch.Generator().manual_seed(3)
    points = (torch.rand(2, 3, 2, generator=g) * size, torch.tensor([[1, 0, 1], [1, 1, 0]]))
    boxes = torch.tensor([[10.0, 20.0, 150.0, 200.0], [0.0, 5.0, 60.0, 90.0]])
    masks = torch.randn(2, 1, 4 * size // 16, 4 * size // 16, generator=g) * 3
    return points, boxes, masks


@pytest.fixture(scope="module")
def tiny_outputs(tiny_pair):
    official, ours = tiny_pair
    x = torch.randn(1, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        return official, ours, official.image_encoder(x), ours.image_encoder(x)


def test_image_embeddings_match(tiny_outputs):
    _, _, ref, out = tiny_outputs
    assert out.shape == ref.shape == (1, TINY.prompt_embed_dim, 16, 16)
    assert (out - ref).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["points", "box", "points+box", "mask", "points+mask", "nothing"])
@pytest.mark.parametrize("multimask", [True, False])
def test_prompt_embeddings_and_masks_match(tiny_outputs, kind, multimask):
    official, ours, ref_emb, _ = tiny_outputs
    points, boxes, masks = _prompts(TINY.image_size)
    args = prompt_args(kind, points, boxes, masks)
    with torch.no_grad():
        s_ref, d_ref = official.prompt_encoder(*args)
        s_out, d_out = ours.prompt_encoder(*args)
        assert s_out.shape == s_ref.shape and d_out.shape == d_ref.shape
        assert s_ref.numel() == 0 or (s_out - s_ref).abs().max() <= TOL
        assert (d_out - d_ref).abs().max() <= TOL
        pe_ref, pe_out = official.prompt_encoder.get_dense_pe(), ours.prompt_encoder.get_dense_pe()
        assert (pe_out - pe_ref).abs().max() <= TOL
        # the same embedding goes into both decoders, so the decoder is compared on its own
        l_ref, iou_ref = official.mask_decoder(ref_emb, pe_ref, s_ref, d_ref, multimask)
        l_out, iou_out = ours.mask_decoder(ref_emb, pe_out, s_out, d_out, multimask)
    assert l_out.shape == l_ref.shape == (s_ref.shape[0], 3 if multimask else 1, 64, 64)
    assert (l_out - l_ref).abs().max() <= TOL
    assert (iou_out - iou_ref).abs().max() <= TOL


def test_end_to_end_forward_matches(tiny_pair):
    official, ours = tiny_pair
    g = torch.Generator().manual_seed(5)
    image = (torch.rand(3, 256, 192, generator=g) * 255).round()
    record = {
        "image": image,
        "original_size": (300, 225),
        "point_coords": torch.tensor([[[50.0, 60.0]], [[120.0, 30.0]]]),
        "point_labels": torch.tensor([[1], [1]]),
        "boxes": torch.tensor([[10.0, 10.0, 100.0, 120.0], [40.0, 5.0, 180.0, 200.0]]),
    }
    ref = official([record], multimask_output=True)[0]
    out = ours([record], multimask_output=True)[0]
    assert out["masks"].shape == ref["masks"].shape == (2, 3, 300, 225)
    assert (out["low_res_logits"] - ref["low_res_logits"]).abs().max() <= TOL
    assert (out["iou_predictions"] - ref["iou_predictions"]).abs().max() <= TOL
    # thresholded masks agree except where a logit is within float noise of the threshold
    ref_logits = official.postprocess_masks(ref["low_res_logits"], (256, 192), (300, 225))
    disagree = out["masks"] != ref["masks"]
    assert not disagree.any() or ref_logits[disagree].abs().max() < 1e-3


def test_training_forward_and_gradients_match_official():
    """With gradients on (training) attention builds its whole map at once; embeddings and
    the gradients of every encoder weight are still the official ones."""
    official, ours = make_pair(TINY, seed=4)
    x = torch.randn(2, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(2)) * 60
    target = torch.randn(2, TINY.prompt_embed_dim, 16, 16, generator=torch.Generator().manual_seed(3))
    out = ours.image_encoder(x)
    ref = official.image_encoder(x)
    assert (out - ref).abs().max() <= TOL
    (out * target).sum().backward()
    (ref * target).sum().backward()
    official_params = dict(official.image_encoder.named_parameters())
    for name, param in ours.image_encoder.named_parameters():
        expected = official_params[name].grad
        assert (param.grad - expected).abs().max() <= TOL * max(1.0, expected.abs().max().item()), name


@pytest.mark.parametrize(
    ("q_size", "k_size", "length"), [(14, 14, 27), (64, 64, 127), (32, 32, 127), (20, 20, 27)]
)
def test_relative_position_interpolation_matches(q_size, k_size, length):
    import_segment_anything()
    from segment_anything.modeling.image_encoder import get_rel_pos as official_get_rel_pos

    rel = torch.randn(length, 8, generator=torch.Generator().manual_seed(length))
    assert torch.allclose(get_rel_pos(q_size, k_size, rel), official_get_rel_pos(q_size, k_size, rel))


def test_other_input_size_runs_like_official():
    """A model built for 512 px input (rel-pos tables sized for it) matches the official code too."""
    config = TINY.replace(image_size=512, window_size=7)
    official, ours = make_pair(config, seed=2)
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        assert (ours.image_encoder(x) - official.image_encoder(x)).abs().max() <= TOL


@pytest.mark.parametrize(
    ("config", "expected"), [(VIT_B, 93_735_472), (VIT_L, 312_342_832), (VIT_H, 641_090_608)]
)
def test_parameter_counts_and_state_dict_layout_equal_official(config, expected):
    with torch.device("meta"):
        ours = build_sam(config)
        official = build_official(config)
    assert count_parameters(ours) == expected == count_parameters(official)
    ours_sd, official_sd = ours.state_dict(), official.state_dict()
    assert list(ours_sd) == list(official_sd)
    assert all(ours_sd[k].shape == official_sd[k].shape for k in ours_sd)


@pytest.mark.slow
def test_vit_b_embeddings_match_official():
    """Full-size ViT-B with random weights: the image embedding agrees within 1e-4 (~25 s)."""
    official, ours = make_pair(VIT_B, seed=0)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)) * 60
    with torch.inference_mode():
        ref = official.image_encoder(x)
        out = ours.image_encoder(x)
        points = (torch.tensor([[[500.0, 400.0], [100.0, 900.0]]]), torch.tensor([[1, 0]]))
        s_ref, d_ref = official.prompt_encoder(points, None, None)
        l_ref, i_ref = official.mask_decoder(ref, official.prompt_encoder.get_dense_pe(), s_ref, d_ref, True)
        s_out, d_out = ours.prompt_encoder(points, None, None)
        l_out, i_out = ours.mask_decoder(out, ours.prompt_encoder.get_dense_pe(), s_out, d_out, True)
    assert (out - ref).abs().max() <= TOL
    assert (l_out - l_ref).abs().max() <= TOL
    assert (i_out - i_ref).abs().max() <= TOL


def test_bf16_mode_is_opt_in_and_close(tiny_outputs):
    _, ours, ref, _ = tiny_outputs
    x = torch.randn(1, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(1)) * 60
    assert ours.image_encoder.precision == "fp32"
    ours.image_encoder.set_precision("bf16")
    try:
        with torch.no_grad():
            out = ours.image_encoder(x)
    finally:
        ours.image_encoder.set_precision("fp32")
    assert out.dtype == torch.float32
    assert (out - ref).abs().mean() < 0.05
    with pytest.raises(ValueError, match="precision"):
        ours.image_encoder.set_precision("fp8")
