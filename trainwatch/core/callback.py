"""The callback base class and the dispatcher that calls callbacks at each hook point.

Hook points, in the order they happen during one run::

    on_train_begin
      on_epoch_begin
        on_batch_begin -> on_loss_computed -> on_backward_end -> on_step_begin -> on_step_end
        ... (one line per batch)
        on_validation_end
      on_epoch_end
    on_train_end            (always called, also when training raised)

    on_losses               (the losses reported so far, in batches: see below)

Every hook receives the run's :class:`~trainwatch.core.state.RunState`.

A callback that works now and then (every N steps, at epoch ends) says so with
:meth:`Callback.next_step`: the dispatcher skips its batch hooks until that step, so an idle
callback costs nothing between its steps, and with :meth:`Callback.reads_batch` whether it
reads the batch there (a watched torch model gets its forward hooks only for such steps).
A callback that needs the loss of every step (the loss rules, the loss curve) overrides
:meth:`Callback.on_losses`: the Monitor gathers the reported losses and hands them over in
batches, asleep or not, so a step nobody is awake for costs an append.
"""

from __future__ import annotations

import heapq
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainwatch.core.state import RunState

HOOKS: tuple[str, ...] = (
    "on_train_begin",
    "on_epoch_begin",
    "on_batch_begin",
    "on_loss_computed",
    "on_backward_end",
    "on_step_begin",
    "on_step_end",
    "on_validation_end",
    "on_epoch_end",
    "on_train_end",
    "on_losses",
)

#: the hooks of one batch, which a callback sees only from its :meth:`Callback.next_step` on
STEP_HOOKS: tuple[str, ...] = HOOKS[2:7]

