"""Mask quality through the FiftyOne operator with the embedded default model (IoU ≥ 0.8)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import requires_embedded_model
from fo_fixtures import (  # noqa: F401
    fo_session,
    full_masks,
    make_cell_images,
    make_cells_dataset,
    mask_iou,
)

URI = "@sam-plugins/sam/segment"
TRUTH: dict[str, np.ndarray] = {}  # sample id -> instance label image of the generated nuclei


pytestmark = requires_embedded_model


@pytest.fixture(scope="module")
def dataset(fo_session, tmp_path_factory):  # noqa: F811
    from sam_plugins.cli import main

    fo_session.config.plugins_dir = os.environ["FIFTYONE_PLUGINS_DIR"]
    assert main(["fiftyone", "install"]) == 0
    cells = make_cell_images(tmp_path_factory.mktemp("quality"), n=2, size=384, seed=3)
    ds = make_cells_dataset(fo_session, cells)
    TRUTH.update({s.id: lab for s, lab in zip(ds, cells.labels, strict=True)})
    yield ds
    ds.delete()


def best_ious(dataset, field: str) -> list[float]:
    """For every ground-truth nucleus, the IoU of the best-matching predicted mask."""
    out = []
    for sample in dataset:
        labels = TRUTH[sample.id]
        preds = full_masks(sample[field].detections, labels.shape)
        for idx in np.unique(labels)[1:]:
            truth = labels == idx
            out.append(max((mask_iou(truth, p) for p in preds), default=0.0))
    return out


def run(dataset, params):
    import fiftyone.operators as foo

    report = foo.execute_operator(URI, {"dataset": dataset.name, "params": params}).result
    assert report["failed"] == 0, report["failures"]
    return report


def test_boxes_overlap_truth(dataset):
    run(dataset, {"mode": "boxes", "prompt_field": "ground_truth", "label_field": "q_boxes"})
    ious = best_ious(dataset, "q_boxes")
    assert np.mean(ious) >= 0.8 and np.median(ious) >= 0.8, np.round(ious, 2)
    assert set(dataset.distinct("q_boxes.detections.label")) == {"nucleus"}


def test_averaging_orientations_sharpens_box_masks(dataset):
    """8 orientations (docs/fiftyone.md) give box masks at least as close to the nuclei as one."""
    means = []
    for turns in (1, 8):
        field = f"q_boxes_{turns}"
        params = {
            "mode": "boxes",
            "prompt_field": "ground_truth",
            "label_field": field,
            "orientations": turns,
        }
        run(dataset, params)
        means.append(float(np.mean(best_ious(dataset, field))))
    info = dataset.get_run_info("sam_q_boxes_8")
    assert info.config.parameters["orientations"] == 8
    assert means[1] >= means[0] + 0.01 and means[1] >= 0.85, means


def test_points_overlap_truth(dataset):
    run(dataset, {"mode": "points", "prompt_field": "clicks", "label_field": "q_points"})
    ious = best_ious(dataset, "q_points")
    assert np.mean(ious) >= 0.8 and np.median(ious) >= 0.8, np.round(ious, 2)


def test_automatic_overlaps_truth(dataset):
    params = {"mode": "automatic", "label_field": "q_auto", "points_per_side": 32}
    report = run(dataset, params)
    assert report["instances"] > 0
    ious = best_ious(dataset, "q_auto")
    assert np.median(ious) >= 0.8, np.round(ious, 2)
