"""Alerts: what fired, debounced, and where it goes."""

from trainwatch.alerts.alert import Alert, Severity
from trainwatch.alerts.manager import AlertManager
from trainwatch.alerts.rules import EMA, Hysteresis, Streak
from trainwatch.alerts.sinks import (
    AlertSink,
    CallableSink,
    ConsoleSink,
    JsonlSink,
    LoggingSink,
    OutputTextSink,
    WebhookSink,
    alert_markdown,
)

__all__ = [
    "EMA",
    "Alert",
    "AlertManager",
    "AlertSink",
    "CallableSink",
    "ConsoleSink",
    "Hysteresis",
    "JsonlSink",
    "LoggingSink",
    "OutputTextSink",
    "Severity",
    "Streak",
    "WebhookSink",
    "alert_markdown",
]
