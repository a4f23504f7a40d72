"""ConsoleOutput: the tqdm bar, its postfix and messages, written to a StringIO."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from matplotlib.figure import Figure

from trainwatch.outputs import ConsoleOutput, Output


def lines(text: str) -> list[str]:
    """What a terminal would show line by line: \\r rewinds, so keep each segment."""
    return [seg.strip() for seg in re.split(r"[\r\n]", text) if seg.strip()]


def test_bar_progress_postfix_and_intact_messages():
    f = io.StringIO()
    c = ConsoleOutput(file=f, desc="train", mininterval=0)
    assert isinstance(c, Output)
    c.start(100)
    c.scalars({"loss/train": 0.123456789, "lr": 0.1}, 10)
    c.write("ALERT [warning] step 10: loss is rising")
    c.scalars({"accuracy/train": 0.91234567, "accuracy/val": 0.87654321}, 50)
    c.scalars({"loss/train": 0.0987654}, 40)  # a smaller step never moves the bar back
    assert c.bar.n == 50 and c.bar.total == 100
    c.close()
    shown = lines(f.getvalue())
    assert "ALERT [warning] step 10: loss is rising" in shown
    last = shown[-1]
    assert last.startswith("train:") and "50/100" in last
    assert "loss=0.09877" in last and "acc=0.9123" in last and "val_acc=0.8765" in last
    assert "lr" not in last


def test_lazy_bar_without_total_and_ignored_kinds():
    f = io.StringIO()
    c = ConsoleOutput(file=f, mininterval=0)
    c.text("report", "SHOULD NOT BE PRINTED", 1)
    c.histogram("h", np.arange(10.0), 1)
    c.image("im", np.zeros((2, 2)), 1)
    c.figure("fig", Figure(), 1)
    c.layout({"a": {"b": ("Multiline", ["x"])}})
    assert f.getvalue() == "" and c.bar is None
    c.scalars({"loss/train": 1.0}, 7)  # opens the bar
    assert c.bar.n == 7 and c.bar.total is None
    c.close()
    c.close()
    assert "SHOULD NOT" not in f.getvalue()
    assert "7it" in lines(f.getvalue())[-1]


def test_disabled_shows_no_bar_but_still_writes_messages():
    f = io.StringIO()
    c = ConsoleOutput(file=f, enabled=False)
    c.start(10)
    c.scalars({"loss/train": 1.0}, 5)
    c.write("hello")
    c.close()
    assert f.getvalue() == "hello\n"


def test_restart_and_custom_postfix_names():
    f = io.StringIO()
    c = ConsoleOutput(file=f, mininterval=0, postfix_tags={"metrics/f1": "f1"})
    c.start(5)
    c.scalars({"metrics/f1": 0.5, "loss/train": 3.0}, 5)
    c.start(20)  # a new run: bar and postfix reset
    assert c.bar.n == 0 and c.bar.total == 20
    c.scalars({"metrics/f1": 0.75}, 2)
    c.close()
    last = lines(f.getvalue())[-1]
    assert "2/20" in last and "f1=0.75" in last and "loss" not in last


def test_not_a_terminal_does_not_spam():
    f = io.StringIO()  # not a TTY: one redraw a second at most
    c = ConsoleOutput(file=f, total=50_000)
    for step in range(1, 50_001):
        c.scalars({"loss/train": 1.0 / step}, step)
    c.close()
    assert f.getvalue().count("\r") < 10
    assert "50000/50000" in lines(f.getvalue())[-1]


def test_scalars_cost_is_microseconds():
    c = ConsoleOutput(file=io.StringIO(), total=10**6)
    c.start()
    values = {"loss/train": 0.5, "grad/norm": 1.0}
    n = 20_000
    t0 = time.perf_counter()
    for step in range(n):
        c.scalars(values, step)
    per_call = (time.perf_counter() - t0) / n
    c.close()
    assert per_call < 20e-6, f"{per_call * 1e6:.1f} us per call"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_postfix(value):
    f = io.StringIO()
    c = ConsoleOutput(file=f, mininterval=0)
    c.scalars({"loss/train": value}, 1)
    c.close()
    assert f"loss={value}" in lines(f.getvalue())[-1]
