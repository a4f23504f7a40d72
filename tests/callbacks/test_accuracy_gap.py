"""AccuracyGapMonitor: the gap curves, the overfit/underfit verdicts, the step-wise mode."""

import re

import numpy as np
import pytest

from trainwatch import Monitor, Trainer, nn
from trainwatch.callbacks.accuracy_gap import (
    CONFIRM_STEPS,
    AccuracyGapMonitor,
    fixed_subset,
)
from trainwatch.data import load_digits, train_val_split
from trainwatch.outputs.memory import MemoryOutput

GAP_CODES = ("accuracy_gap.overfit", "accuracy_gap.underfit")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return train_val_split(x, y, val_fraction=0.2, seed=0)


def fired(alerts, code):
    return [a for a in alerts.history if a.code == code and not a.resolved]


def mlp(*sizes, act=nn.ReLU, seed=0):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Dense(a, b, rng=seed + i))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(layers, seed=seed)


def train(model, callbacks, train_xy, val_xy, *, epochs, batch_size=64, lr=0.1):
    mem = MemoryOutput()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=lr),
                      callbacks=callbacks, progress=False, outputs=[mem], raise_errors=True)
    history = trainer.fit(*train_xy, epochs=epochs, batch_size=batch_size,
                          validation_data=val_xy)
    return trainer, mem, history


# -- end-to-end runs ---------------------------------------------------------------------------


def test_overfitting_a_tiny_training_set_raises_overfit_once(digits):
    (xt, yt), (xv, yv) = digits
    model = mlp(64, 256, 256, 10)  # big, no regularisation, 30 examples
    trainer, mem, history = train(model, [AccuracyGapMonitor()], (xt[:30], yt[:30]),
                                  (xv[:300], yv[:300]), epochs=30, batch_size=30, lr=0.05)
    alerts = trainer.monitor.alerts
    overfit = fired(alerts, "accuracy_gap.overfit")
    assert len(overfit) == 1
    assert not fired(alerts, "accuracy_gap.underfit")
    assert overfit[0].value > 0.10
    assert overfit[0].suggestion and "regularisation" in overfit[0].suggestion
    # confirmed on training examples scored in eval mode, as validation is: those kept after
    # the first large gap (the 30, seen twice) score as high as in training: memorised
    kept = re.search(r"as validation is, (\d+) training examples reach ([\d.]+)%",
                     overfit[0].message)
    assert kept and int(kept[1]) == 60
    val_then = history["val_accuracy"][overfit[0].step - 1]
    assert float(kept[2]) / 100 - val_then > 0.10
    assert not fired(alerts, "accuracy_gap.eval_mode")
    # the run really overfits: the training set is learnt, validation lags far behind
    assert history["train_accuracy"][-1] - history["val_accuracy"][-1] > 0.3
    # one gap point per epoch, equal to the history's train - val accuracy
    gaps = mem.scalar("accuracy/gap")
    expected = np.subtract(history["train_accuracy"], history["val_accuracy"])
    np.testing.assert_allclose(gaps, expected)
    np.testing.assert_allclose(mem.scalar("loss/gap"),
                               np.subtract(history["val_loss"], history["train_loss"]))
    assert mem.steps("accuracy/gap") == list(range(1, 31))  # 1 step per epoch


def test_a_healthy_digits_run_raises_neither(digits):
    trainer, mem, history = train(mlp(64, 64, 10), [AccuracyGapMonitor()], *digits, epochs=12)
    assert history["val_accuracy"][-1] > 0.93
    assert not [a for a in trainer.monitor.alerts.history if a.code in GAP_CODES]
    assert max(mem.scalar("accuracy/gap")) < 0.10
    layout = mem.layouts["accuracy"]
    assert layout["train − validation gap"] == ["Multiline", [r"^accuracy/gap$"]]
    assert "train vs validation" in layout  # MetricLogger's chart is kept beside it


def test_a_one_unit_bottleneck_raises_underfit(digits):
    model = nn.Sequential([nn.Dense(64, 1, rng=0), nn.Tanh(), nn.Dense(1, 10, rng=1)])
    trainer, _, history = train(model, [AccuracyGapMonitor()], *digits, epochs=10)
    assert history["train_accuracy"][-1] < 0.5
    under = fired(trainer.monitor.alerts, "accuracy_gap.underfit")
    assert len(under) == 1 and "capacity" in under[0].suggestion
    assert not fired(trainer.monitor.alerts, "accuracy_gap.overfit")


