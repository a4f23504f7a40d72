"""TensorBoardOutput, read back only with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from trainwatch.outputs import HistogramData, MemoryOutput, OutputList, TensorBoardOutput
from trainwatch.outputs.tensorboard import scalar_event_bytes

ALL = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
REPO = Path(__file__).resolve().parents[2]


def read(logdir) -> EventAccumulator:
    ea = EventAccumulator(str(logdir), size_guidance=ALL)
    ea.Reload()
    return ea


def event_files(logdir) -> list[Path]:
    return sorted(Path(logdir).glob("events.out.tfevents.*"))


def decode(image_event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


@pytest.fixture
def out(tmp_path):
    o = TensorBoardOutput(tmp_path, flush_secs=120)  # only flush()/close() reach the disk
    yield o
    o.close()


# -- scalars -------------------------------------------------------------------------------------

def test_scalars_one_event_per_step_with_nonfinite_values(out, tmp_path):
    for step in range(3):
        out.scalars({"loss/train": 1.0 / (step + 1), "lr": 0.1,
                     "bad/nan": float("nan"), "bad/inf": float("inf")}, step)
    out.scalars({"numpy": np.float32(2.5), "int": 7}, 3)
    out.close()
    ea = read(tmp_path)
    loss = ea.Scalars("loss/train")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert all(np.isnan(e.value) for e in ea.Scalars("bad/nan"))
    assert all(e.value == np.inf for e in ea.Scalars("bad/inf"))
    assert ea.Scalars("numpy")[0].value == 2.5 and ea.Scalars("int")[0].value == 7
    # one Summary per step: every tag of a step shares the event's wall time
    for i in range(3):
        walls = {ea.Scalars(t)[i].wall_time for t in ("loss/train", "lr", "bad/nan")}
        assert len(walls) == 1


def test_scalar_events_are_encoded_exactly_as_protobuf_would():
    """The hand-encoded scalar events are byte for byte what building the protobuf messages
    gives: step 0 and negative steps, big steps (multi-byte varints), long and non-ASCII
    tags, NaN, infinities and values beyond float32's range."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    items = [("loss/train", 0.25), ("é/ünïcode", -3.5), ("x" * 300, 1e-40),
             ("nan", float("nan")), ("inf", float("inf")), ("-inf", -float("inf")),
             ("huge", 1e300), ("-huge", -1e300), ("zero", 0.0)]
    heads: dict[str, bytes] = {}
    for step in (0, 1, 127, 128, 300_000, 2**40, -5):
        ours = scalar_event_bytes(1234.5, step, items, heads)
        theirs = Event(wall_time=1234.5, step=step, summary=Summary(value=[
            Summary.Value(tag=k, simple_value=v) for k, v in items])).SerializeToString()
        assert ours == theirs, step
    assert set(heads) == {k for k, _ in items}  # each tag encoded once


