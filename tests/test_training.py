"""Training recipe, whole steps: the loss falls, configs, resume, fine-tune round trip, devices, input sizes.

Losses, prompt simulation and datasets: test_training_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_plugins.models.configs import TINY, SamConfig, build_sam
from sam_plugins.training.synthetic import SyntheticConfig
from sam_plugins.training.trainer import (
    TrainConfig,
    draw_examples,
    interactive_loss,
    lr_factor,
    make_optimizer,
    moving_average,
    save_checkpoint,
    train,
)
from training_helpers import disk_scene, one_thread, write_pair  # noqa: F401 (one_thread: autouse)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --- training ---------------------------------------------------------------------------------------


def _point_training_losses(steps: int = 12, **config_changes) -> tuple[list[float], dict[str, float]]:
    """Losses of `steps` steps of the tiny model on two disk scenes (points and corrections only)."""
    from sam_plugins.training.trainer import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        images_per_step=2,
        objects_per_image=4,
        rounds=2,
        lr=2e-3,
        box_prob=0.0,
        mask_prompt_prob=0.0,
        no_point_round_prob=0.0,
        **config_changes,
    )
    model = build_model(config)
    model.train()
    optimizer = make_optimizer(model, config)
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    losses = []
    for _ in range(steps):
        loss, stats = interactive_loss(model, examples, np.random.default_rng(1), config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, stats


def test_training_steps_lower_the_loss():
    losses, stats = _point_training_losses()
    assert {"focal", "dice", "iou_mse", "iou_first", "iou_last"} <= set(stats)
    assert losses[-1] < 0.7 * losses[0]


def test_box_prompts_are_jittered_by_box_noise(monkeypatch):
    """Box rounds prompt each object with its tight box moved by `box_noise` x the box side (std, at
    most 20 px): exact boxes at 0, boxes off by a few px at the paper's 0.1."""
    from sam_plugins.training.prompts import box_from_mask
    from sam_plugins.training.trainer import build_model

    rng = np.random.default_rng(3)
    scenes = [disk_scene(rng, 128)]

    def boxes_prompted(noise: float) -> tuple[np.ndarray, np.ndarray]:
        config = TrainConfig(model="tiny", objects_per_image=4, rounds=1, box_prob=1.0, box_noise=noise)
        model = build_model(config)
        examples = draw_examples(scenes, np.random.default_rng(0), 1, config, 256, augment=False)
        seen = []
        encode = model.prompt_encoder.forward

        def recording(points, boxes, masks):
            seen.append(boxes.detach().cpu().numpy())
            return encode(points, boxes, masks)

        monkeypatch.setattr(model.prompt_encoder, "forward", recording)
        interactive_loss(model, examples, np.random.default_rng(1), config)
        return seen[0], np.stack([box_from_mask(m) for m in examples[0].masks])

    got, tight = boxes_prompted(0.0)
    assert got.shape == tight.shape and np.allclose(got, tight)
    got, tight = boxes_prompted(0.1)
    assert 0 < np.abs(got - tight).max() <= 20
    with pytest.raises(ValueError, match="box_noise"):
        TrainConfig(model="tiny", box_noise=-0.1)


