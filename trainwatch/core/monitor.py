"""Monitor: trainwatch's hook points as plain method calls, for a loop you already have.

::

    mon = Monitor(model, loss=loss_fn, optimizer=opt, logdir="runs/exp1")
    with mon.run(epochs=10):
        for epoch in range(10):
            mon.epoch_begin(epoch)
            for x, y in batches:
                mon.batch_begin(x, y)
                scores = model.forward(x); loss = loss_fn.forward(scores, y)
                mon.loss_computed(loss, scores)
                model.backward(loss_fn.backward())
                mon.backward_end()
                mon.step_begin(); opt.step(); mon.step_end()
            mon.epoch_end({"val_accuracy": acc})

:class:`~trainwatch.Trainer` drives the same object, so both ways behave the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from trainwatch.alerts.manager import AlertManager
from trainwatch.alerts.sinks import AlertSink
from trainwatch.core.backend import Backend
from trainwatch.core.budget import StepBatch
from trainwatch.core.callback import Callback, CallbackList
from trainwatch.core.checks import count
from trainwatch.core.state import RunState
from trainwatch.outputs.base import Output, OutputList

logger = logging.getLogger("trainwatch")


def as_backend(model: Any, loss: Any = None, optimizer: Any = None) -> Backend:
    """Wrap ``model`` (with its loss and optimizer) in the backend for its framework.

    Accepts a :class:`Backend` as is, a :class:`trainwatch.nn.Sequential`, or a
    ``torch.nn.Module`` (needs the ``torch`` extra).
    """
    if isinstance(model, Backend):
        return model
    from trainwatch.nn import Sequential

    if isinstance(model, Sequential):
        from trainwatch.backends.numpy_backend import NumpyBackend

        return NumpyBackend(model, loss, optimizer)
    if type(model).__module__.startswith("torch") or _is_torch_module(model):
        from trainwatch.torch import TorchBackend

        return TorchBackend(model, loss, optimizer)
    raise TypeError(
        f"model: expected a trainwatch.nn.Sequential, a torch.nn.Module or a Backend, "
        f"got {type(model).__name__}"
    )


def _is_torch_module(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def _reraise(exc: Exception) -> None:
    raise exc


class Monitor:
    """Runs callbacks at hook points that the caller's loop announces.

    Args:
        model: a :class:`trainwatch.nn.Sequential`, a ``torch.nn.Module`` or a Backend.
        loss, optimizer: the loss and optimizer objects (needed by gradient checks and the
            update measurements; for a Backend, leave them None).
        callbacks: the callbacks to run; None (default) means :func:`default_callbacks`.
        logdir: folder for TensorBoard event files and ``alerts.jsonl``; None writes nothing
            to disk.
        outputs: extra outputs (e.g. a :class:`~trainwatch.outputs.MemoryOutput`).
        alert_sinks: extra alert sinks (e.g. a webhook).
        progress: show a tqdm progress bar with live loss and accuracy (default True).
        raise_errors: let callback exceptions propagate (default False: report once and
            disable the callback).
        log_every: write the training loss every this many steps (default 10).
    """

    def __init__(
        self,
        model: Any,
        *,
        loss: Any = None,
        optimizer: Any = None,
        callbacks: Iterable[Callback] | None = None,
        logdir: str | os.PathLike | None = None,
        outputs: Iterable[Output] = (),
        alert_sinks: Iterable[AlertSink] = (),
        progress: bool = True,
        raise_errors: bool = False,
        log_every: int = 10,
    ):
        from trainwatch.alerts import sinks as sink_mod
        from trainwatch.callbacks.metrics import MetricLogger
        from trainwatch.outputs.console import ConsoleOutput

        count("log_every", log_every)
        if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"logdir: expected a folder path (str or os.PathLike) or None, got "
                            f"{type(logdir).__name__}")
        if isinstance(callbacks, Callback):
            raise TypeError(f"callbacks: expected a list of callbacks, got one "
                            f"{type(callbacks).__name__}: pass [{type(callbacks).__name__}(...)]")
        if callbacks is None:
            from trainwatch.callbacks import default_callbacks

            callbacks = default_callbacks()
        callbacks = list(callbacks)
        if not any(isinstance(cb, MetricLogger) for cb in callbacks):
            callbacks.insert(0, MetricLogger(every=log_every))
        # (checked before any output opens a file)
        self.callbacks = CallbackList(callbacks, raise_errors=raise_errors)
        self.backend = as_backend(model, loss, optimizer)
        self.logdir = None if logdir is None else os.fspath(logdir)

        self.alerts = AlertManager()
        self.writer = OutputList(on_error=self._output_failed)
        self.console: ConsoleOutput | None = None
        if progress:
            self.console = ConsoleOutput()
            self.writer.add(self.console)
        if self.logdir is not None:
            from trainwatch.outputs.tensorboard import TensorBoardOutput

            os.makedirs(self.logdir, exist_ok=True)
            self.writer.add(TensorBoardOutput(self.logdir))
        for out in outputs:
            self.writer.add(out)

        self.alerts.add_sink(sink_mod.LoggingSink())
        self.alerts.add_sink(sink_mod.ConsoleSink(self.console.write if self.console else None))
        if self.logdir is not None:
            self.alerts.add_sink(sink_mod.JsonlSink(os.path.join(self.logdir, "alerts.jsonl")))
            self.alerts.add_sink(sink_mod.OutputTextSink(self.writer))
        for sink in alert_sinks:
            self.alerts.add_sink(sink)

        self.state = RunState(backend=self.backend, writer=self.writer, alerts=self.alerts,
                              logdir=self.logdir)
        self._ended = False
        self._losses = StepBatch()  # (step, loss, data_loss, reg_loss) for on_losses
        self._losses_handed = False  # (the run's first loss is handed over at once)

    # -- hook points ---------------------------------------------------------------------------

    def train_begin(self, epochs: int | None = None, steps_per_epoch: int | None = None) -> None:
        """Call once before training."""
        self.state.epochs = epochs
        self.state.steps_per_epoch = steps_per_epoch
        self.callbacks.call("on_train_begin", self.state)
        self.callbacks.schedule(self.state)

    def epoch_begin(self, epoch: int | None = None) -> None:
        """Call at the start of each epoch (``epoch`` defaults to the next one)."""
        s = self.state
        if epoch is not None:
            s.epoch = epoch
        s.batch_index = 0
        self.callbacks.call("on_epoch_begin", s)

    def batch_begin(self, inputs: Any = None, targets: Any = None) -> None:
        """Call before the forward pass of a batch."""
        s = self.state
        s.inputs, s.targets = inputs, targets
        s.predictions = s.loss = s.data_loss = s.reg_loss = None
        self.callbacks.call("on_batch_begin", s)

    def loss_computed(self, loss: Any, predictions: Any = None, *, data_loss: Any = None,
                      reg_loss: Any = None) -> None:
        """Call once the batch's loss is known (a float or a framework scalar). The loss is
        also gathered for :meth:`~trainwatch.Callback.on_losses`, the gathered ones handed
        over when they are due, and at once for the run's first and for a non-finite float."""
        s = self.state
        s.loss, s.predictions, s.data_loss, s.reg_loss = loss, predictions, data_loss, reg_loss
        if not self.callbacks.quiet:  # (quiet: no callback awake, no hook to call)
            self.callbacks.call("on_loss_computed", s)
        step = s.step
        # (x - x is nonzero, NaN, only for NaN and ±inf; a tensor is never read here)
        if (self._losses.add(step, (step, loss, data_loss, reg_loss)) or not self._losses_handed
                or (isinstance(loss, float) and loss - loss != 0.0)):
            self._hand_losses()

    def _hand_losses(self) -> None:
        s = self.state
        s.losses = self._losses.take()
        if s.losses:
            self._losses_handed = True
            self.callbacks.call("on_losses", s)
            s.losses = []

    def backward_end(self) -> None:
        """Call after the backward pass (gradients ready, before the optimizer step)."""
        self.callbacks.call("on_backward_end", self.state)

    def step_begin(self) -> None:
        """Call just before ``optimizer.step()``."""
        self.callbacks.call("on_step_begin", self.state)

    def step_end(self) -> None:
        """Call just after ``optimizer.step()``; advances the global step."""
        s = self.state
        if not self.callbacks.quiet:  # (quiet: no callback awake, no hook to call)
            self.callbacks.call("on_step_end", s)
        if s.queued_reads:  # (by this step's hooks, or by a callback that sees every loss)
            self._read_queued()
        s.step += 1
        s.batch_index += 1
        self.callbacks.advance(s)

    def validation_end(self, metrics: Mapping[str, float]) -> None:
        """Call after validation with e.g. ``{"val_loss": .., "val_accuracy": ..}``."""
        self.state.metrics.update(self.metric_floats(metrics))
        self.callbacks.call("on_validation_end", self.state)
        self._read_queued()

    def epoch_end(self, metrics: Mapping[str, float] | None = None) -> None:
        """Call at the end of each epoch, with the epoch's metrics if not given before
        (``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``)."""
        s = self.state
        if metrics:
            s.metrics.update(self.metric_floats(metrics))
        self._hand_losses()
        self.callbacks.call("on_epoch_end", s)
        self._read_queued()
        s.epoch += 1
        self.callbacks.schedule(s)

    def metric_floats(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``metrics`` as floats (numbers, numpy and framework scalars); a value that is not
        a number is left out and reported once per name (``metrics.not_a_number``), so a
        bad metric never stops training."""
        out = {}
        for name, value in metrics.items():
            try:
                out[name] = float(value)
            except (TypeError, ValueError, RuntimeError) as exc:
                self.alerts.fire(
                    "metrics.not_a_number", "warning",
                    f"metric {name!r} = {value!r:.80} is not a number ({exc}); it is left out",
                    self.state.step, tensor=name,
                    suggestion="report numbers (a float, or a one-element tensor)")
        return out

    def _read_queued(self) -> None:
        """Read every value queued with :meth:`Callback.read_at_step_end` in one transfer and
        hand each callback its own, in the order they were queued."""
        s = self.state
        queued, s.queued_reads = s.queued_reads, []
        if not queued:
            return
        try:
            host = self.backend.scalars_to_host([v for _, values, _ in queued for v in values])
        except Exception as exc:  # noqa: BLE001 - reported as the queuing callbacks' error
            for owner in {id(o): o for o, _, _ in queued}.values():
                self.callbacks.run(owner, "read_at_step_end", _reraise, s, exc)
            return
        start = 0
        for owner, values, then in queued:
            part = host[start:start + len(values)]
            start += len(values)
            self.callbacks.run(owner, "read_at_step_end", then, s, part)

    def train_end(self, exception: BaseException | None = None) -> None:
        """Call once after training (also when it raised); flushes and closes every output."""
        if self._ended:
            return
        self._ended = True
        s = self.state
        s.exception = exception
        try:
            self._read_queued()  # queued in a step that never reached step_end
            self._hand_losses()
            self.callbacks.call("on_train_end", s)
            self._read_queued()
        finally:
            if self.console is not None:
                self.console.close()
            self.writer.close()
            self.alerts.close()

    @contextlib.contextmanager
    def run(self, epochs: int | None = None,
            steps_per_epoch: int | None = None) -> Iterator[Monitor]:
        """Context manager: ``train_begin`` on entry, ``train_end`` on exit (also on error)."""
        self.train_begin(epochs, steps_per_epoch)
        try:
            yield self
        except BaseException as exc:
            self.train_end(exc)
            raise
        self.train_end(None)

    # -- results -------------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once a callback asked training to stop."""
        return self.state.stop_requested

    @property
    def step(self) -> int:
        """The global step (optimizer steps taken)."""
        return self.state.step

    @property
    def batch_needed(self) -> bool:
        """Whether a callback reads the current step's batch (inputs, predictions,
        activations); see :meth:`Callback.reads_batch`."""
        return self.callbacks.batch_needed

    def summary(self) -> str:
        """Alerts of the run and why it stopped, as text."""
        text = self.alerts.summary()
        if self.state.stop_reason:
            text += f"\ntrainwatch: training stopped early: {self.state.stop_reason}"
        return text

    def _output_failed(self, output: Output, method: str, exc: Exception) -> None:
        self.alerts.fire(
            code="output.error", severity="warning",
            message=f"{type(output).__name__}.{method} raised {exc!r}; that output is disabled",
            step=self.state.step, suggestion="check the log folder's disk space and permissions",
        )
