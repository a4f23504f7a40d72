"""The backend for ``torch.nn.Module`` models: every callback works on a torch model through it.

Everything is batched so a GPU model costs at most one device-to-host transfer per call:
norms come from ``torch._foreach_norm`` stacked into one tensor, the update snapshot is a
``torch._foreach_copy_`` into buffers allocated once, histograms are bucketed on the device
and only their counts travel. Nothing here runs (or synchronises) unless a callback asks.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainwatch.core.backend import (
    SATURATING_KINDS,
    ActivationStats,
    Backend,
    LayerInfo,
    TensorNorms,
    batch_length,
)
from trainwatch.core.checks import with_methods
from trainwatch.outputs.base import HistogramData
from trainwatch.torch.inputs import ForwardInputs, map_arrays

logger = logging.getLogger("trainwatch")

# -- suspension: trainwatch's own forward passes (gradient checks, evaluation) must not be seen
# by trainwatch's hooks (activation capture, the watcher's batch detection).

_suspend_depth = 0


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Within this block trainwatch's module hooks ignore every forward pass."""
    global _suspend_depth
    _suspend_depth += 1
    try:
        yield
    finally:
        _suspend_depth -= 1


def in_own_pass() -> bool:
    """True while one of trainwatch's own passes runs (a gradient check, an evaluation of
    the step-wise accuracy gap): they go through the model's forward hooks, yours too; a hook
    that records what the loop feeds the model can skip them::

        def record(module, args, output):
            if not trainwatch.torch.in_own_pass():
                seen.append(output.detach())
    """
    return _suspend_depth > 0


# -- layer kinds -------------------------------------------------------------------------------

_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.Linear, nn.LazyLinear), "dense"),
    ((nn.Conv2d, nn.LazyConv2d), "conv2d"),
    ((nn.ReLU, nn.ReLU6), "relu"),
    ((nn.LeakyReLU, nn.PReLU, nn.RReLU), "leaky_relu"),
    ((nn.Tanh, nn.Hardtanh), "tanh"),
    ((nn.Sigmoid, nn.Hardsigmoid), "sigmoid"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
      nn.AdaptiveMaxPool3d), "maxpool"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "dropout"),
    ((nn.modules.batchnorm._BatchNorm,), "batchnorm"),
    ((nn.Flatten,), "flatten"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
)

#: loss class -> trainwatch loss kind
_LOSS_KINDS: tuple[tuple[type, str], ...] = (
    (nn.CrossEntropyLoss, "softmax_cross_entropy"),
    (nn.MultiMarginLoss, "multiclass_svm"),
    (nn.BCEWithLogitsLoss, "sigmoid_bce"),
    (nn.MSELoss, "mse"),
)


def layer_kind(module: nn.Module) -> str:
    """The :class:`~trainwatch.LayerInfo` kind of a torch module (``"other"`` if unknown)."""
    for types, kind in _KINDS:
        if isinstance(module, types):
            return kind
    return "other"


def loss_kind(loss_fn: Any) -> str | None:
    """The trainwatch loss kind of a torch loss module, or None."""
    for cls, kind in _LOSS_KINDS:
        if isinstance(loss_fn, cls):
            return kind
    return None


#: wrappers whose wrapped module is the model: torch.compile's (``_orig_mod``), data
#: parallelism's (``module``)
_WRAPPERS = {"OptimizedModule": "_orig_mod", "DistributedDataParallel": "module",
             "DataParallel": "module"}


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``'s and data parallelism's wrappers (any nesting),
    or ``model`` itself. trainwatch's own passes run it: through a compiled wrapper they
    would compile again, through ``DistributedDataParallel`` they would start collectives
    (buffer broadcasts, gradient all-reduces) the other processes never join."""
    while True:
        inner = getattr(model, _WRAPPERS.get(type(model).__name__, ""), None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


#: whether dynamo is tracing the code that calls it (torch >= 2.3; before, never asked):
#: trainwatch's hooks do nothing there (traced side effects would break the graph, or fail a
#: fullgraph=True compile)
is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def compiled_modules(model: nn.Module) -> set[int]:
    """ids of the modules that run inside ``torch.compile``'d code: those under a compiled
    wrapper (``torch.compile(module)``) or a module compiled in place (``module.compile()``),
    the whole model if it is one."""
    ids: set[int] = set()
    for module in model.modules():
        if id(module) not in ids and (type(module).__name__ == "OptimizedModule" or getattr(
                module, "_compiled_call_impl", None) is not None):
            ids.update(id(m) for m in module.modules())
    return ids


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module without children, in registration order (the root
    itself when it has none, named after its class)."""
    out = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            out.append((name or type(module).__name__.lower(), module))
    return out


# -- tensor helpers ------------------------------------------------------------------------------

#: CPU tensors take histogram short paths that read values on the host (free on a CPU; a
#: GPU never does). False runs the device path everywhere (tests count its transfers).
CPU_SHORT_PATH = True


def _host_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    if any(t.is_complex() for t in tensors):
        return torch.complex128
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Host numpy copies of ``tensors`` (float32, or float64 if any is, complex128 if any is
    complex), one transfer."""
    if not tensors:
        return []
    dtype = _host_dtype(tensors)
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])
    host = flat.cpu().numpy()
    if device.type == "cpu" and len(tensors) == 1 and tensors[0].dtype == dtype:
        host = host.copy()  # a lone CPU tensor: cat may have returned a view of it
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(host[start:start + n].reshape(tuple(t.shape)))
        start += n
    return out


def acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for accumulating on ``device``, float32 where float64 is missing (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def stack_scalars(scalars: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One-element tensors as one vector: one ``stack`` (dtypes promote) where they share a
    device, else each moved to ``device`` in its accumulation dtype first."""
    scalars = [s if s.dim() == 0 else s.reshape(()) for s in scalars]
    try:
        return torch.stack(scalars)
    except RuntimeError:  # on several devices
        dtype = acc_dtype(device)
        return torch.stack([s.to(device=device, dtype=dtype) for s in scalars])


