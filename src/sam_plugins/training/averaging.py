"""Average the weights of checkpoints of one architecture (a "weight soup").

Checkpoints trained from the same start (a fine-tuned model and the model it started from, or two
stages of one training lineage) can be averaged tensor by tensor; the average often keeps what
each does well (Wortsman et al. 2022, "Model soups"; WiSE-FT, "Robust fine-tuning of zero-shot
models"). Used for the embedded model (docs/models.md) and by `sam-plugins average`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..modeling import Sam
from ..models.checkpoints import (
    SETTINGS_KEYS,
    file_sha256,
    load_state_dict_strict,
    recommend,
    recommended_meta,
    save_checkpoint,
)
from ..models.configs import build_sam
from ..models.registry import load_model


def _fractions(weights: Sequence[float] | None, count: int) -> list[float]:
    """The checkpoints' weights, checked and normalised to sum to 1 (default: equal)."""
    if count < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {count}")
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(
            f"got {len(weights)} weights for {count} checkpoints; give one weight per checkpoint"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def average_checkpoints(paths: Sequence[str | Path], weights: Sequence[float] | None = None) -> Sam:
    """The model whose floating-point tensors are the weighted mean of the checkpoints' tensors.

    ``paths``: checkpoint files or model names, as :func:`sam_plugins.load_model` takes them
    ("default" is the embedded model).
    ``weights`` (default: equal) are normalised to sum to 1. Every checkpoint must hold the same
    architecture; integer tensors (none in SAM today) are taken from the first checkpoint. The
    returned model recommends the first checkpoint's automatic-segmentation thresholds, if any.
    """
    fractions = _fractions(weights, len(paths))
    models = [load_model(p, device="cpu") for p in paths]
    config = models[0].config
    for path, model in zip(paths[1:], models[1:], strict=True):
        other = model.config
        if other != config:
            raise ValueError(
                f"{path} holds another architecture than {paths[0]} (encoder "
                f"{other.encoder_embed_dim}-dim, depth {other.encoder_depth}, input {other.image_size} px "
                f"vs {config.encoder_embed_dim}-dim, depth {config.encoder_depth}, {config.image_size} px); "
                "only checkpoints of one architecture can be averaged."
            )
    states = [m.state_dict() for m in models]
    averaged: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            averaged[key] = first
            continue
        mean = sum(f * state[key].double() for f, state in zip(fractions, states, strict=True))
        averaged[key] = mean.to(first.dtype)
    average = load_state_dict_strict(build_sam(config), averaged, f"the average of {len(paths)} checkpoints")
    return recommend(average, {key: getattr(models[0], key, {}) for key in SETTINGS_KEYS}).eval()


def save_average(
    paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None
) -> Path:
    """Average ``paths`` (see :func:`average_checkpoints`) and write the result to ``out``; its meta
    records every source (file and sha256, or model name) and its weight."""
    model = average_checkpoints(paths, weights)
    meta: dict[str, Any] = {
        "averaged_from": [
            {
                "file": str(p),
                "sha256": file_sha256(p) if Path(p).is_file() else None,
                "weight": fraction,
            }
            for p, fraction in zip(paths, _fractions(weights, len(paths)), strict=True)
        ]
    }
    meta.update(recommended_meta(model))
    return save_checkpoint(out, model, meta)
