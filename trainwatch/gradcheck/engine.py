"""Numerical gradient check, framework-free (numpy only).

``check_gradients(loss_fn, params, grads)`` compares an analytic gradient with centered finite
differences ``(J(θ+h) - J(θ-h)) / 2h`` in float64, tensor by tensor, and returns a
:class:`~trainwatch.gradcheck.report.GradCheckReport`.

How one check runs (every number is an option, see :data:`DEFAULTS`):

1. **Copies.** ``params`` is copied to float64 (C order); ``loss_fn`` only ever sees the copies,
   so the caller's arrays (and their dtype) are never touched.
2. **Determinism.** The loss is evaluated ``repeats`` times at θ; if the values differ beyond
   round-off the check stops with ``nondeterministic=True`` and blames no tensor.
3. **Precision and noise.** The loss is evaluated at 6 points ``θ ± k·s·u`` (k = 1, 2, 3, u a
   random unit direction) for a tiny scale s; the residual of a cubic fit through the 7
   values is the loss's round-off noise σ. Where that residual is above float64 round-off
   (a kink crossed on the way, or a loss computed in lower precision) a second, smaller
   scale is probed: σ is pooled over the scales when they agree, else the smaller (a kink
   crossed inflates the larger scale only). A returned
   ``np.float32``, or values that all fit in float32's 24 bits (or a noise above
   1e-9·max(1, |loss|)), mean the loss is computed in float32: then the step is
   ``h_float32`` and the thresholds ``thresholds_float32``, and the report says so.
   Differences ``|a-n|`` smaller than ``noise_factor · √2·σ / step`` are round-off, not error
   (tiny true gradients such as a bias in front of a normalisation, whose true gradient is 0,
   pass).
   With ``noise_probe="on_failure"`` a float64 loss is first taken at float64's round-off
   (σ = eps·|loss|, the smallest allowance: a probe that passes with it passes with any
   larger one) and the probe runs when a probe first fails, which is then judged again.
4. **Probes, per tensor.** ``coordinates`` sampled entries (the entry with the largest analytic
   magnitude plus a seeded random sample; all entries of a small tensor) and ``directions``
   random unit directions ``d`` covering every entry at once: ``(J(θ+h·d) - J(θ-h·d)) / 2h``
   is compared with ``g·d``. Directions are Gaussian with every ``|d_i| >= 0.1/√n`` (Chainer's
   floor), so one wrong entry ``e`` shifts ``g·d`` by at least ``0.1·e/√n`` while ``|g·d|`` is
   about ``‖g‖/√n``: the relative error is at least about ``0.1·e/‖g‖``, i.e. ``0.1/√n`` when
   ``e`` is the size of a typical entry: 1e-4 for n = 10⁶, far above the "correct" threshold
   (1e-7). Directions are drawn afresh from ``seed`` at every check.
5. **Localisation.** A direction that is not "correct" is bisected: the direction restricted
   to each half of the flattened tensor (rows first) is probed and the worse half kept, down
   to one entry (``4·log2(n)`` evaluations), which is then judged as a coordinate (skipped
   once a coordinate of the tensor already fails).
6. **Before condemning.** A probe that would be "suspicious" or "wrong" is retried at
   ``h·retry_factors`` (h=1e-4 and 1e-6 by default, KNOWLEDGE §1); the best step is kept.
7. **Kinks.** With a signature (``loss_fn`` returns ``(loss, signature)``), a probe whose
   signatures at θ+h and θ-h differ is retried at h/10. If it crosses the kink there too (a
   kink at θ itself, or within h/10 of it: a zero bias under a ReLU fed a zero input) and
   one side keeps θ's signature at both steps, the loss runs on θ's piece on that side, the
   piece the analytic gradient is of (a signature must be the side the gradient takes at a
   tie, or a state of its own): the probe is judged one-sided there, the quotients
   ``±(J(θ±s)-J(θ))/s`` at s = h and h/10 extrapolated to s → 0 (Richardson). Otherwise
   it is set aside. With or without one (a signature may miss a kink: one inside a loss
   computed in C++), a
   probe that fails at every step tried is set aside when the estimates at the steps do not
   follow the smooth ``n(s) = t + c·s²`` law, or when at every step the one-sided differences
   ``(J(θ+h)-J(θ))/h`` and ``(J(θ)-J(θ-h))/h`` differ by as much as the disagreement itself
   (smooth: they differ by ``h·|J''|``, vanishing with h; across a kink by the slope jump).
   A correct gradient whose estimates agree with each other but not with it is a bug.
   A tensor whose every probe was set aside gets one more: its largest-gradient entry, as
   a coordinate (it moves one unit by ±h, where a direction moves them all).

The verdict of a tensor is its worst probe on the KNOWLEDGE §1 ladder (see
:mod:`trainwatch.gradcheck.report`). Cost: ``2·(coordinates + directions)`` evaluations per
tensor, plus ``repeats + 6`` (6 more for a loss whose noise is above float64 round-off,
12 more for a float32 loss; the 6 only once a probe fails with ``noise_probe="on_failure"``),
plus retries, bisection and kink steps only where needed.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainwatch.core.linalg import dot
from trainwatch.gradcheck.report import SEVERITY, VERDICTS, GradCheckReport, TensorCheck

LossFn = Callable[[dict[str, np.ndarray]], Any]
"""``loss_fn(params) -> loss`` or ``-> (loss, kink_signature)``."""

#: Every option of :func:`check_gradients` with its default.
DEFAULTS: dict[str, Any] = {
    # step of the centered difference when the loss is float64 (absolute, parameter units)
    "h": 1e-5,
    # step when the loss is detected to be computed in float32
    "h_float32": 1e-2,
    # sampled coordinates per tensor (all entries when the tensor has no more than this)
    "coordinates": 10,
    # random-direction probes per tensor (skipped when every entry is a sampled coordinate)
    "directions": 3,
    # (wrong, suspicious, acceptable): relative-error boundaries of the verdict ladder
    "thresholds": (1e-2, 1e-4, 1e-7),
    # the same for a float32 loss
    "thresholds_float32": (5e-2, 5e-3, 1e-4),
    # a probe that would fail is retried at h times each factor before it is condemned
    "retry_factors": (10.0, 0.1),
    # |a-n| below noise_factor times the estimated round-off noise of n counts as no error
    "noise_factor": 8.0,
    # threshold multiplier for the first tensor (deepest from the loss), growing
    # geometrically from 1 at the last tensor; 1.0 = off. E.g. 100 for a 10-layer net.
    "depth_allowance": 1.0,
    # without a signature, recognise kinks from one-sided differences at several steps
    "kink_detection": True,
    # bisect a failing direction down to one entry
    "localize": True,
    # evaluations of the loss at the same point to detect nondeterminism (>= 2)
    "repeats": 2,
    # "auto" (detect), "float64", "float32" or "float16": precision the loss is computed in
    "precision": "auto",
    # "always": measure the round-off noise (6 evaluations) before the probes; "on_failure":
    # for a float64 loss, only once a probe fails (a pass with float64's round-off allowance
    # stands with any larger one): a check whose probes all pass saves the 6 evaluations
    "noise_probe": "always",
    # stop with CheckTimeout once the check has run this many seconds, or as soon as its
    # evaluations so far show that it would (None: no limit)
    "max_seconds": None,
    # with max_seconds: a lower bound on one evaluation's seconds known before the check
    # (check_module passes a third of its analytic pass, a forward and a backward); a check
    # whose planned evaluations cannot fit at that speed stops before the first (None: the
    # first evaluations tell)
    "evaluation_seconds": None,
}

EPS: dict[str, float] = {name: float(np.finfo(name).eps)
                         for name in ("float64", "float32", "float16")}
_FLOAT16_STEP = 1e-1          # step for a float16 loss (coarse: float16 has 11 bits)
_NOISE_STEPS = (1e-6, 1e-9)   # scales of the noise probe for a float64 loss
_CLEAN_NOISE = 1e-12          # relative σ at or below this at the first scale: no second one
_NONDET_ULPS = 64             # two values at θ further apart than this many ulps: random loss
_LOW_PRECISION_NOISE = 1e-9   # relative noise above this: float64 loss computed from float32
_STRADDLE_RETRY = 0.1         # a probe that crossed a kink is retried at h times this


# --------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class Options:
    """Validated options of one check (see :data:`DEFAULTS` for meaning and defaults)."""

    h: float
    h_float32: float
    coordinates: int
    directions: int
    thresholds: tuple[float, float, float]
    thresholds_float32: tuple[float, float, float]
    retry_factors: tuple[float, ...]
    noise_factor: float
    depth_allowance: float
    kink_detection: bool
    localize: bool
    repeats: int
    precision: str
    noise_probe: str
    max_seconds: float | None
    evaluation_seconds: float | None

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> Options:
        """Validate ``options``: unknown names raise TypeError, bad values ValueError; each
        message names the argument."""
        unknown = [name for name in options if name not in DEFAULTS]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, DEFAULTS, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(f"unknown option(s) {', '.join(hints)}; "
                            f"known options: {', '.join(DEFAULTS)}")
        v = {**DEFAULTS, **options}
        if v["coordinates"] == 0 and v["directions"] == 0:
            raise ValueError("coordinates, directions: at least one probe per tensor is needed, "
                             "got 0 and 0")
        return cls(
            h=_positive("h", v["h"]),
            h_float32=_positive("h_float32", v["h_float32"]),
            coordinates=_count("coordinates", v["coordinates"], 0),
            directions=_count("directions", v["directions"], 0),
            thresholds=_ladder("thresholds", v["thresholds"]),
            thresholds_float32=_ladder("thresholds_float32", v["thresholds_float32"]),
            retry_factors=_factors("retry_factors", v["retry_factors"]),
            noise_factor=_non_negative("noise_factor", v["noise_factor"]),
            depth_allowance=_at_least_one("depth_allowance", v["depth_allowance"]),
            kink_detection=_flag("kink_detection", v["kink_detection"]),
            localize=_flag("localize", v["localize"]),
            repeats=_count("repeats", v["repeats"], 2),
            precision=_choice("precision", v["precision"],
                              ("auto", "float64", "float32", "float16")),
            noise_probe=_choice("noise_probe", v["noise_probe"], ("always", "on_failure")),
            max_seconds=None if v["max_seconds"] is None else _positive("max_seconds",
                                                                        v["max_seconds"]),
            evaluation_seconds=(None if v["evaluation_seconds"] is None
                                else _positive("evaluation_seconds", v["evaluation_seconds"])),
        )


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    number = _real(name, value)
    if number <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return number


def _non_negative(name: str, value: Any) -> float:
    number = _real(name, value)
    if number < 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return number


def _at_least_one(name: str, value: Any) -> float:
    number = _real(name, value)
    if number < 1:
        raise ValueError(f"{name}: must be >= 1 (1 = off), got {value!r}")
    return number


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _ladder(name: str, value: Any) -> tuple[float, float, float]:
    try:
        numbers = tuple(_positive(name, x) for x in value)
    except TypeError:
        numbers = ()
    if len(numbers) != 3 or not numbers[0] > numbers[1] > numbers[2]:
        raise ValueError(f"{name}: must be three positive numbers (wrong, suspicious, "
                         f"acceptable) in decreasing order, e.g. (1e-2, 1e-4, 1e-7); "
                         f"got {value!r}")
    return numbers  # type: ignore[return-value]


def _factors(name: str, value: Any) -> tuple[float, ...]:
    try:
        return tuple(_positive(name, x) for x in value)
    except TypeError:
        raise ValueError(f"{name}: must be a sequence of positive numbers, got {value!r}") from None


# --------------------------------------------------------------------------------------------
# inputs


def _validate_inputs(loss_fn: Any, params: Any, grads: Any, *, what: str = "grads",
                     subset: bool = False) -> None:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: must be callable, got {type(loss_fn).__name__}")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params: must be a non-empty dict of name -> array")
    if not isinstance(grads, Mapping):
        raise ValueError(f"{what}: must be a dict of name -> array with the keys of params")
    missing = [name for name in (grads if subset else params) if name not in grads]
    extra = [name for name in grads if name not in params]
    if extra or (missing and not subset):
        raise ValueError(f"{what}: keys must match params; missing {missing}, unknown {extra}")
    for name, value in params.items():
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"params[{name!r}]: must be a floating-point array, got dtype "
                             f"{array.dtype}")
        if name in grads and np.shape(grads[name]) != array.shape:
            raise ValueError(f"{what}[{name!r}]: shape {np.shape(grads[name])} does not match "
                             f"params[{name!r}] shape {array.shape}")


# --------------------------------------------------------------------------------------------
# one probe


@dataclass
class Probe:
    """One finite-difference measurement: a coordinate or a random direction at one step.

    ``analytic`` and ``numerical`` are derivatives (for a direction, along the unit direction),
    ``allowance`` the round-off noise of ``numerical`` times ``noise_factor``.
    """

    kind: str                     # "coordinate" or "direction"
    index: tuple[int, ...]        # coordinate index; () for a direction
    step: float
    analytic: float
    numerical: float
    allowance: float
    one_sided_gap: float = 0.0    # |forward - backward one-sided difference|
    gap_allowance: float = 0.0
    straddled: bool = False       # signatures at θ+h and θ-h differ
    side: int = 0                 # straddled: +1 (-1) when θ+h (θ-h) kept θ's signature
    one_sided: float = math.nan   # that side's difference quotient, ±(J(θ±h) - J(θ)) / h
    finite: bool = True           # both evaluations finite and the step representable
    kink: bool = False            # set aside
    note: str = ""

    @property
    def difference(self) -> float:
        return abs(self.analytic - self.numerical)

    @property
    def rel(self) -> float:
        """Relative error beyond round-off: ``max(0, |a-n| - allowance) / max(|a|, |n|)``."""
        if not self.finite or math.isnan(self.difference):
            return math.inf
        excess = self.difference - self.allowance
        if excess <= 0:
            return 0.0
        return excess / max(abs(self.analytic), abs(self.numerical))

    @property
    def rel_raw(self) -> float:
        """Plain relative error ``|a-n| / max(|a|, |n|)`` (0 when both are 0)."""
        scale = max(abs(self.analytic), abs(self.numerical))
        return 0.0 if scale == 0 else self.difference / scale


def level(rel: float, thresholds: tuple[float, float, float]) -> str:
    """The verdict of one relative error on the ladder (wrong, suspicious, acceptable)."""
    wrong, suspicious, acceptable = thresholds
    if not rel <= wrong:       # also NaN
        return "wrong"
    if rel > suspicious:
        return "suspicious"
    if rel > acceptable:
        return "acceptable"
    return "correct"


def unit_direction(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gaussian unit direction with every ``|d_i| >= 0.1/√size`` (Chainer PR #8236)."""
    z = rng.standard_normal(size)
    z2 = z * z
    d = np.sqrt(0.99 * z2 / z2.sum() + 0.01 / size)
    return np.copysign(d, z)


