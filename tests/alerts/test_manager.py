"""AlertManager: hysteresis against alert storms, cooldown, patience, one-off events,
summary, failing sinks, argument validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from trainwatch.alerts import (
    Alert,
    AlertManager,
    AlertSink,
    CallableSink,
    Hysteresis,
    Severity,
)

CODE = "update_ratio.high"
TENSOR = "fc1.weight"


def hovering_ratio(n: int = 500, seed: int = 0) -> np.ndarray:
    """An update ratio hovering at 1e-2: ``1e-2 * (1 + 0.05 sin t)`` plus 1 % noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    return 1e-2 * (1.0 + 0.05 * np.sin(t)) + rng.normal(0.0, 1e-4, size=n)


def feed(series, band: Hysteresis, manager: AlertManager) -> list[Alert]:
    """What a monitor does: value -> condition (band) -> events (manager)."""
    events = []
    for step, ratio in enumerate(series):
        active = band.check(ratio, key=TENSOR) == "high"
        alert = manager.update(
            CODE, active, step=step, tensor=TENSOR, value=ratio,
            message=f"update/weight ratio {ratio:.2e} above 1e-2",
            suggestion="lower the learning rate",
        )
        if alert is not None:
            events.append(alert)
    return events


def split(events: list[Alert]) -> tuple[list[Alert], list[Alert]]:
    return [a for a in events if not a.resolved], [a for a in events if a.resolved]


def test_hovering_ratio_gives_one_episode_with_hysteresis_and_a_storm_without():
    series = hovering_ratio()
    # Sanity: the series really crosses the threshold many times.
    crossings = int(np.sum(np.diff((series > 1e-2).astype(int)) != 0))
    assert crossings > 100

    received: list[Alert] = []
    manager = AlertManager([CallableSink(received.append)])  # defaults: clear 3, cooldown 100
    events = feed(series, Hysteresis(high=1e-2, margin=0.2), manager)
    fired, resolved = split(events)
    assert len(fired) == 1
    assert len(resolved) <= 1
    assert fired[0].code == CODE and fired[0].tensor == TENSOR and fired[0].value > 1e-2
    assert received == events
    assert manager.is_firing(CODE, TENSOR)

    # The ratio then really drops: exactly one resolution, carrying the episode's severity.
    low = np.full(20, 5e-3)
    events = feed(np.concatenate([series, low]), Hysteresis(high=1e-2), AlertManager())
    fired, resolved = split(events)
    assert len(fired) == 1 and len(resolved) == 1
    assert resolved[0].step > 500 and resolved[0].severity is Severity.WARNING

    # Same series, no value hysteresis and no manager debouncing: an alert storm.
    storm = feed(series, Hysteresis(high=1e-2, margin=0.0),
                 AlertManager(clear_after=1, cooldown_steps=0))
    storm_fired, storm_resolved = split(storm)
    assert len(storm_fired) >= 50
    assert len(storm_resolved) >= 49

    # The manager's debouncing alone (clear_after=3, cooldown=100) already helps, but only
    # value hysteresis turns the hovering into a single episode.
    debounced, _ = split(feed(series, Hysteresis(high=1e-2, margin=0.0), AlertManager()))
    assert 1 < len(debounced) < len(storm_fired)


def test_cooldown_prevents_refire_until_it_has_passed():
    m = AlertManager(clear_after=3, cooldown_steps=100)
    assert m.update(CODE, True, step=0) is not None
    assert m.update(CODE, False, step=1) is None
    assert m.update(CODE, False, step=2) is None
    resolved = m.update(CODE, False, step=3)
    assert resolved is not None and resolved.resolved
    for step in range(10, 103):  # true again, but within the cooldown
        assert m.update(CODE, True, step=step) is None
    assert not m.is_firing(CODE)
    again = m.update(CODE, True, step=103)  # 100 steps after the clear
    assert again is not None and not again.resolved and again.step == 103
    assert m.counts()[CODE] == 2


def test_fire_after_needs_consecutive_true_evaluations():
    m = AlertManager(fire_after=3)
    pattern = [True, True, False, True, True, True, True]
    results = [m.update(CODE, a, step=s) for s, a in enumerate(pattern)]
    fired = [s for s, r in enumerate(results) if r is not None]
    assert fired == [5]


def test_conditions_are_independent_per_tensor():
    m = AlertManager()
    assert m.update(CODE, True, step=0, tensor="a") is not None
    assert m.update(CODE, True, step=0, tensor="b") is not None
    assert m.update(CODE, True, step=1, tensor="a") is None
    assert m.counts()[CODE] == 2


def test_fire_is_once_per_code_and_tensor():
    got: list[Alert] = []
    m = AlertManager([CallableSink(got.append)])
    first = m.fire("loss.nan", "critical", "loss is NaN", 7, value=float("nan"))
    assert first is not None and first.severity is Severity.CRITICAL and first.step == 7
    assert m.fire("loss.nan", "critical", "loss is NaN again", 8) is None
    assert m.fire("grad.nan", Severity.CRITICAL, "grad NaN", 8, tensor="w1") is not None
    assert m.fire("grad.nan", Severity.CRITICAL, "grad NaN", 9, tensor="w2") is not None
    assert m.fire("grad.nan", Severity.CRITICAL, "grad NaN", 9, tensor="w1") is None
    assert [a.code for a in got] == ["loss.nan", "grad.nan", "grad.nan"]


