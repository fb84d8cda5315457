"""The one stage helper: manifests, hashing, and the skip / resume / force rules that
every command, pipeline stage and benchmark writing a folder of results follows; reading
the project's torch files safely; fingerprints of data and settings.

A stage (or a command's output folder) holds its artifacts, its machine-readable result
(``result.json`` by default) and a ``manifest.json`` (config, seed, package versions,
SHA-256 hashes of the inputs and of every output). :func:`run_stage`

* skips the stage when its manifest matches (same config, seed and input hashes, and
  every recorded output, the result included, unchanged since);
* otherwise recomputes it, but only when the folder holds nothing except files this
  helper recorded and that are unchanged since (else a ``FileExistsError`` names the
  file and the ``--force`` flag); with ``force=True`` it replaces them;
* writes a manifest whose outputs are ``null`` ("being written") before calling
  ``compute`` and the complete one last, so an interrupted stage never looks complete:
  its next run computes again, and may reuse (resume from) what the interrupted run left.

Every ``.pt`` file the project reads is loaded with ``torch.load(..., weights_only=True)``
(:func:`safe_torch_load`): tensors and plain values only, never arbitrary pickled
objects, so a file from elsewhere cannot run code. This module imports no other project
module (torch only inside :func:`safe_torch_load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import platform
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bioreason._io import _FORCE_HINT as _OVERWRITE_HINT
from bioreason._io import atomic_write_text, check_output_folder

__all__ = [
    "MANIFEST",
    "RESULT",
    "StageResult",
    "check_replaceable",
    "completed_stage",
    "describe_differences",
    "digest",
    "file_sha256",
    "finished_differences",
    "manifest_matches",
    "package_versions",
    "preflight_stage",
    "read_manifest",
    "reopen_stage",
    "run_stage",
    "safe_torch_load",
    "write_manifest",
]

MANIFEST = "manifest.json"
RESULT = "result.json"
_FORCE_HINT = "pass --force (force=True in Python) to replace it"

Inputs = Mapping[str, "str | Path"]


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


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """A manifest's contents, or None when it is missing, unreadable or not a manifest.

    Returns
    -------
    dict or None
    """
    path = Path(path)
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
        # a dataclass (or a dict holding dataclasses) is recorded as manifest_matches
        # compares it: plain JSON, field by field
        "config": None if config is None else _plain_config(config),
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
    config: Any,
    seed: int | None,
    inputs: dict[str, str | Path] | None = None,
    name: str = MANIFEST,
) -> bool:
    """True when a stage was completed with this config, seed and these inputs, and the
    outputs it recorded are still there unchanged. A damaged manifest does not match.

    ``config`` (a dict, or a dataclass or dict of dataclasses) matches the recorded one
    when every setting is equal, a setting the record lacks counting as equal when
    ``config`` holds it at its dataclass default (:func:`config_differences`)."""
    stage_dir = Path(stage_dir)
    saved = read_manifest(stage_dir / name)
    if saved is None:
        return False
    current_inputs = {k: file_sha256(v) for k, v in (inputs or {}).items()}
    same_config = _same_config(saved, config)
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
    saved = read_manifest(manifest)
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
            f"choose another output path or {_OVERWRITE_HINT}"
        )
    if recorded[key] is not None and file_sha256(path) != recorded[key]:
        raise FileExistsError(
            f"{path} has changed since bioreason wrote it (its hash differs from the one in "
            f"{manifest}); choose another output path or {_OVERWRITE_HINT}"
        )


@dataclasses.dataclass
class StageResult:
    """What a stage left behind.

    Attributes
    ----------
    path : Path
        The stage folder.
    result : dict
        The stage's machine-readable result, as read back from ``result.json``.
    skipped : bool
        True when the stage was up to date and nothing was computed.
    manifest : dict
        The stage's ``manifest.json``.
    """

    path: Path
    result: dict[str, Any]
    skipped: bool
    manifest: dict[str, Any]


def _json_default(value: Any) -> Any:
    """JSON form of the values a stage commonly returns (numpy scalars and arrays, paths)."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _plain_config(config: Any) -> dict[str, Any]:
    """A config (dict, dataclass, :class:`bioreason.config.Config`, None) as plain JSON data."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"a stage config must be a dict or a dataclass, got {type(config).__name__}"
        )
    return json.loads(json.dumps(dict(config), default=_json_default))


def _input_paths(inputs: Inputs | None, stage_dir: Path) -> dict[str, Path]:
    paths = {str(key): Path(value) for key, value in (inputs or {}).items()}
    for key, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(
                f"stage {stage_dir.name!r}: input {key!r} ({path}) does not exist; "
                "run the stage that writes it first"
            )
    return paths


def _is_partial(saved: Mapping[str, Any]) -> bool:
    """A manifest written before ``compute``: some output is recorded as being written."""
    outputs = saved.get("outputs")
    return isinstance(outputs, dict) and any(digest is None for digest in outputs.values())


def _is_temporary(path: Path) -> bool:
    """A temporary file :func:`bioreason._io.atomic_path` left when its process was killed."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _same_config(saved: Mapping[str, Any], config: Any) -> bool:
    """Whether ``config`` is the one ``saved`` (a manifest) records, settings added since
    the record and left at their defaults counting as equal."""
    recorded = saved.get("config")
    if not isinstance(recorded, Mapping):
        return False
    plain = _plain_config(config)
    if recorded == plain:
        return True
    return not config_differences(recorded, plain, config_defaults(config))


