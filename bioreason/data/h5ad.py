"""Reading an ``.h5ad`` file with errors that name the file and say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bioreason._io import require_input_file

__all__ = ["read_h5ad"]


def read_h5ad(path: str | Path, backed: bool = False, what: str = "") -> Any:
    """``anndata.read_h5ad`` whose errors name the file and say what is wrong with it.

    Parameters
    ----------
    path : str or Path
        The ``.h5ad`` file.
    backed : bool, default False
        Open it backed (``backed="r"``: the counts stay on disk).
    what : str, default ""
        What the file is, named before its path in errors (e.g. ``"adata"``).

    Returns
    -------
    AnnData

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        The file does not exist, or is a folder.
    OSError
        It is not an HDF5 file, is truncated, or cannot be read.
    ValueError
        It is an HDF5 file but not an AnnData one.
    """
    import anndata as ad

    path = require_input_file(path, what, "one .h5ad file")
    label = f"{what} {path}" if what else str(path)
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except OSError as err:  # h5py: its messages do not name the file
        text = " ".join(str(err).split()) or type(err).__name__
        if "file signature not found" in text:
            raise OSError(f"{label} is not an HDF5 (.h5ad) file") from None
        if "truncated file" in text:
            raise OSError(
                f"{label} is truncated (an interrupted download or copy?): {text}"
            ) from None
        raise OSError(f"cannot read {label}: {text}") from None
    except (KeyError, TypeError, ValueError) as err:  # HDF5, but not AnnData's layout
        raise ValueError(
            f"{label} is an HDF5 file but not an AnnData .h5ad one "
            f"({' '.join(str(err).split()) or type(err).__name__})"
        ) from None
