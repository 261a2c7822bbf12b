"""FiftyOne plugin entry point: the operators live in the installed `sam_plugins` package."""

from sam_plugins.fiftyone.operators import register

__all__ = ["register"]
