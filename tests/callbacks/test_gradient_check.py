"""GradientCheck with the real numpy stack: schedule, what it checks, what it writes and
alerts, planted bugs versus correct tricky models, and that it never changes training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import assert_identical
from trainwatch import Callback, Monitor, Trainer, nn
from trainwatch.callbacks.gradient_check import PERIODIC_PROBES, GradientCheck
from trainwatch.data import load_digits
from trainwatch.outputs.memory import MemoryOutput

SIZE = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
MLP_TENSORS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
BUGGY_TENSORS = ["fc1.weight", "fc1.bias", "sig2.weight", "sig2.bias"]  # sig2 and below


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x[:320], y[:320]  # 10 steps per epoch at batch size 32


@pytest.fixture(scope="module")
def digit_images():
    x, y = load_digits(images=True)
    return x[:320], y[:320]


# -- models -----------------------------------------------------------------------------------


class SigmoidDense(nn.Layer):
    """dense + sigmoid; ``buggy=True`` applies the sigmoid derivative to z instead of a."""

    kind = "sigmoid"

    def __init__(self, n_in, n_out, *, rng, buggy):
        super().__init__()
        w = np.random.default_rng(rng).standard_normal((n_in, n_out)) / np.sqrt(n_in)
        self.params = {"weight": w, "bias": np.zeros(n_out)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buggy = buggy

    def forward(self, x, training):
        self._x = x
        self._z = x @ self.params["weight"] + self.params["bias"]
        self._a = 1 / (1 + np.exp(-self._z))
        return self._a

    def backward(self, da):
        dz = da * (self._z * (1 - self._z) if self.buggy else self._a * (1 - self._a))
        self.grads["weight"] += self._x.T @ dz
        self.grads["bias"] += dz.sum(axis=0)
        return dz @ self.params["weight"].T


class InterruptOnFloat64(nn.Dense):
    """A correct dense layer that raises KeyboardInterrupt when run in float64: in a float32
    model that happens only inside the gradient check's float64 copy."""

    def forward(self, x, training):
        if self.params["weight"].dtype == np.float64:
            raise KeyboardInterrupt
        return super().forward(x, training)


class Noise(nn.Layer):
    """Adds noise from its own, unseeded generator in training: a random loss."""

    kind = "noise"

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng()

    def forward(self, x, training):
        return x + 0.1 * self.rng.standard_normal(x.shape) if training else x

    def backward(self, dy):
        return dy


def mlp(seed=0, *, dtype=np.float64, l2=0.0, dropout=0.0):
    layers = [nn.Dense(64, 16, rng=seed, dtype=dtype), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Dense(16, 10, rng=seed + 1, dtype=dtype))
    return nn.Sequential(layers, l2=l2, seed=seed)


def buggy_net(buggy=True):
    layers = [nn.Dense(64, 16, rng=0), nn.Tanh(), SigmoidDense(16, 16, rng=1, buggy=buggy),
              nn.Dense(16, 10, rng=2)]
    return nn.Sequential(layers, names=["fc1", "tanh1", "sig2", "fc3"], seed=0)


def relu_cnn_with_dropout():
    layers = [nn.Conv2D(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(),
              nn.Dropout(0.3), nn.Dense(64, 10, rng=1)]
    return nn.Sequential(layers, l2=1e-3, seed=0)


class Recorder(Callback):
    """Records, at chosen hooks, what the run looked like (ordered around GradientCheck)."""

    def __init__(self, order=0):
        self.order = order
        self.losses = []
        self.at_backward_end = {}

    def on_loss_computed(self, state):
        self.losses.append(float(state.loss))

    def on_backward_end(self, state):
        backend = state.backend
        self.at_backward_end[state.step] = {
            "state": backend.state_dict(),
            "grads": backend.gradients(),
            "inputs": state.inputs,
            "targets": state.targets,
            "probs": backend.loss_fn._probs.copy(),
            "capture": backend.model.capture,
        }


def fit(model, callbacks, data, *, epochs=2, opt=None, logdir=None, seed=0):
    mem = MemoryOutput()
    opt = opt or nn.SGD(model, lr=0.1)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, callbacks=callbacks, outputs=[mem],
                      logdir=logdir, progress=False, raise_errors=True)
    trainer.fit(*data, epochs=epochs, batch_size=32, seed=seed)
    return trainer, mem


