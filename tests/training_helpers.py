"""Helpers for the training tests: one torch thread, small scenes of disks with their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a busy shared CPU, two threads per process are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def disk(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def disk_scene(rng: np.random.Generator, size: int = 128, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((size, size), np.int32)
    for i in range(n):
        cy, cx = rng.integers(15, size - 15, 2)
        labels[disk(labels.shape, cy, cx, rng.integers(6, 14)) & (labels == 0)] = i + 1
    image = (rng.normal(30, 5, labels.shape) + 150 * (labels > 0)).clip(0, 255).astype(np.uint8)
    return image, labels


def write_pair(images: Path, labels: Path, name: str, image: np.ndarray, lab: np.ndarray) -> None:
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    tifffile.imwrite(images / f"{name}.tif", image)
    tifffile.imwrite(labels / f"{name}_labels.tif", lab)
