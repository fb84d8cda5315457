"""The comparison: p* from the NUTS reference, from SAMS-VAE fitted by SVI with each guide,
and p_true, on the same questions of a reference screen, in one table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bioreason.sim.budget import SimulationBudget
from bioreason.sim.reference.model import LinearSAMSModel
from bioreason.sim.reference.nuts import fit_nuts_reference
from bioreason.sim.reference.screen import _truth_of, reference_questions
from bioreason.sim.simulator import OutcomeSimulator, questions_frame

__all__ = ["compare_with_svi"]


@dataclass
class _Run:
    label: str
    frame: pd.DataFrame
    seconds: float


def compare_with_svi(
    adata: Any,
    questions: Any = None,
    outcome: Any = "screen_hit",
    *,
    readouts: Sequence[Any] = (),
    guides: Sequence[str] = ("correlated", "mean_field"),
    decoder: str = "fixed",
    svi_steps: int = 3000,
    svi_options: Mapping[str, Any] | None = None,
    train_options: Mapping[str, Any] | None = None,
    reference: LinearSAMSModel | None = None,
    nuts_options: Mapping[str, Any] | None = None,
    budget: SimulationBudget | None = None,
    seed: int = 0,
    **outcome_options: Any,
) -> pd.DataFrame:
    """p* from NUTS, from SAMS-VAE fitted by SVI with each guide, and p_true, per question.

    SAMS-VAE is built with the reference model's settings (``n_layers=0``: a linear
    decoder; ``likelihood="poisson"``; the same n_latent, pi and s) and trained on every
    cell (no validation split). Its basal encoder is an amortized MLP (``n_hidden``
    units, changeable in ``svi_options``) -- the reference has no encoder: NUTS samples
    every cell's latent.

    Parameters
    ----------
    adata : AnnData, e.g. from :func:`simulate_reference_screen`
    questions : optional
        Default: :func:`reference_questions` (every non-control condition x 5 genes).
    outcome, readouts, **outcome_options
        As for :func:`reference_probability`. For ``screen_hit``, ``threshold=None``
        picks one threshold per readout: the median over the questions' conditions of
        the NUTS reference's expected |effect| (``OutcomeSimulator.suggest_thresholds``),
        fixed before any p* is computed and shared by all methods.
    guides : SAMS-VAE guides to fit (``"correlated"``, ``"mean_field"``)
    decoder : ``"fixed"`` or ``"learned"``
        ``"fixed"``: SAMS-VAE's decoder is set to the reference's decoder and frozen, so
        the guides differ from NUTS only in the variational approximation (and the
        amortized encoder). ``"learned"``: SAMS-VAE learns its decoder as usual.
    svi_steps : int
        SVI steps per guide.
    svi_options : mapping, optional
        Extra SAMSVAE constructor options (e.g. ``n_hidden=64``).
    train_options : mapping, optional
        ``model.train`` options over the defaults ``batch_size=512, lr=5e-3,
        validation_fraction=0.0`` (every cell trains, as every cell enters NUTS). At the
        library's default lr 1e-3, 1,000 steps on the default reference screen learn no
        effect at all (the basal encoder absorbs them into z_basal).
    reference, nuts_options
        A fitted NUTS reference, or options to fit one.
    budget : SimulationBudget, optional
        The Monte Carlo budget of every p* (NUTS, each guide, p_true).
    seed : int
        Seeds the NUTS fit (unless ``reference`` is given), the SVI fits and every p*.

    Returns
    -------
    DataFrame, one row per question: ``condition``, ``readout``, ``p_true`` (when
    ``adata`` has the data-generating parameters), ``p_star_nuts``, and
    ``p_star_svi_<guide>`` per guide, each p column with its ``_se``, and each p*
    column with ``_low`` and ``_high`` (the central 90 % interval of its per-draw
    probabilities, as :meth:`OutcomeSimulator.probability` gives it). ``attrs
    ["summary"]``: dict of ``mean_abs_pstar_nuts_vs_true``,
    ``mean_abs_pstar_svi_<guide>_vs_nuts``, ``mean_abs_pstar_svi_<guide>_vs_true``,
    ``mean_pstar_spread_<method>`` (across-draw sd: epistemic spread plus per-draw
    noise), ``mean_interval_width_<method>``, ``ptrue_in_90pct_interval_<method>``
    (the share of questions whose p_true lies in the method's interval),
    ``pstar_nuts_in_90pct_interval_svi_<guide>`` (the share whose NUTS p* lies in the
    guide's interval), ``nuts_seconds``, ``svi_seconds_<guide>``, ``r_hat_max``,
    ``n_eff_min``, ``divergences``, ``n_questions``; ``attrs["thresholds"]``.
    """
    import torch

    from bioreason.models import SAMSVAE

    if decoder not in ("fixed", "learned"):
        raise ValueError(f"decoder must be 'fixed' or 'learned', got {decoder!r}")
    unknown = [g for g in guides if g not in ("correlated", "mean_field")]
    if unknown or not guides:
        raise ValueError(f"guides must be among 'correlated', 'mean_field'; got {list(guides)}")
    if isinstance(svi_steps, bool) or not isinstance(svi_steps, (int, np.integer)) or svi_steps < 1:
        raise ValueError(f"svi_steps must be an integer >= 1, got {svi_steps!r}")
    if reference is None:
        reference = fit_nuts_reference(adata, **{"seed": seed, **dict(nuts_options or {})})
    if questions is None:
        questions = reference_questions(adata)
    frame = questions_frame(questions)
    frame = frame.assign(condition=[reference.canonical(c) for c in frame["condition"]])
    options = dict(outcome_options)
    thresholds = None
    outcome_name = outcome if isinstance(outcome, str) else getattr(outcome, "name", None)
    if outcome_name == "screen_hit" and "threshold" in options and options["threshold"] is None:
        probe = OutcomeSimulator(
            reference, outcome, readouts=readouts, observed=adata, budget=budget, **options
        )
        thresholds = probe.suggest_thresholds(
            list(dict.fromkeys(frame["condition"])),
            list(dict.fromkeys(frame["readout"])),
            seed=seed,
        )
        options["threshold"] = thresholds

    def pstar(model: Any) -> pd.DataFrame:
        simulator = OutcomeSimulator(
            model, outcome, readouts=readouts, observed=adata, budget=budget, **options
        )
        return simulator.probability(frame, seed=seed)

    runs = [_Run("nuts", pstar(reference), reference.diagnostics.get("seconds", float("nan")))]
    truth = _truth_of(adata, required=False)
    if truth is not None:
        runs.append(_Run("true", pstar(LinearSAMSModel.from_truth(adata)), 0.0))
    setup_data = adata.copy()
    SAMSVAE.setup_anndata(setup_data)
    settings = {
        "n_latent": reference.masks.shape[2],
        "likelihood": "poisson",
        "n_layers": 0,
        "n_hidden": 64,
        "mask_prior_probability": reference.diagnostics.get(
            "mask_probability", truth.mask_probability if truth else 0.01
        ),
        "embedding_prior_scale": reference.diagnostics.get(
            "embedding_scale", truth.embedding_scale if truth else 1.0
        ),
        **dict(svi_options or {}),
    }
    for guide in guides:
        start = time.perf_counter()
        model = SAMSVAE(setup_data, guide=guide, seed=seed, **settings)
        if decoder == "fixed":
            _freeze_linear_decoder(model, reference.decoder_weight, reference.decoder_bias)
        with torch.random.fork_rng(devices=[]):
            model.train(
                **{
                    "max_steps": int(svi_steps),
                    "batch_size": 512,
                    "validation_fraction": 0.0,
                    "progress": False,
                    "device": "cpu",
                    "seed": seed,
                    "lr": 5e-3,
                    **dict(train_options or {}),
                }
            )
        seconds = time.perf_counter() - start
        runs.append(_Run(f"svi_{guide}", pstar(model), seconds))

    out = frame[["condition", "readout"]].copy()
    columns = {"true": "p_true", "nuts": "p_star_nuts"}
    for run in runs:
        name = columns.get(run.label, f"p_star_{run.label}")
        out[name] = run.frame["p_star"].to_numpy()
        out[f"{name}_se"] = run.frame["p_star_se"].to_numpy()
        if run.label != "true":  # the truth's draws differ only by Monte Carlo noise
            out[f"{name}_low"] = run.frame["p_star_low"].to_numpy()
            out[f"{name}_high"] = run.frame["p_star_high"].to_numpy()
    nuts = out["p_star_nuts"].to_numpy()
    summary: dict[str, float] = {"n_questions": float(len(out))}
    if truth is not None:
        summary["mean_abs_pstar_nuts_vs_true"] = float(np.abs(nuts - out["p_true"]).mean())
    for run in runs:
        if run.label == "true":
            continue
        name = columns.get(run.label, f"p_star_{run.label}")
        low, high = out[f"{name}_low"].to_numpy(), out[f"{name}_high"].to_numpy()
        summary[f"mean_interval_width_{run.label}"] = float(np.mean(high - low))
        if truth is not None:
            p_true = out["p_true"].to_numpy()
            inside = (low <= p_true) & (p_true <= high)
            summary[f"ptrue_in_90pct_interval_{run.label}"] = float(inside.mean())
        if run.label != "nuts":
            inside = (low <= nuts) & (nuts <= high)
            summary[f"pstar_nuts_in_90pct_interval_{run.label}"] = float(inside.mean())
    for run in runs:
        if run.label.startswith("svi_"):
            values = out[f"p_star_{run.label}"].to_numpy()
            summary[f"mean_abs_pstar_{run.label}_vs_nuts"] = float(np.abs(values - nuts).mean())
            if truth is not None:
                summary[f"mean_abs_pstar_{run.label}_vs_true"] = float(
                    np.abs(values - out["p_true"]).mean()
                )
            summary[f"svi_seconds_{run.label[4:]}"] = run.seconds
        summary[f"mean_pstar_spread_{run.label}"] = float(run.frame["p_star_spread"].mean())
    summary["nuts_seconds"] = float(runs[0].seconds)
    for key in ("r_hat_max", "n_eff_min", "divergences"):
        summary[key] = float(reference.diagnostics.get(key, float("nan")))
    out.attrs["summary"] = summary
    out.attrs["thresholds"] = thresholds
    out.attrs["decoder"] = decoder
    return out


def _freeze_linear_decoder(model: Any, weight: np.ndarray, bias: np.ndarray) -> None:
    """Set a linear SAMS-VAE decoder (``n_layers=0``) to (weight (L, G), bias (G,)) and
    exclude it from training."""
    import torch

    layer = model.module.decoder.output
    if model.config.n_layers != 0:
        raise ValueError("a fixed decoder needs a linear SAMS-VAE decoder (n_layers=0)")
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight.T, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
