"""Step-size sweep: classification, figure, JSON, and its use from check_gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.figure import Figure

from trainwatch.gradcheck import SweepResult, check_gradients, sweep
from trainwatch.gradcheck.sweep import DEFAULT_STEPS, classify

from .test_zoo import (
    BAD_ENTRY,
    make_bias_before_norm,
    make_bias_mean_not_sum,
    make_float32_factor_bug,
    make_relu_kinks_signature,
    make_single_entry_bug,
    make_tanh_mlp,
    make_unseeded_dropout,
)


def test_correct_smooth_model_is_truncation_or_round_off():
    case = make_tanh_mlp()
    result = sweep(case.loss_fn, case.params, case.grads, entries=2)
    assert isinstance(result, SweepResult)
    assert result.steps == list(DEFAULT_STEPS)
    assert len(result.entries) == 2 * len(case.params)
    for entry in result.entries:
        assert entry.classification in ("truncation", "round-off"), str(result)
        assert len(entry.errors) == len(result.steps)
        # truncation regime: the error falls ~100x per decade from h=1e-1 to 1e-3
        assert entry.errors[0] / entry.errors[2] > 1e3 or entry.errors[0] < 1e-10


def test_zero_true_gradient_is_round_off_not_bug():
    case = make_bias_before_norm()
    result = sweep(case.loss_fn, case.params, case.grads, names=["b1"], entries=2)
    assert [entry.name for entry in result.entries] == ["b1", "b1"]
    assert all(entry.classification == "round-off" for entry in result.entries)


def test_buggy_entries_are_flat_and_classified_bug():
    case = make_bias_mean_not_sum()
    result = sweep(case.loss_fn, case.params, case.grads, names=["b2", "W2"], entries=1)
    by_name = {entry.name: entry for entry in result.entries}
    assert by_name["b2"].classification == "bug"
    errors = np.array(by_name["b2"].errors)
    assert errors.max() / errors.min() < 1.01  # flat as h shrinks
    assert by_name["W2"].classification in ("truncation", "round-off")


def test_float32_bug_is_a_bug_and_small_steps_are_skipped():
    case = make_float32_factor_bug()
    result = sweep(case.loss_fn, case.params, case.grads, names=["W2", "b2"], entries=1)
    assert result.precision == "float32"
    by_name = {entry.name: entry for entry in result.entries}
    assert by_name["W2"].classification == "bug"
    assert by_name["b2"].classification != "bug"


def test_kinks_are_classified_kink_with_a_signature():
    case = make_relu_kinks_signature()
    result = sweep(case.loss_fn, case.params, case.grads, names=["b1"], entries=2)
    assert all(entry.classification == "kink" for entry in result.entries), str(result)


def test_classify_rules():
    steps = list(DEFAULT_STEPS)
    flat = [0.5] * 10
    smooth = [min(1.0, 1e-1 * s ** 2 / 1e-2) + 1e-16 / s for s in steps]
    yes, no = [True] * 10, [False] * 10
    thresholds = (1e-2, 1e-4, 1e-7)
    assert classify(steps, flat, flat, yes, no, 1e-5, thresholds)[0] == "bug"
    kind, best_h, _ = classify(steps, smooth, smooth, yes, no, 1e-5, thresholds)
    assert kind in ("truncation", "round-off")
    assert classify(steps, smooth, smooth, yes, no, 1e-2, thresholds)[0] == "truncation"
    assert classify(steps, smooth, smooth, yes, no, 1e-9, thresholds)[0] == "round-off"
    uninformative = classify(steps, flat, flat, no, no, 1e-5, thresholds)
    assert uninformative[0] != "bug"


def test_figure_has_one_line_per_entry_and_json():
    case = make_single_entry_bug()
    result = sweep(case.loss_fn, case.params, case.grads, names=["W1", "b2"], entries=2,
                   indices={"W1": [BAD_ENTRY]})
    fig = result.figure()
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_lines()) == len(result.entries) == 4
    assert result.entries[0].index == BAD_ENTRY  # the given candidate is the worst
    assert result.entries[0].classification == "bug"
    json.dumps(result.to_dict(), allow_nan=False)
    assert "W1[17, 23]" in str(result)


def test_check_gradients_attaches_a_sweep_of_the_failing_tensors():
    case = make_single_entry_bug()
    report = check_gradients(case.loss_fn, case.params, case.grads, sweep=True, coordinates=0)
    assert report.sweep is not None
    assert {entry.name for entry in report.sweep.entries} == {"W1"}
    assert report.sweep.entries[0].index == BAD_ENTRY
    assert report.sweep.entries[0].classification == "bug"
    assert "step sweep" in str(report)
    json.dumps(report.to_dict(), allow_nan=False)


def test_sweep_validates_and_handles_nondeterminism():
    case = make_tanh_mlp()
    with pytest.raises(ValueError, match="names: not in params"):
        sweep(case.loss_fn, case.params, case.grads, names=["W9"])
    with pytest.raises(ValueError, match="entries: must be an integer >= 1"):
        sweep(case.loss_fn, case.params, case.grads, entries=0)
    with pytest.raises(TypeError, match="unknown option"):
        sweep(case.loss_fn, case.params, case.grads, step=3)
    drop = make_unseeded_dropout()
    result = sweep(drop.loss_fn, drop.params, drop.grads)
    assert result.entries == []
    assert "random at a fixed point" in result.notes[0]
