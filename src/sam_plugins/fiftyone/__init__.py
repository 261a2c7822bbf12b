"""FiftyOne front end: the `segment()` API, the `SamModel` for `apply_model`, and the operator.

The plugin folder FiftyOne discovers is `sam_plugins/fiftyone_plugin/` (install it with
`sam-plugins fiftyone install`); its `__init__.py` only registers the classes defined here.
"""

from .api import default_label_field, segment
from .model import SamModel
from .operators import OPERATOR_URI, PLUGIN_NAME, SegmentWithSam

__all__ = ["OPERATOR_URI", "PLUGIN_NAME", "SamModel", "SegmentWithSam", "default_label_field", "segment"]
