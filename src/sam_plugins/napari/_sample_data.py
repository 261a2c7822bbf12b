"""Sample data for napari's File > Open Sample menu (generated, works offline)."""

from __future__ import annotations

from typing import Any

LayerData = list[tuple[Any, dict[str, Any], str]]


def cells_2d() -> LayerData:
    """A generated 2-D fluorescence image of cells, with its ground truth (hidden)."""
    from ..sample_data import cells_2d as make

    image, labels = make()
    return [
        (image, {"name": "cells"}, "image"),
        (labels, {"name": "cells ground truth", "visible": False}, "labels"),
    ]


def nuclei_3d() -> LayerData:
    """A generated 3-D stack of fluorescent nuclei (Z, Y, X), with its ground truth (hidden)."""
    from ..sample_data import nuclei_3d as make

    image, labels = make()
    return [
        (image, {"name": "nuclei 3d"}, "image"),
        (labels, {"name": "nuclei ground truth", "visible": False}, "labels"),
    ]
