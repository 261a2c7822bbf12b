"""Thresholds a checkpoint recommends for automatic segmentation, and `sam-plugins tune`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import sam_plugins
from sam_plugins.automatic import SamAutomaticMaskGenerator
from sam_plugins.automatic.tuning import match_f1, tune_thresholds
from sam_plugins.cli import main
from sam_plugins.models.checkpoints import read_checkpoint_meta, save_checkpoint
from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.prompt_tuning import PromptScores, score_prompts

LOW = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "points_per_side": 4}


def tiny_with_settings(path, settings):
    torch.manual_seed(0)
    return save_checkpoint(path, build_sam(TINY), {"step": 7, "generator_settings": settings})


def test_checkpoint_settings_reach_the_generator_and_arguments_override_them(tmp_path):
    model = sam_plugins.load_model(tiny_with_settings(tmp_path / "t.pt", LOW), device="cpu")
    assert model.generator_settings == LOW
    generator = SamAutomaticMaskGenerator.for_model(model)
    assert (generator.pred_iou_thresh, generator.stability_score_thresh) == (0.0, 0.0)
    assert len(generator.point_grids[0]) == 16
    generator = SamAutomaticMaskGenerator.for_model(model, pred_iou_thresh=0.7)
    assert (generator.pred_iou_thresh, generator.stability_score_thresh) == (0.7, 0.0)
    # a checkpoint without a recommendation gets the official defaults
    plain = tmp_path / "plain.pt"
    torch.save({"model": build_sam(TINY).state_dict()}, plain)
    official = SamAutomaticMaskGenerator.for_model(sam_plugins.load_model(plain, device="cpu"))
    assert (official.pred_iou_thresh, official.stability_score_thresh) == (0.88, 0.95)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pred_iou": 0.5}, "unknown generator settings"),
        ({"pred_iou_thresh": 1.5}, r"must lie in \[0, 1\]"),
        ({"stability_score_thresh": "high"}, "must be a number"),
        ({"min_mask_region_area": -3}, "must not be negative"),
    ],
)
def test_bad_recommended_settings_are_refused_naming_the_setting(tmp_path, settings, message):
    path = tiny_with_settings(tmp_path / "bad.pt", settings)
    with pytest.raises(ValueError, match=message):
        sam_plugins.load_model(path, device="cpu")


def test_segment_command_uses_the_checkpoints_thresholds(tmp_path, capsys):
    """The recommended 0/0 keeps masks of random weights with no flags; given flags win."""
    checkpoint = tiny_with_settings(tmp_path / "t.pt", LOW)
    image = (np.random.default_rng(0).random((96, 128)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    command = ["segment", str(tmp_path / "cells.tif"), "--model", str(checkpoint)]
    assert main([*command, "--out", str(tmp_path)]) == 0
    assert tifffile.imread(tmp_path / "cells_labels.tif").max() >= 1
    strict = ["--pred-iou-thresh", "1", "--stability-score-thresh", "1"]  # flags win over the checkpoint
    out = tmp_path / "strict"
    assert main([*command, "--out", str(out), *strict]) == 0
    assert tifffile.imread(out / "cells_labels.tif").max() == 0
    assert "Found 0 objects" in capsys.readouterr().out


def test_match_f1_counts_matches_at_iou_half():
    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8], truth[10:16, 10:16], truth[2:5, 14:17] = 1, 2, 3
    pred = np.zeros_like(truth)
    pred[2:8, 3:9] = 7  # IoU 30/42 with object 1: a match
    pred[10:16, 13:19] = 9  # IoU 18/54 with object 2: no match
    pred[17:19, 0:2] = 4  # nothing there
    assert match_f1(pred, truth) == {"f1": pytest.approx(1 / 3), "tp": 1, "fp": 2, "fn": 2}
    assert match_f1(truth, truth)["f1"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        match_f1(pred[:5], truth)


def test_tuning_scores_every_pair_and_counts_every_object(tmp_path):
    from sam_plugins.sample_data import cells_2d

    image, labels = cells_2d()
    image, labels = image[:128, :128], labels[:128, :128]
    model = sam_plugins.load_model(tiny_with_settings(tmp_path / "t.pt", LOW), device="cpu")
    scores = tune_thresholds(model, [(image, labels)], pred_iou_grid=(0.0, 0.5), stability_grid=(0.0, 0.9))
    assert len(scores) == 4
    n_true = len(np.unique(labels)) - 1
    assert all(s.tp + s.fn == n_true for s in scores)
    assert [s.f1 for s in scores] == sorted((s.f1 for s in scores), reverse=True)
    loosest = next(s for s in scores if s.pred_iou_thresh == 0.0 and s.stability_score_thresh == 0.0)
    assert loosest.tp + loosest.fp >= max(s.tp + s.fp for s in scores)  # lower thresholds keep more
    with pytest.raises(ValueError, match="differ in size"):
        tune_thresholds(model, [(image, labels[:64])])


def test_tune_command_writes_a_checkpoint_that_recommends_the_best_pair(tmp_path, capsys):
    checkpoint = tiny_with_settings(tmp_path / "t.pt", LOW)
    out = tmp_path / "tuned"
    args = ["tune", "--model", str(checkpoint), "--generated", "1", "--size", "96", "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Best:" in printed and "Wrote" in printed
    meta = read_checkpoint_meta(tmp_path / "tuned.pt")
    assert meta["step"] == 7  # the source checkpoint's own meta is kept
    best = meta["generator_tuning"]["best"]
    tuned = sam_plugins.load_model(tmp_path / "tuned.pt", device="cpu")
    assert tuned.generator_settings == {
        **LOW,
        "pred_iou_thresh": best["pred_iou_thresh"],
        "stability_score_thresh": best["stability_score_thresh"],
    }
    source = sam_plugins.load_model(checkpoint, device="cpu").state_dict()
    assert all(torch.equal(value, source[name]) for name, value in tuned.state_dict().items())
    # the predictor setting is chosen on the same images, by the click and box scores printed
    scores = meta["predictor_tuning"]
    assert "keeping only the prompted region" in printed
    assert scores["objects"] > 0 and 0.0 <= scores["click"] <= 1.0 and 0.0 <= scores["box_kept"] <= 1.0
    assert tuned.predictor_settings == {"keep_prompted_region": scores["keep_prompted_region"]}
    assert (
        scores["keep_prompted_region"]
        == PromptScores(
            *(scores[k] for k in ("objects", "click", "box", "click_kept", "box_kept"))
        ).keep_prompted_region
    )


@pytest.mark.parametrize(
    "click, box, click_kept, box_kept, keep",
    [(0.7, 0.8, 0.72, 0.8, True), (0.7, 0.8, 0.72, 0.79, False), (0.7, 0.8, 0.7, 0.8, False)],
)
def test_keeping_the_prompted_region_is_recommended_only_when_it_helps(
    click, box, click_kept, box_kept, keep
):
    assert PromptScores(10, click, box, click_kept, box_kept).keep_prompted_region is keep


def test_prompt_scores_cover_every_labelled_object(tmp_path):
    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    sample = generate_sample(np.random.default_rng(3), SyntheticConfig(size=(96, 96)))
    model = sam_plugins.load_model(tiny_with_settings(tmp_path / "t.pt", LOW), device="cpu")
    ids, areas = np.unique(sample.labels[sample.labels > 0], return_counts=True)
    done = []
    scores = score_prompts(model, [(sample.image, sample.labels)], progress=done.append)
    assert scores.objects == int((areas >= 30).sum()) > 0 and done == [1]
    with pytest.raises(ValueError, match="no labelled object"):
        score_prompts(model, [(sample.image, np.zeros_like(sample.labels))])


def test_tune_command_needs_labels_for_images(tmp_path, capsys):
    assert main(["tune", "--images", str(tmp_path), "--model", "x.pt"]) == 1
    assert "--labels" in capsys.readouterr().err
