"""SamPredictor: parity with the official predictor (same random weights) and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from reference import import_segment_anything
from sam_plugins.images import prepare_image
from sam_plugins.predictor import ResizeLongestSide, SamPredictor

NATURAL = np.ascontiguousarray(data.astronaut()[::3, ::2][:150, :200])
# A 16-bit microscopy-like image: a natural image scaled into 12 bits with an offset, plus noise.
_rng = np.random.default_rng(0)
SIXTEEN_BIT = (
    data.camera()[::4, ::3][:120, :170].astype(np.uint16) * 13 + 900 + _rng.integers(0, 40, (120, 170))
).astype(np.uint16)

PROMPTS = {
    "point": dict(point_coords=np.array([[60.0, 70.0]]), point_labels=np.array([1])),
    "points_fg_bg": dict(point_coords=np.array([[60.0, 70.0], [120.0, 20.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([30.0, 20.0, 140.0, 110.0]), multimask_output=False),
    "box_and_points": dict(
        point_coords=np.array([[60.0, 70.0]]),
        point_labels=np.array([0]),
        box=np.array([30.0, 20.0, 140.0, 110.0]),
    ),
}


@pytest.fixture(scope="module")
def predictors(tiny_pair):
    sa = import_segment_anything()
    official, ours = tiny_pair
    return sa.SamPredictor(official), SamPredictor(ours)


def assert_outputs_close(ref, got, atol=1e-4):
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= atol


@pytest.mark.parametrize("image_name", ["natural", "sixteen_bit"])
def test_predict_matches_official(predictors, image_name):
    official, ours = predictors
    image = prepare_image(SIXTEEN_BIT) if image_name == "sixteen_bit" else NATURAL
    official.set_image(image)
    ours.set_image(SIXTEEN_BIT if image_name == "sixteen_bit" else NATURAL)
    assert ours.original_size == official.original_size and ours.input_size == official.input_size
    assert torch.allclose(ours.get_image_embedding(), official.get_image_embedding(), atol=1e-4)
    for kwargs in PROMPTS.values():
        ref = official.predict(**kwargs, return_logits=True)
        got = ours.predict(**kwargs, return_logits=True)
        assert_outputs_close(ref, got)
        masks_ref = official.predict(**kwargs)[0]
        masks = ours.predict(**kwargs)[0]
        assert masks.dtype == bool
        ambiguous = np.abs(ref[0]) < 1e-4
        assert np.array_equal(masks[~ambiguous], masks_ref[~ambiguous])
    # Mask input: feed back the best low-res logits of a previous prediction.
    _, scores, low = official.predict(**PROMPTS["point"])
    mask_input = low[np.argmax(scores)][None]
    kwargs = dict(PROMPTS["points_fg_bg"], mask_input=mask_input, multimask_output=False, return_logits=True)
    assert_outputs_close(official.predict(**kwargs), ours.predict(**kwargs))


def test_predict_torch_batched_boxes(predictors):
    official, ours = predictors
    official.set_image(NATURAL)
    ours.set_image(NATURAL)
    boxes = torch.tensor(
        [[10, 10, 80, 90], [50, 30, 190, 140], [0, 0, 199, 149], [100, 60, 120, 80], [5, 100, 60, 149]],
        dtype=torch.float,
    )
    tb_ref = official.transform.apply_boxes_torch(boxes, NATURAL.shape[:2])
    tb = ours.transform.apply_boxes_torch(boxes, NATURAL.shape[:2])
    assert torch.equal(tb, tb_ref)
    for multimask in (False, True):
        ref = official.predict_torch(None, None, boxes=tb_ref, multimask_output=multimask, return_logits=True)
        got = ours.predict_torch(None, None, boxes=tb, multimask_output=multimask, return_logits=True)
        for a, b in zip(ref, got, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def test_repeated_prompts_are_identical_and_follow_the_image(predictors):
    official, ours = predictors
    ours.set_image(NATURAL)
    first = ours.predict(**PROMPTS["point"], return_logits=True)
    again = ours.predict(**PROMPTS["point"], return_logits=True)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    other = np.ascontiguousarray(NATURAL[::-1])
    ours.set_image(other)
    official.set_image(other)
    assert_outputs_close(
        official.predict(**PROMPTS["point"], return_logits=True),
        ours.predict(**PROMPTS["point"], return_logits=True),
    )


def test_resize_is_the_official_one(predictors):
    sa = import_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    for shape in [(150, 200, 3), (37, 300, 3), (600, 90, 3)]:
        img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(ResizeLongestSide(256).apply_image(img), Official(256).apply_image(img))
        coords = np.array([[3.5, 7.25], [shape[1], shape[0]]])
        assert np.array_equal(
            ResizeLongestSide(256).apply_coords(coords, shape[:2]),
            Official(256).apply_coords(coords, shape[:2]),
        )
    del sa


def test_bgr_and_state(predictors):
    _, ours = predictors
    ours.reset_image()
    assert not ours.is_image_set and ours.features is None
    with pytest.raises(RuntimeError, match="set_image"):
        ours.predict(**PROMPTS["point"])
    with pytest.raises(RuntimeError, match="set_image"):
        ours.get_image_embedding()
    ours.set_image(NATURAL[..., ::-1], image_format="BGR")
    bgr = ours.get_image_embedding().clone()
    ours.set_image(NATURAL)
    assert torch.equal(bgr, ours.get_image_embedding())
    assert ours.device == torch.device("cpu")
    assert ours.get_image_embedding().shape == (1, 64, 16, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels"),
        (
            dict(point_coords=np.array([[10.0, 10.0], [5.0, 5.0]]), point_labels=np.array([1])),
            "one label",
        ),
        (dict(point_coords=np.array([[250.0, 10.0]]), point_labels=np.array([1])), "outside the image"),
        (dict(point_coords=np.array([[-1.0, 10.0]]), point_labels=np.array([1])), "outside the image"),
        (dict(point_coords=np.array([[10.0, np.nan]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([10.0, 10.0, 3.0]), point_labels=np.array([1])), r"shape \(N, 2\)"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([7])), "foreground"),
        (dict(box=np.array([50.0, 50.0, 10.0, 60.0])), "x0 <= x1"),
        (dict(box=np.array([0.0, 0.0, 10.0, 400.0])), "outside the image"),
        (dict(box=np.array([0.0, 0.0, 10.0])), "4 numbers"),
        (dict(box=np.array([0.0, 0.0, 10.0, 10.0]), mask_input=np.zeros((1, 32, 32))), "mask_input"),
    ],
)
def test_prompt_errors(predictors, kwargs, match):
    _, ours = predictors
    ours.set_image(NATURAL)
    with pytest.raises(ValueError, match=match):
        ours.predict(**kwargs)


def test_image_errors(predictors):
    _, ours = predictors
    with pytest.raises(ValueError, match="NaN"):
        ours.set_image(np.full((20, 20), np.nan))
    with pytest.raises(ValueError, match="empty"):
        ours.set_image(np.zeros((0, 20), np.uint8))
    with pytest.raises(ValueError, match="dims"):
        ours.set_image(np.zeros((2, 20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        ours.set_image(NATURAL, image_format="HSV")
    with pytest.raises(ValueError, match="long side"):
        ours.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))
    with pytest.raises(ValueError, match="batch sizes"):
        ours.set_image(NATURAL)
        ours.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
