"""NumpyBackend: every measurement against a plain numpy computation, and the promise that
looking (evaluate, check_gradients, norms) never changes what training will do next."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from tests.helpers import assert_identical
from trainwatch import nn
from trainwatch.backends.numpy_backend import NumpyBackend
from trainwatch.core.backend import LayerInfo
from trainwatch.data import load_digits

NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return x[:130], y[:130]


def make(*, l2=1e-3, dropout=0.2, dtype=np.float64, optimizer=nn.Momentum, seed=0):
    layers = [nn.Dense(64, 16, rng=seed, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Dense(16, 10, rng=seed + 1, dtype=dtype))
    model = nn.Sequential(layers, l2=l2, seed=seed)
    return NumpyBackend(model, nn.SoftmaxCrossEntropy(), optimizer(model, lr=0.1))


def train_step(backend, x, y):
    scores = backend.forward(x, training=True)
    backend.loss(scores, y)
    backend.backward()
    backend.step()


def snapshot(backend):
    """Everything that decides the next training step, deep-copied."""
    model = backend.model
    return {
        "state": backend.state_dict(),
        "grads": backend.gradients(),
        "probs": backend.loss_fn._probs.copy(),
        "capture": model.capture,
        "activations": {k: v.copy() for k, v in model.activations.items()},
        "activation_grads": {k: v.copy() for k, v in model.activation_grads.items()},
    }


def trained(digits, steps=3, **kwargs):
    backend = make(**kwargs)
    x, y = digits
    for i in range(steps):
        train_step(backend, x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)])
    return backend


# -- parameters, gradients, norms -----------------------------------------------------------------


def test_parameters_and_gradients_are_copies_in_layer_order(digits):
    backend = trained(digits)
    assert backend.parameter_names() == NAMES
    params, grads = backend.parameters(), backend.gradients()
    assert list(params) == NAMES and list(grads) == NAMES
    live = backend.model.named_parameters()
    for name in NAMES:
        assert np.array_equal(params[name], live[name])
        assert not np.shares_memory(params[name], live[name])
    before = live["fc1.weight"].copy()
    params["fc1.weight"][...] = 7.0
    grads["fc1.weight"][...] = 7.0
    assert np.array_equal(live["fc1.weight"], before)
    assert not np.any(backend.model.named_gradients()["fc1.weight"] == 7.0)


def test_parameters_by_name_and_shapes(digits):
    backend = trained(digits)
    live = backend.model.named_parameters()
    assert backend.parameter_shapes() == {name: live[name].shape for name in NAMES}
    some = backend.parameters(names={NAMES[-1], NAMES[0]})
    assert list(some) == [NAMES[0], NAMES[-1]]
    assert np.array_equal(some[NAMES[0]], live[NAMES[0]])
    assert not np.shares_memory(some[NAMES[0]], live[NAMES[0]])


def test_norms_are_the_l2_norms_of_weights_and_gradients(digits):
    backend = trained(digits)
    norms = backend.norms()
    live, grads = backend.model.named_parameters(), backend.model.named_gradients()
    assert list(norms) == NAMES
    for name, n in norms.items():
        assert n.weight == pytest.approx(np.linalg.norm(live[name]), rel=1e-12)
        assert n.grad == pytest.approx(np.linalg.norm(grads[name]), rel=1e-12)
        assert math.isnan(n.update)
    assert norms["fc1.weight"].grad > 0


def test_begin_and_end_update_measure_the_update_the_optimizer_applied(digits):
    backend = trained(digits, steps=2)  # momentum: the update is not just -lr * grad
    x, y = digits
    for i in range(2):  # twice: the snapshot buffer is reused
        xb, yb = x[64 + 32 * i:96 + 32 * i], y[64 + 32 * i:96 + 32 * i]
        backend.loss(backend.forward(xb), yb)
        backend.backward()
        before = backend.parameters()
        backend.begin_update()
        backend.step()
        after = backend.parameters()
        grads = backend.gradients()
        norms = backend.end_update()
        assert list(norms) == NAMES
        for name in NAMES:
            update = after[name] - before[name]
            assert norms[name].update == pytest.approx(np.linalg.norm(update), rel=1e-12)
            assert norms[name].weight == pytest.approx(np.linalg.norm(after[name]), rel=1e-12)
            assert norms[name].grad == pytest.approx(np.linalg.norm(grads[name]), rel=1e-12)
            sgd_step = 0.1 * np.linalg.norm(grads[name])
            assert abs(norms[name].update - sgd_step) > 1e-9 * sgd_step  # momentum's own
        assert_identical(backend.parameters(), after)  # measuring did not move anything


def test_end_update_without_begin_update_is_an_error():
    with pytest.raises(RuntimeError, match="begin_update"):
        make().end_update()


def test_first_nonfinite_names_the_parameter_or_its_gradient(digits):
    backend = trained(digits)
    model = backend.model
    assert backend.first_nonfinite() is None
    model.named_gradients()["fc2.bias"][3] = np.nan
    assert backend.first_nonfinite() == "fc2.bias (gradient)"
    model.named_parameters()["fc2.weight"][0, 0] = np.inf
    assert backend.first_nonfinite() == "fc2.weight"  # layer order: fc2.weight before fc2.bias
    model.named_gradients()["fc1.weight"][5, 5] = -np.inf
    assert backend.first_nonfinite() == "fc1.weight (gradient)"
    fresh = make()
    fresh.model.named_parameters()["fc1.bias"][:] = 1e308  # finite, though the sum overflows
    with np.errstate(over="ignore"):
        assert fresh.first_nonfinite() is None


# -- activations ----------------------------------------------------------------------------------


def test_layers_and_activation_capture_on_and_off(digits):
    backend = make(dropout=0.0)
    model = backend.model
    x, y = digits[0][:8], digits[1][:8]
    assert backend.layers() == [LayerInfo("fc1", "dense"), LayerInfo("relu1", "relu"),
                                LayerInfo("fc2", "dense")]
    backend.forward(x)
    assert backend.activations() == {}  # off by default: nothing kept

    backend.capture_activations(True)
    scores = backend.forward(x)
    backend.loss(scores, y)
    backend.backward()
    acts, act_grads = backend.activations(), backend.activation_gradients()
    w1, b1 = model.layers["fc1"].params["weight"], model.layers["fc1"].params["bias"]
    assert np.allclose(acts["fc1"], x @ w1 + b1)
    assert np.array_equal(acts["relu1"], np.maximum(acts["fc1"], 0))
    assert np.array_equal(acts["fc2"], scores)
    assert np.allclose(act_grads["fc2"], backend.loss_fn.backward())
    assert {k: v.shape for k, v in act_grads.items()} == {k: v.shape for k, v in acts.items()}
    acts.clear()
    assert set(backend.activations()) == {"fc1", "relu1", "fc2"}  # a copy was handed out

    backend.capture_activations(False)
    kept = {k: v.copy() for k, v in backend.activations().items()}
    backend.forward(x[::-1])
    assert_identical(backend.activations(), kept)  # off: later passes are not recorded
    backend.capture_activations(True)
    assert backend.activations() == {}  # switching on starts afresh
    backend.forward(x[:3])
    assert backend.activations()["fc2"].shape == (3, 10)


def test_capture_requests_are_counted(digits):
    """Two callbacks capturing on their own schedules: recording stays on until both gave
    their request back; a release without a request changes nothing."""
    backend = make(dropout=0)
    x = digits[0][:4]
    backend.capture_activations(False)  # nothing open: still off
    backend.capture_activations(True)
    backend.capture_activations(True)
    backend.capture_activations(False)
    backend.forward(x)
    assert backend.activations()["fc2"].shape == (4, 10)  # one request still open
    backend.capture_activations(False)
    kept = {k: v.copy() for k, v in backend.activations().items()}
    backend.forward(x[:2])
    assert_identical(backend.activations(), kept)  # both released: off


# -- evaluate -------------------------------------------------------------------------------------


def test_evaluate_matches_numpy_and_changes_nothing(digits):
    backend = trained(digits)
    backend.capture_activations(True)
    x, y = digits
    backend.loss(backend.forward(x[:32]), y[:32])
    backend.backward()
    before = snapshot(backend)
    assert before["activations"]

    loss, accuracy = backend.evaluate(x, y, batch_size=50)  # 3 batches: 50, 50, 30

    after = snapshot(backend)
    assert_identical(before, after)
    scores = backend.model.forward(x, training=False)
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probs[np.arange(len(y)), y].mean(), rel=1e-12)
    assert accuracy == pytest.approx(np.mean(scores.argmax(axis=1) == y))
    assert backend.evaluate(x, y) == pytest.approx((loss, accuracy), rel=1e-12)  # no dropout


# -- state ----------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_training_bit_identically(digits):
    backend = make(optimizer=nn.Adam)
    x, y = digits
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    train_step(backend, *batches[0])
    saved = backend.state_dict()
    assert saved["optimizer"]["buffers"] and "rng_state" in saved["model"]
    frozen = copy.deepcopy(saved)
    for batch in batches[1:]:
        train_step(backend, *batch)
    reference = backend.state_dict()
    assert_identical(saved, frozen)  # a deep copy: training on did not change it

    backend.load_state_dict(saved)
    assert_identical(backend.state_dict(), frozen)
    for batch in batches[1:]:  # same batches, same dropout draws, same Adam moments
        train_step(backend, *batch)
    assert_identical(backend.state_dict(), reference)


# -- gradient checks ------------------------------------------------------------------------------


def test_check_gradients_checks_data_and_regularisation_separately(digits):
    backend = trained(digits, l2=0.05, dropout=0.0)
    x, y = digits[0][:3], digits[1][:3]
    report = backend.check_gradients(x, y, seed=1)
    assert report.passed, str(report)
    assert list(report.params) == NAMES
    assert report.regularization is not None and "fc1.weight" in report.regularization
    # the data section's analytic gradient is the data loss's alone (λ = 0) ...
    model = backend.model.astype(np.float64)
    model.l2 = 0.0
    loss = nn.SoftmaxCrossEntropy()
    loss.forward(model.forward(x, training=True), y)
    model.zero_grad()
    model.backward(loss.backward())
    data_grads = model.named_gradients()
    weights = backend.model.named_parameters()
    for name, check in report.params.items():
        assert check.worst_kind == "coordinate"  # a passing tensor shows an entry
        assert check.worst_analytic == pytest.approx(data_grads[name][check.worst_index],
                                                     rel=1e-9, abs=1e-15)
    # ... and the regularisation section's is λ·W for weights (0 for biases)
    for name in ("fc1.weight", "fc2.weight"):
        check = report.regularization[name]
        assert check.verdict == "correct" and check.worst_kind == "coordinate"
        assert check.worst_analytic == pytest.approx(0.05 * weights[name][check.worst_index],
                                                     rel=1e-9)
    assert make(l2=0.0).check_gradients(x, y).regularization is None


def test_check_gradients_changes_nothing_even_for_a_float32_model_with_dropout(digits):
    backend = trained(digits, dtype=np.float32, dropout=0.3)
    backend.capture_activations(True)
    x, y = digits
    backend.loss(backend.forward(x[:32]), y[:32])
    backend.backward()
    before = snapshot(backend)

    report = backend.check_gradients(x[:3], y[:3], seed=3)

    assert_identical(before, snapshot(backend))
    assert report.passed, str(report)
    assert report.precision == "float64"  # the check ran on a float64 copy
    assert not report.nondeterministic
    assert all(p.dtype == np.float32 for p in backend.model.named_parameters().values())


def test_check_gradients_fixes_dropout_by_the_seed(digits):
    backend = trained(digits, dropout=0.5)
    x, y = digits[0][:3], digits[1][:3]
    first = backend.check_gradients(x, y, seed=4)
    again = backend.check_gradients(x, y, seed=4)
    other = backend.check_gradients(x, y, seed=5)
    assert first.loss == again.loss
    assert first.loss != other.loss  # another seed, another dropout mask
    assert first.passed and other.passed


class WrongBias(nn.Dense):
    """Dense whose bias gradient is the mean over the batch instead of the sum."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["bias"] -= dy.sum(axis=0)
        self.grads["bias"] += dy.mean(axis=0)
        return dx


