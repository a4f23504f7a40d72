"""Engine behaviour: options, non-interference, report format, probes statistics, kinks,
retries, depth allowance, precision, nondeterminism."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from trainwatch.gradcheck import (
    DEFAULTS,
    VERDICTS,
    CheckTimeout,
    GradCheckReport,
    TensorCheck,
    check_gradients,
)
from trainwatch.gradcheck.engine import level, unit_direction

from .test_zoo import (
    make_factor_two_loss_gradient,
    make_float32_returns_float32,
    make_reg_wrong_factor,
    make_relu_kinks_signature,
    make_tanh_mlp,
    make_unseeded_dropout,
)


def quadratic(n: int = 50, seed: int = 0, scale: float = 1.0):
    """J(w) = 0.5·Σ c_i w_i² + Σ s_i w_i (float64): gradient c·w + s, exact centered
    differences up to round-off; ``scale`` scales c and s (and so the gradient)."""
    rng = np.random.default_rng(seed)
    c = scale * rng.uniform(0.5, 2.0, n)
    s = scale * rng.standard_normal(n)
    w = rng.standard_normal(n)

    def loss_fn(p):
        return float(0.5 * np.sum(c * p["w"] ** 2) + np.sum(s * p["w"]))

    return loss_fn, {"w": w}, {"w": c * w + s}


# ------------------------------------------------------------------------------------------
# options and inputs


def test_option_values_are_validated_with_the_argument_named():
    case = make_tanh_mlp()
    run = lambda **kw: check_gradients(case.loss_fn, case.params, case.grads, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"^h: must be > 0, got 0$"):
        run(h=0)
    with pytest.raises(ValueError, match=r"^h_float32: must be > 0"):
        run(h_float32=-1e-3)
    with pytest.raises(ValueError, match=r"^coordinates: must be an integer >= 0"):
        run(coordinates=-1)
    with pytest.raises(ValueError, match=r"^directions: must be an integer >= 0"):
        run(directions=1.5)
    with pytest.raises(ValueError, match=r"^thresholds: .*decreasing"):
        run(thresholds=(1e-4, 1e-2, 1e-7))
    with pytest.raises(ValueError, match=r"^repeats: must be an integer >= 2"):
        run(repeats=1)
    with pytest.raises(ValueError, match=r"^precision: must be one of"):
        run(precision="float8")
    with pytest.raises(ValueError, match=r"^depth_allowance: must be >= 1"):
        run(depth_allowance=0.5)
    with pytest.raises(ValueError, match=r"^localize: must be True or False"):
        run(localize="yes")
    with pytest.raises(ValueError, match=r"^max_seconds: must be > 0"):
        run(max_seconds=0)
    with pytest.raises(ValueError, match=r"^seed: must be an integer >= 0"):
        run(seed=-3)
    with pytest.raises(ValueError, match=r"^reg_fn, reg_grads: give both"):
        run(reg_fn=lambda p: 0.0)


def test_max_seconds_stops_the_check_with_an_estimate_of_its_whole_length():
    """A check that cannot fit in ``max_seconds`` stops as soon as three evaluations show it
    (not after running for ``max_seconds``), raising CheckTimeout with what it did and the
    whole check's time extrapolated from the evaluations it planned."""
    import time

    case = make_tanh_mlp()

    def slow(params):  # a loss that costs 2 ms, so the timing dominates everything else
        time.sleep(0.002)
        return case.loss_fn(params)

    full = check_gradients(slow, case.params, case.grads, seed=1)
    assert full.passed
    with pytest.raises(CheckTimeout) as stopped:
        check_gradients(slow, case.params, case.grads, seed=1, max_seconds=0.05)
    t = stopped.value
    assert t.evaluations == 3 and t.seconds < 0.05
    assert t.estimated_seconds == pytest.approx(full.seconds, rel=0.35)
    assert "would take about" in str(t)
    # a limit the check stays within changes nothing
    again = check_gradients(slow, case.params, case.grads, seed=1, max_seconds=60.0)
    assert again.to_dict() | {"seconds": 0} == full.to_dict() | {"seconds": 0}


