"""Training recipe: losses, prompt simulation, data loading, a few steps, fine-tune round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from sam_plugins.models.configs import TINY, SamConfig, build_sam
from sam_plugins.training.data import FolderDataset, check_labels, make_example
from sam_plugins.training.losses import dice_loss, mask_iou, sam_loss, sigmoid_focal_loss
from sam_plugins.training.prompts import (
    block_reduce_mask,
    box_from_mask,
    jitter_boxes,
    sample_correction_points,
    sample_positive_points,
)
from sam_plugins.training.trainer import (
    TrainConfig,
    draw_examples,
    interactive_loss,
    lr_factor,
    make_optimizer,
    save_checkpoint,
    train,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a busy shared CPU, two threads per process are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def disk_scene(rng: np.random.Generator, size: int = 128, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((size, size), np.int32)
    for i in range(n):
        cy, cx = rng.integers(15, size - 15, 2)
        labels[disk(labels.shape, cy, cx, rng.integers(6, 14)) & (labels == 0)] = i + 1
    image = (rng.normal(30, 5, labels.shape) + 150 * (labels > 0)).clip(0, 255).astype(np.uint8)
    return image, labels


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


def _write_pair(images: Path, labels: Path, name: str, image: np.ndarray, lab: np.ndarray) -> None:
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    tifffile.imwrite(images / f"{name}.tif", image)
    tifffile.imwrite(labels / f"{name}_labels.tif", lab)


def test_folder_dataset_and_errors(tmp_path: Path):
    rng = np.random.default_rng(4)
    images, labels = tmp_path / "images", tmp_path / "labels"
    a_img, a_lab = disk_scene(rng, 64)
    _write_pair(images, labels, "a", a_img, a_lab)
    stack = np.stack([disk_scene(rng, 64)[1] for _ in range(3)])
    stack[1] = 0  # an empty slice is skipped
    _write_pair(images, labels, "b", np.stack([a_img] * 3), stack.astype(np.uint16))
    Image.fromarray(a_img).save(images / "c.png")
    Image.fromarray(a_lab.astype(np.uint8)).save(labels / "c.png")
    ds = FolderDataset(images, labels)
    assert len(ds) == 1 + 2 + 1
    assert ds[0][1].dtype == np.int32

    def error_for(img: np.ndarray, lab: np.ndarray, match: str) -> None:
        d = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        _write_pair(d / "i", d / "l", "x", img, lab)
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


# --- training ---------------------------------------------------------------------------------------


def _point_training_losses(steps: int = 12, **config_changes) -> tuple[list[float], dict[str, float]]:
    """Losses of `steps` steps of the tiny model on two disk scenes (points and corrections only)."""
    from sam_plugins.training.trainer import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        images_per_step=2,
        objects_per_image=4,
        rounds=2,
        lr=2e-3,
        box_prob=0.0,
        mask_prompt_prob=0.0,
        no_point_round_prob=0.0,
        **config_changes,
    )
    model = build_model(config)
    model.train()
    optimizer = make_optimizer(model, config)
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    losses = []
    for _ in range(steps):
        loss, stats = interactive_loss(model, examples, np.random.default_rng(1), config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, stats


def test_training_steps_lower_the_loss():
    losses, stats = _point_training_losses()
    assert {"focal", "dice", "iou_mse", "iou_first", "iou_last"} <= set(stats)
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_training_lowers_the_loss_and_keeps_fp32_weights(tmp_path: Path, monkeypatch):
    """precision = "bf16": the forward pass under bfloat16 autocast (points, corrections, the auxiliary
    loss) still learns, and the weights, gradients and the written checkpoint stay float32."""
    from sam_plugins.training.aux_head import DenseAuxHead
    from sam_plugins.training.trainer import build_model, training_autocast

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        images_per_step=2,
        objects_per_image=4,
        rounds=2,
        lr=2e-3,
        box_prob=0.0,
        mask_prompt_prob=0.0,
        no_point_round_prob=0.0,
        aux_weight=0.5,
        precision="bf16",
    )
    model = build_model(config)
    model.train()
    head = DenseAuxHead(model.config.prompt_embed_dim)
    optimizer = make_optimizer(model, config, head)
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    losses = []
    for _ in range(12):
        with training_autocast(config, "cpu"):
            loss, _ = interactive_loss(model, examples, np.random.default_rng(1), config, head)
        assert loss.dtype == torch.float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32
        for p in model.parameters()
        if p.grad is not None
    )

    run = TrainConfig.from_dict(
        {
            **TrainConfig.from_file(CONFIGS / "train_tiny_test.toml").to_dict(),
            "out_dir": str(tmp_path),
            "steps": 2,
            "epoch_steps": 2,
            "progress": False,
            "precision": "bf16",
        }
    )
    from sam_plugins.training import trainer

    said: list[str] = []
    monkeypatch.setattr(trainer, "cpu_lacks_bf16", lambda: True)  # a CPU without bf16 instructions
    state = torch.load(train(run, log=said.append), map_location="cpu", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert any("no bfloat16 instructions" in line for line in said)
    with pytest.raises(ValueError, match="precision"):
        train(TrainConfig.from_dict({**run.to_dict(), "precision": "fp16"}), log=lambda s: None)


def test_loss_on_upsampled_logits_trains_and_checks_its_factor():
    """loss_upscale = 2: the mask loss on 2x-upsampled logits against 2x finer targets still learns
    (points, corrections); factors other than 1, 2, 4 are refused when the config is made."""
    losses, _ = _point_training_losses(loss_upscale=2)
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="loss_upscale"):
        TrainConfig(model="tiny", loss_upscale=3)


def test_lr_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.55)
    assert lr_factor(100, config) == pytest.approx(0.1)


def test_config_file_and_unknown_keys(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    assert config.model == "tiny"
    default = TrainConfig.from_file(CONFIGS / "train_default.toml")
    cfg = default.sam_config()
    model = build_sam(cfg)
    assert sum(t.numel() * t.element_size() for t in model.state_dict().values()) <= 25e6
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"stpes": 3}))
    with pytest.raises(ValueError, match="stpes"):
        TrainConfig.from_file(path)
    # every shipped config parses
    for file in CONFIGS.glob("*.toml"):
        TrainConfig.from_file(file)


def test_train_resume_from_config(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {
        **config.to_dict(),
        "out_dir": str(tmp_path),
        "steps": 4,
        "checkpoint_every": 2,
        "epoch_steps": 2,
        "progress": False,
    }
    path = train(TrainConfig.from_dict(data), log=lambda s: None)
    assert path == tmp_path / config.name / "model.pt"
    records = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert any("val_point_miou" in r for r in records)
    with (path.parent / "log.jsonl").open("a") as f:  # a step logged after the last checkpoint
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    path = train(TrainConfig.from_dict({**data, "steps": 6}), resume=True, log=lambda s: None)
    records = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["step"] == 6
    from sam_plugins.training.cli import learning_curve

    rows = learning_curve(path.parent / "log.jsonl", every=4)
    assert [r["step"] for r in rows] == [4]
    losses = [r["loss"] for r in records if "loss" in r]
    assert rows[0]["loss"] == pytest.approx((losses[0] + losses[1]) / 2)
    assert "val_box_miou" in rows[0]


def test_finetune_save_reload_round_trip(tmp_path: Path):
    from sam_plugins.cli import main

    rng = np.random.default_rng(6)
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i in range(4):
        _write_pair(images, labels, f"img{i}", *disk_scene(rng, 96))
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    recommended = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}
    save_checkpoint(start, build_sam(TINY), {"note": "untrained", "generator_settings": recommended})
    out = tmp_path / "tuned.pt"
    code = main(
        [
            "finetune",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--model",
            str(start),
            "--out",
            str(out),
            "--steps",
            "3",
            "--work-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert code == 0 and out.exists()
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "config", "meta"}
    model = build_sam(SamConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    before = torch.load(start, map_location="cpu", weights_only=True)["model"]
    changed = [k for k in before if not torch.equal(before[k], ckpt["model"][k])]
    assert any(k.startswith("mask_decoder.") for k in changed)
    from sam_plugins import load_model

    loaded = load_model(out, device="cpu")
    assert loaded.config == SamConfig.from_dict(ckpt["config"])
    assert loaded.generator_settings == recommended  # the starting model's thresholds are kept


def test_learning_curve_rows_carry_their_own_validation(tmp_path):
    import json

    from sam_plugins.training.cli import learning_curve

    log = tmp_path / "log.jsonl"
    records = []
    for step in range(10, 60, 10):
        records.append(
            {
                "step": step,
                "loss": 1.0 / step,
                "dice": 0.5,
                "focal": 0.1,
                "iou_first": 0.2,
                "iou_last": 0.3,
                "sec_per_step": 1.0,
            }
        )
        if step % 20 == 0:  # validation is logged right after its step
            records.append({"step": step, "val_point_miou": step / 100})
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = learning_curve(log, every=20)
    assert [r["step"] for r in rows] == [20, 40]
    assert [r["val_point_miou"] for r in rows] == [0.2, 0.4]
    assert rows[0]["loss"] == (1 / 10 + 1 / 20) / 2


def test_dense_targets_hand_computed():
    from sam_plugins.training.aux_head import dense_targets

    labels = np.zeros((16, 16), np.int32)
    labels[4:8, 4:8] = 1  # one 4x4 square filling the output cell (1, 1)
    target = dense_targets(labels, 4)
    assert target.shape == (2, 4, 4)
    assert target[0].sum().item() == target[0, 1, 1].item() == 1.0
    assert target[1, 1, 1].item() == pytest.approx(12 / 16)  # the square's 12 edge pixels
    assert target[1].sum().item() == pytest.approx(12 / 16)


def test_aux_loss_and_stem_train_and_reload(tmp_path: Path):
    """A model with a convolutional patch stem trains with the dense auxiliary loss (the loss
    falls), and its checkpoint reloads to the same architecture with and without the stored config."""
    from sam_plugins.models.checkpoints import infer_config
    from sam_plugins.models.registry import load_model
    from sam_plugins.training.aux_head import DenseAuxHead
    from sam_plugins.training.trainer import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        model_config={"patch_stem_channels": [8, 16, 32, 64]},
        images_per_step=2,
        objects_per_image=4,
        rounds=1,
        lr=2e-3,
        box_prob=1.0,
        aux_weight=1.0,
    )
    model = build_model(config)
    model.train()
    head = DenseAuxHead(model.config.prompt_embed_dim)
    optimizer = make_optimizer(model, config, head)
    assert any(p is next(head.parameters()) for g in optimizer.param_groups for p in g["params"])
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    auxes = []
    for _ in range(25):
        loss, stats = interactive_loss(model, examples, np.random.default_rng(1), config, head)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        auxes.append(stats["aux"])
    assert auxes[-1] < 0.85 * auxes[0]
    path = save_checkpoint(tmp_path / "stem.pt", model, {})
    assert infer_config(model.state_dict()) == model.config
    reloaded = load_model(str(path), device="cpu")
    assert reloaded.config.patch_stem_channels == (8, 16, 32, 64)
    x = torch.rand(1, 3, 256, 256) * 255
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.image_encoder(x), model.image_encoder(x))


def test_stem_must_match_the_patch_size():
    with pytest.raises(ValueError, match="patch size"):
        build_sam(TINY.replace(patch_stem_channels=(8, 16)))


def test_training_device_choice(tmp_path: Path):
    from sam_plugins.training.trainer import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_writes_a_cpu_loadable_checkpoint(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {
        **config.to_dict(),
        "out_dir": str(tmp_path),
        "steps": 3,
        "epoch_steps": 3,
        "progress": False,
        "device": "cuda",
        "aux_weight": 0.5,
    }
    path = train(TrainConfig.from_dict(data), log=lambda s: None)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())


def test_worker_processes_prepare_the_same_examples():
    """data_workers > 0 prefetches each step's examples in other processes: same data as in-process."""
    from sam_plugins.training.sources import make_sources, step_examples

    config = TrainConfig.from_dict(
        {**TrainConfig.from_file(CONFIGS / "train_tiny_test.toml").to_dict(), "images_per_step": 2}
    )
    source = make_sources(config)[0]
    here = list(step_examples(config, source, 256, 3, 6))
    with_workers = TrainConfig.from_dict({**config.to_dict(), "data_workers": 2})
    there = list(step_examples(with_workers, source, 256, 3, 6))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there, strict=True):
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.image, y.image) and np.array_equal(x.masks, y.masks)


