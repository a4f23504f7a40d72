"""The demo's logs as the real TensorBoard server serves them (its JSON data API).

Every check compares what the server answers with what EventAccumulator reads from the same
event files, or with what the demo's model says must be there (its parameter and layer names).
"""

from __future__ import annotations

import io
import re
import urllib.parse

import numpy as np
import pytest
from google.protobuf import json_format
from tensorboard.plugins.custom_scalar import layout_pb2

from tests.dashboard.screenshots import served_tags

PLUGINS = ("scalars", "histograms", "images", "text")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def q(**params: str) -> str:
    return urllib.parse.urlencode(params)


def plugin_tags(ea, plugin: str) -> set[str]:
    """The tags of one plugin in one run, as EventAccumulator reads them."""
    tags = ea.Tags()
    if plugin == "text":
        return {t for t in tags["tensors"]
                if ea.SummaryMetadata(t).plugin_data.plugin_name == "text"}
    return set(tags[plugin])


def test_serves_every_run_of_the_logdir(demo, tensorboard):
    runs = tensorboard.json("/data/runs")
    assert sorted(runs) == sorted(demo.accumulators)
    assert "." in runs  # the demo writes into the logdir itself


@pytest.mark.parametrize("plugin", PLUGINS)
def test_served_tags_are_those_of_the_event_files(demo, tensorboard, plugin):
    served = tensorboard.json(f"/data/plugin/{plugin}/tags")
    for run, ea in demo.accumulators.items():
        on_disk = plugin_tags(ea, plugin)
        assert set(served.get(run, ())) == on_disk, f"run {run!r}"


def test_metric_curves_are_served_as_written(demo, tensorboard):
    served = served_tags(tensorboard, "scalars")
    assert set(demo.expected.metrics) <= served
    ea = demo.accumulators["."]
    for tag in demo.expected.metrics:
        points = tensorboard.json("/data/plugin/scalars/scalars?" + q(run=".", tag=tag))
        events = ea.Scalars(tag)
        assert [(step, value) for _wall, step, value in points] == [
            (e.step, e.value) for e in events], tag
        assert [wall for wall, _, _ in points] == pytest.approx([e.wall_time for e in events])
    # one validation point per epoch, the last one the demo's final accuracy (float32)
    val = [e.value for e in ea.Scalars("accuracy/val")]
    assert len(val) == len(demo.result.trainer.history["val_accuracy"])
    assert val[-1] == pytest.approx(demo.result.val_accuracy, rel=1e-6)
    # the training loss comes every 10 steps (MetricLogger's default) and goes down
    loss = ea.Scalars("loss/train")
    assert [e.step for e in loss] == list(range(0, 10 * len(loss), 10))
    assert loss[-1].value < loss[0].value


