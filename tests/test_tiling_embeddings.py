"""Tiling with halo, embedding export/import and the embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data

from sam_plugins.embeddings import EmbeddingCache, ImageEmbedding, load_embedding, save_embedding
from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.predictor import SamPredictor
from sam_plugins.tiling import TiledEmbeddings, TiledPredictor, compute_tiled_embeddings, tile_grid

IMAGE = np.ascontiguousarray(data.astronaut()[::2, ::2][:200, :250])
POINT = dict(point_coords=np.array([[60.0, 70.0]]), point_labels=np.array([1]))


@pytest.fixture(scope="module")
def predictor(tiny_pair):
    return SamPredictor(tiny_pair[1])


def test_tile_grid_covers_image_once():
    tiles = tile_grid((200, 250), 96, 16)
    assert len(tiles) == 3 * 3
    cover = np.zeros((200, 250), int)
    for t in tiles:
        y0, y1, x0, x1 = t.inner
        cover[y0:y1, x0:x1] += 1
        oy0, oy1, ox0, ox1 = t.outer
        assert oy0 == max(0, y0 - 16) and oy1 == min(200, y1 + 16) and ox1 == min(250, x1 + 16)
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="tile_shape"):
        tile_grid((10, 10), 0)
    with pytest.raises(ValueError, match="halo"):
        tile_grid((10, 10), 4, -1)


def test_embedding_round_trip(predictor, tmp_path):
    predictor.set_image(IMAGE)
    ref = predictor.predict(**POINT, return_logits=True)
    emb = predictor.get_embedding()
    path = save_embedding(tmp_path / "emb", emb)
    assert path.suffix == ".npz"
    loaded = load_embedding(path, predictor.model)
    assert isinstance(loaded, ImageEmbedding)
    assert torch.equal(loaded.features, emb.features) and loaded.original_size == (200, 250)
    predictor.reset_image()
    predictor.set_image_embedding(loaded)
    got = predictor.predict(**POINT, return_logits=True)
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)


def test_embedding_validation(predictor, tmp_path):
    predictor.set_image(IMAGE)
    emb = predictor.get_embedding()
    other = build_sam(TINY)  # different (untrained) weights
    path = save_embedding(tmp_path / "e.npz", emb)
    with pytest.raises(ValueError, match="different model"):
        load_embedding(path, other)
    with pytest.raises(ValueError, match="different model"):
        SamPredictor(other).set_image_embedding(emb)
    SamPredictor(other).set_image_embedding(emb, check_model=False)
    with pytest.raises(ValueError, match="does not fit"):
        predictor.set_image_embedding(ImageEmbedding(torch.zeros(1, 8, 16, 16), (200, 250), (205, 256)))
    with pytest.raises(ValueError, match="inconsistent"):
        predictor.set_image_embedding(ImageEmbedding(emb.features, (200, 250), (256, 256)))
    bad = tmp_path / "bad.npz"
    np.savez(bad, header=np.frombuffer(json.dumps({"magic": "x"}).encode(), np.uint8))
    with pytest.raises(ValueError, match="not a sam-plugins"):
        load_embedding(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        load_embedding(pickled)  # object arrays would need unpickling: refused
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_embedding(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        load_embedding(tmp_path / "missing.npz")


def test_tiled_prediction_matches_tile_prediction(predictor, tmp_path):
    tiled = compute_tiled_embeddings(predictor, IMAGE, tile_shape=128, halo=24)
    assert len(tiled.tiles) == 4
    loaded = load_embedding(save_embedding(tmp_path / "tiled.npz", tiled), predictor.model)
    assert isinstance(loaded, TiledEmbeddings) and loaded.tiles == tiled.tiles
    tp = TiledPredictor(predictor, loaded)
    point = np.array([[180.0, 150.0]])  # in the bottom-right tile
    masks, iou, low, tile = tp.predict(point, np.array([1]), return_logits=False)
    assert tile.index == 3 and masks.shape == (3, 200, 250)
    y0, y1, x0, x1 = tile.outer
    direct = SamPredictor(predictor.model)
    direct.set_image(IMAGE[y0:y1, x0:x1])
    ref = direct.predict(point - [x0, y0], np.array([1]))
    assert np.array_equal(masks[:, y0:y1, x0:x1], ref[0]) and np.allclose(iou, ref[1])
    assert not masks[:, :y0].any() and not masks[:, :, :x0].any()
    with pytest.warns(UserWarning, match="outside tile"):
        tp.predict(np.array([[180.0, 150.0], [5.0, 5.0]]), np.array([1, 0]))
    box_masks, _, _, box_tile = tp.predict(box=np.array([10.0, 10.0, 60.0, 50.0]), multimask_output=False)
    assert box_tile.index == 0 and box_masks.shape == (1, 200, 250)
    with pytest.raises(ValueError, match="outside the image"):
        tp.predict(np.array([[300.0, 10.0]]), np.array([1]))


def test_cache_memory_and_disk(predictor, tmp_path, monkeypatch):
    calls = []
    encoder = predictor.model.image_encoder
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda x: calls.append(1) or original(x))
    cache = EmbeddingCache(tmp_path / "cache", max_items=2)
    first = cache.get_or_compute(predictor, IMAGE)
    second = cache.get_or_compute(predictor, IMAGE)
    assert second is first and len(calls) == 1
    fresh = EmbeddingCache(tmp_path / "cache")
    from_disk = fresh.get_or_compute(predictor, IMAGE)
    assert len(calls) == 1 and torch.equal(from_disk.features, first.features) and fresh.hits == 1
    cache.get_or_compute(predictor, IMAGE[::-1].copy())
    assert len(calls) == 2
    tiled = cache.get_or_compute(predictor, IMAGE, tile_shape=(128, 128), halo=(16, 16))
    assert isinstance(tiled, TiledEmbeddings) and len(calls) == 2 + 4
    keys = {
        EmbeddingCache.key(IMAGE, predictor.model),
        EmbeddingCache.key(IMAGE, predictor.model, (128, 128), (16, 16)),
        EmbeddingCache.key(IMAGE, build_sam(TINY)),
    }
    assert len(keys) == 3


class RegionsOnly:
    """A large on-disk image as zarr or dask serve it: any region can be read, the whole never.

    Records the pixels of every read; a read of more than `max_pixels` (the whole image) fails.
    """

    def __init__(self, array: np.ndarray, max_pixels: int) -> None:
        self._array, self.max_pixels = array, max_pixels
        self.shape, self.dtype = array.shape, array.dtype
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key):
        region = self._array[key]
        pixels = region.shape[0] * region.shape[1]
        if pixels > self.max_pixels:
            raise AssertionError(f"read {region.shape} at once")
        self.reads.append((pixels, key[0].step or 1))
        return region

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was loaded")


def test_lazy_image_is_embedded_tile_by_tile(predictor, tmp_path):
    from sam_plugins.tiling import EmbeddingCancelled, LazyImage

    rng = np.random.default_rng(3)
    big = (ndimage_blur(rng.random((420, 500))) * 60000).astype(np.uint16)
    tile, halo = (160, 160), (24, 24)
    outer = (160 + 48) ** 2
    stored = RegionsOnly(big, max_pixels=outer)
    lazy = LazyImage(stored, overview_pixels=20_000)
    # the intensity range comes from a strided overview, the pixels from one tile at a time
    assert len(stored.reads) == 1 and stored.reads[0][1] >= 2 and stored.reads[0][0] <= 20_000
    lo, hi = lazy.value_range
    assert abs(lo - np.percentile(big, 1.0)) < 0.05 * (hi - lo)
    cache = EmbeddingCache(tmp_path)
    seen: list[tuple[int, int]] = []
    tiled = cache.get_or_compute(
        predictor, lazy, tile_shape=tile, halo=halo, progress_callback=lambda i, n: seen.append((i, n))
    )
    n_tiles = len(tile_grid(big.shape, tile, halo))
    assert isinstance(tiled, TiledEmbeddings) and len(tiled.tiles) == n_tiles == 12
    assert seen[-1] == (n_tiles, n_tiles)
    assert max(pixels for pixels, step in stored.reads if step == 1) <= outer
    # the same embeddings as the in-memory image converted with the same intensity range
    eager = compute_tiled_embeddings(predictor, big, tile, halo, value_range=lazy.value_range)
    for a, b in zip(tiled.embeddings, eager.embeddings, strict=True):
        assert torch.equal(a.features, b.features)
    # a second request is answered by the cache (memory, then disk), reading tiles only to hash them
    assert cache.get_or_compute(predictor, lazy, tile_shape=tile, halo=halo) is tiled
    from_disk = EmbeddingCache(tmp_path).get_or_compute(predictor, lazy, tile_shape=tile, halo=halo)
    assert torch.equal(from_disk.embeddings[4].features, tiled.embeddings[4].features)
    masks, _, _, used = TiledPredictor(predictor, tiled).predict(
        point_coords=np.array([[250.0, 200.0]]), point_labels=np.array([1])
    )
    assert masks.shape[-2:] == big.shape and used.index == 5
    # cancelling between tiles raises and stores nothing
    calls = iter(range(100))
    with pytest.raises(EmbeddingCancelled):
        EmbeddingCache().get_or_compute(
            predictor,
            LazyImage(stored, overview_pixels=20_000),
            (100, 100),
            halo,
            cancel=lambda: next(calls) >= 2,
        )


def ndimage_blur(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    out = ndimage.gaussian_filter(image, 4)
    return (out - out.min()) / (out.max() - out.min())
