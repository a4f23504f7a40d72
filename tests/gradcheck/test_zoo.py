"""The zoo: small models written in plain numpy (forward + hand-written backward), some
correct but tricky (kinks, tiny or zero true gradients, float32, dropout), some with a planted
bug. Every correct model must pass; every buggy one must fail naming exactly the wrong tensors,
while the other tensors stay "correct"/"acceptable"/"kink".

Each ``make_*`` returns a :class:`Case`: ``loss_fn(params)``, ``params``, analytic ``grads`` at
``params``, and the names whose gradient is wrong (empty for a correct model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from trainwatch.gradcheck import check_gradients

PASSING = {"correct", "acceptable", "kink"}


@dataclass
class Case:
    loss_fn: Callable[[dict[str, np.ndarray]], Any]
    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    wrong: list[str] = field(default_factory=list)
    reg_fn: Callable[[dict[str, np.ndarray]], Any] | None = None
    reg_grads: dict[str, np.ndarray] | None = None
    reg_wrong: list[str] = field(default_factory=list)


def _data(n: int = 3, d: int = 5, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, size=n)


def _init(rng: np.random.Generator, *shapes: tuple[int, ...], scale: float = 0.5
          ) -> list[np.ndarray]:
    return [scale * rng.standard_normal(shape) for shape in shapes]


def _softmax_ce(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient w.r.t. the scores."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    dscores = np.exp(logp)
    dscores[np.arange(n), y] -= 1
    return float(loss), dscores / n


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------------------------------
# correct models


def make_softmax_linear() -> Case:
    x, y = _data(3, 6, 4)
    rng = np.random.default_rng(1)
    w, b = _init(rng, (6, 4), (4,))

    def loss_fn(p):
        return _softmax_ce(x @ p["W"] + p["b"], y)[0]

    _, ds = _softmax_ce(x @ w + b, y)
    return Case(loss_fn, {"W": w, "b": b}, {"W": x.T @ ds, "b": ds.sum(0)})


def _mlp_tanh(sizes: list[int], seed: int = 2, n: int = 3
              ) -> tuple[Callable, dict[str, np.ndarray], Callable]:
    x, y = _data(n, sizes[0], sizes[-1], seed)
    rng = np.random.default_rng(seed + 10)
    params: dict[str, np.ndarray] = {}
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{k}"] = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"b{k}"] = 0.1 * rng.standard_normal(fan_out)
    layers = len(sizes) - 1

    def forward(p):
        acts = [x]
        for k in range(1, layers + 1):
            z = acts[-1] @ p[f"W{k}"] + p[f"b{k}"]
            acts.append(np.tanh(z) if k < layers else z)
        return acts

    def loss_fn(p):
        return _softmax_ce(forward(p)[-1], y)[0]

    def backward(p):
        acts = forward(p)
        _, delta = _softmax_ce(acts[-1], y)
        grads = {}
        for k in range(layers, 0, -1):
            grads[f"W{k}"] = acts[k - 1].T @ delta
            grads[f"b{k}"] = delta.sum(0)
            if k > 1:
                delta = (delta @ p[f"W{k}"].T) * (1 - acts[k - 1] ** 2)
        return {name: grads[name] for name in p}

    return loss_fn, params, backward


def make_tanh_mlp() -> Case:
    loss_fn, params, backward = _mlp_tanh([5, 8, 3])
    return Case(loss_fn, params, backward(params))


def make_deep_tanh() -> Case:
    loss_fn, params, backward = _mlp_tanh([6, 10, 10, 10, 10, 10, 4], seed=3)
    return Case(loss_fn, params, backward(params))


def _relu_mlp(signature: bool, bug: bool = False, near: int = 12) -> Case:
    """ReLU MLP whose first example sits within 1e-7 of the kink of ``near`` of its 12
    hidden units (all of them by default: every W1/b1 probe touches a kink)."""
    x, y = _data(3, 5, 3, seed=4)
    rng = np.random.default_rng(14)
    w1, b1, w2, b2 = _init(rng, (5, 12), (12,), (12, 3), (3,))
    offsets = rng.choice([-1.0, 1.0], 12) * rng.uniform(1e-8, 1e-7, 12)
    units = np.arange(near)
    b1[units] = offsets[units] - x[0] @ w1[:, units]  # z1[0, j] = offsets[j]: at a kink

    def loss_fn(p):
        z1 = x @ p["W1"] + p["b1"]
        loss = _softmax_ce(np.maximum(z1, 0) @ p["W2"] + p["b2"], y)[0]
        return (loss, z1 > 0) if signature else loss

    z1 = x @ w1 + b1
    a1 = np.maximum(z1, 0)
    _, ds = _softmax_ce(a1 @ w2 + b2, y)
    mask = (z1 <= 0) if bug else (z1 > 0)  # the bug: output mask with the sign flipped
    dz1 = (ds @ w2.T) * mask
    grads = {"W1": x.T @ dz1, "b1": dz1.sum(0), "W2": a1.T @ ds, "b2": ds.sum(0)}
    return Case(loss_fn, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, grads,
                wrong=["W1", "b1"] if bug else [])


def make_relu_kinks_signature() -> Case:
    return _relu_mlp(signature=True)


def make_relu_kinks_no_signature() -> Case:
    return _relu_mlp(signature=False)


def _svm(signature: bool) -> Case:
    """Multiclass (Weston-Watkins) SVM with several margins within 1e-7 of the hinge."""
    x, y = _data(3, 6, 4, seed=5)
    rng = np.random.default_rng(15)
    w, b = _init(rng, (6, 4), (4,))
    n = len(y)
    scores = x @ w
    b = np.zeros(4)
    # put example 0's margins for classes j != y0 at +-1e-7 of the hinge by shifting b
    b = -(scores[0] - scores[0, y[0]] + 1.0) + rng.uniform(-1e-7, 1e-7, 4)
    b[y[0]] = 0.0

    def margins_of(p):
        s = x @ p["W"] + p["b"]
        m = s - s[np.arange(n), y][:, None] + 1.0
        m[np.arange(n), y] = 0.0
        return m

    def loss_fn(p):
        m = margins_of(p)
        loss = np.maximum(m, 0).sum() / n
        return (loss, m > 0) if signature else loss

    m = margins_of({"W": w, "b": b})
    active = (m > 0).astype(float)
    ds = active.copy()
    ds[np.arange(n), y] = -active.sum(1)
    ds /= n
    return Case(loss_fn, {"W": w, "b": b}, {"W": x.T @ ds, "b": ds.sum(0)})


def make_svm_signature() -> Case:
    return _svm(True)


def make_svm_no_signature() -> Case:
    return _svm(False)


def _maxpool(signature: bool) -> Case:
    """Linear features -> max over windows of 3 -> linear -> softmax; near-ties in the pool."""
    x, y = _data(3, 4, 3, seed=6)
    rng = np.random.default_rng(16)
    w1, w2, b2 = _init(rng, (4, 12), (4, 3), (3,))
    # make the first two features of every window of example 0 tie within 1e-7
    f = x[0] @ w1
    for k in range(4):
        col = w1[:, 3 * k + 1] + x[0] * (f[3 * k] - f[3 * k + 1] + 1e-7 * (k - 1.5)) / (x[0] @ x[0])
        w1[:, 3 * k + 1] = col
        f = x[0] @ w1
        if f[3 * k + 2] > f[3 * k]:
            w1[:, 3 * k + 2] -= x[0] * (f[3 * k + 2] - f[3 * k] + 1.0) / (x[0] @ x[0])
            f = x[0] @ w1

    def forward(p):
        feats = (x @ p["W1"]).reshape(len(x), 4, 3)
        winner = feats.argmax(axis=2)
        pooled = np.take_along_axis(feats, winner[..., None], axis=2)[..., 0]
        return feats, winner, pooled

    def loss_fn(p):
        _, winner, pooled = forward(p)
        loss = _softmax_ce(pooled @ p["W2"] + p["b2"], y)[0]
        return (loss, winner) if signature else loss

    p0 = {"W1": w1, "W2": w2, "b2": b2}
    feats, winner, pooled = forward(p0)
    _, ds = _softmax_ce(pooled @ w2 + b2, y)
    dpooled = ds @ w2.T
    dfeats = np.zeros_like(feats)
    np.put_along_axis(dfeats, winner[..., None], dpooled[..., None], axis=2)
    grads = {"W1": x.T @ dfeats.reshape(len(x), 12), "W2": pooled.T @ ds, "b2": ds.sum(0)}
    return Case(loss_fn, p0, grads)


def make_maxpool_signature() -> Case:
    return _maxpool(True)


def make_maxpool_no_signature() -> Case:
    return _maxpool(False)


def make_sigmoid_bce() -> Case:
    x, _ = _data(4, 5, 2, seed=7)
    t = np.array([0.0, 1.0, 1.0, 0.0])
    rng = np.random.default_rng(17)
    w, b = _init(rng, (5,), ())

    def loss_fn(p):
        a = _sigmoid(x @ p["w"] + p["b"])
        return float(-np.mean(t * np.log(a) + (1 - t) * np.log(1 - a)))

    a = _sigmoid(x @ w + b)
    dz = (a - t) / len(t)
    return Case(loss_fn, {"w": w, "b": np.asarray(b)}, {"w": x.T @ dz, "b": np.asarray(dz.sum())})


def make_mse_regression() -> Case:
    x, _ = _data(3, 4, 2, seed=8)
    rng = np.random.default_rng(18)
    target = rng.standard_normal((3, 2))
    w1, b1, w2, b2 = _init(rng, (4, 6), (6,), (6, 2), (2,))

    def loss_fn(p):
        h = np.tanh(x @ p["W1"] + p["b1"])
        return float(np.mean((h @ p["W2"] + p["b2"] - target) ** 2))

    h = np.tanh(x @ w1 + b1)
    dpred = 2 * (h @ w2 + b2 - target) / target.size
    dz = (dpred @ w2.T) * (1 - h ** 2)
    grads = {"W1": x.T @ dz, "b1": dz.sum(0), "W2": h.T @ dpred, "b2": dpred.sum(0)}
    return Case(loss_fn, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, grads)


def make_near_constant_feature() -> Case:
    """Feature 0 is ~1e-9 in every example: row 0 of dW has true entries ~1e-10."""
    x, y = _data(3, 6, 4, seed=9)
    x[:, 0] = 1e-9 * np.array([1.0, 1.1, 0.9])
    rng = np.random.default_rng(19)
    w, b = _init(rng, (6, 4), (4,))

    def loss_fn(p):
        return _softmax_ce(x @ p["W"] + p["b"], y)[0]

    _, ds = _softmax_ce(x @ w + b, y)
    return Case(loss_fn, {"W": w, "b": b}, {"W": x.T @ ds, "b": ds.sum(0)})


def make_bias_before_norm() -> Case:
    """z = xW + b, batch-normalised: b cancels, its true gradient is exactly 0."""
    x, y = _data(4, 5, 3, seed=10)
    rng = np.random.default_rng(20)
    w1, b1, w2, b2 = _init(rng, (5, 6), (6,), (6, 3), (3,))
    eps = 1e-5

    def forward(p):
        z = x @ p["W1"] + p["b1"]
        mu = z.mean(0)
        var = z.var(0)
        zhat = (z - mu) / np.sqrt(var + eps)
        return z, mu, var, zhat

    def loss_fn(p):
        *_, zhat = forward(p)
        return _softmax_ce(np.tanh(zhat) @ p["W2"] + p["b2"], y)[0]

    z, mu, var, zhat = forward({"W1": w1, "b1": b1})
    a = np.tanh(zhat)
    _, ds = _softmax_ce(a @ w2 + b2, y)
    dzhat = (ds @ w2.T) * (1 - a ** 2)
    m = len(x)
    dz = (m * dzhat - dzhat.sum(0) - zhat * (dzhat * zhat).sum(0)) / (m * np.sqrt(var + eps))
    grads = {"W1": x.T @ dz, "b1": dz.sum(0), "W2": a.T @ ds, "b2": ds.sum(0)}
    return Case(loss_fn, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, grads)


def _float32_mlp(return_float32: bool, bug: str = "") -> Case:
    """The whole forward (and backward) in float32; parameters stored as float32.
    ``bug``: "" (correct), "factor" (dW2 doubled) or "entry" (one entry of dW1 zeroed)."""
    x, y = _data(3, 6, 4, seed=11)
    x = x.astype(np.float32)
    rng = np.random.default_rng(21)
    params = {name: (a / 2).astype(np.float32)
              for name, a in zip(("W1", "b1", "W2", "b2"),
                                 _init(rng, (6, 10), (10,), (10, 4), (4,)))}

    def forward(p):
        q = {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}
        h = np.tanh(x @ q["W1"] + q["b1"])
        s = h @ q["W2"] + q["b2"]
        s = s - s.max(1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        return q, h, logp

    def loss_fn(p):
        _, _, logp = forward(p)
        loss = -logp[np.arange(3), y].mean()
        return loss if return_float32 else float(loss)

    q, h, logp = forward(params)
    ds = np.exp(logp)
    ds[np.arange(3), y] -= 1
    ds /= np.float32(3)
    dz = (ds @ q["W2"].T) * (1 - h * h)
    grads = {"W1": x.T @ dz, "b1": dz.sum(0), "W2": h.T @ ds, "b2": ds.sum(0)}
    if bug == "factor":
        grads["W2"] = 2 * grads["W2"]
        return Case(loss_fn, params, grads, wrong=["W2"])
    if bug == "entry":
        index = np.unravel_index(np.argsort(np.abs(grads["W1"]).ravel())[-5], (6, 10))
        grads["W1"][index] = 0.0
        return Case(loss_fn, params, grads, wrong=["W1"])
    return Case(loss_fn, params, grads)


def make_float32_factor_bug() -> Case:
    return _float32_mlp(False, bug="factor")


def make_float32_entry_bug() -> Case:
    return _float32_mlp(True, bug="entry")


def make_float32_returns_float32() -> Case:
    return _float32_mlp(True)


def make_float32_returns_python_float() -> Case:
    return _float32_mlp(False)


def _dropout_mlp(seeded: bool) -> Case:
    x, y = _data(3, 5, 3, seed=12)
    rng = np.random.default_rng(22)
    w1, b1, w2, b2 = _init(rng, (5, 16), (16,), (16, 3), (3,))
    keep = 0.5
    outside = np.random.default_rng(99)  # an unseeded-per-call stream: a new mask each time

    def mask() -> np.ndarray:
        gen = np.random.default_rng(1234) if seeded else outside
        return (gen.random((3, 16)) < keep) / keep

    def loss_fn(p):
        h = np.tanh(x @ p["W1"] + p["b1"]) * mask()
        return _softmax_ce(h @ p["W2"] + p["b2"], y)[0]

    m = np.random.default_rng(1234).random((3, 16)) < keep
    m = m / keep
    t = np.tanh(x @ w1 + b1)
    h = t * m
    _, ds = _softmax_ce(h @ w2 + b2, y)
    dz = (ds @ w2.T) * m * (1 - t ** 2)
    grads = {"W1": x.T @ dz, "b1": dz.sum(0), "W2": h.T @ ds, "b2": ds.sum(0)}
    return Case(loss_fn, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, grads)


def make_seeded_dropout() -> Case:
    return _dropout_mlp(True)


def make_unseeded_dropout() -> Case:
    return _dropout_mlp(False)


# ------------------------------------------------------------------------------------------
# planted bugs


def _sigmoid_net(layers: int, bug_layer: int) -> Case:
    """Sigmoid MLP with squared error; at hidden layer ``bug_layer`` the backward applies
    sigmoid' to the pre-activation z instead of the activation a (the classic bug)."""
    x, _ = _data(3, 5, 2, seed=13)
    rng = np.random.default_rng(23)
    sizes = [5] + [7] * (layers - 1) + [2]
    target = rng.uniform(0.1, 0.9, (3, 2))
    params = {}
    for k in range(1, layers + 1):
        params[f"W{k}"] = rng.standard_normal((sizes[k - 1], sizes[k])) / np.sqrt(sizes[k - 1])
        params[f"b{k}"] = 0.3 * rng.standard_normal(sizes[k])

    def forward(p):
        zs, acts = [], [x]
        for k in range(1, layers + 1):
            zs.append(acts[-1] @ p[f"W{k}"] + p[f"b{k}"])
            acts.append(_sigmoid(zs[-1]))
        return zs, acts

    def loss_fn(p):
        return float(0.5 * np.sum((forward(p)[1][-1] - target) ** 2))

    zs, acts = forward(params)
    a = acts[-1]
    delta = (a - target) * a * (1 - a)  # (h - y) * f'(z_out)
    grads = {}
    for k in range(layers, 0, -1):
        grads[f"W{k}"] = acts[k - 1].T @ delta
        grads[f"b{k}"] = delta.sum(0)
        if k > 1:
            back = delta @ params[f"W{k}"].T
            if k - 1 == bug_layer:
                z = zs[k - 2]
                delta = back * z * (1 - z)  # the bug: sigmoid_prime applied to z, not a
            else:
                delta = back * acts[k - 1] * (1 - acts[k - 1])
    wrong = [f"{t}{k}" for k in range(1, bug_layer + 1) for t in ("W", "b")]
    return Case(loss_fn, params, {name: grads[name] for name in params}, wrong=wrong)


