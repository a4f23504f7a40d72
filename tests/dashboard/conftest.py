"""One demo run and one real TensorBoard server, shared by every dashboard test."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.dashboard.screenshots import Expected, TensorBoardServer, event_runs, expected_tags
from trainwatch.demo import DemoResult, run_demo

DEMO_EPOCHS = 6


@dataclass
class DemoRun:
    """The demo's result, its logdir read back from disk, and what it should contain."""

    result: DemoResult
    logdir: str
    #: run name -> its event files, read with EventAccumulator (nothing sampled away)
    accumulators: dict[str, EventAccumulator]
    expected: Expected


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo (CNN, 6 epochs, ~140 steps) run once into a temporary logdir."""
    logdir = str(tmp_path_factory.mktemp("dashboard") / "demo")
    result = run_demo(logdir=logdir, epochs=DEMO_EPOCHS, progress=False)
    accumulators = {}
    for run in event_runs(logdir):
        ea = EventAccumulator(os.path.join(logdir, run),
                              size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                             "tensors": 0})
        ea.Reload()
        accumulators[run] = ea
    return DemoRun(result, logdir, accumulators, expected_tags(result.trainer.backend))


@pytest.fixture(scope="session")
def tensorboard(demo: DemoRun):
    """The real ``tensorboard`` server on 127.0.0.1 serving the demo's logdir (loaded once)."""
    server = TensorBoardServer(demo.logdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
