"""UpdateRatioMonitor: ‖Δθ‖/‖θ‖ per tensor, its band alerts, frozen tensors, TensorBoard tags."""

import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from trainwatch import Callback, Monitor, Trainer, nn
from trainwatch.callbacks.update_ratio import UpdateRatioMonitor, is_bias
from trainwatch.data import load_digits, minibatches, train_val_split
from trainwatch.outputs.memory import MemoryOutput


def every10(**kwargs) -> UpdateRatioMonitor:
    """The monitor measuring every 10 steps: the schedule these tests' step numbers assume."""
    return UpdateRatioMonitor(budget=None, every=10, **kwargs)

SIZE = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
WEIGHTS = ("fc1.weight", "fc2.weight")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    (xt, yt), _ = train_val_split(x, y, val_fraction=0.2, seed=0)
    return xt[:960], yt[:960]


def mlp(seed=0):
    return nn.Sequential([nn.Dense(64, 32, rng=seed), nn.ReLU(), nn.Dense(32, 10, rng=seed + 1)])


def train(model, opt, callbacks, data, *, epochs=2, batch_size=32, logdir=None):
    mem = MemoryOutput()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), opt, callbacks=callbacks, progress=False,
                      outputs=[mem], logdir=logdir, raise_errors=True)
    trainer.fit(*data, epochs=epochs, batch_size=batch_size)
    return trainer, mem


def fired(trainer, prefix="update_ratio."):
    return [a for a in trainer.monitor.alerts.history
            if a.code.startswith(prefix) and not a.resolved]


# -- the learning-rate verdicts -----------------------------------------------------------------


def test_too_high_learning_rate_fires_high_early_once_per_tensor(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=5.0), [every10()], digits, epochs=3)
    alerts = fired(trainer)
    high = [a for a in alerts if a.code == "update_ratio.high"]
    assert sorted(a.tensor for a in high) == sorted(WEIGHTS)  # once per tensor, biases unjudged
    for a in high:
        assert a.step <= 30  # within a few dozen steps
        assert a.severity.value == "warning"
        assert a.tensor in a.message and "above the band [1e-04, 1e-02]" in a.message
        assert "since step 0" in a.message and "‖Δθ‖=" in a.message
        assert a.value > 0.1  # the smoothed ratio, far above the band
        assert "learning rate probably too high" in a.suggestion and "lower" in a.suggestion
    assert not [a for a in alerts if a.code == "update_ratio.low"]


def test_too_low_learning_rate_fires_low(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=1e-6), [every10()], digits)
    alerts = fired(trainer)
    assert sorted((a.code, a.tensor) for a in alerts) == [
        ("update_ratio.low", "fc1.weight"), ("update_ratio.low", "fc2.weight")]
    for a in alerts:
        assert a.step <= 30
        assert a.value < 1e-5
        assert "below the band" in a.message
        assert "too low" in a.suggestion and "higher" in a.suggestion


@pytest.mark.parametrize("make_opt", [
    lambda m: nn.Adam(m, lr=1e-3),
    lambda m: nn.Momentum(m, lr=0.01, momentum=0.9),
], ids=["adam", "momentum"])
def test_sensible_learning_rates_fire_nothing(digits, make_opt):
    model = mlp()
    monitor = every10()
    trainer, mem = train(model, make_opt(model), [monitor], digits, epochs=4)
    assert fired(trainer) == []
    ratios = [v for t in WEIGHTS for _, v in mem.scalars_log[f"update_ratio/{t}"]]
    assert 1e-4 < np.median(ratios) < 1e-2  # measured, and inside the band


def test_window_smoothing_gives_the_same_verdicts(digits):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=1e-6), [every10(window=3)], digits)
    assert sorted(a.tensor for a in fired(trainer)) == sorted(WEIGHTS)


