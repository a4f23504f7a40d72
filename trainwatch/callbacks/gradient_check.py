"""GradientCheck: periodic finite-difference checks of the backward pass during training."""

from __future__ import annotations

import math
from typing import Any

from trainwatch.core.callback import Callback
from trainwatch.core.state import RunState

#: verdict -> alert severity
SEVERITY = {"wrong": "critical", "suspicious": "warning"}


class GradientCheck(Callback):
    """Compares analytic gradients with centered finite differences, now and then.

    After a warm-up, on the current batch's first ``examples`` examples, every ``every``
    steps: each parameter tensor is probed in float64 (see
    :func:`trainwatch.gradcheck.check_gradients`), dropout fixed by a seed, kinks set
    aside. The model, optimizer and random state are left exactly as they were: the check
    runs on a copy (numpy) or on float64 copies of the parameters (torch).

    Writes ``gradcheck/max_rel_error/<tensor>`` scalars, ``gradcheck/passed`` (1 or 0) and the
    report as text (``gradcheck/report``); alerts ``gradcheck.wrong`` (critical) or
    ``gradcheck.suspicious`` (warning) per tensor, and ``gradcheck.nondeterministic``.

    Args:
        every: steps between checks (default 500).
        warmup_steps: no check before this step (default 100; KNOWLEDGE §1: never at
            iteration 0).
        warmup_loss_drop: also wait until the loss has fallen by this fraction of the first
            batch's loss (e.g. 0.1), or None (default) for steps only.
        examples: examples of the batch used (default 3: fewer examples, fewer kinks).
        seed: base seed for dropout and probe sampling (each check adds its step).
        stop_on_failure: stop training when a tensor is wrong (default False).
        **options: passed to the engine (``h``, ``coordinates``, thresholds, ...).
    """

    def __init__(self, every: int = 500, *, warmup_steps: int = 100,
                 warmup_loss_drop: float | None = None, examples: int = 3, seed: int = 0,
                 stop_on_failure: bool = False, **options: Any):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every: must be an integer >= 1, got {every!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be an integer >= 0, got {warmup_steps!r}")
        if warmup_loss_drop is not None and not 0.0 < warmup_loss_drop < 1.0:
            raise ValueError(f"warmup_loss_drop: must be in (0, 1), got {warmup_loss_drop!r}")
        if not isinstance(examples, int) or examples < 1:
            raise ValueError(f"examples: must be an integer >= 1, got {examples!r}")
        self.every = every
        self.warmup_steps = warmup_steps
        self.warmup_loss_drop = warmup_loss_drop
        self.examples = examples
        self.seed = seed
        self.stop_on_failure = stop_on_failure
        self.options = options
        self.reports: list[tuple[int, Any]] = []  # (step, report) of every check
        self._first_loss: float | None = None
        self._warm = False
        self._next_check: int | None = None

    def on_loss_computed(self, state: RunState) -> None:
        if self._first_loss is None and self.warmup_loss_drop is not None:
            self._first_loss = float(state.loss)

    def _due(self, state: RunState) -> bool:
        if self._warm:
            return state.step >= self._next_check
        if state.step < self.warmup_steps:
            return False
        if self.warmup_loss_drop is not None:
            if state.step % 10:  # read the loss (a device sync on a GPU) only now and then
                return False
            loss = float(state.loss)
            if not (math.isfinite(loss) and self._first_loss is not None
                    and loss <= self._first_loss * (1.0 - self.warmup_loss_drop)):
                return False
        self._warm = True
        return True

    def on_backward_end(self, state: RunState) -> None:
        if state.inputs is None or not self._due(state):
            return
        self._next_check = state.step + self.every
        report = state.backend.check_gradients(
            state.inputs[: self.examples], state.targets[: self.examples],
            seed=self.seed + state.step, **self.options)
        self.reports.append((state.step, report))
        self._write(state, report)
        self._alert(state, report)

    def _write(self, state: RunState, report: Any) -> None:
        values = {"gradcheck/passed": float(report.passed)}
        for name, check in report.params.items():
            values[f"gradcheck/max_rel_error/{name}"] = float(check.max_rel_error)
        state.writer.scalars(values, state.step)
        state.writer.text("gradcheck/report", f"```\n{report}\n```", state.step)

    def _alert(self, state: RunState, report: Any) -> None:
        alerts = state.alerts
        alerts.update(
            "gradcheck.nondeterministic", report.nondeterministic, step=state.step,
            severity="warning",
            message="the loss differs between two evaluations at the same parameters, "
                    "so gradients cannot be checked",
            suggestion="make dropout and data augmentation draw from a seeded generator",
        )
        for name, check in report.params.items():
            for verdict, severity in SEVERITY.items():
                alerts.update(
                    f"gradcheck.{verdict}", check.verdict == verdict, step=state.step,
                    severity=severity, tensor=name, value=check.max_rel_error,
                    message=(f"analytic gradient of {name} disagrees with finite differences: "
                             f"max relative error {check.max_rel_error:.2e} at index "
                             f"{check.worst_index} (analytic {check.worst_analytic:.6g}, "
                             f"numerical {check.worst_numerical:.6g})"),
                    suggestion=f"check the backward pass that produces {name}'s gradient",
                )
        if self.stop_on_failure and not report.passed and not report.nondeterministic:
            state.request_stop(f"gradient check failed for {', '.join(report.failed)}")
