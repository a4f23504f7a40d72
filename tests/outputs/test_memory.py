"""MemoryOutput: records everything, validates like TensorBoardOutput."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from trainwatch.outputs import HistogramData, MemoryOutput, Output, OutputList


def test_scalars_are_logged_by_tag_with_steps():
    m = MemoryOutput()
    assert isinstance(m, Output)
    m.scalars({"loss/train": 2.0, "lr": 0.1}, 0)
    m.scalars({"loss/train": np.float32(1.5)}, 10)
    m.scalars({"loss/train": float("nan")}, 20)
    assert m.scalars_log["lr"] == [(0, 0.1)]
    assert m.steps("loss/train") == [0, 10, 20]
    vals = m.scalar("loss/train")
    assert vals[:2] == [2.0, 1.5] and np.isnan(vals[2])
    assert np.isnan(m.last("loss/train")) and m.last("lr") == 0.1
    assert m.scalar("missing") == []
    with pytest.raises(KeyError, match="missing"):
        m.last("missing")
    assert m.last("missing", None) is None


def test_histograms_raw_and_reduced():
    m = MemoryOutput()
    m.histogram("w", np.array([0.0, 1.0, 2.0, np.nan, np.inf]), 1)
    hd = HistogramData(np.array([1.0, 2.0]), np.array([0.0, 0.5, 1.0]), 0.0, 1.0, 3, 1.5, 1.0)
    m.histogram("g", hd, 2)
    (step, h), = m.histograms["w"]
    assert step == 1 and h.num == 3 and h.counts.sum() == 3 and len(h.counts) == 64
    assert (h.min, h.max) == (0.0, 2.0)
    assert m.histograms["g"] == [(2, hd)]
    with pytest.raises(ValueError, match="edges"):
        m.histogram("bad", HistogramData(np.ones(3), np.ones(3), 0, 1, 3, 0, 0), 3)


def test_big_histogram_keeps_exact_extremes_and_count():
    m = MemoryOutput()
    v = np.random.default_rng(0).normal(size=250_000)
    v[7] = -40.0
    v[100:200] = np.nan
    m.histogram("w", v, 0)
    h = m.histograms["w"][0][1]
    assert h.min == -40.0 and h.max == np.nanmax(v)
    assert h.num == 250_000 - 100
    assert h.counts.sum() == pytest.approx(h.num)
    assert h.edges[0] == -40.0 and h.edges[-1] == pytest.approx(np.nanmax(v))


def test_images_are_converted_and_validated():
    m = MemoryOutput()
    m.image("chw", np.full((3, 4, 5), 2.0), 0)  # clipped, not wrapped
    m.image("hw", np.zeros((4, 5), dtype=bool), 0)
    (_, img), = m.images["chw"]
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8 and (img == 255).all()
    assert m.images["hw"][0][1].shape == (4, 5, 1)
    with pytest.raises(ValueError):
        m.image("bad", np.zeros((2, 2, 2, 2)), 0)
    with pytest.raises(TypeError):
        m.image("bad", np.array([["a", "b"]]), 0)


def test_text_figure_layout_flush_close():
    m = MemoryOutput()
    m.text("notes", "| a |\n|---|\n| 1 |", 3)
    fig = Figure(figsize=(3, 2), dpi=40)
    m.figure("fig", fig, 4)
    m.layout({"loss": {"c": ("Multiline", ["^loss/"])}})
    m.layout({"loss": {"m": ("Margin", ["v", "lo", "hi"])}, "acc": {"a": ("Multiline", "^acc")}})
    m.flush()
    m.close()
    assert m.texts == {"notes": [(3, "| a |\n|---|\n| 1 |")]}
    assert m.figures == {"fig": [(4, (120, 80))]}
    assert m.layouts == {"loss": {"c": ["Multiline", ["^loss/"]],
                                  "m": ["Margin", ["v", "lo", "hi"]]},
                         "acc": {"a": ["Multiline", ["^acc"]]}}
    assert m.flushes == 1 and m.closed
    assert m.tags == {"notes", "fig"}
    with pytest.raises(ValueError):
        m.layout({"x": {"y": ("Multiline",)}})
    m.clear()
    assert m.tags == set() and m.layouts == {} and m.closed


def test_works_behind_an_output_list():
    m = MemoryOutput()
    outs = OutputList([m])
    outs.scalars({"a": 1.0}, 5)
    outs.text("t", "hello", 5)
    outs.close()
    assert m.last("a") == 1.0 and m.texts["t"] == [(5, "hello")] and m.closed
