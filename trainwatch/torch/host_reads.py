"""Counting the device-to-host reads trainwatch makes (each is a synchronisation on a GPU)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

#: the tensor methods that read device memory from the host (``numpy()`` is left out: it only
#: works on CPU tensors, where it is no transfer)
HOST_READS = ("item", "tolist", "cpu", "__float__", "__int__", "__bool__", "__array__")


def _called_from_trainwatch() -> bool:
    frame = sys._getframe(2)  # the caller of the tensor method
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("trainwatch"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Within the block, log the name of every :data:`HOST_READS` method called (directly or
    indirectly) by trainwatch code; the real methods still run. Reads by other code, e.g. an
    optimizer's own ``step.item()``, are not logged. Yields the log (a list)."""
    log: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name, fn):
        def wrapper(self, *args, **kwargs):
            if _called_from_trainwatch():
                log.append(name)
            return fn(self, *args, **kwargs)
        return wrapper

    for name, fn in originals.items():
        setattr(torch.Tensor, name, counting(name, fn))
    try:
        yield log
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