def _significant_bits(value: float) -> int:
    """Number of significant mantissa bits of a float64 (0 for 0, NaN, inf)."""
    if value == 0 or not math.isfinite(value):
        return 0
    mantissa = int(math.frexp(abs(value))[0] * (1 << 53))
    return 53 - ((mantissa & -mantissa).bit_length() - 1)


def _precision_of_values(values: list[float]) -> str | None:
    """"float32"/"float16" if the loss values look quantised to that precision, else None."""
    bits = [_significant_bits(v) for v in values if v != 0 and math.isfinite(v)]
    if not bits:
        return None
    if 11 < max(bits) <= 24:
        return "float32"
    if max(bits) <= 11 and len(set(values)) >= 3:
        return "float16"
    return None


# --------------------------------------------------------------------------------------------
# a session: one loss function at one point


class LossFunctionError(ValueError):
    """The loss function raised on the model's outputs and the targets: the check cannot
    evaluate the loss (a loss given in a form the loop does not use as it is, say)."""


class CheckTimeout(Exception):
    """A check stopped by its ``max_seconds`` option before it finished.

    Attributes: ``seconds`` it ran, ``evaluations`` of the loss it made, and
    ``estimated_seconds``, the whole check's time extrapolated from the evaluations it
    planned (probes that need retries or bisection would take longer still).
    """

    def __init__(self, seconds: float, evaluations: int, estimated_seconds: float):
        super().__init__(f"the gradient check stopped after {seconds:.3g} s and {evaluations} "
                         f"loss evaluations; the whole check would take about "
                         f"{estimated_seconds:.3g} s")
        self.seconds = seconds
        self.evaluations = evaluations
        self.estimated_seconds = estimated_seconds


