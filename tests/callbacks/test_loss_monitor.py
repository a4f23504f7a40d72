"""LossMonitor: non-finite values, divergence, plateau, noise, the expected initial loss."""

import json
import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainwatch import Callback, Trainer, nn
from trainwatch.callbacks.loss_monitor import LossMonitor, class_count
from trainwatch.callbacks.update_ratio import UpdateRatioMonitor
from trainwatch.data import load_digits, train_val_split
from trainwatch.outputs.memory import MemoryOutput

SIZE = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
LOSS_CODES = ("loss.nonfinite", "loss.divergence", "loss.plateau", "loss.noise", "loss.initial")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    (xt, yt), _ = train_val_split(x, y, val_fraction=0.2, seed=0)
    return xt[:960], yt[:960]


def mlp(seed=0, scale=None, l2=0.0):
    return nn.Sequential([nn.Dense(64, 32, rng=seed, weight_scale=scale), nn.ReLU(),
                          nn.Dense(32, 10, rng=seed + 1, weight_scale=scale)], l2=l2)


def train(model, opt, callbacks, data, *, epochs=2, batch_size=32, logdir=None,
          loss=None):
    mem = MemoryOutput()
    trainer = Trainer(model, loss or nn.SoftmaxCrossEntropy(), opt, callbacks=callbacks,
                      progress=False, outputs=[mem], logdir=logdir, raise_errors=True)
    trainer.fit(*data, epochs=epochs, batch_size=batch_size)
    return trainer, mem


def fired(trainer, code=None):
    return [a for a in trainer.monitor.alerts.history
            if (code is None and a.code.startswith("loss.") or a.code == code)
            and not a.resolved]


class Inject(Callback):
    """Writes NaN into one entry of a tensor's weights before the forward pass of ``step``,
    or into its gradient right after that step's backward pass (``gradient=True``)."""

    order = -100

    def __init__(self, model, name, step, *, gradient=False):
        source = model.named_gradients() if gradient else model.named_parameters()
        self.array, self.step, self.gradient = source[name], step, gradient

    def on_batch_begin(self, state):
        if state.step == self.step and not self.gradient:
            self.array.flat[0] = np.nan

    def on_backward_end(self, state):
        if state.step == self.step and self.gradient:
            self.array.flat[0] = np.nan


class SetLR(Callback):
    def __init__(self, opt, step, lr):
        self.opt, self.step, self.lr = opt, step, lr

    def on_step_begin(self, state):
        if state.step == self.step:
            self.opt.lr = self.lr  # training's own hyper-parameter: the test's doing


# -- non-finite ------------------------------------------------------------------------------------


def test_nan_weight_gives_one_critical_alert_a_clean_stop_and_readable_logs(digits, tmp_path):
    model = mlp()
    monitor = LossMonitor()
    trainer, _ = train(model, nn.Momentum(model, lr=0.05),
                       [Inject(model, "fc2.weight", 25), monitor, UpdateRatioMonitor()], digits,
                       epochs=3, logdir=tmp_path)
    alerts = fired(trainer, "loss.nonfinite")
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.severity.value, a.tensor, a.step) == ("critical", "fc2.weight", 25)
    assert "nan" in a.message and "fc2.weight" in a.message and "stops" in a.message
    assert a.suggestion
    state = trainer.monitor.state
    assert state.stop_requested and "fc2.weight" in state.stop_reason
    assert state.step == 26  # the batch of step 25 finished, nothing after it
    assert len(trainer.history["train_loss"]) == 1  # stopped inside the first epoch
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(d["code"], d["tensor"]) for d in lines if d["code"] == "loss.nonfinite"] == [
        ("loss.nonfinite", "fc2.weight")]
    ea = EventAccumulator(str(tmp_path), size_guidance=SIZE)
    ea.Reload()
    assert [e.step for e in ea.Scalars("loss/train_log10")] == [0, 20]
    assert ea.Scalars("update_ratio/fc1.weight")


def test_without_stopping_the_alert_still_fires_once(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=0.05),
                       [Inject(model, "fc1.weight", 12), LossMonitor(stop_on_nonfinite=False)],
                       digits, epochs=2)
    assert [(a.tensor, a.step) for a in fired(trainer, "loss.nonfinite")] == [("fc1.weight", 12)]
    assert trainer.monitor.step == 60 and not trainer.monitor.state.stop_requested


