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
import time
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
    """Data, split and an untrained model of one results run."""

    adata: Any
    truth: Any
    data: Any
    split: Any
    train_adata: Any
    test_adata: Any
    n_train: int
    model: Any
    sizes: dict


def _prepare(config: VAEResultsConfig) -> _Prepared:
    from bioreason.data import PerturbationData
    from bioreason.models import MODELS

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    adata, truth = load_results_dataset(config.dataset)
    data = PerturbationData.from_anndata(adata)
    split = _split(config, data)
    train_adata = adata[np.concatenate([split.train, split.val])].copy()
    test_adata = adata[split.test].copy()
    cls = MODELS[config.model]
    cls.setup_anndata(train_adata)
    sizes = {
        key: getattr(config, key) or default for key, default in _DEFAULTS[config.dataset].items()
    }
    options = {"guide": "correlated", **sizes, **config.model_options}
    model = cls(
        train_adata, seed=config.seed, perturbation_names=data.perturbation_names, **options
    )
    return _Prepared(
        adata, truth, data, split, train_adata, test_adata, len(split.train), model, sizes
    )


def _train(
    prepared: _Prepared, config: VAEResultsConfig, steps: int, progress: bool, **kwargs: Any
) -> None:
    prepared.model.train(
        max_steps=steps,
        batch_size=config.batch_size,
        n_particles=config.n_particles,
        lr=config.lr,
        seed=config.seed,
        device="cpu",
        train_indices=np.arange(prepared.n_train),
        validation_indices=np.arange(prepared.n_train, prepared.train_adata.n_obs),
        early_stopping=config.early_stopping,
        progress=progress,
        **config.train_options,
        **kwargs,
    )


