"""The guard of non-negotiable 1: watching never changes training."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import all_callbacks, assert_identical
from trainwatch import Callback, GradientCheck, Trainer, nn
from trainwatch.backends.numpy_backend import NumpyBackend
from trainwatch.data import load_digits, minibatches, train_val_split


def digits(n_train=400, n_val=200):
    x, y = load_digits()
    (xt, yt), (xv, yv) = train_val_split(x, y, val_fraction=0.25, seed=0)
    return (xt[:n_train], yt[:n_train]), (xv[:n_val], yv[:n_val])


def make_net(seed=0):
    net = nn.Sequential([nn.Dense(64, 32, rng=seed), nn.ReLU(), nn.Dropout(0.2),
                         nn.Dense(32, 10, rng=seed + 1)], l2=1e-3, seed=seed)
    return net, nn.SoftmaxCrossEntropy(), nn.Adam(net, lr=3e-3)


def bare_fit(net, loss, opt, data, epochs, seed):
    """The same training as Trainer.fit, written without trainwatch's loop."""
    (x, y), (xv, yv) = data
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for xb, yb in minibatches(x, y, 32, rng):
            scores = net.forward(xb, training=True)
            loss.forward(scores, yb)
            net.zero_grad()
            net.backward(loss.backward())
            opt.step()
        net.forward(xv, training=False)
    return rng


def test_every_callback_on_gives_bit_identical_training(tmp_path):
    data = digits()
    net_a, loss_a, opt_a = make_net()
    rng_a = bare_fit(net_a, loss_a, opt_a, data, epochs=3, seed=5)

    net_b, loss_b, opt_b = make_net()
    trainer = Trainer(net_b, loss_b, opt_b, callbacks=all_callbacks(data[1]), logdir=tmp_path,
                      progress=True)
    trainer.fit(*data[0], epochs=3, batch_size=32, validation_data=data[1], seed=5)

    # nothing was disabled for raising: every callback really ran, the checks included
    assert not [a for a in trainer.monitor.alerts.history if a.code == "callback.error"]
    check, stopped = [cb for cb in trainer.monitor.callbacks if isinstance(cb, GradientCheck)]
    assert len(check.reports) >= 4
    assert stopped.deferred >= 1  # its first check was stopped by the time limit
    assert [a.code for a in trainer.monitor.alerts.history].count("gradcheck.deferred") == 1
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"activations/distribution", "filters/fc1.weight"} <= set(events.Tags()["images"])
    assert "accuracy/val_subset" in events.Tags()["scalars"]
    assert_identical(NumpyBackend(net_a, loss_a, opt_a).state_dict(),
                      trainer.backend.state_dict())
    assert rng_a.bit_generator.state == trainer.data_rng.bit_generator.state
    assert any(tmp_path.iterdir())


def test_a_raising_callback_does_not_stop_training_and_is_reported_once(tmp_path):
    class Broken(Callback):
        calls = 0

        def on_backward_end(self, state):
            Broken.calls += 1
            raise RuntimeError("a bug in a user's callback")

    data = digits(n_train=200)
    net, loss, opt = make_net()
    trainer = Trainer(net, loss, opt, callbacks=[Broken()], logdir=tmp_path, progress=False)
    history = trainer.fit(*data[0], epochs=2, batch_size=32, validation_data=data[1])
    assert len(history["val_accuracy"]) == 2  # both epochs ran
    assert Broken.calls == 1
    errors = [a for a in trainer.monitor.alerts.history if a.code == "callback.error"]
    assert len(errors) == 1 and "a bug in a user's callback" in errors[0].message
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert sum('"callback.error"' in line for line in lines) == 1


def test_a_metric_that_is_not_a_number_is_left_out_and_reported_once():
    """Monitor.epoch_end with a metric float() rejects: training's loop goes on, the other
    metrics are kept, one warning names the metric."""
    from trainwatch import Monitor
    from trainwatch.outputs import MemoryOutput

    net, loss, opt = make_net()
    mem = MemoryOutput()
    mon = Monitor(net, loss=loss, optimizer=opt, callbacks=[], outputs=[mem], progress=False)
    with mon.run(epochs=2):
        for _ in range(2):
            mon.epoch_begin()
            mon.epoch_end({"val_accuracy": [0.5, 0.6], "val_loss": 0.7})
    warned = [a for a in mon.alerts.history if a.code == "metrics.not_a_number"]
    assert len(warned) == 1 and "'val_accuracy'" in warned[0].message
    assert mon.state.metrics["val_loss"] == 0.7 and "val_accuracy" not in mon.state.metrics
    assert len(mem.scalars_log["loss/val"]) == 2


def test_stop_request_ends_training_cleanly():
    class StopAtFive(Callback):
        def on_step_end(self, state):
            if state.step == 4:
                state.request_stop("five steps are enough")

    data = digits(n_train=320)
    net, loss, opt = make_net()
    trainer = Trainer(net, loss, opt, callbacks=[StopAtFive()], progress=False)
    trainer.fit(*data[0], epochs=3, batch_size=32)
    assert trainer.monitor.step == 5
    assert "five steps are enough" in trainer.monitor.summary()


def test_fit_validates_arguments():
    net, loss, opt = make_net()
    trainer = Trainer(net, loss, opt, callbacks=[], progress=False)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(np.zeros((4, 64)), np.zeros(4, int), epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(np.zeros((4, 64)), np.zeros(4, int), batch_size=-1)
    with pytest.raises(TypeError, match="x: expected an array of examples, got NoneType"):
        trainer.fit(None, np.zeros(4, int))
    with pytest.raises(TypeError, match=r"validation_data: expected a pair \(x_val, y_val\)"):
        trainer.fit(np.zeros((4, 64)), np.zeros(4, int), validation_data=np.zeros((4, 64)))


def test_trainer_learns_the_digits():
    data = digits(n_train=1000, n_val=300)
    net, loss, opt = make_net()
    history = Trainer(net, loss, opt, callbacks=[], progress=False).fit(
        *data[0], epochs=8, batch_size=32, validation_data=data[1])
    assert history["val_accuracy"][-1] > 0.9
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_callbacks_sleeping_between_their_steps_write_what_every_step_dispatch_writes(
        monkeypatch):
    """Each callback's next_step is the truth: a run whose callbacks sleep until their next
    step writes the same scalars, histograms and images and raises the same alerts as one
    that calls every callback at every step."""
    from tests.helpers import dashboard, every_step_dispatch, scheduled_callbacks
    from trainwatch.outputs import MemoryOutput

    def run():
        data = digits(n_train=320, n_val=100)
        net, loss, opt = make_net()
        memory = MemoryOutput()
        trainer = Trainer(net, loss, opt, callbacks=scheduled_callbacks(data[1]),
                          outputs=[memory], progress=False)
        trainer.fit(*data[0], epochs=3, batch_size=32, validation_data=data[1])
        return dashboard(memory, trainer.monitor.alerts.history)

    sleeping = run()
    every_step_dispatch(monkeypatch)
    assert run() == sleeping
    scalars, histograms, images, _, _ = sleeping
    assert [s for s, _ in scalars["loss/train"]] == list(range(0, 30, 3))
    assert [point[0] for point in histograms["weights/fc1.weight"]] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert "gradcheck/passed" in scalars and images
