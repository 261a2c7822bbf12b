"""The engine-agnostic batch pipeline, the local engine and the segment-folder CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import requires_embedded_model
from fo_fixtures import TINY_AMG, boxes_from_labels, tiny_checkpoint
from sam_plugins.batch import (
    SegmentSettings,
    Task,
    TaskResult,
    decode_rle,
    encode_rle,
    label_image,
    run_batch,
)
from sam_plugins.batch.folder import segment_folder
from sam_plugins.batch.records import instance_from_mask, store_masks_on_disk


def box_tasks(cells) -> list[Task]:
    tasks = []
    for path, labels in zip(cells.paths, cells.labels, strict=True):
        boxes = np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in boxes_from_labels(labels)])
        tasks.append(Task(key=path.stem, path=str(path), boxes=boxes, labels=["nucleus"] * len(boxes)))
    return tasks


# -- records ---------------------------------------------------------------------------------------
def test_rle_round_trip_matches_coco_convention():
    rng = np.random.default_rng(1)
    for shape in [(5, 7), (1, 1), (16, 3)]:
        mask = rng.random(shape) > 0.5
        rle = encode_rle(mask)
        assert rle["size"] == list(shape)
        assert sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(decode_rle(rle), mask)
    # column-major, zeros first: [[0, 1], [1, 1]] -> F order 0,1,1,1 -> counts [1, 3]
    assert encode_rle(np.array([[0, 1], [1, 1]], bool))["counts"] == [1, 3]
    assert encode_rle(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_instance_compaction_and_label_image(tmp_path):
    big = np.zeros((20, 30), bool)
    big[2:15, 3:25] = True
    small = np.zeros((20, 30), bool)
    small[5:8, 10:12] = True  # inside the big one: must stay visible
    a = instance_from_mask(big, 0.9, 0.8)
    b = instance_from_mask(small, 1.2, 0.7, label="x", prompt_index=4)
    assert a.bbox == (3, 2, 25, 15) and a.area == big.sum()
    assert b.crop().shape == (3, 2) and b.label == "x" and b.prompt_index == 4
    np.testing.assert_array_equal(b.full_mask((20, 30)), small)
    assert instance_from_mask(np.zeros((4, 4), bool), 1, 1) is None
    labels = label_image([b, a], (20, 30))
    assert labels[6, 11] == 1 and labels[3, 4] == 2 and labels[0, 0] == 0
    result = TaskResult(key="a/b", path="x", shape=(20, 30), instances=[a, b])
    store_masks_on_disk(result, tmp_path)
    assert all(i.packed is None and i.mask_path for i in result.instances)
    np.testing.assert_array_equal(result.instances[1].full_mask((20, 30)), small)


def test_settings_reject_unknown_parameters():
    with pytest.raises(ValueError, match="mode"):
        SegmentSettings(mode="everything")
    with pytest.raises(ValueError, match="points_per_sid"):
        SegmentSettings(amg={"points_per_sid": 3})
    with pytest.raises(ValueError, match=r"orientations must be one of \(1, 2, 4, 8\)"):
        SegmentSettings(mode="boxes", orientations=3)
    with pytest.raises(ValueError, match="automatic mode does not use it"):
        SegmentSettings(mode="automatic", orientations=8)


# -- pipeline + local engine -----------------------------------------------------------------------
def test_local_engine_boxes_chunks_and_failures(cells, tiny, tmp_path):
    tasks = box_tasks(cells)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    tasks.insert(1, Task(key="broken", path=str(broken), boxes=np.array([[0.1, 0.1, 0.5, 0.5]])))
    chunks: list[list[TaskResult]] = []
    seen = []
    summary = run_batch(
        tasks,
        SegmentSettings(mode="boxes", model=tiny),
        chunks.append,
        chunk_size=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert [len(c) for c in chunks] == [3, 1]
    assert seen[-1] == (4, 4)
    assert summary.processed == 4 and summary.succeeded == 3
    assert list(summary.failures) == ["broken"] and "UnidentifiedImageError" in summary.failures["broken"]
    assert summary.model["checkpoint_sha256"] and len(summary.model["weights_sha256"]) == 64
    results = {r.key: r for c in chunks for r in c}
    for task in box_tasks(cells):
        res = results[task.key]
        assert res.shape == (96, 96)
        # one mask per box (random weights may leave a few empty, never more than the boxes)
        assert 0 < len(res.instances) <= len(task.boxes)
        for inst in res.instances:
            assert inst.label == "nucleus" and 0 <= inst.stability <= 1
            x0, y0, x1, y1 = inst.bbox
            crop = inst.crop()
            assert crop.any(axis=0)[0] and crop.any(axis=0)[-1] and crop.any(axis=1)[0]  # tight box


def test_mask_files_above_limit(cells, tiny, tmp_path):
    tasks = box_tasks(cells)[:1]
    out = []
    run_batch(
        tasks,
        SegmentSettings(mode="boxes", model=tiny, mask_dir=str(tmp_path), inline_mask_limit=0),
        out.extend,
    )
    inst = out[0].instances[0]
    assert inst.packed is None and inst.mask_path.startswith(str(tmp_path))
    assert inst.crop().shape == inst.crop_shape


@requires_embedded_model
def test_boxes_mode_averages_orientations_as_the_core_predictor(cells):
    """`orientations=8` gives each box the mask of `OrientationAveragingPredictor` (embedded model:
    random weights average to empty masks)."""
    from sam_plugins import OrientationAveragingPredictor, load_model
    from sam_plugins.batch.worker import read_image
    from sam_plugins.images import prepare_image

    task = box_tasks(cells)[0]
    out = []
    summary = run_batch([task], SegmentSettings(mode="boxes", orientations=8), out.extend)
    assert summary.failed == 0
    predictor = OrientationAveragingPredictor(load_model(device="cpu"), orientations=8)
    predictor.set_image(prepare_image(read_image(task.path)))
    by_prompt = {inst.prompt_index: inst for inst in out[0].instances}
    assert len(by_prompt) == len(task.boxes)
    for k, inst in by_prompt.items():
        want = predictor.predict(box=np.asarray(task.boxes[k]) * 96, multimask_output=False)[0][0]
        assert (inst.full_mask((96, 96)) != want).sum() <= 2


def test_points_mode(cells, tiny):
    labels = cells.labels[0]
    ids = [i for i in np.unique(labels) if i][:3]
    points = []
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        points.append(np.array([[(xs.mean() + 0.5) / 96, (ys.mean() + 0.5) / 96], [np.nan, np.nan]]))
    task = Task(
        key="p",
        path=str(cells.paths[0]),
        points=points,
        point_labels=[np.array([1, 0])] * len(points),
        labels=[f"n{i}" for i in ids],
    )
    out = []
    summary = run_batch([task], SegmentSettings(mode="points", model=tiny), out.extend)
    assert summary.failed == 0
    assert {i.prompt_index for i in out[0].instances} <= {0, 1, 2}
    assert all(i.label == f"n{ids[i.prompt_index]}" for i in out[0].instances)


def test_segment_folder_writes_labels_and_coco_and_resumes(cells, tiny, tmp_path):
    settings = SegmentSettings(mode="automatic", model=tiny, amg=TINY_AMG)
    out = tmp_path / "out"

    class Killed(Exception):
        pass

    calls = []

    def killer(done, total):
        calls.append(done)
        if done == 1:
            raise Killed  # the job dies right after its first chunk (of 1 image) was written

    with pytest.raises(Killed):
        segment_folder(cells.paths[0].parent, out, settings, chunk_size=1, progress=killer)
    assert sorted(p.name for p in out.glob("*.tif")) == ["cells_00.tif"]

    summary = segment_folder(cells.paths[0].parent, out, settings, chunk_size=2)
    assert summary.processed == 2  # resumed: the finished image is not redone
    coco = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [p.name for p in cells.paths]
    assert coco["info"]["skipped_existing"] == 1
    import tifffile

    for image in coco["images"]:
        labels = tifffile.imread(out / (image["file_name"][:-4] + ".tif"))
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert labels.shape == (image["height"], image["width"]) == (96, 96)
        assert labels.max() == len(anns)
        for ann in anns:
            mask = decode_rle(ann["segmentation"])
            assert mask.sum() == ann["area"] and 0 <= ann["score"] <= 1
            x, y, w, h = ann["bbox"]
            assert mask[y : y + h, x : x + w].sum() == ann["area"]


def test_segment_folder_cli(cells, tiny, tmp_path, capsys):
    from sam_plugins.cli import main

    out = tmp_path / "cli"
    args = [
        "segment-folder", str(cells.paths[0].parent), str(out), "--mode", "auto", "--model", tiny,
        "--format", "png", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
        "0", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert "segmented 3/3 images" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 3 and (out / "annotations.json").exists()
    assert main(args) == 0  # nothing left to do
    assert "segmented 0/0 images" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    bad = ["segment-folder", str(tmp_path / "bad"), str(out / "bad"), "--model", tiny, "--quiet"]
    assert main(bad) == 1
    assert "failed: x.png" in capsys.readouterr().err


def test_batch_masks_keep_the_prompted_region_as_the_core_predictor(cells, tmp_path):
    """A model that recommends `keep_prompted_region` gets it in boxes and points mode too, with
    the same masks as `SamPredictor.predict` (a random-weight model's masks are ragged)."""
    from sam_plugins import SamPredictor, load_model
    from sam_plugins.batch.worker import read_image
    from sam_plugins.images import prepare_image
    from sam_plugins.models.checkpoints import save_checkpoint

    model = load_model(tiny_checkpoint(tmp_path / "plain.pt"), device="cpu")
    path = save_checkpoint(
        tmp_path / "kept.pt", model, {"predictor_settings": {"keep_prompted_region": True}}
    )
    image = prepare_image(read_image(box_tasks(cells)[0].path))
    kept, raw = SamPredictor(load_model(path, device="cpu")), SamPredictor(model)
    assert kept.keep_prompted_region and not raw.keep_prompted_region
    kept.set_image(image)
    raw.set_image(image)
    task = box_tasks(cells)[0]
    centres = [np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]]) for b in task.boxes]
    task.points, task.point_labels = centres, [np.array([1])] * len(centres)
    cleaned = 0
    for mode in ("boxes", "points"):
        out = []
        assert run_batch([task], SegmentSettings(mode=mode, model=str(path)), out.extend).failed == 0
        assert out[0].instances
        for inst in out[0].instances:
            k = inst.prompt_index
            if mode == "boxes":
                prompt = {"box": np.asarray(task.boxes[k]) * 96, "multimask_output": False}
            else:
                prompt = {"point_coords": centres[k] * 96, "point_labels": np.array([1])}
            masks, scores, _ = kept.predict(**prompt)
            best = int(np.argmax(scores))
            np.testing.assert_array_equal(inst.full_mask((96, 96)), masks[best])
            cleaned += int((raw.predict(**prompt)[0][best] != masks[best]).any())
    assert cleaned > 0  # the setting changed some masks, so the comparison above means something
    # and a job can turn it off: the masks are then the model's own
    out = []
    off = SegmentSettings(mode="boxes", model=str(path), keep_prompted_region=False)
    assert run_batch([task], off, out.extend).failed == 0
    for inst in out[0].instances:
        want = raw.predict(box=np.asarray(task.boxes[inst.prompt_index]) * 96, multimask_output=False)[0][0]
        np.testing.assert_array_equal(inst.full_mask((96, 96)), want)
