"""Checks of a whole pipeline run before its first stage: what can be known to fail
without doing the work is refused before the data, the VAE and the fine-tuning run.

:func:`preflight_pipeline` checks

* the run record ``pipeline.json`` and every file the report writes (``report.html``,
  ``report.md``, ``report_files/figure-*.png``): missing, or written by bioreason and
  unchanged (else ``--force``);
* the fine-tuning jobs' folders ``finetune/<method>_seed<S>``: missing, or holding
  bioreason's files only;
* the inputs named in the config: the ``.h5ad`` of ``data.path``, the dataset name, the
  task table of ``task.source``, the readouts an outcome about readouts needs;
* the base model ``lm.model``: a preset (``tiny``), a model folder, or a hub name found
  in the local cache or on the hub;
* the devices ``vae.train.device`` and ``finetune.rl.device``.

Each error names the option or file and what to do. The stages' own folders are checked
by :func:`bioreason.pipelines.stages.run_stages` (files bioreason did not write).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage
from bioreason.run_layout import PIPELINE_RECORD, job_folder_name
from bioreason.stage import MANIFEST, preflight_stage, read_manifest

__all__ = [
    "RECORD_GENERATOR",
    "check_lm_model",
    "check_run_record",
    "preflight_pipeline",
    "record_is_ours",
]

#: ``pipeline.json``'s ``generator``: marks a run record as written by ``bioreason run``
RECORD_GENERATOR = "bioreason run_pipeline"


def record_is_ours(path: str | Path) -> bool:
    """True when ``path`` (a ``pipeline.json``) is a run record that bioreason wrote: a
    JSON object whose ``generator`` is :data:`RECORD_GENERATOR`, or (written before that
    mark) one with the record's ``stages`` and ``commands``.

    Returns
    -------
    bool
    """
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    if record.get("generator") == RECORD_GENERATOR:
        return True
    return isinstance(record.get("stages"), dict) and isinstance(record.get("commands"), list)


def check_run_record(out: str | Path, *, force: bool = False) -> None:
    """Refuse (unless ``force``) a run folder whose ``pipeline.json`` bioreason did not
    write: the run would replace it.

    Raises
    ------
    FileExistsError
        Naming the file and ``--force``.
    IsADirectoryError
        ``pipeline.json`` is a folder.
    """
    path = Path(out) / PIPELINE_RECORD
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; move it away to run the pipeline in {out}")
    if force or not path.exists() or record_is_ours(path):
        return
    raise FileExistsError(
        f"{path} already exists and is not a run record of bioreason (written by `bioreason "
        "run` / `bioreason demo`); choose another run folder (--out) or pass --force to "
        "replace it"
    )


def check_lm_model(name: str, option: str = "lm.model") -> None:
    """Check that the base model ``name`` can be loaded, without loading its weights.

    A preset (``tiny``, or a ``.yaml`` preset file), a folder with ``config.json`` (or a
    LoRA ``adapter_config.json``), or a hub name whose ``config.json`` is in the local
    Hugging Face cache or can be fetched from the hub.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder that holds no model.
    ValueError
        A hub name that is neither cached nor on the hub (or the hub cannot be reached).
    """
    from bioreason.lm.model import available_presets

    text = str(name).strip()
    path = Path(text).expanduser()
    if text in available_presets() and not path.is_dir():
        return
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"{option}: the model preset file {path} does not exist")
        return
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise FileNotFoundError(
                f"{option}: {path} holds no model (no config.json); give a folder written by "
                "save_pretrained / Predictor.save, a hub name such as 'org/model', or 'tiny'"
            )
        return
    looks_like_path = (
        text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or not text
    )
    if looks_like_path:
        raise FileNotFoundError(
            f"{option}: no folder {text!r}; give a model folder, a hub name such as "
            f"'org/model', or one of the presets {available_presets()}"
        )
    _check_hub_name(text, option)


def _check_hub_name(name: str, option: str) -> None:
    """A hub name's ``config.json`` from the local cache, else from the hub."""
    import os

    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    if offline:
        raise ValueError(
            f"{option}: {name!r} is not a preset ({', '.join(_presets())}), not a folder, and "
            "not in the local Hugging Face cache (HF_HUB_OFFLINE is set); download it first "
            "or give a model folder"
        )
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"{option}: {name!r} is not a preset ({', '.join(_presets())}), not a folder, and "
            f"could not be found on the Hugging Face hub ({reason}); check the name, or give a "
            "model folder"
        ) from None


def _presets() -> list[str]:
    from bioreason.lm.model import available_presets

    return available_presets()


