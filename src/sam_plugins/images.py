"""Microscopy image -> SAM model input.

SAM expects an RGB ``uint8`` image of shape (H, W, 3). :func:`prepare_image` converts what
microscopes produce into that, with one documented rule:

* **Layout.** 2-D arrays are grayscale. 3-D arrays have one channel axis: the axis given as
  ``channel_axis``, else the last axis if it has 3 or 4 entries or is the smallest axis with at most
  16 entries, else the first axis if it is the smallest with at most 16 entries. One channel ->
  grayscale; 3 -> RGB; 4 -> RGBA (alpha dropped); any other count needs ``channel=`` to pick one
  channel. ``channel=`` can also pick a single channel of an RGB(A) image. Grayscale is repeated
  into the three RGB channels.
* **Intensities.** ``uint8`` data is used unchanged (so RGB ``uint8`` images give exactly the
  official SAM result). ``bool`` becomes 0/255. Every other dtype (uint16, int, float) is mapped
  with a robust percentile normalisation: ``lo, hi`` = the ``percentiles`` (default 1 % and
  99.8 %) of all values of the selected channel(s), then ``round(clip((x - lo) / (hi - lo), 0, 1) *
  255)``. If ``hi == lo`` the minimum and maximum are used instead; a constant image becomes 0.
  Non-finite values (NaN, inf) are rejected. ``value_range=(lo, hi)`` gives ``lo, hi`` directly
  (e.g. estimated once for a large image that is converted tile by tile).
"""

from __future__ import annotations

import numpy as np

__all__ = ["prepare_image", "normalize_percentile", "intensity_range", "DEFAULT_PERCENTILES"]

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.8)
_MAX_CHANNELS = 16


def _channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> int:
    if channel_axis is not None:
        if not -3 <= channel_axis <= 2:
            raise ValueError(f"channel_axis={channel_axis} is out of range for a 3-D image of shape {shape}.")
        return channel_axis % 3
    last, first = shape[-1], shape[0]
    if last in (3, 4) or (last <= _MAX_CHANNELS and last <= min(shape[:2])):
        return 2
    if first <= _MAX_CHANNELS and first <= min(shape[1:]):
        return 0
    raise ValueError(
        f"Cannot tell which axis of the image of shape {shape} holds the channels; "
        "pass channel_axis= (e.g. channel_axis=0 for channels-first data)."
    )


def intensity_range(
    data: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """The ``lo, hi`` of the robust percentile rule for ``data`` (min/max if the percentiles tie)."""
    lo_p, hi_p = percentiles
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
    values = data.astype(np.float64, copy=False)
    lo, hi = np.percentile(values, [lo_p, hi_p])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi)


def normalize_percentile(
    data: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map any real-valued array to ``uint8`` with the robust percentile rule (see module doc);
    ``value_range=(lo, hi)`` skips the percentiles."""
    values = data.astype(np.float64, copy=False)
    lo, hi = intensity_range(values, percentiles) if value_range is None else map(float, value_range)
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def prepare_image(
    image: np.ndarray,
    channel: int | None = None,
    channel_axis: int | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Convert a 2-D microscopy image (gray, RGB/RGBA or multichannel) to (H, W, 3) ``uint8`` RGB.

    ``channel`` picks one channel of a multichannel image; ``channel_axis`` says where the channels
    are when the layout is ambiguous. ``value_range=(lo, hi)`` replaces the percentiles of this
    image (non-uint8 data). See the module docstring for the exact rule.
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "__array__"):
            image = np.asarray(image)
        else:
            raise TypeError(f"Expected a numpy array image, got {type(image).__name__}.")
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"Unsupported image dtype {image.dtype}: use bool, integer or float pixel values "
            "(complex, object and string arrays cannot be segmented)."
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"Expected a 2-D image (H, W) or (H, W, C), got shape {image.shape} with {image.ndim} dims. "
            "For volumes or time series pass one plane at a time, e.g. image[z]."
        )
    if image.size == 0 or min(image.shape) == 0:
        raise ValueError(f"The image is empty (shape {image.shape}); it needs at least one pixel.")

    if image.ndim == 3:
        axis = _channel_axis(image.shape, channel_axis)
        image = np.moveaxis(image, axis, -1)
        n_channels = image.shape[-1]
        if channel is not None:
            if not -n_channels <= channel < n_channels:
                raise ValueError(f"channel={channel} does not exist: the image has {n_channels} channels.")
            image = image[..., channel]
        elif n_channels == 1:
            image = image[..., 0]
        elif n_channels == 4:
            image = image[..., :3]
        elif n_channels != 3:
            raise ValueError(
                f"The image has {n_channels} channels (shape {image.shape}); "
                "pick one with channel=<index> (SAM takes gray or RGB)."
            )
    elif channel is not None:
        raise ValueError("channel= was given but the image is 2-D (a single channel).")
    if min(image.shape[:2]) == 0:
        raise ValueError(f"The image is empty (spatial shape {image.shape[:2]}).")

    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError(
            "The image contains NaN or infinite values; replace them first, e.g. np.nan_to_num(image)."
        )
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.bool_:
        out = image.astype(np.uint8) * 255
    else:
        out = normalize_percentile(image, percentiles, value_range)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out)
