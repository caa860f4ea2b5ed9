"""Adafactor's factored second moment: the step of a parameter with two or more dimensions.

torch.optim.Adafactor keeps, for such a parameter of shape ``(..., R, C)``, the running
means of ``g**2`` over each row (``row_var``, shape ``(..., R, 1)``) and over each column
(``col_var``, ``(..., 1, C)``) instead of a full second moment, and estimates it as
``v_ij = row_var_i col_var_j / max(mean_i row_var_i, eps1)``. A step is three passes over
the parameter's memory, seen as ``(B, M, N)`` (``B`` the leading dimensions; ``M, N`` the
last two, or for a Fortran-order matrix its columns and rows, whose factors swap roles):

1. :func:`sums`: the sums of ``g**2`` over each row and over each column, and of ``p**2``
   (reading ``g`` and ``p``);
2. the host updates the (small) factors and, :func:`update_norm`, sums ``u**2`` for
   ``u = g / sqrt(max(v, eps1**2))`` (reading ``g``);
3. :func:`apply`: ``p = p (1 - lr wd) - alpha / denom * u`` (reading ``p`` and ``g``,
   writing ``p``).

The sums are taken in float64: per row by one thread, per column in fixed chunks of rows
added in order, so results do not depend on the number of threads. CPU kernels are
generated for each parameter format (float16/bfloat16 bits, with or without a float32
master copy) and take turns where Numba's threading layer needs it
(:func:`fastgd.cpu.parallel_guard`); CUDA kernels run one thread per row (and per column
for the column sums), on the step's stream.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import numpy as np

from fastgd.arrays import to_host
from fastgd.codegen import load_generated
from fastgd.cpu import parallel_guard
from fastgd.halfprec import CONVERSIONS
from fastgd.kernelgen import computes_in_float32, join_storage, split_storage

#: Tasks the column sums are split into (chunks of rows times batches, at least one chunk
#: per batch): fixed, so that the sums do not depend on the number of threads.
TASKS = 16

_HEADER = """\
import math

import numba

from fastgd.halfprec import {imports}
from fastgd.rules import nan_max


@numba.njit(inline="always")
def load(x):
    return x


@numba.njit(inline="always", error_model="numpy")
def direction(g, row, column, floor, separable):
    # u = g / sqrt(max(v, eps1^2)) with v = row column; ``separable``: every v is above the
    # floor, and row and column hold the reciprocal square roots of the factors
    if separable:
        return g * (row * column)
    return g / math.sqrt(nan_max(row * column, floor))
"""

_CPU = '''
@numba.njit(parallel=True, cache=True, error_model="numpy", fastmath={{"reassoc"}})
def sums_{name}(g, p, scale, rows, prows, cols, chunks):
    m_count, n_count = g.shape[1], g.shape[2]
    per = (m_count + chunks - 1) // chunks
    for task in numba.prange(g.shape[0] * chunks):
        b, lo = task // chunks, (task % chunks) * per
        acc = cols[task]
        acc[:] = 0.0
        for m in range(lo, min(m_count, lo + per)):
            row, squares = 0.0, 0.0
            for n in range(n_count):
                x = {load_g}(g[b, m, n]) * scale
                sq = x * x
                row += sq
                acc[n] += sq
                y = {load_p}(p[b, m, n])
                squares += y * y
            rows[b * m_count + m] = row
            prows[b * m_count + m] = squares


@numba.njit(parallel=True, cache=True, error_model="numpy", fastmath={{"reassoc"}})
def update_norm_{name}(g, scale, rowf, colf, floor, separable, urows):
    m_count, n_count = g.shape[1], g.shape[2]
    for r in numba.prange(g.shape[0] * m_count):
        b, m = r // m_count, r % m_count
        f, acc = rowf[r], 0.0
        for n in range(n_count):
            u = direction({load_g}(g[b, m, n]) * scale, f, colf[b, n], floor, separable)
            acc += u * u
        urows[r] = acc


@numba.njit(parallel=True, cache=True, error_model="numpy")
def apply_{name}(p, master, g, scale, rowf, colf, floor, separable, decay, step):
    m_count, n_count = g.shape[1], g.shape[2]
    for r in numba.prange(g.shape[0] * m_count):
        b, m = r // m_count, r % m_count
        f = rowf[r]
        for n in range(n_count):
            u = direction({load_g}(g[b, m, n]) * scale, f, colf[b, n], floor, separable)
            q = {load_p}({source}[b, m, n]) * decay - step * u
            {store}
'''


@cache
def _cpu_kernels(fmt: str) -> Any:
    """The CPU kernels of a parameter storage format (``""``, ``"f16"``, ``"bf16"``, with
    ``"_master"``)."""
    low, master, _ = split_storage(fmt)
    load, store = CONVERSIONS.get(low, ("load", ""))
    name = fmt or "plain"
    stores = {"": "p[b, m, n] = q", "f16": f"p[b, m, n] = {store}(q)",
              "bf16": f"p[b, m, n] = {store}(q)"}
    body = _CPU.format(
        name=name, load_g=load, load_p="load" if master else load,
        source="master" if master else "p",
        store=("master[b, m, n] = q\n            " if master else "") + stores[low])
    imports = ", ".join(sorted({*CONVERSIONS.get(low, ())})) or "CONVERSIONS"
    module = load_generated("factored", _HEADER.format(imports=imports) + body)
    return (getattr(module, f"sums_{name}"), getattr(module, f"update_norm_{name}"),
            getattr(module, f"apply_{name}"))


_CUDA = """\
import math