def _check_device(device: str, option: str) -> None:
    from bioreason._device import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None


def _check_inputs(config: PipelineConfig, run: Sequence[str]) -> None:
    """The files and names the config's sources point at (the task's readouts only when
    the task stage runs: ``--only data`` needs none)."""
    data, task = config.data, config.task
    if task.from_simulator and data.source == "h5ad":
        path = Path(str(data.path))
        if not path.is_file():
            state = "is a folder" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"data.path: the .h5ad file {path} {state}")
    if task.from_simulator and data.source == "dataset":
        from bioreason.data.registry import REGISTRY_PATH, dataset_registry

        names = dataset_registry()
        if str(data.path) not in names:
            raise ValueError(
                f"data.path: no dataset {data.path!r} in the registry {REGISTRY_PATH}; "
                f"choose one of: {', '.join(sorted(names))}"
            )
    if task.source.endswith(".parquet") and not Path(task.source).is_file():
        raise FileNotFoundError(f"task.source: the task table {task.source} does not exist")
    if task.from_simulator and "task" in run:
        _check_readouts(task.options)


def _check_readouts(options: Any) -> None:
    """An outcome about a readout (``screen_hit``, ...) needs readouts: genes, programs or
    learned programs (else the task stage fails after the data and the VAE)."""
    from bioreason.sim.outcomes import OUTCOMES

    try:
        outcome = OUTCOMES.get(options.outcome)
    except (KeyError, ValueError):
        return  # an unknown outcome is the config's own error
    if not getattr(outcome, "uses_readout", True):
        return
    if options.readouts or options.programs or options.n_programs:
        return
    raise ValueError(
        f"task.options: the outcome {options.outcome!r} asks about readouts, and none are "
        "given: set task.options.n_programs (learned programs, e.g. 20 as in "
        "pipelines/configs/demo.yaml), task.options.programs or task.options.readouts"
    )


def _unchanged_stage(stage_dir: Path, stage: Stage) -> bool:
    """True when ``stage_dir`` records a finished run of this stage's config (its inputs
    are judged when it runs): its base model was loaded then."""
    saved = read_manifest(stage_dir / MANIFEST)
    outputs = (saved or {}).get("outputs")
    if not isinstance(outputs, dict) or any(v is None for v in outputs.values()):
        return False
    return saved.get("config") == _plain(stage.config) and saved.get("seed") == stage.seed


def _plain(value: Any) -> Any:
    """A stage config as its manifest records it (dataclasses as dicts, JSON values)."""

    def default(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.asdict(item)
        if isinstance(item, Path):
            return item.as_posix()
        return item.tolist() if hasattr(item, "tolist") else str(item)

    return json.loads(json.dumps(value, default=default))


def preflight_pipeline(
    config: PipelineConfig,
    out: str | Path,
    stages: Sequence[Stage],
    *,
    run: Sequence[str],
    force: bool = False,
    report: bool = True,
) -> None:
    """Check a pipeline run before its first stage (module docstring).

    Parameters
    ----------
    config : PipelineConfig
    out : str or Path
        The run folder.
    stages : sequence of Stage
        The pipeline's stages (:func:`bioreason.pipelines.run.pipeline_stages`).
    run : sequence of str
        The names of the stages that will run (``--only`` / ``--from`` select them).
    force : bool, default False
        ``--force``: files bioreason did not write may be replaced.
    report : bool, default True
        The report is written at the end (when the calibration stage runs).

    Raises
    ------
    FileExistsError
        A file the run would replace that bioreason did not write (naming it).
    FileNotFoundError, ValueError
        A missing input, an unknown dataset, a base model that cannot be found, a device
        that is not there (naming the option).
    """
    out = Path(out)
    check_run_record(out, force=force)
    if config.kind == "tabular":
        return
    if report and "calibration" in run:
        from bioreason.report import check_report_writable

        check_report_writable(out, force=force)
    _check_inputs(config, run)
    if "vae" in run and config.task.from_simulator:
        _check_device(config.vae.train.device, "vae.train.device")
    if any(name in run for name in ("warm_start", "finetune")):
        _check_device(config.finetune.rl.device, "finetune.rl.device")
    by_name = {stage.name: stage for stage in stages}
    warm = by_name.get("warm_start")
    if "warm_start" in run and warm is not None and not _unchanged_stage(out / warm.name, warm):
        check_lm_model(config.lm.model)
    if "finetune" in run:
        for seed in config.finetune.seeds:
            for method in config.finetune.methods:
                preflight_stage(out / "finetune" / job_folder_name(method, seed), force=force)
