"""`sam-plugins segment`: segment every object in an image and write a label image and an overlay."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample_nuclei.tif"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment everything in an image (default: the bundled sample) with the embedded model",
        description="Automatic segmentation of one image. Writes <name>_labels.tif (one id per object) "
        "and <name>_overlay.png, and prints how many objects were found.",
    )
    parser.add_argument(
        "image", nargs="?", type=Path, help="image file (tif, png, jpg); default: bundled sample"
    )
    parser.add_argument(
        "--model", default=None, help="model name or checkpoint path (default: embedded model)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sam_output"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--channel", type=int, default=None, help="channel to use for multichannel images")
    parser.add_argument(
        "--prompts",
        choices=("seeds", "grid"),
        default=None,
        help="seeds: one point per bright object (nuclei, cells); grid: SAM's point grid "
        "(default: what the model recommends, else grid)",
    )
    parser.add_argument("--seed-sigma", type=float, default=None, help="seeds: smoothing in pixels (2)")
    parser.add_argument(
        "--seed-threshold", type=float, default=None, help="seeds: rise above background (0.2)"
    )
    recommended = "default: what the model's checkpoint recommends, else the official %s"
    parser.add_argument("--points-per-side", type=int, default=None, help=recommended % "32")
    parser.add_argument("--pred-iou-thresh", type=float, default=None, help=recommended % "0.88")
    parser.add_argument("--stability-score-thresh", type=float, default=None, help=recommended % "0.95")
    parser.add_argument("--min-mask-region-area", type=int, default=None, help=recommended % "0")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    parser.set_defaults(func=run)


def read_image(path: Path) -> np.ndarray:
    """Read a 2-D image file (TIFF via tifffile, other formats via Pillow)."""
    if not path.exists():
        raise FileNotFoundError(f"Image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def overlay(image_rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image with each object tinted in its own colour and outlined."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    tinted = label2rgb(labels, image=image_rgb, alpha=0.3, bg_label=0, image_alpha=1.0)
    tinted[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 0.0)
    return (np.clip(tinted, 0, 1) * 255).astype(np.uint8)


def run(args: argparse.Namespace) -> int:
    import tifffile
    from PIL import Image

    from ..automatic import generator_for_model, masks_to_label_image
    from ..images import prepare_image
    from ..models.registry import load_model

    path = args.image or SAMPLE_IMAGE
    image = read_image(path)
    rgb = prepare_image(image, channel=args.channel)
    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    generator = generator_for_model(
        model,
        prompts=args.prompts,
        seed_sigma=args.seed_sigma,
        seed_threshold=args.seed_threshold,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        min_mask_region_area=args.min_mask_region_area,
    )
    records = generator.generate(rgb)
    labels = masks_to_label_image(records, rgb.shape[:2])
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    labels_path = args.out / f"{stem}_labels.tif"
    overlay_path = args.out / f"{stem}_overlay.png"
    tifffile.imwrite(labels_path, labels, compression="zlib")
    Image.fromarray(overlay(rgb, labels)).save(overlay_path)
    n_objects = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    print(
        f"Found {n_objects} objects in {path.name} ({elapsed:.1f} s, model: {getattr(model, 'source', '?')})."
    )
    print(f"Labels:  {labels_path}\nOverlay: {overlay_path}")
    return 0