def test_buffered_scalars_reach_the_file_within_flush_secs_without_a_flush(tmp_path):
    """Scalars are only buffered by the caller; the flusher thread serialises and writes them
    (one event per step, calls of one step merged) within ``flush_secs``."""
    o = TensorBoardOutput(tmp_path, flush_secs=0.2)
    try:
        o.scalars({"a": 1.0}, 0)
        o.scalars({"b": 2.0}, 0)  # another caller, same step: the same event
        o.scalars({"a": 3.0}, 5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ea = read(tmp_path)
            if "a" in ea.Tags()["scalars"] and len(ea.Scalars("a")) == 2:
                break
            time.sleep(0.1)
        assert [(e.step, e.value) for e in ea.Scalars("a")] == [(0, 1.0), (5, 3.0)]
        assert ea.Scalars("b")[0].wall_time == ea.Scalars("a")[0].wall_time
    finally:
        o.close()


def test_a_write_failing_in_the_flusher_thread_is_reported_by_the_next_write(tmp_path):
    """Scalars are serialised by the flusher thread; if writing fails there, the caller's next
    write raises it, so an OutputList reports it once (an alert in a Monitor) and skips the
    writer from then on."""
    o = TensorBoardOutput(tmp_path, flush_secs=0.1)
    failures = []
    outputs = OutputList([o], on_error=lambda out, method, exc: failures.append((method, exc)))

    def disk_full(record):
        raise OSError(28, "No space left on device")

    o._events._py_recordio_writer.write = disk_full  # where every event reaches the file
    outputs.scalars({"loss": 1.0}, 0)
    deadline = time.monotonic() + 10
    while o._background_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    outputs.scalars({"loss": 0.5}, 1)
    outputs.scalars({"loss": 0.25}, 2)
    assert [m for m, _ in failures] == ["scalars"]
    assert "No space left" in str(failures[0][1]) and o.file_path in str(failures[0][1])
    o.close()


def test_scalar_that_is_not_a_number_is_skipped(out, tmp_path, caplog):
    out.scalars({"good": 1.0, "bad": "not a number", "none": None}, 5)
    out.scalars({"bad": "x"}, 6)  # nothing left to write: no crash
    out.close()
    assert sum("'bad'" in r.getMessage() for r in caplog.records) == 1  # warned once
    ea = read(tmp_path)
    assert ea.Tags()["scalars"] == ["good"]
    assert ea.Scalars("good")[0].step == 5


# -- histograms ----------------------------------------------------------------------------------

def test_histogram_of_raw_values_skips_nonfinite(out, tmp_path):
    v = np.concatenate([np.linspace(-2.0, 3.0, 1000), [np.nan, np.inf, -np.inf]])
    out.histogram("w", v, 4)
    out.histogram("all_nan", np.full(10, np.nan), 4)  # must not raise
    out.close()
    h = read(tmp_path).Histograms("w")[0]
    assert h.step == 4
    hv = h.histogram_value
    assert hv.min == pytest.approx(-2.0) and hv.max == pytest.approx(3.0)
    assert hv.num == 1000 and sum(hv.bucket) == 1000
    assert len(hv.bucket) == 64 == len(hv.bucket_limit)
    assert hv.bucket_limit[-1] == pytest.approx(3.0)  # right edges
    assert hv.sum == pytest.approx(np.linspace(-2.0, 3.0, 1000).sum())


def test_histogram_data_is_written_as_given(out, tmp_path):
    counts = np.array([1.0, 5.0, 2.0])
    edges = np.array([0.0, 1.0, 2.0, 4.0])
    hd = HistogramData(counts, edges, 0.0, 4.0, 8, 13.0, 30.0)
    out.histogram("reduced", hd, 9)
    with pytest.raises(ValueError, match="edges"):
        out.histogram("broken", HistogramData(counts, counts, 0.0, 4.0, 8, 13.0, 30.0), 9)
    out.close()
    hv = read(tmp_path).Histograms("reduced")[0].histogram_value
    assert list(hv.bucket) == [1.0, 5.0, 2.0]
    assert list(hv.bucket_limit) == [1.0, 2.0, 4.0]
    assert (hv.min, hv.max, hv.num, hv.sum, hv.sum_squares) == (0.0, 4.0, 8, 13.0, 30.0)


def test_big_histogram_is_subsampled_deterministically_without_touching_user_rng(tmp_path):
    torch = pytest.importorskip("torch")
    v = np.random.default_rng(5).normal(size=300_000).astype(np.float32)
    v[123_457] = 50.0  # an outlier a sample would likely miss: min/max must stay exact
    v[:10] = np.nan
    np.random.seed(1234)
    random.seed(1234)
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), \
        torch.random.get_rng_state()
    hists = []
    for name in ("a", "b"):
        o = TensorBoardOutput(tmp_path / name, flush_secs=120)
        o.histogram("w", v, 0)
        o.close()
        hists.append(read(tmp_path / name).Histograms("w")[0].histogram_value)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert random.getstate() == py_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    a, b = hists
    assert list(a.bucket) == list(b.bucket)  # deterministic
    finite = v[np.isfinite(v)]
    assert a.max == 50.0 and a.min == pytest.approx(float(finite.min()))
    assert a.num == finite.size
    assert sum(a.bucket) == pytest.approx(finite.size)  # sample counts scaled to the data
    assert a.sum == pytest.approx(float(finite.sum()), abs=5 * finite.size / 1e5 ** 0.5)


