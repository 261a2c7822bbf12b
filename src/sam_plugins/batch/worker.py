"""The worker side of a batch job: load the model once, then segment one task after another.

`Segmenter` is what every engine runs: in-process for the local engine, inside each actor for
the Ray engine, and behind FiftyOne's `apply_model` path. It only calls the core API
(`load_model`, `SamPredictor` or `OrientationAveragingPredictor`, `SamAutomaticMaskGenerator`,
`prepare_image`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..regions import keep_prompted_region
from .records import MODES, Instance, Task, TaskResult, instance_from_mask, store_masks_on_disk

# Automatic-mode arguments a job may set: `prompts` ("grid" or "seeds"; default: the model's
# recommendation), the official `SamAutomaticMaskGenerator` arguments (everything but the model) and
# the `SeededMaskGenerator` seed arguments; each engine ignores the other's (`generator_for_model`).
AMG_PARAMETERS = (
    "prompts",
    "seed_sigma",
    "seed_min_distance",
    "seed_threshold",
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)


@dataclass(frozen=True)
class SegmentSettings:
    """Everything a worker needs to know, picklable so it can travel to remote workers.

    `model` is a registered name, a checkpoint path, or None for the embedded default.
    `amg` holds automatic-mode arguments (see `AMG_PARAMETERS`).
    If `mask_dir` is set, masks of images with more than `inline_mask_limit` mask pixels
    (all images when the limit is None) are written there as PNG files instead of being
    returned in memory; the directory must be reachable by the workers and the writer.
    `orientations` (1, 2, 4 or 8; box and point modes) averages each prompt's mask over that many
    turned and mirrored copies of the image (`OrientationAveragingPredictor`): sharper masks for
    one encoder pass per orientation. `keep_prompted_region` (box and point modes): each mask keeps
    only the region its prompt points at (`sam_plugins.regions`); None = the model's recommendation.
    """

    mode: str = "automatic"
    model: str | None = None
    device: str | None = None
    amg: dict[str, Any] = field(default_factory=dict)
    mask_dir: str | None = None
    inline_mask_limit: int | None = None
    channel: int | None = None
    box_batch_size: int = 64
    stability_offset: float = 1.0
    num_threads: int | None = None
    orientations: int = 1
    keep_prompted_region: bool | None = None

    def __post_init__(self) -> None:
        from sam_plugins.orientations import ORIENTATION_CHOICES

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.orientations not in ORIENTATION_CHOICES:
            raise ValueError(f"orientations must be one of {ORIENTATION_CHOICES}, not {self.orientations!r}")
        if self.orientations > 1 and self.mode == "automatic":
            raise ValueError(
                "orientations > 1 averages the masks of box and point prompts; automatic mode "
                "does not use it: choose mode 'boxes' or 'points', or orientations=1"
            )
        unknown = set(self.amg) - set(AMG_PARAMETERS)
        if unknown:
            raise ValueError(f"unknown automatic-mode parameters: {sorted(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file into a numpy array (TIFF through tifffile, the rest through Pillow)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "CMYK", "LA", "PA", "RGBA"):
            im = im.convert("RGB")
        return np.asarray(im)


def _stability(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """Official stability score: IoU of the masks thresholded at `threshold ± offset`."""
    inter = (logits > threshold + offset).sum(dim=(-1, -2), dtype=torch.int64)
    union = (logits > threshold - offset).sum(dim=(-1, -2), dtype=torch.int64)
    return torch.where(union > 0, inter.float() / union.clamp(min=1).float(), torch.ones_like(inter.float()))


def _checkpoint_sha256(spec: str | None) -> str | None:
    """SHA-256 of the checkpoint file behind a model name or path (None if there is no file)."""
    from sam_plugins.models.checkpoints import file_sha256

    if spec and Path(spec).is_file():
        return file_sha256(spec)
    try:
        from sam_plugins.models.registry import DEFAULT_ALIASES, EMBEDDED_MODEL_NAME, list_models

        name = EMBEDDED_MODEL_NAME if spec in DEFAULT_ALIASES else spec
        for entry in list_models():
            if getattr(entry, "name", None) == name:
                path = getattr(entry, "path", None)
                if path is not None and Path(path).is_file():
                    return file_sha256(path)
                return getattr(entry, "sha256", None)
    except Exception:  # noqa: BLE001 - provenance is best effort; weights_sha256 is always exact
        return None
    return None


class Segmenter:
    """Holds one loaded model and segments tasks with it (one instance per worker)."""

    def __init__(self, settings: SegmentSettings, model: torch.nn.Module | None = None) -> None:
        """Load `settings.model`, or reuse an already loaded `model` (e.g. for another mode)."""
        from sam_plugins import OrientationAveragingPredictor, SamPredictor, load_model

        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        self.settings = settings
        self.model = model if model is not None else load_model(settings.model, device=settings.device)
        keep = settings.keep_prompted_region
        if settings.orientations > 1:
            self.predictor = OrientationAveragingPredictor(self.model, settings.orientations, keep)
        else:
            self.predictor = SamPredictor(self.model, keep)
        self._amg = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._info: dict[str, Any] | None = None

    # -- provenance -------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model provenance: what was asked for, file and weight digests, device."""
        if self._info is None:
            spec = self.settings.model
            checkpoint_sha256 = _checkpoint_sha256(spec)
            digest = hashlib.sha256()
            for name, tensor in self.model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            config = getattr(self.model, "config", None)
            self._info = {
                "model": spec or "default",
                "checkpoint_sha256": checkpoint_sha256,
                "weights_sha256": digest.hexdigest(),
                "architecture": config.to_dict() if config is not None else None,
                "device": str(next(self.model.parameters()).device),
            }
        return self._info

    # -- segmentation ------------------------------------------------------------------------
    def run(self, task: Task) -> TaskResult:
        """Segment one task; any exception becomes the result's `error` (never raised)."""
        start = time.perf_counter()
        result = TaskResult(key=task.key, path=task.path, worker=self.worker)
        try:
            image = read_image(task.path)
            result.shape, result.instances = self.segment_image(image, task)
            limit = self.settings.inline_mask_limit
            if self.settings.mask_dir and (
                limit is None or sum(int(np.prod(i.crop_shape)) for i in result.instances) > limit
            ):
                store_masks_on_disk(result, self.settings.mask_dir)
        except Exception as err:  # noqa: BLE001 - reported per task, never swallowed
            result.instances = []
            result.error = f"{type(err).__name__}: {err}"
        result.seconds = time.perf_counter() - start
        return result

    def segment_image(self, image: np.ndarray, task: Task) -> tuple[tuple[int, int], list[Instance]]:
        """Segment an image already in memory with the prompts of `task`."""
        from sam_plugins.images import prepare_image

        rgb = prepare_image(image, channel=self.settings.channel)
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        mode = self.settings.mode
        if mode == "automatic":
            return shape, self._automatic(rgb)
        if task.num_prompts == 0:
            return shape, []
        self.predictor.set_image(rgb)
        if mode == "boxes":
            return shape, self._boxes(task, shape)
        return shape, self._points(task, shape)

    def _automatic(self, rgb: np.ndarray) -> list[Instance]:
        if self._amg is None:
            from sam_plugins.automatic import generator_for_model

            self._amg = generator_for_model(self.model, output_mode="binary_mask", **self.settings.amg)
        instances = []
        for record in self._amg.generate(rgb):
            inst = instance_from_mask(
                np.asarray(record["segmentation"], dtype=bool),
                record["predicted_iou"],
                record["stability_score"],
            )
            if inst is not None:
                instances.append(inst)
        return instances

    def _boxes(self, task: Task, shape: tuple[int, int]) -> list[Instance]:
        h, w = shape
        boxes = np.asarray(task.boxes, dtype=np.float64).reshape(-1, 4) * np.array([w, h, w, h])
        labels = task.labels or [None] * len(boxes)
        device = self.predictor.device
        instances = []
        step = max(1, self.settings.box_batch_size)
        for start in range(0, len(boxes), step):
            chunk = torch.as_tensor(boxes[start : start + step], dtype=torch.float32, device=device)
            with torch.no_grad():
                logits, iou, _ = self.predictor.predict_torch(
                    point_coords=None,
                    point_labels=None,
                    boxes=self.predictor.transform.apply_boxes_torch(chunk, shape),
                    multimask_output=False,
                    return_logits=True,
                )
            instances += self._collect(
                logits[:, 0], iou[:, 0], labels, start, boxes=boxes[start : start + step]
            )
        return instances

    def _points(self, task: Task, shape: tuple[int, int]) -> list[Instance]:
        h, w = shape
        labels = task.labels or [None] * len(task.points or [])
        instances = []
        for i, points in enumerate(task.points or []):
            coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            plabels = (
                np.ones(len(coords), dtype=np.int64)
                if task.point_labels is None or task.point_labels[i] is None
                else np.asarray(task.point_labels[i], dtype=np.int64).reshape(-1)
            )
            keep = np.isfinite(coords).all(axis=1)
            coords, plabels = coords[keep] * np.array([w, h]), plabels[keep]
            if len(coords) == 0:
                continue
            single = len(coords) == 1  # one click is ambiguous: take the best of three masks
            logits, iou, _ = self.predictor.predict(
                point_coords=coords, point_labels=plabels, multimask_output=single, return_logits=True
            )
            best = int(np.argmax(iou))
            instances += self._collect(
                torch.as_tensor(logits[best : best + 1]),
                torch.as_tensor(iou[best : best + 1]),
                labels,
                i,
                points=(coords, plabels),
            )
        return instances

    def _collect(
        self,
        logits: torch.Tensor,
        iou: torch.Tensor,
        labels: list[str | None],
        offset: int,
        points: tuple[np.ndarray, np.ndarray] | None = None,
        boxes: np.ndarray | None = None,
    ) -> list[Instance]:
        """Instances from logits (B, H, W) prompted by `points` (coords, labels; all of them) or by
        `boxes` (B, 4) in pixels."""
        threshold = float(self.model.mask_threshold)
        stability = _stability(logits, threshold, self.settings.stability_offset).cpu().numpy()
        masks = (logits > threshold).cpu().numpy()
        if self.predictor.keep_prompted_region:  # as SamPredictor.predict does for this model
            coords, point_labels = points or (None, None)
            for j in range(len(masks)):
                box = None if boxes is None else boxes[j]
                masks[j] = keep_prompted_region(masks[j], coords, point_labels, box)
        scores = iou.detach().float().cpu().numpy()
        out = []
        for j in range(len(masks)):
            index = offset + j
            label = labels[index] if index < len(labels) else None
            inst = instance_from_mask(masks[j], scores[j], stability[j], label=label, prompt_index=index)
            if inst is not None:
                out.append(inst)
        return out
