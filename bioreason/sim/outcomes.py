"""Outcome definitions: the binary question a simulated experiment answers.

Every outcome is registered in :data:`OUTCOMES` and built with its options
(``OUTCOMES["screen_hit"](threshold=0.1)``). An outcome knows two things:

* :meth:`Outcome.replicate` -- the event itself, evaluated on one simulated replicate
  experiment (scores of ``n_cells`` perturbed and ``n_control`` control cells): the
  brute-force definition, always available;
* :meth:`Outcome.probability_given_globals` -- ``P(outcome = 1 | globals)`` computed
  from a larger sample of cells simulated under one draw of the global latents, without
  simulating replicates (the fast path; ``None`` where no such formula exists).

Thresholds are part of the question and fixed when a task is built, so the simulator's
p*, the sampled outcomes and any ground truth all refer to the same event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import special, stats

from bioreason.registry import Registry

__all__ = [
    "OUTCOMES",
    "CellExpression",
    "CustomOutcome",
    "Direction",
    "Outcome",
    "ScreenHit",
    "make_outcome",
    "register_outcome",
]

OUTCOMES: Registry[type[Outcome] | Callable[..., Outcome]] = Registry("outcome")


def _moments(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased variance over the cell axis (-2) of scores (..., cells, R)."""
    n = scores.shape[-2]
    mean = scores.mean(axis=-2, dtype=np.float64)
    var = scores.var(axis=-2, ddof=1, dtype=np.float64) if n > 1 else np.zeros_like(mean)
    return mean, var


def _normal_tail(difference: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """P(N(difference, scale^2) > 0) with a step function where scale is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        smooth = special.ndtr(difference / scale)
    return np.where(scale > 0, smooth, (difference > 0).astype(np.float64))


def _per_readout(
    value: float | Mapping[str, float] | None, readouts: Sequence[str], what: str
) -> np.ndarray:
    if isinstance(value, Mapping):
        missing = [r for r in readouts if r not in value]
        if missing:
            raise ValueError(f"{what} has no value for readout(s) {missing[:5]}")
        out = np.asarray([float(value[r]) for r in readouts])
    else:
        if value is None:
            raise ValueError(f"{what} is not set")
        out = np.full(len(readouts), float(value))
    if not np.isfinite(out).all():
        raise ValueError(f"{what} must be finite")
    return out


def _check_number(value: object, option: str, outcome: str) -> float:
    """``value`` as a float, or a TypeError naming the outcome's option (a string such as
    ``"abc"`` or ``"0.1"`` from a config is not read as a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{outcome}: {option} must be a number, got {value!r} ({type(value).__name__})"
        )
    return float(value)


def _check_threshold(value: object, outcome: str) -> None:
    """A threshold is None, a number, or a mapping readout -> number."""
    if value is None:
        return
    if isinstance(value, Mapping):
        for readout, number in value.items():
            _check_number(number, f"threshold[{readout!r}]", outcome)
        return
    _check_number(value, "threshold", outcome)