def _detached_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of a captured output or gradient (a later in-place op cannot alter it)."""
    return t.detach().clone()


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t.coalesce().values() if t.is_sparse else t


_NARROW_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32})


def _norms(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norms of ``tensors`` as 0-d tensors, one batched op per kind: float32 for float32
    and lower precisions (half and bfloat16 accumulate in float32), the tensor's own
    precision for float64 (which torch will not narrow); call under ``torch.no_grad()``."""
    tensors = [_dense(t) for t in tensors]
    narrow = [i for i, t in enumerate(tensors) if t.dtype in _NARROW_FLOATS]
    if len(narrow) == len(tensors):  # (the common case)
        return list(torch._foreach_norm(tensors, 2, dtype=torch.float32)) if tensors else []
    wide = [i for i, t in enumerate(tensors) if t.dtype not in _NARROW_FLOATS]
    norms: list[Any] = [None] * len(tensors)
    for where, dtype in ((narrow, torch.float32), (wide, None)):
        if where:
            for i, n in zip(where, torch._foreach_norm([tensors[i] for i in where], 2,
                                                       dtype=dtype)):
                norms[i] = n
    return norms


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def as_tensor(value: Any, device: torch.device, float_dtype: torch.dtype) -> Any:
    """A batch on ``device``: numpy floats become ``float_dtype``, numpy integers int64;
    tensors only move device; tuples/lists/dicts (and ForwardInputs) are converted item by
    item."""
    def convert(a: Any) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.to(device=device, non_blocking=True)
        if np.issubdtype(a.dtype, np.floating):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=float_dtype, device=device)
        if np.issubdtype(a.dtype, np.integer):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64, device=device)
        if a.dtype == np.bool_:
            return torch.as_tensor(a, device=device)
        raise TypeError(f"cannot convert a numpy array of {a.dtype} to a tensor")

    return map_arrays(convert, value)


class CopySafeHook:
    """A hook trainwatch puts on the user's model or optimizer: it calls ``fn`` while the
    original lives, and becomes inert in a copy. ``copy.deepcopy(model)`` (an EMA model, a
    best-model snapshot), ``pickle`` and ``torch.save(model)`` copy a module's hooks; a bound
    method or closure of trainwatch's would drag the watcher (its writers, locks, threads)
    along and fail, or make the copy report to the original's watcher. The copy's hook does
    nothing (the copy is not watched) and, called once, takes itself off the copy, which
    then runs without trainwatch's hooks."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any] | None):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        if self.fn is not None:
            return self.fn(*args)
        _unhook(args[0], self)  # (a copy's: its module or optimizer comes first)
        return None

    def __deepcopy__(self, memo: dict) -> CopySafeHook:
        return CopySafeHook(None)

    def __reduce__(self) -> tuple:
        return (CopySafeHook, (None,))


#: where modules and optimizers keep their hooks, and the flags torch keys by a hook's id
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_optimizer_step_pre_hooks",
               "_optimizer_step_post_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs")


def _unhook(owner: Any, hook: CopySafeHook) -> None:
    """Remove ``hook`` from a module's or optimizer's hooks, as its handle would."""
    for name in _HOOK_DICTS:
        hooks = getattr(owner, name, None)
        if not isinstance(hooks, dict):
            continue
        for key in [k for k, v in hooks.items() if v is hook]:
            del hooks[key]
            for flag in _HOOK_FLAGS:
                flags = getattr(owner, flag, None)
                if isinstance(flags, dict):
                    flags.pop(key, None)


def output_scores(output: Any) -> torch.Tensor | None:
    """The class scores in a model's output: a tensor as it is; of several outputs (a tuple
    ``(logits, aux_loss)``, a dict or a HuggingFace-style output), the ``logits`` entry, else
    the first tensor with a batch dimension; None when there is none."""
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        candidates = [output["logits"]] if "logits" in output else list(output.values())
    elif isinstance(output, (tuple, list)):
        candidates = list(output)
    else:
        return None
    for candidate in candidates:
        scores = output_scores(candidate)
        if scores is not None and scores.ndim >= 1:
            return scores
    return None


def model_generators(model: nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a model keeps as module attributes (its own dropout
    or noise source), each once."""
    # (type.__instancecheck__: torch.Generator's metaclass makes a plain isinstance cost
    # ~1 µs for every attribute that is not a generator)
    owned = {id(v): v for m in model.modules() for v in vars(m).values()
             if type.__instancecheck__(torch.Generator, v)}
    return list(owned.values())


