"""`sam-plugins fiftyone install [--copy]`: put the plugin folder into FiftyOne's plugins directory."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

INSTALL_NAME = "sam-plugins"


def plugin_source() -> Path:
    """The plugin folder shipped inside the package (`fiftyone.yml` + `__init__.py`)."""
    return Path(__file__).resolve().parent.parent / "fiftyone_plugin"


def default_plugins_dir() -> Path:
    """FiftyOne's plugins directory (`FIFTYONE_PLUGINS_DIR`, else `fo.config.plugins_dir`)."""
    env = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if env:
        return Path(env).expanduser()
    import fiftyone as fo

    return Path(fo.config.plugins_dir).expanduser()


def _is_ours(path: Path) -> bool:
    yml = path / "fiftyone.yml"
    return yml.is_file() and '"@sam-plugins/sam"' in yml.read_text()


def install(plugins_dir: str | os.PathLike | None = None, copy: bool = False) -> tuple[Path, str]:
    """Link (or copy) the plugin into `plugins_dir`; return (target, what happened).

    Idempotent: an existing link to this package is kept, an existing copy is refreshed,
    and anything else at the target path is refused rather than overwritten.
    """
    source = plugin_source()
    root = Path(plugins_dir).expanduser() if plugins_dir else default_plugins_dir()
    target = root / INSTALL_NAME
    root.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        if not copy and target.resolve() == source:
            return target, "already linked"
        if target.resolve() != source and not _is_ours(target):
            raise FileExistsError(
                f"{target} links to {os.readlink(target)}, not this package; remove it first"
            )
        target.unlink()
    elif target.exists():
        if not _is_ours(target):
            raise FileExistsError(
                f"{target} exists and is not the sam-plugins FiftyOne plugin; remove it first"
            )
        shutil.rmtree(target)
    if copy:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return target, "copied"
    target.symlink_to(source, target_is_directory=True)
    return target, "linked"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `fiftyone` command group (`fiftyone install`)."""
    p = subparsers.add_parser("fiftyone", help="FiftyOne plugin management")
    sub = p.add_subparsers(dest="fiftyone_command", metavar="ACTION")
    inst = sub.add_parser(
        "install",
        help="link the FiftyOne plugin into FiftyOne's plugins directory",
        description="Make `@sam-plugins/sam` visible to FiftyOne (`fiftyone operators list`). "
        "Links by default so upgrades of the package apply; --copy copies instead.",
    )
    inst.add_argument("--copy", action="store_true", help="copy the plugin folder instead of linking it")
    inst.add_argument(
        "--plugins-dir", default=None, help="target directory (default: FiftyOne's plugins_dir)"
    )
    inst.set_defaults(func=run_install)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def run_install(args: argparse.Namespace) -> int:
    try:
        target, what = install(args.plugins_dir, copy=args.copy)
    except FileExistsError as err:
        print(f"sam-plugins fiftyone install: error: {err}", file=sys.stderr)
        return 1
    print(f"@sam-plugins/sam {what}: {target}")
    return 0
