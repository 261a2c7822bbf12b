"""Labels as chunked zarr: written by "Save Layers" (*.zarr), read back as a Labels layer, lazily.

napari's built-in reader opens any zarr array as an Image; these files carry a marker so the
plugin reader gives them back as Labels, with their scale and translate, without loading them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "sam_plugins"
LayerData = list[tuple[Any, dict[str, Any], str]]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to a zarr array (chunks of one plane, at most 1024² pixels)."""
    import numpy as np
    import zarr

    if not str(path).endswith(".zarr"):
        path = f"{path}.zarr"
    array = np.asarray(data)
    chunks = (*(1,) * (array.ndim - 2), *(min(1024, s) for s in array.shape[-2:]))
    z = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
    z[...] = array
    z.attrs[MARKER] = {
        "layer_type": "labels",
        "name": meta.get("name", Path(path).stem),
        "scale": [float(v) for v in meta.get("scale", [1.0] * array.ndim)],
        "translate": [float(v) for v in meta.get("translate", [0.0] * array.ndim)],
    }
    return [str(path)]


def get_reader(path: str | list[str]) -> Callable[[str], LayerData] | None:
    """napari reader hook: a reader for zarr labels written by `write_labels`, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).rstrip("/").endswith(".zarr"):
        return None
    try:
        import zarr

        z = zarr.open_array(str(path), mode="r")
        if z.attrs.get(MARKER, {}).get("layer_type") != "labels":
            return None
    except Exception:  # not a zarr array, unreadable, zarr missing: let other readers try
        return None
    return read_labels


def read_labels(path: str) -> LayerData:
    """Open zarr labels lazily (the zarr array is handed to napari, chunks load on demand)."""
    import zarr

    z = zarr.open_array(str(path), mode="r")
    info = dict(z.attrs[MARKER])
    kwargs = {
        "name": info.get("name", Path(path).stem),
        "scale": info.get("scale"),
        "translate": info.get("translate"),
    }
    return [(z, {k: v for k, v in kwargs.items() if v is not None}, "labels")]
