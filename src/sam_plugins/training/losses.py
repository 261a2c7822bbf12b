"""Training losses of SAM: focal + dice on masks (20:1), MSE on the IoU head, best-of-multimask.

All mask losses are computed per object (mean over that object's pixels), so every object weighs
the same in the batch whatever its size; the batch loss is the mean over objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = -1.0, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al.) averaged over the last two dims: (..., H, W) -> (...).

    targets may be soft (in [0, 1]). alpha < 0 disables the class weighting (SAM's setting);
    alpha in [0, 1] weighs positives by alpha and negatives by 1 - alpha.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps), (..., H, W) -> (...)."""
    prob = torch.sigmoid(logits)
    inter = (prob * targets).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (2 * inter + eps) / (total + eps)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the binarised prediction (logits > threshold) with targets > 0.5, (..., H, W) -> (...).

    An empty prediction of an empty target counts as IoU 1.
    """
    pred = logits > threshold
    gt = targets > 0.5
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_mse_loss(iou_pred: torch.Tensor, iou_true: torch.Tensor) -> torch.Tensor:
    """Squared error between the IoU head and the real IoU (elementwise, no reduction)."""
    return (iou_pred - iou_true.detach()) ** 2


@dataclass
class LossOutput:
    """Batch loss and its parts (means over objects), and what the prompt simulation needs next."""

    loss: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou_mse: torch.Tensor
    iou: torch.Tensor  # (N,) real IoU of the selected mask, detached
    best: torch.Tensor  # (N,) index of the selected mask among the C outputs


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = -1.0,
    focal_gamma: float = 2.0,
    other_outputs_weight: float = 0.0,
) -> LossOutput:
    """SAM's loss for N objects with C predicted masks each.

    logits (N, C, h, w), iou_pred (N, C), targets (N, 1, h, w) or (N, h, w), soft or binary.
    Mask loss = focal_weight * focal + dice_weight * dice, per object and per output; with C > 1
    only the best output (lowest mask loss) is trained, as in the paper. The IoU head is trained
    on every output against that output's real IoU.

    ``other_outputs_weight`` > 0 (not in the paper) adds that weight times the mean mask loss of
    the other C - 1 outputs: where every target has one level (a nucleus, not part/whole), the
    outputs that are never the best otherwise get no mask gradient and drift.

    Computed in float32 whatever the inputs' dtype (e.g. bfloat16 logits under autocast).
    """
    logits, iou_pred = logits.float(), iou_pred.float()
    if targets.dim() == 3:
        targets = targets.unsqueeze(1)
    targets = targets.to(logits.dtype).expand_as(logits)
    focal = sigmoid_focal_loss(logits, targets, alpha=focal_alpha, gamma=focal_gamma)
    dice = dice_loss(logits, targets)
    mask_loss = focal_weight * focal + dice_weight * dice  # (N, C)
    best = mask_loss.detach().argmin(dim=1)
    pick = best[:, None]
    with torch.no_grad():
        true_iou = mask_iou(logits, targets)
    iou_err = iou_mse_loss(iou_pred, true_iou).mean(dim=1)
    best_loss = mask_loss.gather(1, pick).squeeze(1)
    loss = best_loss + iou_weight * iou_err
    if other_outputs_weight > 0 and mask_loss.shape[1] > 1:
        others = (mask_loss.sum(1) - best_loss) / (mask_loss.shape[1] - 1)
        loss = loss + other_outputs_weight * others
    return LossOutput(
        loss=loss.mean(),
        focal=focal.gather(1, pick).mean().detach(),
        dice=dice.gather(1, pick).mean().detach(),
        iou_mse=iou_err.mean().detach(),
        iou=true_iou.gather(1, pick).squeeze(1),
        best=best,
    )
