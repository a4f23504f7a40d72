"""Small helpers that monitors use to turn measured values into alert conditions.

* :class:`Hysteresis` - value hysteresis: a condition starts when a value crosses its
  threshold and ends only when the value is back past a *clearing* threshold a margin away,
  so a value hovering at the threshold is one condition, not many.
* :class:`EMA` - an exponential moving average that skips NaN/inf, to smooth a noisy value
  before checking it.

Typical use in a monitor::

    band = Hysteresis(high=1e-2, low=1e-4)          # per-tensor state, keyed by name
    state = band.check(ratio, key=name)              # "high", "low" or None
    manager.update("update_ratio.high", state == "high", step=step, tensor=name,
                   value=ratio, message=f"update/weight ratio {ratio:.2e} > 1e-2")

The manager then adds the time-based debouncing (``fire_after``/``clear_after``/cooldown).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Literal

State = Literal["high", "low"] | None


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number > 0 or None, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0 or None, got {value!r}")
    return float(value)


class Hysteresis:
    """A band ``[low, high]`` with separate thresholds to fire and to clear.

    The margin is *multiplicative*, which is right for quantities spanning decades (update
    ratios, gradient norms, learning rates): a value is

    * ``"high"`` once it rises above ``high``, until it falls below ``high / (1 + margin)``;
    * ``"low"`` once it falls below ``low``, until it rises above ``low * (1 + margin)``;
    * otherwise ``None`` (inside the band).

    With ``margin=0.2`` and ``high=1e-2``: fires above 1e-2, clears below 8.33e-3.
    ``margin=0`` is a plain threshold (no hysteresis). A value jumping straight across the
    band switches directly between ``"high"`` and ``"low"``. NaN (no information) leaves the
    state unchanged; ``+inf`` counts as high and ``-inf`` as low.

    The state is kept per ``key`` (e.g. the tensor name), so one instance serves every
    tensor a monitor watches.

    Args:
        high: fire threshold above (> 0), or None for no upper bound.
        low: fire threshold below (> 0, < ``high``), or None for no lower bound.
        margin: relative width of the hysteresis (default 0.2, i.e. 20 %); >= 0.
    """

    def __init__(self, high: float | None = None, low: float | None = None, *,
                 margin: float = 0.2):
        self.high = _positive("high", high)
        self.low = _positive("low", low)
        if self.high is None and self.low is None:
            raise ValueError("high/low: give at least one threshold")
        if self.high is not None and self.low is not None and not self.low < self.high:
            raise ValueError(f"low: must be below high ({high!r}), got {low!r}")
        if (isinstance(margin, bool) or not isinstance(margin, (int, float))
                or not (math.isfinite(margin) and margin >= 0)):
            raise ValueError(f"margin: must be a finite number >= 0, got {margin!r}")
        self.margin = float(margin)
        self._state: dict[Hashable, State] = {}

    @property
    def high_clear(self) -> float | None:
        """The value a ``"high"`` state must fall below to clear: ``high / (1 + margin)``."""
        return None if self.high is None else self.high / (1.0 + self.margin)

    @property
    def low_clear(self) -> float | None:
        """The value a ``"low"`` state must rise above to clear: ``low * (1 + margin)``."""
        return None if self.low is None else self.low * (1.0 + self.margin)

    def check(self, value: float, key: Hashable = None) -> State:
        """Feed the latest ``value`` for ``key``; return the state after it.

        Returns ``"high"``, ``"low"`` or None (in the band). A condition is active for as
        long as this returns the same non-None state.
        """
        v = float(value)
        state = self._state.get(key)
        if math.isnan(v):
            return state
        new = self._next(state, v)
        self._state[key] = new
        return new

    def _next(self, state: State, v: float) -> State:
        high, low = self.high, self.low
        if state == "high":
            if low is not None and v < low:
                return "low"
            if v >= self.high_clear:  # type: ignore[operator]
                return "high"
        elif state == "low":
            if high is not None and v > high:
                return "high"
            if v <= self.low_clear:  # type: ignore[operator]
                return "low"
        if high is not None and v > high:
            return "high"
        if low is not None and v < low:
            return "low"
        return None

    def state(self, key: Hashable = None) -> State:
        """The current state of ``key`` without feeding a value."""
        return self._state.get(key)

    def reset(self, key: Hashable = None, *, all_keys: bool = False) -> None:
        """Forget the state of ``key`` (or of every key with ``all_keys=True``)."""
        if all_keys:
            self._state.clear()
        else:
            self._state.pop(key, None)

    def __repr__(self) -> str:
        return f"Hysteresis(high={self.high!r}, low={self.low!r}, margin={self.margin!r})"


class EMA:
    """Exponential moving average ``m <- (1 - alpha) * m + alpha * x``, skipping non-finite x.

    The first finite value initialises the average (no bias toward zero). NaN and +-inf
    are ignored (report them with a NaN rule instead; one inf would poison the average
    forever). Before any finite value the average is NaN.

    Args:
        alpha: weight of the newest value, in (0, 1]; e.g. 0.1 averages over roughly the
            last 10 values, 1 means no smoothing.
    """

    def __init__(self, alpha: float):
        if (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                or not (0.0 < alpha <= 1.0)):
            raise ValueError(f"alpha: must be a number in (0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.value = math.nan
        self.count = 0  # finite values absorbed

    def update(self, x: float) -> float:
        """Absorb ``x`` (ignored unless finite); return the current average."""
        x = float(x)
        if math.isfinite(x):
            if self.count == 0:
                self.value = x
            else:
                self.value += self.alpha * (x - self.value)
            self.count += 1
        return self.value

    def reset(self) -> None:
        """Forget everything (the average becomes NaN)."""
        self.value = math.nan
        self.count = 0

    def __repr__(self) -> str:
        return f"EMA(alpha={self.alpha!r}, value={self.value!r}, count={self.count})"


class Streak:
    """How many consecutive evaluations a condition has held, and since which step: the
    patience count of a rule ("fires after N checks") and the "since step S" of its message.

    ``update(holds, step)`` returns the new count (0 when the condition does not hold).
    """

    def __init__(self) -> None:
        self.count = 0
        self.since = 0

    def update(self, holds: bool, step: int) -> int:
        if not holds:
            self.count = 0
        else:
            if self.count == 0:
                self.since = step
            self.count += 1
        return self.count
