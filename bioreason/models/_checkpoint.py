"""Reading the project's torch files safely, and naming why one cannot be used.

Every ``.pt`` file the models read (``model.pt`` of a saved folder, ``checkpoint.pt``
of a training run) is loaded with ``torch.load(..., weights_only=True)``: tensors and
plain Python values only, never arbitrary pickled objects, so a file from elsewhere
cannot run code. A file that cannot be read that way is reported as damaged or from
another version, naming the file; torch's own advice to retry with
``weights_only=False`` is not passed on, because following it for a file of unknown
origin is unsafe.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


def safe_torch_load(path: str | Path, remedy: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that is not a
    readable torch file of tensors and plain values raises a ``ValueError`` naming it
    and ending with ``remedy`` (what the user can do)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # these name the file and mean what they say
    except pickle.UnpicklingError:
        # torch reports bytes that are not a pickle and a pickle of arbitrary objects alike
        reason = (
            "it is not a torch file of tensors and plain values (damaged bytes, or Python "
            "objects, which are never unpickled because that could run code)"
        )
    except Exception:  # noqa: BLE001 - torch raises RuntimeError/EOFError/OSError for damage
        reason = "it could not be read (truncated, empty, or not a torch file)"
    raise ValueError(
        f"{path} is damaged or was not written by this version of bioreason: {reason}. {remedy}"
    ) from None


def digest(*arrays: Any) -> str:
    """Short SHA-256 of arrays' dtypes, shapes and bytes (a cheap data fingerprint)."""
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        hasher.update(f"{array.dtype}{array.shape}".encode())
        if array.dtype == object:
            hasher.update("\x1f".join(map(str, array.ravel())).encode())
        else:
            hasher.update(array.tobytes())
    return hasher.hexdigest()[:16]


def describe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every key whose values differ."""
    missing = object()
    out = []
    for key in list(dict.fromkeys([*saved, *current])):
        before, after = saved.get(key, missing), current.get(key, missing)
        if before != after:
            out.append(f"{key}: {_show(before, missing)} -> {_show(after, missing)}")
    return out


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else str(value)