class _Deadline:
    """A check's time limit, ticked after every loss evaluation: it has passed once the
    check has run ``seconds``, or once the time so far plus the planned evaluations still to
    come, each as fast as the fastest one since the first, would take it past ``seconds``
    (the first is left out: it may carry one-off costs such as allocations or kernel
    selection; the fastest, so that one evaluation slowed down by the machine does not stop
    a check that fits). A check that cannot fit stops after three evaluations instead of
    running for ``seconds``."""

    def __init__(self, seconds: float, planned: int):
        self.started = self._last = time.perf_counter()
        self.seconds = seconds
        self.planned = planned
        self.done = 0
        self._fastest = math.inf  # seconds of the fastest evaluation after the first

    def tick(self) -> None:
        now = time.perf_counter()
        self.done += 1
        if self.done > 1:
            self._fastest = min(self._fastest, now - self._last)
        self._last = now
        elapsed = now - self.started
        ahead = max(self.planned - self.done, 0) * self._fastest if self.done >= 3 else 0.0
        if elapsed + ahead > self.seconds:
            raise _DeadlinePassed(self.done)

    def estimate(self) -> float:
        """The whole check's seconds, extrapolated from the evaluations so far as
        :meth:`tick` does (from the first alone when there is no other)."""
        elapsed = self._last - self.started
        if self.done < 2:
            return elapsed * max(self.planned, self.done)
        return elapsed + max(self.planned - self.done, 0) * self._fastest


class _DeadlinePassed(Exception):
    """Raised inside a session when the check's deadline has passed."""

    def __init__(self, evaluations: int):
        super().__init__(evaluations)
        self.evaluations = evaluations


