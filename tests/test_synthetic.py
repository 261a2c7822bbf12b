"""Tests of the synthetic microscopy generator and the shipped sample data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sam_plugins import sample_data
from sam_plugins.training.synthetic import (
    SyntheticConfig,
    SyntheticDataset,
    SyntheticSample,
    generate_sample,
    generate_volume,
)
from sam_plugins.training.synthetic_shapes import contact_map, random_shapes, rasterize


def _check_labels(labels: np.ndarray) -> None:
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    n = int(labels.max())
    assert ids[0] == 0 or n == 0
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))  # contiguous ids
    # every object is one connected piece (an exact, single mask)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        _, count = ndimage.label(labels[sl] == i)
        assert count == 1, f"object {i} is split into {count} pieces"


@pytest.fixture(scope="module")
def samples() -> list[SyntheticSample]:
    cfg = SyntheticConfig(size=(192, 160))
    return [generate_sample(np.random.default_rng(s), cfg) for s in range(40)]


def test_sample_types_and_labels(samples: list[SyntheticSample]) -> None:
    for s in samples:
        assert s.image.shape == (192, 160) and s.labels.shape == (192, 160)
        assert s.image.dtype in (np.uint8, np.uint16)
        assert s.image.dtype == (np.uint8 if s.meta["bit_depth"] == 8 else np.uint16)
        assert int(s.image.max()) <= s.meta["full_scale"]
        _check_labels(s.labels)
        assert s.meta["n_objects"] == int(s.labels.max())
        assert s.meta["kind"] in ("nuclei", "cells")


def test_variety(samples: list[SyntheticSample]) -> None:
    radii = [s.meta["radius"] for s in samples]
    assert min(radii) < 8 and max(radii) > 25
    coverage = [s.meta["coverage"] for s in samples]
    assert min(coverage) < 0.15 and max(coverage) > 0.5
    assert {s.meta["bit_depth"] for s in samples} == {8, 16}
    assert {s.meta["kind"] for s in samples} == {"nuclei", "cells"}
    counts = [s.meta["n_objects"] for s in samples]
    assert min(counts) < 10 and max(counts) > 100
    # crowded scenes contain touching objects (different ids 4-adjacent)
    touching = [
        bool(np.any((s.labels[1:] != s.labels[:-1]) & (s.labels[1:] > 0) & (s.labels[:-1] > 0)))
        for s in samples
    ]
    assert sum(touching) >= 10
    # photon-limited and bright images
    assert min(s.meta["photons"] for s in samples) < 50 < 500 < max(s.meta["photons"] for s in samples)


def _clean_nuclei(**changes) -> SyntheticConfig:
    """Nuclei on a flat background with little noise, so intensity profiles can be compared."""
    base = dict(
        size=(256, 256),
        kind_weights={"nuclei": 1.0},
        background_range=(0.05, 0.05),
        autofluorescence_range=(0.0, 0.0),
        debris_range=(0.0, 0.0),
        haze_range=(0.0, 0.0),
        defocus_range=(0.0, 0.0),
        photons_range=(2000.0, 2000.0),
        saturation_prob=0.0,
    )
    base.update(changes)
    return SyntheticConfig(**base)


# brighter, equal-sized nuclei with neither wings nor bright contacts unless a test turns one on
_PROFILE = dict(
    radius_range=(12.0, 14.0), photons_range=(5000.0, 5000.0), psf_wing_prob=0.0, bright_contact_prob=0.0
)


def test_objects_are_where_the_signal_is() -> None:
    cfg = _clean_nuclei()
    for seed in range(4):
        s = generate_sample(np.random.default_rng(seed), cfg)
        img = s.image.astype(np.float64)
        bg = np.median(img[ndimage.binary_dilation(s.labels > 0, iterations=3) == 0])
        ids = np.arange(1, s.labels.max() + 1)
        means = ndimage.mean(img, s.labels, ids)
        sizes = ndimage.sum(np.ones_like(img), s.labels, ids)
        big = sizes >= 30
        assert np.all(means[big] > bg), "every object must be brighter than the background"
        # the outline is where the intensity drops: the 2-px ring outside is darker than the inside
        inside = s.labels > 0
        ring = ndimage.binary_dilation(inside, iterations=2) & ~inside
        assert img[inside].mean() > img[ring].mean() > bg


def test_rasterize_exact_partition() -> None:
    rng = np.random.default_rng(0)
    n = 2
    shapes = random_shapes(
        rng,
        np.array([50.0, 50.0]),
        np.array([40.0, 62.0]),
        np.array([12.0, 12.0]),
        np.ones(n),
        np.zeros(n),
        np.zeros(n),
    )
    labels, dist = rasterize(shapes, 100, 100)
    areas = np.bincount(labels.ravel(), minlength=3)
    # two overlapping circles of radius 12, 22 px apart: split along the bisector, equal halves
    assert abs(areas[1] - areas[2]) <= 2
    assert labels[50, 40] == 1 and labels[50, 62] == 2
    assert labels[50, 50] == 1 and labels[50, 52] == 2  # contact line at the midpoint x = 51
    single = rasterize(shapes.subset(np.array([0])), 100, 100)[0]
    assert abs((single > 0).sum() - np.pi * 144) < 0.05 * np.pi * 144
    assert float(dist[labels == 0].min()) == 1.0 and float(dist[labels > 0].max()) < 1.0


def test_determinism_by_seed() -> None:
    cfg = SyntheticConfig(size=(128, 128))
    a = generate_sample(np.random.default_rng(7), cfg)
    b = generate_sample(np.random.default_rng(7), cfg)
    c = generate_sample(np.random.default_rng(8), cfg)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.meta == b.meta
    assert not (a.image.shape == c.image.shape and np.array_equal(a.image, c.image))


def test_dataset_indexing_is_deterministic() -> None:
    ds = SyntheticDataset(5, seed=3, config=SyntheticConfig(size=(96, 96)))
    assert len(ds) == 5
    last = ds[4]
    first = ds[0]
    np.testing.assert_array_equal(ds[-1].image, last.image)
    np.testing.assert_array_equal(SyntheticDataset(5, seed=3, config=ds.config)[0].labels, first.labels)
    other = SyntheticDataset(5, seed=4, config=ds.config)[0]
    assert not np.array_equal(other.image, first.image)
    assert len(list(ds)) == 5
    with pytest.raises(IndexError):
        ds[5]


def test_config_narrowing() -> None:
    cfg = SyntheticConfig(size=(128, 128), kind_weights={"cells": 1.0}, bit_depth_weights={8: 1.0})
    for seed in range(3):
        s = generate_sample(np.random.default_rng(seed), cfg)
        assert s.meta["kind"] == "cells" and s.image.dtype == np.uint8
        assert s.meta["mode"] in ("cytoplasm", "membrane", "mixed")


def test_volume_consistency() -> None:
    image, labels = generate_volume(np.random.default_rng(0), shape=(16, 96, 96))
    assert image.shape == labels.shape == (16, 96, 96)
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    n = int(labels.max())
    assert n >= 5
    np.testing.assert_array_equal(np.unique(labels)[1:], np.arange(1, n + 1))
    _, count = ndimage.label(labels > 0)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        obj = labels[sl] == i
        assert ndimage.label(obj)[1] == 1  # one 3-D piece
        zs = np.nonzero(obj.any(axis=(1, 2)))[0]
        assert np.all(np.diff(zs) == 1)  # present in consecutive slices
        # cross-sections shrink towards the poles: the widest slice is not the first or last
        area = obj.sum(axis=(1, 2))[zs - zs.min()]
        if len(zs) >= 5 and sl[0].start > 0 and sl[0].stop < labels.shape[0]:
            assert area.argmax() not in (0, len(zs) - 1)
    inside = labels > 0
    assert image[inside].mean() > 1.5 * np.median(image[~inside])
    a, _ = generate_volume(np.random.default_rng(0), shape=(16, 96, 96))
    np.testing.assert_array_equal(a, image)


def test_sample_data() -> None:
    image, labels = sample_data.cells_2d()
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype in (np.uint8, np.uint16) and labels.dtype == np.int32
    _check_labels(labels)
    assert labels.max() > 50
    assert sample_data.SAMPLE_IMAGE.exists() and sample_data.SAMPLE_LABELS.exists()
    size = sample_data.SAMPLE_IMAGE.stat().st_size + sample_data.SAMPLE_LABELS.stat().st_size
    assert size < 1_000_000


def test_sample_files_roundtrip(tmp_path) -> None:
    img_path, lab_path = sample_data.write_sample_files(tmp_path)
    import tifffile

    image, labels = sample_data.generate_cells_2d()
    np.testing.assert_array_equal(tifffile.imread(img_path), image)
    np.testing.assert_array_equal(tifffile.imread(lab_path).astype(np.int32), labels)


def test_nuclei_3d() -> None:
    image, labels = sample_data.nuclei_3d(shape=(12, 64, 64))
    assert image.shape == labels.shape == (12, 64, 64)
    assert labels.max() >= 1


def test_psf_wings_glow_outside_the_outline() -> None:
    """Real wide-field nuclei fall off slowly outside their drawn outline; the generator can do that."""
    ratios = {}
    for wing_prob in (0.0, 1.0):
        cfg = _clean_nuclei(
            **{**_PROFILE, "psf_wing_prob": wing_prob},
            psf_wing_range=(0.8, 0.8),
            psf_wing_sigma_range=(4.0, 4.0),
        )
        values = []
        for seed in range(3):
            s = generate_sample(np.random.default_rng(seed), cfg)
            assert s.meta["psf_wing"] == pytest.approx(0.8 if wing_prob else 0.0)
            img = s.image.astype(np.float64)
            inside = s.labels > 0
            outside = ~inside
            dist = ndimage.distance_transform_edt(outside)
            bg = np.median(img[dist > 25]) if (dist > 25).any() else np.percentile(img[outside], 5)
            ring = (dist > 2) & (dist <= 4)
            values.append((img[ring].mean() - bg) / (img[inside].mean() - bg))
        ratios[wing_prob] = float(np.mean(values))
    # without wings 2-4 px outside is nearly background; with them a clear glow remains there
    assert ratios[0.0] < 0.12
    assert ratios[1.0] > ratios[0.0] + 0.06


def test_overlapping_contacts_are_brighter() -> None:
    def contact_contrast(prob: float) -> float:
        cfg = _clean_nuclei(
            **{**_PROFILE, "bright_contact_prob": prob},
            density_range=(0.6, 0.7),
            clustering_range=(0.8, 1.0),
            texture_range=(0.0, 0.0),
            intensity_spread_range=(0.1, 0.1),
        )
        vals = []
        for seed in range(4):
            s = generate_sample(np.random.default_rng(seed), cfg)
            img = s.image.astype(np.float64)
            contact = contact_map(s.labels)
            interior = (s.labels > 0) & ~ndimage.binary_dilation(contact, iterations=3)
            if contact.sum() > 20 and interior.any():
                vals.append(img[contact].mean() / img[interior].mean())
        return float(np.mean(vals))

    assert contact_contrast(1.0) > contact_contrast(0.0) + 0.1


def test_nuclei_dome_and_edge_brightness() -> None:
    """Nuclei can be flat-topped or domed, and bright or dim at the outline, as the ranges say."""

    def rim_to_core(dome: float, edge: float) -> float:
        cfg = _clean_nuclei(
            **_PROFILE,
            nuclei_dome_range=(dome, dome),
            nuclei_edge_range=(edge, edge),
            texture_range=(0.0, 0.0),
            psf_sigma_range=(0.5, 0.5),
            intensity_spread_range=(0.1, 0.1),
            mitotic_range=(0.0, 0.0),
        )
        ratios = []
        for seed in range(3):
            s = generate_sample(np.random.default_rng(seed), cfg)
            img, inside = s.image.astype(np.float64), s.labels > 0
            depth = ndimage.distance_transform_edt(inside)
            rim, core = (depth >= 2) & (depth <= 3), depth >= 8
            if rim.any() and core.any():
                ratios.append(img[rim].mean() / img[core].mean())
        return float(np.mean(ratios))

    flat, domed = rim_to_core(0.02, 0.7), rim_to_core(2.0, 0.7)
    assert flat > 0.9  # a flat top keeps its brightness up to a couple of px from the outline
    assert domed < flat - 0.1
    assert rim_to_core(2.0, 0.4) < domed - 0.05  # a dimmer outline pulls the rim down further