def gradcheck_alerts(trainer, *, resolved=False):
    return [a for a in trainer.monitor.alerts.history
            if a.code.startswith("gradcheck.") and a.resolved == resolved]


# -- schedule -----------------------------------------------------------------------------------


def test_no_check_during_warmup_then_one_every_n_steps(digits):
    check = GradientCheck(budget=None, every=7, warmup_steps=5)
    _, mem = fit(mlp(), [check], digits, epochs=3)  # steps 0..29
    steps = [step for step, _ in check.reports]
    assert steps == [5, 12, 19, 26]
    assert mem.steps("gradcheck/passed") == steps
    assert all(report.passed for _, report in check.reports)


def test_warmup_by_loss_drop_waits_until_the_loss_has_fallen(digits):
    recorder = Recorder(order=-1)
    check = GradientCheck(budget=None, every=15, warmup_steps=0, warmup_loss_drop=0.25)
    fit(mlp(), [recorder, check], digits, epochs=6)  # steps 0..59
    losses = recorder.losses
    target = losses[0] * (1 - 0.25)
    # the loss is read at the first step allowed by warmup_steps, then every 10th step
    first = next(s for s in range(0, len(losses), 10) if losses[s] <= target)
    assert first >= 10  # the warm-up really waited
    assert all(losses[s] > target for s in range(0, first, 10))
    steps = [step for step, _ in check.reports]
    assert steps == list(range(first, len(losses), 15))


def test_warmup_steps_and_loss_drop_both_hold_before_the_first_check(digits):
    recorder = Recorder(order=-1)
    check = GradientCheck(budget=None, every=100, warmup_steps=23, warmup_loss_drop=0.05)
    fit(mlp(), [recorder, check], digits, epochs=4)
    losses = recorder.losses
    candidates = [23] + list(range(30, len(losses), 10))
    first = next(s for s in candidates if losses[s] <= losses[0] * 0.95)
    assert [step for step, _ in check.reports] == [first]
    assert first >= 23


def test_a_reused_callback_starts_its_schedule_and_reports_afresh(digits):
    check = GradientCheck(budget=None, every=6, warmup_steps=4)
    fit(mlp(), [check], digits, epochs=2)
    first = list(check.reports)
    fit(mlp(), [check], digits, epochs=2)
    assert [step for step, _ in first] == [4, 10, 16]
    assert [step for step, _ in check.reports] == [4, 10, 16]
    assert all(new is not old for (_, new), (_, old) in zip(check.reports, first))


def test_checks_the_first_examples_of_the_current_batch(digits):
    recorder = Recorder(order=-1)
    check = GradientCheck(budget=None, every=100, warmup_steps=6, examples=2)
    fit(mlp(), [recorder, check], digits)
    step, report = check.reports[0]
    seen = recorder.at_backward_end[step]
    # the loss at the checked point, recomputed by hand on a copy of the model at that step
    model = mlp()
    model.load_state_dict(seen["state"]["model"])
    loss = nn.SoftmaxCrossEntropy()
    x, y = np.asarray(seen["inputs"]), np.asarray(seen["targets"])
    expected_two = loss.forward(model.forward(x[:2], training=True), y[:2])
    expected_three = loss.forward(model.forward(x[:3], training=True), y[:3])
    assert report.loss == pytest.approx(expected_two, rel=1e-12)
    assert abs(expected_three - expected_two) > 1e-6  # a third example would change it


def test_every_tensor_is_probed_with_the_periodic_probes(digits):
    check = GradientCheck(budget=None, every=100, warmup_steps=3)
    fit(mlp(), [check], digits, epochs=1)
    report = check.last_report
    assert list(report.params) == MLP_TENSORS
    for name, tensor in report.params.items():
        size = math.prod(tensor.shape)
        if size > PERIODIC_PROBES["coordinates"]:
            assert tensor.directions == PERIODIC_PROBES["directions"], name
            assert len(tensor.coordinates) >= PERIODIC_PROBES["coordinates"], name
        assert tensor.probed >= 1 and tensor.verdict == "correct", name
    more = GradientCheck(budget=None, every=100, warmup_steps=3, coordinates=6, directions=2)
    fit(mlp(), [more], digits, epochs=1)
    assert more.last_report.params["fc1.weight"].directions == 2
    assert len(more.last_report.params["fc1.weight"].coordinates) == 6


# -- what it writes ------------------------------------------------------------------------------


