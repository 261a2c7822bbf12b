"""The annotator's own layers: prompts (Points, Shapes), the current object and the commit target."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layers import ImageSource

POINTS_NAME, BOXES_NAME = "point prompts", "box prompts"
CURRENT_NAME, COMMITTED_NAME, AUTO_NAME = "current object", "committed objects", "auto segmentation"
PROMPT_COLORS = {"positive": "lime", "negative": "red"}


def same_layer(a: Any, b: Any) -> bool:
    """Identity of layers, seeing through napari's PublicOnlyProxy (plugins get wrapped layers)."""
    if a is None or b is None:
        return False
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


class LayersMixin:
    """Creates the prompt/preview layers with the image's geometry and keeps track of them."""

    viewer: Any
    points_layer: Any
    boxes_layer: Any
    current_layer: Any
    auto_layer: Any
    _own_layers: list[Any]

    def _geometry(self, source: ImageSource) -> dict[str, Any]:
        return {"scale": source.scale, "translate": source.translate}

    def _layers_fit(self, source: ImageSource) -> bool:
        layers = (self.points_layer, self.boxes_layer, self.current_layer)
        return (
            all(layer is not None and layer in self.viewer.layers for layer in layers)
            and self.current_layer.data.shape == source.labels_shape
            and self.points_layer.ndim == source.spatial_ndim
        )

    def _ensure_layers(self, source: ImageSource) -> None:
        """Create (or re-fit) the prompt and preview layers for `source`'s geometry."""
        if self._layers_fit(source):
            for layer in (self.points_layer, self.boxes_layer, self.current_layer, self.auto_layer):
                if layer is not None:
                    layer.scale, layer.translate = source.scale, source.translate
            self._ensure_target(source)
            return
        for layer in list(self._own_layers):
            if layer in self.viewer.layers and not same_layer(layer, self.target.value):
                self.viewer.layers.remove(layer)
        self._own_layers = [layer for layer in self._own_layers if same_layer(layer, self.target.value)]
        self.points_layer = self.boxes_layer = self.current_layer = self.auto_layer = None
        geometry = self._geometry(source)
        ndim = source.spatial_ndim
        self.current_layer = self.viewer.add_labels(
            np.zeros(source.labels_shape, np.uint16), name=CURRENT_NAME, opacity=0.7, **geometry
        )
        size = max(3.0, min(source.plane_shape) / 60)
        self.boxes_layer = self.viewer.add_shapes(
            name=BOXES_NAME,
            ndim=ndim,
            face_color="transparent",
            edge_color="lime",
            edge_width=max(1.0, size / 4),
            **geometry,
        )
        self.points_layer = self.viewer.add_points(
            np.zeros((0, ndim)),
            ndim=ndim,
            name=POINTS_NAME,
            size=size,
            features={"prompt": np.array([], dtype=object)},
            feature_defaults={"prompt": "positive"},
            face_color="prompt",
            face_color_cycle=PROMPT_COLORS,
            border_color="white",
            **geometry,
        )
        self._own_layers += [self.current_layer, self.boxes_layer, self.points_layer]
        self.points_layer.mouse_drag_callbacks.insert(0, self._right_click_negative)
        self.points_layer.events.data.connect(self._on_prompts_changed)
        self.boxes_layer.events.data.connect(self._on_prompts_changed)
        self._bind_keys(self.points_layer)
        self._bind_keys(self.boxes_layer, skip={"t"})  # T draws paths in napari's Shapes
        self._bind_keys(self.current_layer)
        self._ensure_target(source)
        self._on_polarity_changed()
        self.points_layer.mode = "add"
        self.viewer.layers.selection.active = self.points_layer

    def _ensure_target(self, source: ImageSource) -> None:
        """Keep the chosen commit target if it fits the image, else create 'committed objects'."""
        self.target.reset_choices()
        target = self.target.value
        if target is not None and tuple(target.data.shape) == source.labels_shape:
            return
        fitting = [
            layer
            for layer in self.target.choices
            if layer is not None and tuple(layer.data.shape) == source.labels_shape
        ]
        named = [layer for layer in fitting if layer.name == COMMITTED_NAME]
        if named:
            self.target.value = named[0]
            return
        layer = self.viewer.add_labels(
            np.zeros(source.labels_shape, np.uint32), name=COMMITTED_NAME, **self._geometry(source)
        )
        self._own_layers.append(layer)
        self._bind_keys(layer)
        self.target.reset_choices()
        self.target.value = layer

    def _auto_layer_for(self, source: ImageSource) -> Any:
        if self.auto_layer is None or self.auto_layer not in self.viewer.layers:
            self.auto_layer = self.viewer.add_labels(
                np.zeros(source.labels_shape, np.uint32), name=AUTO_NAME, **self._geometry(source)
            )
            self._own_layers.append(self.auto_layer)
            self._bind_keys(self.auto_layer)
            self.target.reset_choices()
        return self.auto_layer

    def _forget_layer(self, layer: Any) -> None:
        """The user deleted one of our layers: stop using it (it is recreated when needed)."""
        self._own_layers = [own for own in self._own_layers if not same_layer(own, layer)]
        for attr in ("points_layer", "boxes_layer", "current_layer", "auto_layer"):
            if same_layer(getattr(self, attr), layer):
                setattr(self, attr, None)

    def _right_click_negative(self, layer: Any, event: Any) -> None:
        """Before napari's add-mode callback: a right click adds a negative point."""
        negative = getattr(event, "button", 1) == 2 or self.negative.value
        layer.feature_defaults = {"prompt": "negative" if negative else "positive"}

    def _on_polarity_changed(self, _: Any = None) -> None:
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"prompt": "negative" if self.negative.value else "positive"}

    def add_point(self, coords: Any, positive: bool = True) -> None:
        """Add a prompt point programmatically (same effect as a click), coords in image pixels."""
        layer = self.points_layer
        layer.feature_defaults = {"prompt": "positive" if positive else "negative"}
        layer.add(np.atleast_2d(np.asarray(coords, dtype=float)))
        self._on_polarity_changed()
