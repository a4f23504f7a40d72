"""LossMonitor: what the training-loss curve says, read while it is drawn.

KNOWLEDGE §2–3 turned into alerts:

* ``loss.nonfinite`` (critical, once per run): the loss, a gradient or a weight is NaN/Inf.
  The alert names the first tensor (in layer order) holding NaN/Inf, its weights or its
  gradient, or says the weights and gradients are finite (then the forward pass, the loss or
  the batch itself produced it). Training stops after the current batch by default
  (``stop_on_nonfinite``) and the outputs are flushed, so the logs stay readable.
  The loss is checked every ``check_every`` steps (cheap); weights and gradients, which take
  a full pass over the parameters, whenever the loss is non-finite and, after the backward
  pass, every ``check_tensors_every`` steps (a NaN weight or gradient almost always makes the
  next loss NaN, where it is caught anyway; the periodic pass catches the rest).
* ``loss.divergence`` (warning): after ``warmup`` steps, the smoothed loss (EMA, weight
  ``smoothing``) is more than ``divergence_factor`` times its running minimum, and the rise
  undoes at least ``MIN_RISE`` of the progress made (initial loss − minimum; and 1 % of the
  initial loss), so a loss near zero that spikes from 0.002 to 0.03 and recovers is no
  divergence. A schedule that raises the learning rate (a warm restart, a warm-up, a cyclic
  schedule) makes a converged loss rise several-fold by design: while the rate is
  ``LR_RAISE`` times the one of the minimum's time (``Backend.learning_rate``, read as the
  losses are taken in), the rise must undo ``RAISED_RISE`` of the progress, and the plateau
  and noise rules skip it as they skip a divergence.
* ``loss.plateau`` (warning): no progress over the last ``plateau_window`` steps: the mean of
  the window's newest quarter is less than ``plateau_threshold`` (relative) below the mean of
  its oldest quarter, while the loss is still above ``plateau_floor`` of the way from the
  least value it can take (0, or the smoothed targets' entropy under label smoothing:
  ``Backend.loss_floor``) to its initial value (a loss near its floor has converged, not
  stalled), and not while the window holds a divergence.
  The message gives the reading: a curve flat or nearly linear from the start means a
  learning rate that is too low; a jump (a batch loss above 1.5× the initial one) and a
  return to the starting value means a too-high rate killed the units; a fast drop and then
  a plateau at a poor value means a rate too high for this stage.
* ``loss.noise`` (info: an observation, most of it the batches' sampling noise): the
  step-to-step scatter of the loss over the last
  ``noise_window`` steps (``std(diff(loss)) / √2``, which ignores the trend) relative to the
  loss level (never less than a quarter of the initial loss, so a loss near zero does not
  read as noisy) is above ``noise_threshold``: the batch is probably small (the scatter is
  mostly the batches' sampling noise; it needs acting on only if the loss stalls). Judged once
  the window lies after ``warmup`` (the steep first drop of the curve is not noise) and
  holds no divergence.
* ``loss.initial`` (warning, checked once on the first batch, with the data loss alone when
  the loop reports it, i.e. regularisation off): the loss is more than ``initial_tolerance``
  off (as a factor) from the expected value: ``ln C`` for softmax cross-entropy over C classes,
  ``C − 1`` for the multiclass SVM (margin 1), ``ln 2`` for binary cross-entropy. C is the
  predictions' last dimension; the loss kind comes from ``backend.loss_kind``; a backend
  method ``expected_initial_loss(num_classes)`` is used when present, and
  ``expected_initial_loss=`` overrides both. A start below it is no fault where the last
  bias holds the labels' prior (down to the labels' entropy), and only an info where the
  first batch is already mostly right (the model was trained before: pretrained weights, a
  resumed checkpoint); an untrained model at chance with a loss below chance has a loss that
  is not what it seems (mis-scaled, or not the one minimised).

Each condition fires once per episode (``divergence``, ``plateau`` and ``noise`` after
``patience`` consecutive checks), through :class:`~trainwatch.alerts.AlertManager`.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from trainwatch.alerts.rules import Streak
from trainwatch.core.callback import NEVER, Callback, next_multiple
from trainwatch.core.checks import count
from trainwatch.core.state import RunState

#: loss kind -> (expected initial loss as a function of the number of classes, explanation)
EXPECTED_INITIAL = {
    "softmax_cross_entropy": (lambda c: math.log(c), "ln {c}: softmax cross-entropy over "
                                                     "{c} classes"),
    "multiclass_svm": (lambda c: float(c - 1), "{c} − 1: multiclass SVM (margin 1) over "
                                               "{c} classes"),
    "sigmoid_bce": (lambda c: math.log(2.0), "ln 2: binary cross-entropy"),
}

#: a learning rate this many times the one at the running minimum's time is a raise (a warm
#: restart, a warm-up): the loss may rise by design
LR_RAISE = 2.0
#: the share of the progress (initial loss − minimum) a rise must undo to be a divergence,
#: and while the learning rate is raised (a warm restart bumps a near-zero loss ~10-fold)
MIN_RISE = 0.05
RAISED_RISE = 0.25

NONFINITE_SUGGESTION = (
    "lower the learning rate (or add warm-up / gradient clipping), check the data for NaN/Inf, "
    "and use numerically stable losses (log-sum-exp, no log(0))"
)


def _positive(name: str, value: Any, *, above: float = 0.0, most: float = math.inf) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (above < value <= most):
        bound = f"in ({above}, {most}]" if math.isfinite(most) else f"> {above}"
        raise ValueError(f"{name}: must be a number {bound}, got {value!r}")
    return float(value)


def _entropy(shares: np.ndarray | None) -> float | None:
    """The entropy (nats) of a distribution given by its shares; None for none. Of a batch's
    label frequencies it is the loss of a model that predicts them, where one whose last bias
    is set to the labels' prior starts (ln C, ln 2 for balanced labels; less for imbalanced
    ones)."""
    if shares is None:
        return None
    p = shares[shares > 0]
    return float(-(p * np.log(p)).sum()) if p.size else None


def label_frequencies(targets: Any, kind: str | None) -> np.ndarray | None:
    """The share of each label among a batch's labels (host arrays), for softmax
    cross-entropy (class indices; negative ones ignored) and sigmoid BCE (0/1 targets); None
    otherwise."""
    if targets is None or kind not in ("softmax_cross_entropy", "sigmoid_bce"):
        return None
    try:
        y = np.asarray(targets, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):  # (several targets, a structure)
        return None
    if kind == "sigmoid_bce":
        p = np.array([1.0 - y.mean(), y.mean()]) if y.size else np.array([])
    else:
        labels = y[y >= 0]
        if not labels.size or np.any(labels != np.round(labels)):
            return None
        p = np.bincount(labels.astype(np.int64)) / labels.size
    return p if p.size else None


def class_axis(scores: tuple[int, ...], targets: tuple[int, ...] | None) -> int | None:
    """The dim of scores of shape ``scores`` that ranges over the classes: 1 where the targets
    are class indices laid out as ``(N, d...)`` against ``(N, C, d...)`` scores (torch's
    ``(N, C, T)`` sequences, ``(N, C, H, W)`` pixels), else the last (``(N, C)``, a token
    classifier's ``(N, T, C)``); None for scores of fewer than 2 dims."""
    if len(scores) < 2:
        return None
    if (targets is not None and len(scores) >= 3 and tuple(targets) == scores[:1] + scores[2:]
            and tuple(targets) != scores[:-1]):
        return 1
    return len(scores) - 1


def class_count(scores: tuple[int, ...], targets: tuple[int, ...] | None) -> int | None:
    """How many classes scores of shape ``scores`` range over (see :func:`class_axis`)."""
    axis = class_axis(scores, targets)
    return None if axis is None else int(scores[axis])


def batch_classes(state: RunState) -> int | None:
    """The classes the batch's scores range over (see :func:`class_count`)."""
    # (shapes of single arrays only: several targets of a multi-task loss have none)
    shape = tuple(getattr(state.predictions, "shape", ()))
    targets = getattr(state.targets, "shape", None)
    return class_count(shape, None if targets is None else tuple(targets))


class LossMonitor(Callback):
    """Watches the training loss: non-finite values, divergence, plateaus, noise and the
    expected initial loss (see the module docstring for each rule).

    It takes in the losses as the Monitor hands them over (:meth:`on_losses`: in batches of
    up to 100 steps or 1 s, a non-finite float and the first loss at once, so on the CPU a
    NaN is judged on its own step) and sleeps otherwise: its batch hooks run on the first
    step and the tensor-check steps only. Each step's first loss goes into a ring buffer
    (a step's later losses, of accumulated batches or of a closure's re-evaluations as LBFGS
    makes, are judged for NaN/Inf only), each ``every``-th step's rules evaluated. On an
    accelerator (``backend.host_reads_cheap`` False) the losses stay on the device and each
    batch is read in one transfer, so a NaN loss is seen (and training stopped) up to 100
    steps or about 1 s later, and the alert says so: by then NaN/Inf may have spread to
    other tensors. Every ``every`` steps it evaluates the rules and writes:

    * ``loss/train_log10``: log10 of the batch loss (learning curves read straighter on a log
      scale; positive losses only);
    * ``loss/train_smoothed``: the EMA used for divergence;
    * ``loss/window_progress``: relative improvement over the plateau window (fraction);
    * ``loss/relative_spread``: the noise measure (fraction of the loss level).

    Args:
        every: steps between rule evaluations and log points (default 20); a multiple of
            ``check_every``.
        check_every: steps between loss reads (default 1).
        stop_on_nonfinite: stop training when anything is non-finite (default True).
        check_tensors_every: also check weights and gradients for NaN/Inf after the backward
            pass every this many steps (default 100; None: only when the loss is non-finite).
        smoothing: EMA weight of the newest loss for divergence, in (0, 1] (default 0.1).
        warmup: steps before divergence is judged (default 50); noise is judged once its whole
            window lies after the warm-up (the steep first drop is not noise).
        divergence_factor: smoothed loss / running minimum above which the run diverges
            (default 3.0, > 1).
        plateau_window: steps over which progress is measured (default 200).
        plateau_threshold: relative improvement over the window below which the loss is on a
            plateau (default 0.01, i.e. 1 %).
        plateau_floor: no plateau alert once the loss is below this fraction of the way from
            its least value (0, or higher under label smoothing) to its initial value
            (default 0.1).
        noise_window: steps over which the scatter is measured (default 50).
        noise_threshold: relative spread above which the loss is too noisy (default 0.3; the
            8x8-digits demo at batch 32 stays below 0.21 after its first 100 steps, batch 8
            runs at 0.3–0.65, batch 4 at 0.7–1).
        patience: consecutive checks a divergence, plateau or noise condition must hold before
            it fires (default 2).
        check_initial: check the first batch's loss against its expected value (default True).
        expected_initial_loss: the expected initial loss, if you know it (default None: from
            the loss kind and the number of classes).
        initial_tolerance: how far off the initial loss may be, as a factor: within
            ``[E / (1 + t), E · (1 + t)]`` (default 0.5). He-initialised networks start a
            little above ``ln C`` (the 8x8-digits CNN at 2.9 for 2.30); weights 100× too large
            start orders of magnitude above.
    """

    order = -50

    def __init__(
        self,
        every: int = 20,
        *,
        check_every: int = 1,
        stop_on_nonfinite: bool = True,
        check_tensors_every: int | None = 100,
        smoothing: float = 0.1,
        warmup: int = 50,
        divergence_factor: float = 3.0,
        plateau_window: int = 200,
        plateau_threshold: float = 0.01,
        plateau_floor: float = 0.1,
        noise_window: int = 50,
        noise_threshold: float = 0.3,
        patience: int = 2,
        check_initial: bool = True,
        expected_initial_loss: float | None = None,
        initial_tolerance: float = 0.5,
    ):
        self.every = count("every", every)
        self.check_every = count("check_every", check_every)
        if self.every % self.check_every:
            raise ValueError(f"every: must be a multiple of check_every ({check_every}), "
                             f"got {every!r}")
        for name, flag in (("stop_on_nonfinite", stop_on_nonfinite),
                           ("check_initial", check_initial)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: must be True or False, got {flag!r}")
        self.stop_on_nonfinite = stop_on_nonfinite
        self.check_tensors_every = (None if check_tensors_every is None else
                                    count("check_tensors_every", check_tensors_every))
        self.check_initial = check_initial
        self.smoothing = _positive("smoothing", smoothing, most=1.0)
        self.warmup = count("warmup", warmup, minimum=0)
        self.divergence_factor = _positive("divergence_factor", divergence_factor, above=1.0)
        self.plateau_window = count("plateau_window", plateau_window, minimum=4)
        self.plateau_threshold = _positive("plateau_threshold", plateau_threshold, most=1.0)
        self.plateau_floor = _positive("plateau_floor", plateau_floor, most=1.0)
        self.noise_window = count("noise_window", noise_window, minimum=3)
        self.noise_threshold = _positive("noise_threshold", noise_threshold)
        self.patience = count("patience", patience)
        self.expected_initial_loss = (None if expected_initial_loss is None else
                                      _positive("expected_initial_loss", expected_initial_loss))
        self.initial_tolerance = _positive("initial_tolerance", initial_tolerance)
        self._plateau_n = max(self.plateau_window // self.check_every, 4)
        self._noise_n = max(self.noise_window // self.check_every, 3)
        self._reset()

    def _reset(self) -> None:
        size = max(self._plateau_n, self._noise_n)
        # A ring buffer written twice (at i and i + size), so the last k values are always one
        # contiguous slice. A Python list, not an array: between training steps numpy's
        # reductions on a few hundred values cost 5x more than the same sums on a list.
        self._size = size
        self._buf = [0.0] * (2 * size)
        self._n = 0  # finite losses taken in (each step's first)
        self._last_step = -1  # the step of the last loss taken in
        self._ema = math.nan
        self._min = math.inf
        self._min_step = 0
        self._max = -math.inf
        self._max_step = 0
        self._ref: float | None = None  # the first finite loss: the reference "initial" value
        self._nonfinite_seen = False
        self._unsettled_at = -math.inf  # the last step a divergence fired or the lr rose
        self._lr_at_min: float | None = None  # the learning rate when the minimum was reached
        self._lr_taken: float | None = None  # the learning rate when losses were last taken
        self._lr_high: float | None = None  # the most it may have been over the last batch
        self._lr_first: float | None = None  # the learning rate first read
        self._streaks = {rule: Streak() for rule in ("divergence", "plateau", "noise")}
        self._firing = {"divergence": False, "plateau": False, "noise": False}
        #: the first batch's loss and its expected value (None until checked / when unknown)
        self.initial_loss: float | None = None
        self.expected_initial: float | None = None
        self._initial_context: tuple[float | None, str, Any] = (None, "", None)
        self._loss_floor = 0.0  # the least value the loss can take (Backend.loss_floor)
        self._first_targets: Any = None  # the first batch's labels (see _check_initial)
        self._first_predictions: Any = None  # and its outputs
        #: the first batch's accuracy where the model started trained (see _check_initial)
        self._trained_before: float | None = None
        #: the latest evaluation: progress over the plateau window, relative spread
        self.window_progress: float = math.nan
        self.relative_spread: float = math.nan

    # -- hooks ----------------------------------------------------------------------------------

    def on_train_begin(self, state: RunState) -> None:
        self._reset()
        self._reads_cheap = state.backend.host_reads_cheap
        state.writer.layout({"loss": {
            "training loss, log10": ("Multiline", [r"^loss/train_log10$"]),
            "loss diagnostics": ("Multiline", [r"^loss/window_progress$",
                                               r"^loss/relative_spread$"]),
        }})

    def next_step(self, step: int) -> int:
        # (the losses come to on_losses at every step, asleep or not: the other hooks are
        # needed for the first batch's outputs and the tensor checks only)
        if step == 0 and self.check_initial:
            return 0
        if self.check_tensors_every is None or self._nonfinite_seen:
            return NEVER
        return next_multiple(step, self.check_tensors_every)

    def reads_batch(self, step: int) -> bool:
        return step == 0 and self.check_initial  # the number of classes, from the outputs

    def on_loss_computed(self, state: RunState) -> None:
        if state.step == 0:
            classes = batch_classes(state)
            if self.check_initial:  # what the first loss is judged by
                self._initial_context = (*self._expected(state, classes), state.data_loss)
                # (read only if the start is low)
                self._first_targets, self._first_predictions = state.targets, state.predictions
            # (label smoothing: the loss never reaches 0)
            self._loss_floor = float(state.backend.loss_floor(classes))

    def on_losses(self, state: RunState) -> None:
        # every check_every-th step's losses, taken in together (in one warm loop on the
        # CPU, in one transfer on an accelerator, where a read is a host sync)
        every = self.check_every
        kept = [(step, loss) for step, loss, *_ in state.losses if not step % every]
        if not kept:
            return
        steps, values = [step for step, _ in kept], [loss for _, loss in kept]
        if self._reads_cheap:  # (floats already, but for a framework's own CPU scalars)
            self._ingest_all(state, steps, [float(v) for v in values])
        else:
            self.read_at_step_end(state, values,
                                  lambda floats: self._ingest_all(state, steps, floats))

    def _ingest_all(self, state: RunState, steps: list[int], values: list[float]) -> None:
        """Take the losses of ``steps`` into the buffer and the rules, in order (one loop,
        the running statistics in locals: this runs for every loss of the run)."""
        if self._nonfinite_seen:
            return
        buf, size, every, smoothing = self._buf, self._size, self.every, self.smoothing
        n, ema, low, high, last = self._n, self._ema, self._min, self._max, self._last_step
        # the learning rate of these steps lies between the one read last time and the one
        # now: a minimum reached among them is given the lower, a rise the higher
        lr, before = state.backend.learning_rate(), self._lr_taken
        if self._lr_first is None:
            self._lr_first = lr
        rates = [r for r in (lr, before) if r is not None]
        lr_low = min(rates, default=None)
        self._lr_taken, self._lr_high = lr, max(rates, default=None)
        for step, v in zip(steps, values):
            if v - v != 0.0:  # NaN or ±inf
                self._n, self._ema, self._min, self._max = n, ema, low, high
                self._nonfinite(state, step, v, None)
                return
            if step == last:
                # a step's later losses (accumulated batches; a closure's re-evaluations at
                # the moved parameters, as LBFGS makes): judged for NaN/Inf only, the rules
                # take each step's first loss, its loss where the step began
                continue
            last = step
            i = n % size
            buf[i] = buf[i + size] = v
            n += 1
            if self._ref is None:
                self._ref = v
            ema = v if ema != ema else ema + smoothing * (v - ema)
            if ema < low:
                low, self._min_step, self._lr_at_min = ema, step, lr_low
            if v > high:
                high, self._max_step = v, step
            initial, analysed = step == 0 and self.check_initial, step % every == 0
            if initial or analysed:  # (the rules read the running statistics)
                self._n, self._ema, self._min, self._max = n, ema, low, high
                if initial:
                    self._check_initial(state, v)
                if analysed:
                    self._analyse(state, step, v)
        self._n, self._ema, self._min, self._max, self._last_step = n, ema, low, high, last

    def on_backward_end(self, state: RunState) -> None:
        every = self.check_tensors_every
        if every is None or state.step % every or self._nonfinite_seen:
            return
        culprit = state.backend.first_nonfinite()
        if culprit is not None:
            loss = math.nan if state.loss is None else float(state.loss)
            self._nonfinite(state, state.step, loss, culprit)

    # -- non-finite -------------------------------------------------------------------------------

    def _nonfinite(self, state: RunState, step: int, value: float, culprit: str | None) -> None:
        if self._nonfinite_seen:
            return
        self._nonfinite_seen = True
        if culprit is None:
            culprit = state.backend.first_nonfinite()
        inputs = state.inputs
        late = state.step - step  # steps between the NaN and its read (on an accelerator)
        what = "weights"
        if culprit is not None and culprit.endswith(" (gradient)"):
            culprit, what = culprit[: -len(" (gradient)")], "gradient"
        loss_text = f"the training loss is {value}" if not math.isfinite(value) else (
            f"the training loss is still finite ({value:.4g})")
        if culprit is not None:
            tensor = culprit
            detail = (f"{culprit} is the first tensor whose {what} hold NaN/Inf"
                      if what == "weights" else
                      f"the gradient of {culprit} is the first to hold NaN/Inf")
            if late:
                detail += (f" at step {state.step}, when the loss was read ({late} steps "
                           f"later: by then NaN/Inf may have spread from another tensor)")
        elif (not late and isinstance(inputs, np.ndarray) and inputs.dtype.kind in "fc"
              and not np.isfinite(inputs).all()):
            tensor = "inputs"
            detail = "the batch's inputs contain NaN/Inf (weights and gradients are finite)"
        else:
            tensor = "loss"
            detail = ("weights and gradients are finite, so the forward pass or the loss "
                      "overflowed on that batch")
        stopping = self.stop_on_nonfinite
        message = (f"{loss_text} at step {step}: {detail}"
                   + ((f"; training stops after step {state.step}" if late else
                       "; training stops after this batch") if stopping else ""))
        state.alerts.fire("loss.nonfinite", "critical", message, step, tensor=tensor,
                          value=value, suggestion=NONFINITE_SUGGESTION)
        state.writer.flush()
        if stopping:
            state.request_stop(f"non-finite values at step {step} ({tensor})")

    # -- the initial loss -------------------------------------------------------------------------

    def _check_initial(self, state: RunState, total: float) -> None:
        expected, how, data_loss = self._initial_context
        first_targets, self._first_targets = self._first_targets, None
        first_predictions, self._first_predictions = self._first_predictions, None
        value = total if data_loss is None else float(data_loss)
        self.initial_loss = value
        self.expected_initial = expected
        if expected is None or not math.isfinite(value):
            return
        tol = self.initial_tolerance
        if expected / (1 + tol) <= value <= expected * (1 + tol):
            return
        trained = None  # the first batch's accuracy, where it is far above chance
        if value < expected and first_targets is not None:
            at_prior, trained = self._low_start(state, value, first_targets, first_predictions)
            if at_prior:
                return
            self._trained_before = trained
        which = "data loss, regularisation off" if data_loss is not None else (
            "total loss; the loop reports no separate data loss")
        factor = value / expected
        severity, verdict = "warning", "the initialisation or the loss is probably wrong"
        if value > expected:
            off = f"{factor:.3g}× the expected"
            suggestion = ("the initial scores are too large or the loss is mis-scaled: "
                          "normalise the inputs (zero mean, unit variance: raw 0-255 pixels "
                          "make huge scores), use small random weights (He/Xavier scale, the "
                          "last layer near 0) and check that the loss is a mean over the "
                          "batch, not a sum")
        elif trained is not None:
            off = f"only {factor:.3g}× the expected"
            severity = "info"
            verdict = (f"the first batch is already {trained:.0%} right, so the model was "
                       "trained before (pretrained weights, a resumed checkpoint): the expected "
                       "initial loss is a fresh initialisation's")
            suggestion = ("nothing to fix if the weights were loaded on purpose "
                          "(LossMonitor(check_initial=False) leaves this out); else check where "
                          "the model's weights come from")
        else:
            off = f"only {factor:.3g}× the expected"
            suggestion = ("the loss starts below chance while the predictions are at chance: "
                          "check that the loss is averaged correctly (not divided by more "
                          "than the batch's examples) and that the reported loss is the one "
                          "being minimised")
        message = (f"initial loss {value:.4g} on the first batch ({which}) is {off} "
                   f"{expected:.4g} ({how}; tolerance ×{1 + tol:g}): {verdict}")
        state.alerts.fire("loss.initial", severity, message, state.step, value=value,
                          suggestion=suggestion)

    def _low_start(self, state: RunState, value: float, targets: Any,
                   predictions: Any) -> tuple[bool, float | None]:
        """Why a first loss below the expected one may be right: (True, None) down to the
        labels' entropy, where a classifier whose last bias holds the labels' frequencies
        starts; (False, accuracy) where the first batch is far above chance (halfway from the
        majority label's share to 100%): a model trained before, pretrained weights or a
        resumed checkpoint (an untrained one is at chance, whatever its inputs hold); else
        (False, None)."""
        shares = label_frequencies(state.backend.to_host(targets),
                                   getattr(state.backend, "loss_kind", None))
        prior = _entropy(shares)
        if prior is not None and value >= prior / (1 + self.initial_tolerance):
            return True, None
        if shares is None or predictions is None:
            return False, None
        accuracy = state.backend.accuracy(predictions, targets)
        return False, accuracy if accuracy > (1 + shares.max()) / 2 else None

    def _expected(self, state: RunState, classes: int | None) -> tuple[float | None, str]:
        if self.expected_initial_loss is not None:
            return self.expected_initial_loss, "given as expected_initial_loss"
        kind = getattr(state.backend, "loss_kind", None)
        method = getattr(state.backend, "expected_initial_loss", None)
        if callable(method) and classes is not None:
            value = method(classes)
            if value is not None:
                how = (EXPECTED_INITIAL[kind][1].format(c=classes) if kind in EXPECTED_INITIAL
                       else f"{kind or 'the loss'} over {classes} classes")
                return float(value), how
        if kind in EXPECTED_INITIAL:
            fn, how = EXPECTED_INITIAL[kind]
            if kind == "sigmoid_bce":
                return fn(2), how
            if classes is not None and classes >= 2:
                return fn(classes), how.format(c=classes)
        return None, ""

    # -- divergence, plateau, noise ---------------------------------------------------------------

    def _window(self, k: int) -> list[float]:
        """The last ``k`` finite losses, oldest first."""
        end = (self._n - 1) % self._size + self._size + 1
        return self._buf[end - k:end]

    def _analyse(self, state: RunState, step: int, v: float) -> None:
        values = {"loss/train_smoothed": self._ema}
        if v > 0:
            values["loss/train_log10"] = math.log10(v)
        ref = self._ref
        if ref is not None and ref > 0:
            self._check_divergence(state, step, ref)
            if self._n >= self._plateau_n:
                self._check_plateau(state, step, ref)
                values["loss/window_progress"] = self.window_progress
            if self._n >= self._noise_n and step >= self.warmup + self.noise_window:
                self._check_noise(state, step, ref)
                values["loss/relative_spread"] = self.relative_spread
        state.writer.scalars(values, step)

    def _condition(self, rule: str, step: int, raw: bool, holding: bool) -> bool:
        """Debounce ``raw`` with ``patience``; once firing, stay active while ``holding``."""
        streak = self._streaks[rule].update(raw, step)
        if self._firing[rule]:
            self._firing[rule] = holding
        else:
            self._firing[rule] = streak >= self.patience
        return self._firing[rule]

    def _check_divergence(self, state: RunState, step: int, ref: float) -> None:
        ema, low = self._ema, self._min
        if step < self.warmup or not low > 0:
            return
        ratio, rise = ema / low, ema - low
        lr, at_min = self._lr_high, self._lr_at_min
        raised = lr is not None and at_min is not None and lr >= LR_RAISE * at_min
        if raised and ratio > self.divergence_factor / 1.5:
            # the schedule raised the learning rate since the minimum (a warm restart, a
            # warm-up): a rise by design, unless it undoes a good part of the progress
            self._unsettled_at = step
        far = rise > max(0.01 * ref, (RAISED_RISE if raised else MIN_RISE) * (ref - low))
        raw = ratio > self.divergence_factor and far
        active = self._condition("divergence", step, raw,
                                 ratio > self.divergence_factor / 1.5 and far)
        if active:
            self._unsettled_at = step

        def describe() -> dict[str, Any]:
            if not active:
                return {"message": f"the smoothed training loss {ema:.4g} is no longer "
                                   f"diverging ({ratio:.2f}× its minimum {low:.4g})"}
            message = (f"the smoothed training loss {ema:.4g} is {ratio:.2f}× its running "
                       f"minimum {low:.4g} (step {self._min_step}), above the factor "
                       f"{self.divergence_factor:g} since step "
                       f"{self._streaks['divergence'].since}")
            if raised:
                undone = (f", undoing {rise / (ref - low):.0%} of the progress made"
                          if ref > low else "")
                return {"message": f"{message}, after the schedule raised the learning rate to "
                                   f"{lr:.3g} ({lr / at_min:.3g}× its value then){undone}",
                        "suggestion": "the raised learning rate (a warm restart's or a "
                                      "warm-up's peak) is too high for this stage: lower the "
                                      "schedule's peak 3–10×, or add gradient clipping"}
            return {"message": message,
                    "suggestion": "the learning rate is probably too high: lower it 3–10× (or "
                                  "add warm-up or gradient clipping), and look for bad batches"}

        state.alerts.update("loss.divergence", active, step=step, severity="warning",
                            value=ratio, describe=describe)

    def _check_plateau(self, state: RunState, step: int, ref: float) -> None:
        win = self._window(self._plateau_n)
        q = max(len(win) // 4, 1)
        first, last = sum(win[:q]) / q, sum(win[-q:]) / q
        # progress toward the least value the loss can take (above 0 with label smoothing)
        floor = self._loss_floor
        progress = (first - last) / (first - floor) if first > floor else math.nan
        self.window_progress = progress
        span = self._plateau_n * self.check_every
        # Judged only above plateau_floor of the way down to the loss's least value, and not
        # while the window holds a divergence (a rise is the divergence's alert) or a raise of
        # the learning rate (a rise by design).
        judged = (last - floor > self.plateau_floor * (ref - floor)
                  and step - self._unsettled_at > span)
        raw = progress < self.plateau_threshold and judged
        active = self._condition("plateau", step, raw,
                                 progress < 2 * self.plateau_threshold and judged)
        if not active:
            state.alerts.update(
                "loss.plateau", False, step=step, value=progress,
                describe=lambda: {"message": f"the training loss is moving again "
                                             f"({progress:+.1%} over {span} steps, now "
                                             f"{last:.4g})"})
            return
        # (a model trained before starts near where it can get: its plateau is no fault)
        severity = "info" if self._trained_before is not None else "warning"
        state.alerts.update("loss.plateau", True, step=step, severity=severity, value=progress,
                            describe=lambda: self._plateau_text(
                                first, last, progress, span, ref,
                                state.alerts.fix_first(besides=("loss.", "accuracy_gap."))))

    def _plateau_text(self, first: float, last: float, progress: float, span: int,
                      ref: float, fix_first: str) -> dict[str, str]:
        head = (f"the training loss made {progress:+.1%} progress over the last {span} steps "
                f"(mean {first:.4g} -> {last:.4g}; threshold {self.plateau_threshold:.0%})")
        lr, first_lr = self._lr_taken, self._lr_first
        if (self._trained_before is None and lr is not None and first_lr
                and lr < first_lr / 100 and last > 0.1 * ref):
            reading = (f"the learning rate is down to {lr:.3g}, 1/{first_lr / lr:.3g} of its "
                       f"first {first_lr:.3g}, with the loss still at {last / ref:.0%} of "
                       f"its initial value {ref:.4g}: the schedule decays it far too fast")
            suggestion = ("step the scheduler as often as its settings assume (a StepLR or "
                          "cosine schedule counted in epochs, stepped every batch, decays "
                          "100s of times too fast), or give its settings in steps; the "
                          "learning_rate curve shows the schedule")
        elif self._trained_before is not None:
            reading = (f"the model started trained (its first batch {self._trained_before:.0%} "
                       f"right: pretrained weights, a resumed checkpoint), so it has converged "
                       f"for this learning rate")
            suggestion = ("for more progress lower the learning rate (a decay schedule), or "
                          "unfreeze more layers; if the validation loss is flat too, stop")
        elif last >= 0.9 * ref and self._max <= 1.5 * ref:
            reading = (f"it has hardly moved from its initial value {ref:.4g}: a curve flat or "
                       f"nearly linear from the start is the signature of a learning rate "
                       f"that is too low")
            suggestion = ("raise the learning rate 3–10× (check update_ratio/ for ratios far "
                          "below 1e-3) and check that the parameters are being updated; if the "
                          "ratios are near 1e-3 already, the model moves but learns nothing: "
                          "check that inputs and labels are paired (shuffled together, not "
                          "separately) and that the labels reach the loss")
        elif last >= 0.9 * ref:
            reading = (f"it jumped to {self._max:.4g} (step {self._max_step}) and came "
                       f"back to about its initial value {ref:.4g}: a too-high learning rate "
                       f"probably killed the units (dead ReLUs)")
            suggestion = "lower the learning rate about 10× and restart from a fresh init"
        else:
            reading = (f"it stalled at {last / ref:.0%} of its initial value {ref:.4g}: a fast "
                       f"early drop followed by a plateau at a poor value suggests a learning "
                       f"rate too high for this stage")
            suggestion = ("lower the learning rate 3–10× or add a decay schedule; if the "
                          "validation loss is flat at a good value, training has converged")
        if fix_first and self._trained_before is None:  # (a stall is a symptom: of those)
            suggestion = f"{fix_first}; then: {suggestion}"
        return {"message": f"{head}; {reading}", "suggestion": suggestion}

    def _check_noise(self, state: RunState, step: int, ref: float) -> None:
        win = self._window(self._noise_n)
        level = max(sum(win) / len(win), 0.25 * ref)
        d = list(map(operator.sub, win[1:], win[:-1]))
        mean_d = sum(d) / len(d)
        std_d = math.sqrt(max(sum(map(operator.mul, d, d)) / len(d) - mean_d * mean_d, 0.0))
        spread = std_d / math.sqrt(2.0) / level
        self.relative_spread = spread
        # A diverging loss (or a window still holding its spike) scatters for other reasons.
        calm = step - self._unsettled_at > self.noise_window
        raw = spread > self.noise_threshold and calm
        active = self._condition("noise", step, raw,
                                 spread > self.noise_threshold / 1.25 and calm)
        span = self._noise_n * self.check_every
        inputs = state.inputs if state.inputs is not None else state.targets  # (its length)

        def describe() -> dict[str, str]:
            if not active:
                return {"message": f"the batch loss scatter is down to {spread:.0%} of its "
                                   f"level"}
            try:
                batch = f"; batch size {len(inputs)}"
            except TypeError:  # no batch recorded at this step (None), or no length
                batch = ""
            return {"message": (f"the batch loss scatters by {spread:.0%} of its level over "
                                f"the last {span} steps (threshold {self.noise_threshold:.0%}"
                                f"{batch})"),
                    "suggestion": ("most of it is the batches' sampling noise, which grows as "
                                   "the batch shrinks: if the smoothed loss still falls, "
                                   "nothing needs changing; if it stalls, use a larger batch "
                                   "(4× the batch halves the scatter) or a lower learning "
                                   "rate")}

        state.alerts.update("loss.noise", active, step=step, severity="info", value=spread,
                            describe=describe)
