"""Automatic segmentation of bright objects (nuclei, cells) from one point prompt per object.

SAM's "segment everything" prompts a regular grid of points and keeps up to three masks per point
(sub-part, part, whole). On fluorescence images that wastes most prompts on background, misses
objects smaller than the grid spacing and keeps fragments next to the whole objects. Here the
prompts are where a biologist would click: one positive point at each bright blob (a local maximum
of the Gaussian-smoothed image), and each point keeps only its best mask (highest predicted IoU).
Duplicates (two seeds in one nucleus) are removed by the same non-maximum suppression as SAM's.
A second pass prompts the bright regions that no accepted mask covers (a nucleus whose blob
had no maximum of its own next to a brighter neighbour, or whose mask was taken by a merged one),
one point at the centre of each such region, and adds the masks that do not overlap the first ones.
Everything else (records, re-thresholding without the model, label images) is the automatic mask
generator's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import peak_local_max

from ..images import prepare_image
from .generator import OUTPUT_MODES, AmgState, Cancel, ProgressCallback, SamAutomaticMaskGenerator
from .rle import coco_encode_rle, mask_to_rle_pytorch


def find_seeds(
    image: np.ndarray,
    sigma: float = 2.0,
    min_distance: int = 3,
    threshold: float = 0.2,
    **prepare_kwargs: Any,
) -> np.ndarray:
    """Centres of bright blobs as (N, 2) float (x, y) pixel coordinates, brightest first.

    The image is converted as for the model (:func:`~sam_plugins.prepare_image`; ``prepare_kwargs``
    such as ``channel`` pass through), averaged over colour, smoothed with a Gaussian of ``sigma``
    pixels, and its local maxima at least ``min_distance`` pixels apart are kept when they rise above
    the background (5th percentile) by ``threshold`` of the image's range (5th to 99.5th percentile).
    ``sigma`` about a third of the smallest object radius finds touching objects separately.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}.")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}.")
    smooth, floor = _smoothed_floor(prepare_image(image, **prepare_kwargs), sigma, threshold)
    if floor is None:  # a flat image has no blobs
        return np.zeros((0, 2), dtype=np.float64)
    peaks = peak_local_max(smooth, min_distance=int(min_distance), threshold_abs=floor, exclude_border=False)
    order = np.argsort(-smooth[peaks[:, 0], peaks[:, 1]], kind="stable")
    return peaks[order, ::-1].astype(np.float64)


def _smoothed_floor(rgb: np.ndarray, sigma: float, threshold: float) -> tuple[np.ndarray, float | None]:
    """The colour-averaged ``rgb`` (model input) smoothed by ``sigma`` px, and the brightness a seed
    must exceed: ``threshold`` of the 5th-99.5th percentile range above the 5th (None if flat)."""
    smooth = ndimage.gaussian_filter(rgb.astype(np.float32).mean(axis=-1), sigma)
    low, high = np.percentile(smooth, [5.0, 99.5])
    return smooth, (low + threshold * (high - low) if high > low else None)


def bright_mask(image: np.ndarray, sigma: float = 2.0, threshold: float = 0.2) -> np.ndarray:
    """Pixels of ``image`` (already :func:`prepare_image`-d) brighter than the seed floor of
    :func:`find_seeds` after the same smoothing: where objects can be."""
    smooth, floor = _smoothed_floor(image, sigma, threshold)
    return smooth > floor if floor is not None else np.zeros(smooth.shape, dtype=bool)


def _union(records: list[dict[str, Any]], shape: tuple[int, ...]) -> np.ndarray:
    """Pixels covered by any binary-mask record."""
    covered = np.zeros(shape, dtype=bool)
    for record in records:
        covered |= record["segmentation"]
    return covered


def uncovered_seeds(bright: np.ndarray, covered: np.ndarray, min_area: int = 20) -> np.ndarray:
    """(N, 2) (x, y) points, one at the centre (farthest from the edge) of each bright region of at
    least ``min_area`` pixels that ``covered`` (the accepted masks, grown by a pixel) leaves free;
    regions are opened by 2 px first, so thin rims around accepted masks do not count."""
    free = bright & ~ndimage.binary_dilation(covered, iterations=1)
    free = ndimage.binary_opening(free, iterations=2)
    labels, _ = ndimage.label(free)
    points = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        region = labels[window] == index
        if region.sum() < min_area:
            continue
        depth = ndimage.distance_transform_edt(region)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points.append((x + window[1].start, y + window[0].start))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


