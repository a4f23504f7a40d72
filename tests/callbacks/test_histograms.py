"""HistogramMonitor: histograms, activation statistics, their alerts, and the capture schedule."""

import math

import numpy as np
import pytest

from trainwatch import Callback, Trainer, nn
from trainwatch.callbacks.histograms import (
    HistogramMonitor,
    activation_figure,
    dead_fraction,
    gradient_rms_ratio,
    saturated_fraction,
)
from trainwatch.data import load_digits, train_val_split
from trainwatch.outputs.memory import MemoryOutput

ACTIVATION_CODES = ("activations.saturated", "activations.dead", "gradients.vanishing",
                    "gradients.exploding")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    (xt, yt), _ = train_val_split(x, y, val_fraction=0.2, seed=0)
    return xt[:640], yt[:640]


def fired(trainer, code):
    return [a for a in trainer.monitor.alerts.history if a.code == code and not a.resolved]


def tanh_net(scale=None, seed=0):
    return nn.Sequential([nn.Dense(64, 64, rng=seed, weight_scale=scale), nn.Tanh(),
                          nn.Dense(64, 64, rng=seed + 1, weight_scale=scale), nn.Tanh(),
                          nn.Dense(64, 10, rng=seed + 2)])


def train(model, callbacks, data, *, epochs=2, lr=0.1, batch_size=64, logdir=None):
    mem = MemoryOutput()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=lr), callbacks=callbacks,
                      progress=False, outputs=[mem], logdir=logdir, raise_errors=True)
    trainer.fit(*data, epochs=epochs, batch_size=batch_size)
    return trainer, mem


# -- the statistics on hand-built arrays -------------------------------------------------------


def test_saturated_fraction_tanh_and_sigmoid():
    a = np.array([[-1.0, -0.98, -0.5, 0.0], [0.5, 0.96, 0.975, 1.0]])
    assert saturated_fraction(a, "tanh") == 4 / 8  # -1, -0.98, 0.975, 1
    assert saturated_fraction(a, "tanh", threshold=0.95) == 5 / 8
    s = np.array([0.0, 0.01, 0.029, 0.031, 0.5, 0.969, 0.971, 1.0])
    assert saturated_fraction(s, "sigmoid") == 5 / 8  # 0, .01, .029, .971, 1
    assert math.isnan(saturated_fraction(a, "relu"))
    assert math.isnan(saturated_fraction(np.zeros((0, 3)), "tanh"))


def test_dead_fraction_counts_units_zero_for_every_example():
    a = np.array([[0.0, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 2.0, 0.0],
                  [0.0, 0.0, 0.0, -1.0]])  # leaky: negative counts as off
    assert dead_fraction(a) == 2 / 4  # units 0 and 3
    conv = np.zeros((2, 3, 4, 4))
    conv[1, 0, 3, 3] = 0.5  # channel 0 active at one position of one example
    conv[0, 2, 0, 0] = 1.0
    assert dead_fraction(conv) == 1 / 3  # channel 1 is dead
    assert dead_fraction(np.array([0.0, -2.0])) == 1.0
    assert math.isnan(dead_fraction(np.zeros((0, 5))))


def test_gradient_rms_ratio():
    # first: norm 2 over 4 entries (rms 1); last: norm 10 over 100 entries (rms 1)
    assert gradient_rms_ratio(2.0, 4, 10.0, 100) == 1.0
    assert gradient_rms_ratio(2e-4, 4, 10.0, 100) == pytest.approx(1e-4)
    assert math.isnan(gradient_rms_ratio(0.0, 4, 0.0, 9))
    assert gradient_rms_ratio(1.0, 4, 0.0, 9) == math.inf
    assert math.isnan(gradient_rms_ratio(float("nan"), 4, 1.0, 9))


def test_activation_figure_has_one_panel_per_layer():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    acts = {"tanh1": np.tanh(rng.standard_normal((32, 8))),
            "relu1": np.maximum(rng.standard_normal((32, 8)), 0)}
    fig = activation_figure(acts, {"tanh1": "tanh", "relu1": "relu"})
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["tanh1 (tanh)", "relu1 (relu)"]
    assert axes[0].get_xlim() == (-1.0, 1.0)
    assert "saturated" in axes[0].get_title() and "zero" in axes[1].get_title()


# -- alerts on real training runs ----------------------------------------------------------------


