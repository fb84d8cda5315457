"""A pipeline as an ordered list of :class:`Stage` objects, run into ``runs/<name>/``
with ``only`` / ``from_`` selection (``--only STAGE``, ``--from STAGE``). Each stage goes
through the one stage helper, :func:`bioreason.stage.run_stage`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bioreason._io import check_output_folder
from bioreason.stage import StageResult, completed_stage, preflight_stage, run_stage

__all__ = ["Stage", "run_stages", "say", "selected_stages"]

Inputs = Mapping[str, "str | Path"]


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
        Declared artifacts (see :func:`bioreason.stage.run_stage`).
    scratch : list of str, default ``[]``
        Working files the stage may leave while it runs, e.g. a training checkpoint
        (see :func:`bioreason.stage.run_stage`).
    """

    name: str
    compute: Callable[[Path, Mapping[str, StageResult]], Mapping[str, Any]]
    config: Any = dataclasses.field(default_factory=dict)
    inputs: Inputs | Callable[[Mapping[str, StageResult]], Inputs] = dataclasses.field(
        default_factory=dict
    )
    seed: int | None = None
    outputs: list[str] | None = None
    scratch: list[str] = dataclasses.field(default_factory=list)

    def input_paths(self, upstream: Mapping[str, StageResult]) -> Inputs:
        """The stage's inputs given the earlier stages' results."""
        return self.inputs(upstream) if callable(self.inputs) else self.inputs


def _stage_index(names: list[str], name: str, option: str) -> int:
    if name not in names:
        raise ValueError(
            f"{option} {name!r} names no stage of this pipeline; choose one of: {', '.join(names)}"
        )
    return names.index(name)


def selected_stages(
    stages: Sequence[Stage], only: str | None = None, from_: str | None = None
) -> tuple[int, int]:
    """Where the stages that run start and stop: ``stages[start:stop]`` (``--only`` one
    stage, ``--from`` a stage and the ones after it, else all).

    Returns
    -------
    start, stop : int

    Raises
    ------
    ValueError
        ``only`` and ``from_`` both given, or either naming no stage (the message lists
        the stage names).
    """
    names = [stage.name for stage in stages]
    if only is not None and from_ is not None:
        raise ValueError("give either only (--only) or from_ (--from), not both")
    if only is not None:
        start = _stage_index(names, only, "--only")
        return start, start + 1
    if from_ is not None:
        return _stage_index(names, from_, "--from"), len(names)
    return 0, len(names)


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
    start, stop = selected_stages(stages, only, from_)
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
            scratch=stage.scratch,
        )
    return results


def say(message: str) -> None:
    """Print one progress line of a stage (flushed, so a log shows it at once)."""
    print(message, flush=True)
