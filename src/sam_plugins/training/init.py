"""From-scratch weight initialisation of a SAM for training (what got the embedded model off the
all-background plateau; docs/models.md)."""

from __future__ import annotations

import torch


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(1, grid, grid, dim) 2-D sine-cosine position table (MAE), half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    ang = pos[:, None] * omega[None]  # (grid, quarter)
    table = torch.zeros(grid, grid, dim, dtype=torch.float64)
    ys = torch.cat([ang.sin(), ang.cos()], 1)[:, None, :].expand(grid, grid, 2 * quarter)
    xs = torch.cat([ang.sin(), ang.cos()], 1)[None, :, :].expand(grid, grid, 2 * quarter)
    table[..., : 2 * quarter] = ys
    table[..., 2 * quarter : 4 * quarter] = xs
    return table[None].float()


@torch.no_grad()
def tie_query_key(decoder: torch.nn.Module, generator: torch.Generator, gain: float) -> None:
    """Start every decoder attention with q_proj = k_proj = gain * (a random semi-orthogonal map).

    The prompt tokens and the image positions carry the same random-Fourier position encoding,
    whose dot product peaks where the positions coincide. With tied projections q.k keeps that
    kernel, so from step 0 a point token attends to the image around it and the image around it
    to the token: the decoder starts localised instead of having to discover locality, which is
    what keeps a from-scratch run on the all-background plateau.
    """
    for module in decoder.modules():
        q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
        if isinstance(q, torch.nn.Linear) and isinstance(k, torch.nn.Linear):
            weight = torch.empty_like(q.weight)
            torch.nn.init.orthogonal_(weight, gain=gain, generator=generator)
            q.weight.copy_(weight)
            k.weight.copy_(weight)
            q.bias.zero_()
            k.bias.zero_()


@torch.no_grad()
def init_weights(
    model: torch.nn.Module, generator: torch.Generator, scheme: str = "vit", qk_gain: float = 0.0
) -> None:
    """From-scratch initialisation. "vit": encoder linear layers truncated normal (std 0.02), decoder
    linear layers Xavier-uniform (its MLPs have no residual path, small weights starve them), zero
    biases, unit norms, a 2-D sin-cos absolute position table; "torch": PyTorch defaults.
    qk_gain > 0 also starts the decoder's attention with tied query/key projections
    (see `tie_query_key`)."""
    if scheme == "torch":
        return
    if scheme != "vit":
        raise ValueError(f"unknown init scheme {scheme!r} (vit or torch)")
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    for module in model.mask_decoder.modules():  # no residual stream there: keep signal gain ~1
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight, generator=generator)
    if qk_gain > 0:
        tie_query_key(model.mask_decoder, generator, qk_gain)
    enc = model.image_encoder
    if enc.pos_embed is not None:
        enc.pos_embed.copy_(_sincos_2d(enc.pos_embed.shape[1], enc.pos_embed.shape[-1]))
    w = enc.patch_embed.proj.weight
    torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1), generator=generator)