from numba import cuda

from fastgd.rules import nan_max

device_max = cuda.jit(device=True)(nan_max.py_func)


@cuda.jit(device=True)
def direction(g, row, column, floor, separable):
    if separable:
        return g * (row * column)
    return g / math.sqrt(device_max(row * column, floor))


@cuda.jit
def row_sums(g, p, scale, rows, prows):
    r = cuda.grid(1)
    m_count, n_count = g.shape[1], g.shape[2]
    if r < g.shape[0] * m_count:
        b, m = r // m_count, r % m_count
        row, squares = 0.0, 0.0
        for n in range(n_count):
            x = g[b, m, n] * scale
            row += x * x
            squares += p[b, m, n] * p[b, m, n]
        rows[r] = row
        prows[r] = squares


@cuda.jit
def column_sums(g, scale, cols):
    c = cuda.grid(1)
    n_count = g.shape[2]
    if c < g.shape[0] * n_count:
        b, n = c // n_count, c % n_count
        acc = 0.0
        for m in range(g.shape[1]):
            x = g[b, m, n] * scale
            acc += x * x
        cols[c] = acc


@cuda.jit
def update_norm(g, scale, rowf, colf, floor, separable, urows):
    r = cuda.grid(1)
    m_count, n_count = g.shape[1], g.shape[2]
    if r < g.shape[0] * m_count:
        b, m = r // m_count, r % m_count
        acc = 0.0
        for n in range(n_count):
            u = direction(g[b, m, n] * scale, rowf[r], colf[b, n], floor, separable)
            acc += u * u
        urows[r] = acc


@cuda.jit
def apply(p, g, scale, rowf, colf, floor, separable, decay, step):
    r = cuda.grid(1)
    m_count, n_count = g.shape[1], g.shape[2]
    if r < g.shape[0] * m_count:
        b, m = r // m_count, r % m_count
        for n in range(n_count):
            u = direction(g[b, m, n] * scale, rowf[r], colf[b, n], floor, separable)
            p[b, m, n] = p[b, m, n] * decay - step * u
