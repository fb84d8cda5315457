"""The pipeline's settings: one :class:`PipelineConfig` read from YAML, whose sections
hold the library configs whole, so that every field of every library config can be set
from a pipeline YAML or ``--set section.field=value``, with the library's default:

==============  ============================================================================
``data``        :class:`DataStageConfig` (``screen``: :class:`bioreason.data.ScreenConfig`)
``vae``         :class:`VAEStageConfig` (``options``: :class:`bioreason.models.VAEConfig`,
                ``train``: :class:`bioreason.models.TrainConfig`)
``task``        :class:`TaskStageConfig` (``options``: :class:`bioreason.sim.TaskConfig`)
``lm``          :class:`LMStageConfig` (the base model and its warm start)
``finetune``    :class:`FinetuneStageConfig` (``rl``: :class:`bioreason.rl.LMRLConfig`)
``calibration`` :class:`CalibrationStageConfig`
``tabular``     :class:`bioreason.pipelines.synthetic_calibration.SyntheticCalibrationConfig`
==============  ============================================================================

A few fields of the nested configs are the pipeline's to set, from one place, and a
config that sets them is refused with the field to set instead (:data:`PIPELINE_SET`):
the seeds (``seed`` and ``finetune.seeds``), the method of each job
(``finetune.methods``), the model and cells a task is built from (the ``vae`` and
``data`` stages) and whether it has a ground truth (the data's). Fields that moved when
the sections became library configs (``vae.steps`` is now ``vae.train.max_steps``,
``finetune.lr`` is ``finetune.rl.lr``, ...) keep loading with a ``FutureWarning`` that
names the new place (:data:`MOVED_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bioreason.config import Config
from bioreason.data.simulate import ScreenConfig
from bioreason.models import EvaluationConfig, TrainConfig, VAEConfig
from bioreason.pipelines.lm_runs import METHODS
from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig
from bioreason.rl import LMRLConfig
from bioreason.sim.task_config import TaskConfig

__all__ = [
    "MOVED_FIELDS",
    "PIPELINE_SET",
    "CalibrationStageConfig",
    "DataStageConfig",
    "FinetuneStageConfig",
    "LMStageConfig",
    "PipelineConfig",
    "TaskStageConfig",
    "VAEStageConfig",
    "load_pipeline_config",
]

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
        The simulated screen's settings (``source: simulate``); its seed is the
        pipeline's ``seed``.
    path : str or None
        The ``.h5ad`` file or the dataset's name.
    heldout_fraction : float
        Share of all combinations held out of the model's training cells, drawn among
        those whose parts were measured alone.
    val_fraction : float
        Share of the remaining cells used for validation.
    recover_counts : bool
        ``source: h5ad`` whose ``X`` holds log-normalized values (log1p, log2 or log10
        of library-normalized counts): rebuild integer counts into ``layers["counts"]``
        first (:func:`bioreason.data.recover_counts`; ``obs["ncounts"]`` is read as each
        cell's library size when present). A registry dataset says itself whether it
        needs this.
    """

    source: Literal["simulate", "h5ad", "dataset"] = "simulate"
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    path: str | None = None
    heldout_fraction: float = 0.25
    val_fraction: float = 0.1
    recover_counts: bool = False

    def __post_init__(self) -> None:
        if self.source != "simulate" and not self.path:
            raise ValueError(f"path: source {self.source!r} needs a path (file or dataset name)")
        if not isinstance(self.recover_counts, bool):
            raise TypeError(f"recover_counts must be true or false, got {self.recover_counts!r}")
        if self.recover_counts and self.source != "h5ad":
            raise ValueError(
                f"recover_counts: true applies to source: h5ad (a file of log-normalized "
                f"values), not source: {self.source} (a registry dataset recovers its counts "
                "as its entry in data/datasets.yaml says)"
            )
        for name in ("heldout_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass
class VAEStageConfig(Config):
    """The perturbation model, its training and its evaluation.

    Attributes
    ----------
    model : {"sams_vae", "cpa_vae", "conditional_vae", "svae_plus"}
        Registry name of :data:`bioreason.models.MODELS`.
    options : VAEConfig
        The model's architecture and priors (:class:`bioreason.models.VAEConfig`).
    train : TrainConfig
        Its training (:class:`bioreason.models.TrainConfig`: ``max_steps``,
        ``batch_size``, ``lr``, ``n_particles``, ...). ``train.seed`` is the pipeline's
        ``seed``; the stage shows no progress bar and checkpoints into its folder.
    evaluation : EvaluationConfig
        What is measured after training (:class:`bioreason.models.EvaluationConfig`:
        which evaluations, ``iwelbo_particles``, ``ate_cells``, ...).
    fits : int, default 1
        How many times the model is fitted to the same cells: fit 0 with the pipeline's
        seed (``model/``), fit k with seed + 1,000 k (``model_fit<k>/``), each trained and
        evaluated alike. With more than one, the ``task`` stage answers with their
        equal-weight mixture (:class:`bioreason.sim.EnsembleSimulator`): p* no longer
        depends on one fit's starting point, and its 90 % intervals carry the
        fit-to-fit variation (docs/simulator.md, "Honest uncertainty").
    """

    model: Literal["sams_vae", "cpa_vae", "conditional_vae", "svae_plus"] = "sams_vae"
    options: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    fits: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.fits, bool) or not isinstance(self.fits, int) or self.fits < 1:
            raise ValueError(f"fits must be an integer >= 1, got {self.fits!r}")

    moved_fields: ClassVar[dict[str, str]] = {
        "steps": "train.max_steps",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "n_particles": "train.n_particles",
        "iwelbo_particles": "evaluation.iwelbo_particles",
        "ate_cells": "evaluation.ate_cells",
    }