@dataclass
class Outcome:
    """Base class. Subclasses are dataclasses whose fields are the outcome's options.

    Attributes
    ----------
    n_cells : int
        Perturbed cells in a replicate experiment.
    n_control : int or None
        Control cells in a replicate (None: same as ``n_cells``; 0 when unused).
    """

    name: ClassVar[str] = ""
    question: ClassVar[str] = ""
    uses_control: ClassVar[bool] = True
    uses_readout: ClassVar[bool] = True

    n_cells: int = 100
    n_control: int | None = None

    def __post_init__(self) -> None:
        for label in ("n_cells", "n_control"):
            value = getattr(self, label)
            if label == "n_control" and value is None:
                continue
            smallest = 0 if label == "n_control" and not self.uses_control else 1
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < smallest
            ):
                raise ValueError(
                    f"{self.name}: {label} must be an integer >= {smallest}, got {value!r}"
                )
        if self.n_control is None:
            self.n_control = self.n_cells if self.uses_control else 0

    # ------------------------------------------------------------ description
    def options(self) -> dict[str, Any]:
        """The options that define the event (JSON-serializable)."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def to_json(self) -> str:
        """``{"name": ..., **options}`` as a JSON string (stored in task tables)."""
        return json.dumps({"name": self.name, **self.options()}, sort_keys=True)

    def describe(self, condition_text: str, readout: str) -> str:
        """The question in plain words, for one condition and readout."""
        return self.question.format(condition=condition_text, readout=readout, **self.options())

    # -------------------------------------------------------------- the event
    def needs_thresholds(self) -> bool:
        return False

    def with_thresholds(self, thresholds: Mapping[str, float]) -> Outcome:
        return self

    def replicate(
        self,
        perturbed: np.ndarray,
        control: np.ndarray,
        readouts: Sequence[str],
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The event on replicate experiments.

        Parameters
        ----------
        perturbed : ndarray, shape (..., n_cells, R) -- perturbed cells' readout scores
        control : ndarray, shape (..., n_control, R), broadcastable to perturbed's leading dims
        readouts : the R readout names (for per-readout thresholds)
        rng : numpy Generator, optional
            Draws what varies between replicate experiments beyond their cells
            (``ScreenHit.replicate_sd``); needed only by outcomes that have such a term.

        Returns
        -------
        ndarray of bool, shape (..., R)
        """
        raise NotImplementedError

    def probability_given_globals(
        self,
        perturbed: np.ndarray,
        control: np.ndarray,
        readouts: Sequence[str],
        paired: bool = False,
    ) -> np.ndarray | None:
        """``P(outcome = 1 | globals)`` from cells simulated under one global draw.

        Parameters
        ----------
        perturbed : ndarray, shape (..., m, R) with m >= 2 * n_cells (m >= n_cells when
            paired)
        control : ndarray, shape (..., m_c, R) with m_c >= 2 * n_control
        paired : bool
            Cell ``i`` of ``perturbed`` and of ``control`` are the same basal cell under
            two conditions (counterfactual generation, ``m == m_c``): the mean difference
            is then estimated from the paired differences, with a much smaller variance.

        Returns
        -------
        ndarray, shape (..., R), or None when the outcome has no fast path.
        """
        return None


def _check_choice(name: str, value: str, choices: tuple[str, ...], owner: str) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")


