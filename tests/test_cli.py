"""The README's first command: `trainwatch demo` from the console script."""

import json
import os
import shutil
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def trainwatch_command():
    exe = shutil.which("trainwatch", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "trainwatch"]


def test_demo_writes_a_readable_logdir_and_learns_the_digits(tmp_path):
    logdir = tmp_path / "demo"
    done = subprocess.run([*trainwatch_command(), "demo", "--logdir", str(logdir),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tensorboard" in done.stdout and str(logdir) in done.stdout
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val"} <= scalars
    val = [e.value for e in ea.Scalars("accuracy/val")]
    assert len(val) == 20 and val[-1] >= 0.95
    losses = [e.value for e in ea.Scalars("loss/train")]
    assert losses[-1] < losses[0] / 5
    # the default run is healthy: no alert at all
    lines = (logdir / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["code"] for line in lines] == []


def test_demo_with_a_learning_rate_far_too_high_reports_it_once_per_tensor(tmp_path):
    logdir = tmp_path / "lr5"
    done = subprocess.run([*trainwatch_command(), "demo", "--logdir", str(logdir), "--lr", "5",
                           "--epochs", "4", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alerts = [json.loads(line) for line in (logdir / "alerts.jsonl").read_text().splitlines()]
    high = [a for a in alerts if a["code"] == "update_ratio.high" and not a["resolved"]]
    assert high and max(a["step"] for a in high) <= 40  # early: within two checks
    tensors = [a["tensor"] for a in high]
    assert len(tensors) == len(set(tensors))  # once per tensor, not once per step


def test_bad_arguments_fail_with_the_argument_named():
    done = subprocess.run([*trainwatch_command(), "demo", "--lr", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--lr" in done.stderr