def test_bf16_training_lowers_the_loss_and_keeps_fp32_weights(tmp_path: Path, monkeypatch):
    """precision = "bf16": the forward pass under bfloat16 autocast (points, corrections, the auxiliary
    loss) still learns, and the weights, gradients and the written checkpoint stay float32."""
    from sam_plugins.training.aux_head import DenseAuxHead
    from sam_plugins.training.trainer import build_model, training_autocast

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        images_per_step=2,
        objects_per_image=4,
        rounds=2,
        lr=2e-3,
        box_prob=0.0,
        mask_prompt_prob=0.0,
        no_point_round_prob=0.0,
        aux_weight=0.5,
        precision="bf16",
    )
    model = build_model(config)
    model.train()
    head = DenseAuxHead(model.config.prompt_embed_dim)
    optimizer = make_optimizer(model, config, head)
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    losses = []
    for _ in range(12):
        with training_autocast(config, "cpu"):
            loss, _ = interactive_loss(model, examples, np.random.default_rng(1), config, head)
        assert loss.dtype == torch.float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32
        for p in model.parameters()
        if p.grad is not None
    )

    run = TrainConfig.from_dict(
        {
            **TrainConfig.from_file(CONFIGS / "train_tiny_test.toml").to_dict(),
            "out_dir": str(tmp_path),
            "steps": 2,
            "epoch_steps": 2,
            "progress": False,
            "precision": "bf16",
        }
    )
    from sam_plugins.training import trainer

    said: list[str] = []
    monkeypatch.setattr(trainer, "cpu_lacks_bf16", lambda: True)  # a CPU without bf16 instructions
    state = torch.load(train(run, log=said.append), map_location="cpu", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert any("no bfloat16 instructions" in line for line in said)
    with pytest.raises(ValueError, match="precision"):
        train(TrainConfig.from_dict({**run.to_dict(), "precision": "fp16"}), log=lambda s: None)


def test_auto_precision_follows_the_cpu(monkeypatch):
    """precision = "auto": bf16 where the CPU has bfloat16 instructions, fp32 where it would be
    emulated (several times slower) or the flags cannot be read."""
    from sam_plugins.training import hardware

    config = TrainConfig(precision="auto")
    cases = {"flags\t: fpu avx2 avx512f amx_bf16 amx_tile": "bf16", "flags\t: fpu avx2": "fp32", "": "fp32"}
    for flags, expected in cases.items():
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert hardware.resolve_precision("auto", "cpu") == expected
        assert hardware.training_autocast(config, "cpu").fast_dtype == torch.bfloat16
        with hardware.training_autocast(config, "cpu"):
            assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"


def test_loss_on_upsampled_logits_trains_and_checks_its_factor():
    """loss_upscale = 2: the mask loss on 2x-upsampled logits against 2x finer targets still learns
    (points, corrections); factors other than 1, 2, 4 are refused when the config is made."""
    losses, _ = _point_training_losses(loss_upscale=2)
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="loss_upscale"):
        TrainConfig(model="tiny", loss_upscale=3)


def test_lr_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.55)
    assert lr_factor(100, config) == pytest.approx(0.1)
    # under a time limit the decay follows whichever of steps and time is further along
    assert lr_factor(55, config, time_fraction=0.2) == pytest.approx(0.55)
    assert lr_factor(20, config, time_fraction=0.5) == pytest.approx(0.55)
    assert lr_factor(20, config, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_factor(0, config, time_fraction=0.5) == pytest.approx(0.1)  # warm-up goes by steps


def test_a_time_limited_run_decays_stops_validates_and_saves(tmp_path: Path):
    """A wall-clock budget (a batch job's, a lent GPU's): the run ends by itself with its learning
    rate decayed, a validation and model.pt; resuming needs a larger budget, which counts the
    earlier time too."""
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {**config.to_dict(), "out_dir": str(tmp_path), "steps": 100_000, "warmup_steps": 2}
    data.update(epoch_steps=100_000, checkpoint_every=100_000, progress=False, time_limit_s=2.0)
    said: list[str] = []
    path = train(TrainConfig.from_dict(data), log=said.append)
    records = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    steps_done = torch.load(path, map_location="cpu", weights_only=True)["meta"]["step"]
    assert 2 < steps_done < 100_000
    trained = [r for r in records if "loss" in r]
    assert trained[-1]["step"] == steps_done
    assert trained[-1]["lr"] < 0.2 * config.lr  # decayed to (near) min_lr_ratio by the end of the time
    assert records[-1]["step"] == steps_done and "val_point_miou" in records[-1]  # validated at the end
    assert any("time limit" in line for line in said)
    state = torch.load(path.parent / "resume.pt", map_location="cpu", weights_only=True)
    assert state["elapsed_s"] >= 2.0
    with pytest.raises(ValueError, match="time limit"):
        train(TrainConfig.from_dict(data), resume=True, log=lambda s: None)
    path = train(TrainConfig.from_dict({**data, "time_limit_s": 3.0}), resume=True, log=lambda s: None)
    assert torch.load(path, map_location="cpu", weights_only=True)["meta"]["step"] > steps_done
    with pytest.raises(ValueError, match="time_limit_s"):
        TrainConfig(time_limit_s=-1)


def test_cli_durations():
    import argparse

    from sam_plugins.training.cli import _duration

    assert [_duration(t) for t in ("90", "90s", "20m", "1.5h")] == [90.0, 90.0, 1200.0, 5400.0]
    for bad in ("abc", "0", "-5m", "m", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="duration"):
            _duration(bad)


def test_config_file_and_unknown_keys(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    assert config.model == "tiny"
    default = TrainConfig.from_file(CONFIGS / "train_default.toml")
    cfg = default.sam_config()
    model = build_sam(cfg)
    assert sum(t.numel() * t.element_size() for t in model.state_dict().values()) <= 25e6
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"stpes": 3}))
    with pytest.raises(ValueError, match="stpes"):
        TrainConfig.from_file(path)
    # every shipped config parses, names real generator fields and starts from a committed file
    # or from what another shipped config writes (a chain of runs, e.g. stages 23 -> 24)
    configs = {file.name: TrainConfig.from_file(file) for file in CONFIGS.glob("*.toml")}
    outputs = {c.run_dir / "model.pt" for c in configs.values()}
    for name, config in configs.items():
        if config.data == "synthetic":
            SyntheticConfig(**config.synthetic)
        if config.init_checkpoint:
            start = config.init_checkpoint
            assert (CONFIGS.parent / start).is_file() or Path(start) in outputs, (name, start)


