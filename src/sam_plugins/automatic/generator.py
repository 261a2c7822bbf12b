"""SamAutomaticMaskGenerator: "segment everything" with a grid of point prompts.

Same arguments, defaults and records as the official generator. The work is split in two:

* :meth:`SamAutomaticMaskGenerator.initialize` runs the model (encoder per crop, decoder per
  point) and keeps every candidate mask with its predicted IoU, stability score, box and RLE;
* :meth:`SamAutomaticMaskGenerator.generate_from_state` applies the cheap part (IoU/stability
  thresholds, box NMS, crop NMS, small-region cleanup, output encoding), so thresholds can be
  changed without running the model again.

:meth:`~SamAutomaticMaskGenerator.generate` does both with the generator's own settings and then
drops candidates failing ``pred_iou_thresh`` before their masks are upsampled (which masks come out
does not change). The decoder runs in chunks of a few prompts with its first-layer image
projections computed once per image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..images import prepare_image
from ..predictor import SamPredictor
from .rle import coco_encode_rle, masks_to_rle_counts, rle_to_mask
from .utils import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)

__all__ = ["AmgCancelled", "AmgState", "SamAutomaticMaskGenerator"]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
ProgressCallback = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event | None


class AmgCancelled(RuntimeError):
    """Raised when a run is cancelled through the ``cancel`` flag."""


@dataclass
class CropCandidates:
    """Candidate masks of one crop (boxes and points in the crop frame, RLEs in the image frame)."""

    crop_box: list[int]
    layer: int
    data: MaskData


@dataclass
class AmgState:
    """Everything the cheap filtering stage needs (made by ``SamAutomaticMaskGenerator.initialize``)."""

    image_size: tuple[int, int]
    crops: list[CropCandidates]
    pred_iou_floor: float
    stability_floor: float
    stability_score_offset: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_candidates(self) -> int:
        return sum(len(c.data) for c in self.crops)


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _mask_box(mask: np.ndarray) -> list[int]:
    """XYXY box (inclusive max) of one mask; zeros when empty (as batched_mask_to_box)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts (official semantics)."""

    def __init__(
        self,
        model: torch.nn.Module,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        progress_callback: ProgressCallback | None = None,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if points_per_side is not None:
            if int(points_per_side) < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}.")
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [np.asarray(g, dtype=float) for g in point_grids]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}).")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {output_mode!r}; use one of {OUTPUT_MODES}.")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}.")
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.progress_callback = progress_callback
        #: Candidate masks upsampled at once (bounds the memory of the full-size logits).
        self.upsample_batch = 16
        #: Prompts whose fast-path IoUs all lie below pred_iou_thresh by more than this are dropped
        #: without the exact decoder (fast vs exact IoU differ by ~1e-6; see ``fast_decoder``).
        self.iou_screen_margin = 1e-4
        #: Keep only each prompt's highest-scored mask instead of all three (not official; used by
        #: :class:`~sam_plugins.automatic.seeds.SeededMaskGenerator`, one prompt per object).
        self.best_mask_only = False

    @classmethod
    def for_model(cls, model: torch.nn.Module, **kwargs: Any) -> SamAutomaticMaskGenerator:
        """A generator with the settings the model's checkpoint recommends (`model.generator_settings`).

        The official models recommend nothing, so they get the official defaults. A small model
        such as the embedded one predicts lower IoUs and needs lower thresholds; its checkpoint says
        which. Keyword arguments (any constructor argument) override the recommendation.
        """
        settings = {k: v for k, v in getattr(model, "generator_settings", {}).items() if k != "prompts"}
        return cls(model, **{**settings, **kwargs})

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        *,
        progress_callback: ProgressCallback | None = None,
        cancel: Cancel = None,
        **prepare_kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Masks for ``image`` as a list of records (see the official generator for the fields)."""
        state = self.initialize(
            image,
            pred_iou_floor=self.pred_iou_thresh,
            stability_floor=self.stability_score_thresh,
            progress_callback=progress_callback,
            cancel=cancel,
            **prepare_kwargs,
        )
        return self.generate_from_state(state)

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
        """Run the model and keep all candidates passing the floors (0 = keep all).

        ``embedding`` (an :class:`~sam_plugins.embeddings.ImageEmbedding` of the whole image) skips
        the encoder for the full-image crop. ``cancel`` (callable or threading.Event) stops the run
        between batches with :class:`AmgCancelled`.
        """
        image = prepare_image(image, **prepare_kwargs)
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        callback = progress_callback or self.progress_callback
        n_batches = [-(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layer_idxs]
        total, done = sum(n_batches) + len(crop_boxes), 0
        crops = []
        for crop_box, layer in zip(crop_boxes, layer_idxs, strict=True):
            if _is_cancelled(cancel):
                raise AmgCancelled("Automatic mask generation was cancelled.")
            x0, y0, x1, y1 = crop_box
            cropped = image[y0:y1, x0:x1, :]
            if embedding is not None and crop_box == [0, 0, orig_size[1], orig_size[0]]:
                self.predictor.set_image_embedding(embedding)
            else:
                self.predictor.set_image(cropped)
            done += 1
            if callback is not None:
                callback(done, total)
            points_for_image = self.point_grids[layer] * np.array(cropped.shape[:2])[None, ::-1]
            data = MaskData()
            for (points,) in batch_iterator(self.points_per_batch, points_for_image):
                if _is_cancelled(cancel):
                    self.predictor.reset_image()
                    raise AmgCancelled("Automatic mask generation was cancelled.")
                data.cat(
                    self._process_batch(
                        points, cropped.shape[:2], crop_box, orig_size, pred_iou_floor, stability_floor
                    )
                )
                done += 1
                if callback is not None:
                    callback(done, total)
            self.predictor.reset_image()
            crops.append(CropCandidates(crop_box, layer, data))
        return AmgState(tuple(orig_size), crops, pred_iou_floor, stability_floor, self.stability_score_offset)

    def generate_from_state(
        self,
        state: AmgState,
        *,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        box_nms_thresh: float | None = None,
        crop_nms_thresh: float | None = None,
        min_mask_region_area: int | None = None,
        output_mode: str | None = None,
    ) -> list[dict[str, Any]]:
        """Filter the candidates of ``state`` (no model call); None = the generator's setting."""
        piou = self.pred_iou_thresh if pred_iou_thresh is None else pred_iou_thresh
        stab = self.stability_score_thresh if stability_score_thresh is None else stability_score_thresh
        box_nms = self.box_nms_thresh if box_nms_thresh is None else box_nms_thresh
        crop_nms = self.crop_nms_thresh if crop_nms_thresh is None else crop_nms_thresh
        min_area = self.min_mask_region_area if min_mask_region_area is None else min_mask_region_area
        mode = self.output_mode if output_mode is None else output_mode
        if mode not in OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {mode!r}; use one of {OUTPUT_MODES}.")
        if state.pred_iou_floor > 0 and piou < state.pred_iou_floor:
            raise ValueError(
                f"pred_iou_thresh={piou} is below the floor {state.pred_iou_floor} the state was initialized "
                "with; call initialize(image, pred_iou_floor=0) to allow any threshold."
            )
        if state.stability_floor > 0 and stab < state.stability_floor:
            raise ValueError(
                f"stability_score_thresh={stab} is below the floor {state.stability_floor} the state was "
                "initialized with; call initialize(image, stability_floor=0) to allow any threshold."
            )
        data = self._filter_state(state, piou, stab, box_nms, crop_nms)
        if min_area > 0:
            data = self.postprocess_small_regions(data, min_area, max(box_nms, crop_nms))
        return self._records(data, mode)

    # ------------------------------------------------------------------ model stage
    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
        pred_iou_floor: float,
        stability_floor: float,
    ) -> MaskData:
        predictor = self.predictor
        model = predictor.model
        decoder = model.mask_decoder
        transformed = predictor.transform.apply_coords(points, im_size)
        in_points = torch.as_tensor(transformed, device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        sparse, dense = model.prompt_encoder(
            points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
        )
        image_pe = model.prompt_encoder.get_dense_pe()
        features = predictor.features

        lows, ious, pts = [], [], []
        for idx, n_real in self._exact_batches(decoder, features, image_pe, sparse, dense, pred_iou_floor):
            part_dense = dense[: len(idx)] if dense.stride(0) == 0 else dense[idx]  # a broadcast stays one
            iou_all, tokens, src = decoder.predict_tokens(
                features, image_pe, sparse[idx], part_dense, exact=True
            )
            iou = iou_all[:n_real, 1:]  # multimask output: mask tokens 1..3
            need = (
                (iou > pred_iou_floor).any(dim=1)
                if pred_iou_floor > 0
                else torch.ones_like(iou[:, 0], dtype=bool)
            )
            if not bool(need.any()):
                continue
            tokens, src = tokens[:n_real][need], src[:n_real][need]
            low = decoder.masks_from_tokens(
                tokens, src, features.shape[-2:], exact=True, high_res_features=predictor.high_res_features
            )[:, 1:]
            iou = iou[need]
            if self.best_mask_only:
                best = iou.argmax(dim=1, keepdim=True)
                low = low[torch.arange(len(best)), best[:, 0]][:, None]
                iou = iou.gather(1, best)
            lows.append(low.flatten(0, 1))
            ious.append(iou.flatten(0, 1))
            pts.append(np.repeat(points[idx[:n_real][need].numpy()], low.shape[1], axis=0))
        empty = MaskData(
            iou_preds=torch.zeros(0),
            stability_score=torch.zeros(0),
            boxes=torch.zeros((0, 4), dtype=torch.int64),
            points=torch.zeros((0, 2), dtype=torch.float64),
            rles=[],
        )
        if not lows:
            return empty
        low_res = torch.cat(lows)
        iou_preds = torch.cat(ious)
        points_t = torch.as_tensor(np.concatenate(pts))
        if pred_iou_floor > 0:
            keep = iou_preds > pred_iou_floor
            low_res, iou_preds, points_t = low_res[keep], iou_preds[keep], points_t[keep]

        out = empty
        orig_h, orig_w = orig_size
        for start in range(0, len(low_res), self.upsample_batch):
            part = slice(start, start + self.upsample_batch)
            logits = model.postprocess_masks(
                low_res[part][:, None], predictor.input_size, predictor.original_size
            )
            logits = logits[:, 0]
            data = MaskData(iou_preds=iou_preds[part], points=points_t[part])
            data["stability_score"] = calculate_stability_score(
                logits, model.mask_threshold, self.stability_score_offset
            )
            if stability_floor > 0:
                keep = data["stability_score"] >= stability_floor
                data.filter(keep)
                logits = logits[keep]
            masks = logits > model.mask_threshold
            del logits
            data["boxes"] = batched_mask_to_box(masks)
            keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
            if not bool(keep.all()):
                data.filter(keep)
                masks = masks[keep]
            data["rles"] = masks_to_rle_counts(uncrop_masks(masks, crop_box, orig_h, orig_w))
            out.cat(data)
        return out

    def _exact_batches(
        self,
        decoder: Any,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        pred_iou_floor: float,
    ) -> list[tuple[torch.Tensor, int]]:
        """Prompt indices for the exact decoder, as (indices, number of real prompts) batches.

        With a floor, prompts are screened on the fast path first (IoU token only): those whose IoUs
        all lie below the floor by more than ``iou_screen_margin`` are dropped (the exact path would
        drop them too). The others run on the exact path in batches of the chunk size, the last one
        padded with repeats: the exact decoder's rounding depends on the batch size (not on the other
        prompts), and this is the size whose outputs equal the official ones bit for bit.
        """
        n = sparse.shape[0]
        chunk = decoder.chunk_size(features, n)
        if not (pred_iou_floor > 0 and decoder.uses_fast_path()):
            return [(torch.arange(s, min(s + chunk, n)), min(chunk, n - s)) for s in range(0, n, chunk)]
        kept = []
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            screen = decoder.predict_ious(features, image_pe, sparse[part], dense[part])[:, 1:]
            kept.append((screen > pred_iou_floor - self.iou_screen_margin).any(dim=1).nonzero()[:, 0] + start)
        order = torch.cat(kept)
        size = min(chunk, n)
        batches = []
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            n_real = len(idx)
            if n_real < size:
                idx = torch.cat([idx, idx[-1:].expand(size - n_real)])
            batches.append((idx, n_real))
        return batches

    # ------------------------------------------------------------------ cheap stage
    def _filter_state(
        self, state: AmgState, piou: float, stab: float, box_nms: float, crop_nms: float
    ) -> MaskData:
        data = MaskData()
        for crop in state.crops:
            d = MaskData(**dict(crop.data.items()))
            if len(d) == 0:
                continue
            if piou > 0.0:
                d.filter(d["iou_preds"] > piou)
            if stab > 0.0:
                d.filter(d["stability_score"] >= stab)
            keep = batched_nms(d["boxes"].float(), d["iou_preds"], torch.zeros(len(d["boxes"])), box_nms)
            d.filter(keep)
            d["boxes"] = uncrop_boxes_xyxy(d["boxes"], crop.crop_box)
            d["points"] = uncrop_points(d["points"], crop.crop_box)
            d["crop_boxes"] = torch.tensor([crop.crop_box] * len(d["rles"]), dtype=torch.int64).reshape(-1, 4)
            data.cat(d)
        if len(data) == 0:
            return MaskData(
                iou_preds=np.zeros(0, np.float32),
                stability_score=np.zeros(0, np.float32),
                boxes=np.zeros((0, 4), np.int64),
                points=np.zeros((0, 2)),
                rles=[],
                crop_boxes=np.zeros((0, 4), np.int64),
            )
        if len(state.crops) > 1:
            scores = 1 / box_area(data["crop_boxes"])
            keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), crop_nms)
            data.filter(keep)
        data.to_numpy()
        data["rles"] = [
            {"size": [state.image_size[0], state.image_size[1]], "counts": c} for c in data["rles"]
        ]
        return data

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fill small holes, drop small islands, re-run box NMS preferring unchanged masks (official)."""
        if len(mask_data["rles"]) == 0:
            return mask_data
        new_masks, boxes, scores = [], [], []
        for rle in mask_data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            boxes.append(_mask_box(mask))
            scores.append(float(not (changed_holes or changed_islands)))
        boxes_t = torch.as_tensor(boxes, dtype=torch.int64)
        keep = batched_nms(boxes_t.float(), torch.as_tensor(scores), torch.zeros(len(boxes_t)), nms_thresh)
        rles = list(mask_data["rles"])
        for i in keep.tolist():
            if scores[i] == 0.0:
                h, w = new_masks[i].shape
                counts = masks_to_rle_counts(torch.from_numpy(np.ascontiguousarray(new_masks[i]))[None])[0]
                rles[i] = {"size": [h, w], "counts": counts}
                mask_data["boxes"][i] = boxes_t[i].numpy()
        mask_data["rles"] = rles
        mask_data.filter(keep)
        return mask_data

    @staticmethod
    def _records(data: MaskData, mode: str) -> list[dict[str, Any]]:
        records = []
        for idx, rle in enumerate(data["rles"]):
            counts = np.asarray(rle["counts"])
            plain = {"size": list(rle["size"]), "counts": counts.tolist()}
            if mode == "coco_rle":
                segmentation: Any = coco_encode_rle(plain)
            elif mode == "binary_mask":
                segmentation = np.ascontiguousarray(rle_to_mask(plain))
            else:
                segmentation = plain
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(counts[1::2].sum()),
                    "bbox": box_xyxy_to_xywh(data["boxes"][idx]).tolist(),
                    "predicted_iou": data["iou_preds"][idx].item(),
                    "point_coords": [data["points"][idx].tolist()],
                    "stability_score": data["stability_score"][idx].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][idx]).tolist(),
                }
            )
        return records
