"""Fine-tuning on a FiftyOne collection's masks: `sam_plugins.fiftyone.finetune` and the
`@sam-plugins/sam/finetune` operator, on a real FiftyOne database with a random-weight TINY model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sam_plugins
from fo_fixtures import mask_iou

URI = "@sam-plugins/sam/finetune"


def detections_of(fo, labels: np.ndarray):
    """Instance masks as FiftyOne stores them: a box and the mask cropped to it."""
    h, w = labels.shape
    dets = []
    for i in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == i)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
        dets.append(fo.Detection(label="nucleus", bounding_box=box, mask=labels[y0:y1, x0:x1] == i))
    return fo.Detections(detections=dets)


@pytest.fixture
def dataset(fo, cells):
    ds = fo.Dataset()
    samples = []
    for k, (path, labels) in enumerate(zip(cells.paths, cells.labels, strict=True)):
        sample = fo.Sample(filepath=str(path), masks=detections_of(fo, labels))
        sample["instances"] = fo.Segmentation(mask=labels.astype(np.uint16))
        sample["outlines"] = fo.Polylines(
            polylines=[
                fo.Polyline.from_mask(labels == i, label="nucleus") for i in np.unique(labels[labels > 0])
            ]
        )
        sample["boxes_only"] = fo.Detections(
            detections=[fo.Detection(label="nucleus", bounding_box=[0.1, 0.1, 0.2, 0.2])]
        )
        if k == 2:
            sample["masks"] = None  # an unlabelled sample is left out
        samples.append(sample)
    ds.add_samples(samples)
    yield ds
    ds.delete()


def same_objects(got: np.ndarray, truth: np.ndarray) -> list[float]:
    """IoU of each true object with the object drawn at the same place."""
    out = []
    for i in np.unique(truth[truth > 0]):
        ids, counts = np.unique(got[truth == i], return_counts=True)
        out.append(mask_iou(got == ids[np.argmax(counts)], truth == i) if ids[np.argmax(counts)] else 0.0)
    return out


def test_label_fields_become_instance_label_images(fo, dataset, cells):
    from sam_plugins.fiftyone.training import training_pairs

    pairs, names = training_pairs(dataset, "masks")
    assert names == [p.name for p in cells.paths[:2]]  # the sample without masks is left out
    for (image, labels), truth in zip(pairs, cells.labels, strict=False):
        assert image.shape[:2] == truth.shape and labels.dtype == np.int32
        assert min(same_objects(labels, truth)) == 1.0  # every nucleus exactly, one id each
        assert len(np.unique(labels)) == len(np.unique(truth))
    pairs, _ = training_pairs(dataset, "instances")
    assert all(np.array_equal(lab, truth) for (_, lab), truth in zip(pairs, cells.labels, strict=True))
    pairs, _ = training_pairs(dataset, "outlines")  # traced polygons: close to the masks
    assert (
        np.mean([v for (_, lab), t in zip(pairs, cells.labels, strict=True) for v in same_objects(lab, t)])
        > 0.8
    )


def test_fields_without_masks_are_refused_with_the_reason(fo, dataset):
    from sam_plugins.fiftyone.training import training_pairs

    with pytest.raises(ValueError, match="boxes but no instance masks"):
        training_pairs(dataset, "boxes_only")
    with pytest.raises(ValueError, match="no field 'nothing'"):
        training_pairs(dataset, "nothing")
    dataset.set_values("score", [1.0] * len(dataset))
    with pytest.raises(ValueError, match="not a Detections, Polylines, Segmentation field"):
        training_pairs(dataset, "score")
    with pytest.raises(ValueError, match="no sample of the collection has objects"):
        training_pairs(dataset.limit(0), "masks")


def test_finetune_a_collection_then_segment_with_the_result(fo, dataset, tiny, tmp_path):
    from sam_plugins.fiftyone import finetune, segment

    steps: list[int] = []
    out = tmp_path / "nuclei.pt"
    report = finetune(dataset, "masks", out, tiny, steps=2, progress=lambda d, t, n: steps.append(d))
    assert report["checkpoint"] == str(out) and out.exists() and steps == [1, 2] and report["steps"] == 2
    assert report["samples"] == 2 and report["objects"] == sum(
        len(d.masks.detections) for d in dataset.limit(2)
    )
    assert 0.0 <= report["val_box_miou"] <= 1.0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["train_config"]["init_checkpoint"] == tiny
    result = segment(dataset.limit(1), mode="boxes", prompt_field="masks", model=str(out))
    assert result["succeeded"] == 1 and dataset.count("sam_boxes.detections") > 0
    with pytest.raises(FileExistsError, match="overwrite"):
        finetune(dataset, "masks", out, tiny, steps=1)


def test_operator_form_defaults_to_delegation_and_checks_the_output(fo, dataset, tmp_path):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    op = foo.get_operator(URI)

    def context(params):
        return ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})

    props = op.resolve_type(context({}), "inputs").to_json()["type"]["properties"]
    assert props["label_field"]["type"]["values"] == ["boxes_only", "instances", "masks", "outlines"]
    for name in ("model", "steps", "time_limit_min", "freeze_encoder", "out", "overwrite"):
        assert name in props
    assert op.resolve_execution_options(context({})).default_choice_to_delegated  # training takes long
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"keep me")
    out = op.resolve_type(context({"out": str(taken)}), "inputs").to_json()["type"]["properties"]["out"]
    assert out["invalid"] and "exists" in out["error_message"]
    from fiftyone.operators.executor import ExecutionError

    params = {"label_field": "masks", "out": str(taken), "steps": 1}
    with pytest.raises(ExecutionError, match="exists"):
        foo.execute_operator(URI, {"dataset": dataset.name, "params": params})
    assert taken.read_bytes() == b"keep me"


def test_operator_trains_and_reports(fo, dataset, tiny, tmp_path):
    import fiftyone.operators as foo

    out = tmp_path / "op.pt"
    params = {"label_field": "instances", "model": tiny, "steps": 2, "out": str(out), "freeze_encoder": True}
    result = foo.execute_operator(URI, {"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert result.result["checkpoint"] == str(out) and result.result["samples"] == 3
    model = sam_plugins.load_model(str(out), device="cpu")
    start = sam_plugins.load_model(tiny, device="cpu")
    encoder_same = all(
        torch.equal(a, b)
        for a, b in zip(model.image_encoder.parameters(), start.image_encoder.parameters(), strict=True)
    )
    assert encoder_same  # the mask decoder only


def test_operator_time_limit_ends_the_run_with_a_model(fo, dataset, tiny, tmp_path):
    """A time limit instead of a step count: the run stops by itself, saves the model and reports
    how many steps it trained."""
    import fiftyone.operators as foo

    out = tmp_path / "timed.pt"
    params = {"label_field": "instances", "model": tiny, "steps": 100_000, "time_limit_min": 0.03}
    params.update(out=str(out), freeze_encoder=True)
    result = foo.execute_operator(URI, {"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert out.exists() and 1 <= result.result["steps"] < 100_000
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["step"] == result.result["steps"]
    assert ckpt["meta"]["train_config"]["time_limit_s"] == pytest.approx(1.8)
