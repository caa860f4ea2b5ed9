"""The CPU element loops vectorize, and float32 loops stay in float32.

Each variant's serial loop (the body of every CPU kernel) is compiled afresh, without the
on-disk cache, so that its machine code can be read: it must contain packed (SIMD)
arithmetic of its dtype, and a float32 loop no float64 arithmetic at all (a float64 scalar
in a float32 loop halves the throughput; the float64 coefficients are cast to float32 once,
before the loop, which the patterns do not count as arithmetic).
"""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from numba import types

from fastgd import cpu
from fastgd.algorithms import SPECS
from fastgd.kernelgen import array_args

VARIANTS = [(spec, present) for spec in SPECS.values() for present in spec.variants()]


def packed(precision: str) -> re.Pattern[str]:
    """x86 packed arithmetic (SSE or AVX) of single (``s``) or double (``d``) precision."""
    return re.compile(rf"^\s*v?(add|sub|mul|div|sqrt|max|min|fmadd\w*)p{precision}\b", re.M)


def any_arithmetic(precision: str) -> re.Pattern[str]:
    """x86 arithmetic, scalar or packed, or a conversion to ``precision``."""
    return re.compile(
        rf"^\s*v?((add|sub|mul|div|sqrt|max|min|fmadd\w*)[sp]{precision}|cvt\w*2s{precision})\b",
        re.M)


def serial_asm(spec, present, dtype, storage: str = "") -> str:
    """Machine code of the serial loop; ``storage="sbf16"``: with bfloat16 state (uint16
    arrays after param and grad, for the states kept in bfloat16)."""
    scalar = numba.from_dtype(np.dtype(dtype))
    arrays = (scalar[::1],) * 2 + tuple(
        (types.uint16 if storage and spec.form(name, "bf16") == "bf16" else scalar)[::1]
        for name in array_args(spec, present)[2:])
    signature = (arrays + (types.UniTuple(types.float64, len(spec.coefficients) + 1),)
                 + (types.boolean,) * len(spec.flags))
    serial = cpu.kernel(spec, present, "serial", storage)
    fresh = numba.njit(error_model="numpy",  # (uncached: its code can be read)
                       fastmath=serial.targetoptions.get("fastmath", False))(serial.py_func)
    fresh.compile(signature)
    return kernel_code(fresh.inspect_asm(signature))


def kernel_code(asm: str) -> str:
    """The kernel's own functions in ``asm``, without the Python wrapper (whose boxing of a
    returned float32 converts it to a float64 Python float)."""
    kept, keep = [], True
    for line in asm.splitlines():
        if re.match(r"^[^\s.].*:$", line):  # (a function's label)
            keep = "cpython" not in line
        if keep:
            kept.append(line)
    return "\n".join(kept)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec, present", VARIANTS,
                         ids=[s.kernel_name(p, "cpu") for s, p in VARIANTS])
def test_element_loop_vectorizes_in_its_dtype(spec, present, dtype):
    asm = serial_asm(spec, present, dtype)
    own, other = ("s", "d") if dtype == np.float32 else ("d", "s")
    assert packed(own).search(asm), "no packed arithmetic: the loop did not vectorize"
    if dtype == np.float32:
        found = sorted({m.group(0).strip() for m in any_arithmetic(other).finditer(asm)})
        assert not found, f"float64 arithmetic in a float32 loop: {found}"


def test_the_patterns_tell_the_precisions_apart():
    assert packed("s").search("\tvmulps\t%ymm1, %ymm2, %ymm3")
    assert not packed("s").search("\tvmulss\t%xmm1, %xmm2, %xmm3")
    assert any_arithmetic("d").search("\tvaddsd\t%xmm1, %xmm2, %xmm3")
    assert any_arithmetic("d").search("\tvcvtss2sd\t%xmm1, %xmm1, %xmm1")
    assert not any_arithmetic("d").search("\tvaddss\t%xmm1, %xmm2, %xmm3")


@pytest.mark.parametrize("spec, present", VARIANTS,
                         ids=[s.kernel_name(p, "cpu") for s, p in VARIANTS])
def test_bf16_state_loop_vectorizes_in_float32(spec, present):
    asm = serial_asm(spec, present, np.float32, "sbf16")
    assert packed("s").search(asm), "no packed arithmetic: the loop did not vectorize"
    found = sorted({m.group(0).strip() for m in any_arithmetic("d").finditer(asm)})
    assert not found, f"float64 arithmetic in a float32 loop: {found}"