def test_mild_excursion_needs_the_full_patience(digits):
    # lr=1e-3 (SGD) puts fc1.weight around 6e-5: below the band, but not by 10x, so only
    # ``patience`` checks in a row fire it.
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=1e-3),
                       [every10(patience=5)], digits, epochs=2)
    low = [a for a in fired(trainer) if a.tensor == "fc1.weight"]
    assert [a.code for a in low] == ["update_ratio.low"]
    assert low[0].step == 40  # checks at steps 0, 10, 20, 30, 40
    assert "(40 steps, 5 checks)" in low[0].message
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=1e-3), [every10()], digits, epochs=2)
    assert [a for a in fired(trainer) if a.tensor == "fc1.weight"] == []  # 60 steps < 200


# -- the measured ratio ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_opt", [
    lambda m: nn.Momentum(m, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda m: nn.Nesterov(m, lr=0.05, momentum=0.9),
    lambda m: nn.Adam(m, lr=1e-3, weight_decay=1e-2),
], ids=["momentum+wd", "nesterov", "adam+wd"])
def test_ratio_is_the_applied_change_over_the_weights(digits, make_opt):
    model = mlp()
    opt = make_opt(model)
    loss_fn = nn.SoftmaxCrossEntropy()
    mem = MemoryOutput()
    monitor = UpdateRatioMonitor(budget=None, every=3)
    mon = Monitor(model, loss=loss_fn, optimizer=opt, callbacks=[monitor], progress=False,
                  outputs=[mem], raise_errors=True)
    expected: dict[int, dict[str, float]] = {}
    naive: dict[int, dict[str, float]] = {}
    with mon.run():
        mon.epoch_begin(0)
        for step, (xb, yb) in enumerate(minibatches(*digits, 32)):
            if step == 10:
                break
            mon.batch_begin(xb, yb)
            scores = model.forward(xb)
            loss = loss_fn.forward(scores, yb)
            mon.loss_computed(loss, scores)
            model.zero_grad()
            model.backward(loss_fn.backward())
            mon.backward_end()
            before = {k: v.copy() for k, v in model.named_parameters().items()}
            grads = {k: v.copy() for k, v in model.named_gradients().items()}
            mon.step_begin()
            opt.step()
            mon.step_end()
            after = model.named_parameters()
            expected[step] = {k: np.linalg.norm(after[k] - before[k]) / np.linalg.norm(after[k])
                              for k in after}
            naive[step] = {k: opt.lr * np.linalg.norm(grads[k]) / np.linalg.norm(after[k])
                           for k in after}
    for name in model.named_parameters():
        logged = mem.scalars_log[f"update_ratio/{name}"]
        assert [s for s, _ in logged] == [0, 3, 6, 9]  # scheduled steps only
        for s, v in logged:
            assert v == pytest.approx(expected[s][name], rel=1e-9)
        norms = mem.scalars_log[f"update_ratio_norms/{name}/update"]
        assert [s for s, _ in norms] == [0, 3, 6, 9]
    # the applied update is not lr * grad for these optimizers
    assert expected[9]["fc1.weight"] != pytest.approx(naive[9]["fc1.weight"], rel=0.05)
    assert monitor.ratios["fc2.weight"] == pytest.approx(expected[9]["fc2.weight"], rel=1e-9)


def test_watching_does_not_change_training(digits):
    def run(callbacks):
        model = mlp()
        train(model, nn.Momentum(model, lr=0.05), callbacks, digits, epochs=1)
        return model.named_parameters()

    plain = run([])
    watched = run([UpdateRatioMonitor(budget=None, every=1)])
    for k in plain:
        np.testing.assert_array_equal(plain[k], watched[k])


# -- frozen and zero tensors ----------------------------------------------------------------------


class SkippingSGD(nn.SGD):
    """SGD that never updates the tensors named in ``skip`` (as if missing from the optimizer)."""

    def __init__(self, model, lr, skip):
        super().__init__(model, lr)
        self.skip = set(skip)

    def _update(self, name, param, grad):
        if name not in self.skip:
            super()._update(name, param, grad)


class SetGrad(Callback):
    """Sets one tensor's gradient to ``value`` after backward (0: as if it were detached from
    the loss)."""

    def __init__(self, model, name, value=0.0):
        self.grad = model.named_gradients()[name]
        self.value = value

    def on_backward_end(self, state):
        self.grad[...] = self.value