def test_writes_per_tensor_errors_passed_and_the_report_to_tensorboard(digits, tmp_path):
    check = GradientCheck(budget=None, every=8, warmup_steps=4)
    fit(mlp(), [check], digits, epochs=2, logdir=tmp_path)  # checks at 4, 12
    ea = EventAccumulator(str(tmp_path), size_guidance=SIZE)
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    for name in MLP_TENSORS:
        events = ea.Scalars(f"gradcheck/max_rel_error/{name}")
        assert [e.step for e in events] == [4, 12]
        assert all(0 <= e.value < 1e-7 for e in events)
    assert [(e.step, e.value) for e in ea.Scalars("gradcheck/passed")] == [(4, 1.0), (12, 1.0)]
    assert "gradcheck/seconds" in scalars
    texts = ea.Tensors("gradcheck/report/text_summary")
    assert [t.step for t in texts] == [4, 12]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert "gradient check PASSED" in text
    assert all(name in text for name in MLP_TENSORS)
    assert not [tag for tag in ea.Tags()["images"] if tag.startswith("gradcheck/")]


def test_a_tensor_whose_probes_sit_on_kinks_is_judged_one_sided(digit_images):
    # at initialisation the conv bias is 0 and the digits' background pixels are 0: every
    # conv-bias probe crosses the ReLU kinks those units sit on, at every step. The random
    # direction moves some of them up and others down (both sides change the pattern: set
    # aside); then the largest-gradient entry, whose θ-h keeps its units off as the backward
    # takes them, is judged one-sided there (it was set aside too, with no error to write)
    model = relu_cnn_with_dropout()
    check = GradientCheck(budget=None, every=100, warmup_steps=0)
    _, mem = fit(model, [check], digit_images, epochs=1, opt=nn.SGD(model, lr=1e-9))
    report = check.reports[0][1]
    assert report.passed
    bias = report.params["conv1.bias"]
    assert bias.verdict == "kink" and bias.kinks == 1 and bias.max_rel_error == 0.0, bias
    assert any("sat on a kink at the checked point" in note for note in bias.notes)
    assert mem.steps("gradcheck/max_rel_error/conv1.bias") == [0]
    assert mem.steps("gradcheck/max_rel_error/conv1.weight") == [0]


# -- planted bug versus correct tricky models -----------------------------------------------------


def test_a_planted_bug_alerts_critical_once_per_tensor_per_episode(digits):
    check = GradientCheck(budget=None, every=5, warmup_steps=3)
    trainer, mem = fit(buggy_net(), [check], digits, epochs=2)  # checks at 3, 8, 13, 18
    assert [step for step, _ in check.reports] == [3, 8, 13, 18]
    for _, report in check.reports:
        assert report.failed == BUGGY_TENSORS, str(report)
        assert report.params["fc3.weight"].verdict == "correct"
        assert report.params["fc3.bias"].verdict == "correct"
    alerts = gradcheck_alerts(trainer)
    assert sorted(a.tensor for a in alerts) == sorted(BUGGY_TENSORS)  # once, not per check
    for a in alerts:
        assert a.code == "gradcheck.wrong"
        assert a.severity.value == "critical"
        assert a.step == 3
        assert a.tensor in a.message and "max relative error" in a.message
        assert a.value > 1e-2
    by_tensor = {a.tensor: a for a in alerts}
    assert "closest to the loss" in by_tensor["sig2.bias"].suggestion
    assert "closest to the loss" in by_tensor["sig2.weight"].suggestion
    assert "flows back through sig2" in by_tensor["fc1.weight"].suggestion
    assert mem.scalar("gradcheck/passed") == [0.0] * 4
    assert all(v > 1e-2 for v in mem.scalar("gradcheck/max_rel_error/sig2.bias"))
    assert all(v < 1e-7 for v in mem.scalar("gradcheck/max_rel_error/fc3.weight"))


def test_the_first_failing_check_of_an_episode_draws_the_step_sweep(digits):
    check = GradientCheck(budget=None, every=5, warmup_steps=3)
    _, mem = fit(buggy_net(), [check], digits, epochs=2)
    assert [step for step, _ in mem.figures["gradcheck/sweep"]] == [3]
    sweep = check.reports[0][1].sweep
    assert sweep is not None and sweep.entries
    assert {entry.name for entry in sweep.entries} == set(BUGGY_TENSORS)
    assert {entry.classification for entry in sweep.entries} == {"bug"}
    assert all(report.sweep is None for _, report in check.reports[1:])
    quiet = GradientCheck(budget=None, every=5, warmup_steps=3, sweep_on_failure=False)
    _, mem = fit(buggy_net(), [quiet], digits, epochs=2)
    assert "gradcheck/sweep" not in mem.figures
    assert quiet.reports[0][1].sweep is None


