"""Assertions shared by the tests."""

import numpy as np


def assert_identical(a, b, path="state"):
    """``a`` and ``b`` (nested dicts of arrays and plain values, e.g. ``Backend.state_dict()``)
    are bit-identical: same keys, dtypes, shapes and bytes (also -0.0 and NaN payloads)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b), path
        assert a.tobytes() == b.tobytes(), path
    else:
        assert a == b, path
