"""Training data: image preparation, augmentation, and a folder dataset for fine-tuning.

A source of training pairs is anything indexable with `len()` whose items are a
`SyntheticSample`-like object (attributes `image`, `labels`), a dict with those keys, or an
`(image, labels)` tuple: image (H, W) or (H, W, C) of any numeric dtype, labels (H, W) integer
instance ids (0 = background).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..tiling import tiling_for

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_NAME_SUFFIXES = ("", "_labels", "_label", "_masks", "_mask", "_seg", "_instances", "_gt")


def _prepare_image_local(image: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Gray or multichannel image -> (H, W, 3) uint8 RGB with 0.5/99.5 percentile normalisation."""
    image = np.asarray(image)
    if image.ndim == 3 and channel is not None:
        image = image[..., channel]
    if image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return image
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    data = image.astype(np.float32)
    lo, hi = np.percentile(data, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    data = np.clip((data - lo) / (hi - lo), 0, 1) * 255
    out = np.round(data).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    elif out.shape[-1] != 3:
        raise ValueError(f"cannot make an RGB image from shape {image.shape}; pass channel=")
    return out


try:  # the shared inference helper, so training sees exactly what inference sees
    from ..images import prepare_image  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on which parts of the package are present
    prepare_image = _prepare_image_local


def as_pair(item: Any) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) from a SyntheticSample-like object, a dict or a tuple."""
    if isinstance(item, dict):
        return np.asarray(item["image"]), np.asarray(item["labels"])
    if hasattr(item, "image") and hasattr(item, "labels"):
        return np.asarray(item.image), np.asarray(item.labels)
    image, labels = item[0], item[1]
    return np.asarray(image), np.asarray(labels)


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate an instance label image and return it as int32; clear errors for wrong input."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: labels must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype == bool:
        raise ValueError(f"{name}: labels are boolean (a semantic mask); instance ids are needed")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError(
                f"{name}: labels have dtype {labels.dtype} with fractional values; "
                "instance labels must be integers (0 = background)"
            )
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must have an integer dtype, got {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"{name}: labels contain negative ids")
    if labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name}: label ids exceed int32")
    return labels.astype(np.int32)


@dataclass
class AugmentConfig:
    """Random augmentations applied to each training crop."""

    flip: bool = True
    rot90: bool = True
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1  # additive, fraction of 255
    noise_std: float = 0.03  # max Gaussian noise std, fraction of 255
    invert_prob: float = 0.0


@dataclass
class TrainExample:
    """One prepared training image with the objects to prompt."""

    image: torch.Tensor  # (3, S, S) float32 in [0, 255]
    masks: np.ndarray  # (K, S, S) bool, the chosen objects
    labels: np.ndarray | None = None  # (S, S) all instance ids (for the dense auxiliary loss)


def _load_image_file(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _split_slices(image: np.ndarray, labels: np.ndarray, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Turn one file pair into 2-D (image, labels) pairs: 3-D stacks become slices."""
    if labels.ndim == 3 and labels.shape[-1] in (3, 4) and image.shape[:2] == labels.shape[:2]:
        raise ValueError(
            f"{name}: label image is RGB(A), shape {labels.shape}; instance labels must be "
            "single-channel integer ids"
        )
    if labels.ndim == 2:
        if image.shape == labels.shape:
            return [(image, labels)]
        if image.ndim == 3 and image.shape[:2] == labels.shape and image.shape[2] <= 4:
            return [(image, labels)]
        if image.ndim == 3 and image.shape[1:] == labels.shape and image.shape[0] <= 4:
            return [(np.moveaxis(image, 0, -1), labels)]
    elif labels.ndim == 3 and image.shape[:3] == labels.shape:
        return [(image[z], labels[z]) for z in range(labels.shape[0])]
    raise ValueError(f"{name}: image shape {image.shape} does not match label shape {labels.shape}")


