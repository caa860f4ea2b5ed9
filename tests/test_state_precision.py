"""bfloat16 optimizer state (``state_precision="bf16"``): every algorithm, option and
parameter format steps exactly as a float32-state step whose state is rounded to bfloat16
(nearest even) after every step; it follows the float64 reference so emulated; state dicts
and checkpoints convert between precisions and resume bit-identically; bad input is refused
with nothing changed."""

from __future__ import annotations

import zlib
from typing import Any

import cases
import ml_dtypes
import numpy as np
import pytest
from reference import REFERENCES

import fastgd
import fastgd.functional as F

BF16 = np.dtype(ml_dtypes.bfloat16)
SHAPES = [((), "C"), ((0,), "C"), ((1,), "C"), ((7,), "C"), ((1025,), "C"), ((3, 5), "F"),
          ((40_000,), "C")]  # (the last above the parallel crossover)
PARAM_FORMATS = {"float32": (np.float32, False), "float16": (np.float16, False),
                 "bfloat16": (BF16, False), "bfloat16+master": (BF16, True)}


def make(values: np.ndarray, dtype: Any, order: str = "C") -> np.ndarray:
    return np.require(np.asarray(values).astype(dtype), requirements=order)


def in_bf16(name: str, key: str) -> bool:
    """Whether ``name``'s state entry ``key`` is kept in bfloat16 with bfloat16 state."""
    spec = cases.algorithm(name).spec
    return key in spec.states and spec.form(key, "bf16") == "bf16"


def round_state(opt: fastgd.Optimizer) -> None:
    """Round the algorithm's state arrays of a full-precision optimizer to bfloat16 (nearest
    even) in place: what bfloat16 state keeps of them."""
    for entry in opt.state.values():
        for key, value in entry.items():
            if in_bf16(opt.algorithm.name, key) and isinstance(value, np.ndarray):
                value[...] = value.astype(BF16).astype(value.dtype)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype in (BF16, np.float16) else a


