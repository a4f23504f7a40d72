"""Step-size sweep: the error of the worst entries for h = 1e-1 .. 1e-10, one decade apart.

KNOWLEDGE §1: shrink h by 10× repeatedly. While truncation dominates, the error falls about
100× per decade (centered differences are O(h²)); below the best step round-off makes it grow
again; an error that stays flat as h shrinks is a real bug, not approximation. Each entry is
classified accordingly:

- ``"kink"``: the signature changed between θ+h and θ-h at the check's step h, or the error
  drops by more than 1000× within one decade from above the "suspicious" threshold (a kink
  crossed at large steps only; truncation falls just 100× per decade);
- ``"bug"``: over the steps where round-off is below half the values compared, the smallest
  error (beyond round-off) is above the "suspicious" threshold, or above the "acceptable" one
  and within 10× of that minimum over 4 or more decades (a plateau);
- ``"truncation"``: otherwise, when the check's step h is larger than the best step (the error
  at h still falls as h shrinks);
- ``"round-off"``: otherwise (at h the error is already past its minimum: it grows as h
  shrinks, or it is round-off noise around a true gradient of about 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from trainwatch.gradcheck.engine import (
    LossFn,
    Options,
    Session,
    _copies,
    _validate_inputs,
)
from trainwatch.gradcheck.report import json_number

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

#: the steps swept, largest first
DEFAULT_STEPS: tuple[float, ...] = tuple(10.0 ** -k for k in range(1, 11))
CLASSES: tuple[str, ...] = ("truncation", "round-off", "bug", "kink")
_PLOT_FLOOR = 1e-17  # errors of exactly 0 are drawn here on the log axis


@dataclass
class SweepEntry:
    """One entry swept over the steps.

    Attributes:
        name, index: the tensor and the entry's index in it.
        analytic: the analytic gradient entry.
        numerical: centered difference at each step (NaN where the step was unusable).
        errors: plain relative error ``|a-n| / max(|a|, |n|)`` at each step (NaN: unusable).
        classification: ``"truncation"``, ``"round-off"``, ``"bug"`` or ``"kink"``.
        best_h: the step with the smallest error.
        best_error: that smallest error.
    """

    name: str
    index: tuple[int, ...]
    analytic: float
    numerical: list[float]
    errors: list[float]
    classification: str
    best_h: float
    best_error: float

    @property
    def label(self) -> str:
        return f"{self.name}{list(self.index)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": [int(i) for i in self.index],
            "analytic": json_number(self.analytic),
            "numerical": [json_number(v) for v in self.numerical],
            "errors": [json_number(v) for v in self.errors],
            "classification": self.classification,
            "best_h": json_number(self.best_h),
            "best_error": json_number(self.best_error),
        }


@dataclass
class SweepResult:
    """Result of :func:`sweep`: the steps, and one :class:`SweepEntry` per swept entry.

    Attributes:
        steps: the steps, largest first.
        entries: swept entries, tensor by tensor in layer order, worst first within a tensor.
        h: the step of the regular check (marks where the check operates).
        precision: precision of the loss (see the check report).
        evaluations: loss evaluations spent.
        notes: remarks (e.g. nondeterministic loss: nothing swept).
    """

    steps: list[float]
    entries: list[SweepEntry] = field(default_factory=list)
    h: float = 1e-5
    precision: str = "float64"
    evaluations: int = 0
    notes: list[str] = field(default_factory=list)

    def figure(self) -> Figure:
        """Log-log relative error vs h, one line per entry (``matplotlib.figure.Figure``,
        no pyplot, so it works headless). The x axis runs from large to small h."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 4.5))
        ax = fig.add_subplot(1, 1, 1)
        steps = np.asarray(self.steps, dtype=float)
        for entry in self.entries:
            errors = np.asarray(entry.errors, dtype=float)
            ax.plot(steps, np.maximum(errors, _PLOT_FLOOR), marker="o",
                    label=f"{entry.label}: {entry.classification}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if len(steps):
            ax.set_xlim(steps.max() * 2, steps.min() / 2)  # h shrinks to the right
        ax.set_xlabel("step h (shrinking →)")
        ax.set_ylabel("relative error |a−n| / max(|a|,|n|)")
        ax.set_title(f"gradient-check step sweep ({self.precision}; the check uses "
                     f"h={self.h:g})")
        ax.grid(True, which="major", alpha=0.3)
        if self.entries:
            ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [json_number(s) for s in self.steps],
            "entries": [entry.to_dict() for entry in self.entries],
            "h": json_number(self.h),
            "precision": self.precision,
            "evaluations": int(self.evaluations),
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = ["step sweep (relative error per h):"]
        head = ["entry", "class"] + [f"{s:.0e}" for s in self.steps]
        rows = [head] + [[e.label, e.classification]
                         + ["-" if math.isnan(x) else f"{x:.0e}" for x in e.errors]
                         for e in self.entries]
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
        for row in rows:
            lines.append("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                                   for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def classify(steps: Sequence[float], errors: Sequence[float], excess: Sequence[float],
             informative: Sequence[bool], straddled: Sequence[bool], h: float,
             thresholds: tuple[float, float, float]) -> tuple[str, float, float]:
    """Classify one entry from its errors per step (largest step first).

    Args:
        steps: the steps.
        errors: plain relative errors per step (NaN: unusable).
        excess: relative errors beyond the round-off allowance per step (NaN: unusable).
        informative: per step, whether the round-off allowance is below half the values
            compared (else that step says nothing about a bug).
        straddled: per step, whether the signature changed between θ+h and θ-h.
        h: the check's step.
        thresholds: (wrong, suspicious, acceptable).

    Returns:
        (classification, best step, smallest plain error).
    """
    usable = [i for i, e in enumerate(excess) if not math.isnan(e)]
    if not usable:
        return "round-off", math.nan, math.nan
    best_plain = min(usable, key=lambda i: errors[i])
    at_h = min(range(len(steps)), key=lambda i: abs(math.log(steps[i] / h)))
    if straddled[at_h]:
        return "kink", steps[best_plain], errors[best_plain]
    useful = [i for i in usable if informative[i]]
    if useful:
        best = min(useful, key=lambda i: (excess[i], errors[i]))
        lowest = excess[best]
        plateau = sum(1 for i in useful if excess[i] <= 10 * lowest)
        if lowest > thresholds[1] or (lowest > thresholds[2] and plateau >= 4):
            return "bug", steps[best], errors[best]
    for i, j in zip(usable, usable[1:]):
        if j == i + 1 and errors[i] > thresholds[1] and errors[j] < 1e-3 * errors[i]:
            return "kink", steps[best_plain], errors[best_plain]  # an abrupt drop, not h²
    kind = "truncation" if h > steps[best_plain] * math.sqrt(10) else "round-off"
    return kind, steps[best_plain], errors[best_plain]


def sweep(loss_fn: LossFn, params: Mapping[str, Any], grads: Mapping[str, Any], *,
          names: Sequence[str] | None = None, entries: int = 3, seed: int = 0,
          indices: Mapping[str, Sequence[tuple[int, ...]]] | None = None,
          steps: Sequence[float] | None = None, **options: Any) -> SweepResult:
    """Error vs step for the worst entries of each tensor.

    Per tensor, the candidates (``indices[name]`` if given, plus the ``coordinates`` option's
    seeded sample with the largest-gradient entry) are measured at the check's step and the
    ``entries`` worst are swept over ``steps``.

    Args:
        loss_fn, params, grads: as for :func:`~trainwatch.gradcheck.check_gradients`.
        names: tensors to sweep (default: all, in layer order).
        entries: entries swept per tensor (default 3).
        seed: seeds the candidate sample.
        indices: extra candidate indices per tensor (e.g. the check's worst entries).
        steps: steps to sweep (default 1e-1 .. 1e-10, one per decade).
        **options: check options (thresholds, noise_factor, coordinates, precision, ...).

    Returns:
        A :class:`SweepResult`; ``.figure()`` draws it.
    """
    opts = Options.from_kwargs(options)
    _validate_inputs(loss_fn, params, grads)
    if isinstance(entries, bool) or not isinstance(entries, (int, np.integer)) or entries < 1:
        raise ValueError(f"entries: must be an integer >= 1, got {entries!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    names = list(params) if names is None else list(names)
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(f"names: not in params: {unknown}")
    steps = list(DEFAULT_STEPS if steps is None else steps)
    if not steps or not all(isinstance(s, (int, float)) and s > 0 for s in steps):
        raise ValueError(f"steps: must be positive numbers, got {steps!r}")

    work, dtypes = _copies(params)
    streams = np.random.SeedSequence([int(seed), 7]).spawn(len(names) + 1)
    g64 = {name: np.array(grads[name], dtype=np.float64, order="C") for name in params}
    session = Session(loss_fn, work, g64, dtypes, opts, np.random.default_rng(streams[0]))
    session.start()
    result = SweepResult(steps=steps, h=session.h, precision=session.precision,
                         notes=list(session.notes))
    if session.nondeterministic or not session.finite:
        result.evaluations = session.evaluations
        return result

    for name, stream in zip(names, streams[1:]):
        rng = np.random.default_rng(stream)
        grad = session.grads[name]
        shape = work[name].shape
        candidates = [int(np.ravel_multi_index(tuple(ix), shape)) if shape else 0
                      for ix in (indices or {}).get(name, [])]
        count = min(opts.coordinates, grad.size)
        candidates += [int(i) for i in rng.choice(grad.size, size=count, replace=False)]
        if grad.size:
            candidates.append(int(np.argmax(np.abs(grad))))
        candidates = list(dict.fromkeys(candidates))
        measured = [session.measure_coordinate(name, i, session.h) for i in candidates]
        ranked = sorted(zip(measured, candidates), key=lambda pc: (pc[0].rel, pc[0].rel_raw),
                        reverse=True)
        for _, flat_index in ranked[:entries]:
            result.entries.append(_sweep_entry(session, name, flat_index, steps))
    result.evaluations = session.evaluations
    return result


def _sweep_entry(session: Session, name: str, flat_index: int,
                 steps: Sequence[float]) -> SweepEntry:
    numerical, errors, excess, informative, straddled = [], [], [], [], []
    analytic = float(session.grads[name][flat_index])
    index: tuple[int, ...] = ()
    for step in steps:
        probe = session.measure_coordinate(name, flat_index, step)
        index = probe.index
        usable = probe.finite and not probe.straddled
        numerical.append(probe.numerical if probe.finite else math.nan)
        errors.append(probe.rel_raw if probe.finite else math.nan)
        excess.append(probe.rel if usable else math.nan)
        informative.append(probe.allowance < 0.5 * max(abs(probe.analytic),
                                                       abs(probe.numerical)))
        straddled.append(probe.straddled)
    kind, best_h, best_error = classify(steps, errors, excess, informative, straddled,
                                        session.h, session.thresholds)
    return SweepEntry(name, index, analytic, numerical, errors, kind, best_h, best_error)
