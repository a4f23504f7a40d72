"""Argument checks shared by every constructor: bad configuration fails at construction,
with a message that names the argument."""

from __future__ import annotations

from typing import Any


def count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (bools rejected), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` if it is True or False, else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return value
