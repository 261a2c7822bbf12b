"""prepare_image: microscopy arrays -> (H, W, 3) uint8 RGB with the documented rule."""

from __future__ import annotations

import numpy as np
import pytest

from sam_plugins.images import normalize_percentile, prepare_image


def test_uint8_rgb_is_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    out = prepare_image(img)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_grayscale_and_rgba():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = prepare_image(gray)
    assert out.shape == (4, 5, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))
    rgba = np.dstack([gray, gray + 1, gray + 2, np.full_like(gray, 7)])
    assert np.array_equal(prepare_image(rgba), rgba[..., :3])
    assert np.array_equal(prepare_image(rgba, channel=1)[..., 0], gray + 1)
    assert np.array_equal(prepare_image(gray[..., None]), out)


def test_sixteen_bit_percentile_normalisation():
    rng = np.random.default_rng(1)
    img = rng.integers(1000, 5000, (40, 50)).astype(np.uint16)
    img[0, 0] = 65535  # a hot pixel must not squash the contrast
    out = prepare_image(img)
    lo, hi = np.percentile(img.astype(np.float64), [1.0, 99.8])
    expected = np.rint(np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected)
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0
    assert np.median(out) > 60  # contrast kept despite the outlier


def test_float_bool_and_constant():
    f = np.linspace(-1.0, 1.0, 100).reshape(10, 10)
    out = prepare_image(f)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    b = np.eye(4, dtype=bool)
    assert np.array_equal(prepare_image(b)[..., 0], b * 255)
    assert not prepare_image(np.full((5, 5), 3.5)).any()
    assert np.array_equal(normalize_percentile(np.array([0.0, 1.0]), (0, 100)), [0, 255])


def test_multichannel_layouts():
    rng = np.random.default_rng(2)
    stack = rng.random((5, 30, 40)).astype(np.float32)  # channels first
    out = prepare_image(stack, channel=2)
    assert out.shape == (30, 40, 3)
    assert np.array_equal(out[..., 0], normalize_percentile(stack[2]))
    last = np.moveaxis(stack, 0, -1)
    assert np.array_equal(prepare_image(last, channel=2), out)
    assert np.array_equal(prepare_image(last, channel=2, channel_axis=-1), out)
    with pytest.raises(ValueError, match="channel="):
        prepare_image(stack)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_image(stack, channel=9)
    with pytest.raises(ValueError, match="channel_axis"):
        prepare_image(rng.random((40, 50, 60)))


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((3, 4, 5, 6)), ValueError, "dims"),
        (np.zeros(7), ValueError, "dims"),
        (np.zeros((0, 5)), ValueError, "empty"),
        (np.array([[1.0, np.inf]]), ValueError, "NaN or infinite"),
        (np.array([[1.0, np.nan]]), ValueError, "NaN or infinite"),
        (np.zeros((3, 3), dtype=complex), TypeError, "dtype"),
        (np.array([["a", "b"]]), TypeError, "dtype"),
        ("not an image", TypeError, "numpy array"),
    ],
)
def test_errors(image, error, match):
    with pytest.raises(error, match=match):
        prepare_image(image)


def test_channel_on_2d_image_is_an_error():
    with pytest.raises(ValueError, match="2-D"):
        prepare_image(np.zeros((4, 4)), channel=0)
