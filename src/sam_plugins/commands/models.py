"""`sam-plugins models`: list the models that can be loaded by name, and download one ahead of time."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list registered models or download one")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.add_parser("list", help="show every registered model").set_defaults(func=list_models)
    fetch = sub.add_parser("download", help="download a registered model into the cache")
    fetch.add_argument("name")
    fetch.set_defaults(func=download)
    parser.set_defaults(func=list_models)


def list_models(args: argparse.Namespace) -> int:
    from ..models.download import cached_path
    from ..models.registry import list_models as registered

    for spec in registered():
        if spec.path is not None:
            where = "bundled" if spec.path.exists() else "missing from this install"
        else:
            where = "cached" if cached_path(spec).exists() else "downloads on first use"
        print(f"{spec.name:12s} [{spec.provider}, {where}] {spec.description}")
    return 0


def download(args: argparse.Namespace) -> int:
    from ..models.download import fetch_checkpoint
    from ..models.registry import get_model_spec

    path = fetch_checkpoint(get_model_spec(args.name))
    print(f"{args.name}: {path}")
    return 0