class Session:
    """Evaluates one loss function around one point and measures probes.

    Args:
        loss_fn: ``loss_fn(params) -> loss`` or ``(loss, signature)``.
        work: float64 working copies of the parameters (perturbed in place, then restored).
        grads: analytic gradients (float64) of the tensors to be probed.
        dtypes: original dtype of each parameter (float32 tensors are perturbed on the
            float32 grid so the step the loss sees is the step we divide by).
        options: validated options.
        rng: generator for the noise probe direction.
    """

    def __init__(self, loss_fn: LossFn, work: dict[str, np.ndarray],
                 grads: dict[str, np.ndarray], dtypes: dict[str, np.dtype], options: Options,
                 rng: np.random.Generator):
        self.loss_fn = loss_fn
        self.work = work
        self.flat = {name: array.reshape(-1) for name, array in work.items()}
        self.grads = {name: g.reshape(-1) for name, g in grads.items()}
        self.dtypes = dtypes
        self.options = options
        self.rng = rng
        self.evaluations = 0
        self.deadline: _Deadline | None = None  # ticked after every evaluation
        self.notes: list[str] = []
        self.loss = math.nan
        self.signature: np.ndarray | None = None
        self.has_signature = False
        self.precision = "float64"
        self.noise = 0.0
        self.h = options.h
        self.thresholds = options.thresholds
        self.nondeterministic = False
        self.finite = True
        self._probe_values: list[float] = []  # loss values seen by the noise probe
        # what the noise probe needs, while it is deferred (noise_probe="on_failure")
        self._noise_pending: tuple[np.dtype, list[float], float, float, str] | None = None

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, np.ndarray | None, np.dtype]:
        """One call of the loss at the current working point: (value, signature, dtype)."""
        out = self.loss_fn(self.work)
        self.evaluations += 1
        if self.deadline is not None:
            self.deadline.tick()
        signature = None
        if isinstance(out, tuple):
            if len(out) != 2:
                raise TypeError("loss_fn: must return a scalar loss or (loss, kink_signature), "
                                f"got a tuple of {len(out)} items")
            out, signature = out
            if signature is not None:
                signature = np.asarray(signature)
        value = np.asarray(out)
        if value.size != 1:
            raise ValueError(f"loss_fn: must return a scalar loss, got shape {value.shape}")
        if not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"loss_fn: must return a number, got dtype {value.dtype}")
        return float(value.reshape(())), signature, value.dtype

    def _snap(self, name: str, values: np.ndarray | float) -> np.ndarray | float:
        """Round perturbed values to the grid the loss sees (float32 params or loss)."""
        dtype = self.dtypes[name]
        if dtype == np.float64 and self.precision != "float64":
            dtype = np.dtype(self.precision)
        if dtype == np.float64:
            return values
        if isinstance(values, np.ndarray):
            return values.astype(dtype).astype(np.float64)
        return float(dtype.type(values))

    def _straddles(self, sig_plus: np.ndarray | None, sig_minus: np.ndarray | None) -> bool:
        if not self.has_signature:
            return False
        if sig_plus is None or sig_minus is None:
            return True
        return sig_plus.shape != sig_minus.shape or not np.array_equal(sig_plus, sig_minus)

    # -- preamble: determinism, precision, noise ----------------------------------------------

    def start(self) -> None:
        """Evaluate at θ: determinism, precision, round-off noise; sets h and thresholds."""
        values, dtypes = [], []
        for _ in range(self.options.repeats):
            value, signature, dtype = self.evaluate()
            values.append(value)
            dtypes.append(dtype)
        self.loss, self.signature = values[0], signature
        self.has_signature = signature is not None
        if not all(math.isfinite(v) for v in values):
            self.finite = False
            self.notes.append(f"the loss is {values[0]} at the checked point: nothing can be "
                              "checked")
            return
        guess = self._declared_precision(dtypes[0]) or _precision_of_values(values) or "float64"
        spread = max(values) - min(values)
        scale = max(abs(v) for v in values)
        if spread > _NONDET_ULPS * EPS[guess] * scale:
            self.nondeterministic = True
            self.notes.append(
                f"the loss is random at a fixed point ({self.options.repeats} evaluations at the "
                f"same parameters gave {min(values):.10g} .. {max(values):.10g}): fix the "
                "dropout seed (draw masks from a Generator seeded inside loss_fn) or turn "
                "dropout and augmentation off; nothing was checked, no tensor is blamed")
            return

        precision, reason = self._detect_precision(dtypes[0], values)
        self.precision = precision
        self._noise_pending = (dtypes[0], values, scale, spread, reason)
        if precision == "float64" and self.options.noise_probe == "on_failure":
            self.noise = max(spread, EPS[precision] * scale)  # until a probe fails
        else:
            self._measure_noise()

    def _measure_noise(self) -> None:
        """The noise probe: round-off noise σ, and the precision it reveals (a float64 loss
        computed from float32 inside); sets h and the thresholds for a lower precision."""
        dtype, values, scale, spread, reason = self._noise_pending
        self._noise_pending = None
        precision = self.precision
        if precision == "float64":
            noise = self._noise_probe(_NOISE_STEPS)
            precision, reason = self._detect_precision(dtype, values + self._probe_values)
            if precision == "float64" and noise > _LOW_PRECISION_NOISE * max(1.0, scale):
                precision = "float32"
                reason = (f"its round-off noise ({noise:.1e}) is far above float64's: "
                          "loss_fn computes in lower precision inside")
            self.precision = precision
        if precision != "float64":
            h = self.options.h_float32 if precision == "float32" else _FLOAT16_STEP
            noise = self._noise_probe((h / 4, h / 40))
            self.h = h
            self.thresholds = self.options.thresholds_float32
            if precision == "float16":
                self.thresholds = tuple(10 * t for t in self.thresholds)
            self.notes.append(
                f"the loss is computed in {precision} ({reason}): using step h={self.h:g} and "
                f"{precision} thresholds (wrong > {self.thresholds[0]:g}, suspicious > "
                f"{self.thresholds[1]:g}, acceptable > {self.thresholds[2]:g}); a float64 "
                "loss would allow a much tighter check")
        self.noise = max(noise, spread, EPS[precision] * scale)

    def _declared_precision(self, dtype: np.dtype) -> str | None:
        if self.options.precision != "auto":
            return self.options.precision
        if dtype in (np.float32, np.float16):
            return str(dtype)
        return None

    def _detect_precision(self, dtype: np.dtype, values: list[float]) -> tuple[str, str]:
        declared = self._declared_precision(dtype)
        if self.options.precision != "auto":
            return declared, "precision option"
        if declared is not None:
            return declared, f"loss_fn returns np.{declared}"
        quantised = _precision_of_values(values)
        if quantised is not None:
            return quantised, f"loss values are quantised at {quantised} resolution"
        return "float64", ""

    def _noise_probe(self, steps: tuple[float, ...]) -> float:
        """Round-off noise σ of one loss value.

        At each scale s in ``steps``: the residual of a cubic fit through the loss at
        θ + k·s·u, k = -3..3 (u a random unit direction over all tensors). Round-off noise is
        the same at every scale, while a kink crossed on the way leaves a residual that
        shrinks with s: the smallest estimate is kept. Probes whose signature changed are
        ignored (σ falls back to eps·|loss|). Consistent scales (variances within 16×) are
        pooled. A first scale whose σ is at float64 round-off (``_CLEAN_NOISE``·max(1, |loss|))
        leaves nothing for a smaller one to correct: the later scales are skipped.
        """
        directions = {name: self.rng.standard_normal(array.shape)
                      for name, array in self.work.items()}
        norm = math.sqrt(sum(float(np.sum(d * d)) for d in directions.values()))
        originals = dict(self.work)
        ks = np.arange(-3, 4)
        basis = np.vander(ks.astype(float), 4)
        self._probe_values = []
        estimates = []
        try:
            for step in steps:
                values, straddled = [], False
                for k in ks:
                    if k == 0:
                        values.append(self.loss)
                        continue
                    for name, base in originals.items():
                        self.work[name] = self._snap(
                            name, base + (k * step / norm) * directions[name])
                    value, signature, _ = self.evaluate()
                    values.append(value)
                    straddled |= self._straddles(signature, self.signature)
                self._probe_values += values
                y = np.asarray(values) - self.loss
                if straddled or not np.all(np.isfinite(y)):
                    continue
                coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
                residual = y - basis @ coef
                estimates.append(float(residual @ residual) / (len(ks) - 4))
                if math.sqrt(estimates[-1]) <= _CLEAN_NOISE * max(1.0, abs(self.loss)):
                    break  # round-off only: no kink inflated it, no lower precision shows
        finally:
            self.work.update(originals)
        if not estimates:
            return 0.0
        if max(estimates) <= 16 * min(estimates):  # consistent: pool the degrees of freedom
            return math.sqrt(sum(estimates) / len(estimates))
        return math.sqrt(min(estimates))

    # -- measurements ---------------------------------------------------------------------------

    def _allowance(self, delta: float) -> float:
        """Noise allowance on (J+ - J-)/delta: noise_factor·√2·σ/|delta|."""
        return self.options.noise_factor * math.sqrt(2.0) * self.noise / abs(delta)

    def measure_coordinate(self, name: str, index: int, step: float) -> Probe:
        """Centered difference along one coordinate (flat ``index``) of tensor ``name``."""
        flat = self.flat[name]
        x0 = float(flat[index])
        x_plus, x_minus = self._snap(name, x0 + step), self._snap(name, x0 - step)
        flat[index] = x_plus
        j_plus, sig_plus, _ = self.evaluate()
        flat[index] = x_minus
        j_minus, sig_minus, _ = self.evaluate()
        flat[index] = x0
        shape = self.work[name].shape
        probe = Probe("coordinate", tuple(int(i) for i in np.unravel_index(index, shape)),
                      step, float(self.grads[name][index]), math.nan, math.inf)
        up, down = x_plus - x0, x0 - x_minus
        if not (up > 0 and down > 0 and math.isfinite(j_plus) and math.isfinite(j_minus)):
            probe.finite = False
            probe.note = ("the loss is not finite at θ±h" if up > 0 and down > 0 else
                          f"step {step:g} is below the resolution of this entry")
            return probe
        probe.numerical = (j_plus - j_minus) / (x_plus - x_minus)
        probe.allowance = self._allowance(x_plus - x_minus)
        forward, backward = (j_plus - self.loss) / up, (self.loss - j_minus) / down
        probe.one_sided_gap = abs(forward - backward)
        probe.gap_allowance = 3.0 * self.options.noise_factor * self.noise / min(up, down)
        probe.straddled = self._straddles(sig_plus, sig_minus)
        self._side(probe, sig_plus, sig_minus, forward, backward)
        return probe

    def measure_direction(self, name: str, direction: np.ndarray, step: float,
                          lo: int = 0, hi: int | None = None) -> Probe:
        """Centered difference along ``direction`` restricted to flat entries ``lo:hi``
        (renormalised to unit length) of tensor ``name``; values are derivatives along it."""
        hi = direction.size if hi is None else hi
        part = direction[lo:hi]
        unit = part / math.sqrt(dot(part, part))
        flat = self.flat[name]
        saved = flat[lo:hi].copy()
        plus = self._snap(name, saved + step * unit)
        minus = self._snap(name, saved - step * unit)
        try:
            flat[lo:hi] = plus
            j_plus, sig_plus, _ = self.evaluate()
            flat[lo:hi] = minus
            j_minus, sig_minus, _ = self.evaluate()
        finally:
            flat[lo:hi] = saved
        realised = plus - minus
        analytic = dot(self.grads[name][lo:hi], realised) / (2 * step)
        probe = Probe("direction", (), step, analytic, math.nan, math.inf)
        if not (math.isfinite(j_plus) and math.isfinite(j_minus)):
            probe.finite = False
            probe.note = "the loss is not finite at θ±h·d"
            return probe
        probe.numerical = (j_plus - j_minus) / (2 * step)
        probe.allowance = self._allowance(2 * step)
        forward, backward = (j_plus - self.loss) / step, (self.loss - j_minus) / step
        probe.one_sided_gap = abs(forward - backward)
        probe.gap_allowance = 3.0 * self.options.noise_factor * self.noise / step
        probe.straddled = self._straddles(sig_plus, sig_minus)
        self._side(probe, sig_plus, sig_minus, forward, backward)
        return probe

    def _side(self, probe: Probe, sig_plus: np.ndarray | None, sig_minus: np.ndarray | None,
              forward: float, backward: float) -> None:
        """For a probe that crossed a kink: the side (if one) whose signature is θ's, where
        the loss runs on the piece autograd differentiated, and its one-sided quotient."""
        if not probe.straddled:
            return
        for side, sig, quotient in ((1, sig_plus, forward), (-1, sig_minus, backward)):
            if not self._straddles(sig, self.signature):
                probe.side, probe.one_sided = side, quotient

    # -- judging ----------------------------------------------------------------------------------

    def judge(self, measure: Callable[[float], Probe],
              thresholds: tuple[float, float, float]) -> Probe:
        """Measure at h; handle kinks; retry a failing probe at other steps before condemning.

        Returns the probe at the step that is kept; ``kink=True`` means set aside.
        """
        probe = measure(self.h)
        if probe.straddled or not probe.finite:
            smaller = measure(self.h * _STRADDLE_RETRY)
            if smaller.finite and not smaller.straddled:
                smaller.note = f"crossed a kink at h={self.h:g}, judged at h={smaller.step:g}"
                probe = smaller
            else:
                one_sided = self._one_sided(probe, smaller)
                if one_sided is None:
                    probe.kink = True
                    probe.note = probe.note or "crossed a kink (signature changed)"
                    return probe
                if one_sided.rel > thresholds[1] and self._noise_pending is not None:
                    factor = thresholds[0] / self.thresholds[0]  # (as below)
                    self._measure_noise()
                    return self.judge(measure, tuple(t * factor for t in self.thresholds))
                return one_sided
        if probe.rel <= thresholds[1]:
            return probe
        if self._noise_pending is not None:
            # the deferred noise probe: the failure may be round-off, or a lower precision
            # (then a larger step and looser thresholds); judged again with what it found
            factor = thresholds[0] / self.thresholds[0]
            self._measure_noise()
            return self.judge(measure, tuple(t * factor for t in self.thresholds))
        tries = [probe] + [measure(self.h * f) for f in self.options.retry_factors
                           if not math.isclose(self.h * f, probe.step)]
        usable = [t for t in tries if t.finite and not t.straddled]
        best = min(usable, key=lambda t: t.rel)
        if best.rel <= thresholds[1]:
            best.note = f"failed at h={probe.step:g}, agrees at h={best.step:g}"
            return best
        if self.options.kink_detection:  # (also with a signature: a kink it does not see)
            reason = _kink_evidence(usable)
            if reason:
                probe.kink = True
                probe.note = f"kink: {reason}"
                return probe
        if best is not probe:
            best.note = f"fails at every step tried ({', '.join(f'{t.step:g}' for t in tries)})"
        return best

    def _one_sided(self, big: Probe, small: Probe) -> Probe | None:
        """A probe that crossed a kink at h and at h/10 on one side only, the other side on
        θ's piece both times (a kink at θ itself: a zero-initialised bias under a ReLU fed a
        zero input): judged one-sided on that side, against autograd's derivative of that
        piece. The one-sided quotients q(s) = t + c·s at the two steps give t by Richardson
        extrapolation, t = q(h/10) − (q(h) − q(h/10))/9; the allowance adds the correction
        itself to the round-off noise of a one-sided quotient. None where no side qualifies
        (a kink on both sides): the probe is set aside."""
        if not (big.finite and small.finite and big.side and big.side == small.side):
            return None
        correction = (big.one_sided - small.one_sided) / 9.0
        judged = Probe(small.kind, small.index, small.step, small.analytic,
                       small.one_sided - correction,
                       1.2 * self._allowance(small.step) + abs(correction))
        judged.note = (f"on a kink at θ: judged one-sided (θ{'+' if big.side > 0 else '−'}h keeps "
                       f"θ's kink pattern, the piece autograd differentiates), extrapolated "
                       f"from h={big.step:g} and {small.step:g}")
        return judged

    def localize(self, name: str, direction: np.ndarray, failed: Probe,
                 thresholds: tuple[float, float, float]) -> Probe | None:
        """Bisect a failing direction down to one entry; return that entry's judged probe,
        or None if the disagreement vanished on the way (spread over both halves)."""
        lo, hi = 0, direction.size
        while hi - lo > 1:
            mid = (lo + hi) // 2
            halves = []
            for a, b in ((lo, mid), (mid, hi)):
                if not np.any(direction[a:b]):
                    continue
                half = self.measure_direction(name, direction, failed.step, a, b)
                if half.finite and not half.straddled:
                    halves.append((half.difference - half.allowance, a, b))
            if not halves or max(halves)[0] <= 0:
                return None
            _, lo, hi = max(halves)
        return self.judge(lambda s: self.measure_coordinate(name, lo, s), thresholds)

    # -- one tensor -------------------------------------------------------------------------------

    def check_tensor(self, name: str, rng: np.random.Generator,
                     allowance_factor: float = 1.0) -> TensorCheck:
        """Probe one tensor (coordinates, directions, bisection) and summarise it."""
        thresholds = tuple(t * allowance_factor for t in self.thresholds)
        grad = self.grads[name]
        shape = self.work[name].shape
        size = grad.size
        noise_floor = self._allowance(2 * self.h)
        if size == 0:
            return TensorCheck(name, "correct", 0.0, 0.0, (), math.nan, math.nan, 0, 0,
                               ["empty tensor: nothing to check"], shape=shape,
                               noise_floor=noise_floor)
        bad = np.flatnonzero(~np.isfinite(grad))
        if bad.size:
            index = tuple(int(i) for i in np.unravel_index(bad[0], shape))
            return TensorCheck(
                name, "wrong", math.inf, math.inf, index, float(grad[bad[0]]), math.nan, 0, 0,
                [f"{bad.size} non-finite analytic gradient entries (first at {index})"],
                shape=shape, noise_floor=noise_floor)

        probes: list[Probe] = []
        notes: list[str] = []
        n_coords = min(self.options.coordinates, size)
        if n_coords == size:
            sample = np.arange(size)
        elif n_coords == 0:  # (directions only: no draw, ~20 µs for a large tensor)
            sample = np.arange(0)
        else:
            sample = np.sort(rng.choice(size, size=n_coords, replace=False))
            largest = int(np.argmax(np.abs(grad)))
            if largest not in sample:
                sample[0] = largest
                sample.sort()
        for index in sample:
            probes.append(self.judge(
                lambda s, i=int(index): self.measure_coordinate(name, i, s), thresholds))

        n_dirs = 0 if n_coords == size else self.options.directions
        for number in range(n_dirs):
            direction = unit_direction(rng, size)
            probe = self.judge(lambda s, d=direction: self.measure_direction(name, d, s),
                               thresholds)
            probes.append(probe)
            located = any(p.kind == "coordinate" and p.rel > thresholds[1] for p in probes)
            # bisected once it disagrees beyond the measured noise: one wrong entry with a
            # small gradient moves a direction's relative error by far less than its own
            # (below "correct" in a large tensor) but a coordinate's fully (with the noise
            # probe deferred, only the float64 round-off is known: then past "correct")
            trigger = 0.0 if self._noise_pending is None else thresholds[2]
            if (self.options.localize and not probe.kink and probe.rel > trigger
                    and not located):
                leaf = self.localize(name, direction, probe, thresholds)
                if leaf is None:
                    notes.append(f"direction {number} disagrees (rel {probe.rel:.1e}) but "
                                 "bisection could not pin it to one entry")
                else:
                    probes.append(leaf)
                    notes.append(f"direction {number} disagrees (rel {probe.rel:.1e}); "
                                 f"bisection located entry {leaf.index} (rel {leaf.rel:.1e})")
        if probes and all(p.kink for p in probes):
            # every probe crossed a kink: the largest-gradient entry, one coordinate whose
            # ±h moves far fewer units than a direction's, is the evidence left to take
            largest = int(np.argmax(np.abs(grad)))
            if largest not in sample:
                probes.append(self.judge(
                    lambda s: self.measure_coordinate(name, largest, s), thresholds))
                notes.append("every probe crossed a kink: the largest-gradient entry probed")
        noise_floor = self._allowance(2 * self.h)  # (the noise may have been measured since)
        return self._summarise(name, shape, probes, n_dirs, thresholds, noise_floor, notes)

    def _summarise(self, name: str, shape: tuple[int, ...], probes: list[Probe], n_dirs: int,
                   thresholds: tuple[float, float, float], noise_floor: float,
                   notes: list[str]) -> TensorCheck:
        checked = [p for p in probes if not p.kink]
        kinks = [p for p in probes if p.kink]
        pool = checked or kinks
        # the worst verdict level first; within it a coordinate (a real index) before a
        # direction, then the largest error
        worst = max(pool, key=lambda p: (SEVERITY[level(p.rel, thresholds)],
                                         p.kind == "coordinate", p.rel, p.rel_raw))
        if checked:
            verdict = level(worst.rel, thresholds)
            max_rel = worst.rel
            # (a few probes a tensor: Euclidean norms in plain Python, no array round trips)
            excess = [max(p.difference - p.allowance, 0.0) for p in checked]
            denominator = (math.hypot(*(p.analytic for p in checked))
                           + math.hypot(*(p.numerical for p in checked)))
            norm_rel = math.hypot(*excess) / denominator if denominator else 0.0
        else:
            verdict, max_rel, norm_rel = "kink", math.nan, math.nan
            notes.append("every probe crossed a kink: nothing left to compare")
        kink_disagreed = any(p.rel > thresholds[1] for p in kinks)
        if verdict in ("correct", "acceptable") and kink_disagreed:
            verdict = "kink"
        if kinks:
            reasons = sorted({p.note for p in kinks if p.note})
            notes.append(f"{len(kinks)} of {len(probes)} probes set aside as kinks"
                         + (f" ({'; '.join(reasons)})" if reasons else ""))
        one_sided = [p for p in checked if p.note.startswith("on a kink at θ")]
        if one_sided:
            notes.append(f"{len(one_sided)} probe(s) sat on a kink at the checked point: "
                         "judged one-sided, on the side whose kink pattern is the point's "
                         "(the piece autograd differentiates)")
        retried = [p for p in checked if p.note.startswith("failed at")]
        if retried:
            notes.append(f"{len(retried)} probe(s) disagreed at h={self.h:g} but agree at "
                         f"another step ({', '.join(sorted({f'{p.step:g}' for p in retried}))})")
        if verdict == "acceptable":
            notes.append("max rel error is fine for objectives with kinks (ReLU, max, hinge) "
                         "but high for a smooth one (tanh, softmax)")
        if checked and all(max(abs(p.analytic), abs(p.numerical)) <= p.allowance
                           for p in checked):
            notes.append(f"gradient below the round-off noise floor (~{noise_floor:.1e}): the "
                         "check cannot see errors here; scale the loss up to check it")
        directions = [p for p in checked if p.kind == "direction"]
        if directions and all(max(abs(p.analytic), abs(p.numerical)) < 4 * p.allowance
                              for p in directions):
            notes.append("the random-direction probes are at the round-off noise floor "
                         f"(|g·d| ~ {abs(directions[0].analytic):.1e}, noise allowance "
                         f"{directions[0].allowance:.1e}): a bug confined to a few entries "
                         "would go unseen; a float64 loss checks much more tightly")
        if verdict in ("suspicious", "wrong"):
            notes.extend(_bug_pattern(checked, thresholds))
        coordinates = [p.index for p in probes if p.kind == "coordinate"]
        return TensorCheck(
            name=name, verdict=verdict, max_rel_error=max_rel, norm_rel_error=norm_rel,
            worst_index=worst.index, worst_analytic=worst.analytic,
            worst_numerical=worst.numerical, probed=len(probes), kinks=len(kinks), notes=notes,
            shape=tuple(shape), coordinates=coordinates, directions=n_dirs,
            worst_kind=worst.kind, worst_h=worst.step, noise_floor=noise_floor)


