"""sam-plugins: Segment Anything from scratch, for napari, FiftyOne and Python.

    import sam_plugins
    model = sam_plugins.load_model()              # embedded cell model, no download
    predictor = sam_plugins.SamPredictor(model)

Heavy submodules are imported on first use, so `import sam_plugins` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "sam_plugins.models.registry",
    "list_models": "sam_plugins.models.registry",
    "sam_model_registry": "sam_plugins.models.registry",
    "build_sam": "sam_plugins.models.configs",
    "SamConfig": "sam_plugins.models.configs",
    "ModelSpec": "sam_plugins.models.hooks",
    "Sam": "sam_plugins.modeling",
    "SamPredictor": "sam_plugins.predictor",
    "OrientationAveragingPredictor": "sam_plugins.orientations",
    "SamAutomaticMaskGenerator": "sam_plugins.automatic",
    "SeededMaskGenerator": "sam_plugins.automatic",
    "masks_to_label_image": "sam_plugins.automatic",
    "prepare_image": "sam_plugins.images",
    "finetune": "sam_plugins.training.finetuning",
}

__all__ = [
    "ModelSpec",
    "OrientationAveragingPredictor",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "SeededMaskGenerator",
    "build_sam",
    "finetune",
    "list_models",
    "load_model",
    "masks_to_label_image",
    "prepare_image",
    "sam_model_registry",
]

if TYPE_CHECKING:
    from .automatic import SamAutomaticMaskGenerator, SeededMaskGenerator, masks_to_label_image
    from .images import prepare_image
    from .modeling import Sam
    from .models.configs import SamConfig, build_sam
    from .models.hooks import ModelSpec
    from .models.registry import list_models, load_model, sam_model_registry
    from .orientations import OrientationAveragingPredictor
    from .predictor import SamPredictor
    from .training.finetuning import finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sam_plugins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
