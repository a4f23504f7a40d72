"""Where trainwatch writes: TensorBoard event files, memory (tests) and the console bar.

Importing this package does not import tensorboardX (that happens when a
:class:`TensorBoardOutput` is created).
"""

from trainwatch.outputs.base import HistogramData, Output, OutputList
from trainwatch.outputs.console import ConsoleOutput
from trainwatch.outputs.memory import MemoryOutput
from trainwatch.outputs.tensorboard import TensorBoardOutput

__all__ = [
    "ConsoleOutput",
    "HistogramData",
    "MemoryOutput",
    "Output",
    "OutputList",
    "TensorBoardOutput",
]
