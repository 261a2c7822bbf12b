"""Model providers through pluggy hooks, and verified downloads into the cache (local server only)."""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
import threading
import types

import pytest
import torch

import sam_plugins
from conftest import make_pair
from sam_plugins.models import download, hooks
from sam_plugins.models.checkpoints import file_sha256
from sam_plugins.models.configs import TINY
from sam_plugins.models.hooks import ModelSpec, hookimpl


@pytest.fixture()
def served_checkpoint(tmp_path):
    """An official-layout tiny checkpoint served over HTTP on 127.0.0.1."""
    official, _ = make_pair(TINY, seed=11)
    served = tmp_path / "served"
    served.mkdir()
    path = served / "sam_tiny_test.pth"
    torch.save(official.state_dict(), path)
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/{path.name}"
    yield official, path, url, server
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen = 0

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        QuietHandler.requests_seen += 1
        return super().do_GET()


@pytest.fixture()
def plugin(monkeypatch, tmp_path):
    """Register a third-party provider the way an installed package would (through the hook)."""
    monkeypatch.setenv(download.CACHE_ENV_VAR, str(tmp_path / "cache"))
    pm = hooks.get_plugin_manager()
    holder: dict[str, list[ModelSpec]] = {"specs": []}
    module = types.ModuleType("third_party_sam_models")

    @hookimpl
    def sam_plugins_models():
        return holder["specs"]

    module.sam_plugins_models = sam_plugins_models
    pm.register(module, name="third_party")
    yield holder
    pm.unregister(name="third_party")


def test_builtin_models_register_through_the_entry_point_group():
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="sam_plugins")}
    assert names.get("builtin") == "sam_plugins.models.builtin"
    listed = {spec.name: spec for spec in sam_plugins.list_models()}
    assert {"sam_cells", "vit_b", "vit_l", "vit_h"} <= set(listed)
    assert listed["vit_b"].sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert listed["vit_b"].provider == "builtin"


def test_plugin_model_downloads_verifies_and_is_cached(plugin, served_checkpoint, tmp_path):
    official, path, url, server = served_checkpoint
    plugin["specs"] = [
        ModelSpec(
            name="lab_tiny", description="a lab's model", url=url, sha256=file_sha256(path), config=TINY
        )
    ]
    assert "lab_tiny" in {s.name for s in sam_plugins.list_models()}
    QuietHandler.requests_seen = 0
    model = sam_plugins.load_model("lab_tiny", device="cpu", progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in official.state_dict().items())
    cached = tmp_path / "cache" / "sam_tiny_test.pth"
    assert cached.exists() and file_sha256(cached) == file_sha256(path)
    assert QuietHandler.requests_seen == 1
    server.shutdown()  # offline now: the cached file is used without any request
    again = sam_plugins.load_model("lab_tiny", device="cpu", progress=False)
    assert torch.equal(again.mask_decoder.iou_token.weight, official.mask_decoder.iou_token.weight)


def test_wrong_hash_is_rejected_and_nothing_is_left_behind(plugin, served_checkpoint, tmp_path):
    _, _, url, _ = served_checkpoint
    plugin["specs"] = [ModelSpec(name="tampered", description="x", url=url, sha256="0" * 64)]
    with pytest.raises(download.ModelDownloadError, match="does not match its sha256"):
        sam_plugins.load_model("tampered", progress=False)
    assert not (tmp_path / "cache" / "sam_tiny_test.pth").exists()


def test_offline_message_says_which_file_to_place_where(plugin, served_checkpoint, tmp_path):
    _, path, url, server = served_checkpoint
    server.shutdown()
    server.server_close()
    plugin["specs"] = [ModelSpec(name="offline", description="x", url=url, sha256=file_sha256(path))]
    with pytest.raises(download.ModelDownloadError) as info:
        sam_plugins.load_model("offline", progress=False)
    message = str(info.value)
    assert str(tmp_path / "cache" / "sam_tiny_test.pth") in message
    assert file_sha256(path) in message and "offline" in message


def test_builtin_names_cannot_be_taken_over(plugin):
    plugin["specs"] = [
        ModelSpec(name="vit_b", description="impostor", url="http://127.0.0.1:9/x.pth", sha256="1" * 64)
    ]
    spec = {s.name: s for s in sam_plugins.list_models()}["vit_b"]
    assert spec.provider == "builtin" and spec.description.startswith("Official")


def test_model_spec_validation():
    with pytest.raises(ValueError, match="sha256"):
        ModelSpec(name="x", description="", url="http://127.0.0.1/x.pth")
    with pytest.raises(ValueError, match="path"):
        ModelSpec(name="x", description="")
    with pytest.raises(ValueError, match="letters"):
        ModelSpec(name="bad name!", description="", path="/tmp/x.pt")