@dataclass
class ScreenHit(Outcome):
    """Does the condition shift the readout's score in a replicate screen?

    A replicate measures ``n_cells`` perturbed and ``n_control`` control cells; D is the
    difference of their mean readout scores. With ``test="threshold"`` the event is
    ``|D| > threshold`` (``direction="either"``), ``D > threshold`` (``"up"``) or
    ``D < -threshold`` (``"down"``); with ``test="welch"`` it is a Welch t-test of the
    two groups' scores at level ``alpha`` (two-sided for ``"either"``, one-sided
    otherwise). ``threshold`` is a number or a mapping readout -> number.

    ``replicate_sd`` (default 0) is the sd of a shift of D shared by all cells of one
    replicate experiment: what varies between experiments beyond their cells (batch,
    day, guide efficiency). Each replicate's D gets an independent N(0, replicate_sd^2)
    shift; the fast path adds replicate_sd^2 to D's variance. Without it, a replicate's
    only noise is its cells', and p* of a clear effect is nearly 0 or 1 -- more extreme
    than replicate screens agree with one another.
    """

    name: ClassVar[str] = "screen_hit"
    question: ClassVar[str] = (
        "In a replicate experiment, does {condition} shift the score of {readout} away "
        "from control cells by more than the screen's threshold?"
    )

    threshold: float | dict[str, float] | None = 0.1
    test: str = "threshold"
    direction: str = "either"
    alpha: float = 0.05
    replicate_sd: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self.replicate_sd, "replicate_sd", self.name)
        if not (math.isfinite(float(self.replicate_sd)) and self.replicate_sd >= 0):
            raise ValueError(
                f"screen_hit: replicate_sd must be >= 0 and finite, got {self.replicate_sd}"
            )
        _check_choice("test", self.test, ("threshold", "welch"), self.name)
        _check_choice("direction", self.direction, ("either", "up", "down"), self.name)
        _check_number(self.alpha, "alpha", self.name)
        _check_threshold(self.threshold, self.name)
        if self.test == "welch" and (self.n_cells < 2 or self.n_control < 2):
            raise ValueError(
                f"screen_hit: test='welch' needs at least 2 perturbed and 2 control cells per "
                f"replicate (a t-test estimates each group's variance), got n_cells="
                f"{self.n_cells}, n_control={self.n_control}; raise n_cells/n_control or use "
                "test='threshold'"
            )
        if not 0 < self.alpha < 1:
            raise ValueError(f"screen_hit: alpha must be in (0, 1), got {self.alpha}")
        if self.test == "threshold" and self.threshold is not None:
            values = (
                self.threshold.values() if isinstance(self.threshold, Mapping) else [self.threshold]
            )
            if any(not math.isfinite(float(v)) or float(v) < 0 for v in values):
                raise ValueError(
                    "screen_hit: threshold is a magnitude (>= 0); set direction='down' "
                    f"for decreases, got {self.threshold!r}"
                )

    def describe(self, condition_text: str, readout: str) -> str:
        if self.test == "welch":
            side = {"either": "change", "up": "raise", "down": "lower"}[self.direction]
            return (
                f"In a replicate experiment with {self.n_cells} perturbed and {self.n_control} "
                f"control cells, does {condition_text} significantly {side} the score of "
                f"{readout} (Welch t-test, level {self.alpha:g})?"
            )
        size = (
            f"by more than {self.threshold:g}"
            if not isinstance(self.threshold, Mapping)
            else f"by more than {self.threshold.get(readout, float('nan')):.3g}"
        )
        verb = {"either": "shift", "up": "raise", "down": "lower"}[self.direction]
        return (
            f"In a replicate experiment with {self.n_cells} perturbed and {self.n_control} "
            f"control cells, does {condition_text} {verb} the mean log-normalized score of "
            f"{readout} {size}?"
        )

    def needs_thresholds(self) -> bool:
        return self.test == "threshold" and self.threshold is None

    def with_thresholds(self, thresholds: Mapping[str, float]) -> ScreenHit:
        return ScreenHit(**{**self.options(), "threshold": dict(thresholds)})

    def _event(self, difference, scale_of_d, m_scale, readouts, df=None):
        """Shared by the brute-force and the fast path.

        ``scale_of_d``: standard deviation of D in a replicate; ``m_scale``: the scale of
        the Gaussian smoothing (0 in a replicate, where D is observed exactly).
        """
        if self.test == "threshold":
            cut = _per_readout(self.threshold, readouts, "screen_hit threshold")
        else:
            quantile = 1 - self.alpha / 2 if self.direction == "either" else 1 - self.alpha
            cut = stats.t.ppf(quantile, df) * scale_of_d
        up = _normal_tail(difference - cut, m_scale)
        down = _normal_tail(-difference - cut, m_scale)
        if self.direction == "up":
            return up
        if self.direction == "down":
            return down
        return up + down

    def replicate(self, perturbed, control, readouts, rng=None):
        mean_p, var_p = _moments(perturbed)
        mean_c, var_c = _moments(control)
        n_p, n_c = perturbed.shape[-2], control.shape[-2]
        var_d = var_p / n_p + var_c / n_c
        df = _welch_df(var_p, var_c, n_p, n_c)
        zero = np.zeros_like(var_d)
        difference = mean_p - mean_c
        if self.replicate_sd > 0:
            if rng is None:
                raise ValueError("screen_hit with replicate_sd > 0 needs an rng for replicates")
            difference = difference + rng.normal(0.0, self.replicate_sd, size=difference.shape)
        return self._event(difference, np.sqrt(var_d), zero, readouts, df) > 0.5

    def probability_given_globals(self, perturbed, control, readouts, paired=False):
        n_p, n_c = self.n_cells, self.n_control
        if not _enough_cells(perturbed, control, n_p, n_c, paired):
            return None
        mean_p, var_p = _moments(perturbed)
        mean_c, var_c = _moments(control)
        # D in a replicate ~ N(mu, s^2) with s^2 = var_p/n + var_c/n_c (CLT). The estimate
        # mu_hat from m cells is ~ N(mu, v) with v = var_p/m + var_c/m_c (independent
        # cells) or var(perturbed - control)/m (paired cells), and
        # E[Phi((mu_hat - t) / sqrt(s^2 - v))] = Phi((mu - t) / s): an unbiased estimate of
        # P(D > t | globals) without simulating replicates.
        var_d = var_p / n_p + var_c / n_c
        smoothing = np.sqrt(
            np.maximum(var_d - _estimate_variance(perturbed, control, var_p, var_c, paired), 0)
            + self.replicate_sd**2
        )
        df = _welch_df(var_p, var_c, n_p, n_c)
        return self._event(mean_p - mean_c, np.sqrt(var_d), smoothing, readouts, df)