# -- images, text, figures -----------------------------------------------------------------------

def test_images_in_every_layout_are_clipped_not_wrapped(out, tmp_path):
    hw = np.full((4, 6), 1.5)
    hw[0, 0], hw[0, 1], hw[0, 2] = -0.5, np.nan, 0.5
    out.image("hw", hw, 1)
    out.image("hwc", np.full((5, 7, 3), 0.25, dtype=np.float32), 1)
    chw = np.zeros((3, 8, 9), dtype=np.float32)
    chw[0] = 1.0  # red
    out.image("chw", chw, 1)
    out.image("chw1", np.ones((1, 2, 3)), 1)
    u8 = np.zeros((4, 5, 3), dtype=np.uint8)
    u8[..., 2] = 200
    out.image("uint8", u8, 1)
    ambiguous = np.zeros((3, 2, 3), dtype=np.uint8)  # CHW and HWC both fit: read as CHW
    ambiguous[1] = 255
    out.image("ambiguous", ambiguous, 1)
    for bad in (np.zeros((2, 3, 4, 5)), np.zeros((5, 6, 7)), np.zeros((0, 3))):
        with pytest.raises(ValueError):
            out.image("bad", bad, 1)
    out.close()
    ea = read(tmp_path)
    sizes = {t: (ea.Images(t)[0].width, ea.Images(t)[0].height) for t in ea.Tags()["images"]}
    assert sizes == {"hw": (6, 4), "hwc": (7, 5), "chw": (9, 8), "chw1": (3, 2),
                     "uint8": (5, 4), "ambiguous": (3, 2)}
    px = decode(ea.Images("hw")[0])
    assert px.shape == (4, 6, 3)
    assert px[1, 1].tolist() == [255, 255, 255]  # 1.5 -> 255 (tensorboardX alone gives 126)
    assert px[0, 0].tolist() == [0, 0, 0]  # -0.5 -> 0 (tensorboardX alone gives 129)
    assert px[0, 1].tolist() == [0, 0, 0]  # NaN -> 0
    assert px[0, 2].tolist() == [128, 128, 128]
    assert decode(ea.Images("hwc")[0])[0, 0].tolist() == [64, 64, 64]
    assert decode(ea.Images("chw")[0])[3, 3].tolist() == [255, 0, 0]
    assert decode(ea.Images("uint8")[0])[1, 1].tolist() == [0, 0, 200]
    assert decode(ea.Images("ambiguous")[0])[1, 2].tolist() == [0, 255, 0]


def test_text_is_stored_as_markdown_tensor(out, tmp_path):
    md = "## report\n\n| layer | ratio |\n|---|---|\n| fc1 | 1e-3 |"
    out.text("notes", md, 12)
    out.close()
    ev = read(tmp_path).Tensors("notes/text_summary")[0]
    assert ev.step == 12
    assert ev.tensor_proto.string_val[0].decode() == md


def test_figure_is_rendered_as_image_and_left_open(out, tmp_path):
    import matplotlib.pyplot as plt

    fig = Figure(figsize=(2, 1), dpi=50)  # not pyplot-managed: a temporary Agg canvas
    fig.add_subplot().plot([0, 1], [1, 0])
    canvas = fig.canvas
    out.figure("plain", fig, 3)
    assert fig.canvas is canvas  # the figure's own canvas is put back

    pfig = plt.figure(figsize=(1.5, 1), dpi=40)
    pfig.add_subplot().imshow(np.eye(3))
    out.figure("pyplot", pfig, 3)
    assert plt.fignum_exists(pfig.number)  # not closed by the output itself
    OutputList([out]).figure("pyplot2", pfig, 4)
    assert not plt.fignum_exists(pfig.number)  # OutputList closes figures
    out.close()
    ea = read(tmp_path)
    img = ea.Images("plain")[0]
    assert (img.width, img.height, img.step) == (100, 50, 3)
    assert decode(img).std() > 0  # something was drawn
    assert (ea.Images("pyplot")[0].width, ea.Images("pyplot")[0].height) == (60, 40)


