"""The "Segment Anything" annotator dock widget: controls and event wiring only.

Every action is a call into `AnnotatorSession` (embeddings, prompts -> masks, segment everything),
`sam_plugins.volumes` (propagation) or `_layers` (prompts, commits); long ones run through
`_workers.start_job` so the canvas stays usable. Keys (none replaces a napari binding; they are
bound on the viewer and on the widget's own layers, never on the image layer):
C commit, Shift-C clear, T positive/negative, U undo commit, Shift-E segment everything,
Shift-S propagate through the stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..volumes import StopCriteria
from ._actions import ActionsMixin
from ._controls import CHECKPOINT_CHOICE, group, model_controls
from ._layer_setup import LayersMixin, same_layer
from ._layers import CommitRecord, ImageSource, guess_axis
from ._session import QUALITY_DEFAULT, STABILITY_DEFAULT, AnnotatorSession, engine_defaults
from ._workers import JobHandle, start_job

if TYPE_CHECKING:
    import napari

# How "segment everything" places its prompts (`sam_plugins.automatic.generator_for_model`).
PROMPT_CHOICES = [
    ("one point per bright object (cells, nuclei)", "seeds"),
    ("point grid (SAM's segment everything)", "grid"),
]
KEYS = {
    "c": "commit",
    "Shift-C": "clear",
    "t": "toggle_polarity",
    "u": "undo_commit",
    "Shift-E": "segment_everything",
    "Shift-S": "propagate",
}


class AnnotatorWidget(LayersMixin, ActionsMixin, QWidget):
    """Click to segment, commit with C, segment everything, propagate through stacks."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._model: Any = None
        self._model_key: tuple | None = None
        self.session: AnnotatorSession | None = None
        self.job: JobHandle | None = None
        self._pending_plane: int | None = None
        self._undo: list[tuple[Labels, CommitRecord]] = []
        self._updating = False
        self._prompts_chosen = False  # prompts picked while no model was loaded: kept when it loads
        self.points_layer: Points | None = None
        self.boxes_layer: Shapes | None = None
        self.current_layer: Labels | None = None
        self.auto_layer: Labels | None = None
        self._own_layers: list[Any] = []
        self._turns, self._keep = 1, False  # Orientations, One object per prompt: for worker threads
        self._build_controls()
        self._bind_keys(self.viewer)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._reset_layer_choices)
        self._reset_layer_choices()

    # ------------------------------------------------------------------ UI

    def _build_controls(self) -> None:
        self.model, self.checkpoint, self.device = model_controls("Model")
        self.orientations = ComboBox(
            label="Orientations",
            choices=[("1 (fastest)", 1), ("4", 4), ("8 (sharpest)", 8)],
            value=1,
            tooltip="Average each click's or box's mask over turned and mirrored copies of the image: "
            "sharper outlines, one embedding per orientation (images up to 1.5x the model input)",
        )
        self.one_object = CheckBox(
            text="One object per prompt",
            value=False,
            tooltip="Keep only the part of each mask that your positive points or box point at: stray "
            "fragments are dropped and a box's mask stays inside the box. Set to the model's "
            "recommendation when a model loads (on for the embedded model)",
        )
        self.image = ComboBox(label="Image", choices=self._image_layers, nullable=True)
        self.axis = ComboBox(
            label="First axis",
            choices=["Z", "T", "C"],
            value="Z",
            visible=False,
            tooltip="Z: 3-D stack, T: time series, C: channels (pick one below)",
        )
        self.channel = ComboBox(label="Channel", choices=[("all", -1)], value=-1, visible=False)
        self.embed_button = PushButton(text="Compute embeddings")
        self.progress = ProgressBar(label="Progress", value=0, max=1, visible=False)
        self.cancel_button = PushButton(text="Cancel", visible=False)
        self.status = Label(value="Select an image, then click on an object.")
        self.negative = CheckBox(text="Negative points (T, or right click)")
        self.target = ComboBox(
            label="Commit to",
            choices=self._labels_layers,
            nullable=True,
            tooltip="Any Labels layer, e.g. Cellpose or StarDist output",
        )
        self.overwrite = CheckBox(text="Overwrite existing labels", value=False)
        self.commit_button = PushButton(text="Commit (C)")
        self.clear_button = PushButton(text="Clear (Shift-C)")
        self.undo_button = PushButton(text="Undo commit (U)")
        self.finetune_button = PushButton(
            text="Fine-tune on these labels…",
            tooltip="Open 'Fine-tune on your labels' with this image, the commit target and this model",
        )
        self.prompts = ComboBox(
            label="Prompts",
            choices=PROMPT_CHOICES,
            value="grid",
            tooltip="Where the model is prompted: at each bright blob (fluorescent cells, nuclei) "
            "or on a regular grid (any image). Set to the model's recommendation when it is loaded",
        )
        self.points_per_side = SpinBox(
            label="Points per side",
            min=4,
            max=128,
            value=32,
            tooltip="Grid of prompts; more finds smaller objects, slower",
        )
        self.quality = FloatSpinBox(
            label="Min quality",
            min=0.0,
            max=1.0,
            step=0.02,
            value=QUALITY_DEFAULT,
            tooltip="The model's own IoU estimate; lower keeps more objects. "
            "Set to the model's recommendation when a model is loaded",
        )
        self.stability = FloatSpinBox(
            label="Min stability",
            min=0.0,
            max=1.0,
            step=0.02,
            value=STABILITY_DEFAULT,
            tooltip="Drop masks whose outline depends on the threshold. "
            "Set to the model's recommendation when a model is loaded",
        )
        self.min_area = SpinBox(label="Min area (px)", min=0, max=1_000_000, value=20)
        self.auto_button = PushButton(text="Segment everything (Shift-E)")
        self.range_start = SpinBox(label="First slice", min=0, max=0, value=0)
        self.range_end = SpinBox(label="Last slice", min=0, max=0, value=0)
        self.stop_iou = FloatSpinBox(
            label="Stop at IoU <",
            min=0.0,
            max=1.0,
            step=0.05,
            value=0.5,
            tooltip="Stop when a slice's mask overlaps the previous one less",
        )
        self.stop_contrast = FloatSpinBox(
            label="Stop at contrast <",
            min=0.0,
            max=1.0,
            step=0.05,
            value=StopCriteria().min_contrast,
            tooltip="Stop when the object stands out from its surroundings by less than this fraction "
            "of the start slice (out-of-focus glow past its end); 0 = off",
        )
        self.propagate_button = PushButton(text="Propagate through stack (Shift-S)")

        content = QWidget()
        layout = QVBoxLayout(content)
        model_group = (self.model, self.checkpoint, self.device, self.orientations, self.one_object)
        layout.addWidget(group("Model", *model_group))
        layout.addWidget(
            group(
                "Image",
                self.image,
                self.axis,
                self.channel,
                self.embed_button,
                self.progress,
                self.cancel_button,
            )
        )
        layout.addWidget(self.status.native)
        layout.addWidget(
            group(
                "Interactive",
                self.negative,
                self.target,
                self.overwrite,
                self.commit_button,
                self.clear_button,
                self.undo_button,
                self.finetune_button,
            )
        )
        layout.addWidget(
            group(
                "Segment everything",
                self.prompts,
                self.points_per_side,
                self.quality,
                self.stability,
                self.min_area,
                self.auto_button,
            )
        )
        self.volume_box = group(
            "3-D / time",
            self.range_start,
            self.range_end,
            self.stop_iou,
            self.stop_contrast,
            self.propagate_button,
        )
        layout.addWidget(self.volume_box)
        layout.addStretch(1)
        self.status.native.setWordWrap(True)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # never clip a narrow dock
        scroll.setWidget(content)
        self.setMinimumWidth(content.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 8)
        QVBoxLayout(self).addWidget(scroll)

        self.model.changed.connect(self._on_model_changed)
        self.checkpoint.changed.connect(self._on_model_changed)
        self.device.changed.connect(self._on_model_changed)
        self.orientations.changed.connect(self._new_session)
        self.one_object.changed.connect(self._on_one_object)
        self.image.changed.connect(self._on_image_changed)
        self.axis.changed.connect(self._on_axis_changed)
        self.channel.changed.connect(self._on_channel_changed)
        self.embed_button.changed.connect(self.compute_embeddings)
        self.cancel_button.changed.connect(self.cancel)
        self.negative.changed.connect(self._on_polarity_changed)
        self.commit_button.changed.connect(self.commit)
        self.clear_button.changed.connect(self.clear)
        self.undo_button.changed.connect(self.undo_commit)
        self.finetune_button.changed.connect(self.open_finetune)
        self.auto_button.changed.connect(self.segment_everything)
        self.prompts.changed.connect(self._on_prompts_choice)
        self._rethreshold_timer = QTimer(self)
        self._rethreshold_timer.setSingleShot(True)
        self._rethreshold_timer.timeout.connect(self._start_rethreshold)
        for w in (self.quality, self.stability, self.min_area):
            w.changed.connect(self._rethreshold)
        self.propagate_button.changed.connect(self.propagate)

    def open_finetune(self, _: Any = None) -> Any:
        """Dock (or show) the fine-tune widget, set to this image, the commit target and this model."""
        _, tuner = self.viewer.window.add_plugin_dock_widget("sam-plugins", "Fine-tune on your labels")
        for mine, theirs in ((self.image, tuner.image), (self.target, tuner.labels)):
            if mine.value is not None:
                theirs.value = mine.value
        tuner.checkpoint.value = self.checkpoint.value
        tuner.model.value = self.model.value
        return tuner

    def _image_layers(self, _: Any = None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self, _: Any = None) -> list[Labels]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels)
            and not same_layer(layer, self.current_layer)
            and not same_layer(layer, self.auto_layer)
        ]

    def _reset_layer_choices(self, event: Any = None) -> None:
        for layer in list(self._own_layers):
            if layer not in self.viewer.layers:
                self._forget_layer(layer)
        self.image.reset_choices()
        self.target.reset_choices()
        images = [layer for layer in self.image.choices if layer is not None]
        if self.image.value is None and images:
            self.image.value = images[-1]

    def _bind_keys(self, target: Any, skip: set[str] = frozenset()) -> None:
        for key, method in KEYS.items():
            if key in skip:
                continue
            action = getattr(self, method)
            target.bind_key(key, lambda _layer_or_viewer, action=action: action(), overwrite=True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        for key in KEYS:
            self.viewer.bind_key(key, None)
        self.cancel()
        super().closeEvent(event)

    # ------------------------------------------------------------------ model and image

    def set_model(self, model: Any, name: str = "custom") -> None:
        """Use an already loaded SAM model (Python API and tests); embeddings are recomputed."""
        self._model, self._model_key = model, ("given", name, id(model))
        self._apply_model_settings(model)
        self._new_session()

    def _apply_model_settings(self, model: Any) -> None:
        """Prompts and thresholds are model-specific: show what the new model's checkpoint recommends."""
        chosen = self.prompts.value if self._prompts_chosen else None
        self._prompts_chosen = False
        prompts, quality, stability = engine_defaults(model, chosen)
        with self.prompts.changed.blocked():
            self.prompts.value = prompts
        self._show_engine(prompts, quality, stability)
        with self.one_object.changed.blocked():
            settings = getattr(model, "predictor_settings", None) or {}
            self.one_object.value = self._keep = bool(settings.get("keep_prompted_region", False))

    def _on_one_object(self, _: Any = None) -> None:
        """The user switched "One object per prompt": re-segment the shown plane's objects from their
        prompts (without the fed-back logits, so switching back gives the same masks)."""
        self._keep = bool(self.one_object.value)
        if self.session is not None:
            self.session.predictor.keep_prompted_region = self._keep
            if self.points_layer is not None:
                self.session.reset_refinement(self.current_plane())
                self.update_prediction()

    def _show_engine(self, prompts: str, quality: float, stability: float) -> None:
        self.points_per_side.visible = prompts == "grid"  # the seeds need no grid
        self.quality.value, self.stability.value = quality, stability

    def _on_prompts_choice(self, _: Any = None) -> None:
        """The user chose other prompts: show that engine's thresholds (they differ a lot)."""
        self._prompts_chosen = self._model is None
        self._show_engine(*engine_defaults(self._model, self.prompts.value))
        self.status.value = "Segment everything (Shift-E) runs with the new prompts."

    def _requested_model(self) -> tuple:
        name = self.model.value
        path = str(self.checkpoint.value) if name == CHECKPOINT_CHOICE else None
        return ("load", path or name, self.device.value)

    def _on_model_changed(self, _: Any = None) -> None:
        self.checkpoint.visible = self.model.value == CHECKPOINT_CHOICE
        if self._model_key is not None and self._model_key[0] == "given":
            self._model_key = None  # the user chose a model in the UI: drop the one given in Python
        self._model = None
        self._new_session()

    def _model_matches(self, key: tuple) -> bool:
        return self._model is not None and (self._model_key[0] == "given" or self._model_key == key)

    def _load_model(self, key: tuple) -> tuple[Any, tuple]:
        """The model for `key` (from `_requested_model`); loads it when needed (in a worker: may download)."""
        model, model_key = self._model, self._model_key
        if model is not None and (model_key[0] == "given" or model_key == key):
            return model, model_key
        from .. import load_model

        _, name, device = key
        if name == CHECKPOINT_CHOICE or name in ("", "."):
            raise ValueError("choose a checkpoint file first")
        return load_model(name, device=None if device == "auto" else device), key

    def _on_image_changed(self, _: Any = None) -> None:
        layer = self.image.value
        is3d = layer is not None and not layer.rgb and layer.ndim == 3
        self.axis.visible = is3d
        if is3d:
            with self.axis.changed.blocked():
                self.axis.value = guess_axis(layer.data.shape)
        self._on_axis_changed()

    def _on_axis_changed(self, _: Any = None) -> None:
        self._update_channel_choices()
        self._new_session()

    def _update_channel_choices(self) -> None:
        layer = self.image.value
        choices: list[tuple[str, int]] = [("all", -1)]
        if layer is not None and layer.rgb:
            choices += [(name, i) for i, name in enumerate("RGB")]
        elif layer is not None and layer.ndim == 3 and self.axis.value == "C":
            choices = [(f"channel {i}", i) for i in range(layer.data.shape[0])]
        with self.channel.changed.blocked():
            self.channel.choices = choices
            self.channel.value = choices[0][1]
        self.channel.visible = len(choices) > 1

    def _on_channel_changed(self, _: Any = None) -> None:
        self._new_session()

    def image_source(self) -> ImageSource:
        """The selected image layer as planes for SAM; ValueError with a message otherwise."""
        layer = self.image.value
        if layer is None:
            raise ValueError("open or select an image layer first")
        if not isinstance(layer, Image):
            raise ValueError(f"'{layer.name}' is not an image layer")
        channel = None if self.channel.value in (None, -1) else int(self.channel.value)
        axis = self.axis.value if layer.ndim == 3 and not layer.rgb else None
        return ImageSource.from_layer(layer, axis=axis, channel=channel)

    def _new_session(self) -> None:
        """Forget embeddings and predictions (image, channel, model or orientations changed)."""
        self.cancel()
        self.session = None
        self._turns = int(self.orientations.value)
        try:
            source = self.image_source()
        except ValueError as err:
            if self.image.value is not None:
                show_error(f"Segment Anything: {err}")
            self.status.value = str(err)
            return
        self._ensure_layers(source)
        self.volume_box.setVisible(source.is_stack)
        self.range_start.max = self.range_end.max = source.n_planes - 1
        self.range_start.value, self.range_end.value = 0, source.n_planes - 1
        if self._model_matches(self._requested_model()):
            self.session = self._make_session(self._model, source, self._model_key)
        self.status.value = "Click on an object (left: positive, right: negative) or draw a box."

    def current_plane(self) -> int:
        """Index of the plane shown in the viewer (0 for 2-D images)."""
        if self.session is not None:
            source = self.session.source
        else:
            source = self.image_source()
        if not source.is_stack:
            return 0
        coords = self.image.value.world_to_data(self.viewer.dims.point)
        return int(np.clip(np.round(coords[-3]), 0, source.n_planes - 1))

    # ------------------------------------------------------------------ jobs

    def _run(self, name: str, job: Any, on_done: Any, on_progress: Any = None) -> JobHandle | None:
        if self.job is not None and self.job.running:
            show_info(f"Segment Anything: wait for '{self.job.name}' to finish or cancel it")
            return None
        self.progress.visible = self.cancel_button.visible = True
        self.progress.value, self.progress.max = 0, 1
        self.status.value = f"{name}…"

        def progress(done: int, total: int, payload: Any) -> None:
            self.progress.max = max(1, total)
            self.progress.value = min(done, total)
            if on_progress is not None:
                on_progress(done, total, payload)

        def finished() -> None:
            self.progress.visible = self.cancel_button.visible = False
            if self.job is handle:
                self.job = None
            if self._pending_plane is not None and self.job is None:  # a click came in meanwhile
                plane, self._pending_plane = self._pending_plane, None
                self.update_prediction(plane)

        def failed(message: str) -> None:
            self._pending_plane = None  # do not retry a failing job in a loop
            self.status.value = message
            show_error(f"Segment Anything: {message}")

        handle = start_job(
            job, name=name, on_progress=progress, on_done=on_done, on_error=failed, on_finished=finished
        )
        self.job = handle
        return handle

    def cancel(self, _: Any = None) -> None:
        """Stop the running job at its next step."""
        self._pending_plane = None
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.value = f"Cancelling '{self.job.name}'…"

    def _ensure_session(self) -> AnnotatorSession | None:
        """The session for the current image and model, or None after notifying why not."""
        if self.session is None:
            try:
                source = self.image_source()
            except ValueError as err:
                show_error(f"Segment Anything: {err}")
                return None
            if not self._model_matches(self._requested_model()):
                return None  # the model loads inside the next job
            self.session = self._make_session(self._model, source, self._model_key)
        return self.session

    def _make_session(self, model: Any, source: ImageSource, model_key: tuple) -> AnnotatorSession:
        session = AnnotatorSession(model, source, str(model_key[1]), orientations=self._turns)
        session.model_key = model_key
        session.predictor.keep_prompted_region = self._keep
        return session

    def _session_in_worker(self, source: ImageSource, key: tuple) -> AnnotatorSession:
        """The session a job works with (runs in the worker; creates no Qt objects)."""
        model, model_key = self._load_model(key)
        session = self.session
        if (
            session is None
            or session.model is not model
            or session.source != source
            or session.requested_orientations != self._turns
        ):
            session = self._make_session(model, source, model_key)
        else:
            session.model_key = self._model_key
        return session

    def _adopt(self, session: AnnotatorSession) -> None:
        """Main thread: keep the session (and its model) a job returned, if still current."""
        try:
            source = self.image_source()
        except ValueError:
            return
        if session.source != source:
            return  # the user switched image meanwhile
        if session.model is not self._model:
            self._apply_model_settings(session.model)
        self._model, self._model_key = session.model, session.model_key
        session.predictor.keep_prompted_region = self._keep
        self.session = session

    def compute_embeddings(self, _: Any = None, planes: list[int] | None = None) -> JobHandle | None:
        """Encode the current plane (or, for stacks via the button, the slice range) in a worker."""
        try:
            source = self.session.source if self.session else self.image_source()
        except ValueError as err:
            show_error(f"Segment Anything: {err}")
            return None
        if planes is None:
            planes = list(range(self.range_start.value, self.range_end.value + 1)) if source.is_stack else [0]

        key = self._requested_model()

        def job(report: Any, cancel: Any) -> tuple[AnnotatorSession, bool]:
            from ..tiling import EmbeddingCancelled

            session = self._session_in_worker(source, key)
            steps = [session.embedding_steps(plane) for plane in planes]  # tiles of large planes
            total, done = sum(steps), 0
            report(0, total)
            for plane, n in zip(planes, steps, strict=True):
                if cancel.is_set():
                    break

                def tile_done(i: int, _n: int, before: int = done) -> None:
                    report(before + i, total)

                try:
                    session.compute_embedding(plane, progress=tile_done, cancel=cancel.is_set)
                except EmbeddingCancelled:
                    break
                done += n
                report(done, total)
            return session, done < total

        return self._run("Computing embeddings", job, lambda result: self._on_embedded(*result))

    def _on_embedded(self, session: AnnotatorSession, cancelled: bool = False) -> None:
        self._adopt(session)
        if self.session is not session:
            return
        if cancelled:
            self.status.value = "Computing embeddings was cancelled."
            return
        self.status.value = "Embeddings ready: click on an object."
        if self._pending_plane is not None:
            plane, self._pending_plane = self._pending_plane, None
            if session.has_embedding(plane):
                self.update_prediction(plane)

    def clear(self, _: Any = None) -> None:
        """Remove all prompts and the current object (Shift-C)."""
        self._updating = True
        try:
            if self.points_layer is not None:
                self.points_layer.data = np.zeros((0, self.points_layer.ndim))
            if self.boxes_layer is not None:
                self.boxes_layer.data = []
            if self.current_layer is not None:
                self.current_layer.data = np.zeros_like(self.current_layer.data)
        finally:
            self._updating = False
        if self.session is not None:
            self.session.reset_refinement()
