"""Shared setup of the PyTorch tests."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (on a loaded 2-core
    machine, waits of a scheduler time slice per op). Nothing asserted depends on it."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
