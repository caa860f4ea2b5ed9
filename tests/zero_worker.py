"""One rank of ``test_torch_distributed.py``: a DDP model trained with
``ZeroRedundancyOptimizer`` over a gloo group, with torch.optim's AdamW, ``fastgd.torch``'s
and the NumPy face's as the local optimizer, and ``fastgd.torch``'s with the parameters as
views of ZeRO's buckets; then a run resumed from ZeRO's consolidated state dict. Rank 0
writes the parameters of each run to an ``.npz`` file.

Usage: ``python zero_worker.py RANK WORLD_SIZE PORT OUT.npz``
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import fastgd
import fastgd.torch

CLASSES = {"torch": torch.optim.AdamW, "fastgd.torch": fastgd.torch.AdamW,
           "fastgd": fastgd.AdamW}
OPTIONS = {"lr": 1e-2, "weight_decay": 1e-2}
STEPS = 20


def model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 4))


def setup(cls: type, params: list[Any] | None = None, **zero_options: Any
          ) -> tuple[Any, Any, Any]:
    """A model (with ``params`` if given), its DDP wrapper and ZeRO over it."""
    net = model()
    if params is not None:
        with torch.no_grad():
            for p, value in zip(net.parameters(), params, strict=True):
                p.copy_(value)
    zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=cls, **OPTIONS,
                                   **zero_options)
    return net, DistributedDataParallel(net), zero


def train(ddp: Any, zero: Any, rank: int, start: int, stop: int) -> None:
    """Steps ``start`` to ``stop``: each rank its own batch, DDP averages the gradients."""
    for t in range(start, stop):
        g = torch.Generator().manual_seed(1000 * t + rank)
        x, y = torch.randn(16, 10, generator=g), torch.randn(16, 4, generator=g)
        zero.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        zero.step()


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    results = {}
    for name, cls in CLASSES.items():
        net, ddp, zero = setup(cls)
        train(ddp, zero, rank, 0, STEPS)
        results[name] = [p.detach().numpy().copy() for p in net.parameters()]
    # The parameters as views of ZeRO's buckets (their memory moves after the optimizer
    # has them)
    net, ddp, zero = setup(fastgd.torch.AdamW, parameters_as_bucket_view=True)
    train(ddp, zero, rank, 0, STEPS)
    results["buckets"] = [p.detach().numpy().copy() for p in net.parameters()]
    # Half a run, ZeRO's state dict consolidated on rank 0 and sent to every rank, loaded
    # into a new ZeRO over fastgd.torch, and the other half.
    half = STEPS // 2
    net, ddp, zero = setup(fastgd.torch.AdamW)
    train(ddp, zero, rank, 0, half)
    zero.consolidate_state_dict(to=0)
    saved = [zero.state_dict() if rank == 0 else None]
    dist.broadcast_object_list(saved, src=0)
    net, ddp, zero = setup(fastgd.torch.AdamW, [p.detach() for p in net.parameters()])
    zero.load_state_dict(saved[0])
    train(ddp, zero, rank, half, STEPS)
    results["resumed"] = [p.detach().numpy().copy() for p in net.parameters()]
    if rank == 0:
        np.savez(out, **{f"{name}/{i}": v for name, values in results.items()
                         for i, v in enumerate(values)})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
