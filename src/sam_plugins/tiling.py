"""Large images: one embedding per tile (with a halo of context), prompts routed to their tile.

The image is cut into a grid of ``tile_shape`` tiles (the *inner* regions, which partition the
image); each tile is encoded with ``halo`` extra pixels of context on every side (the *outer*
region, clipped to the image). A prompt goes to the tile whose inner region contains its anchor
(the mean of the positive points, or the box centre); its coordinates are shifted into that tile's
outer frame, the predictor runs on the tile embedding, and the mask is pasted back into a
full-size array (False / ``-inf`` logits outside the tile's outer region).

Images that are not in memory (dask, zarr, memory-mapped files) are wrapped in :class:`LazyImage`:
each tile is read and converted on its own, with one intensity range estimated from a strided
overview, so the whole image is never loaded.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embeddings import ImageEmbedding, image_hash, model_fingerprint
from .images import DEFAULT_PERCENTILES, intensity_range, prepare_image

__all__ = [
    "EmbeddingCancelled",
    "LazyImage",
    "Tile",
    "TiledEmbeddings",
    "TiledPredictor",
    "compute_tiled_embeddings",
    "tile_grid",
    "tiling_for",
]


def tiling_for(
    plane_shape: tuple[int, int], model_input: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(tile shape, halo) when a plane is too large to encode at once (long side > 1.5 x model
    input): tiles plus halo are exactly one model input, so no tile is downscaled. None: the plane
    is encoded whole, resized so its long side fills the model input."""
    if max(plane_shape) <= 1.5 * model_input:
        return None
    halo = model_input // 8
    return (model_input - 2 * halo,) * 2, (halo, halo)


class EmbeddingCancelled(RuntimeError):
    """Raised when a tiled embedding computation is cancelled (no partial result is kept)."""


@dataclass(frozen=True)
class Tile:
    """One tile: ``inner`` and ``outer`` are (y0, y1, x0, x1) in image pixels (end exclusive)."""

    index: int
    inner: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def offset(self) -> tuple[int, int]:
        """(y, x) of the outer region's top-left corner."""
        return self.outer[0], self.outer[2]

    @property
    def outer_shape(self) -> tuple[int, int]:
        return self.outer[1] - self.outer[0], self.outer[3] - self.outer[2]


def _pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}.")
    return int(pair[0]), int(pair[1])


def tile_grid(
    image_shape: tuple[int, ...], tile_shape: int | tuple[int, int], halo: int | tuple[int, int] = 0
) -> list[Tile]:
    """Row-major grid of tiles covering ``image_shape[:2]``; the last row/column may be smaller."""
    th, tw = _pair(tile_shape, "tile_shape", 1)
    hy, hx = _pair(halo, "halo", 0)
    h, w = int(image_shape[0]), int(image_shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"Cannot tile an empty image of shape {tuple(image_shape)}.")
    tiles = []
    for iy in range(math.ceil(h / th)):
        for ix in range(math.ceil(w / tw)):
            y0, x0 = iy * th, ix * tw
            y1, x1 = min(y0 + th, h), min(x0 + tw, w)
            outer = (max(0, y0 - hy), min(h, y1 + hy), max(0, x0 - hx), min(w, x1 + hx))
            tiles.append(Tile(len(tiles), (y0, y1, x0, x1), outer))
    return tiles


