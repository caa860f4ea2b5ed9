"""GPU throughput: every optimizer step against a device-to-device copy and torch.

Effective bandwidth = bytes a fused step must move (:func:`fastgd.bench.bytes_per_step`)
divided by its time, measured with CUDA events after a warm-up; the roofline is the
bandwidth of a device-to-device copy (``2 * bytes / time``: each byte read and written)
measured in the same run; torch's fastest CUDA implementation (``fused=True`` where torch has
it, else ``foreach=True``) when torch with CUDA is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fastgd.bench import (
    CASES,
    Case,
    Result,
    _torch_stepper,
    bytes_per_step,
    many_tensor_sizes,
)


def _event_seconds(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``fn`` between two CUDA events, after one warm-up call."""
    from numba import cuda

    fn()
    times = []
    for _ in range(repeat):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def _torch_seconds(case: Case, params: list[np.ndarray], grads: list[np.ndarray],
                   repeat: int) -> tuple[float | None, str | None]:
    try:
        import torch
    except ImportError:
        return None, None
    if not torch.cuda.is_available():
        return None, None
    try:
        step, flavour = _torch_stepper(case, params, grads, device="cuda")
    except RuntimeError:  # neither fused nor foreach on this GPU
        return None, None
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times)), flavour


def run_case(case: Case, size: int, dtype: Any, repeat: int, baselines: bool = True,
             tensors: list[int] | None = None) -> Result:
    """One (algorithm, size, dtype) on the current GPU; with ``tensors`` (a list of sizes),
    one step over that many arrays (``size`` is ignored), against a copy of the same total
    size."""
    from numba import cuda

    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    shapes = tensors or [size]
    host_p = [rng.standard_normal(n).astype(dtype) for n in shapes]
    host_g = [rng.standard_normal(n).astype(dtype) for n in shapes]
    params, grads = [cuda.to_device(p) for p in host_p], [cuda.to_device(g) for g in host_g]
    opt = case.cls(params, **case.options)
    seconds = _event_seconds(lambda: opt.step(grads), repeat)
    total = sum(shapes)
    moved = bytes_per_step(case, total, dtype)
    src = cuda.device_array(max(1, moved // 2 // dtype.itemsize), dtype=dtype)
    dst = cuda.device_array_like(src)
    copy_seconds = _event_seconds(lambda: dst.copy_to_device(src), repeat)
    torch_seconds, torch_impl = (_torch_seconds(case, host_p, host_g, repeat) if baselines
                                 else (None, None))
    return Result(
        algorithm=case.name, dtype=dtype.name, size=total, tensors=len(shapes),
        seconds=seconds, gbps=moved / seconds / 1e9, roofline_seconds=copy_seconds,
        pct_roofline=100.0 * copy_seconds / seconds, numpy_speedup=None,
        torch_speedup=torch_seconds / seconds if torch_seconds else None,
        torch_impl=torch_impl)


def device_name() -> str:
    from numba import cuda

    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def run(algorithms: Iterable[str], sizes: Iterable[int], dtypes: Iterable[str], repeat: int,
        baselines: bool = True, progress: bool = True, many: bool = False) -> list[Result]:
    """Every combination on the GPU, with a progress bar; ``many`` adds, per algorithm and
    dtype, one step over the 161 tensors of :func:`fastgd.bench.many_tensor_sizes`."""
    from tqdm import tqdm

    combos = [(a, s, d, None) for a in algorithms for d in dtypes for s in sizes]
    if many:
        combos += [(a, 0, d, many_tensor_sizes()) for a in algorithms for d in dtypes]
    return [run_case(CASES[a], s, d, repeat, baselines, tensors)
            for a, s, d, tensors in tqdm(combos, desc="fastgd bench (cuda)",
                                         disable=not progress, unit="case")]


def available() -> bool:
    """Whether a CUDA GPU (or the simulator) can run the benchmark."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no numba-cuda, no driver
        return False
