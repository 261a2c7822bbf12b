"""The FiftyOne plugin, operator, Python API and apply_model path on a real FiftyOne database.

These tests wire everything with a random-weight TINY model (fast); mask quality with the
embedded model is checked in test_fiftyone_quality.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import sam_plugins
from fo_fixtures import TINY_AMG, make_cells_dataset, tiny_checkpoint
from sam_plugins.cli import main as cli_main

URI = "@sam-plugins/sam/segment"


@pytest.fixture
def dataset(fo, cells):
    ds = make_cells_dataset(fo, cells)
    yield ds
    ds.delete()


def execute(fo, dataset, params, **ctx):
    import fiftyone.operators as foo

    result = foo.execute_operator(URI, {"dataset": dataset.name, "params": params, **ctx})
    return result


def check_detections(dataset, field, prompt_field=None):
    """Every written detection: tight box inside [0,1], confidence in [0,1], stability kept."""
    n = 0
    for sample in dataset.select_fields([field, "ground_truth"]):
        dets = sample[field].detections
        if prompt_field:
            assert len(dets) <= len(sample[prompt_field].detections)
        for det in dets:
            x, y, w, h = det.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
            mask = det.get_mask()
            assert (
                mask.any(axis=0)[0] and mask.any(axis=0)[-1] and mask.any(axis=1)[0] and mask.any(axis=1)[-1]
            )
            assert mask.shape == (round(h * 96), round(w * 96))
            assert 0.0 <= det.confidence <= 1.0 and 0.0 <= det.stability <= 1.0
            assert det.confidence == min(max(det.predicted_iou, 0.0), 1.0)
            n += 1
    return n


# -- plugin installation -----------------------------------------------------------------------
def test_install_link_copy_idempotent(fo, tmp_path, capsys):
    assert cli_main(["fiftyone", "install"]) == 0
    assert "already linked" in capsys.readouterr().out
    target = tmp_path / "plugins"
    for expected in ("copied", "copied"):
        assert cli_main(["fiftyone", "install", "--copy", "--plugins-dir", str(target)]) == 0
        assert expected in capsys.readouterr().out
    assert (target / "sam-plugins" / "fiftyone.yml").is_file()
    assert not (target / "sam-plugins").is_symlink()
    (tmp_path / "other" / "sam-plugins").mkdir(parents=True)
    assert cli_main(["fiftyone", "install", "--plugins-dir", str(tmp_path / "other")]) == 1  # not ours


def test_fiftyone_cli_lists_the_operator(fo):
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": fo.config.plugins_dir}
    out = subprocess.run(
        [sys.executable, "-c", "from fiftyone.core.cli import main; main()", "operators", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert URI in out.stdout, out.stderr[-2000:]


def test_form_has_stable_parameters(fo, dataset):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    op = foo.get_operator(URI)
    props = lambda params: op.resolve_type(  # noqa: E731
        ExecutionContext(request_params={"dataset_name": dataset.name, "params": params}), "inputs"
    ).to_json()["type"]["properties"]
    auto = props({"mode": "automatic"})
    for name in ("mode", "label_field", "output", "overwrite", "skip_existing", "model", "view_target"):
        assert name in auto
    for name in ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "min_mask_region_area"):
        assert name in auto
    boxes = props({"mode": "boxes"})
    assert "prompt_field" in boxes and "points_per_side" not in boxes
    assert boxes["prompt_field"]["type"]["values"] == ["ground_truth"]
    assert props({"mode": "points"})["prompt_field"]["type"]["values"] == ["clicks"]
    assert boxes["orientations"]["type"]["values"] == [1, 4, 8] and "orientations" not in auto
    assert boxes["one_object"]["type"]["values"] == ["model", "on", "off"] and "one_object" not in auto
    existing = props({"mode": "boxes", "label_field": "ground_truth"})["label_field"]
    assert existing["invalid"] and "already exists" in existing["error_message"]


# -- operator, each mode --------------------------------------------------------------------------
def test_operator_boxes_detections(fo, dataset, tiny):
    res = execute(fo, dataset, {"mode": "boxes", "prompt_field": "ground_truth", "model": tiny})
    report = res.result
    assert report["processed"] == 3 and report["failed"] == 0 and report["label_field"] == "sam_boxes"
    assert check_detections(dataset, "sam_boxes", "ground_truth") == report["instances"] > 0
    assert set(dataset.distinct("sam_boxes.detections.label")) == {"nucleus"}
    info = dataset.get_run_info(report["run_key"])
    assert info.config.model["checkpoint_sha256"] and info.config.parameters["mode"] == "boxes"
    assert info.config.result["succeeded"] == 3


def test_operator_one_object_choice_reaches_the_run(fo, dataset, tiny):
    for choice, want in (("off", False), ("on", True), (None, None)):
        params = {
            "mode": "boxes",
            "prompt_field": "ground_truth",
            "model": tiny,
            "label_field": f"b_{choice}",
        }
        report = execute(fo, dataset, {**params, **({"one_object": choice} if choice else {})}).result
        assert report["failed"] == 0
        assert dataset.get_run_info(report["run_key"]).config.parameters["keep_prompted_region"] is want
    # "on" cleaned some of the random model's ragged masks: fewer mask pixels than "off"
    area = {
        c: sum(d.mask.sum() for ds in dataset.values(f"b_{c}.detections") for d in ds) for c in ("on", "off")
    }
    assert area["on"] < area["off"]


def test_operator_points_polylines(fo, dataset, tiny):
    params = {"mode": "points", "prompt_field": "clicks", "model": tiny, "output": "polylines"}
    report = execute(fo, dataset, params).result
    assert report["failed"] == 0 and report["instances"] > 0
    polys = dataset.values("sam_points.polylines")
    assert sum(len(p) for p in polys) == report["instances"]
    first = next(p for ps in polys for p in ps)
    assert first.filled and first.closed and first.label == "nucleus" and 0 <= first.confidence <= 1


def test_operator_automatic_segmentation(fo, dataset, tiny):
    params = {"mode": "automatic", "model": tiny, "output": "segmentation", **TINY_AMG}
    report = execute(fo, dataset, params).result
    assert report["failed"] == 0 and report["label_field"] == "sam_automatic"
    for seg in dataset.values("sam_automatic"):
        mask = seg.get_mask()
        assert mask.shape == (96, 96) and mask.dtype == np.uint16
    assert sum(int(s.get_mask().max()) for s in dataset.values("sam_automatic")) == report["instances"]


def test_operator_leaves_blank_thresholds_to_the_model(fo, dataset, tmp_path):
    """Thresholds left empty in the form: the checkpoint's recommendation, not SAM's 0.88/0.95."""
    from sam_plugins.models.checkpoints import read_checkpoint_meta, save_checkpoint

    plain = tiny_checkpoint(tmp_path / "plain.pt")
    model = sam_plugins.load_model(plain, device="cpu")
    meta = {**read_checkpoint_meta(plain), "generator_settings": {"pred_iou_thresh": 1.0}}
    strict = save_checkpoint(tmp_path / "strict.pt", model, meta)
    params = {"mode": "automatic", "model": str(strict), "points_per_side": 4, "stability_score_thresh": 0.0}
    assert execute(fo, dataset, params).result["instances"] == 0  # nothing reaches a predicted IoU of 1
    meta["generator_settings"] = {"pred_iou_thresh": 0.0}
    loose = save_checkpoint(tmp_path / "loose.pt", model, meta)
    params = {**params, "model": str(loose), "label_field": "loose"}
    assert execute(fo, dataset, params).result["instances"] >= 1


def test_view_target_selected_samples(fo, dataset, tiny):
    sample_id = dataset.first().id
    params = {
        "mode": "boxes",
        "prompt_field": "ground_truth",
        "model": tiny,
        "view_target": "SELECTED_SAMPLES",
    }
    report = execute(fo, dataset, params, selected=[sample_id]).result
    assert report["processed"] == 1
    assert dataset.exists("sam_boxes").values("id") == [sample_id]


# -- guards, resume, failures -------------------------------------------------------------------
def test_overwrite_guard_wrong_type_and_skip_existing(fo, dataset, tiny):
    from sam_plugins.fiftyone import segment

    kwargs = {"mode": "boxes", "prompt_field": "ground_truth", "model": tiny, "label_field": "sam"}
    segment(dataset, **kwargs)
    before = dataset.values("sam")
    with pytest.raises(ValueError, match="already exists"):
        segment(dataset, **kwargs)
    with pytest.raises(Exception, match="already exists"):
        execute(fo, dataset, {**kwargs, "label_field": "sam"})
    with pytest.raises(ValueError, match="holds Detections"):
        segment(dataset, **kwargs, output="segmentation", overwrite=True)
    assert dataset.values("sam") == before  # refused runs changed nothing

    dataset.set_values("sam", [None, before[1], None])
    report = segment(dataset, **kwargs, skip_existing=True)
    assert report["processed"] == 2 and report["skipped_existing"] == 1
    assert dataset.count("sam") == 3
    report = segment(dataset, **kwargs, overwrite=True)
    assert report["processed"] == 3


def test_killed_run_keeps_chunks_and_resumes(fo, dataset, tiny):
    from sam_plugins.fiftyone import segment

    kwargs = {"mode": "boxes", "prompt_field": "ground_truth", "model": tiny, "chunk_size": 1}

    class Killed(Exception):
        pass

    def die(done, total):
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        segment(dataset, progress=die, **kwargs)
    assert dataset.count("sam_boxes") == 2  # two chunks were written before the kill
    report = segment(dataset, skip_existing=True, **kwargs)
    assert report["processed"] == 1 and dataset.count("sam_boxes") == 3


def test_failures_are_counted_per_sample(fo, dataset, tiny, tmp_path):
    from sam_plugins.fiftyone import segment

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad_id = dataset.add_sample(fo.Sample(filepath=str(broken), ground_truth=fo.Detections()))
    report = segment(dataset, mode="boxes", prompt_field="ground_truth", model=tiny)
    assert report["failed"] == 1 and list(report["failures"]) == [bad_id]
    assert dataset[bad_id]["sam_boxes"] is None and dataset.count("sam_boxes") == 3
    info = dataset.get_run_info(report["run_key"])
    assert info.config.result["failed"] == 1


def test_masks_on_disk(fo, dataset, tiny, tmp_path):
    from sam_plugins.fiftyone import segment

    segment(dataset, mode="boxes", prompt_field="ground_truth", model=tiny, mask_dir=str(tmp_path / "m"))
    det = dataset.first()["sam_boxes"].detections[0]
    assert det.mask is None and det.mask_path.startswith(str(tmp_path / "m"))
    assert det.get_mask().shape == (round(det.bounding_box[3] * 96), round(det.bounding_box[2] * 96))


# -- delegated execution ---------------------------------------------------------------------------
def test_delegated_run_is_queued_and_executed(fo, dataset, tiny, monkeypatch):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    import sam_plugins.fiftyone.operators as ops

    op = foo.get_operator(URI)
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    assert not op.resolve_execution_options(ctx).default_choice_to_delegated
    monkeypatch.setattr(ops, "DELEGATE_THRESHOLD", 2)
    options = op.resolve_execution_options(ctx)
    assert options.allow_delegated_execution and options.default_choice_to_delegated

    params = {"mode": "boxes", "prompt_field": "ground_truth", "model": tiny}
    res = foo.execute_operator(URI, {"dataset": dataset.name, "params": params}, request_delegation=True)
    assert res.delegated and not dataset.has_field("sam_boxes")
    service = DelegatedOperationService()
    queued = service.list_operations(dataset_name=dataset.name, run_state="queued")
    assert [q.operator for q in queued] == [URI]
    service.execute_queued_operations(dataset_name=dataset.name, log=False)
    dataset.reload()
    assert dataset.count("sam_boxes") == 3
    done = service.get(queued[0].id)
    assert done.run_state == "completed" and done.result.result["processed"] == 3


# -- Python API and apply_model ----------------------------------------------------------------
def test_operator_is_callable_from_python(fo, dataset, tiny):
    import fiftyone.operators as foo

    op = foo.get_operator(URI)
    res = op(
        dataset.limit(2), mode="boxes", prompt_field="ground_truth", model=tiny, view_target="CURRENT_VIEW"
    )
    assert res.result["processed"] == 2


class _BlockImports:
    """A meta-path finder that makes importing the named modules fail."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ImportError(f"{fullname} must not be imported by the apply_model path")
        return None