def test_max_seconds_leaves_the_first_evaluation_out_of_the_extrapolation():
    """A slow first evaluation (one-off costs), or another one slowed down once, does not
    stop a check whose other evaluations fit; a check past the limit itself stops whatever
    the extrapolation."""
    import time

    case = make_tanh_mlp()
    calls = []

    def first_slow(params):
        calls.append(1)
        time.sleep(0.03 if len(calls) in (1, 2) else 0.0002)
        return case.loss_fn(params)

    report = check_gradients(first_slow, case.params, case.grads, seed=1, max_seconds=0.5)
    assert report.passed and report.evaluations == len(calls) > 10

    def slower(params):
        time.sleep(0.004)
        return case.loss_fn(params)

    with pytest.raises(CheckTimeout) as stopped:
        check_gradients(slower, case.params, case.grads, seed=1, max_seconds=0.001)
    assert stopped.value.evaluations == 1  # past the limit after the first one


def test_a_known_evaluation_time_stops_a_check_that_cannot_fit_before_its_first_evaluation():
    """With ``evaluation_seconds`` (a lower bound known beforehand), a check whose planned
    evaluations cannot fit ``max_seconds`` stops without calling the loss; one that fits runs
    as without it."""
    case = make_tanh_mlp()
    calls = []

    def counted(params):
        calls.append(1)
        return case.loss_fn(params)

    full = check_gradients(counted, case.params, case.grads, seed=1)
    planned = len(calls)
    calls.clear()
    with pytest.raises(CheckTimeout) as stopped:
        check_gradients(counted, case.params, case.grads, seed=1, max_seconds=1.0,
                        evaluation_seconds=0.1)
    assert calls == [] and stopped.value.evaluations == 0
    assert stopped.value.estimated_seconds == pytest.approx(0.1 * planned)
    fits = check_gradients(counted, case.params, case.grads, seed=1, max_seconds=60.0,
                           evaluation_seconds=1e-4)
    assert fits.to_dict() | {"seconds": 0} == full.to_dict() | {"seconds": 0}
    with pytest.raises(ValueError, match=r"^evaluation_seconds: must be > 0"):
        check_gradients(counted, case.params, case.grads, evaluation_seconds=-1)


def test_unknown_options_raise_type_error_naming_all_of_them():
    case = make_tanh_mlp()
    with pytest.raises(TypeError) as info:
        check_gradients(case.loss_fn, case.params, case.grads, step=1e-5, coords=3)
    message = str(info.value)
    assert "'step'" in message and "'coords'" in message
    assert "did you mean 'coordinates'" in message


def test_inputs_are_validated():
    case = make_tanh_mlp()
    grads = dict(case.grads)
    del grads["b2"]
    with pytest.raises(ValueError, match=r"grads: keys must match params; missing \['b2'\]"):
        check_gradients(case.loss_fn, case.params, grads)
    bad_shape = dict(case.grads, W1=case.grads["W1"].T)
    with pytest.raises(ValueError, match=r"grads\['W1'\]: shape"):
        check_gradients(case.loss_fn, case.params, bad_shape)
    with pytest.raises(ValueError, match=r"params\['n'\]: must be a floating-point array"):
        check_gradients(lambda p: 0.0, {"n": np.arange(3)}, {"n": np.zeros(3)})
    with pytest.raises(TypeError, match="loss_fn: must be callable"):
        check_gradients(None, case.params, case.grads)
    with pytest.raises(ValueError, match="loss_fn: must return a scalar"):
        check_gradients(lambda p: p["W1"], case.params, case.grads)


def test_defaults_are_documented_values():
    assert DEFAULTS["h"] == 1e-5
    assert DEFAULTS["thresholds"] == (1e-2, 1e-4, 1e-7)
    assert DEFAULTS["retry_factors"] == (10.0, 0.1)
    assert DEFAULTS["depth_allowance"] == 1.0


# ------------------------------------------------------------------------------------------
# non-interference


def test_params_and_grads_are_never_modified():
    case = make_tanh_mlp()
    params_before = copy.deepcopy(case.params)
    grads_before = copy.deepcopy(case.grads)
    check_gradients(case.loss_fn, case.params, case.grads, sweep=True)
    for name in params_before:
        assert np.array_equal(case.params[name], params_before[name])
        assert np.array_equal(case.grads[name], grads_before[name])


def test_float32_params_keep_their_dtype_and_values():
    case = make_float32_returns_float32()
    before = {name: value.copy() for name, value in case.params.items()}
    check_gradients(case.loss_fn, case.params, case.grads)
    for name, value in case.params.items():
        assert value.dtype == np.float32
        assert np.array_equal(value, before[name])