def make_sigmoid_bug_2layer() -> Case:
    return _sigmoid_net(2, bug_layer=1)


def make_sigmoid_bug_middle() -> Case:
    return _sigmoid_net(3, bug_layer=2)


def make_missing_transpose() -> Case:
    x, y = _data(3, 6, 3, seed=24)
    rng = np.random.default_rng(25)
    w1, b1, w2, b2 = _init(rng, (6, 6), (6,), (6, 3), (3,))
    case = _two_layer_tanh(x, y, w1, b1, w2, b2)
    case.grads["W1"] = case.grads["W1"].T.copy()  # the bug: dW = (x.T @ dz).T on a square W
    case.wrong = ["W1"]
    return case


def _two_layer_tanh(x, y, w1, b1, w2, b2) -> Case:
    def loss_fn(p):
        return _softmax_ce(np.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], y)[0]

    h = np.tanh(x @ w1 + b1)
    _, ds = _softmax_ce(h @ w2 + b2, y)
    dz = (ds @ w2.T) * (1 - h ** 2)
    grads = {"W1": x.T @ dz, "b1": dz.sum(0), "W2": h.T @ ds, "b2": ds.sum(0)}
    return Case(loss_fn, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, grads)


def make_bias_mean_not_sum() -> Case:
    x, y = _data(3, 5, 4, seed=26)
    rng = np.random.default_rng(27)
    w1, b1, w2, b2 = _init(rng, (5, 8), (8,), (8, 4), (4,))
    case = _two_layer_tanh(x, y, w1, b1, w2, b2)
    h = np.tanh(x @ w1 + b1)
    _, ds = _softmax_ce(h @ w2 + b2, y)
    case.grads["b2"] = ds.mean(0)  # the bug: mean over the batch instead of sum
    case.wrong = ["b2"]
    return case


