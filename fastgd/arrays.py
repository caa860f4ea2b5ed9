"""What counts as one array, zero-copy views of it, and the checks every update makes.

One array is a NumPy array (memmaps too), a torch tensor (CPU or CUDA), or anything exposing
``__array_interface__`` (host memory) or ``__cuda_array_interface__`` (GPU memory: CuPy
arrays, Numba device arrays, torch CUDA tensors); :func:`is_array` tells one array from a
sequence of them. Everything here runs *before* any array is written: a call either passes
every check or raises ``TypeError``/``ValueError`` naming the offending argument, with nothing
changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from fastgd import pointers

#: dtypes the kernels compute in.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: low-precision parameter dtypes (CPU): stored as float16/bfloat16, computed in float32.
LOW_PRECISION = {"float16": "f16", "bfloat16": "bf16"}
_ALIGN = 64


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def is_device(x: Any) -> bool:
    """Whether ``x`` is a GPU array (``__cuda_array_interface__``, a torch CUDA tensor or a
    CUDA-simulator array)."""
    if is_torch(x):
        return x.device.type == "cuda"
    return hasattr(x, "__cuda_array_interface__") or type(x).__name__ == "FakeCUDAArray"


def is_array(x: Any) -> bool:
    """Whether ``x`` is one array (host or GPU), as opposed to a sequence of arrays.

    Array libraries make their arrays iterable (over rows), so this is asked before ``x`` is
    treated as a sequence."""
    return (isinstance(x, np.ndarray) or is_torch(x) or hasattr(x, "__array_interface__")
            or is_device(x) or is_dask(x))


def stand_in(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that holds no memory (every element is
    one zero): what shape and dtype checks need of an array that is not there."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def is_dask(x: Any) -> bool:
    """Whether ``x`` is a Dask array (without importing Dask)."""
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def _where(device: bool) -> str:
    return "a GPU array" if device else "a host array"


def as_ndarray(x: Any, name: str, *, writable: bool, codes: bool = False) -> np.ndarray:
    """Zero-copy NumPy view of ``x``; anything that would need a copy is refused.

    Accepts NumPy arrays (memmaps too), torch CPU tensors and objects exposing
    ``__array_interface__``. Inputs that are only read (``writable=False``) may also be any
    array-like, since copying them loses nothing.
    """
    if isinstance(x, np.ndarray):
        arr = x
    elif is_torch(x) and str(x.dtype) == "torch.bfloat16":
        arr = _torch_bfloat16_view(x, name)
    elif is_torch(x):
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
    _check_dtype(arr, name, codes)
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; fastgd updates arrays in place")
    return arr


def _torch_bfloat16_view(x: Any, name: str) -> np.ndarray:
    """Zero-copy ``ml_dtypes.bfloat16`` NumPy view of a torch bfloat16 CPU tensor."""
    try:
        import ml_dtypes
        import torch
    except ImportError:
        raise TypeError(f"{name} is a bfloat16 tensor: install ml_dtypes to update it in "
                        "place") from None
    try:
        return x.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    except (RuntimeError, TypeError) as exc:
        raise TypeError(f"{name}: this torch tensor has no zero-copy NumPy view ({exc})"
                        ) from None


def torch_view(arr: np.ndarray) -> Any:
    """A torch CPU tensor over a NumPy array's memory, without a copy (bfloat16 ones
    through their bits): the inverse of :func:`as_ndarray` on a torch tensor."""
    import torch

    if storage(arr) == "bf16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def as_device_array(x: Any, name: str, *, writable: bool, codes: bool = False) -> Any:
    """Zero-copy Numba device-array view of a CUDA array (Numba, CuPy, torch CUDA);
    ``codes``: uint8 is accepted too (8-bit state)."""
    if is_torch(x):  # (torch refuses the interface of a tensor that requires grad)
        x = x.detach()
    try:
        from fastgd import cuda

        interface = getattr(x, "__cuda_array_interface__", None)
        if writable and interface is not None and interface["data"][1]:
            raise ValueError(f"{name} is read-only; fastgd updates arrays in place")
        arr = cuda.as_device_array(x)
    except ImportError as exc:  # numba-cuda missing, or no usable driver/GPU
        raise TypeError(f"{name} is a GPU array but CUDA is unavailable here: {exc}") from None
    _check_dtype(arr, name, codes)
    return arr


def as_array(x: Any, name: str, *, writable: bool, device: bool, codes: bool = False) -> Any:
    """:func:`as_ndarray` or :func:`as_device_array`; refuses a host/GPU mix. ``codes``:
    uint8 is accepted too (8-bit state)."""
    if is_device(x) != device:
        raise TypeError(f"{name} is {_where(not device)} but param is {_where(device)}; "
                        "all arrays of an update must live on the same device")
    if device:
        return as_device_array(x, name, writable=writable, codes=codes)
    return as_ndarray(x, name, writable=writable, codes=codes)


def _check_dtype(arr: Any, name: str, codes: bool = False) -> None:
    if codes and arr.dtype == np.uint8:
        return
    if arr.dtype not in FLOAT_DTYPES and arr.dtype.name not in LOW_PRECISION:
        raise TypeError(f"{name} must have dtype float32, float64, float16 or bfloat16, got "
                        f"{arr.dtype}")


_STORAGE: dict[Any, str] = {}


def storage(arr: Any) -> str:
    """Storage format of a parameter array: ``""``, ``"f16"`` or ``"bf16"``."""
    dtype = arr.dtype
    try:
        return _STORAGE[dtype]
    except KeyError:  # dtype.name is slow: look it up once per dtype
        return _STORAGE.setdefault(dtype, LOW_PRECISION.get(dtype.name, ""))


#: Precisions of optimizer state: ``"full"`` (the dtype the update computes in), ``"bf16"``
#: (bfloat16) or ``"8bit"`` (blockwise 8-bit codes): the last two for parameters that compute
#: in float32 (see :mod:`fastgd.lowbit`).
STATE_PRECISIONS = ("full", "bf16", "8bit")


def bfloat16() -> np.dtype:
    """NumPy's bfloat16 dtype (``ml_dtypes.bfloat16``)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def storage_dtype(storage_format: str) -> np.dtype:
    """The dtype of a low-precision storage format (``"f16"``, ``"bf16"``)."""
    return np.dtype(np.float16) if storage_format == "f16" else bfloat16()


