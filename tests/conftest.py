"""Shared fixtures: the official reference model and ours with the same random weights."""

from __future__ import annotations

import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="sam-plugins-fo-db-"))
# the widget's on-disk embedding cache: one per test session, never the user's
os.environ["SAM_PLUGINS_EMBEDDING_DIR"] = tempfile.mkdtemp(prefix="sam-plugins-embeddings-")

from fo_fixtures import fo_session, make_cell_images, tiny_checkpoint  # noqa: E402, F401 (fo_session: a fixture)
from reference import import_segment_anything  # noqa: E402
from sam_plugins.models.builtin import EMBEDDED_MODEL_FILE  # noqa: E402
from sam_plugins.models.configs import TINY, SamConfig, build_sam  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Quality tests of the embedded model (IoU bars) run whenever its weights are part of the checkout
# (they are shipped in the package; a build without them skips these tests).
requires_embedded_model = pytest.mark.skipif(
    not EMBEDDED_MODEL_FILE.exists(),
    reason=f"the embedded model's weights ({EMBEDDED_MODEL_FILE.name}) are not in this checkout",
)


def propagation_quality(got: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """How a propagated (Z, Y, X) mask follows one 3-D object.

    Returns the fraction of the object's slices it covers; its mean IoU on the object's central
    slices (the middle 60 % of its extent: the cap slices are blurred in z, and where the label
    ends is not visible in the image); and how many slices it runs past the object's ends.
    """
    zs = np.nonzero(truth.any(axis=(1, 2)))[0]
    got_zs = np.nonzero(got.any(axis=(1, 2)))[0]
    if got_zs.size == 0:
        return 0.0, 0.0, 0
    covered = len(set(got_zs.tolist()) & set(zs.tolist())) / len(zs)
    margin = int(round(0.2 * len(zs)))
    central = zs[margin : len(zs) - margin]
    ious = [(got[z] & truth[z]).sum() / max(1, (got[z] | truth[z]).sum()) for z in central]
    overshoot = max(int(zs[0] - got_zs[0]), int(got_zs[-1] - zs[-1]), 0)
    return covered, float(np.mean(ious)), overshoot


def build_official(config: SamConfig):
    """Build the official SAM with the given hyper-parameters (random weights, eval mode)."""
    sa = import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    emb = config.embedding_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )
    del sa
    return model.eval()


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (the official init zeros some of them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and "norm" in name or ".neck.1." in name or ".neck.3." in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.ndim > 1 else 16
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return model


def prompt_args(kind: str, points, boxes, masks) -> tuple:
    """(points, boxes, masks) arguments of the prompt encoder for one prompt kind."""
    return {
        "points": (points, None, None),
        "box": (None, boxes, None),
        "points+box": (points, boxes, None),
        "mask": (None, None, masks),
        "points+mask": (points, None, masks),
        "nothing": (None, None, None),
    }[kind]


def make_pair(config: SamConfig, seed: int = 0):
    """(official, ours) built from `config`, with the same random weights loaded strictly."""
    official = randomize_(build_official(config), seed)
    ours = build_sam(config)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


@pytest.fixture(scope="session")
def tiny_pair():
    return make_pair(TINY)


# -- FiftyOne with the plugin installed; generated cells and a tiny model (fo_fixtures.py helpers) --
@pytest.fixture(scope="module")
def fo(fo_session):  # noqa: F811 (the fixture imported above)
    """`fiftyone` with this package's plugin installed in the test plugins dir."""
    from sam_plugins.cli import main as cli_main

    fo_session.config.plugins_dir = os.environ["FIFTYONE_PLUGINS_DIR"]
    assert cli_main(["fiftyone", "install"]) == 0
    return fo_session


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """Three generated 96 x 96 nuclei images on disk, with their labels."""
    return make_cell_images(tmp_path_factory.mktemp("fo_cells"), n=3, size=96)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight TINY checkpoint file (its path as a string)."""
    return str(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


def pytest_collection_modifyitems(config, items):
    """Run the Ray tests last: a local Ray cluster leaves processes holding random ports for a
    while after shutdown, which must not meet the database server the FiftyOne tests start."""
    items.sort(key=lambda item: item.path.name == "test_batch_ray.py")
