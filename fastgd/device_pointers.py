"""Raw device addresses as typed pointers inside CUDA kernels (the many-tensor kernel).

Under Numba's CUDA simulator, where kernels run as Python, a ctypes stand-in plays the part
(the simulator's "device" arrays are host arrays).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from numba import cuda

#: Whether Numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = not hasattr(cuda, "as_cuda_array")  # the simulator lacks it


def device_address(arr: Any) -> int:
    """Address of the first element of a device array (of its host buffer, simulated)."""
    if SIMULATOR:
        return int(arr._ary.__array_interface__["data"][0])
    return int(arr.__cuda_array_interface__["data"][0])


if SIMULATOR:
    _CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
               np.dtype(np.uint16): ctypes.c_uint16, np.dtype(np.uint8): ctypes.c_uint8}

    class _SimulatedPointer:
        """``ptr[i]`` reads and writes element ``i`` at an address, as NumPy scalars."""

        def __init__(self, address: int, dtype: np.dtype) -> None:
            self._pointer = ctypes.cast(int(address), ctypes.POINTER(_CTYPES[dtype]))
            self._scalar = dtype.type

        def __getitem__(self, i: int) -> Any:
            return self._scalar(self._pointer[int(i)])

        def __setitem__(self, i: int, value: Any) -> None:
            self._pointer[int(i)] = value

    def address_as_pointer(address: int, like: Any) -> Any:
        """``(like.dtype *) address`` (simulator stand-in)."""
        return _SimulatedPointer(address, np.dtype(like.dtype))

else:
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def address_as_pointer(typingctx, address, like):
        """``(like.dtype *) address``: a typed pointer at an integer device address.

        The caller guarantees that ``address`` points to live device memory of ``like``'s
        dtype (the many-tensor kernel gets addresses from arrays the optimizer holds).
        """
        pointer = types.CPointer(like.dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address, like), codegen
