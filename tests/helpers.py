"""Assertions and callback sets shared by the tests."""

import numpy as np

from trainwatch import (
    AccuracyGapMonitor,
    FilterImages,
    GradientCheck,
    HistogramMonitor,
    LossMonitor,
    MetricLogger,
    SetupCheck,
    UpdateRatioMonitor,
)


class Clock:
    """A clock the test moves by hand (seconds): monkeypatch it over ``time.perf_counter``."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


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
    gradient checks not held back by the time budget, and one stopped by its time limit; a
    histogram monitor under a time budget too):
    for the bit-identical tests."""
    return [
        MetricLogger(every=1),
        LossMonitor(every=2, check_tensors_every=3),
        SetupCheck(),
        UpdateRatioMonitor(every=1, budget=None),
        # and a second one sharing the step's update snapshot
        UpdateRatioMonitor(every=2, budget=None),
        GradientCheck(every=5, warmup_steps=2, examples=2, budget=None),
        # and a first check stopped part-way by its time limit, then held for the budget
        GradientCheck(every=1000, warmup_steps=3, examples=2, budget=0.5, time_limit=1e-6),
        AccuracyGapMonitor(every=4, validation_data=validation_data, subset=64),
        HistogramMonitor(every=3, figure_every=2, budget=None),
        # and one whose rounds a (tight) time budget spaces out
        HistogramMonitor(every=1, figure_every=None, budget=0.001),
        FilterImages(every=4),
    ]


def scheduled_callbacks(validation_data):
    """Every callback on schedules of different periods (and one on epoch ends only): for
    the tests that sleeping between steps changes nothing."""
    return [
        MetricLogger(every=3),
        LossMonitor(every=4, check_tensors_every=5, plateau_window=8, noise_window=8),
        SetupCheck(),
        UpdateRatioMonitor(every=3, budget=None),
        GradientCheck(every=7, warmup_steps=2, examples=2, budget=None),
        AccuracyGapMonitor(every=5, validation_data=validation_data, subset=64),
        AccuracyGapMonitor(),
        HistogramMonitor(every=4, figure_every=None, budget=None),
        FilterImages(every=6),
    ]


def every_step_dispatch(monkeypatch):
    """Make every callback see every step and read every batch (what the dispatcher did
    before callbacks could sleep): the reference run of those tests."""
    from trainwatch.core.callback import CallbackList

    monkeypatch.setattr(CallbackList, "_ask",
                        lambda self, cb, what, state, step: step if what == "next_step" else True)


def dashboard(memory, alerts):
    """What a run showed (MemoryOutput and alert history), wall-clock values left out."""
    scalars = {tag: points for tag, points in memory.scalars_log.items()
               if tag != "gradcheck/seconds"}
    histograms = {tag: [(step, h.edges.tolist(), h.counts.tolist(), h.sum)
                        for step, h in points] for tag, points in memory.histograms.items()}
    images = {tag: [(step, image.tobytes()) for step, image in points]
              for tag, points in memory.images.items()}
    texts = {tag: [step for step, _ in points] for tag, points in memory.texts.items()}
    return scalars, histograms, images, texts, [(a.code, a.step, a.tensor) for a in alerts]
