"""`sam-plugins tune`: choose a model's automatic-segmentation thresholds and predictor settings
on labelled images."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# Generated tuning images use seeds of their own (training streams and the held-out evaluation
# images of benchmarks/eval_cells.py use others).
TUNING_SEED = 8_000_000
KINDS = {"nuclei": {"nuclei": 1.0}, "cells": {"cells": 1.0}, "mixed": {"nuclei": 0.7, "cells": 0.3}}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="choose a model's automatic-segmentation thresholds and predictor settings on labelled images",
        description="Run automatic segmentation once per labelled image, score every pair of "
        "thresholds (predicted IoU, stability) by F1 at IoU 0.5, and print the best. Then prompt "
        "every labelled object with a click at its centre and with its box, and score whether "
        "keeping only the prompted region of each mask (one connected piece per object) helps. "
        "With --out, write a copy of the checkpoint that recommends both (segment, napari, "
        "FiftyOne and SamPredictor then use them when the user sets none).",
    )
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: embedded model)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (needs --labels)")
    source.add_argument("--generated", type=int, help="this many generated images instead of folders")
    parser.add_argument("--labels", type=Path, help="folder of instance label images (same file names)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated images")
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="nuclei",
        help="what the generated images show (default: %(default)s, the embedded model's main job)",
    )
    parser.add_argument("--channel", type=int, default=None, help="channel of multichannel images")
    parser.add_argument("--points-per-side", type=int, default=None, help="default: the model's own, else 32")
    parser.add_argument("--out", type=Path, default=None, help="write the tuned checkpoint here (.pt)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    parser.set_defaults(func=run)


def _pairs(args: argparse.Namespace) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    if args.images is not None:
        if args.labels is None:
            raise ValueError("--images needs --labels (a folder of instance label images)")
        from ..training.data import FolderDataset

        data = FolderDataset(args.images, args.labels)
        return list(data), f"{len(data)} labelled images from {args.images}"
    if args.generated < 1:
        raise ValueError(f"--generated must be at least 1, got {args.generated}")
    from ..training.synthetic import SyntheticConfig, generate_sample

    config = SyntheticConfig(size=(args.size, args.size), kind_weights=KINDS[args.kind])
    samples = [generate_sample(np.random.default_rng(TUNING_SEED + i), config) for i in range(args.generated)]
    text = f"{args.generated} generated {args.size}x{args.size} {args.kind} images (seeds {TUNING_SEED}+)"
    return [(s.image, s.labels) for s in samples], text


def run(args: argparse.Namespace) -> int:
    from ..automatic.tuning import tune_thresholds
    from ..models.checkpoints import read_checkpoint_meta, save_checkpoint
    from ..models.registry import load_model
    from ..prompt_tuning import score_prompts

    if args.out is not None and args.out.suffix == "":
        args.out = args.out.with_suffix(".pt")
    pairs, described = _pairs(args)
    model = load_model(args.model, device=args.device)
    start = time.perf_counter()
    scores = tune_thresholds(
        model,
        pairs,
        points_per_side=args.points_per_side,
        channel=args.channel,
        progress=lambda n: print(f"  image {n}/{len(pairs)} done", flush=True),
    )
    print(f"Scored {len(scores)} threshold pairs on {described} ({time.perf_counter() - start:.0f} s):")
    print(f"{'pred_iou':>9} {'stability':>9} {'F1@0.5':>7} {'found':>6} {'missed':>6} {'extra':>6}")
    for s in scores[:8]:
        thresholds = f"{s.pred_iou_thresh:>9.2f} {s.stability_score_thresh:>9.2f}"
        print(f"{thresholds} {s.f1:>7.3f} {s.tp:>6} {s.fn:>6} {s.fp:>6}")
    best = scores[0]
    current = getattr(model, "generator_settings", {})
    print(f"Best: {best.settings()} (the model recommended {current or 'nothing: official defaults'})")
    start = time.perf_counter()
    prompts = score_prompts(model, pairs, channel=args.channel)
    print(
        f"Click / box mean IoU on {prompts.objects} objects ({time.perf_counter() - start:.0f} s): "
        f"{prompts.click:.4f} / {prompts.box:.4f} as predicted, {prompts.click_kept:.4f} / "
        f"{prompts.box_kept:.4f} keeping only the prompted region -> keep_prompted_region "
        f"{prompts.keep_prompted_region}"
    )
    if args.out is not None:
        source = Path(str(getattr(model, "source", "")))
        meta = read_checkpoint_meta(source) if source.is_file() else {"source": str(args.model)}
        meta["generator_settings"] = {**current, **best.settings()}
        if args.points_per_side is not None:
            meta["generator_settings"]["points_per_side"] = args.points_per_side
        meta["generator_tuning"] = {"data": described, "best": best.to_dict()}
        meta["predictor_settings"] = {
            **(meta.get("predictor_settings") or {}),
            "keep_prompted_region": prompts.keep_prompted_region,
        }
        meta["predictor_tuning"] = {"data": described, **prompts.to_dict()}
        save_checkpoint(args.out, model, meta)
        print(f"Wrote {args.out}")
    return 0
