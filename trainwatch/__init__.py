"""trainwatch: watches neural-network training and says, early and precisely, when
something is wrong.

Drive it with :class:`Trainer` (trainwatch's own loop) or :class:`Monitor` (your loop);
add callbacks for gradient checks, update ratios, loss diagnostics, accuracy gaps,
histograms and filter images. Everything goes to TensorBoard, a progress bar and alerts.
"""

import logging

from trainwatch.alerts import Alert, AlertManager, AlertSink, Severity
from trainwatch.callbacks import (
    AccuracyGapMonitor,
    FilterImages,
    GradientCheck,
    HistogramMonitor,
    LossMonitor,
    MetricLogger,
    SetupCheck,
    UpdateRatioMonitor,
    default_callbacks,
)
from trainwatch.core.backend import Backend, LayerInfo, TensorNorms
from trainwatch.core.budget import StepBatch, TimeBudget
from trainwatch.core.callback import (
    NEVER,
    Callback,
    CallbackList,
    StopTraining,
    next_block_end,
    next_multiple,
)
from trainwatch.core.monitor import Monitor, as_backend
from trainwatch.core.state import RunState
from trainwatch.core.trainer import Trainer
from trainwatch.outputs.base import HistogramData, Output, OutputList

logging.getLogger("trainwatch").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AccuracyGapMonitor",
    "Alert",
    "AlertManager",
    "AlertSink",
    "Backend",
    "Callback",
    "CallbackList",
    "HistogramData",
    "LayerInfo",
    "MetricLogger",
    "Monitor",
    "Output",
    "OutputList",
    "RunState",
    "Severity",
    "StepBatch",
    "StopTraining",
    "TensorNorms",
    "TimeBudget",
    "Trainer",
    "as_backend",
    "default_callbacks",
    "FilterImages",
    "GradientCheck",
    "HistogramMonitor",
    "LossMonitor",
    "NEVER",
    "next_block_end",
    "next_multiple",
    "SetupCheck",
    "UpdateRatioMonitor",
]
