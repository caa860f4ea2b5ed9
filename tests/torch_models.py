"""A small torch model, its data and training loop, shared by the ``fastgd.torch`` tests
(skipped without torch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def mlp(seed: int = 0, dtype: Any = torch.float64) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def batches(dtype: Any = torch.float64) -> Iterator[tuple[Any, Any]]:
    """Random batches for :func:`mlp`, the same sequence every time."""
    g = torch.Generator().manual_seed(1)
    while True:
        yield (torch.randn(32, 6, generator=g, dtype=dtype),
               torch.randn(32, 3, generator=g, dtype=dtype))


def backward(model: Any, batch: tuple[Any, Any], forward: Any = None) -> Any:
    """The mean squared error of ``model`` (or ``forward``) on ``batch``, backpropagated."""
    x, y = batch
    loss = torch.nn.functional.mse_loss((forward or model)(x), y)
    loss.backward()
    return loss


def fit(model: Any, opt: Any, steps: int, forward: Any = None,
        before: Callable[[int], Any] = lambda t: None) -> list[float]:
    """``steps`` steps of ``opt`` on :func:`batches` (``before(t)`` called before step
    ``t``); the losses."""
    data, losses = batches(next(model.parameters()).dtype), []
    for t in range(steps):
        before(t)
        opt.zero_grad()
        losses.append(backward(model, next(data), forward).item())
        opt.step()
    return losses


def assert_same_parameters(ours: Any, theirs: Any, rtol: float = 1e-10,
                           atol: float = 1e-12) -> None:
    """Two models' (or parameter lists') parameters are equal to the tolerances."""
    if isinstance(ours, torch.nn.Module):
        ours, theirs = ours.parameters(), theirs.parameters()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