@contextlib.contextmanager
def random_states_kept(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Every random generator a forward of ``model`` may draw from, as it was on exit:
    torch's CPU generator and ``device``'s (forked), numpy's and Python's global ones, and
    the generators the model keeps as attributes."""
    devices = [device.index or 0] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    owned = [(g, g.get_state()) for g in model_generators(model)]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
        for generator, state in owned:
            generator.set_state(state)


def _host_copy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    """A host numpy copy of a tensor or array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        # (numpy has no bfloat16: float32 holds its values exactly)
        return (a.float() if a.dtype == torch.bfloat16 else a).numpy().copy()
    return a.copy()


def _forward_inputs(inputs: Any) -> Any:
    """A batch as the model takes it: a tuple (a Trainer batch of several inputs) is the
    forward's positional arguments."""
    return ForwardInputs(inputs) if isinstance(inputs, tuple) else inputs


def _call(model: nn.Module, inputs: Any) -> Any:
    inputs = _forward_inputs(inputs)
    return inputs.call(model) if isinstance(inputs, ForwardInputs) else model(inputs)


class TorchBackend(Backend):
    """Lets callbacks see a ``torch.nn.Module``, its loss and its optimizer.

    Args:
        model: the network.
        loss: the loss module or function, ``loss(outputs, targets)`` -> scalar (needed by
            :meth:`evaluate`, :meth:`check_gradients` and the Trainer primitives).
        optimizer: a ``torch.optim.Optimizer`` (needed by the Trainer and :meth:`state_dict`).

    Parameters are the model's ``named_parameters()`` that require a gradient. Activations
    are the outputs of the leaf modules (``layers()``), recorded by forward hooks that exist
    only while :meth:`capture_activations` is on (other steps run the model hook-free); the
    gradients w.r.t. those outputs come from tensor hooks registered during that forward.
    Captured tensors are copies (an in-place op after a layer cannot alter them): capturing
    holds one extra copy of every leaf output and of its gradient until the next capture.
    """

    framework = "torch"

    def __init__(self, model: nn.Module, loss: Any = None, optimizer: Any = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        with_methods("loss_fn", loss, ("__call__",),
                     "a callable loss_fn(outputs, targets) (e.g. nn.CrossEntropyLoss())")
        with_methods("optimizer", optimizer, ("step",),
                     "a torch.optim.Optimizer (or an object with step())")
        groups = getattr(optimizer, "param_groups", None) or []
        trained = {id(p) for group in groups for p in group.get("params", ())}
        if trained and not any(id(p) in trained for p in model.parameters()):
            raise ValueError("optimizer: trains none of the model's parameters (an optimizer "
                             "made for another model?); pass the one that trains this model")
        self.model = model
        # torch.compile's and data parallelism's wrappers: the loop calls them, but tensors
        # and layers are named after the module inside (no "_orig_mod." or "module." prefix)
        # and trainwatch's own passes (gradient checks, evaluations) run that module: see
        # unwrapped()
        self._module = unwrapped(model)
        self.loss_fn = loss
        self.optimizer = optimizer
        # every parameter; those that require a gradient are the tracked ones, re-read at
        # each measurement (a layer frozen or unfrozen mid-run: _follow_trainable)
        self._all = list(self._module.named_parameters())
        self._trainable: tuple[bool, ...] | None = None
        self._before: list[torch.Tensor] | None = None
        self._follow_trainable()
        self._device = self._params[0].device if self._params else model_device(model)
        self._on_cpu = self._device.type == "cpu"  # asked every step: device.type costs ~2 µs
        # layers inside compiled code keep no hooks: dynamo would trace them, breaking the
        # graph there (compiled again, in pieces with other kernels: training not
        # bit-identical) or failing a fullgraph=True compile
        compiled = compiled_modules(model)
        leaves = leaf_modules(self._module)
        self._leaves = [(name, m) for name, m in leaves if id(m) not in compiled]
        if len(self._leaves) < len(leaves):
            self.uncaptured_layers = (
                f"{len(leaves) - len(self._leaves)} of the model's {len(leaves)} layers run "
                "inside torch.compile'd code, where hooks reading their outputs would break "
                "the compiled graph: they have no activation histograms or dead/saturated "
                "unit statistics (weights and gradients are watched as usual)")
        self._layers = [LayerInfo(name, layer_kind(m), id(m) not in compiled)
                        for name, m in leaves]
        self._handles: list[Any] = []
        self._capture = False
        self._acts: dict[str, torch.Tensor] = {}
        self._act_grads: dict[str, torch.Tensor] = {}
        self._last_loss: torch.Tensor | None = None
        self._update_open = False
        self._update_norms: dict[str, tuple[Any, Any, Any]] | None = None  # the last step's
        #: id -> tensor of the parameters and buffers a forward writes in place (evaluate)
        self._written: dict[int, torch.Tensor] | None = None

    @property
    def loss_kind(self) -> str | None:
        return loss_kind(self.loss_fn)

    def learning_rate(self) -> float | None:
        groups = getattr(self.optimizer, "param_groups", None)
        rates = [g.get("lr") for g in groups or ()]
        rates = [float(r) for r in rates if isinstance(r, (int, float, torch.Tensor))]
        return max(rates) if rates else None

    def loss_floor(self, num_classes: int | None) -> float:
        smoothing = getattr(self.loss_fn, "label_smoothing", 0.0)
        if not (isinstance(self.loss_fn, nn.CrossEntropyLoss) and smoothing > 0
                and num_classes and num_classes >= 2):
            return 0.0
        # the entropy of the smoothed targets: 1 - ε + ε/C on the label, ε/C on the others
        other = smoothing / num_classes
        label = 1.0 - smoothing + other
        return -label * math.log(label) - (num_classes - 1) * other * math.log(other)

    @property
    def first_order_optimizer(self) -> bool:
        return not isinstance(self.optimizer, torch.optim.LBFGS)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return self._device

    # -- parameters and gradients ------------------------------------------------------------

    def _follow_trainable(self) -> None:
        """Track the parameters that require a gradient now (the tensors every measurement
        covers): a layer unfrozen mid-run is watched from then on, one frozen is left out
        (its gradient is None, not zeros). Called at each measurement's start: a scan of
        ``requires_grad`` flags, the lists rebuilt only when one changed."""
        trainable = tuple(p.requires_grad for _, p in self._all)
        if trainable == self._trainable:
            return
        self._trainable = trainable
        named = [(n, p) for (n, p), t in zip(self._all, trainable) if t]
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._before = None  # (the update snapshot follows the tracked tensors)

    def parameter_names(self) -> list[str]:
        self._follow_trainable()
        return list(self._names)

    def _named(self, include_frozen: bool) -> list[tuple[str, nn.Parameter]]:
        """The tracked (trainable) parameters, or with ``include_frozen`` all of them."""
        if include_frozen:
            return self._all
        self._follow_trainable()
        return list(zip(self._names, self._params))

    def parameters(self, names: Collection[str] | None = None, *,
                   include_frozen: bool = False) -> dict[str, np.ndarray]:
        chosen = [(n, p) for n, p in self._named(include_frozen) if names is None or n in names]
        return dict(zip([n for n, _ in chosen], to_host([p for _, p in chosen])))

    def parameter_shapes(self, *, include_frozen: bool = False) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self._named(include_frozen)}

    def _grads_or_zeros(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p) if p.grad is None else _dense(p.grad) for p in self._params]

    def gradients(self) -> dict[str, np.ndarray]:
        self._follow_trainable()
        return dict(zip(self._names, to_host(self._grads_or_zeros())))

    def _stack_norms(self, groups: Sequence[Sequence[torch.Tensor]]) -> list[list[float]]:
        """Stack every group's 0-d norms into one vector, transfer it once, split it again."""
        flat = [n for g in groups for n in g]
        if not flat:
            return [[] for _ in groups]
        values = stack_scalars(flat, self._device).tolist()
        out, start = [], 0
        for g in groups:
            out.append(values[start:start + len(g)])
            start += len(g)
        return out

    def _with_grad(self) -> list[int]:
        """Indices of the parameters that have a gradient."""
        return [i for i, p in enumerate(self._params) if p.grad is not None]

    def _grad_norm_tensors(self) -> tuple[list[torch.Tensor], list[int]]:
        have = self._with_grad()
        return _norms([self._params[i].grad for i in have]), have

    def _expand(self, values: list[Any], have: list[int]) -> list[Any]:
        """Per-tensor ``values`` of the tensors ``have`` (indices), 0.0 for the others."""
        full: list[Any] = [0.0] * len(self._params)
        for i, v in zip(have, values):
            full[i] = v
        return full

    def norms(self) -> dict[str, TensorNorms]:
        self._follow_trainable()
        with torch.no_grad():
            w = _norms(self._params)
            g, have = self._grad_norm_tensors()
            wv, gv = self._stack_norms([w, g])
        gv = self._expand(gv, have)
        return {n: TensorNorms(a, b) for n, a, b in zip(self._names, wv, gv)}

    def begin_update(self) -> None:
        if self._update_open:  # one snapshot per step, shared by every monitor of the step
            return
        self._follow_trainable()  # (not again before end_update: the same tensors)
        self._update_norms = None
        with torch.no_grad():
            if self._before is None or any(
                b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
                for b, p in zip(self._before, self._params)
            ):
                self._before = [torch.empty_like(p, memory_format=torch.preserve_format)
                                for p in self._params]
            if self._params:
                torch._foreach_copy_(self._before, self._params)
        self._update_open = True

    def end_update_scalars(self) -> dict[str, tuple[Any, Any, Any]]:
        if not self._update_open and self._update_norms is not None:
            return dict(self._update_norms)  # the step's measurement, taken by another monitor
        if self._before is None or not self._update_open:
            raise RuntimeError("end_update() called without begin_update()")
        self._update_open = False
        with torch.no_grad():
            params = self._params
            have = self._with_grad()
            if params:
                torch._foreach_sub_(self._before, params)  # before := before - after
            # one batched norm for the updates, the weights and the gradients
            norms = _norms(self._before + params + [self._params[i].grad for i in have])
        n = len(params)
        u, w = norms[:n], norms[n:2 * n]
        grads = self._expand(norms[2 * n:], have)  # no gradient: norm 0
        self._update_norms = {n: (a, b, c) for n, a, b, c in zip(self._names, w, grads, u)}
        return dict(self._update_norms)

    def end_update(self) -> dict[str, TensorNorms]:
        norms = self.end_update_scalars()
        host = self.scalars_to_host([v for triple in norms.values() for v in triple])
        return {n: TensorNorms(*host[3 * i:3 * i + 3]) for i, n in enumerate(norms)}

    def not_in_optimizer(self) -> set[str]:
        groups = getattr(self.optimizer, "param_groups", None)
        if not groups:
            return set()
        held = {id(p) for group in groups for p in group["params"]}
        return {n for n, p in zip(self._names, self._params) if id(p) not in held}

    def first_nonfinite(self) -> str | None:
        # One batched pass: a tensor holding NaN/Inf has a non-finite norm. A finite tensor
        # whose norm overflows is confirmed elementwise (only then: extra transfers).
        self._follow_trainable()
        with torch.no_grad():
            w = _norms(self._params)
            g, have = self._grad_norm_tensors()
            wv, gv = self._stack_norms([w, g])
        gmap = dict(zip(have, gv))
        for i, name in enumerate(self._names):
            p = self._params[i]
            if not math.isfinite(wv[i]) and not bool(torch.isfinite(p.detach()).all()):
                return name
            if i in gmap and not math.isfinite(gmap[i]) and not bool(
                torch.isfinite(_dense(p.grad)).all()
            ):
                return f"{name} (gradient)"
        return None

    @property
    def host_reads_cheap(self) -> bool:
        """Reading a CPU tensor costs no synchronisation (~2 µs of dispatch, which buys
        ``LossMonitor`` a NaN seen on its own step, while the weights that caused it are
        still there to name); a CUDA one is a device sync."""
        return self._on_cpu

    def to_host(self, x: Any) -> Any:
        if isinstance(x, (ForwardInputs, torch.Tensor)):  # (each tensor or array argument)
            return map_arrays(_host_copy, x)
        return np.array(x, copy=True)

    def example_cuts(self, batch: Any, n: int, size: int | None = None) -> Iterator[Any]:
        if not isinstance(batch, ForwardInputs):
            yield from super().example_cuts(batch, n, size)
            return
        if size is None:  # (the first tensor argument's dim 0; None without one)
            size = batch_length((*batch.args, *batch.kwargs.values()))
        for args, kwargs in super().example_cuts((batch.args, batch.kwargs), n, size):
            yield ForwardInputs(args, kwargs)  # (its arguments cut as a tuple's items are)

    def concatenate(self, batches: Sequence[Any]) -> Any:
        if isinstance(batches[0], ForwardInputs):
            return ForwardInputs.concatenate(batches)
        return super().concatenate(batches)

    def scalars_to_host(self, values: Sequence[Any]) -> list[float]:
        """Python floats of many 0-d tensors (or numbers) in one transfer, e.g. the losses of
        the last N steps kept on the device."""
        if all(isinstance(v, float) for v in values):  # read already (the CPU's losses)
            return list(values)
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if not tensors or (len(tensors) <= 4 and self._on_cpu):
            return [float(v) for v in values]  # a few CPU scalars: cheaper than a stack
        with torch.no_grad():
            host = stack_scalars(tensors, self._device).tolist()  # one copy
        floats = iter(host)
        return [next(floats) if isinstance(v, torch.Tensor) else float(v) for v in values]

    # -- activations ---------------------------------------------------------------------------

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def _ensure_hooks(self) -> None:
        if self._handles:
            return
        for name, module in self._leaves:
            self._handles.append(
                module.register_forward_hook(CopySafeHook(self._make_hook(name))))

    def _make_hook(self, name: str):
        # These run inside the model's forward and backward: they must never raise there (a
        # copy can run out of GPU memory). An error is kept in ``capture_error`` for the
        # callback that asked for the capture to report, and the step's capture stops.
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not self._capture or _suspend_depth or not isinstance(output, torch.Tensor):
                return
            if is_compiling():  # (traced by dynamo: compiled code no compiled_modules() saw)
                return
            if not output.is_floating_point() or self.capture_error is not None:
                return
            try:
                self._acts[name] = _detached_copy(output)
                if output.requires_grad:
                    output.register_hook(grad_hook)
            except Exception as exc:  # noqa: BLE001 - watching never kills training
                self._capture_failed(exc)

        def grad_hook(grad: torch.Tensor) -> None:
            if self.capture_error is not None:
                return
            try:
                self._act_grads[name] = _detached_copy(grad)
            except Exception as exc:  # noqa: BLE001 - watching never kills training
                self._capture_failed(exc)

        return hook

    def _capture_failed(self, exc: Exception) -> None:
        self.capture_error = exc
        self._acts, self._act_grads = {}, {}  # free what this capture holds

    def _set_capture(self, on: bool) -> None:
        if on:
            self._ensure_hooks()
            if not self._capture:
                self._acts = {}
                self._act_grads = {}
                self.capture_error = None
        else:
            # the gradients of a captured forward still arrive if the capture is switched off
            # before the backward: their tensor hooks were registered during that forward
            self._remove_module_hooks()
        self._capture = on

    def activations(self) -> dict[str, np.ndarray]:
        names = list(self._acts)
        return dict(zip(names, to_host([self._acts[n] for n in names])))

    def activation_stats(self, kinds: Mapping[str, str],
                         threshold: float = 0.97) -> dict[str, ActivationStats]:
        """Reduced where the outputs live (saturated counts, alive-unit masks), all layers in
        one transfer: the outputs themselves never leave the device."""
        return self.distributions([], kinds=kinds, threshold=threshold)[1]

    def _activation_stat_parts(self, kinds: Mapping[str, str], threshold: float
                               ) -> tuple[list[str], list[torch.Size], list[torch.Tensor]]:
        """Per captured layer in ``kinds``: its saturated fraction (1 value) or its alive-unit
        mask (1 value per unit), as ``acc_dtype`` tensors on the device."""
        names = [n for n in self._acts if n in kinds and self._acts[n].numel()]
        parts, shapes = [], []
        acc = acc_dtype(self._device)
        with torch.no_grad():
            for name in names:
                a = self._acts[name].detach()
                if kinds[name] in SATURATING_KINDS:
                    zone = (a.abs() > threshold if kinds[name] == "tanh"
                            else (a > threshold) | (a < 1.0 - threshold))
                    part = (zone.sum(dtype=acc) / a.numel()).reshape(1)
                elif a.ndim < 2:
                    part = (a > 0).any().reshape(1).to(acc)
                else:
                    part = (a > 0).reshape(a.shape[0], a.shape[1], -1).any(dim=2).any(dim=0)
                    part = part.to(acc)
                parts.append(part.to(self._device))
                shapes.append(a.shape)
        return names, shapes, parts

    def activation_gradients(self) -> dict[str, np.ndarray]:
        order = {name: i for i, (name, _) in enumerate(self._leaves)}
        names = sorted(self._act_grads, key=lambda n: order.get(n, len(order)))
        return dict(zip(names, to_host([self._act_grads[n] for n in names])))

    def _remove_module_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def remove_hooks(self) -> None:
        """Remove every module hook this backend registered and drop captured tensors."""
        self._remove_module_hooks()
        self._capture = False
        self._capture_requests = 0
        self._acts = {}
        self._act_grads = {}

    def _histogram_sources(self, which: str) -> tuple[list[str], list[torch.Tensor]]:
        self._follow_trainable()
        if which == "weights":
            return list(self._names), list(self._params)
        if which == "gradients":
            return list(self._names), self._grads_or_zeros()
        if which == "activations":
            return list(self._acts), list(self._acts.values())
        if which == "activation_gradients":
            return list(self._act_grads), list(self._act_grads.values())
        raise ValueError(
            f"which: {which!r} is not one of "
            "['activation_gradients', 'activations', 'gradients', 'weights']"
        )

    def histograms(self, which: str, bins: int = 64) -> dict[str, HistogramData]:
        """Histograms bucketed on the device: per tensor min/max/count/sum/sum of squares of
        the finite entries and ``bins`` equal-width counts; one transfer for all tensors."""
        return self.distributions([which], bins)[0][which]

    def distributions(self, which: Sequence[str], bins: int = 64,
                      kinds: Mapping[str, str] | None = None, threshold: float = 0.97
                      ) -> tuple[dict[str, dict[str, HistogramData]], dict[str, ActivationStats]]:
        """The histograms of every kind in ``which`` and the activation statistics, all in
        one transfer (a histogram step of :class:`~trainwatch.HistogramMonitor` reads once)."""
        tables = [(w, *self._histogram_rows(w, bins)) for w in which]
        names, shapes, parts = (self._activation_stat_parts(kinds, threshold) if kinds
                                else ([], [], []))
        flat = [row for _, _, rows in tables for row in rows]
        if not flat and not parts:
            return {w: {} for w in which}, {}
        with torch.no_grad():
            host = torch.cat(flat + [p.to(self._rows_device, torch.float64) for p in parts]
                             ).cpu().numpy()
        hists, start, width = {}, 0, bins + 5
        for w, tensor_names, rows in tables:
            hists[w] = {name: _histogram_data(host[start + i * width:start + (i + 1) * width],
                                              bins) for i, name in enumerate(tensor_names)}
            start += len(rows) * width
        stats = _activation_stats(names, shapes, parts, host[start:], kinds) if parts else {}
        return hists, stats

    def _histogram_rows(self, which: str, bins: int) -> tuple[list[str], list[torch.Tensor]]:
        """Names and float64 histogram rows (see :func:`_histogram_row`) of ``which``."""
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins: must be an integer >= 1, got {bins!r}")
        names, tensors = self._histogram_sources(which)
        # (a complex tensor's distribution: its real and imaginary parts, together)
        tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
        with torch.no_grad():
            if self._device.type == "mps":  # no float64 there: bucket on the host
                tensors = [t.detach().cpu() for t in tensors]
            rows = [(_histogram_row_host(t.detach(), bins)
                     if CPU_SHORT_PATH and t.device.type == "cpu"
                     else _histogram_row(t.detach(), bins)).to(self._rows_device) for t in tensors]
        return names, rows

    @property
    def _rows_device(self) -> torch.device:
        """Where histogram rows are built: the model's device, the CPU for Apple MPS (no
        float64 there)."""
        return torch.device("cpu") if self._device.type == "mps" else self._device

    # -- loss evaluation and gradient checks ---------------------------------------------------

    def _targets(self, targets: Any) -> Any:
        return as_tensor(targets, self._device, model_dtype(self.model))

    def evaluate(self, inputs: Any, targets: Any, batch_size: int = 512) -> tuple[float, float]:
        """Mean loss (NaN without a loss function) and accuracy over ``inputs``, in eval
        mode under ``torch.no_grad()``; training flags, random states (torch's, numpy's,
        Python's, the model's own generators) and the tensors the forward writes in place
        (an embedding's max_norm renormalisation) are restored."""
        model = self._module
        flags = [(m, m.training) for m in model.modules()]
        n = len(inputs)
        acc = acc_dtype(self._device)
        loss_sum = torch.zeros((), dtype=acc, device=self._device)
        correct = torch.zeros(2, dtype=acc, device=self._device)  # [right, labelled]
        try:
            with (suspended(), torch.no_grad(), random_states_kept(model, self._device),
                  self._forward_writes_undone()):
                model.eval()
                for start in range(0, n, batch_size):
                    xb = as_tensor(inputs[start:start + batch_size], self._device,
                                   model_dtype(model))
                    yb = self._targets(targets[start:start + batch_size])
                    out = _call(model, xb)
                    m = len(yb)
                    if self.loss_fn is not None:
                        # (a loss of shape (1,) or per example, reduction="none", too)
                        loss_sum += self.loss_fn(out, yb).detach().to(acc).reshape(-1).mean() * m
                    scores = output_scores(out)
                    if scores is not None:
                        correct += _correct(scores, yb).to(acc)
        finally:
            for m, flag in flags:
                m.training = flag
        total_loss, right, labelled = torch.cat([loss_sum.reshape(1), correct]).tolist()
        loss = total_loss / max(n, 1) if self.loss_fn is not None else float("nan")
        return loss, right / labelled if labelled else float("nan")

    @contextlib.contextmanager
    def _forward_writes_undone(self) -> Iterator[None]:
        """Parameters and buffers an extra forward writes in place, put back on exit: those
        of embeddings with a ``max_norm`` (renormalised rows), and any other whose version
        counter a forward of this backend moved before (found then: reported once, kept
        from the next forward on)."""
        model = self.model
        if self._written is None:  # (what forwards are known to write)
            self._written = {id(m.weight): m.weight for m in model.modules()
                             if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                             and m.max_norm is not None}
        tensors = [*model.parameters(), *model.buffers()]
        versions = [t._version for t in tensors]
        saved = [(t, t.detach().clone()) for t in self._written.values()]
        try:
            yield
        finally:
            with torch.no_grad():
                for t, value in saved:
                    t.copy_(value)
            moved = [t for t, v in zip(tensors, versions)
                     if t._version != v and id(t) not in self._written]
            if moved:
                logger.warning(
                    "trainwatch: the model's forward wrote %d of its tensors in place during "
                    "an evaluation by trainwatch; they are restored from the next one on, "
                    "but this one may have changed training", len(moved))
                self._written.update((id(t), t) for t in moved)

    def check_gradients(self, inputs: Any, targets: Any, *, seed: int = 0, **options: Any):
        """:func:`trainwatch.torch.check_module` on the model and its loss (float64 copies;
        the model, optimizer and random states are untouched); a loss function that fails on
        the outputs raises :class:`~trainwatch.gradcheck.LossFunctionError`."""
        from trainwatch.torch.gradcheck import _check_module

        if self.loss_fn is None:
            raise ValueError("loss_fn: gradient checks need the loss function "
                             "(watch(model, optimizer, loss_fn), or GradientCheck left out)")
        return _check_module(self._module, self.loss_fn, _forward_inputs(inputs), targets,
                             seed=seed, **options)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": copy.deepcopy(self.model.state_dict()),
            "rng": torch.get_rng_state(),
        }
        if self.optimizer is not None:
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # -- training primitives ------------------------------------------------------------------

    def forward(self, inputs: Any, training: bool = True) -> Any:
        """Outputs for a batch (numpy batches become tensors on the model's device: floats in
        the model's dtype, integers int64); switches train/eval mode only when it differs."""
        if self.model.training != training:
            self.model.train(training)
        x = as_tensor(inputs, self._device, model_dtype(self.model))
        if training:
            return _call(self.model, x)
        with torch.no_grad():
            return _call(self.model, x)

    def loss(self, predictions: Any, targets: Any) -> tuple[Any, float]:
        """(data loss as a detached 0-d tensor, 0.0): weight decay lives in the optimizer.
        The attached loss is kept for :meth:`backward`."""
        if self.loss_fn is None:
            raise ValueError("loss: the backend has no loss function")
        value = self.loss_fn(predictions, self._targets(targets))
        self._last_loss = value
        return value.detach(), 0.0

    def backward(self) -> None:
        if self._last_loss is None:
            raise RuntimeError("backward() called before loss()")
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        loss, self._last_loss = self._last_loss, None
        loss.backward()

    def step(self) -> None:
        if self.optimizer is None:
            raise ValueError("optimizer: the backend has no optimizer")
        self.optimizer.step()

    def scores(self, outputs: Any) -> Any:
        scores = output_scores(outputs)
        return scores if scores is None else scores.detach()

    def count_correct(self, predictions: Any, targets: Any) -> Any:
        """The batch's accuracy times its examples (a 0-d tensor: the Trainer sums these over
        an epoch and divides by its examples; NaN where the targets are no classification's,
        see :func:`_correct`)."""
        scores = output_scores(predictions)
        if scores is None:  # (numpy arrays)
            return Backend.count_correct(self, predictions, targets)
        with torch.no_grad():
            p = scores.detach()
            t = as_tensor(targets, p.device, p.dtype)
            right, labelled = _correct(p, t)
            return right / labelled * len(t)

    @staticmethod
    def accuracy(predictions: Any, targets: Any) -> float:
        """The fraction of a classification's labels the outputs get right (tensors or
        numpy arrays; of several outputs, the scores: see :func:`output_scores`; NaN where
        the targets are no classification's, see :func:`_correct`)."""
        scores = output_scores(predictions)
        if scores is None:  # (numpy arrays)
            return Backend.accuracy(predictions, targets)
        with torch.no_grad():
            p = scores.detach()
            right, labelled = _correct(p, as_tensor(targets, p.device, p.dtype)).tolist()
            return right / labelled if labelled else float("nan")


