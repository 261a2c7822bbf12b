"""Choose a model's automatic-segmentation thresholds on labelled images.

SAM's default thresholds (predicted IoU 0.88, stability 0.95) suit the official models. A small or
fine-tuned model predicts other IoUs, and with those defaults may keep none of its masks. Here the
expensive pass runs once per image (`SamAutomaticMaskGenerator.initialize`), then every pair of
thresholds on a grid is scored by F1 at IoU 0.5 against the instance labels, without re-running
the model. `sam-plugins tune` writes the best pair into a checkpoint's `generator_settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..images import prepare_image
from .generator import SamAutomaticMaskGenerator
from .labels import masks_to_label_image

PRED_IOU_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.88)
STABILITY_GRID = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def match_f1(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """F1 of predicted vs true instances (label images), matched one-to-one at IoU > threshold.

    For thresholds >= 0.5 a match is unique, so true positives are predicted objects with any
    true object above the threshold. Returns f1, tp, fp, fn.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"label images differ in shape: {pred.shape} vs {truth.shape}")
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    true_ids, true_inv = np.unique(truth, return_inverse=True)
    n_pred = int((pred_ids != 0).sum())
    n_true = int((true_ids != 0).sum())
    if n_pred == 0 or n_true == 0:
        return {"f1": 0.0 if (n_pred or n_true) else 1.0, "tp": 0, "fp": n_pred, "fn": n_true}
    # overlap counts between every predicted and every true id from one joint histogram
    joint = np.bincount(
        pred_inv.ravel() * len(true_ids) + true_inv.ravel(), minlength=len(pred_ids) * len(true_ids)
    ).reshape(len(pred_ids), len(true_ids))
    inter = joint[pred_ids != 0][:, true_ids != 0].astype(np.float64)
    p_area = joint.sum(axis=1)[pred_ids != 0][:, None]
    t_area = joint.sum(axis=0)[true_ids != 0][None, :]
    ious = inter / (p_area + t_area - inter)
    tp = int((ious > threshold).any(axis=1).sum())
    fp, fn = n_pred - tp, n_true - tp
    return {"f1": 2 * tp / (2 * tp + fp + fn), "tp": tp, "fp": fp, "fn": fn}


@dataclass(frozen=True)
class ThresholdScore:
    """F1 at IoU 0.5 over all tuning images for one pair of thresholds."""

    pred_iou_thresh: float
    stability_score_thresh: float
    f1: float
    tp: int
    fp: int
    fn: int

    def settings(self) -> dict[str, float]:
        """The pair as generator settings (`SamAutomaticMaskGenerator` arguments)."""
        return {
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
        }

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def tune_thresholds(
    model: torch.nn.Module,
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    pred_iou_grid: Sequence[float] = PRED_IOU_GRID,
    stability_grid: Sequence[float] = STABILITY_GRID,
    points_per_side: int | None = None,
    min_mask_region_area: int | None = None,
    channel: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ThresholdScore]:
    """Score every (pred_iou_thresh, stability_score_thresh) pair on (image, instance labels) pairs.

    Returns the scores best first (ties: the higher thresholds, which keep fewer doubtful masks).
    Images are converted as everywhere else (`prepare_image`, optional `channel`); the model runs
    once per image. Other generator settings are the model's own (`for_model`), or as given.
    """
    if not pred_iou_grid or not stability_grid:
        raise ValueError("the threshold grids must not be empty")
    for value in (*pred_iou_grid, *stability_grid):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got {value}")
    given = {"points_per_side": points_per_side, "min_mask_region_area": min_mask_region_area}
    given = {k: v for k, v in given.items() if v is not None}
    generator = SamAutomaticMaskGenerator.for_model(model, **given)
    counts = {(p, s): np.zeros(3, dtype=np.int64) for p in pred_iou_grid for s in stability_grid}
    n_images = 0
    for image, labels in pairs:
        labels = np.asarray(labels)
        rgb = prepare_image(image, channel=channel)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"image {np.shape(image)} and labels {labels.shape} differ in size")
        state = generator.initialize(
            rgb, pred_iou_floor=min(pred_iou_grid), stability_floor=min(stability_grid)
        )
        for (piou, stab), total in counts.items():
            records = generator.generate_from_state(state, pred_iou_thresh=piou, stability_score_thresh=stab)
            result = match_f1(masks_to_label_image(records, labels.shape), labels)
            total += (result["tp"], result["fp"], result["fn"])
        n_images += 1
        if progress is not None:
            progress(n_images)
    if n_images == 0:
        raise ValueError("no labelled images to tune on")
    scores = []
    for (piou, stab), (tp, fp, fn) in counts.items():
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        scores.append(ThresholdScore(float(piou), float(stab), float(f1), int(tp), int(fp), int(fn)))
    return sorted(scores, key=lambda s: (-s.f1, -s.pred_iou_thresh, -s.stability_score_thresh))
