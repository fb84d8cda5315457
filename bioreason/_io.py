"""Atomic file writes and run manifests: an interrupted stage leaves no half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false, so
    nothing the user had is replaced by accident.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; choose another path or pass overwrite=True (--overwrite)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def atomic_write(
    path: str | Path, writer: Callable[[Path], Any], *, overwrite: bool = True
) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_PACKAGES = ("bioreason", "torch", "pyro-ppl", "anndata", "scanpy", "numpy", "transformers")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(
    stage_dir: str | Path,
    *,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Write ``stage_dir/manifest.json`` (config, seed, versions, input hashes)."""
    manifest = {
        "config": config,
        "seed": seed,
        "inputs": {k: file_sha256(v) for k, v in (inputs or {}).items()},
        "versions": package_versions(),
    }
    atomic_write_text(
        Path(stage_dir) / "manifest.json", json.dumps(manifest, indent=2, default=str)
    )
    return manifest


def manifest_matches(
    stage_dir: str | Path,
    *,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, str | Path] | None = None,
) -> bool:
    """True when a stage was completed with this config, seed and these inputs."""
    path = Path(stage_dir) / "manifest.json"
    if not path.exists():
        return False
    saved = json.loads(path.read_text())
    current_inputs = {k: file_sha256(v) for k, v in (inputs or {}).items()}
    same_config = json.loads(json.dumps(config, default=str)) == saved.get("config")
    return same_config and saved.get("seed") == seed and saved.get("inputs") == current_inputs