def _same_run(saved: Mapping[str, Any], config: Any, seed: int | None, inputs: dict) -> bool:
    hashes = {key: file_sha256(path) for key, path in inputs.items()}
    return (
        _same_config(saved, config) and saved.get("seed") == seed and saved.get("inputs") == hashes
    )


def _check_entry(path: Path, relative: str, recorded: Mapping[str, Any], manifest: Path) -> None:
    if relative in recorded:
        check_replaceable(path, manifest=manifest)  # raises when changed since
    elif (
        path.is_dir()
        and not path.is_symlink()
        and any(k.startswith(f"{relative}/") for k in recorded)
    ):
        for child in sorted(path.iterdir()):
            _check_entry(child, f"{relative}/{child.name}", recorded, manifest)
    else:
        check_replaceable(path, manifest=manifest)  # not recorded: raises, naming it


def _check_ours(
    stage_dir: Path,
    saved: Mapping[str, Any] | None,
    force: bool,
    scratch: Iterable[str] = (),
    resuming: bool = True,
) -> None:
    """Raise ``FileExistsError`` naming the first file in ``stage_dir`` this helper did not
    write (or that changed since it did), unless ``force``; ``scratch`` entries are the
    stage's own working files. A folder an interrupted (or failed) run was writing passes
    whole when this run resumes it (``resuming``); a run of other settings or inputs may
    replace only that run's recorded leftovers, never a file it did not record."""
    if force or not stage_dir.is_dir():
        return
    manifest = stage_dir / MANIFEST
    if manifest.exists() and (saved is None or not isinstance(saved.get("outputs"), dict)):
        raise FileExistsError(
            f"{manifest} is not a manifest this version of bioreason can read, so nothing in "
            f"{stage_dir} is known to be bioreason's; choose another run folder or {_FORCE_HINT}"
        )
    if saved is not None and _is_partial(saved) and resuming:
        return  # the folder was being written by an interrupted run of this stage
    recorded = (saved or {}).get("outputs") or {}
    for entry in sorted(stage_dir.iterdir()):
        if entry.name == MANIFEST or _is_temporary(entry) or entry.name in set(scratch):
            continue
        _check_entry(entry, entry.name, recorded, manifest)


def _remove_scratch(stage_dir: Path, scratch: Iterable[str]) -> None:
    for name in scratch:
        path = stage_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _refuse_finished(stage_dir: Path, saved: Mapping[str, Any] | None) -> None:
    """Raise when ``stage_dir`` holds a finished run (a complete manifest) that is not this
    one: a command's output folder is replaced only with ``force``."""
    outputs = (saved or {}).get("outputs")
    if not isinstance(outputs, dict) or not outputs or _is_partial(saved):
        return
    raise FileExistsError(
        f"{stage_dir} holds a finished run with other settings or inputs (or files changed "
        f"since); choose another output folder or {_FORCE_HINT}"
    )


