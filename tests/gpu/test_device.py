"""The CUDA target in place, under the simulator and on a GPU: the functional API, mixes of
host and GPU arrays refused, streams, many tensors in one launch, state on the GPU, the
benchmark, stand-ins for CUDA arrays of other libraries (every algorithm and option against
the CPU path: ``test_real_gpu.py``)."""

import numpy as np
import pytest
from numba import cuda

import fastgd
import fastgd.functional as F
from fastgd import cuda as fastgd_cuda
from fastgd.arrays import is_device

TOL = {np.float32: dict(rtol=0, atol=1e-5), np.float64: dict(rtol=0, atol=1e-12)}


@pytest.mark.parametrize("n", [100, 1100])  # (1100: every thread's loop runs unrolled too)
def test_functional_updates_device_arrays_in_place(n):
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    hp, hm, hv = p.copy(), np.zeros(n), np.zeros(n)
    dp, dg = cuda.to_device(p), cuda.to_device(g)
    dm, dv = cuda.to_device(np.zeros(n)), cuda.to_device(np.zeros(n))
    stream = cuda.stream()
    for t in (1, 2, 3):
        F.adam(hp, g, hm, hv, step=t, lr=0.1, weight_decay=0.01)
        F.adam(dp, dg, dm, dv, step=t, lr=0.1, weight_decay=0.01, stream=stream)
    stream.synchronize()
    np.testing.assert_allclose(dp.copy_to_host(), hp, atol=1e-12, rtol=0)
    np.testing.assert_allclose(dv.copy_to_host(), hv, atol=1e-12, rtol=0)


@pytest.mark.parametrize("which", ["grad", "exp_avg", "param"])
def test_host_device_mix_is_refused_untouched(which):
    rng = np.random.default_rng(2)
    arrays = {k: rng.standard_normal(10).astype(np.float32)
              for k in ("param", "grad", "exp_avg", "exp_avg_sq")}
    device = {k: cuda.to_device(v) for k, v in arrays.items()}
    mixed = dict(device)
    mixed[which] = arrays[which].copy()
    with pytest.raises(TypeError, match=f"{which} is a (host|GPU) array|param is"):
        F.adam(mixed["param"], mixed["grad"], mixed["exp_avg"], mixed["exp_avg_sq"], step=1)
    for key, value in device.items():
        np.testing.assert_array_equal(value.copy_to_host(), arrays[key])
    np.testing.assert_array_equal(mixed[which] if which != "param" else arrays["param"],
                                  arrays[which])


def test_optimizer_refuses_host_grad_for_device_param():
    p = cuda.to_device(np.ones(5, np.float32))
    opt = fastgd.Adam([p])
    with pytest.raises(TypeError, match="grads\\[0\\]"):
        opt.step([np.ones(5, np.float32)])
    np.testing.assert_array_equal(p.copy_to_host(), np.ones(5, np.float32))
    assert opt.state == {}


def test_stream_is_refused_for_host_arrays():
    p = np.ones(5)
    with pytest.raises(TypeError, match="stream"):
        F.sgd(p, np.ones(5), lr=0.1, stream=cuda.stream())
    np.testing.assert_array_equal(p, np.ones(5))


def test_optimizer_refuses_stream_when_a_param_is_on_the_host():
    host, device = np.ones(5), cuda.to_device(np.ones(5))
    opt = fastgd.SGD([device, host], lr=0.1)
    with pytest.raises(TypeError, match="stream"):
        opt.step([cuda.to_device(np.ones(5)), np.ones(5)], stream=cuda.stream())
    np.testing.assert_array_equal(device.copy_to_host(), np.ones(5))
    np.testing.assert_array_equal(host, np.ones(5))


def _count_launches(monkeypatch):
    """Record (kernel, tensors) of every launch of the optimizer classes' CUDA kernels."""
    launches = []
    original = fastgd_cuda.launch_table

    def spy(spec, present, addresses, *args, **kwargs):
        launches.append((spec.name, len(addresses)))
        return original(spec, present, addresses, *args, **kwargs)

    monkeypatch.setattr(fastgd_cuda, "launch_table", spy)
    return launches


