"""Sequential: naming, whole-model gradients, L2, kinks, capture, state, dtype copies."""

import numpy as np
import pytest

from tests.nn.test_layers import distinct_values, numerical_gradient, rel_error
from trainwatch.nn import (
    SGD,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
)


def small_convnet(l2: float = 0.0, seed: int = 0) -> Sequential:
    return Sequential(
        [
            Conv2D(1, 2, 3, padding=1, rng=1),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dense(8, 5, rng=2),
            Tanh(),
            Dropout(0.3),
            Dense(5, 3, rng=3),
        ],
        l2=l2,
        seed=seed,
    )


def test_automatic_names():
    model = Sequential(
        [
            Conv2D(1, 2, 3, rng=0),
            ReLU(),
            MaxPool2D(),
            Flatten(),
            Dense(2, 3, rng=0),
            ReLU(),
            Dense(3, 2, rng=0),
        ]
    )
    assert list(model.layers) == ["conv1", "relu1", "pool1", "flatten1", "fc1", "relu2", "fc2"]
    others = Sequential([LeakyReLU(), Tanh(), Sigmoid(), Dropout(), Tanh()])
    assert list(others.layers) == ["lrelu1", "tanh1", "sigmoid1", "dropout1", "tanh2"]


def test_names_override_and_validation():
    model = Sequential([Dense(2, 2, rng=0), ReLU()], names=["hidden", "act"])
    assert list(model.named_parameters()) == ["hidden.weight", "hidden.bias"]
    with pytest.raises(ValueError, match="names"):
        Sequential([ReLU(), ReLU()], names=["a", "a"])
    with pytest.raises(ValueError, match="names"):
        Sequential([ReLU()], names=["a", "b"])
    with pytest.raises(ValueError, match="l2"):
        Sequential([ReLU()], l2=-1.0)


