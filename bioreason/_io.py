"""Atomic file writes: an interrupted command leaves no half-written file (write to a
temporary name, then rename), nothing is replaced that the caller did not allow, and
written files get the permissions an ordinary write gives them (``0o666`` less the
umask). Manifests, hashing and the skip / resume / force rules are :mod:`bioreason.stage`.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def require_input_file(path: str | Path, what: str, kind: str) -> Path:
    """``path`` as a Path when it names an existing file, else a ``FileNotFoundError`` or
    ``IsADirectoryError`` that names it (``what`` before the path, e.g. ``"task table"``;
    empty for the bare path) and says to give ``kind`` (e.g. ``"a YAML file"``)."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise FileNotFoundError(f"{label} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{label} is a folder; give the path of {kind}")
    return path


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
