"""The seam between callbacks and a framework: everything a callback may know of a model.

A callback sees the model only through ``state.backend``. The numpy implementation is
:class:`trainwatch.backends.numpy_backend.NumpyBackend`; the torch one lives in
:mod:`trainwatch.torch`. Every array a backend returns is a host ``numpy.ndarray`` (a copy,
safe to keep); reductions over many tensors are batched so a GPU backend needs at most
one device-to-host transfer per call.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainwatch.outputs.base import HistogramData


@dataclass(frozen=True)
class TensorNorms:
    """L2 norms of one parameter tensor around an optimizer step (float, >= 0).

    ``update`` is ``‖θ_after − θ_before‖``, the change the optimizer actually applied; it is
    NaN when no update was measured.
    """

    weight: float
    grad: float
    update: float = float("nan")


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the model: its name, its kind, and whether its output can be captured.

    ``kind`` is a lower-case word such as ``"dense"``, ``"conv2d"``, ``"relu"``,
    ``"leaky_relu"``, ``"tanh"``, ``"sigmoid"``, ``"maxpool"``, ``"dropout"``, ``"flatten"``,
    ``"batchnorm"``, ``"embedding"`` or ``"other"``; the saturation and dead-unit
    statistics key on it. ``captured`` is False for a layer inside ``torch.compile``'d code,
    whose output :meth:`Backend.activations` never has.
    """

    name: str
    kind: str
    captured: bool = True


@dataclass(frozen=True)
class ActivationStats:
    """One captured layer output reduced to what the saturation and dead-unit rules need.

    ``examples``: the batch size (axis 0). ``saturated``: the fraction of entries in the
    saturated zone of a ``tanh``/``sigmoid`` (see :func:`saturated_fraction`; NaN for other
    kinds). ``alive``: per unit (axis 1), True where some example has an output ``> 0`` (see
    :func:`alive_units`; None for ``tanh``/``sigmoid``).
    """

    examples: int
    saturated: float
    alive: np.ndarray | None


#: layer kinds whose saturation is measured (the others get an alive-units mask)
SATURATING_KINDS = frozenset({"tanh", "sigmoid"})


def saturated_fraction(a: np.ndarray, kind: str, threshold: float = 0.97) -> float:
    """Fraction of the entries of ``a`` in the saturated zone of a ``tanh`` or ``sigmoid``.

    tanh: ``|a| > threshold``; sigmoid: ``a < 1 − threshold`` or ``a > threshold``.
    Returns NaN for an empty array or another kind.
    """
    a = np.asarray(a)
    if a.size == 0:
        return math.nan
    if kind == "tanh":
        count = np.count_nonzero(np.abs(a) > threshold)
    elif kind == "sigmoid":
        count = np.count_nonzero(a > threshold) + np.count_nonzero(a < 1.0 - threshold)
    else:
        return math.nan
    return count / a.size


def alive_units(a: np.ndarray) -> np.ndarray:
    """Boolean mask over the units (axis 1) of ``a``: True where some example (at some
    position) has an output ``> 0``. ``a`` is ``(N, F)`` (units = features) or
    ``(N, C, ...)`` (units = channels); a 1-D ``a`` is one unit."""
    a = np.asarray(a)
    if a.ndim < 2:
        return np.array([bool((a > 0).any())])
    return (a > 0).any(axis=(0, *range(2, a.ndim)))


def _arrays(batch: Any) -> Iterator[Any]:
    """The arrays of a batch, inside tuples, lists and dicts, in :func:`_cut`'s order."""
    if isinstance(batch, (tuple, list)):
        for item in batch:
            yield from _arrays(item)
    elif isinstance(batch, dict):
        for item in batch.values():
            yield from _arrays(item)
    elif getattr(batch, "shape", None) is not None:
        yield batch


def _ambiguous(array: Any, size: int | None) -> bool:
    """Whether an array's dims 0 and 1 both have the batch's size."""
    shape = array.shape
    return size is not None and len(shape) >= 2 and shape[0] == shape[1] == size


