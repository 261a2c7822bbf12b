"""Image embeddings: export/import and a cache keyed by image data, model and tiling.

An :class:`ImageEmbedding` is what :meth:`SamPredictor.set_image` computes (the encoder output plus
the sizes needed to map prompts and masks). It can be saved to a ``.npz`` file (plain arrays and a
JSON header, loaded with ``allow_pickle=False``: nothing is ever unpickled) and loaded back into a
predictor with :meth:`SamPredictor.set_image_embedding`, skipping the encoder. Tiled embeddings
(:class:`sam_plugins.tiling.TiledEmbeddings`) are stored the same way, one array per tile.

:class:`EmbeddingCache` keeps embeddings in memory (LRU) and optionally on disk, keyed by a hash of
the image data, the model weights/config and the tiling.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .tiling import TiledEmbeddings

__all__ = [
    "FORMAT_VERSION",
    "EmbeddingCache",
    "ImageEmbedding",
    "image_hash",
    "load_embedding",
    "model_fingerprint",
    "save_embedding",
]

FORMAT_VERSION = 1
_MAGIC = "sam-plugins-embedding"


@dataclass
class ImageEmbedding:
    """Encoder output for one image: features (1, C, h, w) float32 and the size bookkeeping.

    ``high_res``: for models with a high-resolution feature path (``SamConfig.high_res_channels``),
    its two feature maps [(1, c, S/4, S/4), (1, c', S/8, S/8)]; None for official SAM models.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_fingerprint: str = ""
    image_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    high_res: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.features, torch.Tensor):
            self.features = torch.as_tensor(np.asarray(self.features))
        self.original_size = (int(self.original_size[0]), int(self.original_size[1]))
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if self.features.ndim != 4 or self.features.shape[0] != 1:
            raise ValueError(f"features must have shape (1, C, h, w), got {tuple(self.features.shape)}.")
        if self.high_res is not None:
            self.high_res = [
                f if isinstance(f, torch.Tensor) else torch.as_tensor(np.asarray(f)) for f in self.high_res
            ]
            if len(self.high_res) != 2 or any(f.ndim != 4 or f.shape[0] != 1 for f in self.high_res):
                raise ValueError("high_res must be two feature maps of shape (1, C, h, w).")

    def high_res_shapes(self) -> list[list[int]] | None:
        return None if self.high_res is None else [list(f.shape) for f in self.high_res]

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The arrays this embedding stores in a file, named for its position ``index`` in the file."""
        out = {f"features_{index}": self.features.detach().float().cpu().numpy()}
        for k, f in enumerate(self.high_res or []):
            out[f"high_res_{index}_{k}"] = f.detach().float().cpu().numpy()
        return out

    def header(self) -> dict[str, Any]:
        return {
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "model_fingerprint": self.model_fingerprint,
            "image_hash": self.image_hash,
            "shape": list(self.features.shape),
            "high_res_shapes": self.high_res_shapes(),
            "extra": self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        return save_embedding(path, self)


def image_hash(image: np.ndarray) -> str:
    """sha1 of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha1()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of a model: its config (if any), parameter names/shapes and a sample of values.

    Cached on the model until a parameter is modified in place (optimiser step, load_state_dict).
    """
    params = list(model.state_dict(keep_vars=True).items())
    versions = tuple(p._version for _, p in params)
    cached = getattr(model, "_sam_plugins_fingerprint", None)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha1()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, p in params:
        flat = p.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:], flat[:: max(1, flat.numel() // 64)][:64]])
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    digest = h.hexdigest()[:16]
    model._sam_plugins_fingerprint = (versions, digest)
    return digest


def _header_array(header: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)


def save_embedding(path: str | os.PathLike, embedding: ImageEmbedding | TiledEmbeddings) -> Path:
    """Write an embedding (or tiled embeddings) to ``path`` (``.npz``; written atomically)."""
    from .tiling import TiledEmbeddings

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    if isinstance(embedding, ImageEmbedding):
        header = {"magic": _MAGIC, "version": FORMAT_VERSION, "kind": "image", **embedding.header()}
        arrays.update(embedding.arrays(0))
    elif isinstance(embedding, TiledEmbeddings):
        header = {"magic": _MAGIC, "version": FORMAT_VERSION, "kind": "tiled", **embedding.header()}
        for i, emb in enumerate(embedding.embeddings):
            arrays.update(emb.arrays(i))
    else:
        raise TypeError(
            f"Cannot save a {type(embedding).__name__}; expected ImageEmbedding or TiledEmbeddings."
        )
    arrays["header"] = _header_array(header)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _features(data: Any, key: str, shape: list[int], path: Path) -> torch.Tensor:
    if key not in data.files:
        raise ValueError(f"{path} is incomplete: array {key!r} is missing.")
    arr = data[key]
    if arr.dtype != np.float32 or list(arr.shape) != list(shape):
        raise ValueError(f"{path}: {key} has dtype {arr.dtype} shape {arr.shape}, expected float32 {shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: {key} contains NaN or infinite values (corrupted file).")
    return torch.from_numpy(arr.copy())


def _high_res(data: Any, index: int, shapes: list[list[int]] | None, path: Path) -> list[torch.Tensor] | None:
    if shapes is None:
        return None
    return [_features(data, f"high_res_{index}_{k}", shape, path) for k, shape in enumerate(shapes)]


def load_embedding(
    path: str | os.PathLike, model: torch.nn.Module | None = None
) -> ImageEmbedding | TiledEmbeddings:
    """Read a file written by :func:`save_embedding`, validating it (and the model, if given)."""
    from .tiling import Tile, TiledEmbeddings

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No embedding file at {path}.")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable .npz embedding file: {exc}") from exc
    with data:
        if "header" not in data.files:
            raise ValueError(f"{path} is not a sam-plugins embedding file (no header).")
        try:
            header = json.loads(data["header"].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: corrupted header ({exc}).") from exc
        if header.get("magic") != _MAGIC:
            raise ValueError(f"{path} is not a sam-plugins embedding file.")
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {header.get('version')}, expected {FORMAT_VERSION}.")
        if model is not None and header.get("model_fingerprint") not in ("", model_fingerprint(model)):
            raise ValueError(
                f"{path} was computed with a different model (fingerprint {header.get('model_fingerprint')}, "
                f"current {model_fingerprint(model)}); recompute the embedding."
            )
        if header.get("kind") == "image":
            return ImageEmbedding(
                features=_features(data, "features_0", header["shape"], path),
                high_res=_high_res(data, 0, header.get("high_res_shapes"), path),
                original_size=tuple(header["original_size"]),
                input_size=tuple(header["input_size"]),
                model_fingerprint=header.get("model_fingerprint", ""),
                image_hash=header.get("image_hash", ""),
                extra=header.get("extra", {}),
            )
        if header.get("kind") == "tiled":
            tiles = [Tile(int(t["index"]), tuple(t["inner"]), tuple(t["outer"])) for t in header["tiles"]]
            embeddings = [
                ImageEmbedding(
                    features=_features(data, f"features_{i}", t["shape"], path),
                    high_res=_high_res(data, i, t.get("high_res_shapes"), path),
                    original_size=tuple(t["original_size"]),
                    input_size=tuple(t["input_size"]),
                    model_fingerprint=header.get("model_fingerprint", ""),
                )
                for i, t in enumerate(header["tiles"])
            ]
            return TiledEmbeddings(
                image_shape=tuple(header["image_shape"]),
                tile_shape=tuple(header["tile_shape"]),
                halo=tuple(header["halo"]),
                tiles=tiles,
                embeddings=embeddings,
                model_fingerprint=header.get("model_fingerprint", ""),
                image_hash=header.get("image_hash", ""),
            )
        raise ValueError(f"{path}: unknown embedding kind {header.get('kind')!r}.")


class EmbeddingCache:
    """Embeddings keyed by hash(image data, model, tiling): an in-memory LRU plus an optional folder.

    ``get_or_compute(predictor, image)`` returns a cached :class:`ImageEmbedding` (or
    :class:`TiledEmbeddings` when ``tile_shape`` is given) or computes and stores it.
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_items: int = 8) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_items = max_items
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        image: Any,
        model: torch.nn.Module,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] | None = None,
    ) -> str:
        """Cache key of ``image`` (an array, or a tiled :class:`~sam_plugins.tiling.LazyImage`,
        whose pixels are hashed tile by tile) for ``model`` and the tiling."""
        tiling = "untiled" if tile_shape is None else f"tile{tuple(tile_shape)}halo{tuple(halo or (0, 0))}"
        from .tiling import LazyImage, tile_grid

        if isinstance(image, LazyImage):
            if tile_shape is None:
                raise ValueError("A LazyImage is embedded tile by tile: give tile_shape.")
            content = image.content_hash(tile_grid(image.shape, tile_shape, halo or 0))
        else:
            content = image_hash(image)
        raw = f"{content}-{model_fingerprint(model)}-{tiling}"
        return hashlib.sha1(raw.encode()).hexdigest()[:24]

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.npz"

    def get(self, key: str, model: torch.nn.Module | None = None) -> Any | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.exists():
            value = load_embedding(path, model)
            self._remember(key, value)
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        path = self._path(key)
        if path is not None:
            save_embedding(path, value)

    def _remember(self, key: str, value: Any) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def clear_memory(self) -> None:
        self._memory.clear()

    def get_or_compute(
        self,
        predictor: Any,
        image: Any,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] = (0, 0),
        progress_callback: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        **prepare_kwargs: Any,
    ) -> ImageEmbedding | TiledEmbeddings:
        """Cached embedding of ``image`` for ``predictor.model``; computed (and stored) on a miss.

        ``image`` is an array or, with ``tile_shape``, a :class:`~sam_plugins.tiling.LazyImage`
        (read one tile at a time). ``cancel`` stops a tiled computation between tiles
        (:class:`~sam_plugins.tiling.EmbeddingCancelled`)."""
        key = self.key(image, predictor.model, tile_shape, halo if tile_shape is not None else None)
        if prepare_kwargs:
            key += hashlib.sha1(json.dumps(prepare_kwargs, sort_keys=True).encode()).hexdigest()[:8]
        value = self.get(key, predictor.model)
        if value is not None:
            return value
        if tile_shape is None:
            predictor.set_image(image, **prepare_kwargs)
            value = predictor.get_embedding()
        else:
            from .tiling import compute_tiled_embeddings

            value = compute_tiled_embeddings(
                predictor,
                image,
                tile_shape,
                halo,
                progress_callback=progress_callback,
                cancel=cancel,
                **prepare_kwargs,
            )
        self.put(key, value)
        return value
