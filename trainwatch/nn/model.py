"""``Sequential``: a chain of named layers with L2 regularisation, a shared dropout Generator,
optional activation capture, kink signatures and state dicts."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from trainwatch.nn.layers import Dropout, Layer

#: automatic name prefix per layer kind; names are numbered per prefix from 1 ("fc1", "fc2")
NAME_PREFIXES: dict[str, str] = {
    "dense": "fc",
    "conv2d": "conv",
    "maxpool": "pool",
    "flatten": "flatten",
    "relu": "relu",
    "leaky_relu": "lrelu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "dropout": "dropout",
}


def _auto_names(layers: Sequence[Layer]) -> list[str]:
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        prefix = NAME_PREFIXES.get(layer.kind, layer.kind)
        counts[prefix] = counts.get(prefix, 0) + 1
        names.append(f"{prefix}{counts[prefix]}")
    return names


class Sequential:
    """Layers applied in order. Parameters are named ``"{layer}.{param}"`` (``"fc1.weight"``).

    ``l2`` (>= 0) is the strength λ of the penalty ``0.5 * λ * sum(W²)`` over weights (not
    biases); ``backward`` adds its gradient ``λ * W``. ``seed`` seeds ``rng``, the one Generator
    that every Dropout layer draws from. Set ``capture = True`` to record each layer's output
    in ``activations`` and its output gradient in ``activation_grads`` (keyed by layer name).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        names: Sequence[str] | None = None,
        l2: float = 0.0,
        seed: int | None = 0,
    ) -> None:
        layers = list(layers)
        names = _auto_names(layers) if names is None else list(names)
        if len(names) != len(layers):
            raise ValueError(f"names: expected {len(layers)} names, got {len(names)}")
        if len(set(names)) != len(names) or any("." in name for name in names):
            raise ValueError(f"names: must be unique and contain no '.', got {names}")
        if not l2 >= 0:
            raise ValueError(f"l2: must be >= 0, got {l2!r}")
        self.layers: dict[str, Layer] = dict(zip(names, layers, strict=True))
        self.l2 = float(l2)
        self.rng = np.random.default_rng(seed)
        for layer in layers:
            if isinstance(layer, Dropout):
                layer.rng = self.rng
        self.capture = False
        self.activations: dict[str, np.ndarray] = {}
        self.activation_grads: dict[str, np.ndarray] = {}

    # -- computation -----------------------------------------------------------------------------

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Scores for the batch ``x``; ``training`` switches dropout on."""
        for name, layer in self.layers.items():
            x = layer.forward(x, training)
            if self.capture:
                self.activations[name] = x
        return x

    def backward(self, dscores: np.ndarray) -> np.ndarray:
        """Accumulate every parameter gradient (plus ``l2 * W`` on weights); return dL/dx."""
        dy = dscores
        for name, layer in reversed(self.layers.items()):
            if self.capture:
                self.activation_grads[name] = dy
            dy = layer.backward(dy)
        if self.l2:
            for layer in self.layers.values():
                if "weight" in layer.params:
                    layer.grads["weight"] += self.l2 * layer.params["weight"]
        return dy

    def regularization_loss(self) -> float:
        """``0.5 * l2 * sum(W²)`` over all weights (biases excluded)."""
        if not self.l2:
            return 0.0
        total = sum(float(np.sum(w**2)) for w in self.weights())
        return 0.5 * self.l2 * total

    def kink_signature(self) -> np.ndarray:
        """Every layer's kink signature from the last forward, raveled and joined (int64)."""
        parts = [
            sig.ravel().astype(np.int64)
            for layer in self.layers.values()
            if (sig := layer.kink_signature()) is not None
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # -- parameters ------------------------------------------------------------------------------

    def named_parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays (not copies), in layer order."""
        return {
            f"{name}.{key}": value
            for name, layer in self.layers.items()
            for key, value in layer.params.items()
        }

    def named_gradients(self) -> dict[str, np.ndarray]:
        """The live gradient arrays, keyed like ``named_parameters``."""
        return {
            f"{name}.{key}": value
            for name, layer in self.layers.items()
            for key, value in layer.grads.items()
        }

    def zero_grad(self) -> None:
        """Set every parameter gradient to zero, in place."""
        for layer in self.layers.values():
            layer.zero_grad()

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(p.size for p in self.named_parameters().values())

    def weights(self) -> list[np.ndarray]:
        """The weight tensors (live), the ones L2 regularisation applies to (not biases)."""
        return [lay.params["weight"] for lay in self.layers.values() if "weight" in lay.params]

    # -- state -----------------------------------------------------------------------------------

    def get_rng_state(self) -> dict[str, Any]:
        """A deep copy of the dropout Generator's ``bit_generator.state``."""
        return copy.deepcopy(self.rng.bit_generator.state)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore the dropout Generator (the same object the Dropout layers hold); the
        Generator copies what it needs, so ``state`` can be restored again later."""
        self.rng.bit_generator.state = state

    def state_dict(self) -> dict[str, Any]:
        """``{"params": {name: copy}, "rng_state": ...}``, all deep copies."""
        params = {name: value.copy() for name, value in self.named_parameters().items()}
        return {"params": params, "rng_state": self.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Write saved values into the live arrays (``[...] =``), so references stay valid."""
        live = self.named_parameters()
        saved = state["params"]
        if saved.keys() != live.keys():
            raise KeyError(f"state_dict params {sorted(saved)} do not match model {sorted(live)}")
        for name, value in saved.items():
            if np.shape(value) != live[name].shape:
                raise ValueError(f"{name}: saved shape {np.shape(value)} != {live[name].shape}")
        for name, value in saved.items():
            live[name][...] = value
        self.set_rng_state(state["rng_state"])

    def astype(self, dtype: np.dtype | type) -> Sequential:
        """A deep copy with parameters and gradients cast to ``dtype`` (float64 for gradchecks).

        What the last passes left behind (each layer's cached inputs and masks, captured
        activations) is not copied: the clone starts with none."""
        memo: dict[int, Any] = {id(self.activations): {}, id(self.activation_grads): {}}
        for layer in self.layers.values():
            for key, value in vars(layer).items():
                if key.startswith("_") and isinstance(value, np.ndarray):
                    memo[id(value)] = None
        clone = copy.deepcopy(self, memo)
        for layer in clone.layers.values():
            for key in layer.params:
                layer.params[key] = layer.params[key].astype(dtype)
                layer.grads[key] = layer.grads[key].astype(dtype)
        return clone
