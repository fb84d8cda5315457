"""Data-parallel training under ``accelerate launch`` (several GPUs, or CPU processes).

Each process builds the same model (same seed), reads a disjoint share of every epoch's
minibatches (batch ``step * world_size + rank`` of one shared permutation) and computes
the minibatch ELBO scaled to the full training set; ``accelerate`` wraps
:class:`~bioreason.models.objectives.ELBOLoss` in DistributedDataParallel, which averages
the gradients, so all processes take the same optimizer step and stay in sync.

    accelerate launch --multi_gpu --num_processes 4 my_training_script.py

(on a machine without GPUs the same command starts CPU processes that talk over gloo).

where the script calls :func:`train_data_parallel` instead of ``model.train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from torch import nn

from bioreason.data import MinibatchLoader
from bioreason.models.objectives import ELBOLoss, batch_arguments
from bioreason.models.training import TrainingDivergedError


def train_data_parallel(
    model: Any,
    max_steps: int,
    batch_size: int = 512,
    lr: float = 1e-3,
    n_particles: int = 5,
    grad_clip: float | None = 10.0,
    seed: int = 0,
    cpu: bool = False,
) -> pd.DataFrame:
    """Train ``model`` (a :class:`~bioreason.models.PerturbationModel`) on all its cells
    with one process per device. Returns the loss history of this process (train loss
    in nats per cell); every process ends with identical parameters.

    Parameters
    ----------
    model : PerturbationModel
    max_steps : optimizer steps (each process handles one minibatch per step)
    batch_size, lr, n_particles, grad_clip : as in ``model.train``
    seed : the same on every process; particle noise is seeded ``seed + rank``
    cpu : force CPU processes (``accelerate launch --cpu``)
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    model.to_device(accelerator.device)
    data = model.data_for(None)
    categories = model.categories_for(data)
    observed = np.asarray(data.dosage.getnnz(axis=0) > 0)
    model.module.perturbation_observed.copy_(torch.as_tensor(observed))
    loss_module = ELBOLoss(model.module, n_particles)
    optimizer = torch.optim.Adam(model.module.parameters(), lr=lr)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    torch.manual_seed(seed + rank)
    pyro.set_rng_seed(seed + rank)
    loader = MinibatchLoader(
        data, batch_size=batch_size, seed=seed, device=accelerator.device, drop_last=True
    )
    if len(loader) < world:
        raise ValueError(
            f"{len(loader)} minibatches per epoch for {world} processes: use a smaller batch_size"
        )
    rows = []
    step = 0
    n_total = loader.n_cells
    while step < max_steps:
        epoch = loader.epoch
        order = np.random.default_rng([seed, epoch]).permutation(loader.indices)
        loader.epoch += 1
        n_rounds = len(loader) // world
        for round_ in range(n_rounds):
            batch_index = round_ * world + rank
            rows_ = order[batch_index * batch_size : (batch_index + 1) * batch_size]
            args = batch_arguments(loader.batch(rows_), categories, n_total)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_module(*args)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the loss became {float(loss)} at step {step + 1} on process {rank}; "
                    f"try a lower learning rate (lr={lr})"
                )
            accelerator.backward(loss)
            if grad_clip is not None:
                accelerator.clip_grad_norm_(model.module.parameters(), grad_clip)
            optimizer.step()
            step += 1
            rows.append(
                {"step": step, "epoch": epoch, "train_loss": float(loss.detach()) / n_total}
            )
            if step >= max_steps:
                break
    accelerator.wait_for_everyone()
    model.module = accelerator.unwrap_model(loss_module).module
    model.is_trained = True
    model.history = pd.DataFrame(rows)
    return model.history


def parameter_checksum(module: nn.Module) -> float:
    """Sum of all parameters in float64: equal across processes that stay in sync."""
    return float(sum(p.detach().double().sum() for p in module.parameters()))