def test_the_corrected_layer_passes(digits):
    check = GradientCheck(budget=None, every=5, warmup_steps=3)
    trainer, _ = fit(buggy_net(buggy=False), [check], digits, epochs=2)
    assert len(check.reports) == 4
    assert all(report.passed for _, report in check.reports)
    assert not gradcheck_alerts(trainer)


def test_a_correct_relu_maxpool_cnn_with_dropout_never_alerts(digit_images):
    model = relu_cnn_with_dropout()
    check = GradientCheck(budget=None, every=8, warmup_steps=6)
    trainer, mem = fit(model, [check], digit_images, epochs=3,
                       opt=nn.Momentum(model, lr=0.05, momentum=0.9))
    assert [step for step, _ in check.reports] == [6, 14, 22]
    for _, report in check.reports:
        assert report.passed, str(report)
        assert not report.nondeterministic  # dropout masks fixed by the seed
        assert report.regularization is not None and all(
            c.passed for c in report.regularization.values())
    assert not gradcheck_alerts(trainer)
    assert mem.scalar("gradcheck/passed") == [1.0, 1.0, 1.0]


def test_a_float32_model_is_checked_in_float64_and_passes(digits):
    model = mlp(dtype=np.float32)
    check = GradientCheck(budget=None, every=6, warmup_steps=4)
    trainer, _ = fit(model, [check], digits, epochs=2)
    assert len(check.reports) == 3
    for _, report in check.reports:
        assert report.passed, str(report)
        assert report.precision == "float64"
        assert all(c.verdict == "correct" for c in report.params.values())
    assert all(p.dtype == np.float32 for p in model.named_parameters().values())
    assert not gradcheck_alerts(trainer)


def test_a_random_loss_warns_once_and_blames_no_tensor(digits):
    model = nn.Sequential([nn.Dense(64, 16, rng=0), Noise(), nn.Tanh(),
                           nn.Dense(16, 10, rng=1)], seed=0)
    check = GradientCheck(budget=None, every=5, warmup_steps=3)
    trainer, _ = fit(model, [check], digits, epochs=2)
    assert len(check.reports) == 4
    assert all(r.nondeterministic and r.params == {} for _, r in check.reports)
    alerts = gradcheck_alerts(trainer)
    assert [(a.code, a.severity.value, a.tensor) for a in alerts] == [
        ("gradcheck.nondeterministic", "warning", None)]
    assert "seeded generator" in alerts[0].suggestion


def test_stop_on_failure_stops_training_after_the_failing_batch(digits):
    check = GradientCheck(budget=None, every=5, warmup_steps=4, stop_on_failure=True)
    trainer, _ = fit(buggy_net(), [check], digits, epochs=3)
    assert trainer.monitor.step == 5  # steps 0..4 taken, stopped after the check at step 4
    reason = trainer.monitor.state.stop_reason
    assert "gradient check failed at step 4" in reason
    assert all(name in reason for name in BUGGY_TENSORS)
    assert len(trainer.history["train_loss"]) == 1


def test_a_loop_that_gives_no_batch_is_told_once(digits):
    model = mlp()
    loss, opt = nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=0.1)
    check = GradientCheck(budget=None, every=2, warmup_steps=1)
    mon = Monitor(model, loss=loss, optimizer=opt, callbacks=[check], progress=False)
    x, y = digits
    with mon.run():
        for i in range(5):
            mon.batch_begin()  # no inputs given
            scores = model.forward(x[i * 32:(i + 1) * 32])
            mon.loss_computed(loss.forward(scores, y[i * 32:(i + 1) * 32]), scores)
            model.zero_grad()
            model.backward(loss.backward())
            mon.backward_end()
            mon.step_begin()
            opt.step()
            mon.step_end()
    assert check.reports == []
    skipped = [a for a in mon.alerts.history if a.code == "gradcheck.skipped"]
    assert len(skipped) == 1 and skipped[0].severity.value == "info"


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"every": 0}, "every"),
    ({"every": 2.5}, "every"),
    ({"every": True}, "every"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": None}, "warmup_steps"),
    ({"warmup_loss_drop": 0.0}, "warmup_loss_drop"),
    ({"warmup_loss_drop": 1.0}, "warmup_loss_drop"),
    ({"warmup_loss_drop": "10%"}, "warmup_loss_drop"),
    ({"examples": 0}, "examples"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.0}, "seed"),
    ({"stop_on_failure": "yes"}, "stop_on_failure"),
    ({"sweep_on_failure": 1}, "sweep_on_failure"),
    ({"coordinates": -1}, "coordinates"),
    ({"directions": 1.5}, "directions"),
    ({"h": 0.0}, "h"),
    ({"thresholds": (1e-7, 1e-4, 1e-2)}, "thresholds"),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        GradientCheck(budget=None, **kwargs)