def test_a_loss_fn_that_writes_into_its_input_cannot_touch_the_callers_arrays():
    loss_fn, params, grads = quadratic()
    before = params["w"].copy()

    def vandal(p):
        value = loss_fn(p)
        p["w"][0] = 1e9  # the engine restores its own copy; the caller's array is never passed
        return value

    check_gradients(vandal, params, grads)
    assert np.array_equal(params["w"], before)


# ------------------------------------------------------------------------------------------
# the report


def test_report_fields_and_json():
    case = make_reg_wrong_factor()
    report = check_gradients(case.loss_fn, case.params, case.grads, reg_fn=case.reg_fn,
                             reg_grads=case.reg_grads, sweep=True)
    assert isinstance(report, GradCheckReport)
    assert list(report.params) == list(case.params)  # layer order
    for check in list(report.params.values()) + list(report.regularization.values()):
        assert isinstance(check, TensorCheck)
        assert check.verdict in VERDICTS
        assert isinstance(check.worst_index, tuple)
        assert isinstance(check.probed, int) and check.probed >= 1
        assert isinstance(check.kinks, int)
        assert isinstance(check.notes, list)
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["failed"] == ["W1 (regularization)"]
    assert data["sweep"]["entries"]
    assert report.worst().name == "W1"
    assert report.worst() is report.regularization["W1"]


def test_json_of_nondeterministic_and_kink_only_reports():
    drop = make_unseeded_dropout()
    report = check_gradients(drop.loss_fn, drop.params, drop.grads)
    json.dumps(report.to_dict(), allow_nan=False)
    assert report.worst() is None
    kinks = make_relu_kinks_signature()
    json.dumps(check_gradients(kinks.loss_fn, kinks.params, kinks.grads).to_dict(),
               allow_nan=False)


def test_str_is_a_table_in_layer_order():
    case = make_factor_two_loss_gradient()
    report = check_gradients(case.loss_fn, case.params, case.grads)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("gradient check FAILED")
    header = lines[1].split()
    assert header[:3] == ["tensor", "verdict", "max"]
    for column in ("worst", "analytic", "numerical", "probed", "kinks"):
        assert column in lines[1]
    positions = [text.index(f"\n{name} ") for name in case.params]
    assert positions == sorted(positions)
    assert "failed: W1, b1, W2, b2" in text
    assert "notes:" in text


def test_level_ladder():
    thresholds = (1e-2, 1e-4, 1e-7)
    assert level(0.0, thresholds) == "correct"
    assert level(1e-8, thresholds) == "correct"
    assert level(1e-5, thresholds) == "acceptable"
    assert level(1e-3, thresholds) == "suspicious"
    assert level(0.5, thresholds) == "wrong"
    assert level(float("nan"), thresholds) == "wrong"


# ------------------------------------------------------------------------------------------
# probes


def test_every_tensor_is_probed_small_ones_completely():
    case = make_tanh_mlp()  # W1 5x8 (40), b1 8, W2 8x3 (24), b2 3
    report = check_gradients(case.loss_fn, case.params, case.grads, coordinates=10)
    assert report.params["b1"].probed == 8 and report.params["b1"].directions == 0
    assert report.params["b2"].probed == 3
    assert report.params["W1"].probed == 13 and report.params["W1"].directions == 3
    assert len(report.params["W1"].coordinates) == 10


def test_the_largest_entry_is_always_sampled_and_the_sample_follows_the_seed():
    case = make_tanh_mlp()
    g = case.grads["W1"]
    largest = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(g)), g.shape))
    samples = set()
    for seed in range(4):
        report = check_gradients(case.loss_fn, case.params, case.grads, seed=seed,
                                 coordinates=4)
        coords = report.params["W1"].coordinates
        assert largest in coords
        samples.add(tuple(coords))
        again = check_gradients(case.loss_fn, case.params, case.grads, seed=seed,
                                coordinates=4)
        assert again.params["W1"].coordinates == coords  # reproducible from the seed
    assert len(samples) > 1  # fresh draws for each seed


def test_unit_directions_have_a_floor():
    d = unit_direction(np.random.default_rng(0), 10_000)
    assert np.linalg.norm(d) == pytest.approx(1.0)
    assert np.min(np.abs(d)) >= 0.1 / np.sqrt(10_000) * (1 - 1e-12)


def _one_wrong_entry(n: int, seed: int, factor: float):
    """Linear-quadratic loss over n entries, gradient entries ~0.01 (as in the anchor
    simulation), wrong by ``factor`` in one entry of typical size."""
    loss_fn, params, grads = quadratic(n, seed, scale=0.01)
    g = grads["w"].copy()
    rms = np.sqrt(np.mean(g ** 2))
    index = int(np.argmin(np.abs(np.abs(g) - rms)))
    g[index] *= factor
    return loss_fn, params, {"w": g}, index


