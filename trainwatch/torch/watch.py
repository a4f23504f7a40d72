"""``watch``: attach trainwatch to a PyTorch training loop you already have.

::

    watcher = watch(model, optimizer, criterion, logdir="runs/exp1")
    for epoch in range(epochs):
        for x, y in loader:
            loss = criterion(model(x), y)
            watcher.loss(loss, y)                  # one line per batch
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        watcher.epoch_end({"val_accuracy": acc})   # one line per epoch
    watcher.close()                                # or use `with watch(...) as watcher:`

The optimizer's step hooks announce the backward's end and the step. On the steps whose batch
a callback reads (:meth:`~trainwatch.Callback.reads_batch`: a gradient check, a histogram
round), a forward pre-hook and hook on the model catch the batch (its first training-mode
forward after a step) and its outputs; on the other steps the model carries no hook of
trainwatch's and takes torch's fast call path. On the CPU the loss is read once as it is
reported and the callbacks see a float; on an accelerator they see a detached tensor, read
only on the steps a callback logs it (a read is a device sync), and the epoch's losses are
summed on the device.

The watcher also tells mistakes in the loop's wiring, once each: a loss reported after the
step (``watch.loss_after_step``), training forwards in eval mode
(``watch.eval_mode_training``), gradients never reset (``watch.grads_not_reset``: the same
``.grad`` tensors over the first steps), an evaluation in training mode
(``watch.eval_in_training_mode``: BatchNorm's batch counter moved after the epoch's last
step) and a loss that is no scalar (``watch.bad_loss``).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from trainwatch.core.callback import Callback
from trainwatch.core.checks import optional_count
from trainwatch.core.monitor import Monitor
from trainwatch.core.state import RunState
from trainwatch.torch.backend import (
    CopySafeHook,
    TorchBackend,
    acc_dtype,
    in_own_pass,
    is_compiling,
    stack_scalars,
)
from trainwatch.torch.inputs import ForwardInputs

#: the first steps over which the watcher follows a gradient tensor, to tell a loop that never
#: resets its gradients (no ``optimizer.zero_grad()``)
GRAD_RESET_STEPS = 4
#: reported losses kept before they are folded into one partial sum (on the device)
LOSS_FOLD = 1024


class Watcher:
    """Watches a torch model and optimizer through hooks; see :func:`watch`.

    Attributes:
        monitor: the :class:`~trainwatch.Monitor` driving the callbacks.
        backend: the :class:`~trainwatch.torch.TorchBackend` the callbacks see.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any = None,
        *,
        logdir: str | os.PathLike | None = None,
        callbacks: Iterable[Callback] | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        figures: bool = False,
        **monitor_kwargs: Any,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        optional_count("epochs", epochs)
        optional_count("steps_per_epoch", steps_per_epoch)
        # (Monitor would refuse an unknown keyword too, naming itself: this names watch()
        # and the option meant)
        known = ({*inspect.signature(Monitor).parameters, *inspect.signature(Watcher).parameters}
                 - {"model", "loss", "optimizer", "loss_fn", "monitor_kwargs"})
        for name in monitor_kwargs.keys() - known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"watch() got an unexpected keyword argument {name!r}{hint}")
        self.model = model
        self.optimizer = optimizer
        self.backend = TorchBackend(model, loss_fn, optimizer)
        if callbacks is None:
            from trainwatch.callbacks import GradientCheck, default_callbacks

            callbacks = default_callbacks(figures=figures)
            if loss_fn is None:  # no loss function to check with
                callbacks = [cb for cb in callbacks if not isinstance(cb, GradientCheck)]
        self.monitor = Monitor(self.backend, logdir=logdir, callbacks=callbacks,
                               **monitor_kwargs)
        self._in_step = False
        self._epoch_open = False
        self._backward_reported = False
        self._closure_pending = False  # a step(closure) whose closure has not returned yet
        self._targets_reported = False
        self._losses: list[Any] = []  # this epoch's reported losses (detached), summed lazily
        self._loss_partial: list[Any] = []  # partial sums of LOSS_FOLD losses each
        self._closed = False
        self._await_output = False
        self._predictions: Any = None
        # (copy-safe hooks: copy.deepcopy(model) or torch.save(model) while watched works,
        # and the copy is not watched)
        self._post_handle = optimizer.register_step_post_hook(CopySafeHook(self._step_post))
        self._step_pre_hook = CopySafeHook(self._step_pre)
        self._pre_handle: Any = None  # attached for the steps a callback is awake for
        self._forward_hooks = (CopySafeHook(self._forward_pre), CopySafeHook(self._forward_post))
        self._forward_handles: list[Any] = []  # attached for the steps that read the batch
        self._quiet = False  # no callback awake this step: the hooks only count the step
        self._eval_forward = False  # a forward with gradients in eval mode since the last step
        self._forwards_seen = 0  # calls of the forward pre-hook since the last step
        self._first_step_unreported = False  # no loss reported before the first step ended
        self._grad_trace: list[tuple[Any, int, int]] = []  # see _follow_gradients
        # a BatchNorm's batch counter, bumped by each training-mode forward: its version at
        # the end of the last step (see _check_forwards_since_last_step)
        self._bn_counter = next(
            (m.num_batches_tracked for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and isinstance(m.num_batches_tracked, torch.Tensor)), None)
        self._bn_version_at_step = -1
        # where reads are cheap (the CPU) the loss is read once, as it is reported: callbacks
        # see it as a float (LossMonitor judges every step's), and so does the epoch's mean
        self._read_losses = self.backend.host_reads_cheap
        self.monitor.train_begin(epochs, steps_per_epoch)
        self._follow_schedule()

    # -- hooks -----------------------------------------------------------------------------------

    def _follow_schedule(self) -> None:
        """Attach the optimizer's step pre-hook for a step a callback is awake for and the
        model's forward hooks for a step whose batch a callback reads; remove them for the
        others (on a quiet step only the post-hook runs, to count it; a module with hooks
        takes torch's slower call path)."""
        callbacks = self.monitor.callbacks
        self._quiet = callbacks.quiet and not self._closed
        if self._quiet and self._pre_handle is not None:
            self._pre_handle.remove()
            self._pre_handle = None
            state = self.monitor.state  # (no batch_begin on quiet steps: nothing to hold)
            state.inputs = state.targets = state.predictions = None
        elif not self._quiet and self._pre_handle is None and not self._closed:
            self._pre_handle = self.optimizer.register_step_pre_hook(self._step_pre_hook)
        needed = callbacks.batch_needed
        if needed and not self._forward_handles:
            pre, post = self._forward_hooks
            self._forward_handles = [
                self.model.register_forward_pre_hook(pre, with_kwargs=True),
                self.model.register_forward_hook(post),
            ]
        elif not needed and self._forward_handles:
            self._remove_forward_hooks()

    def _remove_forward_hooks(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles = []

    def _open_batch(self, inputs: Any) -> None:
        if not self._epoch_open:
            self._epoch_open = True
            self.monitor.epoch_begin()
        self._in_step = True
        self._backward_reported = False
        self._targets_reported = False
        self._await_output = False
        self._predictions = None
        self.monitor.batch_begin(inputs, None)

    def _forward_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if is_compiling():  # (traced into compiled code: nothing may happen, see
            return None      # _announce_step; a fullgraph compile would fail on it)
        self._forwards_seen += 1
        # the first training forward after a step opens the batch; later forwards of the
        # same step (gradient accumulation, auxiliary passes) and eval/no-grad passes don't
        if self._in_step or self._closed or in_own_pass() or not torch.is_grad_enabled():
            return None
        if not module.training:  # (taken for validation; noted: see _announce_step)
            self._eval_forward = True
            return None
        # (a forward of one tensor is recorded as that tensor; any other, model((x, ids))
        # included, as its arguments, which slice by examples)
        self._open_batch(args[0] if len(args) == 1 and not kwargs
                         and isinstance(args[0], torch.Tensor) else ForwardInputs(args, kwargs))
        self._await_output = True
        return None

    def _forward_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        # keep the batch's outputs as its predictions (a reference: loss() hands callbacks a
        # detached view, never a copy)
        if self._await_output and not in_own_pass() and not is_compiling():
            self._await_output = False
            self._predictions = output
        return None

    def _step_pre(self, optimizer: Any, args: tuple, kwargs: dict) -> Any:
        if self._closed:
            return None
        # (args are step()'s own: the optimizer first, then the closure if positional)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is None:
            self._announce_step()
            return None
        # optimizer.step(closure) (LBFGS): the batch's forward, loss and backward run inside
        # the step, in the closure; the step is announced when the closure first returns
        # (gradients ready, the parameters not yet moved), so the closure's first forward is
        # the batch's, as in any other step
        self._closure_pending = True

        def closure_then_announce() -> Any:
            loss = closure()
            if self._closure_pending and not self._closed:
                self._announce_step()
            return loss

        if len(args) > 1:
            return (args[0], closure_then_announce, *args[2:]), kwargs
        return args, {**kwargs, "closure": closure_then_announce}

    def _announce_step(self) -> None:
        """The backward's end (unless announced already) and the step's beginning."""
        self._closure_pending = False
        if not self._in_step:
            self._open_batch(None)
        if self._eval_forward and self.monitor.state.inputs is None:
            self.monitor.alerts.fire(
                "watch.eval_mode_training", "info",
                "the step's forward ran with the model in eval mode (model.eval()), which the "
                "watcher takes for validation: it records no training batch, so gradient "
                "checks and the step-wise accuracy gap have none to run on",
                self.monitor.state.step,
                suggestion="train with model.train() (to freeze BatchNorm or dropout, call "
                           ".eval() on those layers only)")
        if self._forward_handles and not self._forwards_seen:
            self.monitor.alerts.fire(
                "watch.forward_unseen", "info",
                "the step's forward ran without calling trainwatch's forward hooks on the "
                "watched model (the model was compiled after watch(), or the loop calls another "
                "module): no training batch is recorded, so gradient checks and the step-wise "
                "accuracy gap have none to run on", self.monitor.state.step,
                suggestion="give watch() the module the loop calls: watch(torch.compile(model), "
                           "...) rather than torch.compile after watch(model, ...)")
        self._forwards_seen = 0
        self._eval_forward = False  # (one step's: a validation pass before it no longer counts)
        if not self._backward_reported:
            self._backward_reported = True
            self.monitor.backward_end()
        self.monitor.step_begin()

    def _step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._closed:
            return
        if self._closure_pending:  # (an optimizer that never called its closure)
            self._announce_step()
        if self.monitor.state.step < GRAD_RESET_STEPS:
            if self.monitor.state.step < 2:
                self._check_loss_order(self.monitor.state.step)
            self._follow_gradients()
        self.monitor.step_end()
        if self._bn_counter is not None:
            self._bn_version_at_step = self._bn_counter._version
        self._in_step = False
        if not (self._quiet and self.monitor.callbacks.quiet):  # (else nothing changed)
            self._follow_schedule()

    def _check_loss_order(self, step: int) -> None:
        """At the end of steps 0 and 1: a loss first reported between them came after
        ``optimizer.step()`` (said once)."""
        reported = self._losses_reported() > 0
        if step == 0:
            self._first_step_unreported = not reported
        elif self._first_step_unreported and reported:
            self.monitor.alerts.fire(
                "watch.loss_after_step", "warning",
                "watcher.loss() is called after optimizer.step(): each loss is recorded with "
                "the next step (one step late: a NaN is blamed on the step after it) and its "
                "batch is over, so gradient checks and the step-wise accuracy gap have none "
                "to run on", step, suggestion="call watcher.loss(loss, targets) before "
                                              "optimizer.step(), right after computing the loss")

    def _follow_gradients(self) -> None:
        """After each of the first ``GRAD_RESET_STEPS`` steps: the first parameter's ``.grad``
        tensor, its version counter and the losses reported so far. A loop that resets its
        gradients (``zero_grad()``: None, or zeroed in place, one more version) gives a new
        tensor or one version more than its backward passes; one that never does keeps the
        same tensor, grown by exactly one version a reported loss (said once)."""
        grad = next((p.grad for group in self.optimizer.param_groups for p in group["params"]
                     if p.grad is not None), None)
        trace = self._grad_trace
        if grad is None:
            trace.clear()
            return
        trace.append((grad, grad._version, self._losses_reported()))
        if len(trace) < GRAD_RESET_STEPS:
            return
        never_reset = all(b[0] is a[0] and b[2] > a[2] and b[1] - a[1] == b[2] - a[2]
                          for a, b in zip(trace, trace[1:]))
        trace.clear()
        if never_reset:
            self.monitor.alerts.fire(
                "watch.grads_not_reset", "warning",
                f"the gradients are never reset: over steps 0-{GRAD_RESET_STEPS - 1} the "
                "parameters' .grad tensors stay the same and grow by one backward pass per "
                "batch, with no zero_grad() between, so every optimizer step applies the sum of "
                "all the gradients so far (the updates grow until training diverges)",
                self.monitor.state.step,
                suggestion="call optimizer.zero_grad() (or model.zero_grad()) once per step, "
                           "before loss.backward()")

    def _check_forwards_since_last_step(self) -> None:
        """At an epoch end: a training-mode forward since the epoch's last step (BatchNorm's
        batch counter moved) is an evaluation without ``model.eval()``: said once."""
        counter, seen = self._bn_counter, self._bn_version_at_step
        if counter is None or seen < 0 or counter._version == seen:
            return
        self.monitor.alerts.fire(
            "watch.eval_in_training_mode", "warning",
            "the model ran forward in training mode between the epoch's last step and "
            "epoch_end (validation, or an accuracy pass, without model.eval()): BatchNorm's "
            "running statistics took those batches in (and dropout was on), so the "
            "evaluation's numbers and the model's eval-mode behaviour are off",
            self.monitor.state.step,
            suggestion="call model.eval() before evaluating (and model.train() before the next "
                       "training step)")

    # -- what the loop reports --------------------------------------------------------------------

    def loss(self, loss: Any, targets: Any = None, predictions: Any = None) -> Any:
        """Report the batch's loss (a scalar tensor: on the CPU read once, here; on an
        accelerator kept on the device and read by the logging callbacks on their steps).
        Give the batch's ``targets`` to let gradient checks run on it (when several batches
        make one optimizer step, the first one's); ``predictions`` default to the model's
        output of the batch's first forward.
        Returns ``loss`` unchanged, so ``loss = watcher.loss(criterion(out, y), y)`` works."""
        if self._quiet and self._epoch_open and isinstance(loss, torch.Tensor) and (
                loss.numel() == 1):
            # a step no callback is awake for: the loss for on_losses and the epoch's mean
            value = loss.item() if self._read_losses else loss.detach()
            self.monitor.loss_computed(value)
            self._keep(value)
            return loss
        if self._closed:
            return loss
        if not self._in_step:
            self._open_batch(None)
        if targets is not None and not self._targets_reported:
            # the step's first batch: its inputs are the ones the first forward recorded (with
            # gradient accumulation, or after a step an AMP scaler skipped, later batches join
            # the same optimizer step)
            self._targets_reported = True
            self.monitor.state.targets = targets
        value = self._scalar(loss)
        if value is None:
            return loss
        if predictions is None:
            predictions = self._predictions
        # (of several outputs, the scores; detached)
        self.monitor.loss_computed(value, self.backend.scores(predictions))
        self._keep(value)
        return loss

    def _keep(self, value: Any) -> None:
        """Keep a reported loss for the epoch's mean (``train_loss``)."""
        losses = self._losses
        losses.append(value)
        if len(losses) == LOSS_FOLD:  # fold on the device (no transfer) to bound memory
            self._loss_partial.append(_sum(losses))
            losses.clear()

    def _losses_reported(self) -> int:
        """How many losses this epoch has reported so far (see :meth:`_keep`)."""
        return LOSS_FOLD * len(self._loss_partial) + len(self._losses)

    def _scalar(self, loss: Any) -> Any:
        """The loss as kept (a float on the CPU, else a detached one-element tensor; a number
        as a float), or None for a value that is no scalar loss: reported once
        (``watch.bad_loss``), never raised."""
        if isinstance(loss, torch.Tensor):
            if loss.numel() == 1:
                return loss.item() if self._read_losses else loss.detach()
            problem = f"a tensor of shape {tuple(loss.shape)}, not a scalar"
        else:
            try:
                return float(loss)
            except (TypeError, ValueError):
                problem = f"{loss!r:.60}, not a number"
        self.monitor.alerts.fire(
            "watch.bad_loss", "warning", f"watcher.loss() got {problem}; that loss is not "
            "recorded (nor any other that is not a scalar)", self.monitor.state.step,
            suggestion="pass the batch's scalar loss (reduction='mean' or 'sum')")
        return None

    def backward_end(self) -> None:
        """Optional: announce the end of the backward pass (else the optimizer's step
        pre-hook does, just before the step)."""
        if self._closed or self._backward_reported:
            return
        if not self._in_step:
            self._open_batch(None)
        self._backward_reported = True
        self.monitor.backward_end()

    def epoch_end(self, metrics: Mapping[str, float] | None = None) -> None:
        """Report the end of an epoch with its metrics (``train_accuracy``, ``val_accuracy``,
        ``val_loss``, ...). ``train_loss`` defaults to the mean of the losses reported this
        epoch (read once, here)."""
        if self._closed:
            return
        self._check_forwards_since_last_step()
        values = self.monitor.metric_floats(metrics or {})
        count = self._losses_reported()
        if "train_loss" not in values and count:
            total = _sum(self._loss_partial + self._losses)  # partial sums and the rest
            values["train_loss"] = float(total) / count  # the epoch's one read of the losses
        self._losses, self._loss_partial = [], []
        if not self._epoch_open:
            self.monitor.epoch_begin()
        if any(k.startswith("val_") for k in values):
            self.monitor.validation_end(values)
        self.monitor.epoch_end(values)
        self._epoch_open = False
        self._follow_schedule()

    # -- results and detaching ---------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        """The run state the callbacks see."""
        return self.monitor.state

    @property
    def step(self) -> int:
        """Optimizer steps taken while watched."""
        return self.monitor.step

    @property
    def should_stop(self) -> bool:
        """True once a callback asked training to stop (e.g. early stopping)."""
        return self.monitor.should_stop

    def summary(self) -> str:
        """The run's alerts and why it stopped, as text."""
        return self.monitor.summary()

    def close(self, exception: BaseException | None = None) -> None:
        """End the run (``on_train_end``, flush the outputs) and remove every hook trainwatch
        put on the model and the optimizer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._quiet = False
        try:
            self.monitor.train_end(exception)
        finally:
            self._post_handle.remove()
            if self._pre_handle is not None:
                self._pre_handle.remove()
                self._pre_handle = None
            self._remove_forward_hooks()
            self.backend.remove_hooks()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self.close(exc)
        return False


def _sum(values: list[Any]) -> Any:
    """Sum of floats and/or scalar tensors, on the tensors' device (no host transfer), in
    float64 where the device has it."""
    # (floats told apart by isinstance(v, float): torch.Tensor's own isinstance check costs
    # ~0.2 µs a float)
    floats = [v for v in values if isinstance(v, float)]
    total: Any = math.fsum(floats)
    tensors = [v for v in values if not isinstance(v, float)] if len(floats) < len(values) else []
    if tensors:
        stacked = stack_scalars(tensors, tensors[0].device)
        total = stacked.sum(dtype=acc_dtype(stacked.device)) + total
    return total


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any = None,
    *,
    logdir: str | os.PathLike | None = None,
    callbacks: Iterable[Callback] | None = None,
    **monitor_kwargs: Any,
) -> Watcher:
    """Watch an existing PyTorch loop: returns a :class:`Watcher` already attached.

    Args:
        model: the ``nn.Module`` being trained (its training-mode forwards mark batches);
            a ``torch.compile`` or ``DistributedDataParallel`` wrapper is watched under the
            names of the module inside.
        optimizer: its optimizer (its step hooks mark the backward's end and the step).
        loss_fn: the loss ``loss_fn(outputs, targets)`` (needed by gradient checks and
            validation; None leaves GradientCheck out of the default callbacks).
        logdir: folder for TensorBoard files and ``alerts.jsonl`` (None: nothing on disk).
        callbacks: None (default) for :func:`~trainwatch.callbacks.default_callbacks`.
        **monitor_kwargs: ``figures`` (with the default callbacks, also draw the
            activation-distribution figure, as the demo does; default False), ``epochs``,
            ``steps_per_epoch`` (progress bar) and the
            :class:`~trainwatch.Monitor` options (``outputs``, ``progress``, ``log_every``,
            ``alert_sinks``, ``raise_errors``).

    Per batch, call ``watcher.loss(loss, targets)``; per epoch,
    ``watcher.epoch_end({"val_accuracy": ..})``; at the end ``watcher.close()`` (or use it as
    a context manager).
    """
    return Watcher(model, optimizer, loss_fn, logdir=logdir, callbacks=callbacks,
                   **monitor_kwargs)
