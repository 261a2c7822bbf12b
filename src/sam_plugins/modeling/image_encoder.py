"""ViT image encoder (ViTDet style) exactly as in Segment Anything.

Patch embedding, learned absolute position embedding, windowed attention blocks (window 14,
zero padding, no attention mask) interleaved with global attention blocks, decomposed relative
position embeddings, and a neck that projects to 256 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock

# Attention with the relative-position bias runs one head and one block of query rows at a time,
# so that the bias block handed to the fused attention (batch x rows x keys) has at most this many
# elements (4 MB in fp32) and is read back while still in cache: the whole bias is never built.
ATTENTION_BIAS_ELEMENTS = 1 << 20


class ImageEncoderViT(nn.Module):
    """Vision transformer that turns a padded, normalised image into a (256, H/16, W/16) embedding."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
        patch_stem_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        # "fp32" (exact, default) or "bf16": about 2x faster on CPUs with bf16 units, but the
        # embedding then differs from the official one by ~1e-2; opt in with `set_precision`.
        self.precision = "fp32"
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
            stem_channels=patch_stem_channels,
        )
        grid = img_size // patch_size
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    use_rel_pos=use_rel_pos,
                    rel_pos_zero_init=rel_pos_zero_init,
                    window_size=window_size if i not in global_attn_indexes else 0,
                    input_size=(grid, grid),
                )
            )

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def set_precision(self, precision: str) -> None:
        """Choose "fp32" (exact, the default) or "bf16" (faster, approximate) computation."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return self._forward(x).float()
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


class Block(nn.Module):
    """Pre-norm transformer block with optional window attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if self.use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        # rel_pos_zero_init only matters for training-time initialisation (zeros either way here).
        self.rel_pos_zero_init = rel_pos_zero_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        nh = self.num_heads
        # (3, B, nh, L, hd)
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        elif torch.is_grad_enabled() and x.requires_grad:
            # training: one batched matmul per step backpropagates far faster than the
            # row-blocked fused calls (5x for the embedded model's encoder under bf16 on CPU)
            out = attention_with_rel_pos_dense(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w))
        else:
            out = attention_with_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w))
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


def attention_with_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """softmax(q k^T * scale + rel_h + rel_w) v for (B, nh, L, hd) inputs.

    The bias rel_h[i, kh] + rel_w[i, kw] uses the unscaled query, as in the official code. It is
    built for one head and one block of query rows at a time (at most ATTENTION_BIAS_ELEMENTS
    elements) and handed to PyTorch's fused attention as an additive mask.
    """
    rel_h, rel_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    b, nh, length, _ = q.shape
    rel_h, rel_w = rel_h.reshape(b, nh, length, -1), rel_w.reshape(b, nh, length, -1)
    rows = max(1, min(length, ATTENTION_BIAS_ELEMENTS // (b * length)))
    out = torch.empty_like(q)
    for head in range(nh):
        hs = slice(head, head + 1)
        for start in range(0, length, rows):
            stop = min(start + rows, length)
            bias = (rel_h[:, hs, start:stop, :, None] + rel_w[:, hs, start:stop, None, :]).reshape(
                b, 1, stop - start, length
            )
            out[:, hs, start:stop] = F.scaled_dot_product_attention(
                q[:, hs, start:stop], k[:, hs], v[:, hs], attn_mask=bias
            )
    return out


def attention_with_rel_pos_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """The same attention as `attention_with_rel_pos`, with the whole (B, nh, L, L) map built at
    once, as the official code does. For training (small models, gradients needed): it costs
    B * nh * L^2 elements of memory but runs as a few large matmuls."""
    h, w = size
    rel_h, rel_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    b, nh, length, hd = q.shape
    attn = (q * hd**-0.5) @ k.transpose(-2, -1)
    attn = attn.view(b, nh, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
    return attn.view(b, nh, length, length).softmax(dim=-1) @ v


def rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decomposed bias terms (B, nh, h, w, kh) and (B, nh, h, w, kw) for (B, nh, L, hd) queries."""
    h, w = size
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, kh, hd)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, kw, hd)
    r_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
    return torch.einsum("bnhwc,hkc->bnhwk", r_q, rh), torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into (B * nWindows, ws, ws, C) windows, zero-padding bottom/right."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: reassemble windows and crop the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis: (q, k, C)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class PatchEmbed(nn.Module):
    """Image to patch embedding, returned channels-last: (B, H/16, W/16, C).

    Official SAM: one 16x16 convolution with stride 16. With `stem_channels` (not used by the
    official models) the patches come from a convolutional stem instead: one 3x3 stride-2
    convolution + LayerNorm2d + GELU per entry (as many as halve the image down to the patch
    grid), then a 1x1 projection. Such early convolutions make a small ViT trained from
    scratch learn much faster (Xiao et al., 2021, "Early convolutions help transformers see better").
    """

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_channels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.stem: nn.Sequential | None = None
        if stem_channels:
            if 2 ** len(stem_channels) != stride[0] or stride[0] != stride[1]:
                raise ValueError(
                    f"a stem of {len(stem_channels)} stride-2 convolutions gives patches of "
                    f"{2 ** len(stem_channels)} px, but the patch size is {stride}"
                )
            layers: list[nn.Module] = []
            prev = in_chans
            for ch in stem_channels:
                conv = nn.Conv2d(prev, ch, 3, stride=2, padding=1, bias=False)
                layers += [conv, LayerNorm2d(ch), nn.GELU()]
                prev = ch
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(prev, embed_dim, kernel_size=1)
        else:
            self.proj = nn.Conv2d(
                in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).permute(0, 2, 3, 1)