def make_single_row_bug() -> Case:
    """A 64x128 weight whose gradient is wrong in row 37 only."""
    x, y = _data(3, 64, 5, seed=28)
    rng = np.random.default_rng(29)
    w1 = rng.standard_normal((64, 128)) / 8
    b1 = 0.1 * rng.standard_normal(128)
    w2 = rng.standard_normal((128, 5)) / np.sqrt(128)
    b2 = np.zeros(5)
    case = _two_layer_tanh(x, y, w1, b1, w2, b2)
    case.grads["W1"][37] *= -1.0  # the bug: one row with the wrong sign
    case.wrong = ["W1"]
    return case


BAD_ENTRY = (17, 23)


def make_single_entry_bug() -> Case:
    """A 40x50 (2000-entry) weight whose gradient is wrong in one entry of typical size."""
    x, y = _data(3, 40, 4, seed=30)
    rng = np.random.default_rng(31)
    w1 = rng.standard_normal((40, 50)) / np.sqrt(40)
    b1 = 0.1 * rng.standard_normal(50)
    w2 = rng.standard_normal((50, 4)) / np.sqrt(50)
    b2 = np.zeros(4)
    case = _two_layer_tanh(x, y, w1, b1, w2, b2)
    g = case.grads["W1"]
    rms = np.sqrt(np.mean(g ** 2))
    assert 0.3 * rms < abs(g[BAD_ENTRY]) < 3 * rms, "the planted entry should be of typical size"
    g[BAD_ENTRY] = 0.0  # the bug: one entry's gradient dropped
    case.wrong = ["W1"]
    return case


