"""The tqdm progress bar as an output: step progress plus the live loss/accuracy postfix."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from trainwatch.outputs.base import HistogramData, Output

#: short postfix names of the usual tags; other tags are shown under their own name
SHORT_NAMES = {
    "loss/train": "loss",
    "accuracy/train": "acc",
    "accuracy/val": "val_acc",
    "loss/val": "val_loss",
}


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class ConsoleOutput(Output):
    """A tqdm progress bar fed by :meth:`scalars`; text, histograms, images and figures are
    ignored (reports go to TensorBoard).

    Args:
        total: total steps if known (can also be given later through :meth:`start`).
        enabled: False shows no bar; :meth:`write` still prints.
        file: where the bar and messages go (default: ``sys.stderr`` when the bar opens).
        desc: the bar's label.
        postfix_tags: scalar tags shown after the bar (4 significant digits), either a
            sequence (short names from :data:`SHORT_NAMES`) or a ``{tag: short_name}`` map.
        mininterval: seconds between redraws; default 0.1 on a terminal and 1.0 otherwise
            (CI logs), so a non-terminal gets at most one line a second.
    """

    def __init__(self, *, total: int | None = None, enabled: bool = True,
                 file: IO[str] | None = None, desc: str = "train",
                 postfix_tags: Iterable[str] | Mapping[str, str] = (
                     "loss/train", "accuracy/train", "accuracy/val"),
                 mininterval: float | None = None):
        self.total = total
        self.enabled = enabled
        self.desc = desc
        self.mininterval = mininterval
        self._file = file
        if isinstance(postfix_tags, Mapping):
            self._short = {str(k): str(v) for k, v in postfix_tags.items()}
        else:
            self._short = {t: SHORT_NAMES.get(t, t) for t in postfix_tags}
        self._postfix_tags = tuple(self._short)
        self._postfix: dict[str, float] = {}
        self._bar: Any = None
        self._closed = False

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stderr

    @property
    def bar(self) -> Any:
        """The underlying ``tqdm`` (None before the first :meth:`start`/:meth:`scalars`)."""
        return self._bar

    def start(self, total: int | None = None) -> None:
        """Open the bar, or reset it for a new run; ``total`` = total steps if known."""
        if total is not None:
            self.total = int(total)
        self._closed = False
        self._postfix = {}
        if not self.enabled:
            return
        if self._bar is None:
            file = self.file
            interval = self.mininterval
            if interval is None:
                interval = 0.1 if _isatty(file) else 1.0
            self._bar = tqdm(total=self.total, desc=self.desc, file=file,
                             mininterval=interval, dynamic_ncols=_isatty(file), leave=True)
        else:
            self._bar.reset(total=self.total)
            self._bar.set_postfix_str("", refresh=False)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Advance the bar to ``step`` and refresh the postfix if it has one of its tags.
        Costs about a microsecond; tqdm redraws at most every ``mininterval``."""
        if not self.enabled or self._closed:
            return
        bar = self._bar
        if bar is None:
            self.start()
            bar = self._bar
        hit = False
        for tag in self._postfix_tags:
            if tag in values:
                self._postfix[tag] = values[tag]
                hit = True
        if hit:
            bar.set_postfix_str(self._format_postfix(), refresh=False)
        delta = int(step) - bar.n
        if delta > 0:
            bar.update(delta)

    def _format_postfix(self) -> str:
        parts = []
        for tag in self._postfix_tags:
            if tag in self._postfix:
                try:
                    parts.append(f"{self._short[tag]}={float(self._postfix[tag]):.4g}")
                except (TypeError, ValueError):
                    parts.append(f"{self._short[tag]}={self._postfix[tag]}")
        return ", ".join(parts)

    def write(self, message: str) -> None:
        """Print one line above the bar without breaking it (always, even if disabled)."""
        tqdm.write(str(message), file=self.file)

    def histogram(self, tag: str, values: np.ndarray | HistogramData, step: int) -> None:
        """Ignored."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Ignored."""

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Ignored: reports go to TensorBoard, not to the console."""

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """Ignored."""

    def flush(self) -> None:
        """Redraw the bar now."""
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        """Close the bar (its last state stays on screen). Idempotent; :meth:`start` reopens."""
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None
