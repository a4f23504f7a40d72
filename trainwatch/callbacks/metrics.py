"""MetricLogger: the loss and accuracy curves every run gets."""

from __future__ import annotations

from trainwatch.core.budget import StepBatch
from trainwatch.core.callback import NEVER, Callback
from trainwatch.core.checks import count
from trainwatch.core.state import RunState
from trainwatch.outputs.console import ConsoleOutput

#: epoch-level metric name -> TensorBoard tag
METRIC_TAGS = {
    "train_loss": "loss/train_epoch",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
}


class MetricLogger(Callback):
    """Writes the training loss every ``every`` steps (``loss/train``, and ``loss/data`` and
    ``loss/regularization`` when the loop reports them) and the epoch metrics
    (``accuracy/train``, ``accuracy/val``, ``loss/val``, ...). Always on: a
    :class:`~trainwatch.Monitor` adds one if the callbacks don't include it.

    It needs no batch hook: it sees the loss of its steps
    (:attr:`~trainwatch.Callback.sees_loss_every`) and sleeps otherwise, so the steps
    between its loss points stay quiet. The points are
    written in batches (:class:`~trainwatch.core.budget.StepBatch`: up to 100 steps or 1 s
    late, and at every epoch end).

    Args:
        every: steps between loss points (default 10; the loss is read from the framework
            only on those steps, in one read per batch).
    """

    order = -100

    def __init__(self, every: int = 10):
        self.every = count("every", every)
        self.sees_loss_every = self.every
        self._logged_step = -1  # (several batches may make one step: its first loss is kept)
        self._points = StepBatch()  # (step, loss[, data loss, regularisation]) to write

    def on_train_begin(self, state: RunState) -> None:
        self._logged_step, self._points = -1, StepBatch()
        bar = state.writer.find(ConsoleOutput)
        if bar is not None and state.epochs and state.steps_per_epoch:
            bar.start(state.epochs * state.steps_per_epoch)
        state.writer.layout({
            "loss": {"training loss": ("Multiline", [r"^loss/train$", r"^loss/train_epoch$",
                                                     r"^loss/val$"])},
            "accuracy": {"train vs validation": ("Multiline", [r"^accuracy/train$",
                                                               r"^accuracy/val$"])},
        })

    def next_step(self, step: int) -> int:
        return NEVER

    def on_loss_computed(self, state: RunState) -> None:
        if state.step % self.every or state.loss is None or state.step == self._logged_step:
            return
        self._logged_step = step = state.step
        terms = state.reg_loss is not None and state.data_loss is not None
        self._points.add(step, (step, state.loss, *((state.data_loss, state.reg_loss)
                                                      if terms else ())))
        if step == 0 or self._points.due(step):  # (the first point at once: a bar with a loss)
            self._write_points(state)

    def _write_points(self, state: RunState) -> None:
        """Write the gathered loss points, read together (on a GPU with the other callbacks'
        reads of the step)."""
        points = self._points.take()
        if not points:
            return

        def write(floats: list[float]) -> None:
            values = iter(floats)
            for step, *read in points:
                scalars = {"loss/train": next(values)}
                if len(read) == 3:
                    data, reg = next(values), next(values)
                    if reg:  # (a zero regularisation term: no regularisation)
                        scalars.update({"loss/data": data, "loss/regularization": reg})
                state.writer.scalars(scalars, step)

        self.read_at_step_end(state, [v for _, *values in points for v in values], write)

    def on_epoch_end(self, state: RunState) -> None:
        self._write_points(state)
        values = {METRIC_TAGS.get(k, f"metrics/{k}"): v for k, v in state.metrics.items()}
        values["epoch"] = state.epoch
        state.writer.scalars(values, state.step)

    def on_train_end(self, state: RunState) -> None:
        self._write_points(state)  # (a run that ends, or raised, within an epoch)
