"""Loading checkpoints: official layout, wrapped/prefixed variants, and clear errors for bad files."""

from __future__ import annotations

import pickle

import pytest
import torch

import sam_plugins
from conftest import make_pair
from sam_plugins.models.checkpoints import infer_config, read_checkpoint
from sam_plugins.models.configs import TINY, VIT_B, VIT_H, VIT_L, build_sam


@pytest.fixture(scope="module")
def official_tiny_checkpoint(tmp_path_factory):
    official, _ = make_pair(TINY, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(official.state_dict(), path)  # exactly how the official files are written
    return official, path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_builder_loads_official_layout_strictly(official_tiny_checkpoint):
    official, path = official_tiny_checkpoint
    model = sam_plugins.sam_model_registry["tiny"](checkpoint=path)
    assert _same_weights(model, official)
    assert not model.training


def test_registry_has_official_names():
    assert {"default", "vit_h", "vit_l", "vit_b"} <= set(sam_plugins.sam_model_registry)
    with torch.device("meta"):
        assert (
            sam_plugins.sam_model_registry["default"]().image_encoder.blocks[0].attn.qkv.in_features == 1280
        )


@pytest.mark.parametrize("wrap", ["model", "sam_prefix", "module_prefix", "state_dict_key", "with_config"])
def test_load_model_accepts_fine_tuning_formats(official_tiny_checkpoint, tmp_path, wrap):
    official, _ = official_tiny_checkpoint
    sd = official.state_dict()
    obj = {
        "model": {"model": sd, "epoch": 3, "optimizer_lr": 1e-4},
        "sam_prefix": {f"sam.{k}": v for k, v in sd.items()},
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "state_dict_key": {"state_dict": sd},
        "with_config": {"model": sd, "config": TINY.to_dict()},
    }[wrap]
    path = tmp_path / "finetuned.pt"
    torch.save(obj, path)
    model = sam_plugins.load_model(path, device="cpu")
    assert _same_weights(model, official)
    assert model.config == TINY


@pytest.mark.parametrize("config", [VIT_B, VIT_L, VIT_H, TINY])
def test_architecture_is_detected_from_tensor_shapes(config):
    with torch.device("meta"):
        state = build_sam(config).state_dict()
    assert infer_config(state) == config


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sam_plugins.load_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_is_a_clear_error(official_tiny_checkpoint, tmp_path):
    _, path = official_tiny_checkpoint
    data = path.read_bytes()
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sam_plugins.load_model(broken)


def test_not_a_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(ValueError, match=r"notes\.pth"):
        sam_plugins.load_model(path)


def test_non_sam_state_dict_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a Segment Anything checkpoint"):
        sam_plugins.load_model(path)


EXECUTED: list[str] = []


def _payload_ran() -> str:
    EXECUTED.append("ran")
    return "pwned"


class CodeOnLoad:
    """Unpickling this calls a function: exactly what an untrusted checkpoint could do."""

    def __reduce__(self):
        return (_payload_ran, ())


def test_pickled_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"image_encoder.x": CodeOnLoad()}}, path)
    with pytest.raises(ValueError, match="Refusing to load"):
        read_checkpoint(path)
    with open(tmp_path / "evil2.pth", "wb") as f:
        pickle.dump({"x": CodeOnLoad()}, f)
    with pytest.raises(ValueError, match="Refusing to load"):
        sam_plugins.load_model(tmp_path / "evil2.pth")
    assert EXECUTED == []


def test_checkpoint_of_another_model_type(official_tiny_checkpoint):
    _, path = official_tiny_checkpoint
    with pytest.raises(ValueError, match=r"holds tiny .* vit_b was asked for"):
        sam_plugins.sam_model_registry["vit_b"](checkpoint=path)


def test_no_silent_partial_loading(official_tiny_checkpoint, tmp_path):
    official, _ = official_tiny_checkpoint
    sd = dict(official.state_dict())
    sd.pop("mask_decoder.iou_prediction_head.layers.2.bias")
    sd["mask_decoder.extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save({"model": sd, "config": TINY.to_dict()}, path)
    with pytest.raises(ValueError, match=r"missing .*iou_prediction_head.*not part of the model"):
        sam_plugins.load_model(path)
    sd = dict(official.state_dict())
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    torch.save({"model": sd, "config": TINY.to_dict()}, path)
    with pytest.raises(ValueError, match=r"other shapes .*iou_token"):
        sam_plugins.load_model(path)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match=r"vit_b"):
        sam_plugins.load_model("vit_q")
