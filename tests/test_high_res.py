"""The optional high-resolution feature path (SamConfig.high_res_channels): a model gains it without
changing its outputs, it learns, and its features travel with embeddings (files, tiles, generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam_plugins.automatic import SamAutomaticMaskGenerator
from sam_plugins.embeddings import ImageEmbedding, load_embedding, save_embedding
from sam_plugins.models.checkpoints import infer_config
from sam_plugins.models.configs import TINY, add_high_res, build_sam
from sam_plugins.models.registry import load_model
from sam_plugins.predictor import SamPredictor
from sam_plugins.sample_data import cells_2d
from sam_plugins.tiling import TiledPredictor, compute_tiled_embeddings
from sam_plugins.training.trainer import (
    TrainConfig,
    build_model,
    draw_examples,
    interactive_loss,
    make_optimizer,
    save_checkpoint,
)

# the shipped sample (fluorescence nuclei) as 8-bit: uint8 is used as is, so a tile equals its crop
IMAGE = np.ascontiguousarray((cells_2d()[0][:180, :220] // 256).astype(np.uint8))
POINT = dict(point_coords=np.array([[60.0, 70.0]]), point_labels=np.array([1]))
CHANNELS = (8, 16, 32)


@pytest.fixture(scope="module")
def plain() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_sam(TINY)


@pytest.fixture(scope="module")
def grown(plain) -> torch.nn.Module:
    return add_high_res(plain, CHANNELS)


def test_added_path_keeps_the_outputs_until_trained(plain, grown):
    a, b = SamPredictor(plain), SamPredictor(grown)
    a.set_image(IMAGE)
    b.set_image(IMAGE)
    assert [tuple(f.shape) for f in b.high_res_features] == [(1, 8, 64, 64), (1, 16, 32, 32)]
    before, after = a.predict(**POINT, return_logits=True), b.predict(**POINT, return_logits=True)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)
    with torch.no_grad():
        for proj in (grown.high_res_encoder.proj_s4, grown.high_res_encoder.proj_s8):
            proj.weight.normal_(0, 0.5)
    try:
        b.set_image(IMAGE)
        changed = b.predict(**POINT, return_logits=True)[0]
        assert np.abs(changed - a.predict(**POINT, return_logits=True)[0]).max() > 1e-2
    finally:
        with torch.no_grad():
            for proj in (grown.high_res_encoder.proj_s4, grown.high_res_encoder.proj_s8):
                proj.weight.zero_()
    with pytest.raises(ValueError, match="already has"):
        add_high_res(grown, CHANNELS)


def test_fast_decoder_adds_the_features_like_the_plain_one():
    """The inference fast path (channels-last upscaling) gives the plain path's logits with the path."""
    torch.manual_seed(5)
    model = add_high_res(build_sam(TINY), CHANNELS)
    with torch.no_grad():
        for proj in (model.high_res_encoder.proj_s4, model.high_res_encoder.proj_s8):
            proj.weight.normal_(0, 0.5)
            proj.bias.normal_(0, 0.5)
    predictor = SamPredictor(model)
    predictor.set_image(IMAGE)
    boxes = torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 30.0, 200.0, 150.0], [0.0, 0.0, 255.0, 200.0]])
    points = torch.tensor([[[50.0, 60.0]], [[150.0, 90.0]], [[30.0, 200.0]]])
    labels = torch.ones(3, 1, dtype=torch.int64)
    runs = []
    for fast in (True, False):
        model.mask_decoder.fast_inference = fast
        try:
            runs.append(
                [predictor.predict_torch(points, labels, boxes=b, return_logits=True) for b in (None, boxes)]
            )
        finally:
            model.mask_decoder.fast_inference = True
    for (m_fast, iou_fast, low_fast), (m_plain, iou_plain, low_plain) in zip(*runs, strict=True):
        torch.testing.assert_close(low_fast, low_plain, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m_fast, m_plain, atol=1e-3, rtol=1e-4)  # full-size logits
        torch.testing.assert_close(iou_fast, iou_plain, atol=1e-5, rtol=1e-5)
    assert (runs[0][0][2] - runs[0][1][2]).abs().max() > 0.1  # the prompts differ: not a constant


