"""Propagate one object's mask through the planes of a 3-D stack or a time series.

Segment the object in one plane, then walk plane by plane in both directions. Each step prompts
SAM with what the previous plane's mask says about the object (its box, an interior point and,
optionally, the previous low-resolution logits) and stops where the object ends: the new mask is
empty, too small, overlaps the previous one too little (IoU), changes area too abruptly, stands out
from its surroundings much less than on the start plane (the object fades out of focus), or SAM's
own quality score drops. Nothing here knows about napari; the widget runs `iter_propagate` in a
worker and shows every plane as it arrives.

The model is reached through a *plane provider*: a callable `provider(z) -> predictor` that returns
a predictor whose image is plane `z` (e.g. embeddings from a cache), or simply a predictor, in which
case plane `z` is prepared with `sam_plugins.images.prepare_image` and set with `set_image`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy import ndimage as ndi

PromptMode = Literal["box+point", "box", "point", "mask"]


class Predictor(Protocol):
    """The part of the (official) `SamPredictor` API that propagation uses."""

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


PlaneProvider = Callable[[int], Predictor]


@dataclass(frozen=True)
class StopCriteria:
    """When the object is considered to have ended (each check is skipped when disabled).

    iou_threshold: stop when IoU(new mask, previous mask) is below this (0 disables).
    min_area: stop when the new mask has fewer pixels than this.
    max_area_change: stop when the area grows or shrinks by more than this factor (0 disables).
    min_score: stop when SAM's predicted IoU for the new mask is below this (0 disables).
    min_contrast: stop when the object's contrast (mean intensity inside the mask minus the mean
        in a ring 2-5 px outside it) falls below this fraction of its contrast on the start plane:
        past a nucleus' end, out-of-focus glow still looks like an object to SAM (0 disables; the
        check is skipped when the object is not brighter than its surroundings on the start plane).
    """

    iou_threshold: float = 0.5
    min_area: int = 10
    max_area_change: float = 2.5
    min_score: float = 0.0
    min_contrast: float = 0.4

    def check(
        self, prev: np.ndarray, new: np.ndarray, score: float, contrast_ratio: float | None = None
    ) -> str | None:
        """Why propagation stops at `new` (a short reason), or None to keep going.

        `contrast_ratio` is the new mask's contrast relative to the start plane's (None: unknown).
        """
        area = int(new.sum())
        if area == 0:
            return "empty mask"
        if area < self.min_area:
            return f"area {area} < {self.min_area}"
        if self.min_score > 0 and score < self.min_score:
            return f"score {score:.2f} < {self.min_score:.2f}"
        if self.min_contrast > 0 and contrast_ratio is not None and contrast_ratio < self.min_contrast:
            return f"contrast {contrast_ratio:.2f} of the start plane's < {self.min_contrast:.2f}"
        prev_area = int(prev.sum())
        if self.max_area_change > 0 and prev_area > 0:
            ratio = area / prev_area
            if ratio > self.max_area_change or ratio < 1.0 / self.max_area_change:
                return f"area changed x{ratio:.2f}"
        if self.iou_threshold > 0:
            iou = mask_iou(prev, new)
            if iou < self.iou_threshold:
                return f"IoU {iou:.2f} < {self.iou_threshold:.2f}"
        return None


@dataclass
class PropagationResult:
    """Outcome of `propagate`: the object's mask in every plane it reaches."""

    mask: np.ndarray  # (Z, Y, X) bool
    slices: list[int] = field(default_factory=list)  # planes that hold the object, sorted
    scores: dict[int, float] = field(default_factory=dict)
    stop_reasons: dict[str, str] = field(default_factory=dict)  # "down"/"up" -> why it stopped
    cancelled: bool = False

    def to_labels(self, label_id: int = 1, dtype: Any = np.uint32) -> np.ndarray:
        """The mask as a label image holding `label_id`."""
        return self.mask.astype(dtype) * np.asarray(label_id, dtype=dtype)


