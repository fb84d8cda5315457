"""Several processes (GPUs, or CPU processes over gloo) for :class:`bioreason.rl.LMTrainer`.

The same script runs alone or under ``accelerate launch`` (or ``torchrun``)::

    accelerate launch --num_processes 4 -m bioreason.cli finetune --task task.parquet ...

Data parallelism by question: every process builds the same trainer (weights are
broadcast from process 0), draws the same globally seeded question order, and takes a
disjoint contiguous slice of each step's ``questions_per_step`` questions, so a
question's group of ``group_size`` completions lives on one process and group statistics
are exact. What makes a run with P processes compute the single-process step:

* **outcomes** are drawn for the whole batch with the shared seed and sliced;
* **advantages** are computed on the rewards of the whole batch (gathered), so estimators
  with batch-level statistics (``grpo_batch_std``) are exact too;
* **the loss** of each process is weighted by its share of the global aggregation
  (:func:`shard_loss_weights`: for ``token_mean`` its tokens over all tokens), and the
  gradients are summed over processes (:func:`sum_gradients`), which gives the gradient
  of the global batch's loss; clipping and the AdamW step then agree on every process;
* **sampling noise** with ``sampling_noise="question"`` comes from one generator per
  question seeded from (seed, step, position in the batch), so P processes sample the
  same completions as one (at one sampling pass per question). The default ``"batch"``
  draws one generator per process and step (one pass; the completions then depend on
  how the batch is split, not their distribution).

Only process 0 writes checkpoints, logs and predictions, shows progress and evaluates.
FSDP is not supported yet: the gradients are summed by hand, which needs whole
parameters on every process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bioreason.rl.lm.rollout import GroupRollout, PromptBatch
from bioreason.rl.losses import aggregate

__all__ = [
    "ProcessGroup",
    "batch_estimator",
    "current_process_group",
    "question_generators",
    "sample_each_question",
    "shard_bounds",
    "shard_loss_weights",
    "sum_gradients",
]


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the processes of a run.

    Attributes
    ----------
    rank : int
        This process's index (0 is the main process).
    world_size : int
        Number of processes.
    comm_device : torch.device
        Device of the tensors handed to collectives (CUDA under NCCL, else CPU).
    """

    rank: int = 0
    world_size: int = 1
    comm_device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes files and evaluates."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (nothing to do alone)."""
        if self.distributed:
            torch.distributed.barrier()