# -- custom scalars layout -----------------------------------------------------------------------

def _layouts(ea: EventAccumulator) -> list[dict]:
    found = []
    for ev in ea.Tensors("custom_scalars__config__"):
        lay = layout_pb2.Layout.FromString(ev.tensor_proto.string_val[0])
        found.append({c.title: {ch.title: (list(ch.multiline.tag) or
                                           [ch.margin.series[0].value,
                                            ch.margin.series[0].lower,
                                            ch.margin.series[0].upper])
                                for ch in c.chart} for c in lay.category})
    return found


def test_layout_merges_and_is_written_once_per_change(out, tmp_path):
    loss = {"loss": {"training loss": ("Multiline", [r"^loss/train$", r"^loss/val$"])}}
    out.layout(loss)
    out.layout(loss)  # unchanged: nothing written
    out.layout({"accuracy": {"train vs val": ["Multiline", [r"^accuracy/.*"]]},
                "loss": {"band": ("Margin", ["loss/mean", "loss/lo", "loss/hi"])}})
    with pytest.raises(ValueError):
        out.layout({"x": {"y": ("Pie", ["a"])}})
    with pytest.raises(ValueError):
        out.layout({"x": {"y": ("Margin", ["a", "b"])}})
    out.close()
    layouts = _layouts(read(tmp_path))
    assert len(layouts) == 2
    assert layouts[0] == {"loss": {"training loss": [r"^loss/train$", r"^loss/val$"]}}
    assert layouts[-1] == {
        "loss": {"training loss": [r"^loss/train$", r"^loss/val$"],
                 "band": ["loss/mean", "loss/lo", "loss/hi"]},
        "accuracy": {"train vs val": [r"^accuracy/.*"]},
    }


# -- files, flush, close -------------------------------------------------------------------------

def test_two_writers_in_one_folder_in_the_same_second_both_survive(tmp_path):
    for _ in range(5):  # retry if the pair straddles a second boundary
        d = tmp_path / f"try{_}"
        a, b = TensorBoardOutput(d), TensorBoardOutput(d)
        same_second = a.file_path.split(".")[3] == b.file_path.split(".")[3]
        a.scalars({"from_a": 1.0}, 0)
        b.scalars({"from_b": 2.0}, 0)
        a.close()
        b.close()
        if same_second:
            break
    assert same_second
    assert len(event_files(d)) == 2
    ea = read(d)
    assert ea.Scalars("from_a")[0].value == 1.0 and ea.Scalars("from_b")[0].value == 2.0


def test_flush_is_a_barrier(out, tmp_path):
    for i in range(10):
        out.scalars({"loss": float(i)}, i)
    out.histogram("h", np.arange(100.0), 10)
    out.flush()  # flush_secs=120: only a real barrier gets these to disk now
    ea = read(tmp_path)
    assert [e.step for e in ea.Scalars("loss")] == list(range(10))
    assert ea.Histograms("h")[0].histogram_value.num == 100


def test_close_is_idempotent_and_later_writes_are_ignored(tmp_path, caplog):
    o = TensorBoardOutput(tmp_path, flush_secs=120)
    o.scalars({"x": 1.0}, 0)
    o.close()
    o.close()
    assert o.closed
    o.scalars({"x": 2.0}, 1)  # no crash, no new event file (tensorboardX would reopen one)
    o.text("t", "late", 1)
    o.flush()
    assert len(event_files(tmp_path)) == 1
    assert [e.value for e in read(tmp_path).Scalars("x")] == [1.0]
    assert sum("closed" in r.getMessage() for r in caplog.records) == 1