def test_custom_scalars_layout_is_served_and_points_at_served_curves(demo, tensorboard):
    served = tensorboard.json("/data/plugin/custom_scalars/layout")
    ea = demo.accumulators["."]
    written = layout_pb2.Layout.FromString(
        ea.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    assert json_format.ParseDict(served, layout_pb2.Layout()) == written

    scalars = served_tags(tensorboard, "scalars")
    charts = {}
    for category in served["category"]:
        for chart in category["chart"]:
            regexes = chart["multiline"]["tag"]
            shown = {t for t in scalars for r in regexes if re.search(r, t)}
            assert shown, f"chart {chart['title']!r} matches no served scalar ({regexes})"
            charts[chart["title"]] = shown
    # MetricLogger's two charts: the losses together, train against validation accuracy
    assert any({"loss/train", "loss/val"} <= shown for shown in charts.values()), charts
    assert any({"accuracy/train", "accuracy/val"} <= shown for shown in charts.values()), charts


def test_update_ratio_and_accuracy_gap_curves_are_served(demo, tensorboard):
    served = served_tags(tensorboard, "scalars")
    missing = set(demo.expected.update_ratios) - served
    assert not missing, f"missing {sorted(missing)}; served {sorted(served)}"
    assert "accuracy/gap" in served
    ea = demo.accumulators["."]
    train = {e.step: e.value for e in ea.Scalars("accuracy/train")}
    val = {e.step: e.value for e in ea.Scalars("accuracy/val")}
    gap = tensorboard.json("/data/plugin/scalars/scalars?" + q(run=".", tag="accuracy/gap"))
    assert gap
    for _wall, step, value in gap:
        if step in train and step in val:
            assert value == pytest.approx(train[step] - val[step], abs=1e-6)
    for tag in demo.expected.update_ratios:
        values = [v for _, _, v in tensorboard.json(
            "/data/plugin/scalars/scalars?" + q(run=".", tag=tag))]
        assert values and all(np.isfinite(values)) and min(values) >= 0, tag


def test_histograms_of_weights_gradients_and_activations_are_served(demo, tensorboard):
    served = served_tags(tensorboard, "histograms")
    missing = set(demo.expected.histograms) - served
    assert not missing, f"missing {sorted(missing)}; served {sorted(served)}"
    ea = demo.accumulators["."]
    sizes = {f"weights/{n}": v.size for n, v in demo.result.trainer.backend.parameters().items()}
    for tag in demo.expected.histograms:
        events = ea.Histograms(tag)
        points = tensorboard.json("/data/plugin/histograms/histograms?" + q(run=".", tag=tag))
        assert [step for _, step, _ in points] == [e.step for e in events], tag
        for (_, _, buckets), event in zip(points, events):
            counts = [count for _left, _right, count in buckets]
            assert sum(counts) == pytest.approx(event.histogram_value.num), tag
            lefts = [left for left, _, _ in buckets]
            assert min(lefts) == pytest.approx(event.histogram_value.min), tag
            if tag in sizes:  # a weight histogram counts every entry of the tensor
                assert sum(counts) == pytest.approx(sizes[tag]), tag


def test_filter_images_are_served_as_the_written_pngs(demo, tensorboard):
    served = served_tags(tensorboard, "images")
    missing = set(demo.expected.images) - served
    assert not missing, f"missing {sorted(missing)}; served {sorted(served)}"
    from PIL import Image

    ea = demo.accumulators["."]
    for tag in demo.expected.images:
        events = ea.Images(tag)
        entries = tensorboard.json("/data/plugin/images/images?" + q(run=".", tag=tag))
        assert [e["step"] for e in entries] == [e.step for e in events], tag
        assert len(entries) >= 2  # the initial filters, then at least one epoch later
        for entry, event in zip(entries, events):
            blob = tensorboard.get("/data/plugin/images/individualImage?" + entry["query"])
            assert blob.startswith(PNG_MAGIC), tag
            assert blob == event.encoded_image_string, tag
            image = Image.open(io.BytesIO(blob))
            assert image.size == (event.width, event.height)
            assert min(image.size) >= 32  # FilterImages enlarges tiles to 32 pixels


def test_gradcheck_report_and_alerts_are_served_as_text(demo, tensorboard):
    served = served_tags(tensorboard, "text")
    missing = set(demo.expected.texts) - served
    assert not missing, f"missing {sorted(missing)}; served {sorted(served)}"
    ea = demo.accumulators["."]
    params = list(demo.result.trainer.backend.parameters())
    for tag in demo.expected.texts:
        entries = tensorboard.json("/data/plugin/text/text?" + q(run=".", tag=tag))
        assert [e["step"] for e in entries] == [e.step for e in ea.Tensors(tag)], tag
        for entry in entries:  # the report names every parameter tensor it checked
            assert all(name in entry["text"] for name in params), entry["text"][:500]

    # every alert the run delivered to its sinks is served under alerts/<code>, at its step
    manager = demo.result.trainer.monitor.alerts
    delivered = [a for a in manager.history if a.severity.rank >= manager.min_severity.rank]
    by_tag: dict[str, list[int]] = {}
    for alert in delivered:
        by_tag.setdefault(f"alerts/{alert.code}/text_summary", []).append(alert.step)
    assert {t for t in served if t.startswith("alerts/")} == set(by_tag)
    for tag, steps in by_tag.items():
        entries = tensorboard.json("/data/plugin/text/text?" + q(run=".", tag=tag))
        assert [e["step"] for e in entries] == [e.step for e in ea.Tensors(tag)], tag
        assert {e["step"] for e in entries} == set(steps), tag