@dataclass(frozen=True)
class PlaneStep:
    """One plane produced by `iter_propagate` (yielded as soon as it is computed)."""

    index: int
    mask: np.ndarray | None  # None when this plane ended the propagation
    score: float
    direction: str  # "start", "down" (decreasing index) or "up"
    stop_reason: str | None = None
    done: int = 0  # planes visited so far (for progress bars)
    total: int = 0  # most planes that can be visited


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def object_contrast(plane: np.ndarray, mask: np.ndarray, ring: tuple[int, int] = (2, 5)) -> float:
    """Mean intensity of `plane` inside `mask` minus the mean in a ring `ring` px outside it.

    Multi-channel planes (Y, X, C) are averaged over channels. Returns 0 for an empty mask or ring.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0.0
    pad = ring[1] + 1
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    m = mask[y0:y1, x0:x1]
    values = np.asarray(plane[y0:y1, x0:x1], dtype=np.float64)
    if values.ndim == 3:
        values = values.mean(axis=-1)
    outer = ndi.binary_dilation(m, iterations=ring[1]) & ~ndi.binary_dilation(m, iterations=ring[0])
    if not outer.any():
        return 0.0
    return float(values[m].mean() - values[outer].mean())


class _PlaneReader:
    """Reads plane z of a (lazy) volume once, for both the predictor and the contrast check."""

    def __init__(self, volume: Any, channel: int | None) -> None:
        self.volume, self.channel = volume, channel
        self._z: int | None = None
        self._plane: np.ndarray | None = None

    def raw(self, z: int) -> np.ndarray:
        if z != self._z:
            self._z, self._plane = z, np.asarray(self.volume[z])
        return self._plane

    def values(self, z: int) -> np.ndarray:
        """Plane z's intensities: the chosen channel when there is one."""
        plane = self.raw(z)
        return plane[..., self.channel] if self.channel is not None and plane.ndim == 3 else plane


def prompts_from_mask(
    mask: np.ndarray, mode: PromptMode = "box+point", box_margin: float = 0.05
) -> dict[str, np.ndarray | None]:
    """SAM prompts describing `mask` (Y, X): a box, an interior point, or both.

    The box (x0, y0, x1, y1) is the mask's bounding box grown by `box_margin` of its size (at
    least one pixel) so a slightly larger object on the next plane still fits. The point is the
    interior pixel farthest from the background (x, y), which lies inside even for curved shapes.
    """
    prompts: dict[str, np.ndarray | None] = {"point_coords": None, "point_labels": None, "box": None}
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("cannot build prompts from an empty mask")
    if mode in ("box+point", "box"):
        h, w = mask.shape
        my = max(1.0, box_margin * (ys.max() - ys.min() + 1))
        mx = max(1.0, box_margin * (xs.max() - xs.min() + 1))
        prompts["box"] = np.array(
            [
                max(0.0, xs.min() - mx),
                max(0.0, ys.min() - my),
                min(w - 1.0, xs.max() + mx),
                min(h - 1.0, ys.max() + my),
            ],
            dtype=np.float32,
        )
    if mode in ("box+point", "point"):
        y0, x0 = ys.min(), xs.min()
        crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)
        dist = ndi.distance_transform_edt(crop)
        cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
        prompts["point_coords"] = np.array([[x0 + cx - 1, y0 + cy - 1]], dtype=np.float32)
        prompts["point_labels"] = np.array([1], dtype=np.int32)
    return prompts


def _default_provider(predictor: Any, planes: _PlaneReader) -> PlaneProvider:
    """Set plane `z` on `predictor` with `set_image`, converting it with `prepare_image`."""
    from .images import prepare_image

    def provider(z: int) -> Predictor:
        predictor.set_image(prepare_image(planes.raw(z), channel=planes.channel))
        return predictor

    return provider


def _as_provider(predictor_or_provider: Any, planes: _PlaneReader) -> PlaneProvider:
    if hasattr(predictor_or_provider, "predict") and hasattr(predictor_or_provider, "set_image"):
        return _default_provider(predictor_or_provider, planes)
    if callable(predictor_or_provider):
        return predictor_or_provider
    raise TypeError("expected a predictor (with set_image/predict) or a callable provider(z) -> predictor")


