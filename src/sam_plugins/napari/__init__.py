"""napari front end: the "Segment Anything" annotator widget, sample data, a zarr labels reader/writer.

Importing this package is cheap; napari, Qt and torch load when a widget or `annotate` is used.

    import sam_plugins.napari
    widget = sam_plugins.napari.annotate(image)   # opens napari with the annotator docked
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

    from ._widget import AnnotatorWidget

PLUGIN_NAME = "sam-plugins"
WIDGET_NAME = "Segment Anything"

__all__ = ["PLUGIN_NAME", "WIDGET_NAME", "annotate"]


def annotate(
    image: Any, viewer: napari.viewer.Viewer | None = None, *, model: Any = None, **layer_kwargs: Any
) -> AnnotatorWidget:
    """Open `image` in napari with the annotator docked and selected; returns the widget.

    `image`: an array (numpy, dask, zarr), a napari Image layer already in `viewer`, or a file
    path napari can open. `viewer`: an existing viewer (default: a new one). `model`: a model
    name ("vit_b", a checkpoint path) or a loaded `Sam` (default: the embedded model).
    Extra keyword arguments go to `viewer.add_image` (e.g. `scale`, `rgb`, `name`).
    Run `napari.run()` afterwards when not in an interactive session.
    """
    import napari
    from napari.layers import Image

    viewer = viewer if viewer is not None else napari.Viewer()
    if isinstance(image, Image):
        layer = image if image in viewer.layers else viewer.add_layer(image)
    elif isinstance(image, (str, Path)):
        layers = [layer for layer in viewer.open(image) if isinstance(layer, Image)]
        if not layers:
            raise ValueError(f"{image} holds no image napari can open")
        layer = layers[0]
    else:
        layer = viewer.add_image(image, **{"name": "image", **layer_kwargs})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    widget.image.reset_choices()
    widget.image.value = layer
    if isinstance(model, str):
        choices = [c for c in widget.model.choices]
        if model in choices:
            widget.model.value = model
        else:
            widget.model.value = choices[-1]  # checkpoint file
            widget.checkpoint.value = model
    elif model is not None:
        widget.set_model(model, getattr(model, "source", "custom"))
    return widget