def make_relu_mask_sign_bug() -> Case:
    return _relu_mlp(signature=True, bug=True, near=3)


def make_relu_mask_sign_bug_no_signature() -> Case:
    return _relu_mlp(signature=False, bug=True, near=3)


def make_reg_wrong_factor() -> Case:
    """Data term correct; L2 term 0.5·λ·‖W‖² whose gradient was written 2λW (factor 2)."""
    case = make_tanh_mlp()
    lam = 0.1

    def reg_fn(p):
        return 0.5 * lam * float(np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))

    case.reg_fn = reg_fn
    case.reg_grads = {"W1": 2 * lam * case.params["W1"], "W2": lam * case.params["W2"]}
    case.reg_wrong = ["W1"]
    return case


def make_factor_two_loss_gradient() -> Case:
    """MSE loss whose gradient forgot the 2 of d(e²)/de: every tensor is off by ½."""
    case = make_mse_regression()
    case.grads = {name: g / 2 for name, g in case.grads.items()}
    case.wrong = list(case.params)
    return case


CORRECT = [make_softmax_linear, make_tanh_mlp, make_deep_tanh, make_relu_kinks_signature,
           make_relu_kinks_no_signature, make_svm_signature, make_svm_no_signature,
           make_maxpool_signature, make_maxpool_no_signature, make_sigmoid_bce,
           make_mse_regression, make_near_constant_feature, make_bias_before_norm,
           make_float32_returns_float32, make_float32_returns_python_float,
           make_seeded_dropout]