def state_dtype(param: Any, precision: str = "full") -> np.dtype:
    """dtype of the optimizer state of ``param`` at ``precision``: ``"full"``, its own
    (float32 for float16/bfloat16 parameters); ``"bf16"``, bfloat16."""
    if precision == "bf16":
        return bfloat16()
    if precision == "8bit":
        return np.dtype(np.uint8)
    return np.dtype(np.float32) if storage(param) else np.dtype(param.dtype)


def check_state_precision(precision: Any, param: Any = None, name: str = "param") -> str:
    """``precision``, checked (one of :data:`STATE_PRECISIONS`), and, with ``param`` (a
    checked array view), that ``param`` can have state of it: low-precision state needs a
    parameter that computes in float32."""
    if precision not in STATE_PRECISIONS:
        raise ValueError(f"state_precision must be one of {STATE_PRECISIONS}, got "
                         f"{precision!r}")
    if precision == "full" or param is None:
        return precision
    if state_dtype(param) != np.float32:
        raise ValueError(f"{name} is {param.dtype}: state_precision={precision!r} needs "
                         "float32, float16 or bfloat16 parameters (float64 ones keep "
                         "full-precision state)")
    return precision


def kernel_view(arr: Any, order: str) -> Any:
    """Flat view the kernels read: uint16 bits for float16/bfloat16, else :func:`flat`."""
    view = flat(arr, order)
    return view.view(np.uint16) if storage(arr) else view


def memory_order(arr: Any, name: str) -> str:
    """``'C'`` or ``'F'``: the order in which ``arr`` is one contiguous block."""
    if arr.flags["C_CONTIGUOUS"]:
        return "C"
    if arr.flags["F_CONTIGUOUS"]:
        return "F"
    raise ValueError(f"{name} must be contiguous (C or Fortran order), got strides "
                     f"{arr.strides}; fastgd never updates a copy")


def check_like(arr: Any, ref: Any, order: str, name: str, ref_name: str = "param",
               dtype: Any = None) -> None:
    """``arr`` must match ``ref`` in shape, dtype (or ``dtype``) and memory order."""
    if tuple(arr.shape) != tuple(ref.shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)} "
                         f"like {ref_name}")
    expected = ref.dtype if dtype is None else dtype
    if arr.dtype != expected:
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {expected}"
                        + (f" like {ref_name}" if dtype is None else
                           f" for {ref_name} ({ref.dtype})"))
    if not arr.flags[f"{order}_CONTIGUOUS"]:
        raise ValueError(f"{name} must be contiguous in the same ({order}) order as "
                         f"{ref_name}; got strides {arr.strides}")


def flat(arr: Any, order: str) -> Any:
    """1-D view of a contiguous (host or device) array; never a copy."""
    return arr if arr.ndim == 1 else arr.reshape(arr.size, order=order)


def shares_memory(a: Any, b: Any) -> bool:
    """Whether two contiguous arrays of the same device overlap in memory."""
    if not (a.size and b.size):
        return False
    if isinstance(a, np.ndarray):
        return bool(np.may_share_memory(a, b))
    from fastgd import cuda

    span_a, span_b = cuda.device_span(a), cuda.device_span(b)
    if span_a is None or span_b is None:
        return False
    return span_a[0] < span_b[0] + span_b[1] and span_b[0] < span_a[0] + span_a[1]


def check_no_overlap(arrays: Mapping[str, Any]) -> None:
    """Refuse arrays that share memory: an in-place update of one would corrupt another."""
    items = list(arrays.items())
    for i, (name_a, a) in enumerate(items):
        for name_b, b in items[i + 1:]:
            if shares_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} share memory; pass separate arrays")


