"""Model providers as plugins (pluggy).

An installed package makes more models available by implementing the `sam_plugins_models` hook
in a module named under the `sam_plugins` entry-point group of its package metadata::

    # pyproject.toml of the other package
    [project.entry-points.sam_plugins]
    my_models = "my_package.sam_models"

    # my_package/sam_models.py
    from sam_plugins.models.hooks import ModelSpec, hookimpl

    @hookimpl
    def sam_plugins_models():
        return [ModelSpec(name="my_vit_b_em", description="ViT-B fine-tuned on EM",
                          url="https://.../my_vit_b_em.pth", sha256="...", config=VIT_B)]

The built-in models (official checkpoints and the embedded default) register through the same hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pluggy

from ..modeling import Sam
from .configs import SamConfig

PROJECT_NAME = "sam_plugins"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class ModelSpec:
    """A model a user can ask for by name.

    Weights come from `path` (a file shipped with a package) or from `url` (downloaded once into
    the cache and verified against `sha256`). `config` is the architecture; when None it is
    detected from the checkpoint. `builder` may replace the standard builder for custom networks.
    """

    name: str
    description: str
    config: SamConfig | None = None
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None
    path: Path | None = None
    size_bytes: int | None = None
    builder: Callable[[], Sam] | None = None
    provider: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"Model name {self.name!r} must be letters, digits, '_' or '-'.")
        if self.path is None and self.url is None:
            raise ValueError(f"Model {self.name!r} needs a local `path` or a download `url`.")
        if self.url is not None and not self.sha256:
            raise ValueError(f"Model {self.name!r} has a download url but no sha256 to verify it.")

    @property
    def file_name(self) -> str:
        if self.filename:
            return self.filename
        if self.path is not None:
            return Path(self.path).name
        return str(self.url).rstrip("/").rsplit("/", 1)[-1]


class ModelHookSpecs:
    """Hook specifications of sam-plugins."""

    @hookspec
    def sam_plugins_models(self) -> list[ModelSpec]:
        """Return the models this plugin provides."""


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager with the built-in provider and every installed `sam_plugins` entry point."""
    from . import builtin

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(ModelHookSpecs)
    pm.register(builtin, name="builtin")
    pm.load_setuptools_entrypoints(PROJECT_NAME)
    return pm


def collect_model_specs() -> dict[str, ModelSpec]:
    """All registered models by name. Built-in names cannot be taken over by other plugins."""
    pm = get_plugin_manager()
    specs: dict[str, ModelSpec] = {}
    for plugin_name, plugin in pm.list_name_plugin():  # built-in first: it wins name clashes
        impl = getattr(plugin, "sam_plugins_models", None)
        if impl is None:
            continue
        for spec in impl() or []:
            if not isinstance(spec, ModelSpec):
                raise TypeError(f"Plugin {plugin_name!r} returned {type(spec).__name__}, expected ModelSpec.")
            if spec.name in specs:
                continue
            specs[spec.name] = spec if spec.provider else _with_provider(spec, plugin_name)
    return specs


def _with_provider(spec: ModelSpec, provider: str) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, provider=provider)
