"""fastgd (optimizer classes and functional API) against the NumPy float64 reference.

Every optimizer and every valid combination of its structural options runs >= 30 steps with
random, non-default hyperparameters (seeded per test case), both dtypes, both CPU kernels
(serial and multi-threaded, see the ``kernel`` fixture), odd sizes, 0-d, n-d, Fortran-ordered
and misaligned arrays, and two parameter groups with different options.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from cases import (
    NAMES,
    FunctionalRunner,
    full_case,
    optimizer_class,
    option_cases,
    random_hyperparameters,
    switches,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numba.core.registry import CPUDispatcher
from reference import REFERENCES, AdagradRef, AdamRef, RMSpropRef, SGDRef

import fastgd
import fastgd.cpu
from fastgd import functional as F
from fastgd.algorithms import ALGORITHMS

#: Larger than one parallel block, so the multi-threaded kernel runs several tasks.
BIG = 2 * getattr(fastgd.cpu, "BLOCK", 16384) + 37
SERIAL_ONLY = 10**18
STEPS = 32
RTOL = {np.float32: 1e-4, np.float64: 1e-10}


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture(params=["serial", "parallel"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the serial kernel only, or the parallel one from 64 elements on."""
    threshold = SERIAL_ONLY if request.param == "serial" else 64
    monkeypatch.setattr(fastgd.cpu, "PARALLEL_THRESHOLD", threshold)
    return request.param


@contextlib.contextmanager
def parallel_threshold(value: int) -> Iterator[None]:
    old = fastgd.cpu.PARALLEL_THRESHOLD
    fastgd.cpu.PARALLEL_THRESHOLD = value
    try:
        yield
    finally:
        fastgd.cpu.PARALLEL_THRESHOLD = old