@dataclass
class TaskStageConfig(Config):
    """The questions and their p*.

    Attributes
    ----------
    source : str
        ``simulator`` (questions about the ``data`` stage's conditions, p* from the
        ``vae`` stage's model), ``replogle`` (the published Replogle K562 task in
        ``replogle_folder``) or the path of a task table (``.parquet``).
    options : TaskConfig
        The task's settings for ``source: simulator`` (:class:`bioreason.sim.TaskConfig`:
        ``outcome``, ``outcome_options``, ``n_programs``, ``template``, ``split``,
        ``test_fraction``, the Monte Carlo budget, ...). ``model``, ``adata``,
        ``ground_truth`` and ``seed`` are the pipeline's (the ``vae`` and ``data``
        stages, the data's ground truth, ``seed``).
    replogle_folder : str
        Folder of ``train.pq`` / ``val.pq`` / ``test.pq`` (``source: replogle``).
    """

    source: str = "simulator"
    options: TaskConfig = field(default_factory=TaskConfig)
    replogle_folder: str = "../shared/data/replogle_k562_cnmf_task"

    def __post_init__(self) -> None:
        if self.source not in ("simulator", "replogle") and not self.source.endswith(".parquet"):
            raise ValueError(
                f"source must be simulator, replogle or a .parquet task table, got {self.source!r}"
            )
        if self.source == "simulator":
            # the checks that need a model and cells, with the stages' stand-ins
            try:
                dataclasses.replace(
                    self.options, model="(vae stage)", adata="(data stage)"
                ).check_inputs()
            except ValueError as err:
                raise ValueError(f"options: {err}") from None

    @property
    def from_simulator(self) -> bool:
        """True when the task is built from the pipeline's own model."""
        return self.source == "simulator"


@dataclass
class LMStageConfig(Config):
    """The predictor before fine-tuning: its base model and its warm start.

    Attributes
    ----------
    model : str
        ``tiny`` (the default small LM, a word-level tokenizer over the task's prompts)
        or a Hugging Face model folder / hub name.
    warm_start_steps : int
        Supervised steps teaching the answer format with uniform answers (0: none).
    warm_start_lr : float
        Their learning rate.
    warm_start_trainable : {"answer_rows", "all"}
        What the warm start trains: the embedding rows of the tokens the model writes
        (the default: the state at the answer position keeps the question), or every
        weight. Its prompts end with ``<answer>`` when ``finetune.rl.open_answer``.
    """

    model: str = "tiny"
    warm_start_steps: int = 30
    warm_start_lr: float = 1e-3
    warm_start_trainable: Literal["answer_rows", "all"] = "answer_rows"

    def __post_init__(self) -> None:
        if self.warm_start_steps < 0:
            raise ValueError(f"warm_start_steps must be >= 0, got {self.warm_start_steps}")
        if not self.warm_start_lr > 0:
            raise ValueError(f"warm_start_lr must be > 0, got {self.warm_start_lr}")


