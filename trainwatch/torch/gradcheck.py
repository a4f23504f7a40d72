"""``check_module``: finite-difference check of a torch module's parameter gradients.

The check runs in float64 on copies: ``torch.func.functional_call`` evaluates the model with
float64 copies of its parameters and buffers, so the model itself (its parameters, buffers,
``.grad`` fields and training flag) is never written. Dropout draws the same masks in the
analytic pass and in every numerical evaluation (the random generators are re-seeded before
each one inside a fork, then restored). The probes, thresholds, kink handling and the report
come from the numpy engine :func:`trainwatch.gradcheck.check_gradients`.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call

from trainwatch.torch.backend import model_device, suspended


def _to_float64(value: Any, device: torch.device) -> Any:
    """Inputs/targets for the check: floating tensors/arrays in float64 on ``device``,
    integers int64; tuples, lists and dicts converted item by item."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.is_floating_point():
            return value.to(device=device, dtype=torch.float64)
        return value.to(device=device)
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating):
            return torch.tensor(value, dtype=torch.float64, device=device)
        if np.issubdtype(value.dtype, np.integer):
            return torch.tensor(value, dtype=torch.int64, device=device)
        return torch.tensor(value, device=device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float64(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_float64(v, device) for k, v in value.items()}
    return value


def _float64_copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.to(torch.float64, copy=True) if t.is_floating_point() else t.clone()


class _Kinks:
    """Forward hooks that record, per evaluation, which side of each kink every unit is on:
    ReLU-like signs, Hardtanh/ReLU6 clip sides and max-pool winners; plus the hinge pattern
    of a multiclass margin loss and the sign pattern of an L1 loss."""

    def __init__(self, model: nn.Module, loss_fn: Any):
        self.parts: list[torch.Tensor] = []
        self.loss_fn = loss_fn
        self.handles = []
        for module in model.modules():
            hook = self._hook_for(module)
            if hook is not None:
                self.handles.append(module.register_forward_hook(hook))

    def _hook_for(self, module: nn.Module):
        parts = self.parts
        if isinstance(module, nn.Hardtanh):  # also ReLU6
            def hook(m, inputs, out):
                parts.append((out > m.min_val).to(torch.int8) + (out >= m.max_val).to(torch.int8))
            return hook
        if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.RReLU)):
            def hook(m, inputs, out):
                parts.append(out > 0)
            return hook
        pools = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d,
                 nn.MaxPool3d: F.max_pool3d}
        for cls, fn in pools.items():
            if isinstance(module, cls):
                def hook(m, inputs, out, fn=fn):
                    if isinstance(out, tuple):
                        parts.append(out[1])
                        return
                    _, idx = fn(inputs[0], m.kernel_size, m.stride, m.padding, m.dilation,
                                ceil_mode=m.ceil_mode, return_indices=True)
                    parts.append(idx)
                return hook
        adaptive = {nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d,
                    nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
                    nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d}
        for cls, fn in adaptive.items():
            if isinstance(module, cls):
                def hook(m, inputs, out, fn=fn):
                    if isinstance(out, tuple):
                        parts.append(out[1])
                        return
                    parts.append(fn(inputs[0], m.output_size, return_indices=True)[1])
                return hook
        return None

    def loss_signature(self, outputs: Any, targets: Any) -> None:
        loss_fn = self.loss_fn
        if not isinstance(outputs, torch.Tensor):
            return
        if isinstance(loss_fn, nn.MultiMarginLoss) and outputs.ndim == 2:
            picked = outputs.gather(1, targets.reshape(-1, 1).long())
            self.parts.append(loss_fn.margin - picked + outputs > 0)
        elif isinstance(loss_fn, nn.L1Loss) and isinstance(targets, torch.Tensor):
            self.parts.append(outputs > targets)

    def reset(self) -> None:
        self.parts.clear()

    def signature(self) -> np.ndarray:
        if not self.parts:
            return np.zeros(0, dtype=np.int64)
        device = self.parts[0].device
        flat = torch.cat([p.reshape(-1).to(device=device, dtype=torch.int64)
                          for p in self.parts])
        return flat.cpu().numpy()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@contextlib.contextmanager