def test_an_underfit_points_at_the_other_alerts_of_a_model_that_does_not_learn(digits):
    """A learning rate 1e5 too low leaves the accuracy at chance: the update ratios say why,
    and the underfit verdict points at them instead of asking for more capacity."""
    from trainwatch.callbacks.update_ratio import UpdateRatioMonitor

    trainer, _, history = train(mlp(64, 64, 10), [UpdateRatioMonitor(), AccuracyGapMonitor()],
                                *digits, epochs=6, lr=1e-6)
    assert history["train_accuracy"][-1] < 0.3
    alerts = trainer.monitor.alerts
    assert fired(alerts, "update_ratio.low")
    (under,) = fired(alerts, "accuracy_gap.underfit")
    assert "first fix what this run's other alerts point at (update_ratio.low)" in (
        under.suggestion)


def test_an_underfit_at_chance_asks_whether_inputs_and_labels_are_paired(digits):
    """Labels shuffled apart from their inputs leave the accuracy at chance (10% for 10
    classes) with healthy updates: no capacity explains that, and the verdict says so; a
    one-unit bottleneck above chance still gets the capacity advice."""
    (xt, yt), (xv, yv) = digits
    shuffled = np.random.default_rng(1).permutation(yt)
    trainer, _, history = train(mlp(64, 64, 10), [AccuracyGapMonitor()], (xt, shuffled),
                                (xv, yv), epochs=8, lr=0.05)
    (under,) = fired(trainer.monitor.alerts, "accuracy_gap.underfit")
    assert history["train_accuracy"][-1] < 0.15
    assert "at chance for 10 classes" in under.message
    assert "inputs and labels are paired" in under.suggestion
    model = nn.Sequential([nn.Dense(64, 1, rng=0), nn.Tanh(), nn.Dense(1, 10, rng=1)])
    trainer, _, _ = train(model, [AccuracyGapMonitor()], *digits, epochs=10)
    (under,) = fired(trainer.monitor.alerts, "accuracy_gap.underfit")
    assert "at chance" not in under.message and "capacity" in under.suggestion


# -- the verdict logic, on metrics fed through a real Monitor -------------------------------------


def feed(epochs, **kwargs):
    """Run AccuracyGapMonitor on given (train_acc, val_acc[, train_loss, val_loss]) epochs."""
    mem = MemoryOutput()
    mon = Monitor(mlp(64, 10), callbacks=[AccuracyGapMonitor(**kwargs)], progress=False,
                  outputs=[mem], raise_errors=True)
    mon.train_begin(epochs=len(epochs))
    for i, point in enumerate(epochs):
        tr, va = point[:2]
        metrics = {"train_accuracy": tr, "val_accuracy": va}
        if len(point) == 4:
            metrics.update(train_loss=point[2], val_loss=point[3])
        mon.epoch_begin(i)
        mon.state.step += 10  # as if 10 batches ran
        mon.epoch_end(metrics)
    mon.train_end()
    return mon.alerts, mem


def test_a_large_gap_must_persist_for_patience_evaluations():
    alerts, _ = feed([(0.9, 0.9), (0.99, 0.7), (0.99, 0.7)], patience=3)
    assert not fired(alerts, "accuracy_gap.overfit")
    alerts, _ = feed([(0.9, 0.9), (0.99, 0.7), (0.99, 0.7), (0.99, 0.7)], patience=3)
    assert len(fired(alerts, "accuracy_gap.overfit")) == 1
    assert fired(alerts, "accuracy_gap.overfit")[0].step == 40


def test_a_large_but_closing_gap_is_not_overfitting_unless_the_loss_gap_grows():
    closing = [(0.99, 0.6), (0.99, 0.7), (0.99, 0.8)]
    alerts, _ = feed(closing)
    assert not fired(alerts, "accuracy_gap.overfit")
    # same accuracies, but validation loss pulling away from training loss
    alerts, _ = feed([(a, b, 0.05, vl) for (a, b), vl in zip(closing, (0.5, 0.9, 1.4))])
    assert len(fired(alerts, "accuracy_gap.overfit")) == 1


