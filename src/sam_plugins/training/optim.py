"""The optimizer and its schedule: AdamW with parameter groups, warm-up + cosine decay of the
learning rate (by steps, or by time under a time limit), and a moving average of the weights."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .trainer import TrainConfig


def lr_factor(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up to 1, then cosine decay to min_lr_ratio at the last step, or, under a time
    limit, when `time_fraction` (of `config.time_limit_s` used) reaches 1 if that comes first."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = max(progress, time_fraction)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig, aux_head: torch.nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and position tables."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    named = list(model.named_parameters())
    if aux_head is not None:
        named += [(f"aux_head.{n}", p) for n, p in aux_head.named_parameters()]
    for name, p in named:
        is_encoder = name.startswith("image_encoder.")
        if is_encoder and config.freeze_encoder:
            p.requires_grad_(False)
            continue
        no_decay = p.ndim < 2 or any(k in name for k in ("pos_embed", "rel_pos", "token", "embed"))
        part = "encoder" if is_encoder else "high_res" if name.startswith("high_res_encoder.") else "other"
        groups.setdefault((part, no_decay), []).append(p)
    scales = {"encoder": config.encoder_lr_scale, "high_res": config.high_res_lr_scale, "other": 1.0}
    param_groups = [
        {"params": ps, "weight_decay": 0.0 if nd else config.weight_decay, "lr_scale": scales[part]}
        for (part, nd), ps in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=(0.9, 0.999))


def moving_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights, starting at its current ones; call
    `.update_parameters(model)` after each optimizer step, use `.module` as the averaged network."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    ema.update_parameters(model)  # the first update copies the weights: the average starts there
    return ema
