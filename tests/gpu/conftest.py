"""GPU tests: run on a real GPU, or in CI under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu``); skipped otherwise."""

import pytest

cuda = pytest.importorskip("numba.cuda")

if not cuda.is_available():
    pytest.skip("no CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 for the simulator)",
                allow_module_level=True)