def test_overfit_stays_one_episode_while_the_gap_hovers_and_clears_below_half():
    hover = [(0.99, 0.7)] * 3 + [(0.99, 0.9), (0.99, 0.85)] * 3  # gap 0.09/0.14 > 0.05
    alerts, _ = feed(hover)
    assert len(fired(alerts, "accuracy_gap.overfit")) == 1
    assert not [a for a in alerts.history if a.resolved]
    # a gap down to 1 point clears it (after the manager's clear_after evaluations)
    alerts, _ = feed([(0.99, 0.7)] * 3 + [(0.99, 0.98)] * 3)
    resolved = [a for a in alerts.history if a.resolved]
    assert len(resolved) == 1 and resolved[0].code == "accuracy_gap.overfit"


def test_low_accuracy_that_still_climbs_is_not_underfitting():
    alerts, _ = feed([(0.2, 0.2), (0.3, 0.3), (0.4, 0.39), (0.5, 0.5), (0.55, 0.55)])
    assert not fired(alerts, "accuracy_gap.underfit")
    alerts, _ = feed([(0.2, 0.2), (0.3, 0.3), (0.302, 0.3), (0.304, 0.3)])
    assert len(fired(alerts, "accuracy_gap.underfit")) == 1
    # a stalled but high accuracy is fine, and so is a low one with a big gap
    alerts, _ = feed([(0.8, 0.78)] * 5)
    assert not fired(alerts, "accuracy_gap.underfit")
    alerts, _ = feed([(0.5, 0.3)] * 5)
    assert not fired(alerts, "accuracy_gap.underfit")
    # nor one far below validation (noisy training labels, accuracy counted with dropout
    # on: no capacity problem; "give it more capacity" fired on such runs)
    alerts, _ = feed([(0.46, 0.9)] * 5)
    assert not fired(alerts, "accuracy_gap.underfit")
    # a stalled accuracy that fell says so with its sign
    alerts, _ = feed([(0.31, 0.3), (0.3, 0.3), (0.3, 0.3), (0.3, 0.3)])
    assert "(-1.0 points" in fired(alerts, "accuracy_gap.underfit")[0].message
    assert "capacity" in fired(alerts, "accuracy_gap.underfit")[0].suggestion
    # one that fell far from its best collapsed (a learning rate too high): no capacity advice
    alerts, _ = feed([(0.4, 0.38), (0.45, 0.43), (0.3, 0.3), (0.12, 0.12), (0.12, 0.12),
                      (0.121, 0.12)])
    (collapse,) = fired(alerts, "accuracy_gap.underfit")
    assert "has fallen from its best, 45.0% at step 20, and stalled" in collapse.message
    assert "learning rate" in collapse.suggestion and "more capacity" not in collapse.suggestion


def test_examples_for_a_verdict_are_kept_for_a_few_steps_at_most():
    """From the first large gap the monitor wakes on every step to keep training examples;
    a loop that reports none (no targets) sends it back to sleep after CONFIRM_STEPS
    steps, and the verdict comes without them, as before."""
    gap = AccuracyGapMonitor()
    mon = Monitor(mlp(64, 10), callbacks=[gap], progress=False, raise_errors=True)
    mon.train_begin(epochs=4)
    x = np.zeros((8, 64))
    awake = []
    for epoch in range(4):
        mon.epoch_begin(epoch)
        for _ in range(20):
            awake.append(gap.next_step(mon.state.step) == mon.state.step)
            mon.batch_begin(x, None)  # (no targets)
            mon.step_begin()
            mon.step_end()
        mon.epoch_end({"train_accuracy": 0.99, "val_accuracy": 0.7})
    mon.train_end()
    # (the first batch: its classes, for chance level; then no large gap yet)
    assert awake[:20] == [True] + [False] * 19
    assert awake[20:] == [True] * CONFIRM_STEPS + [False] * (60 - CONFIRM_STEPS)
    assert len(fired(mon.alerts, "accuracy_gap.overfit")) == 1


