"""What every RL trainer shares: the base config and the training loop.

:class:`RLConfig` holds the settings every trainer has (estimator, group size, steps,
optimizer, reward, policy loss, checkpoints, logs, seed); a trainer's own config
subclasses it (:class:`bioreason.rl.tabular.TabularRLConfig`). :func:`run_training_loop`
drives any object with the small :class:`LoopTrainer` protocol: it resumes from a
checkpoint, shows a progress bar, appends a log row every ``log_every`` steps, writes a
CSV log (and TensorBoard scalars when installed) and a checkpoint every
``checkpoint_every`` steps (atomically, :func:`save_checkpoint`), and returns
timing figures.

Checkpoints are read with ``torch.load(..., weights_only=True)`` (tensors and plain
values only, so a file from elsewhere cannot run code); one that cannot be read that way
is reported as damaged or from another version, naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from bioreason.config import Config
from bioreason.rl.advantages import get_advantage
from bioreason.rl.losses import POLICY_LOSSES
from bioreason.rl.rewards import SCORING_RULES

__all__ = ["LoopTrainer", "RLConfig", "run_training_loop", "save_checkpoint", "write_csv_log"]

#: tag of the checkpoints written by :func:`run_training_loop`
_CHECKPOINT_FORMAT = "bioreason.rl.checkpoint"
_CHECKPOINT_VERSION = 1

_logger = logging.getLogger(__name__)


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
        Weight of the KL(pi || initial policy) penalty (>= 0).
    checkpoint_every : int, default 5_000
        Steps between checkpoints (rounded to whole rollouts).
    log_every : int, default 1_000
        Steps between log rows.
    seed : int, default 0
        Seed of the rollouts.
    tensorboard : bool or None, default None
        Also write the log rows as TensorBoard scalars (in ``tb/`` beside the CSV log):
        None when ``tensorboard`` is installed, True always (an error when it is not),
        False never.
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
    tensorboard: bool | None = None

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
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef}")
        if self.tensorboard not in (None, True, False):
            raise ValueError(
                f"tensorboard must be true, false or null (auto), got {self.tensorboard!r}"
            )


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


def save_checkpoint(
    trainer: LoopTrainer, path: str | Path, log_rows: list[dict[str, float]]
) -> Path:
    """Write ``trainer``'s state and the log rows so far as a checkpoint that
    :func:`run_training_loop` resumes from (atomically: an interrupted write leaves the
    previous file).

    Parameters
    ----------
    trainer : LoopTrainer
        Its ``state_dict()`` is saved.
    path : str or Path
        The checkpoint file (replaced when it exists).
    log_rows : list of dict
        The training log rows up to ``trainer.step`` (a resumed run continues them).

    Returns
    -------
    Path
        The written file.
    """
    from bioreason._io import atomic_path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {path} is a folder; name the file inside it")
    state = {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "trainer": trainer.state_dict(),
        "log_rows": [dict(row) for row in log_rows],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


class _TensorBoardLog:
    """Log rows as TensorBoard scalars under ``folder`` (nothing when disabled)."""

    def __init__(self, folder: Path | None, setting: bool | None) -> None:
        self.writer = None
        if folder is None or setting is False:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is an optional dependency
            if setting:
                raise ImportError(
                    "tensorboard=True but TensorBoard is not installed (pip install "
                    f"tensorboard), or set tensorboard to null/false: {err}"
                ) from err
            _logger.info("tensorboard not installed; logging to CSV only")
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key == "step" or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The trainer state and log rows of the checkpoint at ``path`` (weights only)."""
    fresh = "Delete it to start over, or pass another checkpoint_path to start a new run."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError:
        # torch reports bytes that are not a pickle and a pickle of arbitrary objects alike
        reason = (
            "it is not a torch file of tensors and plain values (damaged bytes, or Python "
            "objects, which are never unpickled because that could run code)"
        )
        state = None
    except Exception:  # noqa: BLE001 - torch raises RuntimeError/EOFError/OSError for damage
        reason = "it could not be read (truncated, empty, or not a torch file)"
        state = None
    if state is None:
        raise ValueError(
            f"{path} is damaged or was not written by this version of bioreason: {reason}. {fresh}"
        )
    if isinstance(state, dict) and state.get("format") == _CHECKPOINT_FORMAT:
        if state.get("version") != _CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} was written by another version of bioreason (checkpoint version "
                f"{state.get('version')}, this one reads {_CHECKPOINT_VERSION}). {fresh}"
            )
        return state["trainer"], list(state.get("log_rows", []))
    if isinstance(state, dict) and "step" in state:  # a bare trainer.state_dict()
        return state, list(state.get("log_rows", []))
    raise ValueError(
        f"{path} is damaged or was not written by this version of bioreason (no trainer "
        f"state in it). {fresh}"
    )


