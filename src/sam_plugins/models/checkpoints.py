"""Read SAM checkpoints safely, recognise their architecture, and load them strictly."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..modeling import Sam
from .configs import OFFICIAL_CONFIGS, SMALL_CONFIGS, SamConfig, build_sam

# Prefixes that fine-tuning tools put in front of the official key names.
_KNOWN_PREFIXES = ("module.", "sam.", "model.", "_orig_mod.")
# The automatic-mask-generator settings a checkpoint may recommend (meta["generator_settings"]).
#: How automatic segmentation places its prompts: SAM's regular point grid, or one point per bright blob.
PROMPT_MODES = ("grid", "seeds")
GENERATOR_SETTING_NAMES = (
    "prompts",
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
)
# The SamPredictor settings a checkpoint may recommend (meta["predictor_settings"]), all on/off.
PREDICTOR_SETTING_NAMES = ("keep_prompted_region",)
SETTINGS_KEYS = ("generator_settings", "predictor_settings")
_REQUIRED_KEYS = (
    "image_encoder.patch_embed.proj.weight",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "mask_decoder.iou_token.weight",
)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (used to verify downloads and to record provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], SamConfig | None]:
    """Read a checkpoint file and return (state_dict with official key names, stored config or None).

    Accepts a plain state_dict (the official files), `{"model": state_dict, "config": {...}}`
    (what this package writes), `{"state_dict": ...}`, and keys prefixed with `sam.`/`module.`.
    Only tensors and plain containers are read (`weights_only=True`): no code is ever unpickled.
    """
    state, config, _ = read_checkpoint_with_settings(path)
    return state, config


def read_checkpoint_with_settings(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], SamConfig | None, dict[str, Any]]:
    """`read_checkpoint` plus the settings the checkpoint recommends: {"generator_settings": ...,
    "predictor_settings": ...}, each empty if none (put them on a model with `recommend`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Checkpoint not found: {path}. Check the path, or pass a registered model name."
        )
    if path.is_dir():
        raise ValueError(f"Expected a checkpoint file but {path} is a directory.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refusing to load {path}: it contains Python objects other than tensors, which could run code "
            f"when unpickled. Save only the state_dict (torch.save(model.state_dict(), path)). Details: {err}"
        ) from err
    except Exception as err:  # the unpickler fails in many ways on garbage (IndexError, EOFError, ...)
        raise ValueError(
            f"Cannot read {path} as a PyTorch checkpoint: the file is truncated or corrupt, or not a "
            f"checkpoint at all ({type(err).__name__}: {err}). Download it again and compare its sha256."
        ) from err
    settings: dict[str, dict[str, Any]] = {key: {} for key in SETTINGS_KEYS}
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):
        meta, source = obj["meta"], str(path)
        settings["generator_settings"] = check_generator_settings(
            meta.get("generator_settings") or {}, source
        )
        settings["predictor_settings"] = check_predictor_settings(
            meta.get("predictor_settings") or {}, source
        )
    state, config = _unwrap(obj, path)
    return state, config, settings


def _check_names(settings: Mapping[str, Any], kind: str, allowed: tuple[str, ...], source: str) -> None:
    """`settings` must be a mapping whose keys are all in `allowed` (`kind`: generator or predictor)."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"{source}: {kind}_settings must be a mapping, not {type(settings).__name__}.")
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(f"{source}: unknown {kind} settings {unknown}; allowed: {', '.join(allowed)}.")


def check_generator_settings(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate recommended automatic-mask-generator settings: known names, numbers in range."""
    _check_names(settings, "generator", GENERATOR_SETTING_NAMES, source)
    checked: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "prompts":
            if value not in PROMPT_MODES:
                raise ValueError(
                    f"{source}: generator setting prompts must be one of {PROMPT_MODES}, got {value!r}."
                )
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{source}: generator setting {name} must be a number, got {value!r}.")
        if name.endswith("_thresh") and not 0.0 <= value <= 1.0:
            raise ValueError(f"{source}: generator setting {name} must lie in [0, 1], got {value}.")
        if value < 0:
            raise ValueError(f"{source}: generator setting {name} must not be negative, got {value}.")
        is_count = name in ("points_per_side", "min_mask_region_area")
        checked[name] = int(value) if is_count else float(value)
    return checked


