"""The "Fine-tune on your labels" dock widget: train a model on an image and its Labels layer.

The user picks an image layer and a Labels layer of the same size (e.g. nuclei committed with the
annotator, or corrected StarDist / Cellpose output; only the labelled objects are used, so a
partly labelled image is fine), the model to start from, the number of steps and, if wanted, a time
limit. Training is one call of `sam_plugins.finetune` in a worker thread (progress, time left,
cancel); the finished checkpoint can be handed to the annotator with one button.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..training.data import PairsDataset
from ._controls import CHECKPOINT_CHOICE, group, model_controls
from ._workers import JobHandle, start_job

if TYPE_CHECKING:
    import napari

PLUGIN, ANNOTATOR = "sam-plugins", "Segment Anything"
DEFAULT_STEPS = 200


def layer_pairs(image: Image, labels: Labels) -> PairsDataset:
    """The checked training pairs of two layers (copies: editing the layers while training changes
    nothing); a 3-D stack gives its slices with objects. Errors name the layers."""
    for layer in (image, labels):
        if layer.multiscale:
            raise ValueError(
                f"'{layer.name}' is a multiscale (pyramid) layer; add the region to train on as a plain layer"
            )
    data, lab = np.array(image.data), np.array(labels.data)  # copies (dask / zarr data are read)
    spatial = data.shape[:-1] if image.rgb else data.shape
    if lab.shape != spatial:
        raise ValueError(
            f"'{image.name}' ({'x'.join(map(str, spatial))}) and '{labels.name}' "
            f"({'x'.join(map(str, lab.shape))}) differ in size; pick the labels drawn on this image"
        )
    if lab.ndim not in (2, 3):
        raise ValueError(f"'{labels.name}' has {lab.ndim} dimensions; train on 2-D images or 3-D stacks")
    if not lab.any():
        raise ValueError(f"'{labels.name}' has no objects yet; label some objects first.")
    return PairsDataset([(data, lab)], names=[f"'{image.name}' / '{labels.name}'"])


def free_path(folder: Path, stem: str) -> Path:
    """``folder/<stem>.pt``, or ``<stem>-2.pt``, ``-3`` ... : a name no file has yet."""
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._") or "model"
    path, n = folder / f"{stem}.pt", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.pt", n + 1
    return path


class FinetuneWidget(QWidget):
    """Fine-tune a model on the objects of a Labels layer, then use it in the annotator."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: JobHandle | None = None
        self.result: Path | None = None
        self._started = 0.0
        self._limit_s = 0.0
        self._suggested: Path | None = None
        self.image = ComboBox(label="Image", choices=self._layers(Image))
        self.labels = ComboBox(
            label="Labels",
            choices=self._layers(Labels),
            tooltip="Instance labels of the image (one id per object); unlabelled objects are not used",
        )
        self.model, self.checkpoint, self.device = model_controls("Start from")
        self.steps = SpinBox(
            label="Steps",
            min=1,
            max=100_000,
            value=DEFAULT_STEPS,
            tooltip="Training steps of 2 crops x 8 objects; the embedded model takes a few seconds "
            "per step on a laptop CPU",
        )
        self.minutes = FloatSpinBox(
            label="Time limit (min)",
            min=0.0,
            max=24 * 60.0,
            step=1.0,
            value=0.0,
            tooltip="Stop after this many minutes, with the learning rate decayed to fit, and save the "
            "model (0: no limit, run all the steps). Steps then is the most it may take.",
        )
        self.decoder_only = CheckBox(text="Train the mask decoder only (faster, smaller gain)", value=False)
        self.out = FileEdit(label="Save as", mode="w", filter="*.pt")
        self.start_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", visible=False)
        self.progress = ProgressBar(label="Progress", value=0, max=1, visible=False)
        self.status = Label(value="Pick an image and its labels, then Fine-tune.")
        self.status.native.setWordWrap(True)
        self.use_button = PushButton(text="Use in the annotator", enabled=False)

        layout = QVBoxLayout(self)
        layout.addWidget(group("Training data", self.image, self.labels))
        layout.addWidget(
            group(
                "Training",
                self.model,
                self.checkpoint,
                self.steps,
                self.minutes,
                self.decoder_only,
                self.device,
                self.out,
            )
        )
        layout.addWidget(group("Run", self.start_button, self.cancel_button, self.progress))
        layout.addWidget(self.status.native)
        layout.addWidget(self.use_button.native)
        layout.addStretch(1)

        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._suggest_out)
        self.start_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.use_button.changed.connect(self.use_in_annotator)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._reset_choices)
        self._reset_choices()

    def _on_model_changed(self, _: Any = None) -> None:
        self.checkpoint.visible = self.model.value == CHECKPOINT_CHOICE

    def _layers(self, kind: type) -> Any:
        return lambda _=None: [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _reset_choices(self, _: Any = None) -> None:
        self.image.reset_choices()
        self.labels.reset_choices()
        self._suggest_out()

    def _suggest_out(self, _: Any = None) -> None:
        """A free file name after the image, beside its file when it has one; a name the user
        typed is kept while no file has it."""
        layer, current = self.image.value, str(self.out.value)
        typed = current not in ("", ".", str(self._suggested))
        if layer is None or (typed and not Path(current).exists()):
            return
        if typed:  # the user's file now exists (a finished run): the next free name beside it
            self._suggested = free_path(Path(current).parent, Path(current).stem)
        else:
            source = getattr(getattr(layer, "source", None), "path", None)
            folder = Path(source).parent if source else Path.home() / "sam-plugins" / "models"
            self._suggested = free_path(folder, f"{layer.name}-finetuned")
        self.out.value = self._suggested

    # ------------------------------------------------------------------ the run

    def start(self, _: Any = None) -> None:
        """Check the choices, copy the layers' data, and train in a worker thread."""
        if self.job is not None:
            return
        try:
            pairs, out, model = self._checked_request()
        except ValueError as err:
            show_error(str(err))
            self.status.value = str(err)
            return
        from ..training.finetuning import finetune
        from ..training.trainer import TrainingCancelled

        self._limit_s = 60.0 * self.minutes.value
        settings = {
            "freeze_encoder": self.decoder_only.value,
            "device": self.device.value,
            "time_limit_s": self._limit_s,
        }
        steps = self.steps.value

        def job(report: Any, cancel: Any) -> Path | tuple[int, Path]:
            try:
                return finetune(
                    pairs,
                    out,
                    model,
                    steps=steps,
                    progress=False,
                    log=lambda _: None,
                    on_step=report,
                    cancel=cancel.is_set,
                    **settings,
                )
            except TrainingCancelled as stopped:  # (a worker treats a returned exception as an error)
                return stopped.step, stopped.checkpoint.parent

        self.result = None
        self.use_button.enabled = False
        self.progress.value, self.progress.max = 0, steps
        self._running(True)
        self._started = time.perf_counter()
        self.status.value = f"Preparing {out.name} from {Path(model).name} ..."
        self.job = start_job(
            job,
            name="Fine-tuning",
            on_progress=self._on_progress,
            on_done=self._on_done,
            on_error=self._on_error,
            on_finished=lambda: self._running(False),
        )

    def _checked_request(self) -> tuple[PairsDataset, Path, str]:
        image, labels = self.image.value, self.labels.value
        if image is None or labels is None:
            raise ValueError("Fine-tuning needs an image layer and a Labels layer with objects drawn on it.")
        out = Path(str(self.out.value))
        if str(self.out.value) in ("", ".") or out.is_dir():
            raise ValueError("Choose a file to save the fine-tuned model to (Save as).")
        out = out.with_suffix(".pt") if out.suffix == "" else out
        if out.exists():
            raise ValueError(f"{out} exists; choose another name so it is not overwritten.")
        model = self.model.value
        if model == CHECKPOINT_CHOICE:
            model = str(self.checkpoint.value)
            if not Path(model).is_file():
                raise ValueError(f"Checkpoint {model} is not a file; choose the model to start from.")
        return layer_pairs(image, labels), out, model

    def _running(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.cancel_button.visible = running
        self.progress.visible = running or self.progress.value > 0
        if not running:
            self.job = None

    def _on_progress(self, done: int, total: int, numbers: dict[str, float] | None) -> None:
        self.progress.max, self.progress.value = max(1, total), done
        spent = time.perf_counter() - self._started
        left = spent / max(1, done) * (total - done)
        if self._limit_s > 0:
            left = min(left, max(0.0, self._limit_s - spent))
        text = f"Step {done} of {total}, about {_duration(left)} left."
        if numbers:
            text += f" Loss {numbers['loss']:.3f}."
            if "val_point_miou" in numbers:
                text += (
                    f" Validation: one click {numbers['val_point_miou']:.2f}, "
                    f"box {numbers['val_box_miou']:.2f} mean IoU."
                )
        self.status.value = text

    def _on_done(self, result: Any) -> None:
        if isinstance(result, Path):
            self.result = result
            self.use_button.enabled = True
            self._suggest_out()  # the next run gets a new name
            took = _duration(time.perf_counter() - self._started)
            if self._limit_s > 0 and self.progress.value < self.progress.max:
                took += f", {self.progress.value} of {self.progress.max} steps when the time limit came"
            message = f"Saved the fine-tuned model to {result} ({took})."
            self.status.value = message + " Use it in the annotator, or load it by its path."
            show_info(message)
        else:  # cancelled: the run's state stays in its folder, nothing is written as the model
            step, run = result
            self.status.value = (
                f"Cancelled at step {step}; no model was saved (the run's state is kept in {run})."
            )

    def _on_error(self, message: str) -> None:
        self.status.value = message
        show_error(message)

    def cancel(self, _: Any = None) -> None:
        """Stop after the current step; nothing is saved as the model."""
        if self.job is not None:
            self.job.cancel()
            self.status.value = "Cancelling after the current step ..."

    def use_in_annotator(self, _: Any = None) -> Any:
        """Open (or find) the annotator and make the fine-tuned model its model."""
        if self.result is None:
            return None
        _, annotator = self.viewer.window.add_plugin_dock_widget(PLUGIN, ANNOTATOR)
        annotator.checkpoint.value = self.result
        annotator.model.value = CHECKPOINT_CHOICE
        self.status.value = f"The annotator now uses {self.result.name}."
        return annotator

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.cancel()
        super().closeEvent(event)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
