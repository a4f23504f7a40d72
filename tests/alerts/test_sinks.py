"""The synchronous sinks: logging, console, Output text, JSON lines, callable."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from trainwatch.alerts import (
    Alert,
    AlertManager,
    CallableSink,
    ConsoleSink,
    JsonlSink,
    LoggingSink,
    OutputTextSink,
    Severity,
    alert_markdown,
)
from trainwatch.outputs.memory import MemoryOutput


def make(code="update_ratio.high", severity=Severity.WARNING, step=10, **kw) -> Alert:
    return Alert(code, severity, kw.pop("message", "ratio 2.0e-02 above 1e-2"), step,
                 **{"tensor": "fc1.weight", "value": 0.02, "suggestion": "lower the lr", **kw})


def test_logging_sink_levels_by_severity_and_resolved_is_info(caplog):
    sink = LoggingSink()
    alerts = [
        make(severity=Severity.INFO),
        make(severity=Severity.WARNING),
        make(severity=Severity.CRITICAL),
        make(severity=Severity.CRITICAL, resolved=True),
    ]
    with caplog.at_level(logging.DEBUG, logger="trainwatch"):
        for a in alerts:
            sink.emit(a)
    records = [r for r in caplog.records if r.name == "trainwatch"]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING, logging.CRITICAL,
                                            logging.INFO]
    assert [r.getMessage() for r in records] == [str(a) for a in alerts]
    assert records[1].trainwatch_alert == alerts[1].to_dict()
    assert records[3].getMessage().startswith("RESOLVED ")


def test_logging_sink_custom_logger(caplog):
    with caplog.at_level(logging.INFO, logger="myproj.alerts"):
        LoggingSink("myproj.alerts").emit(make())
    assert [r.name for r in caplog.records] == ["myproj.alerts"]


def test_console_sink_writes_one_line_per_alert():
    lines: list[str] = []
    sink = ConsoleSink(lines.append)
    a, b = make(), make(code="loss.nan", severity=Severity.CRITICAL, tensor=None)
    sink.emit(a)
    sink.emit(b)
    assert lines == [str(a), str(b)]
    assert all("\n" not in line for line in lines)
    assert lines[0].startswith("WARNING update_ratio.high [fc1.weight] at step 10")


def test_console_sink_default_goes_to_stderr_through_tqdm(capsys):
    from tqdm import tqdm

    a = make()
    with tqdm(total=3, file=None) as bar:  # a live bar on stderr
        bar.update(1)
        ConsoleSink().emit(a)
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(a) + "\n" in captured.err


def test_console_sink_rejects_non_callable():
    with pytest.raises(TypeError, match="write"):
        ConsoleSink("stderr")  # type: ignore[arg-type]


def test_output_text_sink_writes_markdown_under_code_and_a_running_count():
    out = MemoryOutput()
    sink = OutputTextSink(out)
    a = make(step=3)
    b = make(code="loss.nan", severity=Severity.CRITICAL, step=5, tensor=None, value=None,
             suggestion=None, message="loss is NaN")
    r = make(step=9, resolved=True, message="ratio back to 5.0e-03")
    for alert in (a, b, r):
        sink.emit(alert)
    assert set(out.texts) == {"alerts/update_ratio.high", "alerts/loss.nan"}
    ratio_texts = out.texts["alerts/update_ratio.high"]
    assert [step for step, _ in ratio_texts] == [3, 9]
    md = ratio_texts[0][1]
    assert md == alert_markdown(a)
    assert "**WARNING** `update_ratio.high` on `fc1.weight` at step 3" in md
    assert "`0.02`" in md and "*Suggestion:* lower the lr" in md
    assert out.texts["alerts/loss.nan"] == [(5, "**CRITICAL** `loss.nan` at step 5: loss is NaN")]
    assert ratio_texts[1][1].startswith("**RESOLVED WARNING**")
    assert "Suggestion" not in ratio_texts[1][1]
    # running count of firings (the resolution does not add one)
    assert out.scalars_log["alerts/count"] == [(3, 1.0), (5, 2.0), (9, 2.0)]


def test_output_text_sink_rejects_non_output():
    with pytest.raises(TypeError, match="output"):
        OutputTextSink(object())  # type: ignore[arg-type]


def test_jsonl_sink_one_parseable_object_per_alert_flushed_immediately(tmp_path):
    path = tmp_path / "run1" / "nested" / "alerts.jsonl"
    sink = JsonlSink(path)
    assert path.exists()
    alerts = [make(step=1), make(code="loss.nan", severity=Severity.CRITICAL, step=2,
                                 value=float("nan"), tensor=None),
              make(step=3, resolved=True)]
    for a in alerts:
        sink.emit(a)
    # Readable before close: every line was flushed.
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    for row, a in zip(rows, alerts):
        assert {"code", "severity", "message", "step"} <= row.keys()
        assert row == a.to_dict()
    assert rows[1]["severity"] == "critical" and rows[1]["value"] == "nan"
    assert rows[2]["resolved"] is True
    sink.close()
    sink.close()  # idempotent
    sink.emit(make(step=4))  # reopens in append mode
    sink.close()
    again = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4]


def test_jsonl_sink_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"code": "old.alert"}\n', encoding="utf-8")
    sink = JsonlSink(str(path))
    sink.emit(make())
    sink.close()
    codes = [json.loads(line)["code"] for line in path.read_text().splitlines()]
    assert codes == ["old.alert", "update_ratio.high"]


def test_callable_sink_calls_fn_and_rejects_non_callables():
    got: list[Any] = []
    CallableSink(got.append).emit(a := make())
    assert got == [a]
    with pytest.raises(TypeError, match="fn"):
        CallableSink(42)  # type: ignore[arg-type]


def test_manager_with_several_sinks_end_to_end(tmp_path):
    lines: list[str] = []
    out = MemoryOutput()
    jsonl = JsonlSink(tmp_path / "alerts.jsonl")
    m = AlertManager([ConsoleSink(lines.append), OutputTextSink(out), jsonl], clear_after=2,
                     cooldown_steps=0)
    ratio = np.array([1e-3, 2e-2, 3e-2, 1e-3, 1e-3, 1e-3])
    for step, r in enumerate(ratio):
        m.update("update_ratio.high", bool(r > 1e-2), step=step, tensor="w", value=r,
                 message=f"ratio {r:.1e}")
    m.fire("loss.nan", "critical", "loss is NaN", 6)
    m.close()
    rows = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(r["code"], r["step"], r["resolved"]) for r in rows] == [
        ("update_ratio.high", 1, False), ("update_ratio.high", 4, True), ("loss.nan", 6, False)]
    assert lines == [str(a) for a in m.history]
    assert out.scalars_log["alerts/count"][-1] == (6, 2.0)
    assert set(out.texts) == {"alerts/update_ratio.high", "alerts/loss.nan"}
