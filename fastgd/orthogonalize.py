"""Muon's direction: the Newton–Schulz orthogonalisation of a matrix, between the passes.

The matrix products go to the arrays' own library: NumPy (BLAS) for host arrays, CuPy for
GPU arrays (zero-copy views through ``__cuda_array_interface__``), NumPy on the host copies
of Numba's CUDA simulator. They run in the dtype of the computation
(float32, or float64 for float64 parameters), where torch.optim.Muon runs them in bfloat16.

``X @ X.T`` and ``A @ A.T`` (``A`` is symmetric) are products of a matrix with its own
transpose, which NumPy hands to BLAS's ``syrk``: half the work of a general product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from fastgd.arrays import storage_dtype
from fastgd.halfprec import to_float32


def lerp(start: Any, end: Any, weight: float) -> Any:
    """torch's ``lerp(start, end, weight)`` on whole arrays (a new array)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def newton_schulz(d: Any, coefficients: Sequence[float], steps: int, eps: float,
                  norm: float | None = None) -> Any:
    """torch.optim.Muon's orthogonalisation of a matrix ``d`` (a new array of its dtype)::

        X = d / max(|d|_F, eps)          (transposed first if d has more rows than columns)
        repeat steps times:  A = X X^T;  X = a X + (b A + c A A) X

    ``norm``: ``|d|_F``, if already known."""
    a, b, c = coefficients
    tall = d.shape[0] > d.shape[1]
    if norm is None:
        norm = math.sqrt(float((d * d).sum()))
    xp = _library(d)
    x = xp.ascontiguousarray(d.T if tall else d) / d.dtype.type(max(norm, eps))
    gram = x @ x.T
    poly, other = xp.empty_like(gram), xp.empty_like(x)
    diagonal = poly.reshape(-1)[::poly.shape[0] + 1]  # (a view: poly's diagonal)
    for step in range(steps):
        if step:
            _matmul(x, x.T, gram)
        _matmul(gram, gram.T, poly)  # (gram is symmetric: its square, by syrk)
        poly *= c
        gram *= b
        poly += gram
        diagonal += a  # (a X + (b A + c A A) X = (a I + b A + c A A) X: one product)
        _matmul(poly, x, other)
        x, other = other, x
    return x.T if tall else x


def _matmul(a: Any, b: Any, out: Any) -> None:
    _library(a).matmul(a, b, out=out)


def _library(array: Any) -> Any:
    return np if isinstance(array, np.ndarray) else _cupy()


def muon_direction(matrices: Mapping[str, Any], sums: Mapping[str, float],
                   values: Mapping[str, Any]) -> Any:
    """Muon's orthogonalised momentum: :func:`newton_schulz` of the Nesterov direction
    ``lerp(g, buf, momentum)`` (or of ``buf``), whose squared norm the first pass summed."""
    buffer = matrices["momentum_buffer"]
    d = lerp(matrices["grad"], buffer, values["momentum"]) if values["nesterov"] else buffer
    return newton_schulz(d, values["ns_coefficients"], values["ns_steps"], values["eps"],
                         math.sqrt(sums["direction_sq"]))


def adjusted_lr(lr: float, shape: Sequence[int], adjust_lr_fn: str | None) -> float:
    """Muon's learning rate for a matrix of ``shape`` ``(A, B)``: ``lr sqrt(max(1, A/B))``
    (``"original"``, the default) or ``0.2 lr sqrt(max(A, B))`` (``"match_rms_adamw"``,
    the RMS of AdamW's updates)."""
    rows, columns = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, columns))
    return lr * math.sqrt(max(1.0, rows / columns)) if columns else lr  # (empty: no step)


# -- the arrays' library ------------------------------------------------------------------------

def as_matrix(view: Any, shape: tuple[int, ...], order: str, storage: str, dtype: Any
              ) -> Any:
    """A flat kernel view as a matrix of its library's arrays in ``dtype`` (the uint16 bits
    of float16 and bfloat16 host arrays widened); zero-copy where it already is one."""
    array = to_float32(_library_array(view), storage)
    return array.reshape(shape, order=order).astype(dtype, copy=False)


def as_kernel_view(matrix: Any, like: Any, order: str, storage: str) -> Any:
    """A computed matrix as the flat view a kernel reads in ``g``'s place: in ``like``'s
    dtype and memory order, on its device; for float16/bfloat16 parameters (host arrays)
    their uint16 bits, rounded to nearest even."""
    if storage:
        values = np.asarray(matrix, order=order).reshape(-1, order=order)
        return values.astype(storage_dtype(storage)).view(np.uint16)
    xp = _library(matrix)
    flat = xp.asarray(matrix, dtype=like.dtype, order=order).reshape(-1, order=order)
    if isinstance(like, np.ndarray):
        return flat
    from numba import cuda

    from fastgd.device_pointers import SIMULATOR

    return cuda.to_device(flat) if SIMULATOR else cuda.as_cuda_array(flat)


def on_stream(stream: Any, like: Any) -> AbstractContextManager[Any]:
    """Run the library's work for arrays ``like`` on the step's ``stream`` (any kind
    :func:`fastgd.cuda.as_stream` takes; None: the default stream)."""
    from fastgd.device_pointers import SIMULATOR

    if isinstance(like, np.ndarray) or SIMULATOR:
        return nullcontext()
    from fastgd.cuda import as_stream

    handle = as_stream(stream).handle
    return _cupy().cuda.ExternalStream(int(getattr(handle, "value", handle) or 0))


def require(like: Any) -> None:
    """Refuse (``TypeError``), before anything is written, arrays whose library cannot
    compute a direction: GPU arrays without CuPy."""
    from fastgd.device_pointers import SIMULATOR

    if not isinstance(like, np.ndarray) and not SIMULATOR:
        _cupy()


def _library_array(view: Any) -> Any:
    if isinstance(view, np.ndarray):
        return view
    from fastgd.device_pointers import SIMULATOR

    if SIMULATOR:  # (the simulator's device arrays hold host memory)
        return view.copy_to_host()
    return _cupy().asarray(view)


def _cupy() -> Any:
    try:
        import cupy
    except ImportError:
        raise TypeError("Muon on the GPU needs CuPy for its matrix products") from None
    return cupy
