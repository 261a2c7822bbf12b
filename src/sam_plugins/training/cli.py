"""`sam-plugins train` (a config file) and `sam-plugins finetune` (folders of images and labels)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` and `finetune` commands."""
    p = subparsers.add_parser("train", help="train a SAM model from a TOML/JSON config (see configs/)",
                              description="Train a SAM model with simulated interactive prompts.")
    p.add_argument("--config", required=True, help="training config file (.toml or .json)")
    p.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    p.add_argument("--out", help="parent folder of the run (overrides out_dir)")
    p.add_argument("--name", help="run name (overrides name)")
    p.add_argument("--steps", type=int, help="total number of steps (overrides steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    f = subparsers.add_parser("finetune", help="fine-tune a model on a folder of images and instance labels",
                              description="Fine-tune SAM on your images and instance label images "
                              "(tif/png; 2-D, or 3-D stacks used slice by slice).")
    f.add_argument("--images", required=True, help="folder of images")
    f.add_argument("--labels", required=True, help="folder of instance label images (same file names)")
    f.add_argument("--model", default="default", help="model name or checkpoint to start from")
    f.add_argument("--out", required=True, help="output checkpoint file (.pt)")
    f.add_argument("--config", help="optional TOML/JSON file with further TrainConfig settings")
    f.add_argument("--steps", type=int, default=500)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--images-per-step", type=int, default=2)
    f.add_argument("--objects-per-image", type=int, default=8)
    f.add_argument("--freeze-encoder", action="store_true", help="train only the prompt encoder and decoder")
    f.add_argument("--val-fraction", type=float, default=0.1)
    f.add_argument("--channel", type=int, help="channel of multichannel images to use")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    f.add_argument("--work-dir", default="runs", help="where the run's logs and checkpoints go")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=_run_finetune)


def _run_train(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train

    config = TrainConfig.from_file(args.config)
    changes = {"out_dir": args.out, "name": args.name, "steps": args.steps}
    data = {**config.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
    if args.no_progress:
        data["progress"] = False
    path = train(TrainConfig.from_dict(data), resume=args.resume)
    print(path)
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from .trainer import TrainConfig, train

    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    out = Path(args.out)
    base.update(
        name=base.get("name") if args.config and "name" in base else f"finetune-{out.stem}",
        out_dir=args.work_dir,
        data="folder",
        images_dir=args.images,
        labels_dir=args.labels,
        init_checkpoint=args.model,
        model_config={},
        steps=args.steps,
        lr=args.lr,
        warmup_steps=min(50, max(1, args.steps // 10)),
        epoch_steps=min(base.get("epoch_steps", 100), args.steps),
        checkpoint_every=min(base.get("checkpoint_every", 100), args.steps),
        images_per_step=args.images_per_step,
        objects_per_image=args.objects_per_image,
        freeze_encoder=args.freeze_encoder,
        val_fraction=args.val_fraction,
        channel=args.channel,
        seed=args.seed,
        threads=args.threads,
        progress=not args.no_progress,
    )
    path = train(TrainConfig.from_dict(base))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == "":
        out = out.with_suffix(".pt")
    shutil.copyfile(path, out)
    print(out)
    return 0
