"""One annotation session without any GUI: a model, an image source, embeddings per plane, and
prompts -> masks. The widget owns one session per (image, model) and only translates events.

Embeddings come from the core cache (`sam_plugins.embeddings.EmbeddingCache`: in memory and on
disk, keyed by the plane's data, the model and the tiling), planes larger than the model input
are tiled with a halo (`sam_plugins.tiling`). With `orientations` > 1 an untiled plane gets one
embedding per turned/mirrored copy and prompts are answered by
`sam_plugins.OrientationAveragingPredictor` (tiled planes keep one orientation). Thread rules:
`compute_embedding`, `provider_for_worker` and `segment_everything` may run in a worker thread
(they never touch `self.predictor`); `segment`/`activate` run on the main thread.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tiling import EmbeddingCancelled, tiling_for
from ._layers import ImageSource, ObjectPrompts

EMBEDDING_DIR_ENV = "SAM_PLUGINS_EMBEDDING_DIR"
# Automatic-segmentation thresholds for models whose checkpoint recommends none (official SAM).
QUALITY_DEFAULT = 0.86
STABILITY_DEFAULT = 0.9


def embedding_cache_dir() -> Path | None:
    """Where embeddings are cached on disk: $SAM_PLUGINS_EMBEDDING_DIR ("" disables), else
    `<model cache>/embeddings`."""
    override = os.environ.get(EMBEDDING_DIR_ENV)
    if override is not None:
        return Path(override).expanduser() if override else None
    from ..models.download import cache_dir

    return cache_dir() / "embeddings"


@dataclass(frozen=True)
class AutoParams:
    """Settings of "segment everything", in the words the widget shows.

    prompts: "seeds" (one point per bright blob) or "grid" (SAM's point grid); None = what the
    model recommends (see `sam_plugins.automatic.generator_for_model`; changing it re-runs).
    quality: keep masks whose predicted IoU (the model's own quality estimate) is at least this.
    stability: keep masks that barely change when the logit threshold moves (0..1).
    min_area: drop objects (and fill holes / remove islands) smaller than this many pixels.
    points_per_side: density of the prompt grid (grid only; the expensive part; changing it re-runs).
    """

    quality: float = QUALITY_DEFAULT
    stability: float = STABILITY_DEFAULT
    min_area: int = 20
    points_per_side: int = 32
    prompts: str | None = None


def engine_defaults(model: Any, prompts: str | None = None) -> tuple[str, float, float]:
    """(prompts, quality, stability) that segment everything with `model` starts from.

    `prompts` None = the model's recommendation (else "grid"). The grid's thresholds are the ones
    its checkpoint recommends (else QUALITY_DEFAULT, STABILITY_DEFAULT); the seeds' are
    `SeededMaskGenerator`'s own defaults (a checkpoint's recommended thresholds are for the grid).
    """
    settings = getattr(model, "generator_settings", None) or {}
    prompts = prompts or settings.get("prompts", "grid")
    if prompts == "seeds":
        from ..automatic import SeededMaskGenerator

        defaults = inspect.signature(SeededMaskGenerator).parameters
        return prompts, defaults["pred_iou_thresh"].default, defaults["stability_score_thresh"].default
    quality = settings.get("pred_iou_thresh", QUALITY_DEFAULT)
    return prompts, quality, settings.get("stability_score_thresh", STABILITY_DEFAULT)


class _Tiled:
    """A `TiledPredictor` with the predictor's 3-value `predict` (for `volumes`)."""

    def __init__(self, tiled_predictor: Any) -> None:
        self.tiled_predictor = tiled_predictor

    def predict(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        masks, scores, logits, _tile = self.tiled_predictor.predict(*args, **kwargs)
        return masks, scores, logits


def _new_predictor(model: Any, orientations: int = 1) -> Any:
    from ..orientations import OrientationAveragingPredictor
    from ..predictor import SamPredictor

    return OrientationAveragingPredictor(model, orientations) if orientations > 1 else SamPredictor(model)


class AnnotatorSession:
    """Embeddings and prompt -> mask predictions for every plane of one image with one model."""

    def __init__(
        self,
        model: Any,
        source: ImageSource,
        model_name: str = "",
        cache: Any = None,
        orientations: int = 1,
    ) -> None:
        from ..embeddings import EmbeddingCache
        from ..orientations import orientations as orientation_list

        self.model = model
        self.model_name = model_name
        self.model_key: tuple = ("given", model_name)
        self.source = source
        self.cache = cache if cache is not None else EmbeddingCache(embedding_cache_dir(), max_items=4)
        self.tiling = tiling_for(source.plane_shape, model.image_encoder.img_size)
        self.requested_orientations = orientations
        self.views = orientation_list(1 if self.tiling else orientations)
        self.predictor = _new_predictor(model, len(self.views))
        self._embeddings: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._logits: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self._active: int | None = None
        self._active_tiled: Any = None
        self._auto: dict[int, tuple[Any, Any, str]] = {}

    # ---------------------------------------------------------------- embeddings

    def has_embedding(self, plane: int) -> bool:
        with self._lock:
            return plane in self._embeddings

    def compute_embedding(
        self,
        plane: int,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Any:
        """Embedding of plane `plane` (ImageEmbedding, or TiledEmbeddings for large planes):
        from this session, else the cache (memory, then disk), else the encoder. Thread-safe.
        Large planes of lazy data (dask, zarr) are read one tile at a time; `progress(done, total)`
        counts tiles and `cancel()` stops between tiles (EmbeddingCancelled)."""
        with self._lock:
            cached = self._embeddings.get(plane)
        if cached is not None:
            return cached
        predictor = _new_predictor(self.model)
        tile, halo = self.tiling if self.tiling else (None, (0, 0))
        if tile is not None and self.source.is_lazy:
            image = self.source.lazy_plane(plane)
        else:
            image = self.source.model_input(plane)
        if len(self.views) > 1:  # one cached embedding per orientation; progress counts them
            embedding = []
            for i, view in enumerate(self.views):
                if cancel is not None and cancel():
                    raise EmbeddingCancelled
                embedding.append(self.cache.get_or_compute(predictor, view.image(image)))
                if progress is not None:
                    progress(i + 1, len(self.views))
        else:
            embedding = self.cache.get_or_compute(
                predictor, image, tile_shape=tile, halo=halo, progress_callback=progress, cancel=cancel
            )
        with self._lock:
            self._embeddings[plane] = embedding
        return embedding

    def embedding_steps(self, plane: int) -> int:
        """How many encoder passes plane `plane` needs now: 0 if it has one, else its tiles."""
        from ..tiling import tile_grid

        if self.has_embedding(plane):
            return 0
        return len(tile_grid(self.source.plane_shape, *self.tiling)) if self.tiling else len(self.views)

    def _predictor_on(self, predictor: Any, embedding: Any) -> Any:
        """`predictor` set to `embedding`; a tiled wrapper for tiled embeddings."""
        from ..tiling import TiledEmbeddings, TiledPredictor

        if isinstance(embedding, TiledEmbeddings):
            return _Tiled(TiledPredictor(predictor, embedding))
        if isinstance(embedding, list):  # one per orientation
            predictor.set_image_embeddings(embedding)
        else:
            predictor.set_image_embedding(embedding)
        return predictor

    def activate(self, plane: int) -> Any:
        """The main-thread predictor answering for `plane` (its embedding must exist)."""
        if self._active != plane:
            with self._lock:
                embedding = self._embeddings.get(plane)
            if embedding is None:
                raise RuntimeError(f"plane {plane} has no embedding yet")
            self._active_tiled = self._predictor_on(self.predictor, embedding)
            self._active = plane
        return self._active_tiled

    def provider_for_worker(self) -> Callable[[int], Any]:
        """A `volumes` plane provider with its own predictor, filling the session's embeddings."""
        predictor = _new_predictor(self.model, len(self.views))
        return lambda plane: self._predictor_on(predictor, self.compute_embedding(plane))

    # ---------------------------------------------------------------- interactive prompts

    def reset_refinement(self, plane: int | None = None) -> None:
        """Forget the low-res logits fed back into the next prediction (all planes, or one)."""
        for key in [k for k in self._logits if plane is None or k[0] == plane]:
            del self._logits[key]

    def segment(
        self, plane: int, objects: list[ObjectPrompts], refine: bool = True
    ) -> tuple[np.ndarray, list[float]]:
        """Masks for the prompted objects on `plane`: an (Y, X) uint16 image (object k = k + 1)
        and the model's score for each. With `refine`, each object's previous low-res logits go
        back in as `mask_input`, so extra points correct the last mask instead of starting over."""
        predictor = self.activate(plane)
        tiled = isinstance(predictor, _Tiled)
        out = np.zeros(self.source.plane_shape, dtype=np.uint16)
        scores: list[float] = []
        for k, obj in enumerate(objects):
            if obj.empty:
                continue
            tile = None
            if tiled:
                points = obj.points if len(obj.labels) else None
                tile = predictor.tiled_predictor.route(
                    points, obj.labels if len(obj.labels) else None, obj.box
                ).index
            previous = self._logits.get((plane, k)) if refine else None
            logits = previous[0] if previous is not None and previous[1] == tile else None
            has_points = len(obj.labels) > 0
            masks, iou, low_res = predictor.predict(
                point_coords=obj.points if has_points else None,
                point_labels=obj.labels if has_points else None,
                box=obj.box,
                mask_input=logits[None] if logits is not None else None,
                multimask_output=obj.box is None and logits is None and len(obj.labels) == 1,
            )
            best = int(np.argmax(iou))
            self._logits[(plane, k)] = (np.asarray(low_res[best]), tile)
            out[np.asarray(masks[best], dtype=bool) & (out == 0)] = k + 1
            scores.append(float(iou[best]))
        for key in [key for key in self._logits if key[0] == plane and key[1] >= len(objects)]:
            del self._logits[key]
        return out, scores

    # ---------------------------------------------------------------- segment everything

    def segment_everything(
        self,
        plane: int,
        params: AutoParams,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> bool:
        """Run the model part of automatic mask generation on `plane` (expensive; thread-safe)
        with `params.prompts` (point grid or seeds) and keep every candidate, so
        `threshold_everything` re-filters without the model. Reuses the plane's embedding when it
        is untiled. False when cancelled."""
        from ..automatic import AmgCancelled, SeededMaskGenerator, generator_for_model
        from ..embeddings import ImageEmbedding

        generator = generator_for_model(
            self.model, prompts=params.prompts, points_per_side=params.points_per_side
        )
        with self._lock:
            embedding = self._embeddings.get(plane)
        if isinstance(embedding, list):  # orientations: the first is the plane as it is
            embedding = embedding[0]
        try:
            state = generator.initialize(
                self.source.model_input(plane),
                embedding=embedding if isinstance(embedding, ImageEmbedding) else None,
                progress_callback=progress,
                cancel=cancel,
            )
        except AmgCancelled:
            return False
        kind = "seeds" if isinstance(generator, SeededMaskGenerator) else "grid"
        self._auto[plane] = (generator, state, kind)
        return True

    def has_auto_records(self, plane: int, prompts: str | None = None) -> bool:
        """Whether `plane` has stored candidates (made with `prompts`, when given)."""
        entry = self._auto.get(plane)
        return entry is not None and (prompts is None or entry[2] == prompts)

    def threshold_everything(self, plane: int, params: AutoParams) -> np.ndarray:
        """Label image (Y, X) uint32 from the stored candidates that pass `params` (no model run)."""
        from ..automatic import masks_to_label_image

        generator, state, _ = self._auto[plane]
        records = generator.generate_from_state(
            state,
            pred_iou_thresh=params.quality,
            stability_score_thresh=params.stability,
            min_mask_region_area=params.min_area,
        )
        kept = [r for r in records if r["area"] >= params.min_area]
        return masks_to_label_image(kept, self.source.plane_shape)
