"""float16 and bfloat16 storage: bit conversions to and from float32 inside kernels.

Numba has no float16 or bfloat16 arrays on the CPU, so low-precision arrays reach the
kernels as ``uint16`` views of the same memory and every element is converted as it is read
and written; the arithmetic runs in float32. float16 uses the hardware conversion (LLVM
``fpext``/``fptrunc``, round to nearest even); bfloat16 keeps the upper half of a float32,
rounded to nearest even, with NaN kept quiet.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

inline = numba.njit(inline="always", error_model="numpy")


@intrinsic
def half_bits_to_float32(typingctx, bits):
    """float32 value of IEEE binary16 ``bits`` (uint16)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def float32_to_half_bits(typingctx, value):
    """IEEE binary16 bits (uint16) of float32 ``value``, rounded to nearest even."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def float32_as_bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@inline
def bfloat16_bits_to_float32(bits):
    """float32 value of bfloat16 ``bits`` (uint16): the upper half of a float32."""
    return bits_as_float32(np.uint32(bits) << np.uint32(16))


@inline
def float32_to_bfloat16_bits(value):
    """bfloat16 bits (uint16) of float32 ``value``, rounded to nearest even; NaN stays NaN."""
    u = float32_as_bits(value)
    if value != value:
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    bias = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16((u + bias) >> np.uint32(16))


@intrinsic
def mix32(typingctx, x):
    """MurmurHash3's 32-bit finalizer of uint32 ``x``: a bijection whose output bits each
    depend on every input bit (a counter-based source of random bits). Written in 32-bit
    LLVM operations: Numba would compute uint32 products in 64 bits, which x86 vectorizes
    poorly."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = args[0]
        for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            v = builder.mul(builder.xor(v, builder.lshr(v, i32(shift))), i32(factor))
        return builder.xor(v, builder.lshr(v, i32(16)))

    return types.uint32(types.uint32), codegen


@inline
def float32_to_bfloat16_stochastic(value, key, index):
    """bfloat16 bits (uint16) of float32 ``value`` rounded stochastically: up with
    probability equal to the dropped fraction of a bfloat16 unit (unbiased), from 16 bits of
    ``mix32(key + mix32(index))`` (``index`` an element's number, ``key`` a per-tensor,
    per-step and per-state number), so that the rounding is reproducible; NaN stays NaN."""
    u = float32_as_bits(value)
    if value != value:
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    noise = mix32(np.uint32(np.uint32(key) + mix32(np.uint32(
        np.uint32(index & 0xFFFFFFFF) ^ np.uint32(index >> 32)))))
    return np.uint16((u + (noise & np.uint32(0xFFFF))) >> np.uint32(16))


#: storage format -> (load function name, store function name) used by generated kernels
CONVERSIONS = {
    "f16": ("half_bits_to_float32", "float32_to_half_bits"),
    "bf16": ("bfloat16_bits_to_float32", "float32_to_bfloat16_bits"),
}


def to_float32(bits: np.ndarray, storage: str) -> np.ndarray:
    """float32 values (a new array) of flat uint16 ``bits`` of ``storage`` format;
    other arrays are returned unchanged."""
    if storage == "f16":
        return bits.view(np.float16).astype(np.float32)
    if storage == "bf16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return bits