def test_many_device_tensors_step_in_one_launch_per_dtype_and_group(monkeypatch):
    # Sizes around the many-tensor kernel's chunk (several chunks, empty and 1-element tensors).
    chunk = fastgd_cuda.CHUNK
    sizes = [chunk + 1, 0, 1, 2 * chunk, 7, chunk - 1, 3, 2 * chunk + 5]
    rng = np.random.default_rng(5)
    host = [rng.standard_normal(n).astype(np.float32 if i % 3 else np.float64)
            for i, n in enumerate(sizes)]
    groups = [{"params": host[:6]}, {"params": host[6:], "lr": 0.05, "amsgrad": True}]
    device = [cuda.to_device(p) for p in host]
    dgroups = [{**g, "params": device[:6] if i == 0 else device[6:]}
               for i, g in enumerate(groups)]
    opt_host = fastgd.Adam(groups, lr=0.1, weight_decay=0.01)
    opt_device = fastgd.Adam(dgroups, lr=0.1, weight_decay=0.01)
    launches = _count_launches(monkeypatch)
    for _ in range(3):
        grads = [rng.standard_normal(n).astype(p.dtype) for n, p in zip(sizes, host, strict=True)]
        opt_host.step(grads)
        opt_device.step([cuda.to_device(g) for g in grads])
    # Per step: group 0's two float64 and four float32 tensors take one launch each; group
    # 1 has one tensor of each dtype.
    step = [("adam", 1), ("adam", 1), ("adam", 2), ("adam", 4)]
    assert sorted(launches) == sorted(step * 3)
    for p, d in zip(host, device, strict=True):
        np.testing.assert_allclose(d.copy_to_host(), p, **TOL[p.dtype.type])


def test_state_lives_on_device_and_round_trips():
    host = np.linspace(-1, 1, 9).astype(np.float32)
    p = cuda.to_device(host)
    opt = fastgd.Adagrad([p], initial_accumulator_value=0.5)
    opt.step([cuda.to_device(np.ones(9, np.float32))])
    assert is_device(opt.state[0]["sum"])
    sd = opt.state_dict()
    assert isinstance(sd["state"][0]["sum"], np.ndarray)
    np.testing.assert_allclose(sd["state"][0]["sum"], 1.5)
    p2 = cuda.to_device(p.copy_to_host())
    opt2 = fastgd.Adagrad([p2], initial_accumulator_value=0.5)
    opt2.load_state_dict(sd)
    assert is_device(opt2.state[0]["sum"])
    g = cuda.to_device(np.full(9, 0.5, np.float32))
    opt.step([g])
    opt2.step([g])
    np.testing.assert_array_equal(p.copy_to_host(), p2.copy_to_host())


def test_gpu_benchmark_runs():
    from fastgd import bench, bench_cuda

    result = bench_cuda.run_case(bench.CASES["adam"], 100, "float32", repeat=1)
    assert result.tensors == 1 and result.numpy_speedup is None and result.size == 100
    if not fastgd_cuda.SIMULATOR:  # the simulator's events do not measure time
        assert result.seconds > 0 and result.gbps > 0 and result.pct_roofline > 0


def test_gpu_many_tensor_benchmark_runs():
    from fastgd import bench, bench_cuda

    result = bench_cuda.run_case(bench.CASES["adamw"], 0, "float64", repeat=1,
                                 tensors=[5, 300, 1])
    assert (result.tensors, result.size, result.algorithm) == (3, 306, "adamw")


class CudaArrayStandIn:
    """An array as CuPy arrays and torch CUDA tensors present themselves to fastgd: GPU
    memory described by ``__cuda_array_interface__``, iterable over its rows (under the
    simulator, "GPU memory" is host memory)."""

    def __init__(self, values: np.ndarray) -> None:
        self.host = np.ascontiguousarray(values)  # the memory the interface describes
        self.shape, self.dtype = self.host.shape, self.host.dtype
        self.__cuda_array_interface__ = {
            "shape": self.host.shape, "typestr": self.host.dtype.str, "strides": None,
            "data": (self.host.ctypes.data, False), "version": 3}

    def __iter__(self):
        return (CudaArrayStandIn(row) for row in self.host)

    def __len__(self) -> int:
        return len(self.host)


# The stand-ins describe host memory as GPU memory, which only the simulator accepts;
# test_real_gpu.py passes CuPy arrays and torch CUDA tensors on a GPU.
simulator_only = pytest.mark.skipif(not fastgd_cuda.SIMULATOR, reason="simulator stand-in")