def test_check_gradients_names_exactly_the_wrong_tensor(digits):
    model = nn.Sequential([nn.Dense(64, 16, rng=0), nn.Tanh(), WrongBias(16, 10, rng=1)],
                          seed=0)
    backend = NumpyBackend(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=0.1))
    report = backend.check_gradients(digits[0][:3], digits[1][:3])
    assert report.failed == ["fc2.bias"], str(report)
    assert report.params["fc2.bias"].verdict == "wrong"


# -- training primitives --------------------------------------------------------------------------


def test_loss_backward_and_step_primitives(digits):
    backend = make(l2=0.01, dropout=0.0, optimizer=nn.SGD)
    model = backend.model
    x, y = digits[0][:32], digits[1][:32]
    assert backend.loss_kind == "softmax_cross_entropy"
    scores = backend.forward(x, training=True)
    data, reg = backend.loss(scores, y)
    weights = [model.layers[n].params["weight"] for n in ("fc1", "fc2")]
    assert reg == pytest.approx(0.5 * 0.01 * sum(float(np.sum(w * w)) for w in weights))
    assert data == pytest.approx(nn.SoftmaxCrossEntropy().forward(scores, y))
    backend.backward()
    first = backend.gradients()
    backend.backward()  # gradients are zeroed first, not accumulated
    assert_identical(first, backend.gradients())
    before = backend.parameters()
    backend.step()
    for name, value in backend.parameters().items():
        assert np.allclose(value, before[name] - 0.1 * first[name], rtol=0, atol=1e-15)
    assert make(l2=0.0).loss(scores, y)[1] == 0.0


