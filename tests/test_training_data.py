"""Training recipe, the parts below a step: losses, prompt simulation, examples, folder datasets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam_plugins.training import losses
from sam_plugins.training.data import FolderDataset, check_labels, crop_side, make_example, touching_ids
from sam_plugins.training.losses import dice_loss, fused_mask_losses, mask_iou, sam_loss, sigmoid_focal_loss
from sam_plugins.training.prompts import (
    block_reduce_mask,
    box_from_mask,
    jitter_boxes,
    sample_correction_points,
    sample_positive_points,
)
from sam_plugins.training.trainer import TrainConfig
from training_helpers import disk, disk_scene, one_thread, write_pair  # noqa: F401 (one_thread: autouse)

# --- losses --------------------------------------------------------------------------------------


def test_focal_loss_hand_computed():
    logits = torch.tensor([[[0.0, 2.0]]])
    targets = torch.tensor([[[1.0, 0.0]]])
    p2 = 1 / (1 + math.exp(-2))
    pos = math.log(2) * 0.5**2  # p = 0.5, target 1
    neg = math.log(1 + math.exp(2)) * p2**2  # target 0: ce = -log(1 - p), weight p ** 2
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx((pos + neg) / 2, rel=1e-5)
    weighted = (0.25 * pos + 0.75 * neg) / 2
    assert sigmoid_focal_loss(logits, targets, alpha=0.25).item() == pytest.approx(weighted, rel=1e-5)


def test_dice_and_iou_hand_computed():
    logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    p = torch.sigmoid(logits)
    inter = 0.5 + float(p[0, 1, 0])
    total = 0.5 + 0.5 + float(p[0, 1, 0]) + float(p[0, 1, 1]) + 2
    assert dice_loss(logits, targets).item() == pytest.approx(1 - (2 * inter + 1) / (total + 1), rel=1e-6)
    # binarised at 0: prediction {(1,0)}, target {(0,0),(1,0)} -> IoU 1/2
    assert mask_iou(logits, targets).item() == pytest.approx(0.5)
    assert mask_iou(torch.full((1, 2, 2), -5.0), torch.zeros(1, 2, 2)).item() == 1.0


@pytest.mark.parametrize(
    ("alpha", "gamma", "soft"),
    [(-1.0, 2.0, False), (0.25, 2.0, True), (-1.0, 0.0, True), (0.6, 1.5, False), (-1.0, 0.5, False)],
)
def test_fused_mask_losses_equal_the_plain_ones(alpha, gamma, soft, monkeypatch):
    # the training step's focal / dice / IoU in one pass with a hand-written backward: the same values
    # and gradients as the per-term functions; a small chunk makes the CPU path loop over objects
    monkeypatch.setattr(losses, "_CPU_CHUNK_ELEMENTS", 2 * 3 * 24 * 24)
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 3, 24, 24, generator=gen) * 5).requires_grad_()
    targets = torch.rand(5, 1, 24, 24, generator=gen)
    targets = targets if soft else (targets > 0.6).float()
    targets[4] = 0  # an object absent from the crop: IoU 1 only where nothing is predicted
    w_focal, w_dice = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    full = targets.expand_as(logits)
    ref = [sigmoid_focal_loss(logits, full, alpha, gamma), dice_loss(logits, full), mask_iou(logits, full)]
    (ref_grad,) = torch.autograd.grad((ref[0] * w_focal).sum() + (ref[1] * w_dice).sum(), logits)
    got = fused_mask_losses(logits, targets, alpha=alpha, gamma=gamma)
    (got_grad,) = torch.autograd.grad((got[0] * w_focal).sum() + (got[1] * w_dice).sum(), logits)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # (autograd's pow gives NaN where p = t exactly and gamma < 1; the fused backward stays finite)
    finite = ref_grad.isfinite()
    assert got_grad.isfinite().all() and finite.float().mean() > 0.99
    torch.testing.assert_close(got_grad[finite], ref_grad[finite], rtol=1e-4, atol=1e-7)
    assert not got[2].requires_grad
    # the backward is exact: finite differences in float64
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda v: fused_mask_losses(v, t, alpha=alpha, gamma=gamma)[:2], (x,))


def test_sam_loss_rejects_one_target_per_output():
    with pytest.raises(ValueError, match="one mask per object"):
        sam_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3), torch.zeros(2, 3, 8, 8))


def test_sam_loss_takes_best_of_multimask():
    gt = torch.from_numpy(disk((16, 16), 8, 8, 5)).float()[None, None]  # (1, 1, 16, 16)
    good = (gt[0, 0] * 2 - 1) * 20
    logits = torch.stack([-good, good, torch.zeros_like(good)])[None]  # output 1 is right
    iou_pred = torch.tensor([[0.0, 1.0, 0.0]])
    out = sam_loss(logits, iou_pred, gt)
    assert out.best.tolist() == [1]
    assert out.iou.item() == pytest.approx(1.0)
    assert out.dice.item() < 0.01 and out.focal.item() < 1e-6
    # IoU head target: real IoUs (0 for the inverted mask, 0 for the all-zero-logit mask, 1)
    assert out.iou_mse.item() == pytest.approx(0.0, abs=1e-6)
    worse = sam_loss(logits, torch.tensor([[1.0, 0.0, 1.0]]), gt)
    assert worse.iou_mse.item() == pytest.approx(1.0)  # (1 + 1 + 1) / 3
    # per-object normalisation: the batch loss is the mean of the objects' losses, whatever their size
    targets = torch.stack([torch.from_numpy(disk((32, 32), 16, 16, r)).float() for r in (2, 14)])[:, None]
    logits = torch.randn(2, 1, 32, 32)
    pair = sam_loss(logits, torch.zeros(2, 1), targets).loss.item()
    singles = [sam_loss(logits[i : i + 1], torch.zeros(1, 1), targets[i : i + 1]).loss.item() for i in (0, 1)]
    assert pair == pytest.approx(sum(singles) / 2, rel=1e-6)


def test_sam_loss_can_also_train_the_other_outputs():
    gt = torch.from_numpy(disk((16, 16), 8, 8, 5)).float()[None, None]
    good = (gt[0, 0] * 2 - 1) * 20
    logits = torch.stack([-good, good, torch.zeros_like(good)])[None].requires_grad_()
    iou_pred = torch.zeros(1, 3)
    paper = sam_loss(logits, iou_pred, gt)
    (grad,) = torch.autograd.grad(paper.loss, logits)
    assert grad[0, 0].abs().sum() == 0 and grad[0, 2].abs().sum() == 0  # only the best output learns
    both = sam_loss(logits, iou_pred, gt, other_outputs_weight=0.5)
    assert both.best.tolist() == [1] and both.loss.item() > paper.loss.item()
    (grad,) = torch.autograd.grad(both.loss, logits)
    assert grad[0, 0].abs().sum() > 0 and grad[0, 2].abs().sum() > 0

    # the added term is half the mean mask loss of the two others (IoU head left out)
    def mask_loss(i: int) -> float:
        return sam_loss(logits[:, i : i + 1], iou_pred[:, :1], gt, iou_weight=0.0).loss.item()

    paper_masks = sam_loss(logits, iou_pred, gt, iou_weight=0.0).loss.item()
    with_others = sam_loss(logits, iou_pred, gt, iou_weight=0.0, other_outputs_weight=0.5).loss.item()
    assert with_others == pytest.approx(paper_masks + 0.5 * (mask_loss(0) + mask_loss(2)) / 2, rel=1e-5)


# --- prompt simulation -----------------------------------------------------------------------------


def test_positive_points_inside_and_interior():
    rng = np.random.default_rng(0)
    masks = np.stack([disk((64, 64), 20, 30, 10), disk((64, 64), 40, 10, 4), disk((64, 64), 0, 63, 9)])
    for _ in range(20):
        pts = sample_positive_points(masks, rng)
        for m, (x, y) in zip(masks, pts, strict=True):
            assert m[int(y), int(x)]
    centred = np.array([sample_positive_points(masks[:1], rng, power=8)[0] for _ in range(50)])
    uniform = np.array([sample_positive_points(masks[:1], rng, power=0)[0] for _ in range(50)])
    # strong preference for the interior (uniform points in a disk of radius 10: mean distance ~6.7)
    assert np.hypot(*(centred - [30, 20]).T).mean() < 3 < 5 < np.hypot(*(uniform - [30, 20]).T).mean()


def test_boxes_jittered_within_bounds():
    rng = np.random.default_rng(1)
    masks = np.stack([disk((50, 60), 25, 30, 12), disk((50, 60), 2, 2, 5), disk((50, 60), 48, 58, 6)])
    exact = jitter_boxes(masks, rng, noise=0.0)
    assert exact[0].tolist() == box_from_mask(masks[0]).tolist() == [19, 14, 41, 36]
    for _ in range(50):
        boxes = jitter_boxes(masks, rng, noise=0.5, max_pixels=4)
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 59).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 49).all()
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert np.abs(boxes - exact).max() <= 4 + 1e-4
    assert np.abs(jitter_boxes(masks, rng) - exact).max() > 0


def test_correction_points_in_error_regions():
    rng = np.random.default_rng(2)
    gt = np.stack([disk((64, 64), 32, 32, 14), disk((64, 64), 32, 32, 6), disk((64, 64), 20, 20, 8)])
    pred = np.stack([disk((64, 64), 32, 32, 6), disk((64, 64), 32, 32, 14), gt[2]])
    for _ in range(10):
        coords, labels = sample_correction_points(pred, gt, rng)
        assert labels.tolist() == [1, 0, -1]  # FN larger, FP larger, no error
        x, y = coords[0].astype(int)
        assert gt[0, y, x] and not pred[0, y, x]
        x, y = coords[1].astype(int)
        assert pred[1, y, x] and not gt[1, y, x]
    # low-res prediction against full-res truth: the click's cell is in the error region and the
    # full-res pixel has the right ground-truth value
    gt_full = np.stack([disk((128, 128), 64, 64, 30), disk((128, 128), 64, 64, 10)])
    pred_low = np.stack([disk((32, 32), 16, 16, 3), disk((32, 32), 16, 16, 9)])
    for _ in range(10):
        coords, labels = sample_correction_points(pred_low, gt_full, rng)
        gt_low = block_reduce_mask(gt_full, 4)
        assert labels.tolist() == [1, 0]
        for i, (x, y) in enumerate(coords.astype(int)):
            assert gt_low[i, y // 4, x // 4] != pred_low[i, y // 4, x // 4]
            assert gt_full[i, y, x] == bool(labels[i])


# --- data ------------------------------------------------------------------------------------------


def test_make_example_shapes_and_objects():
    rng = np.random.default_rng(3)
    image, labels = disk_scene(rng, 100)
    ex = make_example(image.astype(np.uint16) * 40, labels, rng, image_size=128, max_objects=3, min_area=10)
    assert ex.image.shape == (3, 128, 128) and ex.image.dtype == torch.float32
    assert 1 <= len(ex.masks) <= 3 and ex.masks.shape[1:] == (128, 128)
    assert all(m.sum() >= 10 for m in ex.masks)
    assert make_example(image, np.zeros_like(labels), rng, image_size=128) is None


def test_auto_crop_trains_at_the_scale_segmentation_uses():
    # the predictor resizes a whole image so its long side fills the input; "auto" does the same
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 30:44] = 1
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    rng = np.random.default_rng(0)
    whole = make_example(image, labels, rng, image_size=128, crop_size="auto", min_area=10)
    assert (whole.labels == 1).sum() == 4 * (labels == 1).sum()  # 2x per side, no padding
    assert np.array_equal(whole.labels[::2, ::2], labels)
    padded = make_example(image, labels, rng, image_size=128, min_area=10)  # default: 1x, padded
    assert np.array_equal(padded.labels[:64, :64], labels) and padded.image[:, 64:, :].max() == 0
    # large planes are tiled at 1x by the widget, so they train on 1x crops
    assert crop_side((300, 200), 768, "auto") == 300
    assert crop_side((1152, 900), 768, "auto") == 1152
    assert crop_side((2000, 1000), 768, "auto") == 768
    assert crop_side((300, 200), 768, None) == 768 and crop_side((300, 200), 768, 512) == 512
    for bad in ("whole", 0, -5, 1.5):
        with pytest.raises(ValueError, match="crop_size"):
            TrainConfig(model="tiny", crop_size=bad)


def test_touching_objects_can_be_prompted_more_often():
    # 4 touching squares in a row and 4 isolated ones, 64x64
    labels = np.zeros((64, 64), np.int32)
    for i in range(4):
        labels[4:14, 4 + 10 * i : 14 + 10 * i] = i + 1
        labels[40:50, 4 + 14 * i : 14 + 14 * i] = i + 5
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    assert touching_ids(labels).tolist() == [1, 2, 3, 4]

    def touching_share(weight: float) -> float:
        rng = np.random.default_rng(0)
        picked = []
        for _ in range(200):
            ex = make_example(
                image, labels, rng, image_size=64, max_objects=1, min_area=10, touching_weight=weight
            )
            picked.append(int(ex.labels[ex.masks[0]][0]) <= 4)
        return float(np.mean(picked))

    assert 0.4 < touching_share(1.0) < 0.6
    assert touching_share(4.0) > 0.72  # expected 4 / 5
    assert touching_share(0.25) < 0.28  # expected 1 / 5
    with pytest.raises(ValueError, match="touching_weight"):
        TrainConfig(model="tiny", touching_weight=0.0)


def test_folder_dataset_and_errors(tmp_path: Path):
    rng = np.random.default_rng(4)
    images, labels = tmp_path / "images", tmp_path / "labels"
    a_img, a_lab = disk_scene(rng, 64)
    write_pair(images, labels, "a", a_img, a_lab)
    stack = np.stack([disk_scene(rng, 64)[1] for _ in range(3)])
    stack[1] = 0  # an empty slice is skipped
    write_pair(images, labels, "b", np.stack([a_img] * 3), stack.astype(np.uint16))
    Image.fromarray(a_img).save(images / "c.png")
    Image.fromarray(a_lab.astype(np.uint8)).save(labels / "c.png")
    ds = FolderDataset(images, labels)
    assert len(ds) == 1 + 2 + 1
    assert ds[0][1].dtype == np.int32

    def error_for(img: np.ndarray, lab: np.ndarray, match: str) -> None:
        d = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        write_pair(d / "i", d / "l", "x", img, lab)
        with pytest.raises(ValueError, match=match):
            FolderDataset(d / "i", d / "l")

    error_for(a_img, a_lab[:32], "does not match")
    error_for(a_img, np.zeros_like(a_lab), "no objects")
    error_for(a_img, a_lab.astype(np.float32) + 0.5, "fractional")
    error_for(a_img, np.stack([a_lab.astype(np.uint8)] * 3, -1), "RGB")
    (images / "orphan.tif").write_bytes((images / "a.tif").read_bytes())
    with pytest.raises(ValueError, match="orphan.tif"):
        FolderDataset(images, labels)
    with pytest.raises(ValueError, match="boolean"):
        check_labels(a_lab > 0)
