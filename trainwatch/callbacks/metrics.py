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
    ``loss/regularization`` when the loop reports them) and the epoch metrics
    (``accuracy/train``, ``accuracy/val``, ``loss/val``, ...). Always on: a
    :class:`~trainwatch.Monitor` adds one if the callbacks don't include it.

    It needs no batch hook: it sees each loss (:attr:`~trainwatch.Callback.sees_every_loss`)
    and sleeps otherwise, so the steps between its loss points stay quiet.

    Args:
        every: steps between loss points (default 10; the loss is read from the framework
            only on those steps).
    """

    order = -100
    sees_every_loss = True

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

    def on_loss_computed(self, state: RunState) -> None:
        if state.step % self.every or state.loss is None or state.step == self._logged_step:
            return
        self._logged_step = state.step
        tags, scalars = ["loss/train"], [state.loss]
        if state.reg_loss is not None and state.data_loss is not None:
            tags += ["loss/data", "loss/regularization"]
            scalars += [state.data_loss, state.reg_loss]
        step = state.step

        def write(floats: list[float]) -> None:
            values = dict(zip(tags, floats))
            if not values.get("loss/regularization", 1.0):
                del values["loss/data"], values["loss/regularization"]  # no regularisation
            state.writer.scalars(values, step)

        self.read_at_step_end(state, scalars, write)  # on a GPU with the other callbacks' reads

    def on_epoch_end(self, state: RunState) -> None:
        values = {METRIC_TAGS.get(k, f"metrics/{k}"): v for k, v in state.metrics.items()}
        values["epoch"] = state.epoch
        state.writer.scalars(values, state.step)
