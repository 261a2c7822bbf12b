"""Inference fast path of the two-way transformer: the same function, reassociated.

The prompt side has only N tokens (about 7) while the image side has L = h*w tokens (4096), so every
projection of the L image tokens (L x 256 x 128 multiply-adds per prompt) is moved to the N-token side:

* token-to-image attention, head h: ``q_h (W_k,h k + b_k,h)^T = (q_h W_k,h) k^T + const`` (the constant
  cancels in the softmax) and ``attn_h (v W_v,h^T + b_v,h) = (attn_h v) W_v,h^T + b_v,h`` (rows sum to 1);
* image-to-token attention, head h: ``(k W_q,h^T + b_q,h) t_h^T = k (W_q,h^T t_h^T) + b_q,h t_h^T`` and
  ``out_proj(attn v) = sum_h attn_h (v_h W_out,h^T) + b_out``.

Only float summation order changes (outputs agree with the plain path to ~1e-6 relative); the plain path
stays the reference (training, and the AMG's exact recomputation of the masks it keeps). The prompt-
independent image side of the first block is cached while the image embedding is unchanged.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (cheap on CPU: one vectorised compare, no thread pool, no allocation)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type != "cpu" or not (a.is_contiguous() and b.is_contiguous()):
        return torch.equal(a, b)
    int_type = _INT_OF_SIZE.get(a.element_size())
    if int_type is None or a.is_complex():
        return torch.equal(a, b)
    a_bits = a.detach().reshape(-1).view(int_type).numpy()
    b_bits = b.detach().reshape(-1).view(int_type).numpy()
    return bool(np.array_equal(a_bits, b_bits))


def version_or_none(t: torch.Tensor) -> int | None:
    """In-place modification counter; None for inference tensors, which have none."""
    return None if t.is_inference() else t._version


_WORKSPACES = threading.local()


def workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor of this thread, reused from call to call (contents undefined).

    A click allocates tens of MB of temporaries; fresh large allocations are mmapped by glibc and
    page-faulted in again on every call, which cost ~20% of a click. Only temporaries that never
    leave the function that asked for them may live here.
    """
    store = getattr(_WORKSPACES, "tensors", None)
    if store is None:
        store = _WORKSPACES.tensors = {}
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())
    size = math.prod(shape)
    buf = store.get(key)
    if buf is None or buf.numel() < size:
        buf = store[key] = torch.empty(size, dtype=like.dtype, device=like.device)
    return buf[:size].view(shape)


