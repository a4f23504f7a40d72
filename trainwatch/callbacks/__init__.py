"""Callbacks: each watches one concern and reports through the writer and the alerts."""

from __future__ import annotations

from trainwatch.callbacks.gradient_check import GradientCheck
from trainwatch.callbacks.metrics import MetricLogger
from trainwatch.core.callback import Callback

__all__ = ["GradientCheck", "MetricLogger", "default_callbacks"]


def default_callbacks() -> list[Callback]:
    """Every monitor at its default settings (what ``trainwatch demo`` runs)."""
    return [MetricLogger(), GradientCheck()]
