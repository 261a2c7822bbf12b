"""What averaging over turned and mirrored copies of the image buys, and what it costs.

    python benchmarks/orientations.py                       # embedded model, 1 / 2 / 4 / 8 orientations
    python benchmarks/orientations.py --model x.pt --real img2d.tif mask2d.tif --generated 4

For each number of orientations (`OrientationAveragingPredictor`), one click at each object's
centre (best-scored of the three masks) and its tight box, as mean IoU, on the objects
`benchmarks/promotion.py` uses (the `cells-2d` sample's 25, held-out generated nuclei images,
optional hand-labelled real images, for information), with the paired difference to one
orientation (the plain `SamPredictor`) and its 95 % bootstrap interval; and the time to embed the
`cells-2d` sample and to answer one box, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from promotion import click_and_box, judged_datasets, paired_difference

import sam_plugins
from sam_plugins.orientations import ORIENTATION_CHOICES, OrientationAveragingPredictor


def timings(
    model: sam_plugins.Sam, orientations: int, image: np.ndarray, repeats: int = 3
) -> dict[str, float]:
    """Seconds to embed `image` and to answer one box prompt (best of `repeats`)."""
    predictor = OrientationAveragingPredictor(model, orientations)
    embed, box = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.set_image(image)
        embed.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict(box=np.array([100.0, 100.0, 140.0, 130.0]), multimask_output=False)
        box.append(time.perf_counter() - start)
    return {"embed_s": min(embed), "box_ms": 1000 * min(box)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="model name or checkpoint (default: the embedded model)"
    )
    parser.add_argument(
        "--orientations", default="1,2,4,8", help="comma-separated counts (1 is the reference)"
    )
    parser.add_argument("--generated", type=int, default=8, help="held-out generated images (0: none)")
    parser.add_argument("--real", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"))
    args = parser.parse_args()

    import torch

    counts = sorted({1, *(int(c) for c in args.orientations.split(","))})
    if any(c not in ORIENTATION_CHOICES for c in counts):
        parser.error(f"--orientations takes counts from {ORIENTATION_CHOICES}")
    torch.set_num_threads(2)
    model = sam_plugins.load_model(args.model, device="cpu")
    datasets = judged_datasets(args.generated, args.real)
    if "tuning" in datasets:
        datasets["generated"] = datasets.pop("tuning")
    image = datasets["sample"][0][0]

    reference, first = None, None
    for count in counts:
        predictor = OrientationAveragingPredictor(model, count)
        per_set = {}
        for name, items in datasets.items():
            parts = [click_and_box(predictor, *item) for item in items]
            per_set[name] = {k: np.concatenate([p[k] for p in parts]) for k in ("click", "box")}
        reference = reference or per_set
        cost = timings(model, count, image)
        first = first or cost
        row = {"orientations": count, **cost}
        for name, values in per_set.items():
            for key in ("click", "box"):
                row[f"{name}_{key}"] = round(float(values[key].mean()), 4)
                if count > 1:
                    d = paired_difference(values[key], reference[name][key])
                    row[f"{name}_{key}_vs_1"] = [round(d[k], 4) for k in ("mean", "low", "high")]
        if count > 1:
            row["embed_ratio_vs_1"] = round(cost["embed_s"] / first["embed_s"], 2)
            row["box_ratio_vs_1"] = round(cost["box_ms"] / first["box_ms"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