def stepped_twins(name: str, on: tuple[str, ...], fmt: str, seed: str, steps: int,
                  options: dict[str, Any], emulate: Any) -> tuple[Any, ...]:
    """An optimizer with low-precision state (``options``) and its full-precision twin, over
    the same SHAPES in format ``fmt``, stepped alike (some gradients None); after each step
    ``emulate(twin, stepped indices)`` rounds the twin's state as the low precision keeps
    it. Returns (low params, twin params, optimizer, twin)."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}{name}{on}{fmt}".encode()))
    dtype, master = PARAM_FORMATS[fmt]
    hp = cases.random_hyperparameters(name, on, rng)
    low = [make(rng.standard_normal(shape), dtype, order) for shape, order in SHAPES]
    full = [p.copy(order="K") for p in low]
    cls = cases.optimizer_class(name)
    opt_low = cls(low, **hp, master_weights=master, **options)
    if options["state_precision"] == "bf16":
        # (state that starts at a hyperparameter's value starts at its bfloat16 rounding)
        fills = {s.fill for s in cases.algorithm(name).states if s.fill}
        hp = {k: float(np.asarray(v).astype(BF16)) if k in fills else v for k, v in hp.items()}
    opt_full = cls(full, **hp, master_weights=master)
    for t in range(steps):
        grads = [None if (t + i) % 4 == 3 else make(rng.standard_normal(p.shape), dtype,
                                                     "F" if p.flags.f_contiguous and p.ndim > 1
                                                     else "C")
                 for i, p in enumerate(low)]
        opt_low.step(grads)
        opt_full.step(grads)
        emulate(opt_full, [i for i, g in enumerate(grads) if g is not None])
    for i, (a, b) in enumerate(zip(low, full, strict=True)):
        np.testing.assert_array_equal(bits(a), bits(b), err_msg=f"params[{i}]")
    return low, full, opt_low, opt_full


CONFIGS = [(name, on) for name in cases.NAMES for on in ((), cases.full_case(name))]


def twin_exact(name: str, precision: str) -> bool:
    """Whether a float32-state twin rounded after each step reproduces ``name``'s steps with
    low-precision state: not for a two-phase step (LAMB) whose second pass reads the state
    its first pass rounded (the float64-reference test covers it), nor for 8-bit state,
    which two-phase steps refuse (``test_two_phase_steps_refuse_8bit_state``)."""
    phase = cases.algorithm(name).two_phase
    return phase is None or (precision != "8bit" and not phase.second_reads)


def formats(*low: str, precision: str = "bf16") -> list[Any]:
    """Every config with float32 parameters; with each parameter format of ``low``, the
    configs with every switch on (each case compiles kernels: the CI's time is the limit).
    Only algorithms :func:`twin_exact` at ``precision``."""
    configs = [(name, on) for name, on in CONFIGS if twin_exact(name, precision)]
    return [pytest.param(name, on, "float32", id=f"{name}-{'on' if on else 'off'}-float32")
            for name, on in configs] + [
        pytest.param(name, on, fmt, id=f"{name}-on-{fmt}")
        for fmt in low for name, on in configs if on]


# (float16 parameters take the kernels' low-precision path that bfloat16 ones take)
@pytest.mark.parametrize("name, on, fmt", formats("bfloat16", "bfloat16+master"))
def test_bf16_state_is_float32_state_rounded_each_step(name, on, fmt):
    low, full, opt_low, opt_full = stepped_twins(
        name, on, fmt, "bf16", 5, {"state_precision": "bf16"},
        lambda opt, stepped: round_state(opt))
    for i in range(len(low)):
        for key, value in opt_full.state[i].items():
            if not isinstance(value, np.ndarray):
                assert opt_low.state[i][key] == value, key
                continue
            ours = opt_low.state[i][key]
            assert ours.dtype == (BF16 if in_bf16(name, key) else np.float32), key
            np.testing.assert_array_equal(ours.astype(np.float32), value, err_msg=key)


@pytest.mark.parametrize("name", cases.NAMES)
def test_bf16_state_follows_the_float64_reference(name):
    """The reference in float64, its state rounded to bfloat16 after each step, against
    fastgd's float32 arithmetic over bfloat16 state: 30 steps."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    hp = cases.random_hyperparameters(name, cases.full_case(name), rng)
    params = [rng.standard_normal(n).astype(np.float32) for n in (7, 1025, 40_000)]
    expected = [p.astype(np.float64) for p in params]
    fills = {s.fill for s in cases.algorithm(name).states if s.fill}
    refs = [REFERENCES[name](**{k: float(np.asarray(v).astype(BF16)) if k in fills else v
                                for k, v in hp.items()}) for _ in params]
    opt = cases.optimizer_class(name)(params, **hp, state_precision="bf16")
    for _ in range(30):
        grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
        opt.step(grads)
        for i, (ref, g) in enumerate(zip(refs, grads, strict=True)):
            expected[i] = ref.step(expected[i], g.astype(np.float64))
            for key, value in ref.state.items():
                if isinstance(value, np.ndarray) and in_bf16(name, key):
                    ref.state[key] = value.astype(np.float32).astype(BF16).astype(np.float64)
    for i, (p, e, ref) in enumerate(zip(params, expected, refs, strict=True)):
        # bfloat16 keeps 8 bits: one rounding of the state moves a step by up to 2**-8 of
        # itself, and the steps of 30 updates add up.
        scale = max(ref.peak.get("param", 1.0), 1.0)
        np.testing.assert_allclose(p, e, rtol=0, atol=5e-4 * scale, err_msg=name)
        for key, value in ref.state.items():
            if isinstance(value, np.ndarray):
                ours = opt.state[i][key].astype(np.float64)
                np.testing.assert_allclose(ours, value, rtol=2**-6,
                                           atol=2**-6 * ref.peak[key], err_msg=key)


def test_functional_api_takes_bf16_state_arrays():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(2000).astype(np.float32)
    q = p.copy()
    states = [np.zeros(2000, BF16), np.zeros(2000, BF16)]
    opt = fastgd.Adam([q], lr=0.1, weight_decay=0.01, state_precision="bf16")
    for t in range(1, 5):
        g = rng.standard_normal(2000).astype(np.float32)
        F.adam(p, g, *states, step=t, lr=0.1, weight_decay=0.01)
        opt.step([g])
    np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(states[1].view(np.uint16),
                                  opt.state[0]["exp_avg_sq"].view(np.uint16))


@pytest.mark.parametrize("case", ["mixed", "float64 param", "float16 state"])
def test_functional_refuses_state_it_cannot_use_untouched(case):
    p = np.ones(10, np.float32)
    m, v = np.zeros(10, BF16), np.zeros(10, BF16)
    if case == "mixed":
        v = np.zeros(10, np.float32)
    elif case == "float64 param":
        p = np.ones(10)
    else:
        m, v = np.zeros(10, np.float16), np.zeros(10, np.float16)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(TypeError, match="exp_avg"):
        F.adam(p, np.ones_like(p), m, v, step=1, lr=0.1)
    for a, b in zip((p, m, v), before, strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))


