"""Bad input is refused before anything is written; odd but valid layouts work in place.

Every refusal must be a ``TypeError`` or ``ValueError`` whose message names the offending
argument, and no array (param, grad, state) may change: each test snapshots every array it
hands over and compares it bit for bit afterwards. Layouts that *are* supported (Fortran
order, 0-d, empty, n-d, memmaps, torch CPU tensors, read-only gradients, slices of a larger
buffer) must give exactly the numbers of the same computation on plain C-contiguous 1-D
copies.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

import cases
import numpy as np
import pytest

import fastgd
import fastgd.cpu
from fastgd import functional as F
from fastgd.algorithms import ALGORITHMS

NAN, INF = math.nan, math.inf


# -- helpers ---------------------------------------------------------------------------------

def names_argument(message: str, *names: str) -> bool:
    """``message`` mentions one of ``names`` as a word (``param`` does not match ``params``)."""
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message)
               for n in names)


def as_numpy(x: Any) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        return x.detach().numpy()
    return None


class Snapshot:
    """Bit-exact copies of every array (NumPy or torch) among ``objects``."""

    def __init__(self, *objects: Any) -> None:
        self.items = []
        self.tensors = []
        for obj in objects:
            if isinstance(obj, np.ndarray):
                self.items.append((obj, obj.copy(order="K"), obj.tobytes(order="A")))
            elif type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
                self.tensors.append((obj, obj.detach().clone()))

    def assert_unchanged(self) -> None:
        for arr, saved, raw in self.items:
            assert arr.tobytes(order="A") == raw, "an array was written by a refused call"
            assert np.array_equal(arr, saved, equal_nan=True)
        for tensor, saved in self.tensors:
            assert tensor.detach().equal(saved), "a tensor was written by a refused call"


def refuse(call, *objects: Any, names: tuple[str, ...]) -> BaseException:
    """``call()`` raises TypeError/ValueError naming one of ``names``; ``objects`` unchanged."""
    snap = Snapshot(*objects)
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert names_argument(str(info.value), *names), (
        f"message {str(info.value)!r} does not name any of {names}")
    snap.assert_unchanged()
    return info.value


def _cuda_usable() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no numba-cuda, no driver, ...
        return False


CUDA_USABLE = _cuda_usable()


class FakeGpuArray:
    """Looks like a CUDA array (CuPy, numba.cuda, torch cuda) to anything that asks."""

    def __init__(self, shape=(6,), typestr="<f8") -> None:
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (0, False), "version": 3, "strides": None}


# -- the functional API (every algorithm of the test table) -------------------------------------

@dataclass
class Algo:
    """A functional function with arguments that enable every state array it has."""

    name: str                        # the class name
    fn: Any
    states: tuple[str, ...]          # every state argument the call below passes
    hp: dict[str, Any]               # non-default hyperparameters enabling those states
    inputs: tuple[str, ...]          # what the step needs (step, first_step, scalars)
    scalars: dict[str, float] = field(default_factory=dict)  # their starting values

    @property
    def stepped(self) -> bool:
        return "step" in self.inputs


def _algo(name: str) -> Algo:
    hp = cases.example(name)
    return Algo(name, cases.functional(name), tuple(cases.state_names(name, hp)),
                cases.functional_overrides(name, hp, strict=False),
                ALGORITHMS[name].inputs, cases.initial_scalars(name, hp))


ALGOS = {ALGORITHMS[name].function_name: _algo(name) for name in cases.NAMES}
NAMES = list(ALGOS)
STEPPED = [n for n in NAMES if ALGOS[n].stepped]
STEP_BAD = [({"step": 0}, ("step",)), ({"step": -1}, ("step",)), ({"step": 1.0}, ("step",)),
            ({"step": 2.5}, ("step",)), ({"step": "1"}, ("step",)), ({"step": None}, ("step",))]


def bad_functional_hyperparameters(name: str):
    """Invalid keyword arguments of a functional function (hyperparameters and step inputs)
    with the names their errors must mention."""
    algo = ALGOS[name]
    for options, names in cases.bad_hyperparameters(algo.name):
        overrides = cases.functional_overrides(algo.name, options)
        if overrides is not None:
            yield overrides, names
    if algo.stepped:
        yield from STEP_BAD
    if "first_step" in algo.inputs:
        yield from (({"first_step": bad}, ("first_step",)) for bad in ("yes", None))
    for scalar in ALGORITHMS[algo.name].scalars:
        yield from (({scalar.name: bad}, (scalar.name,))
                    for bad in cases._bad_reals(scalar.domain))


def state_values(name: str, rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Plausible state contents (positive second moments, |grad_avg|^2 < square_avg)."""
    if name == "grad_avg":
        return rng.uniform(-0.1, 0.1, shape).astype(dtype)
    return rng.uniform(0.2, 1.0, shape).astype(dtype)


def make_arrays(name: str, shape=(6,), dtype=np.float64, order="C", seed=0
                ) -> dict[str, np.ndarray]:
    """param, grad and every state of ``name``, all alike (shape, dtype, order; Adafactor's
    factors of a parameter of two or more dimensions in their own shapes)."""
    rng = np.random.default_rng(seed)
    arrays = {"param": rng.standard_normal(shape).astype(dtype),
              "grad": rng.standard_normal(shape).astype(dtype)}
    for state in states_of(name, len(shape)):
        arrays[state] = state_values(state, rng, cases.state_shape(ALGOS[name].name, state,
                                                                   shape), dtype)
    return {k: np.array(v, order=order) for k, v in arrays.items()}


def states_of(name: str, ndim: int) -> tuple[str, ...]:
    """The state arguments a call of ``name`` passes for a parameter of ``ndim`` dims."""
    algorithm = ALGORITHMS[ALGOS[name].name]
    return algorithm.factored if algorithm.factored and ndim >= 2 else ALGOS[name].states


def elementwise(name: str) -> bool:
    """Whether ``name``'s step (class or function name) is the same on any shape of the
    same elements (not with factored state, whose factors follow the last two dims)."""
    return not algorithm_of(name).factored


def algorithm_of(name: str) -> Any:
    """The algorithm of a class or function name (or of a class case, "SGD-nesterov")."""
    name = name.split("-")[0]
    return next(a for a in ALGORITHMS.values() if name in (a.name, a.function_name))


def flat(name: str, array: Any) -> np.ndarray:
    """A C-contiguous copy of ``array``: 1-D if ``name``'s step is :func:`elementwise`."""
    array = np.ascontiguousarray(np.asarray(array))
    return array.reshape(-1 if elementwise(name) else array.shape).copy()


def call(name: str, arrays: dict[str, Any], t: int = 2, **overrides: Any) -> Any:
    algo = ALGOS[name]
    inputs = {"step": t, "first_step": t == 1, **algo.scalars}
    kwargs = {**algo.hp, **{n: inputs[n] for n in algo.inputs}, **overrides}
    states = {k: v for k, v in arrays.items() if k not in ("param", "grad")}
    return algo.fn(arrays["param"], arrays["grad"], **states, **kwargs)


