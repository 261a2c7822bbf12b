"""What the annotator's buttons and keys do: each is a short call into the core."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from ..volumes import StopCriteria, iter_propagate
from ._layer_setup import same_layer
from ._layers import ObjectPrompts, boxes_on_plane, group_prompts, plan_commit, points_on_plane
from ._session import AnnotatorSession, AutoParams, engine_defaults

MAX_UNDO = 20
_PRE_EVENTS = {"adding", "removing", "changing"}


class ActionsMixin:
    """Prompts -> preview, commit/undo, segment everything, propagation."""

    viewer: Any
    session: AnnotatorSession | None
    _updating: bool
    _pending_plane: int | None
    _undo: list

    # ------------------------------------------------------------------ prompts -> preview

    def _event_plane(self, event: Any) -> int:
        """The plane a prompt event happened on: the added point/box's plane, else the shown one."""
        source = self.session.source if self.session else self.image_source()
        if not source.is_stack or event is None or str(getattr(event, "action", "")) != "added":
            return self.current_plane()
        layer = getattr(event, "source", None)
        if same_layer(layer, self.points_layer) and len(layer.data):
            return int(np.clip(np.round(layer.data[-1][0]), 0, source.n_planes - 1))
        if same_layer(layer, self.boxes_layer) and len(layer.data):
            return int(np.clip(np.round(layer.data[-1][0][0]), 0, source.n_planes - 1))
        return self.current_plane()

    def _on_prompts_changed(self, event: Any = None) -> None:
        if self._updating or str(getattr(event, "action", "")) in _PRE_EVENTS:
            return
        try:
            plane = self._event_plane(event)
        except ValueError as err:
            show_error(f"Segment Anything: {err}")
            return
        if self.session is not None and str(getattr(event, "action", "")) == "removed":
            self.session.reset_refinement(plane)
        self.update_prediction(plane)

    def _objects_on_plane(self, plane: int) -> list[ObjectPrompts]:
        source = self.session.source if self.session else self.image_source()
        on = plane if source.is_stack else None
        points = self.points_layer
        positive = (
            points.features["prompt"].to_numpy() == "positive" if len(points.data) else np.zeros(0, bool)
        )
        xy, labels = points_on_plane(points.data, positive, on)
        boxes = boxes_on_plane(self.boxes_layer.data, on)
        return group_prompts(xy, labels, boxes)

    def _show_plane(self, layer: Any, plane: int, mask: np.ndarray) -> None:
        if layer.data.ndim == 3:
            layer.data[plane] = mask
        else:
            layer.data[...] = mask
        layer.refresh()

    def update_prediction(self, plane: int | None = None) -> None:
        """Re-segment the prompted object(s) on `plane` (default: the shown plane) into the preview."""
        if self.points_layer is None or self.current_layer is None:
            show_error("Segment Anything: select an image layer first")
            return
        plane = self.current_plane() if plane is None else plane
        objects = self._objects_on_plane(plane)
        if not objects:
            self._show_plane(self.current_layer, plane, 0)
            return
        session = self._ensure_session()
        if session is None or not session.has_embedding(plane):
            self._pending_plane = plane
            if self.job is None or not self.job.running:
                self.compute_embeddings(planes=[plane])
            elif self.job.name != "Computing embeddings":
                show_info(f"Segment Anything: the click is used once '{self.job.name}' is done")
            return
        try:
            mask, scores = session.segment(plane, objects)
        except (ValueError, RuntimeError) as err:
            show_error(f"Segment Anything: {err}")
            return
        self._show_plane(self.current_layer, plane, mask)
        self.status.value = "Score " + ", ".join(f"{s:.2f}" for s in scores) + " — C commits, Shift-C clears."

    def toggle_polarity(self) -> None:
        """Switch the next points between positive and negative (T)."""
        self.negative.value = not self.negative.value

    # ------------------------------------------------------------------ commit / undo

    def commit(self, _: Any = None) -> None:
        """Write the current object(s) into the target Labels layer with new ids (C)."""
        target = self.target.value
        if target is None or self.current_layer is None:
            show_error("Segment Anything: choose a Labels layer to commit to")
            return
        objects = np.asarray(self.current_layer.data)
        if tuple(target.data.shape) != objects.shape:
            show_error(
                f"Segment Anything: '{target.name}' has shape {tuple(target.data.shape)}, "
                f"the image needs {objects.shape}"
            )
            return
        try:
            indices, values, record = plan_commit(
                np.asarray(target.data), objects, overwrite=self.overwrite.value
            )
        except ValueError as err:
            show_warning(f"Segment Anything: {err}")
            return
        with target.block_history():
            target.data_setitem(indices, values)
        self._undo = [*self._undo[-(MAX_UNDO - 1) :], (target, record)]
        self.clear()
        ids = ", ".join(str(i) for i in record.ids)
        self.status.value = f"Committed id {ids} to '{target.name}'. U undoes."

    def undo_commit(self, _: Any = None) -> None:
        """Restore the target layer as it was before the last commit (U)."""
        if not self._undo:
            show_info("Segment Anything: nothing to undo")
            return
        target, record = self._undo.pop()
        if target not in self.viewer.layers:
            show_warning(f"Segment Anything: '{target.name}' was deleted; nothing undone")
            return
        with target.block_history():
            target.data_setitem(record.indices, record.previous)
        self.status.value = f"Undid commit of id {', '.join(map(str, record.ids))}."

    # ------------------------------------------------------------------ segment everything

    def _source_and_plane(self) -> tuple[Any, int] | None:
        """The chosen image and the shown plane, or None after telling the user what is wrong."""
        try:
            return self.image_source(), self.current_plane()
        except ValueError as err:
            show_error(f"Segment Anything: {err}")
            return None

    def _auto_params(self) -> AutoParams:
        return AutoParams(
            quality=self.quality.value,
            stability=self.stability.value,
            min_area=self.min_area.value,
            points_per_side=self.points_per_side.value,
            prompts=self.prompts.value,
        )

    def segment_everything(self, _: Any = None) -> None:
        """Automatic masks for the shown plane into 'auto segmentation' (Shift-E), in a worker."""
        picked = self._source_and_plane()
        if picked is None:
            return
        source, plane = picked
        params, key = self._auto_params(), self._requested_model()
        chosen = params.prompts if self._prompts_chosen else None

        def job(report: Any, cancel: Any) -> tuple[AnnotatorSession, np.ndarray | None]:
            session = self._session_in_worker(source, key)
            run = params
            if session.model is not self._model:  # just loaded: the settings `_adopt` will show apply
                prompts, quality, stability = engine_defaults(session.model, chosen)
                run = replace(params, prompts=prompts, quality=quality, stability=stability)
            if not session.segment_everything(plane, run, progress=report, cancel=cancel.is_set):
                return session, None
            return session, session.threshold_everything(plane, run)

        def done(result: tuple[AnnotatorSession, np.ndarray | None]) -> None:
            session, labels = result
            self._adopt(session)
            if labels is None:
                self.status.value = "Segment everything was cancelled."
            elif self.session is session:
                self._show_auto(plane, labels)

        self._run("Segment everything", job, done)

    def _show_auto(self, plane: int, labels: np.ndarray) -> None:
        layer = self._auto_layer_for(self.session.source)
        self._show_plane(layer, plane, labels)
        self.status.value = f"{len(np.unique(labels)) - 1} objects; change the thresholds to re-filter."

    def _rethreshold(self, _: Any = None) -> None:
        """Thresholds changed: re-filter the stored candidates shortly after (debounced)."""
        self._rethreshold_timer.start(150)

    def _start_rethreshold(self) -> None:
        """Re-filter the stored automatic masks with the current thresholds, in a worker (no model run)."""
        if self.session is None or self.auto_layer is None:
            return
        plane = self.current_plane()
        params = self._auto_params()
        if not self.session.has_auto_records(plane, params.prompts):
            return  # none, or made with the other prompts: Segment everything runs them
        if self.job is not None and self.job.running:
            self._rethreshold_timer.start(150)  # try again when the running job is done
            return
        session = self.session

        def done(labels: np.ndarray) -> None:
            if self.session is session:
                self._show_auto(plane, labels)

        self._run("Re-filtering", lambda report, cancel: session.threshold_everything(plane, params), done)

    # ------------------------------------------------------------------ 3-D / time propagation

    def propagate(self, _: Any = None) -> None:
        """Follow the current object(s) from the shown slice through the slice range (Shift-S)."""
        picked = self._source_and_plane()
        if picked is None:
            return
        source, plane = picked
        if not source.is_stack:
            show_error("Segment Anything: propagation needs a 3-D stack or a time series")
            return
        start = np.asarray(self.current_layer.data[plane])
        ids = [int(k) for k in np.unique(start) if k != 0]
        if not ids:
            show_error("Segment Anything: segment the object in this slice first (click on it)")
            return
        lo, hi = int(self.range_start.value), int(self.range_end.value)
        if not lo <= plane <= hi:
            show_error(f"Segment Anything: the shown slice {plane} is outside the slice range {lo}–{hi}")
            return
        stop = StopCriteria(iou_threshold=self.stop_iou.value, min_contrast=self.stop_contrast.value)
        key = self._requested_model()
        current = self.current_layer
        for k in ids:  # a new propagation replaces the old one inside the range
            block = current.data[lo : hi + 1]
            block[(block == k) & (np.arange(lo, hi + 1) != plane)[:, None, None]] = 0
        current.refresh()

        def job(report: Any, cancel: Any) -> tuple[AnnotatorSession, dict[int, str]]:
            session = self._session_in_worker(source, key)
            provider = session.provider_for_worker()
            reasons: dict[int, str] = {}
            for k in ids:
                for step in iter_propagate(
                    provider, source.data, plane, start == k, slice_range=(lo, hi), stop=stop, cancel=cancel
                ):
                    report(step.done, step.total, (k, step))
                    if step.stop_reason:
                        reasons[k] = step.stop_reason
            return session, reasons

        def on_step(done: int, total: int, payload: Any) -> None:
            if payload is None or not same_layer(current, self.current_layer):
                return
            k, step = payload
            if step.mask is not None and step.direction != "start":
                view = current.data[step.index]
                view[step.mask & ((view == 0) | (view == k))] = k
                current.refresh()

        def done(result: tuple[AnnotatorSession, dict[int, str]]) -> None:
            session, _ = result
            self._adopt(session)
            slices = np.nonzero(np.asarray(current.data).any(axis=(1, 2)))[0]
            span = f"slices {slices.min()}–{slices.max()}" if len(slices) else "no slice"
            self.status.value = f"Propagated over {span}. C commits."

        self._run("Propagation", job, done, on_progress=on_step)
