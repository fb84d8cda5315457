"""Deterministic train/val/test splits of a perturbation screen."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bioreason.data.labels import canonical_conditions
from bioreason.data.perturbation import PerturbationData
from bioreason.registry import Registry

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Index arrays of the three parts (sorted cell indices).

    Attributes
    ----------
    train, val, test : ndarray of int64
    heldout_conditions : tuple of str
        Conditions whose cells are all in ``test`` (empty for random splits).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    heldout_conditions: tuple[str, ...] = ()

    def labels(self, n_cells: int) -> np.ndarray:
        """``"train"``/``"val"``/``"test"`` per cell, shape (n_cells,)."""
        out = np.full(n_cells, "", dtype=object)
        for name in SPLIT_NAMES:
            out[getattr(self, name)] = name
        return out

    @property
    def n_cells(self) -> int:
        """Number of cells the split covers (train + val + test)."""
        return int(self.train.size + self.val.size + self.test.size)

    def write(self, adata: Any, key: str = "split") -> None:
        """Store the split in ``adata.obs[key]`` (categorical).

        ``adata`` must hold the cells the split was made from, in the same order.
        """
        import pandas as pd

        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty obs column name, got {key!r}")
        if adata.n_obs != self.n_cells:
            raise ValueError(
                f"the split covers {self.n_cells} cells but adata has {adata.n_obs}; write it "
                "into the AnnData the split's PerturbationData was parsed from"
            )
        adata.obs[key] = pd.Categorical(self.labels(adata.n_obs), categories=list(SPLIT_NAMES))

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; use one of {SPLIT_NAMES}")
        return getattr(self, name)


def _check_number(name: str, value: object) -> float:
    """``value`` as a float, or a TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def _check_data(data: object, where: str) -> None:
    if not isinstance(data, PerturbationData):
        raise TypeError(
            f"{where}: data must be a PerturbationData, got {type(data).__name__}; parse an "
            "AnnData with PerturbationData.from_anndata(adata) first"
        )


