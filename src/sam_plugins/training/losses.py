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


# elements per chunk of the fused loss on a CPU: a few MB, so that its passes run from cache
_CPU_CHUNK_ELEMENTS = 1 << 19


def _chunks(n: int, per_object: int, device: torch.device) -> list[slice]:
    step = n if device.type != "cpu" else max(1, _CPU_CHUNK_ELEMENTS // max(1, per_object))
    return [slice(i, i + step) for i in range(0, n, step)]


def _focal_parts(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel: sigmoid p, cross-entropy and q = 1 - p_t (for soft targets too)."""
    p = torch.sigmoid(x)
    ce = F.softplus(x, threshold=30.0) - x * t
    return p, ce, p + t - 2 * p * t


def _pow(q: torch.Tensor, gamma: float) -> torch.Tensor:
    return q * q if gamma == 2.0 else q.pow(gamma)


def _class_weight(t: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha for positives, 1 - alpha for negatives (sigmoid_focal_loss's weighting)."""
    return (1 - alpha) + (2 * alpha - 1) * t


class _FusedMaskLoss(torch.autograd.Function):
    """Focal (mean over pixels), soft dice and binarised IoU of (N, C, P) logits against (N, 1, P)
    targets, in one pass per chunk of objects with a hand-written backward: the same values as
    sigmoid_focal_loss, dice_loss and mask_iou, at a fraction of their time and memory (autograd
    would keep several full-size intermediates of the 3 outputs x 384^2 pixels x 48 objects)."""

    @staticmethod
    def forward(ctx, x, t, gamma: float, alpha: float, eps: float):  # type: ignore[override]
        n, c, npix = x.shape
        focal = x.new_empty(n, c)
        inter, psum = x.new_empty(n, c), x.new_empty(n, c)
        iou = x.new_empty(n, c)
        tsum = t.sum(-1)  # (N, 1)
        for sl in _chunks(n, c * npix, x.device):
            xs, ts = x[sl], t[sl]
            p, ce, q = _focal_parts(xs, ts)
            f = ce * _pow(q, gamma)
            focal[sl] = (f if alpha < 0 else f * _class_weight(ts, alpha)).mean(-1)
            inter[sl] = (p * ts).sum(-1)
            psum[sl] = p.sum(-1)
            iou[sl] = mask_iou(xs[..., None], ts[..., None])  # pixels as (P, 1) images
        total = psum + tsum
        dice = 1 - (2 * inter + eps) / (total + eps)
        ctx.save_for_backward(x, t, inter, total)
        ctx.gamma, ctx.alpha, ctx.eps = gamma, alpha, eps
        ctx.mark_non_differentiable(iou)
        return focal, dice, iou

    @staticmethod
    def backward(ctx, g_focal, g_dice, _g_iou):  # type: ignore[override]
        x, t, inter, total = ctx.saved_tensors
        gamma, alpha, eps = ctx.gamma, ctx.alpha, ctx.eps
        n, c, npix = x.shape
        grad = torch.empty_like(x)
        # d dice / d p_i = ((2 I + eps) - 2 t_i (S + eps)) / (S + eps)^2, S = sum p + sum t
        denom = total + eps
        a = (g_dice * (2 * inter + eps) / denom**2)[..., None]
        b = (g_dice * 2 / denom)[..., None]
        gf = (g_focal / npix)[..., None]
        for sl in _chunks(n, c * npix, x.device):
            xs, ts = x[sl], t[sl]
            p, ce, q = _focal_parts(xs, ts)
            dp = p * (1 - p)  # d p / d x
            # d focal / d x = (p - t) q^g + ce g q^(g-1) (1 - 2t) p (1 - p)
            df = (p - ts) * _pow(q, gamma)
            if gamma != 0:
                base = q.clamp(min=1e-12) if gamma < 1 else q  # q^(gamma - 1) is infinite at q = 0
                qg = q if gamma == 2.0 else base.pow(gamma - 1)
                df = df + ce * gamma * qg * (1 - 2 * ts) * dp
            if alpha >= 0:
                df = df * _class_weight(ts, alpha)
            grad[sl] = gf[sl] * df + (a[sl] - b[sl] * ts) * dp
        return grad, None, None, None, None


def fused_mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = -1.0,
    gamma: float = 2.0,
    eps: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Focal, dice and IoU per mask of logits (N, C, H, W) against targets (N, 1, H, W): the values of
    sigmoid_focal_loss, dice_loss and mask_iou (IoU without gradient), computed together."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 in float32, float64 kept
    x = logits.to(dtype).flatten(2).contiguous()
    t = targets.to(dtype).flatten(2).contiguous()
    if t.requires_grad:
        raise ValueError("fused_mask_losses trains the logits only; detach the targets")
    return _FusedMaskLoss.apply(x, t, float(gamma), float(alpha), float(eps))


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
    iou_pred = iou_pred.float()
    if targets.dim() == 3:
        targets = targets.unsqueeze(1)
    if targets.shape[1] != 1:
        raise ValueError(f"targets must be one mask per object, (N, 1, h, w); got {tuple(targets.shape)}")
    focal, dice, true_iou = fused_mask_losses(logits, targets.detach(), alpha=focal_alpha, gamma=focal_gamma)
    mask_loss = focal_weight * focal + dice_weight * dice  # (N, C)
    best = mask_loss.detach().argmin(dim=1)
    pick = best[:, None]
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