@pytest.mark.parametrize("factor", [2.0, 0.0])
def test_directions_catch_one_wrong_entry_in_a_large_tensor(factor):
    """With no coordinate samples at all, every trial must fail and locate the entry."""
    for seed in range(25):
        loss_fn, params, grads, index = _one_wrong_entry(20_000, seed, factor)
        report = check_gradients(loss_fn, params, grads, seed=seed, coordinates=0)
        check = report.params["w"]
        assert check.verdict == "wrong", (seed, str(report))
        assert check.worst_index == (index,)


def test_fast_mode_rule_would_miss_what_gaussian_directions_catch():
    """PyTorch fast gradcheck: u ~ U[0,1) normalised, |num - ana| <= atol·Σu + rtol·|ana|
    (atol 1e-5, rtol 1e-3). For a doubled entry in 20,000 it passes most trials; ours fails
    all of them (test above)."""
    misses = 0
    for seed in range(25):
        loss_fn, params, grads, _ = _one_wrong_entry(20_000, seed, 2.0)
        rng = np.random.default_rng(seed)
        u = rng.random(20_000)
        u /= np.linalg.norm(u)
        w = params["w"]
        h = 1e-6
        numerical = (loss_fn({"w": w + h * u}) - loss_fn({"w": w - h * u})) / (2 * h)
        analytic = float(grads["w"] @ u)
        if abs(numerical - analytic) <= 1e-5 * u.sum() + 1e-3 * abs(analytic):
            misses += 1
    assert misses >= 20


def test_retry_at_other_steps_before_condemning():
    """A kink at 3e-6 from the point: h=1e-5 straddles it, h=1e-6 does not."""
    def loss_fn(p):
        w = p["w"]
        return float(np.sum(np.maximum(w - 3e-6, 0.0)) + np.sum(-0.5 * w))

    params = {"w": np.zeros(3)}
    grads = {"w": np.full(3, -0.5)}
    report = check_gradients(loss_fn, params, grads)
    check = report.params["w"]
    assert report.passed, str(report)
    assert check.verdict == "correct"
    assert any("agree at another step" in note for note in check.notes)


def test_kinks_without_signature_are_recognised_from_several_steps():
    """|w| at exactly w = 0 (analytic convention 1): every step gives 0."""
    params = {"w": np.array([0.0, 1.0])}
    grads = {"w": np.array([1.0, 1.0])}
    report = check_gradients(lambda p: float(np.sum(np.abs(p["w"]))), params, grads)
    check = report.params["w"]
    assert report.passed, str(report)
    assert check.verdict == "kink" and check.kinks == 1
    assert any("kink" in note for note in check.notes)


def test_kink_detection_can_be_turned_off():
    params = {"w": np.array([0.0, 1.0])}
    grads = {"w": np.array([1.0, 1.0])}
    report = check_gradients(lambda p: float(np.sum(np.abs(p["w"]))), params, grads,
                             kink_detection=False)
    assert report.failed == ["w"]


def test_a_real_bug_is_not_excused_as_a_kink():
    """A smooth function with a wrong gradient: the steps agree with each other, so no kink."""
    loss_fn, params, grads = quadratic(8)
    grads = {"w": grads["w"] * 1.5}
    report = check_gradients(loss_fn, params, grads)
    assert report.params["w"].verdict == "wrong"
    assert report.params["w"].kinks == 0


def test_a_kink_within_both_steps_is_judged_on_the_side_that_keeps_the_pattern():
    """Entries 1e-8 from a ReLU's kink: ±h crosses it at h and at h/10, but one side keeps
    the checked point's pattern (the piece the gradient is of): judged one-sided there,
    a right gradient is correct and a wrong one is caught."""
    def loss_fn(p):
        w = p["w"]
        return float(np.sum(np.maximum(w, 0.0) ** 2 + w)), w > 0

    w = np.array([1e-8, -2e-8, 1.0, -1.0])
    right = 2 * np.maximum(w, 0.0) + 1.0
    check = check_gradients(loss_fn, {"w": w}, {"w": right}).params["w"]
    assert check.verdict == "correct" and check.kinks == 0
    assert any("sat on a kink at the checked point" in note for note in check.notes)
    wrong = right + np.array([0.0, 0.5, 0.0, 0.0])  # the entry just below its kink
    check = check_gradients(loss_fn, {"w": w}, {"w": wrong}).params["w"]
    assert check.verdict == "wrong" and check.worst_index == (1,), check


