"""How many elements a CUDA thread should update per pass (``fastgd.cuda.UNROLL``), and the
host cost of a step: run on a GPU machine with torch, ``python benchmarks/gpu_unroll.py``.

Adam over 2**26 elements, float32 and float64, class and functional steps with each unroll
factor, against a device-to-device copy of the same bytes and torch's fused Adam; then the
161-tensor step (Numba arrays, torch tensors, torch fused) and the host time of a 2**20 step.
Every time is the mean of 20 steps back to back, between CUDA events.
"""

import time

import numpy as np

import fastgd
import fastgd.functional as F
from fastgd import bench

# (torch and the CUDA modules are imported when run: asv imports every module of this
# folder when it looks for benchmarks, on machines without a GPU too)
torch = cuda = fastgd_cuda = event_seconds = None


def gpu_seconds(fn, number):
    """Seconds per call of ``fn``, ``number`` calls back to back after a warm-up."""
    fn()
    cuda.synchronize()
    return event_seconds(fn, number)


def host_seconds(fn, number):
    fn()
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    seconds = (time.perf_counter() - start) / number
    cuda.synchronize()
    return seconds


def unroll_factors(rng):
    n = 2**26
    for dtype in (np.float32, np.float64):
        p = cuda.to_device(rng.standard_normal(n).astype(dtype))
        g = cuda.to_device(rng.standard_normal(n).astype(dtype))
        src = cuda.device_array(n * 7 // 2, dtype=dtype)  # Adam moves 7 arrays' bytes
        dst = cuda.device_array_like(src)
        tp = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(dtype)).cuda())
        tp.grad = torch.from_numpy(rng.standard_normal(n).astype(dtype)).cuda()
        ref = torch.optim.Adam([tp], lr=1e-3, fused=True)
        for _ in range(3):
            row = []
            for unroll in (1, 2, 4, 8):
                fastgd_cuda.UNROLL = unroll
                fastgd_cuda._module.cache_clear()
                opt = fastgd.Adam([p], lr=1e-3)
                arrays = [p, g, cuda.device_array_like(p), cuda.device_array_like(p)]
                step = gpu_seconds(lambda: opt.step([g]), 20)  # noqa: B023
                call = gpu_seconds(lambda: F.adam(*arrays, step=1), 20)  # noqa: B023
                row.append(f"unroll {unroll}: {step * 1e6:.0f} (functional {call * 1e6:.0f})")
            copy = gpu_seconds(lambda: dst.copy_to_device(src), 20)  # noqa: B023
            row.append(f"copy {copy * 1e6:.0f}")
            row.append(f"torch fused {gpu_seconds(ref.step, 20)*1e6:.0f} us")
            print(np.dtype(dtype).name, n, " ".join(row), flush=True)


def many_tensors(rng):
    sizes = bench.many_tensor_sizes()
    ps = [cuda.to_device(rng.standard_normal(k).astype(np.float32)) for k in sizes]
    gs = [cuda.to_device(rng.standard_normal(k).astype(np.float32)) for k in sizes]
    opt = fastgd.Adam(ps, lr=1e-3)
    print(f"numba 161: events {gpu_seconds(lambda: opt.step(gs), 10)*1e6:.0f} us, "
          f"host {host_seconds(lambda: opt.step(gs), 10)*1e6:.0f} us")
    tps = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(k).astype(np.float32))
                              .cuda()) for k in sizes]
    for t in tps:
        t.grad = torch.randn_like(t)
    topt = fastgd.Adam(tps, lr=1e-3)
    print(f"torch tensors 161: events {gpu_seconds(topt.step, 10)*1e6:.0f} us, "
          f"host {host_seconds(topt.step, 10)*1e6:.0f} us")
    ref = torch.optim.Adam([torch.nn.Parameter(t.detach().clone()) for t in tps], lr=1e-3,
                           fused=True)
    for a, b in zip(ref.param_groups[0]["params"], tps, strict=True):
        a.grad = b.grad.clone()
    print(f"torch fused 161: events {gpu_seconds(ref.step, 10)*1e6:.0f} us, "
          f"host {host_seconds(ref.step, 10)*1e6:.0f} us")
    p = cuda.to_device(np.ones(2**20, np.float32))
    g = cuda.to_device(np.ones(2**20, np.float32))
    opt = fastgd.Adam([p])
    print(f"numba 2**20: host {host_seconds(lambda: opt.step([g]), 200)*1e6:.0f} us")


if __name__ == "__main__":
    import torch
    from numba import cuda

    from fastgd import cuda as fastgd_cuda
    from fastgd.bench_cuda import event_seconds

    rng = np.random.default_rng(0)
    default = fastgd_cuda.UNROLL
    unroll_factors(rng)
    fastgd_cuda.UNROLL = default
    fastgd_cuda._module.cache_clear()
    many_tensors(rng)
