"""Should a newly trained checkpoint replace the shipped embedded model? The promotion numbers.

    python benchmarks/promotion.py runs/embedded-v1-stage13/model.pt
    python benchmarks/promotion.py runs/x/model.pt --baseline checkpoints/embedded-v1/latest.pt \\
        --real img2d.tif mask2d.tif

For the baseline (default: the shipped model) and each candidate, one click at each object's
centre (best-scored of the three masks) and its tight box, as mean IoU, on
  sample   the `cells-2d` sample's 25 objects that the shipping test uses;
  tuning   8 held-out generated nuclei images (benchmarks/eval_cells.py's seeds; objects >= 30 px),
           also split into objects that touch another and isolated ones;
  real     (with --real) hand-labelled real images, for information.
A candidate is promoted when none of its sample / real numbers is below the baseline's at two
decimals (the rule used since stage 8; docs/models.md), the full test suite, 3-D propagation
included, passes, and (since stage 20, docs/models.md) its automatic segmentation with the shipped
settings scores no lower F1 on `sam-plugins tune`'s 8 held-out generated nuclei images.
Each checkpoint keeps the prompted region of its masks as it recommends (`predictor_settings`); a
candidate that recommends nothing (trained from checkpoints/embedded-v1/latest.pt) is judged with
the baseline's setting, so both sets of weights are compared under the same post-processing.

For information, each candidate also gets the paired difference to the baseline per dataset
(candidate minus baseline, object by object) with a 95 % bootstrap interval over the objects: an
interval that contains 0 means that dataset cannot tell the two sets of weights apart. It covers
the choice of objects, not the spread between training runs: two runs of one recipe differed by
0.02 real click with an interval of +-0.004 (docs/models.md, stages 17-18).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from eval_cells import HELD_OUT_SEED, centre_click, iou
from scipy import ndimage

import sam_plugins

SAMPLE_OBJECTS = 25  # as tests/test_embedded_model.py::test_one_click_segments_generated_cells
SAMPLE_MIN_AREA = 60


def click_and_box(
    predictor: sam_plugins.SamPredictor, image: np.ndarray, labels: np.ndarray, ids: list[int]
) -> dict[str, np.ndarray]:
    """Per object: click IoU, box IoU, and whether it touches another object (within 2 px)."""
    predictor.set_image(image)
    click, box, touching = [], [], []
    for i in ids:
        truth = labels == i
        x, y = centre_click(truth)
        masks, scores, _ = predictor.predict(np.array([[x, y]]), np.array([1]))
        click.append(iou(masks[int(np.argmax(scores))], truth))
        ys, xs = np.nonzero(truth)
        corners = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
        masks, _, _ = predictor.predict(box=corners, multimask_output=False)
        box.append(iou(masks[0], truth))
        near = ndimage.binary_dilation(truth, iterations=2) & (labels > 0) & ~truth
        touching.append(bool(near.any()))
    return {"click": np.array(click), "box": np.array(box), "touching": np.array(touching)}


def _merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _summary(r: dict[str, np.ndarray], split: bool) -> dict[str, float]:
    out = {"click": float(r["click"].mean()), "box": float(r["box"].mean()), "objects": int(r["click"].size)}
    if split and r["touching"].any():
        t = r["touching"]
        out.update(touching_click=float(r["click"][t].mean()), touching_box=float(r["box"][t].mean()))
    return out


def per_object(
    model_name: str,
    datasets: dict[str, list[tuple[np.ndarray, np.ndarray, list[int]]]],
    keep_prompted_region: bool | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per dataset, the click / box IoU and touching flag of every object, in a fixed order.
    `keep_prompted_region` None: as the checkpoint recommends."""
    model = sam_plugins.load_model(model_name, device="cpu")
    predictor = sam_plugins.SamPredictor(model, keep_prompted_region)
    return {
        name: _merge([click_and_box(predictor, *item) for item in items]) for name, items in datasets.items()
    }


def summarise(objects: dict[str, dict[str, np.ndarray]]) -> dict:
    return {name: _summary(r, split=name != "sample") for name, r in objects.items()}


def paired_difference(
    candidate: np.ndarray, baseline: np.ndarray, resamples: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Mean of candidate - baseline over the same objects, with a 95 % bootstrap interval."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high)}


def judged_datasets(
    generated: int, real: list[tuple[str, str]]
) -> dict[str, list[tuple[np.ndarray, np.ndarray, list[int]]]]:
    """(image, labels, object ids) per dataset: the sample's 25 cells, `generated` held-out
    generated images ("tuning") and the real (image, labels) files, objects >= 30 px."""
    import tifffile

    from sam_plugins.sample_data import cells_2d
    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    image, labels = cells_2d()
    ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= SAMPLE_MIN_AREA][:SAMPLE_OBJECTS]
    datasets = {"sample": [(image, labels, ids)]}

    def objects(lab: np.ndarray) -> list[int]:
        return [int(i) for i in np.unique(lab) if i and (lab == i).sum() >= 30]

    if generated:
        config = SyntheticConfig(size=(512, 512))
        samples = [
            generate_sample(np.random.default_rng(HELD_OUT_SEED + k), config) for k in range(generated)
        ]
        datasets["tuning"] = [(s.image, s.labels, objects(s.labels)) for s in samples]
    for image_path, labels_path in real:
        lab = tifffile.imread(labels_path).astype(np.int64)
        datasets["real"] = [*datasets.get("real", []), (tifffile.imread(image_path), lab, objects(lab))]

    return datasets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("candidates", nargs="+", help="checkpoints to judge")
    parser.add_argument("--baseline", default=None, help="default: the shipped embedded model")
    parser.add_argument("--real", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"))
    parser.add_argument("--generated", type=int, default=8, help="held-out generated images (0: none)")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers as JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    datasets = judged_datasets(args.generated, args.real)

    base_objects = per_object(args.baseline, datasets)
    results = {"baseline": summarise(base_objects)}
    print("baseline", args.baseline or "(shipped)", json.dumps(results["baseline"]))
    # a run trained from checkpoints/embedded-v1/latest.pt recommends no predictor settings:
    # judge it with the baseline's (keep_prompted_region) unless it recommends its own
    baseline_keep = sam_plugins.load_model(args.baseline, device="cpu").predictor_settings.get(
        "keep_prompted_region"
    )
    ruled = [(name, key) for name in ("sample", "real") if name in datasets for key in ("click", "box")]
    for candidate in args.candidates:
        own = sam_plugins.load_model(candidate, device="cpu").predictor_settings
        objects_got = per_object(candidate, datasets, None if own else baseline_keep)
        got = results[candidate] = summarise(objects_got)
        below = [
            f"{name} {key} {got[name][key]:.4f} < {results['baseline'][name][key]:.4f}"
            for name, key in ruled
            if round(got[name][key], 2) < round(results["baseline"][name][key], 2)
        ]
        verdict = "passes the 2-D rule" if not below else "below the baseline: " + "; ".join(below)
        print(candidate, json.dumps(got), "->", verdict)
        differences = {
            name: {
                key: paired_difference(objects_got[name][key], base_objects[name][key])
                for key in ("click", "box")
            }
            for name in datasets
        }
        got["difference_to_baseline"] = differences
        print(
            "  candidate - baseline, 95 % interval over objects:",
            "; ".join(
                f"{name} {key} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                for name, by_key in differences.items()
                for key, d in by_key.items()
            ),
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