def test_checkpoint_round_trip_keeps_the_path(tmp_path: Path):
    torch.manual_seed(4)
    model = add_high_res(build_sam(TINY), CHANNELS)
    with torch.no_grad():
        model.high_res_encoder.proj_s4.weight.normal_(0, 0.5)
    assert infer_config(model.state_dict()) == model.config  # plain state_dict: architecture detected
    path = save_checkpoint(tmp_path / "hires.pt", model, {})
    reloaded = load_model(str(path), device="cpu")
    assert reloaded.config.high_res_channels == CHANNELS
    x = torch.rand(1, 3, 256, 256) * 255
    with torch.no_grad():
        for f, g in zip(reloaded.encode(x)[1], model.encode(x)[1], strict=True):
            torch.testing.assert_close(f, g)


def test_embeddings_carry_the_high_res_features(grown, plain, tmp_path: Path):
    predictor = SamPredictor(grown)
    predictor.set_image(IMAGE)
    ref = predictor.predict(**POINT, return_logits=True)
    emb = predictor.get_embedding()
    loaded = load_embedding(save_embedding(tmp_path / "emb.npz", emb), grown)
    assert isinstance(loaded, ImageEmbedding) and loaded.high_res is not None
    other = SamPredictor(grown)
    other.set_image_embedding(loaded)
    for x, y in zip(ref, other.predict(**POINT, return_logits=True), strict=True):
        assert np.array_equal(x, y)
    # an embedding from a model without the path (or the other way round) is refused, not misused
    official_style = SamPredictor(plain)
    official_style.set_image(IMAGE)
    with pytest.raises(ValueError, match="only the encoder output"):
        other.set_image_embedding(official_style.get_embedding(), check_model=False)
    with pytest.raises(ValueError, match="no high-res path"):
        official_style.set_image_embedding(loaded, check_model=False)

    tiled = compute_tiled_embeddings(predictor, IMAGE, tile_shape=128, halo=24)
    tiled = load_embedding(save_embedding(tmp_path / "tiled.npz", tiled), grown)
    assert all(e.high_res is not None for e in tiled.embeddings)
    masks, _, _, tile = TiledPredictor(predictor, tiled).predict(np.array([[150.0, 120.0]]), np.array([1]))
    y0, y1, x0, x1 = tile.outer
    direct = SamPredictor(grown)
    direct.set_image(IMAGE[y0:y1, x0:x1])
    assert np.array_equal(
        masks[:, y0:y1, x0:x1], direct.predict(np.array([[150.0 - x0, 120.0 - y0]]), np.array([1]))[0]
    )


def test_generator_uses_the_path(plain, grown):
    kwargs = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ref = SamAutomaticMaskGenerator(plain, **kwargs).generate(IMAGE)
    got = SamAutomaticMaskGenerator(grown, **kwargs).generate(IMAGE)
    assert len(ref) > 0 and len(got) == len(ref)  # zero projections: the same masks
    assert [r["area"] for r in got] == [r["area"] for r in ref]


def test_training_learns_through_the_path(tmp_path: Path):
    """The path trains from a checkpoint that lacks it (model_config adds it as a no-op) and its
    projections leave zero while the loss falls."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    labels = np.zeros((128, 128), np.int32)
    yy, xx = np.mgrid[:128, :128]
    for i, (cy, cx, r) in enumerate([(30, 30, 12), (40, 90, 9), (90, 50, 14), (95, 100, 10)]):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i + 1
    image = (rng.normal(30, 5, labels.shape) + 150 * (labels > 0)).clip(0, 255).astype(np.uint8)
    base = save_checkpoint(tmp_path / "base.pt", build_sam(TINY), {})
    config = TrainConfig(
        init_checkpoint=str(base),
        model_config={"high_res_channels": list(CHANNELS)},
        images_per_step=1,
        objects_per_image=4,
        rounds=1,
        lr=2e-3,
        box_prob=1.0,
        high_res_lr_scale=3.0,
        progress=False,
    )
    model = build_model(config)
    assert model.config.high_res_channels == CHANNELS
    model.train()
    optimizer = make_optimizer(model, config)
    path_params = {id(p) for p in model.high_res_encoder.parameters()}
    for group in optimizer.param_groups:  # the new path has its own learning-rate scale
        in_path = {id(p) in path_params for p in group["params"]}
        assert len(in_path) == 1 and group["lr_scale"] == (3.0 if in_path.pop() else 1.0)
    examples = draw_examples([(image, labels)], np.random.default_rng(0), 1, config, 256, augment=False)
    losses = []
    for _ in range(15):
        loss, _ = interactive_loss(model, examples, np.random.default_rng(1), config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert model.high_res_encoder.proj_s4.weight.abs().max() > 0
    with pytest.raises(ValueError, match="architecture of init_checkpoint"):
        build_model(TrainConfig(init_checkpoint=str(base), model_config={"encoder_depth": 3}))