def _match_labels(images_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    labels = sorted(p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    by_stem: dict[str, Path] = {}
    for p in labels:
        by_stem.setdefault(p.stem, p)
    pairs, missing = [], []
    for img in images:
        match = next((by_stem[img.stem + s] for s in LABEL_NAME_SUFFIXES if img.stem + s in by_stem), None)
        if match is None:
            missing.append(img.name)
        else:
            pairs.append((img, match))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"no label image in {labels_dir} for {len(missing)} image(s): {shown} "
            "(expected the same name, optionally with "
            f"one of the suffixes {', '.join(s for s in LABEL_NAME_SUFFIXES if s)})"
        )
    return pairs


def object_slices(
    image: np.ndarray, labels: np.ndarray, name: str
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The 2-D (image, labels, name) training pairs of one image and its instance labels: a 3-D
    stack becomes its slices, slices without objects are skipped; errors name ``name``."""
    slices = _split_slices(np.asarray(image), np.asarray(labels), name)
    out = []
    for z, (im, lab) in enumerate(slices):
        lab = check_labels(lab, name)
        if lab.max() > 0:
            out.append((im, lab, name if len(slices) == 1 else f"{name} [slice {z}]"))
    if not out:
        raise ValueError(f"{name}: the label image has no objects (all zero)")
    return out


class PairsDataset(Sequence):
    """Validated 2-D (image, instance labels) pairs from any Python sequence of pairs.

    Items may be ``(image, labels)`` tuples, dicts with those keys or objects with those attributes
    (:func:`as_pair`); 3-D stacks are split into slices (slices without objects skipped). Everything
    is checked up front, so an error names the item (``names``, default "item <index>").
    """

    def __init__(self, pairs: Sequence[Any], names: Sequence[str] | None = None) -> None:
        if len(pairs) == 0:
            raise ValueError("no training pairs: give at least one (image, labels) pair")
        if names is not None and len(names) != len(pairs):
            raise ValueError(f"{len(names)} names for {len(pairs)} pairs")
        self.items: list[tuple[np.ndarray, np.ndarray]] = []
        self.names: list[str] = []
        for index in range(len(pairs)):
            name = names[index] if names is not None else f"item {index}"
            for image, labels, part in object_slices(*as_pair(pairs[index]), name):
                self.items.append((image, labels))
                self.names.append(part)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[index]


class FolderDataset(PairsDataset):
    """Pairs of (image, instance labels) read from two folders, 3-D stacks split into 2-D slices.

    Labels are matched to images by file name (same stem, optionally with a suffix such as
    `_labels` or `_masks`). Everything is read and validated up front, so errors name the file.
    Slices of a stack without objects are skipped; a pair without any object is an error.
    """

    def __init__(self, images_dir: str | Path, labels_dir: str | Path) -> None:
        images_dir, labels_dir = Path(images_dir), Path(labels_dir)
        for d in (images_dir, labels_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"not a folder: {d}")
        self.images_dir, self.labels_dir = images_dir, labels_dir
        files = _match_labels(images_dir, labels_dir)
        super().__init__(
            [(_load_image_file(img), _load_image_file(lab)) for img, lab in files],
            names=[f"{img.name} / {lab.name}" for img, lab in files],
        )


def _crop_pair(
    image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator, min_area: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random size x size crop (zero-padded when the image is smaller), biased towards objects."""
    h, w = labels.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2))
        labels = np.pad(labels, ((0, ph), (0, pw)))
        h, w = labels.shape
    best = None
    for _ in range(5):  # retry a few times to get a crop with objects in it
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        crop = labels[y : y + size, x : x + size]
        count = np.count_nonzero(np.bincount(crop.ravel())[1:] >= min_area)
        if best is None or count > best[0]:
            best = (count, y, x)
        if count >= 1:
            break
    _, y, x = best
    return image[y : y + size, x : x + size], labels[y : y + size, x : x + size]


