"""Shared test setup.

numpy's BLAS would start one thread per core for every tiny matrix product; on the 2-core
CI machine that makes the tests slower and noisier, so the tests run it single-threaded.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
