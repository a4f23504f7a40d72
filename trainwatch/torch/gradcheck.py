"""``check_module``: finite-difference check of a torch module's parameter gradients.

The check runs in float64 on copies: float64 stand-ins for the model's parameters and
buffers are swapped in once for the whole check (``torch.nn.utils.stateless``'s
reparametrisation, what ``torch.func.functional_call`` does for one call) and swapped out on
exit, also on an exception, so the model itself (its parameters, buffers, ``.grad`` fields
and training flag) is never written. Before every evaluation the engine's values are copied
into the stand-ins, the buffers reset (BatchNorm updates its running statistics in place)
and the random generators put back (the global ones and any the model keeps as an
attribute): dropout draws the same masks in the analytic pass and in every numerical
evaluation. torch's default dtype is float64 meanwhile, so tensors the forward makes
(``torch.zeros(...)``) match, casts to a lower float precision inside the forward
(``x.float()`` in an RMSNorm, ``.to(torch.float32)``, ``.type_as``) keep float64, and a call
that torch refuses for mixing the stand-ins with float32 tensors the check does not copy (a
plain tensor attribute, a loss closure's class weights) runs again with those in float64.
What PyTorch computes outside autograd is held, as autograd holds it: the results of
``detach()``, ``detach_()`` and ``.data`` (stop-gradients, straight-through estimators, also
inside ``F.gumbel_softmax(hard=True)``; fake quantisation, straight through inside its range) and
of calls the forward makes with gradients off
(``torch.no_grad()``, ``inference_mode()``: a self-distillation target; a custom
``autograd.Function``'s forward, which autograd runs so too, is not held), an embedding's
padding row and max_norm renormalisation,
spectral normalisation's power iteration (its u and v stay where the analytic pass left them).

Every numerical evaluation runs under a :class:`KinkRecorder` (a
``TorchFunctionMode``) that notes which side of each kink the forward pass is on,
functional code included, and hands the engine a fingerprint of it with the loss (on the
CPU a hash of the patterns; elsewhere one number computed on the device, read with the
loss in one device-to-host transfer). A forward with no kink the recorder knows hands over
no fingerprint: then the engine's own test (one-sided differences at several steps) finds
the kinks no pattern shows, such as a hinge inside a loss computed in C++. The probes,
thresholds and the report come from the numpy engine
:func:`trainwatch.gradcheck.check_gradients`.

Cost: per evaluation one forward pass of the few examples in float64 under the recorder,
plus (off the CPU) the upload of the parameters: the engine hands over all of them at every
evaluation (on the CPU the stand-ins share the engine's memory, so nothing is copied). The
digits CNN (6 tensors) with the periodic probes (14 evaluations when they pass): ~6.5 ms a
check warm on the CPU, ~10 ms inside a training loop, ~250 µs an evaluation warm against a
90 µs bare float64 forward (the rest: the torch function mode's Python dispatch, the random
generators' reset and the patterns' hash). On the CPU a model of at most
:data:`SINGLE_THREAD_PARAMETERS` parameters is checked with one intra-op thread (restored
afterwards): its float64 ops on a few examples take microseconds, and the engine's Python
work between two of them is long enough for torch's worker threads to fall asleep, so with
two threads every op waited for a wake-up (the digits CNN: 55 ms a check with 2 threads, 20
ms with one).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import inspect
import itertools
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module
from torch.overrides import TorchFunctionMode

from trainwatch.gradcheck.engine import LossFunctionError
from trainwatch.torch.backend import model_device, model_generators, suspended, unwrapped
from trainwatch.torch.inputs import ForwardInputs, map_arrays

#: on the CPU, models up to this many parameters are checked with one intra-op thread
SINGLE_THREAD_PARAMETERS = 1_000_000


def _to_float64(value: Any, device: torch.device) -> Any:
    """Inputs/targets for the check: floating tensors/arrays in float64 on ``device``,
    integers int64; tuples, lists, dicts and ForwardInputs converted item by item."""
    def convert(a: Any) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            a = a.detach()
            if a.is_floating_point() or a.is_complex():
                return a.to(device=device, dtype=_WIDER.get(a.dtype, a.dtype))
            return a.to(device=device)
        if np.issubdtype(a.dtype, np.floating):
            return torch.tensor(a, dtype=torch.float64, device=device)
        if np.issubdtype(a.dtype, np.complexfloating):
            return torch.tensor(a, dtype=torch.complex128, device=device)
        if np.issubdtype(a.dtype, np.integer):
            return torch.tensor(a, dtype=torch.int64, device=device)
        return torch.tensor(a, device=device)

    return map_arrays(convert, value)


def _float64_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy in double precision (float64, complex128), other dtypes as they are."""
    t = t.detach()
    return t.to(_WIDER.get(t.dtype, t.dtype), copy=True)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


@functools.cache
def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


