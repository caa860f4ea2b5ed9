"""Start-up cost: ``import fastgd`` and the first ``fastgd.Adam`` step, in a fresh process.

Each sample is a new Python process (asv's ``timeraw_``): NumPy is imported and the float32
arrays are made untimed; the timed part imports fastgd (and Numba) and takes one step, which
loads the kernel from the on-disk cache (``warm_cache``: ``setup`` fills the default cache
first) or generates and compiles it (``cold_cache``: ``FASTGD_CACHE_DIR`` is pointed at a new,
empty temporary directory, removed when the process exits). With 1_000 elements the step uses
the serial kernel only, with 2**20 the parallel one too (which calls the serial one).
"""

from __future__ import annotations

import os

import numpy as np

import fastgd

#: The directory fastgd was imported from here; the timed processes import the same fastgd
#: (asv does not pass ASV_PYTHONPATH on to them).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastgd.__file__)))

_ARRAYS = """
import sys
if {root!r} not in sys.path:
    sys.path.insert(0, {root!r})
import numpy as np
p = np.ones({size}, np.float32)
g = np.full({size}, 0.5, np.float32)
"""

_COLD_CACHE = """
import atexit, os, shutil, tempfile
cache = tempfile.mkdtemp(prefix="fastgd-asv-cold-")
atexit.register(shutil.rmtree, cache, True)
os.environ["FASTGD_CACHE_DIR"] = cache
"""

_IMPORT_AND_STEP = """
import fastgd
fastgd.Adam([p]).step([g])
"""


class ImportFirstAdamStep:
    """``import fastgd`` + ``fastgd.Adam([p]).step([g])`` in a new process (timed), warm or cold
    kernel cache; a few samples, each a process of its own."""

    params = [[1_000, 2**20]]
    param_names = ["size"]
    number = 1
    repeat = (3, 5, 20.0)
    warmup_time = 0.0
    timeout = 300.0

    def setup(self, size: int) -> None:
        # The same kernels, in the cache the timed processes use (they inherit the environment).
        fastgd.Adam([np.ones(size, np.float32)]).step([np.full(size, 0.5, np.float32)])

    def timeraw_warm_cache(self, size: int) -> tuple[str, str]:
        return _IMPORT_AND_STEP, _ARRAYS.format(root=_ROOT, size=size)

    def timeraw_cold_cache(self, size: int) -> tuple[str, str]:
        return _IMPORT_AND_STEP, _COLD_CACHE + _ARRAYS.format(root=_ROOT, size=size)
