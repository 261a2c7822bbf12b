"""3-D / time propagation (`sam_plugins.volumes`) on generated stacks.

Most tests drive the algorithm with an *oracle* predictor that answers every prompt with the
true object under it, so they check the walking, prompting and stopping logic exactly. The last
tests run the real predictor: the tiny random model for wiring, the embedded model for quality.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import propagation_quality, requires_embedded_model
from sam_plugins.volumes import (
    PlaneStep,
    StopCriteria,
    iter_propagate,
    mask_iou,
    object_contrast,
    prompts_from_mask,
    propagate,
)


def ellipsoid_volume(
    shape: tuple[int, int, int] = (20, 48, 48), objects: tuple[tuple, ...] = ((10, 24, 24, 5, 10, 10),)
) -> np.ndarray:
    """A label volume with one ellipsoid per (zc, yc, xc, rz, ry, rx), ids 1, 2, ..."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint32)
    for i, (zc, yc, xc, rz, ry, rx) in enumerate(objects, start=1):
        inside = ((z - zc) / rz) ** 2 + ((y - yc) / ry) ** 2 + ((x - xc) / rx) ** 2 <= 1.0
        labels[inside & (labels == 0)] = i
    return labels


class OraclePredictor:
    """Answers a prompt on plane z with the true object under the point (else the box's main object)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.z = 0
        self.calls: list[dict] = []

    def at(self, z: int) -> OraclePredictor:
        self.z = z
        return self

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        self.calls.append(
            {
                "z": self.z,
                "points": point_coords,
                "box": box,
                "mask_input": mask_input,
                "multimask": multimask_output,
            }
        )
        plane = self.labels[self.z]
        label = 0
        if point_coords is not None:
            x, y = np.round(point_coords[0]).astype(int)
            label = int(plane[y, x])
        if label == 0 and box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            ids, counts = np.unique(plane[y0 : y1 + 1, x0 : x1 + 1], return_counts=True)
            counts[ids == 0] = 0
            label = int(ids[np.argmax(counts)]) if counts.max() > 0 else 0
        mask = (plane == label) & (label > 0)
        n = 3 if multimask_output else 1
        return np.repeat(mask[None], n, 0), np.linspace(0.9, 0.8, n), np.zeros((n, 64, 64), np.float32)


def test_propagates_both_ways_until_the_object_ends():
    labels = ellipsoid_volume()
    oracle = OraclePredictor(labels)
    result = propagate(
        oracle.at, labels, 10, labels[10] == 1, stop=StopCriteria(0, min_area=1, max_area_change=0)
    )
    true_slices = sorted(set(np.nonzero(labels == 1)[0].tolist()))
    assert result.slices == true_slices == list(range(5, 16))
    assert mask_iou(result.mask, labels == 1) == 1.0
    assert result.stop_reasons == {"down": "empty mask", "up": "empty mask"}
    # the default criteria drop the thin tips (one pixel, then a sudden shrink) and keep the body
    default = propagate(oracle.at, labels, 10, labels[10] == 1)
    assert default.slices == list(range(6, 15))
    assert set(default.stop_reasons) == {"up", "down"}
    assert result.to_labels(7).max() == 7 and result.to_labels(7).dtype == np.uint32
    assert not result.cancelled


def test_respects_the_slice_range_and_direction():
    labels = ellipsoid_volume()
    oracle = OraclePredictor(labels)
    result = propagate(oracle.at, labels, 10, labels[10] == 1, slice_range=(8, 12))
    assert result.slices == [8, 9, 10, 11, 12]
    assert result.stop_reasons == {"down": "end of slice range", "up": "end of slice range"}
    assert {c["z"] for c in oracle.calls} == {8, 9, 11, 12}  # never reads planes outside the range
    up = propagate(oracle.at, labels, 10, labels[10] == 1, direction="up")
    assert up.slices == [10, 11, 12, 13, 14]


def test_stops_on_low_iou_when_another_object_follows():
    # Object 1 ends at plane 8; object 2, shifted sideways, starts at plane 9 under the box.
    yy, xx = np.mgrid[:48, :48]
    labels = np.zeros((16, 48, 48), np.uint32)
    labels[2:9][:, np.hypot(yy - 20, xx - 20) <= 8] = 1  # cylinders: flat ends
    labels[9:15][:, np.hypot(yy - 27, xx - 27) <= 8] = 2
    assert (labels[9] == 2).any() and not (labels[9] == 1).any()
    oracle = OraclePredictor(labels)
    result = propagate(
        oracle.at, labels, 5, labels[5] == 1, prompt="box", stop=StopCriteria(iou_threshold=0.5)
    )
    assert result.slices == [2, 3, 4, 5, 6, 7, 8]
    assert result.stop_reasons["up"].startswith("IoU")
    assert not result.mask[9:].any()
    # with the IoU check off, the walk jumps onto object 2
    loose = propagate(
        oracle.at,
        labels,
        5,
        labels[5] == 1,
        prompt="box",
        stop=StopCriteria(iou_threshold=0, max_area_change=0),
    )
    assert loose.mask[10].any()


def test_area_change_stops_propagation():
    stop = StopCriteria(iou_threshold=0, max_area_change=2.0)
    small = np.zeros((20, 20), bool)
    small[5:10, 5:10] = True
    big = np.zeros((20, 20), bool)
    big[2:18, 2:18] = True
    assert stop.check(small, big, 1.0).startswith("area changed")
    assert stop.check(small, small, 1.0) is None
    assert StopCriteria(min_score=0.5).check(small, small, 0.3).startswith("score")
    assert StopCriteria(min_area=30).check(small, small, 1.0).startswith("area 25")


def test_object_contrast_hand_computed():
    plane = np.full((20, 20), 2.0)
    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    plane[mask] = 10.0
    plane[0, 0] = 1000.0  # far outside the 2-5 px ring: ignored
    assert object_contrast(plane, mask) == pytest.approx(8.0)
    assert object_contrast(np.stack([plane, plane * 3], -1), mask) == pytest.approx(16.0)  # channel mean
    assert object_contrast(plane, np.zeros_like(mask)) == 0.0


def test_stops_where_the_object_fades_although_the_masks_go_on():
    """Past a nucleus' end SAM keeps segmenting its out-of-focus glow (same place, same size), so
    only the fading contrast shows that the object has ended."""
    column = ellipsoid_volume((20, 48, 48), ((10, 24, 24, 100, 8, 8),))  # the same disk on every plane
    oracle = OraclePredictor(column)
    brightness = np.array([150.0] * 4 + [300.0, 600.0] + [1000.0] * 9 + [300.0, 150.0] + [120.0] * 3)
    image = np.where(column > 0, brightness[:, None, None], 100.0).astype(np.uint16)
    result = propagate(oracle.at, image, 10, column[10] > 0)
    assert np.nonzero(result.mask.any(axis=(1, 2)))[0].tolist() == list(range(5, 15))
    assert result.stop_reasons["up"].startswith("contrast 0.22")
    assert result.stop_reasons["down"].startswith("contrast 0.22")
    loose = propagate(oracle.at, image, 10, column[10] > 0, stop=StopCriteria(min_contrast=0))
    assert loose.mask.any(axis=(1, 2)).all()
    dark = np.where(column > 0, 20, 100).astype(np.uint16)  # not brighter than its surroundings
    assert propagate(oracle.at, dark, 10, column[10] > 0).mask.any(axis=(1, 2)).all()


def test_prompts_describe_the_mask():
    ring = np.zeros((40, 40), bool)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    ring[(r > 8) & (r < 14) & (xx < 26)] = True  # a thick C shape: its centroid is outside it
    p = prompts_from_mask(ring)
    x, y = p["point_coords"][0].astype(int)
    assert ring[y, x]
    x0, y0, x1, y1 = p["box"]
    ys, xs = np.nonzero(ring)
    assert x0 <= xs.min() and y0 <= ys.min() and x1 >= xs.max() and y1 >= ys.max()
    assert prompts_from_mask(ring, "box")["point_coords"] is None
    assert prompts_from_mask(ring, "point")["box"] is None
    with pytest.raises(ValueError):
        prompts_from_mask(np.zeros((5, 5), bool))


def test_logits_are_fed_back_only_when_asked():
    labels = ellipsoid_volume()
    oracle = OraclePredictor(labels)
    propagate(oracle.at, labels, 10, labels[10] == 1, direction="up")
    assert all(c["mask_input"] is None for c in oracle.calls)
    oracle.calls.clear()
    propagate(oracle.at, labels, 10, labels[10] == 1, direction="up", use_logits=True)
    assert oracle.calls[0]["mask_input"] is None  # nothing to feed on the first step
    assert all(c["mask_input"].shape == (1, 64, 64) for c in oracle.calls[1:])


def test_progress_cancel_and_streaming():
    labels = ellipsoid_volume()
    oracle = OraclePredictor(labels)
    ticks: list[tuple[int, int]] = []
    propagate(oracle.at, labels, 10, labels[10] == 1, progress=lambda d, t: ticks.append((d, t)))
    assert ticks[0] == (1, 20) and all(a[0] <= b[0] for a, b in zip(ticks, ticks[1:], strict=False))

    cancel = threading.Event()
    steps: list[PlaneStep] = []
    for step in iter_propagate(oracle.at, labels, 10, labels[10] == 1, cancel=cancel):
        steps.append(step)
        if step.index == 9:
            cancel.set()
    assert [s.index for s in steps] == [10, 9]
    result = propagate(oracle.at, labels, 10, labels[10] == 1, cancel=lambda: True)
    assert result.cancelled and result.slices == [10]


def test_bad_inputs_raise_clear_errors():
    labels = ellipsoid_volume()
    oracle = OraclePredictor(labels)
    with pytest.raises(ValueError, match="empty"):
        propagate(oracle.at, labels, 10, np.zeros(labels.shape[1:], bool))
    with pytest.raises(ValueError, match="outside"):
        propagate(oracle.at, labels, 2, labels[10] == 1, slice_range=(5, 15))
    with pytest.raises(TypeError):
        propagate(object(), labels, 10, labels[10] == 1)


def test_real_predictor_reads_one_plane_at_a_time():
    """The tiny random model through `set_image`: each visited plane is read and encoded once."""
    dask_array = pytest.importorskip("dask.array")
    from sam_plugins import SamPredictor
    from sam_plugins.models.configs import TINY, build_sam

    labels = ellipsoid_volume((6, 40, 40), ((3, 20, 20, 3, 10, 10),))
    volume = dask_array.from_array((labels > 0).astype(np.float32) * 200 + 20, chunks=(1, 40, 40))
    predictor = SamPredictor(build_sam(TINY))
    seen: list[tuple] = []
    original = predictor.set_image

    def set_image(image, *args, **kwargs):
        seen.append(image.shape)
        return original(image, *args, **kwargs)

    predictor.set_image = set_image
    loose = StopCriteria(iou_threshold=0, min_area=0, max_area_change=0)
    steps = list(iter_propagate(predictor, volume, 3, labels[3] > 0, stop=loose, slice_range=(1, 5)))
    visited = [s.index for s in steps if s.direction != "start"]
    assert len(seen) == len(set(visited)) >= 1
    assert all(shape == (40, 40, 3) for shape in seen)
    assert all(s.mask is None or s.mask.shape == (40, 40) for s in steps)


@requires_embedded_model
def test_embedded_model_follows_a_nucleus_through_the_stack():
    """Quality with the embedded default model on the generated 3-D nuclei sample."""
    from sam_plugins import SamPredictor, load_model
    from sam_plugins.sample_data import nuclei_3d

    image, labels = nuclei_3d()
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    target = int(ids[np.argmax(counts)])
    obj = labels == target
    zs = np.nonzero(obj.any(axis=(1, 2)))[0]
    start = int(zs[len(zs) // 2])
    predictor = SamPredictor(load_model())
    result = propagate(predictor, image, start, obj[start])
    covered, central_iou, overshoot = propagation_quality(result.mask, obj)
    assert covered >= 0.8 and central_iou >= 0.8 and overshoot <= 2, (covered, central_iou, overshoot)