def _enough_cells(perturbed, control, n_p: int, n_c: int, paired: bool) -> bool:
    """Whether the fast path's smoothing has room: v <= s^2 needs m >= 2n for independent
    cells and m >= n for paired ones (whose difference variance is at most var_p + var_c
    when the pair's scores are not negatively correlated)."""
    m_p, m_c = perturbed.shape[-2], control.shape[-2]
    if paired:
        if m_p != m_c:
            raise ValueError(
                f"paired cells need as many control as perturbed cells: {m_c} vs {m_p}"
            )
        return m_p >= max(n_p, n_c)
    return m_p >= 2 * n_p and m_c >= 2 * n_c


def _estimate_variance(perturbed, control, var_p, var_c, paired: bool) -> np.ndarray:
    """Variance of the estimated mean difference of scores (perturbed - control)."""
    m_p, m_c = perturbed.shape[-2], control.shape[-2]
    if not paired:
        return var_p / m_p + var_c / m_c
    difference = perturbed.astype(np.float64) - control
    return difference.var(axis=-2, ddof=1) / m_p


def _welch_df(var_p, var_c, n_p, n_c):
    a, b = var_p / n_p, var_c / n_c
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (a + b) ** 2 / (a**2 / max(n_p - 1, 1) + b**2 / max(n_c - 1, 1))
    return np.where(np.isfinite(df), df, float(n_p + n_c - 2))


@dataclass
class Direction(Outcome):
    """Does the condition raise the readout's mean log-normalized expression above control
    in a replicate experiment (``n_cells`` perturbed vs ``n_control`` control cells)?"""

    name: ClassVar[str] = "direction"
    question: ClassVar[str] = (
        "In a replicate experiment, does {condition} raise the mean expression of {readout} "
        "above control cells?"
    )

    def describe(self, condition_text: str, readout: str) -> str:
        return (
            f"In a replicate experiment with {self.n_cells} perturbed and {self.n_control} "
            f"control cells, does {condition_text} raise the mean log-normalized expression "
            f"of {readout} above the control cells'?"
        )

    def replicate(self, perturbed, control, readouts, rng=None):
        return perturbed.mean(axis=-2) - control.mean(axis=-2) > 0

    def probability_given_globals(self, perturbed, control, readouts, paired=False):
        if not _enough_cells(perturbed, control, self.n_cells, self.n_control, paired):
            return None
        mean_p, var_p = _moments(perturbed)
        mean_c, var_c = _moments(control)
        var_d = var_p / self.n_cells + var_c / self.n_control
        smoothing = np.sqrt(
            np.maximum(var_d - _estimate_variance(perturbed, control, var_p, var_c, paired), 0)
        )
        return _normal_tail(mean_p - mean_c, smoothing)