@dataclass
class TiledEmbeddings:
    """Per-tile embeddings of one image, with the tiling that produced them."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    tiles: list[Tile]
    embeddings: list[ImageEmbedding]
    model_fingerprint: str = ""
    image_hash: str = ""

    def __post_init__(self) -> None:
        if len(self.tiles) != len(self.embeddings):
            raise ValueError(f"{len(self.tiles)} tiles but {len(self.embeddings)} embeddings.")
        expected = tile_grid(self.image_shape, self.tile_shape, self.halo)
        if [(t.inner, t.outer) for t in expected] != [(t.inner, t.outer) for t in self.tiles]:
            raise ValueError("The tiles do not match image_shape/tile_shape/halo (inconsistent tiling).")
        for tile, emb in zip(self.tiles, self.embeddings, strict=True):
            if tuple(emb.original_size) != tile.outer_shape:
                raise ValueError(
                    f"Tile {tile.index}: embedding size {emb.original_size} != tile {tile.outer_shape}."
                )

    def header(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "tile_shape": list(self.tile_shape),
            "halo": list(self.halo),
            "model_fingerprint": self.model_fingerprint,
            "image_hash": self.image_hash,
            "tiles": [
                {
                    "index": t.index,
                    "inner": list(t.inner),
                    "outer": list(t.outer),
                    "original_size": list(e.original_size),
                    "input_size": list(e.input_size),
                    "shape": list(e.features.shape),
                    "high_res_shapes": e.high_res_shapes(),
                }
                for t, e in zip(self.tiles, self.embeddings, strict=True)
            ],
        }

    def tile_for(self, y: float, x: float) -> Tile:
        """The tile whose inner region contains pixel position (y, x)."""
        h, w = self.image_shape
        if not (0 <= y <= h and 0 <= x <= w):
            raise ValueError(f"Position (x={x}, y={y}) lies outside the image (width {w}, height {h}).")
        yi, xi = min(int(y), h - 1), min(int(x), w - 1)
        for tile in self.tiles:
            if tile.inner[0] <= yi < tile.inner[1] and tile.inner[2] <= xi < tile.inner[3]:
                return tile
        raise AssertionError("tiles do not cover the image")  # pragma: no cover

    def save(self, path: Any):
        from .embeddings import save_embedding

        return save_embedding(path, self)


class LazyImage:
    """A 2-D image read region by region from an array that is not loaded (dask, zarr, memmap).

    ``data`` is (H, W) or (H, W, C) with channels last (pick one with ``channel``); anything that
    has ``shape``, ``dtype`` and ``data[y0:y1, x0:x1]`` works. Regions are converted like
    :func:`prepare_image`, but non-uint8 data uses one intensity range for all regions: the
    ``percentiles`` of a strided overview of at most ``overview_pixels`` pixels.
    """

    def __init__(
        self,
        data: Any,
        channel: int | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        overview_pixels: int = 1_000_000,
    ) -> None:
        shape = tuple(int(n) for n in data.shape)
        if len(shape) not in (2, 3) or min(shape[:2]) == 0:
            raise ValueError(f"Expected a non-empty 2-D image (H, W) or (H, W, C), got shape {shape}.")
        self.data = data
        self.channel = channel
        self.shape: tuple[int, int] = (shape[0], shape[1])
        self.dtype = np.dtype(data.dtype)
        self.value_range: tuple[float, float] | None = None
        if self.dtype not in (np.uint8, np.bool_):
            step = max(1, math.ceil(math.sqrt(shape[0] * shape[1] / overview_pixels)))
            overview = self._convert_input(np.asarray(data[::step, ::step]))
            if overview.dtype.kind == "f" and not np.isfinite(overview).all():
                raise ValueError(
                    "The image contains NaN or infinite values; replace them first, e.g. np.nan_to_num."
                )
            self.value_range = intensity_range(overview, percentiles)

    def _convert_input(self, raw: np.ndarray) -> np.ndarray:
        """The selected channel(s) of a raw region, before intensity mapping."""
        if raw.ndim == 3:
            if self.channel is not None:
                return raw[..., self.channel]
            return raw[..., 0] if raw.shape[-1] == 1 else raw[..., :3]
        return raw

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as SAM input, (h, w, 3) uint8 (the only part that is read)."""
        raw = self._convert_input(np.asarray(self.data[y0:y1, x0:x1]))
        return prepare_image(raw, channel_axis=-1 if raw.ndim == 3 else None, value_range=self.value_range)

    def content_hash(self, tiles: list[Tile]) -> str:
        """sha1 of the converted image, read one inner tile region at a time."""
        digest = _lazy_digest(self)
        for tile in tiles:
            _hash_region(digest, self.region(*tile.inner))
        return digest.hexdigest()


def _lazy_digest(image: LazyImage) -> Any:
    digest = hashlib.sha1()
    digest.update(f"lazy{image.shape}{image.dtype.str}{image.value_range}{image.channel}".encode())
    return digest


def _hash_region(digest: Any, region: np.ndarray) -> None:
    digest.update(memoryview(np.ascontiguousarray(region)).cast("B"))