def test_signature_straddles_are_set_aside_when_no_side_keeps_the_pattern():
    """Exactly on a kink whose pattern has a state of its own there (``|w|`` at 0: sign 0,
    where a subgradient takes neither side): both ±h change it, nothing is left to compare
    (the subgradients ±0.5 are no centered difference's 0, nor either side's ±1)."""
    def loss_fn(p):
        w = p["w"]
        return float(np.sum(np.abs(w))), np.sign(w)

    params = {"w": np.array([0.0, 0.0, 1.0, -1.0])}
    grads = {"w": np.array([0.5, -0.5, 1.0, -1.0])}
    report = check_gradients(loss_fn, params, grads)
    check = report.params["w"]
    assert report.passed
    assert check.kinks == 2
    assert check.verdict == "kink"


def test_a_tensor_whose_every_direction_crossed_a_kink_is_judged_by_its_largest_entry():
    """A kink that every move of all entries at once crosses, and a move of one entry never
    does: with directions only, the largest-gradient entry is probed as a coordinate and
    the wrong gradient is still caught (and a right one still passes)."""
    theta = np.linspace(-1.0, 1.0, 50)

    def loss_fn(p):
        moved = p["w"] - theta  # (a move of several entries changes the pattern either way)
        crossed = np.sign(moved.sum()) if np.count_nonzero(moved) > 1 else 0.0
        # (+1: a loss of 0, Σw³ over a symmetric θ, has no round-off floor to go by)
        return float(np.sum(p["w"] ** 3) + 1.0), np.array([crossed])

    params = {"w": theta.copy()}
    right = 3 * theta ** 2
    for grads, verdict in (({"w": right}, "correct"), ({"w": 2 * right}, "wrong")):
        check = check_gradients(loss_fn, params, grads, coordinates=0, directions=1).params["w"]
        assert check.directions == 1 and check.kinks == 1
        assert list(check.coordinates) == [(int(np.argmax(np.abs(right))),)]
        assert check.verdict == verdict, check


def test_depth_allowance_loosens_the_first_tensors_most():
    case = make_tanh_mlp()
    grads = dict(case.grads)
    grads["W1"] = grads["W1"] * (1 + 1e-3)  # rel error 1e-3: "suspicious"
    grads["b2"] = grads["b2"] * (1 + 1e-3)
    plain = check_gradients(case.loss_fn, case.params, grads)
    assert plain.failed == ["W1", "b2"]
    deep = check_gradients(case.loss_fn, case.params, grads, depth_allowance=100.0)
    assert deep.params["W1"].verdict == "acceptable"  # first tensor: thresholds x100
    assert deep.params["b2"].verdict == "suspicious"  # last tensor: thresholds x1
    assert deep.failed == ["b2"]


def test_each_tensor_is_checked_independently_of_the_others():
    """Corrupting W1's gradient leaves W2's check bit-for-bit the same (same seed)."""
    case = make_tanh_mlp()
    clean = check_gradients(case.loss_fn, case.params, case.grads, seed=3)
    broken = check_gradients(case.loss_fn, case.params, dict(case.grads, W1=-case.grads["W1"]),
                             seed=3)
    assert broken.failed == ["W1"]
    for name in ("b1", "W2", "b2"):
        assert broken.params[name].to_dict() == clean.params[name].to_dict()


# ------------------------------------------------------------------------------------------
# precision, noise, determinism


def test_precision_can_be_forced():
    loss_fn, params, grads = quadratic()
    report = check_gradients(loss_fn, params, grads, precision="float32", h_float32=3e-3)
    assert report.precision == "float32"
    assert report.h == 3e-3
    assert report.passed


def test_float32_returned_by_a_float64_computation_is_not_mistaken():
    loss_fn, params, grads = quadratic()
    report = check_gradients(loss_fn, params, grads)
    assert report.precision == "float64"
    assert report.h == 1e-5
    assert report.noise < 1e-13


