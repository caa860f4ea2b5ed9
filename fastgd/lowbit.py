"""Optimizer state at reduced precision: its forms, and the conversions between them.

A parameter's state array is held in one of three forms, chosen by ``state_precision``:

* ``"full"``: the dtype the update computes in (the parameter's; float32 for float16 and
  bfloat16 parameters);
* ``"bf16"``: bfloat16 (``ml_dtypes.bfloat16``);
* ``"8bit"``: for the states an algorithm declares quantized (:class:`fastgd.algorithms.State`
  ``eight_bit``), two entries: ``name``, uint8 codes shaped like the parameter, and
  ``name + "_absmax"``, float32, one per block of :data:`fastgd.quantization.BLOCK_SIZE`
  elements (bitsandbytes' blockwise dynamic quantization, :mod:`fastgd.quantization`); the
  other states stay at full precision. Parameters with fewer than ``min_8bit_size``
  elements keep full-precision state, as bitsandbytes does (their state is small, and a
  block of a few elements gains little).

Low precision needs a parameter that computes in float32
(:func:`fastgd.arrays.check_state_precision`), on the host or a GPU. Conversions run on the
host: 8-bit state is dequantized to float32, other forms are widened or rounded to nearest
even.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fastgd import arrays
from fastgd.kernelgen import ABSMAX

#: parameters with fewer elements keep full-precision state under ``"8bit"`` (bitsandbytes')
MIN_8BIT_SIZE = 4096


def blocks(size: int) -> int:
    """Quantization blocks of a state of ``size`` elements."""
    from fastgd.quantization import BLOCK_SIZE

    return -(-size // BLOCK_SIZE)


def effective(precision: str, size: int, min_8bit_size: int) -> str:
    """The precision of a parameter of ``size`` elements' state: ``"8bit"`` falls back to
    ``"full"`` below ``min_8bit_size``."""
    return "full" if precision == "8bit" and size < min_8bit_size else precision


def form_of(entry: Mapping[str, Any], name: str, param: Any) -> str | None:
    """The form of ``entry[name]``, a state of ``param`` (a view; the state a host or
    device array), or None when it is none of them (not an array shaped like ``param``;
    absmax missing or of the wrong length): then it is left to the checks, which refuse
    it."""
    array = arrays.plain(entry.get(name))
    if not _plain_array(array) or tuple(array.shape) != tuple(param.shape):
        return None
    if array.dtype == np.uint8:
        absmax = arrays.plain(entry.get(name + ABSMAX))
        ok = (_plain_array(absmax) and absmax.dtype == np.float32
              and tuple(absmax.shape) == (blocks(param.size),))
        return "8bit" if ok else None
    if arrays.storage(array) == "bf16":
        return "bf16"
    return "full" if array.dtype == arrays.state_dtype(param) else None


def _plain_array(x: Any) -> bool:
    """Whether ``x`` is a NumPy or Numba device array (what the optimizer makes, or a torch
    tensor's view)."""
    return isinstance(x, np.ndarray) or (arrays.is_device(x) and not arrays.is_torch(x))


def values(entry: Mapping[str, Any], name: str, quantized: str) -> np.ndarray:
    """The values (a host array) of state ``name`` of ``entry`` in any form."""
    array = arrays.to_host(arrays.plain(entry[name]))
    if array.dtype != np.uint8:
        return array
    from fastgd.quantization import dequantize_blockwise

    absmax = np.ascontiguousarray(arrays.to_host(arrays.plain(entry[name + ABSMAX])))
    return dequantize_blockwise(array, absmax, signed=quantized == "signed")


def make(param: Any, name: str, data: Any, target: str, quantized: str) -> dict[str, Any]:
    """The entries of state ``name`` of ``param`` (a view) in form ``target``, holding
    ``data`` (values, or a number to fill with)."""
    if target != "8bit":
        dtype = arrays.state_dtype(param, target)
        if isinstance(data, (int, float)):
            return {name: arrays.zeros_like(param, fill=data, dtype=dtype)}
        return {name: arrays.convert_state(data, param, dtype)}
    if isinstance(data, (int, float)):
        data = np.full(param.shape, data, dtype=np.float32)
    from fastgd.quantization import quantize_blockwise

    codes, absmax = quantize_blockwise(np.asarray(data, dtype=np.float32),
                                       signed=quantized == "signed")
    return {name: arrays.convert_state(codes, param, np.dtype(np.uint8)),
            name + ABSMAX: arrays.on_device_of(absmax, param)}


def convert(entry: dict[str, Any], name: str, param: Any, target: str, quantized: str
            ) -> None:
    """Put state ``name`` of ``entry`` into form ``target`` (it is in another form)."""
    data = values(entry, name, quantized)
    entry.pop(name + ABSMAX, None)
    entry.update(make(param, name, data, target, quantized))


def rounding_keys(seed: int, step: int, indices: Any) -> np.ndarray:
    """The stochastic-rounding key of each parameter (by its index in the optimizer) at
    ``step``: 32 bits of SplitMix64 of the three, so that the same seed rounds a run the
    same way again (a resumed run too) and every step and parameter differently. The
    kernel adds a state's number and mixes in each element's number
    (:func:`fastgd.halfprec.float32_to_bfloat16_stochastic`)."""
    offset = (seed * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) % 2**64
    x = np.asarray(indices, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(offset)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(32)).astype(np.int64)