def _kink_evidence(tries: list[Probe]) -> str:
    """Why the estimates of one probe at several steps look like a kink, or "" if they look
    smooth. Two tests, both free (they reuse the retry evaluations and J(θ)):

    - the centered estimates n(s) do not follow ``t + c·s²`` (smooth: the change between the
      two smallest steps is predicted from the two largest; a kink crossed at some steps
      but not others breaks the pattern);
    - at every step the one-sided differences disagree by at least the analytic-numerical
      gap, and by about as much at the smallest step as at the largest (a kink within all
      steps: the gap is the slope jump, whatever the step; at a smooth point the one-sided
      gap is ``s·|J''|`` and shrinks with s, though it may exceed a small disagreement).
    """
    if len(tries) < 2:
        return ""
    tries = sorted(tries, key=lambda t: -t.step)
    if len(tries) >= 3:
        big, mid, small = tries[0], tries[-2], tries[-1]
        scale = (mid.step ** 2 - small.step ** 2) / (big.step ** 2 - mid.step ** 2)
        predicted = (big.numerical - mid.numerical) * scale
        observed = mid.numerical - small.numerical
        slack = abs(predicted) + mid.allowance + small.allowance + big.allowance * scale
        if abs(observed - predicted) > slack:
            return (f"centered estimates jump between steps {mid.step:g} and {small.step:g} "
                    f"({mid.numerical:.6g} vs {small.numerical:.6g}), not O(h²)")
    big, small = tries[0], tries[-1]
    if all(t.one_sided_gap + t.gap_allowance >= t.difference for t in tries) and (
            small.one_sided_gap + small.gap_allowance >= 0.5 * big.one_sided_gap):
        # (and the gap holds as the step shrinks: a slope jump does, while the s·|J''| of a
        # smooth point shrinks with s, and exceeds a small disagreement at every step)
        return ("one-sided differences disagree by the slope jump at every step tried "
                f"({', '.join(f'{t.step:g}' for t in tries)})")
    return ""