def test_example_cuts_try_every_reading_of_arrays_whose_shape_leaves_it_open():
    """An array whose dims 0 and 1 both have the batch's size (8 here: sequence-first inputs
    as long as the batch, a (T, T) mask) may hold its examples along either, or be shared:
    the usual cut comes first, then every other reading; unambiguous batches have one."""
    backend = NumpyBackend(nn.Sequential([nn.Dense(3, 2)], seed=0), nn.SoftmaxCrossEntropy())
    x, mask, y = np.zeros((8, 8, 3)), np.zeros((8, 8)), np.zeros((8, 5))
    cuts = list(backend.example_cuts((x, mask, y), 2, 8))
    shapes = [tuple(a.shape for a in cut) for cut in cuts]
    assert len(shapes) == 9 and len(set(shapes)) == 9
    assert shapes[0] == ((2, 8, 3), (2, 8), (2, 5))  # the usual cut: dim 0
    assert ((8, 2, 3), (8, 8), (2, 5)) in shapes  # sequence-first, the mask shared
    assert [a.shape for a in backend.first_examples((x, mask, y), 2, 8)] == list(shapes[0])
    assert len(list(backend.example_cuts((np.zeros((8, 5, 3)), y), 2, 8))) == 1


def test_the_learning_rate_is_the_optimizers_as_it_is_now():
    model = nn.Sequential([nn.Dense(3, 2, rng=0)], seed=0)
    optimizer = nn.Momentum(model, lr=0.05)
    backend = NumpyBackend(model, nn.SoftmaxCrossEntropy(), optimizer)
    assert backend.learning_rate() == 0.05
    optimizer.lr = 0.005  # (a schedule of the loop's own)
    assert backend.learning_rate() == 0.005
    assert NumpyBackend(model, nn.SoftmaxCrossEntropy()).learning_rate() is None
