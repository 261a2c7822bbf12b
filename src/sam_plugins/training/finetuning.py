"""Fine-tune a model on your own labelled images: from Python, the CLI and the napari widget.

    path = sam_plugins.finetune([(image, labels), ...], "my_model.pt", steps=300)
    model = sam_plugins.load_model(path)

The pairs are 2-D images (gray, RGB or multichannel with ``channel=``) with instance label images
of the same height and width (0 = background; 3-D stacks are used slice by slice), validated up
front (:class:`~sam_plugins.training.data.PairsDataset`). Only the labelled objects are prompted,
so a partly labelled image is fine. The recipe is the interactive one of `sam-plugins train`
(docs/training.md), started from ``model`` with a short warm-up and a small learning rate.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a run starts, not when the CLI lists its options
    from .trainer import TrainConfig

#: What `finetune` changes from `TrainConfig`'s defaults (the CLI's defaults too). "auto" precision:
#: bfloat16 autocast where the CPU or GPU has bfloat16 instructions (about 2x the steps per second
#: on such CPUs), float32 elsewhere (docs/training.md).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 500,
    "lr": 1e-4,
    "images_per_step": 2,
    "objects_per_image": 8,
    "precision": "auto",
}


def finetune_config(
    model: str = "default",
    *,
    name: str = "finetune",
    work_dir: str | Path = "runs",
    base: dict[str, Any] | None = None,
    **settings: Any,
) -> TrainConfig:
    """The `TrainConfig` of a fine-tuning run from ``model`` (a name or checkpoint): the
    fine-tuning defaults, then ``base`` (e.g. a config file's settings), then ``settings``; the
    warm-up, validation and checkpoint intervals follow the number of steps."""
    from .trainer import TrainConfig

    data: dict[str, Any] = {**FINETUNE_DEFAULTS, **(base or {}), **settings}
    data.setdefault("name", name)
    data.update(out_dir=str(work_dir), init_checkpoint=model, model_config={})
    steps = int(data["steps"])
    if "warmup_steps" not in settings:
        data["warmup_steps"] = min(50, max(1, steps // 10))
    data["epoch_steps"] = min(int(data.get("epoch_steps", 100)), steps)
    data["checkpoint_every"] = min(int(data.get("checkpoint_every", 100)), steps)
    return TrainConfig.from_dict(data)


def finetune(
    data: Sequence[Any],
    out: str | Path,
    model: str = "default",
    *,
    steps: int = FINETUNE_DEFAULTS["steps"],
    overwrite: bool = False,
    work_dir: str | Path | None = None,
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **settings: Any,
) -> Path:
    """Fine-tune ``model`` on ``data`` and write the result to ``out`` (a checkpoint that
    `load_model`, the napari widget and the FiftyOne operator accept); returns ``out``.

    ``data``: a sequence of (image, labels) pairs (or dicts / objects with ``image`` and
    ``labels``), or a :class:`~sam_plugins.training.data.FolderDataset`. ``settings`` are further
    `TrainConfig` fields (``lr``, ``freeze_encoder``, ``crop_size``, ``channel``, ``device``, ``seed``,
    ``progress`` ...), applied over ``config`` (e.g. a config file's settings). An existing ``out`` is
    kept unless ``overwrite``. The run's log, validation numbers and checkpoints go to ``work_dir``
    (default: a folder ``<out stem>-run`` beside ``out``). ``on_step`` and ``cancel`` are `train`'s:
    a cancelled run raises :class:`~sam_plugins.training.trainer.TrainingCancelled` and writes no
    ``out``.
    """
    from .data import FolderDataset, PairsDataset
    from .trainer import train

    out = Path(out)
    if out.suffix == "":
        out = out.with_suffix(".pt")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give a checkpoint file name such as {out / 'model.pt'}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another output file or pass overwrite=True")
    if isinstance(data, FolderDataset):
        source = {"data": "folder", "images_dir": str(data.images_dir), "labels_dir": str(data.labels_dir)}
        pairs: PairsDataset = data
    else:
        source = {"data": "dataset"}
        pairs = data if isinstance(data, PairsDataset) else PairsDataset(data)
    run_dir = Path(work_dir) if work_dir is not None else out.parent / f"{out.stem}-run"
    train_config = finetune_config(
        model, name=f"finetune-{out.stem}", work_dir=run_dir, base=config, steps=steps, **settings, **source
    )
    path = train(train_config, log=log, dataset=pairs, on_step=on_step, cancel=cancel)
    out.parent.mkdir(parents=True, exist_ok=True)
    # write next to the target, then rename: a crash never leaves a half-written checkpoint
    handle, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(handle)
    shutil.copyfile(path, partial)  # streamed: a vit_h checkpoint is 2.5 GB
    os.replace(partial, out)
    return out
