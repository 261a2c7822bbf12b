"""Automatic mask generator: parity with the official package, the initialize/filter split, utilities.

Parity tests give the official model *our* image encoder, so both generators see the same embedding
(encoder parity is tested with the model); everything downstream — decoder, upsampling, scores,
filters, NMS, RLE, crops, small-region cleanup — must then give identical records.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from skimage import data

from reference import (
    _connected_components_with_stats,
    import_segment_anything,
    install_cv2_stand_in,
    install_pycocotools_stand_in,
)
from sam_plugins.automatic import (
    AmgCancelled,
    SamAutomaticMaskGenerator,
    batched_nms,
    coco_decode_rle,
    coco_encode_rle,
    mask_to_rle_pytorch,
    masks_to_label_image,
    remove_small_regions,
    rle_to_mask,
)
from sam_plugins.automatic.rle import counts_to_string, string_to_counts
from sam_plugins.automatic.utils import batched_mask_to_box, generate_crop_boxes

IMAGE = np.ascontiguousarray(data.astronaut()[::3, ::2][:150, :200])


@pytest.fixture(scope="module")
def amg_pair(tiny_pair):
    official, ours = tiny_pair
    official = copy.deepcopy(official)
    official.image_encoder = ours.image_encoder
    install_cv2_stand_in()
    install_pycocotools_stand_in()
    return import_segment_anything(), official, ours


def assert_records_equal(ref: list[dict], got: list[dict]) -> None:
    assert len(ref) == len(got)
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert set(a) == set(b), i
        if isinstance(a["segmentation"], np.ndarray):
            assert b["segmentation"].dtype == bool and np.array_equal(a["segmentation"], b["segmentation"]), i
        else:
            assert a["segmentation"] == b["segmentation"], i
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert a[key] == b[key], (i, key, a[key], b[key])
        assert abs(a["predicted_iou"] - b["predicted_iou"]) <= 1e-4, i
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-4, nan_ok=True), i


PARITY_CASES = {
    "lowered_thresholds": dict(
        points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.3, stability_score_offset=0.05
    ),
    "no_nms_all_candidates": dict(
        points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ),
    "crop_layers": dict(
        points_per_side=6,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=0.95,
        crop_n_layers=1,
        crop_nms_thresh=0.95,
        crop_n_points_downscale_factor=2,
    ),
    "min_region_area": dict(
        points_per_side=8,
        pred_iou_thresh=0.25,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_mask_region_area=40,
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_amg_matches_official(amg_pair, case):
    sa, official, ours = amg_pair
    kwargs = dict(PARITY_CASES[case], output_mode="uncompressed_rle")
    ref = sa.SamAutomaticMaskGenerator(official, **kwargs).generate(IMAGE)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(IMAGE)
    # Random-weight masks all span the image, so with a box NMS below 1 a single mask survives.
    assert len(ref) >= (1 if PARITY_CASES[case].get("box_nms_thresh", 0.7) < 1 else 10)
    assert_records_equal(ref, got)


@pytest.mark.parametrize("mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_amg_output_modes_match_official(amg_pair, mode):
    sa, official, ours = amg_pair
    kwargs = dict(
        points_per_side=4,
        pred_iou_thresh=0.1,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        output_mode=mode,
    )
    ref = sa.SamAutomaticMaskGenerator(official, **kwargs).generate(IMAGE)
    got = SamAutomaticMaskGenerator(ours, **kwargs).generate(IMAGE)
    assert len(ref) > 3
    assert_records_equal(ref, got)
    if mode == "coco_rle":
        assert all(isinstance(r["segmentation"]["counts"], str) for r in got)


def test_defaults_match_official(amg_pair):
    sa, official, ours = amg_pair
    ref = sa.SamAutomaticMaskGenerator(official, points_per_side=4).generate(IMAGE)
    got = SamAutomaticMaskGenerator(ours, points_per_side=4).generate(IMAGE)
    assert_records_equal(ref, got)


def test_thresholds_change_without_running_the_model(tiny_pair, monkeypatch):
    _, ours = tiny_pair
    amg = SamAutomaticMaskGenerator(ours, points_per_side=6, output_mode="uncompressed_rle")
    steps = []
    state = amg.initialize(IMAGE, progress_callback=lambda d, t: steps.append((d, t)))
    assert steps[-1][0] == steps[-1][1] == 2  # one embedding + one batch of 36 points
    assert state.n_candidates == 36 * 3  # floors 0 and a single crop: every candidate is kept

    def boom(*args, **kwargs):
        raise AssertionError("the model must not run again")

    monkeypatch.setattr(ours.mask_decoder, "predict_tokens", boom)
    monkeypatch.setattr(ours.image_encoder, "forward", boom)
    settings = [
        dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
        dict(pred_iou_thresh=0.2, stability_score_thresh=0.0, box_nms_thresh=0.9),
        dict(pred_iou_thresh=0.2, stability_score_thresh=0.0, box_nms_thresh=1.0, min_mask_region_area=40),
    ]
    results = [amg.generate_from_state(state, **s) for s in settings]
    assert len(results[0]) > len(results[1]) >= 1
    monkeypatch.undo()
    for s, res in zip(settings, results, strict=True):
        direct = SamAutomaticMaskGenerator(ours, points_per_side=6, output_mode="uncompressed_rle", **s)
        assert_records_equal(direct.generate(IMAGE), res)


def test_floor_and_cancel(tiny_pair):
    _, ours = tiny_pair
    amg = SamAutomaticMaskGenerator(ours, points_per_side=4, points_per_batch=4)
    state = amg.initialize(IMAGE, pred_iou_floor=0.3)
    with pytest.raises(ValueError, match="below the floor"):
        amg.generate_from_state(state, pred_iou_thresh=0.1)
    event = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done == 2:
            event.set()

    with pytest.raises(AmgCancelled):
        amg.generate(IMAGE, progress_callback=progress, cancel=event)
    assert calls == [1, 2]


def test_argument_errors(tiny_pair):
    _, ours = tiny_pair
    with pytest.raises(ValueError, match="Exactly one"):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="png")


# ----------------------------------------------------------------------------- utilities


def test_rle_round_trip_and_official_encoding(amg_pair):
    sa, _, _ = amg_pair
    from segment_anything.utils import amg as official_amg

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand((6, 17, 23), generator=gen) > 0.5
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0] = True
    ours = mask_to_rle_pytorch(masks)
    assert ours == official_amg.mask_to_rle_pytorch(masks)
    for rle, m in zip(ours, masks, strict=True):
        assert np.array_equal(rle_to_mask(rle), m.numpy())
        coco = coco_encode_rle(rle)
        assert coco == official_amg.coco_encode_rle(rle)
        assert coco_decode_rle(coco) == rle


def test_coco_string_known_values():
    # Hand-derived from pycocotools' rleToString: 5 bits per char + 48, continuation bit 0x20,
    # sign bit 0x10, and a delta against counts[i-2] for i > 2.
    assert counts_to_string([1, 2, 3]) == "123"
    assert counts_to_string([5, 3, 2, 7]) == "5324"
    assert counts_to_string([100]) == "T3"
    assert counts_to_string([0, 10, 5, 2]) == "0:5H"
    for counts in ([0], [3, 1000000, 7, 2, 99999, 1], [0, 10, 5, 2, 40, 1]):
        assert string_to_counts(counts_to_string(counts)) == counts
    with pytest.raises(ValueError):
        string_to_counts("~~")


def test_nms_matches_reference():
    from reference import _batched_nms

    gen = torch.Generator().manual_seed(1)
    xy = torch.randint(0, 60, (300, 2), generator=gen)
    wh = torch.randint(0, 40, (300, 2), generator=gen)
    boxes = torch.cat([xy, xy + wh], 1).float()
    scores = torch.rand(300, generator=gen).round(decimals=1)  # ties exercise the stable sort
    for thr in (0.0, 0.3, 0.7, 1.0):
        assert torch.equal(
            batched_nms(boxes, scores, torch.zeros(300), thr),
            _batched_nms(boxes, scores, torch.zeros(300), thr),
        )


def test_remove_small_regions_matches_opencv_semantics():
    rng = np.random.default_rng(0)
    tie = np.zeros((9, 14), bool)
    tie[1, 9] = tie[0, 12] = tie[6, 1] = True  # equal-size islands: OpenCV's (block) label order decides
    for mask in [tie, tie.T] + [rng.random((40, 50)) > rng.uniform(0.3, 0.8) for _ in range(20)]:
        for mode in ("holes", "islands"):
            for area in (1, 3, 10, 5000):
                got, changed = remove_small_regions(mask, area, mode)
                ref, ref_changed = _official_remove_small_regions(mask, area, mode)
                assert changed == ref_changed and np.array_equal(got, ref)


def _official_remove_small_regions(mask, area_thresh, mode):
    """The official function body with the cv2 stand-in."""
    correct_holes = mode == "holes"
    working_mask = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = _connected_components_with_stats(working_mask, 8)
    sizes = stats[:, -1][1:]
    small_regions = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if len(small_regions) == 0:
        return mask, False
    fill_labels = [0] + small_regions
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if len(fill_labels) == 0:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def test_cv2_stand_in_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    if getattr(cv2, "_sam_plugins_stand_in", False):
        pytest.skip("real OpenCV not installed")
    for seed in range(30):
        rng = np.random.default_rng(seed)
        img = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) > rng.uniform(0.2, 0.9)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(img.astype(np.uint8), 8)
        n2, labels2, stats2, _ = _connected_components_with_stats(img.astype(np.uint8), 8)
        assert n == n2 and np.array_equal(labels, labels2) and np.array_equal(stats, stats2)


def test_mask_boxes_and_crops():
    masks = torch.zeros((3, 10, 12), dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True
    assert batched_mask_to_box(masks).tolist() == [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 0, 0]]
    boxes, layers = generate_crop_boxes((150, 200), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 200, 150] and layers == [0, 1, 1, 1, 1]
    assert boxes[1][:2] == [0, 0] and boxes[-1][2:] == [200, 150]


def test_label_image():
    big = np.zeros((20, 30), bool)
    big[2:18, 2:28] = True
    small = np.zeros((20, 30), bool)
    small[5:8, 5:8] = True
    labels = masks_to_label_image([small, big])
    assert labels.dtype == np.uint32
    assert labels[6, 6] == 1 and labels[10, 20] == 2 and labels[0, 0] == 0
    records = [{"segmentation": m, "area": int(m.sum())} for m in (small, big)]
    assert np.array_equal(masks_to_label_image(records), labels)
    rles = [{"segmentation": r} for r in mask_to_rle_pytorch(torch.from_numpy(np.stack([small, big])))]
    assert np.array_equal(masks_to_label_image(rles), labels)
    coco = [{"segmentation": coco_encode_rle(r["segmentation"])} for r in rles]
    assert np.array_equal(masks_to_label_image(coco), labels)
    assert masks_to_label_image([], shape=(4, 5)).shape == (4, 5)
    with pytest.raises(ValueError, match="shape"):
        masks_to_label_image([])
    with pytest.raises(ValueError, match="shape"):
        masks_to_label_image([small, big[:10]])
