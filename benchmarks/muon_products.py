"""Muon against torch.optim.Muon on the matrices of a transformer block, by precision.

torch.optim.Muon runs its Newton–Schulz products in bfloat16 whatever the parameters'
dtype; fastgd runs them in the dtype of the computation (float32 here), through NumPy's
BLAS. This script times, interleaved and repeated (medians of per-repetition ratios):

* ``fastgd``: ``fastgd.Muon``'s step;
* ``torch``: ``torch.optim.Muon``'s step as shipped (bfloat16 products);
* ``torch-f32``: the same with its Newton–Schulz function run in float32 (the same
  products, the same precision as fastgd's: what the fused passes and ``syrk`` win);

over :data:`fastgd.bench.TRANSFORMER_BLOCK` (float32). Run:
``python benchmarks/muon_products.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch
    from torch.optim import _muon

    import fastgd
    from fastgd.bench import TRANSFORMER_BLOCK, torch_newton_schulz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in TRANSFORMER_BLOCK]
    grads = [rng.standard_normal(s).astype(np.float32) for s in TRANSFORMER_BLOCK]
    ours = fastgd.Muon(params, lr=0.02)
    shipped = _muon._zeropower_via_newtonschulz

    def torch_step(ns):
        tensors = [torch.nn.Parameter(torch.tensor(p)) for p in params]
        for t, g in zip(tensors, grads, strict=True):
            t.grad = torch.tensor(g)
        opt = torch.optim.Muon(tensors, lr=0.02)

        def step():
            _muon._zeropower_via_newtonschulz = ns
            try:
                opt.step()
            finally:
                _muon._zeropower_via_newtonschulz = shipped
        return step

    fns = {"fastgd": lambda: ours.step(grads), "torch": torch_step(shipped),
           "torch-f32": torch_step(torch_newton_schulz)}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.repeat):
        for key in fns if r % 2 == 0 else list(fns)[::-1]:
            start = time.perf_counter()
            fns[key]()
            times[key].append(time.perf_counter() - start)
    ours_t = np.array(times["fastgd"])
    shapes = ", ".join(f"{r}x{c}" for r, c in TRANSFORMER_BLOCK)
    print(f"Muon step over {shapes} float32, {torch.get_num_threads()} threads, "
          f"{args.repeat} interleaved repetitions (medians)")
    for key, values in times.items():
        ratio = np.median(np.array(values) / ours_t)
        print(f"  {key:10s} {np.median(values) * 1e3:8.1f} ms/step   "
              f"{ratio:5.2f}x fastgd's time")


if __name__ == "__main__":
    main()
