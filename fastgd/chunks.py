"""How the parallel CPU kernels split arrays into aligned chunks.

A chunk is at most :data:`BLOCK` elements and, except the first of an array, starts on a
64-byte boundary of it: vector loads that straddle cache lines cost ~25% of the bandwidth.
"""

from __future__ import annotations

import numba
import numpy as np

#: Elements per chunk (a multiple of every vector width).
BLOCK = 16384
ALIGN = 64


@numba.njit(inline="always")
def chunk_bounds(j, n, head):  # pragma: no cover - jit
    """Elements ``[lo, hi)`` of chunk ``j`` of a tensor of ``n`` elements whose first
    64-byte boundary is ``head`` elements in: chunk 0 takes the head and one block, the
    others one aligned block each (the last one less)."""
    lo = 0 if j == 0 else head + j * BLOCK
    return lo, min(n, head + (j + 1) * BLOCK)


@numba.njit(inline="always")
def thread_run(table, w):  # pragma: no cover - jit
    """Thread run ``w`` of a :func:`chunk_table`: its chunks ``[start, stop)`` and the
    tensor of its first chunk."""
    _, first_chunk, worker_first = table
    start = worker_first[w]
    return start, worker_first[w + 1], np.searchsorted(first_chunk, start, side="right") - 1


@numba.njit(inline="always")
def locate(table, sizes, c, k):  # pragma: no cover - jit
    """Chunk ``c`` of a :func:`chunk_table` of tensors of ``sizes`` elements: its tensor
    (``k`` or a later one: runs visit chunks in order) and its elements ``[lo, hi)``."""
    heads, first_chunk, _ = table
    while first_chunk[k + 1] <= c:
        k += 1
    lo, hi = chunk_bounds(c - first_chunk[k], sizes[k], heads[k])
    return k, lo, hi


def chunk_table(address: np.ndarray, sizes: np.ndarray, itemsize: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How a many-tensor kernel splits tensors of ``sizes`` elements at ``address`` (of
    their first array) into chunks, and the chunks into one run per thread.

    Returns per tensor the elements before its first 64-byte boundary (``heads``) and the
    cumulative chunk counts (``first_chunk``, one more entry), and the first chunk of each
    thread's run (``worker_first``, one more entry), cut so that the runs hold equal numbers
    of elements.
    """
    heads = np.minimum(sizes, (-address) % ALIGN // itemsize)
    chunks = np.maximum(1, -(-(sizes - heads) // BLOCK))
    first_chunk = np.concatenate(([0], np.cumsum(chunks)))
    tensor = np.repeat(np.arange(sizes.size), chunks)
    j = np.arange(first_chunk[-1]) - first_chunk[tensor]
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    ends = offsets[tensor] + np.minimum(sizes[tensor], heads[tensor] + (j + 1) * BLOCK)
    workers = numba.get_num_threads()
    cuts = np.searchsorted(ends, offsets[-1] * np.arange(1, workers) / workers, side="right")
    worker_first = np.concatenate(([0], cuts, [first_chunk[-1]]))
    return heads, first_chunk, worker_first
