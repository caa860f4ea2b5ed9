"""Low-precision optimizer state on the GPU: bfloat16 (rounded to nearest or stochastically)
and 8-bit blockwise state, for every algorithm, against the CPU path.

Under the simulator the kernels' arithmetic is the CPU's (the rules run as CPU functions),
so the GPU path must give the CPU's results bit for bit: this checks the kernels' loads,
stores, block walk, reduction, codec tables and multi-tensor tables. On a GPU, which
contracts ``a * b + c`` to one FMA, results agree to rounding: a parameter within a few
units in the last place, an 8-bit state within one code of the map (an element near a
decision threshold may round the other way), a bfloat16 state within one bfloat16 unit.
"""

from __future__ import annotations

from typing import Any

import cases
import numpy as np
import pytest
from numba import cuda

import fastgd
import fastgd.functional as F
from fastgd import cuda as fastgd_cuda
from fastgd import lowbit
from fastgd.device_pointers import SIMULATOR
from fastgd.quantization import quantize_blockwise

from .test_real_gpu import KINDS, kind, real_gpu, to_host

PRECISIONS = {"bf16": dict(state_precision="bf16"),
              "bf16-stochastic": dict(state_precision="bf16", stochastic_rounding=True,
                                      rounding_seed=7),
              "8bit": dict(state_precision="8bit", min_8bit_size=256)}
#: Every algorithm with every switch on (the optional states too), once per precision.
CONFIGS = [(name, cases.random_hyperparameters(name, cases.full_case(name),
                                               np.random.default_rng(3)))
           for name in cases.NAMES]


def _host_params(rng: np.random.Generator) -> list[np.ndarray]:
    # 8-bit state from 256 elements (min_8bit_size above): a tensor of several blocks with a
    # partial last one, a Fortran-order one, one below the size (full-precision state), and
    # (on a GPU) one spread over many thread blocks.
    sizes = (600, 7, 0) if SIMULATOR else (300_001, 1025, 7, 0)
    return [rng.standard_normal(n).astype(np.float32) for n in sizes] + [
        np.asfortranarray(rng.standard_normal((20, 30)).astype(np.float32))]


def bits(x: Any) -> np.ndarray:
    """The bytes of any array, C order (to compare bfloat16, NaN and codes exactly)."""
    return np.ascontiguousarray(to_host(x)).view(np.uint8)


def _values(opt: fastgd.Optimizer, index: int, key: str) -> np.ndarray:
    """State ``key`` of parameter ``index`` as float32 values (8-bit state decoded)."""
    entry = {k: to_host(v) for k, v in opt.state[index].items() if not isinstance(v, int)}
    quantized = opt.algorithm.spec.quantized(key) if key in opt.algorithm.spec.states else ""
    return np.asarray(lowbit.values(entry, key, quantized), dtype=np.float32)


def exact(opt: fastgd.Optimizer) -> bool:
    """Whether the GPU path must match the CPU bit for bit: under the simulator, except for
    two-phase steps, whose per-tensor sums add up in another order on the GPU."""
    return SIMULATOR and opt.algorithm.two_phase is None


def assert_same_state(opt_device: fastgd.Optimizer, opt_host: fastgd.Optimizer) -> None:
    """Equal state: bit for bit under the simulator, to rounding on a GPU."""
    assert opt_device.state.keys() == opt_host.state.keys()
    for index, entry in opt_host.state.items():
        assert opt_device.state[index].keys() == entry.keys()
        for key, value in entry.items():
            if isinstance(value, (int, float)):
                assert opt_device.state[index][key] == value
            elif exact(opt_host):
                np.testing.assert_array_equal(bits(opt_device.state[index][key]),
                                              bits(value), err_msg=key)
            elif not key.endswith(lowbit.ABSMAX):
                a, b = _values(opt_device, index, key), _values(opt_host, index, key)
                scale = np.abs(b).max() if b.size else 0.0
                # one code of the map: at most 1/64 of the block's absmax (signed map, top
                # decade); one bfloat16 unit: 1/128 relative
                np.testing.assert_allclose(a, b, rtol=2**-7, atol=scale / 32, err_msg=key)
                assert not b.size or np.mean(np.isclose(a, b, rtol=1e-5, atol=0)) > 0.98, key


def assert_same_params(device: list[Any], host: list[np.ndarray], k: Any,
                       bitwise: bool = SIMULATOR) -> None:
    for d, h in zip(device, host, strict=True):
        if bitwise:
            np.testing.assert_array_equal(k.to_host(d), h)
        else:
            np.testing.assert_allclose(k.to_host(d), h, rtol=1e-4,
                                       atol=1e-4 * (np.abs(h).max() if h.size else 0))


