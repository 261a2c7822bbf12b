"""`sam-plugins segment-folder IN OUT`: batch-segment a folder of images (local or Ray engine)."""

from __future__ import annotations

import argparse
import sys

from ..models.checkpoints import PROMPT_MODES
from .worker import AMG_PARAMETERS

INT_PARAMETERS = (
    "seed_min_distance",
    "points_per_side",
    "points_per_batch",
    "crop_n_layers",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `segment-folder` command."""
    p = subparsers.add_parser(
        "segment-folder",
        help="segment every image of a folder (label images + COCO JSON)",
        description="Segment every image in IN (automatic mode) and write OUT/<name>.tif|png label "
        "images plus OUT/annotations.json (COCO-style, RLE masks). Re-running resumes.",
    )
    p.add_argument("input", help="folder of images (png, jpg, tif)")
    p.add_argument("output", help="output folder")
    p.add_argument("--mode", choices=["auto", "automatic"], default="auto", help="segmentation mode")
    p.add_argument("--model", default=None, help="model name or checkpoint path (default: embedded model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--format", dest="fmt", choices=["tif", "png"], default="tif", help="label image format")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU or CPU)")
    p.add_argument("--channel", type=int, default=None, help="channel to use for multi-channel images")
    p.add_argument("--overwrite", action="store_true", help="redo images that already have outputs")
    p.add_argument("--chunk-size", type=int, default=8, help="images per write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    amg = p.add_argument_group("automatic segmentation (official parameter names, plus the seed settings)")
    amg.add_argument(
        "--prompts",
        choices=PROMPT_MODES,
        default=None,
        help="grid: SAM's point grid; seeds: one point per bright object (default: the model's choice)",
    )
    for name in AMG_PARAMETERS[1:]:
        kind = int if name in INT_PARAMETERS else float
        amg.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .folder import segment_folder
    from .worker import SegmentSettings

    amg = {name: getattr(args, name) for name in AMG_PARAMETERS if getattr(args, name) is not None}
    settings = SegmentSettings(
        mode="automatic", model=args.model, device=args.device, amg=amg, channel=args.channel
    )
    options = {}
    if args.engine == "ray":
        options = {"address": args.address, "num_workers": args.workers}
    elif args.address or args.workers:
        raise ValueError("--address and --workers apply to --engine ray")
    summary = segment_folder(
        args.input,
        args.output,
        settings,
        fmt=args.fmt,
        overwrite=args.overwrite,
        engine=args.engine,
        engine_options=options,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    print(
        f"segmented {summary.succeeded}/{summary.processed} images, {summary.instances} objects "
        f"in {summary.seconds:.1f} s -> {args.output}"
    )
    for key, error in summary.failures.items():
        print(f"failed: {key}: {error}", file=sys.stderr)
    return 1 if summary.failures else 0