def test_unknown_options_are_refused_at_construction():
    with pytest.raises(TypeError, match="'coordinate'.*did you mean 'coordinates'"):
        GradientCheck(budget=None, coordinate=5)


# -- watching never changes training --------------------------------------------------------


def test_model_optimizer_and_random_state_are_bit_identical_around_each_check(digits):
    before, after = Recorder(order=-10), Recorder(order=10)
    check = GradientCheck(budget=None, every=4, warmup_steps=2)
    model = mlp(l2=1e-3, dropout=0.3)
    fit(model, [before, check, after], digits, epochs=2, opt=nn.Adam(model, lr=1e-3))
    steps = [step for step, _ in check.reports]
    assert steps == [2, 6, 10, 14, 18]
    assert all(report.passed for _, report in check.reports)
    for step in steps:
        a, b = before.at_backward_end[step], after.at_backward_end[step]
        assert_identical(a["state"], b["state"], f"step {step}")
        assert "optimizer" in a["state"] and a["state"]["optimizer"]["buffers"]
        assert_identical(a["grads"], b["grads"], f"step {step} gradients")
        assert_identical(a["probs"], b["probs"], f"step {step} loss cache")
        assert a["capture"] == b["capture"]


def test_training_is_bit_identical_with_and_without_gradient_checks(digits):
    runs = []
    for callbacks in ([], [GradientCheck(budget=None, every=3, warmup_steps=1)]):
        model = mlp(l2=1e-3, dropout=0.3)
        trainer, _ = fit(model, callbacks, digits, epochs=2, opt=nn.Adam(model, lr=1e-3))
        runs.append((trainer.backend.state_dict(), trainer.history,
                     trainer.data_rng.bit_generator.state))
    assert len(callbacks[0].reports) == 7
    assert_identical(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == runs[1][2]


def test_an_interrupt_inside_a_check_leaves_the_model_untouched(digits):
    model = nn.Sequential([nn.Dense(64, 16, rng=0, dtype=np.float32), nn.Tanh(),
                           InterruptOnFloat64(16, 10, rng=1, dtype=np.float32)], seed=0)
    recorder = Recorder(order=-1)
    check = GradientCheck(budget=None, every=5, warmup_steps=4)
    mem = MemoryOutput()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.Adam(model, lr=1e-3),
                      callbacks=[recorder, check], outputs=[mem], progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(*digits, epochs=2, batch_size=32)
    assert max(recorder.at_backward_end) == 4  # interrupted inside the check at step 4
    seen = recorder.at_backward_end[4]
    assert_identical(seen["state"], trainer.backend.state_dict())
    assert_identical(seen["grads"], trainer.backend.gradients())
    assert all(p.dtype == np.float32 for p in model.named_parameters().values())
    assert check.reports == []
    assert mem.closed  # the run was closed properly on the way out


# -- the periodic probes against the engine's zoo ------------------------------------------------


def test_the_periodic_probes_still_catch_every_planted_bug_of_the_zoo():
    """The callback's cheaper default (1 direction per tensor, no sampled entry) against the
    engine's zoo of tricky-but-correct models and planted bugs."""
    from tests.gradcheck.test_zoo import BUGGY, CORRECT, PASSING, _run

    for seed in range(3):
        for make in CORRECT:
            report = _run(make(), seed, **PERIODIC_PROBES)
            assert report.passed, (make.__name__, seed, str(report))
        for make in BUGGY:
            case = make()
            report = _run(case, seed, **PERIODIC_PROBES)
            assert report.failed == case.wrong, (make.__name__, seed, str(report))
            assert all(check.verdict in PASSING for name, check in report.params.items()
                       if name not in case.wrong), (make.__name__, seed)


def test_budget_holds_back_checks_that_would_cost_too_much_of_the_run():
    """With every=1 each step is due; a tiny budget lets the first check run and holds the
    next ones back until training has run budget-times longer than the checks took."""
    import time as _time

    from trainwatch import Callback

    class SlowStep(Callback):  # training time that the checks are compared against
        def on_step_end(self, state):
            _time.sleep(0.002)

    x, y = load_digits()
    x, y = x[:320], y[:320]
    results = {}
    for budget in (None, 0.05):
        net = nn.Sequential([nn.Dense(64, 16, rng=0), nn.Tanh(), nn.Dense(16, 10, rng=1)], seed=0)
        check = GradientCheck(every=1, warmup_steps=1, budget=budget)
        Trainer(net, nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1),
                callbacks=[check, SlowStep()], progress=False).fit(x, y, epochs=2, batch_size=32)
        results[budget] = (len(check.reports), check.deferred, check.seconds,
                           check.budget.elapsed, check._seconds)
    unbounded, bounded = results[None], results[0.05]
    assert unbounded[0] == 19 and unbounded[1] == 0  # steps 1..19: every step checked
    assert 1 <= bounded[0] < unbounded[0] and bounded[1] > 0
    # a held-back check sleeps until the step it should fit at, not retrying every step
    assert bounded[1] + bounded[0] < 19
    checks, _, seconds, elapsed, last = bounded
    assert seconds <= 0.05 * elapsed + last  # within the budget, give or take one check