@simulator_only
@pytest.mark.parametrize("shape", [(7,), (3, 5)], ids=["1-D", "2-D"])
def test_one_cuda_array_of_any_kind_is_one_parameter(shape):
    rng = np.random.default_rng(3)
    values = rng.standard_normal(shape).astype(np.float32)
    param = CudaArrayStandIn(values)
    opt = fastgd.Adam(param, lr=0.1)           # one array, not a sequence of rows
    assert len(opt.param_groups[0]["params"]) == 1
    host = values.copy()
    ref = fastgd.Adam(host, lr=0.1)
    for _ in range(3):
        grad = rng.standard_normal(shape).astype(np.float32)
        opt.step(CudaArrayStandIn(grad))
        ref.step(grad)
    np.testing.assert_allclose(param.host, host, **TOL[np.float32])  # updated in place
    assert is_device(opt.state[0]["exp_avg"])


@simulator_only
def test_functional_api_takes_cuda_array_stand_ins():
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(10) for _ in range(2)] + [np.zeros(10), np.zeros(10)]
    host, start = [a.copy() for a in arrays], arrays[0].copy()
    stand_ins = [CudaArrayStandIn(a) for a in arrays]  # (over the memory of ``arrays``)
    for t in (1, 2):
        F.adam(*stand_ins, step=t, lr=0.1)
        F.adam(*host, step=t, lr=0.1)
    for stand_in, expected in zip(stand_ins, host, strict=True):
        np.testing.assert_allclose(stand_in.host, expected, **TOL[np.float64])
    assert not np.array_equal(arrays[0], start)  # the caller's memory was updated


def test_many_tensor_table_is_copied_to_the_gpu_only_when_it_changes(monkeypatch):
    uploads = []
    original = fastgd_cuda.cuda.to_device

    def spy(array, *args, **kwargs):
        if array.dtype == np.int64:  # (a launch table)
            uploads.append(array.copy())
        return original(array, *args, **kwargs)

    monkeypatch.setattr(fastgd_cuda.cuda, "to_device", spy)
    rng = np.random.default_rng(6)
    host = [rng.standard_normal(n) for n in (5, 40, 1)]
    device = [cuda.to_device(p) for p in host]
    opt_host, opt_device = fastgd.RMSprop(host, lr=0.01), fastgd.RMSprop(device, lr=0.01)
    grads = [rng.standard_normal(p.size) for p in host]
    same = [cuda.to_device(g) for g in grads]
    for step in range(5):  # the same gradients thrice, then new ones, then those again
        new = [cuda.to_device(g) for g in grads]
        opt_device.step(new if step == 3 else same)
        opt_host.step(grads)
    assert len(uploads) == 3  # steps 0, 3 and 4
    for p, d in zip(host, device, strict=True):
        np.testing.assert_allclose(d.copy_to_host(), p, **TOL[np.float64])


@simulator_only
def test_a_gradient_seen_before_is_checked_again_for_layout():
    param = CudaArrayStandIn(np.zeros((4, 5), np.float32))
    opt = fastgd.SGD(param, lr=0.1)
    grad = CudaArrayStandIn(np.ones((4, 5), np.float32))
    opt.step(grad)
    opt.step(grad)  # (the same gradient memory: the quick path)
    np.testing.assert_allclose(param.host, -0.2, rtol=1e-6)
    # The same memory as another shape or dtype is refused, and nothing is written.
    for bad in (CudaArrayStandIn(grad.host.reshape(5, 4)),
                CudaArrayStandIn(grad.host.view(np.int32))):
        with pytest.raises((TypeError, ValueError), match="grads\\[0\\]"):
            opt.step(bad)
    np.testing.assert_allclose(param.host, -0.2, rtol=1e-6)


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_schedule_free_points_move_on_the_gpu_as_on_the_host(name):
    """Steps, ``eval()`` and ``train()`` of GPU parameters (z made on the GPU from the
    parameter), and the functional points, against the host path."""
    rng = np.random.default_rng(5)
    hosts = [rng.standard_normal(n).astype(np.float32) for n in (7, 1100)]
    devices = [cuda.to_device(h) for h in hosts]
    opts = [getattr(fastgd, name)(ps, lr=0.05, weight_decay=0.01) for ps in (hosts, devices)]
    for opt in opts:
        opt.train()
    for _ in range(4):
        grads = [rng.standard_normal(h.size).astype(np.float32) for h in hosts]
        opts[0].step(grads)
        opts[1].step([cuda.to_device(g) for g in grads])
    assert is_device(opts[1].state[0]["z"])
    for move in ("eval", "train", "eval"):
        for opt in opts:
            getattr(opt, move)()
        for h, d in zip(hosts, devices, strict=True):
            np.testing.assert_allclose(d.copy_to_host(), h, **TOL[np.float32])
    z = opts[1].state[1]["z"]
    F.schedule_free_train(devices[1], z, beta=0.9)
    F.schedule_free_train(hosts[1], opts[0].state[1]["z"], beta=0.9)
    np.testing.assert_allclose(devices[1].copy_to_host(), hosts[1], **TOL[np.float32])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 11), (13, 4)])