def refuse_call(name: str, arrays: dict[str, Any], names: tuple[str, ...], **overrides):
    return refuse(lambda: call(name, arrays, **overrides), *arrays.values(), names=names)


def sanity_call_works(name: str) -> None:
    """The baseline arrays are accepted, so a refusal below is caused by the change made."""
    arrays = make_arrays(name)
    before = arrays["param"].copy()
    call(name, arrays)
    assert not np.array_equal(before, arrays["param"])


@pytest.mark.parametrize("name", NAMES)
def test_baseline_call_updates(name):
    sanity_call_works(name)


# shape ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_grad(name):
    arrays = make_arrays(name)
    for bad in (np.zeros(5), np.zeros(7), np.zeros((6, 1)), np.zeros((2, 3)), np.float64(1.0)):
        refuse_call(name, {**arrays, "grad": bad}, ("grad",))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_state(name):
    arrays = make_arrays(name)
    for state in ALGOS[name].states:
        for bad in (np.ones(5), np.ones((6, 1)), np.ones(())):
            refuse_call(name, {**arrays, state: bad}, (state,))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_nd(name):
    arrays = make_arrays(name, shape=(3, 4))
    refuse_call(name, {**arrays, "grad": np.zeros((4, 3))}, ("grad",))
    refuse_call(name, {**arrays, "grad": np.zeros(12)}, ("grad",))
    state = states_of(name, 2)[0]
    refuse_call(name, {**arrays, state: np.ones((4, 3))}, (state,))


# dtype ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, bool,
                                   np.dtype(">f8"), np.longdouble])
def test_unsupported_param_dtype(name, dtype):
    arrays = make_arrays(name)
    arrays["param"] = arrays["param"].astype(dtype)
    refuse_call(name, arrays, ("param",))


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_dtype_everywhere(name):
    base = make_arrays(name)
    for key in base:
        for dtype in (np.float16, np.int64):
            if key == "param" and dtype == np.float16:
                continue  # a valid (low-precision) param: then the grad is the mismatch
            arrays = dict(base)
            arrays[key] = base[key].astype(dtype)
            refuse_call(name, arrays, (key,))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("param_dtype,other_dtype", [(np.float64, np.float32),
                                                     (np.float32, np.float64)])
def test_mismatched_float_dtypes(name, param_dtype, other_dtype):
    base = make_arrays(name, dtype=param_dtype)
    for key in base:
        if key == "param":
            continue
        refuse_call(name, {**base, key: base[key].astype(other_dtype)}, (key,))
    # all states in the other dtype: the first mismatch is reported, nothing written
    arrays = {k: (v if k in ("param", "grad") else v.astype(other_dtype))
              for k, v in base.items()}
    refuse_call(name, arrays, ALGOS[name].states)


# contiguity / memory order ----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_strided_views_refused(name):
    base = make_arrays(name)
    for key in base:
        big = np.repeat(base[key], 2)       # same dtype, twice as long
        for view in (big[::2], big[1::2], base[key][::-1]):
            assert not view.flags.c_contiguous
            arrays = {**base, key: view}
            refuse(lambda a=arrays: call(name, a), big, *base.values(), names=(key,))


@pytest.mark.parametrize("name", NAMES)
def test_strided_2d_views_refused(name):
    base = make_arrays(name, shape=(4, 3))
    for key in (k for k in base if base[k].shape == (4, 3)):  # (not factors)
        wide = np.concatenate([base[key], base[key]], axis=1)
        view = wide[:, ::2]                           # shape (4, 3), neither C nor F
        assert view.shape == (4, 3) and not view.flags.c_contiguous
        assert not view.flags.f_contiguous
        refuse(lambda a={**base, key: view}: call(name, a), wide, *base.values(), names=(key,))
        sub = wide[:, :3]                              # a column block: not contiguous either
        refuse(lambda a={**base, key: sub}: call(name, a), wide, *base.values(), names=(key,))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_memory_order(name):
    c = make_arrays(name, shape=(3, 4), order="C")
    f = make_arrays(name, shape=(3, 4), order="F")
    for key in c:
        if key == "param" or c[key].shape != (3, 4):  # (a factor is C and F at once)
            continue
        refuse_call(name, {**c, key: f[key]}, (key,))   # C param, F grad/state
        refuse_call(name, {**f, key: c[key]}, (key,))   # F param, C grad/state


# read-only --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_read_only_param_and_states(name):
    base = make_arrays(name)
    for key in base:
        if key == "grad":
            continue
        arrays = {k: v.copy() for k, v in base.items()}
        arrays[key].flags.writeable = False
        refuse_call(name, arrays, (key,))


@pytest.mark.parametrize("name", NAMES)
def test_read_only_memmap_param(name, tmp_path):
    base = make_arrays(name)
    path = tmp_path / "param.bin"
    base["param"].tofile(path)
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=base["param"].shape)
    refuse_call(name, {**base, "param": mm}, ("param",))
    assert np.fromfile(path, dtype=np.float64).tobytes() == base["param"].tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_read_only_state_view_of_writable_base(name):
    base = make_arrays(name)
    state = ALGOS[name].states[0]
    view = base[state].view()
    view.flags.writeable = False
    refuse_call(name, {**base, state: view}, (state,))


# not arrays / GPU ---------------------------------------------------------------------------

