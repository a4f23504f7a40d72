"""Argument checks shared by every constructor: bad configuration fails at construction,
with a message that names the argument."""

from __future__ import annotations

from typing import Any


def count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools rejected), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def optional_count(name: str, value: Any) -> int | None:
    """``value`` if it is None or an integer >= 1 (bools rejected), else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1 or None, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return value


def with_methods(name: str, value: Any, methods: tuple[str, ...], expected: str) -> Any:
    """``value`` if it is None or has every one of ``methods`` (callable), else TypeError
    saying it expected ``expected``."""
    if value is not None and not all(callable(getattr(value, m, None)) for m in methods):
        raise TypeError(f"{name}: expected {expected} or None, got {type(value).__name__}")
    return value