def test_a_deferred_noise_probe_is_skipped_when_every_probe_passes():
    loss_fn, params, grads = quadratic()
    always = check_gradients(loss_fn, params, grads, coordinates=0, directions=1)
    deferred = check_gradients(loss_fn, params, grads, coordinates=0, directions=1,
                               noise_probe="on_failure")
    assert always.passed and deferred.passed
    assert always.evaluations == 2 + 6 + 2  # repeats, the noise probe, one direction ±h
    assert deferred.evaluations == 2 + 2
    assert deferred.noise == pytest.approx(np.finfo(np.float64).eps * abs(loss_fn(params)))


def test_a_deferred_noise_probe_still_finds_a_noisy_float64_loss():
    """A float64 loss with round-off far above float64's (simulated: a jitter of ~1e-6 that
    changes with every bit of w, as float32 arithmetic inside would): the first probe fails
    at float64's step, the deferred noise probe finds the noise, and the check is judged
    again at h_float32 with float32 thresholds, as when the probe runs first. A wrong
    gradient is still wrong."""
    import zlib

    loss_fn0, params, grads = quadratic()

    def loss_fn(p):
        return loss_fn0(p) + 1e-6 * zlib.crc32(p["w"].tobytes()) / 2**32

    for probe in ("always", "on_failure"):
        report = check_gradients(loss_fn, params, grads, coordinates=0, directions=1,
                                 noise_probe=probe)
        assert report.precision == "float32", probe
        assert report.h == pytest.approx(1e-2), probe
        assert report.passed, (probe, str(report))
        wrong = check_gradients(loss_fn, params, {"w": 1.5 * grads["w"]}, coordinates=0,
                                directions=1, noise_probe=probe)
        assert wrong.failed == ["w"], probe


def test_noise_probe_must_be_one_of_its_choices():
    loss_fn, params, grads = quadratic()
    with pytest.raises(ValueError, match="noise_probe"):
        check_gradients(loss_fn, params, grads, noise_probe="sometimes")


def test_nondeterministic_loss_blames_no_tensor():
    case = make_unseeded_dropout()
    report = check_gradients(case.loss_fn, case.params, case.grads)
    assert report.nondeterministic and not report.passed
    assert report.params == {} and report.failed == []
    assert "random at a fixed point" in report.notes[0]
    assert report.evaluations == 2


def test_a_non_finite_loss_is_reported_not_raised():
    report = check_gradients(lambda p: float("nan"), {"w": np.ones(2)}, {"w": np.ones(2)})
    assert not report.passed and not report.nondeterministic
    assert "nothing can be checked" in report.notes[0]


def test_non_finite_analytic_gradients_are_wrong():
    loss_fn, params, grads = quadratic()
    g = grads["w"].copy()
    g[7] = np.nan
    report = check_gradients(loss_fn, params, {"w": g})
    assert report.params["w"].verdict == "wrong"
    assert report.params["w"].worst_index == (7,)
    assert "non-finite" in report.params["w"].notes[0]


def test_a_scalar_parameter_and_a_0d_loss_array_work():
    params = {"a": np.array(2.0)}
    report = check_gradients(lambda p: np.asarray(p["a"] ** 3), params, {"a": np.array(12.0)})
    assert report.passed
    assert report.params["a"].worst_index == ()


def test_zero_probes_is_a_configuration_error_naming_both_options():
    import numpy as np
    import pytest

    from trainwatch.gradcheck import check_gradients

    params = {"w": np.ones(3)}
    with pytest.raises(ValueError, match="coordinates, directions"):
        check_gradients(lambda p: float(np.sum(p["w"] ** 2)), params, {"w": 2 * params["w"]},
                        coordinates=0, directions=0)


@pytest.mark.parametrize("seed", range(3))
def test_one_entry_with_a_small_gradient_wrong_by_one_percent_is_found(seed):
    """Entry 1234 of 4096 has a gradient 1e-5 of the tensor's norm and is 1% off: a random
    direction's relative error stays below "correct" (1e-7) though above the noise, so it is
    bisected anyway, and the entry, judged as a coordinate, fails. The one-sided test does
    not excuse it as a kink: on a smooth loss the one-sided gap h·|J''| exceeds a disagreement
    this small at every step, but it shrinks with h, where a slope jump does not."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(4096) * 0.1
    w[1234] = 6.4e-5
    grads = {"w": w.copy()}
    grads["w"][1234] *= 1.01
    report = check_gradients(lambda p: 0.5 * float(np.sum(p["w"] ** 2)), {"w": w}, grads,
                             seed=seed)
    check = report.params["w"]
    assert check.verdict == "suspicious" and check.worst_index == (1234,), check
    assert check.max_rel_error == pytest.approx(0.0099, rel=0.05)
