"""GPU throughput: every optimizer step against a device-to-device copy and torch.

Effective bandwidth = bytes a fused step must move (:func:`fastgd.bench.bytes_per_step`)
divided by its time, measured with CUDA events after a warm-up, the contenders interleaved
and the median kept; the roofline is the bandwidth of a device-to-device copy (``2 * bytes /
time``: each byte read and written) measured in the same run; the baseline is torch's
fastest CUDA implementation (``fused=True`` where torch has it, else ``foreach=True``) when
torch with CUDA is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache, lru_cache
from typing import Any

import numpy as np

from fastgd.bench import (
    CASES,
    Case,
    Result,
    _torch_stepper,
    bytes_per_step,
    combinations,
    training_optimizer,
)


def event_seconds(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``number`` calls of ``fn`` in a row, between two CUDA events on
    the default stream."""
    from numba import cuda

    start, end = cuda.event(), cuda.event()
    start.record()
    for _ in range(number):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / number


def _event_times(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, np.ndarray]:
    """Seconds per call of each of ``fns``, ``repeat`` times, timed between CUDA events on
    the default stream (which orders them with torch's and CuPy's default streams) and
    interleaved. Each timing covers enough calls in a row (at least 3) to last about 10 ms,
    as a training loop runs steps: back to back, the host queueing a step while the GPU
    runs earlier work. A step is then as fast as the slower of its host and GPU parts."""
    seconds = event_seconds
    numbers = {}
    for key, fn in fns.items():
        fn()  # warm-up: compiles, allocates state
        once = seconds(fn, 1)  # (0 under the simulator, whose events measure no time)
        numbers[key] = max(3, min(1000, int(1e-2 / once))) if once > 0 else 1
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            times[key].append(seconds(fn, numbers[key]))
    return {key: np.array(value) for key, value in times.items()}


@lru_cache(maxsize=8)
def _host_arrays(shapes: tuple[int, ...], dtype: str) -> tuple[list[np.ndarray], ...]:
    """Random parameters and gradients (kept for the next case of the same sizes)."""
    rng = np.random.default_rng(0)
    return tuple([rng.standard_normal(n, dtype=np.float32).astype(dtype) for n in shapes]
                 for _ in range(2))


def run_case(case: Case, size: int, dtype: Any, repeat: int, baselines: bool = True,
             tensors: list[int] | None = None, precision: str = "full") -> Result:
    """One (algorithm, size, dtype) on the current GPU, with state at ``precision``; with
    ``tensors`` (a list of sizes), one step over that many arrays (``size`` is ignored),
    against a copy of the same total size (the bytes the step moves)."""
    from numba import cuda

    dtype = np.dtype(dtype)
    shapes = tuple(tensors or [size])
    host_p, host_g = _host_arrays(shapes, dtype.name)
    params, grads = [cuda.to_device(p) for p in host_p], [cuda.to_device(g) for g in host_g]
    opt = training_optimizer(case, params, state_precision=precision)
    total = sum(shapes)
    moved = bytes_per_step(case, total, dtype, precision)
    src = cuda.device_array(max(1, moved // 2 // dtype.itemsize), dtype=dtype)
    dst = cuda.device_array_like(src)
    fns: dict[str, Callable[[], Any]] = {"fastgd": lambda: opt.step(grads),
                                         "copy": lambda: dst.copy_to_device(src)}
    torch_impl = None
    baseline = _torch_step(case, host_p, host_g) if baselines else None
    if baseline is not None:
        fns["torch"], torch_impl = baseline
    times = _event_times(fns, repeat)
    step = times["fastgd"]

    def ratio(key: str) -> float | None:
        return float(np.median(times[key] / step)) if key in times else None

    seconds = float(np.median(step))
    return Result(
        algorithm=case.name, dtype=dtype.name, size=total, tensors=len(shapes),
        seconds=seconds, gbps=moved / seconds / 1e9,
        roofline_seconds=float(np.median(times["copy"])),
        pct_roofline=100.0 * ratio("copy"), numpy_speedup=None,
        torch_speedup=ratio("torch"), torch_impl=torch_impl, device=device_name(),
        state_precision=precision)


def _torch_step(case: Case, params: list[np.ndarray], grads: list[np.ndarray]
                ) -> tuple[Callable[[], Any], str] | None:
    """torch.optim's fastest CUDA step of ``case`` (None without torch, a CUDA torch or the
    algorithm)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        return _torch_stepper(case, params, grads, device="cuda")
    except (ImportError, RuntimeError):  # no such class (or package), or neither fused nor
        # foreach on this GPU
        return None


@cache
def device_name() -> str:
    """The current GPU's name ("CUDA simulator" under the simulator)."""
    from numba import cuda

    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def run(algorithms: Iterable[str], sizes: Iterable[int], dtypes: Iterable[str], repeat: int,
        baselines: bool = True, progress: bool = True, many: bool = False,
        precisions: Iterable[str] = ("full",)) -> list[Result]:
    """Every combination on the GPU, with a progress bar; ``many`` adds, per algorithm and
    dtype, one step over the 161 tensors of :func:`fastgd.bench.many_tensor_sizes`.
    Low-precision state (``precisions`` other than ``"full"``) is benchmarked with float32
    parameters only."""
    from tqdm import tqdm

    return [run_case(CASES[a], s, d, repeat, baselines, tensors, p)
            for a, s, d, tensors, p in tqdm(
                combinations(algorithms, sizes, dtypes, many, precisions),
                desc="fastgd bench (cuda)", disable=not progress, unit="case")]


def available() -> bool:
    """Whether a CUDA GPU (or the simulator) can run the benchmark."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no numba-cuda, no driver
        return False
