"""Bundled real data (the 8x8 handwritten digits) and minibatching."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np


def load_digits(*, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits, offline (see ``DIGITS_README.md``).

    Returns ``(x, y)``: ``x`` float64 pixel intensities scaled to [0, 1], shaped (1797, 64),
    or (1797, 1, 8, 8) with ``images=True``; ``y`` int64 class labels 0..9.
    """
    path = resources.files(__package__).joinpath("digits.csv.gz")
    with path.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",")
    x = table[:, :-1] / 16.0
    y = table[:, -1].astype(np.int64)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return x, y


def train_val_split(x: np.ndarray, y: np.ndarray, *, val_fraction: float = 0.2, seed: int = 0):
    """A seeded random split: returns ``(x_train, y_train), (x_val, y_val)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def minibatches(x: Any, y: Any, batch_size: int,
                rng: np.random.Generator | None = None) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x_batch, y_batch)`` covering the data once, shuffled by ``rng`` if given
    (the last batch may be smaller)."""
    n = len(x)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
