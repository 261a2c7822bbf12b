"""The Ray engine on a local Ray: same results as the local engine, and exactly-once under a kill."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from fo_fixtures import fo_session, make_cell_images, tiny_checkpoint  # noqa: F401
from sam_plugins.batch import SegmentSettings, Task, TaskResult, run_batch
from sam_plugins.batch.ray_engine import RayEngine
from test_batch import box_tasks

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return SegmentSettings(mode="boxes", model=str(ckpt), num_threads=1)


def many_tasks(cells, copies: int) -> list[Task]:
    base = box_tasks(cells)
    return [Task(**{**t.__dict__, "key": f"{t.key}-{k}"}) for k in range(copies) for t in base]


def signature(results: list[TaskResult]) -> dict:
    out = {}
    for r in results:
        assert r.ok, r.error
        out[r.key] = [(i.prompt_index, i.bbox, i.area, i.label) for i in r.instances]
    return out


def scores(results: list[TaskResult]) -> dict:
    return {r.key: np.array([i.score for i in r.instances]) for r in results}


def test_ray_engine_matches_local_engine(local_ray, cells, settings):
    tasks = many_tasks(cells, 2)
    local: list[TaskResult] = []
    run_batch(tasks, settings, local.extend, chunk_size=4)
    remote: list[TaskResult] = []
    engine = RayEngine(shard_size=2)
    summary = run_batch(tasks, settings, remote.extend, engine=engine, chunk_size=4)
    assert summary.processed == len(tasks) and summary.failed == 0 and summary.duplicates == 0
    assert signature(remote) == signature(local)
    s_local, s_remote = scores(local), scores(remote)
    for key in s_local:
        np.testing.assert_allclose(s_remote[key], s_local[key], atol=1e-4)
    assert summary.model["weights_sha256"] and {r.worker for r in remote} != {local[0].worker}
    assert engine.actors == []  # actors are released after the job


def test_killed_actor_loses_nothing_and_writes_exactly_once(local_ray, cells, settings):
    tasks = many_tasks(cells, 4)
    engine = RayEngine(shard_size=1, max_in_flight=2)
    written: list[str] = []
    results: list[TaskResult] = []
    killed = []

    def write(chunk: list[TaskResult]) -> None:
        written.extend(r.key for r in chunk)
        results.extend(chunk)

    def kill_one(done: int, total: int | None) -> None:
        if not killed:
            pid = ray.get(engine.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)  # a worker dies while it has shards in flight
            killed.append(pid)

    summary = run_batch(tasks, settings, write, engine=engine, chunk_size=2, progress=kill_one)
    assert killed
    assert sorted(written) == sorted(t.key for t in tasks)  # every task once, none twice
    assert summary.failed == 0 and summary.processed == len(tasks)
    assert len({r.worker for r in results}) >= 3  # the slot got a new process (restart)
    expected: list[TaskResult] = []
    run_batch(tasks, settings, expected.extend)
    assert signature(results) == signature(expected)


def test_segment_folder_on_ray(local_ray, cells, settings, tmp_path):
    from sam_plugins.batch.folder import segment_folder

    auto = SegmentSettings(
        mode="automatic",
        model=settings.model,
        amg={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    )
    s_ray = segment_folder(cells.paths[0].parent, tmp_path / "ray", auto, engine="ray")
    s_loc = segment_folder(cells.paths[0].parent, tmp_path / "local", auto)
    assert s_ray.processed == s_loc.processed == 3 and s_ray.failed == 0
    import json

    a = json.loads((tmp_path / "ray" / "annotations.json").read_text())
    b = json.loads((tmp_path / "local" / "annotations.json").read_text())
    assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]


def test_fiftyone_segment_on_ray_writes_what_the_local_engine_writes(local_ray, fo_session, tmp_path):  # noqa: F811
    from fo_fixtures import make_cells_dataset
    from sam_plugins.fiftyone import segment

    data = make_cell_images(tmp_path / "cells", n=3, size=96)
    dataset = make_cells_dataset(fo_session, data)
    ckpt = str(tiny_checkpoint(tmp_path / "tiny.pt"))
    try:
        common = dict(mode="boxes", prompt_field="ground_truth", model=ckpt, chunk_size=2)
        on_ray = segment(dataset, label_field="on_ray", engine="ray", num_workers=2, **common)
        local = segment(dataset, label_field="local", **common)
        assert on_ray["processed"] == local["processed"] == 3 and on_ray["failed"] == 0
        assert dataset.get_run_info(on_ray["run_key"]).config.engine == "ray"
        for sample in dataset.select_fields(["on_ray", "local"]):
            a, b = sample["on_ray"].detections, sample["local"].detections
            assert len(a) == len(b) > 0
            for x, y in zip(a, b, strict=True):
                assert x.label == y.label and np.array_equal(x.get_mask(), y.get_mask())
                np.testing.assert_allclose(x.bounding_box, y.bounding_box, atol=1e-9)
                assert abs(x.confidence - y.confidence) < 1e-4
    finally:
        dataset.delete()
