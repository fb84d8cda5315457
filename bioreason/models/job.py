"""One ``bioreason train-vae`` job as a function (:func:`run_train_vae`): a perturbation
VAE fitted on the cells of an ``.h5ad`` (:func:`~bioreason.models.fit_vae` on
:meth:`TrainVAEConfig.split`) and saved as a model folder with ``result.json`` through
the stage helper: skipped when up to date, resumed from its checkpoint after an
interruption, and never replacing files the user has without ``force``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bioreason.models.fit import TrainVAEConfig
from bioreason.stage import StageResult

__all__ = ["MODEL_FILES", "run_train_vae"]

#: The files ``model.save`` writes into the job's folder (the stage helper adds
#: ``result.json`` and ``manifest.json``).
MODEL_FILES = ("config.yaml", "attributes.json", "model.pt", "history.csv")
_CHECKPOINTS = "checkpoint"

# fit_vae's keys that result.json writes under its own names (further evaluations asked
# for in the config's ``evaluation`` are written as fit_vae names them)
_FIT_KEYS_USED = (
    "model",
    "steps",
    "train_seconds",
    "final_train_loss",
    "final_validation_loss",
    "iwelbo_heldout",
)


def _record(config: TrainVAEConfig, adata_path: Path) -> dict[str, Any]:
    """The settings the manifest records (the keys of earlier versions, so that their
    folders stay up to date; ``evaluation`` only where it differs from the default).

    Returns
    -------
    dict
        The model's, setup's and training's settings as their dataclasses (recorded as
        plain JSON, so that a setting added to them since a folder was written matches it
        at its default), the rest plain JSON data.
    """
    import dataclasses

    default = TrainVAEConfig().evaluation.to_dict()
    evaluation = {
        key: value
        for key, value in config.evaluation.to_dict().items()
        if key != "iwelbo_particles" and value != default[key]
    }
    record = {
        "model": config.model,
        "adata": str(adata_path),
        "setup": config.setup,
        "vae": config.vae,
        # progress changes only what is shown: recorded at its default
        "train": dataclasses.replace(config.train, progress=type(config.train)().progress),
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "iwelbo_particles": config.evaluation.iwelbo_particles,
        **({"evaluation": evaluation} if evaluation else {}),
        **({"recover_counts": True} if config.recover_counts else {}),
    }
    return record


def run_train_vae(
    adata_path: str | Path,
    out: str | Path,
    config: TrainVAEConfig,
    *,
    force: bool = False,
    log: Callable[[str], Any] | None = print,
) -> StageResult:
    """Fit a perturbation VAE on an ``.h5ad`` and save it into ``out`` with ``result.json``.

    Parameters
    ----------
    adata_path : str or Path
        The cells (raw counts, written as ``config.setup`` says).
    out : str or Path
        The model folder (created; :meth:`PerturbationModel.load` and ``bioreason
        build-task --model`` read it). A folder of a finished job with these settings
        and cells is left as it is; one of an interrupted run resumes from its checkpoint.
    config : TrainVAEConfig
        The settings; ``config.train.seed`` seeds the split and the run.
    force : bool, default False
        Replace files in ``out`` that this job did not write, or a finished model.
    log : callable or None, default print
        Receives ``"resuming from the checkpoint in <out>/checkpoint"`` and, when the job
        is skipped, ``"<out> is up to date (same settings and AnnData); nothing to do"``.

    Returns
    -------
    StageResult
        ``skipped`` and ``result``, the content of ``result.json``: ``model``,
        ``model_class``, ``n_cells``, ``n_genes``, ``n_perturbations``,
        ``n_train_cells`` (training and validation cells), ``n_test_cells``, ``steps``,
        ``train_seconds``, ``final_train_loss``, ``final_validation_loss``,
        ``test_iwelbo`` (held out, nats per cell; None without test cells),
        ``iwelbo_particles``, ``note`` (why a figure is missing, e.g. ``"no held-out
        IWELBO: ..."``; None) and the further figures of ``config.evaluation`` as
        :func:`~bioreason.models.fit_vae` names them.

    Raises
    ------
    FileNotFoundError
        ``adata_path`` does not exist.
    NotADirectoryError
        ``out`` is a file or lies inside one.
    FileExistsError
        ``out`` holds files this job did not write, or a finished model, and ``force``
        is false (nothing is changed then).
    """
    from bioreason._io import check_output_folder, json_safe
    from bioreason.stage import run_stage

    adata_path, out = Path(adata_path), Path(out)
    if not adata_path.exists():
        raise FileNotFoundError(f"adata {adata_path} does not exist")
    check_output_folder(out)
    checkpoints = out / _CHECKPOINTS
    say = log or (lambda _: None)

    def compute(folder: Path) -> dict[str, Any]:
        from bioreason.data import read_h5ad
        from bioreason.models.fit import fit_vae

        adata = read_h5ad(adata_path)
        if config.recover_counts:
            from bioreason.data.recover import recover_into_setup

            adata, recovered = recover_into_setup(adata, config.setup, "--recover-counts")
            say(recovered.summary())
        # the stage helper keeps the checkpoint of an interrupted run of these settings
        # only (it is scratch): finding one means resuming
        resume = checkpoints.is_dir()
        if resume:
            say(f"resuming from the checkpoint in {checkpoints}")
        model, fitted = fit_vae(
            adata,
            config.split(adata.n_obs),
            config.model,
            config.vae,
            config.train,
            config.evaluation,
            setup=config.setup,
            checkpoint_dir=checkpoints,
            resume=resume,
        )
        note = fitted.get("notes", {}).get("heldout_iwelbo")
        if note is not None:  # e.g. SVAE+ and a condition whose cells are all held out
            note = f"no held-out IWELBO: {note}"
        model.save(folder, overwrite=True)
        n_train = model.adata.n_obs
        return json_safe(
            {
                "model": config.model,
                "model_class": type(model).__name__,
                "n_cells": int(adata.n_obs),
                "n_genes": int(adata.n_vars),
                "n_perturbations": len(model.perturbation_names),
                "n_train_cells": int(n_train),
                "n_test_cells": int(adata.n_obs - n_train),
                "steps": fitted["steps"],
                "train_seconds": fitted["train_seconds"],
                "final_train_loss": fitted.get("final_train_loss"),
                "final_validation_loss": fitted.get("final_validation_loss"),
                "test_iwelbo": fitted.get("iwelbo_heldout"),
                "iwelbo_particles": config.evaluation.iwelbo_particles,
                "note": note,
                **{
                    key: value
                    for key, value in fitted.items()
                    if key not in _FIT_KEYS_USED and key != "notes"
                },
            }
        )

    return run_stage(
        out,
        _record(config, adata_path),
        {"adata": adata_path},
        compute,
        seed=config.train.seed,
        force=force,
        outputs=MODEL_FILES,
        log=lambda _: say(f"{out} is up to date (same settings and AnnData); nothing to do"),
        scratch=[_CHECKPOINTS],
        keep_finished=True,  # a model the user has is replaced only with force
    )
