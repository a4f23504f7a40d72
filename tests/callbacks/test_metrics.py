import numpy as np

import trainwatch as tw
from tests.helpers import Clock
from trainwatch import nn
from trainwatch.backends.numpy_backend import NumpyBackend
from trainwatch.core import budget as budget_module
from trainwatch.outputs.memory import MemoryOutput


def run(steps, clock, epoch_every=None, seconds_per_step=0.0):
    """Report a loss of 1/(step+1) each step; returns what was written by each step's end."""
    model = nn.Sequential([nn.Dense(4, 3)], seed=0)
    backend = NumpyBackend(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=0.1))
    mem = MemoryOutput()
    seen = {}

    class Watch(tw.Callback):
        order = 100

        def on_step_end(self, state):
            seen[state.step] = [s for s, _ in mem.scalars_log.get("loss/train", [])]

    mon = tw.Monitor(backend, callbacks=[tw.MetricLogger(every=10), Watch()], outputs=[mem],
                     progress=False, raise_errors=True)
    with mon.run():
        for step in range(steps):
            if epoch_every and step and step % epoch_every == 0:
                mon.epoch_end({})
                mon.epoch_begin()
            mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
            mon.loss_computed(1.0 / (step + 1))
            clock.now += seconds_per_step
            mon.step_end()
    return seen, mem


def test_loss_points_are_written_in_batches_the_first_at_once(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    seen, mem = run(250, clock)
    assert seen[0] == [0]  # the first point at once (the bar shows a loss from the start)
    assert seen[100] == [0]  # the losses of steps 1..100 gathered: 100 steps old at 101
    assert seen[101] == list(range(0, 101, 10))
    assert seen[201] == list(range(0, 101, 10))
    assert seen[202] == seen[249] == list(range(0, 201, 10))
    # the rest at the end of the run, with the values of their steps
    assert mem.scalars_log["loss/train"] == [(s, 1.0 / (s + 1)) for s in range(0, 250, 10)]


def test_slow_steps_write_each_point_when_it_comes(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    seen, _ = run(45, clock, seconds_per_step=0.25)  # the losses handed over every 4 steps
    assert seen[9] == [0] and seen[12] == [0, 10] and seen[20] == [0, 10, 20]
    assert seen[40] == [0, 10, 20, 30, 40]


def test_an_epoch_end_writes_the_gathered_points(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    seen, _ = run(60, clock, epoch_every=25)
    assert seen[24] == [0]
    assert seen[25] == [0, 10, 20]  # epoch end after step 24: its points written
    assert seen[50] == [0, 10, 20, 30, 40]  # (step 50's own point waits for its batch)


def test_the_learning_rate_is_written_as_the_losses_come_in():
    """The optimizer's learning rate, as a schedule moves it, at the step of the latest loss
    of each batch of losses handed over (an epoch end here)."""
    model = nn.Sequential([nn.Dense(4, 3)], seed=0)
    opt = nn.SGD(model, lr=0.1)
    mem = MemoryOutput()
    mon = tw.Monitor(model, loss=nn.SoftmaxCrossEntropy(), optimizer=opt, callbacks=[],
                     outputs=[mem], progress=False, raise_errors=True)
    with mon.run():
        for epoch in range(3):
            mon.epoch_begin(epoch)
            for _ in range(5):
                mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
                mon.loss_computed(1.0)
                mon.step_end()
            mon.epoch_end({})
            opt.lr /= 10  # (a step schedule, once an epoch)
    # (the run's first loss is handed over at once, at step 0)
    assert mem.scalars_log["learning_rate"] == [(0, 0.1), (4, 0.1), (9, 0.01), (14, 0.001)]
