"""Switching between torch.optim and fastgd is one line, both ways (skipped without torch).

* A ``torch.optim`` state dict (tensors, tensor steps, torch's implementation options)
  loads into fastgd's optimizer of the same name, which then continues exactly as torch
  would; fastgd's state dict (of torch tensor parameters) loads into ``torch.optim``.
* ``step(closure)``: the closure computes the loss and the gradients (with gradients
  enabled), ``step`` reads ``.grad`` and returns the loss.
* Named parameters (``model.named_parameters()``, named groups) keep their names, returned
  as ``param_groups[i]["param_names"]``; mixing named and unnamed parameters is refused.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from cases import NAMES, full_case, random_hyperparameters
from test_torch_parity import (
    TORCH_DTYPES,
    compare_states,
    same_accumulator,
    torch_default_dtype,
)

import fastgd

torch = pytest.importorskip("torch")

TORCH_NAMES = [name for name in NAMES if hasattr(torch.optim, name)]
SHAPES = [(5,), (3, 4), (), (7,)]
K, N = 6, 25
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
RTOL = {np.float32: 1e-4, np.float64: 1e-8}


def rng_for(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def options(name: str, rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random options of the constructor and of a second parameter group."""
    hp0 = random_hyperparameters(name, full_case(name), rng)
    return hp0, same_accumulator(name, hp0, random_hyperparameters(name, (), rng))


def gradients(rng: np.random.Generator, dtype: Any) -> list[np.ndarray]:
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


def torch_optimizer(name: str, tensors: list[Any], hp0: dict[str, Any], hp1: dict[str, Any],
                    flavour: str) -> Any:
    implementation = {} if flavour == "default" else {flavour: True}
    return getattr(torch.optim, name)(
        [{"params": tensors[:2]}, {"params": tensors[2:], **hp1}], **hp0, **implementation)


def torch_step(opt: Any, tensors: list[Any], grads: list[np.ndarray]) -> None:
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.from_numpy(g.copy())
    opt.step()


def assert_same(ours: Any, theirs: Any, arrays: list[Any], tensors: list[Any], rtol: float,
                name: str) -> None:
    for i, (a, t) in enumerate(zip(arrays, tensors, strict=True)):
        a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=rtol, atol=rtol,
                                   err_msg=f"{name} params[{i}]")
        torch_state = dict(theirs.state[t])
        if name == "SGD":  # torch's SGD does not count steps (it kept the loaded count)
            torch_state.pop("step", None)
        compare_states(name, ours.state[i], torch_state, rtol, f"{name} params[{i}]")


def flavours(name: str) -> list[str]:
    """torch's implementations of ``name`` on the CPU: default, foreach (and fused)."""
    found = ["default", "foreach"]
    probe = torch.zeros(1, requires_grad=True)
    try:
        getattr(torch.optim, name)([probe], fused=True)
        found.append("fused")
    except (RuntimeError, TypeError, ValueError):
        pass
    return found


