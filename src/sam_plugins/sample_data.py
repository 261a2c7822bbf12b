"""Deterministic sample microscopy data with ground truth (used by the README, napari and tests).

``cells_2d`` returns the shipped ``data/sample_nuclei.tif`` (and its labels) when present and
regenerates the same kind of image from a fixed seed otherwise. Run
``python -m sam_plugins.sample_data`` to (re)write the shipped files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sam_plugins.training.synthetic import SyntheticConfig, generate_sample, generate_volume

__all__ = ["DATA_DIR", "SAMPLE_IMAGE", "SAMPLE_LABELS", "cells_2d", "nuclei_3d", "write_sample_files"]

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_IMAGE = DATA_DIR / "sample_nuclei.tif"
SAMPLE_LABELS = DATA_DIR / "sample_nuclei_labels.tif"
SEED_2D = 20240611
SEED_3D = 20240612


def sample_config() -> SyntheticConfig:
    """The fixed scene used for the 2-D sample: a typical 16-bit (12-bit camera) nuclei image."""
    return SyntheticConfig(
        size=(512, 512),
        kind_weights={"nuclei": 1.0},
        radius_range=(10.0, 12.0),
        radius_spread_range=(0.12, 0.15),
        density_range=(0.25, 0.3),
        clustering_range=(0.5, 0.6),
        dividing_range=(0.02, 0.03),
        mitotic_range=(0.02, 0.03),
        intensity_spread_range=(0.3, 0.35),
        texture_range=(0.1, 0.15),
        background_range=(0.05, 0.1),
        gradient_range=(0.1, 0.2),
        autofluorescence_range=(0.05, 0.1),
        haze_range=(0.05, 0.08),
        psf_wing_prob=0.0,  # the sample predates the wings; 0 keeps it reproducible from its seed
        bright_contact_prob=0.0,
        debris_range=(0.2, 0.3),
        defocus_range=(0.05, 0.08),
        psf_sigma_range=(1.0, 1.2),
        photons_range=(150.0, 200.0),
        read_noise_range=(0.003, 0.004),
        saturation_prob=0.0,
        bit_depth_weights={16: 1.0},
    )


def generate_cells_2d() -> tuple[np.ndarray, np.ndarray]:
    """Regenerate the 2-D sample from its fixed seed (not read from disk)."""
    sample = generate_sample(np.random.default_rng(SEED_2D), sample_config())
    return sample.image, sample.labels


def cells_2d() -> tuple[np.ndarray, np.ndarray]:
    """A 512x512 16-bit fluorescence nuclei image and its instance labels (int32)."""
    if SAMPLE_IMAGE.exists() and SAMPLE_LABELS.exists():
        import tifffile

        image = tifffile.imread(SAMPLE_IMAGE)
        labels = tifffile.imread(SAMPLE_LABELS).astype(np.int32)
        return image, labels
    return generate_cells_2d()


def nuclei_3d(shape: tuple[int, int, int] = (24, 256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D stack of nuclei (uint16, Z x Y x X) and its label volume (int32), from a fixed seed."""
    return generate_volume(np.random.default_rng(SEED_3D), shape=shape)


def write_sample_files(directory: Path = DATA_DIR) -> tuple[Path, Path]:
    """Write the 2-D sample image and labels as compressed TIFFs; returns their paths."""
    import tifffile

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image, labels = generate_cells_2d()
    img_path = directory / SAMPLE_IMAGE.name
    lab_path = directory / SAMPLE_LABELS.name
    tifffile.imwrite(img_path, image, compression="zlib", compressionargs={"level": 9}, predictor=True)
    lab_dtype = np.uint16 if labels.max() < 2**16 else np.uint32
    tifffile.imwrite(lab_path, labels.astype(lab_dtype), compression="zlib", compressionargs={"level": 9})
    return img_path, lab_path


if __name__ == "__main__":
    for path in write_sample_files():
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
