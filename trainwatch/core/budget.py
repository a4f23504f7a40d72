"""What watching may cost: :class:`TimeBudget`, the share of a run's wall time that one
callback's work may take, and :class:`StepBatch`, small per-step work gathered and done
together.

A callback that does costly work now and then (a gradient check, a histogram round, an
update measurement) times that work with its budget and asks it when the next occurrence
fits::

    def next_step(self, step):
        return self.budget.next_due(step, self.every)

    def on_step_end(self, state):
        if self.budget.next_due(state.step, self.every) != state.step:
            return                  # (not a step it asked for: e.g. woken by another hook)
        with self.budget:           # times the work (nested blocks count once)
            self.budget.count()     # one occurrence
            ...

On a model whose steps are long the work fits at every scheduled step and nothing changes;
on a small model whose steps take a millisecond, occurrences are spaced out so watching stays
within the budget. The first occurrence is never held back (nothing is known about its cost
before it ran), so every callback shows up on the dashboard.

Small work a callback does every few steps (a loss point to write, the loss rules to run)
costs 3-5x more spread between training steps, where the caches are cold, than done in one
warm loop: :class:`StepBatch` gathers it for up to :data:`BATCH_STEPS` steps or
:data:`BATCH_SECONDS` seconds since it was last handled, whichever comes first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from trainwatch.core.callback import next_multiple


class TimeBudget:
    """Seconds spent on one callback's work, against ``fraction`` of the run's wall time.

    Args:
        fraction: the most the work may take, as a fraction in (0, 1] of the wall time since
            :meth:`start` (e.g. 0.005 = 0.5 %), or None for no limit.
        name: the argument's name in the error message for a bad ``fraction``.
        clock: seconds, monotonic (default ``time.perf_counter``).

    Attributes:
        seconds: time spent inside ``with budget:`` blocks since :meth:`start`.
        occurrences: how many occurrences of the work were counted (:meth:`count`; one
            occurrence may be timed in several blocks, over several hooks).
    """

    def __init__(self, fraction: float | None, *, name: str = "budget",
                 clock: Callable[[], float] = time.perf_counter):
        if fraction is not None and not (isinstance(fraction, (int, float))
                                         and not isinstance(fraction, bool)
                                         and 0 < fraction <= 1):
            raise ValueError(f"{name}: must be a fraction in (0, 1] or None, got {fraction!r}")
        self.fraction = None if fraction is None else float(fraction)
        self._clock = clock
        self.start()

    def start(self, step: int = 0) -> None:
        """Begin a run at global step ``step`` (call it in ``on_train_begin``)."""
        self.seconds = 0.0
        self.occurrences = 0
        self._started = self._clock()
        self._first_step = step
        self._entered = 0.0
        self._depth = 0

    @property
    def elapsed(self) -> float:
        """Wall-clock seconds since :meth:`start`."""
        return self._clock() - self._started

    @property
    def mean(self) -> float:
        """Mean seconds of one occurrence so far (0.0 before the first)."""
        return self.seconds / self.occurrences if self.occurrences else 0.0

    def __enter__(self) -> TimeBudget:
        if not self._depth:  # (nested blocks count once: the outermost one)
            self._entered = self._clock()
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if not self._depth:
            self.seconds += self._clock() - self._entered

    def count(self) -> None:
        """Count one occurrence (call it once per occurrence, timed with ``with``)."""
        self.occurrences += 1

    def forget(self) -> None:
        """Forget the work timed so far (a first, cold occurrence whose cost says little
        about the next ones): the next occurrence is due at once, and spaced by its own cost
        from then on."""
        self.seconds = 0.0
        self.occurrences = 0

    def add(self, seconds: float) -> None:
        """Count ``seconds`` of work timed elsewhere."""
        self.seconds += seconds

    def allows(self, cost: float) -> bool:
        """Would ``cost`` more seconds keep the work within the budget now?"""
        return self.fraction is None or self.seconds + cost <= self.fraction * self.elapsed

    def earliest_step(self, step: int, cost: float) -> int:
        """The first global step, ``step`` or later, at which ``cost`` more seconds of work
        fit, if the steps to come take as long as the steps so far did on average. ``step``
        itself when it fits now, when there is no limit, or when ``cost`` is 0 (nothing
        measured yet)."""
        if cost <= 0 or self.allows(cost):
            return step
        elapsed = self.elapsed
        per_step = elapsed / max(step - self._first_step, 1)
        if per_step <= 0:
            return step
        short = (self.seconds + cost) / self.fraction - elapsed  # wall time still to run
        return step + math.ceil(short / per_step)

    def next_due(self, step: int, every: int) -> int:
        """The first multiple of ``every``, ``step`` or later, at which one more occurrence
        as long as the mean one so far fits (see :meth:`earliest_step`)."""
        return next_multiple(self.earliest_step(step, self.mean), every)


#: the most steps, and the longest wall time (seconds), a :class:`StepBatch` gathers
BATCH_STEPS = 100
BATCH_SECONDS = 1.0


class StepBatch:
    """Items of several steps, gathered to be handled together: :meth:`add` says they are
    due once the first is ``BATCH_STEPS`` steps old, or ``BATCH_SECONDS`` seconds have passed
    since the last :meth:`take` (then take them all). On slow steps every item is due as it
    comes; on fast ones they reach the dashboard and the alerts about a second late."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._first_step = 0
        self._taken_at = time.perf_counter()

    def add(self, step: int, item: Any) -> bool:
        """Add the item of ``step``; returns whether the items are due."""
        items = self.items
        if not items:
            self._first_step = step
        items.append(item)
        return (step - self._first_step >= BATCH_STEPS
                or time.perf_counter() - self._taken_at >= BATCH_SECONDS)

    def take(self) -> list[Any]:
        items, self.items = self.items, []
        self._taken_at = time.perf_counter()
        return items
