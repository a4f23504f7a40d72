"""Optimizers: two steps against hand-computed values, exact state restore, validation."""

import numpy as np
import pytest

from trainwatch.nn import SGD, Adagrad, Adam, Dense, Momentum, Nesterov, RMSProp, Sequential, Tanh

EPS = 1e-8
# A 1x1 Dense layer: weight starts at 1.0, bias at -2.0; the gradients of the two steps are
# set by hand (weight 0.5 then -0.25, bias 1.0 then 2.0).
GRADS = [{"fc1.weight": 0.5, "fc1.bias": 1.0}, {"fc1.weight": -0.25, "fc1.bias": 2.0}]


def two_steps(make_optimizer) -> list[tuple[float, float]]:
    model = Sequential([Dense(1, 1, rng=0)])
    params = model.named_parameters()
    params["fc1.weight"][...] = 1.0
    params["fc1.bias"][...] = -2.0
    optimizer = make_optimizer(model)
    history = []
    for grads in GRADS:
        for name, grad in model.named_gradients().items():
            grad[...] = grads[name]
        optimizer.step()
        history.append((params["fc1.weight"].item(), params["fc1.bias"].item()))
    return history


HAND_COMPUTED = {
    # θ -= 0.1 g
    "sgd": (lambda m: SGD(m, lr=0.1), [(0.95, -2.1), (0.975, -2.3)]),
    # v = 0.9 v - 0.1 g; θ += v.  weight: v = -0.05, -0.02; bias: v = -0.1, -0.29
    "momentum": (lambda m: Momentum(m, lr=0.1, momentum=0.9), [(0.95, -2.1), (0.93, -2.39)]),
    # same v; θ += -0.9 v_prev + 1.9 v
    "nesterov": (
        lambda m: Nesterov(m, lr=0.1, momentum=0.9),
        [
            (1 - 1.9 * 0.05, -2 - 1.9 * 0.1),
            (0.905 + 0.9 * 0.05 - 1.9 * 0.02, -2.19 + 0.9 * 0.1 - 1.9 * 0.29),
        ],
    ),
    # c += g²; θ -= 0.1 g / (√c + eps).  weight: c = 0.25, 0.3125; bias: c = 1, 5
    "adagrad": (
        lambda m: Adagrad(m, lr=0.1),
        [
            (1 - 0.05 / (0.5 + EPS), -2 - 0.1 / (1 + EPS)),
            (
                1 - 0.05 / (0.5 + EPS) + 0.025 / (np.sqrt(0.3125) + EPS),
                -2 - 0.1 / (1 + EPS) - 0.2 / (np.sqrt(5) + EPS),
            ),
        ],
    ),
    # c = 0.9 c + 0.1 g².  weight: c = 0.025, 0.02875; bias: c = 0.1, 0.49
    "rmsprop": (
        lambda m: RMSProp(m, lr=0.1, decay=0.9),
        [
            (1 - 0.05 / (np.sqrt(0.025) + EPS), -2 - 0.1 / (np.sqrt(0.1) + EPS)),
            (
                1 - 0.05 / (np.sqrt(0.025) + EPS) + 0.025 / (np.sqrt(0.02875) + EPS),
                -2 - 0.1 / (np.sqrt(0.1) + EPS) - 0.2 / (0.7 + EPS),
            ),
        ],
    ),
    # step 1: m̂ = g, v̂ = g², so θ -= 0.1 g / (|g| + eps).
    # step 2, weight: m = 0.02, v = 0.00031225; bias: m = 0.29, v = 0.004999;
    # corrections 1 - 0.9² = 0.19 and 1 - 0.999² = 0.001999
    "adam": (
        lambda m: Adam(m, lr=0.1),
        [
            (1 - 0.05 / (0.5 + EPS), -2 - 0.1 / (1 + EPS)),
            (
                1
                - 0.05 / (0.5 + EPS)
                - 0.1 * (0.02 / 0.19) / (np.sqrt(0.00031225 / 0.001999) + EPS),
                -2 - 0.1 / (1 + EPS) - 0.1 * (0.29 / 0.19) / (np.sqrt(0.004999 / 0.001999) + EPS),
            ),
        ],
    ),
    # weight decay adds 0.5 θ to g: weight g = 0.5 + 0.5, then -0.25 + 0.5 * 0.9
    "sgd_weight_decay": (
        lambda m: SGD(m, lr=0.1, weight_decay=0.5),
        [(0.9, -2.1 + 0.1), (0.9 - 0.1 * (-0.25 + 0.45), -2.0 - 0.1 * (2.0 - 1.0))],
    ),
}