def augment_intensity(rgb: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Gamma, contrast, brightness, noise (and optional inversion) on a uint8 RGB image -> float32."""
    x = rgb.astype(np.float32) / 255.0
    if aug.invert_prob > 0 and rng.random() < aug.invert_prob:
        x = 1.0 - x
    x = x ** rng.uniform(*aug.gamma)
    mean = x.mean()
    x = (x - mean) * rng.uniform(*aug.contrast) + mean + rng.uniform(-aug.brightness, aug.brightness)
    if aug.noise_std > 0:
        x = x + rng.normal(0, rng.uniform(0, aug.noise_std), size=x.shape[:2])[..., None]
    return (np.clip(x, 0, 1) * 255.0).astype(np.float32)


def crop_side(shape: tuple[int, int], image_size: int, crop_size: int | str | None) -> int:
    """Side of the square a training example is cut from before it is resized to the model input.

    None: the model input (the image at 1x, padded when smaller); an int: that side; "auto": the
    scale the image is used at — its long side when the predictor encodes it whole (resized so
    the long side fills the input), the model input when the napari widget tiles it (1x tiles).
    """
    if crop_size is None:
        return image_size
    if crop_size == "auto":
        return max(shape) if tiling_for(shape, image_size) is None else image_size
    return int(crop_size)


def make_example(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    image_size: int,
    crop_size: int | str | None = None,
    max_objects: int = 8,
    min_area: int = 16,
    augment: AugmentConfig | None = None,
    channel: int | None = None,
    touching_weight: float = 1.0,
) -> TrainExample | None:
    """Crop, augment and resize one pair to the model input; pick up to `max_objects` objects.

    The crop (side from `crop_side`) is resized to image_size, labels with nearest neighbour.
    Objects smaller than `min_area` pixels (after resizing) are not prompted. With
    `touching_weight` != 1 an object that touches another is picked that many times as often as an
    isolated one. Returns None when the crop has no usable object.
    """
    labels = check_labels(labels)
    rgb = prepare_image(image, channel=channel)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image shape {rgb.shape[:2]} does not match label shape {labels.shape}")
    crop = crop_side(labels.shape, image_size, crop_size)
    rgb, labels = _crop_pair(rgb, labels, crop, rng, min_area)
    if augment is not None:
        k = int(rng.integers(4)) if augment.rot90 else 0
        rgb, labels = np.rot90(rgb, k), np.rot90(labels, k)
        if augment.flip and rng.random() < 0.5:
            rgb, labels = rgb[:, ::-1], labels[:, ::-1]
        data = augment_intensity(np.ascontiguousarray(rgb), rng, augment)
    else:
        data = rgb.astype(np.float32)
    img_t = torch.from_numpy(np.ascontiguousarray(data)).permute(2, 0, 1)
    lab_t = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    if crop != image_size:
        img_t = F.interpolate(img_t[None], (image_size, image_size), mode="bilinear", align_corners=False)[0]
        lab_t = F.interpolate(lab_t[None, None].float(), (image_size, image_size), mode="nearest")
        lab_t = lab_t[0, 0].long()
    lab = lab_t.numpy()
    ids, counts = np.unique(lab, return_counts=True)
    keep = ids[(ids > 0) & (counts >= min_area)]
    if keep.size == 0:
        return None
    if touching_weight == 1.0:  # uniform without p: the random stream of earlier runs is kept
        chosen = rng.choice(keep, size=min(max_objects, keep.size), replace=False)
    else:
        weight = np.where(np.isin(keep, touching_ids(lab)), touching_weight, 1.0)
        chosen = rng.choice(keep, size=min(max_objects, keep.size), replace=False, p=weight / weight.sum())
    masks = lab[None] == np.asarray(chosen)[:, None, None]
    return TrainExample(image=img_t.clamp(0, 255).contiguous(), masks=masks, labels=lab)


def touching_ids(labels: np.ndarray) -> np.ndarray:
    """Ids of the objects that share an edge (4-neighbourhood) with another object."""
    from .synthetic_shapes import contact_map

    return np.unique(labels[contact_map(labels)])


def warn_small_dataset(n: int) -> None:
    if n < 4:
        warnings.warn(f"only {n} training image(s): fine-tuning will overfit quickly", stacklevel=2)
