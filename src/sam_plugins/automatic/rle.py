"""Run-length encoding of masks: uncompressed RLE (column-major, as pycocotools) and COCO strings.

Uncompressed RLE: ``{"size": [h, w], "counts": [...]}``; counts alternate runs of 0s and 1s in
column-major (Fortran) order and always start with a run of 0s (possibly of length 0).
COCO RLE: the same counts written as the ASCII string pycocotools produces (``rleToString``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "mask_to_rle_pytorch",
    "masks_to_rle_counts",
    "rle_to_mask",
    "area_from_rle",
    "counts_to_string",
    "string_to_counts",
    "coco_encode_rle",
    "coco_decode_rle",
]


def masks_to_rle_counts(masks: torch.Tensor) -> list[np.ndarray]:
    """Vectorised RLE of a (B, H, W) bool tensor: one int64 counts array per mask.

    One ``nonzero`` over all masks, run lengths by a shifted subtraction, then a split per mask
    (no per-mask scan of the change list).
    """
    if masks.ndim != 3:
        raise ValueError(f"Expected masks of shape (B, H, W), got {tuple(masks.shape)}.")
    b, h, w = masks.shape
    if b == 0:
        return []
    flat = masks.to(torch.bool).permute(0, 2, 1).reshape(b, h * w)
    n = h * w
    boundaries = torch.ones((b, n + 1), dtype=torch.bool, device=flat.device)
    if n > 1:
        torch.ne(flat[:, 1:], flat[:, :-1], out=boundaries[:, 1:n])
    rows, pos = boundaries.nonzero(as_tuple=True)
    runs = (pos[1:] - pos[:-1])[rows[1:] == rows[:-1]]
    runs_per_mask = torch.bincount(rows, minlength=b) - 1
    starts_with_one = flat[:, 0].cpu().numpy()
    runs_np = runs.cpu().numpy()
    splits = np.cumsum(runs_per_mask.cpu().numpy())[:-1]
    out = []
    for first, counts in zip(starts_with_one, np.split(runs_np, splits), strict=True):
        out.append(np.concatenate([[0], counts]) if first else counts)
    return out


def mask_to_rle_pytorch(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed RLE (official format: python int lists) for each mask of a (B, H, W) tensor."""
    _, h, w = tensor.shape
    return [{"size": [h, w], "counts": c.tolist()} for c in masks_to_rle_counts(tensor)]


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode an uncompressed RLE to an (H, W) bool array."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts do not describe a {h}x{w} mask (sum {counts.sum()}).")
    values = (np.arange(len(counts)) % 2).astype(bool)
    mask = np.repeat(values, counts)
    return mask.reshape(w, h).transpose()


def area_from_rle(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(np.asarray(rle["counts"], dtype=np.int64)[1::2].sum())


def counts_to_string(counts) -> str:
    """pycocotools ``rleToString``: LEB128-like, 5 data bits per char (+48),
    delta against counts[i-2] for i > 2."""
    counts = [int(c) for c in counts]
    chars: list[str] = []
    append = chars.append
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            append(chr(c + 48))
    return "".join(chars)


def string_to_counts(s: str | bytes) -> list[int]:
    """pycocotools ``rleFrString``: inverse of :func:`counts_to_string`."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("Truncated COCO RLE string.")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"Invalid character {s[p]!r} in COCO RLE string.")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE ``{"size": [h, w], "counts": str}`` (as the official AMG output)."""
    h, w = uncompressed_rle["size"]
    return {"size": [h, w], "counts": counts_to_string(uncompressed_rle["counts"])}


def coco_decode_rle(coco_rle: dict[str, Any]) -> dict[str, Any]:
    """COCO RLE (string counts) -> uncompressed RLE (list counts)."""
    h, w = coco_rle["size"]
    return {"size": [h, w], "counts": string_to_counts(coco_rle["counts"])}
