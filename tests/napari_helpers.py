"""Helpers for the napari GUI tests: open the widget, click on the canvas, wait for workers."""

from __future__ import annotations

from typing import Any

import numpy as np

PLUGIN, WIDGET = "sam-plugins", "Segment Anything"


def open_widget(viewer: Any) -> Any:
    """Dock the annotator through the npe2 manifest (as the Plugins menu does)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def tiny_model() -> Any:
    from sam_plugins.models.configs import TINY, build_sam

    return build_sam(TINY)


def wait_idle(qtbot: Any, widget: Any, timeout: int = 60_000) -> None:
    """Wait until the widget's background job (if any) has finished and its results are shown."""
    qtbot.waitUntil(lambda: widget.job is None, timeout=timeout)


def click(
    qtbot: Any, viewer: Any, data_yx: tuple[float, float], button: str = "left", layer: Any = None
) -> None:
    """A real mouse click on the canvas at image pixel (y, x) of `layer` (needs a shown viewer)."""
    from qtpy.QtCore import QPoint, Qt

    layer = layer if layer is not None else viewer.layers[0]
    world = np.asarray(layer.data_to_world(list(data_yx)))
    canvas = viewer.window._qt_viewer.canvas
    view = canvas.view
    transform = view.transform * view.scene.transform
    x, y = transform.map([world[-1], world[-2]])[:2]
    qt_button = Qt.MouseButton.LeftButton if button == "left" else Qt.MouseButton.RightButton
    qtbot.mouseClick(canvas.native, qt_button, pos=QPoint(int(round(x)), int(round(y))))


def press_key(viewer: Any, key: str) -> None:
    """A key press on the canvas, dispatched by napari like a real one (layer keymap first)."""
    from vispy.util import keys

    modifiers = []
    if key.startswith("Shift-"):
        modifiers, key = [keys.SHIFT], key[len("Shift-") :]
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.events.key_press(key=keys.Key(key.upper()), modifiers=modifiers, text=key)
    canvas.events.key_release(key=keys.Key(key.upper()), modifiers=modifiers, text=key)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def notifications() -> list[str]:
    """Messages napari has shown as notifications so far."""
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]
