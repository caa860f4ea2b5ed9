"""Every real CUDA kernel (one-tensor and many-tensor, each state precision) compiles to PTX
for compute capability 9.0, without a GPU, and the float32 kernels do no float64 arithmetic
(NVVM comes with ``numba-cuda[cu13]``)."""

import os
import re

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the simulator does not compile PTX", allow_module_level=True)
pytest.importorskip("numba.cuda")

from fastgd import cuda  # noqa: E402
from fastgd.algorithms import SPECS  # noqa: E402
from fastgd.kernelgen import eight_bit_kernels  # noqa: E402

VARIANTS = [(spec, present) for spec in SPECS.values() for present in spec.variants()]
#: (low-precision state: float32 parameters)
LOW_BIT = [(spec, present, storage) for spec, present in VARIANTS
           for storage in cuda.STORAGES if storage
           and (storage != "s8" or eight_bit_kernels(spec))]
F64_ARITHMETIC = re.compile(
    r"^\s*(add|sub|mul|div|fma|sqrt|rsqrt|rcp|max|min|neg|abs|cvt)[.\w]*\.f64\b", re.M)


@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec, present", VARIANTS,
                         ids=[s.kernel_name(p, "cuda") for s, p in VARIANTS])
def test_kernel_compiles_to_ptx(spec, present, dtype, many):
    if many and spec.sums:
        pytest.skip("a pass with sums runs over one tensor at a time")
    ptx = _ptx(spec, present, dtype, many)
    assert ".target sm_90" in ptx
    assert ".visible .entry" in ptx
    f64 = F64_ARITHMETIC.findall(ptx)
    if dtype == np.float32:
        assert not f64, f"float32 kernel does float64 arithmetic: {sorted(set(f64))}"
    else:
        assert f64  # the pattern does match float64 arithmetic


@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
@pytest.mark.parametrize("spec, present, storage", LOW_BIT,
                         ids=[f"{s.kernel_name(p, 'cuda')}-{f}" for s, p, f in LOW_BIT])
def test_low_precision_state_kernel_compiles_to_ptx(spec, present, storage, many):
    if many and spec.sums:
        pytest.skip("a pass with sums runs over one tensor at a time")
    ptx = _ptx(spec, present, np.float32, many, storage)
    assert ".visible .entry" in ptx
    f64 = F64_ARITHMETIC.findall(ptx)
    assert not f64, f"float32 kernel does float64 arithmetic: {sorted(set(f64))}"
    if cuda.blockwise(spec, present, storage):  # (a warp per block: shuffles, shared tables)
        assert "shfl.sync.bfly" in ptx and "ld.shared" in ptx


def _ptx(spec, present, dtype, many, storage=""):
    try:
        return cuda.compile_ptx(spec, present, dtype, many=many, storage=storage)
    except Exception as exc:  # no NVVM in this environment
        if "NVVM" in str(exc) or "libnvvm" in str(exc).lower():
            pytest.skip(f"NVVM unavailable: {exc}")
        raise