NOT_ARRAYS = [[0.5] * 6, (0.5,) * 6, 0.5, None, "param", {"a": 1}, object(), range(6)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", NOT_ARRAYS, ids=lambda b: type(b).__name__)
def test_param_not_an_array(name, bad):
    arrays = make_arrays(name)
    refuse_call(name, {**arrays, "param": bad}, ("param",))


@pytest.mark.parametrize("name", NAMES)
def test_states_not_arrays(name):
    base = make_arrays(name)
    for state in ALGOS[name].states:
        for bad in ([0.5] * 6, 0.0, "zeros", object()):
            refuse_call(name, {**base, state: bad}, (state,))


@pytest.mark.parametrize("name", NAMES)
def test_grad_not_array_like(name):
    base = make_arrays(name)
    for bad in (None, "grad", object(), [[1.0, 2.0], [3.0]]):
        refuse_call(name, {**base, "grad": bad}, ("grad",))


@pytest.mark.parametrize("name", NAMES)
def test_gpu_like_grad_or_state_with_host_param_refused(name):
    base = make_arrays(name)
    for key in base:
        if key == "param":
            continue
        exc = refuse_call(name, {**base, key: FakeGpuArray()}, (key,))
        assert isinstance(exc, TypeError)


@pytest.mark.skipif(CUDA_USABLE, reason="a fake GPU array would reach a real driver")
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_gpu_like_param_with_host_arrays_refused(name):
    base = make_arrays(name)
    refuse_call(name, {**base, "param": FakeGpuArray()}, ("param", "grad"))


@pytest.mark.parametrize("name", NAMES)
def test_torch_unsupported_tensors_refused(name):
    torch = pytest.importorskip("torch")
    base = make_arrays(name)
    cases = [torch.ones(6, dtype=torch.int64), torch.ones(12, dtype=torch.float64)[::2]]
    for bad in cases:
        refuse_call(name, {**base, "param": bad}, ("param",))


# aliasing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_state_aliasing_param_refused(name):
    base = make_arrays(name)
    for state in ALGOS[name].states:
        refuse_call(name, {**base, state: base["param"]}, (state, "param"))
        refuse_call(name, {**base, state: base["param"].view()}, (state, "param"))
        refuse_call(name, {**base, state: base["grad"]}, (state, "grad"))


@pytest.mark.parametrize("name", NAMES)
def test_partially_overlapping_arrays_refused(name):
    base = make_arrays(name)
    n = base["param"].size
    buf = np.random.default_rng(1).uniform(0.2, 1.0, 2 * n)
    arrays = {**base, "param": buf[:n]}
    state = ALGOS[name].states[-1]
    arrays[state] = buf[n // 2: n // 2 + n]
    refuse(lambda: call(name, arrays), buf, *arrays.values(), names=(state, "param"))


@pytest.mark.parametrize("name", [n for n in NAMES if len(ALGOS[n].states) > 1])
def test_two_states_aliasing_refused(name):
    base = make_arrays(name)
    first, second = ALGOS[name].states[:2]
    refuse_call(name, {**base, second: base[first]}, (first, second))


@pytest.mark.parametrize("name", NAMES)
def test_grad_aliasing_param_refused(name):
    base = make_arrays(name)
    refuse_call(name, {**base, "grad": base["param"]}, ("grad", "param"))


# hyperparameters ----------------------------------------------------------------------------

def bad_hyperparameter_cases():
    for name in NAMES:
        for overrides, names in bad_functional_hyperparameters(name):
            yield pytest.param(name, overrides, names, id=f"{name}-{overrides!r}")


@pytest.mark.parametrize("name,overrides,names", list(bad_hyperparameter_cases()))
def test_bad_hyperparameters(name, overrides, names):
    refuse_call(name, make_arrays(name), names, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameter_with_bad_arrays_still_refused(name):
    """Both checks run before any write, whichever fails first."""
    arrays = make_arrays(name)
    arrays["grad"] = arrays["grad"][:3]
    refuse_call(name, arrays, ("lr", "grad"), lr=-1.0)


@pytest.mark.parametrize("name", STEPPED)
def test_bool_step_refused(name):
    refuse_call(name, make_arrays(name), ("step",), step=True)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_huge_int_lr_refused(name):
    refuse_call(name, make_arrays(name), ("lr",), lr=10**400)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_array_lr_refused_naming_lr(name):
    refuse_call(name, make_arrays(name), ("lr",), lr=np.array([0.1, 0.2]))


IMPLIED = {s.name for a in ALGORITHMS.values() for s in a.states if s.implied}


@pytest.mark.parametrize("name,missing", [(n, s) for n in NAMES for s in ALGOS[n].states
                                          if s not in IMPLIED])
def test_missing_required_state(name, missing):
    """Every state the hyperparameters use is required (``ALGOS`` enables them all; a state
    whose presence is an option, Adam's ``max_exp_avg_sq``, is never missing)."""
    arrays = make_arrays(name)
    arrays[missing] = None
    refuse_call(name, arrays, (missing,))


def test_missing_optional_state_with_other_options():
    arrays = make_arrays("rmsprop")
    for overrides, missing in (({"momentum": 0.0, "centered": True}, "grad_avg"),
                               ({"momentum": 0.9, "centered": False}, "momentum_buffer")):
        refuse_call("rmsprop", {**arrays, missing: None}, (missing,), **overrides)


def test_rmsprop_missing_state_arguments_left_out():
    arrays = make_arrays("rmsprop")
    p, g, sq = arrays["param"], arrays["grad"], arrays["square_avg"]
    refuse(lambda: F.rmsprop(p, g, sq, centered=True), p, g, sq, names=("grad_avg",))
    refuse(lambda: F.rmsprop(p, g, sq, momentum=0.9), p, g, sq, names=("momentum_buffer",))
    refuse(lambda: F.sgd(p, g, momentum=0.9), p, g, names=("momentum_buffer",))


def test_optional_state_not_needed_is_ignored():
    """An optional state the hyperparameters do not use is left alone (not validated)."""
    arrays = make_arrays("sgd")
    buf = arrays["momentum_buffer"].copy()
    F.sgd(arrays["param"], arrays["grad"], arrays["momentum_buffer"], lr=0.1, momentum=0.0)
    assert np.array_equal(buf, arrays["momentum_buffer"])


# -- supported odd layouts (functional) ------------------------------------------------------

def run_steps(name: str, arrays: dict[str, Any], grads: list[np.ndarray],
              feed: Any = None) -> None:
    """Two or more steps, writing each gradient into ``arrays['grad']`` in place, or, with
    ``feed``, passing ``feed(gradient)`` as the gradient."""
    scalars = dict(ALGOS[name].scalars)
    grad = arrays.get("grad")
    for t, g in enumerate(grads, start=1):
        if feed is None:
            as_numpy(grad)[...] = g
        else:
            arrays["grad"] = feed(g)
        result = call(name, arrays, t=t, **scalars)
        if len(scalars) == 1:
            scalars = dict.fromkeys(scalars, result)
        elif scalars:
            scalars = dict(zip(scalars, result, strict=True))


def reference_values(name: str, base: dict[str, np.ndarray], grads) -> dict[str, np.ndarray]:
    """The same steps on C-contiguous (1-D, :func:`flat`) copies, reshaped back to
    ``base``'s shapes."""
    copies = {k: flat(name, v) for k, v in base.items()}
    run_steps(name, copies, [flat(name, g) for g in grads])
    return {k: v.reshape(base[k].shape) for k, v in copies.items()}


def matches(name: str, got: Any, want: Any) -> bool:
    """Whether a run of ``name`` (class or function name) in another memory layout gave
    ``want``: bit for bit; a two-phase step (LAMB, LARS) sums each tensor in memory order,
    so there the trust ratio, and with it the result, may differ by rounding."""
    got, want = np.asarray(got), np.asarray(want)
    algorithm = algorithm_of(name)
    if algorithm.two_phase is None or got.shape != want.shape:
        return got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
    tol = 1e-5 if got.dtype == np.float32 else 1e-12
    return np.allclose(got, want, rtol=tol, atol=tol * np.nanmax(np.abs(want), initial=0.0),
                       equal_nan=True)


def assert_matches(name: str, arrays: dict[str, Any], expected: dict[str, np.ndarray]
                   ) -> None:
    for key, want in expected.items():
        got = as_numpy(arrays[key])
        assert got.shape == want.shape, key
        assert matches(name, got, want), f"{key} differs from the C-contiguous 1-D run"


def two_grads(shape, dtype, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(2)]


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_fortran_order_works_in_place(name, dtype, shape):
    arrays = make_arrays(name, shape=shape, dtype=dtype, order="F")
    assert all(a.flags.f_contiguous and not a.flags.c_contiguous for a in arrays.values()
               if a.shape == shape)  # (a factor of Adafactor's is C and F at once)
    grads = two_grads(shape, dtype)
    expected = reference_values(name, arrays, grads)
    pointers = {k: a.ctypes.data for k, a in arrays.items()}
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)
    assert {k: a.ctypes.data for k, a in arrays.items()} == pointers
    assert not np.array_equal(expected["param"], make_arrays(name, shape, dtype)["param"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nd_c_order_works(name, dtype):
    arrays = make_arrays(name, shape=(2, 3, 4), dtype=dtype)
    grads = two_grads((2, 3, 4), dtype)
    expected = reference_values(name, arrays, grads)
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_dim_arrays_work(name, dtype):
    arrays = make_arrays(name, shape=(), dtype=dtype)
    assert arrays["param"].ndim == 0
    grads = two_grads((), dtype)
    expected = reference_values(name, arrays, grads)
    start = arrays["param"].copy()
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)
    assert arrays["param"] != start


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
def test_empty_arrays_work(name, shape):
    arrays = make_arrays(name, shape=shape)
    run_steps(name, arrays, two_grads(shape, np.float64))
    assert all(a.shape == cases.state_shape(ALGOS[name].name, key, shape)
               for key, a in arrays.items())
    assert arrays["param"].size == 0


@pytest.mark.parametrize("name", NAMES)
def test_empty_arrays_still_checked(name):
    arrays = make_arrays(name, shape=(0,))
    refuse_call(name, {**arrays, "grad": np.zeros((0,), np.float32)}, ("grad",))
    refuse_call(name, {**arrays, "grad": np.zeros((1,))}, ("grad",))
    refuse_call(name, arrays, ("lr",), lr=-1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap_r_plus_updated_in_file(name, order, tmp_path):
    shape, dtype = (4, 5), np.float64
    base = make_arrays(name, shape=shape, dtype=dtype, order=order)
    grads = [np.asfortranarray(g) if order == "F" else g for g in two_grads(shape, dtype)]
    expected = reference_values(name, base, grads)
    path = tmp_path / "param.bin"
    writer = np.memmap(path, dtype=dtype, mode="w+", shape=shape, order=order)
    writer[...] = base["param"]
    writer.flush()
    del writer
    mm = np.memmap(path, dtype=dtype, mode="r+", shape=shape, order=order)
    arrays = {**base, "param": mm}
    run_steps(name, arrays, grads)
    mm.flush()
    del mm, arrays
    on_disk = np.fromfile(path, dtype=dtype).reshape(shape, order=order)
    assert matches(name, on_disk, expected["param"])
    assert not np.array_equal(on_disk, base["param"])


@pytest.mark.parametrize("name", NAMES)
def test_memmap_states_work(name, tmp_path):
    base = make_arrays(name, shape=(7,))
    grads = two_grads((7,), np.float64)
    expected = reference_values(name, base, grads)
    arrays = dict(base)
    for i, key in enumerate(ALGOS[name].states):
        mm = np.memmap(tmp_path / f"s{i}.bin", dtype=np.float64, mode="w+", shape=(7,))
        mm[...] = base[key]
        arrays[key] = mm
    run_steps(name, arrays, grads)
    for i, key in enumerate(ALGOS[name].states):
        arrays[key].flush()
        assert np.array_equal(np.fromfile(tmp_path / f"s{i}.bin"), expected[key])
    assert np.array_equal(arrays["param"], expected["param"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_tensors_updated_in_place(name, dtype):
    torch = pytest.importorskip("torch")
    base = make_arrays(name, shape=(3, 4), dtype=dtype)
    grads = two_grads((3, 4), dtype)
    expected = reference_values(name, base, grads)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in base.items()}
    tensors["param"].requires_grad_(True)
    pointers = {k: t.data_ptr() for k, t in tensors.items()}
    run_steps(name, tensors, grads)
    assert {k: t.data_ptr() for k, t in tensors.items()} == pointers
    for key, want in expected.items():
        assert np.array_equal(tensors[key].detach().numpy(), want), key
    assert tensors["param"].requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_torch_nn_parameter_and_transposed_tensor(name):
    torch = pytest.importorskip("torch")
    base = make_arrays(name, shape=(4, 3), order="F")
    grads = [np.asfortranarray(g) for g in two_grads((4, 3), np.float64)]
    expected = reference_values(name, base, grads)
    # a transposed C tensor is a Fortran-ordered view: fine, as long as everything matches
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v.T)).T for k, v in base.items()}
    tensors["param"] = torch.nn.Parameter(tensors["param"])
    run_steps(name, tensors, grads)
    for key, want in expected.items():
        assert matches(name, tensors[key].detach().numpy(), want), key


@pytest.mark.parametrize("name", NAMES)
def test_read_only_grad_works(name):
    base = make_arrays(name)
    grads = two_grads((6,), np.float64)
    expected = reference_values(name, base, grads)
    arrays = dict(base)

    def read_only(g):
        g = g.copy()
        g.flags.writeable = False
        return g

    run_steps(name, arrays, grads, feed=read_only)
    for key in ALGOS[name].states + ("param",):
        assert np.array_equal(arrays[key], expected[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_grad_as_nested_list_works(name):
    """Gradients are only read: a nested list (copied by NumPy) is fine."""
    base = make_arrays(name)
    grads = two_grads((6,), np.float64)
    expected = reference_values(name, base, grads)
    arrays = dict(base)
    run_steps(name, arrays, grads, feed=np.ndarray.tolist)
    assert np.array_equal(arrays["param"], expected["param"])


@pytest.mark.parametrize("name", NAMES)
def test_slices_of_a_larger_buffer_touch_only_the_slice(name):
    base = make_arrays(name, shape=(9,))
    grads = two_grads((9,), np.float64)
    expected = reference_values(name, base, grads)
    arrays, guards = {}, []
    for i, (key, value) in enumerate(base.items()):
        buf = np.full(9 + 3 + i, 7.25)
        buf[1 + i: 10 + i] = value
        arrays[key] = buf[1 + i: 10 + i]
        guards.append((buf, 1 + i, 10 + i))
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)
    for buf, lo, hi in guards:
        assert np.all(buf[:lo] == 7.25) and np.all(buf[hi:] == 7.25)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_unaligned_arrays_work(name):
    base = make_arrays(name, shape=(10,))
    grads = two_grads((10,), np.float64)
    expected = reference_values(name, base, grads)
    arrays = {}
    for key, value in base.items():
        raw = np.zeros(value.nbytes + 1, np.uint8)
        arr = raw[1:].view(np.float64)
        arr[...] = value
        arrays[key] = arr
    assert not arrays["param"].flags.aligned
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)


def _parallel_size() -> int:
    return int(getattr(fastgd.cpu, "PARALLEL_THRESHOLD", 65536)) + 16384 + 37


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_parallel_kernel_on_fortran_slice(name):
    """Large enough for the multi-threaded kernel; a misaligned window of a bigger buffer."""
    n = _parallel_size()
    shape = (n // 7 + 1, 7)
    base = make_arrays(name, shape=shape, order="F")
    grads = [np.asfortranarray(g) for g in two_grads(shape, np.float64)]
    expected = reference_values(name, base, grads)
    arrays, guards = {}, []
    for i, (key, value) in enumerate(base.items()):
        buf = np.full(value.size + 8, -3.5)
        window = buf[3 + i: 3 + i + value.size].reshape(shape, order="F")
        window[...] = value
        arrays[key] = window
        guards.append((buf, 3 + i, 3 + i + value.size))
    run_steps(name, arrays, grads)
    assert_matches(name, arrays, expected)
    for buf, lo, hi in guards:
        assert np.all(buf[:lo] == -3.5) and np.all(buf[hi:] == -3.5)


# -- optimizer classes -----------------------------------------------------------------------

CLASSES = {name: (cases.optimizer_class(name), cases.example(name)) for name in cases.NAMES}
CLASSES["SGD-nesterov"] = (fastgd.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True,
                                        "maximize": True})
CLASS_NAMES = list(CLASSES)


def make(cname: str, params: Any, **overrides: Any):
    cls, kwargs = CLASSES[cname]
    return cls(params, **{**kwargs, **overrides})


SHAPES = [(5,), (2, 3), (), (4,), (3, 2, 2), (7,), (1,), (2, 2), (6,), (3,)]


def make_params(seed=0, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


def make_grads(params, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def state_copy(opt) -> dict:
    return copy.deepcopy(opt.state)


def assert_state_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for i in a:
        assert set(a[i]) == set(b[i]), i
        for key, value in a[i].items():
            other = b[i][key]
            if isinstance(value, np.ndarray):
                assert value.tobytes() == np.asarray(other).tobytes(), (i, key)
            else:
                assert value == other and type(value) is type(other), (i, key)


class OptimizerSnapshot:
    def __init__(self, opt, params) -> None:
        self.opt, self.params = opt, params
        self.arrays = Snapshot(*params)
        self.state = state_copy(opt)
        self.groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    def assert_unchanged(self) -> None:
        self.arrays.assert_unchanged()
        assert_state_equal(self.state, self.opt.state)
        assert self.groups == [{k: v for k, v in g.items() if k != "params"}
                               for g in self.opt.param_groups]


# constructor ------------------------------------------------------------------------------

CONSTRUCTOR_BAD = [(name, overrides, names) for name in cases.NAMES
                   for overrides, names in cases.bad_hyperparameters(name)]


@pytest.mark.parametrize("cname,overrides,names", CONSTRUCTOR_BAD,
                         ids=[f"{c}-{o!r}" for c, o, _ in CONSTRUCTOR_BAD])
def test_constructor_bad_hyperparameters(cname, overrides, names):
    params = make_params()
    refuse(lambda: make(cname, params, **overrides), *params, names=names)
    # ... also as a per-group option
    groups = [{"params": params[:3]}, {"params": params[3:], **overrides}]
    refuse(lambda: make(cname, groups), *params, names=names)


def bad_params():
    base = np.arange(12, dtype=np.float64)
    ro = base.copy()
    ro.flags.writeable = False
    yield "int", np.arange(4)
    yield "strided", base[::2]
    yield "read-only", ro
    yield "list", [1.0, 2.0]
    yield "float", 1.0
    yield "none", None


@pytest.mark.parametrize("cname", CLASS_NAMES)
@pytest.mark.parametrize("kind,bad", list(bad_params()), ids=[k for k, _ in bad_params()])
def test_constructor_bad_params(cname, kind, bad):
    good = make_params()[:2]
    refuse(lambda: make(cname, [good[0], bad, good[1]]), *good, bad, names=("params[1]",))
    refuse(lambda: make(cname, [{"params": [good[0]]}, {"params": [good[1], bad]}]),
           *good, bad, names=("params[2]",))


@pytest.mark.skipif(CUDA_USABLE, reason="a fake GPU array would reach a real driver")
@pytest.mark.parametrize("cname", ["SGD", "Adam"])
def test_constructor_gpu_like_param_refused_without_cuda(cname):
    good = make_params()[:2]
    refuse(lambda: make(cname, [good[0], FakeGpuArray(), good[1]]), *good,
           names=("params[1]",))


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_constructor_read_only_memmap_and_torch(cname, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "p.bin"
    np.arange(6, dtype=np.float64).tofile(path)
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=(6,))
    refuse(lambda: make(cname, [mm]), mm, names=("params[0]",))
    refuse(lambda: make(cname, mm), mm, names=("params[0]", "params"))
    for t in (torch.ones(8, dtype=torch.float64)[::2], torch.ones(4, dtype=torch.int32)):
        refuse(lambda t=t: make(cname, [t]), t, names=("params[0]",))


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_constructor_structural_errors(cname):
    a, b = make_params()[:2]
    buf = np.zeros(10)
    cases = [
        ([], ("params", "parameter")),
        ([{"params": []}], ("params", "parameter")),
        ([a, a], ("params[0]", "params[1]")),
        ([a, b, a.view()], ("params[0]", "params[2]")),
        ([buf[:6], buf[4:]], ("params[0]", "params[1]")),
        ([{"params": [a]}, {"params": [a]}], ("params[0]", "params[1]")),
        ([{"params": [a], "momentm": 0.9}], ("momentm",)),
        ([{"params": [a], "lr": 0.1}, {"params": [b], "bogus": 1}], ("bogus",)),
        ([{"lr": 0.1}], ("params",)),
        ([{"params": [a]}, b], ("params",)),
        (None, ("params",)), (3, ("params",)), ("abc", ("params",)),
        ({"params": [a]}, ("params",)),
    ]
    for params, names in cases:
        refuse(lambda p=params: make(cname, p), a, b, buf, names=names)


def test_add_param_group_refuses_overlap_and_leaves_optimizer_alone():
    a, b = make_params()[:2]
    opt = fastgd.Adam([a], lr=0.1)
    opt.step([np.ones_like(a)])
    snap = OptimizerSnapshot(opt, [a, b])
    for group in ({"params": [a]}, {"params": [b], "lr": -1.0}, {"params": [b], "nope": 1},
                  {"params": [b.astype(np.int32)]}, {"lr": 0.1}):
        with pytest.raises((TypeError, ValueError)):
            opt.add_param_group(group)
        snap.assert_unchanged()
        assert len(opt.param_groups) == 1
    opt.step([np.ones_like(a)])          # still a working, one-parameter optimizer
    assert opt.state[0]["step"] == 2


# step -------------------------------------------------------------------------------------

def bad_grads(param: np.ndarray):
    """(kind, grad) for a parameter: each must be refused."""
    doubled = np.repeat(np.asarray(param)[..., None], 2, axis=-1)
    yield "shape", np.zeros(param.size + 1)
    yield "shape-nd", np.zeros(param.shape + (1,))
    yield "float32", np.zeros(param.shape, np.float32)
    yield "float16", np.zeros(param.shape, np.float16)
    yield "int", np.zeros(param.shape, np.int64)
    yield "strided", doubled[..., 0]                  # param's shape, not contiguous
    yield "gpu", FakeGpuArray(param.shape)
    yield "alias", param
    yield "string", "grad"
    yield "object", object()


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_step_bad_grad_refused(cname):
    params = make_params(shapes=[(4,), (3, 4), (5,)])
    opt = make(cname, params)
    opt.step(make_grads(params, seed=2))
    snap = OptimizerSnapshot(opt, params)
    for _kind, bad in bad_grads(params[1]):
        grads = make_grads(params, seed=3)
        grads[1] = bad
        refuse(lambda g=grads: opt.step(g), *grads, names=("grads[1]",))
        snap.assert_unchanged()
    # Fortran-ordered gradient for a C-ordered 2-D parameter
    grads = make_grads(params, seed=3)
    grads[1] = np.asfortranarray(grads[1])
    refuse(lambda: opt.step(grads), *grads, names=("grads[1]",))
    snap.assert_unchanged()


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_step_bad_grad_structure(cname):
    params = make_params(shapes=[(4,), (3,), (5,)])
    opt = make(cname, params)
    snap = OptimizerSnapshot(opt, params)
    grads = make_grads(params)
    for bad, names in [(grads[:2], ("gradients", "grads")), (grads + grads[:1], ("gradients",
                                                                                 "grads")),
                       (5, ("grads",)), ({0: grads[0]}, ("grads",)),
                       (np.stack([grads[0][:3]] * 3), ("grads",)), ("abc", ("grads",))]:
        refuse(lambda b=bad: opt.step(b), *params, names=names)
        snap.assert_unchanged()
    with pytest.raises(TypeError):
        opt.step()                     # NumPy arrays have no .grad
    snap.assert_unchanged()
    assert opt.state == {}


BAD_STEP_KINDS = ["shape", "float32", "int", "strided", "gpu", "alias", "fortran"]


def _bad_fifth_grad(kind: str, param: np.ndarray, good: np.ndarray):
    if kind == "fortran":
        return np.asfortranarray(good)
    return dict(bad_grads(param))[kind]


@pytest.mark.parametrize("cname", CLASS_NAMES)
@pytest.mark.parametrize("kind", BAD_STEP_KINDS)
def test_ten_params_fifth_grad_bad_changes_nothing(cname, kind):
    params = make_params()
    params[4] = np.random.default_rng(9).standard_normal((3, 4))   # 2-D C-ordered
    twin_params = [p.copy() for p in params]
    opt, twin = make(cname, params), make(cname, twin_params)
    for seed in (10, 11):                      # a couple of good steps: state exists
        opt.step(make_grads(params, seed))
        twin.step(make_grads(twin_params, seed))
    snap = OptimizerSnapshot(opt, params)
    steps_before = {i: s["step"] for i, s in opt.state.items()}
    grads = make_grads(params, seed=12)
    grads[4] = _bad_fifth_grad(kind, params[4], grads[4])
    refuse(lambda: opt.step(grads), *grads, names=("grads[4]",))
    snap.assert_unchanged()
    assert {i: s["step"] for i, s in opt.state.items()} == steps_before == dict.fromkeys(
        range(10), 2)
    # the failed call left no trace: the next good step matches the twin's
    opt.step(make_grads(params, 13))
    twin.step(make_grads(twin_params, 13))
    for p, q in zip(params, twin_params, strict=True):
        assert np.array_equal(p, q)
    assert_state_equal(opt.state, twin.state)


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_ten_params_fifth_grad_bad_on_first_step_creates_no_state(cname):
    params = make_params()
    opt = make(cname, params)
    snap = OptimizerSnapshot(opt, params)
    grads = make_grads(params)
    grads[4] = np.zeros(params[4].shape, np.float32)
    refuse(lambda: opt.step(grads), *grads, names=("grads[4]",))
    snap.assert_unchanged()
    assert opt.state == {}


@pytest.mark.parametrize("cname", ["SGD", "Adam"])
def test_ten_params_fifth_param_made_read_only(cname):
    params = make_params()
    opt = make(cname, params)
    opt.step(make_grads(params, 10))
    snap = OptimizerSnapshot(opt, params)
    params[4].flags.writeable = False
    refuse(lambda: opt.step(make_grads(params, 11)), *params, names=("params[4]",))
    snap.assert_unchanged()


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_bad_hyperparameter_set_between_steps(cname):
    params = make_params(shapes=[(4,), (3,), (2, 2)])
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    opt = make(cname, groups)
    opt.step(make_grads(params))
    snap = OptimizerSnapshot(opt, params)
    for bad in (-0.1, NAN, INF, "0.1", True, None):
        # group 1 is bad: group 0 must not be stepped either
        opt.param_groups[1]["lr"] = bad
        refuse(lambda: opt.step(make_grads(params, 5)), *params, names=("lr",))
        opt.param_groups[1]["lr"] = snap.groups[1]["lr"]
        snap.assert_unchanged()
        lr_before = opt.lr
        with pytest.raises((TypeError, ValueError)) as info:
            opt.lr = bad
        assert names_argument(str(info.value), "lr")
        assert opt.lr == lr_before and all(g["lr"] == lr_before for g in opt.param_groups)
    snap.assert_unchanged()
    for name, bad in (("weight_decay", -1.0), ("eps", NAN), ("maximize", "yes")):
        if name in opt.param_groups[0]:
            opt.param_groups[0][name] = bad
            refuse(lambda: opt.step(make_grads(params, 5)), *params, names=(name,))
            opt.param_groups[0][name] = snap.groups[0][name]
            snap.assert_unchanged()


@pytest.mark.parametrize("cname", ["Adam", "AdamW", "Adamax", "NAdam"])
def test_bad_betas_set_between_steps(cname):
    params = make_params(shapes=[(4,), (3,)])
    opt = make(cname, params)
    opt.step(make_grads(params))
    snap = OptimizerSnapshot(opt, params)
    for bad in ((0.9, 1.0), (1.0, 0.9), 0.9, (0.9,)):
        opt.param_groups[0]["betas"] = bad
        refuse(lambda: opt.step(make_grads(params, 4)), *params,
               names=("betas", "beta1", "beta2"))
        opt.param_groups[0]["betas"] = snap.groups[0]["betas"]
        snap.assert_unchanged()


def test_sgd_nesterov_made_invalid_between_steps():
    params = make_params(shapes=[(4,), (3,)])
    opt = fastgd.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    opt.step(make_grads(params))
    snap = OptimizerSnapshot(opt, params)
    opt.param_groups[0]["momentum"] = 0.0
    refuse(lambda: opt.step(make_grads(params, 4)), *params, names=("nesterov",))
    opt.param_groups[0]["momentum"] = 0.9
    opt.param_groups[0]["dampening"] = 0.5
    refuse(lambda: opt.step(make_grads(params, 4)), *params, names=("nesterov",))
    opt.param_groups[0]["dampening"] = 0.0
    snap.assert_unchanged()


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_none_grad_skips_parameter(cname):
    params = make_params(shapes=[(4,), (3,), (5,)])
    untouched = params[1].copy()
    opt = make(cname, params)
    grads = make_grads(params)
    grads[1] = None
    opt.step(grads)
    assert np.array_equal(params[1], untouched)
    assert set(opt.state) == {0, 2}


# supported odd layouts (classes) ----------------------------------------------------------

def run_optimizer(cname, params, grad_seqs, **overrides):
    opt = make(cname, params, **overrides)
    for grads in grad_seqs:
        opt.step(grads)
    return opt


def grad_sequence(params, steps=3, seed=20):
    return [make_grads(params, seed + k) for k in range(steps)]


def flat_copies(params, cname):
    return [flat(cname, p) for p in params]


def flat_grad_seqs(seqs, cname):
    return [[flat(cname, g) for g in grads] for grads in seqs]


@pytest.mark.parametrize("cname", CLASS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_odd_layouts_match_flat_run(cname, dtype):
    rng = np.random.default_rng(3)
    params = [
        np.asfortranarray(rng.standard_normal((3, 5))).astype(dtype, order="F"),  # Fortran
        np.asarray(rng.standard_normal(), dtype=dtype),                            # 0-d
        np.zeros((0,), dtype),                                                     # empty
        np.zeros((2, 0, 3), dtype),                                                # empty n-d
        rng.standard_normal((2, 3, 4)).astype(dtype),                              # n-d C
        np.asfortranarray(rng.standard_normal((2, 3, 4)).astype(dtype)),           # n-d F
    ]
    assert params[0].flags.f_contiguous and not params[0].flags.c_contiguous
    seqs = grad_sequence(params)
    for grads in seqs:                                  # Fortran grads for Fortran params
        grads[0] = np.asfortranarray(grads[0])
        grads[5] = np.asfortranarray(grads[5])
    copies = flat_copies(params, cname)
    start = [p.copy() for p in params]
    ref = run_optimizer(cname, copies, flat_grad_seqs(seqs, cname))
    pointers = [p.ctypes.data for p in params]
    opt = run_optimizer(cname, params, seqs)
    assert [p.ctypes.data for p in params] == pointers
    for i, (p, q) in enumerate(zip(params, copies, strict=True)):
        assert matches(cname, flat(cname, p), q), i
        assert p.dtype == dtype
    assert not np.array_equal(params[0], start[0]) and params[1] != start[1]
    for i in opt.state:
        assert opt.state[i]["step"] == 3
        for key, value in opt.state[i].items():
            if isinstance(value, np.ndarray):
                assert value.shape == cases.state_shape(cname.split("-")[0], key,
                                                        params[i].shape)
                assert matches(cname, flat(cname, value), ref.state[i][key]), (i, key)


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_class_single_array_param(cname):
    p = np.random.default_rng(0).standard_normal((4, 3))
    q = flat(cname, p)
    grads = [np.random.default_rng(s).standard_normal((4, 3)) for s in range(3)]
    opt, ref = make(cname, p), make(cname, [q])
    for g in grads:
        opt.step(g)
        ref.step([flat(cname, g)])
    assert np.array_equal(flat(cname, p), q)


@pytest.mark.parametrize("cname", CLASS_NAMES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_class_memmap_r_plus(cname, order, tmp_path):
    shape = (4, 6)
    start = np.random.default_rng(4).standard_normal(shape)
    path = tmp_path / "weights.bin"
    w = np.memmap(path, dtype=np.float64, mode="w+", shape=shape, order=order)
    w[...] = start
    w.flush()
    del w
    mm = np.memmap(path, dtype=np.float64, mode="r+", shape=shape, order=order)
    other = np.random.default_rng(5).standard_normal(3)
    seqs = grad_sequence([mm, other])
    for grads in seqs:
        grads[0] = np.asarray(grads[0], order=order)
    ref_params = [flat(cname, start), other.copy()]
    run_optimizer(cname, ref_params, flat_grad_seqs(seqs, cname))
    run_optimizer(cname, [mm, other], seqs)
    mm.flush()
    del mm
    on_disk = np.fromfile(path, dtype=np.float64).reshape(shape, order=order)
    assert matches(cname, flat(cname, on_disk), ref_params[0])
    assert not np.array_equal(on_disk, start)
    assert np.array_equal(other, ref_params[1])


@pytest.mark.parametrize("cname", CLASS_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_class_torch_parameters_with_dot_grad(cname, dtype):
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=tdtype)),
               torch.randn(5, generator=gen, dtype=tdtype).requires_grad_(True),
               torch.randn(4, 3, generator=gen, dtype=tdtype).T.detach().requires_grad_(True)]
    copies = [flat(cname, t.detach().numpy()) for t in tensors]
    pointers = [t.data_ptr() for t in tensors]
    opt = make(cname, tensors)
    ref = make(cname, copies)
    for _ in range(3):
        for t in tensors:
            t.grad = torch.randn(t.shape, generator=gen, dtype=tdtype)
            if not t.is_contiguous():          # keep the grad in the param's layout
                t.grad = t.grad.T.contiguous().T
        ref.step([flat(cname, t.grad.numpy()) for t in tensors])
        opt.step()
        opt.zero_grad()
        assert all(t.grad is None for t in tensors)
    assert [t.data_ptr() for t in tensors] == pointers
    for t, q in zip(tensors, copies, strict=True):
        assert t.requires_grad
        assert matches(cname, flat(cname, t.detach().numpy()), q)


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_class_torch_grads_passed_explicitly(cname):
    torch = pytest.importorskip("torch")
    params = make_params(shapes=[(3, 4), (5,)])
    tparams = [torch.from_numpy(p.copy()) for p in params]
    seqs = grad_sequence(params)
    run_optimizer(cname, params, seqs)
    run_optimizer(cname, tparams, [[torch.from_numpy(g) for g in grads] for grads in seqs])
    for p, t in zip(params, tparams, strict=True):
        assert np.array_equal(p, t.numpy())


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_class_torch_bad_grad_refused(cname):
    torch = pytest.importorskip("torch")
    tparams = [torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    opt = make(cname, tparams)
    snap = OptimizerSnapshot(opt, tparams)
    for bad in (torch.ones(3, dtype=torch.float32), torch.ones(4, dtype=torch.float64),
                torch.ones(6, dtype=torch.float64)[::2], torch.ones(3, dtype=torch.bfloat16)):
        refuse(lambda b=bad: opt.step([torch.ones(4, dtype=torch.float64), b]), *tparams,
               names=("grads[1]",))
        snap.assert_unchanged()


@pytest.mark.parametrize("cname", CLASS_NAMES)
def test_stream_is_refused_for_host_arrays_before_anything_runs(cname):
    params = [np.ones(5), np.ones(40_000)]  # a serial and a parallel launch
    opt = make(cname, params)
    snap = OptimizerSnapshot(opt, params)
    for stream in (object(), 0):
        with pytest.raises(TypeError, match="stream"):
            opt.step([np.ones(5), np.ones(40_000)], stream=stream)
        snap.assert_unchanged()
    with pytest.raises(TypeError, match="stream"):
        fastgd.functional.sgd(params[0], np.ones(5), lr=0.1, stream=object())
    snap.assert_unchanged()


# steps that repeat the last one's structure (the step plan) ---------------------------------

def _two_steps(cname="Adam", **overrides):
    params = make_params(shapes=[(4,), (3, 4), (5,)])
    twin_params = [p.copy() for p in params]
    opt, twin = make(cname, params, **overrides), make(cname, twin_params, **overrides)
    for seed in (1, 2):
        opt.step(make_grads(params, seed))
        twin.step(make_grads(twin_params, seed))
    return opt, params, twin, twin_params


def _same(opt, params, twin, twin_params):
    for p, q in zip(params, twin_params, strict=True):
        assert np.array_equal(p, q)
    assert_state_equal(opt.state, twin.state)


def test_planned_step_refuses_a_param_changed_in_place():
    opt, params, twin, twin_params = _two_steps()
    snap = OptimizerSnapshot(opt, params)
    grads = make_grads(params, 3)
    params[1].shape = (4, 3)                                   # same memory, other shape
    refuse(lambda: opt.step(grads), *params, names=("params[1]",))
    params[1].shape = (3, 4)
    snap.assert_unchanged()
    params[2].flags.writeable = False
    refuse(lambda: opt.step(make_grads(params, 3)), *params, names=("params[2]",))
    params[2].flags.writeable = True
    opt.param_groups[0]["params"][0] = params[0].copy()        # another array in its place
    refuse(lambda: opt.step(make_grads(params, 3)), *params, names=("params[0]",))
    opt.param_groups[0]["params"][0] = params[0]
    snap.assert_unchanged()
    opt.step(make_grads(params, 3))                            # still in step with its twin
    twin.step(make_grads(twin_params, 3))
    _same(opt, params, twin, twin_params)


def test_planned_step_refuses_a_torch_parameter_given_new_memory():
    torch = pytest.importorskip("torch")
    params = [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    opt = fastgd.Adam(params, lr=0.1)
    for _ in range(2):
        opt.step([torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)])
    old = params[1].clone()
    params[1].data = torch.zeros(3, dtype=torch.float64)       # new storage
    refuse(lambda: opt.step([torch.ones(4, dtype=torch.float64),
                             torch.ones(3, dtype=torch.float64)]),
           params[1], names=("params[1]",))
    assert not torch.equal(params[1], old) and torch.equal(params[1], torch.zeros(3,
                                                                                dtype=torch.float64))


def test_planned_step_checks_state_arrays_set_by_hand():
    opt, params, twin, twin_params = _two_steps()
    snap = OptimizerSnapshot(opt, params)
    for bad in (np.zeros(3), np.zeros((3, 4), np.float32), np.zeros((4, 3)),
                np.asfortranarray(np.zeros((3, 4))), params[1]):
        saved = opt.state[1]["exp_avg"]
        opt.state[1]["exp_avg"] = bad
        refuse(lambda: opt.step(make_grads(params, 3)), *params, names=("exp_avg",))
        opt.state[1]["exp_avg"] = saved
        snap.assert_unchanged()
    state = opt.state[1]["exp_avg"]          # the optimizer's own array, changed in place
    state.flags.writeable = False
    refuse(lambda: opt.step(make_grads(params, 3)), *params, names=("exp_avg",))
    state.flags.writeable = True
    state.shape = (4, 3)
    refuse(lambda: opt.step(make_grads(params, 3)), *params, names=("exp_avg",))
    state.shape = (3, 4)
    snap.assert_unchanged()
    # a good array set by hand is used: the same values give the same step
    opt.state[1]["exp_avg"] = opt.state[1]["exp_avg"].copy()
    opt.step(make_grads(params, 3))
    twin.step(make_grads(twin_params, 3))
    _same(opt, params, twin, twin_params)


def test_steps_of_another_structure_leave_the_plan():
    """Gradients missing, options that need other state, new groups: each step equals the
    same step of an optimizer that ran every step from scratch (a new optimizer loaded with
    the state dict before each step)."""
    opt, params, twin, twin_params = _two_steps(lr=0.05)
    changes = [lambda o: None, lambda o: o.param_groups[0].__setitem__("amsgrad", True),
               lambda o: o.param_groups[0].__setitem__("lr", 0.01), lambda o: None]
    for seed, change in enumerate(changes, start=3):
        change(opt)
        change(twin)
        grads = make_grads(params, seed)
        if seed % 2:
            grads[1] = None
        opt.step(grads)
        fresh = make(type(twin).__name__, twin_params)
        fresh.load_state_dict(twin.state_dict())
        fresh.step([None if g is None else g.copy() for g in grads])
        twin.load_state_dict(fresh.state_dict())
        _same(opt, params, twin, twin_params)
    assert "max_exp_avg_sq" in opt.state[0]


def test_functional_calls_with_the_same_arrays_are_checked_every_time():
    """The functional API keeps the checks of the arrays of its last calls (by identity);
    every call still checks what may have changed, before anything is written."""
    arrays = make_arrays("adam", shape=(3, 4))
    twin = {k: v.copy() for k, v in arrays.items()}
    for t in (1, 2):
        call("adam", arrays, t=t)
        call("adam", twin, t=t)
    arrays["exp_avg"].flags.writeable = False
    refuse_call("adam", arrays, ("exp_avg",), t=3)
    arrays["exp_avg"].flags.writeable = True
    for bad in (arrays["exp_avg"], arrays["param"], arrays["exp_avg_sq"].T):
        refuse_call("adam", {**arrays, "grad": bad}, ("grad", "exp_avg", "param"), t=3)
    for a in (arrays, twin):                  # reshaped in place, consistently: fine
        for v in a.values():
            v.shape = (4, 3)
    call("adam", arrays, t=3)
    call("adam", twin, t=3)
    for key in arrays:
        assert np.array_equal(arrays[key], twin[key]), key


def test_functional_calls_keep_no_array_alive():
    import gc
    import weakref

    arrays = make_arrays("adam", shape=(1000,))
    call("adam", arrays, t=1)
    call("adam", arrays, t=2)
    refs = [weakref.ref(a) for a in arrays.values()]
    del arrays
    gc.collect()
    assert all(r() is None for r in refs)


def test_one_parameter_per_group_gradients_flat_or_per_group():
    params = make_params(shapes=[(3,), (2,)])
    twin_params = [p.copy() for p in params]
    opt = make("Adam", [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.1}])
    twin = make("Adam", [{"params": [twin_params[0]]}, {"params": [twin_params[1]], "lr": 0.1}])
    for seed in (1, 2, 3):
        grads = make_grads(params, seed)
        opt.step([[grads[0]], [grads[1]]])        # one list per group
        twin.step(grads)                          # one flat list
    for p, q in zip(params, twin_params, strict=True):
        assert np.array_equal(p, q)


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion"])
def test_a_bad_state_array_of_a_later_launch_refuses_the_whole_step(name):
    """Every launch's state arrays are checked before the first launch runs: a state array
    of the wrong dtype in the second group leaves the first group untouched too."""
    params = [np.ones(5), np.ones(3)]
    opt = cases.optimizer_class(name)([{"params": params[:1]},
                                       {"params": params[1:], "lr": 0.5}],
                                      **({"momentum": 0.9} if name == "SGD" else {}))
    grads = [np.ones(5), np.ones(3)]
    opt.step(grads)
    state = ALGORITHMS[name].states[0].name
    opt.state[1][state] = np.zeros(3, np.float32)  # (the parameter is float64)
    before = copy.deepcopy((params, opt.state))
    with pytest.raises(TypeError, match=r"state\[1\]"):
        opt.step(grads)
    for a, b in zip(params, before[0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(opt.state[0][state], before[1][0][state])
    assert opt.state[0]["step"] == 1
