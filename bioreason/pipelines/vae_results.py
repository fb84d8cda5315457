"""Held-out results of the perturbation VAEs (behind ``benchmarks/vae_results.py``).

For a data set, a split and a model: train with fixed settings, then measure the
held-out IWELBO (overall and per held-out condition), the IWELBO of the validation cells
(conditions seen in training), the agreement of data and model average treatment effects
on the held-out combinations (per-condition mean and pooled Pearson r), and, on the
synthetic screen, the agreement with the exact ATE and the recovery of the true masks.
One JSON file per run; :func:`write_results_table` collects them into a Markdown table.

Splits:

* ``composable``: 25 % of the combinations held out, drawn among those whose parts are
  measured alone (see :func:`bioreason.data.composable_combinations`).
* ``reference`` (Norman only): the held-out combinations of the SAMS-VAE reference
  evaluation, :data:`bioreason.data.splits.NORMAN_REFERENCE_HELDOUT`; two of their
  parts (CBL, TBX3) have no training cells, so the model is built with every
  perturbation name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioreason.config import Config
from bioreason.data.splits import NORMAN_REFERENCE_HELDOUT

ROOT = Path(__file__).resolve().parents[2]
SHARED_H5AD = ROOT.parent / "shared" / "data" / "perturbench_devel.h5ad"


__all__ = [
    "NORMAN_REFERENCE_HELDOUT",
    "VAEResultsConfig",
    "load_results_dataset",
    "run_vae_results",
    "write_results_table",
]


@dataclass
class VAEResultsConfig(Config):
    """Settings of one results run.

    Attributes
    ----------
    dataset : str, default "synthetic"
        ``"synthetic"`` (a simulated screen with known truth) or ``"norman"`` (the
        Norman 2019 subset from ``../shared/data``).
    model : str, default "sams_vae"
        A name of :data:`bioreason.models.MODELS`.
    split : str, default "composable"
        ``"composable"`` or ``"reference"`` (Norman only; see the module docstring).
    steps : int, default 3000
        Optimizer steps.
    early_stopping : bool, default False
        Train with early stopping (the model's defaults otherwise).
    lr : float, default 1e-3
    batch_size : int, default 512
    n_particles : int, default 5
    n_latent : int or None, default None
        None: 20 (synthetic) or 200 (Norman).
    n_hidden : int or None, default None
        None: 256 (synthetic) or 400 (Norman).
    model_options : dict, default {}
        Further :class:`~bioreason.models.VAEConfig` fields (e.g.
        ``{"embedding_n_layers": 4}``).
    train_options : dict, default {}
        Further :class:`~bioreason.models.TrainConfig` fields (e.g.
        ``{"grad_clip": 100, "weight_decay": 1e-6}``).
    iwelbo_particles : int, default 100
    seed : int, default 0
    """

    dataset: str = "synthetic"
    model: str = "sams_vae"
    split: str = "composable"
    steps: int = 3000
    early_stopping: bool = False
    lr: float = 1e-3
    batch_size: int = 512
    n_particles: int = 5
    n_latent: int | None = None
    n_hidden: int | None = None
    model_options: dict = field(default_factory=dict)
    train_options: dict = field(default_factory=dict)
    iwelbo_particles: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        from bioreason.models import MODELS

        if self.dataset not in _DEFAULTS:
            raise ValueError(f"dataset must be one of {sorted(_DEFAULTS)}, got {self.dataset!r}")
        MODELS.get(self.model)  # raises listing the models
        if self.split not in ("composable", "reference"):
            raise ValueError(f"split must be 'composable' or 'reference', got {self.split!r}")
        if self.split == "reference" and self.dataset != "norman":
            raise ValueError("the reference split exists for dataset='norman' only")
        for name in ("steps", "batch_size", "n_particles", "iwelbo_particles"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def name(self) -> str:
        """File stem of the run's result."""
        parts = [self.dataset, self.split, self.model, f"{self.steps}steps"]
        if self.early_stopping:
            parts.append("earlystop")
        options = {**self.model_options, **self.train_options}
        parts += [f"{k}{v}" for k, v in sorted(options.items())]
        return "_".join(str(p) for p in parts)


_DEFAULTS = {
    "synthetic": {"n_latent": 20, "n_hidden": 256},
    "norman": {"n_latent": 200, "n_hidden": 400},
}


def add_option_arguments(parser: Any) -> None:
    """``--option FIELD=VALUE`` (VAEConfig) and ``--train-option FIELD=VALUE``
    (TrainConfig), repeatable, VALUE as JSON, for the scripts over this module."""
    for flag, what, example in (
        ("--option", "VAEConfig", "embedding_n_layers=4"),
        ("--train-option", "TrainConfig", "grad_clip=100"),
    ):
        parser.add_argument(
            flag,
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help=f"a {what} field, e.g. {example} (repeatable; VALUE is JSON)",
        )


def parse_field_values(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=\"x\""]`` -> ``{"a": 1, "b": "x"}`` (values are JSON)."""
    options = {}
    for item in items:
        field_name, sep, value = item.partition("=")
        if not sep or not field_name:
            raise ValueError(f"expected FIELD=VALUE, got {item!r}")
        try:
            options[field_name] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(
                f"the value of {field_name} is not JSON: {value!r} (quote strings: "
                f"{field_name}='\"text\"')"
            ) from None
    return options


def load_results_dataset(name: str) -> tuple[Any, Any]:
    """The AnnData of a results data set and its ground truth (None for real data).

    Returns
    -------
    (AnnData, ScreenGroundTruth or None)
    """
    from bioreason.data import ScreenGroundTruth, recover_counts, simulate_screen

    if name == "synthetic":
        adata = simulate_screen(
            n_cells_per_condition=200,
            n_genes=500,
            n_latent=10,
            n_perturbations=20,
            n_combinations=20,
            mask_probability=0.1,
            seed=0,
        )
        return adata, ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    if name == "norman":
        import anndata as ad

        if not SHARED_H5AD.exists():
            raise FileNotFoundError(
                f"{SHARED_H5AD} not found: the Norman 2019 subset lives in ../shared/data"
            )
        full = ad.read_h5ad(SHARED_H5AD)
        adata = full[full.obs["dataset"] == "norman19"].copy()
        adata, _ = recover_counts(adata)
        adata.obs["perturbation"] = adata.obs["condition"].astype(str)
        return adata, None
    raise ValueError(f"unknown results data set {name!r}; choose one of {sorted(_DEFAULTS)}")


def _split(config: VAEResultsConfig, data: Any) -> Any:
    from bioreason.data import composable_combinations, split_heldout_combinations

    if config.split == "reference":
        heldout = list(NORMAN_REFERENCE_HELDOUT)
    else:
        heldout = composable_combinations(data, fraction=0.25, seed=config.seed)
    return split_heldout_combinations(data, heldout=heldout, val_fraction=0.1, seed=config.seed)


@dataclass
class _Prepared:
    """Data and split of one results run."""

    adata: Any
    truth: Any
    split: Any
    sizes: dict


def _prepare(config: VAEResultsConfig) -> _Prepared:
    from bioreason.data import PerturbationData

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    adata, truth = load_results_dataset(config.dataset)
    split = _split(config, PerturbationData.from_anndata(adata))
    sizes = {
        key: getattr(config, key) or default for key, default in _DEFAULTS[config.dataset].items()
    }
    return _Prepared(adata, truth, split, sizes)


def _vae_config(config: VAEResultsConfig, sizes: dict) -> Any:
    from bioreason.models import VAEConfig

    options = {"guide": "correlated", **sizes, **config.model_options}
    return VAEConfig.from_dict(options, where="model_options")


def _train_config(config: VAEResultsConfig, steps: int, progress: bool, **extra: Any) -> Any:
    from bioreason.models import TrainConfig

    values = {
        "max_steps": steps,
        "batch_size": config.batch_size,
        "n_particles": config.n_particles,
        "lr": config.lr,
        "seed": config.seed,
        "device": "cpu",
        "early_stopping": config.early_stopping,
        "progress": progress,
        **extra,
    }
    twice = sorted(set(values) & set(config.train_options))
    if twice:
        raise ValueError(
            f"train_options sets {twice}, which VAEResultsConfig sets itself; use its fields "
            "(steps, batch_size, n_particles, lr, seed, early_stopping)"
        )
    return TrainConfig.from_dict({**values, **config.train_options}, where="train_options")


#: the evaluations of a results run (bioreason.models.fit_vae)
_RESULTS_EVALUATIONS = (
    "final_loss",
    "validation_iwelbo",
    "heldout_iwelbo",
    "heldout_iwelbo_per_condition",
    "ate_heldout",
    "ate_pooled",
    "ate_truth",
    "mask_quantiles",
    "mask_recovery",
)
#: fit_vae's result key -> the key of a results file (the tables read these), held-out part
_HELDOUT_KEYS = {
    "iwelbo_heldout": "test_iwelbo",
    "iwelbo_heldout_per_condition": "test_iwelbo_per_condition",
    "ate_pearson_heldout": "ate_pearson_all",
    "ate_pearson_heldout_top20": "ate_pearson_top20",
    "ate_pooled_pearson_heldout": "ate_pooled_pearson_all",
    "ate_pooled_pearson_heldout_top20": "ate_pooled_pearson_top20",
    "ate_truth_pearson_heldout": "ate_vs_truth_pearson_all",
    "ate_truth_pearson_heldout_top20": "ate_vs_truth_pearson_top20",
}
#: training_curve's cell sets -> fit_vae's iwelbo_terms parts
_CURVE_SETS = (("test", "heldout"), ("validation", "validation"), ("train", "train"))
#: the same for the masks
_MASK_KEYS = {
    "mask_probability_quantiles": "mask_probability_quantiles",
    "mask_prior_probability": "mask_prior_probability",
    "mask_auroc": "mask_auroc",
}


def training_curve(
    config: VAEResultsConfig,
    milestones: tuple[int, ...] = (500, 1000, 3000),
    progress: bool = False,
    gap: bool = False,
) -> list[dict[str, Any]]:
    """Held-out and validation IWELBO, term by term, along one training run.

    The run is trained up to each milestone in turn by :func:`bioreason.models.fit_vae`
    (resuming from a checkpoint, so the optimizer state carries over and the run is the
    same as one uninterrupted run) and evaluated there with ``config.iwelbo_particles``
    particles, seeded by ``config.seed``.

    Returns
    -------
    list of dict, one per milestone: ``step``, ``test_iwelbo``,
    ``test_iwelbo_per_condition``, ``validation_iwelbo``, ``train_iwelbo`` (the first
    ``n_validation`` training cells), and for each of ``test`` / ``validation`` /
    ``train`` the mean ``*_reconstruction`` (E log p(x | z)) and ``*_local_kl``
    (E log q(z | x) - log p(z)) in nats per cell; ``global_kl`` (nats, and
    ``global_kl_per_training_cell``); ``mask_probability_quantiles``; the mean training
    loss over the last 50 steps. With ``gap=True`` also ``validation_amortization_gap``:
    the IWELBO gained on the validation cells by per-cell fitted posteriors
    (:func:`bioreason.models.evaluation.amortization_gap`).
    """
    import tempfile

    from bioreason.models import EvaluationConfig, fit_vae

    milestones = tuple(sorted(milestones))
    if config.early_stopping:
        raise ValueError("training_curve follows a run to fixed steps: set early_stopping=False")
    prepared = _prepare(config)
    vae = _vae_config(config, prepared.sizes)
    gap_evaluation = ("amortization_gap",) if gap else ()
    evaluation = EvaluationConfig(
        evaluations=("final_loss", "iwelbo_terms", *gap_evaluation, "global_kl", "mask_quantiles"),
        iwelbo_particles=config.iwelbo_particles,
        final_loss_steps=50,
        seed=None,  # the run's seed
    )
    rows = []
    with tempfile.TemporaryDirectory() as checkpoints:
        every = int(np.gcd.reduce(np.asarray(milestones)))
        for number, step in enumerate(milestones):
            train = _train_config(config, step, progress, checkpoint_every=every)
            _, fitted = fit_vae(
                prepared.adata,
                prepared.split,
                config.model,
                vae,
                train,
                evaluation,
                checkpoint_dir=checkpoints,
                resume=number > 0,
            )
            row: dict[str, Any] = {"step": step, "train_loss": fitted["final_train_loss"]}
            for name, part in (
                ("test", "heldout"),
                ("validation", "validation"),
                ("train", "train"),
            ):
                terms = fitted["iwelbo_terms"][part]
                for term in ("iwelbo", "reconstruction", "local_kl"):
                    row[f"{name}_{term}"] = terms[term]
                if name == "test":
                    row["test_iwelbo_per_condition"] = terms["per_condition"]
            if gap:
                row["validation_amortization_gap"] = fitted["amortization_gap_validation"]
                row["validation_optimized_iwelbo"] = fitted["optimized_iwelbo_validation"]
            row["global_kl"] = fitted["global_kl"]
            row["global_kl_per_training_cell"] = fitted["global_kl_per_training_cell"]
            if "mask_probability_quantiles" in fitted:
                row["mask_probability_quantiles"] = fitted["mask_probability_quantiles"]
            rows.append(row)
    return rows


def run_vae_results(config: VAEResultsConfig, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one model (by :func:`bioreason.models.fit_vae`); returns the
    result as a JSON-ready dict.

    Keys: the settings, ``train_seconds``, ``heldout`` (conditions), ``n_train``,
    ``n_validation``, ``n_test``, ``test_iwelbo`` and ``test_iwelbo_per_condition``
    (nats per cell), ``validation_iwelbo``, ``final_train_loss``, the ATE agreement
    (``ate_pearson_all`` / ``ate_pearson_top20``: mean over held-out conditions of the
    per-condition r; ``ate_pooled_pearson_all`` / ``ate_pooled_pearson_top20``: r over all
    (condition, gene) entries pooled), ``mask_probability_quantiles`` and
    ``mask_prior_probability`` (the prior pi, fixed or learned; SAMS-VAE) and, on
    the synthetic screen, ``ate_vs_truth_*`` and ``mask_auroc``. A model that cannot
    compose the held-out combinations gets ``cannot_predict_heldout`` instead.
    """
    from bioreason.models import MODELS, EvaluationConfig, fit_vae

    prepared = _prepare(config)
    split = prepared.split
    evaluation = EvaluationConfig(
        evaluations=_RESULTS_EVALUATIONS,
        iwelbo_particles=config.iwelbo_particles,
        ate_cells=2500,
        truth_ate_cells=10_000,
        final_loss_steps=50,
        seed=0,
    )
    _, fitted = fit_vae(
        prepared.adata,
        split,
        config.model,
        _vae_config(config, prepared.sizes),
        _train_config(config, config.steps, progress),
        evaluation,
        truth=prepared.truth,
    )
    result: dict[str, Any] = {
        **config.to_dict(),
        **prepared.sizes,
        "train_seconds": round(fitted["train_seconds"], 1),
        "steps_taken": fitted["steps"],
        "heldout": list(split.heldout_conditions),
        "n_train": int(split.train.size),
        "n_validation": int(split.val.size),
        "n_test": int(split.test.size),
        "final_train_loss": fitted["final_train_loss"],
    }
    if "iwelbo_validation" in fitted:
        result["validation_iwelbo"] = fitted["iwelbo_validation"]
    result.update({ours: fitted[key] for key, ours in _HELDOUT_KEYS.items() if key in fitted})
    if not MODELS[config.model].composes:
        result["cannot_predict_heldout"] = "SVAE+ has no category for an unseen combination"
    result.update({ours: fitted[key] for key, ours in _MASK_KEYS.items() if key in fitted})
    return result


def _result_manifest(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}.manifest.json"


def check_result_path(directory: Path, name: str, overwrite: bool = False) -> Path:
    """The path :func:`save_result` would write, after checking it may be written.

    Call it before a long run: it raises ``FileExistsError`` when ``directory/name.json``
    exists and was not written by :func:`save_result` (no ``name.manifest.json`` records
    it with its current hash), unless ``overwrite``.
    """
    from bioreason.stage import check_replaceable

    path = Path(directory) / f"{name}.json"
    check_replaceable(path, manifest=_result_manifest(directory, name), force=overwrite)
    return path


def save_result(
    result: dict[str, Any], directory: Path, name: str, *, overwrite: bool = False
) -> Path:
    """Write ``result`` to ``directory/name.json`` (atomically); returns the path.

    A result that :func:`save_result` wrote before is replaced (``name.manifest.json``
    beside it records its hash); any other existing file raises ``FileExistsError``
    unless ``overwrite=True``. Nothing is lost then: the new result is written to
    ``name.json.new`` and the error names both files.
    """
    from bioreason._io import atomic_write_text
    from bioreason.stage import write_manifest

    directory = Path(directory)
    text = json.dumps(result, indent=1)
    try:
        path = check_result_path(directory, name, overwrite)
    except FileExistsError as err:
        kept = directory / f"{name}.json.new"
        atomic_write_text(kept, text)
        raise FileExistsError(f"{err}; the new result was written to {kept}") from None
    manifest = {"config": {"name": name}, "seed": result.get("seed"), "outputs": [path]}
    manifest_name = _result_manifest(directory, name).name
    write_manifest(directory, **manifest, complete=False, name=manifest_name)
    atomic_write_text(path, text)
    write_manifest(directory, **manifest, name=manifest_name)
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_results_table(directory: Path) -> str:
    """Markdown tables (one per data set and split) of every result in ``directory``."""
    paths = sorted(Path(directory).glob("*.json"))
    rows = [json.loads(p.read_text()) for p in paths if not p.name.endswith(".manifest.json")]
    lines: list[str] = []
    groups: dict[tuple, list] = {}
    for r in rows:
        key = (r["dataset"], r["split"], r["steps"], r["early_stopping"], r["lr"])
        groups.setdefault(key, []).append(r)
    for (dataset, split, steps, early, lr), subset in sorted(groups.items()):
        first = subset[0]
        lines += [
            f"### {dataset}, {split} split, {steps} steps, early stopping "
            f"{'on' if early else 'off'}, lr {lr:g}",
            "",
            f"{first['n_train']} training, {first['n_validation']} validation, "
            f"{first['n_test']} test cells; held out: {', '.join(first['heldout'])}; "
            f"n_latent {first['n_latent']}, hidden {first['n_hidden']}, batch "
            f"{first['batch_size']}, {first['n_particles']} particles, seed {first['seed']}; "
            f"IWELBO with K = {first['iwelbo_particles']}.",
            "",
            "| model | options | steps run | test IWELBO | "
            + " | ".join(first["heldout"])
            + " | validation IWELBO | ATE r all (mean / pooled) | ATE r top 20 (mean / pooled)"
            " | ATE r vs truth (all / top 20) | mask AUROC | median q(M=1) | prior pi | train s |",
            "| " + " | ".join(["---"] * (13 + len(first["heldout"]))) + " |",
        ]
        for r in subset:
            per = r.get("test_iwelbo_per_condition", {})
            cannot = "cannot compose" if "cannot_predict_heldout" in r else None
            truth = "n/a"
            if "ate_vs_truth_pearson_all" in r:
                truth = (
                    f"{_fmt(r['ate_vs_truth_pearson_all'])} / "
                    f"{_fmt(r['ate_vs_truth_pearson_top20'])}"
                )
            ate_all = cannot or (
                f"{_fmt(r.get('ate_pearson_all'))} / {_fmt(r.get('ate_pooled_pearson_all'))}"
            )
            ate_top = cannot or (
                f"{_fmt(r.get('ate_pearson_top20'))} / {_fmt(r.get('ate_pooled_pearson_top20'))}"
            )
            quantiles = r.get("mask_probability_quantiles", {})
            chosen = {**r["model_options"], **r.get("train_options", {})}
            options = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "default"
            cells = [
                r["model"],
                options,
                str(r["steps_taken"]),
                cannot or _fmt(r.get("test_iwelbo"), 1),
                *[cannot or _fmt(per.get(c), 1) for c in first["heldout"]],
                _fmt(r.get("validation_iwelbo"), 1),
                ate_all,
                ate_top,
                truth,
                _fmt(r.get("mask_auroc")),
                _fmt(quantiles.get("0.5")),
                _fmt(r.get("mask_prior_probability")),
                str(r["train_seconds"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
