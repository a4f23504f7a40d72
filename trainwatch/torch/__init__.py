"""PyTorch support (needs the ``torch`` extra: ``pip install "trainwatch[torch]"``).

- :class:`TorchBackend`: every trainwatch callback works on a ``torch.nn.Module`` through it
  (``Monitor``/``Trainer`` pick it automatically for a torch model).
- :func:`watch`: attach trainwatch to a training loop you already have, with a line per batch
  and a line per epoch; :meth:`Watcher.close` removes every hook.
- :func:`check_module`: float64 finite-difference check of a module's parameter gradients.
- :class:`ForwardInputs`: the batch of a forward that takes several arguments.
- :func:`in_own_pass`: whether one of trainwatch's own forward passes is running (for hooks
  of yours that should not see them).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('trainwatch.torch needs PyTorch: pip install "trainwatch[torch]"') from exc

from trainwatch.torch.backend import TorchBackend, in_own_pass
from trainwatch.torch.gradcheck import check_module
from trainwatch.torch.inputs import ForwardInputs
from trainwatch.torch.watch import Watcher, watch

__all__ = ["ForwardInputs", "TorchBackend", "Watcher", "check_module", "in_own_pass", "watch"]
