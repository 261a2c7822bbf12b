"""Controls both dock widgets share: the model choice (name or checkpoint file), the device, groups."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QGroupBox, QVBoxLayout

CHECKPOINT_CHOICE = "checkpoint file…"


def model_choices() -> list[str]:
    """Every registered model name, then the checkpoint-file choice."""
    from .. import list_models

    try:
        names = [spec.name for spec in list_models()]
    except Exception as err:  # a broken third-party provider must not break the widget
        show_warning(f"Segment Anything: could not list models ({err})")
        names = ["default"]
    return [*names, CHECKPOINT_CHOICE]


def device_choices() -> list[str]:
    """ "auto", "cpu" and the accelerators PyTorch sees."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def model_controls(label: str) -> tuple[ComboBox, FileEdit, ComboBox]:
    """(model, checkpoint file, device) controls; the embedded model is preselected and the file
    field is hidden until "checkpoint file…" is chosen (the owner shows it)."""
    from ..models.builtin import EMBEDDED_MODEL_NAME

    models = model_choices()
    model = ComboBox(
        label=label,
        choices=models,
        value=EMBEDDED_MODEL_NAME if EMBEDDED_MODEL_NAME in models else models[0],
        tooltip="The embedded model works offline; vit_b/l/h are downloaded once; or a checkpoint file.",
    )
    checkpoint = FileEdit(label="Checkpoint", mode="r", filter="*.pt *.pth *.ckpt *.bin", visible=False)
    device = ComboBox(label="Device", choices=device_choices(), value="auto")
    return model, checkpoint, device


def group(title: str, *widgets: Any) -> QGroupBox:
    """A titled box holding magicgui widgets, one per row."""
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(Container(widgets=list(widgets)).native)
    return box
