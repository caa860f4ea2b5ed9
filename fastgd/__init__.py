"""fastgd: fused, in-place gradient-descent updates at memory speed (Numba kernels).

Two faces: :mod:`fastgd.functional` (one in-place pass per call, explicit state arrays) and
torch.optim-style optimizer classes (:class:`SGD`, :class:`Adam`, ...).
"""

from fastgd import functional, schedules
from fastgd.checkpoint import load, save
from fastgd.optim import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    NAdam,
    Optimizer,
    RMSprop,
    StepInfo,
)

__version__ = "0.1.0"

__all__ = ["functional", "schedules", "save", "load", "Optimizer", "SGD", "Adagrad", "Adadelta",
           "RMSprop", "Adam",
           "AdamW", "Adamax", "NAdam", "StepInfo", "__version__"]
