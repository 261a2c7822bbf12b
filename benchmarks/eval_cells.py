"""Segmentation quality of a model on nuclei/cell images with instance labels.

    python benchmarks/eval_cells.py                         # embedded model, 8 held-out generated images
    python benchmarks/eval_cells.py --model runs/x/last.pt --real img.tif labels.tif --save-dir out/

Three numbers per dataset, the ones the embedded model is judged on:
  click  mean IoU of the best-scored mask for one positive click at each object's centre
         (the interior point farthest from the boundary, i.e. where a person clicks);
  box    mean IoU of the single mask for the object's tight bounding box;
  auto   F1 at IoU 0.5 of automatic segmentation ("segment everything") against all objects.
Objects smaller than --min-area pixels are skipped for click/box (they are still counted for F1).
Generated images use seeds far from the training seeds (held out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import sam_plugins
from sam_plugins.automatic import SamAutomaticMaskGenerator, generator_for_model, masks_to_label_image
from sam_plugins.automatic.tuning import match_f1

HELD_OUT_SEED = 9_000_000


def centre_click(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the object pixel farthest from the background."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dist = ndimage.distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return float(x + x0), float(y + y0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate_image(
    predictor: sam_plugins.SamPredictor,
    generator: SamAutomaticMaskGenerator | None,
    image: np.ndarray,
    labels: np.ndarray,
    min_area: int,
) -> dict:
    predictor.set_image(image)
    click_ious, box_ious = [], []
    for label_id in np.unique(labels):
        if label_id == 0:
            continue
        mask = labels == label_id
        if mask.sum() < min_area:
            continue
        x, y = centre_click(mask)
        masks, scores, _ = predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
        click_ious.append(iou(masks[int(np.argmax(scores))], mask))
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
        masks, _, _ = predictor.predict(box=box, multimask_output=False)
        box_ious.append(iou(masks[0], mask))
    result = {"click": click_ious, "box": box_ious}
    if generator is not None:
        records = generator.generate(image)
        pred = masks_to_label_image(records, labels.shape)
        result["auto"] = match_f1(pred, labels)
        result["auto_labels"] = pred
    return result


def summarise(name: str, results: list[dict]) -> dict:
    click = np.concatenate([r["click"] for r in results]) if results else np.array([])
    box = np.concatenate([r["box"] for r in results]) if results else np.array([])
    summary = {"dataset": name, "images": len(results), "objects": int(click.size)}
    summary["click_mean_iou"] = float(click.mean()) if click.size else float("nan")
    summary["box_mean_iou"] = float(box.mean()) if box.size else float("nan")
    if results and "auto" in results[0]:
        tp = sum(r["auto"]["tp"] for r in results)
        fp = sum(r["auto"]["fp"] for r in results)
        fn = sum(r["auto"]["fn"] for r in results)
        summary["auto_f1_at_0.5"] = 2 * tp / max(1, 2 * tp + fp + fn)
    return summary


def save_overlay(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    from sam_plugins.commands.segment import overlay

    Image.fromarray(overlay(sam_plugins.prepare_image(image), labels)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: embedded)")
    parser.add_argument("--generated", type=int, default=8, help="number of held-out generated images")
    parser.add_argument("--size", type=int, default=512, help="side of the generated images")
    parser.add_argument("--real", nargs=2, action="append", default=[], metavar=("IMAGE", "LABELS"))
    parser.add_argument("--min-area", type=int, default=30)
    parser.add_argument("--no-auto", action="store_true", help="skip automatic segmentation (faster)")
    parser.add_argument(
        "--prompts", choices=("seeds", "grid"), default=None, help="default: what the model recommends"
    )
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--pred-iou-thresh", type=float, default=None, help="default: the model's own")
    parser.add_argument("--stability-score-thresh", type=float, default=None, help="default: the model's own")
    parser.add_argument("--save-dir", type=Path, default=None, help="write overlays of automatic results")
    parser.add_argument("--json", type=Path, default=None, help="write the summary as JSON")
    args = parser.parse_args()

    import tifffile
    import torch

    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    torch.set_num_threads(2)
    model = sam_plugins.load_model(args.model, device="cpu")
    predictor = sam_plugins.SamPredictor(model)
    generator = None
    if not args.no_auto:
        given = {
            "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh,
        }
        generator = generator_for_model(
            model,
            prompts=args.prompts,
            points_per_side=args.points_per_side,
            min_mask_region_area=10,
            **given,
        )
    datasets: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]] = []
    if args.generated:
        config = SyntheticConfig(size=(args.size, args.size))
        samples = []
        for i in range(args.generated):
            sample = generate_sample(np.random.default_rng(HELD_OUT_SEED + i), config)
            samples.append((f"generated_{i}", sample.image, sample.labels))
        datasets.append(("generated (held out)", samples))
    for image_path, labels_path in args.real:
        image, labels = tifffile.imread(image_path), tifffile.imread(labels_path).astype(np.int64)
        datasets.append((f"real: {Path(image_path).name}", [(Path(image_path).stem, image, labels)]))

    summaries = []
    for name, samples in datasets:
        start = time.perf_counter()
        results = []
        for sample_name, image, labels in samples:
            result = evaluate_image(predictor, generator, image, labels, args.min_area)
            results.append(result)
            if args.save_dir is not None and "auto_labels" in result:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                save_overlay(args.save_dir / f"{sample_name}_auto.png", image, result["auto_labels"])
        summary = summarise(name, results)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        summaries.append(summary)
        print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"model": str(args.model or "default"), "results": summaries}, indent=2)
        )


if __name__ == "__main__":
    main()
