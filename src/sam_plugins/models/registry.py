"""Get a ready model by name or path: `load_model`, `list_models`, `sam_model_registry`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from ..modeling import Sam
from .builtin import EMBEDDED_MODEL_NAME
from .checkpoints import load_checkpoint, load_state_dict_strict, read_checkpoint_with_settings, recommend
from .configs import OFFICIAL_CONFIGS, SMALL_CONFIGS, SamConfig, build_sam
from .download import fetch_checkpoint
from .hooks import ModelSpec, collect_model_specs

DEFAULT_ALIASES = (None, "", "default")


def list_models() -> list[ModelSpec]:
    """Every model that `load_model` knows by name (built-in and from installed plugins)."""
    return list(collect_model_specs().values())


def get_model_spec(name: str) -> ModelSpec:
    specs = collect_model_specs()
    if name not in specs:
        raise ValueError(
            f"Unknown model {name!r}. Known models: {', '.join(specs)}. "
            "Or pass the path of a checkpoint file."
        )
    return specs[name]


def default_device() -> torch.device:
    """CUDA if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Sam:
    """Return a SAM model in eval mode, ready for `SamPredictor`.

    `name_or_path`: None or "default" for the embedded cell model; a registered name such as
    "vit_b" (downloaded once into the cache); or a checkpoint file — official, written by
    `sam-plugins train`/`finetune`, or by other fine-tuning tools (`{"model": ...}`, `sam.` keys).
    The architecture is detected from the checkpoint. `device`: default CUDA > MPS > CPU.
    """
    if name_or_path in DEFAULT_ALIASES:
        name_or_path = EMBEDDED_MODEL_NAME
    text = str(name_or_path)
    path = Path(text).expanduser()
    specs = collect_model_specs()
    if text in specs:
        spec = specs[text]
        checkpoint = fetch_checkpoint(spec, Path(cache_dir) if cache_dir else None, progress=progress)
        if spec.builder is not None:
            state, _, settings = read_checkpoint_with_settings(checkpoint)
            model = recommend(load_state_dict_strict(spec.builder(), state, str(checkpoint)), settings)
        else:
            model = load_checkpoint(checkpoint, expected=spec.config, expected_name=spec.name)
    elif path.suffix in (".pth", ".pt", ".ckpt", ".bin") or path.exists():
        model = load_checkpoint(path)
    else:
        raise ValueError(
            f"{text!r} is neither a registered model ({', '.join(specs)}) nor an existing checkpoint file."
        )
    model.source = text
    return model.to(torch.device(device) if device is not None else default_device()).eval()


def _build_registered(config: SamConfig, name: str, checkpoint: str | Path | None = None) -> Sam:
    if checkpoint is None:
        return build_sam(config)
    return load_checkpoint(checkpoint, expected=config, expected_name=name)


def _registry() -> dict[str, Callable[..., Sam]]:
    registry: dict[str, Callable[..., Sam]] = {
        "default": partial(_build_registered, OFFICIAL_CONFIGS["vit_h"], "vit_h")
    }
    for name, config in {**OFFICIAL_CONFIGS, **SMALL_CONFIGS}.items():
        registry[name] = partial(_build_registered, config, name)
    return registry


# Same use as the official package: sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth").
sam_model_registry: dict[str, Callable[..., Sam]] = _registry()
