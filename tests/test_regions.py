"""One object per prompt: `keep_prompted_region`, and the predictor setting a checkpoint recommends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import sam_plugins
from sam_plugins.models.checkpoints import read_checkpoint_meta, save_checkpoint
from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.regions import keep_prompted_region

EIGHT = np.ones((3, 3), dtype=bool)


def two_blobs() -> np.ndarray:
    """A 40x40 mask: a large square (left) and a small one (right) that do not touch."""
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:25, 2:20] = True  # 360 px
    mask[30:36, 30:36] = True  # 36 px
    return mask


def test_the_clicked_region_is_kept_even_when_it_is_the_smaller():
    mask = two_blobs()
    kept = keep_prompted_region(mask, np.array([[32.0, 33.0]]), np.array([1]))
    assert kept.sum() == 36 and kept[33, 32]
    assert not kept[10, 10]
    assert mask.sum() == 396  # the input is left as it was


def test_without_a_positive_point_inside_the_largest_region_is_kept():
    mask = two_blobs()
    for coords, labels in [
        (None, None),
        (np.array([[0.0, 39.0]]), np.array([1])),
        (np.array([[32.0, 33.0]]), np.array([0])),
    ]:
        kept = keep_prompted_region(mask, coords, labels)
        assert kept.sum() == 360 and kept[10, 10] and not kept[33, 32]


def test_every_region_under_a_positive_point_is_kept_and_stacks_keep_their_shape():
    mask = two_blobs()
    stack = np.stack([mask, mask, np.zeros_like(mask)])
    points = np.array([[32.0, 33.0], [10.0, 10.0], [30.0, 10.0]])
    kept = keep_prompted_region(stack, points, np.array([1, 1, 0]))
    assert kept.shape == (3, 40, 40)
    assert kept[0].sum() == kept[1].sum() == 396
    assert not kept[2].any()


def test_regions_touching_at_a_corner_are_one_region():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    mask[5:7, 5:7] = True  # touches the first square at one corner
    mask[8, 0] = True
    kept = keep_prompted_region(mask, np.array([[3.0, 3.0]]))
    assert kept.sum() == 13 and not kept[8, 0]


def test_points_use_sams_pixel_convention():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:4, 0:4] = True  # 16 px
    mask[0:2, 5:10] = True  # 10 px, x 5..9
    # x = 4.6 points at pixel 5 (SAM: integer coordinates are pixel centres)
    assert keep_prompted_region(mask, np.array([[4.6, 1.0]]))[:, 5:].sum() == 10


def test_a_box_cuts_the_mask_a_little_outside_it_before_the_region_is_chosen():
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 10:30] = True  # 40 rows x 20 columns, running 10 px below the box
    mask[10:40, 30:55] = True
    box = np.array([10.0, 10.0, 49.0, 39.0])  # x 10..49, y 10..39: 40 x 30 px
    kept = keep_prompted_region(mask, box=box)
    # grown by 5 % of its side: 2 px left/right (x 8..51), 1.5 px up/down (y 9..40)
    assert kept[40, 20] and not kept[41, 20]
    assert kept[20, 51] and not kept[20, 52]
    assert kept.sum() == 31 * 20 + 30 * 22  # x 8..51, y 9..40 of the two joined parts
    assert np.array_equal(keep_prompted_region(mask, box=box, box_margin=0.5), mask)
    # cutting first: what is left of a region outside the box no longer counts as the largest
    split = np.zeros((60, 60), dtype=bool)
    split[10:20, 10:20] = True  # 100 px inside the box
    split[25:59, 40:59] = True  # larger, but only a corner inside the box
    kept = keep_prompted_region(split, box=np.array([5.0, 5.0, 42.0, 27.0]))
    assert kept.sum() == 100


def test_bad_masks_are_refused_with_the_reason():
    with pytest.raises(TypeError, match="bool"):
        keep_prompted_region(np.ones((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        keep_prompted_region(np.ones((1, 2, 4, 4), dtype=bool))


def checkpoint(path, predictor_settings=None):
    torch.manual_seed(0)
    meta = {"step": 1}
    if predictor_settings is not None:
        meta["predictor_settings"] = predictor_settings
    return save_checkpoint(path, build_sam(TINY), meta)


def noisy_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def test_the_predictor_follows_the_checkpoint_and_the_argument_overrides_it(tmp_path):
    recommended = sam_plugins.load_model(
        checkpoint(tmp_path / "r.pt", {"keep_prompted_region": True}), device="cpu"
    )
    plain = sam_plugins.load_model(checkpoint(tmp_path / "p.pt"), device="cpu")
    assert recommended.predictor_settings == {"keep_prompted_region": True}
    assert plain.predictor_settings == {}
    image, click = noisy_image(), (np.array([[40.0, 30.0]]), np.array([1]))

    as_given = sam_plugins.SamPredictor(plain)
    assert not as_given.keep_prompted_region
    as_given.set_image(image)
    raw, raw_scores, _ = as_given.predict(*click)

    kept_predictor = sam_plugins.SamPredictor(recommended)
    assert kept_predictor.keep_prompted_region
    kept_predictor.set_image(image)
    kept, scores, _ = kept_predictor.predict(*click)
    np.testing.assert_array_equal(scores, raw_scores)  # same weights: only the masks are cleaned
    assert any(ndimage.label(m, EIGHT)[1] > 1 for m in raw)  # an untrained model's masks are ragged
    for before, after in zip(raw, kept, strict=True):
        assert ndimage.label(after, EIGHT)[1] <= 1
        assert not (after & ~before).any()  # nothing is added
        if before[30, 40]:
            assert after[30, 40]

    box = np.array([10.0, 10.0, 60.0, 50.0])
    box_mask = kept_predictor.predict(box=box, multimask_output=False)[0][0]
    assert ndimage.label(box_mask, EIGHT)[1] <= 1
    assert not box_mask[:, 63:].any() and not box_mask[53:].any()  # within the box grown by 5 %
    logits = kept_predictor.predict(box=box, multimask_output=False, return_logits=True)[0][0]
    np.testing.assert_array_equal(logits > 0, as_given.predict(box=box, multimask_output=False)[0][0])
    off = sam_plugins.SamPredictor(recommended, keep_prompted_region=False)
    off.set_image(image)
    np.testing.assert_array_equal(off.predict(*click)[0], raw)


def test_orientation_averaging_keeps_the_prompted_region_of_the_averaged_mask(tmp_path):
    model = sam_plugins.load_model(
        checkpoint(tmp_path / "r.pt", {"keep_prompted_region": True}), device="cpu"
    )
    predictor = sam_plugins.OrientationAveragingPredictor(model, orientations=2)
    assert predictor.keep_prompted_region and not predictor.predictors[0].keep_prompted_region
    predictor.set_image(noisy_image())
    masks, _, _ = predictor.predict(np.array([[40.0, 30.0]]), np.array([1]))
    assert all(ndimage.label(m, EIGHT)[1] <= 1 for m in masks)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"keep_prompted_region": "yes"}, "true or false"),
        ({"keep_largest": True}, "unknown predictor settings"),
    ],
)
def test_a_bad_recommendation_is_refused_naming_the_setting(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        sam_plugins.load_model(checkpoint(tmp_path / "bad.pt", settings), device="cpu")


def test_training_and_averaging_carry_the_recommendation(tmp_path):
    from sam_plugins.training.averaging import save_average

    source = checkpoint(tmp_path / "r.pt", {"keep_prompted_region": True})
    out = save_average([source, source], tmp_path / "avg.pt")
    assert read_checkpoint_meta(out)["predictor_settings"] == {"keep_prompted_region": True}
    assert sam_plugins.load_model(out, device="cpu").predictor_settings == {"keep_prompted_region": True}