def test_nan_gradient_with_finite_loss_is_named(digits):
    model = mlp()
    inject = Inject(model, "fc2.bias", 20, gradient=True)
    trainer, _ = train(model, nn.SGD(model, lr=0.05),
                       [inject, LossMonitor(check_tensors_every=10)], digits)
    alerts = fired(trainer, "loss.nonfinite")
    assert [(a.tensor, a.step) for a in alerts] == [("fc2.bias", 20)]
    assert "gradient of fc2.bias" in alerts[0].message
    assert "still finite" in alerts[0].message
    assert trainer.monitor.step == 21


def test_nan_gradient_is_caught_at_the_next_loss_without_periodic_checks(digits):
    model = mlp()
    inject = Inject(model, "fc2.bias", 20, gradient=True)
    trainer, _ = train(model, nn.SGD(model, lr=0.05),
                       [inject, LossMonitor(check_tensors_every=None)], digits)
    alerts = fired(trainer, "loss.nonfinite")
    # the step applied the NaN gradient; the next loss is NaN and the weights are named
    assert [(a.tensor, a.step) for a in alerts] == [("fc2.bias", 21)]
    assert "the training loss is nan" in alerts[0].message
    assert trainer.monitor.step == 22


def test_sparse_loss_reads_still_catch_nan(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=0.05),
                       [Inject(model, "fc1.bias", 23), LossMonitor(every=10, check_every=5)],
                       digits)
    # Step 23 is not read. Its NaN loss back-propagated into every gradient and step 23 wrote
    # NaN into every tensor, so at step 25 the first tensor in layer order is named: reading
    # the loss every step (the default) is what names the origin.
    assert [(a.tensor, a.step) for a in fired(trainer, "loss.nonfinite")] == [
        ("fc1.weight", 25)]
    assert trainer.monitor.step == 26


def test_nan_in_the_data_is_blamed_on_the_inputs(digits):
    x, y = digits[0].copy(), digits[1]
    x[5, 3] = np.nan
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=0.05), [LossMonitor()], (x, y), epochs=1)
    alerts = fired(trainer, "loss.nonfinite")
    assert len(alerts) == 1 and alerts[0].tensor == "inputs"
    assert "inputs contain NaN" in alerts[0].message
    assert trainer.monitor.step == alerts[0].step + 1


# -- divergence, plateau, noise --------------------------------------------------------------------


def test_divergence_after_a_learning_rate_jump(digits):
    model = mlp()
    opt = nn.SGD(model, lr=0.1)
    trainer, mem = train(model, opt, [SetLR(opt, 150, 5.0), LossMonitor()], digits, epochs=8)
    alerts = fired(trainer)
    assert [a.code for a in alerts] == ["loss.divergence"]  # no plateau/noise on top of it
    a = alerts[0]
    assert 150 < a.step <= 180
    assert a.value > 3 and "× its running minimum" in a.message
    # (a raise of the rate: the loss went back above its initial value)
    assert "raised the learning rate to 5 (50× its value then)" in a.message
    assert "raised learning rate" in a.suggestion and "lower the schedule's peak" in a.suggestion
    smoothed = dict(mem.scalars_log["loss/train_smoothed"])
    assert smoothed[a.step] > 3 * min(v for s, v in smoothed.items() if s <= 150)


