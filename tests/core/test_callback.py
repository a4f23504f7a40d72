import pytest

from trainwatch.alerts import AlertManager
from trainwatch.core.callback import HOOKS, Callback, CallbackList, StopTraining
from trainwatch.core.state import RunState
from trainwatch.outputs.base import OutputList


def make_state(alerts=None):
    return RunState(backend=None, writer=OutputList(), alerts=alerts or AlertManager())


class Recorder(Callback):
    def __init__(self, log, tag, order=0):
        self.log, self.tag, self.order = log, tag, order

    def on_batch_begin(self, state):
        self.log.append((self.tag, "on_batch_begin"))

    def on_step_end(self, state):
        self.log.append((self.tag, "on_step_end"))


def test_callbacks_run_in_order_then_insertion_order():
    log = []
    cbs = CallbackList([Recorder(log, "b", order=5), Recorder(log, "a"), Recorder(log, "c")])
    cbs.call("on_batch_begin", make_state())
    assert [t for t, _ in log] == ["a", "c", "b"]


def test_only_overriding_callbacks_are_dispatched():
    cbs = CallbackList([Recorder([], "a"), Callback()])
    assert len(cbs._by_hook["on_batch_begin"]) == 1
    assert cbs._by_hook["on_train_begin"] == []
    assert set(cbs._by_hook) == set(HOOKS)


class Raiser(Callback):
    def __init__(self):
        self.calls = 0

    def on_step_end(self, state):
        self.calls += 1
        raise ZeroDivisionError("boom")


def test_raising_callback_is_reported_once_and_disabled():
    alerts = AlertManager()
    log = []
    raiser = Raiser()
    cbs = CallbackList([raiser, Recorder(log, "after")])
    state = make_state(alerts)
    for step in range(5):
        state.step = step
        cbs.call("on_step_end", state)
    assert raiser.calls == 1
    assert len(log) == 5  # the callback after it still runs every time
    errors = [a for a in alerts.history if a.code == "callback.error"]
    assert len(errors) == 1
    assert "Raiser.on_step_end" in errors[0].message and "boom" in errors[0].message


def test_raise_errors_reraises():
    with pytest.raises(ZeroDivisionError):
        CallbackList([Raiser()], raise_errors=True).call("on_step_end", make_state())
    r = Raiser()
    r.raise_errors = True
    with pytest.raises(ZeroDivisionError):
        CallbackList([r]).call("on_step_end", make_state())


def test_stop_training_requests_a_clean_stop():
    class Stopper(Callback):
        def on_step_end(self, state):
            raise StopTraining("enough")

    state = make_state()
    CallbackList([Stopper()]).call("on_step_end", state)
    assert state.stop_requested and state.stop_reason == "enough"
    assert state.alerts.history == []


def test_non_callback_is_rejected_with_the_argument_named():
    with pytest.raises(TypeError, match="callbacks"):
        CallbackList([object()])


# -- reads queued for the end of the step ---------------------------------------------------------


def test_reads_queued_in_a_step_are_read_together_and_handed_back_in_order():
    """Where reads are device syncs, every callback's ``read_at_step_end`` of a step goes
    through one ``scalars_to_host`` call after ``on_step_end``; each continuation gets its own
    values; one that raises is reported once as its callback's error and the callback is
    disabled. Where reads are cheap, the values are handed over at once."""
    import numpy as np

    from trainwatch import Monitor, nn
    from trainwatch.backends.numpy_backend import NumpyBackend

    class SyncingBackend(NumpyBackend):  # a backend whose reads are device syncs
        host_reads_cheap = False

    transfers = []

    class Queuer(Callback):
        def __init__(self, values, fail=False):
            self.values, self.fail, self.got, self.steps = values, fail, [], 0

        def on_step_end(self, state):
            self.steps += 1
            self.read_at_step_end(state, [np.float64(v) for v in self.values], self.take)

        def take(self, floats):
            if self.fail:
                raise ValueError("bad read")
            self.got.append(floats)

    model = nn.Sequential([nn.Dense(4, 3, rng=0)])
    a, b, c = Queuer([1.0, 2.0]), Queuer([3.0], fail=True), Queuer([4.0, 5.0, 6.0])
    backend = SyncingBackend(model, nn.SoftmaxCrossEntropy(), None)
    mon = Monitor(backend, callbacks=[a, b, c], progress=False)
    original = mon.backend.scalars_to_host
    mon.backend.scalars_to_host = lambda values: transfers.append(len(values)) or original(
        values)
    with mon.run():
        for _ in range(3):
            mon.batch_begin()
            mon.step_end()
    assert transfers == [6, 5, 5]  # one per step: b is disabled after its first failure
    assert a.got == [[1.0, 2.0]] * 3 and c.got == [[4.0, 5.0, 6.0]] * 3
    assert b.steps == 1
    errors = [al for al in mon.alerts.history if al.code == "callback.error"]
    assert len(errors) == 1 and "Queuer.read_at_step_end" in errors[0].message
    assert "bad read" in errors[0].message
    # queued at an epoch end: read at the end of that hook point, not a step later
    class EpochQueuer(Queuer):
        def on_step_end(self, state):
            pass

        def on_epoch_end(self, state):
            self.read_at_step_end(state, [np.float64(8.0)], self.take)

    late = EpochQueuer([])
    mon = Monitor(backend, callbacks=[late], progress=False)
    with mon.run():
        mon.epoch_begin()
        mon.epoch_end({"train_loss": 1.0})
        assert late.got == [[8.0]] and mon.state.queued_reads == []
    # cheap reads: no queue, each callback's values at once
    cheap = Queuer([7.0])
    mon = Monitor(model, loss=nn.SoftmaxCrossEntropy(), callbacks=[cheap], progress=False)
    with mon.run():
        mon.batch_begin()
        mon.step_end()
        assert cheap.got == [[7.0]] and mon.state.queued_reads == []