def _correct(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[right, labelled]``: how many of a classification's labels the outputs get right,
    and how many there are, as a float64-or-float32 2-vector on the outputs' device (no
    sync; accuracy = right / labelled, NaN where labelled is 0: no classification).

    - Class indices (integer targets): scores ``(N, C)`` or ``(N, C, d...)`` against
      ``(N, d...)`` (torch's class dim 1), or ``(N, d..., C)`` (class last: a token
      classifier's ``(N, T, C)`` whose loss reshapes it); one logit per label against 0/1.
      A negative target (``ignore_index``) is no label.
    - Float targets: rows of probabilities (one-hot or soft labels: non-negative, summing to
      1) against scores ``(N, C)``; else targets that are all 0 or 1 against one logit each
      (binary, multi-label). Any other targets (a regression's values, an autoencoder's
      images) are no labels."""
    acc = acc_dtype(out.device)
    none = torch.zeros(2, dtype=acc, device=out.device)
    if out.ndim == 0 or targets.ndim == 0 or targets.shape[0] != out.shape[0]:
        return none
    if not targets.is_floating_point():
        t = targets.long()
        if out.ndim >= 2 and out.shape[1] >= 2 and t.shape == out.shape[:1] + out.shape[2:]:
            predicted = out.argmax(1)
        elif out.ndim >= 2 and out.shape[-1] >= 2 and t.shape == out.shape[:-1]:
            predicted = out.argmax(-1)
        elif t.numel() == out.numel() and (t.shape == out.shape or t.shape == out.shape[:-1]):
            predicted = (out.reshape(t.shape) > 0).long()
        else:
            return none
        labelled = t >= 0
        return torch.stack([((predicted == t) & labelled).sum(), labelled.sum()]).to(acc)
    t = targets.to(acc)
    counts = none
    if t.numel() == out.numel() and (t.shape == out.shape or t.shape == out.shape[:-1]):
        binary = ((t == 0) | (t == 1)).all()
        right = ((out.reshape(t.shape) > 0) == (t > 0.5)).sum().to(acc)
        total = torch.full((), t.numel(), dtype=acc, device=out.device)  # (a fill: no copy)
        counts = torch.where(binary, torch.stack([right, total]), none)
    if out.ndim == 2 and out.shape[1] >= 2 and t.shape == out.shape:
        rows = ((t >= 0).all(1) & ((t.sum(1) - 1).abs() <= 1e-6)).all()
        right = (out.argmax(1) == t.argmax(1)).sum().to(acc)
        total = torch.full((), len(t), dtype=acc, device=out.device)
        counts = torch.where(rows, torch.stack([right, total]), counts)
    return counts


def _histogram_row(t: torch.Tensor, bins: int) -> torch.Tensor:
    """[min, max, num, sum, sum_squares, counts...] of the finite entries of ``t``, on its
    device, without any host synchronisation."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    v = t.reshape(-1).to(dtype)
    finite = torch.isfinite(v)
    inf = torch.full((), float("inf"), dtype=dtype, device=v.device)  # a fill: no copy
    lo = torch.where(finite, v, inf).amin() if v.numel() else inf
    hi = torch.where(finite, v, -inf).amax() if v.numel() else -inf
    num = finite.sum()
    vz = torch.where(finite, v, torch.zeros((), dtype=dtype, device=v.device))
    total = vz.sum()
    squares = torch.dot(vz, vz) if v.numel() else total
    lo_safe = torch.where(num > 0, lo, torch.zeros_like(lo))
    hi_safe = torch.where(num > 0, hi, torch.zeros_like(hi))
    width = hi_safe - lo_safe
    tiny = 1e-12 * torch.clamp(lo_safe.abs(), min=1.0)
    width = torch.where(width > 0, width, tiny)
    idx = torch.floor((vz - lo_safe) / width * bins).clamp_(0, bins - 1).to(torch.int64)
    idx = torch.where(finite, idx, torch.full_like(idx, bins))  # non-finite -> dropped bucket
    counts = torch.zeros(bins + 1, dtype=torch.float64, device=v.device)
    counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    head = torch.stack([lo_safe.double(), hi_safe.double(), num.double(), total.double(),
                        squares.double()])
    return torch.cat([head, counts[:bins]])


def _histogram_row_host(t: torch.Tensor, bins: int) -> torch.Tensor:
    """:func:`_histogram_row` for a CPU tensor: reading a value costs no synchronisation
    here, so the usual all-finite case takes a short path (4x faster than masking), in
    numpy (a numpy call costs a few µs less than a torch op: 2-4x faster on the small tensors
    of a small model)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    v = t.reshape(-1).to(dtype).numpy()
    if v.size == 0:
        return _histogram_row(t, bins)
    lo, hi = float(v.min()), float(v.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or Inf somewhere: mask them
        return _histogram_row(t, bins)
    width = hi - lo
    if not width > 0:
        width = 1e-12 * max(1.0, abs(lo))
    # v >= lo, so truncating to int64 is the floor; only v == hi lands at bins (folded into
    # the last bucket): two passes fewer than floor and clamp
    counts = np.bincount(((v - lo) * (bins / width)).astype(np.int64), minlength=bins + 1)
    row = np.empty(bins + 5)
    row[:5] = (lo, hi, v.size, v.sum(dtype=np.float64), float(np.dot(v, v)))
    row[5:] = counts[:bins]
    row[4 + bins] += counts[bins]
    return torch.from_numpy(row)


def _activation_stats(names: list[str], shapes: list[torch.Size], parts: list[torch.Tensor],
                      host: np.ndarray, kinds: Mapping[str, str]) -> dict[str, ActivationStats]:
    """Decode the host copy of :meth:`TorchBackend._activation_stat_parts`."""
    out, start = {}, 0
    for name, shape, part in zip(names, shapes, parts):
        values = host[start:start + part.numel()]
        start += part.numel()
        examples = int(shape[0]) if len(shape) else 0
        if kinds[name] in SATURATING_KINDS:
            out[name] = ActivationStats(examples, float(values[0]), None)
        else:
            out[name] = ActivationStats(examples, math.nan, values > 0.5)
    return out


def _histogram_data(row: np.ndarray, bins: int) -> HistogramData:
    lo, hi, num, total, squares = (float(x) for x in row[:5])
    counts = np.array(row[5:], dtype=np.float64)
    if num == 0:  # nothing finite: like HistogramData.from_values, one zero
        counts = np.zeros(bins)
        counts[0] = 1.0
        lo = hi = total = squares = 0.0
        num = 1
    if hi <= lo:
        hi = lo + 1e-12 * max(1.0, abs(lo))
    edges = np.linspace(lo, hi, bins + 1)
    return HistogramData(counts, edges, lo, hi, int(num), total, squares)
