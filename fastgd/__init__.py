"""fastgd: fused, in-place gradient-descent updates at memory speed (Numba kernels).

Two faces: :mod:`fastgd.functional` (one in-place pass per call, explicit state arrays) and
torch.optim-style optimizer classes (:class:`SGD`, :class:`Adam`, ...), one per algorithm of
the table in :mod:`fastgd.algorithms`.
"""

from fastgd import functional, optim, schedules
from fastgd.checkpoint import load, save
from fastgd.optim import Optimizer, ScheduleFreeOptimizer, StepInfo

__version__ = "0.1.0"

#: The optimizer classes, by name (``fastgd.Adam`` is ``fastgd.optim.Adam``).
CLASSES = {name: getattr(optim, name) for name in optim.__all__ if name not in optim.BASES}
globals().update(CLASSES)

__all__ = ["functional", "schedules", "save", "load", "Optimizer", "ScheduleFreeOptimizer",
           "StepInfo", "__version__", *CLASSES]


def __getattr__(name: str) -> object:
    # fastgd.quantization is imported on first use (it builds its encoder tables on import).
    if name == "quantization":
        import importlib

        return importlib.import_module("fastgd.quantization")
    raise AttributeError(f"module 'fastgd' has no attribute {name!r}")