@pytest.mark.parametrize("case", HAND_COMPUTED)
def test_first_two_steps_match_hand_computation(case):
    make_optimizer, expected = HAND_COMPUTED[case]
    np.testing.assert_allclose(two_steps(make_optimizer), expected, rtol=1e-12)


OPTIMIZERS = {
    "sgd": lambda m: SGD(m, lr=0.05),
    "momentum": lambda m: Momentum(m, lr=0.05, momentum=0.8),
    "nesterov": lambda m: Nesterov(m, lr=0.05),
    "adagrad": lambda m: Adagrad(m, lr=0.05),
    "rmsprop": lambda m: RMSProp(m, lr=0.05),
    "adam": lambda m: Adam(m, lr=0.05, weight_decay=0.01),
}


def random_steps(model, optimizer, seed: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        for grad in model.named_gradients().values():
            grad[...] = rng.standard_normal(grad.shape)
        optimizer.step()


@pytest.mark.parametrize("case", OPTIMIZERS)
def test_state_dict_restore_is_bit_identical(case):
    model = Sequential([Dense(4, 3, rng=0), Tanh(), Dense(3, 2, rng=1)])
    optimizer = OPTIMIZERS[case](model)
    random_steps(model, optimizer, seed=0, count=3)
    saved_model, saved_optimizer = model.state_dict(), optimizer.state_dict()
    random_steps(model, optimizer, seed=1, count=4)
    first = {k: v.copy() for k, v in model.named_parameters().items()}

    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_optimizer)
    random_steps(model, optimizer, seed=1, count=4)
    for name, value in model.named_parameters().items():
        assert np.array_equal(value, first[name]), name

    model.load_state_dict(saved_model)  # a fresh optimizer with other settings, then restored
    fresh = type(optimizer)(model, lr=0.9)
    fresh.load_state_dict(saved_optimizer)
    assert fresh.t == 3 and fresh.lr == 0.05
    random_steps(model, fresh, seed=1, count=4)
    for name, value in model.named_parameters().items():
        assert np.array_equal(value, first[name]), name


def test_state_dict_is_a_deep_copy():
    model = Sequential([Dense(2, 2, rng=0)])
    optimizer = Adam(model)
    random_steps(model, optimizer, seed=0, count=1)
    saved = optimizer.state_dict()
    m_before = saved["buffers"]["m"]["fc1.weight"].copy()
    random_steps(model, optimizer, seed=1, count=2)
    np.testing.assert_array_equal(saved["buffers"]["m"]["fc1.weight"], m_before)
    assert saved["t"] == 1 and optimizer.t == 3
    assert saved["hyperparameters"] == {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
    }


def test_load_state_dict_of_another_optimizer_raises():
    model = Sequential([Dense(2, 2, rng=0)])
    with pytest.raises(ValueError, match="Momentum"):
        SGD(model, lr=0.1).load_state_dict(Momentum(model, lr=0.1).state_dict())


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SGD, {"lr": -1}, "lr: must be > 0, got -1"),
        (SGD, {"lr": 0.0}, "lr: must be > 0"),
        (Adam, {"lr": float("nan")}, "lr: must be > 0"),
        (SGD, {"lr": 0.1, "weight_decay": -0.1}, "weight_decay: must be >= 0"),
        (Momentum, {"lr": 0.1, "momentum": 1.0}, r"momentum: must be in \[0, 1\)"),
        (Nesterov, {"lr": 0.1, "momentum": -0.5}, "momentum: must be in"),
        (Adagrad, {"lr": 0.1, "eps": 0.0}, "eps: must be > 0"),
        (RMSProp, {"lr": 0.1, "decay": 1.5}, "decay: must be in"),
        (RMSProp, {"lr": 0.1, "eps": -1e-8}, "eps: must be > 0"),
        (Adam, {"beta1": 1.0}, "beta1: must be in"),
        (Adam, {"beta2": -0.1}, "beta2: must be in"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        cls(Sequential([Dense(2, 2, rng=0)]), **kwargs)


def test_float32_parameters_stay_float32():
    model = Sequential([Dense(3, 2, rng=0, dtype=np.float32)])
    optimizer = Adam(model, lr=0.01)
    random_steps(model, optimizer, seed=0, count=2)
    assert all(p.dtype == np.float32 for p in model.named_parameters().values())
    assert all(b.dtype == np.float32 for per in optimizer.buffers.values() for b in per.values())


def test_step_updates_the_live_arrays_in_place():
    model = Sequential([Dense(2, 2, rng=0)])
    weight = model.named_parameters()["fc1.weight"]
    before = weight.copy()
    optimizer = Momentum(model, lr=0.1)
    random_steps(model, optimizer, seed=0, count=1)
    assert model.named_parameters()["fc1.weight"] is weight
    assert not np.array_equal(weight, before)