def _bug_pattern(probes: list[Probe], thresholds: tuple[float, float, float]) -> list[str]:
    """Describe a consistent ratio analytic/numerical over the failing probes (×2, ×½, −1, 0)."""
    failing = [p for p in probes if p.rel > thresholds[1] and abs(p.numerical) > p.allowance]
    if not failing:
        return []
    ratios = np.array([p.analytic / p.numerical for p in failing])
    median = float(np.median(ratios))
    if np.all(np.abs(ratios - median) <= 0.02 * max(abs(median), 0.05)):
        if abs(median) < 1e-3:
            return ["the analytic gradient is ~0 where the numerical one is not "
                    "(a missing term or path?)"]
        return [f"analytic ≈ {median:.3g} × numerical on the {len(failing)} failing probe(s)"]
    return []


# --------------------------------------------------------------------------------------------
# the public entry point


def _copies(params: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.dtype]]:
    work = {name: np.array(value, dtype=np.float64, order="C", copy=True)
            for name, value in params.items()}
    dtypes = {name: np.asarray(value).dtype for name, value in params.items()}
    return work, dtypes


def _depth_factors(names: list[str], allowance: float) -> dict[str, float]:
    """Threshold multiplier per tensor: ``allowance`` for the first (deepest from the loss),
    1 for the last, geometric in between."""
    last = max(len(names) - 1, 1)
    return {name: allowance ** ((len(names) - 1 - k) / last) for k, name in enumerate(names)}