@pytest.mark.parametrize("name, options, precision", [
    (name, options, precision) for name, options in CONFIGS for precision in PRECISIONS
    if precision != "8bit" or not cases.algorithm(name).two_phase],  # (refused: test_state_
    ids=lambda x: x if isinstance(x, str) else "")                   # precision.py)
@pytest.mark.parametrize("which", KINDS)
def test_low_precision_state_matches_cpu(which, name, options, precision):
    k = kind(which)
    cls = cases.optimizer_class(name)
    rng = np.random.default_rng(len(name))
    host = _host_params(rng)
    device = [k.to_device(p.copy(order="K")) for p in host]
    opt_host = cls(host, **options, **PRECISIONS[precision])
    opt_device = cls(device, **options, **PRECISIONS[precision])
    for _ in range(3):
        grads = [np.require(rng.standard_normal(p.shape).astype(np.float32),
                            requirements="C" if p.flags.c_contiguous else "F") for p in host]
        opt_host.step(grads)
        opt_device.step([k.to_device(g) for g in grads])
    assert_same_params(device, host, k, exact(opt_host))
    assert_same_state(opt_device, opt_host)
    assert opt_device.state_nbytes() == opt_host.state_nbytes()


def test_non_finite_values_spread_to_their_block_as_on_the_cpu():
    rng = np.random.default_rng(5)
    host = [rng.standard_normal(1000).astype(np.float32)]
    device = [cuda.to_device(host[0].copy())]
    options = dict(lr=1e-2, state_precision="8bit", min_8bit_size=256)
    opt_host, opt_device = fastgd.Adam(host, **options), fastgd.Adam(device, **options)
    grad = rng.standard_normal(1000).astype(np.float32)
    grad[[3, 600]] = [np.nan, np.inf]
    opt_host.step([grad])
    opt_device.step([cuda.to_device(grad)])
    exp_avg = _values(opt_device, 0, "exp_avg")
    assert np.isnan(exp_avg[:256]).all() and np.isfinite(exp_avg[256:512]).all()
    assert not np.isfinite(exp_avg[512:768]).any()
    np.testing.assert_array_equal(_values(opt_host, 0, "exp_avg"), exp_avg)
    np.testing.assert_array_equal(to_host(opt_device.state[0]["exp_avg_absmax"]),
                                  opt_host.state[0]["exp_avg_absmax"])


