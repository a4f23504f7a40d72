"""Alerts: what fired, debounced, and where it goes."""

from trainwatch.alerts.alert import Alert, Severity
from trainwatch.alerts.manager import AlertManager
from trainwatch.alerts.sinks import AlertSink

__all__ = ["Alert", "AlertManager", "AlertSink", "Severity"]
