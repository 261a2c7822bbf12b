"""The annotator's GUI-free parts: image planes, prompts, commits, the session (no viewer needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sam_plugins.napari._layers import (
    ImageSource,
    boxes_on_plane,
    group_prompts,
    guess_axis,
    next_label_id,
    plan_commit,
    points_on_plane,
)


def fake_layer(data, rgb=False, scale=None, translate=None, name="img"):
    ndim = len(data.shape) - (1 if rgb else 0)
    return SimpleNamespace(
        data=data,
        rgb=rgb,
        multiscale=False,
        name=name,
        scale=np.ones(ndim) if scale is None else np.asarray(scale),
        translate=np.zeros(ndim) if translate is None else np.asarray(translate),
    )


class PlaneOnly:
    """A lazy array that allows reading one plane at a time but refuses to be loaded whole."""

    def __init__(self, data):
        self._data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise AssertionError(f"read more than one plane: {index!r}")
        self.reads.append(int(index))
        return self._data[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was loaded")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_2d_gray_any_dtype(dtype):
    data = (np.random.default_rng(0).random((30, 40)) * 200).astype(dtype)
    source = ImageSource.from_layer(fake_layer(data))
    assert not source.is_stack and source.n_planes == 1 and source.labels_shape == (30, 40)
    rgb = source.model_input(0)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8


def test_rgb_and_one_colour():
    data = np.zeros((20, 25, 3), np.uint8)
    data[..., 1] = 200
    source = ImageSource.from_layer(fake_layer(data, rgb=True))
    assert source.plane_shape == (20, 25) and source.labels_shape == (20, 25)
    assert (source.model_input()[..., 1] == 200).all()
    green = ImageSource.from_layer(fake_layer(data, rgb=True), channel=1)
    assert (green.model_input() == 200).all()  # one colour as gray


def test_stack_reads_one_plane_at_a_time():
    data = PlaneOnly(np.random.default_rng(0).random((6, 32, 32)).astype(np.float32))
    source = ImageSource.from_layer(fake_layer(data, scale=(3, 0.5, 0.5), translate=(1, 2, 3)), axis="Z")
    assert source.is_stack and source.n_planes == 6 and source.labels_shape == (6, 32, 32)
    assert source.scale == (3.0, 0.5, 0.5) and source.translate == (1.0, 2.0, 3.0)
    assert source.model_input(4).shape == (32, 32, 3)
    assert data.reads == [4]
    with pytest.raises(IndexError):
        source.plane(6)


def test_channel_axis_and_time():
    data = np.stack([np.full((40, 50), v, np.uint16) for v in (10, 20, 30)])
    assert guess_axis(data.shape) == "C" and guess_axis((30, 40, 50)) == "Z"
    source = ImageSource.from_layer(fake_layer(data, scale=(1, 2, 2)))
    assert source.axis == "C" and not source.is_stack and source.labels_shape == (40, 50)
    assert source.scale == (2.0, 2.0)
    assert (source.plane() == 10).all()
    assert (ImageSource.from_layer(fake_layer(data), channel=2).plane() == 30).all()
    time = ImageSource.from_layer(fake_layer(data), axis="T")
    assert time.is_stack and time.n_planes == 3
    with pytest.raises(ValueError, match="channel 5"):
        ImageSource.from_layer(fake_layer(data), axis="C", channel=5)


def test_4d_is_refused_with_a_message():
    with pytest.raises(ValueError, match="4 dimensions"):
        ImageSource.from_layer(fake_layer(np.zeros((2, 3, 16, 16))))


def test_sources_compare_by_array_identity():
    data = np.zeros((8, 8))
    a = ImageSource.from_layer(fake_layer(data))
    assert a == ImageSource.from_layer(fake_layer(data, scale=(2, 2)))  # geometry does not matter
    assert a != ImageSource.from_layer(fake_layer(data.copy()))


def test_points_and_boxes_on_a_plane():
    points = np.array([[2, 10, 20], [2.4, 30, 40], [3, 5, 5]])
    xy, labels = points_on_plane(points, np.array([True, False, True]), plane=2)
    np.testing.assert_array_equal(xy, [[20, 10], [40, 30]])
    np.testing.assert_array_equal(labels, [1, 0])
    xy2, _ = points_on_plane(points[:, 1:], np.ones(3, bool), plane=None)
    assert len(xy2) == 3
    rect = np.array([[2, 10, 20], [2, 10, 60], [2, 40, 60], [2, 40, 20]])
    other = rect + [1, 0, 0]
    assert [b.tolist() for b in boxes_on_plane([rect, other], plane=2)] == [[20, 10, 60, 40]]
    assert len(boxes_on_plane([rect[:, 1:]], plane=None)) == 1


def test_group_prompts_by_box():
    boxes = [np.array([0, 0, 10, 10], np.float32), np.array([20, 20, 30, 30], np.float32)]
    xy = np.array([[5, 5], [25, 25], [50, 50]], np.float32)
    objs = group_prompts(xy, np.array([1, 0, 1]), boxes)
    assert len(objs) == 2
    assert objs[0].points.tolist() == [[5, 5]]
    assert objs[1].points.tolist() == [[25, 25], [50, 50]]  # outside every box: goes with the last
    assert group_prompts(xy, np.array([1, 1, 0]), [])[0].labels.tolist() == [1, 1, 0]
    assert group_prompts(xy[:1], np.array([0]), []) == []  # only a negative point: nothing to segment


def test_commit_never_overwrites_unless_asked():
    target = np.zeros((10, 10), np.uint16)
    target[:5, :5] = 7
    objects = np.zeros((10, 10), np.uint8)
    objects[3:8, 3:8] = 1
    objects[0, 9] = 2
    indices, values, record = plan_commit(target, objects)
    assert record.ids == [8, 9]
    target[indices] = values
    assert (target[:5, :5] == 7).all() and (target[5:8, 5:8] == 8).all() and target[0, 9] == 9
    target[record.indices] = record.previous
    assert set(np.unique(target)) == {0, 7}
    indices, values, _ = plan_commit(target, objects, overwrite=True)
    target[indices] = values
    assert (target[3:8, 3:8] == 8).all()
    assert next_label_id(target) == 10


def test_commit_errors():
    target = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="no current object"):
        plan_commit(target, np.zeros((4, 4), np.uint8))
    target[:] = 3
    with pytest.raises(ValueError, match="overwrite"):
        plan_commit(target, np.ones((4, 4), np.uint8))
    target[:] = 0
    target[0, 0] = 255
    with pytest.raises(ValueError, match="uint8"):
        plan_commit(target, np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        plan_commit(target, np.ones((3, 4), np.uint8))


def test_session_with_orientations_embeds_each_and_averages(tmp_path, monkeypatch):
    """Orientations 4: one cached embedding per orientation, prompts answered by the averaging
    predictor (as the core one), segment everything on the plane as it is; tiled planes keep one."""
    from sam_plugins.models.configs import TINY, build_sam
    from sam_plugins.napari._layers import ObjectPrompts
    from sam_plugins.napari._session import EMBEDDING_DIR_ENV, AnnotatorSession, AutoParams
    from sam_plugins.orientations import OrientationAveragingPredictor

    monkeypatch.setenv(EMBEDDING_DIR_ENV, str(tmp_path))
    model = build_sam(TINY)
    image = (np.random.default_rng(2).random((120, 160)) * 1000).astype(np.uint16)
    session = AnnotatorSession(model, ImageSource.from_layer(fake_layer(image)), orientations=4)
    assert session.embedding_steps(0) == 4
    steps = []
    embeddings = session.compute_embedding(0, progress=lambda done, total: steps.append((done, total)))
    assert len(embeddings) == 4 and steps[-1] == (4, 4)
    assert len(list(tmp_path.glob("*.npz"))) == 4 and session.embedding_steps(0) == 0
    box = np.array([30.0, 20.0, 110.0, 90.0])
    mask, _ = session.segment(0, [ObjectPrompts(box=box)])
    core = OrientationAveragingPredictor(model, orientations=4)
    core.set_image(session.source.model_input(0))
    want = core.predict(box=box, multimask_output=False)[0][0]
    assert want.any() and ((mask > 0) != want).sum() == 0
    assert session.segment_everything(0, AutoParams(points_per_side=4))
    again = AnnotatorSession(model, ImageSource.from_layer(fake_layer(image.copy())), orientations=4)
    again.compute_embedding(0)
    assert again.cache.hits == 4
    big = AnnotatorSession(
        model, ImageSource.from_layer(fake_layer(np.zeros((300, 700), np.uint8))), orientations=8
    )
    assert big.tiling is not None and len(big.views) == 1 and big.requested_orientations == 8


def test_session_embeds_refines_and_rethresholds(tmp_path, monkeypatch):
    """The session with the tiny model: disk cache, logits reuse, tiling, automatic masks."""
    from sam_plugins.models.configs import TINY, build_sam
    from sam_plugins.napari._layers import ObjectPrompts
    from sam_plugins.napari._session import EMBEDDING_DIR_ENV, AnnotatorSession, AutoParams, tiling_for

    monkeypatch.setenv(EMBEDDING_DIR_ENV, str(tmp_path))
    model = build_sam(TINY)
    image = (np.random.default_rng(1).random((120, 160)) * 1000).astype(np.uint16)
    session = AnnotatorSession(model, ImageSource.from_layer(fake_layer(image)))
    assert session.tiling is None
    session.compute_embedding(0)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    obj = ObjectPrompts(np.array([[50, 40]], np.float32), np.array([1], np.int32))
    mask, scores = session.segment(0, [obj])
    assert mask.shape == (120, 160) and len(scores) == 1
    first_logits = session._logits[(0, 0)][0]
    calls = []
    original = session.predictor.predict
    session.predictor.predict = lambda **kw: calls.append(kw) or original(**kw)
    session.segment(0, [obj])
    assert calls[0]["mask_input"] is not None and calls[0]["mask_input"].shape == (1, *first_logits.shape)
    session.reset_refinement()
    session.segment(0, [obj])
    assert calls[1]["mask_input"] is None

    # a second session on the same pixels loads the embedding from disk instead of encoding
    again = AnnotatorSession(model, ImageSource.from_layer(fake_layer(image.copy())))
    again.compute_embedding(0)
    assert again.cache.hits == 1

    assert session.segment_everything(0, AutoParams(points_per_side=4))
    loose = session.threshold_everything(
        0, AutoParams(quality=-10, stability=0, min_area=0, points_per_side=4)
    )
    strict = session.threshold_everything(
        0, AutoParams(quality=10, stability=0, min_area=0, points_per_side=4)
    )
    assert loose.dtype == np.uint32 and loose.max() >= 1 and strict.max() == 0
    assert not session.segment_everything(0, AutoParams(points_per_side=4), cancel=lambda: True)

    assert tiling_for((1000, 800), 256) == ((192, 192), (32, 32))
    big = AnnotatorSession(model, ImageSource.from_layer(fake_layer(np.zeros((300, 700), np.uint8))))
    assert big.tiling is not None
    big.compute_embedding(0)
    tiled_mask, _ = big.segment(
        0, [ObjectPrompts(np.array([[650, 250]], np.float32), np.array([1], np.int32))]
    )
    assert tiled_mask.shape == (300, 700)


class TilesOnly:
    """A lazy stack (e.g. zarr on disk): tiles of one plane can be read (and a strided overview
    of at most a million pixels), never a whole plane."""

    def __init__(self, data, max_pixels):
        self._data, self.shape, self.dtype, self.max_pixels = data, data.shape, data.dtype, max_pixels
        self.largest = self.overviews = 0

    def __getitem__(self, key):
        region = self._data[key]
        pixels = region.shape[-2] * region.shape[-1] if region.ndim >= 2 else 0
        if any(isinstance(k, slice) and (k.step or 1) > 1 for k in key):  # the overview
            self.overviews += 1
            assert pixels <= 1_000_000, f"overview {region.shape}"
            return region
        if pixels == 0 or pixels > self.max_pixels:
            raise AssertionError(f"read {region.shape} at once")
        self.largest = max(self.largest, pixels)
        return region

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was loaded")


def test_session_encodes_a_large_lazy_plane_tile_by_tile():
    from sam_plugins.embeddings import EmbeddingCache
    from sam_plugins.models.configs import TINY, build_sam
    from sam_plugins.napari._session import AnnotatorSession
    from sam_plugins.tiling import EmbeddingCancelled, TiledEmbeddings

    rng = np.random.default_rng(0)
    planes = (rng.random((3, 1000, 1100)) * 4000).astype(np.uint16)
    data = TilesOnly(planes, max_pixels=256 * 256)  # one tiny-model input: tile 192 + 2 x 32 halo
    source = ImageSource.from_layer(fake_layer(data), axis="Z")
    assert source.is_lazy and source.is_stack and not ImageSource.from_layer(fake_layer(planes)).is_lazy
    session = AnnotatorSession(build_sam(TINY).eval(), source, cache=EmbeddingCache())  # memory only
    assert session.tiling == ((192, 192), (32, 32))
    assert session.embedding_steps(1) == 36
    seen = []
    embedding = session.compute_embedding(1, progress=lambda i, n: seen.append((i, n)))
    assert isinstance(embedding, TiledEmbeddings) and seen == [(i, 36) for i in range(1, 37)]
    assert data.largest == 256 * 256 and data.overviews == 1 and session.embedding_steps(1) == 0
    masks, scores, _ = session.activate(1).predict(
        point_coords=np.array([[250.0, 200.0]]), point_labels=np.array([1])
    )
    assert masks.shape[-2:] == (1000, 1100) and np.isfinite(scores).all()
    with pytest.raises(EmbeddingCancelled):
        session.compute_embedding(2, cancel=lambda: True)
    assert not session.has_embedding(2)