@dataclass
class CellExpression(Outcome):
    """In one randomly drawn perturbed cell, is the readout's log-normalized expression
    above ``threshold``? The threshold defaults to the median over the observed control
    cells, fixed when the task is built (a number or a mapping readout -> number)."""

    name: ClassVar[str] = "cell_expression"
    question: ClassVar[str] = (
        "In one randomly chosen cell with {condition}, is {readout} expressed above threshold?"
    )
    uses_control: ClassVar[bool] = False

    n_cells: int = 1
    threshold: float | dict[str, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_cells != 1:
            raise ValueError("cell_expression asks about one cell: n_cells must be 1")
        _check_threshold(self.threshold, self.name)

    def describe(self, condition_text: str, readout: str) -> str:
        value = (
            self.threshold.get(readout, float("nan"))
            if isinstance(self.threshold, Mapping)
            else self.threshold
        )
        level = "the control cells' median" if value is None else f"{value:.3g}"
        return (
            f"In one randomly chosen cell with {condition_text}, is the log-normalized "
            f"expression of {readout} above {level}?"
        )

    def needs_thresholds(self) -> bool:
        return self.threshold is None

    def with_thresholds(self, thresholds: Mapping[str, float]) -> CellExpression:
        return CellExpression(**{**self.options(), "threshold": dict(thresholds)})

    def replicate(self, perturbed, control, readouts, rng=None):
        cut = _per_readout(self.threshold, readouts, "cell_expression threshold")
        return perturbed[..., 0, :] > cut

    def probability_given_globals(self, perturbed, control, readouts, paired=False):
        cut = _per_readout(self.threshold, readouts, "cell_expression threshold")
        return (perturbed > cut).mean(axis=-2, dtype=np.float64)


@dataclass
class CustomOutcome(Outcome):
    """A user's event: ``function(perturbed_counts, control_counts) -> bool``.

    ``perturbed_counts`` has shape (..., n_cells, G) and ``control_counts``
    (..., n_control, G); the function returns a boolean array of shape (...): one answer
    per replicate. Questions of a custom outcome have no readout (use ``""``).
    """

    name: ClassVar[str] = "custom"
    uses_readout: ClassVar[bool] = False
    function: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(
        default=None, repr=False
    )
    registered_as: str = "custom"
    text: str = "Does {condition} have the outcome?"

    def options(self) -> dict[str, Any]:
        return {
            "n_cells": self.n_cells,
            "n_control": self.n_control,
            "registered_as": self.registered_as,
            "text": self.text,
        }

    def to_json(self) -> str:
        return json.dumps({"name": self.registered_as, **self.options()}, sort_keys=True)

    def describe(self, condition_text: str, readout: str) -> str:
        return self.text.format(condition=condition_text, readout=readout)

    def replicate_counts(self, perturbed: np.ndarray, control: np.ndarray) -> np.ndarray:
        if self.function is None:
            raise ValueError(f"custom outcome {self.registered_as!r} has no function")
        result = np.asarray(self.function(perturbed, control))
        expected = perturbed.shape[:-2]
        if result.shape != expected:
            raise ValueError(
                f"custom outcome {self.registered_as!r} returned shape {result.shape}; it must "
                f"return one boolean per replicate, shape {expected}"
            )
        if result.dtype == bool:
            return result
        values = result.astype(np.float64) if result.dtype.kind in "iuf" else None
        if values is None or not (np.isin(values, (0.0, 1.0))).all():
            if values is None:
                bad = f"values of type {result.dtype}"
            else:
                odd = values[~np.isin(values, (0.0, 1.0))]
                bad = f"{odd.size} value(s) that are not true/false, e.g. {odd.flat[0]!r}"
            raise ValueError(
                f"custom outcome {self.registered_as!r} returned {bad}; it must return one "
                "boolean per replicate (True/False or 1/0, no NaN): a probability or a score "
                "is not an outcome -- compare it with a threshold inside the function"
            )
        return values.astype(bool)


OUTCOMES.register("screen_hit", ScreenHit, fast=True)
OUTCOMES.register("direction", Direction, fast=True)
OUTCOMES.register("cell_expression", CellExpression, fast=True)


def register_outcome(
    name: str,
    function: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    n_cells: int = 100,
    n_control: int | None = None,
    question: str = "Does {condition} have the outcome?",
    overwrite: bool = False,
) -> None:
    """Register a custom outcome under ``name``.

    ``function(perturbed_counts, control_counts)`` receives simulated raw counts of
    shape (..., n_cells, G) and (..., n_control, G) and returns a boolean per replicate,
    shape (...). It is evaluated by brute force (replicates simulated from the posterior
    predictive). ``question`` is the prompt text, with ``{condition}`` filled in.
    """
    if not callable(function):
        raise TypeError(f"register_outcome needs a callable, got {type(function).__name__}")

    def build(**options: Any) -> CustomOutcome:
        options = {"n_cells": n_cells, "n_control": n_control, **options}
        options.pop("registered_as", None)
        options.pop("text", None)
        return CustomOutcome(function=function, registered_as=name, text=question, **options)

    OUTCOMES.register(name, build, fast=False, overwrite=overwrite, custom=True)


def make_outcome(outcome: str | Outcome | Mapping[str, Any], **options: Any) -> Outcome:
    """An :class:`Outcome` from a registered name and options, a JSON-like mapping
    (``{"name": "screen_hit", "threshold": 0.2}``) or an outcome (returned as is)."""
    if isinstance(outcome, Outcome):
        if options:
            raise ValueError("options are given twice: pass either an Outcome or a name")
        return outcome
    if isinstance(outcome, Mapping):
        options = {**{k: v for k, v in outcome.items() if k != "name"}, **options}
        outcome = str(outcome["name"])
    factory = OUTCOMES.get(outcome)
    try:
        return factory(**options)
    except TypeError as err:
        raise ValueError(f"bad options for outcome {outcome!r}: {err}") from None
