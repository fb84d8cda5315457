"""The one stage helper every pipeline stage goes through, and a runner for a list of stages.

A stage is a folder (``runs/<name>/<stage>/``) that holds the stage's artifacts, its
machine-readable result (``result.json``) and a ``manifest.json`` (config, seed,
package versions, SHA-256 hashes of the inputs and of every output). :func:`run_stage`

* skips the stage when its manifest matches (same config, seed and input hashes, and
  every recorded output, ``result.json`` included, unchanged since);
* otherwise recomputes it, but only when the folder holds nothing except files this
  helper recorded and that are unchanged since (else a ``FileExistsError`` names the
  file and the ``--force`` flag); with ``force=True`` it replaces them;
* writes a manifest whose outputs are ``null`` ("being written") before calling
  ``compute`` and the complete one last, so an interrupted stage never looks complete:
  its next run computes again, and may reuse (resume from) what the interrupted run left.

:func:`run_stages` runs an ordered list of :class:`Stage` objects with ``only`` /
``from_`` selection (``--only STAGE``, ``--from STAGE``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bioreason._io import (
    MANIFEST,
    _read_manifest,
    atomic_write_text,
    check_output_folder,
    check_replaceable,
    file_sha256,
    manifest_matches,
    write_manifest,
)

__all__ = [
    "RESULT",
    "Stage",
    "StageResult",
    "completed_stage",
    "preflight_stage",
    "run_stage",
    "run_stages",
]

RESULT = "result.json"
_FORCE_HINT = "pass --force (force=True in Python) to replace it"

Inputs = Mapping[str, "str | Path"]


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


def _same_run(saved: Mapping[str, Any], config: dict, seed: int | None, inputs: dict) -> bool:
    hashes = {key: file_sha256(path) for key, path in inputs.items()}
    return (
        saved.get("config") == config
        and saved.get("seed") == seed
        and saved.get("inputs") == hashes
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


def _check_ours(stage_dir: Path, saved: Mapping[str, Any] | None, force: bool) -> None:
    """Raise ``FileExistsError`` naming the first file in ``stage_dir`` this helper did not
    write (or that changed since it did), unless ``force``."""
    if force or not stage_dir.is_dir():
        return
    manifest = stage_dir / MANIFEST
    if manifest.exists() and (saved is None or not isinstance(saved.get("outputs"), dict)):
        raise FileExistsError(
            f"{manifest} is not a manifest this version of bioreason can read, so nothing in "
            f"{stage_dir} is known to be bioreason's; choose another run folder or {_FORCE_HINT}"
        )
    if saved is not None and _is_partial(saved):
        return  # the folder was being written by an interrupted run of this stage
    recorded = (saved or {}).get("outputs") or {}
    for entry in sorted(stage_dir.iterdir()):
        if entry.name == MANIFEST or _is_temporary(entry):
            continue
        _check_entry(entry, entry.name, recorded, manifest)


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
) -> StageResult | None:
    """The stage's result when it is complete and up to date, else None.

    Up to date means: its manifest records this config, seed and these input hashes,
    ``result.json`` among its outputs, and every output is unchanged since.

    Returns
    -------
    StageResult or None
        With ``skipped=True``.
    """
    stage_dir = Path(stage_dir)
    saved = _read_manifest(stage_dir / MANIFEST)
    if saved is None or RESULT not in (saved.get("outputs") or {}):
        return None
    plain = _plain_config(config)
    paths = _input_paths(inputs, stage_dir)
    if not manifest_matches(stage_dir, config=plain, seed=seed, inputs=paths):
        return None
    try:
        result = json.loads((stage_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return StageResult(stage_dir, result, True, saved)


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
        run with the same config, seed and inputs, and resume from them.
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

    Returns
    -------
    StageResult
        The stage folder, its result (read back from ``result.json``), whether it was
        skipped, and its manifest.

    Raises
    ------
    FileExistsError
        ``stage_dir`` holds a file this helper did not write, or one changed since
        (naming it), and ``force`` is false. Nothing is changed then.
    FileNotFoundError
        An input does not exist, or ``compute`` did not write a declared output.
    TypeError
        ``compute`` returned something other than a dict of JSON-serializable values.
    """
    stage_dir = Path(stage_dir)
    name = stage_dir.name
    check_output_folder(stage_dir)
    plain = _plain_config(config)
    declared = [str(Path(output).as_posix()) for output in (outputs or ())]
    saved = _read_manifest(stage_dir / MANIFEST)

    done = completed_stage(stage_dir, plain, inputs, seed=seed)
    if done is not None:
        if log is not None:
            log(f"[{name}] up to date: {stage_dir}")
        return done
    _check_ours(stage_dir, saved, force)
    paths = _input_paths(inputs, stage_dir)

    resuming = saved is not None and _is_partial(saved) and _same_run(saved, plain, seed, paths)
    if not resuming:
        _remove_recorded(stage_dir, saved)
        (stage_dir / RESULT).unlink(missing_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    pending = [stage_dir / output for output in (*declared, RESULT)]
    write_manifest(
        stage_dir, config=plain, seed=seed, inputs=paths, outputs=pending, complete=False
    )

    result = compute(stage_dir)
    if not isinstance(result, Mapping):
        raise TypeError(
            f"stage {name!r}: compute must return a dict (the stage's result), "
            f"got {type(result).__name__}"
        )
    try:
        text = json.dumps(dict(result), indent=2, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TypeError(f"stage {name!r}: its result cannot be written as JSON: {err}") from None
    atomic_write_text(stage_dir / RESULT, text)

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
            if entry.name != MANIFEST and not _is_temporary(entry)
        ]
    else:
        written = [stage_dir / output for output in (*declared, RESULT)]
    manifest = write_manifest(stage_dir, config=plain, seed=seed, inputs=paths, outputs=written)
    return StageResult(stage_dir, json.loads(text), False, manifest)


@dataclasses.dataclass
class Stage:
    """One named stage of a pipeline (see :func:`run_stages`).

    Attributes
    ----------
    name : str
        The stage's name and the name of its folder under the run folder.
    compute : callable
        ``compute(stage_dir, upstream) -> dict``, with ``upstream`` the
        :class:`StageResult` of every earlier stage by name (see :func:`run_stage`).
    config : dict or dataclass, default ``{}``
        The stage's settings.
    inputs : mapping or callable, default ``{}``
        Input paths, or ``inputs(upstream) -> mapping`` to name earlier stages'
        outputs, e.g. ``lambda up: {"screen": up["screen"].path / "screen.h5ad"}``.
    seed : int or None, default None
    outputs : list of str or None, default None
        Declared artifacts (see :func:`run_stage`).
    """

    name: str
    compute: Callable[[Path, Mapping[str, StageResult]], Mapping[str, Any]]
    config: Any = dataclasses.field(default_factory=dict)
    inputs: Inputs | Callable[[Mapping[str, StageResult]], Inputs] = dataclasses.field(
        default_factory=dict
    )
    seed: int | None = None
    outputs: list[str] | None = None

    def input_paths(self, upstream: Mapping[str, StageResult]) -> Inputs:
        """The stage's inputs given the earlier stages' results."""
        return self.inputs(upstream) if callable(self.inputs) else self.inputs


def _stage_index(names: list[str], name: str, option: str) -> int:
    if name not in names:
        raise ValueError(
            f"{option} {name!r} names no stage of this pipeline; choose one of: {', '.join(names)}"
        )
    return names.index(name)


def run_stages(
    stages: Sequence[Stage],
    root: str | Path,
    only: str | None = None,
    from_: str | None = None,
    force: bool = False,
    *,
    log: Callable[[str], Any] | None = print,
) -> dict[str, StageResult]:
    """Run an ordered list of stages into ``root/<stage.name>/``.

    Parameters
    ----------
    stages : sequence of Stage
        In the order they run; names must be distinct.
    root : str or Path
        The run folder (``runs/<name>``).
    only : str, optional
        Run this stage alone (``--only STAGE``).
    from_ : str, optional
        Run this stage and the ones after it (``--from STAGE``).
    force : bool, default False
        Let the stages that run replace files in their folders that bioreason did not
        write or that changed since (an up-to-date stage is still skipped).
    log : callable or None, default print
        Receives the messages of :func:`run_stage`.

    Returns
    -------
    dict of str to StageResult
        Every stage up to the last one run, by name, in order. Stages before ``only`` /
        ``from_`` are read back from their folders (``skipped=True``).

    Raises
    ------
    ValueError
        A repeated stage name; ``only`` and ``from_`` both given; either naming no stage
        (the message lists the stage names); or a stage before ``only`` / ``from_`` that
        is not complete and up to date.
    FileExistsError
        A stage folder holds files bioreason did not write (checked for every stage that
        will run before the first one starts), see :func:`run_stage`.
    """
    root = Path(root)
    names = [stage.name for stage in stages]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"stage names must be distinct; repeated: {', '.join(repeated)}")
    if only is not None and from_ is not None:
        raise ValueError("give either only (--only) or from_ (--from), not both")
    start, stop = 0, len(stages)
    if only is not None:
        start = _stage_index(names, only, "--only")
        stop = start + 1
    elif from_ is not None:
        start = _stage_index(names, from_, "--from")
    check_output_folder(root)
    for stage in stages[start:stop]:
        preflight_stage(root / stage.name, force=force)

    results: dict[str, StageResult] = {}
    for index, stage in enumerate(stages[:stop]):
        stage_dir = root / stage.name
        if index < start:
            done = completed_stage(
                stage_dir, stage.config, stage.input_paths(results), seed=stage.seed
            )
            if done is None:
                chosen = f"--only {only}" if only is not None else f"--from {from_}"
                raise ValueError(
                    f"{chosen} needs the earlier stage {stage.name!r} complete and up to date "
                    f"in {stage_dir}, and it is not; run from {stage.name!r} "
                    f"(--from {stage.name}) or the whole pipeline"
                )
            results[stage.name] = done
            continue
        upstream = dict(results)
        results[stage.name] = run_stage(
            stage_dir,
            stage.config,
            stage.input_paths(upstream),
            lambda path, stage=stage, upstream=upstream: stage.compute(path, upstream),
            seed=stage.seed,
            force=force,
            outputs=stage.outputs,
            log=log,
        )
    return results