@pytest.mark.parametrize("inputs, targets", [
    (np.zeros((12, 8, 64)), np.zeros(8, dtype=int)),  # sequence-first (T, N, F)
    (np.zeros((8, 64)), (np.zeros(8, dtype=int), np.zeros((8, 3)))),  # a multi-task tuple
    (np.zeros((8, 8, 64)), np.zeros(8, dtype=int)),  # (T, N, F) with T == N: which is N?
])
def test_batches_whose_examples_do_not_join_are_not_kept(inputs, targets):
    """Rows of sequence-first batches, or of a tuple of targets, do not join into a batch
    to score: the monitor keeps none (sleeping at once) and the verdict goes without them."""
    gap = AccuracyGapMonitor()
    mon = Monitor(mlp(64, 10), callbacks=[gap], progress=False, raise_errors=True)
    mon.train_begin(epochs=3)
    awake = []
    for epoch in range(3):
        mon.epoch_begin(epoch)
        for _ in range(5):
            awake.append(gap.next_step(mon.state.step) == mon.state.step)
            mon.batch_begin(inputs, targets)
            mon.step_begin()
            mon.step_end()
        mon.epoch_end({"train_accuracy": 0.99, "val_accuracy": 0.7})
    mon.train_end()
    assert awake == [True] + [False] * 4 + [True] + [False] * 9  # (step 0: the classes)
    assert gap._train_subset is None
    assert "scored in eval mode" not in fired(mon.alerts, "accuracy_gap.overfit")[0].message


def test_thresholds_are_configurable():
    points = [(0.95, 0.88)] * 4  # a 7-point gap
    assert not fired(feed(points)[0], "accuracy_gap.overfit")
    assert fired(feed(points, overfit_gap=0.05)[0], "accuracy_gap.overfit")
    assert fired(feed([(0.7, 0.7)] * 4, underfit_accuracy=0.8)[0], "accuracy_gap.underfit")
    assert not fired(feed([(0.99, 0.7)] * 2, patience=3)[0], "accuracy_gap.overfit")
    assert fired(feed([(0.99, 0.7)] * 2, patience=2)[0], "accuracy_gap.overfit")


def test_no_validation_metrics_means_no_gap():
    mem = MemoryOutput()
    mon = Monitor(mlp(64, 10), callbacks=[AccuracyGapMonitor()], progress=False, outputs=[mem],
                  raise_errors=True)
    with mon.run(epochs=2):
        for i in range(2):
            mon.epoch_begin(i)
            mon.epoch_end({"train_accuracy": 0.5, "train_loss": 1.0})
    assert "accuracy/gap" not in mem.tags


# -- step-wise mode --------------------------------------------------------------------------------


def test_every_n_steps_evaluates_fixed_subsets_in_inference_mode(digits):
    (xt, yt), (xv, yv) = digits
    gap = AccuracyGapMonitor(every=5, validation_data=(xv, yv), subset=100)
    model = nn.Sequential([nn.Dense(64, 32, rng=0), nn.ReLU(), nn.Dropout(0.3),
                           nn.Dense(32, 10, rng=1)], seed=3)
    trainer, mem, _ = train(model, [gap], (xt[:640], yt[:640]), (xv, yv), epochs=2)
    steps = mem.steps("accuracy/gap")
    assert steps == [5, 10, 15, 20]  # 10 steps per epoch; step-mode ignores epoch ends
    assert mem.steps("accuracy/val_subset") == steps
    # the last point equals a fresh inference-mode evaluation of the same subsets
    x_sub, y_sub = fixed_subset(xv, yv, 100)
    loss, acc = trainer.backend.evaluate(x_sub, y_sub)
    assert mem.last("accuracy/val_subset") == acc and mem.last("loss/val_subset") == loss
    # the training subset: copies of the first 100 examples fed (batches of 64 -> 2 batches)
    assert len(gap._train_subset[0]) == 100
    t_loss, t_acc = trainer.backend.evaluate(*gap._train_subset)
    assert mem.last("accuracy/train_subset") == t_acc
    assert mem.last("accuracy/gap") == pytest.approx(t_acc - acc)
    assert mem.last("loss/gap") == pytest.approx(loss - t_loss)


def test_step_mode_does_not_change_training(digits):
    (xt, yt), (xv, yv) = digits

    def run(callbacks):
        model = nn.Sequential([nn.Dense(64, 32, rng=0), nn.ReLU(), nn.Dropout(0.3),
                               nn.Dense(32, 10, rng=1)], seed=3)
        trainer, _, history = train(model, callbacks, (xt[:320], yt[:320]), (xv, yv), epochs=2)
        return trainer.backend.state_dict(), history

    state_a, hist_a = run([])
    state_b, hist_b = run([AccuracyGapMonitor(every=2, validation_data=(xv, yv), subset=64)])
    assert hist_a == hist_b
    for k, v in state_a["model"]["params"].items():
        assert np.array_equal(v, state_b["model"]["params"][k])
    assert state_a["model"]["rng_state"] == state_b["model"]["rng_state"]