def _pinned_random_state(device: torch.device) -> Iterator[None]:
    """Fork torch's CPU (and the model's CUDA) generator, numpy's and Python's global
    generators; everything is restored on exit."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _seed_everything(seed: int, device: torch.device, np_state: Any, py_state: Any) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    np.random.set_state(np_state)
    random.setstate(py_state)


def check_module(model: nn.Module, loss_fn: Any, inputs: Any, targets: Any, *, seed: int = 0,
                 **options: Any):
    """Gradient-check every trainable parameter of ``model`` for the loss
    ``loss_fn(model(inputs), targets)`` (a scalar) with centered finite differences.

    Runs in float64 on copies of the parameters and buffers, whatever the model's dtype and
    device, in the model's current mode (training mode: dropout active with masks fixed by
    ``seed``, BatchNorm on batch statistics, its running statistics untouched). Kinks of
    ReLU-like modules, max-pool modules and hinge/L1 losses are tracked exactly; other
    non-differentiable points are left to the engine's step-size tests.

    Args:
        model: the module; it comes back untouched (parameters, buffers, ``.grad`` fields,
            training flag) and the global torch/CUDA/numpy/Python random states too.
        loss_fn: ``loss_fn(outputs, targets)`` -> 0-d tensor (a loss module is copied and
            cast to float64).
        inputs, targets: a few examples (tensors or numpy arrays).
        seed: seeds dropout and the engine's probe sampling.
        **options: passed to :func:`trainwatch.gradcheck.check_gradients` (``h``,
            ``coordinates``, thresholds, ...).

    Returns:
        a :class:`trainwatch.gradcheck.GradCheckReport` whose ``params`` are keyed by the
        ``named_parameters()`` names (those that require a gradient), in that order.
    """
    from trainwatch.gradcheck import check_gradients

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
    device = model_device(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: has no parameter that requires a gradient")
    names = [n for n, _ in named]
    frozen = {n: _float64_copy(p) for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: _float64_copy(b) for n, b in model.named_buffers()}
    base = {n: p.detach().to(device="cpu", dtype=torch.float64).numpy().copy() for n, p in named}
    x = _to_float64(inputs, device)
    t = _to_float64(targets, device)
    criterion = loss_fn
    if isinstance(loss_fn, nn.Module):
        criterion = copy.deepcopy(loss_fn).to(torch.float64)

    kinks = _Kinks(model, criterion)
    np_state, py_state = np.random.get_state(), random.getstate()

    def evaluate(params: dict[str, torch.Tensor]) -> torch.Tensor:
        _seed_everything(seed, device, np_state, py_state)
        kinks.reset()
        state = {**params, **frozen, **{n: b.clone() for n, b in buffers.items()}}
        outputs = functional_call(model, state, (x,))
        loss = criterion(outputs, t)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn: must return a scalar tensor")
        kinks.loss_signature(outputs, t)
        return loss.reshape(())

    def numerical_loss(params: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
        tensors = {}
        for n in names:
            a = np.asarray(params[n], dtype=np.float64)
            if not a.flags.writeable or not a.flags.c_contiguous:
                a = np.array(a)
            tensors[n] = torch.as_tensor(a, device=device)
        with torch.no_grad():
            value = float(evaluate(tensors))
        return value, kinks.signature()

    try:
        with suspended(), _pinned_random_state(device), torch.enable_grad():
            leaves = {n: torch.tensor(base[n], device=device, requires_grad=True) for n in names}
            loss = evaluate(leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            analytic = {n: (np.zeros_like(base[n]) if g is None
                            else g.detach().to(device="cpu", dtype=torch.float64).numpy())
                        for n, g in zip(names, grads)}
            del loss, grads, leaves
            return check_gradients(numerical_loss, base, analytic, seed=seed, **options)
    finally:
        kinks.remove()
