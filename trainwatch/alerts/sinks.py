"""Where alerts go. Each sink receives every alert the manager emits."""

from __future__ import annotations

from abc import ABC, abstractmethod

from trainwatch.alerts.alert import Alert


class AlertSink(ABC):
    """Receives alert events. ``emit`` must be quick: slow work belongs on a thread."""

    @abstractmethod
    def emit(self, alert: Alert) -> None:
        """Deliver one alert."""

    def close(self) -> None:
        """Flush and release resources (called once at the end of training)."""
