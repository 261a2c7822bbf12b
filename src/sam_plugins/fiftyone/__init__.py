"""FiftyOne front end: `segment()` and `finetune()`, the `SamModel` for `apply_model`, the operators.

The plugin folder FiftyOne discovers is `sam_plugins/fiftyone_plugin/` (install it with
`sam-plugins fiftyone install`); its `__init__.py` only registers the classes defined here.
Submodules are imported on first use, so `sam-plugins fiftyone install` does not load FiftyOne.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "segment": "sam_plugins.fiftyone.api",
    "finetune": "sam_plugins.fiftyone.training",
    "default_label_field": "sam_plugins.fiftyone.api",
    "SamModel": "sam_plugins.fiftyone.model",
    "SegmentWithSam": "sam_plugins.fiftyone.operators",
    "OPERATOR_URI": "sam_plugins.fiftyone.operators",
    "PLUGIN_NAME": "sam_plugins.fiftyone.operators",
}

__all__ = [
    "OPERATOR_URI",
    "PLUGIN_NAME",
    "SamModel",
    "SegmentWithSam",
    "default_label_field",
    "finetune",
    "segment",
]

if TYPE_CHECKING:
    from .api import default_label_field, segment
    from .model import SamModel
    from .operators import OPERATOR_URI, PLUGIN_NAME, SegmentWithSam
    from .training import finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sam_plugins.fiftyone' has no attribute {name!r}")
