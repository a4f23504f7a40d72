"""Hysteresis (value thresholds with a margin) and the NaN-skipping EMA."""

from __future__ import annotations

import math

import pytest

from trainwatch.alerts import EMA, Hysteresis


def test_high_fires_above_and_clears_only_below_the_margin():
    h = Hysteresis(high=1.0, margin=0.25)  # clears below 1 / 1.25 = 0.8
    assert h.high_clear == pytest.approx(0.8)
    assert [h.check(v) for v in [0.9, 1.0, 1.01, 0.95, 0.81, 0.8, 0.79, 0.95, 1.2]] == [
        None, None, "high", "high", "high", "high", None, None, "high"]


def test_low_fires_below_and_clears_only_above_the_margin():
    h = Hysteresis(low=1e-5, margin=0.2)  # clears above 1.2e-5
    assert h.low_clear == pytest.approx(1.2e-5)
    assert [h.check(v) for v in [2e-5, 9e-6, 1.1e-5, 1.2e-5, 1.3e-5]] == [
        None, "low", "low", "low", None]


def test_margin_is_multiplicative_so_it_works_across_decades():
    for high in (1e-6, 1e-2, 1e3):
        h = Hysteresis(high=high, margin=0.2)
        assert h.check(high * 1.01) == "high"
        assert h.check(high * 0.9) == "high"  # within the 20 % margin
        assert h.check(high / 1.21) is None


def test_zero_margin_is_a_plain_threshold():
    h = Hysteresis(high=1.0, margin=0)
    assert [h.check(v) for v in [1.1, 0.999, 1.001, 0.5]] == ["high", None, "high", None]


def test_jump_across_the_band_switches_directly():
    h = Hysteresis(high=1e-2, low=1e-4)
    assert h.check(0.5) == "high"
    assert h.check(1e-6) == "low"
    assert h.check(1.0) == "high"
    assert h.check(1e-3) is None


def test_nan_keeps_state_and_infinities_count():
    h = Hysteresis(high=1.0, low=0.1)
    assert h.check(float("nan")) is None
    assert h.check(2.0) == "high"
    assert h.check(float("nan")) == "high"
    assert h.check(float("-inf")) == "low"
    assert h.check(float("inf")) == "high"


def test_state_is_per_key_and_resettable():
    h = Hysteresis(high=1.0)
    assert h.check(2.0, key="a") == "high"
    assert h.check(0.9, key="b") is None
    assert h.check(0.9, key="a") == "high"
    assert h.state("a") == "high" and h.state("b") is None and h.state("zzz") is None
    h.reset("a")
    assert h.state("a") is None
    h.check(5.0, key="a")
    h.check(5.0, key="b")
    h.reset(all_keys=True)
    assert h.state("a") is None and h.state("b") is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({}, "high"),
        ({"high": 0.0}, "high"),
        ({"high": -1.0}, "high"),
        ({"high": float("nan")}, "high"),
        ({"high": "1"}, "high"),
        ({"low": 0.0}, "low"),
        ({"high": 1.0, "low": 1.0}, "low"),
        ({"high": 1.0, "margin": -0.1}, "margin"),
        ({"high": 1.0, "margin": float("inf")}, "margin"),
    ],
)
def test_hysteresis_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Hysteresis(**kwargs)


def test_ema_initialises_with_first_value_and_smooths():
    e = EMA(0.5)
    assert math.isnan(e.value)
    assert e.update(4.0) == 4.0
    assert e.update(2.0) == 3.0
    assert e.update(2.0) == 2.5
    assert e.count == 3


def test_ema_ignores_nan_and_inf():
    e = EMA(0.1)
    assert math.isnan(e.update(float("nan")))
    assert e.count == 0
    e.update(1.0)
    assert e.update(float("nan")) == 1.0
    assert e.update(float("inf")) == 1.0
    assert e.update(float("-inf")) == 1.0
    assert e.update(2.0) == pytest.approx(1.1)
    e.reset()
    assert math.isnan(e.value) and e.count == 0


def test_ema_alpha_one_is_no_smoothing():
    e = EMA(1.0)
    assert [e.update(v) for v in (3.0, 7.0, -1.0)] == [3.0, 7.0, -1.0]


@pytest.mark.parametrize("alpha", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_ema_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        EMA(alpha)


def test_streak_counts_consecutive_holds_and_remembers_where_they_began():
    from trainwatch.alerts import Streak

    streak = Streak()
    assert [streak.update(h, step) for step, h in enumerate([1, 1, 0, 1, 1, 1])] == [
        1, 2, 0, 1, 2, 3]
    assert streak.since == 3
    assert streak.update(False, 6) == 0 and streak.count == 0