def check_stream(stream: Any, arrays: list[Any]) -> None:
    """``stream=`` is for updates of GPU arrays, and must be a stream (see
    :func:`fastgd.cuda.as_stream`)."""
    if not all(is_device(a) for a in arrays):
        raise TypeError("stream applies to GPU arrays only")
    if arrays:
        from fastgd import cuda

        cuda.as_stream(stream)


def gpu_of(arr: Any) -> int | None:
    """The GPU that holds ``arr`` (its ordinal), or None for a host array."""
    if not is_device(arr):
        return None
    from fastgd import cuda

    return cuda.device_ordinal(arr)


def on_gpu(gpu: int | None) -> AbstractContextManager[Any]:
    """Context in which kernels launch on GPU ``gpu`` (nothing to do for None: the host)."""
    if gpu is None:
        return nullcontext()
    from fastgd import cuda

    return cuda.on_gpu(gpu)


def check_same_gpu(arrays: Mapping[str, Any]) -> None:
    """Device arrays of one update must all be on the same GPU."""
    from fastgd import cuda

    ordinals = {name: cuda.device_ordinal(arr) for name, arr in arrays.items()}
    first = next(iter(ordinals.values()))
    for name, ordinal in ordinals.items():
        if ordinal != first:
            raise ValueError(f"{name} is on GPU {ordinal} but param is on GPU {first}")


def zeros_like(param: Any, fill: float = 0.0, dtype: Any = None) -> Any:
    """A new array like ``param`` (on its device, of ``dtype`` if given) filled with ``fill``.

    On the host its address has the same offset modulo 64 bytes as ``param``.

    Kernels align their vector loop on ``param``; a state array with the same offset is then
    aligned too (plain ``np.zeros`` gives 16-byte alignment, whatever ``param`` has).
    """
    if not isinstance(param, np.ndarray):
        from fastgd import cuda

        return cuda.zeros_like(param, fill, dtype=dtype)
    dtype = np.dtype(param.dtype if dtype is None else dtype)
    nbytes = param.size * dtype.itemsize
    offset = param.ctypes.data % _ALIGN
    buffer = np.empty(nbytes + 2 * _ALIGN, dtype=np.uint8)
    start = (offset - buffer.ctypes.data) % _ALIGN
    order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
    arr = buffer[start:start + nbytes].view(dtype).reshape(param.shape, order=order)
    arr.fill(fill)
    return arr


def plain(x: Any) -> Any:
    """A torch tensor's zero-copy view (a NumPy or Numba device array); anything else (or a
    tensor without such a view) as it is."""
    if not is_torch(x):
        return x
    try:
        return as_array(x, "state", writable=False, device=is_device(x), codes=True)
    except (TypeError, ValueError):
        return x


def to_host(arr: Any) -> np.ndarray:
    """A host (NumPy) copy of a host or device array."""
    return arr.copy() if isinstance(arr, np.ndarray) else arr.copy_to_host()


def from_host(values: np.ndarray, like: Any, dtype: Any = None) -> Any:
    """A new array like ``like`` (same device, shape, alignment; ``like``'s dtype unless
    ``dtype`` is given) holding ``values``."""
    if isinstance(like, np.ndarray):
        arr = zeros_like(like, dtype=dtype)
        arr[...] = values
        return arr
    from fastgd import cuda

    return cuda.to_device(values, like, dtype)


def on_device_of(values: np.ndarray, like: Any) -> Any:
    """A copy of host ``values`` (any shape) on ``like``'s device."""
    if isinstance(like, np.ndarray):
        return values.copy()
    from fastgd import cuda

    return cuda.to_device(values)


def convert_state(array: Any, like: Any, dtype: np.dtype) -> Any:
    """A new state array like ``like`` (a parameter's view: same device, shape, alignment)
    holding ``array``'s values in ``dtype`` (rounded to nearest even when narrowed to
    bfloat16; widened exactly)."""
    return from_host(to_host(array), like, dtype)


def same_layout_address(x: Any, shape: tuple[int, ...], dtype: np.dtype,
                        strides: tuple[int, ...], order: str) -> int | None:
    """The device address of ``x`` if it is a GPU array (Numba, or with
    ``__cuda_array_interface__``) of exactly this shape, dtype and strides (``None`` for
    strides in the interface means C order); None otherwise. A cheap look, for arrays
    already checked in full once."""
    if hasattr(x, "device_ctypes_pointer"):  # a Numba device array: its own attributes
        if x.shape == shape and x.dtype == dtype and x.strides == strides:
            return x.device_ctypes_pointer.value
        return None
    interface = getattr(x, "__cuda_array_interface__", None)
    if (interface is None or tuple(interface["shape"]) != shape
            or interface["typestr"] != dtype.str):
        return None
    layout = interface.get("strides")
    if (order != "C" and len(shape) > 1) if layout is None else tuple(layout) != strides:
        return None
    return interface["data"][0]


def address(arr: Any) -> int:
    """Address of the first element of a host or device array."""
    if isinstance(arr, np.ndarray):
        return pointers.address(arr)
    from fastgd.device_pointers import device_address

    return device_address(arr)
