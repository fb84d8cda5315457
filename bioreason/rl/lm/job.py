"""One fine-tuning job: a causal LM trained with :class:`~bioreason.rl.LMTrainer` on a
task table's train split and scored on its held-out split, written into one folder.

``bioreason finetune`` is this job, and so is every job of a pipeline's ``finetune``
stage (:func:`bioreason.pipelines.lm_runs.run_jobs`): the same settings
(:class:`FinetuneConfig`) give the same files and the same ``metrics.json``.

:func:`run_finetune` goes through the stage helper (:func:`bioreason.stage.run_stage`):
a folder whose manifest matches the settings and inputs is left as it is; an interrupted
run resumes from its checkpoint; files the job did not write stop it unless ``force``.
The job

1. loads the model (:func:`bioreason.lm.load_predictor`: ``"tiny"``, a folder or a hub
   name) and, when asked, warm-starts the answer format (:func:`bioreason.lm.warm_start`;
   deterministic, so a resumed run redoes it and then loads its checkpoint);
2. evaluates the policy before training (the start of the drift);
3. trains ``rl.steps`` steps, evaluating every ``rl.eval_every`` steps and at the last;
4. writes the files of :mod:`bioreason.run_layout` (``predictions.parquet``,
   ``log.csv``, ``eval.csv``, ``checkpoint.pt``, ``model/``, ``tb/`` and
   ``metrics.json``: the settings' identity, the scores of :func:`score_predictions` on
   the last evaluation's predictions, the drift at the start and the end, and timings,
   :data:`TIMING_FIELDS`).

Under ``accelerate launch`` every process trains its share of each batch; the main
process alone checks and writes the folder, and tells the others by broadcast whether
to train.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bioreason.config import Config
from bioreason.rl.lm.config import LMRLConfig, trl_messages
from bioreason.run_layout import (
    CHECKPOINT_FILE,
    EVAL_LOG_FILE,
    LOG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PREDICTIONS_FILE,
    judged_probability,
)

__all__ = [
    "JOB_OUTPUTS",
    "TIMING_FIELDS",
    "FinetuneConfig",
    "completed_finetune",
    "prepare_predictor",
    "run_finetune",
    "score_predictions",
]

#: TensorBoard event files of the training log (an empty folder without tensorboard)
TENSORBOARD_DIR = "tb"
#: what a job writes into its folder besides ``metrics.json`` and ``manifest.json``
JOB_OUTPUTS = (
    PREDICTIONS_FILE,
    LOG_FILE,
    EVAL_LOG_FILE,
    CHECKPOINT_FILE,
    MODEL_DIR,
    TENSORBOARD_DIR,
)
#: fields of ``metrics.json`` that measure time (or this call's share of a resumed run)
#: and so differ between two runs of the same settings
TIMING_FIELDS = ("train_seconds", "seconds_per_step", "steps_run", "steps_per_second")


@dataclasses.dataclass
class FinetuneConfig(Config):
    """Settings of one fine-tuning job (:func:`run_finetune`): the model, its warm start,
    the RL run, and how the result is scored.

    Attributes
    ----------
    model : str, default "tiny"
        The LM: ``tiny`` (a new small LM with a word-level tokenizer over the task's
        prompts; any preset name of ``models/``), a model folder (``save_pretrained``,
        ``Predictor.save``, a pipeline's warm start) or a Hugging Face hub name.
    warm_start_steps : int or None, default None
        Supervised steps teaching the answer format with uniform answers before RL
        (:func:`bioreason.lm.warm_start`; 0: none). None: 30 for a model built here
        (``tiny`` or another preset: without them it writes no valid answer), 0 for a
        model folder or hub model.
    warm_start_lr : float, default 1e-3
        The warm start's learning rate.
    warm_start_trainable : {"answer_rows", "all"}, default "answer_rows"
        What the warm start trains: only the embedding rows of the tokens the model
        writes (the rest keeps what the prompt puts at the answer position), or every
        weight (:func:`bioreason.lm.warm_start`).
    n_boot : int, default 0
        Bootstrap replicates over held-out questions for the bounds of the scores in
        ``metrics.json`` (0: no bounds).
    threads : int or None, default None
        Torch CPU threads of the job (None: torch's default). Speed only: not part of
        the folder's manifest.
    rl : LMRLConfig
        The RL run (:class:`bioreason.rl.LMRLConfig`); its ``eval_split`` is the
        held-out split scored. In a mapping its fields may also stand at the top level
        (the older flat form of a ``bioreason finetune`` config file), read with a
        warning.
    """

    model: str = "tiny"
    warm_start_steps: int | None = None
    warm_start_lr: float = 1e-3
    warm_start_trainable: str = "answer_rows"
    n_boot: int = 0
    threads: int | None = None
    rl: LMRLConfig = dataclasses.field(default_factory=LMRLConfig)

    #: the flat form: every LMRLConfig field at the top level means ``rl.<field>``
    moved_fields: ClassVar[dict[str, str]] = {
        field.name: f"rl.{field.name}" for field in dataclasses.fields(LMRLConfig)
    }
    #: TRL's names, in the flat form, refused naming ``rl.<field>``
    foreign_names: ClassVar[dict[str, str]] = trl_messages("rl.")

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"model must be 'tiny', a model folder or a hub name, got {self.model!r}"
            )
        for name in ("warm_start_steps", "n_boot"):
            value = getattr(self, name)
            if value is None and name == "warm_start_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.warm_start_trainable not in ("answer_rows", "all"):
            raise ValueError(
                "warm_start_trainable must be 'answer_rows' or 'all', got "
                f"{self.warm_start_trainable!r}"
            )
        if not (math.isfinite(self.warm_start_lr) and self.warm_start_lr > 0):
            raise ValueError(f"warm_start_lr must be > 0, got {self.warm_start_lr}")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        if not isinstance(self.rl, LMRLConfig):
            raise TypeError(f"rl must be an LMRLConfig, got {type(self.rl).__name__}")

    @property
    def warm_steps(self) -> int:
        """The warm start's steps, ``warm_start_steps`` resolved (see its entry)."""
        if self.warm_start_steps is not None:
            return self.warm_start_steps
        from bioreason.lm import available_presets

        return 30 if self.model in available_presets() else 0


def prepare_predictor(
    model: str,
    task: Any,
    *,
    device: str = "auto",
    seed: int = 0,
    grid: Any = None,
    warm_start_steps: int = 0,
    warm_start_lr: float = 1e-3,
    warm_start_trainable: str = "answer_rows",
    open_answer: bool = False,
    train_split: str | None = "train",
    progress: bool = True,
    report: dict[str, float] | None = None,
) -> Any:
    """Load (or build) a predictor for a task and warm-start its answer format.

    Parameters
    ----------
    model : str
        ``"tiny"`` (or a preset name: a new LM whose word-level tokenizer is built from
        every prompt of ``task``), a model folder or a hub name.
    task : pandas.DataFrame
        The task table (its ``prompt`` and ``split`` columns).
    device : str, default "auto"
    seed : int, default 0
        Seeds a new model's weights and the warm start.
    grid : AnswerGrid, optional
        The answers (default: the folder's saved grid, else 1..99).
    warm_start_steps, warm_start_lr
        Supervised steps on the train prompts with uniform answers (0: none) and their
        learning rate (:func:`bioreason.lm.warm_start`).
    warm_start_trainable : {"answer_rows", "all"}, default "answer_rows"
        What the warm start trains (:func:`bioreason.lm.warm_start`'s ``trainable``).
    open_answer : bool, default False
        Warm-start on prompts that end with ``<answer>`` (as RL reads them with
        ``LMRLConfig.open_answer``).
    train_split : str or None, default "train"
        The split whose prompts the warm start reads (None: every prompt).
    progress : bool, default True
        False turns transformers' progress bars off (loading now, saving later).
    report : dict, optional
        Filled with ``prompt_spread_before`` and ``prompt_spread_after`` (with a warm
        start): :func:`bioreason.lm.answer_position_spread` over up to 256 train prompts
        before and after it.

    Returns
    -------
    bioreason.lm.Predictor
    """
    from bioreason.lm import answer_position_spread, load_predictor, warm_start

    if not progress:
        _quiet_transformers()
    predictor = load_predictor(
        model, device=device, texts=task["prompt"].astype(str), grid=grid, seed=seed
    )
    if warm_start_steps:
        rows = (
            task["split"].astype(str) == train_split
            if train_split is not None and "split" in task
            else np.ones(len(task), bool)
        )
        prompts = [
            predictor.format_prompt(prompt, open_answer=open_answer)
            for prompt in task.loc[rows, "prompt"].astype(str)
        ]

        def spread() -> float:
            return answer_position_spread(predictor.model, predictor.tokenizer, prompts[:256])

        if report is not None:
            report["prompt_spread_before"] = spread()
        warm_start(
            predictor,
            None,
            prompts,
            grid=grid,
            steps=warm_start_steps,
            lr=warm_start_lr,
            seed=seed,
            trainable=warm_start_trainable,
        )
        if report is not None:
            report["prompt_spread_after"] = spread()
    return predictor


# ---------------------------------------------------------------- scores
def _published(predictions: Any, task: Any) -> np.ndarray:
    if "reference_probability" not in task:
        return np.full(len(predictions), np.nan)
    lookup = task.set_index(task["question_id"].astype(str))["reference_probability"]
    return predictions["question_id"].astype(str).map(lookup).to_numpy(dtype=float)


def score_predictions(predictions: Any, task: Any, *, n_boot: int, seed: int) -> dict[str, float]:
    """Every calibration metric of one run's held-out predictions, with bootstrap bounds.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :data:`bioreason.run_layout.PREDICTION_COLUMNS`, one row per held-out question;
        the probability judged is :func:`bioreason.run_layout.judged_probability`'s.
    task : pandas.DataFrame
        The task table (its ``reference_probability``, when finite, is scored as the
        reference ``published``).
    n_boot, seed : int
        Bootstrap replicates over questions (0: no bounds) and their seed.

    Returns
    -------
    dict of str to float
        :func:`bioreason.calibration.summarize` against the outcomes, p* (no suffix),
        p_true (``_p_true``) and the published probability (``_published``) where known
        for every scored question, the question-level reference metrics included
        (``overconfidence_per_question``, ``correlation_to_reference``,
        ``rank_correlation_to_reference``, ``auroc_to_reference``, each with its
        suffix); ``prediction_sd`` (sd of q across the scored questions: near 0 when the
        policy gives one answer to every question); ``n_scored``.

    Raises
    ------
    ValueError
        No question has both a prediction and a 0/1 outcome.
    """
    from bioreason.calibration import prediction_sd, summarize

    q = judged_probability(predictions)[0]
    outcome = predictions["outcome"].to_numpy(dtype=float)
    keep = np.isfinite(q) & np.isin(outcome, (0.0, 1.0))
    if not keep.any():
        raise ValueError("no test question has both a prediction and a 0/1 outcome")
    references = {
        "p_star": predictions["p_star"].to_numpy(dtype=float),
        "p_true": predictions["p_true"].to_numpy(dtype=float),
        "published": _published(predictions, task),
    }
    known = {k: v[keep] for k, v in references.items() if np.isfinite(v[keep]).all()}
    result = summarize(
        outcome[keep],
        q[keep],
        p_star=known.pop("p_star", None),
        references=known or None,
        n_boot=n_boot,
        seed=seed,
    )
    result["prediction_sd"] = prediction_sd(q[keep])
    result["n_scored"] = int(keep.sum())
    return result


# ---------------------------------------------------------------- the job
def _settings(config: FinetuneConfig | dict[str, Any]) -> FinetuneConfig:
    if isinstance(config, FinetuneConfig):
        return config
    if isinstance(config, dict):
        return FinetuneConfig.from_dict(config)
    raise TypeError(
        f"config must be a FinetuneConfig (or a mapping of its fields), got {type(config).__name__}"
    )


def _record(config: FinetuneConfig, task_path: Path) -> tuple[FinetuneConfig, dict[str, Path]]:
    """The manifest's config (what determines the results: ``config`` with ``threads``,
    which changes only the speed, at its default) and the input paths: the task and, for a
    model folder, the folder (by its hash, so that moving it changes nothing). The config
    stays a dataclass, so a setting added to bioreason since a job finished matches that
    job at its default (:func:`bioreason.stage.config_differences`)."""
    record = dataclasses.replace(config, threads=type(config)().threads)
    inputs = {"task": task_path}
    folder = Path(config.model).expanduser()
    if folder.is_dir():
        record = dataclasses.replace(record, model="(a folder: its hash is the input 'model')")
        inputs["model"] = folder
    return record, inputs


def completed_finetune(
    task_path: str | Path, out: str | Path, config: FinetuneConfig | dict[str, Any]
) -> dict[str, Any] | None:
    """The ``metrics.json`` of a job that is finished and up to date in ``out`` with
    these settings and inputs, else None (nothing is written).

    Returns
    -------
    dict or None
    """
    from bioreason.stage import completed_stage

    config = _settings(config)
    task_path = Path(task_path)
    if not task_path.exists():
        return None
    record, inputs = _record(config, task_path)
    done = completed_stage(out, record, inputs, seed=config.rl.seed, result=METRICS_FILE)
    if done is None:
        return None
    return {key: math.nan if value is None else value for key, value in done.result.items()}


def run_finetune(
    task_path: str | Path,
    out: str | Path,
    config: FinetuneConfig | dict[str, Any],
    *,
    force: bool = False,
    progress: bool | None = True,
    log: Callable[[str], Any] | None = print,
    callbacks: Any = None,
) -> dict[str, Any]:
    """Fine-tune an LM on a task table and score it: one job, written into ``out``.

    Parameters
    ----------
    task_path : str or Path
        The task table (:func:`bioreason.data.tasks.save_task`).
    out : str or Path
        The job's folder (created; a folder of a finished job with these settings is
        left as it is, one of an interrupted run resumes from its checkpoint).
    config : FinetuneConfig or dict
        The settings (a mapping is read with :meth:`FinetuneConfig.from_dict`).
    force : bool, default False
        Replace files in ``out`` that this job did not write (or that changed since), or
        a finished job of other settings.
    progress : bool or None, default True
        Show a progress bar (and transformers' own bars); None: when standard error is a
        terminal.
    log : callable or None, default print
        Receives ``"[<out>] up to date: <out>"`` when the job is skipped, and
        ``"[<out>] continuing the finished run from step K to N"`` when a finished job
        is continued.
    callbacks : callback or sequence of callbacks, optional
        Given to the trainer (:mod:`bioreason.rl.lm.callbacks`); one that stops training
        early makes a job with ``stopped_early: true`` in its metrics, at the step it
        stopped (rerun it with more ``rl.steps`` to continue it).

    Notes
    -----
    A finished job asked for more ``rl.steps`` (nothing else changed) is continued from
    its last checkpoint rather than refused: the same weights as a run of that length from
    the start, unless a schedule follows the run's length (``lr_end``, ``kl_coef_end``,
    ``entropy_coef_end`` with a non-constant schedule: refused, naming it).

    Returns
    -------
    dict
        The job's ``metrics.json`` (its nulls, NaN scores, read as NaN): ``method``,
        ``critic`` (PPO's value function, ``"separate"`` or ``"shared"``; ``"none"``
        for estimators without one), ``seed``, ``steps``, ``n_test`` (held-out
        questions scored at the last step), ``q_source``, ``invalid_rate``, the drift
        at the start (``drift_grpo_predicted_start``, ``drift_method_predicted_start``,
        ``drift_measured_start``) and the end (``drift_grpo_predicted``,
        ``drift_method_predicted``, ``drift_measured``), ``reward_mean_last``, the
        scores of :func:`score_predictions`, and :data:`TIMING_FIELDS`.

    Raises
    ------
    FileNotFoundError
        The task table does not exist.
    FileExistsError
        ``out`` holds files this job did not write, or a finished job of other settings
        or inputs (naming what differs), and ``force`` is false (nothing is changed
        then).
    ValueError
        The task table is unusable (:func:`bioreason.rl.lm.task_checks.check_task_table`,
        naming the file, the column and the questions), has no rows of
        ``rl.train_split`` or of ``rl.eval_split`` (naming the field and its splits), or a
        setting does not fit the model or the task.
    """
    import torch

    from bioreason._device import resolve_device
    from bioreason.rl.lm.distributed import current_process_group
    from bioreason.stage import run_stage

    config = _settings(config)
    task_path, out = Path(task_path), Path(out)
    if not task_path.exists():
        raise FileNotFoundError(f"task table {task_path} does not exist")
    record, inputs = _record(config, task_path)
    processes = current_process_group(resolve_device(config.rl.device))
    _read_task(task_path, config.rl)  # a bad table stops the job before its folder changes
    if progress is None:
        import sys

        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if processes.is_main and not force:
        _continue_finished(out, record, inputs, config, log)

    def stage(compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        result = run_stage(
            out,
            record,
            inputs,
            compute,
            seed=config.rl.seed,
            force=force,
            outputs=JOB_OUTPUTS,
            log=log,
            result=METRICS_FILE,
            keep_finished=True,  # a finished run the user has is replaced only with force
        ).result
        return {key: math.nan if value is None else value for key, value in result.items()}

    def train(folder: Path) -> dict[str, Any]:
        return _train(task_path, folder, config, processes, progress, callbacks)

    if not processes.distributed:
        return stage(train)

    # the main process checks and prepares the folder; the others learn what it found
    def tell(message: tuple[str, Any] | None) -> tuple[str, Any]:
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    if not processes.is_main:
        status, value = tell(None)
        if status == "run":
            _train(task_path, out, config, processes, progress, callbacks)
            status, value = tell(None)
        if status == "error":
            raise RuntimeError(f"the main process stopped: {value}")
        return value

    announced = False

    def announce_then_train(folder: Path) -> dict[str, Any]:
        nonlocal announced
        tell(("run", None))
        announced = True
        return train(folder)

    try:
        metrics = stage(announce_then_train)
    except BaseException as err:
        if not announced:  # else the others are training: the launcher stops them
            tell(("error", f"{type(err).__name__}: {err}"))
        raise
    tell(("done", metrics))
    return metrics


def _quiet_transformers() -> None:
    """No tqdm bars from transformers' save/load (the caller shows its own progress)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _check_splits(task: Any, config: LMRLConfig, task_path: Path) -> None:
    for field, split in (("train_split", config.train_split), ("eval_split", config.eval_split)):
        if split is None:
            if field == "eval_split":
                raise ValueError(
                    "rl.eval_split is None, but a fine-tuning job scores a held-out split; "
                    "name it (e.g. 'test')"
                )
            continue
        if "split" not in task or not (task["split"].astype(str) == split).any():
            found = sorted(set(task["split"].astype(str))) if "split" in task else []
            raise ValueError(
                f"task table {task_path} has no rows with split == {split!r} (rl.{field}); "
                f"its splits are {found}"
            )


def _read_task(task_path: Path, config: LMRLConfig) -> Any:
    """The task table at ``task_path``, checked for fine-tuning: its values
    (:func:`~bioreason.rl.lm.task_checks.check_task_table`) and its splits."""
    import pandas as pd

    from bioreason.data.tasks import load_task
    from bioreason.rl.lm.task_checks import check_task_table

    where = f"task table {task_path}"
    try:
        raw = pd.read_parquet(task_path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{task_path} is not a readable parquet task table ({err})") from None
    check_task_table(raw, where)  # before load_task's summary reads the values
    task = load_task(task_path)
    _check_splits(task, config, task_path)
    return task


def _continue_finished(
    out: Path,
    record: FinetuneConfig,
    inputs: dict[str, Path],
    config: FinetuneConfig,
    log: Callable[[str], Any] | None,
) -> None:
    """When ``out`` holds a finished job that differs from this one only by fewer
    ``rl.steps``, reopen it so that the job continues from its last checkpoint; when it
    differs otherwise, refuse naming the differences."""
    import json

    from bioreason.rl.lm.config import length_dependent_settings
    from bioreason.stage import finished_differences, reopen_stage

    differences = finished_differences(out, record, inputs, seed=config.rl.seed)
    if not differences:  # no finished run here (or this very one: up to date)
        return
    steps = config.rl.steps
    try:
        reached = int(json.loads((out / METRICS_FILE).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        reached = None
    only_steps = all(d.startswith("rl.steps:") for d in differences)
    hint = "choose another output folder or pass --force (force=True) to replace it"
    if only_steps and reached is not None and steps > reached:
        fixed = length_dependent_settings(config.rl)
        if fixed:
            raise FileExistsError(
                f"{out} holds a finished run of {reached} steps; {', '.join(fixed)} follows "
                f"the run's length, so it cannot be continued to {steps} steps (its "
                f"schedule would differ from a run of {steps} steps); {hint}"
            )
        if log is not None:
            log(f"[{out.name}] continuing the finished run from step {reached} to {steps}: {out}")
        reopen_stage(
            out, record, inputs, seed=config.rl.seed, outputs=JOB_OUTPUTS, result=METRICS_FILE
        )
        return
    raise FileExistsError(
        f"{out} holds a finished run with other settings ({'; '.join(differences)}); only "
        f"a run asked for more steps than it ran is continued; {hint}"
    )


def _train(
    task_path: Path,
    out: Path,
    config: FinetuneConfig,
    processes: Any,
    progress: bool,
    callbacks: Any = None,
) -> dict[str, Any]:
    """Warm-start, train, evaluate and (main process) write the job's files; the
    metrics (an empty dict on the other processes)."""
    import pandas as pd
    import torch

    from bioreason._io import json_safe
    from bioreason.rl.lm.evaluation import save_predictions
    from bioreason.rl.lm.trainer import LMTrainer
    from bioreason.rl.loop import save_checkpoint, write_csv_log

    rl = config.rl
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    task = _read_task(task_path, rl)
    warm_report: dict[str, float] = {}
    predictor = prepare_predictor(
        config.model,
        task,
        device=rl.device,
        seed=rl.seed,
        grid=rl.grid,
        warm_start_steps=config.warm_steps,
        warm_start_lr=config.warm_start_lr,
        warm_start_trainable=config.warm_start_trainable,
        open_answer=rl.open_answer,
        train_split=rl.train_split,
        progress=progress,
        report=warm_report,
    )
    trainer = LMTrainer.from_predictor(predictor, task, rl, callbacks=callbacks)
    main = processes.is_main
    start_row = trainer.evaluate() if main else {}  # the drift before RL
    predictions_path = out / PREDICTIONS_FILE
    if main:  # the training loop writes TensorBoard events here when it can
        (out / TENSORBOARD_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timing = trainer.train(
        checkpoint_path=out / CHECKPOINT_FILE,
        log_path=out / LOG_FILE,
        eval_log_path=out / EVAL_LOG_FILE,
        predictions_path=predictions_path,
        progress=progress,
        description=rl.method,
    )
    if not main:
        return {}
    final = trainer.eval_rows_log[-1]
    if final["step"] != trainer.step:  # not evaluated at the last step yet
        final = trainer.evaluate()
        frame = trainer.predict()
        if predictions_path.exists():
            earlier = pd.read_parquet(predictions_path)
            frame = pd.concat([earlier[earlier["step"] < trainer.step], frame], ignore_index=True)
        save_predictions(frame, predictions_path)
        write_csv_log(out / EVAL_LOG_FILE, trainer.eval_rows_log)
    seconds = time.perf_counter() - start
    log = pd.read_csv(out / LOG_FILE)
    # the checkpoint of the last step (the loop keeps only earlier ones), so that a rerun
    # after a later failure resumes at the end
    save_checkpoint(trainer, out / CHECKPOINT_FILE, log.to_dict("records"))
    predictor.save(out / MODEL_DIR, overwrite=True)
    predictions = pd.read_parquet(predictions_path)
    predictions = predictions[predictions["step"] == trainer.step]
    rewards = log["reward_mean"].dropna()
    metrics: dict[str, Any] = {
        "method": rl.method,
        # PPO's value function: "separate" or "shared" (LMRLConfig.critic); "none" for
        # estimators without one
        "critic": rl.critic if trainer.critic is not None else "none",
        "seed": rl.seed,
        "steps": trainer.step,
        # a callback stopped training before rl.steps (rerun with more steps to continue)
        "stopped_early": bool(timing.get("stopped_early", False)),
        "n_test": len(predictions),
        "q_source": final["q_source"],
        "invalid_rate": final["invalid_rate"],
        "drift_grpo_predicted_start": start_row["grpo_predicted_outward"],
        "drift_method_predicted_start": start_row["method_predicted_outward"],
        "drift_measured_start": start_row["measured_outward"],
        "drift_grpo_predicted": final["grpo_predicted_outward"],
        "drift_method_predicted": final["method_predicted_outward"],
        "drift_measured": final["measured_outward"],
        # how much the state at the answer position depends on the question: before and
        # after this job's warm start (NaN without one), before RL, after it
        "prompt_spread_before_warm_start": warm_report.get("prompt_spread_before", math.nan),
        "prompt_spread_after_warm_start": warm_report.get("prompt_spread_after", math.nan),
        "prompt_spread_start": start_row.get("prompt_spread", math.nan),
        "prompt_spread": final.get("prompt_spread", math.nan),
        "reward_mean_last": float(rewards.iloc[-1]) if len(rewards) else math.nan,
        # training and the final evaluation
        "train_seconds": seconds,
        # the logged steps' step_time
        "seconds_per_step": float(log["step_time"].dropna().mean()),
        "steps_run": timing["steps_run"],
        "steps_per_second": timing["steps_per_second"],
    }
    metrics.update(score_predictions(predictions, task, n_boot=config.n_boot, seed=rl.seed))
    return json_safe(metrics)  # NaN is written as null (read back as NaN)
