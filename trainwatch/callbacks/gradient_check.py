"""GradientCheck: periodic finite-difference checks of the backward pass during training.

KNOWLEDGE §1 as a callback: never at iteration 0 (a warm-up by steps, optionally also until the
loss has fallen), then now and then (``every`` steps, never every iteration), on a few
examples of the current batch (2–3: fewer examples, fewer kinks), in float64, with dropout
fixed by a seed so its backward is checked too, every parameter tensor probed (sampled
entries plus random directions that cover every entry), and the result pinned to the tensors
that are wrong. The model, the optimizer and every random state are left exactly as they
were: the backend checks a float64 copy (numpy) or float64 copies of the parameters (torch),
so an interrupt (KeyboardInterrupt) in the middle of a check leaves nothing to restore.

Cost. A periodic check probes ``directions=1`` random direction per tensor and no sampled
entry (``coordinates=0``; the largest-gradient entry only where the direction crossed a
kink), where a one-off :func:`trainwatch.gradcheck.check_gradients` uses 10 entries and 3
directions, and measures the loss's round-off noise only once a probe fails
(``noise_probe="on_failure"``: a probe that passes with float64's round-off allowance passes
with any larger one), so a passing check of the digits CNN takes 14 loss evaluations. Every
tensor and every entry stays covered: the direction has every component at least ``0.1/√n``,
so one wrong entry shifts its derivative beyond the "correct" threshold, and bisection then
locates the entry; the planted bugs of the engine's zoo are all caught with these probes (20
seeds). With ``every=1000`` and ``warmup_steps=50`` the demo (20 epochs of the digits CNN,
460 steps) runs one check, at step 50 (``benchmarks/gradcheck_overhead.py`` times it; a
first check is never held back by the budget, so every run that gets past the warm-up shows
one). Later checks keep checking within 1 % of the run's time: on a model whose steps take a
millisecond, about one every 1500 steps rather than 1000; on a bigger one the budget does
not bind. A first check that would outlast ``time_limit`` (1 s) stops, after its analytic
pass or three loss evaluations that show it, and waits for the budget instead of stalling a
big model's run.
Between checks the callback sleeps (:meth:`next_step`): the steps in between never call it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from trainwatch.core.backend import batch_length
from trainwatch.core.budget import TimeBudget
from trainwatch.core.callback import NEVER, Callback, next_multiple
from trainwatch.core.checks import count, flag
from trainwatch.core.state import RunState
from trainwatch.gradcheck.engine import CheckTimeout, LossFunctionError

#: verdict -> alert severity ("correct", "acceptable" and "kink" raise nothing)
SEVERITY = {"wrong": "critical", "suspicious": "warning"}

#: probes of a periodic check, where the engine's one-off defaults are 10 and 3 (see the
#: module docstring); options given to :class:`GradientCheck` override them
PERIODIC_PROBES: dict[str, Any] = {"coordinates": 0, "directions": 1,
                                   "noise_probe": "on_failure"}

#: while warming up until the loss has fallen, the loss is read every this many steps only
#: (on a GPU reading it is a device sync)
LOSS_READ_EVERY = 10


class GradientCheck(Callback):
    """Compares analytic gradients with centered finite differences, now and then.

    After a warm-up, every ``every`` steps, on the first ``examples`` examples of the current
    batch (after the backward pass, before the optimizer step): each parameter tensor is
    probed in float64 (see :func:`trainwatch.gradcheck.check_gradients`), dropout fixed by a
    seed, kinks set aside; a model with L2 regularisation gets its data loss and its
    regularisation term checked separately. Training is never changed: the check runs on
    copies, draws from no shared random state, and leaves parameters, gradients, optimizer
    and random states bit-identical.

    Writes, at each check's step: ``gradcheck/max_rel_error/<tensor>`` (finite values only;
    a tensor whose probes all crossed kinks has none), ``gradcheck/passed`` (1 or 0),
    ``gradcheck/seconds`` (the check's wall time), the report as text
    (``gradcheck/report``), and, at the first failing check of an episode, the step-size
    sweep of the worst entries as a figure (``gradcheck/sweep``: relative error against h;
    a flat line is a real bug).

    Alerts (once per episode: a tensor that stays wrong over many checks alerts once):
    ``gradcheck.wrong`` (critical) and ``gradcheck.suspicious`` (warning) per tensor, naming
    the failing tensors and the one closest to the loss, where the bug most likely is (a wrong
    backward step corrupts the gradients of every tensor below it, never those above);
    regularisation failures name ``"<tensor> (regularization)"``;
    ``gradcheck.nondeterministic`` (warning) when the loss is random at fixed parameters
    (nothing is then blamed on a tensor).

    Args:
        every: steps between checks (default 1000).
        warmup_steps: no check before this global step (default 50; KNOWLEDGE §1: never at
            iteration 0, let the network train a little first).
        warmup_loss_drop: also wait until the batch loss has fallen by this fraction of the
            first batch's loss (e.g. 0.1; the loss is then read every 10th step), or None
            (default) for the step count only. The first check is at the first step that
            satisfies both.
        examples: examples of the batch used (default 3: fewer examples, fewer kinks).
        seed: base seed for dropout masks and probe sampling; each check uses
            ``seed + step`` (integer >= 0, default 0).
        stop_on_failure: stop training after the batch when a check fails (default False).
        sweep_on_failure: at the first failing check of an episode, run the check again
            with the step-size sweep on the failing tensors and write its figure (default
            True; costs nothing while checks pass).
        budget: the most checking may take, as a fraction of the run's wall time so far
            (default 0.01; a :class:`~trainwatch.core.budget.TimeBudget`). A check that is
            due but would go over (judged by the duration of the previous one) moves to the
            first step at which it fits, if steps keep their average length. On a big
            model, where one check takes seconds, this spaces checks out more than
            ``every``. None: no budget.
        time_limit: seconds the first check may take regardless of the budget (default 1.0;
            with ``budget`` only). A first check that would take longer stops (info alert
            ``gradcheck.deferred``, once): on a torch model as soon as its analytic pass
            shows it (an evaluation is a forward pass, a third of it), else as soon as its
            first three loss evaluations do, at the limit otherwise. It runs again, in full,
            once the budget allows its estimated length: a small model is checked right
            after the warm-up, a model whose check takes minutes (a ResNet in float64) not
            before the run is long enough to afford it, and its first attempt costs an
            analytic pass (or three evaluations), not ``time_limit``.
        **options: passed to the engine: ``coordinates`` (default 0 here), ``directions``
            (default 1 here), ``h``, ``thresholds``, ``depth_allowance``, ... (see
            :data:`trainwatch.gradcheck.DEFAULTS`). Unknown names raise TypeError, bad values
            ValueError, here rather than at the first check.

    Attributes:
        reports: ``(step, report)`` of every check of the current run, in order.
        seconds: wall-clock seconds spent checking in the current run.
        budget: the :class:`~trainwatch.core.budget.TimeBudget` (``budget.fraction``).
        deferred: how many times a due check was moved later by ``budget`` (or stopped by
            ``time_limit``).
    """

    def __init__(self, every: int = 1000, *, warmup_steps: int = 50,
                 warmup_loss_drop: float | None = None, examples: int = 3, seed: int = 0,
                 stop_on_failure: bool = False, sweep_on_failure: bool = True,
                 budget: float | None = 0.01, time_limit: float | None = 1.0,
                 **options: Any):
        self.every = count("every", every, 1)
        self.warmup_steps = count("warmup_steps", warmup_steps, 0)
        if warmup_loss_drop is not None:
            ok = (isinstance(warmup_loss_drop, (int, float))
                  and not isinstance(warmup_loss_drop, bool) and 0.0 < warmup_loss_drop < 1.0)
            if not ok:
                raise ValueError(f"warmup_loss_drop: must be a fraction in (0, 1) or None, "
                                 f"got {warmup_loss_drop!r}")
            warmup_loss_drop = float(warmup_loss_drop)
        self.warmup_loss_drop = warmup_loss_drop
        self.examples = count("examples", examples, 1)
        self.seed = count("seed", seed, 0)
        self.stop_on_failure = flag("stop_on_failure", stop_on_failure)
        self.sweep_on_failure = flag("sweep_on_failure", sweep_on_failure)
        self.budget = TimeBudget(budget, name="budget")
        if time_limit is not None and not (isinstance(time_limit, (int, float))
                                           and not isinstance(time_limit, bool)
                                           and math.isfinite(time_limit) and time_limit > 0):
            raise ValueError(f"time_limit: must be a number of seconds > 0 or None, "
                             f"got {time_limit!r}")
        self.time_limit = None if time_limit is None else float(time_limit)
        from trainwatch.gradcheck.engine import Options

        self.options: dict[str, Any] = {**PERIODIC_PROBES, **options}
        Options.from_kwargs(self.options)  # validate now, not at step `warmup_steps`
        self.reports: list[tuple[int, Any]] = []
        self._reset()

    def _reset(self, step: int = 0) -> None:
        self.reports = []
        self._first_loss: float | None = None
        self._warm = False
        self._next_check = self.warmup_steps
        self._failing = False  # inside a failure episode (no sweep until it passes again)
        self._seconds = 0.0  # the last check's duration, or the estimate of a stopped one
        self._estimated = False  # _seconds is an estimate: the next check runs unlimited
        self.budget.start(step)
        self.deferred = 0  # due checks held back by the budget

    @property
    def seconds(self) -> float:
        """Wall-clock seconds spent checking in the current run."""
        return self.budget.seconds

    @property
    def last_report(self) -> Any:
        """The report of the most recent check, or None before the first."""
        return self.reports[-1][1] if self.reports else None

    # -- hooks ----------------------------------------------------------------------------------

    def on_train_begin(self, state: RunState) -> None:
        self._reset(state.step)
        state.writer.layout({"gradcheck": {
            "max relative error per tensor (correct < 1e-7, wrong > 1e-2)": (
                "Multiline", [r"^gradcheck/max_rel_error/"]),
            "passed (1) / failed (0)": ("Multiline", [r"^gradcheck/passed$"]),
        }})

    def next_step(self, step: int) -> int:
        if self._first_loss is None and self.warmup_loss_drop is not None:
            return step  # until the first loss is seen
        return max(step, self._next_check)

    def on_loss_computed(self, state: RunState) -> None:
        if self._first_loss is None and self.warmup_loss_drop is not None and (
                state.loss is not None):
            self._first_loss = float(state.loss)

    def on_backward_end(self, state: RunState) -> None:
        if state.step < self._next_check:  # (awake for the first loss only)
            return
        if not self._warm and not self._loss_has_fallen(state):
            self._next_check = next_multiple(state.step + 1, LOSS_READ_EVERY)
            return
        if state.inputs is None or state.targets is None:
            self._next_check = state.step + 1
            missing = " and ".join(what for what, value in (("inputs", state.inputs),
                                                            ("targets", state.targets))
                                   if value is None)
            state.alerts.fire(
                "gradcheck.skipped", "info",
                f"GradientCheck needs the batch, but the loop did not give its {missing}",
                state.step,
                suggestion="with trainwatch.torch.watch, report the targets, "
                           "watcher.loss(loss, targets), before optimizer.step(), and run the "
                           "training forward in train mode; in a loop of your own, "
                           "Monitor.batch_begin(inputs, targets)")
            return
        if self._over_budget():
            self._next_check = self.budget.earliest_step(state.step + 1, self._seconds)
            self.deferred += 1
            return
        self._warm = True
        self._next_check = state.step + self.every
        try:
            report = self._check(state)
        except CheckTimeout as stop:
            self._next_check = self.budget.earliest_step(state.step + 1, self._seconds)
            self.deferred += 1
            state.alerts.fire(
                "gradcheck.deferred", "info",
                f"the first gradient check stopped after {stop.seconds:.2g} s (time_limit "
                f"{self.time_limit:g} s); the whole check would take about "
                f"{self._seconds:.2g} s, so it waits until that fits within "
                f"{self.budget.fraction:.0%} of the run's time", state.step,
                suggestion="pass GradientCheck(time_limit=None) to check right after the "
                           "warm-up whatever it costs, or a larger budget")
            return
        except LossFunctionError as exc:
            self._next_check = NEVER
            state.alerts.fire(
                "gradcheck.loss_fn_failed", "warning",
                f"the gradient check cannot evaluate the loss: {exc}; it checks "
                f"loss_fn(model(inputs), targets) on the batch's first examples, and stops "
                f"for this run", state.step,
                suggestion="give watch() the loss as the loop computes it from the model's "
                           "outputs and the targets it reports, e.g. loss_fn=lambda out, y: "
                           "criterion(out.transpose(1, 2), y) for (N, T, C) sequence outputs")
            return
        self.reports.append((state.step, report))
        self._write(state, report)
        self._alert(state, report)
        if self.stop_on_failure and not report.passed and not report.nondeterministic:
            state.request_stop(f"gradient check failed at step {state.step} for "
                               f"{', '.join(report.failed)}")

    # -- the check ------------------------------------------------------------------------------

    def _over_budget(self) -> bool:
        """Would one more check (as long as the last, or as estimated) take checking past
        ``budget`` of the run's wall time? Never true before the first check started."""
        if not (self.reports or self._estimated):
            return False
        return not self.budget.allows(self._seconds)

    def _loss_has_fallen(self, state: RunState) -> bool:
        if self.warmup_loss_drop is None or state.loss is None:
            return True  # no loss to watch (a loop that does not report it): steps only
        loss = float(state.loss)
        return (self._first_loss is not None and math.isfinite(loss)
                and loss <= self._first_loss * (1.0 - self.warmup_loss_drop))

    def _check(self, state: RunState) -> Any:
        size = batch_length(state.targets)  # (where the inputs hold their examples)
        targets = state.backend.first_examples(state.targets, self.examples)
        seed = self.seed + state.step
        limited = (self.budget.fraction is not None and self.time_limit is not None
                   and not self.reports and not self._estimated)
        limit = {"max_seconds": self.time_limit} if limited else {}
        started = time.perf_counter()
        cuts = state.backend.example_cuts(state.inputs, self.examples, size)
        try:
            inputs, report = self._first_cut_that_runs(state, cuts, targets, seed, limit)
        except CheckTimeout as stop:
            spent = time.perf_counter() - started
            self.budget.add(spent)
            # the backend's own work (copies, the analytic pass) plus the engine's estimate
            self._seconds = spent - stop.seconds + stop.estimated_seconds
            self._estimated = True
            raise
        failed = not report.passed and not report.nondeterministic
        if failed and self.sweep_on_failure and not self._failing:
            # same seed, same point: the same report, with the sweep of the failing tensors
            report = state.backend.check_gradients(inputs, targets, seed=seed, sweep=True,
                                                   **self.options)
        self._failing = failed
        self._seconds = time.perf_counter() - started
        self._estimated = False
        self.budget.add(self._seconds)
        return report

    def _first_cut_that_runs(self, state: RunState, cuts: Iterator[Any], targets: Any,
                             seed: int, limit: dict[str, float]) -> tuple[Any, Any]:
        """(inputs, report) of the first cut of the inputs the model runs on: the usual one,
        then, where the inputs' shapes leave it open (sequence-first inputs as long as the
        batch), the other readings; the usual cut's error if none runs."""
        first_error: Exception | None = None
        for inputs in cuts:
            try:
                return inputs, state.backend.check_gradients(inputs, targets, seed=seed,
                                                             **self.options, **limit)
            except CheckTimeout:
                raise
            except Exception as exc:  # noqa: BLE001 - another reading may run
                first_error = first_error or exc
        raise first_error

    def _write(self, state: RunState, report: Any) -> None:
        values = {"gradcheck/passed": float(report.passed), "gradcheck/seconds": self._seconds}
        for name, check in report.params.items():
            if math.isfinite(check.max_rel_error):
                values[f"gradcheck/max_rel_error/{name}"] = float(check.max_rel_error)
        state.writer.scalars(values, state.step)
        state.writer.text("gradcheck/report", f"```\n{report}\n```", state.step)
        if report.sweep is not None and report.sweep.entries:
            try:
                figure = report.sweep.figure()
            except ImportError:  # matplotlib missing: the table is in the text report
                return
            state.writer.figure("gradcheck/sweep", figure, state.step)

    def _alert(self, state: RunState, report: Any) -> None:
        alerts, step = state.alerts, state.step
        alerts.update(
            "gradcheck.nondeterministic", report.nondeterministic, step=step,
            severity="warning",
            message="the loss differs between two evaluations at the same parameters, so "
                    "gradients cannot be checked (no tensor is blamed)",
            suggestion="draw dropout masks and data augmentation from the model's seeded "
                       "generator, not from a fresh or global one",
        )
        if report.nondeterministic:
            return
        failing = [name for name, check in report.params.items() if not check.passed]
        closest = failing[-1] if failing else None
        sections = [(report.params, "")]
        if report.regularization:
            sections.append((report.regularization, " (regularization)"))
        for checks, suffix in sections:
            for name, check in checks.items():
                tensor = name + suffix
                wrong = check.verdict == "wrong"
                suspicious = (check.verdict == "suspicious"
                              and not alerts.is_firing("gradcheck.wrong", tensor))
                for code, active in (("gradcheck.wrong", wrong),
                                     ("gradcheck.suspicious", suspicious)):
                    if active:
                        message = _message(tensor, check, [tensor] if suffix else failing)
                    else:  # read only if this evaluation closes an episode
                        message = (f"{tensor} agrees with finite differences again "
                                   f"({check.verdict}, max relative error "
                                   f"{check.max_rel_error:.2e})")
                    alerts.update(
                        code, active, step=step,
                        severity=SEVERITY[check.verdict] if active else "info",
                        tensor=tensor, value=check.max_rel_error, message=message,
                        suggestion=_suggestion(name, suffix, closest),
                    )


# -- messages -------------------------------------------------------------------------------------


def _message(tensor: str, check: Any, failing: list[str]) -> str:
    if check.worst_kind == "direction":
        where = "along a random direction (no single entry located)"
    else:
        where = f"at {check.worst_label()}"
    text = (f"analytic gradient of {tensor} disagrees with centered finite differences "
            f"({check.verdict}): max relative error {check.max_rel_error:.2e} {where}, "
            f"analytic {check.worst_analytic:.6g} vs numerical {check.worst_numerical:.6g} "
            f"(h={check.worst_h:g})")
    if len(failing) > 1:
        text += f"; failing: {', '.join(failing)}"
    return text


def _layer(tensor: str) -> str:
    """The layer that owns a parameter: ``"fc1.weight"`` -> ``"fc1"``."""
    return tensor.rpartition(".")[0] or tensor


def _suggestion(name: str, suffix: str, closest: str | None) -> str:
    if suffix:
        return f"check the gradient of the regularisation term for {name}"
    if closest is None or _layer(name) == _layer(closest):
        return (f"{name} belongs to the failing layer closest to the loss: check the backward "
                f"pass of {_layer(name)}, and of any layer without parameters (activation, "
                f"pooling) or the loss above it; the failing tensors below inherit its error")
    return (f"{name}'s gradient flows back through {_layer(closest)}, which fails too "
            f"({closest}): fix that backward pass first; {name} is probably right once it is")


# -- validation -----------------------------------------------------------------------------------


