"""Model configurations, checkpoint loading, downloads and the model-provider plugin hooks."""

from .configs import SamConfig, build_sam
from .hooks import ModelSpec, hookimpl
from .registry import list_models, load_model, sam_model_registry

__all__ = [
    "ModelSpec",
    "SamConfig",
    "build_sam",
    "hookimpl",
    "list_models",
    "load_model",
    "sam_model_registry",
]
