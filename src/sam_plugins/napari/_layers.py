"""Pure helpers between napari layer data and SAM: planes, prompts, commits (numpy only, no Qt).

Everything here works on plain arrays so it can be tested without a viewer; the widget passes
`layer.data` in and writes results back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

StackAxis = Literal["Z", "T", "C"]
STACK_AXES: tuple[str, ...] = ("Z", "T", "C")


@dataclass(frozen=True, eq=False)
class ImageSource:
    """How to read 2-D planes for SAM out of an image layer's data.

    `data` is the layer's array (numpy, dask, zarr; for multiscale data the full-resolution
    level). 2-D data is one plane. 3-D non-RGB data is a stack whose first axis is `axis`:
    "Z" (3-D) or "T" (time) gives one plane per index, "C" gives one 2-D image whose channel
    `channel` is used. RGB(A) data is (Y, X, 3|4), or a stack (N, Y, X, 3|4); `channel` may pick
    one colour. Planes are read one at a time, so lazy stacks are never loaded whole; a large
    lazy plane is read one tile at a time through `lazy_plane`.
    """

    data: Any
    rgb: bool = False
    axis: StackAxis = "Z"
    channel: int | None = None
    scale: tuple[float, ...] = (1.0, 1.0)
    translate: tuple[float, ...] = (0.0, 0.0)

    @classmethod
    def from_layer(cls, layer: Any, axis: StackAxis | None = None, channel: int | None = None) -> ImageSource:
        """Describe a napari Image layer; raises ValueError with a user-facing message."""
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        rgb = bool(getattr(layer, "rgb", False))
        ndim = len(data.shape) - (1 if rgb else 0)
        if ndim not in (2, 3):
            raise ValueError(
                f"'{layer.name}' has {ndim} dimensions {tuple(data.shape)}: the annotator takes 2-D "
                "images and 3-D stacks (Z, Y, X) or time series (T, Y, X). Split channels first "
                "(right-click the layer > Split Stack) or select one time point."
            )
        if axis is None:
            axis = guess_axis(data.shape, rgb)
        if axis not in STACK_AXES:
            raise ValueError(f"axis must be one of {STACK_AXES}, got {axis!r}")
        if ndim == 3 and axis == "C":
            if rgb:
                raise ValueError("an RGB stack cannot also have a channel axis; choose Z or T")
            n = data.shape[0]
            channel = 0 if channel is None else channel
            if not 0 <= channel < n:
                raise ValueError(f"channel {channel} does not exist: '{layer.name}' has {n} channels")
        spatial = 3 if ndim == 3 and axis != "C" else 2
        scale = tuple(float(s) for s in np.asarray(layer.scale)[-spatial:])
        translate = tuple(float(t) for t in np.asarray(layer.translate)[-spatial:])
        return cls(data, rgb, axis, channel, scale, translate)

    def __eq__(self, other: object) -> bool:
        """Same pixels for SAM: the same array object (by identity) read the same way."""
        if not isinstance(other, ImageSource):
            return NotImplemented
        return self.data is other.data and (self.rgb, self.axis, self.channel) == (
            other.rgb,
            other.axis,
            other.channel,
        )

    __hash__ = object.__hash__

    @property
    def ndim(self) -> int:
        """Dimensions of the layer data without the RGB axis."""
        return len(self.data.shape) - (1 if self.rgb else 0)

    @property
    def is_stack(self) -> bool:
        """True for Z stacks and time series (several planes to segment)."""
        return self.ndim == 3 and self.axis != "C"

    @property
    def n_planes(self) -> int:
        return int(self.data.shape[0]) if self.is_stack else 1

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(Y, X) of one plane."""
        shape = self.data.shape[:-1] if self.rgb else self.data.shape
        return int(shape[-2]), int(shape[-1])

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """Shape of the Labels layers that go with this image: (Y, X) or (N, Y, X)."""
        return (self.n_planes, *self.plane_shape) if self.is_stack else self.plane_shape

    @property
    def spatial_ndim(self) -> int:
        return 3 if self.is_stack else 2

    @property
    def is_lazy(self) -> bool:
        """True when the data is not in memory (dask, zarr, memory-mapped): read it in parts."""
        return not isinstance(self.data, np.ndarray) or isinstance(self.data, np.memmap)

    def _plane_index(self, index: int) -> tuple[int, ...]:
        """Leading indices that select plane `index` out of the layer data."""
        if self.is_stack:
            if not 0 <= index < self.n_planes:
                raise IndexError(f"plane {index} is outside 0..{self.n_planes - 1}")
            return (index,)
        if self.ndim == 3:  # channel axis first
            return (self.channel or 0,)
        return ()

    def plane(self, index: int = 0) -> np.ndarray:
        """Raw plane `index` as a numpy array: (Y, X) or (Y, X, C) for RGB."""
        prefix = self._plane_index(index)
        return np.asarray(self.data[prefix[0]] if prefix else self.data)  # at most one leading index

    def lazy_plane(self, index: int = 0) -> Any:
        """Plane `index` as a :class:`~sam_plugins.tiling.LazyImage`: nothing is read until its
        tiles are (plus a strided overview for the intensity range of non-uint8 data)."""
        from ..tiling import LazyImage

        return LazyImage(
            _PlaneView(self.data, self._plane_index(index)), channel=self.channel if self.rgb else None
        )

    def model_input(self, index: int = 0) -> np.ndarray:
        """Plane `index` converted for SAM: (Y, X, 3) uint8."""
        from ..images import prepare_image

        plane = self.plane(index)
        channel = self.channel if self.rgb else None
        return prepare_image(plane, channel=channel, channel_axis=-1 if plane.ndim == 3 else None)

    def plane_key(self, index: int = 0) -> tuple:
        """What makes plane `index` unique for embedding caches within a session."""
        return (id(self.data), self.axis, self.channel, index if self.is_stack else 0)