def test_tensor_missing_from_the_optimizer_is_frozen(digits):
    model = mlp()
    trainer, mem = train(model, SkippingSGD(model, 0.05, ["fc1.weight"]),
                         [every10()], digits, epochs=1)
    frozen = fired(trainer, "update_ratio.frozen")
    assert [(a.tensor, a.step) for a in frozen] == [("fc1.weight", 10)]  # 2 checks: 0, 10
    a = frozen[0]
    assert a.value == 0.0 and "‖Δθ‖ = 0" in a.message and "although its gradient norm" in a.message
    assert "optimizer's parameter list" in a.suggestion
    assert {v for _, v in mem.scalars_log["update_ratio/fc1.weight"]} == {0.0}
    assert "update_ratio_log10/fc1.weight" not in mem.scalars_log  # log10(0) is not written


@pytest.mark.parametrize("grad, reading, suggestion", [
    (0.0, "gradient is exactly zero", "detached"),
    # a gradient ~1e-19 of the weights' norm (a bias in front of a normalisation: its true
    # gradient is 0, round-off leaves a trace) moves nothing: the alert says so, not that the
    # optimizer lacks the tensor (the model is float64: 0.05 * 1e-20 is lost too)
    (1e-20, "lost to the weights' float rounding", "normalisation layer"),
])
def test_tensor_without_gradient_is_frozen_with_that_reading(digits, grad, reading,
                                                             suggestion):
    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=0.05), [SetGrad(model, "fc2.weight", grad),
                                                       every10()], digits, epochs=1)
    frozen = fired(trainer, "update_ratio.frozen")
    assert [a.tensor for a in frozen] == ["fc2.weight"]
    assert reading in frozen[0].message
    assert suggestion in frozen[0].suggestion


def test_optimizer_with_no_effect_is_one_alert_not_one_per_tensor(digits):
    class NoStep(nn.SGD):
        def step(self):
            self.t += 1

    model = mlp()
    trainer, _ = train(model, NoStep(model, 0.1), [every10()], digits, epochs=1)
    frozen = fired(trainer, "update_ratio.frozen")
    assert [(a.tensor, a.step) for a in frozen] == [(None, 10)]
    assert "all 4 have ‖Δθ‖ = 0" in frozen[0].message
    assert "optimizer.step()" in frozen[0].suggestion


def test_zero_weight_is_reported_never_divided(digits):
    model = mlp()  # biases start at zero; fc1.bias is never updated, so it stays zero
    trainer, mem = train(model, SkippingSGD(model, 0.05, ["fc1.bias"]),
                         [every10()], digits, epochs=1)
    zero = fired(trainer, "update_ratio.zero_weight")
    assert [(a.tensor, a.severity.value) for a in zero] == [("fc1.bias", "info")]
    assert "‖θ‖ = 0" in zero[0].message
    assert fired(trainer, "update_ratio.frozen") == []
    assert "update_ratio/fc1.bias" not in mem.scalars_log


def test_frozen_condition_resolves_when_updates_resume(digits):
    class Unfreeze(Callback):
        def __init__(self, opt):
            self.opt = opt

        def on_step_begin(self, state):
            if state.step == 30:
                self.opt.skip.clear()

    model = mlp()
    opt = SkippingSGD(model, 0.05, ["fc1.weight"])
    trainer, _ = train(model, opt, [Unfreeze(opt), every10()], digits, epochs=3)
    events = [(a.code, a.tensor, a.step, a.resolved) for a in trainer.monitor.alerts.history]
    # fires at the 2nd frozen check; clears after 3 checks with updates (30, 40, 50)
    assert events == [("update_ratio.frozen", "fc1.weight", 10, False),
                      ("update_ratio.frozen", "fc1.weight", 50, True)]
    assert "being updated again" in trainer.monitor.alerts.history[-1].message


# -- biases, overrides, exclusions ----------------------------------------------------------------


