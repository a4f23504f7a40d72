"""The alert record that every rule produces and every sink receives."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any


class Severity(str, enum.Enum):
    """How bad an alert is. Ordered: INFO < WARNING < CRITICAL."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ("info", "warning", "critical").index(self.value)

    @classmethod
    def parse(cls, value: Severity | str, *, argument: str = "severity") -> Severity:
        try:
            return value if isinstance(value, cls) else cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"{argument}: {value!r} is not one of 'info', 'warning', 'critical'"
            ) from None


@dataclass(frozen=True)
class Alert:
    """One alert event.

    Attributes:
        code: stable dotted machine-readable code, e.g. ``"update_ratio.high"``.
        severity: info, warning or critical.
        message: one human sentence saying what is wrong, with numbers.
        step: the training step (optimizer steps taken) when it fired.
        tensor: the parameter tensor or layer concerned, if any (``"conv1.weight"``).
        value: the measured value that triggered it, if any.
        suggestion: what to try.
        resolved: True for the event that says a condition has cleared.
        time: wall-clock seconds since the epoch.
    """

    code: str
    severity: Severity
    message: str
    step: int
    tensor: str | None = None
    value: float | None = None
    suggestion: str | None = None
    resolved: bool = False
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite values become strings)."""
        value = self.value
        if value is not None and not math.isfinite(value):
            value = str(value)
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "step": self.step,
            "tensor": self.tensor,
            "value": value,
            "suggestion": self.suggestion,
            "resolved": self.resolved,
            "time": self.time,
        }

    def __str__(self) -> str:
        where = f" [{self.tensor}]" if self.tensor else ""
        status = "RESOLVED " if self.resolved else ""
        hint = f" -> {self.suggestion}" if self.suggestion and not self.resolved else ""
        return (
            f"{status}{self.severity.value.upper()} {self.code}{where} at step {self.step}: "
            f"{self.message}{hint}"
        )
