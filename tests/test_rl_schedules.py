"""Schedules of the KL weight, the entropy bonus and the learning rate."""

from __future__ import annotations

import math

import pytest

from bioreason.rl.schedules import check_schedule, scheduled, warmup_factor


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential"])
def test_every_shape_starts_at_start_and_ends_at_end(shape):
    assert scheduled(0.1, 0.001, 0, 100, shape) == pytest.approx(0.1)
    assert scheduled(0.1, 0.001, 100, 100, shape) == pytest.approx(0.001)
    assert scheduled(0.1, 0.001, 250, 100, shape) == pytest.approx(0.001)  # clipped


def test_the_shapes_in_between():
    assert scheduled(1.0, 3.0, 25, 100, "linear") == pytest.approx(1.5)
    # cosine: flat at both ends, the mean of the two at half way
    assert scheduled(1.0, 3.0, 50, 100, "cosine") == pytest.approx(2.0)
    assert scheduled(1.0, 3.0, 10, 100, "cosine") == pytest.approx(
        3.0 + (1.0 - 3.0) * (1 + math.cos(math.pi * 0.1)) / 2
    )
    # exponential: equal ratios, so the geometric mean at half way
    assert scheduled(0.1, 0.001, 50, 100, "exponential") == pytest.approx(0.01)
    assert scheduled(0.1, None, 50, 100, "exponential") == 0.1  # no end: constant
    assert scheduled(0.1, 0.001, 50, 100, "constant") == 0.1


def test_warmup_is_linear_then_one():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.parametrize(
    "args, words",
    [
        (("kl_coef", 0.1, 0.001, "geometric"), "kl_coef_schedule must be one of"),
        (("kl_coef", -0.1, 0.001, "linear"), "kl_coef must be a finite number >= 0"),
        (("lr", 0.1, math.nan, "linear"), "lr_end must be a finite number"),
        (("kl_coef", 0.1, 0.0, "exponential"), "must both be > 0"),
    ],
)
def test_bad_schedules_name_the_field(args, words):
    with pytest.raises(ValueError, match=words):
        check_schedule(*args)