@pytest.mark.parametrize("value, error", [("4bit", ValueError), ("half", ValueError),
                                          (None, ValueError), ("BF16", ValueError)])
def test_unknown_state_precision_is_refused(value, error):
    with pytest.raises(error, match="state_precision"):
        fastgd.Adam([np.ones(3, np.float32)], state_precision=value)


def test_bf16_state_needs_float32_computation():
    with pytest.raises(ValueError, match=r"params\[1\] is float64"):
        fastgd.Adam([np.ones(3, np.float32), np.ones(3)], state_precision="bf16")
    opt = fastgd.Adam([{"params": [np.ones(3, np.float32)]}, {"params": [np.ones(3)]}])
    opt.param_groups[1]["state_precision"] = "bf16"  # (changed by hand: refused at the step)
    p = opt.param_groups[0]["params"][0]
    with pytest.raises(ValueError, match=r"params\[1\] is float64"):
        opt.step([np.ones(3, np.float32), np.ones(3)])
    np.testing.assert_array_equal(p, np.ones(3, np.float32))
    assert opt.state == {}


def _stepped(precision: str, make_param=np.asarray, steps: int = 3) -> fastgd.Optimizer:
    rng = np.random.default_rng(7)
    params = [make_param(rng.standard_normal(n).astype(np.float32)) for n in (5000, 3)]
    opt = fastgd.AdamW(params, lr=0.01, amsgrad=True, state_precision=precision)
    for _ in range(steps):
        opt.step([make_param(rng.standard_normal(n).astype(np.float32)) for n in (5000, 3)])
    return opt


def _twin(opt: fastgd.Optimizer, precision: str) -> fastgd.Optimizer:
    params = [p.copy() for p in opt.parameters()]
    return fastgd.AdamW(params, lr=0.01, amsgrad=True, state_precision=precision)


def test_state_dicts_convert_between_precisions():
    full, low = _stepped("full"), _stepped("bf16")
    assert low.state_dict()["param_groups"][0]["state_precision"] == "bf16"
    # full -> bf16: rounded to nearest even
    into_low = _twin(full, "bf16")
    into_low.load_state_dict(full.state_dict())
    assert into_low.param_groups[0]["state_precision"] == "bf16"  # (its own precision stays)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(into_low.state[0][key].view(np.uint16),
                                      full.state[0][key].astype(BF16).view(np.uint16))
    # bf16 -> full: widened exactly, and it steps on from there
    into_full = _twin(low, "full")
    into_full.load_state_dict(low.state_dict())
    assert into_full.state[0]["exp_avg"].dtype == np.float32
    np.testing.assert_array_equal(into_full.state[0]["exp_avg"],
                                  low.state[0]["exp_avg"].astype(np.float32))
    assert into_full.state_nbytes() == 2 * low.state_nbytes()
    # bf16 -> bf16: the same step after it
    again = _twin(low, "bf16")
    again.load_state_dict(low.state_dict())
    g = [np.full(5000, 0.5, np.float32), np.ones(3, np.float32)]
    low.step(g)
    again.step(g)
    for a, b in zip(low.parameters(), again.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_of_another_scheme_is_refused_untouched():
    low = _stepped("bf16")
    sd = low.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].astype(np.float16)
    target = _stepped("bf16")
    before = {k: v.copy() for k, v in target.state[0].items() if isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match="exp_avg"):
        target.load_state_dict(sd)
    sd = low.state_dict()
    sd["param_groups"][0]["state_precision"] = "4bit"
    with pytest.raises(ValueError, match="state_precision"):
        target.load_state_dict(sd)
    for key, value in before.items():
        np.testing.assert_array_equal(bits(target.state[0][key]), bits(value))


