"""Averaging the weights of checkpoints (`sam-plugins average`, used for the embedded model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sam_plugins
from sam_plugins.cli import main
from sam_plugins.models.checkpoints import file_sha256, read_checkpoint, read_checkpoint_meta, save_checkpoint
from sam_plugins.models.configs import TINY, build_sam
from sam_plugins.training.averaging import average_checkpoints

SETTINGS = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.9}


def tiny_checkpoint(path, seed, config=TINY, meta=None):
    torch.manual_seed(seed)
    return save_checkpoint(path, build_sam(config), meta or {})


def test_average_is_the_weighted_mean_of_every_tensor(tmp_path):
    a = tiny_checkpoint(tmp_path / "a.pt", 0, meta={"generator_settings": SETTINGS})
    b = tiny_checkpoint(tmp_path / "b.pt", 1)
    state_a, _ = read_checkpoint(a)
    state_b, _ = read_checkpoint(b)
    model = average_checkpoints([a, b], [3.0, 1.0])
    averaged = model.state_dict()
    differing = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert len(differing) > 10  # the two seeds give different weights, so the mean means something
    for key in state_a:
        torch.testing.assert_close(averaged[key], 0.75 * state_a[key] + 0.25 * state_b[key])
    assert model.generator_settings == SETTINGS  # the first checkpoint's recommendation
    # the average segments like a model: its mask logits lie between nothing and everything
    predictor = sam_plugins.SamPredictor(model.eval())
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    masks, scores, _ = predictor.predict(np.array([[32, 32]]), np.array([1]))
    assert masks.shape == (3, 64, 64) and np.isfinite(scores).all()


def test_average_command_writes_a_loadable_checkpoint_that_names_its_sources(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt", 0, meta={"generator_settings": SETTINGS})
    b = tiny_checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "soup"
    assert main(["average", str(a), str(b), "--out", str(out)]) == 0
    written = out.with_suffix(".pt")
    assert str(written) in capsys.readouterr().out
    meta = read_checkpoint_meta(written)
    assert [s["sha256"] for s in meta["averaged_from"]] == [file_sha256(a), file_sha256(b)]
    assert [s["weight"] for s in meta["averaged_from"]] == [0.5, 0.5]
    loaded = sam_plugins.load_model(written, device="cpu")
    assert loaded.generator_settings == SETTINGS
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    expected = 0.5 * read_checkpoint(a)[0][key] + 0.5 * read_checkpoint(b)[0][key]
    torch.testing.assert_close(loaded.state_dict()[key], expected)


def test_average_refuses_other_architectures_bad_weights_and_overwriting_an_input(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt", 0)
    b = tiny_checkpoint(tmp_path / "b.pt", 1)
    other = tiny_checkpoint(
        tmp_path / "other.pt", 2, config=TINY.replace(encoder_depth=TINY.encoder_depth + 1)
    )
    with pytest.raises(ValueError, match="another architecture"):
        average_checkpoints([a, other])
    with pytest.raises(ValueError, match="another architecture"):
        average_checkpoints([a, "default"])  # a model name: the embedded model, a bigger network
    with pytest.raises(ValueError, match="one weight per checkpoint"):
        average_checkpoints([a, b], [1.0])
    with pytest.raises(ValueError, match="positive sum"):
        average_checkpoints([a, b], [1.0, -1.0])
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a])
    before = file_sha256(a)
    assert main(["average", str(a), str(b), "--out", str(a)]) != 0
    assert "is one of the inputs" in capsys.readouterr().err
    assert file_sha256(a) == before
