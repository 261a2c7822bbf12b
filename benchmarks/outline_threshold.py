"""Where would each dataset want the mask outline? Click and box IoU against the logit threshold.

    python benchmarks/outline_threshold.py                                   # embedded model
    python benchmarks/outline_threshold.py --model x.pt --real img2d.tif mask2d.tif

For the objects `benchmarks/promotion.py` uses (the `cells-2d` sample's 25, held-out generated
nuclei images, optional hand-labelled real images), one click at each object's centre (the
best-scored of the three masks) and its tight box give logits once; each is then cut at logit
thresholds from -2 to +2 (0 is SAM's `mask_threshold`; a higher threshold draws a tighter outline)
and kept to its prompted region as the checkpoint recommends. Printed: mean IoU per threshold, the
best threshold per dataset, and what choosing it on one half of each dataset's images (objects
left of the middle) and applying it to the other half gains, in both directions: what a user who
calibrated the outline on some of their own annotations would get on the rest.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from eval_cells import centre_click, iou
from promotion import judged_datasets

import sam_plugins
from sam_plugins.regions import keep_prompted_region

THRESHOLDS = np.round(np.arange(-2.0, 2.001, 0.25), 2)
ZERO = int(np.flatnonzero(THRESHOLDS == 0)[0])  # SAM's mask_threshold


def threshold_ious(
    predictor: sam_plugins.SamPredictor, image: np.ndarray, labels: np.ndarray, ids: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(objects, thresholds, 2) click / box IoUs, and whether each object lies left of the middle."""
    predictor.set_image(image)
    keep = predictor.keep_prompted_region
    rows, left = [], []
    for i in ids:
        truth = labels == i
        x, y = centre_click(truth)
        point, positive = np.array([[x, y]], dtype=float), np.array([1])
        logits, scores, _ = predictor.predict(point, positive, return_logits=True)
        click = logits[int(np.argmax(scores))]
        ys, xs = np.nonzero(truth)
        corners = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
        box = predictor.predict(box=corners, multimask_output=False, return_logits=True)[0][0]
        row = []
        for t in THRESHOLDS:
            c, b = click > t, box > t
            if keep:
                c, b = keep_prompted_region(c, point, positive), keep_prompted_region(b, box=corners)
            row.append((iou(c, truth), iou(b, truth)))
        rows.append(row)
        left.append(xs.mean() < labels.shape[1] / 2)
    return np.array(rows), np.array(left)


def split_gain(r: np.ndarray, left: np.ndarray, prompt: int) -> list[dict[str, float]]:
    """Choose the threshold on one half's objects, score the other half at it and at 0."""
    out = []
    for train in (left, ~left):
        test = ~train
        if not train.any() or not test.any():
            continue
        best = int(np.argmax(r[train, :, prompt].mean(0)))
        out.append(
            {
                "chosen": float(THRESHOLDS[best]),
                "at_0": float(r[test, ZERO, prompt].mean()),
                "at_chosen": float(r[test, best, prompt].mean()),
                "objects": int(test.sum()),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="model name or checkpoint (default: the embedded model)"
    )
    parser.add_argument("--generated", type=int, default=8, help="held-out generated images (0: none)")
    parser.add_argument("--real", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"))
    args = parser.parse_args()

    model = sam_plugins.load_model(args.model, device="cpu")
    predictor = sam_plugins.SamPredictor(model)
    report = {}
    for name, items in judged_datasets(args.generated, [tuple(r) for r in args.real]).items():
        parts = [threshold_ious(predictor, *item) for item in items]
        r, left = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        mean = r.mean(0)
        print(f"\n{name} ({len(r)} objects): threshold -> click / box mean IoU")
        for t, (c, b) in zip(THRESHOLDS, mean, strict=True):
            print(f"  {t:+.2f}  {c:.4f} / {b:.4f}")
        entry = {}
        for prompt, label in ((0, "click"), (1, "box")):
            best = int(np.argmax(mean[:, prompt]))
            entry[label] = {
                "best": float(THRESHOLDS[best]),
                "at_best": float(mean[best, prompt]),
                "at_0": float(mean[ZERO, prompt]),
                "halves": split_gain(r, left, prompt),
            }
            halves = ", ".join(
                f"chosen {h['chosen']:+.2f} on one half: {h['at_0']:.4f} -> {h['at_chosen']:.4f} "
                f"on the other {h['objects']}"
                for h in entry[label]["halves"]
            )
            print(f"  {label}: best {THRESHOLDS[best]:+.2f} ({mean[best, prompt]:.4f}); {halves}")
        report[name] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