def _cut(batch: Any, n: int, size: int | None, readings: Iterator[int | None]) -> Any:
    """The first ``n`` examples of a batch (see :meth:`Backend.first_examples`); an
    ambiguous array (:func:`_ambiguous`) takes the next of ``readings``: its examples along
    dim 0, dim 1, or None (whole)."""
    if isinstance(batch, (tuple, list)):
        items = [_cut(b, n, size, readings) for b in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    if isinstance(batch, dict):
        return {k: _cut(v, n, size, readings) for k, v in batch.items()}
    shape = getattr(batch, "shape", None)
    if shape is None:
        return batch[:n] if hasattr(batch, "__getitem__") else batch
    if len(shape) == 0:
        return batch
    if _ambiguous(batch, size):
        dim = next(readings)
        return batch if dim is None else batch[:n] if dim == 0 else batch[:, :n]
    if size is not None and shape[0] != size:
        return batch[:, :n] if len(shape) >= 2 and shape[1] == size else batch
    return batch[:n]


def batch_length(batch: Any) -> int | None:
    """The number of examples in a batch: the first array's (or tensor's) dim 0, inside
    tuples, lists and dicts too; None where there is no array."""
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    items = (batch if isinstance(batch, (tuple, list))
             else batch.values() if isinstance(batch, dict) else ())
    for item in items:
        length = batch_length(item)
        if length is not None:
            return length
    return None


class Backend(ABC):
    """What callbacks may ask of a model, its loss and its optimizer."""

    #: the framework's name, e.g. "numpy" or "torch"
    framework: str = "abstract"

    @property
    def loss_kind(self) -> str | None:
        """The loss's kind, e.g. ``"softmax_cross_entropy"``, ``"multiclass_svm"``,
        ``"sigmoid_bce"`` or ``"mse"``; None when unknown."""
        return None

    @property
    def first_order_optimizer(self) -> bool:
        """Whether the optimizer takes first-order steps (SGD, momentum, Adam and their kin),
        the steps KNOWLEDGE's ~1e-3 update-to-weight ratio is a rule for; False for a
        quasi-Newton method such as L-BFGS, whose line search takes large steps by design."""
        return True

    def expected_initial_loss(self, num_classes: int) -> float | None:
        """The loss expected with small random weights and no regularisation (KNOWLEDGE §2:
        ln C for softmax over C classes, C − 1 for the multiclass SVM); None when unknown."""
        return None

    def learning_rate(self) -> float | None:
        """The optimizer's learning rate now (the largest of its parameter groups'), None
        where unknown: a schedule's warm-up or decay explains update ratios below the band."""
        return None

    def loss_floor(self, num_classes: int | None) -> float:
        """The least value the loss can take: 0 for most losses; label smoothing raises it
        (a model that fits its training set well stays above it)."""
        return 0.0

    # -- parameters and gradients ------------------------------------------------------------

    @abstractmethod
    def parameter_names(self) -> list[str]:
        """Names of the trainable parameter tensors, in layer order (``"conv1.weight"``)."""

    @abstractmethod
    def parameters(self, names: Collection[str] | None = None, *,
                   include_frozen: bool = False) -> dict[str, np.ndarray]:
        """Host copies of the trainable parameter tensors, keyed by name, in layer order;
        only ``names`` when given (a GPU backend then transfers only those); with
        ``include_frozen``, the frozen ones too (a pretrained backbone's first layer)."""

    def parameter_shapes(self, *, include_frozen: bool = False) -> dict[str, tuple[int, ...]]:
        """Shape of every trainable parameter tensor (with ``include_frozen``, of every
        parameter tensor), in layer order (no data is read)."""
        return {name: tuple(p.shape)
                for name, p in self.parameters(include_frozen=include_frozen).items()}

    @abstractmethod
    def gradients(self) -> dict[str, np.ndarray]:
        """Host copies of the current gradients (zeros where a tensor has none)."""

    @abstractmethod
    def norms(self) -> dict[str, TensorNorms]:
        """Weight and gradient L2 norms of every tensor, batched (update is NaN)."""

    @abstractmethod
    def begin_update(self) -> None:
        """Snapshot the parameters just before an optimizer step (see :meth:`end_update`).
        One snapshot per step: a second call before :meth:`end_update` does nothing, so
        several monitors of a step share one measurement."""

    @abstractmethod
    def end_update(self) -> dict[str, TensorNorms]:
        """After the step: weight, gradient and applied-update norms per tensor, batched.
        Called again after the step's measurement (by another monitor), the same norms;
        without a :meth:`begin_update` before, a RuntimeError."""

    def end_update_scalars(self) -> dict[str, tuple[Any, Any, Any]]:
        """:meth:`end_update` without reading anything: per tensor the weight, gradient and
        update norms as framework scalars (on a GPU, 0-d tensors still on the device), for
        :meth:`Callback.read_at_step_end`."""
        return {name: (n.weight, n.grad, n.update) for name, n in self.end_update().items()}

    def not_in_optimizer(self) -> set[str]:
        """Names of the tensors measured by :meth:`end_update` that the watched optimizer
        does not hold (another optimizer may train them, or none); empty when it holds them
        all or is not known (the default)."""
        return set()

    @abstractmethod
    def first_nonfinite(self) -> str | None:
        """Name of the first parameter or gradient tensor holding NaN/Inf
        (``"fc1.weight"`` or ``"fc1.weight (gradient)"``), or None if all are finite."""

    # -- activations ---------------------------------------------------------------------------

    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """The model's layers in forward order; :meth:`activations` captures the outputs of
        those marked ``captured``."""

    #: why some layers of the model are not ``captured`` (inside compiled code, say), or
    #: None: said once by the capturing callback
    uncaptured_layers: str | None = None
    #: open :meth:`capture_activations` requests
    _capture_requests: int = 0
    #: an error the capture met inside the model's forward or backward (where it must not
    #: raise): that capture stopped; the callback that asked for it reports it
    capture_error: Exception | None = None

    def capture_activations(self, enabled: bool) -> None:
        """Ask for layer outputs (and their gradients) to be recorded on the following
        forward/backward passes (``True``), or give that request back (``False``). Requests
        are counted: two callbacks capturing on their own schedules do not switch each other
        off, recording stays on while any request is open, and switching on starts afresh.
        Between scheduled steps keep none open, so it costs nothing."""
        self._capture_requests = max(self._capture_requests + (1 if enabled else -1), 0)
        self._set_capture(self._capture_requests > 0)

    @abstractmethod
    def _set_capture(self, on: bool) -> None:
        """Switch recording on or off (see :meth:`capture_activations`); switching it on
        from off drops what an earlier capture recorded."""

    @abstractmethod
    def activations(self) -> dict[str, np.ndarray]:
        """Layer outputs of the last captured forward pass, by layer name."""

    @abstractmethod
    def activation_gradients(self) -> dict[str, np.ndarray]:
        """Gradients of the loss w.r.t. those outputs, from the last captured backward."""

    def activation_stats(self, kinds: Mapping[str, str],
                         threshold: float = 0.97) -> dict[str, ActivationStats]:
        """:class:`ActivationStats` of the captured outputs of the layers in ``kinds`` (layer
        name -> kind; empty outputs left out): the saturated fraction for ``tanh``/``sigmoid``
        (zone edge ``threshold``), the alive-units mask for the others. A GPU backend
        reduces them on the device, in one transfer, instead of copying the outputs."""
        out = {}
        for name, a in self.activations().items():
            kind = kinds.get(name)
            if kind is None or a.size == 0:
                continue
            saturating = kind in SATURATING_KINDS
            out[name] = ActivationStats(
                examples=len(a) if a.ndim else 0,
                saturated=saturated_fraction(a, kind, threshold) if saturating else math.nan,
                alive=None if saturating else alive_units(a))
        return out

    def distributions(self, which: Sequence[str], bins: int = 64,
                      kinds: Mapping[str, str] | None = None, threshold: float = 0.97
                      ) -> tuple[dict[str, dict[str, HistogramData]], dict[str, ActivationStats]]:
        """``({kind: histograms(kind, bins) for kind in which}, activation_stats(kinds,
        threshold))`` (no statistics when ``kinds`` is empty or None); a GPU backend reads
        them all in one transfer."""
        hists = {w: self.histograms(w, bins) for w in which}
        return hists, (self.activation_stats(kinds, threshold) if kinds else {})

    def histograms(self, which: str, bins: int = 64) -> dict[str, HistogramData]:
        """Histograms of ``which`` in {"weights", "gradients", "activations",
        "activation_gradients"}; a GPU backend overrides this to bucket on the device."""
        source = {
            "weights": self.parameters,
            "gradients": self.gradients,
            "activations": self.activations,
            "activation_gradients": self.activation_gradients,
        }
        if which not in source:
            raise ValueError(f"which: {which!r} is not one of {sorted(source)}")
        return {k: HistogramData.from_values(v, bins) for k, v in source[which]().items()}

    # -- loss evaluation and gradient checks ---------------------------------------------------

    @abstractmethod
    def evaluate(self, inputs: Any, targets: Any) -> tuple[float, float]:
        """Mean data loss and accuracy (fraction in [0, 1]) on a dataset, in inference mode,
        without touching training state (gradients, random state, captured activations)."""

    @abstractmethod
    def check_gradients(self, inputs: Any, targets: Any, *, seed: int = 0, **options: Any):
        """Gradient-check the model on ``inputs``/``targets`` (a few examples) with dropout
        fixed by ``seed``; returns a :class:`trainwatch.gradcheck.GradCheckReport`. Leaves
        the model, optimizer and every random state exactly as they were."""

    # -- state (for bit-exact restoration and tests) --------------------------------------------

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """A deep copy of everything training depends on: parameters, optimizer state and
        the model's random state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` returned."""

    # -- the training primitives trainwatch's own Trainer drives ---------------------------------

    def forward(self, inputs: Any, training: bool = True) -> Any:
        """Model outputs (scores) for a batch."""
        raise NotImplementedError(f"{type(self).__name__} cannot drive trainwatch's Trainer")

    def loss(self, predictions: Any, targets: Any) -> tuple[float, float]:
        """(data loss, regularisation loss) of the batch just forwarded; keeps what
        :meth:`backward` needs."""
        raise NotImplementedError(f"{type(self).__name__} cannot drive trainwatch's Trainer")

    def backward(self) -> None:
        """Zero the gradients, then backpropagate data loss + regularisation."""
        raise NotImplementedError(f"{type(self).__name__} cannot drive trainwatch's Trainer")

    def step(self) -> None:
        """One optimizer step (gradients are zeroed by the next :meth:`backward`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot drive trainwatch's Trainer")

    #: whether reading a value to the host synchronises nothing (numpy, a CPU tensor), or is a
    #: device sync, so that reads wait for the end of the step and go in one transfer
    host_reads_cheap: bool = True

    def scalars_to_host(self, values: list[Any]) -> list[float]:
        """Python floats of many framework scalars, in one transfer."""
        return [float(v) for v in values]

    def to_host(self, x: Any) -> np.ndarray:
        """A host numpy copy of a batch (inputs or targets) from the training loop."""
        return np.array(x, copy=True)

    def first_examples(self, batch: Any, n: int, size: int | None = None) -> Any:
        """The first ``n`` examples of a batch (inputs or targets): an array's or tensor's
        first ``n`` rows, inside tuples, lists and dicts too (several targets of a multi-task
        loss); a 0-d value or a non-array as it is. With the batch's ``size`` (the targets'
        :func:`batch_length`), an array whose dim 0 is another length is cut along dim 1
        where that is the batch (a sequence-first RNN's ``(T, N, F)`` inputs), else left
        whole (a shared mask). (The torch backend cuts a forward's several arguments, a
        ``ForwardInputs``, by this rule too.)"""
        return next(self.example_cuts(batch, n, size))

    def example_cuts(self, batch: Any, n: int, size: int | None = None) -> Iterator[Any]:
        """:meth:`first_examples`' cut, then the other readings of a batch whose shapes do not
        tell where its examples are: an array whose dims 0 and 1 both have the batch's
        ``size`` (sequence-first inputs as long as the batch, a ``(T, T)`` mask with T the
        batch size) cut along dim 1 instead, or left whole; every combination, for the
        caller to try in turn (a gradient check takes the first its model runs on)."""
        ambiguous = sum(1 for array in _arrays(batch) if _ambiguous(array, size))
        for readings in itertools.product((0, 1, None), repeat=ambiguous):
            yield _cut(batch, n, size, iter(readings))

    def concatenate(self, batches: Sequence[Any]) -> Any:
        """One batch holding the examples of ``batches`` (host copies from :meth:`to_host`),
        in order."""
        return np.concatenate(batches)

    def scores(self, outputs: Any) -> Any:
        """The class scores in a batch's ``outputs``, as callbacks see them (what accuracy and
        the expected initial loss read; never differentiated): the outputs themselves here; a
        backend whose models may return several outputs picks the scores among them, and one
        whose tensors carry autograd graphs detaches them."""
        return outputs

    def count_correct(self, predictions: Any, targets: Any) -> Any:
        """How many rows are classified right, as a framework scalar (on a GPU it stays on
        the device: read it later with :meth:`scalars_to_host`)."""
        return self.accuracy(predictions, targets) * len(targets)

    @staticmethod
    def accuracy(predictions: Any, targets: Any) -> float:
        """Fraction of rows whose arg-max class equals the target (numpy arrays)."""
        predictions = np.asarray(predictions)
        targets = np.asarray(targets)
        if predictions.ndim == 1 or predictions.shape[-1] == 1:
            return float(np.mean((predictions.reshape(-1) > 0) == (targets.reshape(-1) > 0.5)))
        return np.count_nonzero(predictions.argmax(axis=-1) == targets) / max(targets.size, 1)