def test_changing_the_precision_of_a_group_converts_its_state():
    opt = _stepped("full")
    expected = opt.state[0]["exp_avg"].copy()
    opt.param_groups[0]["state_precision"] = "bf16"
    opt.step([np.zeros(5000, np.float32), np.zeros(3, np.float32)])
    assert opt.state[0]["exp_avg"].dtype == BF16
    beta1 = opt.param_groups[0]["betas"][0]
    np.testing.assert_array_equal(
        opt.state[0]["exp_avg"].view(np.uint16),
        (expected.astype(BF16).astype(np.float32) * np.float32(beta1)).astype(BF16)
        .view(np.uint16))


def test_torch_parameters_keep_bf16_state_as_torch_tensors():
    torch = pytest.importorskip("torch")
    opt = _stepped("bf16", torch.from_numpy)
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(5000)),
                                   torch.nn.Parameter(torch.zeros(3))], amsgrad=True)
    reference.load_state_dict(sd)  # torch reads it (as float32 state)
    back = _twin(opt, "bf16")
    back.load_state_dict(sd)
    np.testing.assert_array_equal(back.state[0]["exp_avg"].view(np.uint16),
                                  opt.state[0]["exp_avg"].view(np.uint16))


@pytest.mark.parametrize("torch_params", [False, True])
def test_checkpoints_keep_bf16_state_and_resume_bit_identically(tmp_path, torch_params):
    make_param = np.asarray
    if torch_params:
        make_param = pytest.importorskip("torch").from_numpy
    opt = _stepped("bf16", make_param)
    path = tmp_path / "run.ckpt"
    fastgd.save(path, opt)
    resumed = fastgd.AdamW([make_param(np.zeros(5000, np.float32)),
                            make_param(np.zeros(3, np.float32))], lr=0.01, amsgrad=True,
                           state_precision="bf16")
    fastgd.load(path, resumed)
    full = _twin(opt, "full")
    fastgd.load(path, full)  # (converted to full precision)
    assert full.state[0]["exp_avg"].dtype == np.float32
    rng = np.random.default_rng(3)
    for _ in range(3):
        g = [make_param(rng.standard_normal(n).astype(np.float32)) for n in (5000, 3)]
        opt.step(g)
        resumed.step(g)
    for a, b in zip(opt.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in opt.state[0].items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(bits(resumed.state[0][key]), bits(value))


def test_state_nbytes_counts_the_state_arrays():
    full, low = _stepped("full"), _stepped("bf16")
    assert full.state_nbytes() == 3 * 4 * 5003
    assert low.state_nbytes() == 3 * 2 * 5003


# -- 8-bit state ---------------------------------------------------------------------------------

MIN_8BIT = 64  # (sizes 1025, 40_000 and the 2-D 15 below it: both kinds of tensor)


def quantize_state(opt: fastgd.Optimizer, name: str, stepped: list[int]) -> None:
    """Round the quantized states of a full-precision optimizer's parameters of at least
    MIN_8BIT elements that were just ``stepped`` through 8-bit blockwise quantization in
    place: what 8-bit state keeps of them. (Quantization is not idempotent: a block whose
    largest magnitude is negative shrinks, as -1 is not in the signed map.)"""
    from fastgd.quantization import dequantize_blockwise, quantize_blockwise

    spec = cases.algorithm(name).spec
    for index in stepped:
        entry = opt.state[index]
        if opt.parameters()[index].size < MIN_8BIT:
            continue
        for key, value in entry.items():
            if key in spec.states and spec.quantized(key):
                signed = spec.quantized(key) == "signed"
                codes, absmax = quantize_blockwise(value, signed=signed)
                value[...] = dequantize_blockwise(codes, absmax, signed=signed)


@pytest.mark.parametrize("name, on, fmt", formats("bfloat16+master", precision="8bit"))
def test_8bit_state_is_float32_state_quantized_each_step(name, on, fmt):
    low, full, opt_low, opt_full = stepped_twins(
        name, on, fmt, "8bit", 4, {"state_precision": "8bit", "min_8bit_size": MIN_8BIT},
        lambda opt, stepped: quantize_state(opt, name, stepped))
    spec = cases.algorithm(name).spec
    for i, a in enumerate(low):
        eight = a.size >= MIN_8BIT
        for key, value in opt_full.state[i].items():
            if not isinstance(value, np.ndarray):
                assert opt_low.state[i][key] == value, key
                continue
            ours = opt_low.state[i][key]
            if eight and key in spec.states and spec.quantized(key):
                from fastgd.quantization import dequantize_blockwise

                assert ours.dtype == np.uint8, key
                assert opt_low.state[i][key + "_absmax"].size == -(-a.size // 256)
                ours = dequantize_blockwise(ours, opt_low.state[i][key + "_absmax"],
                                            signed=spec.quantized(key) == "signed")
            else:
                assert ours.dtype == np.float32, key
            np.testing.assert_array_equal(ours.reshape(value.shape), value, err_msg=key)


def test_8bit_state_takes_about_one_byte_per_element_per_state():
    n = 1 << 20
    opt = fastgd.Adam([np.zeros(n, np.float32), np.zeros(100, np.float32)],
                      state_precision="8bit")
    opt.step([np.ones(n, np.float32), np.ones(100, np.float32)])
    assert opt.state[1]["exp_avg"].dtype == np.float32  # (below min_8bit_size: full)
    eight_bit = sum(v.nbytes for v in opt.state[0].values() if isinstance(v, np.ndarray))
    assert eight_bit / (2 * n) <= 1.02
    assert opt.state_nbytes() == eight_bit + 2 * 4 * 100


def test_8bit_state_dicts_convert_and_resume():
    from fastgd.quantization import dequantize_blockwise

    low = _stepped("8bit")
    sd = low.state_dict()
    assert sd["param_groups"][0]["state_precision"] == "8bit"
    assert sd["state"][0]["exp_avg"].dtype == np.uint8
    assert sd["state"][0]["max_exp_avg_sq"].dtype == np.float32  # (AMSGrad's max: full)
    values = dequantize_blockwise(sd["state"][0]["exp_avg"], sd["state"][0]["exp_avg_absmax"],
                                  signed=True)
    for precision, dtype in (("full", np.float32), ("bf16", BF16)):
        other = _twin(low, precision)
        other.load_state_dict(sd)
        assert other.state[0]["exp_avg"].dtype == dtype and "exp_avg_absmax" not in (
            other.state[0])
        np.testing.assert_array_equal(other.state[0]["exp_avg"], values.astype(dtype))
        back = _twin(low, "8bit")
        back.load_state_dict(other.state_dict())
        if precision == "full":  # (8-bit values quantize to themselves)
            np.testing.assert_array_equal(back.state[0]["exp_avg"], low.state[0]["exp_avg"])
    again = _twin(low, "8bit")
    again.load_state_dict(sd)
    g = [np.full(5000, 0.5, np.float32), np.ones(3, np.float32)]
    low.step(g)
    again.step(g)
    for a, b in zip(low.parameters(), again.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["stray absmax", "short absmax", "codes of a full state",
                                    "float16 codes"])
def test_bad_8bit_state_dict_is_refused_untouched(damage):
    sd = _stepped("8bit").state_dict()
    entry = sd["state"][0]
    if damage == "stray absmax":
        del entry["exp_avg"]
    elif damage == "short absmax":
        entry["exp_avg_absmax"] = entry["exp_avg_absmax"][:-1]
    elif damage == "codes of a full state":
        entry["max_exp_avg_sq"] = entry["exp_avg_sq"].copy()
        entry["max_exp_avg_sq_absmax"] = entry["exp_avg_sq_absmax"].copy()
    else:
        entry["exp_avg"] = entry["exp_avg"].astype(np.float16)
    target = _stepped("8bit")
    before = target.state_dict()
    with pytest.raises(ValueError, match="state\\[0\\]"):
        target.load_state_dict(sd)
    after = target.state_dict()
    for key, value in before["state"][0].items():
        np.testing.assert_array_equal(np.asarray(after["state"][0][key]), np.asarray(value))


@pytest.mark.parametrize("value, error", [(-1, ValueError), (1.5, TypeError),
                                          (True, TypeError)])
def test_bad_min_8bit_size_is_refused(value, error):
    with pytest.raises(error, match="min_8bit_size"):
        fastgd.Adam([np.ones(3, np.float32)], state_precision="8bit", min_8bit_size=value)


def test_8bit_checkpoint_resumes_bit_identically(tmp_path):
    opt = _stepped("8bit")
    path = tmp_path / "run.ckpt"
    fastgd.save(path, opt)
    resumed = _twin(opt, "8bit")
    for p, q in zip(resumed.parameters(), (np.zeros(5000, np.float32),
                                           np.zeros(3, np.float32)), strict=True):
        p[...] = q
    fastgd.load(path, resumed)
    g = [np.full(5000, -0.25, np.float32), np.ones(3, np.float32)]
    for _ in range(3):
        opt.step(g)
        resumed.step(g)
    for a, b in zip(opt.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)


# -- bfloat16 state, rounded stochastically -------------------------------------------------------

def _mix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, in NumPy (uint32 arithmetic wraps)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def stochastic_bf16(values: np.ndarray, key: int) -> np.ndarray:
    """bfloat16 bits of float32 ``values`` (flat) rounded up when 16 bits of
    mix32(key + mix32(element number)) reach the dropped bits' complement: 16 random bits
    added below the kept ones, then truncated."""
    index = np.arange(values.size, dtype=np.uint64)
    noise = _mix32(np.uint32(key % 2**32) + _mix32(
        (index & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ (index >> np.uint64(32))
        .astype(np.uint32)))
    return ((values.view(np.uint32) + (noise & np.uint32(0xFFFF))) >> np.uint32(16)
            ).astype(np.uint16)


SEED = 1234


def round_state_stochastically(opt: fastgd.Optimizer, name: str, stepped: list[int]) -> None:
    """What stochastic rounding keeps of a full-precision twin's state: each state of each
    stepped parameter rounded with its key (the parameter's key at its step, plus the
    state's number in the rule's order) and each element's number in memory order."""
    from fastgd.lowbit import rounding_keys

    states = cases.algorithm(name).spec.states
    for index in stepped:
        entry = opt.state[index]
        key = int(rounding_keys(SEED, entry["step"], [index])[0])
        for key_offset, state in enumerate(states):
            value = entry.get(state)
            if value is None or not in_bf16(name, state):
                continue
            order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
            flat = value.reshape(-1, order=order)
            flat[...] = stochastic_bf16(flat, key + key_offset).view(BF16).astype(np.float32)


@pytest.mark.parametrize("name, on, fmt", formats("bfloat16+master"))
def test_stochastic_bf16_state_is_float32_state_rounded_the_same_way(name, on, fmt):
    low, _, opt_low, opt_full = stepped_twins(
        name, on, fmt, "sr", 4, {"state_precision": "bf16", "stochastic_rounding": True,
                                 "rounding_seed": SEED},
        lambda opt, stepped: round_state_stochastically(opt, name, stepped))
    for i in range(len(low)):
        for key, value in opt_full.state[i].items():
            if isinstance(value, np.ndarray) and key != "master_param":
                np.testing.assert_array_equal(opt_low.state[i][key].astype(np.float32),
                                              value, err_msg=key)


def test_stochastic_rounding_is_unbiased():
    import numba

    from fastgd import halfprec

    @numba.njit
    def rounded(value, key, n):
        out = np.empty(n, np.uint16)
        for i in range(n):
            out[i] = halfprec.float32_to_bfloat16_stochastic(value, key, i)
        return out

    n = 200_000
    for value in (np.float32(1 + 2**-9 + 2**-11), np.float32(-3.3e-5), np.float32(7e20)):
        got = rounded(value, 99, n).view(BF16).astype(np.float64)
        low, high = np.unique(got)  # (the two bfloat16 neighbours, nothing else)
        assert low < value < high
        p = (float(value) - low) / (high - low)
        sigma = (high - low) * np.sqrt(p * (1 - p) / n)
        assert abs(got.mean() - float(value)) < 5 * sigma
    exact = rounded(np.float32(1.5), 7, 1000)
    assert np.all(exact.view(BF16) == 1.5)  # (representable values stay put)


def test_stochastic_rounding_is_reproducible_and_seeded():
    def run(seed: int, steps: int = 3) -> fastgd.Optimizer:
        rng = np.random.default_rng(0)
        opt = fastgd.Adam([np.zeros(50_000, np.float32)], lr=0.01, state_precision="bf16",
                          stochastic_rounding=True, rounding_seed=seed)
        for _ in range(steps):
            opt.step([rng.standard_normal(50_000).astype(np.float32)])
        return opt

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.state[0]["exp_avg"].view(np.uint16),
                                  b.state[0]["exp_avg"].view(np.uint16))
    differ = a.state[0]["exp_avg"].view(np.uint16) != c.state[0]["exp_avg"].view(np.uint16)
    assert 0.2 < differ.mean() < 0.8
    # a run resumed from a state dict rounds as the uninterrupted one
    resumed = fastgd.Adam([a.parameters()[0].copy()], lr=0.01, state_precision="bf16",
                          stochastic_rounding=True, rounding_seed=7)
    resumed.load_state_dict(a.state_dict())
    assert resumed.param_groups[0]["rounding_seed"] == 1
    g = np.full(50_000, 0.1, np.float32)
    a.step([g])
    resumed.step([g])
    np.testing.assert_array_equal(a.parameters()[0], resumed.parameters()[0])
    np.testing.assert_array_equal(a.state[0]["exp_avg_sq"].view(np.uint16),
                                  resumed.state[0]["exp_avg_sq"].view(np.uint16))


def test_stochastic_rounding_stays_the_loading_optimizers_choice():
    """A state dict of a stochastically rounded run loads into optimizers of any precision
    (state_precision and stochastic_rounding are theirs; the seed comes with the run)."""
    rng = np.random.default_rng(4)
    start = rng.standard_normal(5000).astype(np.float32)
    source = fastgd.AdamW([start.copy()], state_precision="bf16", stochastic_rounding=True,
                          rounding_seed=5)
    source.step([rng.standard_normal(5000).astype(np.float32)])
    for options in ({}, {"state_precision": "8bit"}, {"state_precision": "bf16"}):
        target = fastgd.AdamW([start.copy()], **options)
        target.load_state_dict(source.state_dict())
        group = target.param_groups[0]
        assert group["stochastic_rounding"] is False and group["rounding_seed"] == 5
        assert group["state_precision"] == options.get("state_precision", "full")
    full = fastgd.AdamW([start.copy()])
    full.step([rng.standard_normal(5000).astype(np.float32)])
    source.load_state_dict(full.state_dict())  # (a full-precision run into a rounding one)
    assert source.param_groups[0]["stochastic_rounding"] is True
    assert source.state[0]["exp_avg"].dtype == BF16


@pytest.mark.parametrize("options, error, match", [
    ({"stochastic_rounding": True}, ValueError, "stochastic_rounding"),
    ({"stochastic_rounding": True, "state_precision": "8bit"}, ValueError, "bf16"),
    ({"stochastic_rounding": "yes", "state_precision": "bf16"}, TypeError, "stochastic_rounding"),
    ({"rounding_seed": -1}, ValueError, "rounding_seed"),
    ({"rounding_seed": 1.0}, TypeError, "rounding_seed")])
def test_bad_stochastic_rounding_options_are_refused(options, error, match):
    with pytest.raises(error, match=match):
        fastgd.Adam([np.ones(3, np.float32)], **options)


def test_functional_api_takes_8bit_state_pairs():
    from fastgd.quantization import quantize_blockwise

    rng = np.random.default_rng(11)
    n = 5000
    p = rng.standard_normal(n).astype(np.float32)
    q = p.copy()
    m = quantize_blockwise(np.zeros(n, np.float32), signed=True)
    v = quantize_blockwise(np.zeros(n, np.float32), signed=False)
    peak = np.zeros(n, np.float32)  # (AMSGrad's maximum stays full precision)
    opt = fastgd.AdamW([q], lr=0.01, amsgrad=True, state_precision="8bit")
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32)
        F.adamw(p, g, m, v, peak, step=t, lr=0.01)
        opt.step([g])
    np.testing.assert_array_equal(p, q)
    for (codes, absmax), key in ((m, "exp_avg"), (v, "exp_avg_sq")):
        np.testing.assert_array_equal(codes, opt.state[0][key])
        np.testing.assert_array_equal(absmax, opt.state[0][key + "_absmax"])
    np.testing.assert_array_equal(peak, opt.state[0]["max_exp_avg_sq"])


@pytest.mark.parametrize("case", ["full second moment", "short absmax", "float codes",
                                  "pair for a full state", "three items"])
def test_functional_refuses_bad_8bit_state_untouched(case):
    from fastgd.quantization import quantize_blockwise

    n = 1000
    p = np.ones(n, np.float32)
    m = quantize_blockwise(np.full(n, 0.5, np.float32), signed=True)
    v = quantize_blockwise(np.full(n, 0.25, np.float32), signed=False)
    extra: tuple[Any, ...] = ()
    if case == "full second moment":
        v = np.zeros(n, np.float32)
    elif case == "short absmax":
        m = (m[0], m[1][:-1])
    elif case == "float codes":
        m = (m[0].astype(np.float32), m[1])
    elif case == "pair for a full state":
        extra = (quantize_blockwise(np.zeros(n, np.float32), signed=False),)
    else:
        m = (*m, m[1])
    before = [a.copy() for a in (p, *(m if isinstance(m, tuple) else (m,)))]
    with pytest.raises(TypeError, match="exp_avg|max_exp_avg_sq"):
        F.adamw(p, np.ones(n, np.float32), m, v, *extra, step=1)
    for a, b in zip((p, *(m if isinstance(m, tuple) else (m,))), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", [n for n in cases.NAMES if cases.algorithm(n).two_phase])
def test_two_phase_steps_refuse_8bit_state(name):
    """Their two passes read the state twice: 8-bit state is refused, before anything is
    written, by the class and by the functional API."""
    with pytest.raises(ValueError, match="8-bit"):
        cases.optimizer_class(name)([np.ones(5000, np.float32)], state_precision="8bit")
    p = np.ones(5000, np.float32)
    from fastgd.quantization import quantize_blockwise

    states = {s: quantize_blockwise(np.zeros(5000, np.float32),
                                    signed=cases.algorithm(name).spec.quantized(s) == "signed")
              if cases.algorithm(name).spec.quantized(s) else np.zeros(5000, np.float32)
              for s in cases.state_names(name, {})}
    with pytest.raises(TypeError, match="8-bit"):
        cases.call_functional(name, p, np.ones(5000, np.float32), states, {}, 1)
    assert np.all(p == 1.0)
