"""`sam-plugins train` (a config file), `finetune` (folders of images and labels) and `average`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .finetuning import FINETUNE_DEFAULTS

TIME_LIMIT_HELP = (
    "stop after this long: seconds, or a number with s, m or h (e.g. 20m); the learning rate decays "
    "to fit, and the run ends with a validation and its checkpoint"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train`, `train-curve`, `finetune` and `average` commands."""
    p = subparsers.add_parser(
        "train",
        help="train a SAM model from a TOML/JSON config (see configs/)",
        description="Train a SAM model with simulated interactive prompts.",
    )
    p.add_argument("--config", required=True, help="training config file (.toml or .json)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--out", help="parent folder of the run (overrides out_dir)")
    p.add_argument("--name", help="run name (overrides name)")
    p.add_argument("--steps", type=int, help="total number of steps (overrides steps)")
    p.add_argument(
        "--time-limit",
        type=_duration,
        help=TIME_LIMIT_HELP + " (overrides time_limit_s)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps or auto (overrides device; default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    c = subparsers.add_parser(
        "train-curve",
        help="print the learning curve of a training run",
        description="Table of a run's log.jsonl: training losses averaged per "
        "window, and the validation mIoUs.",
    )
    c.add_argument("run_dir", help="the run folder (holds log.jsonl)")
    c.add_argument("--every", type=int, default=100, help="steps per row (default 100)")
    c.set_defaults(func=_run_curve)

    f = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a folder of images and instance labels",
        description="Fine-tune SAM on your images and instance label images "
        "(tif/png; 2-D, or 3-D stacks used slice by slice).",
    )
    f.add_argument("--images", required=True, help="folder of images")
    f.add_argument("--labels", required=True, help="folder of instance label images (same file names)")
    f.add_argument("--model", default="default", help="model name or checkpoint to start from")
    f.add_argument("--out", required=True, help="output checkpoint file (.pt)")
    f.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    f.add_argument("--config", help="optional TOML/JSON file with further TrainConfig settings")
    f.add_argument("--steps", type=int, default=FINETUNE_DEFAULTS["steps"], help="at most this many steps")
    f.add_argument(
        "--time-limit",
        type=_duration,
        default=0.0,
        help=TIME_LIMIT_HELP + " (default: no limit)",
    )
    f.add_argument("--lr", type=float, default=FINETUNE_DEFAULTS["lr"])
    f.add_argument("--images-per-step", type=int, default=FINETUNE_DEFAULTS["images_per_step"])
    f.add_argument("--objects-per-image", type=int, default=FINETUNE_DEFAULTS["objects_per_image"])
    f.add_argument(
        "--crop-size",
        type=_crop_size,
        default=None,
        help="side of the training crops in pixels, resized to the model input (default: the model "
        "input, smaller images padded at 1x); 'auto': each image at the scale segmentation uses it "
        "(whole if its long side is at most 1.5x the model input, else 1x crops like the widget's tiles)",
    )
    f.add_argument("--freeze-encoder", action="store_true", help="train only the prompt encoder and decoder")
    f.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=FINETUNE_DEFAULTS["precision"],
        help="auto (default): bfloat16 autocast where the CPU/GPU has bfloat16 instructions, else fp32",
    )
    f.add_argument("--val-fraction", type=float, default=0.1)
    f.add_argument("--channel", type=int, help="channel of multichannel images to use")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    f.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (GPU when there is one)")
    f.add_argument("--work-dir", default="runs", help="where the run's logs and checkpoints go")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_run_finetune)

    a = subparsers.add_parser(
        "average",
        help="average the weights of checkpoints of one architecture (a weight soup)",
        description="Write a checkpoint whose weights are the weighted mean of the given ones, e.g. "
        "a fine-tuned model and the model it started from (keeps more of the start's generality).",
    )
    a.add_argument(
        "checkpoints",
        nargs="+",
        help="two or more checkpoint files or model names (default: the embedded model)",
    )
    a.add_argument("--weights", type=float, nargs="+", help="one weight per checkpoint (default: equal)")
    a.add_argument("--out", required=True, help="output checkpoint file (.pt)")
    a.set_defaults(func=_run_average)


def _run_train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train

    config = TrainConfig.from_file(args.config)
    changes = {
        "out_dir": args.out,
        "name": args.name,
        "steps": args.steps,
        "device": args.device,
        "time_limit_s": args.time_limit,
    }
    data = {**config.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
    if args.no_progress:
        data["progress"] = False
    path = train(TrainConfig.from_dict(data), resume=args.resume)
    print(path)
    return 0


def _duration(text: str) -> float:
    """Seconds from "90", "90s", "20m" or "1.5h"."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1.0)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 600, 90s, 20m or 1.5h, got {text!r}"
        )
    return seconds


def _crop_size(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of pixels, got {text!r}")
    return int(text)


def _run_finetune(args: argparse.Namespace) -> int:
    from .data import FolderDataset
    from .finetuning import finetune
    from .trainer import TrainConfig

    base = TrainConfig.from_file(args.config).to_dict() if args.config else None
    out = finetune(
        FolderDataset(args.images, args.labels),
        args.out,
        args.model,
        steps=args.steps,
        time_limit_s=args.time_limit,
        overwrite=args.overwrite,
        work_dir=args.work_dir,
        config=base,
        lr=args.lr,
        crop_size=args.crop_size,
        images_per_step=args.images_per_step,
        objects_per_image=args.objects_per_image,
        freeze_encoder=args.freeze_encoder,
        precision=args.precision,
        val_fraction=args.val_fraction,
        channel=args.channel,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    print(out)
    return 0


def _run_average(args: argparse.Namespace) -> int:
    from .averaging import save_average

    out = Path(args.out)
    if out.suffix == "":
        out = out.with_suffix(".pt")
    if out.resolve() in {Path(p).resolve() for p in args.checkpoints}:
        raise ValueError(f"--out {out} is one of the inputs; write the average to a new file")
    print(save_average(args.checkpoints, out, args.weights))
    return 0


def learning_curve(log_path: str | Path, every: int = 100) -> list[dict[str, float]]:
    """Rows every `every` steps: training loss/dice/IoU averaged since the previous row, and the
    validation mIoUs measured at that step (validation is logged right after its step)."""
    import json

    rows: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    val_by_step: dict[int, dict[str, float]] = {}
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if "loss" not in rec:
            val_by_step[rec["step"]] = {k: v for k, v in rec.items() if k.startswith("val_")}
            continue
        window.append(rec)
        if rec["step"] % every == 0:
            keys = ("loss", "dice", "focal", "iou_first", "iou_last", "sec_per_step")
            rows.append({"step": rec["step"], **{k: sum(w[k] for w in window) / len(window) for k in keys}})
            window = []
    return [{**row, **val_by_step.get(row["step"], {})} for row in rows]


def _run_curve(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no log.jsonl in {args.run_dir}")
    rows = learning_curve(path, args.every)
    cols = [
        "step",
        "loss",
        "dice",
        "iou_first",
        "iou_last",
        "sec_per_step",
        "val_point_miou",
        "val_box_miou",
        "val_click3_miou",
    ]
    print(" ".join(f"{c:>14}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]:>14.4g}" if c in row else f"{'-':>14}" for c in cols))
    return 0