def test_apply_model_without_torchvision(fo, dataset, tiny, monkeypatch):
    from sam_plugins.fiftyone import SamModel

    # Other tests may have loaded the reference's torchvision stand-in: forget it, and make any
    # import of torchvision or FiftyOne's torch helpers fail during apply_model.
    blocked = ("torchvision", "fiftyone.utils.torch")
    for name in [m for m in sys.modules if m.startswith(blocked)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BlockImports(*blocked), *sys.meta_path])

    model = SamModel(model=tiny)
    dataset.apply_model(model, label_field="applied", prompt_field="ground_truth", skip_failures=False)
    for sample in dataset:
        assert len(sample["applied"].detections) <= len(sample["ground_truth"].detections)
    assert check_detections(dataset, "applied") > 0
    dataset.apply_model(SamModel(model=tiny, **TINY_AMG), label_field="applied_auto", skip_failures=False)
    assert dataset.count("applied_auto.detections") > 0
    assert not any(m.startswith(blocked) for m in sys.modules)


def test_apply_model_with_orientations(fo, dataset, tiny):
    """`SamModel(orientations=...)` answers the prompts with the averaging predictor; without a
    prompt field (automatic mode) it says the option needs prompts."""
    from sam_plugins.fiftyone import SamModel
    from sam_plugins.orientations import OrientationAveragingPredictor

    model = SamModel(model=tiny, orientations=4)
    dataset.apply_model(model, label_field="turned", prompt_field="ground_truth", skip_failures=False)
    assert isinstance(model._segmenters["boxes"].predictor, OrientationAveragingPredictor)
    assert model._segmenters["boxes"].predictor.orientations == 4
    for sample in dataset:
        assert sample["turned"] is not None
    with pytest.raises(ValueError, match="automatic mode does not use it"):
        dataset.apply_model(SamModel(model=tiny, orientations=4), label_field="x", skip_failures=False)
