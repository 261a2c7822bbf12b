"""Simulated interactive prompts for training (SAM paper, §A.1 / micro-sam style).

Coordinates are (x, y) pixels in the frame of the masks given; boxes are xyxy with inclusive
maxima, as the official predictor expects. Point labels: 1 positive, 0 negative, -1 "no point"
(the prompt encoder's padding label, used when a prediction has no error left).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) inclusive bounds of a non-empty 2-D mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _inner_distance(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Distance to the nearest pixel outside `mask` (image borders count as outside), on the bbox crop.

    Returns the distance map of the crop and the crop's (y0, x0) offset.
    """
    y0, y1, x0, x1 = _bbox(mask)
    crop = np.pad(mask[y0 : y1 + 1, x0 : x1 + 1], 1)
    dist = ndi.distance_transform_edt(crop)[1:-1, 1:-1]
    return dist, y0, x0


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """xyxy box (float32) of a non-empty mask, inclusive maxima."""
    y0, y1, x0, x1 = _bbox(mask)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def sample_positive_points(masks: np.ndarray, rng: np.random.Generator, power: float = 2.0) -> np.ndarray:
    """One point inside each mask, (N, H, W) bool -> (N, 2) xy float32.

    Pixels are drawn with probability proportional to distance-to-boundary ** power: interior
    points are preferred but any object pixel can be chosen (power 0 = uniform over the mask).
    """
    out = np.zeros((len(masks), 2), dtype=np.float32)
    for i, mask in enumerate(masks):
        dist, y0, x0 = _inner_distance(mask)
        weights = dist.ravel() ** power
        weights /= weights.sum()
        flat = rng.choice(weights.size, p=weights)
        yy, xx = divmod(int(flat), dist.shape[1])
        out[i] = (x0 + xx, y0 + yy)
    return out


def jitter_boxes(
    masks: np.ndarray, rng: np.random.Generator, noise: float = 0.1, max_pixels: float = 20.0
) -> np.ndarray:
    """Noisy bounding boxes of (N, H, W) masks -> (N, 4) xyxy float32, inside the image.

    Each coordinate moves by Gaussian noise with std `noise` times the box side, clipped to
    `max_pixels` (the paper's 10 % / 20 px); the result is clipped to the image and kept ordered.
    """
    h, w = masks.shape[-2:]
    boxes = np.stack([box_from_mask(m) for m in masks]) if len(masks) else np.zeros((0, 4), np.float32)
    sides = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
    std = noise * np.concatenate([sides, sides], axis=1)
    delta = np.clip(rng.normal(size=boxes.shape) * std, -max_pixels, max_pixels)
    boxes = boxes + delta
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def block_reduce_mask(masks: np.ndarray, factor: int) -> np.ndarray:
    """Downsample (N, H, W) bool masks by `factor` with a majority vote per block (>= half)."""
    if factor == 1:
        return masks.astype(bool)
    n, h, w = masks.shape
    blocks = masks[:, : h - h % factor, : w - w % factor].reshape(n, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(2, 4)) >= 0.5


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _deepest_pixel(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(y, x) of the pixel farthest inside `region`; ties are broken at random."""
    dist, y0, x0 = _inner_distance(region)
    candidates = np.flatnonzero(dist.ravel() >= dist.max() - 1e-6)
    yy, xx = divmod(int(rng.choice(candidates)), dist.shape[1])
    return y0 + yy, x0 + xx


def sample_correction_points(
    pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One corrective click per object from the error of the previous prediction.

    pred (N, h, w) bool prediction, gt (N, H, W) bool ground truth, H = k h (k >= 1, e.g. the
    low-res decoder output against full-res labels). The largest connected false-negative and
    false-positive regions (at the prediction's resolution) are compared; the larger one gets
    the click (positive for a false negative, negative for a false positive), at the pixel
    farthest inside it. With k > 1 the click lands on a random full-res pixel of that cell that
    has the right ground-truth value. Returns coords (N, 2) xy float32 in the gt frame and
    labels (N,) int64; objects without any error get label -1.
    """
    n, h, w = pred.shape
    factor = gt.shape[-1] // w
    if gt.shape[-2:] != (h * factor, w * factor):
        raise ValueError(f"gt shape {gt.shape[-2:]} is not a multiple of prediction shape {(h, w)}")
    gt_low = block_reduce_mask(gt, factor)
    coords = np.zeros((n, 2), dtype=np.float32)
    labels = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        fn = _largest_component(gt_low[i] & ~pred[i])
        fp = _largest_component(~gt_low[i] & pred[i])
        n_fn, n_fp = int(fn.sum()), int(fp.sum())
        if n_fn == 0 and n_fp == 0:
            continue
        positive = n_fn > n_fp or (n_fn == n_fp and rng.random() < 0.5)
        y, x = _deepest_pixel(fn if positive else fp, rng)
        if factor > 1:
            cell = gt[i, y * factor : (y + 1) * factor, x * factor : (x + 1) * factor]
            ok = np.flatnonzero(cell.ravel() == positive)
            if ok.size:
                dy, dx = divmod(int(rng.choice(ok)), factor)
            else:
                dy = dx = factor // 2
            y, x = y * factor + dy, x * factor + dx
        coords[i] = (x, y)
        labels[i] = int(positive)
    return coords, labels


def mask_prompt_from_gt(
    gt_low: np.ndarray, rng: np.random.Generator, magnitude: float = 8.0, max_shift: int = 1
) -> np.ndarray:
    """A perturbed low-res logit mask as a first prompt: (N, h, w) bool -> (N, 1, h, w) float32.

    Each mask is randomly dilated or eroded by up to `max_shift` cells and turned into logits
    of +/- magnitude, as an annotator's rough mask (or another tool's output) would be.
    """
    out = np.empty((len(gt_low), 1) + gt_low.shape[1:], dtype=np.float32)
    for i, m in enumerate(gt_low):
        k = int(rng.integers(-max_shift, max_shift + 1))
        if k > 0:
            m = ndi.binary_dilation(m, iterations=k)
        elif k < 0:
            eroded = ndi.binary_erosion(m, iterations=-k)
            m = eroded if eroded.any() else m
        out[i, 0] = np.where(m, magnitude, -magnitude)
    return out
