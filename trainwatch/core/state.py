"""The run's state: what every hook sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwatch.alerts.manager import AlertManager
    from trainwatch.core.backend import Backend
    from trainwatch.outputs.base import OutputList


@dataclass
class RunState:
    """Everything a callback may read, passed to every hook.

    Attributes:
        backend: the model, loss and optimizer, seen through :class:`~trainwatch.Backend`.
        writer: where to write scalars, histograms, images, text and figures.
        alerts: the run's :class:`~trainwatch.alerts.AlertManager`.
        logdir: the run's log folder, or None.
        step: the global step: the index (0-based) of the batch being processed; inside
            ``on_step_end`` it is the step just taken. It counts optimizer steps, not epochs.
        epoch: the current epoch (0-based).
        batch_index: the batch's index within the epoch (0-based).
        epochs: the planned number of epochs, if known.
        steps_per_epoch: batches per epoch, if known.
        inputs, targets: the current batch.
        predictions: the model's outputs for the batch (after ``on_loss_computed``).
        loss: the batch's total loss (data + regularisation) as a float (numpy, and torch
            on the CPU), or a framework scalar on an accelerator (convert with ``float()``
            only when you need it: there that syncs).
        data_loss, reg_loss: the two terms when the loop reports them (else None).
        losses: inside :meth:`~trainwatch.Callback.on_losses`, the losses handed over:
            ``(step, loss, data_loss, reg_loss)`` tuples, oldest first (else empty).
        metrics: the latest epoch-level metrics, e.g. ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy`` (fractions in [0, 1]).
        stop_requested / stop_reason: set by :meth:`request_stop`.
        exception: the exception that ended training, inside ``on_train_end``.
    """

    backend: Backend
    writer: OutputList
    alerts: AlertManager
    logdir: str | None = None
    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    epochs: int | None = None
    steps_per_epoch: int | None = None
    inputs: Any = None
    targets: Any = None
    predictions: Any = None
    loss: Any = None
    data_loss: Any = None
    reg_loss: Any = None
    losses: list[tuple[int, Any, Any, Any]] = field(default_factory=list, repr=False)
    metrics: dict[str, float] = field(default_factory=dict)
    stop_requested: bool = False
    stop_reason: str | None = None
    exception: BaseException | None = None
    #: (callback, values, then) queued by :meth:`Callback.read_at_step_end`, read together
    #: by the Monitor after every ``on_step_end``
    queued_reads: list[tuple[Any, list[Any], Callable[[list[float]], None]]] = field(
        default_factory=list, repr=False)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch (the first reason given is kept)."""
        if not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = reason