"""


@cache
def _cuda_kernels() -> tuple[Any, Any, Any, Any]:
    """The CUDA kernels (float32 and float64 parameters): a thread per row (and per column
    of a batch, for the column sums)."""
    module = load_generated("factored_cuda", _CUDA)
    return module.row_sums, module.column_sums, module.update_norm, module.apply


def matrices(flat: Any, shape: tuple[int, ...], order: str) -> tuple[Any, bool]:
    """A parameter's flat memory as ``(B, M, N)`` matrices, and whether their rows and
    columns swap: its last two dimensions in C order (contiguous rows); a Fortran-order
    matrix's memory as its transpose (they swap); other Fortran-order arrays as a strided
    view of their memory (host arrays only: a slower loop)."""
    rows, columns = shape[-2:]
    batch = math.prod(shape[:-2])
    if order == "C":
        return flat.reshape(batch, rows, columns), False
    if len(shape) == 2:
        return flat.reshape(1, columns, rows), True
    if not isinstance(flat, np.ndarray):
        raise ValueError(f"a Fortran-order GPU parameter of shape {shape} cannot keep "
                         "factored state; use C order")
    return flat.reshape(columns, rows, batch).transpose(2, 1, 0), False


def step(arrays: Mapping[str, Any], row_var: Any, col_var: Any,
         layout: tuple[tuple[int, ...], str], fmt: str, values: Mapping[str, Any],
         scale_of: Callable[..., dict[str, float]], grad_scale: float, stream: Any = None
         ) -> None:
    """One factored step of one parameter: its flat kernel views by name (``param``,
    ``grad``, ``master``), its factors (arrays of their own shapes, updated in place), its
    shape and memory order, its kernels' storage format, the step's values (Adafactor's
    ``update``), the algorithm's ``scale`` (its step size from the sums of ``p**2`` and
    ``u**2``, as for vectors) and the factor of every gradient element."""
    shape, order = layout
    size = math.prod(shape)
    device = not isinstance(arrays["param"], np.ndarray)
    (param, swapped), (grad, _) = (matrices(arrays[n], shape, order) for n in ("param",
                                                                               "grad"))
    master = matrices(arrays["master"], shape, order)[0] if "master" in arrays else None
    source = master if master is not None else param  # (what the update reads)
    dtype = np.dtype(np.float32) if computes_in_float32(fmt) else np.dtype(param.dtype)
    batch, m_count, n_count = param.shape
    rows_sq, p_rows = np.zeros(batch * m_count), np.zeros(batch * m_count)
    if device:
        from fastgd.cuda import as_stream

        stream = as_stream(stream)  # (a Numba stream, from any kind; None: the default)
        kernels = _cuda_kernels()
        d_rows, d_prows = _device(rows_sq, stream), _device(p_rows, stream)
        d_cols = _device(np.zeros(batch * n_count), stream)
        _launch(kernels[0], batch * m_count, stream, grad, param, dtype.type(grad_scale),
                d_rows, d_prows)
        _launch(kernels[1], batch * n_count, stream, grad, dtype.type(grad_scale), d_cols)
        rows_sq, p_rows = d_rows.copy_to_host(stream=stream), d_prows.copy_to_host(
            stream=stream)
        cols_sq = d_cols.copy_to_host(stream=stream).reshape(batch, n_count)
        stream.synchronize()
    else:
        low, with_master, _ = split_storage(fmt)
        sums, update_norm, apply = _cpu_kernels(join_storage(low, "master" * with_master))
        chunks = max(1, min(m_count, TASKS // max(batch, 1)))
        partial = _scratch(batch * chunks, n_count)
        with parallel_guard():
            sums(grad, source, grad_scale, rows_sq, p_rows, partial, chunks)
        cols_sq = partial.reshape(batch, chunks, n_count).sum(axis=1)
    rows, columns = shape[-2:]
    batches = shape[:-2]
    strided = order == "F" and len(shape) > 2  # (its batches in Fortran order)
    if swapped:  # (the memory's rows are the matrix's columns)
        rows_sq, cols_sq = cols_sq.reshape(-1), rows_sq.reshape(1, -1)
    elif strided:
        rows_sq = _batch_order(rows_sq, batches[::-1], rows)
        cols_sq = _batch_order(cols_sq, batches[::-1], columns)
    weight, floor = values["weight"], values["eps1"]
    host_rows, host_cols = (to_host(row_var), to_host(col_var)) if device else (row_var,
                                                                               col_var)
    with np.errstate(all="ignore"):  # (an empty parameter's means are NaN, as in torch)
        host_rows[...] = _lerp(host_rows, (rows_sq / columns).reshape(host_rows.shape),
                               weight)
        host_cols[...] = _lerp(host_cols, (cols_sq / rows).reshape(host_cols.shape), weight)
        normalizer = np.maximum(host_rows.sum(axis=-2, keepdims=True) / rows, floor)
    if device:
        row_var.copy_to_device(host_rows, stream=stream)
        col_var.copy_to_device(host_cols, stream=stream)
    if size == 0:
        return
    row_factor = (host_rows / normalizer).reshape(-1, rows)
    col_factor = host_cols.reshape(-1, columns)
    if swapped:
        row_factor, col_factor = col_factor, row_factor
    elif strided:
        row_factor = _batch_order(row_factor, batches, rows)
        col_factor = _batch_order(col_factor, batches, columns)
    floor_sq = dtype.type(floor * floor)
    # (every product of the factors above the floor: each element's 1 / sqrt(row column)
    # is the product of the factors' own, computed once per row and per column)
    separable = bool(row_factor.size and col_factor.size
                     and row_factor.min() * col_factor.min() > floor * floor)
    if separable:
        row_factor, col_factor = 1.0 / np.sqrt(row_factor), 1.0 / np.sqrt(col_factor)
    row_factor = row_factor.astype(dtype).reshape(-1)
    col_factor = col_factor.astype(dtype)
    scale = dtype.type(grad_scale)
    if device:
        d_rowf, d_colf = _device(row_factor, stream), _device(col_factor, stream)
        d_urows = _device(np.zeros(batch * m_count), stream)
        _launch(kernels[2], batch * m_count, stream, grad, scale, d_rowf, d_colf, floor_sq,
                separable, d_urows)
        u_rows = d_urows.copy_to_host(stream=stream)
        stream.synchronize()
    else:
        u_rows = np.empty(batch * m_count)
        with parallel_guard():
            update_norm(grad, scale, row_factor, col_factor, floor_sq, separable, u_rows)
    step_size = scale_of({"param_sq": float(p_rows.sum()), "update_sq": float(u_rows.sum())},
                         values, shape)["step_size"]
    decay = dtype.type(values["decay_factor"])
    if device:
        _launch(kernels[3], batch * m_count, stream, param, grad, scale, d_rowf, d_colf,
                floor_sq, separable, decay, dtype.type(step_size))
    else:
        with parallel_guard():
            apply(param, source, grad, scale, row_factor, col_factor, floor_sq, separable,
                  decay, dtype.type(step_size))


_SCRATCH = threading.local()


def _scratch(rows: int, columns: int) -> np.ndarray:
    """A buffer for the column sums' partial results, one per shape and thread (kept: a
    new one each step would cost its page faults)."""
    kept = _SCRATCH.__dict__.setdefault("buffers", {})
    if (rows, columns) not in kept:
        if len(kept) > 64:
            kept.clear()
        kept[rows, columns] = np.empty((rows, columns))
    return kept[rows, columns]


def _batch_order(values: np.ndarray, batches: tuple[int, ...], last: int) -> np.ndarray:
    """Per-batch rows of ``values`` (``(B, last)``), their batches numbered in C order over
    ``batches``, renumbered in Fortran order (over the reversed ``batches``: back)."""
    count = len(batches)
    return values.reshape(*batches, last).transpose(*range(count - 1, -1, -1), count
                                                    ).reshape(-1, last)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """torch's ``lerp`` in ``start``'s dtype."""
    end = end.astype(start.dtype)
    w = start.dtype.type(weight)
    if abs(weight) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * start.dtype.type(1.0 - weight)


def _device(values: np.ndarray, stream: Any) -> Any:
    from numba import cuda

    return cuda.to_device(values, stream=stream)


def _launch(kernel: Any, threads: int, stream: Any, *args: Any) -> None:
    from fastgd.cuda import THREADS

    kernel[max(1, (threads + THREADS - 1) // THREADS), THREADS, stream](*args)