BUGGY = [make_sigmoid_bug_2layer, make_sigmoid_bug_middle, make_missing_transpose,
         make_bias_mean_not_sum, make_single_row_bug, make_single_entry_bug,
         make_relu_mask_sign_bug, make_relu_mask_sign_bug_no_signature,
         make_factor_two_loss_gradient, make_float32_factor_bug, make_float32_entry_bug]
SEEDS = range(5)


def _run(case: Case, seed: int, **options: Any):
    return check_gradients(case.loss_fn, case.params, case.grads, seed=seed,
                           reg_fn=case.reg_fn, reg_grads=case.reg_grads, **options)


# ------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("make", CORRECT, ids=lambda make: make.__name__[5:])
def test_correct_models_pass(make, seed):
    case = make()
    report = _run(case, seed)
    assert report.passed, str(report)
    assert report.failed == []
    assert not report.nondeterministic
    for name, check in report.params.items():
        assert check.verdict in PASSING, (name, str(report))
        assert check.probed >= 1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("make", BUGGY, ids=lambda make: make.__name__[5:])
def test_planted_bugs_fail_and_name_exactly_the_wrong_tensors(make, seed):
    case = make()
    report = _run(case, seed)
    assert not report.passed
    assert report.failed == case.wrong, str(report)
    for name, check in report.params.items():
        if name in case.wrong:
            assert check.verdict in ("wrong", "suspicious"), (name, str(report))
        else:
            assert check.verdict in PASSING, (name, str(report))