@dataclass
class FinetuneStageConfig(Config):
    """The RL methods and seeds, and the training settings every job shares.

    Attributes
    ----------
    methods : list of str
        Advantage estimators of :data:`bioreason.rl.ADVANTAGES` with options
        (``grpo``, ``rloo``, ``seed_grpo:base=grpo``, ``h_target:log``, ...); each is
        one job's ``rl.method``.
    seeds : list of int
        One warm start and one job per method per seed (each job's ``rl.seed``).
    rl : LMRLConfig
        Every other training setting of a job (:class:`bioreason.rl.LMRLConfig`:
        ``steps``, ``lr``, ``group_size``, ``questions_per_step``, ``kl_coef``,
        ``outcomes``, ``eval_split``, ``device``, ``torch_compile``, ...).
    threads : int
        Torch threads per job. Like ``rl.torch_compile``, it changes only the speed and
        is not part of the stage's manifest.
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    rl: LMRLConfig = field(default_factory=LMRLConfig)
    threads: int = 1

    moved_fields: ClassVar[dict[str, str]] = {
        name: f"rl.{name}"
        for name in (
            "steps",
            "lr",
            "group_size",
            "questions_per_step",
            "kl_coef",
            "entropy_coef",
            "eval_samples",
            "outcomes",
            "torch_compile",
        )
    }

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
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


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

    def __post_init__(self) -> None:
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0: no intervals), got {self.n_boot}")


#: fields of the nested configs that the pipeline sets, and what to set instead
PIPELINE_SET = {
    "data.screen.seed": "seed",
    "vae.train.seed": "seed",
    "task.options.seed": "seed",
    "task.options.model": "nothing (the vae stage's model)",
    "task.options.adata": "nothing (the data stage's cells)",
    "task.options.ground_truth": "nothing (set when the data have a ground truth)",
    "finetune.rl.method": "finetune.methods",
    "finetune.rl.seed": "finetune.seeds",
}

#: old place -> new place of the fields that moved into the library configs
MOVED_FIELDS = {
    "lm.device": "finetune.rl.device",
    **{f"vae.{old}": f"vae.{new}" for old, new in VAEStageConfig.moved_fields.items()},
    **{
        f"finetune.{old}": f"finetune.{new}"
        for old, new in FinetuneStageConfig.moved_fields.items()
    },
}


@dataclass
class PipelineConfig(Config):
    """One pipeline run: ``bioreason run CONFIG.yaml`` reads this from YAML.

    Attributes
    ----------
    name : str
        The run's name; its folder is ``runs/<name>`` unless ``--out`` says otherwise.
    kind : {"lm", "tabular"}
        ``lm``: the stages above. ``tabular``: one stage, ``tabular``, the synthetic
        calibration experiment with a tabular policy (``tabular`` settings); the other
        sections are then unused.
    seed : int
        Seeds the screen, the split, the model and the task.
    data : DataStageConfig
    vae : VAEStageConfig
    task : TaskStageConfig
    lm : LMStageConfig
    finetune : FinetuneStageConfig
    calibration : CalibrationStageConfig
    tabular : SyntheticCalibrationConfig
        The synthetic calibration experiment (``kind: tabular``).
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
    tabular: SyntheticCalibrationConfig = field(default_factory=SyntheticCalibrationConfig)

    moved_fields: ClassVar[dict[str, str]] = {"lm.device": "finetune.rl.device"}

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str | None = None) -> PipelineConfig:
        """As :meth:`Config.from_dict`; a value for a field the pipeline sets itself
        (:data:`PIPELINE_SET`) is refused, naming what to set instead."""
        where = where or cls.__name__
        if isinstance(values, dict):
            for dotted, instead in PIPELINE_SET.items():
                if _has(values, dotted):
                    raise ValueError(
                        f"{where}: {dotted} is set by the pipeline; remove it (set {instead})"
                    )
        return super().from_dict(values, where=where)

    def seeded(self) -> PipelineConfig:
        """This config with the pipeline's seeds written into the nested configs (what
        the stages run with).

        Returns
        -------
        PipelineConfig
        """
        replace = dataclasses.replace
        return replace(
            self,
            data=replace(self.data, screen=replace(self.data.screen, seed=self.seed)),
            vae=replace(self.vae, train=replace(self.vae.train, seed=self.seed)),
        )


def _has(values: dict[str, Any], dotted: str) -> bool:
    target: Any = values
    for part in dotted.split("."):
        if not isinstance(target, dict) or part not in target:
            return False
        target = target[part]
    return True


def load_pipeline_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline config from YAML, with ``section.field=value`` overrides.

    Parameters
    ----------
    path : str or Path
        The YAML file (its top-level keys are :class:`PipelineConfig`'s fields).
    overrides : sequence of str
        ``finetune.rl.steps=200``-style assignments (values parsed as YAML) applied on
        top, at any depth.

    Returns
    -------
    PipelineConfig

    Raises
    ------
    ValueError
        An unknown key (the message lists the valid ones), a bad value, a field the
        pipeline sets itself, or a malformed override; an empty file (it would silently
        start the whole default pipeline).
    """
    from bioreason.config import read_yaml, yaml_loads

    values = read_yaml(path, what="pipeline config")
    if values is None or values == {}:
        # every default: 6,200 cells x 500 genes, thousands of VAE steps, 9 fine-tuning
        # jobs; an empty file is far more often a mistake than that request
        raise ValueError(
            f"pipeline config {path} is empty: it would run the whole default pipeline "
            "(a 6,200-cell x 500-gene screen, a full VAE fit, 9 fine-tuning jobs; hours on a "
            "CPU). Start from pipelines/configs/demo.yaml (or run `bioreason demo`), or write "
            "the settings you want (docs/pipelines.md lists them)"
        )
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