def test_scoring_kept_examples_for_a_verdict_does_not_change_training(digits):
    """Epoch-wise, a large gap makes the monitor keep training examples and score them in
    eval mode at the verdict (dropout off): the run, dropout's random state included, is
    the same as without the monitor."""
    (xt, yt), (xv, yv) = digits

    def run(callbacks):
        model = nn.Sequential([nn.Dense(64, 256, rng=0), nn.ReLU(), nn.Dropout(0.2),
                               nn.Dense(256, 10, rng=1)], seed=3)
        trainer, _, history = train(model, callbacks, (xt[:30], yt[:30]), (xv[:300], yv[:300]),
                                    epochs=8, batch_size=10, lr=0.05)
        return trainer, trainer.backend.state_dict(), history

    _, state_a, hist_a = run([])
    trainer, state_b, hist_b = run([AccuracyGapMonitor()])
    assert "scored in eval mode" in fired(trainer.monitor.alerts, "accuracy_gap.overfit")[0].message
    assert hist_a == hist_b
    for k, v in state_a["model"]["params"].items():
        assert np.array_equal(v, state_b["model"]["params"][k])
    assert state_a["model"]["rng_state"] == state_b["model"]["rng_state"]


def test_fixed_subset_is_deterministic_and_spread():
    x = np.arange(1000).reshape(-1, 1)
    y = np.arange(1000) // 100  # sorted by class
    xs, ys = fixed_subset(x, y, 50)
    assert len(xs) == 50 and xs[0, 0] == 0 and xs[-1, 0] == 999
    assert set(ys) == set(range(10))
    assert np.array_equal(fixed_subset(x, y, 50)[0], xs)
    assert fixed_subset(x, y, 5000)[0] is x


@pytest.mark.parametrize("kwargs, name", [
    ({"every": 0, "validation_data": ([1], [1])}, "every"),
    ({"every": 10}, "validation_data"),
    ({"validation_data": ([1, 2], [1])}, "validation_data"),
    ({"train_data": "xy"}, "train_data"),
    ({"subset": 0}, "subset"),
    ({"overfit_gap": 0}, "overfit_gap"),
    ({"overfit_gap": 1.5}, "overfit_gap"),
    ({"underfit_accuracy": -0.1}, "underfit_accuracy"),
    ({"underfit_gap": float("nan")}, "underfit_gap"),
    ({"min_improvement": 2}, "min_improvement"),
    ({"min_growth": "a"}, "min_growth"),
    ({"patience": 0}, "patience"),
    ({"patience": 2.5}, "patience"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AccuracyGapMonitor(**kwargs)


def test_inputs_with_their_examples_elsewhere_than_dim_0_are_refused_with_the_way_out():
    """Sequence-first validation inputs (T, N, F) against N targets: refused at construction,
    saying evaluation takes examples along dim 0 and what to do instead."""
    with pytest.raises(ValueError, match=r"validation_data: .*\(5 != 24\).*dim 0.*transpose"):
        AccuracyGapMonitor(every=4, validation_data=(np.zeros((5, 24, 4)), np.zeros(24)))


def test_a_loop_that_reports_half_the_pair_is_told_what_is_missing():
    """Epoch ends with val_accuracy but no train_accuracy (a hand-written loop): the gap
    cannot be computed; one info alert names the missing metric (nothing was said before)."""
    model = nn.Sequential([nn.Dense(4, 3, rng=0)], seed=0)
    monitor = Monitor(model, loss=nn.SoftmaxCrossEntropy(), callbacks=[AccuracyGapMonitor()],
                      progress=False)
    monitor.train_begin()
    for _ in range(3):
        monitor.epoch_begin()
        monitor.epoch_end({"val_accuracy": 0.5, "val_loss": 1.0})
    monitor.train_end()
    skipped = [a for a in monitor.alerts.history if a.code == "accuracy_gap.skipped"]
    assert len(skipped) == 1 and "no train_accuracy" in skipped[0].message
    assert "train_accuracy" in skipped[0].suggestion
