"""An in-memory output for tests: keeps everything it is given, validated like TensorBoard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trainwatch.outputs.base import HistogramData, Output
from trainwatch.outputs.tensorboard import (
    figure_size_px,
    merge_layout,
    reduce_histogram,
    to_uint8_hwc,
)

_MISSING: Any = object()


class MemoryOutput(Output):
    """Records every write in plain Python containers (unbounded: meant for tests).

    Attributes (each ``dict[tag, list[(step, item)]]`` in call order):
        scalars_log: float values (NaN/inf kept as they are).
        histograms: :class:`HistogramData` (raw values are reduced as TensorBoard's are).
        images: uint8 ``(H, W, C)`` arrays, converted and validated as TensorBoard's are.
        texts: the Markdown strings.
        figures: ``(width_px, height_px)`` the figure would render to (not rendered).
        layouts: the merged custom-scalars layout ``{category: {chart: [kind, [tags]]}}``.
        flushes: number of :meth:`flush` calls; closed: whether :meth:`close` was called.
    """

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)  # private: never the user's RNG state
        self.closed = False
        self.clear()

    def clear(self) -> None:
        """Forget everything recorded (not the closed flag)."""
        self.scalars_log: dict[str, list[tuple[int, float]]] = {}
        self.histograms: dict[str, list[tuple[int, HistogramData]]] = {}
        self.images: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.texts: dict[str, list[tuple[int, str]]] = {}
        self.figures: dict[str, list[tuple[int, tuple[int, int]]]] = {}
        self.layouts: dict[str, dict[str, list]] = {}
        self.flushes = 0

    # -- Output ----------------------------------------------------------------------------

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        step = int(step)
        for tag, v in values.items():
            self.scalars_log.setdefault(tag, []).append((step, float(v)))

    def histogram(self, tag: str, values: np.ndarray | HistogramData, step: int) -> None:
        h = values if isinstance(values, HistogramData) else reduce_histogram(values, self._rng)
        if np.size(h.edges) != np.size(h.counts) + 1:
            raise ValueError(f"histogram {tag!r}: {np.size(h.edges)} edges for "
                             f"{np.size(h.counts)} counts (need len(counts) + 1)")
        self.histograms.setdefault(tag, []).append((int(step), h))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.images.setdefault(tag, []).append((int(step), to_uint8_hwc(image)))

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.texts.setdefault(tag, []).append((int(step), str(markdown)))

    def figure(self, tag: str, figure: Any, step: int) -> None:
        self.figures.setdefault(tag, []).append((int(step), figure_size_px(figure)))

    def layout(self, layout: Mapping[str, Mapping[str, Any]]) -> None:
        merge_layout(self.layouts, layout)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    # -- reading back ----------------------------------------------------------------------

    @property
    def tags(self) -> set[str]:
        """Every tag written, of any kind."""
        kinds = (self.scalars_log, self.histograms, self.images, self.texts, self.figures)
        return set().union(*kinds)

    def scalar(self, tag: str) -> list[float]:
        """The values written under ``tag``, in call order ([] if none)."""
        return [v for _, v in self.scalars_log.get(tag, ())]

    def steps(self, tag: str) -> list[int]:
        """The steps of the scalars written under ``tag``, in call order."""
        return [s for s, _ in self.scalars_log.get(tag, ())]

    def last(self, tag: str, default: Any = _MISSING) -> float:
        """The last scalar written under ``tag``; KeyError (or ``default``) if none."""
        log = self.scalars_log.get(tag)
        if not log:
            if default is _MISSING:
                raise KeyError(f"no scalar written under {tag!r}; tags: "
                               f"{sorted(self.scalars_log)}")
            return default
        return log[-1][1]
