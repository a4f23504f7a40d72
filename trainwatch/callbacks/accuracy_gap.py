"""AccuracyGapMonitor: training against validation accuracy, their gap, and a verdict.

KNOWLEDGE §3: a large gap between training and validation accuracy means overfitting (more
regularisation, dropout, more data); no gap but a low accuracy means too little capacity.
This callback writes the gap as a curve beside the accuracy curves MetricLogger already
writes, and turns the two patterns into alerts:

* ``accuracy_gap.overfit``: ``train − val`` accuracy above ``overfit_gap`` at each of the last
  ``patience`` evaluations, and growing over them (the accuracy gap did not shrink, or the
  loss gap ``val_loss − train_loss`` rose). Once firing it stays active while the gap is above
  ``overfit_gap / 2``, so a gap hovering at the threshold is one alert, not a storm.
* ``accuracy_gap.underfit``: training accuracy below ``underfit_accuracy`` with a gap within
  ± ``underfit_gap``, and stalled: it rose by less than ``min_improvement`` over the last
  ``patience`` evaluations (early epochs of a healthy run climb fast, so they don't count).
  An accuracy ``COLLAPSE`` below its best so far has fallen, not stalled: the message says so
  and blames instability (a learning rate too high), not capacity. Where the run raised other
  warnings first (update ratios, frozen or dead units, gradient checks, NaN), the advice
  points at those: a model that learns nothing is seldom too small.

A loop's training accuracy is counted as it trains (train mode: BatchNorm on batch statistics,
dropout on), its validation accuracy in eval mode. A gap between the two modes is no
memorisation: early in a BatchNorm net's training the running statistics lag behind the
weights (validation at chance while training climbs), and after a loss spike they lag again.
So before an epoch-wise overfit verdict the monitor evaluates training examples the way
validation is evaluated: from the first large gap on it keeps copies of the next training
batches (up to ``CONFIRM_EXAMPLES`` examples), and at the verdict scores them in eval mode. If
the gap closes there (below ``overfit_gap / 2``), the gap is the mode switch's:
``accuracy_gap.eval_mode`` (info) says so instead of ``accuracy_gap.overfit``. A mode gap still
there after ``PERSISTENT_MODE_GAP`` evaluations is no lag: ``accuracy_gap.eval_mode_persists``
(warning): the model is worse in eval mode than in training mode, and stays so.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from trainwatch.callbacks.loss_monitor import batch_classes
from trainwatch.core.callback import NEVER, Callback, next_block_end
from trainwatch.core.checks import count, optional_count
from trainwatch.core.state import RunState

OVERFIT_SUGGESTION = (
    "the model memorises the training set: add regularisation (L2 weight decay, dropout), "
    "get more training data or augment it, use a smaller model, or stop earlier"
)
EVAL_MODE_PERSISTS_SUGGESTION = (
    "BatchNorm's running statistics do not match the training batches: batches too small or "
    "not shuffled (a larger batch, or GroupNorm), a momentum of 0 or running statistics "
    "frozen; or another layer behaves differently in eval mode"
)
EVAL_MODE_SUGGESTION = ("nothing to do if it closes within a few epochs (BatchNorm's running "
                        "statistics catching up); if it persists: "
                        + EVAL_MODE_PERSISTS_SUGGESTION)

#: training examples kept (host copies, at most ``CONFIRM_BYTES``) to score in eval mode
#: before an epoch-wise overfit verdict
CONFIRM_EXAMPLES = 256
CONFIRM_BYTES = 64 * 2**20
#: the most steps that collection stays awake for (a loop that reports no targets gives none)
CONFIRM_STEPS = 32
#: consecutive evaluations of a mode gap after which it is reported as a problem (a lag of
#: BatchNorm's running statistics closes within a few epochs)
PERSISTENT_MODE_GAP = 10
UNDERFIT_SUGGESTION = (
    "the model cannot fit even the training data: give it more capacity (more units or "
    "layers), train longer, lower the regularisation, or revisit the learning rate"
)
CHANCE_SUGGESTION = (
    "a model at chance learns nothing from its inputs, which a small model does not explain "
    "(even a linear one beats chance): check that inputs and labels are paired (shuffled "
    "together, not separately) and reach the loss, and that the parameters update "
    "(update_ratio/)"
)
COLLAPSE_SUGGESTION = (
    "a model that loses the accuracy it had is unstable, not short of capacity: lower the "
    "learning rate 3–10× (or add warm-up or gradient clipping), and restart from a fresh init "
    "if units died"
)
#: training accuracy this far (fraction) below its best so far: a collapse, not a stall
COLLAPSE = 0.10


def _fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 <= value <= 1) or (not allow_zero and value == 0):
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name}: must be a number in {bound}, got {value!r}")
    return float(value)


def _pair(name: str, data: Any) -> tuple[Any, Any] | None:
    if data is None:
        return None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{name}: must be an (inputs, targets) pair, got {type(data).__name__}")
    x, y = data
    if len(x) != len(y):
        raise ValueError(f"{name}: inputs and targets differ in length ({len(x)} != {len(y)}); "
                         "evaluation takes examples along dim 0 of both (sequence-first "
                         "inputs: transpose them, or report val_accuracy at epoch ends)")
    if len(x) == 0:
        raise ValueError(f"{name}: is empty")
    return x, y


def _examples_along_dim_0(inputs: Any, targets: Any) -> bool:
    """Whether a batch holds its examples along dim 0 of its inputs and of one targets array
    alike, so rows kept from several batches join into one batch to score: not a
    sequence-first ``(T, N, F)`` batch, nor a multi-task loss's tuple of targets."""
    shape = getattr(targets, "shape", None)
    if not shape:
        return False
    dims = tuple(getattr(inputs, "shape", ()))
    if len(dims) >= 2 and dims[0] == dims[1]:
        return False  # (ambiguous: a sequence-first (T, N, ...) batch with T == N reads alike)
    try:
        return len(inputs) == shape[0]
    except TypeError:  # (inputs without a length)
        return False