def test_kink_models_set_kinks_aside_or_judge_them_one_sided():
    """Probes across a kink are set aside (counted, the tensor's verdict "kink"), or, with a
    signature, judged one-sided where one side keeps the checked point's pattern (the SVM's
    margins 1e-7 from the hinge: every such probe is)."""
    for make in (make_relu_kinks_signature, make_relu_kinks_no_signature,
                 make_maxpool_signature):
        report = _run(make(), 0)
        assert report.passed
        assert sum(check.kinks for check in report.params.values()) > 0, make.__name__
        assert any(check.verdict == "kink" for check in report.params.values()), make.__name__
    report = _run(make_svm_signature(), 0)
    assert report.passed and all(check.verdict == "correct" for check in report.params.values())
    assert all(any("sat on a kink at the checked point" in note for note in check.notes)
               for check in report.params.values()), str(report)


def test_relu_kinks_with_signature_leave_smooth_tensors_correct():
    report = _run(make_relu_kinks_signature(), 1)
    assert report.params["W1"].verdict == "kink"
    assert report.params["b1"].verdict == "kink"
    assert report.params["W2"].verdict == "correct"
    assert report.params["b2"].verdict == "correct"
    assert "kink" in " ".join(report.params["W1"].notes)


def test_tiny_and_zero_true_gradients_are_not_false_alarms():
    near = _run(make_near_constant_feature(), 0)
    assert near.params["W"].verdict == "correct"
    norm = _run(make_bias_before_norm(), 0)
    b1 = norm.params["b1"]
    assert b1.verdict == "correct"
    assert abs(b1.worst_analytic) < 1e-12 and abs(b1.worst_numerical) < 1e-8
    assert any("noise floor" in note for note in b1.notes)