class EveryThird(Callback):
    """Works on steps 0, 3, 6, ...; reads the batch only on steps 0, 6, 12, ..."""

    def __init__(self, log):
        self.log = log

    def next_step(self, step):
        return -(-step // 3) * 3

    def reads_batch(self, step):
        return step % 6 == 0

    def on_batch_begin(self, state):
        self.log.append(("third", state.step))

    def on_epoch_end(self, state):
        self.log.append(("third epoch end", state.step))


def drive(cbs, state, steps):
    """The Monitor's order of calls for `steps` steps; returns batch_needed per step."""
    needed = []
    cbs.schedule(state)
    for _ in range(steps):
        needed.append(cbs.batch_needed)
        cbs.call("on_batch_begin", state)
        cbs.call("on_step_end", state)
        state.step += 1
        cbs.advance(state)
    return needed


def test_a_sleeping_callback_sees_only_the_steps_it_asked_for():
    log = []
    cbs = CallbackList([EveryThird(log), Recorder(log, "always")])
    state = make_state()
    needed = drive(cbs, state, 8)
    assert [s for t, s in log if t == "third"] == [0, 3, 6]
    assert [t for t, _ in log].count("always") == 16  # every step, both hooks
    # the batch is needed on the steps a callback that sees them reads it (Recorder keeps
    # the default: every step)
    assert needed == [True] * 8


def test_batch_needed_follows_reads_batch_of_the_awake_callbacks():
    log = []
    cbs = CallbackList([EveryThird(log)])
    needed = drive(cbs, make_state(), 13)
    assert [i for i, n in enumerate(needed) if n] == [0, 6, 12]  # not 3 or 9: awake, no read


def test_epoch_hooks_reach_sleeping_callbacks_and_reschedule_them():
    log = []
    cbs = CallbackList([EveryThird(log)])
    state = make_state()
    drive(cbs, state, 4)  # asleep until step 6
    cbs.call("on_epoch_end", state)
    assert log[-1] == ("third epoch end", 4)
    state.step = 9  # e.g. a loop that skipped steps; schedule() asks everyone again
    cbs.schedule(state)
    cbs.call("on_batch_begin", state)
    assert log[-1] == ("third", 9)


def test_a_callback_whose_next_step_raises_is_reported_and_sleeps_for_good():
    class BadSchedule(Recorder):
        def next_step(self, step):
            raise RuntimeError("no schedule")

    alerts = AlertManager()
    log = []
    cbs = CallbackList([BadSchedule(log, "bad"), Recorder(log, "good")])
    state = make_state(alerts)
    drive(cbs, state, 3)
    assert [t for t, _ in log].count("bad") == 0  # asked first, at schedule(): disabled
    assert [t for t, _ in log].count("good") == 6
    errors = [a for a in alerts.history if a.code == "callback.error"]
    assert len(errors) == 1 and "BadSchedule.next_step" in errors[0].message


class LossReader(EveryThird):
    """Asleep but for steps 0, 3, 6, ...; takes in every loss."""

    def on_losses(self, state):
        self.log.append(("losses", state.step, [(s, loss) for s, loss, *_ in state.losses]))

    def on_epoch_end(self, state):
        self.log.append(("epoch_end", state.step))

    def on_train_end(self, state):
        self.log.append(("train_end", state.step))


def drive_monitor(backend_class, callbacks, losses, *, per_step=1, epoch_at=()):
    """A Monitor on a tiny numpy model, reporting ``losses`` (``per_step`` a step, as with
    gradient accumulation; an epoch end before each step in ``epoch_at``), batch hooks only
    where a callback is awake. Returns the Monitor and its callbacks' quiet flag per step."""
    from trainwatch import Monitor, nn

    model = nn.Sequential([nn.Dense(4, 3, rng=0)])
    mon = Monitor(backend_class(model, nn.SoftmaxCrossEntropy(), None), callbacks=callbacks,
                  progress=False, raise_errors=True)
    quiet = []
    with mon.run():
        it = iter(losses)
        for step in range(len(losses) // per_step):
            if step in epoch_at:
                mon.epoch_end({})
                mon.epoch_begin()
            quiet.append(mon.callbacks.quiet)
            if not mon.callbacks.quiet:
                mon.batch_begin()
            for _ in range(per_step):
                mon.loss_computed(next(it))
            mon.step_end()
            if mon.should_stop:
                break
    return mon, quiet


def test_a_sleeping_callback_gets_every_loss_in_batches_and_nothing_else(monkeypatch):
    from tests.helpers import Clock
    from trainwatch.backends.numpy_backend import NumpyBackend
    from trainwatch.core import budget as budget_module

    monkeypatch.setattr(budget_module.time, "perf_counter", Clock())  # (time stands still)
    log = []
    _, quiet = drive_monitor(NumpyBackend, [LossReader(log)], [float(i) for i in range(250)])
    handed = [(step, [s for s, _ in losses]) for t, step, *losses in log if t == "losses"
              for losses in losses]
    # the first at once, then each batch once its oldest is BATCH_STEPS old, the rest at the end
    assert handed == [(0, [0]), (101, list(range(1, 102))), (202, list(range(102, 203))),
                      (250, list(range(203, 250)))]
    assert [t for t, *_ in log if t == "third"] == ["third"] * len(range(0, 250, 3))
    assert log[-1][0] == "train_end" and log[-2][0] == "losses"  # handed over before it
    assert quiet[:7] == [False, True, True, False, True, True, False]
    values = [v for t, _, losses in (e for e in log if e[0] == "losses") for _, v in losses]
    assert values == [float(i) for i in range(250)]


def test_losses_are_handed_over_before_each_epoch_end_and_at_once_when_not_finite(monkeypatch):
    from tests.helpers import Clock
    from trainwatch.backends.numpy_backend import NumpyBackend
    from trainwatch.core import budget as budget_module

    monkeypatch.setattr(budget_module.time, "perf_counter", Clock())
    log = []
    losses = [1.0] * 30 + [float("inf")] + [1.0] * 9 + [float("nan")] + [1.0] * 9
    drive_monitor(NumpyBackend, [LossReader(log)], losses, epoch_at=(20,))
    events = [(t, step, [s for s, _ in rest[0]] if rest else None) for t, step, *rest in log
              if t != "third"]
    assert events == [("losses", 0, [0]), ("losses", 20, list(range(1, 20))),
                      ("epoch_end", 20, None), ("losses", 30, list(range(20, 31))),
                      ("losses", 40, list(range(31, 41))), ("losses", 50, list(range(41, 50))),
                      ("train_end", 50, None)]


def test_every_report_of_a_step_is_handed_over(monkeypatch):
    """Gradient accumulation: several losses make one step; each is handed over."""
    from trainwatch.backends.numpy_backend import NumpyBackend

    log = []
    drive_monitor(NumpyBackend, [LossReader(log)], [float(i) for i in range(12)], per_step=3)
    handed = [pair for t, _, *losses in log if t == "losses" for pair in losses[0]]
    assert handed == [(i // 3, float(i)) for i in range(12)]


def test_reads_queued_in_on_losses_are_read_at_that_steps_end():
    """Where reads are device syncs, what a callback queues while taking in the losses is
    read at the end of the step they were handed over on, in one transfer."""
    import numpy as np

    from trainwatch.backends.numpy_backend import NumpyBackend

    class SyncingBackend(NumpyBackend):
        host_reads_cheap = False

        def scalars_to_host(self, values):
            reads.append(len(values))
            return super().scalars_to_host(values)

    class QueuingLossReader(LossReader):
        def on_losses(self, state):
            step, values = state.step, [np.float64(v) for _, v, *_ in state.losses]
            self.read_at_step_end(state, values,
                                  lambda floats: self.log.append(("read", step, floats)))

    class StepEnd(Callback):
        order = 100

        def on_step_end(self, state):
            log.append(("step_end", state.step))

    log, reads = [], []
    drive_monitor(SyncingBackend, [QueuingLossReader(log), StepEnd()], [2.0, 3.0, 4.0])
    read = [e for e in log if e[0] in ("read", "step_end")]
    assert read[:3] == [("step_end", 0), ("read", 0, [2.0]), ("step_end", 1)]
    assert read[-1] == ("read", 3, [3.0, 4.0])  # the rest at the end of the run
    assert reads == [2, 2]  # (with the MetricLogger every Monitor has: its step-0 point)


def test_next_block_end_is_the_last_step_of_each_block():
    from trainwatch import next_block_end

    assert [next_block_end(s, 5) for s in (0, 3, 4, 5, 9, 10)] == [4, 4, 4, 9, 9, 14]
    assert next_block_end(7, 1) == 7
