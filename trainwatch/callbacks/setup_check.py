"""SetupCheck: how the training loop is wired, checked on its first steps.

Mistakes that break training without a NaN or an error, each seen on the first steps and
said once (warnings):

* ``setup.squashed_scores`` (the first batch): the model's outputs are a softmax's (rows in
  [0, 1] summing to 1 along the class dim) fed to softmax cross-entropy, or a sigmoid's (all
  strictly inside (0, 1)) fed to BCE with logits: those losses take logits and squash them
  themselves; squashed twice, the loss flattens and learning crawls.
* ``setup.broadcast`` (the first batch): a mean squared error given outputs and targets whose
  shapes broadcast into a larger one (``(N, 1)`` against ``(N,)`` makes ``(N, N)``): every
  output is compared with every target, and the model learns their mean.
* ``setup.unshuffled_data`` (after ``ORDER_STEPS`` steps): the targets of the first steps (one
  array each, 8 or more) came in sorted order, or all alike: the training data is not
  shuffled, so each batch shows one class and the model chases it.

Their statistics are computed where the tensors are and read with the step's other values
(:meth:`~trainwatch.Callback.read_at_step_end`: one transfer on a GPU). The watcher checks
the rest of a torch loop's wiring itself (``watch.grads_not_reset``,
``watch.eval_in_training_mode``, ...).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainwatch.callbacks.loss_monitor import class_axis
from trainwatch.core.callback import NEVER, Callback
from trainwatch.core.checks import flag
from trainwatch.core.state import RunState

#: the first steps whose targets are followed to tell unshuffled training data
ORDER_STEPS = 20


def squashed_scores(kind: str | None, low: float, high: float,
                    row_sums_off: float | None) -> str | None:
    """What squashed a loss's logits before it, from a batch's least and largest score and
    how far its rows' sums along the class dim are from 1 at most (None without a class
    dim): "softmax" where softmax cross-entropy's scores lie in [0, 1] and every row sums to
    1, "sigmoid" where sigmoid BCE's all lie strictly inside (0, 1); else None (NaN too).
    Such losses apply the softmax or sigmoid themselves: a second one flattens the loss."""
    if (kind == "softmax_cross_entropy" and row_sums_off is not None and low >= 0.0
            and high <= 1.0 and row_sums_off <= 1e-3):
        return "softmax"
    if kind == "sigmoid_bce" and low > 0.0 and high < 1.0:
        return "sigmoid"
    return None


class SetupCheck(Callback):
    """Checks how the loop is wired on its first steps (see the module docstring): scores
    squashed before a loss that squashes them, outputs and targets that broadcast, training
    data in sorted order.

    Args:
        check_order: tell training data fed in sorted order, from the first ``ORDER_STEPS``
            steps' targets (default True; False for curriculum or continual learning, which
            order the data on purpose).
    """

    def __init__(self, *, check_order: bool = True):
        self.check_order = flag("check_order", check_order)
        #: the targets of the steps followed so far (see _follow_order); None once there is
        #: nothing more to follow
        self._order: list[Any] | None = None

    def on_train_begin(self, state: RunState) -> None:
        self._order = [] if self.check_order else None

    def next_step(self, step: int) -> int:
        if step == 0 or (step < ORDER_STEPS and self._order is not None):
            return step
        return NEVER

    def reads_batch(self, step: int) -> bool:
        return step == 0  # (the first batch's outputs)

    def on_loss_computed(self, state: RunState) -> None:
        if state.step < ORDER_STEPS and self._order is not None:
            self._follow_order(state)
        if state.step == 0:
            self._check_squashed(state)
            self._check_broadcast(state)

    def _check_squashed(self, state: RunState) -> None:
        """A softmax before softmax cross-entropy, or a sigmoid before BCE with logits, on the
        first batch's scores (see :func:`squashed_scores`; their statistics computed where
        they are, read with the step's other values): said once."""
        kind = getattr(state.backend, "loss_kind", None)
        scores = state.predictions
        shape = tuple(getattr(scores, "shape", ()))
        if kind not in ("softmax_cross_entropy", "sigmoid_bce") or math.prod(shape) < 16:
            return
        targets = getattr(state.targets, "shape", None)
        axis = class_axis(shape, None if targets is None else tuple(targets))
        # (numpy arrays and framework tensors alike: abs(), .sum(axis=), .min(), .max())
        values = [scores.min(), scores.max()]
        if axis is not None and shape[axis] >= 2:
            values.append(abs(scores.sum(axis=axis) - 1.0).max())
        self.read_at_step_end(state, values, lambda read: self._squashed(
            state, squashed_scores(kind, read[0], read[1], read[2] if len(read) > 2 else None)))

    def _follow_order(self, state: RunState) -> None:
        """Over the first ``ORDER_STEPS`` steps, each step's targets (one array of 8 or more;
        a reference), then, all at once, whether each runs up, runs down, and its ends,
        computed where they are and read with that step's other values (see
        :meth:`_judge_order`)."""
        order, targets = self._order, state.targets
        shape = tuple(getattr(targets, "shape", ()))
        if len(shape) != 1 or shape[0] < 8:
            self._order = None  # (several targets, a few: nothing to tell from)
            return
        if len(order) > state.step:  # (a step's later batches: accumulation)
            return
        if order and targets is order[-1]:
            self._order = None  # (one buffer refilled every step: its past is gone)
            return
        order.append(targets)
        if len(order) < ORDER_STEPS:
            return
        self._order = None
        values = []
        for t in order:
            ahead, behind = t[1:], t[:-1]
            values += [(ahead >= behind).all(), (ahead <= behind).all(), t[0], t[-1]]
        self.read_at_step_end(state, values, lambda read: self._judge_order(state, read))

    @staticmethod
    def _judge_order(state: RunState, read: list[float]) -> None:
        steps = [read[i:i + 4] for i in range(0, len(read), 4)]
        ends = [v for _, _, first, last in steps for v in (first, last)]
        rising = all(up for up, _, _, _ in steps) and ends == sorted(ends)
        falling = all(down for _, down, _, _ in steps) and ends == sorted(ends, reverse=True)
        if not (rising or falling):
            return
        what = (f"all {ends[0]:g}" if ends[0] == ends[-1] else
                f"sorted, from {ends[0]:g} to {ends[-1]:g}")
        state.alerts.fire(
            "setup.unshuffled_data", "warning",
            f"the targets of the first {len(steps)} steps are {what}: the training data is "
            "probably not shuffled, so each batch shows one class (or one range of values) "
            "and the model chases it, the loss jumping at every boundary (unless one class "
            "makes up nearly all the data)", state.step,
            suggestion="shuffle the training data every epoch (DataLoader(..., shuffle=True), "
                       "or a fresh random permutation); if the order is on purpose (a "
                       "curriculum), SetupCheck(check_order=False) leaves this out")

    @staticmethod
    def _check_broadcast(state: RunState) -> None:
        """A regression loss given outputs and targets of shapes that broadcast into a larger
        one (``(N, 1)`` against ``(N,)`` makes ``(N, N)``): every output is compared with
        every target, and the model learns their mean. Shapes only; said once."""
        outputs = tuple(getattr(state.predictions, "shape", ()) or ())
        targets = tuple(getattr(state.targets, "shape", ()) or ())
        if getattr(state.backend, "loss_kind", None) != "mse" or not outputs or not targets:
            return
        try:
            joint = np.broadcast_shapes(outputs, targets)
        except ValueError:  # (the loss itself refuses them)
            return
        if joint == outputs and joint == targets:
            return
        state.alerts.fire(
            "setup.broadcast", "warning",
            f"the loss compares outputs of shape {outputs} with targets of shape {targets}, "
            f"which broadcast into {joint}: every output is compared with every target (or "
            "copied across), so the model learns their mean, not each example's value",
            state.step,
            suggestion="give outputs and targets the same shape (targets.view_as(outputs), or "
                       "outputs.squeeze(-1))")

    @staticmethod
    def _squashed(state: RunState, squash: str | None) -> None:
        if squash == "softmax":
            state.alerts.fire(
                "setup.squashed_scores", "warning",
                "the model's outputs are probabilities already (each row of the first batch's "
                "scores lies in [0, 1] and sums to 1), but softmax cross-entropy takes logits "
                "and applies the softmax itself: applied twice, it flattens the loss and "
                "learning crawls", state.step,
                suggestion="remove the model's final softmax (apply it only at inference), or "
                           "train on log-probabilities with a negative log-likelihood loss")
        elif squash == "sigmoid":
            state.alerts.fire(
                "setup.squashed_scores", "warning",
                "the model's outputs all lie strictly inside (0, 1), as a sigmoid's do, but "
                "binary cross-entropy with logits applies the sigmoid itself: applied twice, "
                "it flattens the loss and learning crawls", state.step,
                suggestion="remove the model's final sigmoid (apply it only at inference), or "
                           "use a binary cross-entropy on probabilities (nn.BCELoss)")
