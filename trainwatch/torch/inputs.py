"""``ForwardInputs``: the inputs of a forward pass that takes more than one argument."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trainwatch.core.backend import batch_length


class ForwardInputs:
    """The arguments of one forward call, ``model(*args, **kwargs)``, kept as a batch.

    :func:`~trainwatch.torch.watch` records a batch whose forward takes several arguments
    (``model(x, mask)``, ``model(x, mask=mask)``) as one of these, and
    :func:`~trainwatch.torch.check_module` takes one as ``inputs``. Slicing (``inputs[:3]``)
    takes the first examples of every tensor or array argument whose dim 0 is the batch size
    (inside tuples, lists and dicts too) and leaves the other arguments as they are (a
    shared ``(T, T)`` attention mask); ``len()`` is the batch size (the first tensor
    argument's dim 0).
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple = (), kwargs: Mapping[str, Any] | None = None):
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def call(self, model: Callable[..., Any]) -> Any:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)


    @staticmethod
    def concatenate(parts: Sequence[ForwardInputs]) -> ForwardInputs:
        """The examples of several batches of one forward as one batch: every tensor or array
        argument joined along dim 0 (inside tuples, lists and dicts too), the other arguments
        the first batch's."""
        first = parts[0]
        return ForwardInputs(
            tuple(_joined([p.args[i] for p in parts]) for i in range(len(first.args))),
            {k: _joined([p.kwargs[k] for p in parts]) for k in first.kwargs})

    def __getitem__(self, index: slice) -> ForwardInputs:
        size = len(self)  # (a tensor of another length, a shared (T, T) mask, is no batch)
        return map_arrays(lambda a: a[index] if a.ndim >= 1 and a.shape[0] == size else a,
                          self)

    def __len__(self) -> int:
        size = batch_length((*self.args, *self.kwargs.values()))
        if size is None:
            raise TypeError("ForwardInputs: no tensor or array argument to take a batch size "
                            "from")
        return size

    def __repr__(self) -> str:
        parts = [_describe(a) for a in self.args]
        parts += [f"{k}={_describe(v)}" for k, v in self.kwargs.items()]
        return f"ForwardInputs({', '.join(parts)})"


def _is_batch(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 1


def map_arrays(fn: Callable[[Any], Any], value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor and numpy array in it, inside tuples,
    lists, dicts and :class:`ForwardInputs`; other values as they are."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_arrays(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: map_arrays(fn, v) for k, v in value.items()}
    if isinstance(value, ForwardInputs):
        return ForwardInputs(map_arrays(fn, value.args), map_arrays(fn, value.kwargs))
    return value


def _joined(values: list[Any]) -> Any:
    first = values[0]
    if _is_batch(first):
        return torch.cat(values) if isinstance(first, torch.Tensor) else np.concatenate(values)
    if isinstance(first, (tuple, list)):
        return type(first)(_joined([v[i] for v in values]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _joined([v[k] for v in values]) for k in first}
    return first


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__}{tuple(value.shape)}"
    return type(value).__name__
