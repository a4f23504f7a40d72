"""Callbacks: each watches one concern and reports through the writer and the alerts."""

from __future__ import annotations

from trainwatch.callbacks.accuracy_gap import AccuracyGapMonitor
from trainwatch.callbacks.filter_images import FilterImages
from trainwatch.callbacks.gradient_check import GradientCheck
from trainwatch.callbacks.histograms import HistogramMonitor
from trainwatch.callbacks.loss_monitor import LossMonitor
from trainwatch.callbacks.metrics import MetricLogger
from trainwatch.callbacks.setup_check import SetupCheck
from trainwatch.callbacks.update_ratio import UpdateRatioMonitor
from trainwatch.core.callback import Callback

__all__ = [
    "AccuracyGapMonitor",
    "FilterImages",
    "GradientCheck",
    "HistogramMonitor",
    "LossMonitor",
    "MetricLogger",
    "SetupCheck",
    "UpdateRatioMonitor",
    "default_callbacks",
]


def default_callbacks(*, figures: bool = False) -> list[Callback]:
    """Every monitor at its default settings: metrics, loss diagnostics, the loop's wiring
    (first steps), update ratios, gradient checks, accuracy gap, histograms and first-layer
    filters.

    ``figures=True`` also draws the per-layer activation-distribution figure every 5th
    histogram step (matplotlib: ~0.5 s to import once, ~0.1 s a figure; the demo turns it on).
    """
    return [
        MetricLogger(),
        LossMonitor(),
        SetupCheck(),
        UpdateRatioMonitor(),
        GradientCheck(),
        AccuracyGapMonitor(),
        HistogramMonitor(figure_every=5 if figures else None),
        FilterImages(),
    ]