def _with_indices(fn: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """The winners' indices of a max-pool call given the arguments of its plain form."""
    bound = _signature(fn).bind(*args, **kwargs)
    bound.arguments["return_indices"] = True
    return fn(*bound.args, **bound.kwargs)[1]


#: torch functions whose ``__name__`` is not the name :func:`kink_pattern` knows them by
_KINK_ALIASES = {"_threshold": "threshold"}

#: ``tensor.data``'s getter: a stop-gradient like ``detach()`` (the recorder holds both)
_DATA_GETTER = torch._C.TensorBase.__dict__["data"]

#: float and complex dtypes below double precision -> the one the check holds them at
#: (casts, ``dtype=`` arguments, mixed operands)
_WIDER: dict[torch.dtype, torch.dtype] = {
    torch.float32: torch.float64, torch.float16: torch.float64, torch.bfloat16: torch.float64,
    torch.complex64: torch.complex128, torch.complex32: torch.complex128}
#: tensor methods that cast: under the check a cast to a lower float precision keeps float64,
#: and a float's cast to an integer or bool type is a step (a kink) like ``floor``
_CASTS = frozenset({"float", "half", "bfloat16", "cfloat", "to", "type", "type_as",
                    "int", "long", "short", "char", "byte", "bool"})
#: ``Tensor.type``'s lower float tensor types (names and classes) -> float64's
_LOW_FLOAT_TYPES: dict[Any, Any] = {
    **{f"torch.{kind}": "torch.DoubleTensor"
       for kind in ("FloatTensor", "HalfTensor", "BFloat16Tensor")},
    **{getattr(torch, kind): torch.DoubleTensor
       for kind in ("FloatTensor", "HalfTensor", "BFloat16Tensor")}}
#: fake quantisation (quantisation-aware training): a step function whose gradient torch
#: defines as the straight-through estimator, 1 inside the quantisation range and 0 outside
_FAKE_QUANTS = frozenset({"fake_quantize_per_tensor_affine",
                          "fake_quantize_per_channel_affine",
                          "fused_moving_avg_obs_fake_quant"})
#: calls the recorder looks at before running them (the rest pass straight through)
_HANDLED = _CASTS | _FAKE_QUANTS | {"detach", "detach_", "__get__", "gumbel_softmax", "view"}


_COMPARISONS = frozenset({"gt", "lt", "ge", "le", "eq", "ne", "greater", "less",
                          "greater_equal", "less_equal", "not_equal", "__gt__", "__lt__",
                          "__ge__", "__le__", "__eq__", "__ne__"})
_STEPS = frozenset({"floor", "ceil", "round", "trunc", "fix", "sign", "sgn", "argmax", "argmin",
                    "argsort"})
_RECTIFIERS = frozenset({"relu", "leaky_relu", "elu", "selu", "celu", "rrelu", "prelu"})
_POOLS = {f"{kind}max_pool{d}d": getattr(F, f"{kind}max_pool{d}d_with_indices")
          for kind in ("", "adaptive_") for d in (1, 2, 3)}
#: calls returning (values, indices), the indices telling the winners: sorting, top-k, and
#: pooling asked for its indices
_INDEXED = frozenset({"sort", "topk", "kthvalue", "cummax", "cummin", "mode", "median",
                      "nanmedian"} | {f"{name}_with_indices" for name in _POOLS})
#: calls whose kinks sit where their input ties (a zero vector's norm, a quantile's order):
#: the tie is a state of its own
_TIES = frozenset({"norm", "linalg_vector_norm", "dist", "quantile", "nanquantile"})
_CLAMPS = frozenset({"hardtanh", "relu6", "clamp", "clip", "clamp_min", "clamp_max"})
_LOSSES = frozenset({"multi_margin_loss", "hinge_embedding_loss", "margin_ranking_loss",
                     "l1_loss"})
_OTHERS = frozenset({"threshold", "hardshrink", "softshrink", "hardsigmoid", "hardswish", "abs",
                     "maximum", "minimum", "fmax", "fmin", "max", "min", "amax", "amin"})
_KINK_BASES = (_COMPARISONS | _STEPS | _RECTIFIERS | _INDEXED | frozenset(_POOLS) | _CLAMPS
               | _LOSSES | _OTHERS | _TIES | {"grid_sample"})
#: every torch call name :func:`kink_pattern` knows, in-place variants (``relu_``) included:
#: the recorder passes any other call straight through
_KINK_NAMES = (_KINK_BASES | frozenset(b + "_" for b in _KINK_BASES if not b.endswith("__"))
               | frozenset(_KINK_ALIASES))


#: calls whose pattern is read from their input alone, before the call (which may overwrite
#: it in place: ``x.clamp_(...)``, ``F.hardswish(x, inplace=True)``)
_PATTERN_BEFORE = frozenset(
    name for base in ("clamp", "clip", "clamp_min", "clamp_max", "abs", "hardsigmoid",
                      "hardswish", "threshold", "_threshold") for name in (base, base + "_"))


def kink_pattern(name: str, args: tuple, kwargs: dict, out: Any) -> torch.Tensor | None:
    """Which side of its kinks a torch call's inputs are on, as a tensor (None: no kink).

    Covers rectifiers (sign of the input), clamps (below / inside / above), ``abs``,
    ``maximum``/``minimum``/``max``/``min`` and ``amax``/``amin`` (the winners), max-pooling
    (the winners' indices), sorting and top-k (the order), comparisons and step functions
    (their outputs), and the hinge/L1 losses (active terms, signs).

    An input exactly on a kink gets the side autograd differentiates there (a rectifier at
    0: off; ``clamp`` at a bound: inside; ``hardtanh`` at a bound: clamped), or a state of its
    own where autograd takes neither side (``abs`` and ``l1_loss`` at 0, a tie of
    ``maximum`` or of a whole tensor's ``max``), so a probe whose one side keeps the checked
    point's pattern can be judged one-sided there (``tests/torch/test_kink_ties.py`` holds
    every call to this)."""
    name = _KINK_ALIASES.get(name, name)
    base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return None
    inplace = out is x  # an in-place call returns its (overwritten) input
    if base in _RECTIFIERS:
        # rectifiers with positive slopes keep the sign, so an overwritten input still tells
        return out > 0 if inplace else x > 0
    if base == "threshold":  # (x before the call, see _PATTERN_BEFORE)
        return x > _arg(args, kwargs, 1, "threshold")
    if base in ("hardshrink", "softshrink"):
        lambd = _arg(args, kwargs, 1, "lambd", 0.5)
        return (x > lambd).to(torch.int8) - (x < -lambd).to(torch.int8)
    if base in _CLAMPS:
        if base in ("hardtanh", "relu6"):  # (no gradient at the bounds: clamped there)
            lo, hi = (0.0, 6.0) if base == "relu6" else (
                _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0))
            return (out <= lo).to(torch.int8) + 2 * (out >= hi).to(torch.int8)
        if base == "clamp_min":
            lo, hi = _arg(args, kwargs, 1, "min"), None
        elif base == "clamp_max":
            lo, hi = None, _arg(args, kwargs, 1, "max")
        else:
            lo, hi = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
        # clamp's gradient passes at the bounds: inside there (x before an in-place call,
        # see KinkRecorder._run)
        side = torch.zeros(x.shape, dtype=torch.int8, device=x.device)
        if lo is not None:
            side = side + (x < lo).to(torch.int8)
        if hi is not None:
            side = side + 2 * (x > hi).to(torch.int8)
        return side
    if base in ("hardsigmoid", "hardswish"):
        return (x > -3).to(torch.int8) + (x >= 3).to(torch.int8)
    if base == "abs":  # (x before an in-place call; at 0 autograd takes neither side)
        return (x == 0).to(torch.int8) if x.is_complex() else torch.sign(x)  # (|z|: at 0)
    if base in ("maximum", "minimum", "fmax", "fmin"):
        return torch.sign(x - args[1])  # (a tie splits the gradient: a side of its own)
    if base in ("max", "min"):
        other = kwargs.get("other", args[1] if len(args) > 1 else None)
        if isinstance(other, torch.Tensor):
            return torch.sign(x - other)
        if isinstance(out, tuple):  # (values, indices) along a dim
            return out[1]
        return x == out  # (the whole tensor's: tied winners share the gradient)
    if base in ("amax", "amin"):
        dim = _arg(args, kwargs, 1, "dim", ())
        ref = x.amax(dim=dim, keepdim=True) if base == "amax" else x.amin(dim=dim, keepdim=True)
        return x == ref
    if base in _INDEXED and isinstance(out, tuple):
        return out[1]
    if base in ("median", "nanmedian"):  # (of the whole tensor: its tied values share)
        return x == out
    if base in _TIES:
        return _tie_pattern(base, x, args, kwargs)
    if base == "grid_sample":
        return _sample_cells(x, args, kwargs)
    if base in _COMPARISONS or base in _STEPS:
        return out if isinstance(out, torch.Tensor) else None
    if base in _POOLS:
        return out[1] if isinstance(out, tuple) else _with_indices(_POOLS[base], args, kwargs)
    if base == "multi_margin_loss" and x.ndim == 2:
        target = args[1]
        margin = _arg(args, kwargs, 3, "margin", 1.0)
        return margin - x.gather(1, target.reshape(-1, 1).long()) + x > 0
    if base == "hinge_embedding_loss":  # (active at the margin, as autograd takes it)
        return _arg(args, kwargs, 2, "margin", 1.0) - x >= 0
    if base == "margin_ranking_loss":
        x2, target = args[1], args[2]
        return -target * (x - x2) + _arg(args, kwargs, 3, "margin", 0.0) >= 0
    if base == "l1_loss":
        return torch.sign(x - args[1])
    return None