def test_huge_initial_weights_saturate_tanh_and_raise_an_alert_naming_the_layer(digits):
    # He scaling for 64 inputs is std 0.18; 3.0 is about 17 times that
    trainer, mem = train(tanh_net(scale=3.0), [HistogramMonitor(budget=None, every=5)], digits,
                         epochs=1)
    sat = fired(trainer, "activations.saturated")
    assert {a.tensor for a in sat} == {"tanh1", "tanh2"}
    assert all(a.step == 0 for a in sat)  # seen on the very first step
    assert all(a.value > 0.8 for a in sat)
    assert "tanh1" in sat[0].message and "Xavier" in sat[0].suggestion
    assert mem.scalar("activations/tanh1/saturated_fraction")[0] > 0.8


def test_a_healthy_tanh_net_raises_no_activation_alert(digits):
    trainer, mem = train(tanh_net(), [HistogramMonitor(budget=None, every=5)], digits, epochs=3)
    assert not [a for a in trainer.monitor.alerts.history if a.code in ACTIVATION_CODES]
    assert max(mem.scalar("activations/tanh1/saturated_fraction")) < 0.1
    ratios = mem.scalar("gradients/norm_ratio_first_last")
    assert len(ratios) == 6 and all(1e-2 < r < 1e2 for r in ratios)


def test_a_large_negative_bias_kills_relus_and_raises_dead(digits):
    model = nn.Sequential([nn.Dense(64, 64, rng=0), nn.ReLU(), nn.Dense(64, 32, rng=1),
                           nn.ReLU(), nn.Dense(32, 10, rng=2)])
    model.layers["fc1"].params["bias"][:] = -10.0
    trainer, mem = train(model, [HistogramMonitor(budget=None, every=5)], digits, epochs=2)
    dead = fired(trainer, "activations.dead")
    assert "relu1" in {a.tensor for a in dead}
    first = next(a for a in dead if a.tensor == "relu1")
    assert first.step == 10 and first.value == 1.0  # dead in 3 measured batches: 0, 5, 10
    assert "192 examples" in first.message
    assert mem.scalar("activations/relu1/dead_fraction") == [1.0] * 4


def test_the_dead_alert_counts_units_silent_in_every_batch_of_the_window(digits):
    """Units that fire on rare inputs look dead in one batch, not in three."""
    class Inputs(Callback):
        order = 100
        seen = []

        def on_backward_end(self, state):
            if state.step % 5 == 0:
                self.seen.append(state.inputs.copy())

    # unit i fires only when pixel i is brighter than 0.9: rare for most pixels
    first = nn.Dense(64, 64, rng=0)
    first.params["weight"][...] = np.eye(64)
    first.params["bias"][...] = -0.9
    model = nn.Sequential([first, nn.ReLU(), nn.Dense(64, 10, rng=1)])
    monitor = HistogramMonitor(budget=None, every=5, dead_alert=0.05, dead_window=3)
    trainer, mem = train(model, [monitor, Inputs()], digits, epochs=1, lr=1e-9, batch_size=16)
    active = [(b > 0.9).any(axis=0) for b in Inputs.seen]  # pixels are multiples of 1/16
    per_batch = [np.mean(~a) for a in active]
    assert mem.scalar("activations/relu1/dead_fraction") == per_batch
    union = np.mean(~np.any(active[:3], axis=0))  # the first full window: steps 0, 5, 10
    assert union < min(per_batch[:3])  # the window really is stricter than one batch
    alert = fired(trainer, "activations.dead")[0]
    assert alert.step == 10 and alert.value == union


def test_a_healthy_relu_net_has_few_dead_units(digits):
    model = nn.Sequential([nn.Dense(64, 64, rng=0), nn.ReLU(), nn.Dense(64, 10, rng=1)])
    trainer, mem = train(model, [HistogramMonitor(budget=None, every=5)], digits, epochs=2)
    assert not fired(trainer, "activations.dead")
    assert max(mem.scalar("activations/relu1/dead_fraction")) < 0.3


def test_a_deep_small_weight_sigmoid_stack_raises_vanishing(digits):
    layers = []
    for i in range(6):
        layers += [nn.Dense(64, 64, rng=i, weight_scale=0.05), nn.Sigmoid()]
    model = nn.Sequential([*layers, nn.Dense(64, 10, rng=9)])
    trainer, mem = train(model, [HistogramMonitor(budget=None, every=5)], digits, epochs=1)
    vanishing = fired(trainer, "gradients.vanishing")
    assert len(vanishing) == 1 and vanishing[0].value < 1e-3
    assert "fc1.weight" in vanishing[0].message
    assert not fired(trainer, "gradients.exploding")
    assert mem.scalar("gradients/norm_ratio_first_last")[0] < 1e-3