def test_a_warm_restart_of_the_learning_rate_is_no_divergence_unless_it_undoes_the_progress():
    """SGDR: at a restart the schedule raises the learning rate from near 0 back to its peak,
    and a converged loss rises many-fold (0.016 -> 0.3) before falling again: while the rate
    is raised, a rise is a divergence only if it undoes RAISED_RISE of the progress made (and
    the plateau rule skips the bump); the same bump at a constant rate is a divergence."""
    import trainwatch as tw
    from trainwatch import nn as twnn

    def run(bump, raise_lr):
        model = twnn.Sequential([twnn.Dense(4, 3)], seed=0)
        opt = twnn.SGD(model, lr=0.001)
        mon = tw.Monitor(model, loss=twnn.SoftmaxCrossEntropy(), optimizer=opt,
                         callbacks=[LossMonitor()], progress=False, raise_errors=True)
        with mon.run():
            for k in range(800):
                if k == 400 and raise_lr:
                    opt.lr = 0.05
                loss = 2.3 * 0.985 ** k + 0.01  # ~0.016 by step 400
                if k >= 400:  # up over 20 steps, back down over ~100
                    loss += bump * min(1.0, (k - 400) / 20) * math.exp(-(k - 400) / 60)
                mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
                mon.loss_computed(loss)
                mon.step_end()
        return [a for a in mon.alerts.history if not a.resolved]

    assert run(0.3, raise_lr=True) == []  # ~13% of the progress undone
    assert [a.code for a in run(0.3, raise_lr=False)] == ["loss.divergence"]
    # a spike of a loss near zero (0.016 -> ~0.08, 5x) undoing 3% of the progress is none, at
    # any rate (MIN_RISE)
    assert run(0.1, raise_lr=False) == []
    (a,) = run(1.5, raise_lr=True)  # back to 60% of the initial loss: a divergence
    assert a.code == "loss.divergence" and 400 < a.step <= 460
    assert "raised the learning rate to 0.05 (50× its value then)" in a.message


def test_a_plateau_points_at_the_causes_other_alerts_found(digits):
    """Dead ReLUs (a first-layer bias of -10) leave the loss flat from the start, which reads
    as a learning rate too low; the update ratios have said the tensors get no gradient:
    the plateau's advice points at that first."""
    model = mlp()
    model.named_parameters()["fc1.bias"][...] = -10.0
    trainer, _ = train(model, nn.SGD(model, lr=0.05), [UpdateRatioMonitor(), LossMonitor()],
                       digits, epochs=8)
    assert fired(trainer, "update_ratio.frozen")
    (plateau,) = fired(trainer, "loss.plateau")
    assert plateau.suggestion.startswith(
        "first fix what this run's other alerts point at (update_ratio.frozen")
    assert "raise the learning rate" in plateau.suggestion  # (then the usual reading)


def test_a_plateau_under_a_learning_rate_decayed_to_nothing_blames_the_schedule():
    """A schedule counted in epochs but stepped every batch decays the rate 100s of times too
    fast: the loss stalls near its start, which alone reads as 'a learning rate too low'.
    With the rate down to 1/1000 of its first value, the plateau blames the schedule."""
    import trainwatch as tw
    from trainwatch import nn as twnn

    def run(decay):
        model = twnn.Sequential([twnn.Dense(4, 3)], seed=0)
        opt = twnn.SGD(model, lr=0.05)
        mon = tw.Monitor(model, loss=twnn.SoftmaxCrossEntropy(), optimizer=opt,
                         callbacks=[LossMonitor(check_initial=False)], progress=False,
                         raise_errors=True)
        with mon.run():
            for k in range(300):
                mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
                mon.loss_computed(2.3 - 0.2 * (1 - 0.9 ** k))  # (a start, then flat)
                mon.step_end()
                opt.lr *= decay
        return [a for a in mon.alerts.history if a.code == "loss.plateau"]

    (plateau,) = run(0.9)
    assert "the schedule decays it far too fast" in plateau.message
    assert "step the scheduler" in plateau.suggestion
    (plateau,) = run(1.0)  # (a constant rate: the usual reading)
    assert "learning rate that is too low" in plateau.message


def test_healthy_run_raises_no_loss_alert(digits):
    model = mlp()
    trainer, mem = train(model, nn.Momentum(model, lr=0.05), [LossMonitor()], digits, epochs=8)
    assert fired(trainer) == []
    assert mem.scalars_log["loss/window_progress"]  # the rules did run
    assert mem.scalars_log["loss/relative_spread"]


def test_plateau_of_a_too_low_learning_rate(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=1e-6), [LossMonitor()], digits, epochs=8)
    alerts = fired(trainer)
    assert [a.code for a in alerts] == ["loss.plateau"]
    a = alerts[0]
    assert a.step == 220  # 200-step window full at step 199, checked at 200 and 220
    assert "progress over the last 200 steps" in a.message
    assert "learning rate that is too low" in a.message
    assert "raise the learning rate" in a.suggestion and "paired" in a.suggestion
    assert "raise the learning rate" in a.suggestion


