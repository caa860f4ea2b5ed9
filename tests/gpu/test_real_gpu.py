"""With the arrays users pass: Numba device arrays, CuPy arrays and torch CUDA tensors. Every
algorithm and option agrees with the CPU path, in place, for single arrays and parameter
lists; updates are ordered with the caller's streams; host/device mixes and arrays the
kernels cannot update are refused. Under the simulator, whose arrays expose no
``__cuda_array_interface__``, only the Numba-array cases of the first test run
(``test_device.py`` covers the rest of what the simulator can)."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import cases
import numpy as np
import pytest
from numba import cuda

import fastgd
import fastgd.functional as F
from fastgd import cuda as fastgd_cuda
from fastgd.arrays import is_device
from fastgd.device_pointers import SIMULATOR

#: Tests that need a real GPU (the simulator runs the Numba-array cases of the others).
real_gpu = pytest.mark.skipif(SIMULATOR, reason="needs a real GPU")

# (a GPU contracts a * b + c to one FMA and rounds some operations differently from the CPU)
TOL = {np.float32: dict(rtol=1e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


class Kind(NamedTuple):
    """One kind of GPU array: how to put host data there and read it back."""

    name: str
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]


def _torch() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


def kind(name: str) -> Kind:
    if name == "numba":
        return Kind(name, cuda.to_device, lambda a: a.copy_to_host())
    if SIMULATOR:
        pytest.skip(f"{name} arrays need a real GPU")
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        return Kind(name, cupy.asarray, cupy.asnumpy)
    torch = _torch()
    return Kind(name, lambda h: torch.from_numpy(h).to("cuda"),
                lambda t: t.detach().cpu().numpy())


def to_host(x: Any) -> np.ndarray:
    """Any array (a state dict's values included) as a NumPy array."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "get"):  # CuPy
        return x.get()
    return np.asarray(x)


KINDS = ["numba", "cupy", "torch"]

#: Every algorithm with every switch off, and with every switch on.
CONFIGS = [(name, cases.random_hyperparameters(name, on, np.random.default_rng(len(on))))
           for name in cases.NAMES for on in ((), cases.full_case(name))]
CONFIG_IDS = [f"{name}-{'on' if i % 2 else 'off'}" for i, (name, _) in enumerate(CONFIGS)]


def _host_params(rng: np.random.Generator, dtype: Any) -> list[np.ndarray]:
    # Odd sizes, one above a block's worth of grid-stride work (the simulator's grid is
    # small: 300 there), 2-D in both orders, 0-D.
    sizes = (0, 1, 7, 33, 300) if SIMULATOR else (0, 1, 7, 1025, 300_001)
    return [rng.standard_normal(n).astype(dtype) for n in sizes] + [
        rng.standard_normal((3, 5)).astype(dtype),
        np.asfortranarray(rng.standard_normal((33, 4)).astype(dtype)),
        np.array(0.5, dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, options", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("which", KINDS)
def test_every_algorithm_matches_cpu(which, name, options, dtype):
    k = kind(which)
    cls = cases.optimizer_class(name)
    rng = np.random.default_rng(len(str(options)))
    host = _host_params(rng, dtype)
    device = [k.to_device(p.copy(order="K")) for p in host]
    opt_host, opt_device = cls(host, **options), cls(device, **options)
    for _ in range(3):
        grads = [np.require(rng.standard_normal(p.shape).astype(dtype),
                            requirements="C" if p.flags.c_contiguous else "F") for p in host]
        opt_host.step(grads)
        opt_device.step([k.to_device(g) for g in grads])
    for p, d in zip(host, device, strict=True):
        np.testing.assert_allclose(k.to_host(d), p, **TOL[dtype])
    for index, state in opt_device.state_dict()["state"].items():
        for key, value in state.items():
            np.testing.assert_allclose(to_host(value), to_host(opt_host.state[index][key]),
                                       **TOL[dtype], err_msg=key)


@real_gpu
@pytest.mark.parametrize("which", KINDS)
def test_one_array_is_one_parameter_updated_in_place(which):
    k = kind(which)
    rng = np.random.default_rng(1)
    host = rng.standard_normal((64, 3)).astype(np.float32)
    param = k.to_device(host.copy())
    opt, ref = fastgd.Adam(param, lr=0.1), fastgd.Adam(host, lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 1
    for _ in range(3):
        grad = rng.standard_normal(host.shape).astype(np.float32)
        opt.step(k.to_device(grad))
        ref.step(grad)
    np.testing.assert_allclose(k.to_host(param), host, **TOL[np.float32])
    assert is_device(opt.state[0]["exp_avg"])


@real_gpu
@pytest.mark.parametrize("which", KINDS)
def test_functional_api_updates_in_place(which):
    k = kind(which)
    rng = np.random.default_rng(2)
    p, g = rng.standard_normal(5000), rng.standard_normal(5000)
    host = [p.copy(), g, np.zeros(5000), np.zeros(5000)]
    device = [k.to_device(a.copy()) for a in host]
    for t in (1, 2, 3):
        F.adam(*host, step=t, lr=0.1, weight_decay=0.01)
        F.adam(*device, step=t, lr=0.1, weight_decay=0.01)
    for d, h in zip(device, host, strict=True):
        np.testing.assert_allclose(k.to_host(d), h, **TOL[np.float64])


@real_gpu
@pytest.mark.parametrize("face", ["fastgd", "fastgd.torch"])
def test_torch_parameters_step_from_their_grads_as_torch_optim_does(face):
    """Both class faces step CUDA parameters as torch.optim does (``fastgd.torch``'s on
    torch's current stream, here a side stream), and torch loads their state dicts."""
    torch = _torch()
    classes = importlib.import_module(face)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 10)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 10)).cuda()
    twin.load_state_dict(model.state_dict())
    ours = classes.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    x, y = torch.randn(128, 32, device="cuda"), torch.randint(0, 10, (128,), device="cuda")
    stream = torch.cuda.Stream() if face == "fastgd.torch" else torch.cuda.current_stream()

    def train_alike(pairs, steps):
        with torch.cuda.stream(stream):
            for _ in range(steps):
                for net, opt in pairs:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(x), y).backward()
                    opt.step()
        torch.cuda.synchronize()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-5)

    train_alike(((model, ours), (twin, theirs)), 20)
    # torch loads fastgd's state dict (tensors on the parameters' GPU) and continues alike.
    state = ours.state_dict()
    assert state["state"][0]["exp_avg"].device.type == "cuda"
    again = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    again.load_state_dict(copy.deepcopy(state))
    train_alike(((model, ours), (twin, again)), 1)


