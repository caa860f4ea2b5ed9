"""Shared pieces of the asv suite: the parameter grid, array builders, a per-process cache of
set-up cases and an in-process bandwidth measurement.

The cases (``CASES``), byte counts (``bytes_per_step``), roofline kernel (``roofline_step``),
baselines (``NUMPY_STEPS``, ``_torch_stepper``) and the many-tensor model
(``many_tensor_sizes``) come from :mod:`fastgd.bench`, so the suite and ``fastgd bench``
measure the same things.

asv runs every (benchmark, parameters) pair in a process of its own, forked from a server
that has imported this package (``"launch_method": "forkserver"`` in ``asv.conf.json``).
asv_runner may re-run ``setup`` before every timed call; :func:`cached` makes that cheap (the
arrays, the optimizer and its compiled kernel are built once per process) and keeps at most
one case alive per process, which bounds memory for the 2**24 float64 cases.
"""

from __future__ import annotations

import itertools
import math
import statistics
import timeit
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

import fastgd
from fastgd import bench
from fastgd.arrays import zeros_like

#: (not Muon, for matrices only, whose step is bound by its matrix products: ``fastgd bench
#: --algorithms muon --many`` times it on the matrices of a transformer block)
ALGORITHMS = [name for name, case in bench.CASES.items() if not case.algorithm.matrices]
SIZES = [1_000, 100_000, 2**24]
DTYPES = ["float32", "float64"]

_live: dict[Hashable, Any] = {}


class _Step:
    """Times ``self.step``, the call that ``setup`` builds, with the suite's sampling
    settings. (asv skips names that start with an underscore, so this base is no benchmark.)
    """

    repeat = (3, 50, 2.0)  # at least 3 samples, then up to 50 within about 2 s
    warmup_time = 0.1
    timeout = 180.0
    step: Callable[[], Any]

    def time_step(self, *params: Any) -> None:
        self.step()


class _CaseStep(_Step):
    """A :class:`_Step` per algorithm x size x dtype, on one array."""

    params = [ALGORITHMS, SIZES, DTYPES]
    param_names = ["algorithm", "size", "dtype"]


def cached(key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()``, once per process and ``key``; only the latest key is kept alive."""
    if key not in _live:
        _live.clear()
        _live[key] = build()
    return _live[key]


def random_array(size: int, dtype: Any, seed: int) -> np.ndarray:
    """Standard-normal values: a block of at most 65536 drawn, then repeated to ``size``.

    Drawing 2**24 normals costs half a second per process; a memory-bound kernel runs the same
    on any ordinary finite values. Made in ``dtype`` directly (no float64 temporary).
    """
    block = np.random.default_rng(seed).standard_normal(min(size, 1 << 16),
                                                        dtype=np.dtype(dtype))
    return np.resize(block, size)


def pair(size: int, dtype: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``([param], [grad])``: one array of ``size`` elements and its gradient."""
    return [random_array(size, dtype, 0)], [random_array(size, dtype, 1)]


def many_tensor_arrays() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Parameters and gradients of the many-tensor model: float32 arrays of the sizes
    ``bench.many_tensor_sizes()`` gives (161 log-normally distributed sizes, ~17M elements in
    all, the largest 2.4M, about half below fastgd's parallel threshold)."""
    sizes = bench.many_tensor_sizes()
    params = [random_array(n, np.float32, 2 * i) for i, n in enumerate(sizes)]
    grads = [random_array(n, np.float32, 2 * i + 1) for i, n in enumerate(sizes)]
    return params, grads


def many_tensor_elements() -> int:
    """Elements in the many-tensor model."""
    return sum(bench.many_tensor_sizes())


def many_tensor_bytes() -> int:
    """Bytes one Adam step over the many-tensor model must move."""
    return bench.bytes_per_step(bench.CASES["adam"], many_tensor_elements(), np.float32)


def fastgd_stepper(algorithm: str, params: list[np.ndarray], grads: list[np.ndarray],
                   precision: str = "full") -> Callable[[], None]:
    """One step of the fastgd optimizer class of ``algorithm`` (with ``bench.CASES``'
    options, state at ``precision``) over ``params``, warmed up: kernels compiled or loaded
    from the disk cache, state allocated."""
    case = bench.CASES[algorithm]
    opt = bench.training_optimizer(case, params, state_precision=precision)
    opt.step(grads)

    def step() -> None:
        opt.step(grads)

    return step


def roofline_stepper(algorithm: str, params: list[np.ndarray], grads: list[np.ndarray]
                     ) -> Callable[[], None]:
    """The memory roofline of ``algorithm``: ``bench.roofline_step`` (a fused copy kernel that
    reads and writes the same arrays as the step) on each array and its states, warmed up."""
    n_states = len(bench.CASES[algorithm].states)
    arrays = [[p, g, *(zeros_like(p) for _ in range(n_states))]
              for p, g in zip(params, grads, strict=True)]

    def step() -> None:
        for group in arrays:
            bench.roofline_step(group)

    step()
    return step


def numpy_stepper(algorithm: str, params: list[np.ndarray], grads: list[np.ndarray]
                  ) -> Callable[[], None]:
    """``bench.NUMPY_STEPS[algorithm]`` (what a careful NumPy user writes) on each array,
    warmed up; NotImplementedError (asv skips the benchmark) for an algorithm without one."""
    numpy_step = bench.NUMPY_STEPS.get(algorithm)
    if numpy_step is None:
        raise NotImplementedError(f"no NumPy baseline for {algorithm}")
    n_states = len(bench.CASES[algorithm].states)
    states = [[zeros_like(p, fill=1.0) for _ in range(n_states)] for p in params]
    counter = itertools.count(1)

    def step() -> None:
        t = next(counter)
        for p, g, s in zip(params, grads, states, strict=True):
            numpy_step(p, g, s, t)

    step()
    return step


def torch_stepper(algorithm: str, params: list[np.ndarray], grads: list[np.ndarray]
                  ) -> Callable[[], Any]:
    """torch.optim's step for ``algorithm`` over tensor copies of ``params``
    (``bench._torch_stepper``: fused where torch has it, else foreach), warmed up;
    NotImplementedError (asv skips the benchmark) where torch.optim has no such class."""
    try:
        return bench._torch_stepper(bench.CASES[algorithm], params, grads)[0]
    except (ImportError, RuntimeError) as exc:
        raise NotImplementedError(str(exc)) from exc


def require_torch() -> None:
    """Raise NotImplementedError (asv then skips the benchmark) when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise NotImplementedError("torch is not installed") from exc


def gbps(step: Callable[[], Any], nbytes: int, samples: int = 5,
         min_sample_time: float = 2e-3) -> float:
    """Effective bandwidth of ``step`` in GB/s: ``nbytes`` / the median time per call, to
    three significant digits.

    Each of ``samples`` samples times enough back-to-back calls to last ``min_sample_time``
    (one call for big arrays), so that small cases are not below the timer's resolution.
    """
    timer = timeit.Timer(step)
    once = timer.timeit(1)
    number = max(1, math.ceil(min_sample_time / max(once, 1e-7)))
    seconds = statistics.median(timer.repeat(samples, number)) / number
    return float(f"{nbytes / seconds / 1e9:.3g}")


def _initialise_numba() -> None:
    """Load one small serial kernel now, in asv's fork server, so that Numba's one-off
    start-up (about half a second) is not paid again in every benchmark process. A serial
    kernel starts no threads, so forking afterwards is safe; nothing timed depends on this."""
    fastgd.Adam([np.zeros(1, np.float32)]).step([np.zeros(1, np.float32)])


_initialise_numba()
