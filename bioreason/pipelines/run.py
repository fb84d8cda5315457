"""``bioreason run CONFIG.yaml``: the whole chain, stage by stage, into ``runs/<name>/``.

Stages (each a folder with its artifacts, ``result.json`` and ``manifest.json``, run
through :func:`bioreason.pipelines.stages.run_stage`, so a stage whose manifest matches is
skipped and an interrupted one resumes):

``data``
    Simulate a screen (:class:`bioreason.data.ScreenConfig`), or read an ``.h5ad`` file
    or a dataset of the registry (``data/datasets.yaml``); hold out a share of the
    combinations whose parts were measured alone. ``data.h5ad``, ``split.npz``.
``vae``
    Fit a perturbation model (``sams_vae``, ``cpa_vae``, ``conditional_vae``,
    ``svae_plus``) on the training cells; held-out IWELBO, average-treatment-effect
    agreement on the held-out combinations, mask recovery and a posterior predictive
    check where the truth is known. ``model/``.
``task``
    Questions, p* (the fitted model's posterior predictive probability through
    :class:`bioreason.sim.OutcomeSimulator`), p_true on simulated screens, sampled
    outcomes and a split (:func:`bioreason.sim.build_task_from_config`); or the
    published Replogle task (``task.source: replogle``) or any task table
    (``task.source: PATH.parquet``), in which case there are no ``data`` / ``vae``
    stages. ``task.parquet``.
``warm_start``
    One warm-started LM per seed (:func:`bioreason.lm.warm_start`: the answer format
    with uniform answers). ``seed<S>/model``.
``finetune``
    Every method x seed, each a job in its own folder ``<method>_seed<S>`` (in
    ``--workers`` processes; a finished job is skipped on rerun, so an interrupted stage
    resumes job by job). Each job is also an independent ``bioreason finetune`` command
    for a cluster (``docs/pipelines.md``).
``calibration``
    Every job's held-out predictions scored against outcomes, p* and p_true, per method
    with 95 % bootstrap intervals over questions (seeds pooled), the theory's predicted
    drift beside the measured one, and the verdict on the paper's finding (GRPO
    overconfident, the others calibrated). ``predictions.parquet``, ``runs.csv``,
    ``summary.csv``, ``summary.md``.

Then ``report.html`` and ``report.md`` in the run folder (:func:`bioreason.report.write_report`)
and ``pipeline.json`` (config, commands, versions, per-stage status and seconds).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from bioreason.config import Config
from bioreason.data.simulate import ScreenConfig
from bioreason.pipelines.lm_runs import METHODS
from bioreason.pipelines.stages import Stage, run_stages
from bioreason.run_layout import INVALID_RATE_LIMIT, STAGES, judged_probability
from bioreason.stage import StageResult

__all__ = [
    "CalibrationStageConfig",
    "DataStageConfig",
    "FinetuneStageConfig",
    "LMStageConfig",
    "PipelineConfig",
    "STAGES",
    "TaskStageConfig",
    "VAEStageConfig",
    "finding",
    "load_pipeline_config",
    "pipeline_stages",
    "run_pipeline",
]

#: methods whose predictions the paper finds calibrated (the verdict compares GRPO to them)
CALIBRATED_METHODS = ("grpo_no_std", "rloo", "reinforce", "ppo", "grpo_batch_std")
#: ECE against outcomes at or below which a method counts as calibrated in the verdict
CALIBRATED_ECE = 0.1
_MODELS = ("sams_vae", "cpa_vae", "conditional_vae", "svae_plus")


@dataclass
class DataStageConfig(Config):
    """Where the cells come from and which combinations are held out.

    Attributes
    ----------
    source : {"simulate", "h5ad", "dataset"}
        ``simulate``: a synthetic screen with known ground truth (``screen``);
        ``h5ad``: the file ``path``; ``dataset``: the registry entry ``path`` names
        (``data/datasets.yaml``, e.g. ``norman19``).
    screen : ScreenConfig
        The simulated screen's settings (``source: simulate``).
    path : str or None
        The ``.h5ad`` file or the dataset's name.
    heldout_fraction : float
        Share of all combinations held out of the model's training cells, drawn among
        those whose parts were measured alone.
    val_fraction : float
        Share of the remaining cells used for validation.
    """

    source: Literal["simulate", "h5ad", "dataset"] = "simulate"
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    path: str | None = None
    heldout_fraction: float = 0.25
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.source != "simulate" and not self.path:
            raise ValueError(f"path: source {self.source!r} needs a path (file or dataset name)")
        for name in ("heldout_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass
class VAEStageConfig(Config):
    """The perturbation model and its training.

    Attributes
    ----------
    model : {"sams_vae", "cpa_vae", "conditional_vae", "svae_plus"}
        Registry name of :data:`bioreason.models.MODELS`.
    options : dict
        Fields of :class:`bioreason.models.VAEConfig` (``n_latent``, ``n_hidden``, ...).
    steps : int
        SVI steps.
    batch_size : int
        Cells per minibatch.
    lr : float
        Adam learning rate.
    n_particles : int
        ELBO particles.
    iwelbo_particles : int
        Importance samples of the held-out IWELBO.
    ate_cells : int
        Cells per condition drawn for the model's average treatment effects.
    """

    model: Literal["sams_vae", "cpa_vae", "conditional_vae", "svae_plus"] = "sams_vae"
    options: dict[str, Any] = field(default_factory=lambda: {"n_latent": 10, "n_hidden": 128})
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    n_particles: int = 5
    iwelbo_particles: int = 20
    ate_cells: int = 1000

    def __post_init__(self) -> None:
        from bioreason.models import VAEConfig

        VAEConfig.from_dict(dict(self.options), where="vae.options")
        for name in ("steps", "batch_size", "n_particles", "iwelbo_particles", "ate_cells"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TaskStageConfig(Config):
    """The questions and their p*.

    Attributes
    ----------
    source : str
        ``simulator`` (questions about the ``data`` stage's conditions, p* from the
        ``vae`` stage's model), ``replogle`` (the published Replogle K562 task in
        ``replogle_folder``) or the path of a task table (``.parquet``).
    options : dict
        Fields of :class:`bioreason.sim.TaskConfig` for ``source: simulator``
        (``outcome``, ``outcome_options``, ``n_programs``, ``test_fraction``,
        ``target_se``, ...; ``model`` and ``adata`` are the earlier stages').
    replogle_folder : str
        Folder of ``train.pq`` / ``val.pq`` / ``test.pq`` (``source: replogle``).
    """

    source: str = "simulator"
    options: dict[str, Any] = field(
        default_factory=lambda: {
            "n_programs": 10,
            "outcome_options": {"threshold": None, "n_cells": 100},
            "split": "random",
            "test_fraction": 0.25,
            "val_fraction": 0.0,
        }
    )
    replogle_folder: str = "../shared/data/replogle_k562_cnmf_task"

    def __post_init__(self) -> None:
        if self.source not in ("simulator", "replogle") and not self.source.endswith(".parquet"):
            raise ValueError(
                f"source must be simulator, replogle or a .parquet task table, got {self.source!r}"
            )
        if self.source == "simulator":
            from bioreason.sim.task_config import TaskConfig

            unknown = {"model", "adata"} & set(self.options)
            if unknown:
                raise ValueError(
                    f"options: {sorted(unknown)} are set by the pipeline (the vae and data "
                    "stages); remove them"
                )
            TaskConfig.from_dict(
                {**self.options, "model": "(vae stage)", "adata": "(data stage)"},
                where="task.options",
            )

    @property
    def from_simulator(self) -> bool:
        """True when the task is built from the pipeline's own model."""
        return self.source == "simulator"


@dataclass
class LMStageConfig(Config):
    """The predictor and its warm start.

    Attributes
    ----------
    model : str
        ``tiny`` (the default small LM, a word-level tokenizer over the task's prompts)
        or a Hugging Face model folder / hub name.
    warm_start_steps : int
        Supervised steps teaching the answer format with uniform answers (0: none).
    warm_start_lr : float
        Their learning rate.
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    """

    model: str = "tiny"
    warm_start_steps: int = 30
    warm_start_lr: float = 1e-3
    device: str = "cpu"


@dataclass
class FinetuneStageConfig(Config):
    """The RL methods, seeds and training settings of every job.

    Attributes
    ----------
    methods : list of str
        Advantage estimators of :data:`bioreason.rl.ADVANTAGES` with options
        (``grpo``, ``rloo``, ``seed_grpo:base=grpo``, ``h_target:log``, ...).
    seeds : list of int
        One warm start and one job per method per seed.
    steps : int
        RL steps per job.
    lr : float
        AdamW learning rate.
    group_size : int
        Completions per question.
    questions_per_step : int
        Questions per step.
    kl_coef : float
        Weight of the KL penalty to the warm start (0: none).
    entropy_coef : float
        Weight of the entropy bonus (0: none).
    eval_samples : int
        Sampled answers per held-out question for ``q_sampled``.
    outcomes : {"live", "table"}
        ``live``: each time a question is drawn, a new outcome ~ Bernoulli(p*) (a new
        simulated experiment, as in the paper); ``table``: the task's one recorded
        outcome every time (for tasks without p*, e.g. Replogle).
    threads : int
        Torch threads per job.
    torch_compile : bool
        Compile the LM's decoder in each job (:class:`bioreason.rl.LMRLConfig`'s
        ``torch_compile``): the same weights, 13-17 % less time per step on a 2-core CPU,
        after about a minute of compilation per job (seconds once inductor's disk cache
        holds the kernels). Like ``threads``, not part of the stage's manifest.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 1000
    lr: float = 3e-4
    group_size: int = 8
    questions_per_step: int = 8
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    eval_samples: int = 4
    outcomes: Literal["live", "table"] = "live"
    threads: int = 1
    torch_compile: bool = False

    def __post_init__(self) -> None:
        from bioreason.rl.advantages import get_advantage

        if not self.methods:
            raise ValueError("methods is empty; list at least one estimator")
        for method in self.methods:
            try:
                get_advantage(method)
            except (KeyError, ValueError, TypeError) as err:
                raise ValueError(f"methods: {err}") from None
        for name, values in (("methods", self.methods), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists an entry twice: {values}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {self.seeds}")
        for name in ("steps", "group_size", "questions_per_step", "eval_samples", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CalibrationStageConfig(Config):
    """How the held-out predictions are scored.

    Attributes
    ----------
    n_boot : int
        Bootstrap resamples of the test questions for the intervals (0: none).
    seed : int
        Bootstrap seed.
    """

    n_boot: int = 1000
    seed: int = 0


@dataclass
class PipelineConfig(Config):
    """One pipeline run: ``bioreason run CONFIG.yaml`` reads this from YAML.

    Attributes
    ----------
    name : str
        The run's name; its folder is ``runs/<name>`` unless ``--out`` says otherwise.
    kind : {"lm", "tabular"}
        ``lm``: the stages above. ``tabular``: one stage, ``tabular``, the synthetic
        calibration experiment with a tabular policy (``tabular`` settings,
        :class:`bioreason.pipelines.synthetic_calibration.SyntheticCalibrationConfig`);
        the other sections are then unused.
    seed : int
        Seeds the screen, the split, the model and the task.
    data : DataStageConfig
    vae : VAEStageConfig
    task : TaskStageConfig
    lm : LMStageConfig
    finetune : FinetuneStageConfig
    calibration : CalibrationStageConfig
    tabular : dict
        Fields of ``SyntheticCalibrationConfig`` (``kind: tabular``).
    """

    name: str = "pipeline"
    kind: Literal["lm", "tabular"] = "lm"
    seed: int = 0
    data: DataStageConfig = field(default_factory=DataStageConfig)
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)
    task: TaskStageConfig = field(default_factory=TaskStageConfig)
    lm: LMStageConfig = field(default_factory=LMStageConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    calibration: CalibrationStageConfig = field(default_factory=CalibrationStageConfig)
    tabular: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.kind == "tabular":
            self.tabular_config()  # names a bad field now, not after the first stages

    def tabular_config(self):
        """The ``tabular`` section as a validated ``SyntheticCalibrationConfig``.

        Returns
        -------
        bioreason.pipelines.synthetic_calibration.SyntheticCalibrationConfig
        """
        from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig

        config = SyntheticCalibrationConfig.from_dict(dict(self.tabular), where="tabular")
        config.validate()
        return config


# ----------------------------------------------------------------------------- stages


def _say(message: str) -> None:
    print(message, flush=True)


def _data_stage(config: PipelineConfig) -> Stage:
    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        import anndata as ad

        from bioreason._io import atomic_write
        from bioreason.data import (
            PerturbationData,
            composable_combinations,
            simulate_screen,
            split_heldout_combinations,
        )

        start = time.perf_counter()
        data_config = config.data
        if data_config.source == "simulate":
            screen = dataclasses.replace(data_config.screen, seed=config.seed)
            adata = simulate_screen(screen)
            source = "simulated"
        elif data_config.source == "dataset":
            from bioreason.data import load_dataset

            adata = load_dataset(str(data_config.path))
            source = f"dataset {data_config.path}"
        else:
            adata = ad.read_h5ad(data_config.path)
            source = str(data_config.path)
        data = PerturbationData.from_anndata(adata)
        table = data.condition_table()
        heldout: list[str] = []
        if data_config.heldout_fraction > 0 and (table["n_perturbations"] >= 2).any():
            heldout = composable_combinations(
                data, fraction=data_config.heldout_fraction, seed=config.seed
            )
        if heldout:
            split = split_heldout_combinations(
                data, heldout=heldout, val_fraction=data_config.val_fraction, seed=config.seed
            )
        else:  # nothing to hold out: every cell trains or validates
            from bioreason.data import split_random

            split = split_random(data, val_fraction=data_config.val_fraction, seed=config.seed)
        atomic_write(stage_dir / "data.h5ad", lambda tmp: adata.write_h5ad(tmp))

        def write_split(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, train=split.train, val=split.val, test=split.test)

        atomic_write(stage_dir / "split.npz", write_split)
        result = {
            "source": source,
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "n_conditions": int(len(table)),
            "n_perturbations": int(len(data.perturbation_names)),
            "n_combinations": int((table["n_perturbations"] >= 2).sum()),
            "heldout_conditions": list(split.heldout_conditions),
            "n_train": int(split.train.size),
            "n_val": int(split.val.size),
            "n_test": int(split.test.size),
            "ground_truth": "ground_truth" in adata.uns,
            "seconds": time.perf_counter() - start,
        }
        _say(
            f"[data] {result['n_cells']} cells x {result['n_genes']} genes, "
            f"{result['n_conditions']} conditions; held out {len(heldout)} combinations"
        )
        return result

    return Stage(
        "data",
        compute,
        config={"data": config.data, "seed": config.seed},
        seed=config.seed,
        outputs=["data.h5ad", "split.npz"],
    )


def _vae_stage(config: PipelineConfig) -> Stage:
    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        import anndata as ad

        from bioreason.data import PerturbationData, ScreenGroundTruth
        from bioreason.data.expression import ate_agreement, average_treatment_effect
        from bioreason.models import MODELS
        from bioreason.models.evaluation import mask_recovery, posterior_predictive_check

        vae = config.vae
        data_dir = upstream["data"].path
        adata = ad.read_h5ad(data_dir / "data.h5ad")
        split = np.load(data_dir / "split.npz")
        train, val, test = split["train"], split["val"], split["test"]
        data = PerturbationData.from_anndata(adata)
        cls = MODELS.get(vae.model)
        train_adata = adata[np.concatenate([train, val])].copy()
        cls.setup_anndata(train_adata)
        model = cls(
            train_adata,
            perturbation_names=data.perturbation_names,
            seed=config.seed,
            **vae.options,
        )
        start = time.perf_counter()
        _say(f"[vae] fitting {vae.model}: {vae.steps} steps on {train.size} cells")
        model.train(
            max_steps=vae.steps,
            batch_size=vae.batch_size,
            lr=vae.lr,
            n_particles=vae.n_particles,
            seed=config.seed,
            device="cpu",
            train_indices=np.arange(train.size),
            validation_indices=np.arange(train.size, train_adata.n_obs) if val.size else None,
            early_stopping=False,
            progress=False,
            checkpoint_dir=stage_dir / "checkpoint",
            resume=(stage_dir / "checkpoint").is_dir(),
        )
        seconds = time.perf_counter() - start
        model.save(stage_dir / "model", overwrite=True)
        history = model.history
        curve = history[["step", "train_loss"]].dropna()
        every = max(1, len(curve) // 100)
        result: dict[str, Any] = {
            "model": vae.model,
            "steps": int(history["step"].iloc[-1]),
            "train_seconds": seconds,
            "loss_curve": curve.iloc[::every].to_numpy().tolist(),
        }
        heldout = list(upstream["data"].result["heldout_conditions"])
        if val.size:
            result["iwelbo_validation"] = float(
                model.iwelbo(train_adata[train.size :].copy(), n_particles=vae.iwelbo_particles)
            )
        if test.size and model.composes:
            result["iwelbo_heldout"] = float(
                model.iwelbo(adata[test].copy(), n_particles=vae.iwelbo_particles)
            )
            control = np.flatnonzero(data.is_control)
            data_ate = average_treatment_effect(
                adata[np.concatenate([control, test])].copy(),
                control=model.control_label,
                conditions=heldout,
            )
            model_ate = model.average_treatment_effect(heldout, n_cells=vae.ate_cells)
            agreement = ate_agreement(data_ate, model_ate, top_k=20)
            result["ate_pearson_heldout"] = float(agreement["pearson_all"].mean())
            result["ate_pearson_heldout_top20"] = float(agreement["pearson_top"].mean())
        seen = [c for c in data.condition_table().index if c not in heldout and c != "control"]
        seen = [c for c in seen if c != model.control_label][:20]
        if seen:
            cells = np.concatenate([train, val])
            data_ate = average_treatment_effect(
                adata[cells].copy(), control=model.control_label, conditions=seen
            )
            model_ate = model.average_treatment_effect(seen, n_cells=vae.ate_cells)
            agreement = ate_agreement(data_ate, model_ate, top_k=20)
            result["ate_pearson_seen"] = float(agreement["pearson_all"].mean())
        effects = model.get_perturbation_effects()
        if "mask_probability" in effects and "ground_truth" in adata.uns:
            truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
            frame, effect = effects["mask_probability"], effects["effect"]
            rows = [truth.perturbation_names.index(p) for p in frame.index]
            recovery = mask_recovery(
                truth.masks[rows], truth.effects[rows], frame.to_numpy(), effect.to_numpy()
            )
            result["mask_auroc"] = float(recovery["auroc"])
        ppc = posterior_predictive_check(model, n_global_draws=20, seed=config.seed)
        result["ppc"] = {
            "mean_log_ratio_median": float(
                np.median(
                    np.abs(
                        np.log1p(ppc["replicated_mean"].to_numpy())
                        - np.log1p(ppc["observed_mean"].to_numpy())
                    )
                )
            ),
            "mean_corr": float(np.corrcoef(ppc["observed_mean"], ppc["replicated_mean"])[0, 1]),
            "variance_corr": float(
                np.corrcoef(
                    np.log1p(ppc["observed_variance"]), np.log1p(ppc["replicated_variance"])
                )[0, 1]
            ),
        }
        _say(
            f"[vae] {seconds:.0f} s; held-out IWELBO "
            f"{result.get('iwelbo_heldout', math.nan):.1f} nats/cell, ATE Pearson on held-out "
            f"combinations {result.get('ate_pearson_heldout', math.nan):.2f}"
        )
        return result

    return Stage(
        "vae",
        compute,
        config={"vae": config.vae},
        inputs=lambda up: {"data": up["data"].path / "data.h5ad"},
        seed=config.seed,
        outputs=["model"],
    )


def _task_stage(config: PipelineConfig, out: Path) -> Stage:
    task_config = config.task

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.data.tasks import load_replogle_task, load_task, save_task, task_summary

        start = time.perf_counter()
        path = stage_dir / "task.parquet"
        if task_config.source == "simulator":
            from bioreason.sim.task_config import TaskConfig, build_task_from_config

            data_dir = upstream["data"].path
            options = {
                "seed": config.seed,
                "ground_truth": bool(upstream["data"].result.get("ground_truth")),
                **task_config.options,
                "model": str(upstream["vae"].path / "model"),
                "adata": str(data_dir / "data.h5ad"),
            }
            _say("[task] questions and p* from the fitted model (outcome simulator)")
            table = build_task_from_config(TaskConfig.from_dict(options, where="task.options"))
        elif task_config.source == "replogle":
            table = load_replogle_task(task_config.replogle_folder)
        else:
            table = load_task(task_config.source)
        save_task(table, path, overwrite=True)
        summary = task_summary(table)
        result: dict[str, Any] = {
            "source": task_config.source,
            "n_questions": int(len(table)),
            "splits": {str(k): int(v) for k, v in table["split"].value_counts().items()},
            "outcome_rate": float(pd.to_numeric(table["outcome"], errors="coerce").mean()),
            "summary": summary,
            "seconds": time.perf_counter() - start,
        }
        p_star = table["p_star"].to_numpy(dtype=float)
        p_true = table["p_true"].to_numpy(dtype=float)
        both = np.isfinite(p_star) & np.isfinite(p_true)
        if both.sum() >= 2:
            result["mae_p_star_p_true"] = float(np.abs(p_star[both] - p_true[both]).mean())
            result["corr_p_star_p_true"] = float(np.corrcoef(p_star[both], p_true[both])[0, 1])
        if np.isfinite(p_star).any():
            result["mean_p_star"] = float(np.nanmean(p_star))
            result["mean_spread"] = float(np.nanmean(table["p_star_spread"].to_numpy(dtype=float)))
        _say(
            f"[task] {len(table)} questions ({result['splits']}), outcome rate "
            f"{result['outcome_rate']:.2f}"
            + (
                f"; |p* - p_true| {result['mae_p_star_p_true']:.3f}"
                if "mae_p_star_p_true" in result
                else ""
            )
        )
        return result

    def inputs(up: Mapping[str, StageResult]) -> dict[str, Path]:
        if task_config.source == "simulator":
            return {"model": up["vae"].path / "model", "data": up["data"].path / "data.h5ad"}
        if task_config.source == "replogle":
            return {"replogle": Path(task_config.replogle_folder)}
        return {"task": Path(task_config.source)}

    return Stage(
        "task",
        compute,
        config={"task": task_config, "seed": config.seed},
        inputs=inputs,
        seed=config.seed,
        outputs=["task.parquet", "task.parquet.summary.json"],
    )


def _warm_stage(config: PipelineConfig, force: bool) -> Stage:
    lm = config.lm

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.lm_runs import warm_start_folder

        task_path = upstream["task"].path / "task.parquet"
        start = time.perf_counter()
        folders = {}
        for seed in config.finetune.seeds:
            _say(f"[warm_start] seed {seed}: {lm.warm_start_steps} steps of uniform answers")
            folders[str(seed)] = str(
                warm_start_folder(
                    task_path,
                    stage_dir / f"seed{seed}",
                    seed,
                    model=lm.model,
                    steps=lm.warm_start_steps,
                    lr=lm.warm_start_lr,
                    device=lm.device,
                    force=force,
                ).relative_to(stage_dir)
            )
        return {"models": folders, "seconds": time.perf_counter() - start, **dataclasses.asdict(lm)}

    return Stage(
        "warm_start",
        compute,
        config={"lm": lm, "seeds": config.finetune.seeds},
        inputs=lambda up: {"task": up["task"].path / "task.parquet"},
        outputs=[f"seed{seed}" for seed in config.finetune.seeds],
    )


def _jobs(config: PipelineConfig, stage_dir: Path, task_path: Path, warm_dir: Path) -> list[dict]:
    from bioreason.run_layout import method_slug

    tune = config.finetune
    jobs = []
    for seed in tune.seeds:
        for method in tune.methods:
            jobs.append(
                {
                    "method": method,
                    "seed": seed,
                    "steps": tune.steps,
                    "group_size": tune.group_size,
                    "questions_per_step": tune.questions_per_step,
                    "lr": tune.lr,
                    "kl_coef": tune.kl_coef,
                    "entropy_coef": tune.entropy_coef,
                    "eval_samples": tune.eval_samples,
                    "outcomes": tune.outcomes,
                    "n_boot": 0,
                    "device": config.lm.device,
                    "threads": tune.threads,
                    "torch_compile": tune.torch_compile,
                    "progress": False,
                    "task": str(task_path),
                    "warm": str(warm_dir / f"seed{seed}" / "model"),
                    "folder": str(stage_dir / f"{method_slug(method)}_seed{seed}"),
                }
            )
    return jobs


def _finetune_stage(config: PipelineConfig, workers: int, force: bool) -> Stage:
    tune = config.finetune

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.lm_runs import prepare_job_folder, read_job_row, run_jobs

        jobs = _jobs(
            config, stage_dir, upstream["task"].path / "task.parquet", upstream["warm_start"].path
        )
        todo = []
        for job in jobs:
            if prepare_job_folder(Path(job["folder"]), job, force):
                _say(f"[finetune] up to date: {job['method']} seed {job['seed']}")
            else:
                todo.append(job)
        start = time.perf_counter()
        done = [len(jobs) - len(todo)]

        def finished(row: dict[str, Any]) -> None:
            done[0] += 1
            _say(
                f"[finetune] {done[0]}/{len(jobs)} {row['method']} seed {row['seed']}: "
                f"ECE {row['ece']:.3f}, |q - p*| {row.get('mae_to_reference', math.nan):.3f}, "
                f"{row['seconds_per_step']:.3f} s/step"
            )

        if todo:
            _say(
                f"[finetune] {len(todo)} jobs ({len(tune.methods)} methods x "
                f"{len(tune.seeds)} seeds, {tune.steps} steps each) in {workers} worker(s)"
            )
        run_jobs(todo, workers=workers, finished=finished)
        rows = [read_job_row(Path(job["folder"]) / "metrics.json") for job in jobs]
        return {
            "jobs": [
                {"method": r["method"], "seed": r["seed"], "folder": Path(j["folder"]).name}
                for r, j in zip(rows, jobs)
            ],
            "seconds": time.perf_counter() - start,
            "workers": workers,
        }

    return Stage(
        "finetune",
        compute,
        config={"finetune": _speed_free(tune), "device": config.lm.device},
        inputs=lambda up: {
            "task": up["task"].path / "task.parquet",
            "warm_start": up["warm_start"].path / "result.json",
        },
    )


def _speed_free(tune: FinetuneStageConfig) -> dict[str, Any]:
    """The finetune settings that change results (the stage's manifest config): threads
    and compilation change only the speed."""
    values = dataclasses.asdict(dataclasses.replace(tune, threads=1))
    values.pop("torch_compile")
    return values


def finding(summary: pd.DataFrame) -> dict[str, Any]:
    """The verdict on the paper's finding: GRPO overconfident, the others calibrated.

    Shown when GRPO's ECE against outcomes is above :data:`CALIBRATED_ECE` with the
    lower end of its 95 % interval above every calibrated method's ECE, and every
    method of :data:`CALIBRATED_METHODS` in the run has ECE at most
    :data:`CALIBRATED_ECE`, and none of these methods stops answering (held-out
    invalid-answer rate above :data:`INVALID_RATE_LIMIT`, when the table has an
    ``invalid_rate`` column). The text names every method of the table that stops
    answering, compared or not.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`bioreason.pipelines.lm_runs.summarize_methods`'s table.

    Returns
    -------
    dict
        ``shown`` (bool), ``text`` (one paragraph: the verdict and why), ``grpo_ece``,
        ``others_max_ece``.
    """
    by_method = summary.set_index("method")
    if "grpo" not in by_method.index:
        return {"shown": False, "text": "GRPO was not run, so the finding cannot be checked."}
    others = [m for m in CALIBRATED_METHODS if m in by_method.index]
    if not others:
        return {
            "shown": False,
            "text": "None of " + ", ".join(CALIBRATED_METHODS) + " was run beside GRPO.",
        }
    grpo = by_method.loc["grpo"]
    low = grpo["ece_low"] if np.isfinite(grpo["ece_low"]) else grpo["ece"]
    other_ece = by_method.loc[others, "ece"]
    worst = str(other_ece.idxmax())
    invalid = (
        by_method["invalid_rate"].astype(float)
        if "invalid_rate" in by_method
        else pd.Series(0.0, index=by_method.index)
    )
    silent = [str(m) for m in by_method.index if invalid[m] > INVALID_RATE_LIMIT]
    silent_compared = [m for m in ["grpo", *others] if m in silent]
    shown = bool(
        grpo["ece"] > CALIBRATED_ECE
        and low > other_ece.max()
        and other_ece.max() <= CALIBRATED_ECE
        and not silent_compared
    )
    if shown:
        text = (
            f"Shown: GRPO ends miscalibrated (ECE {grpo['ece']:.3f}, 95 % interval from "
            f"{low:.3f}), above every method without per-group std normalization "
            f"({', '.join(others)}: ECE at most {other_ece.max():.3f}, {worst})."
        )
    else:
        reasons = []
        if grpo["ece"] <= CALIBRATED_ECE:
            reasons.append(f"GRPO's ECE is only {grpo['ece']:.3f} (<= {CALIBRATED_ECE})")
        elif low <= other_ece.max():
            reasons.append(
                f"GRPO's ECE interval (from {low:.3f}) overlaps {worst}'s ECE {other_ece.max():.3f}"
            )
        if other_ece.max() > CALIBRATED_ECE:
            reasons.append(f"{worst} is not calibrated either (ECE {other_ece.max():.3f})")
        if silent_compared:
            reasons.append(f"{', '.join(silent_compared)} stopped answering validly")
        text = (
            "Not shown by this run: "
            + "; ".join(reasons)
            + ". The training budget may be too small for the drift to separate the methods "
            "(more steps, more seeds or a larger learning rate)."
        )
    if silent:
        rates = ", ".join(f"{m} {invalid[m]:.2f}" for m in silent)
        text += (
            f" Warning: {', '.join(silent)} stopped writing a valid answer on most held-out "
            f"questions (invalid-answer rate {rates}); {'its' if len(silent) == 1 else 'their'} "
            "metrics score the answer distribution after a forced <answer> tag, not "
            "anything the policy writes."
        )
    return {
        "shown": shown,
        "text": text,
        "grpo_ece": float(grpo["ece"]),
        "others_max_ece": float(other_ece.max()),
    }


def _calibration_stage(config: PipelineConfig) -> Stage:
    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason._io import atomic_write, atomic_write_text
        from bioreason.pipelines.lm_runs import (
            RUN_COLUMNS,
            markdown_table,
            read_job_row,
            summarize_methods,
        )

        folder = upstream["finetune"].path
        jobs = upstream["finetune"].result["jobs"]
        rows = [read_job_row(folder / job["folder"] / "metrics.json") for job in jobs]
        runs = pd.DataFrame(rows)
        runs = runs[[*RUN_COLUMNS, *[c for c in runs.columns if c not in RUN_COLUMNS]]]
        predictions = pd.concat(
            [pd.read_parquet(folder / job["folder"] / "predictions.parquet") for job in jobs],
            ignore_index=True,
        )
        summary = summarize_methods(
            predictions, runs, n_boot=config.calibration.n_boot, seed=config.calibration.seed
        )
        spread = (
            predictions.assign(q=judged_probability(predictions)[0])
            .groupby(["method", "seed"])["q"]
            .std()
        )
        summary["q_spread"] = summary["method"].map(spread.groupby(level=0).mean())
        table = markdown_table(summary)
        verdict = finding(summary)
        collapsed = int((spread < 0.01).sum())
        if collapsed:
            verdict["text"] += (
                f" Note: on {collapsed} of {len(spread)} runs the LM gives (almost) the same "
                "answer to every held-out question (standard deviation of q below 0.01), so "
                "these runs are calibrated or not only in their average answer; the error "
                "against p* measures how far one answer is from question-level truth."
            )
        for name, frame in (("runs", runs), ("summary", summary), ("predictions", predictions)):
            if name == "predictions":
                atomic_write(
                    stage_dir / "predictions.parquet",
                    lambda tmp, f=frame: f.to_parquet(tmp, index=False),
                )
            else:
                atomic_write(
                    stage_dir / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False)
                )
        atomic_write_text(stage_dir / "summary.md", table + "\n")
        headline = [
            {
                "method": row["method"],
                **{
                    f"{metric}{suffix}": row[f"{metric}{suffix}"]
                    for metric in ("ece", "mae_p_star", "mae_p_true", "overconfidence")
                    for suffix in ("", "_low", "_high")
                },
                "q_spread": row["q_spread"],
                "invalid_rate": row["invalid_rate"],
            }
            for _, row in summary.iterrows()
        ]
        return {"headline": headline, "finding": verdict, "n_jobs": len(jobs)}

    return Stage(
        "calibration",
        compute,
        config={"calibration": config.calibration},
        inputs=lambda up: {"finetune": up["finetune"].path / "result.json"},
        outputs=["runs.csv", "summary.csv", "summary.md", "predictions.parquet"],
    )


def _tabular_stage(config: PipelineConfig) -> Stage:
    tabular = config.tabular_config()

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.synthetic_calibration import run_synthetic_calibration

        _say(
            f"[tabular] {len(tabular.methods)} methods, {tabular.n_questions} questions, "
            f"{tabular.rl.steps} steps per run"
        )
        metrics = run_synthetic_calibration(stage_dir / "runs", tabular, progress=False)
        columns = [
            c for c in ("run", "method", "ece", "mae_p_true", "overconfidence") if c in metrics
        ]
        return {"metrics": metrics[columns].to_dict(orient="records")}

    return Stage(
        "tabular", compute, config={"tabular": tabular}, seed=tabular.seed, outputs=["runs"]
    )


def pipeline_stages(
    config: PipelineConfig, out: Path, *, workers: int = 1, force: bool = False
) -> list[Stage]:
    """The stages ``config`` runs, in order (no ``data`` / ``vae`` for a task from a file).

    Returns
    -------
    list of Stage
    """
    if config.kind == "tabular":
        return [_tabular_stage(config)]
    stages = []
    if config.task.from_simulator:
        stages += [_data_stage(config), _vae_stage(config)]
    stages += [
        _task_stage(config, out),
        _warm_stage(config, force),
        _finetune_stage(config, workers, force),
        _calibration_stage(config),
    ]
    return stages


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("bioreason", "torch", "pyro-ppl", "transformers", "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_pipeline(
    config: PipelineConfig,
    out: str | Path | None = None,
    *,
    only: str | None = None,
    from_: str | None = None,
    force: bool = False,
    workers: int = 1,
    report: bool = True,
    command: str | None = None,
) -> dict[str, StageResult]:
    """Run (or resume) a pipeline into ``out`` (default ``runs/<config.name>``).

    Parameters
    ----------
    config : PipelineConfig
    out : str or Path, optional
        The run folder.
    only, from_ : str, optional
        Run one stage (``--only``) or a stage and the ones after it (``--from``); the
        earlier stages must be complete and up to date.
    force : bool, default False
        Let the stages that run replace files bioreason did not write (or that changed
        since); an up-to-date stage is still skipped (delete its folder to redo it).
    workers : int, default 1
        Parallel processes of the ``finetune`` stage's jobs.
    report : bool, default True
        Write ``report.html`` / ``report.md`` at the end.
    command : str, optional
        The command line recorded in ``pipeline.json`` (default ``sys.argv``).

    Returns
    -------
    dict of str to StageResult
        Every stage's folder and result, by name, in order.
    """
    from bioreason._io import atomic_write_text, check_output_folder

    out = Path(out) if out is not None else Path("runs") / config.name
    check_output_folder(out)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    stages = pipeline_stages(config, out, workers=workers, force=force)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "pipeline.json"
    record: dict[str, Any] = {}
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = {}
    commands = list(record.get("commands", []))
    commands.append(command or " ".join(["bioreason", *sys.argv[1:]]))
    status = dict(record.get("stages", {}))
    for stage in stages:
        status.setdefault(stage.name, {"status": "not run", "seconds": None})
    record.update(
        {
            "name": config.name,
            "config": json.loads(json.dumps(config.to_dict(), default=str)),
            "commands": commands,
            "versions": _versions(),
            "stages": status,
            "started": _now(),
            "finished": None,
        }
    )

    def save() -> None:
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")

    save()
    for stage in stages:
        inner = stage.compute

        def timed_compute(path, upstream, inner=inner, name=stage.name):
            status[name] = {"status": "running", "seconds": None}
            save()
            start = time.perf_counter()
            try:
                result = inner(path, upstream)
            except BaseException:
                status[name] = {"status": "failed", "seconds": time.perf_counter() - start}
                save()
                raise
            status[name] = {"status": "done", "seconds": time.perf_counter() - start}
            save()
            return result

        stage.compute = timed_compute
    results = run_stages(stages, out, only=only, from_=from_, force=force, log=_say)
    for name, result in results.items():
        if result.skipped and status.get(name, {}).get("status") != "done":
            status[name] = {"status": "done", "seconds": None}
    record["finished"] = _now()
    save()
    if report and "calibration" in results and only in (None, "calibration"):
        _write_report(out, force)
    return results


def _write_report(out: Path, force: bool) -> None:
    try:
        from bioreason.report import write_report
    except ImportError:  # pragma: no cover - the report package ships with bioreason
        return
    files = write_report(out, force=force)
    _say(f"[report] {files.html}")


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline config from YAML, with ``section.field=value`` overrides.

    Parameters
    ----------
    path : str or Path
        The YAML file (its top-level keys are :class:`PipelineConfig`'s fields).
    overrides : sequence of str
        ``finetune.steps=200``-style assignments (values parsed as YAML) applied on top.

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ValueError
        An unknown key (the message lists the valid ones), a bad value, or a malformed
        override.
    """
    from bioreason.config import read_yaml, yaml_loads

    values = read_yaml(path, what="pipeline config") or {}
    if not isinstance(values, dict):
        raise ValueError(f"pipeline config {path} must be a mapping of sections, got {values!r}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.field=value")
        target = values
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        target[parts[-1]] = yaml_loads(text)
    return PipelineConfig.from_dict(values, where=f"pipeline config {path}")