def training_curve(
    config: VAEResultsConfig,
    milestones: tuple[int, ...] = (500, 1000, 3000),
    progress: bool = False,
    gap: bool = False,
) -> list[dict[str, Any]]:
    """Held-out and validation IWELBO, term by term, along one training run.

    The run is trained up to each milestone in turn (resuming from a checkpoint, so the
    optimizer state carries over and the run is the same as one uninterrupted run) and
    evaluated there with ``config.iwelbo_particles`` particles.

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

    from bioreason.models.objectives import global_kl, local_terms

    milestones = tuple(sorted(milestones))
    if config.early_stopping:
        raise ValueError("training_curve follows a run to fixed steps: set early_stopping=False")
    prepared = _prepare(config)
    model = prepared.model
    n_val = prepared.train_adata.n_obs - prepared.n_train
    sets = {
        "test": prepared.test_adata,
        "validation": prepared.train_adata[prepared.n_train :].copy(),
        "train": prepared.train_adata[: min(n_val, prepared.n_train)].copy(),
    }
    labels = prepared.data.cell_condition[prepared.split.test]
    heldout = list(prepared.split.heldout_conditions)
    rows = []
    with tempfile.TemporaryDirectory() as checkpoints:
        every = int(np.gcd.reduce(np.asarray(milestones)))
        for number, step in enumerate(milestones):
            _train(
                prepared,
                config,
                step,
                progress,
                checkpoint_dir=checkpoints,
                checkpoint_every=every,
                resume=number > 0,
            )
            row: dict[str, Any] = {
                "step": step,
                "train_loss": float(model.history["train_loss"].iloc[-50:].mean()),
            }
            for name, cells in sets.items():
                data = model.data_for(cells)
                terms = local_terms(
                    model.module,
                    model._loader(data, 256),
                    model.categories_for(data),
                    n_particles=config.iwelbo_particles,
                    seed=config.seed,
                )
                model_sum = sum(v for k, v in terms.items() if k.startswith("model:"))
                guide_sum = sum(v for k, v in terms.items() if k.startswith("guide:"))
                log_w = model_sum - guide_sum
                per_cell = torch.logsumexp(log_w, 0) - np.log(config.iwelbo_particles)
                row[f"{name}_iwelbo"] = float(per_cell.mean())
                row[f"{name}_reconstruction"] = float(terms["model:counts"].mean())
                row[f"{name}_local_kl"] = float(
                    (guide_sum - (model_sum - terms["model:counts"])).mean()
                )
                if name == "test":
                    row["test_iwelbo_per_condition"] = {
                        c: float(per_cell[torch.as_tensor(labels == c)].mean()) for c in heldout
                    }
            if gap:
                from bioreason.models.evaluation import amortization_gap

                result = amortization_gap(
                    model,
                    sets["validation"],
                    n_particles=config.iwelbo_particles,
                    seed=config.seed,
                )
                row["validation_amortization_gap"] = result["gap"]
                row["validation_optimized_iwelbo"] = result["optimized_iwelbo"]
            kl = global_kl(model.module, n_draws=100, seed=config.seed)
            row["global_kl"] = kl
            row["global_kl_per_training_cell"] = kl / prepared.n_train
            effects = model.get_perturbation_effects()
            if "mask_probability" in effects:
                probability = effects["mask_probability"].to_numpy()
                row["mask_probability_quantiles"] = {
                    str(q): float(np.quantile(probability, q)) for q in (0.1, 0.5, 0.9, 0.99)
                }
            rows.append(row)
    return rows


def run_vae_results(config: VAEResultsConfig, progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one model; returns the result as a JSON-ready dict.

    Keys: the settings, ``train_seconds``, ``heldout`` (conditions), ``n_train``,
    ``n_validation``, ``n_test``, ``test_iwelbo`` and ``test_iwelbo_per_condition``
    (nats per cell), ``validation_iwelbo``, ``final_train_loss``, the ATE agreement
    (``ate_pearson_all`` / ``ate_pearson_top20``: mean over held-out conditions of the
    per-condition r; ``ate_pooled_pearson_all`` / ``ate_pooled_pearson_top20``: r over all
    (condition, gene) entries pooled), ``mask_probability_quantiles`` (SAMS-VAE) and, on
    the synthetic screen, ``ate_vs_truth_*`` and ``mask_auroc``. A model that cannot
    compose the held-out combinations gets ``cannot_predict_heldout`` instead.
    """
    from bioreason.data.expression import (
        ate_agreement,
        average_treatment_effect,
        ground_truth_ate,
        pooled_ate_agreement,
    )
    from bioreason.models.evaluation import mask_recovery

    prepared = _prepare(config)
    adata, truth, data, split = prepared.adata, prepared.truth, prepared.data, prepared.split
    train_adata, test_adata, n_train = (
        prepared.train_adata,
        prepared.test_adata,
        prepared.n_train,
    )
    model, sizes = prepared.model, prepared.sizes
    heldout = list(split.heldout_conditions)
    start = time.perf_counter()
    _train(prepared, config, config.steps, progress)
    seconds = time.perf_counter() - start
    history = model.history
    result: dict[str, Any] = {
        **config.to_dict(),
        **sizes,
        "train_seconds": round(seconds, 1),
        "steps_taken": int(history["step"].iloc[-1]),
        "heldout": heldout,
        "n_train": n_train,
        "n_validation": int(len(split.val)),
        "n_test": int(test_adata.n_obs),
        "final_train_loss": float(history["train_loss"].iloc[-50:].mean()),
    }
    k = config.iwelbo_particles
    result["validation_iwelbo"] = model.iwelbo(train_adata[n_train:].copy(), n_particles=k)
    if model.composes:
        per_cell = model.iwelbo(test_adata, n_particles=k, return_per_cell=True)
        labels = data.cell_condition[split.test]
        result["test_iwelbo"] = float(per_cell.mean())
        result["test_iwelbo_per_condition"] = {
            c: float(per_cell[labels == c].mean()) for c in heldout
        }
        control = model.control_label
        data_ate = average_treatment_effect(
            adata[np.concatenate([np.flatnonzero(data.is_control), split.test])].copy(),
            control=control,
            conditions=heldout,
        )
        model_ate = model.average_treatment_effect(heldout, n_cells=2500)
        table = ate_agreement(data_ate, model_ate, top_k=20)
        pooled = pooled_ate_agreement(data_ate, model_ate, top_k=20)
        result["ate_pearson_all"] = float(table["pearson_all"].mean())
        result["ate_pearson_top20"] = float(table["pearson_top"].mean())
        result["ate_pooled_pearson_all"] = float(pooled["pearson_all"])
        result["ate_pooled_pearson_top20"] = float(pooled["pearson_top"])
        if truth is not None:
            exact = ground_truth_ate(truth, heldout, list(adata.var_names), n_cells=10_000)
            vs_truth = ate_agreement(exact, model_ate, top_k=20)
            result["ate_vs_truth_pearson_all"] = float(vs_truth["pearson_all"].mean())
            result["ate_vs_truth_pearson_top20"] = float(vs_truth["pearson_top"].mean())
    else:
        result["cannot_predict_heldout"] = "SVAE+ has no category for an unseen combination"
    effects = model.get_perturbation_effects()
    if "mask_probability" in effects:
        probability = effects["mask_probability"].to_numpy()
        result["mask_probability_quantiles"] = {
            str(q): float(np.quantile(probability, q)) for q in (0.1, 0.5, 0.9, 0.99)
        }
        if truth is not None:
            frame, effect = effects["mask_probability"], effects["effect"]
            if config.model == "svae_plus":  # categories: keep the single perturbations
                singles = [p for p in truth.perturbation_names if p in frame.index]
                frame, effect = frame.loc[singles], effect.loc[singles]
            rows = [truth.perturbation_names.index(p) for p in frame.index]
            recovery = mask_recovery(
                truth.masks[rows], truth.effects[rows], frame.to_numpy(), effect.to_numpy()
            )
            result["mask_auroc"] = recovery["auroc"]
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
            " | ATE r vs truth (all / top 20) | mask AUROC | median q(M=1) | train s |",
            "| " + " | ".join(["---"] * (12 + len(first["heldout"]))) + " |",
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
                str(r["train_seconds"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
