"""Compare the synthetic generator with real fluorescence nuclei images; writes generator_vs_real.png.

Real images (not shipped with sam-plugins; used only for this comparison, never for training):

* ``img2d.tif`` + ``mask2d.tif``: nuclei with hand-drawn labels, bundled in the ``stardist`` wheel
  (``stardist/data/images/``; a crop of the 2018 Data Science Bowl / BBBC038 data).
* ``nuclear.png``: U2OS/NIH3T3 nuclei (Coelho et al. 2009), bundled in the ``mahotas`` wheel
  (``mahotas/demos/data/``).

Get them offline-friendly with ``pip download --no-deps stardist mahotas`` and unzip the wheels, then::

    python docs/images/generator_compare.py /path/to/unzipped
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage import filters, io, measure, segmentation, transform  # noqa: E402

from sam_plugins.training.synthetic import SyntheticConfig, generate_sample  # noqa: E402
from sam_plugins.training.synthetic_shapes import contact_map  # noqa: E402

OUT = Path(__file__).resolve().parent / "generator_vs_real.png"


def display(img: np.ndarray) -> np.ndarray:
    """Percentile-normalised float image in [0, 1]."""
    lo, hi = np.percentile(img.astype(np.float64), (0.5, 99.5))
    return np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1)


def outlined(img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rgb = np.repeat(display(img)[..., None], 3, axis=2)
    rgb[segmentation.find_boundaries(labels, mode="inner")] = (1.0, 0.2, 0.2)
    return rgb


def image_stats(img: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Statistics that describe how a nuclei image looks (computed identically for real and synthetic)."""
    img = img.astype(np.float64)
    inside = labels > 0
    far = ~ndimage.binary_dilation(inside, iterations=3)
    bg = float(np.median(img[far]))
    ids = np.arange(1, labels.max() + 1)
    means = np.asarray(ndimage.mean(img, labels, ids)) - bg
    props = measure.regionprops(labels)
    elong = [p.axis_major_length / max(p.axis_minor_length, 1.0) for p in props if p.area >= 20]
    hp = img - ndimage.uniform_filter(img, 3)
    noise = 1.4826 * float(np.median(np.abs(hp[far] - np.median(hp[far]))))
    core = ndimage.binary_erosion(inside, iterations=2)
    obj_mean = np.concatenate([[0.0], means + bg])[labels]
    tex = float(np.median(np.abs(img[core] - obj_mean[core]))) * 1.4826
    scale = max(float(np.median(means)), 1e-9)
    touching = len(np.unique(labels[contact_map(labels)])) / max(len(ids), 1)
    return {
        "contrast (obj-bg)/bg": float(np.median(means) / max(bg, 1.0)),
        "brightness spread (std log)": float(np.std(np.log(np.maximum(means, 0.05 * scale)))),
        "axis ratio (median)": float(np.median(elong)) if elong else 1.0,
        "touching fraction": float(touching),
        "noise / contrast": noise / scale,
        "texture / contrast": tex / scale,
    }


def main(real_dir: Path) -> None:
    img2d = tifffile.imread(next(real_dir.rglob("img2d.tif")))
    mask2d = segmentation.relabel_sequential(
        tifffile.imread(next(real_dir.rglob("mask2d.tif"))).astype(np.int32)
    )[0]
    nuclear = io.imread(next(real_dir.rglob("nuclear.png")))
    nuclear = nuclear[..., 0] if nuclear.ndim == 3 else nuclear
    # the mahotas image has ~4x larger nuclei: bring it to a comparable scale; a few very bright
    # nuclei skew Otsu, so label it with Li's threshold
    nuc_small = transform.rescale(nuclear.astype(np.float64), 0.25, anti_aliasing=True)
    nuc_lab = measure.label(
        ndimage.binary_opening(nuc_small > filters.threshold_li(nuc_small), iterations=2)
    ).astype(np.int32)

    cfg = SyntheticConfig(size=(256, 256), kind_weights={"nuclei": 1.0})
    synth = [generate_sample(np.random.default_rng(1000 + i), cfg) for i in range(120)]
    pick = [s for s in synth if 7 <= s.meta["radius"] <= 14][:3]

    real_stats = [image_stats(img2d, mask2d), image_stats(nuc_small, nuc_lab)]
    syn_stats = [image_stats(s.image, s.labels) for s in synth if s.labels.max() >= 3]

    fig = plt.figure(figsize=(16, 9.6))
    grid = fig.add_gridspec(3, 6, height_ratios=[1, 1, 0.8])
    extra = [s for s in synth if s.meta["radius"] > 20][:3]
    top = [
        ("real: DSB2018 nuclei (stardist)", display(img2d[:256, :256])),
        ("real + hand labels", outlined(img2d[:256, :256], mask2d[:256, :256])),
        ("real: U2OS nuclei (mahotas), 1/4 scale", display(nuc_small[:256, :256])),
    ] + [
        (f"synthetic: r={s.meta['radius']:.0f}px, {s.meta['bit_depth']}-bit", display(s.image)) for s in extra
    ]
    middle = []
    for i, s in enumerate(pick):
        middle.append(
            (f"synthetic #{i + 1}: r={s.meta['radius']:.0f}px, {s.meta['bit_depth']}-bit", display(s.image))
        )
        middle.append((f"synthetic #{i + 1} + exact labels", outlined(s.image, s.labels)))
    for row, panels in enumerate((top, middle)):
        for col, (title, im) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(im, cmap="gray", interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    keys = list(real_stats[0])
    for j, key in enumerate(keys):
        ax = fig.add_subplot(grid[2, j])
        vals = np.array([st[key] for st in syn_stats])
        hi = np.percentile(vals, 98)
        ax.hist(np.clip(vals, None, hi), bins=25, color="0.7", label="synthetic (default config)")
        for st, col, name in zip(real_stats, ("tab:red", "tab:blue"), ("DSB2018", "U2OS"), strict=True):
            ax.axvline(min(st[key], hi), color=col, lw=2, label=f"real {name}")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Synthetic generator vs real fluorescence nuclei: images and image statistics", fontsize=12)
    fig.tight_layout()
    fig.savefig(OUT, dpi=72)
    print(f"wrote {OUT}")
    for name, st in zip(("DSB2018", "U2OS"), real_stats, strict=True):
        print(name, {k: round(v, 3) for k, v in st.items()})
    for key in keys:
        vals = np.array([st[key] for st in syn_stats])
        print(
            f"synthetic {key}: p10={np.percentile(vals, 10):.3f} p50={np.median(vals):.3f} "
            f"p90={np.percentile(vals, 90):.3f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