def _gap_text(point: dict[str, float]) -> str:
    return (f"train accuracy {point['train_accuracy']:.1%} vs validation "
            f"{point['val_accuracy']:.1%}: a gap of {point['gap'] * 100:.1f} points")


def fixed_subset(x: Any, y: Any, size: int) -> tuple[Any, Any]:
    """At most ``size`` examples spread evenly over the dataset (no random numbers drawn,
    so the same examples every call and for every class ordering)."""
    n = len(x)
    if n <= size:
        return x, y
    idx = np.linspace(0, n - 1, size).round().astype(np.int64)
    return x[idx], y[idx]


NO_CLASSIFICATION = ("the model's outputs and targets are no classification's (a regression's "
                     "values, an autoencoder's images, or outputs whose shape matches no "
                     "class layout), so they have no accuracy")
NO_CLASSIFICATION_FIX = ("report train_accuracy and val_accuracy yourself at epoch ends, or "
                         "leave AccuracyGapMonitor out")


class AccuracyGapMonitor(Callback):
    """Writes the train − validation accuracy and loss gaps, and alerts on over/underfitting.

    By default it evaluates at every epoch end, reading ``state.metrics`` (``train_accuracy``,
    ``val_accuracy``, ``train_loss``, ``val_loss``; the Trainer fills them when given
    ``validation_data``). With ``every=N`` it evaluates every N optimizer steps instead, on a
    fixed subset of ``validation_data`` and of the training data, in inference mode through
    ``state.backend.evaluate`` (so dropout is off for both sides of the gap).

    Tags (written at the step count of the model evaluated):

    * ``accuracy/gap``: train − val accuracy, in fraction points (0.1 = 10 points);
    * ``loss/gap``: val − train data loss (positive when the model fits training better);
    * with ``every``: also ``accuracy/train_subset``, ``accuracy/val_subset``,
      ``loss/train_subset``, ``loss/val_subset`` (MetricLogger owns ``accuracy/train`` etc.).

    Alerts: ``accuracy_gap.overfit`` and ``accuracy_gap.underfit`` (warnings; see the module
    docstring for the exact conditions), each firing once per episode, and
    ``accuracy_gap.eval_mode`` (info): a gap that closes when training examples are scored in
    eval mode, as validation is (BatchNorm's running statistics lagging), not overfitting;
    ``accuracy_gap.eval_mode_persists`` (warning) when that lasts ``PERSISTENT_MODE_GAP``
    evaluations.

    Args:
        every: evaluate every this many optimizer steps (needs ``validation_data``); None
            (default) evaluates at each epoch end from the loop's metrics.
        validation_data: ``(x, y)`` for step-wise evaluation, or for epoch-wise evaluation
            when the loop reports no ``val_accuracy``.
        train_data: ``(x, y)`` for step-wise evaluation of the training side; None (default)
            keeps copies of the first ``subset`` training examples the loop feeds
            (numpy-convertible batches; fewer if the first evaluation comes sooner). Epoch-wise,
            the examples scored in eval mode before an overfit verdict (default: copies of
            up to ``CONFIRM_EXAMPLES`` training examples fed after the first large gap).
        subset: examples evaluated per side in step mode (default 512), spread evenly over
            the given data; the same ones every time.
        overfit_gap: accuracy gap (fraction) above which overfitting is suspected (default
            0.10, i.e. 10 points; the 8x8-digits demo runs at about 2 points).
        underfit_accuracy: training accuracy (fraction) below which a stalled run is
            underfitting (default 0.6).
        underfit_gap: the gap must be within ± this for underfitting (default 0.05; a
            validation accuracy far above the training one is no capacity problem).
        min_improvement: training accuracy must rise by at least this over ``patience``
            evaluations to count as still learning (default 0.01).
        min_growth: the accuracy gap must rise by at least this over the ``patience``
            window to count as growing (default 0: not shrinking), unless the loss gap rose.
        patience: evaluations over which both conditions must hold (default 3); trends are
            measured from the first to the last of them (with 1 there is no trend check).
    """

    order = 10

    def __init__(
        self,
        every: int | None = None,
        *,
        validation_data: tuple[Any, Any] | None = None,
        train_data: tuple[Any, Any] | None = None,
        subset: int = 512,
        overfit_gap: float = 0.10,
        underfit_accuracy: float = 0.6,
        underfit_gap: float = 0.05,
        min_improvement: float = 0.01,
        min_growth: float = 0.0,
        patience: int = 3,
    ):
        self.every = optional_count("every", every)
        self.validation_data = _pair("validation_data", validation_data)
        self.train_data = _pair("train_data", train_data)
        if self.every is not None and self.validation_data is None:
            raise ValueError("validation_data: required when every= is given (step-wise mode)")
        self.subset = count("subset", subset)
        self.overfit_gap = _fraction("overfit_gap", overfit_gap, allow_zero=False)
        self.underfit_accuracy = _fraction("underfit_accuracy", underfit_accuracy)
        self.underfit_gap = _fraction("underfit_gap", underfit_gap)
        self.min_improvement = _fraction("min_improvement", min_improvement)
        if (isinstance(min_growth, bool) or not isinstance(min_growth, (int, float))
                or not math.isfinite(min_growth) or abs(min_growth) > 1):
            raise ValueError(f"min_growth: must be a number in [-1, 1], got {min_growth!r}")
        self.min_growth = float(min_growth)
        self.patience = count("patience", patience)
        self.history: list[dict[str, float]] = []
        self._window: deque[dict[str, float]] = deque(maxlen=self.patience)
        self._overfit = False
        self._underfit = False
        self._val_subset: tuple[Any, Any] | None = None
        self._train_subset: tuple[Any, Any] | None = None
        self._train_parts: list[tuple[Any, Any]] = []  # host copies (see Backend.to_host)
        self._train_seen = 0
        self._train_bytes = 0
        self._collecting = 0  # epoch-wise: steps left to keep training examples for a verdict
        self._kept_for_verdicts = False  # (whether that began)
        self._mode_gaps = 0  # consecutive evaluations whose gap closed in eval mode
        self._mode_gap_seen = False  # (whether any did, this run)
        self._classes: int | None = None  # of the first batch's scores: chance is 1/classes
        self._best: dict[str, float] | None = None  # the evaluation of best training accuracy
        self._idle = False  # (nothing to compare in this run: see _skip)

    # -- hooks ---------------------------------------------------------------------------------

    def on_train_begin(self, state: RunState) -> None:
        self._idle = False
        self._collecting = 0
        self._kept_for_verdicts = self.train_data is not None  # (then scored instead)
        self._mode_gaps = 0
        self._mode_gap_seen = False
        self._best = None
        charts = {"accuracy": {"train − validation gap": ("Multiline", [r"^accuracy/gap$"])},
                  "loss": {"validation − train gap": ("Multiline", [r"^loss/gap$"])}}
        if self.train_data is not None:
            self._train_subset = fixed_subset(*self.train_data, self.subset)
        if self.every is not None:
            charts["accuracy"]["train vs validation (subset)"] = (
                "Multiline", [r"^accuracy/train_subset$", r"^accuracy/val_subset$"])
            self._val_subset = fixed_subset(*self.validation_data, self.subset)
        state.writer.layout(charts)

    def next_step(self, step: int) -> int:
        if step == 0:
            return 0  # (the first batch: how many classes, for chance level)
        if self.every is None and self._collecting:
            return step  # keeping training examples for an overfit verdict
        if self.every is None or self._idle:
            return NEVER  # epoch ends only
        if self._train_subset is None:
            return step  # collecting the training subset from the batches
        return next_block_end(step, self.every)

    def reads_batch(self, step: int) -> bool:
        return self._train_subset is None

    def on_loss_computed(self, state: RunState) -> None:
        if state.step == 0:
            self._classes = batch_classes(state)

    def on_step_end(self, state: RunState) -> None:
        every = self.every
        if every is None:
            if self._collecting:
                self._collecting -= 1
                self._collect(state)
            return
        if self._train_subset is None:
            self._collect(state)
        if (state.step + 1) % every:
            return
        if self._train_subset is None:
            if not self._train_parts:
                self._skip(state, f"it saw no training batch by step {state.step} to take its "
                                  "training subset from (a forward run inside "
                                  "optimizer.step(closure), or in eval mode, is not recorded)",
                           "pass AccuracyGapMonitor(every=..., train_data=(x, y))")
                return
            self._finish_collecting(state)
        backend = state.backend
        train_loss, train_acc = backend.evaluate(*self._train_subset)
        val_loss, val_acc = backend.evaluate(*self._val_subset)
        if not (math.isfinite(train_acc) and math.isfinite(val_acc)):
            self._skip(state, NO_CLASSIFICATION, NO_CLASSIFICATION_FIX)
            return
        step = state.step + 1
        state.writer.scalars({
            "accuracy/train_subset": train_acc, "accuracy/val_subset": val_acc,
            "loss/train_subset": train_loss, "loss/val_subset": val_loss,
        }, step)
        self._evaluate(state, step, train_acc, val_acc, train_loss, val_loss)

    def on_epoch_end(self, state: RunState) -> None:
        if self.every is not None:
            return
        m = state.metrics
        train_acc, val_acc = m.get("train_accuracy"), m.get("val_accuracy")
        train_loss, val_loss = m.get("train_loss"), m.get("val_loss")
        if val_acc is None and self.validation_data is not None and not self._idle:
            if self._val_subset is None:
                self._val_subset = fixed_subset(*self.validation_data, self.subset)
            val_loss, val_acc = state.backend.evaluate(*self._val_subset)
            if not math.isfinite(val_acc):
                self._skip(state, NO_CLASSIFICATION, NO_CLASSIFICATION_FIX)
                return
        if train_acc is None or val_acc is None:
            if (train_acc is None) != (val_acc is None):  # (half the pair: say what is missing)
                given, missing = (("val_accuracy", "train_accuracy") if train_acc is None
                                  else ("train_accuracy", "val_accuracy"))
                self._skip(state, f"the loop reports {given} at epoch ends but no {missing}",
                           f"report {missing} too (watcher.epoch_end({{'train_accuracy': ..., "
                           f"'val_accuracy': ...}})), or pass AccuracyGapMonitor(every=N, "
                           f"validation_data=(x, y)) for gaps on fixed subsets",
                           stop=False)  # (the loop may report both later)
            return
        if not (math.isfinite(train_acc) and math.isfinite(val_acc)):
            self._skip(state, NO_CLASSIFICATION, NO_CLASSIFICATION_FIX)
            return
        self._evaluate(state, state.step, train_acc, val_acc, train_loss, val_loss)

    # -- internals -----------------------------------------------------------------------------

    def _skip(self, state: RunState, reason: str, suggestion: str, *, stop: bool = True
              ) -> None:
        """Nothing to compare in this run: say why, once (info), and (``stop``) stop."""
        self._idle = self._idle or stop
        state.alerts.fire("accuracy_gap.skipped", "info",
                          f"AccuracyGapMonitor compares nothing in this run: {reason}",
                          state.step, suggestion=suggestion)

    def _collect(self, state: RunState) -> None:
        """Keep copies of the training examples fed: the first ``subset`` step-wise, up to
        ``CONFIRM_EXAMPLES`` (and ``CONFIRM_BYTES``) epoch-wise."""
        if state.inputs is None or state.targets is None:
            return
        if self.every is None and not _examples_along_dim_0(state.inputs, state.targets):
            self._collecting = 0  # (none to keep: the verdict goes without them)
            return
        limit = self.subset if self.every is not None else min(self.subset, CONFIRM_EXAMPLES)
        need = limit - self._train_seen
        xb = state.backend.to_host(state.backend.first_examples(state.inputs, need))
        yb = state.backend.to_host(state.backend.first_examples(state.targets, need))
        self._train_parts.append((xb, yb))
        self._train_seen += len(xb)
        self._train_bytes += getattr(xb, "nbytes", 0)
        full = self.every is None and self._train_bytes >= CONFIRM_BYTES
        if self._train_seen >= limit or full:
            self._finish_collecting(state)

    def _finish_collecting(self, state: RunState) -> None:
        """Freeze the training subset (also when fewer than ``subset`` examples were seen)."""
        self._collecting = 0
        parts, self._train_parts = self._train_parts, []
        join = state.backend.concatenate
        self._train_subset = (join([p[0] for p in parts]), join([p[1] for p in parts]))

    def _evaluate(self, state: RunState, step: int, train_acc: float, val_acc: float,
                  train_loss: float | None, val_loss: float | None) -> None:
        gap = float(train_acc) - float(val_acc)
        loss_gap = math.nan
        if train_loss is not None and val_loss is not None:
            loss_gap = float(val_loss) - float(train_loss)
        values = {"accuracy/gap": gap}
        if math.isfinite(loss_gap):
            values["loss/gap"] = loss_gap
        state.writer.scalars(values, step)
        point = {"step": step, "train_accuracy": float(train_acc), "val_accuracy": float(val_acc),
                 "gap": gap, "loss_gap": loss_gap}
        self.history.append(point)
        self._window.append(point)
        if self._best is None or point["train_accuracy"] > self._best["train_accuracy"]:
            self._best = point
        if self.every is None and gap > self.overfit_gap and not self._kept_for_verdicts:
            self._kept_for_verdicts = True  # (once a run: a loop may report no targets)
            self._collecting = CONFIRM_STEPS  # examples to score if the gap persists
        self._check_overfit(state, step, point)
        self._check_underfit(state, step, point)

    def _check_overfit(self, state: RunState, step: int, point: dict[str, float]) -> None:
        window, gap = self._window, point["gap"]
        if self._overfit:
            active = gap > self.overfit_gap / 2
        else:
            first = window[0]
            large = len(window) == self.patience and all(
                p["gap"] > self.overfit_gap for p in window)
            acc_growing = gap - first["gap"] >= self.min_growth
            loss_growing = point["loss_gap"] > first["loss_gap"]  # False when NaN
            active = large and (acc_growing or loss_growing)
        scored = None  # (accuracy, examples) of the training examples kept, in eval mode
        if active and not self._overfit and self.every is None:
            scored = self._training_examples_in_eval_mode(state)
        mode_gap = scored is not None and (
            scored[0] - point["val_accuracy"] <= self.overfit_gap / 2)
        active = active and not mode_gap
        self._overfit = active
        message = _gap_text(point) + (
            f" (above {self.overfit_gap * 100:.0f} and not closing over the last "
            f"{self.patience} evaluations)" if active else " (back under control)")
        if active and scored is not None:
            message += (f"; scored in eval mode, as validation is, {scored[1]} training "
                        f"examples reach {scored[0]:.1%}")
        state.alerts.update("accuracy_gap.overfit", active, step=step, severity="warning",
                            message=message, value=gap, suggestion=OVERFIT_SUGGESTION)
        self._report_mode_gap(state, step, point, scored if mode_gap else None)

    def _report_mode_gap(self, state: RunState, step: int, point: dict[str, float],
                         scored: tuple[float, int] | None) -> None:
        """``accuracy_gap.eval_mode`` while a gap closes in eval mode (``scored``: the
        training examples' accuracy there, and their count; None otherwise), and
        ``accuracy_gap.eval_mode_persists`` once it has for ``PERSISTENT_MODE_GAP``
        evaluations in a row."""
        if scored is None and not self._mode_gap_seen:
            return  # (no eval-mode alert in this run: nothing to update or resolve)
        self._mode_gap_seen = True
        self._mode_gaps = self._mode_gaps + 1 if scored else 0

        def described() -> dict[str, str]:
            if scored is None:
                return {"message": _gap_text(point)}
            return {"message": (
                f"{_gap_text(point)}, but scored in eval mode, as validation is, {scored[1]} "
                f"training examples reach {scored[0]:.1%}: the gap is the switch to eval mode "
                "(BatchNorm's running statistics lagging behind the weights, early in "
                "training or after a loss spike), not memorisation")}

        def persisting() -> dict[str, str]:
            if scored is None:
                return {"message": f"{_gap_text(point)}: the eval-mode gap closed"}
            return {"message": (
                f"for {self._mode_gaps} evaluations the model has scored far lower in eval mode "
                f"than in training mode: validation {point['val_accuracy']:.1%} and "
                f"{scored[1]} training examples {scored[0]:.1%} in eval mode, against "
                f"{point['train_accuracy']:.1%} in training mode; that is no lag catching up")}

        gap = point["gap"]
        state.alerts.update("accuracy_gap.eval_mode", scored is not None, step=step,
                            severity="info", value=gap, suggestion=EVAL_MODE_SUGGESTION,
                            describe=described)
        state.alerts.update("accuracy_gap.eval_mode_persists",
                            self._mode_gaps >= PERSISTENT_MODE_GAP, step=step,
                            severity="warning", value=gap,
                            suggestion=EVAL_MODE_PERSISTS_SUGGESTION, describe=persisting)

    def _training_examples_in_eval_mode(self, state: RunState) -> tuple[float, int] | None:
        """Accuracy of the training examples kept (see :meth:`_collect`) scored in eval mode,
        as validation is, and their count; None without any (or without an accuracy)."""
        if self._train_subset is None:
            if not self._train_parts:
                return None
            self._finish_collecting(state)
        _, accuracy = state.backend.evaluate(*self._train_subset)
        if not math.isfinite(accuracy):
            return None
        return accuracy, len(self._train_subset[1])

    def _check_underfit(self, state: RunState, step: int, point: dict[str, float]) -> None:
        window, acc, gap = self._window, point["train_accuracy"], point["gap"]
        # (validation far above training is no capacity problem: noisy training labels, or
        # training accuracy counted with dropout on)
        low = acc < self.underfit_accuracy and -self.underfit_gap < gap < self.underfit_gap
        if self._underfit:
            active = low
            rise = acc - window[0]["train_accuracy"]
        else:
            rise = acc - window[0]["train_accuracy"]
            active = low and len(window) == self.patience and rise < self.min_improvement
        self._underfit = active
        best = self._best
        collapsed = best is not None and best["train_accuracy"] - acc >= COLLAPSE
        classes = self._classes if self._classes and self._classes >= 3 else None
        at_chance = classes is not None and acc < 1.5 / classes
        message = (
            f"training accuracy {acc:.1%} "
            + ((f"has fallen from its best, {best['train_accuracy']:.1%} at step "
                f"{best['step']}, and stalled" if collapsed else
                f"has stalled ({rise * 100:+.1f} points over {self.patience} evaluations)")
               + f" with a train − validation gap of only {gap * 100:.1f} points"
               + (f", at chance for {classes} classes" if at_chance and not collapsed else "")
               if active else "is improving again")
        )

        def suggestion() -> dict[str, str]:
            if collapsed:
                return {"suggestion": COLLAPSE_SUGGESTION}
            # (a model that learns nothing shows it elsewhere first: those are the causes)
            fix_first = state.alerts.fix_first(besides=("accuracy_gap.", "loss.plateau"))
            if not fix_first:
                return {"suggestion": CHANCE_SUGGESTION if at_chance else UNDERFIT_SUGGESTION}
            return {"suggestion": (
                "a model stuck this low usually cannot learn rather than being too small: "
                f"{fix_first}; if it still stalls, give it more capacity")}

        state.alerts.update("accuracy_gap.underfit", active, step=step, severity="warning",
                            message=message, value=acc, describe=suggestion)