def test_a_first_check_past_its_time_limit_stops_and_runs_once_the_budget_allows_it():
    """A first check that outlasts ``time_limit`` stops (one info alert), and the whole check
    runs later, once ``budget`` of the elapsed time covers its estimated length."""
    import time as _time

    from trainwatch import Callback

    class SlowStep(Callback):  # training time that the check is compared against
        def on_step_end(self, state):
            _time.sleep(0.004)
            if check.reports:  # (the check ran: the rest of the run shows nothing more)
                state.request_stop("the deferred check ran")

    x, y = load_digits()
    net = nn.Sequential([nn.Dense(64, 16, rng=0), nn.Tanh(), nn.Dense(16, 10, rng=1)], seed=0)
    # a budget of 2%: the whole check (~0.5-10 ms, by the machine) fits 25-500 ms into the
    # run, several steps of 4 ms after the warm-up, within the 200 steps of 5 epochs
    check = GradientCheck(every=1000, warmup_steps=2, budget=0.02, time_limit=1e-4)
    trainer = Trainer(net, nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1),
                      callbacks=[check, SlowStep()], progress=False)
    trainer.fit(x[:1280], y[:1280], epochs=5, batch_size=32)
    deferred = [a for a in trainer.monitor.alerts.history if a.code == "gradcheck.deferred"]
    assert len(deferred) == 1 and deferred[0].step == 2
    assert "time_limit" in deferred[0].message
    assert len(check.reports) == 1  # the whole check ran once, later
    step, report = check.reports[0]
    # stopped at 2, then moved to where the budget covers it (once or twice: the estimate
    # of the steps to come is refined at the step it named)
    assert step > 2 and 1 <= check.deferred < step - 2
    assert report.passed


def test_a_first_check_within_its_time_limit_runs_at_the_warm_up():
    x, y = load_digits()
    net = nn.Sequential([nn.Dense(64, 16, rng=0), nn.Tanh(), nn.Dense(16, 10, rng=1)], seed=0)
    check = GradientCheck(every=1000, warmup_steps=2, time_limit=30.0)
    Trainer(net, nn.SoftmaxCrossEntropy(), nn.SGD(net, lr=0.1), callbacks=[check],
            progress=False).fit(x[:320], y[:320], epochs=1, batch_size=32)
    assert [step for step, _ in check.reports] == [2] and check.deferred == 0


def test_budget_is_validated():
    with pytest.raises(ValueError, match="time_limit"):
        GradientCheck(time_limit=0)
    with pytest.raises(ValueError, match="budget"):
        GradientCheck(budget=0)
    with pytest.raises(ValueError, match="budget"):
        GradientCheck(budget=1.5)
