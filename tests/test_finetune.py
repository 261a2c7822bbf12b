"""Fine-tuning from Python (`sam_plugins.finetune`): pairs in memory -> a checkpoint every front end
loads; progress, cancel, and input checks that name the bad pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sam_plugins
from sam_plugins.models.checkpoints import save_checkpoint
from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.training.data import FolderDataset, PairsDataset
from sam_plugins.training.trainer import TrainingCancelled, train
from training_helpers import disk_scene, one_thread, write_pair  # noqa: F401 (one_thread: autouse)

QUIET = {"progress": False, "log": lambda s: None}  # no progress bar, no log lines


@pytest.fixture
def start(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    recommended = {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.85}
    return save_checkpoint(tmp_path / "start.pt", build_sam(TINY), {"generator_settings": recommended})


def test_finetune_on_pairs_in_memory_writes_a_loadable_checkpoint(tmp_path: Path, start: Path):
    rng = np.random.default_rng(3)
    pairs = [disk_scene(rng, 96) for _ in range(3)]
    stack = np.stack([disk_scene(rng, 96)[0] for _ in range(2)]), np.zeros((2, 96, 96), np.int32)
    stack[1][1] = pairs[0][1]  # a 3-D stack whose first slice has no objects: that slice is skipped
    seen: list[tuple[int, int, dict]] = []
    out = sam_plugins.finetune(
        [*pairs, {"image": stack[0], "labels": stack[1]}],
        tmp_path / "mine",
        str(start),
        steps=3,
        crop_size=96,
        **QUIET,
        on_step=lambda done, total, numbers: seen.append((done, total, numbers)),
    )
    assert out == tmp_path / "mine.pt" and out.exists()
    assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(np.isfinite(n["loss"]) and 0 <= n["iou"] <= 1 for _, _, n in seen)
    assert "val_point_miou" in seen[-1][2]  # the last step validates
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["train_config"]["data"] == "dataset"
    # the starting model's thresholds for automatic segmentation are kept
    assert ckpt["meta"]["generator_settings"]["pred_iou_thresh"] == 0.6
    model = sam_plugins.load_model(str(out), device="cpu")
    before = torch.load(start, map_location="cpu", weights_only=True)["model"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    # the run's log sits beside the output
    assert (tmp_path / "mine-run" / "finetune-mine" / "log.jsonl").exists()
    # an existing output is kept unless overwrite=True
    with pytest.raises(FileExistsError, match="overwrite"):
        sam_plugins.finetune(pairs, out, str(start), steps=1, **QUIET)
    sam_plugins.finetune(pairs, out, str(start), steps=1, overwrite=True, **QUIET)


def test_cancel_stops_the_run_keeps_its_state_and_writes_no_output(tmp_path: Path, start: Path):
    rng = np.random.default_rng(4)
    pairs = [disk_scene(rng, 96) for _ in range(2)]
    done: list[int] = []
    with pytest.raises(TrainingCancelled) as stopped:
        sam_plugins.finetune(
            pairs,
            tmp_path / "mine.pt",
            str(start),
            steps=50,
            crop_size=96,
            progress=False,
            log=lambda s: None,
            on_step=lambda d, t, n: done.append(d),
            cancel=lambda: len(done) >= 2,
        )
    assert stopped.value.step == 2 and done == [1, 2]
    assert not (tmp_path / "mine.pt").exists()
    state = torch.load(stopped.value.checkpoint.parent / "resume.pt", map_location="cpu", weights_only=True)
    assert int(state["step"]) == 2  # resumable where it stopped


def test_training_pairs_are_checked_up_front_with_the_pair_named():
    rng = np.random.default_rng(5)
    image, labels = disk_scene(rng, 64)
    with pytest.raises(ValueError, match="item 1: image shape .* does not match"):
        PairsDataset([(image, labels), (image, labels[:32])])
    with pytest.raises(ValueError, match="item 0: the label image has no objects"):
        PairsDataset([(image, np.zeros_like(labels))])
    with pytest.raises(ValueError, match="cell.tif: labels have dtype float"):
        PairsDataset([(image, labels + 0.5)], names=["cell.tif"])
    with pytest.raises(ValueError, match="at least one"):
        PairsDataset([])
    assert len(PairsDataset([(image, labels), (np.stack([image] * 3, -1), labels)])) == 2


def test_train_needs_the_pairs_for_a_dataset_config(tmp_path: Path, start: Path):
    from sam_plugins.training.finetuning import finetune_config

    config = finetune_config(str(start), work_dir=tmp_path, data="dataset", steps=1, progress=False)
    assert config.warmup_steps == 1 and config.epoch_steps == 1 and config.lr == 1e-4
    with pytest.raises(ValueError, match="needs its pairs"):
        train(config, log=lambda s: None)
    with pytest.raises(ValueError, match="data must be"):
        finetune_config(str(start), data="images")


def test_folder_dataset_records_its_folders(tmp_path: Path, start: Path):
    rng = np.random.default_rng(6)
    for i in range(2):
        write_pair(tmp_path / "images", tmp_path / "labels", f"a{i}", *disk_scene(rng, 64))
    folder = FolderDataset(tmp_path / "images", tmp_path / "labels")
    assert folder.names == ["a0.tif / a0_labels.tif", "a1.tif / a1_labels.tif"]
    out = sam_plugins.finetune(
        folder, tmp_path / "f.pt", str(start), steps=1, progress=False, log=lambda s: None
    )
    config = torch.load(out, map_location="cpu", weights_only=True)["meta"]["train_config"]
    assert config["data"] == "folder" and Path(config["images_dir"]) == tmp_path / "images"