def compute_tiled_embeddings(
    predictor: Any,
    image: np.ndarray | LazyImage,
    tile_shape: int | tuple[int, int] = 1024,
    halo: int | tuple[int, int] = 128,
    progress_callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **prepare_kwargs: Any,
) -> TiledEmbeddings:
    """Encode every tile (plus halo) of ``image`` with ``predictor``; returns :class:`TiledEmbeddings`.

    An in-memory image is converted once with :func:`prepare_image` (so all tiles share one
    normalisation); a :class:`LazyImage` is read one tile at a time. ``cancel()`` returning True
    stops before the next tile with :class:`EmbeddingCancelled`.
    """
    if isinstance(image, LazyImage):
        if prepare_kwargs:
            raise ValueError(f"Give {sorted(prepare_kwargs)} to LazyImage, not here.")
        shape, read = image.shape, image.region
        digest = _lazy_digest(image)
    else:
        rgb = prepare_image(image, **prepare_kwargs)
        shape, digest = rgb.shape[:2], None

        def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return rgb[y0:y1, x0:x1]

    tiles = tile_grid(shape, tile_shape, halo)
    embeddings = []
    for i, tile in enumerate(tiles):
        if cancel is not None and cancel():
            raise EmbeddingCancelled("Tiled embedding computation was cancelled.")
        y0, y1, x0, x1 = tile.outer
        pixels = read(y0, y1, x0, x1)
        if digest is not None:  # hash the inner region, as LazyImage.content_hash does
            iy0, iy1, ix0, ix1 = tile.inner
            _hash_region(digest, pixels[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0])
        predictor.set_image(pixels)
        embeddings.append(predictor.get_embedding())
        if progress_callback is not None:
            progress_callback(i + 1, len(tiles))
    predictor.reset_image()
    return TiledEmbeddings(
        image_shape=(int(shape[0]), int(shape[1])),
        tile_shape=_pair(tile_shape, "tile_shape", 1),
        halo=_pair(halo, "halo", 0),
        tiles=tiles,
        embeddings=embeddings,
        model_fingerprint=model_fingerprint(predictor.model),
        image_hash=digest.hexdigest() if digest is not None else image_hash(rgb),
    )


class TiledPredictor:
    """Prompted segmentation on tiled embeddings; masks come back in full-image coordinates."""

    def __init__(self, predictor: Any, tiled: TiledEmbeddings) -> None:
        self.predictor = predictor
        self.tiled = tiled
        self._current: int | None = None

    def _activate(self, tile: Tile) -> None:
        if self._current != tile.index:
            self.predictor.set_image_embedding(self.tiled.embeddings[tile.index])
            self._current = tile.index

    def route(self, point_coords: Any = None, point_labels: Any = None, box: Any = None) -> Tile:
        """The tile a prompt belongs to: box centre, else mean of positive points, else of all points."""
        if box is not None:
            b = np.asarray(box, dtype=float).reshape(4)
            return self.tiled.tile_for((b[1] + b[3]) / 2, (b[0] + b[2]) / 2)
        if point_coords is None:
            raise ValueError("A prompt needs point_coords or a box to be routed to a tile.")
        coords = np.asarray(point_coords, dtype=float).reshape(-1, 2)
        labels = np.asarray(point_labels).reshape(-1) if point_labels is not None else np.ones(len(coords))
        anchor = coords[labels == 1] if (labels == 1).any() else coords
        x, y = anchor.mean(axis=0)
        return self.tiled.tile_for(y, x)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Tile]:
        """Like :meth:`SamPredictor.predict` on the full image; also returns the tile used.

        Points outside the chosen tile's outer region are dropped with a warning; a box is clipped
        to it. ``mask_input`` must come from a previous prediction on the same tile.
        """
        tile = self.route(point_coords, point_labels, box)
        y0, y1, x0, x1 = tile.outer
        coords = labels = local_box = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = np.asarray(point_coords, dtype=float).reshape(-1, 2) - [x0, y0]
            labels = np.asarray(point_labels).reshape(-1)
            if len(labels) != len(coords):
                raise ValueError(f"{len(coords)} points but {len(labels)} labels.")
            inside = (
                (coords[:, 0] >= 0)
                & (coords[:, 0] <= x1 - x0)
                & (coords[:, 1] >= 0)
                & (coords[:, 1] <= y1 - y0)
            )
            if not inside.all():
                warnings.warn(
                    f"{int((~inside).sum())} point(s) lie outside tile {tile.index} (with halo) "
                    "and are ignored; "
                    "increase the halo to use them.",
                    stacklevel=2,
                )
                coords, labels = coords[inside], labels[inside]
            if len(coords) == 0:
                coords = labels = None
        if box is not None:
            b = np.asarray(box, dtype=float).reshape(4) - [x0, y0, x0, y0]
            local_box = np.clip(b, 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
            if not np.array_equal(local_box, b):
                warnings.warn(f"The box was clipped to tile {tile.index} (with halo).", stacklevel=2)
        if coords is None and local_box is None:
            raise ValueError("No prompt is left inside the tile.")
        self._activate(tile)
        masks, iou, low_res = self.predictor.predict(
            coords,
            labels,
            local_box,
            mask_input,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        h, w = self.tiled.image_shape
        fill = -np.inf if return_logits else False
        full = np.full((masks.shape[0], h, w), fill, dtype=masks.dtype)
        full[:, y0:y1, x0:x1] = masks
        return full, iou, low_res, tile
