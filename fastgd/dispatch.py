"""Array checks, zero-copy views and scalar preparation shared by every update.

Everything here runs *before* any array is written: a call either passes every check or
raises ``TypeError``/``ValueError`` naming the offending argument, with nothing changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: dtypes the kernels are compiled for.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ALIGN = 64


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_ndarray(x: Any, name: str, *, writable: bool) -> np.ndarray:
    """Zero-copy NumPy view of ``x``; anything that would need a copy is refused.

    Accepts NumPy arrays (memmaps too), torch CPU tensors and objects exposing
    ``__array_interface__``. Inputs that are only read (``writable=False``) may also be any
    array-like, since copying them loses nothing.
    """
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array; the CPU kernels need host (NumPy) memory")
    elif _is_torch_tensor(x):
        try:
            arr = x.detach().numpy()
        except (RuntimeError, TypeError) as exc:
            raise TypeError(f"{name}: this torch tensor has no zero-copy NumPy view ({exc})"
                            ) from None
    elif hasattr(x, "__array_interface__"):
        arr = np.asarray(x)
        if writable and arr.__array_interface__["data"][0] != x.__array_interface__["data"][0]:
            raise TypeError(f"{name}: {type(x).__name__} cannot be viewed without a copy")
    elif not writable and x is not None:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array, got {type(x).__name__}: {exc}") from None
    else:
        raise TypeError(f"{name} must be a NumPy array or a tensor that NumPy can view "
                        f"without a copy, got {type(x).__name__}")
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; fastgd updates arrays in place")
    return arr


def memory_order(arr: np.ndarray, name: str) -> str:
    """``'C'`` or ``'F'``: the order in which ``arr`` is one contiguous block."""
    if arr.flags.c_contiguous:
        return "C"
    if arr.flags.f_contiguous:
        return "F"
    raise ValueError(f"{name} must be contiguous (C or Fortran order), got strides "
                     f"{arr.strides}; fastgd never updates a copy")


def check_like(arr: np.ndarray, ref: np.ndarray, order: str, name: str,
               ref_name: str = "param") -> None:
    """``arr`` must match ``ref`` in shape, dtype and memory order."""
    if arr.shape != ref.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {ref.shape} like {ref_name}")
    if arr.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {ref.dtype} like {ref_name}")
    contiguous = arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous
    if not contiguous:
        raise ValueError(f"{name} must be contiguous in the same ({order}) order as "
                         f"{ref_name}; got strides {arr.strides}")


def flat(arr: np.ndarray, order: str) -> np.ndarray:
    """1-D view of a contiguous array (never a copy)."""
    return arr.reshape(-1, order=order)


def check_no_overlap(arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse arrays that share memory: an in-place update of one would corrupt another."""
    items = [(n, a) for n, a in arrays.items() if a.size]
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} share memory; pass separate arrays")


def prepare(param: Any, grad: Any, states: Mapping[str, Any]) -> list[np.ndarray]:
    """Check ``param``, ``grad`` and the state arrays; return their flat views in order."""
    p = as_ndarray(param, "param", writable=True)
    order = memory_order(p, "param")
    arrays = {"param": p, "grad": as_ndarray(grad, "grad", writable=False)}
    for name, value in states.items():
        arrays[name] = as_ndarray(value, name, writable=True)
    for name, arr in arrays.items():
        if name != "param":
            check_like(arr, p, order, name)
    check_no_overlap(arrays)
    return [flat(a, order) for a in arrays.values()]


def zeros_like(param: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """A new array like ``param`` whose address has the same offset modulo 64 bytes.

    Kernels align their vector loop on ``param``; a state array with the same offset is then
    aligned too (plain ``np.zeros`` gives 16-byte alignment, whatever ``param`` has).
    """
    offset = param.ctypes.data % _ALIGN
    buffer = np.empty(param.nbytes + 2 * _ALIGN, dtype=np.uint8)
    start = (offset - buffer.ctypes.data) % _ALIGN
    order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
    arr = buffer[start:start + param.nbytes].view(param.dtype).reshape(param.shape, order=order)
    arr.fill(fill)
    return arr


def cast_scalars(dtype: np.dtype, values: tuple[float, ...]) -> tuple[Any, ...]:
    """Per-step coefficients (computed in float64 on the host) cast to the array dtype."""
    to = dtype.type
    return tuple(to(v) for v in values)
