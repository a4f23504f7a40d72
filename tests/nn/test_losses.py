"""Losses: values by hand, backward against finite differences, expected initial losses."""

import numpy as np
import pytest

from tests.nn.test_layers import numerical_gradient, rel_error
from trainwatch.nn import (
    MeanSquaredError,
    MulticlassSVM,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
)

RNG = np.random.default_rng(0)
CASES = {
    "softmax": (SoftmaxCrossEntropy(), RNG.standard_normal((4, 5)), np.array([0, 3, 4, 1])),
    "svm": (MulticlassSVM(), RNG.standard_normal((4, 5)), np.array([2, 0, 4, 4])),
    "svm_margin2": (MulticlassSVM(2.0), RNG.standard_normal((3, 4)), np.array([1, 0, 3])),
    "bce_flat": (SigmoidBinaryCrossEntropy(), 3 * RNG.standard_normal(6), RNG.integers(0, 2, 6)),
    "bce_column": (
        SigmoidBinaryCrossEntropy(),
        RNG.standard_normal((5, 1)),
        RNG.integers(0, 2, 5).astype(float),
    ),
    "mse": (MeanSquaredError(), RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))),
}


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_finite_differences(case):
    loss, scores, targets = CASES[case]
    scores = scores.copy()
    loss.forward(scores, targets)
    analytic = loss.backward()
    assert analytic.shape == scores.shape
    numeric = numerical_gradient(lambda: loss.forward(scores, targets), scores)
    assert rel_error(analytic, numeric) < 1e-8


def test_svm_kinks_are_away_from_the_checked_scores():
    # guards the finite-difference test above: no margin within ±h of its kink
    for case in ("svm", "svm_margin2"):
        loss, scores, targets = CASES[case]
        rows = np.arange(len(targets))
        margins = scores - scores[rows, targets][:, None] + loss.margin
        margins[rows, targets] = 1.0
        assert np.abs(margins).min() > 1e-3


def test_softmax_value_by_hand():
    scores = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = (-np.log(np.exp(1) / (np.exp(1) + np.exp(2) + np.exp(3))) + np.log(3)) / 2
    assert SoftmaxCrossEntropy().forward(scores, np.array([0, 2])) == pytest.approx(expected)


def test_softmax_is_stable_for_huge_scores():
    loss = SoftmaxCrossEntropy()
    value = loss.forward(np.array([[1000.0, 0.0], [-1000.0, 1000.0]]), np.array([1, 1]))
    assert value == pytest.approx(500.0)
    assert np.isfinite(loss.backward()).all()


def test_svm_value_by_hand():
    # CS231n example: correct class score 3.2 -> max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1) = 2.9
    loss = MulticlassSVM()
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0]])
    assert loss.forward(scores, np.array([0, 1])) == pytest.approx((2.9 + 0.0) / 2)
    np.testing.assert_array_equal(loss.kink_signature(), [[False, True, False], [False] * 3])
    np.testing.assert_allclose(loss.backward(), [[-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_bce_value_and_stability():
    loss = SigmoidBinaryCrossEntropy()
    s, t = np.array([0.5, -2.0]), np.array([1.0, 0.0])
    p = 1 / (1 + np.exp(-s))
    naive = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert loss.forward(s, t) == pytest.approx(naive, rel=1e-12)
    assert loss.forward(np.array([1000.0, -1000.0]), np.array([0, 1])) == pytest.approx(1000.0)
    np.testing.assert_allclose(loss.backward(), [0.5, -0.5])


def test_mse_is_mean_over_all_elements():
    scores, targets = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [3.0, 3.0]])
    assert MeanSquaredError().forward(scores, targets) == pytest.approx((1 + 0 + 0 + 4) / 4)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (SoftmaxCrossEntropy(), np.log(10)),
        (MulticlassSVM(), 9.0),
        (MulticlassSVM(0.5), 4.5),
        (SigmoidBinaryCrossEntropy(), np.log(2)),
    ],
)
def test_expected_initial_loss_matches_tiny_scores(loss, expected):
    rng = np.random.default_rng(0)
    n = 200
    if loss.kind == "sigmoid_bce":
        scores, targets = 1e-4 * rng.standard_normal(n), rng.integers(0, 2, n)
    else:
        scores, targets = 1e-4 * rng.standard_normal((n, 10)), rng.integers(0, 10, n)
    assert loss.expected_initial_loss(10) == pytest.approx(expected)
    assert loss.forward(scores, targets) == pytest.approx(expected, rel=1e-3)


def test_mse_has_no_expected_initial_loss():
    assert MeanSquaredError().expected_initial_loss(10) is None
    assert MeanSquaredError().kink_signature() is None


def test_float32_scores_give_float32_gradients():
    scores = RNG.standard_normal((3, 4)).astype(np.float32)
    for loss in (SoftmaxCrossEntropy(), MulticlassSVM()):
        loss.forward(scores, np.array([0, 1, 2]))
        assert loss.backward().dtype == np.float32


@pytest.mark.parametrize(
    ("targets", "match"),
    [(np.array([0, 5]), r"\[0, 5\)"), (np.array([0.0, 1.0]), "integer"), (np.array([0]), "shape")],
)
def test_bad_class_targets_raise(targets, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxCrossEntropy().forward(np.zeros((2, 5)), targets)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="scores"):
        SigmoidBinaryCrossEntropy().forward(np.zeros((2, 3)), np.zeros(6))
    with pytest.raises(ValueError, match="targets"):
        MeanSquaredError().forward(np.zeros((2, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="margin"):
        MulticlassSVM(0.0)
