"""Atomic file writes and run manifests.

An interrupted stage leaves no half-written file (write to a temporary name, then
rename); a stage replaces only files that its manifest records it wrote
(:func:`check_replaceable`); written files get the permissions an ordinary write gives
them (``0o666`` less the umask).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_FORCE_HINT = "pass --force (overwrite=True in Python) to replace it"


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:  # Linux: no window in which another thread sees a different umask
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode an ordinary ``open(path, "w")`` leaves: the old file's, or 0o666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _make_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(
            f"cannot write {path}: {_first_file(parent)} is a file, not a folder"
        ) from None
    except PermissionError:
        raise PermissionError(
            f"cannot write {path}: no permission to create the folder {parent}"
        ) from None


def _first_file(folder: Path) -> Path:
    """The first existing ancestor of ``folder`` (inclusive) that is not a folder."""
    for candidate in [*reversed(folder.parents), folder]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


def check_output_folder(path: str | Path) -> None:
    """Raise ``NotADirectoryError`` naming the file when ``path`` (an output folder to be
    created or reused) is a file or lies inside one."""
    path = Path(path)
    blocker = _first_file(path)
    if blocker == path and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder; choose another output folder")
    if blocker != path:
        raise NotADirectoryError(f"cannot create the folder {path}: {blocker} is a file")


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false, so
    nothing the user had is replaced by accident, and ``IsADirectoryError`` when
    ``path`` is a folder. The file gets the mode an ordinary write would give it: that
    of the file it replaces, else ``0o666`` less the umask (not ``mkstemp``'s 0600).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of a file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or {_FORCE_HINT}")
    _make_parent(path)
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise PermissionError(
            f"cannot write {path}: no permission to write in {path.parent}"
        ) from None
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file (see :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def atomic_write(
    path: str | Path, writer: Callable[[Path], Any], *, overwrite: bool = True
) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON data: dict keys as text, tuples as lists, numpy/torch
    scalars as plain numbers, NaN and infinities as None (null).

    Returns
    -------
    Any
        Plain dicts, lists, numbers, strings, booleans and None.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(child.relative_to(path).as_posix().encode() + b"\0")
            digest.update(file_sha256(child, chunk_size).encode())
        return digest.hexdigest()
    with path.open("rb") as handle:
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


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest's contents, or None when it is missing, unreadable or not a manifest."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def write_manifest(
    stage_dir: str | Path,
    *,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, str | Path] | None = None,
    outputs: Iterable[str | Path] = (),
    complete: bool = True,
    name: str = MANIFEST,
) -> dict[str, Any]:
    """Write ``stage_dir/manifest.json`` (config, seed, versions, input and output hashes).

    ``outputs`` are the files or folders the stage writes. With ``complete=True`` (after
    writing them) their hashes are recorded, by path relative to ``stage_dir``, so that
    :func:`check_replaceable` lets a re-run replace them and :func:`manifest_matches`
    notices when one was changed since. Call it once with ``complete=False`` before
    writing them: they are recorded as being written (``null``), so a stage interrupted
    half-way may replace them on its next run, and the manifest matches nothing until the
    stage completes.
    """
    stage_dir = Path(stage_dir)
    manifest = {
        "config": config,
        "seed": seed,
        "inputs": {k: file_sha256(v) for k, v in (inputs or {}).items()},
        "outputs": {
            _relative(Path(p), stage_dir): file_sha256(p) if complete else None for p in outputs
        },
        "versions": package_versions(),
    }
    atomic_write_text(stage_dir / name, json.dumps(manifest, indent=2, default=str))
    return manifest


def _relative(path: Path, stage_dir: Path) -> str:
    try:
        return path.resolve().relative_to(stage_dir.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"output {path} is not inside the stage folder {stage_dir}") from None


def _outputs_unchanged(stage_dir: Path, saved: dict[str, Any]) -> bool:
    recorded = saved.get("outputs") or {}
    if not isinstance(recorded, dict):
        return False
    for relative, digest in recorded.items():
        path = stage_dir / relative
        if digest is None or not path.exists() or file_sha256(path) != digest:
            return False
    return True


def manifest_matches(
    stage_dir: str | Path,
    *,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, str | Path] | None = None,
    name: str = MANIFEST,
) -> bool:
    """True when a stage was completed with this config, seed and these inputs, and the
    outputs it recorded are still there unchanged. A damaged manifest does not match."""
    stage_dir = Path(stage_dir)
    saved = _read_manifest(stage_dir / name)
    if saved is None:
        return False
    current_inputs = {k: file_sha256(v) for k, v in (inputs or {}).items()}
    same_config = json.loads(json.dumps(config, default=str)) == saved.get("config")
    return (
        same_config
        and saved.get("seed") == seed
        and saved.get("inputs") == current_inputs
        and _outputs_unchanged(stage_dir, saved)
    )


def check_replaceable(
    path: str | Path, *, manifest: str | Path | None = None, force: bool = False
) -> None:
    """Refuse to replace ``path`` unless this project wrote it.

    ``path`` (a file or a folder) may be written when it does not exist, when ``force``
    is true, or when ``manifest`` (default ``path.parent / "manifest.json"``) records it
    among its ``outputs`` with the hash it has now (a stage wrote it and nobody changed
    it since) or as being written (a stage was interrupted while writing it).

    Raises
    ------
    FileExistsError
        Naming ``path`` and why it is not ours; nothing is changed.
    """
    path = Path(path)
    if force or not (path.exists() or path.is_symlink()):
        return
    manifest = Path(manifest) if manifest is not None else path.parent / MANIFEST
    saved = _read_manifest(manifest)
    recorded = (saved or {}).get("outputs") or {}
    try:
        key = path.resolve().relative_to(manifest.parent.resolve()).as_posix()
    except ValueError:
        key = None
    if not isinstance(recorded, dict) or key not in recorded:
        why = f"no record of it in {manifest}"
        if saved is not None and "outputs" not in saved:
            why += ", written by a bioreason version that did not record its outputs"
        raise FileExistsError(
            f"{path} already exists and was not written by bioreason ({why}); "
            f"choose another output path or {_FORCE_HINT}"
        )
    if recorded[key] is not None and file_sha256(path) != recorded[key]:
        raise FileExistsError(
            f"{path} has changed since bioreason wrote it (its hash differs from the one in "
            f"{manifest}); choose another output path or {_FORCE_HINT}"
        )