def test_warnings_fired_lists_the_unresolved_causes_in_order():
    manager = AlertManager(clear_after=1)
    manager.fire("gradcheck.wrong", "critical", "m", 1, tensor="fc1.weight")
    manager.fire("loss.noise", "info", "m", 2)  # (an info is no cause)
    manager.update("update_ratio.low", True, step=3, tensor="a", message="m")
    manager.update("update_ratio.low", True, step=3, tensor="b", message="m")
    manager.update("loss.divergence", True, step=4, message="m")
    manager.update("accuracy_gap.underfit", True, step=5, message="m")
    assert manager.warnings_fired() == ["gradcheck.wrong", "update_ratio.low",
                                        "loss.divergence", "accuracy_gap.underfit"]
    assert manager.warnings_fired(besides=("accuracy_gap.",)) == [
        "gradcheck.wrong", "update_ratio.low", "loss.divergence"]
    assert manager.warnings_fired(besides=("accuracy_gap.", "loss.")) == [
        "gradcheck.wrong", "update_ratio.low"]
    assert manager.fix_first(besides=("accuracy_gap.", "loss.")) == (
        "first fix what this run's other alerts point at (gradcheck.wrong, update_ratio.low)")
    assert manager.fix_first(besides=("gradcheck.", "update_ratio.", "loss.",
                                      "accuracy_gap.")) == ""
    manager.update("loss.divergence", False, step=6)  # resolved: no cause any more
    assert "loss.divergence" not in manager.warnings_fired()


def test_summary_lists_codes_worst_first_with_counts_tensors_and_first_step():
    m = AlertManager()
    assert m.summary() == "trainwatch: no alerts."
    m.update("ratio.low", True, step=5, tensor="b", message="ratio tiny", severity="warning")
    m.update("ratio.low", True, step=6, tensor="a", message="ratio tiny", severity="warning")
    m.fire("loss.nan", "critical", "loss is NaN", 40)
    m.fire("lr.info", "info", "lr changed", 1)
    text = m.summary()
    lines = text.splitlines()
    assert lines[0] == "trainwatch: 4 alert(s) in 3 kind(s):"
    assert "loss.nan" in lines[1] and "critical" in lines[1] and "step 40" in lines[1]
    assert "ratio.low x2 on a, b" in lines[2] and "first at step 5: ratio tiny" in lines[2]
    assert "lr.info" in lines[3]
    # resolutions are not counted
    for step in range(10, 13):
        m.update("ratio.low", False, step=step, tensor="a")
    assert m.summary().splitlines()[0] == "trainwatch: 4 alert(s) in 3 kind(s):"


class Exploding(AlertSink):
    def __init__(self):
        self.calls = 0

    def emit(self, alert: Alert) -> None:
        self.calls += 1
        raise RuntimeError("sink is down")


def test_failing_sink_is_reported_once_and_others_keep_receiving(caplog):
    bad = Exploding()
    got: list[Alert] = []
    m = AlertManager([bad, CallableSink(got.append)])
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        for step in range(3):
            m.fire(f"event.{step}", "warning", "something", step)
    assert bad.calls == 1
    assert [a.code for a in got] == ["event.0", "alerts.sink_error", "event.1", "event.2"]
    errors = [a for a in m.history if a.code == "alerts.sink_error"]
    assert len(errors) == 1 and "Exploding" in errors[0].message
    assert "sink is down" in errors[0].message
    assert sum("alerts.sink_error" in r.getMessage() for r in caplog.records) == 1


def test_every_failing_sink_is_reported_once():
    bad1, bad2 = Exploding(), Exploding()
    got: list[Alert] = []
    m = AlertManager([bad1, CallableSink(got.append), bad2])
    m.fire("event.a", "warning", "x", 0)
    m.fire("event.b", "warning", "x", 1)
    assert bad1.calls == 1 and bad2.calls == 1
    assert [a.code for a in got] == ["event.a", "alerts.sink_error", "alerts.sink_error",
                                     "event.b"]
    assert m.counts()["alerts.sink_error"] == 2


def test_min_severity_filters_sinks_but_not_history_and_passes_resolutions():
    got: list[Alert] = []
    m = AlertManager([CallableSink(got.append)], min_severity="warning", clear_after=1)
    m.fire("lr.info", "info", "lr changed", 0)
    m.update(CODE, True, step=1, severity="warning")
    m.update(CODE, False, step=2)
    assert [a.code for a in m.history] == ["lr.info", CODE, CODE]
    assert [(a.code, a.resolved) for a in got] == [(CODE, False), (CODE, True)]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fire_after": 0}, "fire_after"),
        ({"fire_after": 1.5}, "fire_after"),
        ({"fire_after": True}, "fire_after"),
        ({"clear_after": -1}, "clear_after"),
        ({"cooldown_steps": -5}, "cooldown_steps"),
        ({"cooldown_steps": 2.0}, "cooldown_steps"),
        ({"min_severity": "loud"}, "min_severity"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AlertManager(**kwargs)


def test_bad_severity_and_sink_are_rejected():
    m = AlertManager()
    with pytest.raises(ValueError, match="severity"):
        m.fire("x.y", "fatal", "msg", 0)
    with pytest.raises(TypeError, match="sinks"):
        AlertManager([print])  # type: ignore[list-item]
