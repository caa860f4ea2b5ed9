"""``fastgd bench --dask N``: an Adam step over a Dask array on a local cluster of ``N``
worker processes against the single-process step (the NumPy face), and the overhead of a
chunk.

* **single process**: ``fastgd.Adam`` on one array of ``size`` float32 elements, in place,
  on every thread of this machine;
* **out of place**: the same step in the same process, out of place into arrays allocated
  once (``out=``, what each chunk's task runs): the kernel's own cost of purity;
* **fastgd.dask**: ``fastgd.dask.Adam`` on the same number of elements, in ``chunks`` chunks
  spread over the workers (each worker gets ``cores // N`` threads), gradients persisted on
  the workers like the parameters; a step is timed until its new parameters and state are
  in the workers' memory (``distributed.wait``);
* **per chunk**: the time of a step over ``many`` chunks of 1,024 elements less that of one
  chunk, over ``many - 1``: what a chunk adds to a step (its task, its keys, its share of
  the scheduler's work), whatever its size.

Contenders take turns in each repetition (:func:`fastgd.bench.interleaved_times`); medians.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from fastgd.bench import interleaved_times


def _dask_adam(client: Any, size: int, chunks: int, rng: np.random.Generator
               ) -> Callable[[], None]:
    import dask.array as da
    import distributed

    import fastgd.dask

    step = -(-size // chunks)
    param = da.from_array(rng.standard_normal(size, np.float32), chunks=step)
    grad = da.from_array(rng.standard_normal(size, np.float32) * np.float32(1e-3),
                         chunks=step).persist()
    opt = fastgd.dask.Adam([param], lr=1e-3, lineage=None)
    opt.step([grad])
    distributed.wait([opt.params[0], *opt.state[0].values()])

    def run() -> None:
        opt.step([grad])
        distributed.wait([opt.params[0], *(v for v in opt.state[0].values()
                                           if hasattr(v, "dask"))])

    return run


def run(workers: int, size: int = 2**25, chunks: int | None = None, repeat: int = 7,
        many: int = 64) -> dict[str, Any]:
    """The figures of ``fastgd bench --dask``: seconds per step (medians) and ratios."""
    import distributed

    import fastgd

    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    step = -(-size // (chunks or workers * threads))
    chunks = -(-size // step)  # (the chunks the array gets)
    rng = np.random.default_rng(0)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=threads,
                                  processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        local = [rng.standard_normal(size, np.float32)]
        local_grad = [rng.standard_normal(size, np.float32) * np.float32(1e-3)]
        single = fastgd.Adam(local, lr=1e-3)
        single.step(local_grad)
        state = single.state[0]
        moments = (state["exp_avg"], state["exp_avg_sq"])
        outs = tuple(np.empty_like(a) for a in (local[0], *moments))

        def out_of_place() -> None:
            fastgd.functional.adam(local[0], local_grad[0], *moments, step=2, lr=1e-3,
                                   out=(*outs, None))

        out_of_place()
        fns = {"single process": lambda: single.step(local_grad),
               "out of place": out_of_place,
               "fastgd.dask": _dask_adam(client, size, chunks, rng),
               f"{many} small chunks": _dask_adam(client, 1024 * many, many, rng),
               "1 small chunk": _dask_adam(client, 1024, 1, rng)}
        times = interleaved_times(fns, repeat, settle=0.0)
    median = {k: float(np.median(v)) for k, v in times.items()}
    per_chunk = (times[f"{many} small chunks"] - times["1 small chunk"]) / (many - 1)
    return {"workers": workers, "threads_per_worker": threads, "size": size,
            "chunks": chunks, "seconds": median,
            "dask_over_single": float(np.median(times["fastgd.dask"]
                                                / times["single process"])),
            "out_of_place_over_single": float(np.median(times["out of place"]
                                                        / times["single process"])),
            "per_chunk_seconds": float(np.median(per_chunk))}


def format_result(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    lines = [f"Adam, {result['size']:,} float32 elements: fastgd.dask on {result['workers']} "
             f"worker processes x {result['threads_per_worker']} threads, "
             f"{result['chunks']} chunks"]
    lines += [f"  {name:<20} {value * 1e3:9.2f} ms" for name, value in seconds.items()]
    lines.append(f"  out of place / single process: {result['out_of_place_over_single']:.2f}")
    lines.append(f"  fastgd.dask / single process: {result['dask_over_single']:.2f}")
    lines.append(f"  overhead per chunk: {result['per_chunk_seconds'] * 1e3:.3f} ms")
    return "\n".join(lines)
