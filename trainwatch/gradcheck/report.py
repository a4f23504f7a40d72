"""What a gradient check returns: one :class:`TensorCheck` per parameter tensor, gathered in a
:class:`GradCheckReport` (printable table, JSON-ready dict).

Verdicts, from best to worst (KNOWLEDGE §1 ladder on the elementwise relative error):

- ``"correct"``     below the "acceptable" threshold (1e-7 in float64),
- ``"acceptable"``  1e-7 .. 1e-4: fine for objectives with kinks, high for a smooth one,
- ``"kink"``        the only disagreements were probes that crossed a kink (set aside),
- ``"suspicious"``  1e-4 .. 1e-2: may be wrong (fails the check),
- ``"wrong"``       above 1e-2: the analytic gradient is probably wrong (fails the check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwatch.gradcheck.sweep import SweepResult

VERDICTS: tuple[str, ...] = ("correct", "acceptable", "kink", "suspicious", "wrong")
PASSING: frozenset[str] = frozenset({"correct", "acceptable", "kink"})
SEVERITY: dict[str, int] = {verdict: rank for rank, verdict in enumerate(VERDICTS)}


def json_number(value: float) -> float | None:
    """A float for JSON: NaN and infinities become None (strict JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float, spec: str = ".3e") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        format(value, spec))