def test_resize_input_keeps_the_weights_at_a_new_input_size(tmp_path: Path):
    from sam_plugins.models.configs import resize_input

    torch.manual_seed(0)
    model = build_sam(TINY)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    same = resize_input(model, TINY.image_size)
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size) * 255
    with torch.no_grad():
        x = model.preprocess(image)
        assert torch.equal(same.image_encoder(x), model.image_encoder(x))

    big = resize_input(model, 384, window_size=9)
    assert big.config == TINY.replace(image_size=384, window_size=9)
    grid = 384 // TINY.patch_size
    state, old = big.state_dict(), model.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, grid, grid, TINY.encoder_embed_dim)
    for key, table in state.items():
        if key.endswith(".attn.rel_pos_h"):
            block = int(key.split(".")[2])
            extent = grid if block in TINY.encoder_global_attn_indexes else 9
            assert table.shape[0] == 2 * extent - 1
        elif "pos" not in key:
            assert torch.equal(table, old[key]), key
    # it runs at the new size and is saved and reloaded like any checkpoint
    with torch.no_grad():
        embedding = big.image_encoder(torch.zeros(1, 3, 384, 384))
    assert embedding.shape[-2:] == (grid, grid)
    path = tmp_path / "big.pt"
    save_checkpoint(path, big, {})
    from sam_plugins import load_model

    assert load_model(path, device="cpu").config == big.config
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_input(model, 390)


def test_training_from_a_checkpoint_at_another_input_size(tmp_path: Path):
    from sam_plugins.training.trainer import build_model

    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(start, build_sam(TINY), {})
    model = build_model(TrainConfig(init_checkpoint=str(start), model_config={"image_size": 320}))
    assert model.config.image_size == 320 and model.config.window_size == TINY.window_size
    with pytest.raises(ValueError, match="cannot change the architecture"):
        build_model(TrainConfig(init_checkpoint=str(start), model_config={"encoder_depth": 3}))
