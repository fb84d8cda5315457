"""Fitting a Pyro perturbation VAE by stochastic variational inference.

Two interchangeable engines compute the same minibatch objective,
``Trace_ELBO(num_particles=K, vectorize_particles=True)`` on a cells plate scaled by
``n_train / batch_size`` (an unbiased estimate of the full-data ELBO):

* ``"module"`` (default): the ELBO as a differentiable torch loss
  (``elbo.differentiable_loss(model, guide, ...)`` wrapped in :class:`ELBOLoss`, an
  ``nn.Module``) with a torch Adam optimizer. This keeps the parameters in the module
  (no global param store), so the loss can be wrapped for data-parallel training.
* ``"svi"``: ``pyro.infer.SVI`` with ``pyro.optim.ClippedAdam`` and the module's
  parameters registered in Pyro's param store.

``benchmarks/vae_throughput.py`` measures both.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from torch import nn
from tqdm.auto import tqdm

from bioreason.config import Config
from bioreason.data import MinibatchLoader
from bioreason.models.objectives import (
    ELBOLoss,
    batch_arguments,
    log_importance_weights,
    make_elbo,
)

#: default minimum number of steps between validation evaluations
_MIN_EVAL_EVERY = 100

#: steps between checkpoints when a checkpoint directory is given without checkpoint_every
DEFAULT_CHECKPOINT_EVERY = 1_000

#: TrainConfig fields a resumed run must share with its checkpoint (they shape the
#: optimization path); the others (length, device, progress, checkpoint and validation
#: cadence, early stopping) may change between the two runs
RESUME_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "mask_lr",
    "embedding_lr",
    "n_particles",
    "grad_clip",
    "seed",
    "engine",
)

#: tag of the checkpoints written by :func:`fit`
_CHECKPOINT_FORMAT = "bioreason.models.fit_checkpoint"
_CHECKPOINT_VERSION = 1

_logger = logging.getLogger(__name__)


class TrainingDivergedError(ValueError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig(Config):
    """Settings of :func:`fit` (and ``model.train``). Every field has a default.

    Attributes
    ----------
    max_epochs : int or None, default None
        Passes over the training cells. When both are None: scvi-tools' heuristic
        ``min(400, 20000 / n_cells * 400)`` epochs.
    max_steps : int or None, default None
        Optimizer steps; wins over ``max_epochs`` when both are given. A run with
        ``early_stopping=False`` takes exactly this many steps.
    batch_size : int, default 512
        Cells per minibatch.
    lr : float, default 1e-3
        Adam learning rate.
    weight_decay : float, default 0.0
        Adam's L2 weight decay (the SAMS-VAE reference uses 1e-6).
    mask_lr : float or None, default 0.01
        Learning rate of the q(M) logits (SAMS-VAE, SVAE+; ``"module"`` engine); None:
        ``lr``. On the Norman reference split at lr 3e-4 (3,000 steps) the median
        q(M = 1) went from 0.33 (mask_lr = lr) to 0.010, the prior, and the held-out
        IWELBO from -79.6 to -75.4 nats per cell.
    embedding_lr : float or None, default None
        Learning rate of the per-perturbation embedding parameters of q(E) (SAMS-VAE,
        CPA-VAE; ``"module"`` engine); None: ``lr``. Embeddings start near 0 and Adam
        moves them about ``lr`` per step, so at lr 1e-3 an effect of size 1.5 takes
        ~1,500 steps to appear, while the encoder can explain it sooner by shifting the
        perturbed cells' basal state -- effects a posterior predictive then misses
        (docs/simulator.md, "Why p* was low").
    n_particles : int, default 5
        ELBO particles K (vectorized).
    early_stopping : bool, default False
        Stop when the validation loss has not improved by more than ``min_delta`` for
        ``patience`` evaluations, and restore the best parameters. Off by default (as in
        scvi-tools): a user who asks for ``max_steps`` gets them.
    patience : int, default 10
        Evaluations without improvement before stopping (with the default
        ``eval_every`` that is at least 1,000 steps).
    min_delta : float, default 0.01
        Improvement of the validation loss (nats per cell) that counts as one.
    eval_every : int or None, default None
        Steps between validation evaluations; default ``max(100, one epoch)``, so that a
        small data set is not judged on every noisy epoch.
    validation_particles : int, default 20
        Particles of the validation estimate (the per-cell negative ELBO of the
        validation cells); more particles, less noise.
    grad_clip : float or None, default 10.0
        Maximum global gradient norm (``None`` = no clipping).
    seed : int, default 0
        Seeds torch, Pyro and the minibatch order (deterministic on CPU).
    device : str, default "auto"
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda[:N]"``.
    checkpoint_every : int or None, default None
        Steps between checkpoints (needs a checkpoint directory). None with a checkpoint
        directory: every ``DEFAULT_CHECKPOINT_EVERY`` (1,000) steps. A checkpoint is
        also written when training ends.
    engine : str, default "module"
        ``"module"`` or ``"svi"`` (see the module docstring).
    progress : bool, default True
        Show a tqdm progress bar with the loss.
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    mask_lr: float | None = 0.01
    embedding_lr: float | None = None
    n_particles: int = 5
    early_stopping: bool = False
    patience: int = 10
    min_delta: float = 0.01
    eval_every: int | None = None
    validation_particles: int = 20
    grad_clip: float | None = 10.0
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int | None = None
    engine: str = "module"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_epochs", "max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("batch_size", "n_particles", "patience", "validation_particles"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if self.mask_lr is not None and not (self.mask_lr > 0 and math.isfinite(self.mask_lr)):
            raise ValueError(f"mask_lr must be positive and finite, or None, got {self.mask_lr}")
        if self.embedding_lr is not None and not (
            self.embedding_lr > 0 and math.isfinite(self.embedding_lr)
        ):
            raise ValueError(
                f"embedding_lr must be positive and finite, or None, got {self.embedding_lr}"
            )
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if not (self.min_delta >= 0 and math.isfinite(self.min_delta)):
            raise ValueError(f"min_delta must be >= 0 and finite, got {self.min_delta}")
        # a negative clip norm would flip the gradient's sign (clip_grad_norm_ scales by it)
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"grad_clip must be positive or None (no clipping), got {self.grad_clip}"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {self.engine!r}")


#: per-perturbation parameters of q(E): the correlated guide's one-hot table, the
#: mean-field guide's locations and scales (``embedding_lr``)
EMBEDDING_PARAMETERS = ("embedding_table", "embedding_loc", "embedding_raw_scale")


def _parameter_groups(module: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Adam parameter groups: the mask logits of q(M) at ``mask_lr`` and the
    per-perturbation embedding parameters of q(E) at ``embedding_lr`` (each when set),
    the rest at ``lr``. Adam moves a parameter by about ``lr`` per step whatever its
    gradient, so logits started at 0 cannot reach the sparse prior's -4.6 in a few
    thousand steps at lr 3e-4, and embeddings started near 0 need about
    ``effect size / lr`` steps to reach an effect; a larger rate for them lets the masks
    prune and the effects grow before the encoder explains them by the basal state."""
    groups: dict[str, list[nn.Parameter]] = {"rest": [], "mask": [], "embedding": []}
    for name, parameter in module.named_parameters():
        last = name.rsplit(".", 1)[-1]
        if config.mask_lr is not None and last == "mask_logits":
            groups["mask"].append(parameter)
        elif config.embedding_lr is not None and last in EMBEDDING_PARAMETERS:
            groups["embedding"].append(parameter)
        else:
            groups["rest"].append(parameter)
    out: list[dict[str, Any]] = [{"params": groups["rest"]}]
    if groups["mask"]:
        out.append({"params": groups["mask"], "lr": config.mask_lr})
    if groups["embedding"]:
        out.append({"params": groups["embedding"], "lr": config.embedding_lr})
    return out


class _ModuleEngine:
    def __init__(self, module: nn.Module, config: TrainConfig) -> None:
        self.module = module
        self.loss = ELBOLoss(module, config.n_particles)
        self.optimizer = torch.optim.Adam(
            _parameter_groups(module, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.grad_clip = config.grad_clip

    def step(self, *batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(*batch)
        if not torch.isfinite(loss):
            return float(loss.detach())
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


class _SVIEngine:
    def __init__(self, module: nn.Module, config: TrainConfig) -> None:
        self.module = module
        pyro.clear_param_store()
        clip = {"clip_norm": config.grad_clip} if config.grad_clip is not None else {}
        self.optimizer = pyro.optim.ClippedAdam(
            {"lr": config.lr, "weight_decay": config.weight_decay, **clip}
        )

        def model(*args):
            pyro.module("vae", module)
            return module.model(*args)

        def guide(*args):
            pyro.module("vae", module)
            return module.guide(*args)

        self.svi = pyro.infer.SVI(model, guide, self.optimizer, make_elbo(config.n_particles))

    def step(self, *batch) -> float:
        with pyro.validation_enabled(False):
            return float(self.svi.step(*batch))

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.get_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.set_state(state)


#: engine name -> class with ``step(*batch) -> loss`` and optimizer state access
ENGINES = {"module": _ModuleEngine, "svi": _SVIEngine}


def diagnose_nonfinite(module: nn.Module, args: tuple) -> list[str]:
    """Names of the model/guide sites whose log-probability is not finite (one draw)."""
    with torch.no_grad(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(module.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
            *args
        )
    bad = []
    for where, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or (site["is_observed"] and where == "guide"):
                continue
            if not site.get("infer", {}).get("_do_not_trace"):
                try:
                    value = site["fn"].log_prob(site["value"]).sum()
                except Exception:  # noqa: BLE001 - a failing log_prob is itself the diagnosis
                    bad.append(f"{where}:{name} (log_prob failed)")
                    continue
                if not torch.isfinite(value):
                    bad.append(f"{where}:{name}")
    nonfinite_params = [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]
    bad += [f"parameter:{n}" for n in nonfinite_params]
    return bad


@torch.no_grad()
def evaluate_loss(
    module: nn.Module, loader: MinibatchLoader, categories: torch.Tensor, n_particles: int
) -> float:
    """Negative ELBO per cell of ``loader``'s cells, with the global latents drawn from the
    guide (as in the held-out IWELBO): the per-cell terms only, so the value does not
    depend on how many cells the validation set has."""
    log_weights = log_importance_weights(module, loader, categories, n_particles, seed=0)
    return float(-log_weights.mean())


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    from bioreason._io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def run_fingerprint(
    module: nn.Module,
    data,
    train_indices: np.ndarray,
    validation_indices: np.ndarray | None,
    config: TrainConfig,
) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: the
    :data:`RESUME_FIELDS` of ``config``, the module's class, architecture settings and
    parameter shapes, and the data (numbers of cells, genes and perturbations; short
    hashes of the training and validation cell indices, library sizes, dosage matrix
    and gene names). Plain Python values, computed once per :func:`fit`."""
    from bioreason.config import Config
    from bioreason.stage import digest

    fingerprint: dict[str, Any] = {name: getattr(config, name) for name in RESUME_FIELDS}
    fingerprint["module.class"] = type(module).__name__
    architecture = getattr(module, "config", None)
    if isinstance(architecture, Config):
        for name, value in architecture.to_dict().items():
            fingerprint[f"module.{name}"] = value
    for name in ("n_genes", "n_perturbations", "n_categories"):
        if isinstance(getattr(module, name, None), int):
            fingerprint[f"module.{name}"] = getattr(module, name)
    shapes = [f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items()]
    fingerprint["module.parameter_shapes"] = digest(np.asarray(shapes, dtype=object))
    validation = np.asarray([] if validation_indices is None else validation_indices)
    dosage = data.dosage
    fingerprint.update(
        {
            "data.n_cells": int(data.n_cells),
            "data.n_genes": int(data.n_genes),
            "data.n_perturbations": int(data.n_perturbations),
            "data.n_train_cells": int(np.asarray(train_indices).size),
            "data.train_cells": digest(np.asarray(train_indices, dtype=np.int64)),
            "data.n_validation_cells": int(validation.size),
            "data.validation_cells": digest(validation.astype(np.int64)),
            "data.library_sizes": digest(np.asarray(data.library_size, dtype=np.float32)),
            "data.dosage": digest(dosage.indptr, dosage.indices, dosage.data),
            "data.genes": digest(np.asarray(list(map(str, data.gene_names)), dtype=object)),
        }
    )
    return fingerprint


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Torch, Python and NumPy random states as tensors and plain values (loadable with
    ``weights_only=True``)."""
    # Pyro's RNG state includes the legacy global NumPy stream; a resumed run restores it
    name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_checkpoint(path: Path, fingerprint: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against this run; errors name the file."""
    from bioreason.stage import describe_differences, safe_torch_load

    fresh = (
        "Delete it to start over, or pass resume=False with another checkpoint_dir to start "
        "a new run."
    )
    state = safe_torch_load(path, fresh)
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is damaged or was not written by this version of bioreason's training "
            f"(no {_CHECKPOINT_FORMAT!r} header). {fresh}"
        )
    if state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} was written by another version of bioreason (checkpoint version "
            f"{state.get('version')}, this one reads {_CHECKPOINT_VERSION}). {fresh}"
        )
    differences = describe_differences(state.get("fingerprint", {}), fingerprint)
    if differences:
        raise ValueError(
            f"{path} was written by a different run and cannot be resumed; what differs "
            f"(checkpoint -> now): {'; '.join(differences)}. Resume with the same settings, "
            "model and data, or pass resume=False with another checkpoint_dir to start a "
            "new run."
        )
    if state["step"] > total_steps:
        raise ValueError(
            f"{path} is at step {state['step']}, beyond this run's {total_steps} steps "
            f"(max_steps={total_steps}); pass max_steps={state['step']} or more to resume it"
        )
    return state