def test_biases_are_measured_but_not_judged_by_default(digits):
    model = mlp()
    trainer, mem = train(model, nn.SGD(model, lr=1e-6), [every10()], digits)
    assert "update_ratio/fc1.bias" in mem.scalars_log
    assert all(a.tensor in WEIGHTS for a in fired(trainer))
    # A zero-initialised bias moves by ~1/t of itself whatever the learning rate.
    assert mem.scalars_log["update_ratio/fc2.bias"][1][1] > 1e-2


def test_overrides_and_include_biases(digits):
    model = mlp()
    monitor = every10(overrides={"fc1.*": (1e-9, 1e-6), "fc2.bias": (1e-9, 1e-6)})
    trainer, _ = train(model, nn.SGD(model, lr=1e-6), [monitor], digits)
    got = sorted((a.code, a.tensor) for a in fired(trainer))
    # fc1.weight (~6e-8) is inside its own band; fc1.bias matches the override, so it is judged
    # (and is high: ~1/t); fc2.bias likewise; fc2.weight keeps the default band.
    assert got == [("update_ratio.high", "fc1.bias"), ("update_ratio.high", "fc2.bias"),
                   ("update_ratio.low", "fc2.weight")]
    high = [a for a in fired(trainer) if a.tensor == "fc2.bias"][0]
    assert "[1e-09, 1e-06]" in high.message

    model = mlp()
    trainer, _ = train(model, nn.SGD(model, lr=5.0),
                       [every10(include_biases=True)], digits, epochs=1)
    assert "fc2.bias" in {a.tensor for a in fired(trainer)}


def test_exclude_skips_tensors_entirely(digits):
    model = mlp()
    trainer, mem = train(model, SkippingSGD(model, 0.05, ["fc1.weight"]),
                         [every10(exclude=["fc1.*"])], digits, epochs=1)
    assert not any("fc1." in tag for tag in mem.scalars_log)
    assert fired(trainer) == []


def test_two_monitors_on_one_model_share_the_step_s_measurement(digits):
    """Two monitors (each on its own tensors, at its own pace) measuring on the same step
    both get the step's update, the one a single monitor measures."""
    model = mlp()
    both = [every10(exclude=["fc2.*"]), UpdateRatioMonitor(budget=None, every=20,
                                                           exclude=["fc1.*"])]
    _, mem = train(model, nn.Momentum(model, lr=0.05), both, digits, epochs=1)
    model = mlp()
    _, alone = train(model, nn.Momentum(model, lr=0.05), [every10()], digits,
                     epochs=1)
    fc1, fc2 = "update_ratio/fc1.weight", "update_ratio/fc2.weight"
    assert [s for s, _ in mem.scalars_log[fc1]] == [s for s, _ in alone.scalars_log[fc1]]
    assert [s for s, _ in mem.scalars_log[fc2]] == [0, 20]
    assert mem.scalars_log[fc1] == alone.scalars_log[fc1]
    assert mem.scalars_log[fc2] == [(s, v) for s, v in alone.scalars_log[fc2] if s % 20 == 0]


def test_is_bias():
    assert is_bias("fc1.bias") and is_bias("attn.in_proj_bias") and is_bias("bias")
    assert not is_bias("fc1.weight") and not is_bias("biased.weight")