def test_named_parameters_are_live_and_ordered():
    model = small_convnet()
    params, grads = model.named_parameters(), model.named_gradients()
    assert list(params) == [
        "conv1.weight",
        "conv1.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    assert list(grads) == list(params)
    assert params["fc1.weight"] is model.layers["fc1"].params["weight"]
    assert grads["conv1.bias"] is model.layers["conv1"].grads["bias"]
    assert model.num_parameters() == (2 * 9 + 2) + (8 * 5 + 5) + (5 * 3 + 3)


def test_whole_model_gradient_with_dropout_and_l2():
    model = small_convnet(l2=0.1)
    loss_fn = SoftmaxCrossEntropy()
    x = distinct_values((2, 1, 4, 4)) * 0.3
    y = np.array([0, 2])
    state = model.get_rng_state()

    def total_loss() -> float:
        model.set_rng_state(state)  # the same dropout mask for every evaluation
        return loss_fn.forward(model.forward(x, training=True), y) + model.regularization_loss()

    total_loss()
    kinks = model.kink_signature()
    model.zero_grad()
    model.backward(loss_fn.backward())
    analytic = {k: g.copy() for k, g in model.named_gradients().items()}
    for name, param in model.named_parameters().items():
        numeric = numerical_gradient(total_loss, param)
        assert rel_error(analytic[name], numeric) < 1e-7, name
    total_loss()
    np.testing.assert_array_equal(model.kink_signature(), kinks)


def test_l2_loss_and_gradient():
    model = small_convnet(l2=0.5)
    weights = [model.layers[n].params["weight"] for n in ("conv1", "fc1", "fc2")]
    assert model.regularization_loss() == pytest.approx(0.25 * sum(np.sum(w**2) for w in weights))
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    dscores = np.ones((2, 3))
    model.forward(x, training=False)
    model.backward(dscores)
    with_l2 = {k: g.copy() for k, g in model.named_gradients().items()}
    model.l2 = 0.0
    assert model.regularization_loss() == 0.0
    model.zero_grad()
    model.forward(x, training=False)
    model.backward(dscores)
    for name, grad in model.named_gradients().items():
        param = model.named_parameters()[name]
        extra = 0.5 * param if name.endswith("weight") else np.zeros_like(param)
        np.testing.assert_allclose(with_l2[name] - grad, extra, atol=1e-12, err_msg=name)


def test_kink_signature_changes_when_an_input_crosses_a_relu_kink():
    model = Sequential([Dense(2, 2, rng=0), ReLU()])
    model.layers["fc1"].params["weight"][...] = np.eye(2)
    model.forward(np.array([[1e-3, 1.0]]), training=False)
    before = model.kink_signature()
    model.forward(np.array([[2e-3, 0.5]]), training=False)
    np.testing.assert_array_equal(model.kink_signature(), before)
    model.forward(np.array([[-1e-3, 1.0]]), training=False)
    after = model.kink_signature()
    assert after.dtype == np.int64
    np.testing.assert_array_equal(before, [1, 1])
    np.testing.assert_array_equal(after, [0, 1])


def test_kink_signature_joins_layers_and_is_empty_for_smooth_models():
    model = small_convnet()
    model.forward(np.random.default_rng(0).standard_normal((2, 1, 4, 4)), training=False)
    assert model.kink_signature().shape == (2 * 2 * 4 * 4 + 2 * 2 * 2 * 2,)  # relu1 + pool1
    smooth = Sequential([Dense(3, 2, rng=0), Tanh()])
    smooth.forward(np.ones((1, 3)), training=False)
    assert smooth.kink_signature().shape == (0,)


def test_capture_off_stores_nothing():
    model = small_convnet()
    model.backward(np.ones_like(model.forward(np.ones((2, 1, 4, 4)))))
    assert model.activations == {} and model.activation_grads == {}


def test_capture_on_stores_outputs_and_output_gradients():
    model = small_convnet()
    model.capture = True
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    scores = model.forward(x, training=True)
    dscores = np.random.default_rng(1).standard_normal(scores.shape)
    model.backward(dscores)
    assert list(model.activations) == list(model.layers)
    assert set(model.activation_grads) == set(model.layers)
    fc1 = model.layers["fc1"].params
    np.testing.assert_allclose(
        model.activations["fc1"], model.activations["flatten1"] @ fc1["weight"] + fc1["bias"]
    )
    np.testing.assert_array_equal(model.activations["fc2"], scores)
    np.testing.assert_array_equal(model.activation_grads["fc2"], dscores)
    for name in model.layers:
        assert model.activation_grads[name].shape == model.activations[name].shape, name
    kept = {name: a.copy() for name, a in model.activations.items()}
    held = dict(model.activations)
    model.backward(model.forward(-x, training=True))  # a later pass must not mutate old arrays
    for name, array in held.items():
        np.testing.assert_array_equal(array, kept[name], err_msg=name)


def test_dropout_layers_share_the_model_generator():
    model = Sequential([Dropout(0.5), Dense(4, 4, rng=0), Dropout(0.5)], seed=3)
    assert model.layers["dropout1"].rng is model.rng is model.layers["dropout2"].rng


def test_dropout_reproducible_after_set_rng_state():
    model = small_convnet(seed=11)
    x = np.random.default_rng(0).standard_normal((4, 1, 4, 4))
    state = model.get_rng_state()
    first = model.forward(x, training=True)
    second = model.forward(x, training=True)
    assert not np.array_equal(first, second)
    model.set_rng_state(state)
    np.testing.assert_array_equal(model.forward(x, training=True), first)
    np.testing.assert_array_equal(model.forward(x, training=False), model.forward(x, False))


def test_state_dict_round_trip_keeps_live_arrays():
    model = small_convnet()
    live = model.named_parameters()
    saved = model.state_dict()
    assert all(saved["params"][k] is not v for k, v in live.items())
    x, y = np.random.default_rng(0).standard_normal((3, 1, 4, 4)), np.array([0, 1, 2])
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model, lr=0.5)
    loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    after_step = model.forward(x, training=True)
    assert not np.array_equal(live["fc2.weight"], saved["params"]["fc2.weight"])
    model.load_state_dict(saved)
    for name, array in model.named_parameters().items():
        assert array is live[name]
        np.testing.assert_array_equal(array, saved["params"][name])
    model.load_state_dict(saved)
    assert not np.array_equal(model.forward(x, training=True), after_step)
    with pytest.raises(KeyError):
        model.load_state_dict({"params": {}, "rng_state": saved["rng_state"]})


def test_state_dict_restores_rng():
    model = small_convnet()
    x = np.ones((2, 1, 4, 4))
    saved = model.state_dict()
    first = model.forward(x, training=True)
    model.load_state_dict(saved)
    np.testing.assert_array_equal(model.forward(x, training=True), first)


def test_astype_is_a_cast_deep_copy():
    model = small_convnet()
    low = model.astype(np.float32)
    assert all(p.dtype == np.float32 for p in low.named_parameters().values())
    assert all(g.dtype == np.float32 for g in low.named_gradients().values())
    assert all(p.dtype == np.float64 for p in model.named_parameters().values())
    assert low.layers["dropout1"].rng is low.rng and low.rng is not model.rng
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    assert low.forward(x, training=True).dtype == np.float32
    high = low.astype(np.float64)
    np.testing.assert_allclose(
        high.forward(x, training=False), model.forward(x, training=False), rtol=1e-5, atol=1e-6
    )
    low.named_parameters()["fc1.weight"][...] = 0
    assert model.named_parameters()["fc1.weight"].any()


def test_mlp_overfits_twenty_examples():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 10)), rng.integers(0, 5, 20)
    model = Sequential([Dense(10, 50, rng=1), ReLU(), Dense(50, 5, rng=2)])
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model, lr=0.3)
    initial = loss_fn.forward(model.forward(x), y)
    for _ in range(500):
        loss = loss_fn.forward(model.forward(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    assert initial > 1.0
    assert loss < 0.01
    assert np.array_equal(model.forward(x, training=False).argmax(axis=1), y)