def seeded_rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """An RNG seeded from the test id: reproducible, different for every case."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def make_array(values: np.ndarray, dtype: Any, order: str = "C", offset: int = 0
               ) -> np.ndarray:
    """``values`` as a contiguous ``dtype`` array in ``order`` that starts ``offset``
    elements into a larger buffer (so that its address is not the allocator's)."""
    values = np.asarray(values)
    buffer = np.empty(values.size + offset, dtype=dtype)
    arr = buffer[offset:].reshape(values.shape, order=order)
    arr[...] = values
    assert arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous
    return arr


def like(arr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` with ``arr``'s dtype, shape and memory order (a fresh array)."""
    order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    return np.array(values, dtype=arr.dtype, order=order)


def assert_close(actual: Any, expected: Any, rtol: float, what: str = "",
                 scale: float = 0.0, jump: float = 0.0) -> None:
    """Element-wise relative error <= rtol, with an absolute floor of rtol * max(scale,
    max|expected|): entries near zero are judged on the scale of the array and of the
    values it took on the way (``Reference.peak``), since rounding errors are relative to
    those. NaNs must match exactly. With a ``jump`` (:meth:`Reference.jump`), up to one
    element in 10**5 (at least one) may be off by whole jumps (a step function's branch
    taken the other way where its argument was within rounding of the branch point)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    finite = expected[np.isfinite(expected)]
    scale = max(scale, float(np.max(np.abs(finite))) if finite.size else 0.0)
    if jump:
        off = np.abs(actual - expected) > rtol * (np.abs(expected) + scale)
        jumps = np.abs(actual[off] - expected[off]) / jump
        assert off.sum() <= max(1, actual.size // 10**5), (what, int(off.sum()))
        assert np.all(np.abs(jumps - np.round(jumps)) <= 0.01), (what, jumps)
        actual, expected = actual[~off], expected[~off]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def state_arrays(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def case_id(options: tuple[str, ...]) -> str:
    return "+".join(options) or "plain"


ALL_CASES = [pytest.param(name, options, id=f"{name}-{case_id(options)}")
             for name in NAMES for options in option_cases(name)]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


# -- the option matrix itself ------------------------------------------------------------------

def test_option_matrix_is_complete() -> None:
    assert switches("SGD") == ("momentum", "dampening", "weight_decay", "nesterov",
                               "maximize")
    assert len(option_cases("SGD")) == 20  # 32 minus the 12 invalid nesterov combinations
    assert len(option_cases("Adam")) == 16
    for name in NAMES:
        hp = random_hyperparameters(name, switches(name), np.random.default_rng(0))
        defaults = REFERENCES[name].defaults
        assert set(hp) <= set(defaults)
        assert hp["lr"] != defaults["lr"]


def test_kernel_fixture_selects_kernel(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``kernel`` fixture really routes work to the serial / parallel kernels.

    Watches every call of a generated Numba CPU kernel from Python (independent of how fastgd
    finds its kernels) and records whether it was compiled with ``parallel=True``."""
    calls: list[tuple[int, bool]] = []
    original = CPUDispatcher.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.py_func.__name__.rpartition("__")[2] in ("serial", "parallel", "run", "multi"):
            calls.append((args[0].size, bool(self.targetoptions.get("parallel"))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CPUDispatcher, "__call__", spy)
    for n in (0, 1, 63, 64, 1025):
        p, g = np.ones(n), np.ones(n)
        F.sgd(p, g, lr=0.5)
        np.testing.assert_array_equal(p, np.full(n, 0.5))
    expected_parallel = kernel == "parallel"
    assert calls == [(1, False), (63, False), (64, expected_parallel),
                     (1025, expected_parallel)]
    calls.clear()
    q = [np.ones(40), np.ones(30)]
    fastgd.SGD(q, lr=0.5).step([np.ones(40), np.ones(30)])  # one call over both tensors
    assert calls == [(4, expected_parallel)]  # (its first argument: the 2x2 address table)
    np.testing.assert_array_equal(q[0], np.full(40, 0.5))


# -- optimizer classes vs reference --------------------------------------------------------------

GROUP0 = [((), "C"), ((0,), "C"), ((1,), "C"), ((7,), "C"), ((1025,), "C")]
GROUP1 = [((3, 5, 7), "C"), ((3, 5, 7), "F"), ((BIG,), "C"), ((4, 9), "F"), ((0, 3), "F")]


def skipped(t: int, index: int) -> bool:
    """Whether parameter ``index`` gets no gradient (``None``) at step ``t``."""
    return index > 0 and (t + 3 * index) % 9 == 0


def run_classes_vs_reference(name: str, hp0: dict[str, Any], hp1: dict[str, Any],
                             dtype: Any, rng: np.random.Generator, steps: int = STEPS) -> None:
    specs = [(shape, order, hp0) for shape, order in GROUP0] + [
        (shape, order, hp1) for shape, order in GROUP1]
    params = [make_array(rng.standard_normal(shape), dtype, order, offset=int(rng.integers(3)))
              for shape, order, _ in specs]
    expected = [p.astype(np.float64) for p in params]
    refs = [REFERENCES[name](**hp) for _, _, hp in specs]
    n0 = len(GROUP0)
    # Group 0 takes the constructor's options, group 1 overrides all of them.
    opt = optimizer_class(name)([{"params": params[:n0]}, {"params": params[n0:], **hp1}],
                                **hp0)
    for t in range(1, steps + 1):
        grads: list[Any] = []
        for i, p in enumerate(params):
            if skipped(t, i):
                grads.append(None)
                continue
            g = like(p, rng.standard_normal(p.shape) * rng.uniform(0.1, 3.0))
            grads.append(g)
            expected[i] = refs[i].step(expected[i], g.astype(np.float64))
        # Alternate between a flat gradient list and one list per parameter group.
        opt.step(grads if t % 2 else [grads[:n0], grads[n0:]])
    rtol = RTOL[dtype]
    for i, (p, exp, ref) in enumerate(zip(params, expected, refs, strict=True)):
        what = f"{name} params[{i}] {p.shape}"
        assert p.dtype == dtype
        assert_close(p, exp, rtol, what, ref.peak.get("param", 0.0), ref.jump())
        state = opt.state[i]
        assert state["step"] == ref.t
        assert set(state_arrays(state)) == set(state_arrays(ref.state)), what
        for key, value in state_arrays(ref.state).items():
            assert state[key].dtype == dtype and state[key].shape == value.shape
            assert_close(state[key], value, rtol, f"{what} state {key!r}", ref.peak[key])
        for key in ref.scalar_state:
            assert math.isclose(state[key], ref.state[key], rel_tol=1e-12), key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, options", ALL_CASES)
def test_class_matches_reference(name: str, options: tuple[str, ...], dtype: Any, kernel: str,
                                 request: pytest.FixtureRequest) -> None:
    rng = seeded_rng(request)
    hp0 = random_hyperparameters(name, options, rng)
    cases = option_cases(name)
    other = cases[int(rng.integers(len(cases)))]
    hp1 = random_hyperparameters(name, other, rng)
    run_classes_vs_reference(name, hp0, hp1, dtype, rng)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_and_lr_schedule(name: str, kernel: str) -> None:
    """One optimizer over float32 and float64 parameters (each updated in its own dtype),
    with the learning rate of a group changed between steps (read again every step)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    hp = random_hyperparameters(name, option_cases(name)[-1], rng)
    params = [make_array(rng.standard_normal(n), dt) for n, dt in
              ((300, np.float32), (300, np.float64), (5, np.float64))]
    expected = [p.astype(np.float64) for p in params]
    refs = [REFERENCES[name](**hp) for _ in params]
    opt = optimizer_class(name)([{"params": params[:2]}, {"params": params[2:]}], **hp)
    for t in range(1, STEPS + 1):
        grads = [like(p, rng.standard_normal(p.shape)) for p in params]
        opt.step(grads)
        expected = [r.step(e, g) for r, e, g in zip(refs, expected, grads, strict=True)]
        if t % 8 == 0:
            opt.param_groups[0]["lr"] *= 0.5
            for ref in refs[:2]:
                ref.hp["lr"] *= 0.5
    for p, e, ref in zip(params, expected, refs, strict=True):
        assert_close(p, e, RTOL[p.dtype.type], f"{name} {p.dtype}", ref.peak["param"],
                     ref.jump())
    with pytest.raises(ValueError):
        _ = opt.lr  # the groups' learning rates differ now
    assert params[0].dtype == np.float32 and params[1].dtype == np.float64


# -- functional API vs reference ------------------------------------------------------------------

FUNCTIONAL_SHAPES = [((), "C", 0), ((0,), "C", 0), ((1,), "C", 1), ((7,), "C", 0),
                     ((1025,), "C", 1), ((3, 5, 7), "F", 0), ((6, 1, 4), "C", 3),
                     ((BIG,), "C", 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, options", ALL_CASES)
def test_functional_matches_reference(name: str, options: tuple[str, ...], dtype: Any,
                                      kernel: str, request: pytest.FixtureRequest) -> None:
    rng = seeded_rng(request)
    hp = random_hyperparameters(name, options, rng)
    rtol = RTOL[dtype]
    for shape, order, offset in FUNCTIONAL_SHAPES:
        param = make_array(rng.standard_normal(shape), dtype, order, offset)
        runner = FunctionalRunner(name, hp, param, rng)
        ref = REFERENCES[name](**hp)
        expected = param.astype(np.float64)
        for _ in range(STEPS):
            g = like(param, rng.standard_normal(shape) * rng.uniform(0.1, 3.0))
            runner.step(g)
            expected = ref.step(expected, g)
        what = f"{name} functional {shape} {order}"
        assert_close(param, expected, rtol, what, ref.peak.get("param", 0.0), ref.jump())
        assert set(runner.states) == set(state_arrays(ref.state)), what
        for key, value in runner.states.items():
            assert_close(value, ref.state[key], rtol, f"{what} state {key!r}", ref.peak[key])
        for key, value in runner.scalars.items():
            assert math.isclose(value, ref.state[key], rel_tol=1e-12), key


@pytest.mark.parametrize("name", NAMES)
def test_class_and_functional_agree_bitwise(name: str, kernel: str) -> None:
    """Both faces run the same kernels with the same scalars: identical bits."""
    rng = np.random.default_rng(7)
    hp = random_hyperparameters(name, full_case(name), rng)
    p1 = rng.standard_normal(300)
    p2 = p1.copy()
    opt = optimizer_class(name)([p1], **hp)
    runner = FunctionalRunner(name, hp, p2, rng)
    for _ in range(10):
        g = rng.standard_normal(300)
        opt.step([g])
        runner.step(g)
    np.testing.assert_array_equal(p1, p2)
    for key, value in runner.states.items():
        np.testing.assert_array_equal(opt.state[0][key], value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_serial_and_parallel_kernels_agree(name: str, dtype: Any) -> None:
    """The multi-threaded kernel computes exactly what the serial one does (for a two-phase
    step, up to the order in which its per-tensor sums add up)."""
    rng = np.random.default_rng(11)
    hp = random_hyperparameters(name, option_cases(name)[-1], rng)
    base = make_array(rng.standard_normal(BIG), dtype, offset=1)
    grads = [rng.standard_normal(BIG).astype(dtype) for _ in range(5)]
    results = []
    for threshold in (SERIAL_ONLY, 1):
        with parallel_threshold(threshold):
            p = base.copy()
            opt = optimizer_class(name)(p, **hp)
            for g in grads:
                opt.step(g)
            results.append(p)
    if ALGORITHMS[name].two_phase is None:
        np.testing.assert_array_equal(results[0], results[1])
    else:
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(results[0], results[1], rtol=tol,
                                   atol=tol * np.abs(results[1]).max())


# -- hypothesis properties -------------------------------------------------------------------

def float_arrays(dtype: Any, shape: tuple[int, ...], bound: float) -> st.SearchStrategy:
    """Arrays of zeros and of values with magnitude in [2**-10, bound]: tiny values whose
    squares underflow in float32 would make a float64 reference meaningless."""
    width = 32 if dtype == np.float32 else 64
    magnitude = st.floats(2.0**-10, bound, width=width)
    elements = st.one_of(st.just(0.0), magnitude, magnitude.map(lambda x: -x))
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def sgd_or_adam_case(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(["SGD", "Adam"]))
    lr = draw(st.floats(1e-4, 0.5))
    wd = draw(st.sampled_from([0.0, 0.0, 2.0**-10, 2.0**-4, 0.25]))  # see reference.py
    maximize = draw(st.booleans())
    if name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99]))
        nesterov = momentum > 0 and draw(st.booleans())
        dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))
        return name, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd,
                          nesterov=nesterov, maximize=maximize)
    # beta1: 0 or at least 1e-3 (one that underflows in float32 is no float32 bug); beta2 at
    # least 0.5: with beta2 = 0 every Adam step is lr * sign(g) whenever |g| >> eps, a
    # discontinuous map under which a float32 run and a float64 one may rightly part ways.
    beta1 = draw(st.one_of(st.just(0.0), st.floats(1e-3, 0.99)))
    beta2 = draw(st.floats(0.5, 0.9999))
    eps = draw(st.sampled_from([1e-12, 1e-8, 1e-4, 1e-2]))
    return name, dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd,
                      amsgrad=draw(st.booleans()), maximize=maximize,
                      decoupled_weight_decay=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(case=sgd_or_adam_case(), dtype=st.sampled_from([np.float32, np.float64]),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
       fortran=st.booleans(), threshold=st.sampled_from([1, SERIAL_ONLY]), data=st.data())
def test_property_sgd_adam_match_reference(case, dtype, shape, fortran, threshold,
                                           data) -> None:
    name, hp = case
    order = "F" if fortran else "C"
    p0 = data.draw(float_arrays(dtype, shape, 100.0), label="param")
    steps = data.draw(st.integers(1, 6), label="steps")
    grads = [np.array(data.draw(float_arrays(dtype, shape, 10.0), label=f"grad{t}"),
                      order=order) for t in range(steps)]
    param = np.array(p0, order=order)
    ref = REFERENCES[name](**hp)
    expected = p0.astype(np.float64)
    with parallel_threshold(threshold):
        opt = optimizer_class(name)(param, **hp)
        for g in grads:
            opt.step(g)
            expected = ref.step(expected, g)
    assert_close(param, expected, RTOL[dtype], f"{name} {hp}", ref.peak["param"],
                 ref.jump())
    for key, value in state_arrays(ref.state).items():
        assert_close(opt.state[0][key], value, RTOL[dtype], key, ref.peak[key])


@st.composite
def nan_case(draw: st.DrawFn) -> tuple[str, tuple[str, ...], int]:
    name = draw(st.sampled_from(NAMES))
    return name, draw(st.sampled_from(option_cases(name))), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(case=nan_case(), size=st.integers(1, 200), threshold=st.sampled_from([1, SERIAL_ONLY]),
       dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_property_nan_in_gradient_poisons_exactly_its_elements(case, size, threshold, dtype,
                                                               data) -> None:
    """A NaN in the gradient reaches exactly the elements (of the parameter and of each
    state array) that the reference says it reaches, and no others; the other elements go
    on as in the reference (a two-phase step's trust ratio takes a NaN to its whole tensor,
    in the reference as in optax)."""
    name, options, seed = case
    rng = np.random.default_rng(seed)
    hp = random_hyperparameters(name, options, rng)
    nan_at = data.draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=size),
                       label="nan_at")
    nan_step = data.draw(st.integers(1, 4), label="nan_step")
    mask = np.zeros(size, dtype=bool)
    mask[sorted(nan_at)] = True
    param = rng.standard_normal(size).astype(dtype)
    expected = param.astype(np.float64)
    ref = REFERENCES[name](**hp)
    with parallel_threshold(threshold):
        opt = optimizer_class(name)(param, **hp)
        for t in range(1, 7):
            g = rng.standard_normal(size).astype(dtype)
            if t == nan_step:
                g[mask] = np.nan
            opt.step(g)
            expected = ref.step(expected, g)
            np.testing.assert_array_equal(np.isnan(param), np.isnan(expected))
            spreads = ALGORITHMS[name].two_phase is not None
            assert spreads or not np.isnan(param[~mask]).any()
    finite = ~np.isnan(expected)
    assert_close(param[finite], expected[finite], RTOL[dtype], f"{name} {options}",
                 ref.peak["param"])
    for key, value in state_arrays(opt.state[0]).items():
        np.testing.assert_array_equal(np.isnan(value), np.isnan(ref.state[key]), key)
        assert spreads or not np.isnan(value[~mask]).any()


# -- textbook facts --------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["class", "functional"])
def test_gradient_descent_on_parabola(api: str) -> None:
    """L(x) = x^2, grad 2x, lr 0.6 from x = 6: x <- -0.2 x, i.e. 6, -1.2, 0.24, -0.048, ..."""
    x = np.array([6.0])
    opt = fastgd.SGD([x], lr=0.6)
    trajectory = [float(x[0])]
    for _ in range(12):
        if api == "class":
            opt.step([2 * x])
        else:
            F.sgd(x, 2 * x, lr=0.6)
        trajectory.append(float(x[0]))
    assert trajectory[:4] == pytest.approx([6.0, -1.2, 0.24, -0.048], rel=1e-12)
    assert trajectory == pytest.approx([6.0 * (-0.2) ** k for k in range(13)], rel=1e-12)


def test_gradient_descent_with_lr_one_oscillates() -> None:
    """L(x) = x^2 with lr 1.0 from x = 3: x <- x - 2x = -x, so 3, -3, 3, -3, ..."""
    x = np.array(3.0)
    opt = fastgd.SGD(x, lr=1.0)
    trajectory = [float(x)]
    for _ in range(6):
        opt.step(2 * x)
        trajectory.append(float(x))
    assert trajectory == [3.0, -3.0, 3.0, -3.0, 3.0, -3.0, 3.0]


def quadratic(dim: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A, b of the convex quadratic 0.5 x^T A x - b^T x (gradient A x - b)."""
    rng = np.random.default_rng(3)
    m = rng.standard_normal((dim, dim))
    return m @ m.T / dim + np.eye(dim), rng.standard_normal(dim)


@pytest.mark.parametrize("gamma, alpha", [(0.9, 0.05), (0.5, 0.2), (0.99, 0.01)])
def test_classic_momentum_is_sgd_with_momentum(gamma: float, alpha: float) -> None:
    """``v = gamma v + alpha g; theta -= v`` and ``v = gamma v - alpha g; w += v`` are
    SGD(lr=alpha, momentum=gamma) (gradients evaluated at the current point)."""
    a, b = quadratic()
    theta = np.zeros(5)
    v = np.zeros(5)
    w, v2 = np.zeros(5), np.zeros(5)
    x = np.zeros(5)
    opt = fastgd.SGD([x], lr=alpha, momentum=gamma)
    for _ in range(600):
        v = gamma * v + alpha * (a @ theta - b)
        theta = theta - v
        v2 = gamma * v2 - alpha * (a @ w - b)
        w = w + v2
        opt.step([a @ x - b])
        np.testing.assert_allclose(x, theta, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(x, w, rtol=1e-11, atol=1e-13)
    # ... and heavy-ball momentum does minimise the quadratic.
    optimum = np.linalg.solve(a, b)
    assert np.linalg.norm(x - optimum) < 0.1 * np.linalg.norm(optimum)


def test_ema_momentum_through_functional_kernel() -> None:
    """``v = beta v + (1 - beta) g; w -= eta v`` with v0 = 0 is dampening = beta from the
    first step on, reachable through the functional kernel with a zero buffer."""
    beta, eta = 0.8, 0.1
    a, b = quadratic()
    w, v = np.ones(5), np.zeros(5)
    x, buf = np.ones(5), np.zeros(5)
    for _ in range(40):
        v = beta * v + (1 - beta) * (a @ w - b)
        w = w - eta * v
        F.sgd(x, a @ x - b, buf, lr=eta, momentum=beta, dampening=beta, first_step=False)
        np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(buf, v, rtol=1e-12, atol=1e-14)
    ref = SGDRef(lr=eta, momentum=beta, dampening=beta, torch_first_step=False)
    y = ref.step(np.ones(5), a @ np.ones(5) - b)
    np.testing.assert_allclose(y, np.ones(5) - eta * (1 - beta) * (a @ np.ones(5) - b))


def test_adagrad_is_inverse_sqrt_lr_times_rms() -> None:
    """Adagrad (eps = 0) steps by eta / sqrt(t) * g_t / RMS(g_1..g_t)."""
    rng = np.random.default_rng(5)
    eta = 0.3
    x = rng.standard_normal(50)
    expected = x.copy()
    opt = fastgd.Adagrad(x, lr=eta, eps=0.0)
    history = []
    for t in range(1, 31):
        g = rng.standard_normal(50)
        history.append(g)
        rms = np.sqrt(np.mean(np.square(history), axis=0))
        expected = expected - eta / np.sqrt(t) * g / rms
        opt.step(g)
        np.testing.assert_allclose(x, expected, rtol=1e-12)
    np.testing.assert_allclose(x, AdagradRef(lr=eta, eps=0.0).step(x, np.ones(50)) + eta,
                               rtol=1e-12)


def test_rmsprop_lecture_form() -> None:
    """RMSprop with eps = 0 is ``sigma^2 = a sigma^2 + (1 - a) g^2; w -= lr g / sigma``."""
    rng = np.random.default_rng(6)
    lr, alpha = 0.01, 0.9
    x = rng.standard_normal(20)
    w, sigma2 = x.copy(), np.zeros(20)
    opt = fastgd.RMSprop(x, lr=lr, alpha=alpha, eps=0.0)
    for _ in range(30):
        g = rng.standard_normal(20)
        sigma2 = alpha * sigma2 + (1 - alpha) * g**2
        w = w - lr * g / np.sqrt(sigma2)
        opt.step(g)
    np.testing.assert_allclose(x, w, rtol=1e-12)
    ref = RMSpropRef(lr=lr, alpha=alpha, eps=0.0)
    np.testing.assert_allclose(ref.step(np.zeros(2), np.array([2.0, -3.0])),
                               [-lr / math.sqrt(1 - alpha), lr / math.sqrt(1 - alpha)])


def test_adam_first_step_is_a_sign_step() -> None:
    """With eps = 0, Adam's bias-corrected first step is exactly lr * sign(g) per element."""
    rng = np.random.default_rng(8)
    g = rng.standard_normal(100) * np.logspace(-6, 6, 100)
    x = np.zeros(100)
    fastgd.Adam(x, lr=0.01, betas=(0.7, 0.95), eps=0.0).step(g)
    np.testing.assert_allclose(x, -0.01 * np.sign(g), rtol=1e-12)
    np.testing.assert_allclose(AdamRef(lr=0.01, eps=0.0).step(np.zeros(100), g), x,
                               rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_maximizes_a_concave_function(name: str) -> None:
    """maximize=True climbs f(x) = -(x - 2)^2, step for step the mirror image of the run
    that minimises (x - 2)^2 (its demo learning rate, no weight decay)."""
    algorithm = ALGORITHMS[name]
    lr = next(iter(algorithm.demo.values()))[1]
    extra = {"weight_decay": 0.0} if "weight_decay" in algorithm.hyper else {}
    up, down = np.zeros(3), np.zeros(3)
    opt_up = optimizer_class(name)(up, lr=lr, maximize=True, **extra)
    opt_down = optimizer_class(name)(down, lr=lr, **extra)
    for _ in range(400):
        opt_up.step(-2 * (up - 2))
        opt_down.step(2 * (down - 2))
    np.testing.assert_array_equal(up, down)
    assert np.all(np.abs(up - 2) < 0.5), up  # (from 0: at least three quarters of the way)