def test_memory_and_tensorboard_reject_the_same_bad_input(out):
    mem = MemoryOutput()
    for o in (out, mem):
        with pytest.raises(ValueError):
            o.image("bad", np.zeros((2, 2, 2)), 0)
        with pytest.raises(ValueError):
            o.layout({"c": {"chart": ("Multiline", [])}})


# -- durability across process death (children skip `import torch`: 2 s each otherwise) -----

CHILD_PRELUDE = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.modules["torch"] = None  # tensorboardX works without torch; saves ~2 s of import
    import numpy as np
    from trainwatch.outputs import TensorBoardOutput
""")


def _run_child(body: str, logdir: Path, *, sigterm: bool = False) -> int:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", code, str(logdir)], stdout=subprocess.PIPE,
                         text=True, env=env, cwd=REPO)
    try:
        if sigterm:
            assert p.stdout.readline().strip() == "READY"
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()


def _assert_ten(logdir: Path) -> None:
    ea = read(logdir)
    assert [e.step for e in ea.Scalars("loss")] == list(range(10))
    assert [e.value for e in ea.Scalars("loss")] == pytest.approx([1 / (i + 1) for i in range(10)])


def test_data_flushed_before_sigkill_is_readable(tmp_path):
    rc = _run_child("""
        out = TensorBoardOutput(sys.argv[1], flush_secs=120)
        for i in range(10):
            out.scalars({"loss": 1.0 / (i + 1)}, i)
        out.histogram("h", np.arange(1000.0), 10)  # written last: its CRC must land too
        out.image("im", np.ones((3, 8, 8)), 10)
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path)
    assert rc == -signal.SIGKILL
    _assert_ten(tmp_path)
    ea = read(tmp_path)
    assert ea.Histograms("h")[0].histogram_value.num == 1000
    assert ea.Images("im")[0].width == 8


def test_sigterm_closes_writers_and_still_terminates(tmp_path):
    rc = _run_child("""
        out = TensorBoardOutput(sys.argv[1], flush_secs=120)
        for i in range(10):
            out.scalars({"loss": 1.0 / (i + 1)}, i)
        print("READY", flush=True)
        time.sleep(30)
    """, tmp_path, sigterm=True)
    assert rc == -signal.SIGTERM
    _assert_ten(tmp_path)


def test_sigterm_chains_to_the_previous_handler(tmp_path):
    rc = _run_child("""
        def graceful(signum, frame):
            open(os.path.join(sys.argv[1], "handler_ran"), "w").close()
            raise SystemExit(7)
        signal.signal(signal.SIGTERM, graceful)
        out = TensorBoardOutput(sys.argv[1], flush_secs=120)
        for i in range(10):
            out.scalars({"loss": 1.0 / (i + 1)}, i)
        print("READY", flush=True)
        time.sleep(30)
    """, tmp_path, sigterm=True)
    assert rc == 7
    assert (tmp_path / "handler_ran").exists()
    _assert_ten(tmp_path)


def test_normal_exit_without_close_keeps_everything(tmp_path):
    rc = _run_child("""
        out = TensorBoardOutput(sys.argv[1], flush_secs=120)
        for i in range(10):
            out.scalars({"loss": 1.0 / (i + 1)}, i)
        print(json.dumps(out.file_path))
    """, tmp_path)
    assert rc == 0
    _assert_ten(tmp_path)


def test_importing_outputs_does_not_import_tensorboardx():
    code = "import sys, trainwatch.outputs; print('tensorboardX' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False"]


def test_flush_returns_quickly(out):
    out.scalars({"x": 1.0}, 0)
    t0 = time.perf_counter()
    out.flush()
    assert time.perf_counter() - t0 < 1.0


def test_encode_png_round_trips_through_pillow():
    import io

    from PIL import Image

    from trainwatch.outputs.tensorboard import encode_png

    rng = np.random.default_rng(0)
    for shape in [(5, 7, 1), (9, 4, 3), (6, 4, 4)]:
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
        np.testing.assert_array_equal(decoded.reshape(shape), pixels)