def _add(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b into a workspace (a temporary)."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return torch.add(a, b, out=workspace(name, tuple(shape), a))


@dataclass
class ImageSide:
    """Image side of the transformer input, flattened to tokens, with its block-0 projections.

    ``keys``: image embedding + dense prompt embedding, (1 or B, L, C); ``pe``: (1, L, C). When keys
    has batch 1 (shared by all prompts), the prompt-independent block-0 projections are precomputed:
    ``t2i_k``/``t2i_v`` (H, L, d) and ``i2t_q`` (H, d, L).
    """

    keys: torch.Tensor
    pe: torch.Tensor
    t2i_k: torch.Tensor | None = None
    t2i_v: torch.Tensor | None = None
    i2t_q: torch.Tensor | None = None
    conv1_in: torch.Tensor | None = None  # (1, L, 4*c1) = keys @ G_0, see conv1_of_final_tokens
    conv1_gains: list[torch.Tensor] | None = None  # G_0..G_D, see conv1_gains


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(1, L, H*d) -> contiguous (H, L, d)."""
    _, n, c = x.shape
    return x[0].view(n, heads, c // heads).transpose(0, 1).contiguous()


def prepare_image_side(
    transformer: nn.Module, src: torch.Tensor, image_pe: torch.Tensor, upscaling: nn.Module | None = None
) -> ImageSide:
    """Flatten ``src`` (image embedding + dense prompt, (1 or B, C, h, w)) and ``image_pe`` (1, C, h, w).

    With ``upscaling`` (the decoder's output upscaling) a shared side also precomputes ``conv1_in``.
    """
    keys = src.flatten(2).transpose(1, 2).contiguous()
    pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    side = ImageSide(keys=keys, pe=pe)
    if keys.shape[0] == 1 and transformer.layers:
        block = transformer.layers[0]
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        kp = keys + pe
        side.t2i_k = _split_heads(t2i.k_proj(kp), t2i.num_heads)
        side.t2i_v = _split_heads(t2i.v_proj(keys), t2i.num_heads)
        side.i2t_q = _split_heads(i2t.q_proj(kp), i2t.num_heads).transpose(1, 2).contiguous()  # (H, d, L)
        if upscaling is not None and conv1_chain_applies(transformer, upscaling):
            side.conv1_gains = conv1_gains(transformer, upscaling)
            side.conv1_in = torch.matmul(keys, side.conv1_gains[0])
    return side


def conv1_chain_applies(transformer: nn.Module, upscaling: nn.Module) -> bool:
    """The standard layout: blocks with an affine LayerNorm after the image update, a 2x2/2 conv first."""
    conv1 = upscaling[0] if len(upscaling) == 5 else None
    return (
        isinstance(conv1, nn.ConvTranspose2d)
        and tuple(conv1.kernel_size) == (2, 2)
        and tuple(conv1.stride) == (2, 2)
        and len(transformer.layers) > 0
        and all(
            isinstance(b.norm4, nn.LayerNorm) and b.norm4.weight is not None and b.norm4.bias is not None
            for b in transformer.layers
        )
    )


def conv1_gains(transformer: nn.Module, upscaling: nn.Module) -> list[torch.Tensor]:
    """``G_k = diag(gamma_k) ... diag(gamma_(D-1)) W1``, k = 0..D; ``G_D = W1`` (conv1, (C, 4*c1))."""
    conv1 = upscaling[0]
    g = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1)
    gains = [g]
    for block in reversed(transformer.layers):
        g = block.norm4.weight[:, None] * g
        gains.append(g)
    return gains[::-1]


def conv1_of_final_tokens(
    transformer: nn.Module, upscaling: nn.Module, side: ImageSide, trace: list[tuple[torch.Tensor, ...]]
) -> torch.Tensor:
    """The upscaling's first convolution (as a matmul, bias included) of the transformer's final image tokens.

    Each block updates the image tokens by a low-rank term and a LayerNorm:
    ``keys' = rstd * (keys + S^T m - mean) * gamma + beta`` (S: attention weights (B, H*N, L),
    m: (B, H*N, C)).
    A right-hand matrix passes through that: ``keys' G = rstd * (keys G_k + S^T (m G_k) - mean 1^T G_k)
    + beta^T G_(k+1)``, so starting from ``side.conv1_in = keys_0 G_0`` (once per image) each block costs
    a (L, H*N) x (H*N, 4*c1) product and two row-wise passes instead of the (L, C) x (C, 4*c1)
    convolution at the end.
    ``trace``: (S, m, mean, rstd) of every block, from :func:`fast_transformer`. The result is a
    workspace of this thread: use it before the next call. The gains come with the side (computed
    once per image, with ``conv1_in``).
    """
    gains = side.conv1_gains
    norms = [block.norm4 for block in transformer.layers]
    out = side.conv1_in
    for k, (s, m, mean, rstd) in enumerate(trace):
        g = gains[k]
        mg = torch.matmul(m, g)  # (B, H*N, 4*c1)
        if k > 0:  # the previous LayerNorm's shift: each row of S^T sums to H (1 per head)
            mg += (norms[k - 1].bias @ g) / transformer.layers[k].cross_attn_image_to_token.num_heads
        if k == 0:
            ws = workspace("conv1", (s.shape[0], *out.shape[1:]), out)
            out = torch.baddbmm(out.expand(s.shape[0], -1, -1), s.transpose(1, 2), mg, out=ws)
        else:
            out.baddbmm_(s.transpose(1, 2), mg)
        out.addcmul_(mean, -g.sum(0)).mul_(rstd)
    conv1 = upscaling[0]
    return out.add_(norms[-1].bias @ gains[-1] + conv1.bias.repeat(4))


def _head_weight(linear: nn.Linear, heads: int) -> torch.Tensor:
    """Weight of a projection to H heads of size d, as (H, d, C)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.view(heads, out_dim // heads, in_dim)


def _token_heads(attn: nn.Module, proj: nn.Linear, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Project prompt tokens (B, N, C) and split heads: (B, H, N, d)."""
    b, n, _ = x.shape
    y = proj(x)
    if scale != 1.0:
        y = y * scale
    return y.view(b, n, attn.num_heads, -1).transpose(1, 2)


def token_to_image_cached(attn: nn.Module, q_in: torch.Tensor, side: ImageSide) -> torch.Tensor:
    """Token-to-image attention on the shared image side with precomputed keys/values: (B, N, C)."""
    b, n, _ = q_in.shape
    heads = attn.num_heads
    q = _token_heads(attn, attn.q_proj, q_in)  # (B, H, N, d)
    d = q.shape[-1]
    q = q.transpose(0, 1).reshape(heads, b * n, d)
    scores = torch.bmm(q, side.t2i_k.transpose(1, 2))  # (H, B*N, L)
    scores = torch.softmax(scores / math.sqrt(d), dim=-1)
    out = torch.bmm(scores, side.t2i_v)  # (H, B*N, d)
    out = out.view(heads, b, n, d).permute(1, 2, 0, 3).reshape(b, n, heads * d)
    return attn.out_proj(out)


def token_to_image(
    attn: nn.Module,
    q_in: torch.Tensor,
    keys: torch.Tensor,
    kp: torch.Tensor | None = None,
    pe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-to-image attention on prompt-specific image keys (B, L, C): (B, N, C).

    The attention keys are ``kp`` = keys + pe, or (few queries) keys and ``pe`` (1, L, C) separately.
    """
    b, n, c = q_in.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    q = _token_heads(attn, attn.q_proj, q_in, 1.0 / math.sqrt(d))  # (B, H, N, d)
    r = torch.matmul(q, _head_weight(attn.k_proj, heads)).reshape(b, heads * n, c)  # (B, H*N, C)
    if kp is not None:
        scores = torch.bmm(r, kp.transpose(1, 2))  # (B, H*N, L)
    elif pe is not None:
        scores = torch.baddbmm(torch.matmul(r, pe[0].t()), r, keys.transpose(1, 2))
    else:
        raise ValueError("token_to_image needs kp or pe")
    scores = torch.softmax(scores, dim=-1)
    pooled = torch.bmm(scores, keys).view(b, heads, n, c)  # attention-weighted image tokens
    out = torch.matmul(pooled, _head_weight(attn.v_proj, heads).transpose(1, 2))  # (B, H, N, d)
    out = out.transpose(1, 2).reshape(b, n, heads * d) + attn.v_proj.bias
    return attn.out_proj(out)


def _layer_norm_(x: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over the last axis of x (``norm``: its weight, bias, eps), in place; returns mean and 1/std.

    Unlike ``F.layer_norm`` it allocates nothing of x's size (a fresh 4 MB result is page-faulted in
    on every click once glibc has returned it to the system).
    """
    mean = x.mean(-1, keepdim=True)
    x.sub_(mean)
    var = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    rstd = var.add_(norm.eps).rsqrt_()
    x.mul_(rstd)
    torch.addcmul(norm.bias, x, norm.weight, out=x)
    return mean, rstd


def image_to_token_update(
    attn: nn.Module,
    norm: nn.LayerNorm,
    keys: torch.Tensor,
    tq: torch.Tensor,
    tv: torch.Tensor,
    *,
    kp: torch.Tensor | None = None,
    cached_q: torch.Tensor | None = None,
    temporary: bool = False,
    in_place: bool = False,
    trace: list | None = None,
) -> torch.Tensor:
    """``norm(keys + attn(q=kp, k=tq, v=tv))`` for image keys (B or 1, L, C).

    ``in_place``: ``keys`` is a temporary that may be overwritten. ``temporary``: the result is one
    too (a workspace of this thread, used before the next call), else a fresh tensor. ``trace``
    (implies ``temporary``): a list that gets (attention weights (B, H*N, L), values m (B, H*N, C),
    LayerNorm mean and rstd (B, L, 1)).

    The queries are either ``kp`` (B, L, C) = keys + pe, or the precomputed ``cached_q`` (H, d, L).
    Scores are laid out (B, H, N, L): the softmax over the N tokens then runs on contiguous rows of L.
    """
    b, n, c = tq.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    k = _token_heads(attn, attn.k_proj, tq, 1.0 / math.sqrt(d))  # (B, H, N, d)
    if cached_q is not None:
        length = cached_q.shape[-1]
        k = k.transpose(0, 1).reshape(heads, b * n, d)
        scores = torch.bmm(k, cached_q).view(heads, b, n, length).transpose(0, 1)  # (B, H, N, L)
    else:
        if kp is None:
            raise ValueError("image_to_token_update needs kp or cached_q")
        length = kp.shape[1]
        p_mat = torch.matmul(k, _head_weight(attn.q_proj, heads)).reshape(b, heads * n, c)  # (B, H*N, C)
        bias = torch.matmul(k, attn.q_proj.bias.view(heads, d, 1)).view(b, heads * n, 1)
        scores = torch.baddbmm(bias, p_mat, kp.transpose(1, 2)).view(b, heads, n, length)
    scores = torch.softmax(scores, dim=2).reshape(b, heads * n, length)
    v = _token_heads(attn, attn.v_proj, tv)  # (B, H, N, d)
    w_out = attn.out_proj.weight.view(c, heads, d).permute(1, 2, 0)  # (H, d, C)
    # Each head's weights sum to 1 over its N tokens, so b_out / H on every row of m adds b_out.
    m = torch.matmul(v, w_out).reshape(b, heads * n, c) + attn.out_proj.bias / heads  # (B, H*N, C)
    if keys.shape[0] != b:
        keys = keys.expand(b, -1, -1)
    if in_place and keys.is_contiguous():  # a temporary of the caller: accumulate into it, no copy
        x = keys.baddbmm_(scores.transpose(1, 2), m)
    else:
        x = torch.baddbmm(keys, scores.transpose(1, 2), m, out=workspace("i2t", (b, length, c), keys))
    if trace is None and not temporary:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    mean, rstd = _layer_norm_(x, norm)  # x is a temporary: normalise it in place
    if trace is not None:
        trace.append((scores, m, mean, rstd))
    return x


def fast_transformer(
    transformer: nn.Module,
    side: ImageSide,
    point_embedding: torch.Tensor,
    *,
    rows: list[int] | None = None,
    trace: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same outputs as ``TwoWayTransformer.forward`` (to float reassociation): tokens (B, N, C), keys.

    ``rows``: the final token-to-image attention runs for these tokens only and only they are
    returned ((B, len(rows), C)); ``rows=[0]`` gives the IoU token alone. ``trace``: see
    :func:`conv1_of_final_tokens`; with it the returned keys are a workspace of this thread (valid
    until the next call).
    """
    queries = point_embedding
    keys = side.keys
    pe = side.pe
    for i, block in enumerate(transformer.layers):
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_embedding
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)

        shared = i == 0 and side.t2i_k is not None
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        if shared:
            attn_out = token_to_image_cached(t2i, queries + point_embedding, side)
            kp = None
        else:
            kp = _add("kp", keys, pe)
            attn_out = token_to_image(t2i, queries + point_embedding, keys, kp)
        queries = block.norm2(queries + attn_out)
        queries = block.norm3(queries + block.mlp(queries))

        tq = queries + point_embedding
        # every block's image tokens but the last (returned) are temporaries
        temporary = i < len(transformer.layers) - 1
        if shared:
            keys = image_to_token_update(
                i2t, block.norm4, keys, tq, queries, cached_q=side.i2t_q, temporary=temporary, trace=trace
            )
        else:
            keys = image_to_token_update(
                i2t, block.norm4, keys, tq, queries, kp=kp, temporary=temporary, in_place=i > 0, trace=trace
            )

    if keys.shape[0] != queries.shape[0]:  # depth 0: the image side was never made prompt-specific
        keys = keys.expand(queries.shape[0], -1, -1)
    if rows is not None:  # the final attention only for the tokens whose output is used
        queries, point_embedding = queries[:, rows], point_embedding[:, rows]
    final = transformer.final_attn_token_to_image
    if queries.shape[1] == 1:
        attn_out = token_to_image(final, queries + point_embedding, keys, pe=pe)
    else:
        attn_out = token_to_image(final, queries + point_embedding, keys, _add("kp", keys, pe))
    queries = queries + attn_out
    return transformer.norm_final_attn(queries), keys


#: The upscaling runs on blocks of about this many image tokens: each block's intermediate maps
#: (2 MB for ViT-B) stay in cache from the first matmul to the mask logits.
UPSCALE_BLOCK_TOKENS = 1024


def _gelu_inplace(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return torch.ops.aten.gelu_(x)
    return act(x)


def high_res_token_layout(
    high_res: list[torch.Tensor], hw: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """High-res features [stride 4 (B, c2, 4h, 4w), stride 8 (B, c1, 2h, 2w)] in the layouts of
    :func:`upscale_masks`: stride 4 as (B, h*w*4, [a', b', c2]) with rows (i, j, a, b), stride 8 as
    (B, h*w, [a, b, c1]) (pixel row 4i + 2a + a' at stride 4, 2i + a at stride 8)."""
    s4, s8 = high_res
    h, w = hw
    b, c1, c2 = s8.shape[0], s8.shape[1], s4.shape[1]
    s8_rows = s8.reshape(b, c1, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, 4 * c1)
    s4_rows = s4.reshape(b, c2, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    s4_rows = s4_rows.reshape(b, h * w * 4, 4 * c2)
    return s4_rows, s8_rows


def upscale_masks(
    upscaling: nn.Sequential,
    hyper_in: torch.Tensor,
    src: torch.Tensor,
    hw: tuple[int, ...],
    conv1_out: torch.Tensor | None = None,
    high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mask logits (B, T, 4h, 4w) = hyper_in (B, T, c) . output_upscaling(src), src (B, h*w, C) tokens.

    ``conv1_out``: the first convolution's output (B, h*w, 4*c1), bias included, when already known
    (:func:`conv1_of_final_tokens`; it is overwritten); then ``src`` is not read.
    ``high_res``: the high-res features in :func:`high_res_token_layout` (batch 1 or B), added after
    the first and the second convolution.

    Each stride-2 ConvTranspose2d with a 2x2 kernel is one matmul per pixel in channels-last layout
    (no mkldnn deconvolution, no layout copies). Blocks of token rows run the whole chain (conv,
    norm, GELU in place, conv, GELU, hypernetwork dot) while in cache, and each block's T mask
    planes are written straight into their rows of the output.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b, length, c = src.shape
    if conv1_out is not None:
        b = conv1_out.shape[0]
    h, w = hw
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # (C, [a, b, c1])
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # (c1, [a', b', c2])
    bias2 = conv2.bias.repeat(4)
    t = hyper_in.shape[1]
    out = torch.empty(b, t, 4 * h, 4 * w, dtype=hyper_in.dtype, device=hyper_in.device)
    rows = max(1, UPSCALE_BLOCK_TOKENS // w)
    ws1 = workspace("up1", (rows * w, 4 * c1), hyper_in)
    ws2 = workspace("up2", (rows * w * 4, 4 * c2), hyper_in)
    ws3 = workspace("up3", (t, rows * w * 16), hyper_in)
    ws4 = workspace("up4", (t * rows * w * 16,), hyper_in)
    for i in range(b):
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            n = (r1 - r0) * w
            if conv1_out is not None:
                x = conv1_out[i, r0 * w : r1 * w].view(n * 4, c1)
            else:  # matmul then in-place bias: on CPU addmm first copies the broadcast bias into its output
                x = torch.mm(src[i, r0 * w : r1 * w], w1, out=ws1[:n]).view(n * 4, c1).add_(conv1.bias)
            if high_res is not None:
                hb = i if high_res[1].shape[0] > 1 else 0  # the image of prompt i
                x.view(n, 4 * c1).add_(high_res[1][hb, r0 * w : r1 * w])
            _layer_norm_(x, norm)  # x is a temporary (a workspace)
            x = _gelu_inplace(act1, x)
            x = torch.mm(x, w2, out=ws2[: n * 4]).add_(bias2)  # (n * 4, 4 * c2)
            if high_res is not None:
                x.add_(high_res[0][hb, r0 * w * 4 : r1 * w * 4])
            x = _gelu_inplace(act2, x)
            # the T mask planes as rows: (T, c2) x (c2, n * 16), columns (i, j, a, b, a', b')
            m = torch.mm(hyper_in[i], x.view(n * 16, c2).t(), out=ws3[:, : n * 16])
            # to (T, i, a, a', j, b, b') in two copies: one 7-d permutation moves 2 floats at a time
            k = r1 - r0
            half = ws4[: t * k * 16 * w].view(t, k, 2, w, 2, 4)
            half.copy_(m.view(t, k, w, 2, 2, 4).permute(0, 1, 3, 2, 4, 5))  # (T, i, a, j, b, [a', b'])
            dest = out[i, :, 4 * r0 : 4 * r1].view(t, k, 2, 2, w, 2, 2)
            dest.copy_(half.view(t, k, 2, w, 2, 2, 2).permute(0, 1, 2, 5, 3, 4, 6))
    return out


def _linear_resize_matrix(n_in: int, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) float64 matrix of 1-D linear resizing (align_corners=False).

    Made by resizing an identity in ``dtype``: PyTorch computes the source positions in the input's
    precision, so these are exactly the weights it applies to ``dtype`` tensors.
    """
    eye = torch.eye(n_in, dtype=dtype).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].t().double()


@dataclass
class _Band:
    """A banded (n_out, n_in) resize matrix: out[i] = sum_k weight[i, k] * x[index[i, k]]."""

    index: torch.Tensor  # (n_out, K) int64
    weight: torch.Tensor  # (n_out, K)

    @classmethod
    def of(cls, matrix: torch.Tensor, dtype: torch.dtype, device: torch.device) -> _Band:
        n_in = matrix.shape[1]
        nonzero = matrix != 0
        cols = torch.arange(n_in)
        first = torch.where(nonzero, cols, n_in).min(1).values
        last = torch.where(nonzero, cols, -1).max(1).values
        width = int((last - first).max()) + 1
        index = first[:, None] + torch.arange(width)
        inside = index < n_in
        index = index.clamp(max=n_in - 1)
        weight = torch.where(inside, matrix.gather(1, index), 0.0)
        return cls(index.to(device), weight.to(device, dtype))

    def apply_rows(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Resize the second-to-last axis of x (rows are gathered whole, so it stays cheap)."""
        shape = (*x.shape[:-2], self.index.shape[0], x.shape[-1])
        out = torch.index_select(x, -2, self.index[:, 0], out=out if out is not None else x.new_empty(shape))
        out.mul_(self.weight[:, 0, None])
        if self.index.shape[1] > 1:
            tmp = workspace("band", shape, x)
            for k in range(1, self.index.shape[1]):
                out.addcmul_(torch.index_select(x, -2, self.index[:, k], out=tmp), self.weight[:, k, None])
        return out


_RESIZE_CACHE: dict[tuple, tuple[_Band, _Band] | None] = {}


def _is_one_resize(composed: torch.Tensor, n_in: int, n_out: int, dtype: torch.dtype) -> bool:
    """Whether a composed per-axis map equals one plain linear resize n_in -> n_out (to ~1e-6)."""
    direct = _linear_resize_matrix(n_in, n_out, dtype)
    return composed.shape == direct.shape and bool((composed - direct).abs().max() <= 1e-6)


def postprocess_masks(
    masks: torch.Tensor, img_size: int, input_size: tuple[int, ...], original_size: tuple[int, ...]
) -> torch.Tensor:
    """``Sam.postprocess_masks`` (bilinear to img_size, crop to input_size, bilinear to original_size).

    Both bilinear steps are separable linear maps, so per axis the chain is one composed matrix
    (float64, then the masks' dtype) with a few non-zeros per row: each output row/column is a
    weighted sum of K (2-4) input rows/columns, with no (B, T, img_size, img_size) intermediate.
    Where the composed maps are themselves one plain bilinear resize (e.g. a 512-px image: x4 then
    /2 is x2), PyTorch's fused resize kernel does it in one pass. Returns a (possibly transposed,
    non-contiguous) view.
    """
    h, w = masks.shape[-2:]
    key = (h, w, img_size, tuple(input_size), tuple(original_size), masks.dtype, masks.device)
    if key in _RESIZE_CACHE:
        bands = _RESIZE_CACHE[key]
    else:
        ih, iw = input_size[0], input_size[1]
        dt = masks.dtype
        rows = _linear_resize_matrix(ih, original_size[0], dt) @ _linear_resize_matrix(h, img_size, dt)[:ih]
        cols = _linear_resize_matrix(iw, original_size[1], dt) @ _linear_resize_matrix(w, img_size, dt)[:iw]
        direct = _is_one_resize(rows, h, original_size[0], dt)
        direct = direct and _is_one_resize(cols, w, original_size[1], dt)
        if len(_RESIZE_CACHE) > 16:
            _RESIZE_CACHE.clear()
        bands = None if direct else (_Band.of(rows, dt, masks.device), _Band.of(cols, dt, masks.device))
        _RESIZE_CACHE[key] = bands
    if bands is None:
        return F.interpolate(masks, tuple(original_size[:2]), mode="bilinear", align_corners=False)
    row_band, col_band = bands
    lead, n_rows = tuple(masks.shape[:-2]), len(row_band.index)
    rows = row_band.apply_rows(masks, out=workspace("rows", (*lead, n_rows, w), masks))
    cols_first = workspace("rows_t", (*lead, w, n_rows), masks)
    cols_first.copy_(rows.transpose(-1, -2))
    return col_band.apply_rows(cols_first).transpose(-1, -2)