def fit(
    module: nn.Module,
    data,
    train_indices: np.ndarray,
    validation_indices: np.ndarray | None,
    categories: torch.Tensor,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Train ``module`` on ``data`` (a :class:`~bioreason.data.PerturbationData`).

    Parameters
    ----------
    module : PerturbationVAEModule (already on ``device``)
    data : PerturbationData
    train_indices, validation_indices : int arrays of cell indices
    categories : Tensor, shape (n_cells,), int64
        Per-cell category (used by SVAE+; zeros otherwise), on the device.
    config : TrainConfig
    checkpoint_dir : path, optional
        Where ``checkpoint.pt`` is written every ``config.checkpoint_every`` steps
        (default :data:`DEFAULT_CHECKPOINT_EVERY`) and when training ends. A fresh run
        (``resume=False``) refuses a folder that already holds a checkpoint.
    resume : bool
        Continue from ``checkpoint_dir/checkpoint.pt``. The folder must exist (a missing
        one raises, naming it); an existing folder without a checkpoint starts a new run
        and logs a warning that says so. A checkpoint written with other
        :data:`RESUME_FIELDS`, another module architecture or other data (see
        :func:`run_fingerprint`) is refused, naming what differs.

    Returns
    -------
    DataFrame with columns ``step, epoch, train_loss, validation_loss`` (nats per cell;
    ``train_loss`` is the minibatch estimate of the training set's negative ELBO divided
    by its number of cells, so it includes the global latents' KL / n_train;
    ``validation_loss`` is the per-cell negative ELBO of the validation cells given
    global latents drawn from the guide, NaN between evaluations).
    """
    from bioreason._device import resolve_device

    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    pyro.set_rng_seed(config.seed)
    loader = MinibatchLoader(
        data, train_indices, batch_size=config.batch_size, seed=config.seed, device=device
    )
    val_loader = None
    if validation_indices is not None and len(validation_indices) > 0:
        val_loader = MinibatchLoader(
            data,
            validation_indices,
            batch_size=max(config.batch_size, 1024),
            shuffle=False,
            device=device,
        )
    steps_per_epoch = len(loader)
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        epochs = config.max_epochs or min(400, max(1, round(20_000 / loader.n_cells * 400)))
        total_steps = epochs * steps_per_epoch
    eval_every = config.eval_every or max(_MIN_EVAL_EVERY, steps_per_epoch)
    engine = ENGINES[config.engine](module, config)
    n_total = loader.n_cells

    rows: list[dict[str, float]] = []
    step = 0
    best = (math.inf, None)
    since_best = 0
    checkpoint = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if config.checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs a checkpoint directory (checkpoint_dir=...)")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint_dir= naming the folder of a checkpoint")
    checkpoint_every = config.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
    fingerprint: dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        folder = checkpoint.parent
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"checkpoint_dir {folder} is a file, not a folder")
        if resume and not folder.exists():
            raise ValueError(
                f"resume=True but the checkpoint folder {folder} does not exist; check the "
                "path, or pass resume=False to start a new run there"
            )
        if not resume and checkpoint.exists():
            raise ValueError(
                f"{checkpoint} holds the checkpoint of an earlier run, which a new run would "
                "overwrite; pass resume=True to continue it, or choose another checkpoint_dir"
            )
        fingerprint = run_fingerprint(module, data, train_indices, validation_indices, config)
        if resume and checkpoint.exists():
            state = _read_checkpoint(checkpoint, fingerprint, total_steps)
        elif resume:
            _logger.warning(
                "resume=True: no checkpoint in %s yet, so training starts from step 0", folder
            )
    skip = 0
    if state is not None:
        try:
            module.load_state_dict(state["module"])
            engine.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"{checkpoint} is damaged or was not written by this version of bioreason: "
                f"its weights do not fit the model ({type(err).__name__}). Delete it to start "
                "over, or pass resume=False with another checkpoint_dir."
            ) from None
        step, rows, since_best = state["step"], list(state["history"]), state["since_best"]
        best = (state["best_loss"], state["best_state"])
        loader.epoch, skip = state["epoch"], state["batch_in_epoch"]
        _set_rng_state(state["rng"], device)

    bar = tqdm(total=total_steps, initial=step, disable=not config.progress, desc="training")
    # a run that stopped early stays stopped when it is resumed
    stop = config.early_stopping and since_best >= config.patience
    while step < total_steps and not stop:
        epoch = loader.epoch
        for position, batch in enumerate(loader, start=1):
            if skip:
                skip -= 1  # resuming inside an epoch: replay its order, skip done batches
                continue
            args = batch_arguments(batch, categories, n_total)
            loss = engine.step(*args)
            if not math.isfinite(loss):
                bad = diagnose_nonfinite(module, args)
                bar.close()
                raise TrainingDivergedError(
                    f"the loss became {loss} at step {step + 1} (epoch {epoch}); non-finite "
                    f"terms: {bad or ['none found on a fresh draw: an unlucky sample']}. "
                    f"Try a lower learning rate (lr={config.lr}), gradient clipping "
                    f"(grad_clip={config.grad_clip}), fewer latent dimensions, or check the "
                    "counts (raw integer counts, no all-zero cells)."
                )
            step += 1
            row = {
                "step": step,
                "epoch": epoch,
                "train_loss": loss / n_total,
                "validation_loss": np.nan,
            }
            if val_loader is not None and (step % eval_every == 0 or step == total_steps):
                module.eval()
                val = evaluate_loss(module, val_loader, categories, config.validation_particles)
                module.train()
                row["validation_loss"] = val
                if val < best[0] - config.min_delta:
                    best = (val, {k: v.detach().clone() for k, v in module.state_dict().items()})
                    since_best = 0
                else:
                    since_best += 1
                    if config.early_stopping and since_best >= config.patience:
                        stop = True
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.2f}")
            if checkpoint is not None and (
                step % checkpoint_every == 0 or stop or step >= total_steps
            ):
                _save_checkpoint(
                    checkpoint,
                    {
                        "format": _CHECKPOINT_FORMAT,
                        "version": _CHECKPOINT_VERSION,
                        "fingerprint": fingerprint,
                        "module": module.state_dict(),
                        "optimizer": engine.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "batch_in_epoch": position,
                        "history": rows,
                        "since_best": since_best,
                        "best_loss": best[0],
                        "best_state": best[1],
                        "rng": _rng_state(device),
                    },
                )
            if stop or step >= total_steps:
                break
    bar.close()
    if config.early_stopping and best[1] is not None:
        module.load_state_dict(best[1])
    return pd.DataFrame(rows, columns=["step", "epoch", "train_loss", "validation_loss"])