def test_muon_on_the_gpu_as_on_the_host(dtype, shape):
    """Muon's passes run as kernels and its products in the GPU arrays' library (NumPy on
    the simulator's host copies), with a stream, in the class and the functional face."""
    rng = np.random.default_rng(12)
    p = rng.standard_normal(shape).astype(dtype)
    host, host_f, buf = p.copy(), p.copy(), np.zeros(shape, dtype)
    device, device_f = cuda.to_device(p), cuda.to_device(p)
    device_buf = cuda.to_device(np.zeros(shape, dtype))
    on_host, on_device = fastgd.Muon([host], lr=0.02), fastgd.Muon([device], lr=0.02)
    stream = cuda.stream()
    for _ in range(3):
        g = rng.standard_normal(shape).astype(dtype)
        on_host.step([g])
        on_device.step([cuda.to_device(g)], stream=stream)
        F.muon(host_f, g, buf, lr=0.02)
        F.muon(device_f, cuda.to_device(g), device_buf, lr=0.02, stream=stream)
    stream.synchronize()
    tol = TOL[dtype]["atol"] * 10
    np.testing.assert_allclose(device.copy_to_host(), host, atol=tol, rtol=0)
    np.testing.assert_allclose(device_f.copy_to_host(), host_f, atol=tol, rtol=0)
    np.testing.assert_allclose(device_buf.copy_to_host(), buf, atol=tol, rtol=0)
    assert is_device(on_device.state[0]["momentum_buffer"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adafactor_on_the_gpu_as_on_the_host(dtype):
    """Adafactor's factored passes (matrices, a batch of them, a Fortran-order matrix) and
    its two-pass vector step run as kernels, in the class and the functional face."""
    rng = np.random.default_rng(13)
    params = [rng.standard_normal((6, 11)), rng.standard_normal((2, 3, 5)),
              np.asfortranarray(rng.standard_normal((4, 7))), rng.standard_normal(9)]
    params = [p.astype(dtype) for p in params]
    host = [p.copy(order="K") for p in params]
    device = [cuda.to_device(p) for p in params]
    on_host = fastgd.Adafactor(host, lr=0.05, weight_decay=0.1)
    on_device = fastgd.Adafactor(device, lr=0.05, weight_decay=0.1)
    q, dq = params[0].copy(), cuda.to_device(params[0])
    rows, cols = np.zeros((6, 1), dtype), np.zeros((1, 11), dtype)
    d_rows, d_cols = cuda.to_device(rows), cuda.to_device(cols)
    stream = cuda.stream()
    for t in range(1, 4):
        grads = [np.empty_like(p) for p in params]  # (in each parameter's layout)
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        on_host.step(grads)
        on_device.step([cuda.to_device(g) for g in grads], stream=stream)
        F.adafactor(q, grads[0], row_var=rows, col_var=cols, step=t)
        F.adafactor(dq, cuda.to_device(grads[0]), row_var=d_rows, col_var=d_cols, step=t,
                    stream=stream)
    stream.synchronize()
    tol = TOL[dtype]["atol"] * 10
    for d, h in zip(device, host, strict=True):
        np.testing.assert_allclose(d.copy_to_host(), h, atol=tol, rtol=0)
    np.testing.assert_allclose(dq.copy_to_host(), q, atol=tol, rtol=0)
    np.testing.assert_allclose(d_cols.copy_to_host(), cols, atol=tol, rtol=tol)
    assert is_device(on_device.state[0]["row_var"])