@dataclass
class TensorCheck:
    """The check of one parameter tensor.

    Attributes:
        name: the tensor's key in ``params``.
        verdict: one of :data:`VERDICTS`.
        max_rel_error: relative error ``|a-n| / max(|a|, |n|)`` of the worst probe not set
            aside, after subtracting the round-off noise allowance from ``|a-n|`` (NaN if every
            probe was set aside). The worst probe is the one with the worst verdict level;
            within that level a coordinate is preferred to a direction (an entry located by
            bisection says more than the diluted direction that led to it), then the largest
            error.
        norm_rel_error: normwise ``‖a-n‖ / (‖a‖+‖n‖)`` over the same probes (same allowance).
        worst_index: index of the worst probe's entry in the tensor; ``()`` when the worst
            probe was a random direction (then ``worst_kind == "direction"``).
        worst_analytic: analytic value of the worst probe (an entry of the gradient, or the
            directional derivative ``g·d`` for a direction).
        worst_numerical: centered-difference value of the same probe.
        probed: number of probes judged: coordinates + directions (+ entries located by
            bisection after a failing direction).
        kinks: probes set aside because they crossed a kink (or hit a non-finite loss).
        notes: plain-language remarks (retries, kinks, noise floor, bug pattern).
        shape: the tensor's shape.
        coordinates: the coordinate indices probed (sampled, then located by bisection).
        directions: number of random-direction probes.
        worst_kind: ``"coordinate"`` or ``"direction"``.
        worst_h: the step at which the worst probe was judged.
        noise_floor: absolute round-off allowance on a derivative at the default step.
    """

    name: str
    verdict: str
    max_rel_error: float
    norm_rel_error: float
    worst_index: tuple[int, ...]
    worst_analytic: float
    worst_numerical: float
    probed: int
    kinks: int
    notes: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    coordinates: list[tuple[int, ...]] = field(default_factory=list)
    directions: int = 0
    worst_kind: str = "coordinate"
    worst_h: float = math.nan
    noise_floor: float = 0.0

    @property
    def passed(self) -> bool:
        """True unless the verdict is "suspicious" or "wrong"."""
        return self.verdict in PASSING

    def worst_label(self) -> str:
        """The worst probe as text: an index like ``(3, 17)`` or ``direction``."""
        if self.worst_kind == "direction":
            return "direction"
        return str(tuple(int(i) for i in self.worst_index))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (NaN -> None)."""
        return {
            "name": self.name,
            "verdict": self.verdict,
            "passed": self.passed,
            "max_rel_error": json_number(self.max_rel_error),
            "norm_rel_error": json_number(self.norm_rel_error),
            "worst_index": [int(i) for i in self.worst_index],
            "worst_kind": self.worst_kind,
            "worst_analytic": json_number(self.worst_analytic),
            "worst_numerical": json_number(self.worst_numerical),
            "worst_h": json_number(self.worst_h),
            "probed": int(self.probed),
            "kinks": int(self.kinks),
            "directions": int(self.directions),
            "coordinates": [[int(i) for i in index] for index in self.coordinates],
            "shape": [int(s) for s in self.shape],
            "noise_floor": json_number(self.noise_floor),
            "notes": list(self.notes),
        }


_COLUMNS = ("tensor", "verdict", "max rel err", "worst index", "analytic", "numerical",
            "probed", "kinks")


def format_table(checks: dict[str, TensorCheck]) -> list[str]:
    """Aligned text table, one row per tensor in the dict's (layer) order."""
    rows = [_COLUMNS]
    for check in checks.values():
        rows.append((check.name, check.verdict, _fmt(check.max_rel_error, ".2e"),
                     check.worst_label(), _fmt(check.worst_analytic, ".6g"),
                     _fmt(check.worst_numerical, ".6g"), str(check.probed), str(check.kinks)))
    widths = [max(len(row[col]) for row in rows) for col in range(len(_COLUMNS))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(w) if col < 2 else cell.rjust(w)
                 for col, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


@dataclass
class GradCheckReport:
    """Result of :func:`trainwatch.gradcheck.check_gradients`.

    Attributes:
        passed: True when no tensor (data or regularisation section) is "suspicious" or
            "wrong" and the loss was deterministic and finite.
        nondeterministic: the loss gave different values at the same point; nothing was
            checked and no tensor is blamed (``params`` is empty).
        precision: ``"float64"``, ``"float32"`` or ``"float16"``: the precision the loss is
            computed in (detected), which sets the step and thresholds used.
        h: the step used (absolute, in parameter units).
        params: data-loss checks by tensor name, in the order of ``params`` (layer order).
        regularization: regularisation-term checks by name, or None when no ``reg_fn``.
        failed: names of failing tensors, in layer order; regularisation failures read
            ``"<name> (regularization)"``.
        notes: report-level remarks (precision, noise, nondeterminism, where to look first).
        sweep: a :class:`~trainwatch.gradcheck.sweep.SweepResult` when asked for, else None.
        loss: the loss at the checked point.
        noise: estimated round-off noise of one loss evaluation (absolute).
        thresholds: (wrong, suspicious, acceptable) relative-error boundaries used.
        evaluations: number of loss evaluations spent.
        seconds: wall-clock time of the check.
    """

    passed: bool
    nondeterministic: bool
    precision: str
    h: float
    params: dict[str, TensorCheck]
    regularization: dict[str, TensorCheck] | None = None
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sweep: SweepResult | None = None
    loss: float = math.nan
    noise: float = math.nan
    thresholds: tuple[float, float, float] = (1e-2, 1e-4, 1e-7)
    evaluations: int = 0
    seconds: float = 0.0

    def worst(self) -> TensorCheck | None:
        """The tensor with the most severe verdict (ties: largest max_rel_error), looking at
        the data and the regularisation sections; None if nothing was checked."""
        checks = list(self.params.values()) + list((self.regularization or {}).values())
        if not checks:
            return None

        def key(check: TensorCheck) -> tuple[int, float]:
            error = check.max_rel_error
            return SEVERITY[check.verdict], (-1.0 if math.isnan(error) else error)

        return max(checks, key=key)

    def __str__(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        head = (f"gradient check {status}: precision {self.precision}, h={self.h:g}, "
                f"loss {self.loss:.6g}, {self.evaluations} loss evaluations, "
                f"{self.seconds:.3g} s")
        lines = [head]
        if self.params:
            lines += format_table(self.params)
            lines.append(f"(max rel err: |a-n| beyond the round-off allowance, over "
                         f"max(|a|,|n|); correct < {self.thresholds[2]:g} <= acceptable "
                         f"<= {self.thresholds[1]:g} < suspicious <= {self.thresholds[0]:g} "
                         "< wrong)")
        if self.regularization is not None:
            lines += ["", "regularization term:"] + format_table(self.regularization)
        if self.failed:
            lines += ["", "failed: " + ", ".join(self.failed)]
        tensor_notes = [(check.name, note)
                        for section in (self.params, self.regularization or {})
                        for check in section.values() for note in check.notes]
        if self.notes or tensor_notes:
            lines += ["", "notes:"]
            lines += [f"- {note}" for note in self.notes]
            lines += [f"- {name}: {note}" for name, note in tensor_notes]
        if self.sweep is not None:
            lines += ["", str(self.sweep)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that ``json.dumps`` accepts (strict JSON: NaN -> None)."""
        return {
            "passed": bool(self.passed),
            "nondeterministic": bool(self.nondeterministic),
            "precision": self.precision,
            "h": json_number(self.h),
            "loss": json_number(self.loss),
            "noise": json_number(self.noise),
            "thresholds": [json_number(t) for t in self.thresholds],
            "params": {name: check.to_dict() for name, check in self.params.items()},
            "regularization": (None if self.regularization is None else
                               {name: c.to_dict() for name, c in self.regularization.items()}),
            "failed": list(self.failed),
            "notes": list(self.notes),
            "sweep": None if self.sweep is None else self.sweep.to_dict(),
            "evaluations": int(self.evaluations),
            "seconds": json_number(self.seconds),
        }