def test_train_resume_from_config(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {
        **config.to_dict(),
        "out_dir": str(tmp_path),
        "steps": 4,
        "checkpoint_every": 2,
        "epoch_steps": 2,
        "progress": False,
    }
    path = train(TrainConfig.from_dict(data), log=lambda s: None)
    assert path == tmp_path / config.name / "model.pt"
    records = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert any("val_point_miou" in r for r in records)
    with (path.parent / "log.jsonl").open("a") as f:  # a step logged after the last checkpoint
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    path = train(TrainConfig.from_dict({**data, "steps": 6}), resume=True, log=lambda s: None)
    records = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["step"] == 6
    from sam_plugins.training.cli import learning_curve

    rows = learning_curve(path.parent / "log.jsonl", every=4)
    assert [r["step"] for r in rows] == [4]
    losses = [r["loss"] for r in records if "loss" in r]
    assert rows[0]["loss"] == pytest.approx((losses[0] + losses[1]) / 2)
    assert "val_box_miou" in rows[0]


def test_moving_average_of_the_weights_hand_computed():
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = moving_average(net, decay=0.75)  # starts at the current weights
    for value in (5.0, -3.0):
        with torch.no_grad():
            net.weight.fill_(value)
        ema.update_parameters(net)
    # 1 -> 0.75 * 1 + 0.25 * 5 = 2 -> 0.75 * 2 + 0.25 * (-3) = 0.75
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.75))
    assert torch.allclose(net.weight, torch.full((1, 2), -3.0))  # the trained network is untouched


