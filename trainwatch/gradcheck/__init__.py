"""Framework-free numerical gradient checking.

>>> from trainwatch.gradcheck import check_gradients
>>> report = check_gradients(loss_fn, params, grads, seed=0)   # doctest: +SKIP
>>> report.passed, report.failed                                # doctest: +SKIP

See :mod:`trainwatch.gradcheck.engine` for the method and :data:`DEFAULTS` for the options.
"""

from trainwatch.gradcheck.engine import DEFAULTS, CheckTimeout, LossFunctionError, check_gradients
from trainwatch.gradcheck.report import VERDICTS, GradCheckReport, TensorCheck
from trainwatch.gradcheck.sweep import SweepEntry, SweepResult, sweep

__all__ = [
    "DEFAULTS",
    "VERDICTS",
    "CheckTimeout",
    "GradCheckReport",
    "LossFunctionError",
    "SweepEntry",
    "SweepResult",
    "TensorCheck",
    "check_gradients",
    "sweep",
]
