"""The maximum of an int32, and the sum of a number, over the lanes of a warp, inside CUDA
kernels.

On a GPU the lanes exchange their values through registers (``shfl_xor_sync``, five
butterfly steps; every lane of the warp must call it). Numba's CUDA simulator has no warp
shuffles: there the lanes meet in shared memory (``scratch``, an int32 array of one entry
per thread of the block), and every thread of the block must call it.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import cuda

from fastgd.device_pointers import SIMULATOR

if SIMULATOR:
    @cuda.jit(device=True)
    def _over_warp(value, scratch, combine):  # pragma: no cover - simulated device code
        """``combine`` folded over the values of the 32 lanes of this thread's warp."""
        t = cuda.threadIdx.x
        scratch[t] = value
        cuda.syncthreads()
        first = t - t % 32
        result = scratch[first]
        for lane in range(first + 1, first + 32):
            result = combine(result, scratch[lane])
        cuda.syncthreads()
        return result

    @cuda.jit(device=True)
    def warp_max(value, scratch):  # pragma: no cover - simulated device code
        """The maximum of ``value`` over the 32 lanes of this thread's warp."""
        return _over_warp(value, scratch, max)

    @cuda.jit(device=True)
    def warp_sum(value, scratch):  # pragma: no cover - simulated device code
        """The sum of ``value`` over the 32 lanes of this thread's warp (``scratch``: a
        float64 array of one entry per thread of the block)."""
        return _over_warp(value, scratch, operator.add)

else:
    @cuda.jit(device=True, inline=True)
    def warp_max(value, scratch):  # pragma: no cover - device code
        """The maximum of ``value`` over the 32 lanes of this thread's warp."""
        mask = np.uint32(0xFFFFFFFF)
        value = max(value, cuda.shfl_xor_sync(mask, value, 16))
        value = max(value, cuda.shfl_xor_sync(mask, value, 8))
        value = max(value, cuda.shfl_xor_sync(mask, value, 4))
        value = max(value, cuda.shfl_xor_sync(mask, value, 2))
        return max(value, cuda.shfl_xor_sync(mask, value, 1))

    @cuda.jit(device=True, inline=True)
    def warp_sum(value, scratch):  # pragma: no cover - device code
        """The sum of ``value`` (of its own dtype) over the 32 lanes of this thread's warp."""
        mask = np.uint32(0xFFFFFFFF)
        value += cuda.shfl_xor_sync(mask, value, 16)
        value += cuda.shfl_xor_sync(mask, value, 8)
        value += cuda.shfl_xor_sync(mask, value, 4)
        value += cuda.shfl_xor_sync(mask, value, 2)
        return value + cuda.shfl_xor_sync(mask, value, 1)
