"""Which SAM networks exist: their hyper-parameters and how to build them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import HighResEncoder, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of one SAM network. The official three differ only in the encoder."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # () = the official single patchify convolution; otherwise a convolutional stem (see PatchEmbed)
    patch_stem_channels: tuple[int, ...] = ()
    # () = official (no high-res path); (c0, c1, c2) = a HighResEncoder with these widths feeding
    # image features at strides 4 and 8 into the decoder's upscaling (modeling/high_res.py)
    high_res_channels: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def embedding_size(self) -> int:
        """Side of the (square) image embedding grid."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        """Plain-Python form, safe to store inside a checkpoint (loads with weights_only=True)."""
        d = asdict(self)
        d.pop("extra")
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        d["pixel_mean"] = list(self.pixel_mean)
        d["pixel_std"] = list(self.pixel_std)
        d["patch_stem_channels"] = list(self.patch_stem_channels)
        d["high_res_channels"] = list(self.high_res_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SamConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        tuples = (
            "encoder_global_attn_indexes",
            "pixel_mean",
            "pixel_std",
            "patch_stem_channels",
            "high_res_channels",
        )
        for key in tuples:
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def replace(self, **changes) -> SamConfig:
        return replace(self, **changes)


VIT_B = SamConfig(768, 12, 12, (2, 5, 8, 11))
VIT_L = SamConfig(1024, 24, 16, (5, 11, 17, 23))
VIT_H = SamConfig(1280, 32, 16, (7, 15, 23, 31))

# Small configurations: the same architecture, smaller. TINY keeps unit tests fast; it has
# several windows and a padded window at its input size, so every code path runs.
TINY = SamConfig(
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=256,
    window_size=6,
    prompt_embed_dim=64,
    decoder_num_heads=8,
    decoder_mlp_dim=128,
    iou_head_hidden_dim=64,
)

OFFICIAL_CONFIGS: dict[str, SamConfig] = {"vit_h": VIT_H, "vit_l": VIT_L, "vit_b": VIT_B}
SMALL_CONFIGS: dict[str, SamConfig] = {"tiny": TINY}


def build_sam(config: SamConfig) -> Sam:
    """Build an untrained SAM network (in eval mode) from a configuration."""
    emb = config.embedding_size
    image_encoder = ImageEncoderViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=config.mlp_ratio,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=config.window_size,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        patch_stem_channels=tuple(config.patch_stem_channels),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(emb, emb),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        transformer_dim=config.prompt_embed_dim,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
        high_res_encoder=(
            HighResEncoder(
                tuple(config.high_res_channels),
                (config.prompt_embed_dim // 8, config.prompt_embed_dim // 4),
            )
            if config.high_res_channels
            else None
        ),
    )
    sam.config = config
    sam.eval()
    return sam


def resize_input(model: Sam, image_size: int, window_size: int | None = None) -> Sam:
    """A copy of `model` for another input size (and encoder window), to fine-tune from.

    Every weight is kept; the absolute position embedding is resampled (bicubic) to the new token
    grid and the relative-position tables (linear) to the new attention extents, so the copy
    starts close to the original network seen at a larger zoom. Fine-tune it afterwards: the
    copy is a starting point, not an equivalent network.
    """
    config = model.config
    window_size = config.window_size if window_size is None else window_size
    new = config.replace(image_size=image_size, window_size=window_size)
    if new.image_size % new.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {new.patch_size}")
    state = dict(model.state_dict())
    grid = new.embedding_size
    pos = state["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
    state["image_encoder.pos_embed"] = pos.permute(0, 2, 3, 1).contiguous()
    for key, table in state.items():
        if key.endswith((".attn.rel_pos_h", ".attn.rel_pos_w")):
            block = int(key.split(".")[2])
            extent = grid if block in config.encoder_global_attn_indexes else window_size
            if table.shape[0] != 2 * extent - 1:
                state[key] = (
                    F.interpolate(table.t()[None], size=2 * extent - 1, mode="linear", align_corners=False)[0]
                    .t()
                    .contiguous()
                )
    resized = build_sam(new)
    resized.load_state_dict(state)
    resized.train(model.training)
    return resized.to(next(model.parameters()).device)


def add_high_res(model: Sam, channels: tuple[int, int, int]) -> Sam:
    """A copy of `model` with a :class:`HighResEncoder` of these widths, to fine-tune from.

    Every weight is kept and the new path's output projections start at zero, so the copy gives
    exactly the outputs of `model` until it is trained.
    """
    if model.config.high_res_channels:
        raise ValueError("The model already has a high-resolution feature path.")
    grown = build_sam(model.config.replace(high_res_channels=tuple(channels)))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("high_res_encoder.") for key in missing):
        raise ValueError(f"Cannot copy the weights: missing {missing}, unexpected {unexpected}")
    grown.train(model.training)
    return grown.to(next(model.parameters()).device)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
