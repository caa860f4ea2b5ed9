"""The reduction pass of a step: the global L2 norm of many gradients (clipping, found-inf).

One parallel read of every gradient, accumulated in float64; a NaN or Inf anywhere makes the
norm NaN or Inf, so the same pass answers "are all gradients finite?".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np

from fastgd import cpu
from fastgd.chunks import chunk_table, locate, thread_run
from fastgd.pointers import address, address_as_pointer


# ``reassoc`` lets the sum vectorize; NaN and Inf still propagate (no nnan/ninf).
@numba.njit(parallel=True, cache=True, error_model="numpy", nogil=True,
            fastmath={"reassoc", "contract"})
def _sum_of_squares(addresses, sizes, table, like):  # pragma: no cover - jit
    partial = np.zeros(table[2].size - 1)
    for w in numba.prange(partial.size):
        start, stop, k = thread_run(table, w)
        total = 0.0
        for c in range(start, stop):
            k, lo, hi = locate(table, sizes, c, k)
            grad = numba.carray(address_as_pointer(addresses[k], like), sizes[k])
            for i in range(lo, hi):
                x = np.float64(grad[i])
                total += x * x
        partial[w] = total
    return partial.sum()


def global_norm(grads: Sequence[np.ndarray]) -> float:
    """``sqrt(sum_i ||g_i||^2)`` over flat, contiguous host arrays (float32 or float64)."""
    return math.sqrt(sum_of_squares(grads))


def sum_of_squares(grads: Sequence[np.ndarray]) -> float:
    """``sum_i ||g_i||^2`` over flat, contiguous host arrays (float32 or float64), in
    float64."""
    total = 0.0
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype and g.size]
        if not same:
            continue
        addresses = np.array([address(g) for g in same], dtype=np.int64)
        sizes = np.array([g.size for g in same], dtype=np.int64)
        table = chunk_table(addresses, sizes, dtype.itemsize)
        with cpu.parallel_guard():
            total += _sum_of_squares(addresses, sizes, table, same[0][:0])
    return total


def clip_scale(norm: float, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``'s factor: ``min(1, max_norm / (norm + 1e-6))``
    (NaN when the norm is NaN, as in torch)."""
    scale = max_norm / (norm + 1e-6)
    return scale if scale < 1.0 or math.isnan(scale) else 1.0