def test_no_gradient_at_all_in_the_first_layer_is_called_a_blocked_path(digits):
    """Dead ReLUs (a first-layer bias of -10) let no gradient through: a ratio of exactly 0
    is no sigmoid stack's vanishing, and the advice says what blocks it. (The second layer's
    bias keeps its units, and so the last layer's gradient, alive.)"""
    first, second = nn.Dense(64, 64, rng=0), nn.Dense(64, 32, rng=1)
    first.params["bias"][...] = -10.0
    second.params["bias"][...] = 0.1
    model = nn.Sequential([first, nn.ReLU(), second, nn.ReLU(), nn.Dense(32, 10, rng=2)])
    trainer, _ = train(model, [HistogramMonitor(budget=None, every=5)], digits, epochs=1)
    (vanishing,) = fired(trainer, "gradients.vanishing")
    assert vanishing.value == 0.0 and "no gradient reaches the first layer at all" in (
        vanishing.message)
    assert "dead ReLUs" in vanishing.suggestion and "sigmoid" not in vanishing.suggestion


def test_a_tiny_first_layer_raises_exploding(digits):
    # A first layer with 1e-5 weights feeds near-zero activations forward, so the last
    # layer's weight gradient (its input times dL/dscores) is tiny, while dL/d(first layer)
    # comes back through normal He-scaled weights: the ratio is far above 1e3.
    model = nn.Sequential([nn.Dense(64, 64, rng=0, weight_scale=1e-5), nn.ReLU(),
                           nn.Dense(64, 64, rng=1), nn.ReLU(), nn.Dense(64, 10, rng=2)])
    trainer, mem = train(model, [HistogramMonitor(budget=None, every=5)], digits, epochs=1)
    exploding = fired(trainer, "gradients.exploding")
    assert len(exploding) == 1 and exploding[0].value > 1e3
    assert mem.scalar("gradients/norm_ratio_first_last")[0] > 1e3
    assert not fired(trainer, "gradients.vanishing")


# -- what is written, and when -------------------------------------------------------------------