def check_predictor_settings(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate recommended `SamPredictor` settings: known names, true or false."""
    _check_names(settings, "predictor", PREDICTOR_SETTING_NAMES, source)
    for name, value in settings.items():
        if not isinstance(value, bool):
            raise ValueError(f"{source}: predictor setting {name} must be true or false, got {value!r}.")
    return dict(settings)


def recommend(model: Sam, settings: Mapping[str, Mapping[str, Any]]) -> Sam:
    """Put a checkpoint's recommended settings (from `read_checkpoint_with_settings`) on `model`."""
    model.generator_settings = dict(settings.get("generator_settings") or {})
    model.predictor_settings = dict(settings.get("predictor_settings") or {})
    return model


def recommended_meta(model: Sam) -> dict[str, Any]:
    """The settings `model` recommends, as checkpoint meta entries (none for empty ones)."""
    return {key: dict(getattr(model, key, {}) or {}) for key in SETTINGS_KEYS if getattr(model, key, None)}


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], SamConfig | None]:
    config = None
    if isinstance(obj, Mapping) and not _looks_like_state_dict(obj):
        if isinstance(obj.get("config"), Mapping):
            try:
                config = SamConfig.from_dict(dict(obj["config"]))
            except TypeError as err:
                raise ValueError(f"{path}: the stored 'config' is not a SAM configuration ({err}).") from err
        for key in ("model", "state_dict", "model_state_dict", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not contain a SAM state_dict (found {type(obj).__name__}).")
    state = {_strip_prefix(str(k)): v for k, v in obj.items()}
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ValueError(f"{path}: entries {non_tensors[:3]} are not tensors; this is not a SAM state_dict.")
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        sample = ", ".join(list(state)[:3])
        raise ValueError(
            f"{path} is not a Segment Anything checkpoint: keys {missing} are missing "
            f"(it has e.g. {sample}). Expected the official SAM key layout (image_encoder.*, "
            "prompt_encoder.*, mask_decoder.*)."
        )
    return state, config


def _looks_like_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _KNOWN_PREFIXES:
            if key.startswith(prefix) and not key.startswith(
                ("image_encoder", "prompt_encoder", "mask_decoder")
            ):
                key = key[len(prefix) :]
                changed = True
    return key


def infer_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """Recover the architecture from tensor shapes.

    Head counts are not visible in shapes: the encoder's follows from rel-pos width (head dim),
    and the decoder is assumed to use 8 heads, as every official model does.
    """
    try:
        embed_dim, _, patch, _ = state["image_encoder.patch_embed.proj.weight"].shape
        stem = tuple(  # convolutional patch stem (not in official models): its conv weights
            int(v.shape[0])
            for k, v in sorted(
                (
                    (k, v)
                    for k, v in state.items()
                    if k.startswith("image_encoder.patch_embed.stem.")
                    and k.endswith(".weight")
                    and v.ndim == 4
                ),
                key=lambda kv: int(kv[0].split(".")[3]),
            )
        )
        if stem:
            patch = 2 ** len(stem)
        grid = state["image_encoder.pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
        rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
        head_dim = rel[0][1]
        global_idx = tuple(i for i in range(depth) if rel[i][0] == 2 * grid - 1)
        windowed = [r[0] for i, r in enumerate(rel) if i not in global_idx]
        window = (windowed[0] + 1) // 2 if windowed else 14
        prompt_dim = state["mask_decoder.iou_token.weight"].shape[1]
        dec_depth = 1 + max(
            int(k.split(".")[3]) for k in state if k.startswith("mask_decoder.transformer.layers.")
        )
        high_res = (  # high-res feature path (not in official models): widths of its three levels
            tuple(
                int(state[f"high_res_encoder.{level}.0.weight"].shape[0])
                for level in ("stride2", "stride4", "stride8")
            )
            if "high_res_encoder.stride2.0.weight" in state
            else ()
        )
        iou_layers = [
            k for k in state if k.startswith("mask_decoder.iou_prediction_head.layers.") and "weight" in k
        ]
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"Cannot recognise the SAM architecture of this checkpoint: missing or odd {err}."
        ) from err
    return SamConfig(
        encoder_embed_dim=int(embed_dim),
        encoder_depth=depth,
        encoder_num_heads=int(embed_dim) // int(head_dim),
        encoder_global_attn_indexes=global_idx,
        image_size=int(grid) * int(patch),
        patch_size=int(patch),
        window_size=int(window),
        prompt_embed_dim=int(prompt_dim),
        mlp_ratio=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / int(embed_dim),
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=dec_depth,
        decoder_num_heads=8,
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        patch_stem_channels=stem,
        high_res_channels=high_res,
    )


def config_name(config: SamConfig) -> str | None:
    """Name of a known configuration equal to `config`, if any."""
    for name, known in {**OFFICIAL_CONFIGS, **SMALL_CONFIGS}.items():
        if known == config:
            return name
    return None


def load_state_dict_strict(model: Sam, state: Mapping[str, torch.Tensor], source: str) -> Sam:
    """Load weights with strict key and shape checks, with an error that says what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} tensors have other shapes (e.g. {wrong_shape[0]})")
        if missing:
            parts.append(f"{len(missing)} tensors are missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors are not part of the model (e.g. {unexpected[0]})")
        raise ValueError(f"{source} does not fit this model architecture: " + "; ".join(parts) + ".")
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(path: str | Path, model: Sam, meta: dict[str, Any]) -> Path:
    """Write the format this package reads back: {"model": state_dict, "config": SamConfig dict,
    "meta": plain data (may hold "generator_settings", "predictor_settings")}. Written to a temporary
    file first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "config": model.config.to_dict(), "meta": meta}, tmp)
    tmp.replace(path)
    return path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The "meta" entry of a checkpoint this package wrote (empty for other checkpoints)."""
    obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def load_checkpoint(
    path: str | Path, expected: SamConfig | None = None, expected_name: str | None = None
) -> Sam:
    """Build the model a checkpoint describes and load it.

    If `expected` is given (e.g. `sam_model_registry["vit_b"]`), a checkpoint of another
    architecture is refused with an error naming both.
    """
    state, stored, settings = read_checkpoint_with_settings(path)
    found = stored or infer_config(state)
    if expected is not None and found != expected:
        found_name = config_name(found)
        hint = f"sam_model_registry['{found_name}']" if found_name else "sam_plugins.load_model(path)"
        raise ValueError(
            f"{path} holds {found_name or 'another SAM architecture'} (encoder "
            f"{found.encoder_embed_dim}-dim, depth {found.encoder_depth}, input {found.image_size} px), "
            f"but {expected_name or 'another model'} was asked for. Use {hint}, "
            "or sam_plugins.load_model(path), which detects the architecture."
        )
    model = load_state_dict_strict(build_sam(found), state, str(path))
    return recommend(model, settings)
