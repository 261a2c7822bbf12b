"""The npe2 manifest, sample data hooks and the zarr labels reader/writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_shipped_in_the_package():
    from importlib.resources import files

    import npe2

    packaged = files("sam_plugins") / "napari.yaml"
    assert packaged.is_file()
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()
    manifest = npe2.PluginManifest.from_distribution("sam-plugins")
    assert manifest.name == "sam-plugins"
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "Segment Anything",
        "Fine-tune on your labels",
    ]
    assert {s.key for s in manifest.contributions.sample_data} == {"cells-2d", "nuclei-3d"}
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "sam-plugins"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "valid" in out.stdout


def test_commands_resolve_lazily():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("sam-plugins")
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), command.id
    code = "import sam_plugins.napari, sys; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # importing the plugin package is cheap


def test_sample_data_hooks():
    from sam_plugins.napari._sample_data import cells_2d, nuclei_3d

    (image, meta, kind), (labels, lmeta, lkind) = cells_2d()
    assert kind == "image" and lkind == "labels" and image.shape == labels.shape and image.ndim == 2
    assert labels.max() > 5 and lmeta["visible"] is False
    (stack, _, _), (stack_labels, _, _) = nuclei_3d()
    assert stack.ndim == 3 and stack.shape == stack_labels.shape


def test_zarr_labels_round_trip(tmp_path):
    pytest.importorskip("zarr")
    from sam_plugins.napari._io import get_reader, write_labels

    labels = np.zeros((3, 40, 50), np.uint32)
    labels[1, 10:20, 10:30] = 7
    paths = write_labels(str(tmp_path / "objects"), labels, {"name": "objects", "scale": [2, 1, 1]})
    assert paths == [str(tmp_path / "objects.zarr")]
    reader = get_reader(paths[0])
    assert reader is not None
    [(data, meta, kind)] = reader(paths[0])
    assert kind == "labels" and meta["name"] == "objects" and meta["scale"] == [2.0, 1.0, 1.0]
    assert not isinstance(data, np.ndarray)  # handed over lazily
    np.testing.assert_array_equal(np.asarray(data[:]), labels)


def test_reader_declines_other_files(tmp_path):
    import zarr

    from sam_plugins.napari._io import get_reader

    plain = tmp_path / "image.zarr"
    zarr.open_array(str(plain), mode="w", shape=(4, 4), dtype="u1")
    assert get_reader(str(plain)) is None  # not ours: napari's own reader opens it as an image
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path / "a.tif")) is None
    assert get_reader([str(plain), str(plain)]) is None