def _remove_recorded(stage_dir: Path, saved: Mapping[str, Any] | None) -> None:
    """Delete the outputs a previous run recorded (never anything else)."""
    recorded = (saved or {}).get("outputs")
    root = stage_dir.resolve()
    for relative in recorded if isinstance(recorded, dict) else ():
        path = stage_dir / relative
        if root not in path.resolve().parents:
            continue  # a hand-edited manifest must not make us delete outside the stage
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def finished_differences(
    stage_dir: str | Path,
    config: Any,
    inputs: Inputs | None = None,
    *,
    seed: int | None = None,
) -> list[str] | None:
    """How a finished run in ``stage_dir`` differs from this one, or None when the folder
    holds no finished run whose outputs are unchanged (nothing is written).

    Returns
    -------
    list of str or None
        ``"rl.steps: 4 -> 6"`` per differing setting (dotted for nested ones),
        ``"seed: ..."`` and ``"input task: changed"``; empty when it is this run.
    """
    stage_dir = Path(stage_dir)
    saved = read_manifest(stage_dir / MANIFEST)
    outputs = (saved or {}).get("outputs")
    if not isinstance(outputs, dict) or not outputs or _is_partial(saved):
        return None
    if not _outputs_unchanged(stage_dir, saved):
        return None
    plain = _plain_config(config)
    found = config_differences(saved.get("config") or {}, plain, config_defaults(config))
    if saved.get("seed") != seed:
        found.append(f"seed: {saved.get('seed')} -> {seed}")
    hashes = {key: file_sha256(path) for key, path in _input_paths(inputs, stage_dir).items()}
    recorded = saved.get("inputs") or {}
    found += [
        f"input {key}: changed"
        for key in sorted({*hashes, *recorded})
        if hashes.get(key) != recorded.get(key)
    ]
    return found


def reopen_stage(
    stage_dir: str | Path,
    config: Any,
    inputs: Inputs | None,
    *,
    seed: int | None,
    outputs: Iterable[str],
    result: str = RESULT,
) -> None:
    """Mark a finished stage as being written again with ``config`` (its outputs kept),
    so that :func:`run_stage` with this config resumes it: a run continued to more steps
    from its last checkpoint."""
    stage_dir = Path(stage_dir)
    paths = _input_paths(inputs, stage_dir)
    pending = [stage_dir / output for output in (*outputs, result)]
    write_manifest(
        stage_dir,
        config=_plain_config(config),
        seed=seed,
        inputs=paths,
        outputs=pending,
        complete=False,
    )


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _record_failure(stage_dir: Path, err: BaseException) -> None:
    """Add to a stage's manifest (written before ``compute``, its outputs recorded as being
    written) that its run failed, and why: ``status`` ``"failed"`` or ``"interrupted"``
    and ``error``. The folder then holds a failed run's leftovers, which the same settings
    resume and other settings or inputs replace (never a file the run did not record)."""
    saved = read_manifest(stage_dir / MANIFEST)
    if saved is None:
        return
    interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
    saved["status"] = "interrupted" if interrupted else "failed"
    saved["error"] = f"{type(err).__name__}: {err}"[:2000]
    try:
        atomic_write_text(stage_dir / MANIFEST, json.dumps(saved, indent=2, default=str))
    except OSError:  # the original error matters more than this record
        pass


def preflight_stage(stage_dir: str | Path, *, force: bool = False) -> None:
    """Check, before any work, that a stage folder could be written.

    A folder that is missing, or that has a manifest, passes (whether it is up to date or
    may be replaced is decided when the stage runs); a folder that holds files but no
    manifest fails unless ``force``.

    Raises
    ------
    NotADirectoryError
        ``stage_dir`` is a file or lies inside one.
    FileExistsError
        Naming the first file of ``stage_dir`` that bioreason did not write.
    """
    stage_dir = Path(stage_dir)
    check_output_folder(stage_dir)
    if not force and stage_dir.is_dir() and not (stage_dir / MANIFEST).exists():
        _check_ours(stage_dir, None, force)