def test_plateau_after_a_too_high_learning_rate_killed_the_units(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=5.0), [LossMonitor()], digits, epochs=10)
    plateau = fired(trainer, "loss.plateau")
    assert len(plateau) == 1
    assert "killed the units" in plateau[0].message


def test_noise_of_a_tiny_batch(digits):
    model = mlp()
    trainer, _ = train(model, nn.Momentum(model, lr=0.05), [LossMonitor()], digits, epochs=1,
                       batch_size=4)
    noise = fired(trainer, "loss.noise")
    assert len(noise) == 1
    a = noise[0]
    assert 100 <= a.step <= 130  # judged once the window is past the warm-up
    assert a.value > 0.3 and "batch size 4" in a.message
    assert "larger batch" in a.suggestion and "sampling noise" in a.suggestion
    assert a.severity.value == "info"  # (an observation: a noisy healthy run needs nothing)


# -- the initial loss ------------------------------------------------------------------------------


def test_initial_loss_far_off_for_weights_100x_too_large(digits):
    model = mlp(scale=100 * math.sqrt(2 / 64))
    monitor = LossMonitor()
    trainer, _ = train(model, nn.SGD(model, lr=1e-9), [monitor], digits, epochs=1)
    alerts = fired(trainer, "loss.initial")
    assert len(alerts) == 1 and alerts[0].step == 0
    assert alerts[0].value == monitor.initial_loss > 100
    assert monitor.expected_initial == pytest.approx(math.log(10))
    assert "ln 10" in alerts[0].message and "initialisation" in alerts[0].message
    assert "weights" in alerts[0].suggestion and "normalise the inputs" in alerts[0].suggestion


@pytest.mark.parametrize("loss, expected", [
    (nn.SoftmaxCrossEntropy(), math.log(10)),
    (nn.MulticlassSVM(), 9.0),
], ids=["softmax", "svm"])
def test_initial_loss_of_a_normal_init_passes(digits, loss, expected):
    model = mlp()
    monitor = LossMonitor()
    trainer, _ = train(model, nn.SGD(model, lr=0.05), [monitor], digits, epochs=1, loss=loss)
    assert monitor.expected_initial == pytest.approx(expected)
    assert monitor.initial_loss == pytest.approx(expected, rel=0.2)
    assert fired(trainer, "loss.initial") == []


def test_initial_loss_is_checked_without_regularisation(digits):
    # l2=50 makes the total loss at step 0 several times ln 10; the data loss is fine.
    model = mlp(l2=50.0)
    monitor = LossMonitor()
    trainer, _ = train(model, nn.SGD(model, lr=1e-4), [monitor], digits, epochs=1)
    assert trainer.monitor.state.reg_loss is not None
    assert fired(trainer, "loss.initial") == []
    assert monitor.initial_loss < 3


def test_expected_initial_loss_can_be_given(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=0.05),
                       [LossMonitor(expected_initial_loss=0.5)], digits, epochs=1)
    alerts = fired(trainer, "loss.initial")
    assert len(alerts) == 1 and "given as expected_initial_loss" in alerts[0].message


