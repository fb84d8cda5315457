"""What every RL trainer shares: the base config and the training loop.

:class:`RLConfig` holds the settings every trainer has (estimator, group size, steps,
optimizer, reward, policy loss, checkpoints, logs, seed); a trainer's own config
subclasses it (:class:`bioreason.rl.trainer.TabularRLConfig`). :func:`run_training_loop`
drives any object with the small :class:`LoopTrainer` protocol: it resumes from a
checkpoint, shows a progress bar, appends a log row every ``log_every`` steps, writes a
CSV log and a checkpoint every ``checkpoint_every`` steps (atomically), and returns
timing figures.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from bioreason.config import Config
from bioreason.rl.advantages import get_advantage
from bioreason.rl.losses import POLICY_LOSSES
from bioreason.rl.rewards import SCORING_RULES

__all__ = ["LoopTrainer", "RLConfig", "run_training_loop", "write_csv_log"]


@dataclasses.dataclass
class RLConfig(Config):
    """Settings every RL trainer shares (defaults: Bereket & Leskovec 2025, GRPO).

    Parameters
    ----------
    method : str, default ``"grpo"``
        Advantage estimator, a method name of
        :data:`bioreason.rl.advantages.ADVANTAGES` (``grpo``, ``rloo``,
        ``h_target:log``, ``seed_grpo:base=grpo`` ...; see
        :func:`bioreason.rl.advantages.parse_method`).
    advantage_options : dict, default ``{}``
        Extra options for the estimator (e.g. ``{"ddof": 0}`` for GRPO).
    group_size : int, default 10
        Rollouts per question per step.
    steps : int, default 50_000
        Optimizer steps (with ``updates_per_rollout = u``, ``steps / u`` rollouts).
    updates_per_rollout : int, default 1
        1 is online; more reuses each rollout under the policy loss's importance ratio.
    policy_loss : str, default ``"clipped"``
        Policy loss, a name of :data:`bioreason.rl.losses.POLICY_LOSSES`.
    clip_eps : float or None, default None
        Clipping of the importance ratio; None disables it.
    lr : float, default 3e-3
        AdamW learning rate of the policy.
    weight_decay : float, default 0.01
        AdamW weight decay (torch's default).
    betas : tuple of float, default (0.9, 0.999)
        AdamW betas.
    reward : str, default ``"log"``
        Scoring rule, a name of :data:`bioreason.rl.rewards.SCORING_RULES`.
    entropy_coef : float, default 0.0
        Weight of the entropy bonus.
    kl_coef : float, default 0.0
        Weight of the KL(pi || initial policy) penalty.
    checkpoint_every : int, default 5_000
        Steps between checkpoints (rounded to whole rollouts).
    log_every : int, default 1_000
        Steps between log rows.
    seed : int, default 0
        Seed of the rollouts.
    """

    method: str = "grpo"
    advantage_options: dict = dataclasses.field(default_factory=dict)
    group_size: int = 10
    steps: int = 50_000
    updates_per_rollout: int = 1
    policy_loss: str = "clipped"
    clip_eps: float | None = None
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    reward: str = "log"
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    checkpoint_every: int = 5_000
    log_every: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        get_advantage(self.method, **self.advantage_options)  # validates name and options
        if self.reward not in SCORING_RULES:
            raise ValueError(f"reward must be one of {sorted(SCORING_RULES)}, got {self.reward!r}")
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(
                f"policy_loss must be one of {sorted(POLICY_LOSSES)}, got {self.policy_loss!r}"
            )
        for name in ("group_size", "steps", "updates_per_rollout", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clip_eps is not None and self.clip_eps <= 0:
            raise ValueError(f"clip_eps must be > 0 or None, got {self.clip_eps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class LoopTrainer(Protocol):
    """What :func:`run_training_loop` needs from a trainer."""

    config: RLConfig
    step: int

    def train_step(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def diagnostics(self) -> dict[str, float]: ...


def write_csv_log(path: Path, rows: list[dict[str, float]]) -> None:
    """Write log rows (dicts with the same keys) to ``path`` as CSV, atomically."""
    from bioreason._io import atomic_write_text

    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), buffer.getvalue())


def run_training_loop(
    trainer: LoopTrainer,
    *,
    checkpoint_path: Path | None = None,
    log_path: Path | None = None,
    extra_log: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
    description: str | None = None,
) -> dict[str, float]:
    """Run ``trainer.train_step()`` until ``trainer.config.steps``, resuming when a
    checkpoint exists.

    Parameters
    ----------
    trainer : LoopTrainer
        Its ``state_dict()`` must hold everything a resumed run needs; the loop adds
        the log rows written so far.
    checkpoint_path : Path, optional
        Read at the start when it exists; written every ``checkpoint_every`` steps
        (rounded down to a multiple of ``updates_per_rollout``, so a checkpoint never
        splits a rollout) and removed by nobody: the caller decides.
    log_path : Path, optional
        CSV log: a row at step 0, every ``log_every`` steps and at the end, with
        ``trainer.diagnostics()`` and ``extra_log()``.
    progress : bool
        Show a tqdm progress bar.
    description : str, optional
        The bar's label (default: the method).

    Returns
    -------
    dict
        ``seconds``, ``steps_run`` and ``steps_per_second`` of this call.
    """
    from tqdm.auto import tqdm

    from bioreason._io import atomic_path

    config = trainer.config
    log_rows: list[dict[str, float]] = []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = torch.load(checkpoint_path, weights_only=False)
        trainer.load_state_dict(state)
        log_rows = state.get("log_rows", [])
    every = max(config.updates_per_rollout, config.checkpoint_every)
    every -= every % config.updates_per_rollout

    def log() -> None:
        row = trainer.diagnostics()
        if extra_log is not None:
            row.update(extra_log())
        log_rows.append(row)

    start_step = trainer.step
    start = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=trainer.step,
        disable=not progress,
        desc=description or config.method,
        mininterval=2.0,
    )
    if trainer.step == 0:
        log()
    while trainer.step < config.steps:
        trainer.train_step()
        bar.update(1)
        if trainer.step % config.log_every == 0 or trainer.step == config.steps:
            log()
        if checkpoint_path is not None and (
            trainer.step % every == 0 and trainer.step < config.steps
        ):
            state = trainer.state_dict() | {"log_rows": log_rows}
            with atomic_path(checkpoint_path) as tmp:
                torch.save(state, tmp)
            if log_path is not None:
                write_csv_log(log_path, log_rows)
    bar.close()
    if log_path is not None:
        write_csv_log(log_path, log_rows)
    elapsed = time.perf_counter() - start
    steps_run = trainer.step - start_step
    return {
        "seconds": elapsed,
        "steps_run": steps_run,
        "steps_per_second": steps_run / elapsed if elapsed > 0 else math.nan,
    }
