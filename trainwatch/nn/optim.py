"""First-order optimizers. ``step()`` reads ``model.named_parameters()`` and
``model.named_gradients()`` and updates the parameters in place.

Per-parameter buffers (velocities, squared-gradient caches, moments) are created lazily with
each parameter's shape and dtype. ``weight_decay`` (>= 0, default 0) adds ``weight_decay * θ``
to every parameter's gradient (biases included) before the update; it is separate from the
model's ``l2``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Protocol

import numpy as np


class HasParameters(Protocol):
    """What an optimizer needs of a model (``Sequential`` provides it)."""

    def named_parameters(self) -> dict[str, np.ndarray]: ...

    def named_gradients(self) -> dict[str, np.ndarray]: ...


def _check(name: str, value: float, ok: bool, rule: str) -> float:
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name}: must be {rule}, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    return _check(name, value, value > 0, "> 0")


def _non_negative(name: str, value: float) -> float:
    return _check(name, value, value >= 0, ">= 0")


def _unit_interval(name: str, value: float) -> float:
    return _check(name, value, 0 <= value < 1, "in [0, 1)")


class Optimizer:
    """Base class: holds the model, the hyper-parameters, the step counter ``t`` and buffers.

    Subclasses list their hyper-parameter attribute names in ``hyperparameters`` and
    implement ``_update(name, param, grad)``. ``buffers[kind][param_name]`` holds the state.
    """

    hyperparameters: tuple[str, ...] = ("lr", "weight_decay")

    def __init__(self, model: HasParameters, lr: float, *, weight_decay: float = 0.0) -> None:
        self.model = model
        self.lr = _positive("lr", lr)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.t = 0
        self.buffers: dict[str, dict[str, np.ndarray]] = {}

    def step(self) -> None:
        """Apply one update to every parameter, in place; increments ``t`` first."""
        self.t += 1
        grads = self.model.named_gradients()
        for name, param in self.model.named_parameters().items():
            grad = grads[name]
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            self._update(name, param, grad)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def _buffer(self, kind: str, name: str, like: np.ndarray) -> np.ndarray:
        """The ``kind`` buffer of parameter ``name``, created as zeros shaped like ``like``."""
        per_param = self.buffers.setdefault(kind, {})
        if name not in per_param:
            per_param[name] = np.zeros_like(like)
        return per_param[name]

    def state_dict(self) -> dict[str, Any]:
        """Deep copy of everything needed to continue bit-identically."""
        return {
            "type": type(self).__name__,
            "t": self.t,
            "hyperparameters": {key: getattr(self, key) for key in self.hyperparameters},
            "buffers": copy.deepcopy(self.buffers),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` of the same optimizer class (buffers are copied in)."""
        if state["type"] != type(self).__name__:
            raise ValueError(f"state_dict is for {state['type']}, not {type(self).__name__}")
        for key, value in state["hyperparameters"].items():
            setattr(self, key, value)
        self.t = state["t"]
        self.buffers = copy.deepcopy(state["buffers"])


class SGD(Optimizer):
    """Plain gradient descent: ``θ ← θ - lr·g``."""

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        param -= self.lr * grad


class Momentum(Optimizer):
    """Momentum: ``v ← μv - lr·g; θ ← θ + v`` (μ = ``momentum``, default 0.9, in [0, 1))."""

    hyperparameters = (*Optimizer.hyperparameters, "momentum")

    def __init__(
        self, model: HasParameters, lr: float, momentum: float = 0.9, *, weight_decay: float = 0.0
    ) -> None:
        super().__init__(model, lr, weight_decay=weight_decay)
        self.momentum = _unit_interval("momentum", momentum)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        v = self._buffer("velocity", name, param)
        v[...] = self.momentum * v - self.lr * grad
        param += v


class Nesterov(Momentum):
    """Nesterov momentum, look-ahead form:
    ``v_prev = v; v ← μv - lr·g; θ ← θ - μ·v_prev + (1 + μ)·v``."""

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        v = self._buffer("velocity", name, param)
        v_prev = v.copy()
        v[...] = self.momentum * v - self.lr * grad
        param += -self.momentum * v_prev + (1 + self.momentum) * v


class Adagrad(Optimizer):
    """Adagrad: ``c ← c + g²; θ ← θ - lr·g / (√c + eps)`` (eps default 1e-8)."""

    hyperparameters = (*Optimizer.hyperparameters, "eps")

    def __init__(
        self, model: HasParameters, lr: float, eps: float = 1e-8, *, weight_decay: float = 0.0
    ) -> None:
        super().__init__(model, lr, weight_decay=weight_decay)
        self.eps = _positive("eps", eps)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        cache = self._buffer("sum_sq", name, param)
        cache += grad**2
        param -= self.lr * grad / (np.sqrt(cache) + self.eps)


class RMSProp(Optimizer):
    """RMSProp: ``c ← rhoc + (1 - rho)g²; θ ← θ - lr·g / (√c + eps)`` (rho = ``decay``, 0.99)."""

    hyperparameters = (*Optimizer.hyperparameters, "decay", "eps")

    def __init__(
        self,
        model: HasParameters,
        lr: float,
        decay: float = 0.99,
        eps: float = 1e-8,
        *,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr, weight_decay=weight_decay)
        self.decay = _unit_interval("decay", decay)
        self.eps = _positive("eps", eps)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        cache = self._buffer("mean_sq", name, param)
        cache[...] = self.decay * cache + (1 - self.decay) * grad**2
        param -= self.lr * grad / (np.sqrt(cache) + self.eps)


class Adam(Optimizer):
    """Adam with bias correction: ``m ← β1·m + (1 - β1)g; v ← β2·v + (1 - β2)g²;
    θ ← θ - lr·m̂ / (√v̂ + eps)`` with ``m̂ = m / (1 - β1^t)``, ``v̂ = v / (1 - β2^t)``.
    Defaults: lr 1e-3, β1 0.9, β2 0.999, eps 1e-8."""

    hyperparameters = (*Optimizer.hyperparameters, "beta1", "beta2", "eps")

    def __init__(
        self,
        model: HasParameters,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        *,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(model, lr, weight_decay=weight_decay)
        self.beta1 = _unit_interval("beta1", beta1)
        self.beta2 = _unit_interval("beta2", beta2)
        self.eps = _positive("eps", eps)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        m = self._buffer("m", name, param)
        v = self._buffer("v", name, param)
        m[...] = self.beta1 * m + (1 - self.beta1) * grad
        v[...] = self.beta2 * v + (1 - self.beta2) * grad**2
        m_hat = m / (1 - self.beta1**self.t)
        v_hat = v / (1 - self.beta2**self.t)
        param -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