def _tie_pattern(base: str, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Norms: which reduced vectors are exactly zero (the norm's kink). Quantiles: the sort
    order and which neighbours tie in it."""
    if base == "dist":
        return ((x - args[1]) != 0).sum() == 0
    if base in ("quantile", "nanquantile"):
        dim = _arg(args, kwargs, 2, "dim")
        values, order = torch.sort(x.reshape(-1) if dim is None else x, dim=0 if dim is None
                                   else dim)
        ties = values.diff(dim=0 if dim is None else dim) == 0
        return torch.cat([order.reshape(-1), ties.reshape(-1).long()])
    dim = _arg(args, kwargs, 2, "dim")  # (norm(x, p, dim), linalg_vector_norm(x, ord, dim))
    nonzero = (x != 0).to(torch.int8)
    return (nonzero.sum() if dim is None else nonzero.sum(dim=dim)) == 0


def _sample_cells(image: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.grid_sample``'s kinks: the pixel cell of every sample point (its coordinates'
    floor for bilinear and bicubic interpolation, the nearest pixel for ``nearest``), and on
    which side of the image's edges it is where the padding clips or reflects."""
    grid = _arg(args, kwargs, 1, "grid")
    mode = _arg(args, kwargs, 2, "mode", "bilinear")
    padding = _arg(args, kwargs, 3, "padding_mode", "zeros")
    align = bool(_arg(args, kwargs, 4, "align_corners", False))
    sizes = torch.tensor(list(reversed(image.shape[2:])), dtype=grid.dtype, device=grid.device)
    at = (grid + 1) / 2 * (sizes - 1) if align else ((grid + 1) * sizes - 1) / 2
    cells = (torch.round(at) if mode == "nearest" else torch.floor(at)).long()
    if padding != "zeros":
        cells = cells * 4 + (at < 0).long() + 2 * (at > sizes - 1).long()
    return cells


class _Held:
    """Values the analytic pass keeps, handed back in order in every numerical pass: the
    n-th asked for is the n-th kept (None past the end, or where its shape is not the one
    asked for: the forward took another path)."""

    def __init__(self) -> None:
        self.kept: list[tuple[Any, Any]] = []  # (value, its shape)
        self._next = 0

    def __len__(self) -> int:
        return len(self.kept)

    def keep(self, value: Any, shape: Any) -> None:
        self.kept.append((value, shape))

    def take(self, shape: Any) -> Any:
        index, self._next = self._next, self._next + 1
        if index >= len(self.kept):
            return None
        value, kept_shape = self.kept[index]
        return value if kept_shape == shape else None

    def rewind(self) -> None:
        self._next = 0


def _writes_in_place(name: str, kwargs: dict) -> bool:
    """Whether a torch call named ``name`` writes into an operand (``x.add_(...)``,
    ``x[i] = ...``, ``out=``)."""
    return ("out" in kwargs or (name.endswith("_") and not name.endswith("__"))
            or name == "__setitem__")


class KinkRecorder(TorchFunctionMode):
    """While active, records the kink pattern of every torch call (see :func:`kink_pattern`),
    whether it comes from a module (``nn.ReLU``, ``nn.MaxPool2d``, ``nn.MultiMarginLoss``) or
    from functional code (``F.relu``, ``x.clamp(min=0)``, ``torch.max``, ``x > 0``).

    :meth:`fingerprint` reduces the patterns to one float64 number (a dot product with
    fixed random weights, computed where the tensors live), so a changed pattern changes
    it and only one number travels to the host.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.parts: list[torch.Tensor] = []
        self._weights: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._generator = torch.Generator().manual_seed(seed)  # private: no global state
        #: id(embedding weight) -> (padding_idx, that row's value at the checked point): the
        #: lookups read the row as it was (see :func:`check_module`)
        self.held_rows: dict[int, tuple[int, torch.Tensor]] = {}
        #: ids of embedding weights whose lookups skip their max_norm renormalisation
        self.no_renorm: set[int] = set()
        #: the analytic pass (``recording``): only ``detach()`` calls are seen, their results
        #: kept (None for a tensor that needed no gradient); the numerical passes get the
        #: n-th kept result back from their n-th ``detach()``: a stop-gradient holds its value
        #: for the finite differences as it does for autograd
        self.recording = False
        self.detached = _Held()
        #: the same for the results of calls made with gradients off inside the forward
        self.no_grad_held = _Held()
        #: (point, quantised value, in-range mask) of each fake quantisation
        self.quantised = _Held()
        #: casts to a lower float precision held at float64, and calls whose lower-precision
        #: operands were widened to float64, in the analytic pass (one forward)
        self.casts = 0
        self.widened = 0
        #: id -> (tensor, the lower dtype the forward meant) of this evaluation's held casts
        self._narrowed: dict[int, tuple[torch.Tensor, torch.dtype]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = self._run(func, args, kwargs or {})
        if (self.recording or self.no_grad_held) and not torch.is_grad_enabled() and (
                not _in_autograd_function()):
            out = self._no_grad_result(func, out)
        return out

    def _run(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        name = getattr(func, "__name__", "")
        if kwargs.get("dtype") in _WIDER and name != "view":
            # a factory or a reduction asked for a lower precision (torch.zeros(..., dtype=
            # torch.float32), x.sum(dtype=...)): float64, as the stand-ins
            kwargs = {**kwargs, "dtype": _WIDER[kwargs["dtype"]]}
            self.casts += self.recording
        narrowed = step = None
        if name in _HANDLED:
            if name in ("detach", "detach_") or (
                    name == "__get__" and getattr(func, "__self__", None) is _DATA_GETTER):
                return self._detach(func, args, kwargs)
            if name == "gumbel_softmax":
                return self._gumbel_softmax(*args, **kwargs)
            if name == "fused_moving_avg_obs_fake_quant":
                return self._observed_fake_quantize(*args, **kwargs)
            if name in _FAKE_QUANTS:
                return self._fake_quantize(name, *args, **kwargs)
            if name == "view":
                args = self._view_args(args, kwargs)
            else:
                func, args, kwargs, narrowed, step = self._float64_cast(func, name, args, kwargs)
        if self.recording:
            out = self._call(func, args, kwargs)
        else:
            if name == "embedding" and (self.held_rows or self.no_renorm):
                args, kwargs = self._embedding_args(args, kwargs)
            if step is None and name not in _KINK_NAMES:  # the common case: no kink
                return self._call(func, args, kwargs)
            if name in _POOLS:  # one pooling pass that also returns the winners, not two
                # (the *_with_indices forms take the same arguments and always return both)
                where = 2 if name.startswith("adaptive") else 6
                values, indices = _POOLS[name](*args, **kwargs)
                self.parts.append(indices.detach())
                return (values, indices) if _arg(args, kwargs, where, "return_indices") else values
            if name in _PATTERN_BEFORE:  # (the input, before an in-place call overwrites it)
                pattern = kink_pattern(name, args, kwargs, None)
                out = self._call(func, args, kwargs)
            else:
                out = self._call(func, args, kwargs)
                pattern = out if step else kink_pattern(name, args, kwargs, out)
            if pattern is not None:
                self.parts.append(pattern.detach())
        if narrowed is not None:  # (what the forward meant it to be, for a later view)
            self._narrowed[id(out)] = (out, narrowed)
        return out

    def _call(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``func(*args, **kwargs)``; where torch refuses operands of mixed float precisions
        (a float32 tensor the model keeps as a plain attribute, or a loss closure's class
        weights, against the float64 stand-ins: ``expected m1 and m2 to have the same
        dtype``), again with the lower-precision ones in float64. Not for a call that writes
        into an operand (``x.index_add_(...)``, ``out=``): a widened copy would take the
        write."""
        try:
            return func(*args, **kwargs)
        except RuntimeError:
            if _writes_in_place(getattr(func, "__name__", ""), kwargs):
                raise
            widened = [False]

            def widen(a: Any) -> Any:
                if isinstance(a, torch.Tensor) and a.dtype in _WIDER:
                    widened[0] = True
                    return a.to(_WIDER[a.dtype])
                if isinstance(a, (tuple, list)):
                    return type(a)(widen(v) for v in a)
                return a

            args = tuple(widen(a) for a in args)
            kwargs = {k: widen(v) for k, v in kwargs.items()}
            if not widened[0]:
                raise
        self.widened += self.recording  # (counted in the analytic pass: once per forward)
        return func(*args, **kwargs)

    def _float64_cast(self, func: Callable, name: str, args: tuple, kwargs: dict
                      ) -> tuple[Callable, tuple, dict, torch.dtype | None, bool]:
        """A cast (``x.float()``, ``x.half()``, ``x.to(torch.float32)``, ``x.to(other)``,
        ``x.type(...)``, ``x.type_as(other)``, ``x.long()``, ...) as the recorder runs it:
        ``(func, args, kwargs, meant, step)``. A lower float target is made float64 (the
        whole forward stays in float64: an RMSNorm that computes in ``x.float()``, mixed
        precision code, where float32's round-off would swamp the finite differences);
        ``meant`` is the dtype the forward asked for then (None otherwise), for a later
        ``view(dtype)`` of its bits. ``step``: a float tensor cast to an integer or bool type
        (truncation, a step function: its result is recorded as a kink pattern)."""
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return func, args, kwargs, None, False
        floating = x.is_floating_point()
        if name in ("float", "half", "bfloat16", "cfloat"):
            self.casts += self.recording
            meant = {"float": torch.float32, "half": torch.float16,
                     "cfloat": torch.complex64}.get(name, torch.bfloat16)
            return torch.Tensor.to, (x, _WIDER[meant]), {}, meant, False
        if name in ("int", "long", "short", "char", "byte", "bool"):
            return func, args, kwargs, None, floating
        rest = list(args[1:])
        if name == "type_as":
            other = rest[0] if rest else kwargs.get("other")
            if isinstance(other, torch.Tensor) and other.dtype in _WIDER:
                self.casts += self.recording
                return torch.Tensor.to, (x, _WIDER[other.dtype]), {}, other.dtype, False
            step = (floating and isinstance(other, torch.Tensor)
                    and not other.is_floating_point() and not other.is_complex())
            return func, args, kwargs, None, step
        meant = target = None
        for i, a in enumerate(rest):
            if isinstance(a, torch.dtype):
                target = a
                if a in _WIDER:
                    rest[i], meant = _WIDER[a], a
            elif name == "type" and isinstance(a, (str, type)) and a in _LOW_FLOAT_TYPES:
                rest[i], meant = _LOW_FLOAT_TYPES[a], torch.float32
            elif name == "to" and i == 0 and isinstance(a, torch.Tensor):
                target = a.dtype
                if a.dtype in _WIDER:  # x.to(other): its device, float64
                    rest[i:i + 1], meant = [a.device, _WIDER[a.dtype]], a.dtype
                    break
        target = kwargs.get("dtype", target)
        if kwargs.get("dtype") in _WIDER:
            kwargs, meant = {**kwargs, "dtype": _WIDER[kwargs["dtype"]]}, kwargs["dtype"]
        step = (floating and isinstance(target, torch.dtype) and not target.is_floating_point
                and not target.is_complex)
        if meant is not None:
            self.casts += self.recording
            return func, (x, *rest), kwargs, meant, False
        return func, args, kwargs, None, step

    def _view_args(self, args: tuple, kwargs: dict) -> tuple:
        """``x.view(dtype)`` of a tensor a held cast kept float64: its bits as the forward
        meant them (``h.to(torch.float32).view(torch.int32)``: the float32 bits of h)."""
        x = args[0] if args else None
        held = self._narrowed.get(id(x)) if self._narrowed else None
        if held is None or held[0] is not x:
            return args
        if not (len(args) == 2 and isinstance(args[1], torch.dtype) or "dtype" in kwargs):
            return args  # (a view of a shape: the float64 values serve)
        return (x.to(held[1]), *args[1:])

    def _fake_quantize(self, name: str, x: torch.Tensor, scale: Any, zero_point: Any,
                       *rest: Any) -> torch.Tensor:
        """Fake quantisation as autograd differentiates it: the straight-through estimator.
        The analytic pass quantises (in float64: torch's per-channel kernel takes float32
        scales only) and keeps the point, its quantised value and the in-range mask; every
        pass returns ``q0 + mask·(x − x0)``: the quantised value at the checked point, with
        the slope torch's backward gives it."""
        if not self.recording:
            held = self.quantised.take(x.shape)
            if held is not None:
                point, quantised, inside = held
                return quantised + inside * (x - point)
        if name == "fake_quantize_per_channel_affine":
            axis, low, high = rest
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        else:
            low, high = rest
        scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        zero_point = torch.as_tensor(zero_point, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            q = torch.round(x / scale) + zero_point
            inside = ((q >= low) & (q <= high)).to(x.dtype)
            quantised = (q.clamp(low, high) - zero_point) * scale
        if not self.recording:  # (a path the analytic pass did not take: its value)
            return quantised
        point = x.detach().clone()
        self.quantised.keep((point, quantised, inside), x.shape)
        return quantised + inside * (x - point)

    def _observed_fake_quantize(self, x: torch.Tensor, observer_on: torch.Tensor,
                                fake_quant_on: torch.Tensor, running_min: torch.Tensor,
                                running_max: torch.Tensor, scale: torch.Tensor,
                                zero_point: torch.Tensor, averaging_const: float,
                                quant_min: int, quant_max: int, ch_axis: int,
                                per_row_fake_quant: bool = False,
                                symmetric_quant: bool = False) -> torch.Tensor:
        """``torch.fused_moving_avg_obs_fake_quant`` (the QAT default's fake quantiser): its
        observer updates the range and the quantisation parameters in place, on a float32
        copy of the batch (torch's kernel takes float32 only; the buffers get the result),
        then :meth:`_fake_quantize` with them, straight through."""
        state = [running_min, running_max, scale]
        copies = [t.detach().float() for t in state]
        torch.fused_moving_avg_obs_fake_quant(
            x.detach().float(), observer_on, fake_quant_on, *copies, zero_point,
            averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant,
            symmetric_quant)
        with torch.no_grad():
            for tensor, copy in zip(state, copies):
                if tensor.shape != copy.shape:  # (an observer sizes its range on first use)
                    tensor.resize_(copy.shape)
                tensor.copy_(copy)
        if not int(fake_quant_on.reshape(-1)[0]):
            return x
        if per_row_fake_quant:
            return self._fake_quantize("fake_quantize_per_channel_affine", x, scale,
                                       zero_point, ch_axis, quant_min, quant_max)
        return self._fake_quantize("fake_quantize_per_tensor_affine", x, scale, zero_point,
                                   quant_min, quant_max)

    def _gumbel_softmax(self, logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                        eps: float = 1e-10, dim: int = -1) -> torch.Tensor:
        """``F.gumbel_softmax``, computed here under the recorder: torch runs it as one call,
        which would hide its straight-through ``detach()`` (``hard=True``) and its argmax from
        the recorder. The same draws (the generators are reset before every evaluation), the
        same straight-through estimator, its detached soft sample held and its winners
        recorded as a kink."""
        with self:
            gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format
                                        ).exponential_().log()
            y_soft = ((logits + gumbels) / tau).softmax(dim)
            if not hard:
                return y_soft
            index = y_soft.max(dim, keepdim=True)[1]
            y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format
                                      ).scatter_(dim, index, 1.0)
            return y_hard - y_soft.detach() + y_soft

    def _embedding_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """``F.embedding``'s arguments with the weight's padding row held and its max_norm
        renormalisation skipped, where :func:`check_module` asked for it."""
        weight = _arg(args, kwargs, 1, "weight")
        key = id(weight)
        held = self.held_rows.get(key)
        if held is None and key not in self.no_renorm:  # another embedding
            return args, kwargs
        if held is not None and _arg(args, kwargs, 2, "padding_idx") == held[0]:
            row, value = held
            weight = weight.clone()
            weight[row] = value
        args = (args[0], weight, *args[2:]) if len(args) > 1 else args
        kwargs = {**kwargs, "weight": weight} if "weight" in kwargs else dict(kwargs)
        if key in self.no_renorm:
            if len(args) > 3:
                args = (*args[:3], None, *args[4:])
            else:
                kwargs["max_norm"] = None
        return args, kwargs

    def _detach(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``detach()``, ``.data`` and ``detach_()``: the analytic pass keeps the result,
        the numerical passes get it back (the n-th of them, the n-th kept)."""
        needed = args[0].requires_grad  # (before an in-place detach_ clears it)
        out = func(*args, **kwargs)
        if self.recording:
            self.detached.keep(out.clone() if needed else None, out.shape)
            return out
        held = self.detached.take(out.shape)
        if held is None:  # not a stop-gradient (or another path)
            return out
        if out is args[0]:  # detach_(): the tensor itself holds the value
            return out.copy_(held)
        return held.clone()  # (a copy: the forward may write into what it detached)

    def _no_grad_result(self, func: Callable, out: Any) -> Any:
        """A call the forward made with gradients off (``with torch.no_grad():``,
        ``torch.inference_mode()``: a target computed without gradient, a scale): a
        constant for autograd, so held like a ``detach()`` result. The analytic pass keeps
        each such floating result (in-place calls aside: they write where they write);
        the numerical passes, run with gradients on when there are any (so the forward's
        own switches tell), get the n-th back."""
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()) or (
                _writes_in_place(getattr(func, "__name__", ""), {})):
            return out
        if self.recording:
            self.no_grad_held.keep(out.detach().clone(), out.shape)
            return out
        held = self.no_grad_held.take(out.shape)
        return out if held is None else held.clone()

    def reset(self) -> None:
        self.parts.clear()
        self._narrowed.clear()
        for held in (self.detached, self.no_grad_held, self.quantised):
            held.rewind()

    def fingerprint(self) -> torch.Tensor | None:
        """One float64 0-d tensor for all the recorded patterns (on the first one's device),
        None when none was recorded: their dot product, concatenated, with fixed random
        weights in [0.5, 1.5), so a changed pattern changes it (a flipped rectifier by at
        least 0.5). One ``cat`` and one ``dot``: an evaluation's kinks cost three ops, not
        three per pattern."""
        if not self.parts:
            return None
        flats = [part.reshape(-1) for part in self.parts]
        device = flats[0].device
        try:
            flat = torch.cat(flats)  # (bool, int8 and int64 patterns promote)
        except RuntimeError:  # patterns on several devices
            flat = torch.cat([f.to(device=device, dtype=torch.float64) for f in flats])
        flat = flat.to(torch.float64)
        key = (flat.numel(), device)
        w = self._weights.get(key)
        if w is None:
            w = torch.rand(flat.numel(), generator=self._generator, dtype=torch.float64)
            w = self._weights[key] = (w + 0.5).to(device)
        return torch.dot(flat, w)

    def read(self, loss: torch.Tensor) -> tuple[float, np.ndarray | None]:
        """The loss as a float and the fingerprint of the recorded patterns (one number; None
        when none was recorded: then the engine looks for kinks the recorder cannot see, one
        inside a loss computed in C++, in the one-sided differences), read together. On the
        CPU the fingerprint is exact and costs no op: a hash of the patterns' shapes and
        bytes. Elsewhere it is :meth:`fingerprint`, read with the loss in one device-to-host
        transfer."""
        if not self.parts:
            return loss.item(), None
        if all(part.device.type == "cpu" for part in self.parts):
            key = tuple((part.shape, part.numpy().tobytes()) for part in self.parts)
            return loss.item(), np.array([hash(key)], dtype=np.int64)
        values = torch.stack([loss.to(torch.float64),
                              self.fingerprint().to(loss.device)]).tolist()
        return values[0], np.asarray(values[1:], dtype=np.float64)


_FUNCTION_APPLY = torch.autograd.function.Function.apply.__func__.__code__


def _in_autograd_function() -> bool:
    """Whether the caller runs inside a custom ``torch.autograd.Function``'s forward, which
    autograd runs with gradients off (its ops are no stop-gradient: the Function's backward
    gives their gradient)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _FUNCTION_APPLY:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: left alone), then restored."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cuda_index(device: torch.device) -> int:
    """The index of a CUDA device (the current one for a bare ``"cuda"``)."""
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def _pinned_random_state(device: torch.device, states: _RandomStates) -> Iterator[None]:
    """Fork torch's CPU (and the model's CUDA) generator; on exit numpy's and Python's
    global generators are put back as ``states`` took them
    (:meth:`_RandomStates.restore_globals`), torch's as they were."""
    devices = [_cuda_index(device)] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        states.restore_globals()


class _RandomStates:
    """Puts the random generators back where they were before every evaluation: torch's
    global ones (CPU, and the device's) seeded with ``seed``; numpy's and Python's, and the
    generators the model keeps as attributes (its own noise or dropout source), restored to
    their state at construction (:meth:`restore` leaves the model's as they were). numpy's
    costs ~25 µs to restore, so it is restored only after an evaluation that drew from it
    (its Mersenne Twister's position and first word, read in place, tell)."""

    def __init__(self, seed: int, device: torch.device, model: nn.Module):
        self.seed = seed
        self.cuda = None
        if device.type == "cuda":
            self.cuda = torch.cuda.default_generators[_cuda_index(device)]
        self.np_state = np.random.get_state()
        self.py_state = random.getstate()
        self._np_mark = _numpy_mark()
        self.owned = [(g, g.get_state()) for g in model_generators(model)]

    def reset(self) -> None:
        torch.default_generator.manual_seed(self.seed)
        if self.cuda is not None:
            self.cuda.manual_seed(self.seed)
        self.restore_globals()
        self.restore()

    def restore_globals(self) -> None:
        """numpy's and Python's global generators as they were at construction."""
        if self._np_mark is None or _numpy_mark() != self._np_mark:
            np.random.set_state(self.np_state)
        random.setstate(self.py_state)

    def restore(self) -> None:
        """The model's own generators as they were at construction."""
        for generator, state in self.owned:
            generator.set_state(state)


def _numpy_mark() -> tuple[int, int] | None:
    """(position, first key word) of numpy's global Mersenne Twister, read in place; None
    where that is not possible (then numpy's state is restored every time)."""
    try:
        address = np.random.mtrand._rand._bit_generator.ctypes.state_address
        return (ctypes.c_int.from_address(address + 624 * 4).value,
                ctypes.c_uint32.from_address(address).value)
    except Exception:  # noqa: BLE001 - another numpy layout: fall back to always restoring
        return None


def _embedding_weights(model: nn.Module, named: list[tuple[str, nn.Parameter]]
                       ) -> tuple[list[tuple[str, int]], list[str]]:
    """The checked embedding weights with a padding row, as (name, padding_idx), and those
    with a max_norm, by their ``named_parameters()`` names (tied weights under their first)."""
    padded, renormed = [], []
    for module in model.modules():
        name = _weight_name(module, named) if isinstance(module, nn.Embedding) else None
        if name is None:
            continue
        if module.padding_idx is not None:
            padded.append((name, module.padding_idx))
        if module.max_norm is not None:
            renormed.append(name)
    return padded, renormed


def _buffer_slots(model: nn.Module, names: list[str]) -> dict[str, tuple[nn.Module, str]]:
    """Name -> (owning module, attribute) of each named buffer."""
    slots = {}
    for name in names:
        prefix, _, attr = name.rpartition(".")
        slots[name] = (model.get_submodule(prefix), attr)
    return slots


def _embedding_gradient_flags(model: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(embedding, flag, False) for each gradient option an embedding has switched on:
    ``sparse`` (its gradient is then checked dense) and ``scale_grad_by_freq`` (each row's
    gradient divided by its count in the batch: by definition not the loss's gradient, so
    it is switched off for the check). For :func:`_attributes`."""
    return [(m, flag, False) for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            for flag in ("scale_grad_by_freq", "sparse") if getattr(m, flag)]


def _weight_name(module: nn.Module, named: list[tuple[str, nn.Parameter]]) -> str | None:
    """The name in ``named`` of a module's own ``weight``, or None (not checked). Read from
    ``_parameters``: reading a parametrised weight would compute it, and a spectral norm's
    power iteration would write the model's u and v."""
    weight = module._parameters.get("weight")
    return next((n for n, p in named if p is weight), None)


def _power_iterations(model: nn.Module, buffers: dict[str, torch.Tensor]
                      ) -> list[tuple[nn.Module, list[str]]]:
    """Spectral normalisations that run their power iteration (training mode), both
    ``torch.nn.utils.parametrizations.spectral_norm`` and the older hook-based
    ``torch.nn.utils.spectral_norm``: (the module whose training flag switches the iteration,
    the full names of its ``u`` and ``v`` buffers)."""
    from torch.nn.utils.parametrizations import _SpectralNorm
    from torch.nn.utils.spectral_norm import SpectralNorm

    found = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if not module.training:
            continue
        attrs = ["_u", "_v"] if isinstance(module, _SpectralNorm) else []
        attrs += [f"{hook.name}{end}" for hook in module._forward_pre_hooks.values()
                  if isinstance(hook, SpectralNorm) for end in ("_u", "_v")]
        names = [dot + attr for attr in attrs if dot + attr in buffers]
        if names:
            found.append((module, names))
    return found


@contextlib.contextmanager
def _attributes(changes: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """``setattr(obj, name, value)`` for each change, each put back on exit."""
    before = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(before):
            setattr(obj, name, value)


def _compiled_code_eager() -> contextlib.AbstractContextManager:
    """torch.compile'd code inside the model (a compiled submodule) runs eagerly: compiling
    its float64 variant under the kink recorder would cost seconds and check dynamo's trace.
    torch >= 2.6 (``torch.compiler.set_stance``); before, such code compiles anew."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _default_float64() -> Iterator[None]:
    """torch's default dtype float64 (tensors a forward makes, ``torch.zeros(...)`` for an
    initial hidden state, match the float64 stand-ins), then restored."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _shape_text(value: Any) -> str:
    """A tensor's shape, or the shapes in a tuple, list or dict of them, as text."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return f"({', '.join(_shape_text(v) for v in value)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shape_text(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _gradients_by_backward(loss: torch.Tensor, leaves: list[torch.Tensor],
                           others: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """What ``torch.autograd.grad(loss, leaves)`` gives, through ``loss.backward()``: the
    leaves' ``.grad`` taken and cleared, every other leaf's in ``others`` put back."""
    kept = [(t, t.grad) for t in others if t.is_leaf and t.requires_grad]
    for leaf in leaves:
        leaf.grad = None
    try:
        loss.backward()
        return [leaf.grad for leaf in leaves]
    finally:
        for leaf in leaves:
            leaf.grad = None
        for t, grad in kept:
            t.grad = grad


def check_module(model: nn.Module, loss_fn: Any, inputs: Any, targets: Any, *, seed: int = 0,
                 **options: Any):
    """Gradient-check every trainable parameter of ``model`` for the loss
    ``loss_fn(model(inputs), targets)`` (a scalar) with centered finite differences.

    Runs in float64 on copies of the parameters and buffers, whatever the model's dtype and
    device, in the model's current mode (training mode: dropout active with masks fixed by
    ``seed``, BatchNorm on batch statistics, its running statistics untouched). Kinks are
    tracked exactly through every torch call of the forward and the loss (rectifiers,
    clamps, max/min, max-pooling, sorting, comparisons, hinge and L1 losses: see
    :func:`kink_pattern`), modules and functional code alike: a probe whose ±h evaluations
    fall on different sides of a kink is retried at a smaller step, then judged one-sided on
    the side that keeps the checked point's pattern (a unit sitting exactly on its kink: a
    zero bias fed a zero input), else set aside.

    Args:
        model: the module; it comes back untouched (parameters, buffers, ``.grad`` fields,
            training flag) and the global torch/CUDA/numpy/Python random states too.
        loss_fn: ``loss_fn(outputs, targets)`` -> 0-d tensor (a loss module is copied and
            cast to float64).
        inputs, targets: a few examples (tensors or numpy arrays); for a forward that takes
            several arguments, ``inputs`` is a :class:`~trainwatch.torch.ForwardInputs`
            (``model(*args, **kwargs)``).
        seed: seeds dropout and the engine's probe sampling.
        **options: passed to :func:`trainwatch.gradcheck.check_gradients` (``h``,
            ``coordinates``, thresholds, ...).

    Returns:
        a :class:`trainwatch.gradcheck.GradCheckReport` whose ``params`` are keyed by the
        ``named_parameters()`` names (those that require a gradient), in that order.

    Raises:
        whatever ``loss_fn(model(inputs), targets)`` raised (with a note naming the outputs'
        and targets' shapes, on Python 3.11+), or ValueError if it gave no scalar.
    """
    try:
        return _check_module(model, loss_fn, inputs, targets, seed=seed, **options)
    except LossFunctionError as exc:
        cause = exc.__cause__
        if cause is None:
            raise ValueError(str(exc)) from None
        if hasattr(cause, "add_note"):
            cause.add_note(f"trainwatch check_module: {exc}")
        raise cause from cause.__cause__  # (as the loss function raised it)


def _check_module(model: nn.Module, loss_fn: Any, inputs: Any, targets: Any, *,
                   seed: int = 0, **options: Any):
    """:func:`check_module`, but a ``loss_fn`` that raises on the model's outputs and the
    targets (or gives no scalar) raises :class:`~trainwatch.gradcheck.LossFunctionError`, so
    a caller can tell the loss function's failure from the model's (as ``GradientCheck``
    does)."""
    from trainwatch.gradcheck import check_gradients

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
    for name, value in (("inputs", inputs), ("targets", targets)):
        if value is None:
            raise TypeError(f"{name}: expected a few examples (tensors or numpy arrays), got "
                            "None")
    device = model_device(model)
    if device.type == "mps":  # no float64 there: check on the CPU
        device = torch.device("cpu")
    if any(nn.parameter.is_lazy(p) for p in model.parameters()):
        raise ValueError("model: has uninitialised lazy parameters (LazyLinear, LazyConv2d, "
                         "...): run one forward pass before checking it")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: has no parameter that requires a gradient")
    names = [n for n, _ in named]
    frozen = {n: _float64_copy(p) for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: _float64_copy(b) for n, b in model.named_buffers()}
    # (a complex tensor is checked as its (real, imaginary) pairs, torch.view_as_real: the
    # gradient PyTorch gives it is d loss/d real + i d loss/d imaginary)
    complex_names = [n for n, p in named if p.is_complex()]
    base = {n: (torch.view_as_real(p.detach().to("cpu", torch.complex128)) if p.is_complex()
                else p.detach().to(device="cpu", dtype=torch.float64)).numpy().copy()
            for n, p in named}
    x = _to_float64(inputs, device)
    t = _to_float64(targets, device)
    criterion = loss_fn
    if isinstance(loss_fn, nn.Module) and any(
            t.is_floating_point() for t in itertools.chain(loss_fn.parameters(),
                                                           loss_fn.buffers())):
        criterion = copy.deepcopy(loss_fn).to(torch.float64)  # (e.g. class weights)

    # The float64 stand-ins the model runs with for the whole check (swapped in once, as
    # functional_call would for one call): trainable ones are leaves the engine's values are
    # copied into; buffers are reset from `buffers` before every evaluation (BatchNorm
    # updates its running statistics in place), and put back if the forward reassigned them.
    leaves = {n: torch.tensor(base[n], device=device, requires_grad=True) for n in names}
    working = {n: b.clone() for n, b in buffers.items()}
    slots = _buffer_slots(model, list(working))
    with torch.enable_grad():  # (a complex stand-in is a view of its real leaf, tracked)
        trainable = {n: torch.view_as_complex(leaf) if n in complex_names else leaf
                     for n, leaf in leaves.items()}
    stand_ins = {**trainable, **frozen, **working}
    kinks = KinkRecorder(seed)
    # Embeddings, as PyTorch defines their gradients: the padding_idx row gets none from the
    # lookup, so the finite differences hold it in the lookups too (its other uses, a tied
    # output layer, still count); max_norm renormalises looked-up rows in place, outside
    # autograd, so the check runs at the renormalised point (the analytic pass renormalises
    # the stand-ins) with the renormalisation skipped in the finite differences.
    padded, renormed = _embedding_weights(model, named)
    kinks.no_renorm.update(id(leaves[name]) for name in renormed)
    notes = [f"{name}: row {pad} (the embedding's padding_idx) is held in the embedding "
             "lookups of the finite differences: PyTorch gives it no gradient from them"
             for name, pad in padded]
    notes += [f"{name}: complex, checked as its (real, imaginary) pairs (an entry's last "
              "index: 0 the real part, 1 the imaginary)" for name in complex_names]
    notes += [f"{name}: checked where the embedding's max_norm renormalisation left it, "
              "which the finite differences then skip (autograd does not differentiate it)"
              for name in renormed]
    embedding_flags = _embedding_gradient_flags(model)
    notes += [f"{_weight_name(m, named) or type(m).__name__}: checked without "
              "scale_grad_by_freq (which divides each row's gradient by its count in the batch)"
              for m, flag, _ in embedding_flags if flag == "scale_grad_by_freq"]
    # Spectral normalisation's power iteration updates u and v in place, outside autograd:
    # the finite differences hold them where the analytic pass left them (no iteration).
    power = _power_iterations(model, working)
    notes += [f"{uv[0].rpartition('.')[0] or 'the model'}: spectral normalisation's power "
              "iteration is held at the analytic pass's u and v in the finite differences "
              "(autograd does not differentiate it)" for _, uv in power]
    generators = _RandomStates(seed, device, model)
    # a torch.compile'd model runs its module eagerly (compiled again in float64 under the
    # kink recorder it would cost a compilation, seconds, and check dynamo's trace of the
    # model), a DistributedDataParallel one its module alone (no collectives the other
    # processes never join); the parameters keep the wrapper's names
    forward = unwrapped(model)

    def evaluate() -> torch.Tensor:
        if working:
            for now, then in zip(working.values(), buffers.values()):
                if now.shape != then.shape:  # (a forward that resizes a buffer in place)
                    now.resize_(then.shape)
            torch._foreach_copy_(list(working.values()), list(buffers.values()))
            for (owner, attr), tensor in zip(slots.values(), working.values()):
                if owner._buffers.get(attr) is not tensor:
                    owner._buffers[attr] = tensor
        generators.reset()
        outputs = x.call(forward) if isinstance(x, ForwardInputs) else forward(x)
        try:
            loss = criterion(outputs, t)
        except Exception as exc:
            raise LossFunctionError(
                f"loss_fn(outputs, targets) raised {type(exc).__name__}: {exc} (outputs "
                f"{_shape_text(outputs)}, targets {_shape_text(t)})") from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise LossFunctionError("loss_fn: must return a scalar tensor, returned "
                                    f"{_shape_text(loss)}")
        return loss.reshape(())

    # On the CPU a stand-in shares its memory with the engine's array (the engine writes
    # its probes into its arrays in place): only an array the engine replaced is bound anew.
    shared: dict[str, np.ndarray] = {}

    def numerical_loss(params: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
        with torch.no_grad():
            for n in names:
                given = params[n]
                if shared.get(n) is given:
                    continue
                a = np.asarray(given, dtype=np.float64)
                if (device.type == "cpu" and a is given and a.flags.writeable
                        and n not in complex_names):  # (a view keeps its leaf's memory)
                    leaves[n].set_(torch.from_numpy(a))
                    shared[n] = a
                else:
                    leaves[n].copy_(torch.from_numpy(a if a.flags.writeable else a.copy()))
            kinks.reset()
        # (gradients on only where the forward switches them off itself: then the recorder
        # tells its gradient-free calls apart, whose results it holds)
        with torch.set_grad_enabled(bool(kinks.no_grad_held)), kinks:
            loss = evaluate()
        return kinks.read(loss.detach())

    # tensors the modules keep as plain attributes, which a forward may rebind (the
    # hook-based spectral_norm and weight_norm set the computed weight there): put back
    tensor_attributes = [(m, k, v) for m in model.modules() for k, v in vars(m).items()
                         if isinstance(v, torch.Tensor)]
    small = sum(p.numel() for _, p in named) <= SINGLE_THREAD_PARAMETERS
    threads = 1 if device.type == "cpu" and small else None
    try:
        with (suspended(), _pinned_random_state(device, generators), _intra_op_threads(threads),
              _default_float64(), _compiled_code_eager(),
              _attributes(embedding_flags + tensor_attributes),
              _reparametrize_module(model, stand_ins, tie_weights=True)):
            started = time.perf_counter()
            kinks.recording = True
            with torch.enable_grad(), kinks:
                loss = evaluate()
            kinks.recording = False
            with torch.enable_grad():
                try:  # (the graph kept for the fallback: freed with the loss, just below)
                    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True,
                                                retain_graph=True)
                except RuntimeError as exc:
                    if "use_reentrant" not in str(exc):
                        raise
                    # reentrant activation checkpointing (torch.utils.checkpoint with
                    # use_reentrant=True) differentiates through .backward() only
                    others = [*model.parameters(), *(v for _, _, v in tensor_attributes)]
                    grads = _gradients_by_backward(loss, list(leaves.values()), others)
            analytic = {n: (np.zeros_like(base[n]) if g is None
                            else g.detach().to(device="cpu", dtype=torch.float64).to_dense()
                            .numpy()) for n, g in zip(names, grads)}
            del loss, grads
            if options.get("max_seconds") is not None:
                # an evaluation is a forward pass, about a third of the analytic pass: a
                # check that cannot fit its time limit stops now, not after 3 evaluations
                options = {"evaluation_seconds": (time.perf_counter() - started) / 3,
                           **options}
            for name in renormed:  # the point the analytic pass renormalised
                base[name] = leaves[name].detach().to(device="cpu",
                                                      dtype=torch.float64).numpy().copy()
            for name, pad in padded:  # (after the renormalisation, which may touch the row)
                kinks.held_rows[id(leaves[name])] = (pad, leaves[name][pad].detach().clone())
            for _, held in power:  # the u, v the analytic pass iterated to
                for name in held:
                    owner, attr = slots[name]
                    buffers[name].copy_(owner._buffers[attr])
            with (_attributes([(module, "training", False) for module, _ in power]),
                  warnings.catch_warnings()):
                # (torch.utils.checkpoint's, run without gradients as these passes are)
                warnings.filterwarnings("ignore", "None of the inputs have requires_grad",
                                        UserWarning)
                report = check_gradients(numerical_loss, base, analytic, seed=seed, **options)
            held = sum(value is not None for value, _ in kinks.detached.kept)
            if held:
                notes.append(f"{held} detach() result(s) of the forward (stop-gradients) are held "
                             "at the analytic pass's values in the finite differences, as "
                             "autograd holds them")
            if kinks.quantised:
                notes.append(f"{len(kinks.quantised)} fake quantisation(s) of the forward are "
                             "differentiated as autograd differentiates them (straight "
                             "through inside the quantisation range, 0 outside): the finite "
                             "differences see the quantised value plus that slope")
            if kinks.no_grad_held:
                notes.append(f"{len(kinks.no_grad_held)} result(s) the forward computed with "
                             "gradients off (torch.no_grad(), inference_mode) are held at the "
                             "analytic pass's values in the finite differences, as autograd "
                             "holds them")
            if kinks.casts:
                notes.append(f"{kinks.casts} cast(s) of the forward to a lower float precision "
                             "(x.float(), .half(), .to(torch.float32), ...) kept float64 "
                             "(complex128 for complex): the check runs the model's math in "
                             "double precision throughout")
            if kinks.widened:
                notes.append(f"{kinks.widened} call(s) of the forward mixed the float64 "
                             "stand-ins with lower-precision tensors the check does not copy "
                             "(a plain tensor attribute, a loss closure's weights): those "
                             "were widened to float64")
            report.notes += notes
            return report
    finally:
        kinks.reset()
        generators.restore()
