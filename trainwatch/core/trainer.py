"""Trainer: trainwatch's own training loop, driving a :class:`~trainwatch.Monitor`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from trainwatch.alerts.sinks import AlertSink
from trainwatch.core.callback import Callback
from trainwatch.core.checks import count
from trainwatch.core.monitor import Monitor
from trainwatch.data import minibatches
from trainwatch.outputs.base import Output


class Trainer:
    """Minibatch training with every hook point announced to the callbacks.

    Args:
        model, loss, optimizer: a :class:`trainwatch.nn.Sequential` with a
            :mod:`trainwatch.nn` loss and optimizer (or a torch module, loss and optimizer).
        callbacks: None (default) for :func:`~trainwatch.callbacks.default_callbacks`,
            ``[]`` for none.
        logdir, outputs, alert_sinks, progress, raise_errors, log_every: as for
            :class:`~trainwatch.Monitor`.
    """

    def __init__(
        self,
        model: Any,
        loss: Any,
        optimizer: Any,
        *,
        callbacks: Iterable[Callback] | None = None,
        logdir: str | os.PathLike | None = None,
        outputs: Iterable[Output] = (),
        alert_sinks: Iterable[AlertSink] = (),
        progress: bool = True,
        raise_errors: bool = False,
        log_every: int = 10,
    ):
        self.monitor = Monitor(
            model, loss=loss, optimizer=optimizer, callbacks=callbacks, logdir=logdir,
            outputs=outputs, alert_sinks=alert_sinks, progress=progress,
            raise_errors=raise_errors, log_every=log_every,
        )
        self.backend = self.monitor.backend
        self.data_rng: np.random.Generator | None = None
        self.history: dict[str, list[float]] = {}

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 10,
        batch_size: int = 64,
        validation_data: tuple[Any, Any] | None = None,
        seed: int = 0,
    ) -> dict[str, list[float]]:
        """Train for ``epochs`` epochs of shuffled minibatches (order drawn from ``seed``).

        Returns the history: per-epoch ``train_loss``, ``train_accuracy`` and, with
        ``validation_data``, ``val_loss`` and ``val_accuracy``.
        """
        count("epochs", epochs)
        count("batch_size", batch_size)
        for name, value in (("x", x), ("y", y)):
            if not hasattr(value, "__len__"):
                raise TypeError(f"{name}: expected an array of examples, got "
                                f"{type(value).__name__}")
        if validation_data is not None and not (
                isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise TypeError(f"validation_data: expected a pair (x_val, y_val), got "
                            f"{type(validation_data).__name__}")
        if len(x) != len(y):
            raise ValueError(f"x, y: different lengths {len(x)} and {len(y)}")
        mon, backend = self.monitor, self.backend
        self.data_rng = np.random.default_rng(seed)
        steps_per_epoch = -(-len(x) // batch_size)
        with mon.run(epochs=epochs, steps_per_epoch=steps_per_epoch):
            for epoch in range(epochs):
                mon.epoch_begin(epoch)
                # per-batch loss and correct count stay framework scalars (on a GPU, on the
                # device) and are read in one transfer at the end of the epoch
                losses, corrects, sizes = [], [], []
                for xb, yb in minibatches(x, y, batch_size, self.data_rng):
                    mon.batch_begin(xb, yb)
                    scores = backend.forward(xb, training=True)
                    data_loss, reg_loss = backend.loss(scores, yb)
                    mon.loss_computed(data_loss + reg_loss, backend.scores(scores),
                                      data_loss=data_loss, reg_loss=reg_loss)
                    backend.backward()
                    mon.backward_end()
                    mon.step_begin()
                    backend.step()
                    mon.step_end()
                    losses.append(data_loss)
                    corrects.append(backend.count_correct(scores, yb))
                    sizes.append(len(xb))
                    if mon.should_stop:
                        break
                values = backend.scalars_to_host(losses + corrects)
                seen = max(sum(sizes), 1)
                metrics = {
                    "train_loss": float(np.dot(values[:len(losses)], sizes)) / seen,
                    "train_accuracy": float(sum(values[len(losses):])) / seen,
                }
                if validation_data is not None:
                    val_loss, val_acc = backend.evaluate(*validation_data)
                    metrics.update(val_loss=float(val_loss), val_accuracy=float(val_acc))
                # (no accuracy where the targets are no classification's: a regression)
                metrics = {k: v for k, v in metrics.items()
                           if not (k.endswith("accuracy") and math.isnan(v))}
                if validation_data is not None:
                    mon.validation_end(metrics)
                mon.epoch_end(metrics)
                for k, v in metrics.items():
                    self.history.setdefault(k, []).append(v)
                if mon.should_stop:
                    break
        return self.history