def completed_stage(
    stage_dir: str | Path,
    config: Any,
    inputs: Inputs | None = None,
    *,
    seed: int | None = None,
    result: str = RESULT,
) -> StageResult | None:
    """The stage's result when it is complete and up to date, else None.

    Up to date means: its manifest records this config, seed and these input hashes,
    the result file (``result``, default ``result.json``) among its outputs, and every
    output is unchanged since.

    Returns
    -------
    StageResult or None
        With ``skipped=True``.
    """
    stage_dir = Path(stage_dir)
    saved = read_manifest(stage_dir / MANIFEST)
    if saved is None or result not in (saved.get("outputs") or {}):
        return None
    paths = _input_paths(inputs, stage_dir)
    if not manifest_matches(stage_dir, config=config, seed=seed, inputs=paths):
        return None
    try:
        values = json.loads((stage_dir / result).read_text())
    except (OSError, ValueError):
        return None
    return StageResult(stage_dir, values, True, saved)


def run_stage(
    stage_dir: str | Path,
    config: Any,
    inputs: Inputs | None,
    compute: Callable[[Path], Mapping[str, Any]],
    *,
    seed: int | None = None,
    force: bool = False,
    outputs: Iterable[str] | None = None,
    log: Callable[[str], Any] | None = print,
    result: str = RESULT,
    scratch: Iterable[str] = (),
    keep_finished: bool = False,
) -> StageResult:
    """Run one pipeline stage into ``stage_dir``, or skip it when it is up to date.

    Parameters
    ----------
    stage_dir : str or Path
        The stage folder (``runs/<name>/<stage>``); created when missing. Its name is the
        stage's name in messages.
    config : dict or dataclass
        The settings that determine the stage's outputs; recorded as plain data.
    inputs : mapping of str to path, or None
        Files or folders the stage reads (earlier stages' outputs); their SHA-256
        hashes are recorded, so a changed input recomputes the stage.
    compute : callable
        ``compute(stage_dir) -> dict``: writes the stage's artifacts into ``stage_dir``
        (through :func:`bioreason._io.atomic_write` where a half-written file would
        hurt) and returns its machine-readable result (JSON-serializable; numpy scalars
        and arrays and paths are converted). It may find files left by an interrupted
        run with the same config, seed and inputs, and resume from them. When it raises
        (or is interrupted), the manifest records ``status`` ``"failed"`` /
        ``"interrupted"`` and the ``error``, and the error propagates: a retry with the
        same settings resumes, one with other settings or inputs replaces the failed
        run's recorded leftovers (``keep_finished`` does not refuse it), and a file the
        failed run did not write still stops it unless ``force``.
    seed : int or None, default None
        Recorded in the manifest and compared like the config.
    force : bool, default False
        Replace files in ``stage_dir`` that this helper did not write or that changed
        since it did. Without it such a file stops the stage before ``compute`` runs.
        A stage that is up to date is skipped either way (delete its folder to redo it).
    outputs : iterable of str, optional
        The stage's artifacts, relative to ``stage_dir``. Default: every entry that
        ``compute`` leaves in the folder. A declared output that ``compute`` did not
        write is an error.
    log : callable or None, default print
        Receives ``"[stage] up to date: stage_dir"`` when the stage is skipped.
    result : str, default ``"result.json"``
        The name of the result file in ``stage_dir`` (a fine-tuning job's is
        ``metrics.json``).
    scratch : iterable of str, default ()
        Entries of ``stage_dir`` that ``compute`` may leave while it works (a training
        checkpoint): kept for a resumed run, removed when a run starts afresh and after
        ``compute`` succeeds, never taken for a file the user put there. ``compute``
        resumes exactly when it finds them.
    keep_finished : bool, default False
        Refuse (unless ``force``) to replace a finished run of other settings or inputs,
        instead of recomputing it: for a command's output folder, whose earlier result
        the user may want to keep (a pipeline stage recomputes).

    Returns
    -------
    StageResult
        The stage folder, its result (read back from the result file), whether it was
        skipped, and its manifest.

    Raises
    ------
    FileExistsError
        ``stage_dir`` holds a file this helper did not write, or one changed since
        (naming it), or (``keep_finished``) a finished run of other settings, and
        ``force`` is false. Nothing is changed then.
    FileNotFoundError
        An input does not exist, or ``compute`` did not write a declared output.
    TypeError
        ``compute`` returned something other than a dict of JSON-serializable values.
    """
    stage_dir = Path(stage_dir)
    name = stage_dir.name
    scratch = tuple(scratch)
    check_output_folder(stage_dir)
    plain = _plain_config(config)
    declared = [str(Path(output).as_posix()) for output in (outputs or ())]
    saved = read_manifest(stage_dir / MANIFEST)

    done = completed_stage(stage_dir, config, inputs, seed=seed, result=result)
    if done is not None:
        if log is not None:
            log(f"[{name}] up to date: {stage_dir}")
        return done
    if keep_finished and not force:
        _refuse_finished(stage_dir, saved)
    paths = _input_paths(inputs, stage_dir)
    resuming = saved is not None and _is_partial(saved) and _same_run(saved, config, seed, paths)
    _check_ours(stage_dir, saved, force, scratch, resuming)
    if not resuming:
        _remove_recorded(stage_dir, saved)
        _remove_scratch(stage_dir, scratch)
        (stage_dir / result).unlink(missing_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    pending = [stage_dir / output for output in (*declared, result)]
    write_manifest(
        stage_dir, config=plain, seed=seed, inputs=paths, outputs=pending, complete=False
    )

    try:
        values = compute(stage_dir)
    except BaseException as err:
        _record_failure(stage_dir, err)
        raise
    if not isinstance(values, Mapping):
        raise TypeError(
            f"stage {name!r}: compute must return a dict (the stage's result), "
            f"got {type(values).__name__}"
        )
    try:
        text = json.dumps(dict(values), indent=2, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TypeError(f"stage {name!r}: its result cannot be written as JSON: {err}") from None
    atomic_write_text(stage_dir / result, text)
    _remove_scratch(stage_dir, scratch)

    for output in declared:
        if not (stage_dir / output).exists():
            raise FileNotFoundError(
                f"stage {name!r} declares the output {output!r} but did not write "
                f"{stage_dir / output}"
            )
    if outputs is None:
        written = [
            entry
            for entry in sorted(stage_dir.iterdir())
            if entry.name != MANIFEST and not _is_temporary(entry) and entry.name not in scratch
        ]
    else:
        written = [stage_dir / output for output in (*declared, result)]
    manifest = write_manifest(stage_dir, config=plain, seed=seed, inputs=paths, outputs=written)
    return StageResult(stage_dir, json.loads(text), False, manifest)


# ---------------------------------------------------------------- torch files, fingerprints
def safe_torch_load(path: str | Path, remedy: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a file that is not a
    readable torch file of tensors and plain values raises a ``ValueError`` naming it
    and ending with ``remedy`` (what the user can do)."""
    import torch

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


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """``"section.field: saved -> current"`` for every nested setting that differs
    (``(absent)`` for one that only one side has).

    ``defaults`` (dotted setting -> plain value, :func:`config_defaults`) names the
    settings a config class fills in by itself: one that ``saved`` lacks and ``current``
    holds at its default is not a difference. A record written before a setting existed
    then matches a config that leaves it at its default (a field added to bioreason keeps
    the earlier behaviour at its default), instead of refitting every older run.

    Returns
    -------
    list of str
    """
    before, after = _flat(saved), _flat(current)
    for key, value in (defaults or {}).items():
        if key not in before and key in after and after[key] == value:
            del after[key]
    return describe_differences(before, after)


def config_defaults(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted name -> plain (JSON) default of every dataclass field with a default inside
    ``config`` (a dataclass, or a mapping holding dataclasses, nested), at the dotted
    place :func:`_plain_config` gives it; a field whose default is itself a dataclass or a
    mapping contributes its leaves.

    Returns
    -------
    dict of str to object
    """
    found: dict[str, Any] = {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        for spec in dataclasses.fields(config):
            key = f"{prefix}{spec.name}"
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            else:
                default = dataclasses.MISSING
            if default is not dataclasses.MISSING:
                plain = json.loads(json.dumps({"value": default}, default=_json_default))
                value = plain["value"]
                if isinstance(value, Mapping) and value:
                    found.update(_flat(value, f"{key}."))
                else:
                    found[key] = value
            found.update(config_defaults(getattr(config, spec.name), f"{key}."))
    elif isinstance(config, Mapping):
        for name, value in config.items():
            found.update(config_defaults(value, f"{prefix}{name}."))
    return found


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else str(value)
