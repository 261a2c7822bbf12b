"""Download registered checkpoints into a cache, verified by SHA-256, with a progress bar."""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoints import file_sha256
from .hooks import ModelSpec

CACHE_ENV_VAR = "SAM_PLUGINS_CACHE_DIR"


class ModelDownloadError(RuntimeError):
    """A checkpoint could not be downloaded or failed verification."""


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAM_PLUGINS_CACHE_DIR, else the OS user cache."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    import pooch

    return Path(pooch.os_cache("sam-plugins"))


def cached_path(spec: ModelSpec, directory: Path | None = None) -> Path:
    """The path a model's checkpoint has (or will have) in the cache."""
    return (directory or cache_dir()) / spec.file_name


def fetch_checkpoint(spec: ModelSpec, directory: Path | None = None, progress: bool = True) -> Path:
    """Return the local checkpoint file of `spec`, downloading and verifying it if needed.

    A download goes to a temporary file that is moved into place only once complete and
    verified, so an interrupted or corrupted download never leaves a broken checkpoint behind.
    """
    if spec.path is not None:
        path = Path(spec.path)
        if not path.exists():
            raise FileNotFoundError(
                f"Model {spec.name!r} should be at {path}, but the file is missing from this install. "
                "Use another model meanwhile: a registered one such as 'vit_b' (downloaded once), or a "
                "checkpoint file (load_model(path); --model PATH on the command line)."
            )
        return path
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / spec.file_name
    if target.exists() and file_sha256(target) == spec.sha256:
        return target
    import pooch
    import requests

    directory.mkdir(parents=True, exist_ok=True)
    try:
        downloaded = pooch.retrieve(
            url=spec.url,
            known_hash=f"sha256:{spec.sha256}",
            fname=spec.file_name,
            path=directory,
            progressbar=progress,
        )
    except requests.exceptions.RequestException as err:
        raise ModelDownloadError(
            f"Could not download model {spec.name!r} from {spec.url} ({type(err).__name__}: {err}).\n"
            f"If this machine is offline, download that file on another machine and place it at\n"
            f"    {target}\n(sha256 {spec.sha256}); or set {CACHE_ENV_VAR} to the folder holding it; "
            "or pass the file path to sam_plugins.load_model()."
        ) from err
    except ValueError as err:  # pooch: hash mismatch; the bad download is removed
        raise ModelDownloadError(
            f"The download of {spec.name!r} from {spec.url} does not match its sha256 ({spec.sha256}); "
            f"it was discarded. Try again, or place a verified copy at {target}. Details: {err}"
        ) from err
    return Path(downloaded)
