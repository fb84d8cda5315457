"""Callbacks of :class:`~bioreason.rl.LMTrainer` (the habit of TRL's ``TrainerCallback``):
code of the user's that runs at fixed points of training and may stop it cleanly.

A callback is an object with any of the methods of :class:`TrainerCallback` (subclass it,
or write a class with only the methods you need: a missing method is skipped). Each
receives the trainer, so it can read ``trainer.step``, ``trainer.log_history``,
``trainer.eval_rows_log`` or call ``trainer.save_model(...)``; none returns anything.
To stop training, a callback sets ``trainer.should_stop = True`` (TRL's
``control.should_training_stop``): the loop finishes the current step, logs it, writes a
checkpoint when it has a checkpoint path, and ``train`` returns with
``stopped_early=True``. A later ``train`` with the same checkpoint continues from there.

Order of the calls in one ``train``: ``on_train_begin`` (after a resumed checkpoint is
loaded), then per step ``on_evaluate`` (when the step evaluates), ``on_step``, ``on_log``
(when the step is logged), ``on_save`` (when a checkpoint is written), and finally
``on_train_end``. Several callbacks are called in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CALLBACK_EVENTS", "StopAfterSteps", "TrainerCallback", "check_callbacks"]

#: the methods a callback may have
CALLBACK_EVENTS = (
    "on_train_begin",
    "on_step",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_train_end",
)


class TrainerCallback:
    """Base class of a callback: every method does nothing; override those you need.

    Methods
    -------
    on_train_begin(trainer)
        Before the first step of a ``train`` call (``trainer.step`` is where it starts:
        0, or a resumed checkpoint's step).
    on_step(trainer, logs)
        After every optimizer step; ``logs`` is ``trainer.diagnostics()`` (``step``,
        ``reward_mean``, ``kl``, ...).
    on_log(trainer, logs)
        After a row of the training log (every ``log_every`` steps and the last): the row
        (diagnostics and the ``extra_log`` figures), also the last row of
        ``trainer.log_history``.
    on_evaluate(trainer, metrics)
        After every evaluation (:meth:`~bioreason.rl.LMTrainer.evaluate`, also one the
        user calls): its row of ``trainer.eval_rows_log``.
    on_save(trainer, path)
        After a checkpoint is written to ``path`` (every ``checkpoint_every`` steps), and
        after :meth:`~bioreason.rl.LMTrainer.save_model` writes the model folder
        ``path``.
    on_train_end(trainer)
        After the last step of a ``train`` call (also one a callback stopped).
    """

    def on_train_begin(self, trainer: Any) -> None:
        """Before the first step of ``train``."""

    def on_step(self, trainer: Any, logs: dict[str, float]) -> None:
        """After every optimizer step."""

    def on_log(self, trainer: Any, logs: dict[str, float]) -> None:
        """After every row of the training log."""

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any]) -> None:
        """After every evaluation."""

    def on_save(self, trainer: Any, path: Path) -> None:
        """After every checkpoint."""

    def on_train_end(self, trainer: Any) -> None:
        """After the last step of ``train``."""


class StopAfterSteps(TrainerCallback):
    """Stop training cleanly once ``trainer.step`` reaches ``steps`` (an example of a
    callback that stops; a later ``train`` with the same checkpoint continues).

    Parameters
    ----------
    steps : int
        The step after which training stops (>= 1).
    """

    def __init__(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"StopAfterSteps: steps must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def on_step(self, trainer: Any, logs: dict[str, float]) -> None:
        if trainer.step >= self.steps:
            trainer.should_stop = True


def check_callbacks(callbacks: Iterable[Any] | Any | None) -> list[Any]:
    """``callbacks`` as a list, each checked to be a callback instance.

    Parameters
    ----------
    callbacks : callback, sequence of callbacks, or None

    Returns
    -------
    list

    Raises
    ------
    TypeError
        An entry is a class (not an instance), or has none of :data:`CALLBACK_EVENTS`.
    """
    if callbacks is None:
        return []
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, (str, bytes)):
        callbacks = [callbacks]
    checked = []
    for callback in callbacks:
        if isinstance(callback, type):
            raise TypeError(
                f"callbacks holds the class {callback.__name__}; pass an instance "
                f"({callback.__name__}())"
            )
        if not any(callable(getattr(callback, event, None)) for event in CALLBACK_EVENTS):
            raise TypeError(
                f"callbacks holds {callback!r}, which has none of the callback methods "
                f"{list(CALLBACK_EVENTS)}; subclass bioreason.rl.lm.TrainerCallback"
            )
        checked.append(callback)
    return checked


def fire(callbacks: Sequence[Any], event: str, trainer: Any, *args: Any) -> None:
    """Call ``event`` on every callback that has it, in order."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(trainer, *args)
