"""Layers: backward against full centered finite differences, forward against naive loops."""

from collections.abc import Callable

import numpy as np
import pytest

from trainwatch.nn import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)

H = 1e-6


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = H) -> np.ndarray:
    """Centered differences of ``f()`` with respect to every entry of ``x`` (perturbed in place)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        f_plus = f()
        x[idx] = old - h
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * h)
    return grad


def rel_error(a: np.ndarray, n: np.ndarray) -> float:
    """Normwise relative error ``‖a - n‖ / (‖a‖ + ‖n‖)`` (0 when both are 0)."""
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - n) / denom)


def check_layer(
    layer: Layer,
    x: np.ndarray,
    *,
    training: bool = False,
    before_forward: Callable[[], None] = lambda: None,
    tol: float = 1e-8,
) -> None:
    """Check dx and every parameter gradient of ``layer`` through ``loss = sum(y * R)``."""
    before_forward()
    y = layer.forward(x, training)
    r = np.random.default_rng(123).standard_normal(y.shape)

    def loss() -> float:
        before_forward()
        return float(np.sum(layer.forward(x, training) * r))

    layer.zero_grad()
    dx = layer.backward(r)
    analytic = {k: g.copy() for k, g in layer.grads.items()}
    assert dx.shape == x.shape
    assert rel_error(dx, numerical_gradient(loss, x)) < tol, "input gradient"
    for key, param in layer.params.items():
        err = rel_error(analytic[key], numerical_gradient(loss, param))
        assert err < tol, f"{key} gradient: rel error {err:.2e}"


def away_from_zero(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random values with |x| in [0.1, 1] and random signs: no ReLU kink within ±h."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def distinct_values(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """All entries distinct, at least 0.1 apart: every max-pool window has a unique winner."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


def naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, hp, wp = xp.shape
    f, _, kh, kw = w.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(n):
        for o in range(f):
            for r in range(ho):
                for c in range(wo):
                    patch = xp[i, :, r * stride : r * stride + kh, c * stride : c * stride + kw]
                    out[i, o, r, c] = np.sum(patch * w[o]) + b[o]
    return out


def naive_maxpool(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    n, ch, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, ch, ho, wo))
    for r in range(ho):
        for c in range(wo):
            out[:, :, r, c] = x[:, :, r * stride : r * stride + k, c * stride : c * stride + k].max(
                axis=(2, 3)
            )
    return out


# -- gradient checks --------------------------------------------------------------------------


def test_dense_gradients():
    layer = Dense(4, 5, rng=0)
    layer.params["bias"][...] = np.random.default_rng(1).standard_normal(5)
    check_layer(layer, np.random.default_rng(2).standard_normal((3, 4)))


@pytest.mark.parametrize(
    ("stride", "padding", "kernel"), [(1, 0, 3), (2, 1, 3), (1, 1, (2, 3)), (2, 0, 2)]
)
def test_conv2d_gradients(stride, padding, kernel):
    layer = Conv2D(3, 4, kernel, stride=stride, padding=padding, rng=0)
    layer.params["bias"][...] = np.random.default_rng(1).standard_normal(4)
    check_layer(layer, np.random.default_rng(2).standard_normal((2, 3, 5, 6)))


@pytest.mark.parametrize(("kernel", "stride"), [(2, None), (3, 1), (2, 3)])
def test_maxpool_gradients(kernel, stride):
    check_layer(MaxPool2D(kernel, stride), distinct_values((2, 3, 6, 7)))


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.1)], ids=["relu", "leaky_relu"])
def test_rectifier_gradients(layer):
    check_layer(layer, away_from_zero((4, 6)))


@pytest.mark.parametrize(
    "layer", [Tanh(), Sigmoid(), Flatten()], ids=["tanh", "sigmoid", "flatten"]
)
def test_smooth_layer_gradients(layer):
    check_layer(layer, 2 * np.random.default_rng(0).standard_normal((3, 2, 2, 2)))


def test_dropout_gradients_with_replayed_mask():
    layer = Dropout(0.5)
    layer.rng = np.random.default_rng(7)
    state = layer.rng.bit_generator.state

    def replay() -> None:
        layer.rng.bit_generator.state = state

    check_layer(
        layer,
        np.random.default_rng(0).standard_normal((5, 8)),
        training=True,
        before_forward=replay,
    )


def test_sigmoid_backward_uses_activation_not_preactivation():
    layer = Sigmoid()
    x = np.array([[-3.0, 0.0, 2.0]])
    a = 1 / (1 + np.exp(-x))
    layer.forward(x, training=False)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), a * (1 - a), rtol=1e-12)


# -- forward values ---------------------------------------------------------------------------


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1), (3, 2)])
def test_conv2d_forward_matches_naive_loops(stride, padding):
    layer = Conv2D(2, 3, 3, stride=stride, padding=padding, rng=0)
    layer.params["bias"][...] = [0.5, -1.0, 2.0]
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 6))
    y = layer.forward(x, training=False)
    expected = naive_conv(x, layer.params["weight"], layer.params["bias"], stride, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "stride"), [(2, None), (3, 1), (3, 2)])
def test_maxpool_forward_matches_naive_loops(kernel, stride):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8))
    y = MaxPool2D(kernel, stride).forward(x, training=False)
    np.testing.assert_array_equal(y, naive_maxpool(x, kernel, stride or kernel))