def test_training_with_a_moving_average_saves_and_resumes_it(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {**config.to_dict(), "out_dir": str(tmp_path), "steps": 3, "checkpoint_every": 2}
    data.update(epoch_steps=3, progress=False, ema_decay=0.5)
    path = train(TrainConfig.from_dict(data), log=lambda s: None)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = torch.load(path.parent / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["meta"]["ema_decay"] == 0.5
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    differs = 0
    for name, value in saved["model"].items():  # the checkpoint holds the average, not the last step
        assert torch.equal(value, averaged[name])
        differs += not torch.equal(value, state["model"][name])
    assert differs > 0
    assert int(state["ema"]["n_averaged"]) == 4  # the start + 3 steps
    path = train(TrainConfig.from_dict({**data, "steps": 5}), resume=True, log=lambda s: None)
    state = torch.load(path.parent / "resume.pt", map_location="cpu", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 6  # continued, not restarted
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_finetune_save_reload_round_trip(tmp_path: Path):
    from sam_plugins.cli import main

    rng = np.random.default_rng(6)
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i in range(4):
        write_pair(images, labels, f"img{i}", *disk_scene(rng, 96))
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    recommended = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}
    save_checkpoint(start, build_sam(TINY), {"note": "untrained", "generator_settings": recommended})
    out = tmp_path / "tuned.pt"
    code = main(
        [
            "finetune",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--model",
            str(start),
            "--out",
            str(out),
            "--steps",
            "3",
            "--work-dir",
            str(tmp_path / "runs"),
            "--no-progress",
            "--threads",
            "1",
            "--crop-size",
            "auto",
        ]
    )
    assert code == 0 and out.exists()
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "config", "meta"}
    assert ckpt["meta"]["train_config"]["crop_size"] == "auto"  # the option reaches the training run
    model = build_sam(SamConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    before = torch.load(start, map_location="cpu", weights_only=True)["model"]
    changed = [k for k in before if not torch.equal(before[k], ckpt["model"][k])]
    assert any(k.startswith("mask_decoder.") for k in changed)
    from sam_plugins import load_model

    loaded = load_model(out, device="cpu")
    assert loaded.config == SamConfig.from_dict(ckpt["config"])
    assert loaded.generator_settings == recommended  # the starting model's thresholds are kept


def test_learning_curve_rows_carry_their_own_validation(tmp_path):
    import json

    from sam_plugins.training.cli import learning_curve

    log = tmp_path / "log.jsonl"
    records = []
    for step in range(10, 60, 10):
        records.append(
            {
                "step": step,
                "loss": 1.0 / step,
                "dice": 0.5,
                "focal": 0.1,
                "iou_first": 0.2,
                "iou_last": 0.3,
                "sec_per_step": 1.0,
            }
        )
        if step % 20 == 0:  # validation is logged right after its step
            records.append({"step": step, "val_point_miou": step / 100})
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = learning_curve(log, every=20)
    assert [r["step"] for r in rows] == [20, 40]
    assert [r["val_point_miou"] for r in rows] == [0.2, 0.4]
    assert rows[0]["loss"] == (1 / 10 + 1 / 20) / 2


def test_dense_targets_hand_computed():
    from sam_plugins.training.aux_head import dense_targets

    labels = np.zeros((16, 16), np.int32)
    labels[4:8, 4:8] = 1  # one 4x4 square filling the output cell (1, 1)
    target = dense_targets(labels, 4)
    assert target.shape == (2, 4, 4)
    assert target[0].sum().item() == target[0, 1, 1].item() == 1.0
    assert target[1, 1, 1].item() == pytest.approx(12 / 16)  # the square's 12 edge pixels
    assert target[1].sum().item() == pytest.approx(12 / 16)


def test_aux_loss_and_stem_train_and_reload(tmp_path: Path):
    """A model with a convolutional patch stem trains with the dense auxiliary loss (the loss
    falls), and its checkpoint reloads to the same architecture with and without the stored config."""
    from sam_plugins.models.checkpoints import infer_config
    from sam_plugins.models.registry import load_model
    from sam_plugins.training.aux_head import DenseAuxHead
    from sam_plugins.training.trainer import build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    scenes = [disk_scene(rng, 128) for _ in range(2)]
    config = TrainConfig(
        model="tiny",
        model_config={"patch_stem_channels": [8, 16, 32, 64]},
        images_per_step=2,
        objects_per_image=4,
        rounds=1,
        lr=2e-3,
        box_prob=1.0,
        aux_weight=1.0,
    )
    model = build_model(config)
    model.train()
    head = DenseAuxHead(model.config.prompt_embed_dim)
    optimizer = make_optimizer(model, config, head)
    assert any(p is next(head.parameters()) for g in optimizer.param_groups for p in g["params"])
    examples = draw_examples(scenes, np.random.default_rng(0), 2, config, 256, augment=False)
    auxes = []
    for _ in range(25):
        loss, stats = interactive_loss(model, examples, np.random.default_rng(1), config, head)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        auxes.append(stats["aux"])
    assert auxes[-1] < 0.85 * auxes[0]
    path = save_checkpoint(tmp_path / "stem.pt", model, {})
    assert infer_config(model.state_dict()) == model.config
    reloaded = load_model(str(path), device="cpu")
    assert reloaded.config.patch_stem_channels == (8, 16, 32, 64)
    x = torch.rand(1, 3, 256, 256) * 255
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.image_encoder(x), model.image_encoder(x))


def test_stem_must_match_the_patch_size():
    with pytest.raises(ValueError, match="patch size"):
        build_sam(TINY.replace(patch_stem_channels=(8, 16)))


def test_training_device_choice(tmp_path: Path):
    from sam_plugins.training.trainer import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_writes_a_cpu_loadable_checkpoint(tmp_path: Path):
    config = TrainConfig.from_file(CONFIGS / "train_tiny_test.toml")
    data = {
        **config.to_dict(),
        "out_dir": str(tmp_path),
        "steps": 3,
        "epoch_steps": 3,
        "progress": False,
        "device": "cuda",
        "aux_weight": 0.5,
    }
    path = train(TrainConfig.from_dict(data), log=lambda s: None)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())