# -- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_tags_and_log_scale_chart(digits, tmp_path):
    model = mlp()
    train(model, nn.SGD(model, lr=0.1), [every10()], digits, epochs=1,
          logdir=tmp_path)
    ea = EventAccumulator(str(tmp_path), size_guidance=SIZE)
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert {f"update_ratio/{name}", f"update_ratio_log10/{name}",
                f"update_ratio_norms/{name}/weight", f"update_ratio_norms/{name}/grad",
                f"update_ratio_norms/{name}/update"} <= tags
    # update_ratio/ holds ratios only, so the chart regex selects exactly the tensors
    assert {t for t in tags if t.startswith("update_ratio/")} == {
        "update_ratio/fc1.weight", "update_ratio/fc1.bias", "update_ratio/fc2.weight",
        "update_ratio/fc2.bias"}
    ratio = ea.Scalars("update_ratio/fc1.weight")
    logs = ea.Scalars("update_ratio_log10/fc1.weight")
    assert [e.step for e in ratio] == list(range(0, 30, 10))
    for r, lg in zip(ratio, logs):
        assert lg.value == pytest.approx(math.log10(r.value), rel=1e-5)
    assert {e.value for e in ea.Scalars("update_ratio_log10/band_low")} == {-4.0}
    assert {e.value for e in ea.Scalars("update_ratio_log10/band_high")} == {-2.0}
    layout = layout_pb2.Layout.FromString(
        ea.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {ch.title: list(ch.multiline.tag) for c in layout.category
              if c.title == "update_ratio" for ch in c.chart}
    assert [r"^update_ratio_log10/"] in charts.values()


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, argument", [
    ({"every": 0}, "every"),
    ({"band": (1e-2, 1e-4)}, "band"),
    ({"band": (0, 1e-2)}, "band"),
    ({"band": 1e-3}, "band"),
    ({"smoothing": 0}, "smoothing"),
    ({"smoothing": 1.5}, "smoothing"),
    ({"window": 0}, "window"),
    ({"patience": 0}, "patience"),
    ({"severe_factor": 1.0}, "severe_factor"),
    ({"frozen_patience": 1.5}, "frozen_patience"),
    ({"margin": -0.1}, "margin"),
    ({"overrides": {"fc1.*": (1e-3,)}}, "overrides"),
    ({"overrides": [("fc1.*", (1e-4, 1e-2))]}, "overrides"),
    ({"include_biases": 1}, "include_biases"),
    ({"exclude": [3]}, "exclude"),
])
def test_arguments_are_validated(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        UpdateRatioMonitor(**kwargs)


@pytest.mark.parametrize("lr, code", [(0.5, "update_ratio.high"), (1e-4, "update_ratio.low")])
def test_a_short_run_with_the_learning_rate_far_off_is_told_within_two_checks(lr, code):
    """A small MLP whose steps take a fraction of a millisecond: the first measurement runs
    cold, and spacing the next by its cost put it past the end of the run (only step 0 was
    measured, and nothing fired). Its cost is forgotten, so the second comes at step 20 and a
    rate far off is reported there."""
    x, y = load_digits()
    model = nn.Sequential([nn.Dense(64, 128, rng=0), nn.ReLU(), nn.Dense(128, 10, rng=1)],
                          seed=0)
    memory = MemoryOutput()
    monitor = UpdateRatioMonitor()  # (defaults: every 20 steps, a 0.25 % budget)
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=lr),
                      callbacks=[monitor], outputs=[memory], progress=False)
    trainer.fit(x[:1280], y[:1280], epochs=2, batch_size=32)  # 80 steps
    assert [s for s, _ in memory.scalars_log["update_ratio/fc2.weight"]][:2] == [0, 20]
    fired = [a for a in trainer.monitor.alerts.history if a.code == code]
    assert fired and fired[0].step == 20, trainer.monitor.summary()


@pytest.mark.parametrize("grad, advice", [(0.0, "no gradient"), (0.5, "higher")])
def test_the_advice_for_a_low_ratio_depends_on_whether_there_is_a_gradient(grad, advice):
    """A ratio far below the band with no gradient (units killed by a rate that was too
    high; only momentum still moves the weights) asked for a rate thousands of times higher,
    the opposite of the cure: it now says the tensor gets no gradient. With a gradient the
    advice stands, and says that a converged or decayed run needs nothing."""
    from trainwatch.core.backend import TensorNorms

    monitor = UpdateRatioMonitor()
    track = monitor._track("fc1.weight")
    track.since, track.streak = 0, 3
    norms = TensorNorms(weight=10.0, grad=grad, update=1e-7)
    described = monitor._band_message(60, "fc1.weight", norms, track, 1e-8, "low", True)
    assert advice in described["suggestion"]
    if grad:
        assert "converged" in described["suggestion"]
    else:
        assert "higher learning rate would not move it" in described["suggestion"]
