"""Method names to estimators: options carried in the name, bound and checked."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

from bioreason.rl.advantages._base import ADVANTAGES
from bioreason.rl.advantages._h_target import H_TARGETS, resolve_target


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """Split a method name into the registry name and the options it carries.

    ``"grpo"`` -> ``("grpo", {})``; ``"seed_grpo:base=grpo,alpha=0.5"`` ->
    ``("seed_grpo", {"base": "grpo", "alpha": 0.5})``; ``"h_target:log"`` ->
    ``("h_target", {"target": "log"})`` (a bare part is h_target's target). Values are
    read as bool, int or float where they parse as one, else kept as strings.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a method name must be a non-empty string, got {name!r}")
    base, _, suffix = name.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, suffix.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            if base != "h_target":
                raise ValueError(
                    f"only h_target takes a ':<target>' suffix, got {name!r}; "
                    "give other options as ':key=value'"
                )
            key, value = "target", part
        options[key.strip()] = _option_value(value.strip()) if sep else value
    return base, options


def get_advantage(name: str, **options: Any) -> Callable[..., Tensor]:
    """Look up an estimator by method name, binding ``options``.

    The name may carry options (:func:`parse_method`): ``"h_target:log"`` is
    ``h_target`` with ``target="log"``, ``"seed_grpo:base=grpo"`` is ``seed_grpo`` with
    ``base="grpo"``; keyword ``options`` are added to those. Unknown names or options
    raise a ValueError/TypeError that lists what is accepted. The returned callable
    carries the registry metadata as attributes (``requires_values``,
    ``requires_answers``, ``requires_log_probs``) plus ``name``, ``base_name``,
    ``options`` and ``accepted_options``.
    """
    base = name.partition(":")[0] if isinstance(name, str) else name
    if base not in ADVANTAGES:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {sorted(ADVANTAGES)} "
            f"(h_target takes a target: h_target:<{'|'.join(sorted(H_TARGETS))}>)"
        )
    base, named_options = parse_method(name)
    if "target" in named_options and base == "h_target":
        resolve_target(named_options["target"])
    options = {**named_options, **options}
    fn = ADVANTAGES[base]
    accepted = set(inspect.signature(fn).parameters) - {
        "rewards",
        "values",
        "answers",
        "log_probs",
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"estimator {base!r} does not take option(s) {unknown}; it takes {sorted(accepted)}"
        )
    bound = functools.partial(fn, **options)
    metadata = ADVANTAGES.metadata(base)
    bound.requires_values = metadata["requires_values"]  # type: ignore[attr-defined]
    bound.requires_answers = metadata["requires_answers"]  # type: ignore[attr-defined]
    bound.requires_log_probs = metadata["requires_log_probs"]  # type: ignore[attr-defined]
    bound.name = name  # type: ignore[attr-defined]
    bound.base_name = base  # type: ignore[attr-defined]
    bound.options = dict(options)  # type: ignore[attr-defined]
    bound.accepted_options = frozenset(accepted)  # type: ignore[attr-defined]
    return bound