def run_training_loop(
    trainer: LoopTrainer,
    *,
    checkpoint_path: Path | None = None,
    log_path: Path | None = None,
    extra_log: Callable[[], dict[str, float]] | None = None,
    progress: bool = True,
    description: str | None = None,
    resume: bool | str = "auto",
    main_process: bool = True,
    tensorboard_dir: Path | None = None,
    callback: Callable[..., None] | None = None,
    log_rows: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Run ``trainer.train_step()`` until ``trainer.config.steps``, resuming from a
    checkpoint.

    Parameters
    ----------
    trainer : LoopTrainer
        Its ``state_dict()`` must hold everything a resumed run needs (and its
        ``load_state_dict`` refuses a state of another run, naming what differs); the
        loop adds the log rows written so far.
    checkpoint_path : Path, optional
        Read at the start (see ``resume``); written every ``checkpoint_every`` steps
        (rounded down to a multiple of ``updates_per_rollout``, so a checkpoint never
        splits a rollout) and removed by nobody: the caller decides.
    resume : True, False or "auto", default "auto"
        ``"auto"``: continue from ``checkpoint_path`` when it exists, else start a new
        run. ``True``: the checkpoint must exist (a missing one raises, naming the path).
        ``False``: start a new run; an existing checkpoint raises rather than being
        overwritten.
    log_path : Path, optional
        CSV log: a row at step 0, every ``log_every`` steps and at the end, with
        ``trainer.diagnostics()`` and ``extra_log()``.
    progress : bool
        Show a tqdm progress bar.
    description : str, optional
        The bar's label (default: the method).
    main_process : bool, default True
        False on the other processes of a multi-process run: they read the checkpoint
        but write nothing (no checkpoint, log or TensorBoard) and show no progress.
    tensorboard_dir : Path, optional
        Folder of the TensorBoard event files (default: ``tb`` beside ``log_path``);
        written when ``trainer.config.tensorboard`` is not False and TensorBoard is
        installed (see :class:`RLConfig`).
    callback : callable, optional
        ``callback(event, *args)`` at the loop's fixed points (main process only):
        ``"on_train_begin"`` (after a resumed checkpoint is loaded), ``"on_step"``
        (``trainer.diagnostics()``) after every step, ``"on_log"`` (the row) after every
        log row, ``"on_save"`` (the path) after every checkpoint, ``"on_train_end"``.
    log_rows : list, optional
        Extended in place with the log rows (replaced by a resumed run's checkpoint
        rows first), for a trainer that keeps its history in memory.

    Notes
    -----
    A trainer whose ``should_stop`` attribute becomes True (a callback sets it) stops
    after that step: the step is logged and, when it is not the last, checkpointed, and
    a later call continues from the checkpoint.

    Returns
    -------
    dict
        ``seconds``, ``steps_run`` and ``steps_per_second`` of this call, and
        ``stopped_early`` (True when ``should_stop`` ended it before ``config.steps``).
    """
    from tqdm.auto import tqdm

    config = trainer.config
    if log_rows is None:
        log_rows = []
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if checkpoint_path is None and resume is True:
        raise ValueError("resume=True needs checkpoint_path= naming the checkpoint file")
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        if checkpoint_path.is_dir():
            raise ValueError(
                f"checkpoint_path {checkpoint_path} is a folder; name the file, e.g. "
                f"{checkpoint_path / 'checkpoint.pt'}"
            )
        exists = checkpoint_path.exists()
        if resume is True and not exists:
            where = (
                f" (nor does its folder {checkpoint_path.parent})"
                if not checkpoint_path.parent.exists()
                else ""
            )
            raise ValueError(
                f"resume=True but the checkpoint {checkpoint_path} does not exist{where}; "
                "check the path, or pass resume='auto' or False to start a new run"
            )
        if resume is False and exists:
            raise ValueError(
                f"{checkpoint_path} holds the checkpoint of an earlier run, which a new run "
                "would overwrite; pass resume=True to continue it, or choose another "
                "checkpoint_path"
            )
        if exists:
            state, saved_rows = _read_checkpoint(checkpoint_path)
            log_rows[:] = saved_rows
            try:
                trainer.load_state_dict(state)
            except ValueError as err:
                raise ValueError(f"{checkpoint_path}: {err}") from None
            except (KeyError, RuntimeError, TypeError) as err:
                raise ValueError(
                    f"{checkpoint_path} is damaged or was not written by this version of "
                    f"bioreason: its state does not fit the trainer ({type(err).__name__}: "
                    f"{err}). Delete it to start over, or pass another checkpoint_path."
                ) from None
            _logger.info("resumed from %s at step %d", checkpoint_path, trainer.step)
    every = max(config.updates_per_rollout, config.checkpoint_every)
    every -= every % config.updates_per_rollout
    if tensorboard_dir is None and log_path is not None:
        tensorboard_dir = Path(log_path).parent / "tb"
    board = _TensorBoardLog(
        tensorboard_dir if main_process else None, getattr(config, "tensorboard", None)
    )
    if not main_process:
        log_path = None

    def event(name: str, *args: Any) -> None:
        if callback is not None and main_process:
            callback(name, *args)

    def log() -> None:
        row = trainer.diagnostics()
        if extra_log is not None:
            row.update(extra_log())
        log_rows.append(row)
        board.write(row, trainer.step)
        event("on_log", row)

    start_step = trainer.step
    start = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=trainer.step,
        disable=not (progress and main_process),
        desc=description or config.method,
        mininterval=2.0,
    )
    stopped = False
    event("on_train_begin")
    if trainer.step == 0:
        log()
    while trainer.step < config.steps:
        trainer.train_step()
        bar.update(1)
        if progress and main_process:
            bar.set_postfix(_progress_figures(trainer.diagnostics()), refresh=False)
        event("on_step", trainer.diagnostics())
        stopped = bool(getattr(trainer, "should_stop", False)) and trainer.step < config.steps
        if trainer.step % config.log_every == 0 or trainer.step == config.steps or stopped:
            log()
        if (
            checkpoint_path is not None
            and main_process
            and (trainer.step % every == 0 or stopped)
            and trainer.step < config.steps
        ):
            save_checkpoint(trainer, checkpoint_path, log_rows)
            if log_path is not None:
                write_csv_log(log_path, log_rows)
            event("on_save", checkpoint_path)
        if stopped:
            break
    bar.close()
    board.close()
    if log_path is not None:
        write_csv_log(log_path, log_rows)
    elapsed = time.perf_counter() - start
    steps_run = trainer.step - start_step
    event("on_train_end")
    return {
        "seconds": elapsed,
        "steps_run": steps_run,
        "steps_per_second": steps_run / elapsed if elapsed > 0 else math.nan,
        "stopped_early": stopped,
    }


def _progress_figures(diagnostics: dict[str, Any]) -> dict[str, str]:
    """The progress bar's figures: the last step's mean reward (and KL when finite)."""
    shown = {}
    for key in ("reward_mean", "kl"):
        value = diagnostics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            shown[key] = f"{value:.4g}"
    return shown