def test_a_start_below_the_expected_loss_tells_a_trained_model_from_a_mis_scaled_loss(digits):
    """A model trained before (pretrained weights, a resumed checkpoint) starts far below
    ln C with its first batch mostly right: an info saying so, not 'the initialisation or the
    loss is wrong'. A start below the expected loss with predictions at chance is a loss
    that is not what it seems: a warning (an untrained model cannot use leaked labels, so
    the advice is about the loss's scaling, not leaks)."""
    model = mlp()
    train(model, nn.Momentum(model, lr=0.05), [], digits, epochs=5)  # (pretraining)
    # fine-tuned at a small rate: the loss hardly moves from where it started, a plateau by
    # the rule, but no "poor value" of a fresh start: the model has converged for this rate
    trainer, _ = train(model, nn.SGD(model, lr=1e-4), [LossMonitor()], digits, epochs=12)
    (alert,), (plateau,) = fired(trainer, "loss.initial"), fired(trainer, "loss.plateau")
    assert alert.severity.value == "info" and alert.value < 0.5
    assert "trained before (pretrained weights, a resumed checkpoint)" in alert.message
    assert "check_initial=False" in alert.suggestion
    assert plateau.severity.value == "info"
    assert "the model started trained" in plateau.message and "converged" in plateau.message

    class TenthOfCrossEntropy(nn.SoftmaxCrossEntropy):  # divided by 10 x the examples
        def forward(self, scores, targets):
            return super().forward(scores, targets) / 10

        def backward(self):
            return super().backward() / 10

    fresh = mlp()  # at chance, with a loss of ln(10) / 10
    trainer, _ = train(fresh, nn.SGD(fresh, lr=0.01), [LossMonitor()], digits, epochs=1,
                       loss=TenthOfCrossEntropy())
    (alert,) = fired(trainer, "loss.initial")
    assert alert.severity.value == "warning" and "probably wrong" in alert.message
    assert "averaged correctly" in alert.suggestion and "leak" not in alert.suggestion


# -- outputs, cost, arguments ----------------------------------------------------------------------


def test_loss_is_logged_on_a_log_scale_on_scheduled_steps(digits):
    model = mlp()
    trainer, mem = train(model, nn.SGD(model, lr=0.05), [LossMonitor(every=5)], digits, epochs=1)
    logged = mem.scalars_log["loss/train_log10"]
    assert [s for s, _ in logged] == list(range(0, 30, 5))
    raw = dict(mem.scalars_log["loss/train"])  # MetricLogger's, every 10 steps
    both = [(v, raw[s]) for s, v in logged if s in raw]
    assert len(both) == 3
    for v, loss in both:
        assert v == pytest.approx(math.log10(loss))
    assert mem.layouts["loss"]["training loss, log10"][1] == [r"^loss/train_log10$"]


def test_watching_does_not_change_training(digits):
    def run(callbacks):
        model = mlp()
        train(model, nn.Momentum(model, lr=0.05), callbacks, digits, epochs=1)
        return model.named_parameters()

    plain, watched = run([]), run([LossMonitor(every=1)])
    for k in plain:
        np.testing.assert_array_equal(plain[k], watched[k])


