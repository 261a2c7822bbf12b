"""Label-free edge profiles: how intensity falls off across mask outlines, real vs generated images.

    python benchmarks/edge_profiles.py --real img2d.tif                # embedded model, 3 generated images
    python benchmarks/edge_profiles.py --model runs/x/model.pt --real a.tif --real b.tif --generated 8
    python benchmarks/edge_profiles.py --truth-only --generated 8 --seed 9100000 \
        --synthetic '{"psf_sigma_range": [0.5, 2.8], "nuclei_dome_range": [0.02, 2.0]}'  # a candidate

For every mask of the model's automatic segmentation (and, on generated images, every true outline)
it takes the median intensity at each signed distance from the outline (negative = inside), scaled so
that the interior is 1 and the surroundings 0, and prints the median profile with the distances where
it crosses 80 %, 50 % and 20 %. Real images need no labels: the comparison is between the model's
outlines on real and on generated images, and the generated true outlines say where the model should
put them. A real profile outside the generated ones points at something the generator does not draw
(docs/data-generator.md). Generated images use the tuning seeds (as `sam-plugins tune`) unless
`--seed` says otherwise; `--synthetic` changes the generator's ranges (`SyntheticConfig` fields, JSON)
and `--truth-only` measures the true outlines alone (no model: seconds per image), to compare
candidate generators before training on one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

import sam_plugins
from sam_plugins.automatic import generator_for_model
from sam_plugins.commands.tune import TUNING_SEED

DISTANCES = np.array([d for d in range(-6, 9) if d != 0])  # px; an outline lies between -1 and +1


def mask_profile(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Median intensity at each of DISTANCES from the outline of `mask`, interior 1, outside 0."""
    margin = int(DISTANCES.max()) + 4  # the window below reaches 10 px out; the distances need no more
    (rows, cols) = ndimage.find_objects(mask.astype(np.int8))[0]
    box = (
        slice(max(rows.start - margin, 0), rows.stop + margin),
        slice(max(cols.start - margin, 0), cols.stop + margin),
    )
    image, mask = image[box], mask[box]  # distance transforms of the object's surroundings only
    window = ndimage.binary_dilation(mask, iterations=10)
    signed = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
    rounded = np.round(signed)
    rings = [window & (rounded == d) for d in DISTANCES]
    profile = np.array([np.median(image[ring]) if ring.any() else np.nan for ring in rings])
    low, high = np.nanmin(profile[-4:]), np.nanmax(profile[:3])
    if not high > low:
        return None
    return (profile - low) / (high - low)


def profiles(image: np.ndarray, masks: list[np.ndarray], min_area: int = 100) -> np.ndarray:
    image = image.astype(np.float64)
    if image.ndim == 3:
        image = image.mean(-1)
    rows = [mask_profile(image, m) for m in masks if m.sum() >= min_area]
    return np.array([r for r in rows if r is not None]).reshape(-1, len(DISTANCES))


def crossing(profile: np.ndarray, level: float) -> float:
    """Distance (px) where a falling profile first drops below `level`, linearly interpolated."""
    i = int(np.argmax(profile < level))
    if i == 0:
        return float("nan")
    a, b = profile[i - 1], profile[i]
    return float(DISTANCES[i - 1] + (DISTANCES[i] - DISTANCES[i - 1]) * (a - level) / (a - b))


def report(name: str, rows: np.ndarray) -> None:
    if not len(rows):
        print(f"{name}: no masks")
        return
    median = np.nanmedian(rows, axis=0)
    c80, c50, c20 = (crossing(median, level) for level in (0.8, 0.5, 0.2))
    values = " ".join(f"{v:.2f}" for v in median)
    print(
        f"{name}: {len(rows)} masks; 80 % at {c80:+.1f} px, 50 % at {c50:+.1f}, 20 % at {c20:+.1f} "
        f"(20-80 width {c20 - c80:.1f} px); profile at {DISTANCES.tolist()} px: {values}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: embedded)")
    parser.add_argument("--real", type=Path, action="append", default=[], help="an unlabelled real image")
    parser.add_argument("--generated", type=int, default=3, help="generated nuclei images (tuning seeds)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=TUNING_SEED, help="seed of the first generated image")
    parser.add_argument("--synthetic", default="{}", help="SyntheticConfig fields to change, as JSON")
    parser.add_argument("--truth-only", action="store_true", help="generated true outlines only, no model")
    args = parser.parse_args()
    if args.truth_only and args.real:
        parser.error("--truth-only measures generated images only; drop --real or --truth-only")

    from sam_plugins.commands.segment import read_image
    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    changes = json.loads(args.synthetic)  # ranges as JSON lists, as in the training configs
    config = SyntheticConfig(**{"size": (args.size, args.size), "kind_weights": {"nuclei": 1.0}, **changes})
    generator = None
    if not args.truth_only:
        generator = generator_for_model(sam_plugins.load_model(args.model, device="cpu"))

    def model_masks(image: np.ndarray) -> list[np.ndarray]:
        return [record["segmentation"] for record in generator.generate(image)]

    for path in args.real:
        image = read_image(path)
        report(f"real {path.name}, model masks", profiles(image, model_masks(image)))
    if args.generated:
        by_model, truth = [], []
        for i in range(args.generated):
            sample = generate_sample(np.random.default_rng(args.seed + i), config)
            if generator is not None:
                by_model.append(profiles(sample.image, model_masks(sample.image)))
            truth.append(profiles(sample.image, [sample.labels == k for k in np.unique(sample.labels)[1:]]))
        if by_model:
            report(f"{args.generated} generated, model masks", np.concatenate(by_model))
        report(f"{args.generated} generated, true outlines", np.concatenate(truth))
        widths = [
            crossing(m, 0.2) - crossing(m, 0.8) for m in (np.nanmedian(t, axis=0) for t in truth if len(t))
        ]
        print(f"  20-80 width per generated image (true outlines): {np.round(sorted(widths), 1).tolist()} px")


if __name__ == "__main__":
    main()
