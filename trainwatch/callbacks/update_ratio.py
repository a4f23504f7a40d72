"""UpdateRatioMonitor: how much each parameter tensor actually moves per optimizer step.

KNOWLEDGE §3: for every parameter tensor, ``‖Δθ‖ / ‖θ‖`` (the update the optimizer actually
applied, divided by the weights) should be about 1e-3. Much higher: the learning rate is
probably too high; much lower: probably too low. Exactly 0: the tensor was not updated at all
(frozen by mistake, detached from the loss, missing from the optimizer).

Δθ is measured across the step (``backend.begin_update()`` before it, ``end_update()`` after),
so the ratio is right for momentum, Nesterov, Adam, weight decay and clipping alike, not the
``lr·‖g‖`` approximation. ``‖θ‖`` is the norm after the step.

How a tensor is judged, on each scheduled step (every ``every`` steps):

* The smoothed ratio is a geometric EMA: an EMA (weight ``smoothing`` for the newest value)
  of ``log10(ratio)``, or with ``window=N`` the mean of the last N ``log10`` values; one
  outlier step therefore moves it by a factor, not by orders of magnitude.
* It is out of band when above ``high`` (or below ``low``); with value hysteresis (``margin``)
  it is back in band only below ``high / (1 + margin)`` (above ``low * (1 + margin)``).
* ``update_ratio.high`` / ``update_ratio.low`` fire when the smoothed ratio has been out of band
  for ``patience`` consecutive checks (default 10, i.e. 200 steps: the first ~100 steps of a
  healthy run often sit up to 3× above 1e-2; the demo's do), or for ``severe_patience``
  checks (default 2) when it is more than ``severe_factor`` (10×) beyond the band edge (a
  learning rate orders of magnitude off is reported within a few dozen steps). Each
  condition fires once per episode (see :class:`~trainwatch.alerts.AlertManager`).
* ``update_ratio.frozen``: ``‖Δθ‖ == 0`` while ``‖θ‖ > 0`` at ``frozen_patience`` consecutive
  checks. A frozen check brings no new ratio, so the smoothed ratio stands for the band rules
  (plain SGD with a learning rate 500× too high kills every ReLU within ten steps: the one
  measured ratio still fires ``high``, and ``frozen`` follows). When every tensor is frozen
  at once (``optimizer.step()`` had no effect) one alert without a tensor is raised instead
  of one per tensor.
* ``update_ratio.zero_weight`` (info): ``‖θ‖ == 0`` after the step at ``frozen_patience``
  consecutive checks; no ratio is computed (never a division by zero).

Biases, and any tensor that was exactly zero before its first measured step, start at zero,
so their ratio is about ``1/t`` early in training whatever the learning rate (1e-1 after ten
steps even at lr=1e-6). They are measured and written but not judged against the band unless
``include_biases=True`` or an ``overrides`` pattern names them; the frozen check applies to
them as to every tensor.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainwatch.alerts.rules import Hysteresis, Streak
from trainwatch.core.backend import TensorNorms
from trainwatch.core.budget import TimeBudget
from trainwatch.core.callback import Callback
from trainwatch.core.checks import count, optional_count
from trainwatch.core.state import RunState

RATIO_PREFIX = "update_ratio/"
LOG10_PREFIX = "update_ratio_log10/"
NORMS_PREFIX = "update_ratio_norms/"

_BIAS = re.compile(r"(^|[._])bias$")

Band = tuple[float | None, float | None]


def _number(name: str, value: Any, *, low: float, high: float = math.inf,
            low_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        left = "(" if low_open else "["
        right = "]" if math.isfinite(high) else ")"
        raise ValueError(f"{name}: must be a number in {left}{low}, {high}{right}, got {value!r}")
    return float(value)


def _band(name: str, band: Any) -> Band:
    if not isinstance(band, (tuple, list)) or len(band) != 2:
        raise ValueError(f"{name}: must be a (low, high) pair, got {band!r}")
    low, high = band
    for side, v in (("low", low), ("high", high)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {side} must be a finite number > 0 or None, got {v!r}")
    if low is None and high is None:
        raise ValueError(f"{name}: give at least one of low, high")
    if low is not None and high is not None and not low < high:
        raise ValueError(f"{name}: low must be below high, got {band!r}")
    return (None if low is None else float(low), None if high is None else float(high))


def is_bias(name: str) -> bool:
    """Whether a parameter name denotes a bias (``fc1.bias``, ``in_proj_bias``)."""
    return _BIAS.search(name) is not None


#: ‖∇‖/‖θ‖ below which a tensor that did not move is read as getting (almost) no gradient:
#: with a learning rate of order 1 its update is below float32's resolution of the weights
NEGLIGIBLE_GRADIENT = 1e-6


@dataclass
class _Track:
    """Per-tensor state of the rules."""

    band: Band
    rule: Hysteresis
    judged: bool
    log_ema: float = math.nan
    window: deque | None = None
    measured: int = 0
    direction: str | None = None  # current out-of-band side ("high"/"low") or None
    streak: int = 0  # consecutive checks on that side
    severe_streak: int = 0
    since: int = 0  # step the current out-of-band streak began
    firing: str | None = None
    frozen: Streak = field(default_factory=Streak)  # checks with ‖Δθ‖ = 0
    zero: Streak = field(default_factory=Streak)  # checks with ‖θ‖ = 0
    #: for a tensor the watched optimizer does not hold: ‖θ‖ at the last check (moved since:
    #: another optimizer trains it, its ratio is not this step's to measure)
    last_weight: float = math.nan
    #: the tensor's tags: weight, gradient and update norms, ratio, log10 ratio
    tags: tuple[str, ...] = ()


class UpdateRatioMonitor(Callback):
    """Per-tensor update/weight ratio ``‖Δθ‖ / ‖θ‖``, written to TensorBoard and checked
    against a band; alerts name the tensor and suggest a learning-rate change.

    Measures on scheduled steps (multiples of ``every``, spaced further where ``budget``
    asks for it): the parameters are snapshotted in ``on_step_begin`` and compared in
    ``on_step_end``, all tensors in one batched backend call. Other steps never call it.

    Tags (at the step measured):

    * ``update_ratio/<tensor>``: the ratio of this step (0 for a frozen tensor);
    * ``update_ratio_log10/<tensor>``: its log10 (finite ratios > 0 only), plus
      ``update_ratio_log10/band_low`` and ``update_ratio_log10/band_high``, the log10 of the
      band, so the custom-scalars chart "update_ratio / all tensors, log10" compares every
      tensor against the band on a log scale;
    * with ``log_norms``: ``update_ratio_norms/<tensor>/weight``, ``.../grad``, ``.../update``
      (L2 norms; ``update_ratio/`` holds only ratios).

    Alerts (warnings, once per episode per tensor): ``update_ratio.high``,
    ``update_ratio.low`` (not while the learning rate is below half its peak so far, a
    schedule's decay, or rising, a warm-up: ``Backend.learning_rate``),
    ``update_ratio.frozen``; info: ``update_ratio.zero_weight``, and
    ``update_ratio.band_not_applied`` once for an optimizer that is not first-order (L-BFGS:
    its ratios are written, the band judges only the tensors ``overrides`` names). See the
    module docstring for the exact rules.

    Args:
        every: measure every this many optimizer steps (default 20).
        band: healthy ``(low, high)`` ratio (default ``(1e-4, 1e-2)`` around KNOWLEDGE's 1e-3);
            either side may be None for no bound.
        smoothing: EMA weight of the newest ``log10`` ratio, in (0, 1] (default 0.3; 1 means
            no smoothing). Ignored when ``window`` is given.
        window: smooth with the mean of the last ``window`` checks instead (default None).
        patience: consecutive out-of-band checks before ``high``/``low`` fire (default 10).
        severe_factor: how far beyond the band edge (a factor, > 1) counts as severe (default
            10).
        severe_patience: consecutive severe checks before firing (default 2).
        frozen_patience: consecutive checks with ``‖Δθ‖ == 0`` (or ``‖θ‖ == 0``) before
            ``frozen`` (``zero_weight``) fires (default 2).
        margin: relative hysteresis of the band (default 0.2; 0 for none).
        overrides: ``{name_or_glob: (low, high)}`` bands for matching tensors (the first
            matching pattern wins; a matching bias is judged even without
            ``include_biases``).
        include_biases: judge biases and zero-initialised tensors against the band (default
            False: they are measured and written but not judged).
        exclude: names or globs of tensors not measured at all (e.g. intentionally frozen).
        log_norms: also write weight, gradient and update norms (default True).
        budget: the most measuring may take, as a fraction of the run's wall time (default
            0.0025; a :class:`~trainwatch.core.budget.TimeBudget`): on a model whose steps
            take a millisecond, where one measurement costs a fraction of a step, a due
            measurement moves to a later multiple of ``every``. None: every ``every``
            steps whatever it costs.
    """

    order = 20

    def __init__(
        self,
        every: int = 20,
        band: tuple[float | None, float | None] = (1e-4, 1e-2),
        *,
        smoothing: float = 0.3,
        window: int | None = None,
        patience: int = 10,
        severe_factor: float = 10.0,
        severe_patience: int = 2,
        frozen_patience: int = 2,
        margin: float = 0.2,
        overrides: Mapping[str, tuple[float | None, float | None]] | None = None,
        include_biases: bool = False,
        exclude: Iterable[str] = (),
        log_norms: bool = True,
        budget: float | None = 0.0025,
    ):
        self.every = count("every", every)
        self.budget = TimeBudget(budget, name="budget")
        self.band = _band("band", band)
        self.smoothing = _number("smoothing", smoothing, low=0.0, high=1.0)
        self.window = optional_count("window", window)
        self.patience = count("patience", patience)
        self.severe_factor = _number("severe_factor", severe_factor, low=1.0)
        self.severe_patience = count("severe_patience", severe_patience)
        self.frozen_patience = count("frozen_patience", frozen_patience)
        self.margin = _number("margin", margin, low=0.0, low_open=False)
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, Mapping):
            raise ValueError(f"overrides: must be a mapping {{pattern: (low, high)}}, "
                             f"got {type(overrides).__name__}")
        self.overrides: dict[str, Band] = {}
        for pattern, b in overrides.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"overrides: keys must be non-empty strings, got {pattern!r}")
            self.overrides[pattern] = _band(f"overrides[{pattern!r}]", b)
        if not isinstance(include_biases, bool):
            raise ValueError(f"include_biases: must be True or False, got {include_biases!r}")
        self.include_biases = include_biases
        if isinstance(exclude, str):
            exclude = (exclude,)
        self.exclude = tuple(exclude)
        if not all(isinstance(p, str) and p for p in self.exclude):
            raise ValueError(f"exclude: must be names or globs (strings), got {exclude!r}")
        if not isinstance(log_norms, bool):
            raise ValueError(f"log_norms: must be True or False, got {log_norms!r}")
        self.log_norms = log_norms

        self._skip: dict[str, bool] = {}
        self._reset()

    def _reset(self) -> None:
        #: the latest measured norms and ratio per tensor (NaN where no ratio exists)
        self.latest: dict[str, TensorNorms] = {}
        self.ratios: dict[str, float] = {}
        self._tracks: dict[str, _Track] = {}
        self._rules: dict[Band, Hysteresis] = {}
        self._measuring = False
        self._reported: set[tuple[str, str | None]] = set()
        self._all_frozen = Streak()  # checks where no tensor changed
        self._outside: set[str] = set()  # tensors the watched optimizer does not hold
        self._band_applies = True  # a first-order optimizer: the band is its rule of thumb
        self._warm = False  # the first (cold) measurement's cost is forgotten once done
        self._peak_lr = 0.0  # the learning rate's largest value so far, and its last one
        self._last_lr: float | None = None
        self._scheduled_low = False  # a warm-up or a decay explains low ratios now

    # -- results ------------------------------------------------------------------------------

    def smoothed(self, name: str) -> float:
        """The smoothed ratio of tensor ``name`` (NaN before its first finite ratio)."""
        track = self._tracks.get(name)
        return math.nan if track is None else _exp10(self._level(track))

    # -- hooks ----------------------------------------------------------------------------------

    def on_train_begin(self, state: RunState) -> None:
        self._reset()
        self.budget.start(state.step)
        if not state.backend.first_order_optimizer:
            self._band_applies = False
            state.alerts.fire(
                "update_ratio.band_not_applied", "info",
                f"the optimizer is not first-order (L-BFGS: a line search takes large steps by "
                f"design): update ratios are written, but judged against the band "
                f"{self.band} (a rule of thumb for SGD-like steps) only for the tensors "
                f"`overrides` names", state.step)
        state.writer.layout({"update_ratio": {
            "all tensors, log10 (band lines: band_low, band_high)": (
                "Multiline", [r"^update_ratio_log10/"]),
            "all tensors": ("Multiline", [r"^update_ratio/"]),
        }})

    def next_step(self, step: int) -> int:
        return self.budget.next_due(step, self.every)

    def reads_batch(self, step: int) -> bool:
        return False

    def on_step_begin(self, state: RunState) -> None:
        if self.budget.next_due(state.step, self.every) != state.step:
            return
        with self.budget:
            self.budget.count()
            state.backend.begin_update()
        self._measuring = True

    def on_step_end(self, state: RunState) -> None:
        if not self._measuring:
            return
        self._measuring = False
        with self.budget:
            norms = state.backend.end_update_scalars()  # framework scalars, read at step end
            names, step = list(norms), state.step

            def evaluate(floats: list[float]) -> None:
                with self.budget:
                    self._evaluate(state, step, {name: TensorNorms(*floats[3 * i:3 * i + 3])
                                                 for i, name in enumerate(names)})
                if not self._warm:
                    # the first measurement runs cold (first calls, the snapshot's buffers
                    # allocated): spacing the next by its cost put it past the end of short
                    # runs, and a rate far off needs two measurements to be reported
                    self._warm = True
                    self.budget.forget()

            self.read_at_step_end(state, [v for name in names for v in norms[name]], evaluate)

    # -- internals --------------------------------------------------------------------------------

    def _skipped(self, name: str) -> bool:
        skip = self._skip.get(name)
        if skip is None:
            skip = self._skip[name] = any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
        return skip

    def _track(self, name: str) -> _Track:
        track = self._tracks.get(name)
        if track is None:
            band = self.band
            judged = self._band_applies and (self.include_biases or not is_bias(name))
            for pattern, b in self.overrides.items():
                if fnmatch.fnmatchcase(name, pattern):
                    band, judged = b, True
                    break
            rule = self._rules.get(band)
            if rule is None:
                rule = self._rules[band] = Hysteresis(high=band[1], low=band[0],
                                                      margin=self.margin)
            track = self._tracks[name] = _Track(band=band, rule=rule, judged=judged, tags=(
                f"{NORMS_PREFIX}{name}/weight", f"{NORMS_PREFIX}{name}/grad",
                f"{NORMS_PREFIX}{name}/update", f"{RATIO_PREFIX}{name}", f"{LOG10_PREFIX}{name}"))
            if self.window is not None:
                track.window = deque(maxlen=self.window)
        return track

    def _level(self, track: _Track) -> float:
        """The smoothed log10 ratio."""
        if track.window is not None:
            return math.fsum(track.window) / len(track.window) if track.window else math.nan
        return track.log_ema

    def _evaluate(self, state: RunState, step: int, norms: Mapping[str, TensorNorms]) -> None:
        values: dict[str, float] = {}
        frozen: list[str] = []
        updated: list[str] = []
        still_zero = 0  # tensors that are all zeros and did not move either
        outside = self._outside = state.backend.not_in_optimizer()
        self._follow_learning_rate(state.backend.learning_rate())
        for name, n in norms.items():
            if self._skipped(name):
                continue
            track = self._track(name)
            if name in outside and self._trained_elsewhere(state, step, name, n, track):
                continue
            first = track.measured == 0
            track.measured += 1
            self.latest[name] = n
            w, g, u = n.weight, n.grad, n.update
            weight_tag, grad_tag, update_tag, ratio_tag, log10_tag = track.tags
            if self.log_norms:
                values[weight_tag] = w
                values[grad_tag] = g
                values[update_tag] = u
            self.ratios[name] = math.nan
            if not (math.isfinite(w) and math.isfinite(u)):
                continue  # non-finite: LossMonitor's concern; no evidence either way
            self._check_zero_weight(state, step, name, n, track, w == 0.0)
            if w == 0.0:
                track.frozen.update(False, step)
                still_zero += u == 0.0
                if u != 0.0:
                    updated.append(name)
                continue
            if u == 0.0:
                self.ratios[name] = values[ratio_tag] = 0.0
                track.frozen.update(True, step)
                frozen.append(name)
                if track.judged and not math.isnan(self._level(track)):
                    # No new evidence about the ratio: the smoothed value stands, so a
                    # too-high ratio that killed the tensor's units is still reported.
                    self._check_band(state, step, name, n, track)
                continue
            track.frozen.update(False, step)
            updated.append(name)
            ratio = u / w
            self.ratios[name] = values[ratio_tag] = ratio
            values[log10_tag] = math.log10(ratio)
            if u == w:
                # The tensor was exactly zero before this step (Δθ is all of θ): the ratio is
                # 1 by construction and says nothing about the learning rate.
                if first:  # zero-initialised: judged like a bias
                    track.judged = ((self._band_applies and self.include_biases)
                                    or self._overridden(name))
                continue
            self._absorb(track, math.log10(ratio))
            if track.judged:
                self._check_band(state, step, name, n, track)
        self._check_frozen(state, step, frozen, updated, still_zero)
        low, high = self.band
        if low is not None:
            values[f"{LOG10_PREFIX}band_low"] = math.log10(low)
        if high is not None:
            values[f"{LOG10_PREFIX}band_high"] = math.log10(high)
        state.writer.scalars(values, step)

    def _trained_elsewhere(self, state: RunState, step: int, name: str, n: TensorNorms,
                           track: _Track) -> bool:
        """For a tensor the watched optimizer does not hold: whether another optimizer trains
        it (‖θ‖ moved since the last check, although not in the watched step). Its update
        then happens outside the measured step, so it has no ratio here; one that never
        moves is judged as any other (frozen: missing from every optimizer)."""
        before, track.last_weight = track.last_weight, n.weight
        if n.update != 0.0 or not math.isfinite(before) or n.weight == before:
            return False
        track.frozen.update(False, step)
        self._report(state, "update_ratio.frozen", name, False, step, lambda: {
            "message": f"{name} is trained by another optimizer (‖θ‖ moved between checks, "
                       "outside the watched optimizer's steps)"})
        return True

    def _overridden(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.overrides)

    def _absorb(self, track: _Track, log_ratio: float) -> None:
        if track.window is not None:
            track.window.append(log_ratio)
        elif math.isnan(track.log_ema):
            track.log_ema = log_ratio
        else:
            track.log_ema += self.smoothing * (log_ratio - track.log_ema)

    def _report(self, state: RunState, code: str, tensor: str | None, active: bool, step: int,
                describe: Callable[[], dict[str, Any]]) -> None:
        """Tell the alert manager about a condition; ``describe()`` gives message, severity,
        value and suggestion, built only when the manager will read them. Conditions that were
        never reported active cost nothing."""
        key = (code, tensor)
        if active:
            self._reported.add(key)
            state.alerts.update(code, True, step=step, tensor=tensor, describe=describe)
        elif key in self._reported:
            state.alerts.update(code, False, step=step, tensor=tensor, describe=describe)
            if not state.alerts.is_firing(code, tensor):
                self._reported.discard(key)

    def _check_band(self, state: RunState, step: int, name: str, n: TensorNorms,
                    track: _Track) -> None:
        smoothed = _exp10(self._level(track))
        low, high = track.band
        # The streak counts checks strictly beyond the band edge; the hysteresis rule only
        # keeps a firing condition active until the ratio is back inside by the margin.
        side = ("high" if high is not None and smoothed > high else
                "low" if low is not None and smoothed < low and not self._scheduled_low
                else None)
        latched = track.rule.check(smoothed, key=name)
        if side != track.direction:
            track.direction, track.streak, track.severe_streak, track.since = side, 0, 0, step
        severe = ((side == "high" and smoothed > high * self.severe_factor)
                  or (side == "low" and smoothed < low / self.severe_factor))
        if side is not None:
            track.streak += 1
            track.severe_streak = track.severe_streak + 1 if severe else 0
        if track.firing != latched:
            track.firing = None
        if track.firing is None and side is not None and (
                track.streak >= self.patience or track.severe_streak >= self.severe_patience):
            track.firing = side
        for code_side in ("high", "low"):
            active = track.firing == code_side
            self._report(state, f"update_ratio.{code_side}", name, active, step,
                         lambda s=code_side, a=active: self._band_message(
                             step, name, n, track, smoothed, s, a))

    def _follow_learning_rate(self, lr: float | None) -> None:
        """A learning rate below half its peak so far (a schedule's decay) or rising since the
        last check (a warm-up) explains ratios below the band: low is not judged then."""
        if lr is None or not math.isfinite(lr):
            self._scheduled_low = False
            return
        rising = self._last_lr is not None and lr > self._last_lr * 1.01
        self._peak_lr = max(self._peak_lr, lr)
        self._scheduled_low = rising or lr < self._peak_lr / 2
        self._last_lr = lr

    def _band_message(self, step: int, name: str, n: TensorNorms, track: _Track,
                      smoothed: float, side: str, active: bool) -> dict[str, Any]:
        low, high = track.band
        band = f"[{_fmt_bound(low)}, {_fmt_bound(high)}]"
        where = "above" if side == "high" else "below"
        if not active:
            return {"message": f"{name}: smoothed update/weight ratio {smoothed:.2e} is no "
                               f"longer {where} the band {band}", "value": smoothed}
        message = (
            f"{name}: update/weight ratio {smoothed:.2e} (smoothed) is {where} the band {band} "
            f"since step {track.since} ({step - track.since} steps, {track.streak} checks); "
            f"this step ‖Δθ‖={n.update:.3g}, ‖θ‖={n.weight:.3g}, ‖∇‖={n.grad:.3g}"
        )
        target = _target(track.band)
        factor = smoothed / target if side == "high" else target / smoothed
        how = "lower" if side == "high" else "higher"
        suggestion = (
            f"learning rate probably too {side}: try it about {_fmt_factor(factor)}× {how} "
            f"(the ratio scales roughly with the learning rate; aim for about {target:.0e})"
        )
        if side == "low" and not n.grad > NEGLIGIBLE_GRADIENT * n.weight:
            # no gradient to scale: a higher rate moves nothing (units killed, often by a
            # rate that was too high, or the tensor cut from the loss)
            suggestion = ("the tensor gets (almost) no gradient, so a higher learning rate "
                          "would not move it: its units are probably dead (often after a too-high "
                          "learning rate) or it is cut from the loss (.detach(), an unused branch)")
        elif side == "low":
            suggestion += ("; a converged run, or the end of a learning-rate decay, has low "
                           "ratios by design: then nothing needs changing")
        return {"message": message, "severity": "warning", "value": smoothed,
                "suggestion": suggestion}

    def _check_frozen(self, state: RunState, step: int, frozen: list[str],
                      updated: list[str], still_zero: int) -> None:
        code = "update_ratio.frozen"
        measured = len(frozen) + len(updated) + still_zero
        all_frozen = measured > 1 and frozen and not updated
        active = self._all_frozen.update(all_frozen, step) >= self.frozen_patience

        def describe_all() -> dict[str, Any]:
            if not active:
                return {"message": "parameter tensors are being updated again"}
            return {"severity": "warning", "value": 0.0,
                    "message": (f"no parameter tensor changed: all {measured} have ‖Δθ‖ = 0 "
                                f"at {self._all_frozen.count} checks since step "
                                f"{self._all_frozen.since}"),
                    "suggestion": ("optimizer.step() has no effect: is it called, does it hold "
                                   "the model's parameters, is the learning rate > 0, are steps "
                                   "skipped (e.g. an AMP gradient scaler finding inf)?")}

        self._report(state, code, None, active, step, describe_all)
        if all_frozen:
            return  # one alert for the whole model, not one per tensor
        for name in updated:
            self._report(state, code, name, False, step, lambda name=name: {
                "message": f"{name} is being updated again (ratio {self.ratios[name]:.2e})"})
        for name in frozen:
            track = self._tracks[name]
            self._report(state, code, name, track.frozen.count >= self.frozen_patience, step,
                         lambda name=name, track=track: self._frozen_message(name, track))

    def _frozen_message(self, name: str, track: _Track) -> dict[str, Any]:
        n = self.latest[name]
        if n.grad == 0.0:
            why = "its gradient is exactly zero too"
            suggestion = ("the tensor gets no gradient: it is detached from the loss "
                          "(.detach(), a stop-gradient, an unused branch) or every unit it "
                          "feeds is dead (ReLU outputs all zero, often after a too-high "
                          "learning rate)")
        elif n.grad < NEGLIGIBLE_GRADIENT * n.weight:
            why = (f"its gradient norm is only {n.grad:.2g} ({n.grad / n.weight:.1e} of ‖θ‖): "
                   "an update that small is lost to the weights' float rounding")
            suggestion = ("the tensor gets (almost) no gradient: a bias in front of a "
                          "normalisation layer (BatchNorm, LayerNorm) has none, its shift "
                          "is removed (set bias=False there), or the units it feeds are "
                          f"nearly dead; if it is meant to stay, exclude=[{name!r}]")
        elif name in self._outside:
            why = (f"although its gradient norm is {n.grad:.3g}: the watched optimizer does "
                   "not hold it, and nothing else moved it")
            suggestion = ("add it to the optimizer (built from part of the model, or before "
                          "this module was created?); if it is frozen on purpose, "
                          f"requires_grad_(False) or exclude=[{name!r}]")
        else:
            why = f"although its gradient norm is {n.grad:.3g}"
            suggestion = ("the optimizer does not update it: is it in the optimizer's "
                          "parameter list, with a learning rate > 0, and not frozen "
                          "(requires_grad)? If it is frozen on purpose, pass "
                          f"exclude=[{name!r}]")
        message = (f"{name} was not updated: ‖Δθ‖ = 0 with ‖θ‖ = {n.weight:.3g} at "
                   f"{track.frozen.count} checks since step {track.frozen.since}; {why}")
        return {"message": message, "severity": "warning", "value": 0.0,
                "suggestion": suggestion}

    def _check_zero_weight(self, state: RunState, step: int, name: str, n: TensorNorms,
                           track: _Track, zero: bool) -> None:
        active = track.zero.update(zero, step) >= self.frozen_patience

        def describe() -> dict[str, Any]:
            if not active:
                return {"message": f"{name} is no longer all zeros"}
            return {"severity": "info", "value": 0.0,
                    "message": (f"{name} is all zeros (‖θ‖ = 0) after the step, at "
                                f"{track.zero.count} checks since step {track.zero.since}: it "
                                f"has no update/weight ratio (‖Δθ‖ = {n.update:.3g}, "
                                f"‖∇‖ = {n.grad:.3g})"),
                    "suggestion": ("a tensor that stays at zero gets no useful update: check "
                                   "its initialisation and that it receives a gradient")}

        self._report(state, "update_ratio.zero_weight", name, active, step, describe)


def _exp10(x: float) -> float:
    return math.nan if math.isnan(x) else 10.0 ** x


def _target(band: Band) -> float:
    """The ratio to aim for: the band's geometric centre, or a decade inside a one-sided band."""
    low, high = band
    if low is not None and high is not None:
        return math.sqrt(low * high)
    return high / 10.0 if low is None else low * 10.0


def _fmt_bound(v: float | None) -> str:
    return "-" if v is None else f"{v:.0e}" if float(f"{v:.0e}") == v else f"{v:.2e}"


def _fmt_factor(x: float) -> str:
    if x >= 100:
        return f"{float(f'{x:.2g}'):,.0f}"
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"
