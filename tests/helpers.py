"""Assertions shared by the tests."""

import numpy as np


def assert_identical(a, b, path="state"):
    """``a`` and ``b`` (nested dicts of arrays and plain values, e.g. ``Backend.state_dict()``)
    are bit-identical: same keys, dtypes, shapes and bytes (also -0.0 and NaN payloads)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b), path
        assert a.tobytes() == b.tobytes(), path
    else:
        assert a == b, path


def all_callbacks(validation_data):
    """Every callback trainwatch has, each scheduled often and with every option that does
    extra work switched on (figures, the step-wise gap on subsets evaluated mid-training,
    gradient checks not held back by the time budget, and one stopped by its time limit):
    for the bit-identical tests."""
    from trainwatch import (
        AccuracyGapMonitor,
        FilterImages,
        GradientCheck,
        HistogramMonitor,
        LossMonitor,
        MetricLogger,
        UpdateRatioMonitor,
    )

    return [
        MetricLogger(every=1),
        LossMonitor(every=2, check_tensors_every=3),
        UpdateRatioMonitor(every=1),
        GradientCheck(every=5, warmup_steps=2, examples=2, budget=None),
        # and a first check stopped part-way by its time limit, then held for the budget
        GradientCheck(every=1000, warmup_steps=3, examples=2, budget=0.5, time_limit=1e-6),
        AccuracyGapMonitor(every=4, validation_data=validation_data, subset=64),
        HistogramMonitor(every=3, figure_every=2),
        FilterImages(every=4),
    ]
