"""SetupCheck: the loop's wiring on its first steps (the data order here; the torch tests
hold the checks that need a torch loss: squashed scores, broadcasting)."""

import numpy as np
import pytest

from trainwatch.callbacks.setup_check import ORDER_STEPS, SetupCheck


def unshuffled_alerts(labels, **options):
    """The setup.unshuffled_data alerts of 30 steps of batches of 32 of ``labels``."""
    import trainwatch as tw
    from trainwatch import nn as twnn

    model = twnn.Sequential([twnn.Dense(4, 10)], seed=0)
    mon = tw.Monitor(model, loss=twnn.SoftmaxCrossEntropy(), optimizer=twnn.SGD(model, lr=0.1),
                     callbacks=[SetupCheck(**options)], progress=False,
                     raise_errors=True)
    with mon.run():
        for k in range(30):
            mon.batch_begin(np.zeros((32, 4)), labels[32 * k:32 * k + 32])
            mon.loss_computed(2.3)
            mon.step_end()
    return [a for a in mon.alerts.history if a.code == "setup.unshuffled_data"]


@pytest.mark.parametrize("order, told", [
    ("sorted", "sorted, from 0 to 4"), ("one class first", "all 0"), ("descending", "sorted"),
    ("shuffled", None), ("imbalanced 90:10, shuffled", None),
])
def test_unshuffled_training_data_is_told_after_the_first_steps(order, told):
    """Training data sorted by label (a DataLoader without shuffle=True over a sorted set)
    gives batches of one class: the model chases the current one. The first ORDER_STEPS
    steps' targets show it: they run in order, or never change."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 150)  # 150 a class, sorted
    if order == "one class first":
        labels = np.repeat(np.arange(10), 700)
    elif order == "descending":
        labels = labels[::-1].copy()
    elif order == "shuffled":
        labels = rng.permutation(labels)
    elif order.startswith("imbalanced"):
        labels = rng.permutation(np.r_[np.zeros(1350, int), np.ones(150, int)])
    alerts = unshuffled_alerts(labels)
    assert len(alerts) == (told is not None)
    if told:
        assert alerts[0].step == ORDER_STEPS - 1 and told in alerts[0].message
        assert "shuffle=True" in alerts[0].suggestion


def test_data_ordered_on_purpose_can_leave_the_order_unchecked():
    """Curriculum or continual learning order their data on purpose: check_order=False."""
    sorted_labels = np.repeat(np.arange(10), 150)
    assert unshuffled_alerts(sorted_labels)
    assert unshuffled_alerts(sorted_labels, check_order=False) == []
    with pytest.raises(ValueError, match="check_order"):
        SetupCheck(check_order="no")


def test_targets_refilled_into_one_buffer_are_not_judged():
    """A loop that copies every batch's targets into one buffer leaves no past batches to
    compare: the order goes unchecked rather than misread."""
    import trainwatch as tw
    from trainwatch import nn as twnn

    labels = np.repeat(np.arange(10), 150)  # sorted: told when each batch is its own array
    buffer = np.zeros(32, dtype=labels.dtype)
    model = twnn.Sequential([twnn.Dense(4, 10)], seed=0)
    mon = tw.Monitor(model, loss=twnn.SoftmaxCrossEntropy(), optimizer=twnn.SGD(model, lr=0.1),
                     callbacks=[SetupCheck()], progress=False, raise_errors=True)
    with mon.run():
        for k in range(30):
            buffer[:] = labels[32 * k:32 * k + 32]
            mon.batch_begin(np.zeros((32, 4)), buffer)
            mon.loss_computed(2.3)
            mon.step_end()
    assert not [a for a in mon.alerts.history if a.code == "setup.unshuffled_data"]