def conv_net():
    return nn.Sequential([nn.Conv2D(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2D(2),
                          nn.Flatten(), nn.Dense(64, 10, rng=1)])


def test_histogram_tags_and_counts(digits):
    x, y = digits
    images = (x[:128].reshape(-1, 1, 8, 8), y[:128])
    trainer, mem = train(conv_net(), [HistogramMonitor(budget=None, every=3)], images, epochs=1,
                         batch_size=32)
    layers = ["conv1", "relu1", "pool1", "fc1"]  # flatten1 is pool1 reshaped: skipped
    tensors = ["conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"]
    expected = ({f"activations/{n}" for n in layers}
                | {f"gradients/activations/{n}" for n in layers}
                | {f"weights/{t}" for t in tensors} | {f"gradients/{t}" for t in tensors})
    assert set(mem.histograms) == expected
    sizes = {"conv1": 32 * 4 * 8 * 8, "relu1": 32 * 4 * 8 * 8, "pool1": 32 * 4 * 4 * 4,
             "fc1": 32 * 10}
    for tag, entries in mem.histograms.items():
        assert [s for s, _ in entries] == [0, 3]  # 4 steps of 32, every 3
        hist = entries[0][1]
        assert len(hist.counts) == 64 and hist.counts.sum() == hist.num
        layer = tag.split("/")[-1]
        if layer in sizes:
            assert hist.num == sizes[layer]
    params = trainer.backend.parameters()
    assert mem.histograms["weights/conv1.weight"][0][1].num == params["conv1.weight"].size == 36
    # conv dead units are channels
    assert mem.steps("activations/relu1/dead_fraction") == [0, 3]
    dead = mem.scalar("activations/relu1/dead_fraction")
    assert all(v in (0, 0.25, 0.5, 0.75, 1.0) for v in dead)  # 4 channels
    assert "activations/flatten1/mean" not in mem.tags
    assert {"activations/conv1/mean", "activations/pool1/std"} <= mem.tags


@pytest.mark.parametrize("which", [("gradients",), ("weights",)])
def test_gradient_ratio_is_the_rms_ratio_of_the_first_and_last_weight_gradients(digits, which):
    """From the gradient histograms' sums of squares when they are written, else from the
    backend's norms: the same number either way."""
    x, y = digits
    trainer, mem = train(tanh_net(), [HistogramMonitor(budget=None, every=1, which=which)],
                         (x[:64], y[:64]), epochs=1)
    grads = trainer.backend.gradients()  # the one step's gradients (no zero_grad after it)
    first, last = grads["fc1.weight"], grads["fc3.weight"]
    expected = gradient_rms_ratio(float(np.linalg.norm(first)), first.size,
                                  float(np.linalg.norm(last)), last.size)
    assert mem.scalar("gradients/norm_ratio_first_last") == [pytest.approx(expected, rel=1e-9)]


def test_which_selects_histograms_but_statistics_stay(digits):
    trainer, mem = train(tanh_net(), [HistogramMonitor(budget=None, every=5, which=("weights",))],
                         digits, epochs=1)
    assert {t.split("/")[0] for t in mem.histograms} == {"weights"}
    assert "activations/tanh1/saturated_fraction" in mem.tags


def test_capture_is_on_only_for_scheduled_steps(digits):
    class Probe(Callback):
        order = 100
        seen = []

        def on_loss_computed(self, state):
            self.seen.append((state.step, state.backend.model.capture))

    model = tanh_net()
    train(model, [HistogramMonitor(budget=None, every=4), Probe()], digits, epochs=1)
    assert [s for s, on in Probe.seen if on] == [0, 4, 8]
    assert len(Probe.seen) == 10
    assert model.capture is False


def test_figure_every_counts_scheduled_steps(digits):
    trainer, mem = train(tanh_net(), [HistogramMonitor(budget=None, every=2, figure_every=3)],
                         digits, epochs=1)
    assert [s for s, _ in mem.figures["activations/distribution"]] == [0, 6]
    _, mem = train(tanh_net(), [HistogramMonitor(budget=None, every=2, figure_every=None)], digits,
                   epochs=1)
    assert not mem.figures


def test_watching_does_not_change_training(digits):
    def run(callbacks):
        model = nn.Sequential([nn.Dense(64, 32, rng=0), nn.Tanh(), nn.Dropout(0.2),
                               nn.Dense(32, 10, rng=1)], seed=4)
        trainer, _ = train(model, callbacks, digits, epochs=2)
        return trainer.backend.state_dict()

    a, b = run([]), run([HistogramMonitor(budget=None, every=3, figure_every=2)])
    for k, v in a["model"]["params"].items():
        assert np.array_equal(v, b["model"]["params"][k]), k
    assert a["model"]["rng_state"] == b["model"]["rng_state"]


def test_histograms_read_back_from_tensorboard(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tanh_net(), [HistogramMonitor(budget=None, every=5, figure_every=None)], digits, epochs=1,
          logdir=tmp_path)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0,
                                                         "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"activations/tanh1", "gradients/activations/tanh2", "weights/fc1.weight",
            "gradients/fc3.bias"} <= set(tags["histograms"])
    events = acc.Histograms("activations/tanh1")
    assert [e.step for e in events] == [0, 5]
    assert events[0].histogram_value.num == 64 * 64
    assert sum(events[0].histogram_value.bucket) == 64 * 64
    assert "activations/tanh1/saturated_fraction" in tags["scalars"]


@pytest.mark.parametrize("kwargs, name", [
    ({"every": 0}, "every"),
    ({"bins": 0}, "bins"),
    ({"which": ("activations", "biases")}, "which"),
    ({"saturation_threshold": 0.4}, "saturation_threshold"),
    ({"saturation_threshold": 1.0}, "saturation_threshold"),
    ({"saturated_alert": 0}, "saturated_alert"),
    ({"dead_alert": 1.5}, "dead_alert"),
    ({"dead_min_batch": 0}, "dead_min_batch"),
    ({"dead_window": 0}, "dead_window"),
    ({"vanishing_ratio": -1}, "vanishing_ratio"),
    ({"exploding_ratio": float("inf")}, "exploding_ratio"),
    ({"vanishing_ratio": 10.0, "exploding_ratio": 1.0}, "vanishing_ratio"),
    ({"figure_every": 0}, "figure_every"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HistogramMonitor(**kwargs)
