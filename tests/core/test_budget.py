import time

import numpy as np
import pytest

from tests.helpers import Clock, every_step_dispatch
from trainwatch import Callback, Trainer, UpdateRatioMonitor, nn
from trainwatch.core import budget as budget_module
from trainwatch.core.budget import StepBatch, TimeBudget
from trainwatch.data import load_digits
from trainwatch.outputs import MemoryOutput


def test_work_within_the_budget_runs_at_the_step_asked():
    clock = Clock()
    budget = TimeBudget(0.01, clock=clock)
    assert budget.earliest_step(0, 0.0) == 0  # nothing measured yet: never held back
    with budget:
        budget.count()
        clock.now += 0.002  # 2 ms of work
    clock.now += 0.998  # then 1 s of training in 100 steps
    assert budget.seconds == pytest.approx(0.002) and budget.mean == pytest.approx(0.002)
    assert budget.allows(0.002)  # 4 ms of 1 s is within 1 %
    assert budget.earliest_step(100, budget.mean) == 100


def test_work_over_the_budget_moves_to_the_step_where_it_fits():
    clock = Clock()
    budget = TimeBudget(0.01, clock=clock)
    with budget:
        budget.count()
        clock.now += 0.005  # 5 ms of work
    clock.now += 0.095  # 0.1 s in 10 steps: 10 ms a step
    assert not budget.allows(0.005)
    # 10 ms of work needs 1 s of run: 0.9 s more, 90 steps of 10 ms
    assert budget.earliest_step(10, budget.mean) == 100
    clock.now += 0.9
    assert budget.allows(0.005)


def test_nested_blocks_count_once_and_no_limit_never_holds_back():
    clock = Clock()
    budget = TimeBudget(None, clock=clock)
    with budget:
        clock.now += 1.0
        with budget:
            clock.now += 1.0
    assert budget.seconds == pytest.approx(2.0)
    assert budget.allows(1e9) and budget.earliest_step(7, 1e9) == 7
    budget.start(5)
    assert budget.seconds == 0.0 and budget.occurrences == 0


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, True, "1%"])
def test_a_bad_fraction_names_the_argument(fraction):
    with pytest.raises(ValueError, match="budget: must be a fraction"):
        TimeBudget(fraction)
    with pytest.raises(ValueError, match="budget"):
        UpdateRatioMonitor(budget=fraction)


@pytest.mark.parametrize("dispatch", ["scheduled", "every step"])
def test_a_budget_spaces_measurements_out_on_multiples_of_every(dispatch, monkeypatch):
    """Steps of ~2 ms and measurements made slow (~4 ms): at every=2 they would take two
    thirds of the run (120 steps: long enough for a third measurement on a loaded machine,
    where each takes longer); with a 10 % budget they are spaced out, still on multiples of
    ``every``, the first one at step 0 and the second right after it (the first, cold
    measurement's cost is forgotten), and the time they took stays within the budget."""

    class SlowStep(Callback):
        def on_step_end(self, state):
            time.sleep(0.002)

    class SlowRatios(UpdateRatioMonitor):
        def _evaluate(self, *args):
            time.sleep(0.004)  # (timed by the budget, as the real work is)
            super()._evaluate(*args)

    def run(budget):
        net = nn.Sequential([nn.Dense(64, 16, rng=0), nn.Tanh(), nn.Dense(16, 10, rng=1)],
                            seed=0)
        monitor = SlowRatios(every=2, budget=budget)
        memory = MemoryOutput()
        x, y = load_digits()
        Trainer(net, nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1),
                callbacks=[monitor, SlowStep()], outputs=[memory],
                progress=False).fit(x[:1280], y[:1280], epochs=3, batch_size=32)
        (tag,) = [t for t in memory.scalars_log if t.startswith("update_ratio/")][:1]
        return [step for step, _ in memory.scalars_log[tag]], monitor.budget

    if dispatch == "every step":  # the monitor's hooks are called at every step: the
        every_step_dispatch(monkeypatch)  # budget still decides which steps it measures
    unbounded, _ = run(None)
    assert unbounded == list(range(0, 120, 2))
    steps, budget = run(0.1)
    assert steps[:2] == [0, 2] and all(s % 2 == 0 for s in steps)
    assert 3 <= len(steps) < len(unbounded) // 2
    assert np.all(np.diff(steps[1:]) > 2)
    assert budget.seconds <= 0.1 * budget.elapsed + budget.mean  # the first is never held


def test_a_step_batch_is_due_after_its_steps_or_its_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    batch = StepBatch()
    assert [step for step in range(5, 106) if batch.add(step, step)] == [105]  # BATCH_STEPS on
    assert batch.take() == list(range(5, 106)) and batch.take() == []
    clock.now += budget_module.BATCH_SECONDS * 0.99
    assert not batch.add(200, "a")
    clock.now += budget_module.BATCH_SECONDS * 0.02
    assert batch.add(201, "b")  # BATCH_SECONDS after the last take, however few steps
    batch.take()
    assert not batch.add(300, "c")  # timed from that take
    clock.now += budget_module.BATCH_SECONDS
    assert batch.add(301, "d")  # slow steps: each item is due as it comes