def _check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= _check_number(name, value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be below 1 so that train is not empty")


def _partition(cells: np.ndarray, fractions: Sequence[float], rng: np.random.Generator):
    """Shuffle ``cells`` and cut them into consecutive parts of the given fractions."""
    cells = rng.permutation(cells)
    cuts = np.rint(np.cumsum(fractions)[:-1] * cells.size).astype(int)
    return np.split(cells, cuts)


def _make(train, val, test, heldout=()) -> Split:
    if len(train) == 0:
        raise ValueError(
            f"the split leaves no cell in train ({len(val)} in val, {len(test)} in test); "
            "lower val_fraction / test_fraction, or hold out fewer conditions"
        )
    return Split(
        train=np.sort(np.asarray(train, np.int64)),
        val=np.sort(np.asarray(val, np.int64)),
        test=np.sort(np.asarray(test, np.int64)),
        heldout_conditions=tuple(heldout),
    )


def split_random(
    data: PerturbationData, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Random split by cell.

    Raises a ``ValueError`` for fractions outside [0, 1), fractions that sum to 1 or
    more, or too few cells to leave one in train.
    """
    _check_data(data, "split_random")
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(_check_seed(seed))
    train, val, test = _partition(
        np.arange(data.n_cells),
        [1 - val_fraction - test_fraction, val_fraction, test_fraction],
        rng,
    )
    return _make(train, val, test)


def _choose_conditions(
    candidates: list[str],
    heldout: Sequence[str] | None,
    fraction: float | None,
    rng: np.random.Generator,
    what: str,
    allow_all: bool = True,
) -> list[str]:
    if heldout is not None:
        if isinstance(heldout, (str, bytes)) or not isinstance(heldout, Iterable):
            raise TypeError(
                f"heldout must be a list of condition labels, got {heldout!r}; "
                f"for one, pass [{heldout!r}]"
            )
        chosen = sorted({str(name) for name in heldout})
        if not chosen:
            raise ValueError(
                f"heldout is empty: name the {what} to hold out, or pass heldout=None and "
                "a fraction"
            )
        unknown = sorted(set(chosen) - set(candidates))
        if unknown:
            raise ValueError(
                f"cannot hold out {unknown[:10]}: not {what} of this data set "
                f"(it has {sorted(candidates)[:10]}{' ...' if len(candidates) > 10 else ''})"
            )
    else:
        if fraction is not None:
            _check_number("fraction", fraction)
        if fraction is None or not 0.0 < fraction < 1.0:
            raise ValueError(
                f"pass heldout= names or a fraction in (0, 1), got fraction={fraction}"
            )
        if not candidates:
            raise ValueError(f"the data set has no {what} to hold out")
        n_heldout = max(1, int(round(fraction * len(candidates))))
        chosen = sorted(rng.choice(np.asarray(candidates, dtype=object), n_heldout, replace=False))
    if not allow_all and len(chosen) == len(candidates):
        raise ValueError(
            f"this split holds out all {len(candidates)} {what}, which leaves none to train "
            "on; lower fraction or name fewer in heldout="
        )
    return chosen


def _heldout_split(
    data: PerturbationData, test_mask: np.ndarray, val_fraction: float, rng, heldout
) -> Split:
    rest = np.flatnonzero(~test_mask)
    train, val = _partition(rest, [1 - val_fraction, val_fraction], rng)
    if len(train) and data.dosage.nnz and not data.dosage[np.sort(train)].nnz:
        # e.g. B is measured only inside A+B and A is held out: train has controls only
        raise ValueError(
            f"the split leaves no perturbed cell in train (held out: {list(heldout)[:10]}); "
            "every perturbed cell is held out or in val. Hold out fewer conditions, lower "
            "val_fraction, or try another seed"
        )
    return _make(train, val, np.flatnonzero(test_mask), heldout)


def split_heldout_combinations(
    data: PerturbationData,
    *,
    fraction: float | None = 0.25,
    heldout: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out whole combinations (conditions of two or more perturbations) for test.

    Every single perturbation and control cell, and the remaining combinations, are
    split at random into train and val: the out-of-distribution task of SAMS-VAE.
    ``fraction`` of the combinations (rounded, at least one) are drawn at random unless
    ``heldout`` names them.

    Parameters
    ----------
    data : PerturbationData
    fraction : float or None
        Share of the combinations drawn at random, in (0, 1); unused with ``heldout``.
    heldout : list of str, optional
        The combinations to hold out, their parts in any order (``"SET+KLF1"`` is the
        condition ``"KLF1+SET"``); :attr:`Split.heldout_conditions` keeps the spelling
        given (sorted).
    val_fraction : float
        Share of the other cells in validation.
    seed : int

    Returns
    -------
    Split
        ``heldout_conditions``: the held-out combinations, as named in ``heldout`` or,
        when drawn, canonically (parts sorted).

    Warns
    -----
    UserWarning
        When a held-out combination has a part that is never measured alone (no cell
        carries it as a single perturbation): a model can only guess that part's effect
        from the combinations that contain it, or from its prior. The warning names the
        combinations and the parts; :func:`composable_combinations` draws only
        combinations whose parts are all measured alone.
    """
    return _split_heldout_combinations(data, fraction, heldout, val_fraction, seed, warn=True)


def _split_heldout_combinations(
    data: PerturbationData,
    fraction: float | None,
    heldout: Sequence[str] | None,
    val_fraction: float,
    seed: int,
    warn: bool,
) -> Split:
    """:func:`split_heldout_combinations`; ``warn``: warn about parts never measured
    alone (the Norman reference split holds such combinations out on purpose)."""
    _check_data(data, "split_heldout_combinations")
    _check_fractions(val_fraction)
    rng = np.random.default_rng(_check_seed(seed))
    table = data.condition_table()
    combinations = table.index[table["n_perturbations"] >= 2].tolist()
    shown: dict[str, str] = {}
    if heldout is not None:
        asked = _heldout_labels(heldout)
        canonical = canonical_conditions(
            asked, control=data.setup.control, delimiter=data.setup.delimiter, where="heldout"
        )
        for label, condition in zip(asked, canonical):
            shown.setdefault(condition, label)
        unknown = [shown[c] for c in shown if c not in set(combinations)]
        if unknown:
            raise ValueError(
                f"cannot hold out {unknown[:10]}: not combinations of this data set (it has "
                f"{sorted(combinations)[:10]}{' ...' if len(combinations) > 10 else ''}; the "
                "parts of a combination may be written in any order)"
            )
        heldout = list(shown)
    chosen = _choose_conditions(combinations, heldout, fraction, rng, "combinations")
    if warn:
        _warn_parts_never_alone(data, chosen, shown)
    test_mask = np.isin(data.cell_condition, chosen)
    names = sorted(shown.get(c, c) for c in chosen)
    return _heldout_split(data, test_mask, val_fraction, rng, names)


def _heldout_labels(heldout: object) -> list[str]:
    """``heldout`` as a list of labels, or a TypeError naming the argument."""
    if isinstance(heldout, (str, bytes)) or not isinstance(heldout, Iterable):
        raise TypeError(
            f"heldout must be a list of condition labels, got {heldout!r}; "
            f"for one, pass [{heldout!r}]"
        )
    labels = list(heldout)
    if not labels:
        raise ValueError(
            "heldout is empty: name the combinations to hold out, or pass heldout=None and "
            "a fraction"
        )
    return [str(label) for label in labels]


def parts_never_alone(data: PerturbationData, conditions: Sequence[str]) -> dict[str, list[str]]:
    """The parts of each condition that no cell of ``data`` carries alone.

    Parameters
    ----------
    data : PerturbationData
    conditions : list of str
        Canonical condition labels of ``data`` (e.g. a split's held-out combinations).

    Returns
    -------
    dict of str to list of str
        Condition -> its perturbations without single-perturbation cells, for the
        conditions that have any (an empty dict when every part is measured alone).
    """
    table = data.condition_table()
    singles = set(table.index[table["n_perturbations"] == 1])
    delimiter = data.setup.delimiter
    out: dict[str, list[str]] = {}
    for condition in conditions:
        unseen = [p for p in str(condition).split(delimiter) if p not in singles]
        if unseen:
            out[str(condition)] = unseen
    return out


def _warn_parts_never_alone(
    data: PerturbationData, chosen: Sequence[str], shown: dict[str, str]
) -> None:
    unseen = parts_never_alone(data, chosen)
    if not unseen:
        return
    listed = "; ".join(
        f"{shown.get(c, c)} ({', '.join(parts)})" for c, parts in sorted(unseen.items())
    )
    warnings.warn(
        f"{len(unseen)} of the {len(chosen)} held-out combinations have parts that are never "
        f"measured alone: {listed}. A model sees those parts only inside combinations (or "
        "not at all once they are held out), so its predictions for them come from its prior "
        "rather than from composing measured effects. To test composition, hold out only "
        "combinations whose parts are all measured alone: "
        "heldout = bioreason.data.composable_combinations(data, fraction=...), then "
        "split_heldout_combinations(data, heldout=heldout).",
        UserWarning,
        stacklevel=4,  # the caller of split_heldout_combinations
    )


def composable_combinations(
    data: PerturbationData, *, fraction: float = 0.25, seed: int = 0
) -> list[str]:
    """Draw combinations to hold out among those whose every part is measured alone.

    A combination of perturbations that never appear alone cannot be predicted by an
    additive model from its parts, so an out-of-distribution test of composition should
    hold out only combinations whose parts all have single-perturbation cells. The
    number drawn is ``fraction`` of *all* combinations (rounded, at least one); in the
    Norman 2019 subset 5 of the 15 combinations qualify and 25 % draws 4 of them.
    Use with :func:`split_heldout_combinations`::

        heldout = composable_combinations(data, fraction=0.25, seed=0)
        split = split_heldout_combinations(data, heldout=heldout, seed=0)

    Parameters
    ----------
    data : PerturbationData
    fraction : float
        Share of all combinations to hold out, in (0, 1].
    seed : int
        Seeds the draw (``numpy.random.default_rng(seed)``).

    Returns
    -------
    list of str
        Sorted canonical condition labels.

    Raises
    ------
    ValueError
        When fewer combinations are composable than are asked for.
    """
    _check_data(data, "composable_combinations")
    if not 0.0 < _check_number("fraction", fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    seed = _check_seed(seed)
    table = data.condition_table()
    combinations = table.index[table["n_perturbations"] >= 2].tolist()
    if not combinations:
        raise ValueError("the data set has no combinations to hold out")
    singles = set(table.index[table["n_perturbations"] == 1])
    delimiter = data.setup.delimiter
    eligible = sorted(c for c in combinations if all(p in singles for p in c.split(delimiter)))
    n_heldout = max(1, round(fraction * len(combinations)))
    if len(eligible) < n_heldout:
        raise ValueError(
            f"only {len(eligible)} of {len(combinations)} combinations have every part "
            f"measured alone ({eligible}); cannot hold out {n_heldout}. Lower fraction."
        )
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, n_heldout, replace=False).tolist())


#: The held-out combinations of the SAMS-VAE reference evaluation on the Norman 2019
#: subset. CBL and TBX3 appear only inside CBL+CNN1 and SGK1+TBX3, so a model evaluated
#: on this split must know every perturbation name, not only those of its training cells.
NORMAN_REFERENCE_HELDOUT: tuple[str, ...] = (
    "CBL+CNN1",
    "MAP2K3+SLC38A2",
    "MAPK1+TGFBR2",
    "SGK1+TBX3",
)


def split_norman_reference(
    data: PerturbationData,
    *,
    heldout: Sequence[str] = NORMAN_REFERENCE_HELDOUT,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """The reference split of the Norman 2019 subset: named combinations held out.

    Every cell of the ``heldout`` combinations is in ``test``; all other cells (controls,
    singles, the other combinations) are split at random, ``1 - val_fraction`` to train
    and ``val_fraction`` to validation (90/10 by default).

    Parameters
    ----------
    data : PerturbationData
        Must hold every condition in ``heldout`` (else a ``ValueError`` names them).
    heldout : list of str
        Combination labels; default :data:`NORMAN_REFERENCE_HELDOUT`.
    val_fraction : float
    seed : int

    Returns
    -------
    Split
        ``heldout_conditions`` lists the held-out combinations.

    Unlike :func:`split_heldout_combinations` it does not warn that CBL and TBX3 are
    never measured alone: the reference evaluation holds them out on purpose.
    """
    return _split_heldout_combinations(data, None, list(heldout), val_fraction, seed, warn=False)


def split_heldout_perturbations(
    data: PerturbationData,
    *,
    fraction: float | None = 0.2,
    heldout: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out single perturbations: every cell that carries one of them goes to test.

    ``fraction`` of the perturbations (rounded, at least one) are drawn at random unless
    ``heldout`` names them; holding out every perturbation is an error (nothing would be
    left to train on).
    """
    _check_data(data, "split_heldout_perturbations")
    _check_fractions(val_fraction)
    rng = np.random.default_rng(_check_seed(seed))
    chosen = _choose_conditions(
        list(data.perturbation_names), heldout, fraction, rng, "perturbations", allow_all=False
    )
    columns = [data.perturbation_names.index(name) for name in chosen]
    test_mask = np.asarray(data.dosage[:, columns].getnnz(axis=1) > 0)
    return _heldout_split(data, test_mask, val_fraction, rng, chosen)


def split_data_efficiency(
    data: PerturbationData,
    *,
    combination_train_fraction: float = 0.1,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Only a fraction of each combination's cells in train; the other combination
    cells are the test set. Singles and controls are split into train and val."""
    _check_data(data, "split_data_efficiency")
    _check_fractions(val_fraction)
    if not 0.0 <= _check_number("combination_train_fraction", combination_train_fraction) < 1.0:
        raise ValueError(
            f"combination_train_fraction must be in [0, 1), got {combination_train_fraction}"
        )
    rng = np.random.default_rng(_check_seed(seed))
    is_combination = data.n_perturbations_per_cell >= 2
    if not is_combination.any():
        raise ValueError("the data set has no combination cells")
    train, test = [], []
    for code in np.unique(data.condition_codes[is_combination]):
        cells = np.flatnonzero(data.condition_codes == code)
        part_train, part_test = _partition(
            cells, [combination_train_fraction, 1 - combination_train_fraction], rng
        )
        train.append(part_train)
        test.append(part_test)
    rest_train, val = _partition(
        np.flatnonzero(~is_combination), [1 - val_fraction, val_fraction], rng
    )
    return _make(np.concatenate([rest_train, *train]), val, np.concatenate(test))


#: split kind -> ``f(data, **options) -> Split``
SPLITS: Registry[Callable[..., Split]] = Registry("split kind")
SPLITS.register("random", split_random)
SPLITS.register("heldout_combinations", split_heldout_combinations)
SPLITS.register("heldout_perturbations", split_heldout_perturbations)
SPLITS.register("data_efficiency", split_data_efficiency)
SPLITS.register("norman_reference", split_norman_reference)


def make_split(
    data: PerturbationData, kind: str = "random", *, adata: Any = None, key: str = "split", **kwargs
) -> Split:
    """Build a split by registry name and optionally write it to ``adata.obs[key]``.

    An option the split kind does not take raises a ``TypeError`` that lists those it
    does.
    """
    function = SPLITS.get(kind)
    try:
        inspect.signature(function).bind(data, **kwargs)
    except TypeError as err:
        options = [
            name
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        raise TypeError(f"make_split({kind!r}): {err}; its options are {options}") from None
    split = function(data, **kwargs)
    if adata is not None:
        split.write(adata, key)
    return split
