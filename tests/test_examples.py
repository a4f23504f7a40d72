"""The runnable examples the README points at: each runs and leaves what it promises."""

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script, *args):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def scalar_tags(logdir):
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    ea.Reload()
    return set(ea.Tags()["scalars"])


@pytest.mark.parametrize("script", ["quickstart_trainer.py", "numpy_existing_loop.py"])
def test_numpy_examples_write_the_dashboard(script, tmp_path):
    out = run(script, "--logdir", str(tmp_path), "--epochs", "3")
    assert "validation accuracy" in out
    tags = scalar_tags(tmp_path)
    assert {"loss/train", "accuracy/val"} <= tags
    assert any(t.startswith("update_ratio/") for t in tags)


def test_buggy_backprop_names_the_wrong_tensors(tmp_path):
    out = run("buggy_backprop.py", "--logdir", str(tmp_path))
    assert "sig2.weight" in out and "fc3.weight" in out
    assert "gradcheck.wrong" in out
    assert any(t.startswith("gradcheck/max_rel_error/") for t in scalar_tags(tmp_path))


def test_torch_example_writes_the_same_dashboard(tmp_path):
    pytest.importorskip("torch")
    run("torch_existing_loop.py", "--logdir", str(tmp_path), "--epochs", "2")
    groups = {t.split("/")[0] for t in scalar_tags(tmp_path)}
    assert {"loss", "accuracy", "update_ratio", "gradcheck", "activations"} <= groups


def test_torch_example_adds_at_most_five_statements_to_the_loop():
    """The issue's promise: a conventional loop, instrumented with at most five lines
    (statements) that mention trainwatch or the watcher."""
    import ast

    source = (EXAMPLES / "torch_existing_loop.py").read_text()
    tree = ast.parse(source)
    ours = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)
            and not isinstance(node, (ast.For, ast.With, ast.If, ast.While))
            and any(isinstance(n, ast.Name) and n.id in ("watch", "watcher")
                    or isinstance(n, ast.alias) and n.name == "watch"
                    for n in ast.walk(node))]
    assert 1 <= len(ours) <= 5, [ast.get_source_segment(source, n) for n in ours]