class _PlaneView:
    """``data[prefix]`` without reading it: slicing reads only the region asked for."""

    def __init__(self, data: Any, prefix: tuple[int, ...]) -> None:
        self.data, self.prefix = data, prefix
        self.shape = tuple(data.shape[len(prefix) :])
        self.dtype = data.dtype

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        return self.data[(*self.prefix, *key)]


def guess_axis(shape: Sequence[int], rgb: bool = False) -> StackAxis:
    """First-axis meaning for 3-D data: a short first axis (<= 4) next to a large image is channels."""
    if not rgb and len(shape) == 3 and shape[0] <= 4 and min(shape[1:]) > 4 * shape[0]:
        return "C"
    return "Z"


# ----------------------------------------------------------------------------------------------
# Prompts


@dataclass
class ObjectPrompts:
    """Prompts for one object on one plane, in (x, y) pixel coordinates as SAM expects."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    box: np.ndarray | None = None  # (x0, y0, x1, y1)

    @property
    def empty(self) -> bool:
        return self.box is None and not (self.labels == 1).any()


def points_on_plane(
    coords: np.ndarray, positive: np.ndarray, plane: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Points of a prompts layer that lie on `plane`, as (x, y) coords and 1/0 labels.

    `coords` are the Points layer's data (N, 2) or (N, 3) in image pixel coordinates; `plane`
    is None for 2-D data. Points with a last-two-dims coordinate outside the image are kept (SAM
    ignores far-away points), rounding picks the plane.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, coords.shape[-1] if len(coords) else 2)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    if plane is not None and coords.shape[1] >= 3:
        on = np.round(coords[:, -3]).astype(int) == plane
        coords, positive = coords[on], positive[on]
    xy = coords[:, [-1, -2]].astype(np.float32)
    return xy, positive.astype(np.int32)


def boxes_on_plane(shapes: Sequence[np.ndarray], plane: int | None) -> list[np.ndarray]:
    """Bounding boxes (x0, y0, x1, y1) of the shapes (vertices in pixel coords) on `plane`."""
    boxes = []
    for vertices in shapes:
        v = np.asarray(vertices, dtype=np.float64)
        if len(v) == 0:
            continue
        if plane is not None and v.shape[1] >= 3 and not np.all(np.round(v[:, -3]) == plane):
            continue
        y0, x0 = v[:, -2].min(), v[:, -1].min()
        y1, x1 = v[:, -2].max(), v[:, -1].max()
        boxes.append(np.array([x0, y0, x1, y1], dtype=np.float32))
    return boxes


def group_prompts(points_xy: np.ndarray, labels: np.ndarray, boxes: list[np.ndarray]) -> list[ObjectPrompts]:
    """Split one plane's prompts into objects: one per box (with the points inside it), or one
    object from all points when there is no box. Points outside every box go with the last box."""
    if not boxes:
        obj = ObjectPrompts(points_xy.astype(np.float32), labels.astype(np.int32))
        return [] if obj.empty else [obj]
    owner = np.full(len(points_xy), len(boxes) - 1)
    for i, (x0, y0, x1, y1) in reversed(list(enumerate(boxes))):
        inside = (
            (points_xy[:, 0] >= x0)
            & (points_xy[:, 0] <= x1)
            & (points_xy[:, 1] >= y0)
            & (points_xy[:, 1] <= y1)
        )
        owner[inside] = i
    return [
        ObjectPrompts(points_xy[owner == i].astype(np.float32), labels[owner == i].astype(np.int32), box)
        for i, box in enumerate(boxes)
    ]


# ----------------------------------------------------------------------------------------------
# Commit into a target label image


@dataclass
class CommitRecord:
    """What one commit changed, so it can be undone: indices, old values, the new ids."""

    indices: tuple[np.ndarray, ...]
    previous: np.ndarray
    ids: list[int]


def next_label_id(labels: Any) -> int:
    """The smallest id above every id used in `labels`."""
    return int(np.max(labels)) + 1 if np.size(labels) else 1


def plan_commit(
    target: np.ndarray, objects: np.ndarray, *, overwrite: bool = False, first_id: int | None = None
) -> tuple[tuple[np.ndarray, ...], np.ndarray, CommitRecord]:
    """Where and what to write to put each object of `objects` (0 = none, k = object k) into
    `target` with a new unique id. Existing labels are kept unless `overwrite`.

    Returns (indices, values, record); apply with `target[indices] = values` (or napari's
    `Labels.data_setitem`), undo with `target[record.indices] = record.previous`.
    Raises ValueError when nothing would be written or the ids do not fit the target's dtype.
    """
    if target.shape != objects.shape:
        raise ValueError(f"the target labels have shape {target.shape}, the objects {objects.shape}")
    first_id = next_label_id(target) if first_id is None else first_id
    object_ids = [int(k) for k in np.unique(objects) if k != 0]
    if not object_ids:
        raise ValueError("there is no current object to commit: add a point or a box first")
    free = (objects != 0) if overwrite else (objects != 0) & (np.asarray(target) == 0)
    indices = np.nonzero(free)
    if len(indices[0]) == 0:
        raise ValueError("the object lies entirely on existing labels; tick 'overwrite' to replace them")
    remap = np.zeros(max(object_ids) + 1, dtype=np.int64)
    new_ids = []
    for k in object_ids:
        if (objects[indices] == k).any():
            remap[k] = first_id + len(new_ids)
            new_ids.append(int(remap[k]))
    dtype = np.asarray(target).dtype
    if np.issubdtype(dtype, np.integer) and new_ids[-1] > np.iinfo(dtype).max:
        raise ValueError(f"id {new_ids[-1]} does not fit the target layer's {dtype}; convert it to uint32")
    values = remap[objects[indices]].astype(dtype)
    record = CommitRecord(indices, np.asarray(target)[indices].copy(), new_ids)
    return indices, values, record