#: a :meth:`Callback.next_step` meaning "no batch hook any more" (epoch and train hooks only)
NEVER: int = sys.maxsize


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` at or after ``step``: the next step of a callback
    that works on the steps with ``step % every == 0``."""
    return -(-step // every) * every


def next_block_end(step: int, every: int) -> int:
    """The first step at or after ``step`` that ends a block of ``every`` steps (``every-1``,
    ``2·every-1``, ...): the next step of a callback that works after every ``every`` steps."""
    return next_multiple(step + 1, every) - 1


class StopTraining(Exception):
    """Raise from a callback (or call ``state.request_stop``) to end training cleanly.

    The current hook returns, the loop finishes the batch it is in, ``on_train_end`` runs
    and the writers are flushed. ``reason`` is shown in the summary.
    """

    def __init__(self, reason: str = "stopped by a callback"):
        super().__init__(reason)
        self.reason = reason


class Callback:
    """Base class of every trainwatch callback: override the hooks you need.

    Each method is a no-op here. The dispatcher only calls the methods a subclass
    overrides, so an unused hook costs nothing.

    Attributes:
        order: callbacks run in increasing ``order``, ties in the order given (default 0).
        raise_errors: if True an exception in this callback propagates and stops training;
            if False (default) it is reported once as a ``callback.error`` alert and the
            callback is disabled for the rest of the run.
    """

    order: int = 0
    raise_errors: bool = False

    @property
    def name(self) -> str:
        """The callback's display name (its class name)."""
        return type(self).__name__

    def read_at_step_end(self, state: RunState, values: Sequence[Any],
                         then: Callable[[list[float]], None]) -> None:
        """Read framework scalars (0-d tensors or numbers) as floats and call
        ``then(floats)``. Where reads are device syncs (``backend.host_reads_cheap`` is
        False) they wait for the end of the step: after every ``on_step_end``, all
        callbacks' reads of the step travel in one transfer, and ``then`` runs with this
        call's values (an error there counts as this callback's); reads queued in
        ``on_validation_end``, ``on_epoch_end`` or ``on_train_end`` are read at the end of
        that hook point. Where reads are cheap, now."""
        if state.backend.host_reads_cheap:
            then(state.backend.scalars_to_host(values))
        else:
            state.queued_reads.append((self, list(values), then))

    def next_step(self, step: int) -> int:
        """The first global step, ``step`` or later, whose batch hooks (``on_batch_begin`` to
        ``on_step_end``) this callback needs; the dispatcher skips them until then, so a
        callback that works every N steps costs nothing in between (:data:`NEVER`: epoch
        and train hooks only). Asked when training begins, after every step the callback
        saw, and after each epoch end. Default: ``step`` (every step)."""
        return step

    def reads_batch(self, step: int) -> bool:
        """Whether this callback reads the batch on ``step`` (a step it sees):
        ``state.inputs``, ``state.predictions`` or captured activations. A torch model
        watched with :func:`trainwatch.torch.watch` gets its forward hooks (torch's slower
        call path, ~10 µs a step) only for steps some callback reads; on the others
        ``state.inputs`` and ``state.predictions`` are None (the loss and the targets are
        always there). Asked before each step the callback sees. Default True."""
        return True

    def on_train_begin(self, state: RunState) -> None:
        """Before the first epoch: allocate buffers, write layouts, check the setup."""

    def on_epoch_begin(self, state: RunState) -> None:
        """At the start of epoch ``state.epoch`` (0-based)."""

    def on_batch_begin(self, state: RunState) -> None:
        """A batch (``state.inputs``, ``state.targets``) is about to go forward.

        Request activation capture here (``state.backend.capture_activations(True)``) if
        this step needs them, and give the request back (``capture_activations(False)``)
        once read: requests are counted, so callbacks capturing on different schedules do
        not switch each other off.
        """

    def on_loss_computed(self, state: RunState) -> None:
        """The forward pass is done: ``state.loss`` (and ``state.predictions``) are set."""

    def on_backward_end(self, state: RunState) -> None:
        """Gradients are ready (``state.backend.gradients()``); parameters are not yet updated."""

    def on_step_begin(self, state: RunState) -> None:
        """Just before the optimizer step: snapshot what you need to measure the update."""

    def on_step_end(self, state: RunState) -> None:
        """The optimizer has updated the parameters; ``state.step`` is the step just taken."""

    def on_validation_end(self, state: RunState) -> None:
        """Validation ran: ``state.metrics`` holds e.g. ``val_loss`` and ``val_accuracy``."""

    def on_epoch_end(self, state: RunState) -> None:
        """End of the epoch: ``state.metrics`` holds the epoch's train and validation metrics."""

    def on_train_end(self, state: RunState) -> None:
        """Training finished, stopped, or raised (``state.exception`` tells which)."""

    def on_losses(self, state: RunState) -> None:
        """The losses reported since the last call, oldest first, in ``state.losses``: one
        ``(step, loss, data_loss, reg_loss)`` tuple per report (the loss as in
        ``state.loss``; the terms None unless the loop reports them; several per step with
        gradient accumulation). Called asleep or not, in batches (the Monitor's
        :class:`~trainwatch.StepBatch`): at once for the run's first loss and for a
        non-finite float, else once the oldest is 100 steps old or 1 s has passed, and
        before every ``on_epoch_end`` and ``on_train_end``. Keep what you need: the list
        is not kept."""


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList:
    """Calls callbacks in a defined order and keeps a failing one from killing training.

    Args:
        callbacks: the callbacks; sorted by ``order``, stable.
        raise_errors: re-raise every callback's exceptions (default False: report once as a
            ``callback.error`` alert through ``state.alerts`` and disable the callback).
    """

    def __init__(self, callbacks: Iterable[Callback] = (), *, raise_errors: bool = False):
        self.callbacks: list[Callback] = []
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks: {cb!r} is not a trainwatch.Callback")
            self.callbacks.append(cb)
        self.callbacks.sort(key=lambda cb: cb.order)
        self.raise_errors = raise_errors
        self.disabled: set[int] = set()
        # Per hook, only the callbacks that override it: an idle hook costs one loop over [];
        # for the batch hooks, of those only the ones awake at this step (see next_step).
        self._overriding = {h: [cb for cb in self.callbacks if _overrides(cb, h)]
                            for h in HOOKS}
        self._by_hook = {h: list(cbs) for h, cbs in self._overriding.items()}
        self._position = {id(cb): i for i, cb in enumerate(self.callbacks)}
        self._awake: list[Callback] = list(self.callbacks)
        self._asleep: list[tuple[int, int, Callback]] = []  # heap of (wake step, position, cb)
        #: whether a callback awake at the current step reads its batch
        #: (:meth:`Callback.reads_batch`); set by :meth:`schedule` and :meth:`advance`
        self.batch_needed = True
        #: no callback is awake at the current step: its batch hooks would call nobody, and
        #: a loop may skip them (the Monitor and the torch watcher do)
        self.quiet = False

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def call(self, hook: str, state: RunState) -> None:
        """Call ``hook`` on every enabled callback that overrides it."""
        for cb in self._by_hook[hook]:  # (run()'s body, inline: this is the hot path)
            if self.disabled and id(cb) in self.disabled:
                continue
            try:
                getattr(cb, hook)(state)
            except StopTraining as stop:
                state.request_stop(stop.reason)
            except Exception as exc:  # noqa: BLE001 - watching never kills training
                self._failed(cb, hook, exc, state)

    def schedule(self, state: RunState) -> None:
        """Ask every enabled callback for its next step from ``state.step`` (when training
        begins, after an epoch end)."""
        self._awake, self._asleep, self.quiet = list(self.callbacks), [], False
        self._rebuild()
        self.advance(state)

    def advance(self, state: RunState) -> None:
        """At a new step (``state.step``): the callbacks awake so far say when they next
        need the batch hooks (sleeping until then), those whose step has come wake up, and
        :attr:`batch_needed` tells whether one of them reads this step's batch."""
        step, asleep = state.step, self._asleep
        if self.quiet and (not asleep or asleep[0][0] > step):
            return  # all asleep and none wakes: nothing to ask (the hot path of a quiet run)
        awake: list[Callback] = []
        changed = False
        for cb in self._awake:
            if self.disabled and id(cb) in self.disabled:
                changed = True
                continue
            wake = self._ask(cb, "next_step", state, step)
            if wake > step:
                heapq.heappush(asleep, (wake, self._position[id(cb)], cb))
                changed = True
            else:
                awake.append(cb)
        while asleep and asleep[0][0] <= step:
            cb = heapq.heappop(asleep)[2]
            changed = True
            if not (self.disabled and id(cb) in self.disabled):
                awake.append(cb)
        if changed:
            awake.sort(key=lambda cb: self._position[id(cb)])
            self._awake = awake
            self._rebuild()
        self.quiet = not awake
        self.batch_needed = any(self._ask(cb, "reads_batch", state, step) for cb in awake)

    def _ask(self, cb: Callback, what: str, state: RunState, step: int) -> Any:
        """``cb.next_step(step)`` or ``cb.reads_batch(step)``; a callback that raises there
        is handled as in its hooks (and, disabled, sleeps for good)."""
        try:
            return getattr(cb, what)(step)
        except Exception as exc:  # noqa: BLE001 - watching never kills training
            self._failed(cb, what, exc, state)
            return NEVER if what == "next_step" else False

    def _rebuild(self) -> None:
        awake = {id(cb) for cb in self._awake}
        for hook in STEP_HOOKS:
            self._by_hook[hook] = [cb for cb in self._overriding[hook] if id(cb) in awake]

    def run(self, cb: Callback, what: str, fn: Callable[..., Any], state: RunState,
            *args: Any) -> None:
        """``fn(*args)`` on behalf of ``cb`` (skipped once it is disabled), with the error
        handling of its hooks; ``what`` names it in the report."""
        if self.disabled and id(cb) in self.disabled:
            return
        try:
            fn(*args)
        except StopTraining as stop:
            state.request_stop(stop.reason)
        except Exception as exc:  # noqa: BLE001 - watching never kills training
            self._failed(cb, what, exc, state)

    def _failed(self, cb: Callback, what: str, exc: Exception, state: RunState) -> None:
        if self.raise_errors or cb.raise_errors:
            raise exc
        self._disable(cb, what, exc, state)

    def _disable(self, cb: Callback, hook: str, exc: Exception, state: RunState) -> None:
        self.disabled.add(id(cb))
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        state.alerts.fire(
            code="callback.error",
            severity="warning",
            message=f"{cb.name}.{hook} raised {tb}; {cb.name} is disabled for the rest of the run",
            step=state.step,
            value=None,
            suggestion="pass raise_errors=True to see the full traceback",
        )
