"""The "Fine-tune on your labels" widget in a real napari viewer (Xvfb): an image and its Labels
layer -> a checkpoint, in a worker with progress and cancel, handed to the annotator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_helpers import PLUGIN, notifications, tiny_model

pytestmark = pytest.mark.gui
FINETUNE = "Fine-tune on your labels"


@pytest.fixture
def trainer_widget(make_napari_viewer, tmp_path: Path):
    """The sample cells with their ground truth as the labels, a tiny model to start from."""
    from sam_plugins.models.checkpoints import save_checkpoint
    from sam_plugins.napari._controls import CHECKPOINT_CHOICE

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "cells-2d")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, FINETUNE)
    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "tiny.pt", tiny_model(), {})
    widget.image.value = viewer.layers["cells"]
    widget.labels.value = viewer.layers["cells ground truth"]
    widget.model.value = CHECKPOINT_CHOICE
    widget.checkpoint.value = start
    widget.out.value = tmp_path / "mine.pt"
    return viewer, widget, start


def wait_done(qtbot, widget, timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: widget.job is None, timeout=timeout)


def test_finetune_widget_trains_saves_and_hands_the_model_to_the_annotator(trainer_widget, qtbot, tmp_path):
    viewer, widget, start = trainer_widget
    from sam_plugins import load_model
    from sam_plugins.napari._controls import CHECKPOINT_CHOICE
    from sam_plugins.napari._finetune import FinetuneWidget

    assert isinstance(widget, FinetuneWidget)
    assert not widget.checkpoint.native.isHidden()
    widget.steps.value = 2
    widget.start()
    assert widget.job is not None and not widget.start_button.enabled  # off the UI thread
    wait_done(qtbot, widget)
    out = tmp_path / "mine.pt"
    assert widget.result == out and out.exists()
    assert widget.progress.value == 2 and widget.progress.max == 2
    assert "Saved the fine-tuned model" in widget.status.value
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["train_config"]["init_checkpoint"] == str(start)
    assert ckpt["meta"]["train_config"]["steps"] == 2
    load_model(str(out), device="cpu")  # loads like any checkpoint
    assert Path(str(widget.out.value)) == tmp_path / "mine-2.pt"  # the next run gets a free name

    annotator = widget.use_in_annotator()
    assert annotator.model.value == CHECKPOINT_CHOICE and Path(annotator.checkpoint.value) == out
    assert annotator._requested_model()[1] == str(out)


def test_cancel_stops_after_a_step_and_saves_no_model(trainer_widget, qtbot, tmp_path):
    viewer, widget, _ = trainer_widget
    widget.steps.value = 500
    widget.start()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    assert "Step" in widget.status.value and "left" in widget.status.value
    widget.cancel()
    wait_done(qtbot, widget)
    assert widget.result is None and not (tmp_path / "mine.pt").exists()
    assert "Cancelled at step" in widget.status.value and not widget.use_button.enabled
    assert widget.start_button.enabled


def test_a_time_limit_ends_the_run_and_saves_the_model(trainer_widget, qtbot, tmp_path):
    viewer, widget, _ = trainer_widget
    widget.steps.value = 100_000
    widget.minutes.value = 0.03  # 1.8 s
    widget.start()
    wait_done(qtbot, widget)
    out = tmp_path / "mine.pt"
    assert widget.result == out and out.exists()
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert 1 <= ckpt["meta"]["step"] < 100_000
    assert ckpt["meta"]["train_config"]["time_limit_s"] == pytest.approx(1.8)
    assert "when the time limit came" in widget.status.value


def test_bad_choices_are_refused_before_training(trainer_widget, tmp_path):
    viewer, widget, _ = trainer_widget
    cells = viewer.layers["cells"].data
    viewer.add_labels(np.zeros((64, 64), np.int32), name="small")
    viewer.add_labels(np.zeros(cells.shape[:2], np.int32), name="empty")
    cases = [
        ("small", tmp_path / "a.pt", "differ in size"),
        ("empty", tmp_path / "b.pt", "no objects yet"),
        ("cells ground truth", tmp_path / "tiny.pt", "exists; choose another name"),
    ]
    for labels, out, message in cases:
        widget.labels.value = viewer.layers[labels]
        widget.out.value = out
        widget.start()
        assert widget.job is None and message in widget.status.value
        assert any(message in n for n in notifications())


def test_a_partly_labelled_stack_trains_on_its_labelled_slices(make_napari_viewer, qtbot, tmp_path):
    from sam_plugins.models.checkpoints import save_checkpoint
    from sam_plugins.napari._controls import CHECKPOINT_CHOICE
    from sam_plugins.napari._finetune import layer_pairs

    viewer = make_napari_viewer()
    yy, xx = np.mgrid[:96, :96]
    stack = np.zeros((5, 96, 96), np.int32)
    stack[1][(yy - 40) ** 2 + (xx - 30) ** 2 < 100] = 1
    stack[3][(yy - 60) ** 2 + (xx - 60) ** 2 < 144] = 2
    image = viewer.add_image((20 + 150 * (stack > 0)).astype(np.uint8), name="stack")
    labels = viewer.add_labels(stack, name="two slices")
    assert [lab.max() for _, lab in layer_pairs(image, labels)] == [1, 2]  # the slices with objects
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, FINETUNE)
    widget.image.value, widget.labels.value = image, labels
    widget.model.value = CHECKPOINT_CHOICE
    widget.checkpoint.value = save_checkpoint(tmp_path / "tiny.pt", tiny_model(), {})
    widget.out.value = tmp_path / "stack.pt"
    widget.steps.value = 1
    widget.start()
    wait_done(qtbot, widget)
    assert widget.result == tmp_path / "stack.pt" and widget.result.exists()


def test_the_annotator_opens_fine_tuning_on_its_image_target_and_model(make_napari_viewer, tmp_path):
    from napari_helpers import open_widget
    from sam_plugins.models.checkpoints import save_checkpoint
    from sam_plugins.napari._controls import CHECKPOINT_CHOICE

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells-2d")
    annotator = open_widget(viewer)
    annotator.target.value = viewer.layers["cells ground truth"]
    annotator.checkpoint.value = save_checkpoint(tmp_path / "mine.pt", tiny_model(), {})
    annotator.model.value = CHECKPOINT_CHOICE
    tuner = annotator.open_finetune()
    assert tuner.image.value is viewer.layers["cells"]
    assert tuner.labels.value is viewer.layers["cells ground truth"]
    assert tuner.model.value == CHECKPOINT_CHOICE and Path(tuner.checkpoint.value) == tmp_path / "mine.pt"
    assert not tuner.checkpoint.native.isHidden()
    assert annotator.open_finetune() is tuner  # one fine-tune widget per viewer