CASES = [pytest.param(name, flavour, id=f"{name}-{flavour}")
         for name in TORCH_NAMES for flavour in flavours(name)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, flavour", CASES)
def test_torch_state_dict_loads_and_continues_as_torch_would(name: str, flavour: str,
                                                             dtype: Any,
                                                             request: pytest.FixtureRequest
                                                             ) -> None:
    rng = rng_for(request)
    hp0, hp1 = options(name, rng)
    with torch_default_dtype(dtype):
        tensors = [torch.tensor(rng.standard_normal(s), dtype=TORCH_DTYPES[dtype],
                                requires_grad=True) for s in SHAPES]
        theirs = torch_optimizer(name, tensors, hp0, hp1, flavour)
        for _ in range(K):
            torch_step(theirs, tensors, gradients(rng, dtype))
        # A fresh fastgd optimizer (default options) on copies of the parameters, as a user
        # switching from torch would build it; everything else comes from the dict.
        arrays = [t.detach().numpy().copy() for t in tensors]
        ours = getattr(fastgd, name)([{"params": arrays[:2]}, {"params": arrays[2:]}])
        ours.load_state_dict(theirs.state_dict())
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        for _ in range(N):
            grads = gradients(rng, dtype)
            ours.step(grads)
            torch_step(theirs, tensors, grads)
        assert_same(ours, theirs, arrays, tensors, RTOL[dtype], name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_loads_fastgds_state_dict(name: str, dtype: Any,
                                        request: pytest.FixtureRequest) -> None:
    rng = rng_for(request)
    hp0, hp1 = options(name, rng)
    with torch_default_dtype(dtype):
        tensors = [torch.tensor(rng.standard_normal(s), dtype=TORCH_DTYPES[dtype],
                                requires_grad=True) for s in SHAPES]
        ours = getattr(fastgd, name)([{"params": tensors[:2]}, {"params": tensors[2:], **hp1}],
                                     **hp0)
        for _ in range(K):
            torch_step(ours, tensors, gradients(rng, dtype))  # fastgd reads .grad
        twins = [t.detach().clone().requires_grad_() for t in tensors]
        theirs = torch_optimizer(name, twins, {}, {}, "default")
        theirs.load_state_dict(ours.state_dict())
        for _ in range(N):
            grads = gradients(rng, dtype)
            torch_step(ours, tensors, grads)
            torch_step(theirs, twins, grads)
        assert_same(ours, theirs, tensors, twins, RTOL[dtype], name)


def test_fastgd_state_dict_of_torch_parameters_survives_torch_save(tmp_path) -> None:
    """Its arrays are tensors: ``torch.load(weights_only=True)`` (torch's default) reads it."""
    params = [torch.randn(5, requires_grad=True), torch.randn(2, 3, requires_grad=True)]
    opt = fastgd.NAdam(params, lr=0.01)
    opt.step([torch.ones(5), torch.ones(2, 3)])
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = fastgd.NAdam([p.detach().clone() for p in params], lr=0.01)
    fresh.load_state_dict(loaded)
    assert fresh.state[1]["step"] == 1
    np.testing.assert_array_equal(fresh.state[1]["exp_avg"],
                                  opt.state[1]["exp_avg"])


def test_torch_dict_of_another_algorithm_is_refused() -> None:
    p = torch.randn(4, requires_grad=True)
    theirs = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    theirs.step()
    q = p.detach().numpy().copy()
    for cls in (fastgd.SGD, fastgd.RMSprop, fastgd.AdamW, fastgd.NAdam):
        opt = cls([q])
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(theirs.state_dict())
        assert opt.state == {}


# -- closures -------------------------------------------------------------------------------------

def model(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def test_closure_computes_loss_and_gradients_like_torch() -> None:
    ours_net, theirs_net = model(), model()
    ours = fastgd.Adam(ours_net.parameters(), lr=0.01)
    theirs = torch.optim.Adam(theirs_net.parameters(), lr=0.01)
    x, y = torch.randn(32, 6), torch.randn(32, 3)

    def closure_for(net: Any, opt: Any) -> Any:
        def closure() -> Any:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            return loss
        return closure

    with torch.no_grad():  # step() enables gradients for the closure, as torch does
        for _ in range(10):
            loss_ours = ours.step(closure_for(ours_net, ours))
            loss_theirs = theirs.step(closure_for(theirs_net, theirs))
            assert isinstance(loss_ours, torch.Tensor)
            assert float(loss_ours) == pytest.approx(float(loss_theirs), rel=1e-6)
    for p, q in zip(ours_net.parameters(), theirs_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_closure_with_numpy_parameters_returns_its_value() -> None:
    p = np.ones(3)
    opt = fastgd.SGD([p], lr=0.5)
    calls = []

    def closure() -> float:
        calls.append(1)
        return 42.0

    with pytest.raises(TypeError, match="grad"):  # NumPy arrays have no .grad to read
        opt.step(closure)
    assert calls == [1]
    np.testing.assert_array_equal(p, np.ones(3))


# -- named parameters -------------------------------------------------------------------------

def test_named_parameters_keep_their_names_like_torch() -> None:
    net = model()
    ours = fastgd.AdamW(net.named_parameters(), lr=0.01)
    theirs = torch.optim.AdamW(net.named_parameters(), lr=0.01)
    assert ours.state_dict()["param_groups"][0]["param_names"] == \
        theirs.state_dict()["param_groups"][0]["param_names"] == \
        ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ours.param_groups[0]["params"] == list(net.parameters())


def test_named_parameter_groups_like_torch() -> None:
    net = model()
    named = list(net.named_parameters())
    groups = [{"params": named[:2]}, {"params": named[2:], "lr": 0.1}]
    ours = fastgd.SGD(groups, lr=0.01, momentum=0.9)
    theirs = torch.optim.SGD([dict(g) for g in groups], lr=0.01, momentum=0.9)
    ours_groups = ours.state_dict()["param_groups"]
    theirs_groups = theirs.state_dict()["param_groups"]
    for a, b in zip(ours_groups, theirs_groups, strict=True):
        assert a["param_names"] == b["param_names"] and a["params"] == b["params"]
    # a torch dict's names replace ours, as torch does
    theirs_groups[0]["param_names"] = ["a", "b"]
    ours.load_state_dict({"state": {}, "param_groups": theirs_groups})
    assert ours.param_groups[0]["param_names"] == ["a", "b"]


def test_mixing_named_and_unnamed_parameters_is_refused_like_torch() -> None:
    net = model()
    named = list(net.named_parameters())
    plain = list(net.parameters())
    for make in (lambda: [named[0], plain[1]],                             # in one group
                 lambda: [{"params": named[:2]}, {"params": plain[2:]}],   # across groups
                 lambda: [{"params": plain[:2]}, {"params": named[2:]}]):
        with pytest.raises(ValueError, match="names"):
            torch.optim.SGD(make(), lr=0.1)
        with pytest.raises(ValueError, match="names"):
            fastgd.SGD(make(), lr=0.1)
    opt = fastgd.SGD(named[:2], lr=0.1)
    with pytest.raises(ValueError, match="names"):
        opt.add_param_group({"params": plain[2:]})
    assert len(opt.param_groups) == 1


def test_named_numpy_arrays() -> None:
    w, b = np.ones(3), np.zeros(2)
    opt = fastgd.Adam([("w", w), ("b", b)], lr=0.5)
    opt.step([np.ones(3), np.ones(2)])
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["w", "b"]
    np.testing.assert_allclose(w, 0.5)
