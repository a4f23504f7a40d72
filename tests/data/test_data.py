import numpy as np
import pytest

from trainwatch.data import load_digits, minibatches, train_val_split


def test_digits_are_the_real_bundled_set():
    x, y = load_digits()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(np.unique(y)) == list(range(10))
    assert np.bincount(y).min() >= 170  # roughly balanced, as the UCI set is
    images, _ = load_digits(images=True)
    assert images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(images[5, 0], x[5].reshape(8, 8))


def test_split_is_seeded_and_disjoint():
    x, y = load_digits()
    (a, ya), (b, yb) = train_val_split(x, y, val_fraction=0.2, seed=3)
    (a2, _), (b2, _) = train_val_split(x, y, val_fraction=0.2, seed=3)
    (a3, _), _ = train_val_split(x, y, val_fraction=0.2, seed=4)
    assert len(b) == 359 and len(a) + len(b) == 1797
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(a, a3)
    rows = {r.tobytes() for r in a}
    assert sum(r.tobytes() in rows for r in b) < 5  # (the set has a few duplicate images)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(x, y, val_fraction=1.5)


def test_minibatches_cover_the_data_once_in_shuffled_order():
    x = np.arange(10)[:, None].astype(float)
    y = np.arange(10)
    batches = list(minibatches(x, y, 4, np.random.default_rng(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb)