def _is_cancelled(cancel: Callable[[], bool] | threading.Event | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _segment_plane(
    predictor: Predictor,
    prev_mask: np.ndarray,
    prev_logits: np.ndarray | None,
    prompt: PromptMode,
    box_margin: float,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Predict this plane's mask from the previous plane's mask (and logits)."""
    kwargs = prompts_from_mask(prev_mask, "box+point" if prompt == "mask" else prompt, box_margin)
    if prompt == "mask":
        kwargs["box"] = None  # keep the point; the logits carry the shape
    use_logits = prev_logits is not None and prompt in ("mask", "box+point")
    single_point = kwargs["box"] is None and not use_logits
    masks, scores, logits = predictor.predict(
        point_coords=kwargs["point_coords"],
        point_labels=kwargs["point_labels"],
        box=kwargs["box"],
        mask_input=prev_logits[None] if use_logits else None,
        multimask_output=single_point,
    )
    best = int(np.argmax(scores))
    return np.asarray(masks[best], dtype=bool), float(scores[best]), np.asarray(logits[best])


def iter_propagate(
    predictor_or_provider: Any,
    volume: Any,
    start_slice: int,
    start_mask: np.ndarray,
    *,
    slice_range: tuple[int, int] | None = None,
    direction: Literal["both", "up", "down"] = "both",
    stop: StopCriteria | None = None,
    prompt: PromptMode = "box+point",
    use_logits: bool = False,
    box_margin: float = 0.05,
    channel: int | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Iterator[PlaneStep]:
    """Propagate `start_mask` (Y, X) from plane `start_slice`, yielding each plane as it is done.

    `volume` is any (Z, Y, X[, C]) array-like indexed one plane at a time (numpy, dask, zarr); its
    planes are read for the contrast check (`stop.min_contrast`) and, when no provider is given,
    for the predictor. `slice_range` = (first, last), inclusive, limits
    the planes visited. `use_logits` feeds the previous plane's low-resolution logits back as
    `mask_input` (from the second step on). Cancellation is checked before every plane.
    """
    stop = stop or StopCriteria()
    n_planes = len(volume)
    lo, hi = slice_range if slice_range is not None else (0, n_planes - 1)
    lo, hi = max(0, int(lo)), min(n_planes - 1, int(hi))
    if not lo <= start_slice <= hi:
        raise ValueError(f"start slice {start_slice} is outside the slice range ({lo}, {hi})")
    start_mask = np.asarray(start_mask, dtype=bool)
    if not start_mask.any():
        raise ValueError("the start mask is empty: segment the object in the start slice first")
    planes = _PlaneReader(volume, channel)
    provider = _as_provider(predictor_or_provider, planes)
    directions = {"both": ("down", "up"), "up": ("up",), "down": ("down",)}[direction]
    total = (
        1
        + (start_slice - lo if "down" in directions else 0)
        + (hi - start_slice if "up" in directions else 0)
    )
    done = 1
    start_contrast = 0.0
    if stop.min_contrast > 0:
        start_contrast = object_contrast(planes.values(start_slice), start_mask)
    yield PlaneStep(start_slice, start_mask, 1.0, "start", done=done, total=total)
    for way in directions:
        step = -1 if way == "down" else 1
        prev, logits = start_mask, None
        z = start_slice + step
        while lo <= z <= hi:
            if _is_cancelled(cancel):
                return
            predictor = provider(z)
            mask, score, new_logits = _segment_plane(
                predictor, prev, logits if use_logits else None, prompt, box_margin
            )
            done += 1
            ratio = None
            if start_contrast > 0 and mask.any():
                ratio = object_contrast(planes.values(z), mask) / start_contrast
            reason = stop.check(prev, mask, score, ratio)
            if reason is not None:
                yield PlaneStep(z, None, score, way, stop_reason=reason, done=done, total=total)
                break
            yield PlaneStep(z, mask, score, way, done=done, total=total)
            prev, logits = mask, new_logits
            z += step
        else:
            yield PlaneStep(
                z - step, None, 0.0, way, stop_reason="end of slice range", done=done, total=total
            )


def propagate(
    predictor_or_provider: Any,
    volume: Any,
    start_slice: int,
    start_mask: np.ndarray,
    *,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> PropagationResult:
    """Segment one object through a stack: `iter_propagate` collected into a (Z, Y, X) mask.

    `progress(done, total)` is called after every plane; keyword arguments (slice_range,
    direction, stop, prompt, use_logits, box_margin, channel, cancel) go to `iter_propagate`.
    """
    start_mask = np.asarray(start_mask, dtype=bool)
    result = PropagationResult(mask=np.zeros((len(volume), *start_mask.shape), dtype=bool))
    for step in iter_propagate(predictor_or_provider, volume, start_slice, start_mask, **kwargs):
        if step.mask is not None:
            result.mask[step.index] = step.mask
            result.scores[step.index] = step.score
            result.slices.append(step.index)
        if step.stop_reason is not None:
            result.stop_reasons[step.direction] = step.stop_reason
        if progress is not None:
            progress(step.done, step.total)
    result.slices.sort()
    result.cancelled = _is_cancelled(kwargs.get("cancel"))
    return result