def _planned_evaluations(work: Mapping[str, np.ndarray], sections: list[Iterable[str]],
                         options: Options) -> int:
    """Loss evaluations a check plans (a float64 loss, no retries, no failure): per section
    the repeats and the noise probe (unless deferred), per tensor two for each sampled
    coordinate and direction."""
    total = 0
    noise = 6 if options.noise_probe == "always" else 0  # one scale (k = ±1, ±2, ±3)
    for names in sections:
        total += options.repeats + noise
        for name in names:
            size = work[name].size
            coordinates = min(options.coordinates, size)
            directions = options.directions if size > options.coordinates else 0
            total += 2 * (coordinates + directions)
    return total


def _run_section(loss_fn: LossFn, work: dict[str, np.ndarray], dtypes: dict[str, np.dtype],
                 grads: Mapping[str, Any], options: Options,
                 seed_sequence: np.random.SeedSequence, deadline: _Deadline | None = None
                 ) -> tuple[Session, dict[str, TensorCheck]]:
    """Check one loss term (data or regularisation) over the tensors in ``grads``."""
    names = [name for name in work if name in grads]
    g64 = {name: np.array(grads[name], dtype=np.float64, order="C") for name in names}
    streams = seed_sequence.spawn(len(names) + 1)
    session = Session(loss_fn, work, g64, dtypes, options, np.random.default_rng(streams[0]))
    session.deadline = deadline
    session.start()
    checks: dict[str, TensorCheck] = {}
    if session.nondeterministic or not session.finite:
        return session, checks
    factors = _depth_factors(names, options.depth_allowance)
    for name, stream in zip(names, streams[1:]):
        checks[name] = session.check_tensor(name, np.random.default_rng(stream), factors[name])
    return session, checks