class SeededMaskGenerator(SamAutomaticMaskGenerator):
    """Segment every bright object (nuclei, cells) with one point prompt at each blob centre.

    Same records, ``initialize``/``generate_from_state`` split, progress and cancel as
    :class:`SamAutomaticMaskGenerator`; the prompts come from :func:`find_seeds` on each image and
    every prompt keeps only its highest-scored mask. With ``seed_passes=2`` (default) a second
    pass prompts the centres of bright regions that the first pass's accepted masks leave free
    (:func:`uncovered_seeds`) and adds its masks that overlap the first ones by less than
    ``second_pass_max_overlap`` of their area. The second pass's seeds depend on the thresholds the
    generator has when :meth:`initialize` runs; re-filtering the state later does not re-seed.
    The defaults (seed sigma 2 px and threshold 0.2, predicted IoU >= 0.4, box NMS 0.2: a seed
    inside an object already found adds nothing; the second pass; stability >= 0.75, which drops
    masks whose outline moves a lot with the logit threshold) were chosen by F1 on held-out
    generated nuclei images with the embedded model (docs/models.md).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        seed_sigma: float = 2.0,
        seed_min_distance: int = 3,
        seed_threshold: float = 0.2,
        seed_passes: int = 2,
        second_pass_max_overlap: float = 0.3,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.4,
        stability_score_thresh: float = 0.75,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.2,
        min_mask_region_area: int = 10,
        output_mode: str = "binary_mask",
        progress_callback: ProgressCallback | None = None,
    ) -> None:
        super().__init__(
            model,
            points_per_side=None,
            point_grids=[np.zeros((0, 2))],
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=0,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
            progress_callback=progress_callback,
        )
        find_seeds(np.zeros((2, 2), np.uint8), seed_sigma, seed_min_distance, seed_threshold)  # validate
        if seed_passes not in (1, 2):
            raise ValueError(f"seed_passes must be 1 or 2, got {seed_passes}.")
        if not 0.0 <= second_pass_max_overlap <= 1.0:
            raise ValueError(f"second_pass_max_overlap must lie in [0, 1], got {second_pass_max_overlap}.")
        self.seed_passes = seed_passes
        self.second_pass_max_overlap = second_pass_max_overlap
        self.seed_sigma = seed_sigma
        self.seed_min_distance = seed_min_distance
        self.seed_threshold = seed_threshold
        self.best_mask_only = True

    @classmethod
    def for_model(cls, model: torch.nn.Module, **kwargs: Any) -> SeededMaskGenerator:
        """Like the grid generator's; a checkpoint's recommended grid thresholds do not apply here."""
        return cls(model, **kwargs)

    def seeds(self, image: np.ndarray, **prepare_kwargs: Any) -> np.ndarray:
        """The (N, 2) (x, y) point prompts this generator uses on ``image``."""
        return find_seeds(
            image, self.seed_sigma, self.seed_min_distance, self.seed_threshold, **prepare_kwargs
        )

    @torch.no_grad()
    def initialize(
        self,
        image: np.ndarray,
        *,
        pred_iou_floor: float = 0.0,
        stability_floor: float = 0.0,
        embedding: Any = None,
        progress_callback: ProgressCallback | None = None,
        cancel: Cancel = None,
        **prepare_kwargs: Any,
    ) -> AmgState:
        """Find the seeds of ``image``, then run the model on them (see the grid generator's);
        with two passes, then on the centres of the bright regions left uncovered."""
        prepared = prepare_image(image, **prepare_kwargs)
        h, w = prepared.shape[:2]
        callback = progress_callback or self.progress_callback
        if self.seed_passes == 2 and embedding is None:  # both passes use one embedding
            self.predictor.set_image(prepared)
            embedding = self.predictor.get_embedding()
            self.predictor.reset_image()
        # the generator scales its grids by the image size; a pixel's centre is at +0.5
        self.point_grids = [(self.seeds(prepared) + 0.5) / np.array([w, h], dtype=np.float64)]
        share = 1.0 if self.seed_passes == 1 else 0.8
        state = super().initialize(
            prepared,
            pred_iou_floor=pred_iou_floor,
            stability_floor=stability_floor,
            embedding=embedding,
            progress_callback=_scaled(callback, 0.0, share),
            cancel=cancel,
        )
        if self.seed_passes == 2:
            covered = _union(self._filter_binary(state), (h, w))
            points = uncovered_seeds(bright_mask(prepared, self.seed_sigma, self.seed_threshold), covered)
            self.point_grids = [(points + 0.5) / np.array([w, h], dtype=np.float64)]
            state.extra["second_pass"] = super().initialize(
                prepared,
                pred_iou_floor=pred_iou_floor,
                stability_floor=stability_floor,
                embedding=embedding,
                progress_callback=_scaled(callback, share, 1.0),
                cancel=cancel,
            )
        return state

    def _filter_binary(self, state: AmgState, **thresholds: Any) -> list[dict[str, Any]]:
        return super().generate_from_state(state, **{**thresholds, "output_mode": "binary_mask"})

    def generate_from_state(self, state: AmgState, **thresholds: Any) -> list[dict[str, Any]]:
        """Filter the candidates of ``state`` (no model call; see the grid generator's); the second
        pass's masks are added where they overlap the first pass's by less than
        ``second_pass_max_overlap`` of their own area."""
        second = state.extra.get("second_pass")
        if second is None:
            return super().generate_from_state(state, **thresholds)
        first = self._filter_binary(state, **thresholds)
        extra = self._filter_binary(second, **thresholds)
        covered = _union(first, state.image_size)
        limit = self.second_pass_max_overlap
        records = first + [r for r in extra if (r["segmentation"] & covered).sum() < limit * r["area"]]
        mode = thresholds.get("output_mode") or self.output_mode
        if mode not in OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {mode!r}; use one of {OUTPUT_MODES}.")
        if mode != "binary_mask" and records:  # the same records, encoded as asked
            masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
            for record, rle in zip(records, mask_to_rle_pytorch(masks), strict=True):
                record["segmentation"] = coco_encode_rle(rle) if mode == "coco_rle" else rle
        return records


def _scaled(callback: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    """A progress callback that maps (done, total) of one pass onto [start, end] of 1000 steps."""
    if callback is None:
        return None

    def report(done: int, total: int) -> None:
        callback(int(1000 * (start + (end - start) * done / max(1, total))), 1000)

    return report


#: Constructor arguments that only the grid generator has.
GRID_ONLY = (
    "points_per_side",
    "point_grids",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
)
#: Constructor arguments that only the seeded generator has.
SEEDS_ONLY = ("seed_sigma", "seed_min_distance", "seed_threshold", "seed_passes", "second_pass_max_overlap")


def generator_for_model(
    model: torch.nn.Module, prompts: str | None = None, **kwargs: Any
) -> SamAutomaticMaskGenerator:
    """The automatic segmentation a front end runs: ``prompts`` "grid" (SAM's point grid, all of
    SAM's arguments) or "seeds" (:class:`SeededMaskGenerator`); None = what the model's checkpoint
    recommends (``generator_settings["prompts"]``), else "grid". Arguments of None are left out, and
    arguments that only the other kind has are ignored, so one form can drive both.
    """
    from ..models.checkpoints import PROMPT_MODES

    if prompts is None:
        prompts = getattr(model, "generator_settings", {}).get("prompts", "grid")
    if prompts not in PROMPT_MODES:
        raise ValueError(f"prompts must be one of {PROMPT_MODES}, got {prompts!r}.")
    ignored = SEEDS_ONLY if prompts == "grid" else GRID_ONLY
    given = {k: v for k, v in kwargs.items() if v is not None and k not in ignored}
    if prompts == "grid":
        return SamAutomaticMaskGenerator.for_model(model, **given)
    return SeededMaskGenerator.for_model(model, **given)
