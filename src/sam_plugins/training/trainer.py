"""SAM training loop: simulated interactive prompting, AdamW with warm-up + cosine decay, checkpoints.

One step: the encoder embeds `images_per_step` images once; each image's objects share its
embedding; `rounds` prompt rounds re-run only the prompt encoder and mask decoder (first round a
point, a noisy box or a rough mask; later rounds add a corrective click from the previous error
and feed the previous logits back). The loss is computed at the decoder's output resolution.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..models.checkpoints import recommended_meta, save_checkpoint
from ..models.configs import (
    OFFICIAL_CONFIGS,
    SMALL_CONFIGS,
    SamConfig,
    add_high_res,
    build_sam,
    resize_input,
)
from .aux_head import DenseAuxHead, dense_aux_loss
from .data import TrainExample
from .distill import OrientationTeacher, distill_loss
from .hardware import cpu_lacks_bf16, resolve_device, resolve_precision, training_autocast
from .init import init_weights
from .losses import sam_loss
from .optim import lr_factor, make_optimizer, moving_average
from .prompts import jitter_boxes, mask_prompt_from_gt, sample_correction_points, sample_positive_points
from .sources import draw_examples, make_sources, split_dataset, step_examples

__all__ = [  # the data-source helpers live in sources.py; importable from here as before
    "TrainConfig",
    "TrainingCancelled",
    "build_model",
    "draw_examples",
    "evaluate",
    "interactive_loss",
    "lr_factor",
    "make_optimizer",
    "make_sources",
    "moving_average",
    "resolve_precision",
    "save_checkpoint",
    "split_dataset",
    "train",
]


@dataclass
class TrainConfig:
    """Everything a training run depends on; loadable from a TOML or JSON file."""

    name: str = "run"
    out_dir: str = "runs"
    # model: a base configuration name (tiny, vit_b, ...) changed by `model_config`, built with
    # random weights; or, with `init_checkpoint`, weights to start from (name or file for load_model).
    model: str = "tiny"
    model_config: dict = field(default_factory=dict)
    init_checkpoint: str | None = None
    init: str = "vit"  # from-scratch initialisation: "vit" (truncated normal, sin-cos positions) or "torch"
    init_qk_gain: float = 2.0  # > 0: decoder attention starts with tied q/k projections (0 = off)
    # data: "synthetic" (sam_plugins.training.synthetic), "folder" (images_dir + labels_dir) or
    # "dataset" (pairs in memory, passed as train(..., dataset=); sam_plugins.finetune)
    data: str = "synthetic"
    synthetic: dict = field(default_factory=dict)
    train_pool: int = 0  # > 0: draw training images from this many fixed generated ones
    images_dir: str | None = None
    labels_dir: str | None = None
    val_fraction: float = 0.1
    channel: int | None = None
    # samples and prompts
    crop_size: int | str | None = None  # None: the model input; "auto": the scale of use (data.crop_side)
    images_per_step: int = 2
    objects_per_image: int = 8
    min_area: int = 16
    rounds: int = 3
    no_point_round_prob: float = 0.15
    box_prob: float = 0.4
    # std of the box corners' jitter as a fraction of the box side (the paper's 0.1, at most 20 px);
    # smaller = the model learns to trust a tight box more
    box_noise: float = 0.1
    mask_prompt_prob: float = 0.05
    touching_weight: float = 1.0  # training objects that touch another are picked this many times as often
    augment: dict = field(default_factory=dict)
    # optimisation
    steps: int = 2000
    # > 0: a wall-clock budget in seconds (a batch job's limit, a lent GPU, "as good as it gets in 20
    # minutes"): the learning rate decays by whichever of steps and time is further along, and the run
    # stops when the time is up (validation and model.pt follow); 0 = run all `steps`
    time_limit_s: float = 0.0
    epoch_steps: int = 250
    lr: float = 4e-4
    encoder_lr_scale: float = 1.0
    # learning rate of the high-res feature path (model_config.high_res_channels) relative to lr: a path
    # added to a trained model starts at zero and must catch up with the rest
    high_res_lr_scale: float = 1.0
    freeze_encoder: bool = False
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    # > 0: also keep an exponential moving average of the weights (each step keeps this fraction of
    # the average; 0.99 ~ the last 100 steps). It starts at the starting weights; the checkpoints
    # and the validation use it, resume.pt keeps both. Smooths out where the last steps happened to land
    ema_decay: float = 0.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    aux_weight: float = 0.0  # > 0: dense foreground/boundary loss on the image embedding (aux_head.py)
    focal_alpha: float = -1.0
    focal_gamma: float = 2.0
    multimask_other_weight: float = 0.0  # > 0: also train the non-best multimask outputs (losses.py)
    # > 1: also train the first prompt's masks towards the starting weights' average over this many
    # orientations of the image (distill.py), with weight distill_weight; 0 = off
    distill_orientations: int = 0
    distill_weight: float = 1.0
    # 1: the mask loss on the low-res logits (stride 4 of the input) against area-averaged targets;
    # k > 1: on the logits upsampled k times (bilinear, as at inference) against k-times finer targets,
    # which teaches where the outline runs between low-res pixels
    loss_upscale: int = 1
    # "fp32", or "bf16": the forward pass under bfloat16 autocast (matmuls and convolutions in bf16,
    # weights, gradients, optimizer state and the loss in fp32); 1.5-2.5x the steps per second on
    # CPUs with AVX512-BF16 or AMX and on recent GPUs, several times slower on CPUs without them;
    # "auto": bf16 where the device has bfloat16 instructions, else fp32
    precision: str = "fp32"
    # bookkeeping
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default (1 is fastest on a busy shared CPU)
    data_workers: int = 0  # > 0: processes that prepare the next steps' examples (for GPU training)
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), or a torch device such as "cpu", "cuda:1"
    checkpoint_every: int = 250
    log_every: int = 10
    val_images: int = 12
    val_objects: int = 8
    progress: bool = True

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a .toml or .json file; unknown keys are an error (typos must not pass silently)."""
        path = Path(path)
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        elif path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"config file must be .toml or .json, got {path.name}")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s): {', '.join(unknown)}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.data not in ("synthetic", "folder", "dataset"):
            raise ValueError(f"data must be 'synthetic', 'folder' or 'dataset', got {self.data!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if self.loss_upscale not in (1, 2, 4):
            raise ValueError(
                f"loss_upscale must be 1, 2 or 4 (times the low-res logits), got {self.loss_upscale!r}"
            )
        if not self.touching_weight > 0:
            raise ValueError(f"touching_weight must be > 0 (1 = uniform), got {self.touching_weight!r}")
        if not 0 <= self.box_noise <= 0.5:
            raise ValueError(f"box_noise must be in [0, 0.5] (of the box side), got {self.box_noise!r}")
        if not (self.crop_size in (None, "auto") or (isinstance(self.crop_size, int) and self.crop_size > 0)):
            raise ValueError(
                f"crop_size must be a positive number of pixels, 'auto' or unset, got {self.crop_size!r}"
            )
        if self.distill_orientations not in (0, 2, 4, 8):
            raise ValueError(
                f"distill_orientations must be 0 (off), 2, 4 or 8, got {self.distill_orientations!r}"
            )
        if not self.time_limit_s >= 0:
            raise ValueError(f"time_limit_s must be >= 0 seconds (0 = no limit), got {self.time_limit_s!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off, e.g. 0.99), got {self.ema_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def sam_config(self) -> SamConfig:
        bases = {**OFFICIAL_CONFIGS, **SMALL_CONFIGS}
        if self.model not in bases:
            raise ValueError(f"unknown base model {self.model!r}; choose from {', '.join(bases)}")
        return SamConfig.from_dict({**bases[self.model].to_dict(), **self.model_config})


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The network to train: a checkpoint to fine-tune, or a fresh, initialised one."""
    if config.init_checkpoint:
        from ..models.registry import load_model

        model = load_model(config.init_checkpoint, device="cpu", progress=config.progress)
        changeable = {"image_size", "window_size", "high_res_channels"}
        if set(config.model_config) - changeable:
            raise ValueError(
                "model_config cannot change the architecture of init_checkpoint; only "
                f"{sorted(changeable)} may be given (the weights are resampled to the input size; "
                "a new high-res path starts as a no-op)"
            )
        resize = {k: v for k, v in config.model_config.items() if k != "high_res_channels"}
        if resize:
            model = resize_input(
                model, resize.get("image_size", model.config.image_size), resize.get("window_size")
            )
        channels = tuple(config.model_config.get("high_res_channels", ()))
        if channels and tuple(model.config.high_res_channels) != channels:
            model = add_high_res(model, channels)
    else:
        model = build_sam(config.sam_config())
        init_weights(
            model, torch.Generator().manual_seed(config.seed), scheme=config.init, qk_gain=config.init_qk_gain
        )
    return model


# --- one optimisation step -------------------------------------------------------------------


def _stack_points(
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    new_c: np.ndarray,
    new_l: np.ndarray,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.from_numpy(new_c)[:, None].to(device)
    lab = torch.from_numpy(new_l)[:, None].to(device)
    if coords is None:
        return c, lab
    return torch.cat([coords, c], 1), torch.cat([labels, lab], 1)


def interactive_loss(
    model: torch.nn.Module,
    examples: list[TrainExample],
    rng: np.random.Generator,
    config: TrainConfig,
    aux_head: torch.nn.Module | None = None,
    teacher: OrientationTeacher | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one step of simulated interactive segmentation over all objects of `examples`
    (plus, with `aux_head`, the dense auxiliary loss weighted by `config.aux_weight`; with
    `teacher`, the first round's distillation loss weighted by `config.distill_weight`)."""
    device = model.pixel_mean.device
    images = torch.stack([e.image for e in examples]).to(device)
    embeddings, high_res = model.encode(model.preprocess(images))
    aux = None
    if aux_head is not None:
        aux = dense_aux_loss(aux_head, embeddings, [e.labels for e in examples])
    counts = [len(e.masks) for e in examples]
    index = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(counts)).to(device)
    embeddings = embeddings[index]
    if high_res is not None:
        high_res = [f[index] for f in high_res]
    gt = np.concatenate([e.masks for e in examples])  # (N, S, S) bool
    low = model.prompt_encoder.mask_input_size
    factor = gt.shape[-1] // low[-1]
    gt_full = torch.from_numpy(gt).float()[:, None]
    gt_low = F.avg_pool2d(gt_full, factor)  # soft targets (N, 1, h, w)
    up = config.loss_upscale
    if factor % up:
        raise ValueError(f"loss_upscale {up} does not divide the low-res stride {factor} of this model")
    gt_loss = (gt_low if up == 1 else F.avg_pool2d(gt_full, factor // up)).to(device)
    image_pe = model.prompt_encoder.get_dense_pe()

    u = rng.random()
    mode = "point"
    if u < config.box_prob:
        mode = "box"
    elif u < config.box_prob + config.mask_prompt_prob:
        mode = "mask"
    coords = labels = boxes = mask_in = None
    if mode == "point":
        first = sample_positive_points(gt, rng)
        coords, labels = _stack_points(None, None, first, np.ones(len(gt), np.int64), device)
    elif mode == "box":
        boxes = torch.from_numpy(jitter_boxes(gt, rng, noise=config.box_noise)).to(device)
    else:
        mask_in = torch.from_numpy(mask_prompt_from_gt(gt_low[:, 0].numpy() > 0.5, rng)).to(device)

    total = torch.zeros((), device=device)
    stats = {"focal": 0.0, "dice": 0.0, "iou_mse": 0.0, "iou_first": 0.0, "iou_last": 0.0}
    if teacher is not None:
        target = teacher.logits(images, index, coords, labels, boxes, mask_in)
    for r in range(config.rounds):
        multimask = mode == "point" and r == 0
        points = (coords.float(), labels) if coords is not None else None
        sparse, dense = model.prompt_encoder(points, boxes, mask_in)
        logits, iou_pred = model.mask_decoder.predict_masks(
            embeddings, image_pe, sparse, dense, high_res_features=high_res
        )
        sel = slice(1, None) if multimask else slice(0, 1)
        loss_logits = logits[:, sel]
        if up > 1:
            loss_logits = F.interpolate(loss_logits, scale_factor=up, mode="bilinear", align_corners=False)
        out = sam_loss(
            loss_logits,
            iou_pred[:, sel],
            gt_loss,
            focal_weight=config.focal_weight,
            dice_weight=config.dice_weight,
            iou_weight=config.iou_weight,
            focal_alpha=config.focal_alpha,
            focal_gamma=config.focal_gamma,
            other_outputs_weight=config.multimask_other_weight,
        )
        total = total + out.loss
        if teacher is not None and r == 0:
            distill = distill_loss(logits[:, sel], target[:, sel])
            stats["distill"] = float(distill.detach())
            total = total + config.rounds * config.distill_weight * distill
        stats["focal"] += float(out.focal) / config.rounds
        stats["dice"] += float(out.dice) / config.rounds
        stats["iou_mse"] += float(out.iou_mse) / config.rounds
        stats["iou_first" if r == 0 else "iou_last"] = float(out.iou.mean())
        if r == config.rounds - 1:
            break
        pick = out.best[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
        chosen = logits[:, sel].detach().gather(1, pick).float()
        mask_in = chosen
        if rng.random() < config.no_point_round_prob:
            continue  # a round with only the previous mask fed back, no new click
        new_c, new_l = sample_correction_points(chosen[:, 0].cpu().numpy() > 0, gt, rng)
        coords, labels = _stack_points(coords, labels, new_c, new_l, device)
    if config.rounds == 1:
        stats["iou_last"] = stats["iou_first"]
    stats["mode"] = mode  # type: ignore[assignment]
    total = total / config.rounds
    if aux is not None:
        stats["aux"] = float(aux.detach())
        total = total + config.aux_weight * aux
    return total, stats


# --- validation ---------------------------------------------------------------


def _decode(
    model: torch.nn.Module,
    emb: tuple[torch.Tensor, list[torch.Tensor] | None],
    points: Any,
    boxes: Any,
    masks: Any,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits of the mask with the highest predicted IoU, and the full-size binary mask.
    ``emb``: the image embedding and high-res features of one image (``Sam.encode``)."""
    sparse, dense = model.prompt_encoder(points, boxes, masks)
    low, iou = model.mask_decoder(
        emb[0],
        model.prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        multimask_output=multimask,
        high_res_features=emb[1],
    )
    low = low[torch.arange(len(low)), iou.argmax(1)][:, None]
    size = model.image_encoder.img_size
    full = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)[:, 0]
    return low, full > 0


def _iou_list(pred: torch.Tensor, gt: torch.Tensor) -> list[float]:
    inter = (pred & gt).sum((1, 2)).float()
    union = (pred | gt).sum((1, 2)).float().clamp(min=1)
    return (inter / union).tolist()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, examples: list[TrainExample], rng: np.random.Generator, clicks: int = 3
) -> dict[str, float]:
    """Mean IoU at full input resolution: one positive click (mask with the highest predicted IoU),
    an exact box, and `clicks` clicks (each new click from the error of the previous mask)."""
    model.eval()
    device = model.pixel_mean.device
    res: dict[str, list[float]] = {"point_miou": [], "box_miou": [], f"click{clicks}_miou": []}
    for ex in examples:
        emb = model.encode(model.preprocess(ex.image[None].to(device)))
        gt = ex.masks
        gt_t = torch.from_numpy(gt).to(device)
        coords = torch.from_numpy(sample_positive_points(gt, rng))[:, None].to(device)
        labels = torch.ones(len(gt), 1, dtype=torch.int64, device=device)
        low, pred = _decode(model, emb, (coords, labels), None, None, True)
        res["point_miou"] += _iou_list(pred, gt_t)
        boxes = torch.from_numpy(np.stack([jitter_boxes(m[None], rng, noise=0.0)[0] for m in gt])).to(device)
        res["box_miou"] += _iou_list(_decode(model, emb, None, boxes, None, False)[1], gt_t)
        for _ in range(clicks - 1):
            c, lab = sample_correction_points(pred.cpu().numpy(), gt, rng)
            coords, labels = _stack_points(coords, labels, c, lab, device)
            low, pred = _decode(model, emb, (coords, labels), None, low, False)
        res[f"click{clicks}_miou"] += _iou_list(pred, gt_t)
    return {k: float(np.mean(v)) for k, v in res.items()}


# --- the loop -----------------------------------------------------------------------------------


class TrainingCancelled(Exception):
    """`train` stopped at `cancel`'s request; the run's state at `step` is saved (`checkpoint`,
    and resume.pt beside it: `train(config, resume=True)` goes on from there)."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"training cancelled at step {step}; its state is saved in {checkpoint.parent}")
        self.step, self.checkpoint = step, checkpoint


def train(
    config: TrainConfig,
    resume: bool = False,
    log: Callable[[str], None] = print,
    dataset: Sequence[Any] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Path:
    """Train (or resume) a run in `config.run_dir`; returns the path of the final `model.pt`.

    `dataset`: the pairs for `data = "dataset"`. `on_step(done, total, numbers)` follows every step
    (its loss and last-round IoU; the validation mIoUs after a validation). `cancel()` is asked
    before every step; when it returns True the run saves its state and raises `TrainingCancelled`.
    """
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = run_dir / "resume.pt", run_dir / "log.jsonl"
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: several times faster on recent GPUs
    autocast = training_autocast(config, device)
    if config.precision == "auto":
        log(f"precision: {resolve_precision('auto', device)} (auto, on {device.type})")
    elif config.precision == "bf16" and device.type == "cpu" and cpu_lacks_bf16():
        log("warning: this CPU has no bfloat16 instructions; bf16 runs several times slower than fp32")
    model = build_model(config).to(device)
    # the starting weights (before any resume) averaged over orientations, when distilling
    teacher = OrientationTeacher(model, config.distill_orientations) if config.distill_orientations else None
    image_size = model.image_encoder.img_size
    aux_head = DenseAuxHead(model.config.prompt_embed_dim).to(device) if config.aux_weight > 0 else None
    optimizer = make_optimizer(model, config, aux_head)
    start, elapsed_before = 0, 0.0
    state: dict[str, Any] = {}
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if aux_head is not None and "aux_head" in state:
            aux_head.load_state_dict(state["aux_head"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        log(f"resuming {run_dir} at step {start} on {device}")
        if log_path.exists():  # drop records of steps after the checkpoint: they are redone
            kept = [ln for ln in log_path.read_text().splitlines() if json.loads(ln)["step"] <= start]
            log_path.write_text("".join(ln + "\n" for ln in kept))
    elif log_path.exists():
        log_path.unlink()
    ema = moving_average(model, config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None and "ema" in state:  # else a resumed run starts its average at its weights
        ema.load_state_dict(state["ema"])
    saved = model if ema is None else ema.module  # what checkpoints and validation see
    (run_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    train_src, val_src = make_sources(config, dataset)
    val_config = replace(config, objects_per_image=config.val_objects)
    val_examples = draw_examples(
        val_src,
        np.random.default_rng([config.seed, 3]),
        len(val_src) or 1,
        val_config,
        image_size,
        augment=False,
    )

    t_start = time.perf_counter()

    def elapsed() -> float:
        """Seconds of this run's training so far, its earlier sessions (before a resume) included."""
        return elapsed_before + time.perf_counter() - t_start

    def time_fraction() -> float:
        return elapsed() / config.time_limit_s if config.time_limit_s > 0 else 0.0

    def checkpoint(step: int, final: bool = False, val: dict | None = None) -> Path:
        meta = {"step": step, "train_config": config.to_dict(), "val": val or {}, "time": time.time()}
        meta.update(recommended_meta(model))  # the starting checkpoint's: a better start than SAM's
        resume_state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed_s": elapsed(),
        }
        if aux_head is not None:
            resume_state["aux_head"] = aux_head.state_dict()
        if ema is not None:
            resume_state["ema"] = ema.state_dict()
            meta["ema_decay"] = config.ema_decay
        torch.save(resume_state, state_path)
        return save_checkpoint(run_dir / ("model.pt" if final else "latest.pt"), saved, meta)

    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=config.name, dynamic_ncols=True)
    model.train()
    window: list[dict[str, Any]] = []
    t_last, val = time.perf_counter(), {}
    if time_fraction() >= 1.0:
        raise ValueError(
            f"{run_dir} has used its time limit ({elapsed():.0f} s of {config.time_limit_s:g} s); "
            "give a larger time_limit_s (it counts the run's earlier time too) to go on"
        )
    done = start  # the last step trained (a run resumed at its end trains none)
    with log_path.open("a") as logf:
        batches = step_examples(config, train_src, image_size, start, config.steps)
        for step, examples in zip(range(start, config.steps), batches, strict=True):
            if cancel is not None and cancel():
                if bar is not None:
                    bar.close()
                raise TrainingCancelled(step, checkpoint(step, val=val))
            rng = np.random.default_rng([config.seed, 6, step])  # prompts and corrections
            scale = lr_factor(step, config, time_fraction())
            for g in optimizer.param_groups:
                g["lr"] = config.lr * scale * g.get("lr_scale", 1.0)
            with autocast:
                loss, stats = interactive_loss(model, examples, rng, config, aux_head, teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            window.append({**stats, "loss": loss.item(), "grad_norm": float(grad_norm)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", iou=f"{stats['iou_last']:.2f}")
            done = step + 1
            out_of_time = time_fraction() >= 1.0
            last = done == config.steps or out_of_time
            if done % config.log_every == 0 or last:
                now = time.perf_counter()
                rec = {k: float(np.mean([w[k] for w in window])) for k in window[0] if k != "mode"}
                rec.update(step=done, lr=config.lr * scale, sec_per_step=(now - t_last) / len(window))
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                window, t_last = [], now
            if done % config.epoch_steps == 0 or last:
                val = evaluate(saved, val_examples, np.random.default_rng([config.seed, 4]))
                model.train()
                logf.write(json.dumps({"step": done, **{f"val_{k}": v for k, v in val.items()}}) + "\n")
                logf.flush()
                log(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
                t_last = time.perf_counter()
            if on_step is not None:
                latest = {f"val_{k}": v for k, v in val.items()}
                on_step(done, config.steps, {"loss": loss.item(), "iou": stats["iou_last"], **latest})
            if out_of_time:
                log(f"time limit of {config.time_limit_s:g} s reached after step {done} of {config.steps}")
                break
            if done % config.checkpoint_every == 0 and done < config.steps:
                checkpoint(done, val=val)
    if bar is not None:
        bar.close()
    model.eval()
    return checkpoint(done, final=True, val=val)
