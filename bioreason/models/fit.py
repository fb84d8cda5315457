"""One way to train and evaluate a perturbation VAE: :func:`fit_vae`.

``bioreason train-vae``, the pipeline's ``vae`` stage and the VAE benchmarks
(:mod:`bioreason.pipelines.vae_results`) all call :func:`fit_vae`, so a model they fit
with the same cells, split and settings is the same model with the same figures. It
takes the library configs whole (the model's registry name, :class:`VAEConfig`,
:class:`TrainConfig`, :class:`EvaluationConfig`) and a :class:`~bioreason.data.Split`,
builds the model on the training then validation cells, trains it, and runs the
evaluations the :class:`EvaluationConfig` names (:mod:`bioreason.models.fit_evaluations`),
each adding documented keys to one JSON-ready result dict.

:class:`TrainVAEConfig` holds the settings of ``bioreason train-vae`` (setup, model,
VAE, training and evaluation settings, a random test / validation split) and loads the
command's flat YAML form.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bioreason.config import Config
from bioreason.data import (
    PerturbationData,
    PerturbationSetup,
    ScreenGroundTruth,
    Split,
    canonical_conditions,
)
from bioreason.models._base import PerturbationModel
from bioreason.models._module import VAEConfig
from bioreason.models._training_mixin import check_rows_inside
from bioreason.models.fit_evaluations import EVALUATIONS, EvaluationConfig, FitContext
from bioreason.models.training import TrainConfig

__all__ = ["TrainVAEConfig", "VAEFit", "fit_vae"]


class VAEFit(NamedTuple):
    """What :func:`fit_vae` returns (unpack it: ``model, result = fit_vae(...)``).

    Attributes
    ----------
    model : PerturbationModel
        The trained model; ``model.adata`` holds its training then validation cells and
        ``model.history`` the loss history.
    result : dict
        JSON-ready figures (see :func:`fit_vae`).
    """

    model: PerturbationModel
    result: dict[str, Any]


# ------------------------------------------------------------------ the function
def _check_split(split: Any, n_cells: int, data: PerturbationData) -> Split:
    if not isinstance(split, Split):
        raise TypeError(
            f"split must be a bioreason.data.Split (train, val, test cell indices and the "
            f"held-out conditions), got {type(split).__name__}"
        )
    parts = {}
    for name in ("train", "val", "test"):
        array = np.asarray(getattr(split, name))
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"split.{name} must be a 1-D array of integer cell indices (rows of adata), "
                f"got dtype {array.dtype} and shape {array.shape}"
            )
        check_rows_inside(array, n_cells, f"split.{name}", "adata")
        parts[name] = array.astype(np.int64)
    if parts["train"].size == 0:
        raise ValueError("split.train selects no cells; a model needs training cells")
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = np.intersect1d(parts[first], parts[second])
        if shared.size:
            raise ValueError(
                f"split.{first} and split.{second} share {shared.size} cells (e.g. "
                f"{shared[:5].tolist()}); each cell belongs to one part"
            )
    heldout = split.heldout_conditions
    if isinstance(heldout, str) or not all(isinstance(c, str) for c in heldout):
        raise TypeError(
            f"split.heldout_conditions must be a sequence of condition labels, got {heldout!r}"
        )
    try:
        canonical = canonical_conditions(
            list(heldout),
            control=data.setup.control,
            delimiter=data.setup.delimiter,
            where="split.heldout_conditions",
        )
    except ValueError as err:
        raise ValueError(f"{err}; give them as the data writes them (A+B)") from None
    known = set(data.condition_names)
    unknown = sorted(label for label, c in zip(heldout, canonical) if c not in known)
    if unknown:
        raise ValueError(
            f"split.heldout_conditions {unknown} are not conditions of adata (e.g. "
            f"{list(data.condition_names)[:5]}); give them as the data writes them (A+B)"
        )
    return Split(parts["train"], parts["val"], parts["test"], tuple(heldout))


def fit_vae(
    adata: Any,
    split: Split,
    model: str = "sams_vae",
    vae: VAEConfig | None = None,
    train: TrainConfig | None = None,
    evaluation: EvaluationConfig | None = None,
    *,
    setup: PerturbationSetup | None = None,
    truth: ScreenGroundTruth | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> VAEFit:
    """Train a perturbation VAE on the training cells of a split and evaluate it.

    The model is ``MODELS[model](adata[concatenate([split.train, split.val])],
    perturbation_names=<every perturbation of adata>, seed=train.seed, **vae)``, trained
    by ``model.train(**train, train_indices=<its first split.train.size cells>,
    validation_indices=<the rest, or None>)``; every perturbation of ``adata`` gets a
    dosage column, so held-out combinations of perturbations measured only in the test
    cells can still be evaluated. Then the evaluations of ``evaluation.evaluations`` run
    in order. Nothing is written except the training checkpoint.

    Parameters
    ----------
    adata : AnnData
        Every cell (raw counts), with its perturbation labels.
    split : Split
        ``train``, ``val`` and ``test``: disjoint cell indices (rows of ``adata``);
        ``heldout_conditions``: the conditions whose cells are all in ``test``
        (:mod:`bioreason.data.splits` makes them).
    model : str, default "sams_vae"
        A name of :data:`bioreason.models.MODELS`.
    vae : VAEConfig, optional
        Architecture and prior (default ``VAEConfig()``).
    train : TrainConfig, optional
        Training settings (default ``TrainConfig()``); ``train.seed`` is the run's seed
        (initial weights, minibatches, and the evaluations' seed when theirs is None).
    evaluation : EvaluationConfig, optional
        Which figures to compute (default ``EvaluationConfig()``: the ``vae`` stage's).
    setup : PerturbationSetup, optional
        How ``adata`` is written (default ``PerturbationSetup()``).
    truth : ScreenGroundTruth, optional
        The generating parameters of a simulated screen (``mask_recovery``,
        ``ate_truth``); those evaluations are skipped without one.
    checkpoint_dir : str or Path, optional
        Folder of the training checkpoint (see ``model.train``).
    resume : bool, default False
        Continue from the checkpoint in ``checkpoint_dir`` (it must be this run's).

    Returns
    -------
    VAEFit
        ``model`` (trained) and ``result``, a JSON-ready dict. Always: ``model`` (str,
        the registry name), ``steps`` (int, the last step), ``train_seconds`` (float).
        Then, per evaluation (keys left out when there is nothing to evaluate, e.g. no
        validation cells or no ground truth):

        * ``loss_curve``: ``loss_curve``, list of ``[step, train_loss]`` (floats).
        * ``final_loss``: ``final_train_loss`` (float, mean of the last
          ``final_loss_steps`` steps, nats per cell), ``final_validation_loss`` (float
          or None, the last validation loss).
        * ``validation_iwelbo``: ``iwelbo_validation`` (float, nats per cell).
        * ``heldout_iwelbo``: ``iwelbo_heldout`` (float, over the test cells).
        * ``heldout_iwelbo_per_condition``: ``iwelbo_heldout_per_condition``, dict of
          held-out condition -> float.
        * ``ate_heldout``: ``ate_pearson_heldout``, ``ate_pearson_heldout_top20`` (float,
          mean over held-out conditions of the Pearson r of data and model ATE, all
          genes / top 20 genes by |data ATE|; data ATE from control and test cells).
        * ``ate_pooled``: ``ate_pooled_pearson_heldout``,
          ``ate_pooled_pearson_heldout_top20`` (float, one r over every (condition,
          gene) entry).
        * ``ate_truth``: ``ate_truth_pearson_heldout``, ``ate_truth_pearson_heldout_top20``
          (float, model ATE against the exact ATE of ``truth``).
        * ``ate_seen``: ``ate_pearson_seen`` (float, the same r on conditions seen in
          training, data ATE from the training and validation cells).
        * ``mask_recovery``: ``mask_auroc`` (float; models with masks and a ``truth``;
          SVAE+ is scored on the categories of single perturbations).
        * ``mask_quantiles``: ``mask_probability_quantiles``, dict ``"0.1"``, ``"0.5"``,
          ``"0.9"``, ``"0.99"`` -> float (models with masks); ``mask_prior_probability``
          (float, SAMS-VAE: the prior's pi, learned with ``learn_mask_prior``).
        * ``ppc``: ``ppc``, dict ``mean_log_ratio_median``, ``mean_corr``,
          ``variance_corr`` (floats; posterior predictive check on the model's cells).
        * ``iwelbo_terms``: ``iwelbo_terms``, dict ``heldout`` / ``validation`` /
          ``train`` (the first ``min(n_validation, n_train)`` training cells) -> dict
          ``iwelbo``, ``reconstruction`` (E log p(x | z)), ``local_kl``
          (E log q(z | x) - log p(z)) in nats per cell, and for ``heldout`` also
          ``per_condition``.
        * ``global_kl``: ``global_kl`` (float, nats), ``global_kl_per_training_cell``.
        * ``amortization_gap``: ``amortization_gap_validation``,
          ``optimized_iwelbo_validation`` (floats, nats per cell).

        ``notes`` (dict of evaluation name -> reason; only when one was skipped because
        the model cannot do it, e.g. SVAE+ and unseen combinations).

    Raises
    ------
    TypeError, ValueError
        A bad argument, naming it (an unknown model or evaluation lists the choices).
    """
    from bioreason.models import MODELS

    cls = MODELS.get(model)
    for name, value, kind in (
        ("vae", vae, VAEConfig),
        ("train", train, TrainConfig),
        ("evaluation", evaluation, EvaluationConfig),
        ("setup", setup, PerturbationSetup),
        ("truth", truth, ScreenGroundTruth),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}")
    vae = vae or VAEConfig()
    train = train or TrainConfig()
    evaluation = evaluation or EvaluationConfig()
    setup = setup or PerturbationSetup()
    if not all(hasattr(adata, name) for name in ("obs", "var_names", "n_obs")):
        raise TypeError(f"adata must be an AnnData (cells x genes), got {type(adata).__name__}")
    data = PerturbationData.from_anndata(adata, setup)
    split = _check_split(split, adata.n_obs, data)

    n_train = split.train.size
    model_adata = adata[np.concatenate([split.train, split.val])].copy()
    cls.setup_anndata(model_adata, setup)
    fitted = cls(
        model_adata,
        perturbation_names=data.perturbation_names,
        seed=train.seed,
        **vae.to_dict(),
    )
    start = time.perf_counter()
    fitted.train(
        **train.to_dict(),
        train_indices=np.arange(n_train),
        validation_indices=np.arange(n_train, model_adata.n_obs) if split.val.size else None,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
    )
    seconds = time.perf_counter() - start
    history = fitted.history
    result: dict[str, Any] = {
        "model": model,
        "steps": int(history["step"].iloc[-1]) if len(history) else 0,
        "train_seconds": seconds,
    }
    context = FitContext(fitted, adata, data, split, setup, truth, evaluation, train.seed)
    for name in evaluation.evaluations:
        result.update(EVALUATIONS[name](context))
    if context.notes:
        result["notes"] = dict(context.notes)
    return VAEFit(fitted, result)


# ------------------------------------------------------------------ train-vae's settings
#: the nested configs of TrainVAEConfig whose fields the flat form writes at the top level
_FLAT_SECTIONS = {"setup": PerturbationSetup, "vae": VAEConfig, "train": TrainConfig}
#: EvaluationConfig fields the flat form writes at the top level
_FLAT_EVALUATION = ("iwelbo_particles",)


def _train_vae_evaluation() -> EvaluationConfig:
    return EvaluationConfig(evaluations=("final_loss", "heldout_iwelbo"), seed=None)


@dataclass
class TrainVAEConfig(Config):
    """Settings of ``bioreason train-vae``: a model fitted on an AnnData with a random
    split of its cells.

    :meth:`from_dict` (through :meth:`nested_form`) also reads the command's flat form:
    the fields of :class:`~bioreason.data.PerturbationSetup`, :class:`VAEConfig` and
    :class:`TrainConfig`, and ``iwelbo_particles``, at the top level beside ``model``,
    ``test_fraction`` and ``validation_fraction`` (a field given both there and in its
    section is an error).

    Attributes
    ----------
    setup : PerturbationSetup
        How the AnnData is written.
    model : str, default "sams_vae"
        A name of :data:`bioreason.models.MODELS`.
    vae : VAEConfig
        Architecture and prior.
    train : TrainConfig
        Training settings; ``train.seed`` also draws the split.
    evaluation : EvaluationConfig, default ``final_loss`` and ``heldout_iwelbo``
        The figures of ``result.json``; its ``seed`` is None (the run's seed).
    test_fraction : float, default 0.1
        Share of the cells held out (at random) for the IWELBO; 0 for none.
    validation_fraction : float, default 0.1
        Share of the other cells validated on during training.
    recover_counts : bool, default False
        ``adata.X`` holds log-normalized values (log1p, log2 or log10 of normalized
        counts): rebuild integer counts into ``setup.layer`` first
        (:func:`bioreason.data.recover_counts`; ``obs["ncounts"]`` is read as each
        cell's library size when present). ``--recover-counts`` on the command line.
    """

    setup: PerturbationSetup = field(default_factory=PerturbationSetup)
    model: str = "sams_vae"
    vae: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=_train_vae_evaluation)
    test_fraction: float = 0.1
    validation_fraction: float = 0.1
    recover_counts: bool = False

    def __post_init__(self) -> None:
        from bioreason.models import MODELS

        if self.model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {self.model!r}")
        if not isinstance(self.recover_counts, bool):
            raise TypeError(f"recover_counts must be true or false, got {self.recover_counts!r}")
        if self.recover_counts and self.setup.layer is None:
            raise ValueError(
                "recover_counts writes the recovered counts into a layer (setup.layer) and "
                "reads the log-normalized values from adata.X: the layer cannot be X (leave "
                "--layer out, or name a layer)"
            )
        for name in ("test_fraction", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")

    @classmethod
    def nested_form(cls, values: dict[str, Any], *, where: str | None = None) -> dict[str, Any]:
        """``values`` with the flat form's top-level fields moved into their sections.

        Each section given (as a mapping or a config) is completed from this class's
        default for it, so a partial ``evaluation`` keeps the command's evaluations.

        Returns
        -------
        dict
            ``model``, ``test_fraction``, ``validation_fraction`` as given, and
            ``setup``, ``vae``, ``train``, ``evaluation`` as complete dicts.

        Raises
        ------
        ValueError
            An unknown key (the valid ones listed), or a field given twice.
        TypeError
            ``values`` or a section is not a mapping.
        """
        where = where or cls.__name__
        if not isinstance(values, dict):
            raise TypeError(f"{where}: expected a mapping of settings, got {values!r}")
        defaults = cls()
        sections = {"evaluation": EvaluationConfig, **_FLAT_SECTIONS}
        home = {
            f.name: section
            for section, klass in _FLAT_SECTIONS.items()
            for f in dataclasses.fields(klass)
        }
        home.update({name: "evaluation" for name in _FLAT_EVALUATION})
        own = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - own - set(home))
        if unknown:
            valid = sorted((own - set(sections)) | set(home) | set(sections))
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {valid}")
        given = {}
        for section in sections:
            value = values.get(section, {})
            if isinstance(value, Config):
                value = value.to_dict()
            if not isinstance(value, dict):
                raise TypeError(f"{where}.{section} must be a mapping, got {value!r}")
            given[section] = value
        nested = {key: value for key, value in values.items() if key in own}
        for section in sections:
            nested[section] = {**getattr(defaults, section).to_dict(), **given[section]}
        for key, value in values.items():
            if key in own:
                continue
            section = home[key]
            if key in given[section]:
                raise ValueError(
                    f"{where}: {key} is given twice, at the top level and under {section}; "
                    "give it once"
                )
            nested[section][key] = value
        return nested

    def split(self, n_cells: int) -> Split:
        """The random split of ``n_cells`` cells: ``round(test_fraction * n_cells)`` test
        cells, then ``round(validation_fraction * n_rest)`` of the rest validate, each
        drawn by a permutation from ``train.seed`` (as ``model.train`` draws its
        ``validation_fraction``).

        Returns
        -------
        Split
            Sorted index arrays, no held-out conditions.
        """
        if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 1:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
        seed = self.train.seed
        order = np.random.default_rng(seed).permutation(n_cells)
        n_test = int(round(self.test_fraction * n_cells))
        test, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
        inner = np.random.default_rng(seed).permutation(rest.size)
        n_validation = int(round(self.validation_fraction * rest.size))
        validation = rest[np.sort(inner[:n_validation])]
        train = rest[np.sort(inner[n_validation:])]
        return Split(train.astype(np.int64), validation.astype(np.int64), test.astype(np.int64))
