"""The backend for models built with :mod:`trainwatch.nn`."""

from __future__ import annotations

import copy
import math
from collections.abc import Collection
from typing import Any

import numpy as np

from trainwatch.core.backend import Backend, LayerInfo, TensorNorms
from trainwatch.core.checks import with_methods
from trainwatch.core.linalg import dot


def _norm(a: np.ndarray) -> float:
    flat = a.reshape(-1)
    return math.sqrt(dot(flat, flat))


class NumpyBackend(Backend):
    """Lets callbacks see a :class:`trainwatch.nn.Sequential`, its loss and its optimizer.

    Args:
        model: the network.
        loss: a :mod:`trainwatch.nn` loss (needed for training and gradient checks).
        optimizer: a :mod:`trainwatch.nn` optimizer (needed for training and state).
    """

    framework = "numpy"

    def __init__(self, model: Any, loss: Any = None, optimizer: Any = None):
        with_methods("loss", loss, ("forward", "backward"),
                     "a trainwatch.nn loss (forward(scores, targets), backward())")
        with_methods("optimizer", optimizer, ("step",), "a trainwatch.nn optimizer (step())")
        if optimizer is not None and getattr(optimizer, "model", model) is not model:
            raise ValueError("optimizer: made for another model; pass the one that trains this "
                             "model")
        self.model = model
        self.loss_fn = loss
        self.optimizer = optimizer
        self._before: dict[str, np.ndarray] | None = None
        self._update_open = False
        self._update_norms: dict[str, TensorNorms] | None = None  # the last step's

    @property
    def loss_kind(self) -> str | None:
        return getattr(self.loss_fn, "kind", None)

    def expected_initial_loss(self, num_classes: int) -> float | None:
        expected = getattr(self.loss_fn, "expected_initial_loss", None)
        return None if expected is None else expected(num_classes)

    # -- parameters and gradients ------------------------------------------------------------

    def learning_rate(self) -> float | None:
        lr = getattr(self.optimizer, "lr", None)
        return float(lr) if isinstance(lr, (int, float)) else None

    def parameter_names(self) -> list[str]:
        return list(self.model.named_parameters())

    def parameters(self, names: Collection[str] | None = None, *,
                   include_frozen: bool = False) -> dict[str, np.ndarray]:
        # (every tensor of a trainwatch.nn model trains: include_frozen changes nothing)
        return {k: v.copy() for k, v in self.model.named_parameters().items()
                if names is None or k in names}

    def parameter_shapes(self, *, include_frozen: bool = False) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.model.named_parameters().items()}

    def gradients(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.model.named_gradients().items()}

    def norms(self) -> dict[str, TensorNorms]:
        grads = self.model.named_gradients()
        return {k: TensorNorms(_norm(w), _norm(grads[k]))
                for k, w in self.model.named_parameters().items()}

    def begin_update(self) -> None:
        if self._update_open:  # one snapshot per step, shared by every monitor of the step
            return
        self._update_open, self._update_norms = True, None
        params = self.model.named_parameters()
        if self._before is None or self._before.keys() != params.keys():
            self._before = {k: v.copy() for k, v in params.items()}
        else:
            for k, v in params.items():
                np.copyto(self._before[k], v)

    def end_update(self) -> dict[str, TensorNorms]:
        if not self._update_open and self._update_norms is not None:
            return dict(self._update_norms)  # the step's measurement, taken by another monitor
        if self._before is None or not self._update_open:
            raise RuntimeError("end_update() called without begin_update()")
        self._update_open = False
        grads = self.model.named_gradients()
        out = {}
        for k, w in self.model.named_parameters().items():
            before = self._before[k]
            np.subtract(w, before, out=before)  # reuse the snapshot buffer for the update
            out[k] = TensorNorms(_norm(w), _norm(grads[k]), _norm(before))
        self._update_norms = out
        return dict(out)

    def first_nonfinite(self) -> str | None:
        grads = self.model.named_gradients()
        for k, w in self.model.named_parameters().items():
            if not math.isfinite(float(w.sum())) and not np.isfinite(w).all():
                return k
            g = grads[k]
            if not math.isfinite(float(g.sum())) and not np.isfinite(g).all():
                return f"{k} (gradient)"
        return None

    # -- activations ---------------------------------------------------------------------------

    def layers(self) -> list[LayerInfo]:
        return [LayerInfo(name, layer.kind) for name, layer in self.model.layers.items()]

    def _set_capture(self, on: bool) -> None:
        if on and not self.model.capture:
            self.model.activations = {}
            self.model.activation_grads = {}
        self.model.capture = on

    def activations(self) -> dict[str, np.ndarray]:
        return dict(self.model.activations)

    def activation_gradients(self) -> dict[str, np.ndarray]:
        return dict(self.model.activation_grads)

    # -- loss evaluation and gradient checks ---------------------------------------------------

    def evaluate(self, inputs: Any, targets: Any, batch_size: int = 512) -> tuple[float, float]:
        model, loss_fn = self.model, copy.copy(self.loss_fn)
        capture, model.capture = model.capture, False
        try:
            total_loss = correct = 0.0
            for start in range(0, len(inputs), batch_size):
                xb, yb = inputs[start:start + batch_size], targets[start:start + batch_size]
                scores = model.forward(xb, training=False)
                total_loss += float(loss_fn.forward(scores, yb)) * len(xb)
                correct += self.accuracy(scores, yb) * len(xb)
        finally:
            model.capture = capture
        n = max(len(inputs), 1)
        return total_loss / n, correct / n

    def check_gradients(self, inputs: Any, targets: Any, *, seed: int = 0, **options: Any):
        """Check data-loss and L2 gradients in float64 on a copy of the model: the model,
        its optimizer and its random state are never touched."""
        from trainwatch.gradcheck import check_gradients

        model = self.model.astype(np.float64)
        model.capture = False
        loss_fn = copy.deepcopy(self.loss_fn)
        l2 = float(getattr(model, "l2", 0.0))
        dropout_state = copy.deepcopy(np.random.default_rng(seed).bit_generator.state)
        inputs = np.asarray(inputs, dtype=np.float64)
        live = model.named_parameters()

        def forward(params: dict[str, np.ndarray]) -> float:
            for k, v in params.items():
                live[k][...] = v
            model.set_rng_state(dropout_state)
            return float(loss_fn.forward(model.forward(inputs, training=True), targets))

        def data_loss(params):
            value = forward(params)
            signature = [model.kink_signature().reshape(-1)]
            loss_sig = loss_fn.kink_signature()
            if loss_sig is not None:
                signature.append(np.asarray(loss_sig).reshape(-1).astype(np.int64))
            return value, np.concatenate([s.astype(np.int64) for s in signature])

        def analytic_gradients(with_l2: bool) -> dict[str, np.ndarray]:
            model.l2 = l2 if with_l2 else 0.0
            forward(params)
            model.zero_grad()
            model.backward(loss_fn.backward())
            model.l2 = l2
            return {k: g.copy() for k, g in model.named_gradients().items()}

        params = {k: v.copy() for k, v in live.items()}
        data_grads = analytic_gradients(with_l2=False)
        reg_options: dict[str, Any] = {}
        if l2 > 0:
            total = analytic_gradients(with_l2=True)

            def reg_loss(p):
                for k, v in p.items():
                    live[k][...] = v
                return float(model.regularization_loss())

            # only the tensors L2 applies to (biases would be "checked" at a true gradient 0)
            weights = [id(w) for w in model.weights()]
            reg_options = {"reg_fn": reg_loss,
                           "reg_grads": {k: total[k] - data_grads[k] for k in total
                                         if id(live[k]) in weights}}
        return check_gradients(data_loss, params, data_grads, seed=seed, **reg_options, **options)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    # -- training primitives ------------------------------------------------------------------

    def forward(self, inputs: Any, training: bool = True) -> Any:
        return self.model.forward(inputs, training=training)

    def loss(self, predictions: Any, targets: Any) -> tuple[float, float]:
        data = float(self.loss_fn.forward(predictions, targets))
        reg = float(self.model.regularization_loss()) if getattr(self.model, "l2", 0.0) else 0.0
        return data, reg

    def backward(self) -> None:
        self.model.zero_grad()
        self.model.backward(self.loss_fn.backward())

    def step(self) -> None:
        self.optimizer.step()