def current_process_group(device: torch.device | None = None) -> ProcessGroup:
    """The processes of this run: torch.distributed's group when initialised, else one
    started by ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1 in the
    environment; initialised here through accelerate), else this process alone.

    Parameters
    ----------
    device : torch.device, optional
        The training device; CPU processes talk over gloo.

    Returns
    -------
    ProcessGroup
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        raise NotImplementedError(
            "LMTrainer runs data-parallel (DDP-like) under accelerate, not FSDP: its "
            "gradients are summed over processes by hand, which needs whole parameters on "
            "every process; choose distributed_type MULTI_GPU (or MULTI_CPU) in the "
            "accelerate config"
        )
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return ProcessGroup()
        from accelerate import PartialState

        PartialState(cpu=device is not None and device.type != "cuda")
        if not dist.is_initialized():
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate did not start a "
                "process group; launch with 'accelerate launch --num_processes N' or torchrun"
            )
    backend = dist.get_backend()
    comm = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), comm_device=comm)


def process_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """``device`` for this process: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` when
    several processes share a machine.

    Returns
    -------
    torch.device
    """
    if group.distributed and device.type == "cuda" and device.index is None:
        index = int(os.environ.get("LOCAL_RANK", group.rank)) % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def shard_bounds(n_questions: int, group: ProcessGroup) -> tuple[int, int]:
    """This process's slice ``[start, stop)`` of a batch of ``n_questions`` questions.

    Returns
    -------
    tuple of int
        ``(start, stop)``, contiguous and of equal length on every process.

    Raises
    ------
    ValueError
        When ``n_questions`` is not a multiple of the number of processes.
    """
    if n_questions % group.world_size:
        raise ValueError(
            f"questions_per_step={n_questions} must be a multiple of the number of "
            f"processes ({group.world_size}) so that every process gets whole question "
            "groups of the same count"
        )
    share = n_questions // group.world_size
    return group.rank * share, (group.rank + 1) * share


def _to_comm(tensor: Tensor, group: ProcessGroup) -> Tensor:
    return tensor.detach().to(group.comm_device).contiguous()


def all_gather_rows(tensor: Tensor, group: ProcessGroup) -> Tensor:
    """Every process's ``tensor`` (same shape everywhere) stacked along dim 0, in rank
    order, on ``tensor``'s device.

    Returns
    -------
    Tensor, shape (world_size * tensor.shape[0], ...)
    """
    if not group.distributed:
        return tensor
    local = _to_comm(tensor, group)
    parts = [torch.empty_like(local) for _ in range(group.world_size)]
    torch.distributed.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def all_reduce_sum(tensor: Tensor, group: ProcessGroup) -> Tensor:
    """Sum of ``tensor`` over processes (a new tensor on ``tensor``'s device).

    Returns
    -------
    Tensor, the shape of ``tensor``
    """
    if not group.distributed:
        return tensor
    total = _to_comm(tensor, group).clone()
    torch.distributed.all_reduce(total)
    return total.to(tensor.device)


def shard_loss_weights(
    mask: Tensor,
    width: int,
    aggregation: str,
    constant: float | None,
    group: ProcessGroup,
) -> tuple[float, float]:
    """Weights that turn this process's losses into its share of the global batch's.

    With the weights, the sum over processes of ``weight * aggregate(values_r, mask_r)``
    is ``aggregate(values, mask)`` of the whole batch, for any aggregation linear in the
    values (the same rule as the trainer's micro-batches).

    Parameters
    ----------
    mask : Tensor of bool, shape (n_rollouts, n_tokens)
        This process's completion mask (``n_tokens <= width``).
    width : int
        Longest completion (``max_new_tokens``); masks are padded to it to be gathered.
    aggregation : str
        A name of :data:`bioreason.rl.losses.AGGREGATIONS`.
    constant : float or None
        The aggregation's constant.
    group : ProcessGroup

    Returns
    -------
    tuple of float
        ``(policy_weight, value_weight)``; the value weight is the process's share of
        the tokens (the value loss is a token mean). ``(1.0, 1.0)`` alone.
    """
    if not group.distributed:
        return 1.0, 1.0
    padded = torch.zeros(mask.shape[0], width, dtype=torch.bool, device=mask.device)
    padded[:, : mask.shape[1]] = mask
    everyone = all_gather_rows(padded.to(torch.uint8), group).bool()
    share = len(padded)
    indicator = torch.zeros(everyone.shape, device=mask.device)
    indicator[group.rank * share : (group.rank + 1) * share] = 1.0
    whole = aggregate(indicator, everyone, aggregation, constant)
    own = aggregate(torch.ones(padded.shape, device=mask.device), padded, aggregation, constant)
    policy = float(whole / own) if float(own) != 0 else 0.0
    value = float(mask.sum()) / max(float(everyone.sum()), 1.0)
    return policy, value


def sum_gradients(parameters: Sequence[torch.nn.Parameter], group: ProcessGroup) -> None:
    """Replace each parameter's gradient by its sum over processes (one flat all-reduce).

    A parameter without a gradient on some process counts as zero there; one without a
    gradient on every process keeps ``grad = None`` (so the optimizer skips it, as it
    would in a single process).
    """
    if not group.distributed:
        return
    parameters = list(parameters)
    if not parameters:
        return
    device = parameters[0].device
    has = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32)
    has = all_reduce_sum(has.to(device), group)
    pieces = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
        for p in parameters
    ]
    flat = all_reduce_sum(torch.cat(pieces), group)
    offset = 0
    for parameter, present in zip(parameters, has.tolist()):
        n = parameter.numel()
        if present:
            parameter.grad = flat[offset : offset + n].view_as(parameter).to(parameter.dtype)
        offset += n


def broadcast_module(module: torch.nn.Module, group: ProcessGroup) -> None:
    """Copy process 0's parameters and buffers into every process's ``module``."""
    if not group.distributed:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            data = _to_comm(tensor, group).clone()
            torch.distributed.broadcast(data, src=0)
            tensor.copy_(data.to(tensor.device))


def question_generators(
    seed: int, step: int, positions: Sequence[int], device: torch.device
) -> list[torch.Generator]:
    """One sampling generator per question, seeded from (seed, step, position of the
    question in the global batch), whatever process samples it.

    Returns
    -------
    list of torch.Generator
        On ``device``, in the order of ``positions``.
    """
    generators = []
    for position in positions:
        state = np.random.SeedSequence([int(seed), int(step), int(position), 7919])
        generator = torch.Generator(device=device)
        generator.manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))
        generators.append(generator)
    return generators


def sample_each_question(
    sample: Callable[..., GroupRollout],
    prompts: PromptBatch,
    group_size: int,
    generators: Sequence[torch.Generator],
    *,
    pad_id: int,
    **options: Any,
) -> GroupRollout:
    """Sample a batch question by question, each with its own generator and its prompt
    unpadded, so that its completions do not depend on the other questions of the batch.

    Parameters
    ----------
    sample : callable
        ``sample(prompts, group_size, generator, **options) -> GroupRollout`` (the
        trainer's sampling call).
    prompts : PromptBatch
        n_questions left-padded prompts.
    group_size : int
    generators : sequence of torch.Generator
        One per question.
    pad_id : int
        Token written where a shorter completion is padded.

    Returns
    -------
    GroupRollout
        Rows question by question, padded to the longest completion.
    """
    if len(generators) != prompts.n_questions:
        raise ValueError(
            f"sample_each_question: {len(generators)} generators for "
            f"{prompts.n_questions} questions"
        )
    width = prompts.input_ids.shape[1]
    parts = []
    for i, generator in enumerate(generators):
        length = int(prompts.lengths[i])
        single = PromptBatch(
            prompts.input_ids[i : i + 1, width - length :], None, prompts.lengths[i : i + 1]
        )
        parts.append(sample(single, group_size, generator, **options))
    n_tokens = max(part.tokens.shape[1] for part in parts)

    def pad(tensor: Tensor, value: float) -> Tensor:
        extra = n_tokens - tensor.shape[1]
        if extra == 0:
            return tensor
        shape = (tensor.shape[0], extra, *tensor.shape[2:])
        return torch.cat([tensor, tensor.new_full(shape, value)], 1)

    hidden = None
    if parts[0].hidden is not None:
        hidden = torch.cat([pad(part.hidden, 0.0) for part in parts])
    return GroupRollout(
        tokens=torch.cat([pad(part.tokens, pad_id) for part in parts]),
        mask=torch.cat([pad(part.mask, False) for part in parts]),
        log_probs=torch.cat([pad(part.log_probs, 0.0) for part in parts]),
        entropy=torch.cat([pad(part.entropy, 0.0) for part in parts]),
        hidden=hidden,
    )


class _BatchEstimator:
    """An advantage estimator evaluated on the whole batch's rewards (gathered from every
    process), returning this process's rows; its registry metadata passes through."""

    def __init__(self, estimator: Callable[..., Tensor], group: ProcessGroup) -> None:
        self._estimator = estimator
        self._group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._estimator, name)

    def __call__(self, rewards: Tensor, **kwargs: Tensor) -> Tensor:
        group = self._group
        share = rewards.shape[0]
        gathered = {
            key: all_gather_rows(value, group) if isinstance(value, Tensor) else value
            for key, value in kwargs.items()
        }
        advantages = self._estimator(all_gather_rows(rewards, group), **gathered)
        return advantages[group.rank * share : (group.rank + 1) * share]


def batch_estimator(estimator: Callable[..., Tensor], group: ProcessGroup) -> Callable:
    """``estimator`` made exact under several processes: it sees the rewards (and answers,
    log-probabilities) of the whole batch and returns this process's rows. Estimators
    that take per-token values (PPO) are called per token on each process's own
    completions (their lengths differ between processes), so they stay local; the
    registered ones only combine a completion's return with its own value.

    Returns
    -------
    callable
        ``estimator`` itself alone or for value-based estimators, else a wrapper with
        the same metadata attributes.
    """
    if not group.distributed or getattr(estimator, "requires_values", False):
        return estimator
    return _BatchEstimator(estimator, group)