def test_dense_forward_and_default_init():
    layer = Dense(400, 300, rng=0)
    assert layer.params["weight"].shape == (400, 300)
    assert layer.params["weight"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    np.testing.assert_array_equal(layer.params["bias"], np.zeros(300))
    assert Dense(4, 3, rng=0, weight_scale=1e-3).params["weight"].std() < 1e-2
    x = np.ones((2, 400))
    np.testing.assert_allclose(layer.forward(x, False), x @ layer.params["weight"], rtol=1e-12)


def test_same_seed_same_weights():
    np.testing.assert_array_equal(
        Dense(3, 2, rng=5).params["weight"],
        Dense(3, 2, rng=np.random.default_rng(5)).params["weight"],
    )


def test_activation_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ReLU().forward(x, False), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(LeakyReLU(0.1).forward(x, False), [-0.2, -0.05, 0, 0.5, 2])
    np.testing.assert_allclose(Tanh().forward(x, False), np.tanh(x))
    np.testing.assert_allclose(Sigmoid().forward(x, False), 1 / (1 + np.exp(-x)), rtol=1e-14)
    extreme = Sigmoid().forward(np.array([-1000.0, 1000.0]), False)
    np.testing.assert_array_equal(extreme, [0.0, 1.0])


# -- gradient accumulation, dtypes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "x_shape"), [(Dense(3, 2, rng=0), (4, 3)), (Conv2D(1, 2, 2, rng=0), (2, 1, 3, 3))]
)
def test_gradients_accumulate_in_place_until_zero_grad(layer, x_shape):
    y = layer.forward(np.random.default_rng(1).standard_normal(x_shape), True)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    arrays = dict(layer.grads)  # the same objects must be updated, never replaced
    layer.backward(dy)
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer.backward(dy)
    for key, grad in layer.grads.items():
        assert grad is arrays[key]
        assert once[key].any()
        np.testing.assert_allclose(grad, 2 * once[key], err_msg=key)
    layer.zero_grad()
    assert all(grad is arrays[k] and not grad.any() for k, grad in layer.grads.items())


@pytest.mark.parametrize(
    "make",
    [lambda d: Dense(6, 3, rng=0, dtype=d), lambda d: Conv2D(1, 2, 3, padding=1, rng=0, dtype=d)],
)
def test_parameters_keep_dtype_float32(make):
    layer = make(np.float32)
    x = np.random.default_rng(0).standard_normal((2, 6) if layer.kind == "dense" else (2, 1, 3, 2))
    y = layer.forward(x, True)  # float64 input is cast to the parameters' dtype
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(
        p.dtype == g.dtype == np.float32
        for p, g in zip(layer.params.values(), layer.grads.values(), strict=True)
    )


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(), Tanh(), Sigmoid(), MaxPool2D(), Flatten()])
def test_parameterless_layers_keep_input_dtype(layer):
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    y = layer.forward(x, True)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32


# -- kinks ------------------------------------------------------------------------------------


def test_kink_signatures():
    x = np.array([[-1.0, 2.0, 0.0]])
    for layer in (ReLU(), LeakyReLU()):
        layer.forward(x, False)
        np.testing.assert_array_equal(layer.kink_signature(), [[False, True, False]])
    pool = MaxPool2D(2)
    pool.forward(np.array([[[[1.0, 5.0], [3.0, 2.0]]]]), False)
    np.testing.assert_array_equal(pool.kink_signature(), [[[[1]]]])
    for smooth in (Dense(3, 2, rng=0), Tanh(), Sigmoid(), Flatten()):
        smooth.forward(x, False)
        assert smooth.kink_signature() is None


def test_maxpool_gradient_goes_to_the_winner_only():
    pool = MaxPool2D(2)
    pool.forward(np.array([[[[1.0, 5.0], [3.0, 2.0]]]]), False)
    np.testing.assert_array_equal(pool.backward(np.array([[[[7.0]]]])), [[[[0, 7], [0, 0]]]])


# -- dropout ----------------------------------------------------------------------------------


def test_dropout_is_identity_at_eval_and_p0():
    x = np.random.default_rng(0).standard_normal((4, 5))
    layer = Dropout(0.5)  # no rng needed when inactive
    assert layer.forward(x, training=False) is x
    assert layer.backward(x) is x
    zero = Dropout(0.0)
    assert zero.forward(x, training=True) is x


def test_dropout_inverted_scaling():
    layer = Dropout(0.25)
    layer.rng = np.random.default_rng(0)
    y = layer.forward(np.ones((200, 500)), training=True)
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert np.mean(y == 0) == pytest.approx(0.25, abs=0.01)
    assert y.mean() == pytest.approx(1.0, abs=0.02)


def test_dropout_without_rng_raises():
    with pytest.raises(RuntimeError, match="rng"):
        Dropout(0.5).forward(np.ones((2, 2)), training=True)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: Dense(0, 3), "in_features"),
        (lambda: Conv2D(1, 2, 3, stride=0), "stride"),
        (lambda: Conv2D(1, 2, 3, padding=-1), "padding"),
        (lambda: MaxPool2D(0), "kernel_size"),
        (lambda: Dropout(1.0), "p"),
    ],
)
def test_bad_arguments_raise(make, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        make()


def test_wrong_input_shape_raises():
    with pytest.raises(ValueError, match="Dense"):
        Dense(3, 2, rng=0).forward(np.ones((2, 4)), True)
    with pytest.raises(ValueError, match="Conv2D"):
        Conv2D(3, 2, 3, rng=0).forward(np.ones((1, 2, 5, 5)), True)
