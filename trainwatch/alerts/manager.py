"""Turns conditions reported by rules into alert events, and hands them to the sinks.

Two ways to report:

* :meth:`AlertManager.update` for a *condition* that is true or false at every evaluation
  (a ratio outside its band). The manager fires when it starts (after ``fire_after``
  consecutive true evaluations), fires once more when it clears (after ``clear_after``
  consecutive false ones), and after a clear waits ``cooldown_steps`` before the same
  condition may fire again. A value hovering at a threshold therefore gives one episode,
  not an alert storm. Value hysteresis (a lower threshold to clear than to fire) is the
  rule's job: see :class:`trainwatch.alerts.rules.Hysteresis`.
* :meth:`AlertManager.fire` for a one-off *event* (a callback raised, the loss is NaN):
  it fires once per (code, tensor) per run.

A sink that raises is reported once through the other sinks and then skipped: alerting
never stops training.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainwatch.alerts.alert import Alert, Severity
from trainwatch.alerts.sinks import AlertSink

logger = logging.getLogger("trainwatch")


@dataclass
class _Condition:
    active_streak: int = 0
    inactive_streak: int = 0
    firing: bool = False
    cleared_at: int | None = None
    last: Alert | None = None


class AlertManager:
    """Debounces alerts and sends them to sinks.

    Args:
        sinks: where alerts go (see :mod:`trainwatch.alerts.sinks`).
        fire_after: consecutive true evaluations before a condition fires (default 1).
        clear_after: consecutive false evaluations before it clears (default 3).
        cooldown_steps: steps after a clear during which the same condition does not
            fire again (default 100).
        min_severity: alerts below this severity are recorded but not sent (default info).
    """

    def __init__(
        self,
        sinks: Iterable[AlertSink] = (),
        *,
        fire_after: int = 1,
        clear_after: int = 3,
        cooldown_steps: int = 100,
        min_severity: Severity | str = Severity.INFO,
    ):
        for name, v in (("fire_after", fire_after), ("clear_after", clear_after)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        if (not isinstance(cooldown_steps, int) or isinstance(cooldown_steps, bool)
                or cooldown_steps < 0):
            raise ValueError(f"cooldown_steps: must be an integer >= 0, got {cooldown_steps!r}")
        self.sinks: list[AlertSink] = []
        for sink in sinks:
            self.add_sink(sink)
        self.fire_after = fire_after
        self.clear_after = clear_after
        self.cooldown_steps = cooldown_steps
        self.min_severity = Severity.parse(min_severity, argument="min_severity")
        self.history: list[Alert] = []
        self._conditions: dict[tuple[str, str | None], _Condition] = {}
        self._once: set[tuple[str, str | None]] = set()
        self._broken_sinks: set[int] = set()

    def add_sink(self, sink: AlertSink) -> None:
        """Send future alerts also to ``sink``."""
        if not isinstance(sink, AlertSink):
            raise TypeError(f"sinks: {sink!r} is not a trainwatch AlertSink")
        self.sinks.append(sink)

    # -- reporting -------------------------------------------------------------------------

    def fire(
        self,
        code: str,
        severity: Severity | str,
        message: str,
        step: int,
        *,
        tensor: str | None = None,
        value: float | None = None,
        suggestion: str | None = None,
    ) -> Alert | None:
        """Fire a one-off event, once per (code, tensor) per run. Returns it, or None if
        it had already fired."""
        key = (code, tensor)
        if key in self._once:
            return None
        self._once.add(key)
        alert = Alert(code, Severity.parse(severity), message, int(step), tensor,
                      _float_or_none(value), suggestion)
        self._emit(alert)
        return alert

    def update(
        self,
        code: str,
        active: bool,
        *,
        step: int,
        severity: Severity | str = Severity.WARNING,
        message: str = "",
        tensor: str | None = None,
        value: float | None = None,
        suggestion: str | None = None,
        describe: Callable[[], Mapping[str, Any]] | None = None,
    ) -> Alert | None:
        """Report whether condition ``code`` (for ``tensor``) holds now.

        Returns the alert emitted by this call (a firing or a resolution), else None.
        ``message``/``severity``/``value``/``suggestion`` describe the current evaluation;
        or ``describe()`` returns (some of) them as a dict, called only when this call emits
        an alert, so a rule evaluated every few steps builds its text only when it is read.
        """
        key = (code, tensor)
        cond = self._conditions.get(key)
        if cond is None:
            cond = self._conditions[key] = _Condition()
        if active:
            cond.active_streak += 1
            cond.inactive_streak = 0
            if cond.firing or cond.active_streak < self.fire_after:
                return None
            if cond.cleared_at is not None and step - cond.cleared_at < self.cooldown_steps:
                return None
            cond.firing = True
            if describe is not None:
                severity, message, value, suggestion = _described(
                    describe, severity, message, value, suggestion)
            alert = Alert(code, Severity.parse(severity), message, int(step), tensor,
                          _float_or_none(value), suggestion)
            cond.last = alert
            self._emit(alert)
            return alert
        cond.inactive_streak += 1
        cond.active_streak = 0
        if not cond.firing or cond.inactive_streak < self.clear_after:
            return None
        cond.firing = False
        cond.cleared_at = step
        if describe is not None:
            _, message, value, _ = _described(describe, severity, message, value, suggestion)
        # The resolution carries the severity of the episode it closes, so a sink (or
        # min_severity) that passed the firing also passes its resolution.
        episode = cond.last.severity if cond.last is not None else Severity.INFO
        alert = Alert(code, episode, message or f"{code} cleared", int(step), tensor,
                      _float_or_none(value), None, resolved=True)
        self._emit(alert)
        return alert

    def warnings_fired(self, *, besides: tuple[str, ...] = ()) -> list[str]:
        """The codes of the warnings and criticals fired so far (and not since resolved), in
        the order they first fired, leaving out those starting with one of ``besides``: the
        causes a symptom's alert (a plateau, an underfit) can point at."""
        codes = []
        for a in self.history:
            if (a.resolved or a.severity.rank < Severity.WARNING.rank
                    or a.code.startswith(besides)):
                continue
            condition = self._conditions.get((a.code, a.tensor))  # (None for a one-off)
            if condition is None or condition.firing:
                codes.append(a.code)
        return list(dict.fromkeys(codes))

    def fix_first(self, *, besides: tuple[str, ...] = ()) -> str:
        """The advice a symptom's alert leads with where other warnings fired first (see
        :meth:`warnings_fired`): "first fix what this run's other alerts point at (...)";
        "" where none did."""
        causes = self.warnings_fired(besides=besides)
        return (f"first fix what this run's other alerts point at ({', '.join(causes)})"
                if causes else "")

    def is_firing(self, code: str, tensor: str | None = None) -> bool:
        """Whether condition ``code`` for ``tensor`` is currently firing."""
        cond = self._conditions.get((code, tensor))
        return bool(cond and cond.firing)

    # -- results ---------------------------------------------------------------------------

    def counts(self) -> Counter:
        """How many times each code fired (resolutions not counted)."""
        return Counter(a.code for a in self.history if not a.resolved)

    def summary(self) -> str:
        """A short text summary of every alert of the run, worst first."""
        fired = [a for a in self.history if not a.resolved]
        if not fired:
            return "trainwatch: no alerts."
        by_code: dict[str, list[Alert]] = {}
        for a in fired:
            by_code.setdefault(a.code, []).append(a)
        rows = sorted(by_code.items(), key=lambda kv: (-kv[1][0].severity.rank, kv[0]))
        lines = [f"trainwatch: {len(fired)} alert(s) in {len(by_code)} kind(s):"]
        for code, alerts in rows:
            tensors = sorted({a.tensor for a in alerts if a.tensor})
            more = " ..." if len(tensors) > 5 else ""
            where = f" on {', '.join(tensors[:5])}{more}" if tensors else ""
            first = alerts[0]
            lines.append(
                f"  {first.severity.value:8s} {code} x{len(alerts)}{where}"
                f" (first at step {first.step}: {first.message})"
            )
        return "\n".join(lines)

    def close(self) -> None:
        """Close every sink (flushes files, waits briefly for webhooks): those that deliver
        on their own threads first, so a failure of their last deliveries still reaches the
        others (``alerts.sink_error``)."""
        delivering = [s for s in self.sinks if type(s).failure is not AlertSink.failure]
        rest = [s for s in self.sinks if type(s).failure is AlertSink.failure]
        for group in (delivering, rest):
            for sink in group:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001
                    logger.warning("trainwatch: alert sink %r failed to close: %s", sink, exc)
            if group is delivering:
                self._report_failures(self.history[-1].step if self.history else 0)

    # -- internals -------------------------------------------------------------------------

    def _emit(self, alert: Alert) -> None:
        self.history.append(alert)
        if alert.severity.rank < self.min_severity.rank:
            return
        # A sink that raises is disabled and reported once (``alerts.sink_error``) to the
        # sinks still working, after they have received the alert itself. Each report
        # corresponds to a newly broken sink, so this terminates.
        pending = [alert]
        while pending:
            current = pending.pop(0)
            for sink in self.sinks:
                if id(sink) in self._broken_sinks:
                    continue
                try:
                    sink.emit(current)
                except Exception as exc:  # noqa: BLE001 - a failing sink never stops training
                    self._broken_sinks.add(id(sink))
                    broken = Alert(
                        "alerts.sink_error", Severity.WARNING,
                        f"alert sink {type(sink).__name__} raised {exc!r}; it is disabled",
                        current.step,
                    )
                    self.history.append(broken)
                    logger.warning("%s", broken)
                    pending.append(broken)
            if current is alert:
                self._report_failures(alert.step)

    def _report_failures(self, step: int) -> None:
        """Failures sinks found on their own threads (a webhook's deliveries): one
        ``alerts.sink_error`` each, to every sink."""
        for sink in self.sinks:
            try:
                failure = sink.failure()
            except Exception:  # noqa: BLE001 - a sink's bookkeeping never stops training
                failure = None
            if failure:
                self._emit(Alert("alerts.sink_error", Severity.WARNING, failure, step))


def _described(describe: Callable[[], Mapping[str, Any]], severity: Any, message: str,
               value: float | None, suggestion: str | None) -> tuple[Any, str, Any, Any]:
    """(severity, message, value, suggestion): ``describe()``'s entries over the given ones."""
    d = describe()
    return (d.get("severity", severity), d.get("message", message), d.get("value", value),
            d.get("suggestion", suggestion))


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)
