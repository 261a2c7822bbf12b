"""The models sam-plugins provides itself, registered through the same hook as any plugin."""

from __future__ import annotations

from pathlib import Path

from .configs import VIT_B, VIT_H, VIT_L
from .hooks import ModelSpec, hookimpl

WEIGHTS_DIR = Path(__file__).parent / "weights"
EMBEDDED_MODEL_NAME = "sam_cells"
EMBEDDED_MODEL_FILE = WEIGHTS_DIR / "sam_cells.pt"

_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@hookimpl
def sam_plugins_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name=EMBEDDED_MODEL_NAME,
            description="Small SAM trained by sam-plugins for fluorescence nuclei and cells; "
            "ships with the package (no download), fast on CPU.",
            path=EMBEDDED_MODEL_FILE,
        ),
        ModelSpec(
            name="vit_b",
            description="Official SAM ViT-B (Meta AI), 375 MB download.",
            config=VIT_B,
            url=_OFFICIAL_URL + "sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
        ),
        ModelSpec(
            name="vit_l",
            description="Official SAM ViT-L (Meta AI), 1.25 GB download.",
            config=VIT_L,
            url=_OFFICIAL_URL + "sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        ModelSpec(
            name="vit_h",
            description="Official SAM ViT-H (Meta AI), 2.56 GB download; the most accurate, the slowest.",
            config=VIT_H,
            url=_OFFICIAL_URL + "sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
    ]