def check_gradients(loss_fn: LossFn, params: Mapping[str, Any], grads: Mapping[str, Any], *,
                    seed: int = 0, reg_fn: LossFn | None = None,
                    reg_grads: Mapping[str, Any] | None = None, sweep: bool = False,
                    **options: Any) -> GradCheckReport:
    """Compare analytic gradients with centered finite differences, tensor by tensor.

    Args:
        loss_fn: ``loss_fn(params) -> float``, or ``-> (loss, kink_signature)`` where the
            signature is an array describing every kink decision of the forward pass (ReLU
            masks, max/argmax winners, active hinge terms); differing signatures at θ+h and
            θ-h mean a kink was crossed. Must be deterministic (seed dropout inside it).
        params: name -> float array, the point to check, in layer (forward) order. Never
            modified: ``loss_fn`` receives float64 copies.
        grads: name -> analytic gradient of ``loss_fn`` at ``params`` (same keys and shapes).
        seed: seeds the sampled coordinates and directions (use a new seed per check).
        reg_fn: optional regularisation term ``reg_fn(params) -> float``; when given,
            ``loss_fn``/``grads`` are the data term alone and ``reg_fn``/``reg_grads`` are
            checked as a separate section (``report.regularization``).
        reg_grads: name -> analytic gradient of ``reg_fn`` (a subset of the keys of params).
        sweep: also run the step-size sweep (:func:`trainwatch.gradcheck.sweep`) on the failing
            tensors (all tensors if none fail) and attach it as ``report.sweep``.
        **options: see :data:`DEFAULTS` (``h``, ``h_float32``, ``coordinates``,
            ``directions``, ``thresholds``, ``thresholds_float32``, ``retry_factors``,
            ``noise_factor``, ``depth_allowance``, ``kink_detection``, ``localize``,
            ``repeats``, ``precision``).

    Returns:
        A :class:`~trainwatch.gradcheck.report.GradCheckReport`.
    """
    opts = Options.from_kwargs(options)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    _validate_inputs(loss_fn, params, grads)
    if (reg_fn is None) != (reg_grads is None):
        raise ValueError("reg_fn, reg_grads: give both (regularisation term and its gradient) "
                         "or neither")
    if reg_fn is not None:
        _validate_inputs(reg_fn, params, reg_grads, what="reg_grads", subset=True)
    if not isinstance(sweep, bool):
        raise ValueError(f"sweep: must be True or False, got {sweep!r}")

    started = time.perf_counter()
    sections = [[n for n in params if n in grads]]
    if reg_grads is not None:
        sections.append([n for n in params if n in reg_grads])
    planned = _planned_evaluations({n: np.asarray(p) for n, p in params.items()}, sections, opts)
    if opts.max_seconds is not None and opts.evaluation_seconds is not None:
        estimate = planned * opts.evaluation_seconds
        if estimate > opts.max_seconds:  # cannot fit: stop before copying anything
            raise CheckTimeout(time.perf_counter() - started, 0, estimate)
    work, dtypes = _copies(params)
    deadline = None if opts.max_seconds is None else _Deadline(opts.max_seconds, planned)
    root = np.random.SeedSequence(int(seed))
    data_seq, reg_seq = root.spawn(2)
    evaluations = 0
    regularization: dict[str, TensorCheck] | None = None
    reg_ok = True
    try:
        session, checks = _run_section(loss_fn, work, dtypes, grads, opts, data_seq, deadline)
        notes = list(session.notes)
        evaluations = session.evaluations
        if reg_fn is not None and not session.nondeterministic:
            reg_session, regularization = _run_section(reg_fn, work, dtypes, reg_grads, opts,
                                                       reg_seq, deadline)
            notes += [f"regularization term: {note}" for note in reg_session.notes]
            evaluations += reg_session.evaluations
            reg_ok = not reg_session.nondeterministic and reg_session.finite
    except _DeadlinePassed as stop:
        raise CheckTimeout(time.perf_counter() - started, stop.evaluations,
                           deadline.estimate()) from None

    failed = [name for name, check in checks.items() if not check.passed]
    failed += [f"{name} (regularization)" for name, check in (regularization or {}).items()
               if not check.passed]
    data_failed = [name for name, check in checks.items() if not check.passed]
    if len(data_failed) > 1:
        notes.append(f"{', '.join(data_failed)} fail: a wrong backward step corrupts the "
                     "gradients of every tensor before it in the forward pass; look first at "
                     f"the failing tensor closest to the loss ({data_failed[-1]})")
    passed = (session.finite and not session.nondeterministic and reg_ok and not failed)
    report = GradCheckReport(
        passed=passed, nondeterministic=session.nondeterministic, precision=session.precision,
        h=session.h, params=checks, regularization=regularization, failed=failed, notes=notes,
        loss=session.loss, noise=session.noise, thresholds=tuple(session.thresholds),
        evaluations=evaluations)
    if sweep and checks:
        from trainwatch.gradcheck.sweep import sweep as run_sweep

        names = data_failed or list(checks)
        indices = {name: [checks[name].worst_index] for name in names
                   if checks[name].worst_kind == "coordinate"
                   and math.isfinite(checks[name].worst_numerical)}
        report.sweep = run_sweep(loss_fn, params, grads, names=names, seed=seed,
                                 indices=indices, **options)
        report.evaluations += report.sweep.evaluations
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["DEFAULTS", "CheckTimeout", "Options", "Probe", "Session", "check_gradients", "level",
           "unit_direction", "VERDICTS", "SEVERITY"]
