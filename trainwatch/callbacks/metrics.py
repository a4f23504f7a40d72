"""MetricLogger: the loss and accuracy curves every run gets."""

from __future__ import annotations

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
    ``loss/regularization`` when the loop reports them), the learning rate as the losses
    come in (``learning_rate``: the optimizer's largest, about every second or 100 steps;
    where the backend knows it) and the epoch metrics (``accuracy/train``, ``accuracy/val``,
    ``loss/val``, ...). Always on: a :class:`~trainwatch.Monitor` adds one if the callbacks
    don't include it.

    It needs no batch hook: the losses come to :meth:`on_losses` in batches (the run's first
    at once, the rest up to 100 steps or 1 s late, and at every epoch end), and it sleeps
    otherwise.

    Args:
        every: steps between loss points (default 10; with several batches per step, the
            step's first loss; on an accelerator the points of a batch are read in one
            transfer).
    """

    order = -100

    def __init__(self, every: int = 10):
        self.every = count("every", every)
        self._logged_step = -1  # (several batches may make one step: its first loss is kept)

    def on_train_begin(self, state: RunState) -> None:
        self._logged_step = -1
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

    def on_losses(self, state: RunState) -> None:
        lr = state.backend.learning_rate()
        if lr is not None and state.losses:  # (now: at the latest loss's step)
            state.writer.scalars({"learning_rate": lr}, state.losses[-1][0])
        every, last = self.every, self._logged_step
        points = []  # (step, loss[, data loss, regularisation])
        for step, loss, data, reg in state.losses:
            if step % every or step == last:
                continue
            last = step
            points.append((step, loss) if data is None or reg is None else
                          (step, loss, data, reg))
        self._logged_step = last
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
        values = {METRIC_TAGS.get(k, f"metrics/{k}"): v for k, v in state.metrics.items()}
        values["epoch"] = state.epoch
        state.writer.scalars(values, state.step)
