"""Self-distillation from the model's own average over image orientations (training/distill.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.training.distill import OrientationTeacher, distill_loss
from sam_plugins.training.sources import draw_examples
from sam_plugins.training.trainer import TrainConfig, build_model, interactive_loss, make_optimizer
from training_helpers import disk_scene, one_thread  # noqa: F401


def test_teacher_average_turns_with_the_image():
    """Averaged over all 8 orientations, the teacher's logits for a quarter-turned input and
    prompts are its logits turned: its prompt and image transforms agree."""
    torch.manual_seed(0)
    teacher = OrientationTeacher(build_sam(TINY), 8)
    s = TINY.image_size
    images = torch.rand(1, 3, s, s) * 255
    index = torch.zeros(2, dtype=torch.long)
    coords = torch.tensor([[[40.0, 90.0]], [[200.0, 30.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    boxes = torch.tensor([[20.0, 60.0, 110.0, 130.0], [150.0, 10.0, 240.0, 80.0]])
    mask_in = torch.randn(2, 1, s // 4, s // 4)
    got = teacher.logits(images, index, coords, labels, boxes, mask_in)
    assert got.shape == (2, 4, s // 4, s // 4)

    # torch.rot90(dims=(-2, -1)) moves pixel (x, y) to (y, s - 1 - x)
    def turn_points(xy: torch.Tensor) -> torch.Tensor:
        return torch.stack([xy[..., 1], s - 1 - xy[..., 0]], dim=-1)

    corners = turn_points(boxes.reshape(-1, 2, 2))
    turned_boxes = torch.cat([corners.amin(1), corners.amax(1)], -1)
    turned = teacher.logits(
        torch.rot90(images, 1, (-2, -1)),
        index,
        turn_points(coords),
        labels,
        turned_boxes,
        torch.rot90(mask_in, 1, (-2, -1)),
    )
    torch.testing.assert_close(turned, torch.rot90(got, 1, (-2, -1)), atol=1e-3, rtol=1e-3)


def test_distill_loss_is_smallest_at_the_teachers_logits():
    teacher = torch.tensor([[-3.0, 0.0, 2.0]])
    at = distill_loss(teacher, teacher)
    assert distill_loss(teacher + 0.5, teacher) > at and distill_loss(teacher - 0.5, teacher) > at


def test_training_with_distillation_lowers_the_loss_and_is_checked():
    rng = np.random.default_rng(0)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        images_per_step=2,
        objects_per_image=4,
        rounds=2,
        lr=2e-3,
        box_prob=0.5,
        mask_prompt_prob=0.0,
        no_point_round_prob=0.0,
        distill_orientations=4,
    )
    model = build_model(config)
    teacher = OrientationTeacher(model, config.distill_orientations)
    model.train()
    optimizer = make_optimizer(model, config)
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    losses = []
    for _ in range(25):
        loss, stats = interactive_loss(model, examples, np.random.default_rng(1), config, teacher=teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert "distill" in stats and np.isfinite(stats["distill"])
    assert losses[-1] < 0.7 * losses[0]
    assert all(not p.requires_grad for p in teacher.model.parameters())
    with pytest.raises(ValueError, match="distill_orientations"):
        TrainConfig(model="tiny", distill_orientations=3)