@pytest.mark.parametrize("form", ["bf16", "8bit"])
def test_functional_api_takes_low_precision_state_on_the_gpu(form):
    import ml_dtypes

    rng = np.random.default_rng(6)
    n = 700
    param, grad = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(
        np.float32)
    m = (0.1 * rng.standard_normal(n)).astype(np.float32)
    v = (0.01 * rng.random(n)).astype(np.float32)
    if form == "8bit":
        host_states = [quantize_blockwise(m, signed=True), quantize_blockwise(v, signed=False)]
        device_states = [tuple(cuda.to_device(a) for a in s) for s in host_states]
    else:
        host_states = [m.astype(ml_dtypes.bfloat16), v.astype(ml_dtypes.bfloat16)]
        device_states = [cuda.to_device(s) for s in host_states]
    device_param = cuda.to_device(param)
    for t in (1, 2):
        F.adamw(param, grad, *host_states, step=t, lr=1e-2, weight_decay=0.1)
        F.adamw(device_param, cuda.to_device(grad), *device_states, step=t, lr=1e-2,
                weight_decay=0.1)
    flat = [bits(a) for s in host_states for a in (s if isinstance(s, tuple) else (s,))]
    flat_device = [bits(a) for s in device_states
                   for a in (s if isinstance(s, tuple) else (s,))]
    if SIMULATOR:
        np.testing.assert_array_equal(device_param.copy_to_host(), param)
        for a, b in zip(flat_device, flat, strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(device_param.copy_to_host(), param, rtol=1e-4, atol=1e-6)


def test_functional_low_precision_bad_input_is_refused_untouched():
    rng = np.random.default_rng(7)
    p = rng.standard_normal(600).astype(np.float32)
    codes, absmax = quantize_blockwise(p, signed=True)
    dp, dcodes, dabsmax = cuda.to_device(p), cuda.to_device(codes), cuda.to_device(absmax)
    ucodes, uabsmax = quantize_blockwise(np.abs(p), signed=False)
    second = (cuda.to_device(ucodes), cuda.to_device(uabsmax))
    bad = [
        ((dcodes, cuda.to_device(absmax[:-1])), second, TypeError, "absmax"),  # short absmax
        ((codes, dabsmax), second, TypeError, "host array"),  # codes on the host
        (dcodes, second, TypeError, "pair"),  # codes without their absmax
    ]
    for first, other, error, match in bad:
        with pytest.raises(error, match=match):
            F.adam(dp, cuda.to_device(p), first, other, step=1)
    np.testing.assert_array_equal(dp.copy_to_host(), p)
    np.testing.assert_array_equal(dcodes.copy_to_host(), codes)
    np.testing.assert_array_equal(dabsmax.copy_to_host(), absmax)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_float64_gpu_parameters_keep_full_precision_state(precision):
    p = cuda.to_device(np.ones(5000))
    with pytest.raises(ValueError, match="float64"):
        fastgd.Adam([p], state_precision=precision)
    np.testing.assert_array_equal(p.copy_to_host(), np.ones(5000))


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_gpu_state_resumes_bit_identically_and_converts_between_host_and_gpu(
        precision, tmp_path):
    rng = np.random.default_rng(8)
    shapes = [(600,), (20, 30), (9,)]
    options = dict(lr=1e-2, state_precision=precision, min_8bit_size=256,
                   stochastic_rounding=precision == "bf16", rounding_seed=3)
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    params = [cuda.to_device(p) for p in start]
    opt = fastgd.AdamW(params, **options)
    for g in grads[:2]:
        opt.step([cuda.to_device(x) for x in g])
    fastgd.save(tmp_path / "ckpt.npz", opt)
    for g in grads[2:]:
        opt.step([cuda.to_device(x) for x in g])
    # resumed on the GPU: bit for bit
    resumed_params = [cuda.to_device(p) for p in start]
    resumed = fastgd.AdamW(resumed_params, **options)
    fastgd.load(tmp_path / "ckpt.npz", resumed)
    for g in grads[2:]:
        resumed.step([cuda.to_device(x) for x in g])
    for a, b in zip(resumed_params, params, strict=True):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())
    for index, entry in opt.state.items():
        for key, value in entry.items():
            if isinstance(value, int):
                assert resumed.state[index][key] == value
            else:
                np.testing.assert_array_equal(bits(resumed.state[index][key]), bits(value))
    # the GPU checkpoint loads into a CPU optimizer of full precision (converted), and
    # that one's state dict into a GPU optimizer of this precision
    host = fastgd.AdamW([p.copy() for p in start], lr=1e-2)
    fastgd.load(tmp_path / "ckpt.npz", host)
    assert host.state[0]["exp_avg"].dtype == np.float32
    back = fastgd.AdamW([cuda.to_device(p) for p in start], **options)
    back.load_state_dict(host.state_dict())
    for index, entry in back.state.items():
        assert lowbit.form_of(entry, "exp_avg", back._engine.params[index].view) == (
            lowbit.effective(precision, int(np.prod(shapes[index])), 256))
        np.testing.assert_allclose(_values(back, index, "exp_avg"),
                                   host.state[index]["exp_avg"], rtol=2**-7,
                                   atol=np.abs(host.state[index]["exp_avg"]).max() / 32)


def test_low_bit_tensors_take_one_launch_per_storage_format(monkeypatch):
    calls = []
    original = fastgd_cuda.launch_table

    def spy(*args: Any, **kwargs: Any) -> None:
        calls.append(args[3].size)
        original(*args, **kwargs)

    monkeypatch.setattr(fastgd_cuda, "launch_table", spy)
    rng = np.random.default_rng(9)
    sizes = [300, 1000, 5, 700, 12]  # (below 256 elements: full-precision state)
    params = [cuda.to_device(rng.standard_normal(n).astype(np.float32)) for n in sizes]
    opt = fastgd.Adam(params, state_precision="8bit", min_8bit_size=256)
    opt.step([cuda.to_device(rng.standard_normal(n).astype(np.float32)) for n in sizes])
    assert sorted(calls) == [2, 3]  # (the 8-bit tensors, the full-precision ones)


@real_gpu
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_torch_parameters_with_low_precision_state(precision):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10)).cuda()
    reference = [p.detach().cpu().numpy().copy() for p in model.parameters()]
    options = dict(lr=1e-2, state_precision=precision, min_8bit_size=256)
    opt = fastgd.AdamW(list(model.parameters()), **options)
    host_opt = fastgd.AdamW(reference, **options)
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    for _ in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        host_opt.step([p.grad.detach().cpu().numpy() for p in model.parameters()])
        opt.step([p.grad for p in model.parameters()])
    for p, r in zip(model.parameters(), reference, strict=True):
        np.testing.assert_allclose(p.detach().cpu().numpy(), r, rtol=1e-4, atol=1e-5)
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].device.type == "cuda"
    assert state["exp_avg"].dtype == (torch.bfloat16 if precision == "bf16" else torch.uint8)