@pytest.mark.parametrize("kwargs, argument", [
    ({"every": 0}, "every"),
    ({"every": 10, "check_every": 3}, "every"),
    ({"check_every": 0}, "check_every"),
    ({"check_tensors_every": 0}, "check_tensors_every"),
    ({"stop_on_nonfinite": "yes"}, "stop_on_nonfinite"),
    ({"smoothing": 0}, "smoothing"),
    ({"warmup": -1}, "warmup"),
    ({"divergence_factor": 1.0}, "divergence_factor"),
    ({"plateau_window": 3}, "plateau_window"),
    ({"plateau_threshold": 0}, "plateau_threshold"),
    ({"noise_window": 2}, "noise_window"),
    ({"noise_threshold": -1}, "noise_threshold"),
    ({"patience": 0}, "patience"),
    ({"expected_initial_loss": 0}, "expected_initial_loss"),
    ({"initial_tolerance": float("nan")}, "initial_tolerance"),
])
def test_arguments_are_validated(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        LossMonitor(**kwargs)


def test_losses_on_an_accelerator_are_read_in_one_transfer_per_batch(monkeypatch):
    """A backend whose host reads are syncs gets the losses read in one transfer per batch
    the Monitor hands over, and the rules see the same values as with per-step reads."""
    from tests.helpers import Clock
    from trainwatch.backends.numpy_backend import NumpyBackend
    from trainwatch.core import budget as budget_module

    monkeypatch.setattr(budget_module.time, "perf_counter", Clock())  # (batches by steps)
    monkeypatch.setattr(budget_module, "BATCH_STEPS", 15)

    class SyncCountingBackend(NumpyBackend):
        host_reads_cheap = False
        transfers: list[int] = []

        def scalars_to_host(self, values):
            self.transfers.append(len(values))
            return [getattr(v, "value", v) for v in values]

    class DeviceScalar:  # a loss that refuses float(): reading it must go through the backend
        def __init__(self, value):
            self.value = value

        def __float__(self):
            raise AssertionError("a device scalar was read outside scalars_to_host")

    import trainwatch as tw
    from trainwatch import nn as twnn

    losses = [2.3 * 0.99 ** k for k in range(40)]
    results = {}
    for cheap in (True, False):
        model = twnn.Sequential([twnn.Dense(4, 3)], seed=0)
        backend = SyncCountingBackend(model, twnn.SoftmaxCrossEntropy(), twnn.SGD(model, lr=0.1))
        backend.host_reads_cheap = cheap
        backend.transfers = []
        monitor = LossMonitor(every=10, warmup=5, plateau_window=8, noise_window=5)
        quiet_logger = tw.MetricLogger(every=10**6)  # (no loss points: no reads of its own)
        mon = tw.Monitor(backend, callbacks=[monitor, quiet_logger], progress=False,
                         raise_errors=True)
        with mon.run():
            for k, value in enumerate(losses):
                mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
                mon.loss_computed(value if cheap or k == 0 else DeviceScalar(value))
                mon.step_end()
        results[cheap] = (monitor._ema, monitor._n, backend.transfers)
    assert results[True][:2] == results[False][:2]
    # (MetricLogger's only loss point, step 0's, is written at once: one read of its own
    # where reads are cheap, in step 0's transfer where they are not)
    assert results[True][2] == [1]  # LossMonitor's losses are floats already: no read
    # step 0, steps 1-16, 17-32, and 33-39 at the end
    assert results[False][2] == [2, 16, 16, 7]


def test_a_steps_later_losses_are_checked_for_nan_only():
    """Several losses in one step (accumulated batches; a closure LBFGS re-evaluates at
    moved parameters, where a trial point may be far off): the rules and the initial-loss
    check take each step's first loss, so a re-evaluation 30x the loss raises no divergence
    and does not stand for the initial loss; a NaN among them still stops training."""
    import trainwatch as tw
    from trainwatch import nn as twnn

    def run(later):
        model = twnn.Sequential([twnn.Dense(4, 3)], seed=0)
        monitor = LossMonitor(every=2, warmup=2, expected_initial_loss=2.3)
        mon = tw.Monitor(model, loss=twnn.SoftmaxCrossEntropy(), optimizer=twnn.SGD(model, lr=0.1),
                         callbacks=[monitor], progress=False, raise_errors=True)
        with mon.run():
            for k in range(30):
                mon.batch_begin(np.zeros((2, 4)), np.zeros(2, dtype=int))
                mon.loss_computed(2.3 * 0.98 ** k)
                for value in later(k):
                    mon.loss_computed(value)
                mon.step_end()
                if mon.should_stop:
                    break
        return monitor, mon

    monitor, mon = run(lambda k: [70.0, 2.2 * 0.98 ** k])
    assert monitor.initial_loss == 2.3 and monitor._n == 30
    assert not mon.alerts.history
    monitor, mon = run(lambda k: [math.nan] if k == 12 else [70.0])
    assert [(a.code, a.step) for a in mon.alerts.history] == [("loss.nonfinite", 12)]
    assert mon.state.step == 13 and mon.state.stop_requested  # (stopped after step 12)


@pytest.mark.parametrize("scores, targets, classes", [
    ((32, 10), (32,), 10),             # (N, C)
    ((32, 5, 64), (32, 64), 5),        # torch's (N, C, T) sequence layout
    ((8, 21, 16, 16), (8, 16, 16), 21),  # (N, C, H, W) pixels
    ((32, 64, 5), (32, 64), 5),        # a token classifier's (N, T, C)
    ((32, 10), (32, 10), 10),          # one-hot targets
    ((32, 10), None, 10),              # no targets reported: the last dim
    ((32,), (32,), None),
])
def test_the_classes_of_the_expected_initial_loss_follow_the_targets_layout(
        scores, targets, classes):
    """ln C needs C: dim 1 for torch's (N, C, d...) layouts (the last dim, 64 positions,
    made a 5-class tagger's healthy start read as 'below chance' before)."""
    assert class_count(scores, targets) == classes
