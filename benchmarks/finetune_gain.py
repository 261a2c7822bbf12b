"""How much does fine-tuning on a part of your own labelled image help on the rest of it?

    python benchmarks/finetune_gain.py IMAGE LABELS [--model default] [--steps 150]

The image is split into a left and a right half. For each half in turn, `sam-plugins finetune`
(its defaults; `--crop-size` is passed on) trains on that half's image and
labels, and the objects lying wholly in the other half are prompted in the whole image: one click
at each object's centre (best-scored of the three masks) and its tight box, as mean IoU, before
(the starting model) and after (the fine-tuned one). It answers a user's question — is labelling
some of my objects worth it, and how much? — and nothing here is shipped: the fine-tuned weights
stay in the work folder. Objects cut by the split are used for training only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from promotion import click_and_box, paired_difference

import sam_plugins


def halves(labels: np.ndarray) -> list[tuple[slice, list[int]]]:
    """(training columns, ids of the objects wholly in the other half) for left and right."""
    width = labels.shape[1]
    mid = width // 2
    out = []
    for train_cols, test_cols in ((slice(0, mid), slice(mid, width)), (slice(mid, width), slice(0, mid))):
        inside = np.zeros(labels.shape, bool)
        inside[:, test_cols] = True
        ids = [
            int(i)
            for i in np.unique(labels[:, test_cols])
            if i and (labels == i).sum() >= 30 and inside[labels == i].all()
        ]
        out.append((train_cols, ids))
    return out


def finetune(
    image: np.ndarray,
    labels: np.ndarray,
    model: str,
    steps: int,
    crop_size: str | None,
    work: Path,
    seed: int,
) -> Path:
    import tifffile

    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "labels").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(work / "images" / "part.tif", image)
    tifffile.imwrite(work / "labels" / "part.tif", labels.astype(np.uint16))
    out = work / "finetuned.pt"
    command = [
        sys.executable, "-m", "sam_plugins.cli", "finetune",
        "--images", str(work / "images"), "--labels", str(work / "labels"),
        "--model", model, "--out", str(out), "--steps", str(steps), "--seed", str(seed),
        "--work-dir", str(work / "runs"), "--no-progress",
    ]  # fmt: skip
    if crop_size is not None:
        command += ["--crop-size", crop_size]
    subprocess.run(command, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image")
    parser.add_argument("labels")
    parser.add_argument("--model", default="default", help="model to start from (default: the embedded one)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--crop-size", default=None, help="passed to sam-plugins finetune (default: its own)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()

    import tifffile
    import torch

    torch.set_num_threads(2)
    image = tifffile.imread(args.image)
    labels = tifffile.imread(args.labels).astype(np.int64)
    if image.shape[:2] != labels.shape:
        raise SystemExit(f"image {image.shape} and labels {labels.shape} differ in shape")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="finetune_gain_"))
    start = sam_plugins.SamPredictor(sam_plugins.load_model(args.model, device="cpu"))
    before, after = [], []
    for k, (cols, ids) in enumerate(halves(labels)):
        part_labels = labels[:, cols]
        weights = finetune(
            image[:, cols], part_labels, args.model, args.steps, args.crop_size, work / f"half{k}", seed=k
        )
        tuned = sam_plugins.SamPredictor(sam_plugins.load_model(weights, device="cpu"))
        before.append(click_and_box(start, image, labels, ids))
        after.append(click_and_box(tuned, image, labels, ids))
        trained_on = len([i for i in np.unique(part_labels) if i])
        print(
            f"half {k}: trained on {trained_on} objects, tested on {len(ids)}: click "
            f"{before[-1]['click'].mean():.4f} -> {after[-1]['click'].mean():.4f}, box "
            f"{before[-1]['box'].mean():.4f} -> {after[-1]['box'].mean():.4f}",
            flush=True,
        )
    result = {}
    for key in ("click", "box"):
        b = np.concatenate([r[key] for r in before])
        a = np.concatenate([r[key] for r in after])
        result[key] = {
            "before": float(b.mean()),
            "after": float(a.mean()),
            "difference": paired_difference(a, b),
        }
    result["objects"] = int(sum(r["click"].size for r in before))
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