def _late_grad(torch: Any, stream: Any, values: np.ndarray) -> Any:
    """A gradient whose values are written on ``stream`` only after the GPU has spun for a
    while: an update not ordered after that write reads zeros."""
    grad = torch.zeros(values.size, device="cuda", dtype=torch.float64)
    source = torch.from_numpy(values).to("cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)
        grad.copy_(source)
    return grad


@pytest.mark.parametrize("how", ["default", "torch-stream", "torch-current", "cupy-stream",
                                 "numba-stream", "handle", "fastgd.torch-current"])
@real_gpu
def test_updates_are_ordered_with_the_callers_stream(how):
    torch = _torch()
    rng = np.random.default_rng(3)
    values, start = rng.standard_normal(100_000), rng.standard_normal(100_000)
    expected = [start.copy(), values, np.zeros(100_000), np.zeros(100_000)]
    F.adam(*expected, step=1, lr=0.1)
    param = torch.from_numpy(start).to("cuda")
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    if how == "default":
        stream, ours = torch.cuda.default_stream(), None
    elif how == "torch-stream":
        stream = ours = torch.cuda.Stream()
    elif how in ("torch-current", "fastgd.torch-current"):
        stream = torch.cuda.Stream()
        ours = None
    elif how == "cupy-stream":
        cupy = pytest.importorskip("cupy")
        ours = cupy.cuda.Stream(non_blocking=True)
        stream = torch.cuda.ExternalStream(ours.ptr)
    elif how == "numba-stream":
        ours = cuda.stream()
        stream = torch.cuda.ExternalStream(ours.__cuda_stream__()[1])
    else:
        stream = torch.cuda.Stream()
        ours = stream.cuda_stream
    grad = _late_grad(torch, stream, values)
    if how == "fastgd.torch-current":  # (fastgd.torch's optimizers: on torch's current one)
        import fastgd.torch

        opt = fastgd.torch.Adam([param], lr=0.1)
        param.grad = grad
        with torch.cuda.stream(stream):
            opt.step()
        v = opt.state[param]["exp_avg_sq"]
    elif how == "torch-current":
        with torch.cuda.stream(stream):
            F.adam(param, grad, m, v, step=1, lr=0.1, stream=torch.cuda.current_stream())
    else:
        F.adam(param, grad, m, v, step=1, lr=0.1, stream=ours)
    torch.cuda.synchronize()
    np.testing.assert_allclose(param.cpu().numpy(), expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(v.cpu().numpy(), expected[3], rtol=0, atol=1e-12)


@real_gpu
@pytest.mark.parametrize("which", KINDS)
@pytest.mark.parametrize("host_kind", ["numpy", "torch-cpu"])
def test_host_gradient_for_gpu_parameter_is_refused_untouched(which, host_kind):
    k = kind(which)
    start = np.linspace(-1, 1, 10).astype(np.float32)
    param = k.to_device(start.copy())
    grad: Any = np.ones(10, np.float32)
    if host_kind == "torch-cpu":
        grad = _torch().from_numpy(grad)
    opt = fastgd.Adam([param])
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([grad])
    with pytest.raises(TypeError, match="grad"):
        F.sgd(param, grad, lr=0.1)
    np.testing.assert_array_equal(k.to_host(param), start)
    assert opt.state == {}


@real_gpu
def test_arrays_of_different_libraries_on_one_gpu_mix():
    torch, cupy = _torch(), pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    p, g = rng.standard_normal(1000), rng.standard_normal(1000)
    param, grad = cupy.asarray(p), torch.from_numpy(g).to("cuda")
    m, v = cuda.to_device(np.zeros(1000)), torch.zeros(1000, device="cuda", dtype=torch.float64)
    expected = [p.copy(), g, np.zeros(1000), np.zeros(1000)]
    F.adam(param, grad, m, v, step=1, lr=0.1)
    F.adam(*expected, step=1, lr=0.1)
    np.testing.assert_allclose(cupy.asnumpy(param), expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.copy_to_host(), expected[2], rtol=0, atol=1e-12)


@real_gpu
@pytest.mark.parametrize("which", ["cupy", "torch"])
def test_half_precision_gpu_parameters_are_refused(which):
    k = kind(which)
    param = k.to_device(np.ones(8, np.float16))
    with pytest.raises(TypeError, match="CPU only"):
        fastgd.Adam([param]).step([k.to_device(np.ones(8, np.float16))])
    np.testing.assert_array_equal(k.to_host(param), np.ones(8, np.float16))


@real_gpu
@pytest.mark.parametrize("which", ["cupy", "torch"])
def test_strided_view_is_refused_untouched(which):
    k = kind(which)
    whole = k.to_device(np.arange(20, dtype=np.float32).reshape(4, 5))
    view = whole[:, ::2]
    with pytest.raises((TypeError, ValueError), match="param"):
        F.sgd(view, view * 0 + 1, lr=0.1)
    np.testing.assert_array_equal(k.to_host(whole), np.arange(20, dtype=np.float32).reshape(4, 5))


@real_gpu
@pytest.mark.parametrize("which", KINDS)
def test_many_tensors_take_one_launch_per_dtype(which, monkeypatch):
    k = kind(which)
    launches = []
    original = fastgd_cuda.launch_table

    def spy(spec, present, addresses, *args, **kwargs):
        launches.append(len(addresses))
        return original(spec, present, addresses, *args, **kwargs)

    monkeypatch.setattr(fastgd_cuda, "launch_table", spy)
    rng = np.random.default_rng(5)
    sizes = [fastgd_cuda.CHUNK + 1, 0, 1, 3 * fastgd_cuda.CHUNK, 7, 100_003]
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    device = [k.to_device(p.copy()) for p in host]
    opt_host, opt_device = fastgd.NAdam(host, lr=0.01), fastgd.NAdam(device, lr=0.01)
    fixed = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    fixed_device = [k.to_device(g) for g in fixed]
    for step in range(4):  # fresh gradients, then the same gradients (a cached table) twice
        grads = fixed if step >= 2 else [rng.standard_normal(n).astype(np.float32)
                                         for n in sizes]
        opt_host.step(grads)
        opt_device.step(fixed_device if step >= 2 else [k.to_device(g) for g in grads])
    assert launches == [len(sizes)] * 4
    for p, d in zip(host, device, strict=True):
        np.testing.assert_allclose(k.to_host(d), p, **TOL[np.float32])


@real_gpu
def test_gpu_benchmark_measures_time():
    from fastgd import bench, bench_cuda

    result = bench_cuda.run_case(bench.CASES["adam"], 2**20, "float32", repeat=3)
    assert result.seconds > 0 and 0 < result.pct_roofline < 200
    assert result.device == bench_cuda.device_name() != "cpu"