@pytest.mark.parametrize("make", [make_float32_returns_float32,
                                  make_float32_returns_python_float])
def test_float32_loss_is_detected_and_reported(make):
    case = make()
    report = _run(case, 0)
    assert report.passed, str(report)
    assert report.precision == "float32"
    assert report.h == pytest.approx(1e-2)
    assert any("float32" in note for note in report.notes)
    for name, value in case.params.items():
        assert value.dtype == np.float32, name


def test_float32_bugs_are_still_caught():
    report = _run(make_float32_factor_bug(), 0)
    assert report.precision == "float32"
    assert report.failed == ["W2"]
    assert report.params["W2"].verdict == "wrong"


def test_seeded_dropout_passes_and_unseeded_dropout_is_nondeterministic():
    assert _run(make_seeded_dropout(), 0).passed
    report = _run(make_unseeded_dropout(), 0)
    assert report.nondeterministic
    assert not report.passed
    assert report.params == {}
    assert report.failed == []
    assert "fix the dropout seed" in str(report)


def test_single_entry_bug_is_caught_by_directions_when_the_sample_misses_it():
    checked = 0
    for seed in range(8):
        report = _run(make_single_entry_bug(), seed, coordinates=5)
        w1 = report.params["W1"]
        sampled = w1.coordinates[:5]
        if BAD_ENTRY in sampled:
            continue  # the coordinate sample hit it: not the case this test is about
        checked += 1
        assert report.failed == ["W1"], str(report)
        assert w1.verdict == "wrong"
        assert w1.worst_index == BAD_ENTRY  # located by bisection of a failing direction
        assert w1.worst_analytic == 0.0
    assert checked >= 6
    directions_only = _run(make_single_entry_bug(), 0, coordinates=0)
    assert directions_only.failed == ["W1"]
    assert directions_only.params["W1"].worst_index == BAD_ENTRY


def test_single_row_bug_is_located_in_that_row():
    report = _run(make_single_row_bug(), 0, coordinates=3)
    w1 = report.params["W1"]
    assert w1.verdict == "wrong"
    assert w1.worst_index[0] == 37


def test_bug_patterns_are_described():
    factor = _run(make_factor_two_loss_gradient(), 0)
    assert any("0.5 × numerical" in note for note in factor.params["W2"].notes), str(factor)
    mean = _run(make_bias_mean_not_sum(), 0)
    assert any("0.333 × numerical" in note for note in mean.params["b2"].notes), str(mean)


def test_layers_above_a_bug_are_unaffected():
    """The sigmoid bug in hidden layer 2 of 3 corrupts W1, b1, W2, b2 (below it) but W3 and
    b3 stay correct, and the report says where to look first."""
    report = _run(make_sigmoid_bug_middle(), 0)
    assert report.failed == ["W1", "b1", "W2", "b2"]
    assert report.params["W3"].verdict == "correct"
    assert report.params["b3"].verdict == "correct"
    assert any("closest to the loss (b2)" in note for note in report.notes)


def test_regularization_is_checked_as_a_separate_section():
    case = make_reg_wrong_factor()
    report = _run(case, 0)
    assert not report.passed
    assert all(check.verdict in PASSING for check in report.params.values())
    assert list(report.regularization) == ["W1", "W2"]
    assert report.regularization["W1"].verdict == "wrong"
    assert report.regularization["W2"].verdict in PASSING
    assert report.failed == ["W1 (regularization)"]
    assert "regularization term:" in str(report)
    correct = make_reg_wrong_factor()
    correct.reg_grads["W1"] = 0.1 * correct.params["W1"]
    assert _run(correct, 0).passed