def test_worker_processes_prepare_the_same_examples():
    """data_workers > 0 prefetches each step's examples in other processes: same data as in-process."""
    from sam_plugins.training.sources import make_sources, step_examples

    config = TrainConfig.from_dict(
        {**TrainConfig.from_file(CONFIGS / "train_tiny_test.toml").to_dict(), "images_per_step": 2}
    )
    source = make_sources(config)[0]
    here = list(step_examples(config, source, 256, 3, 6))
    with_workers = TrainConfig.from_dict({**config.to_dict(), "data_workers": 2})
    there = list(step_examples(with_workers, source, 256, 3, 6))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there, strict=True):
        assert len(a) == len(b) == 2
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.image, y.image) and np.array_equal(x.masks, y.masks)


def test_resize_input_keeps_the_weights_at_a_new_input_size(tmp_path: Path):
    from sam_plugins.models.configs import resize_input

    torch.manual_seed(0)
    model = build_sam(TINY)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    same = resize_input(model, TINY.image_size)
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size) * 255
    with torch.no_grad():
        x = model.preprocess(image)
        assert torch.equal(same.image_encoder(x), model.image_encoder(x))

    big = resize_input(model, 384, window_size=9)
    assert big.config == TINY.replace(image_size=384, window_size=9)
    grid = 384 // TINY.patch_size
    state, old = big.state_dict(), model.state_dict()
    assert state["image_encoder.pos_embed"].shape == (1, grid, grid, TINY.encoder_embed_dim)
    for key, table in state.items():
        if key.endswith(".attn.rel_pos_h"):
            block = int(key.split(".")[2])
            extent = grid if block in TINY.encoder_global_attn_indexes else 9
            assert table.shape[0] == 2 * extent - 1
        elif "pos" not in key:
            assert torch.equal(table, old[key]), key
    # it runs at the new size and is saved and reloaded like any checkpoint
    with torch.no_grad():
        embedding = big.image_encoder(torch.zeros(1, 3, 384, 384))
    assert embedding.shape[-2:] == (grid, grid)
    path = tmp_path / "big.pt"
    save_checkpoint(path, big, {})
    from sam_plugins import load_model

    assert load_model(path, device="cpu").config == big.config
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_input(model, 390)


def test_training_from_a_checkpoint_at_another_input_size(tmp_path: Path):
    from sam_plugins.training.trainer import build_model

    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(start, build_sam(TINY), {})
    model = build_model(TrainConfig(init_checkpoint=str(start), model_config={"image_size": 320}))
    assert model.config.image_size == 320 and model.config.window_size == TINY.window_size
    with pytest.raises(ValueError, match="cannot change the architecture"):
        build_model(TrainConfig(init_checkpoint=str(start), model_config={"encoder_depth": 3}))
