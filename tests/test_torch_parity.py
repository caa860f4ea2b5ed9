"""fastgd against torch.optim (skipped without torch).

Every fastgd optimizer class that torch.optim has too runs side by side with the torch.optim
class of the same name (its default CPU path) on the same gradients, with random valid
hyperparameters and every option combination, in float64 and float32, with two parameter
groups with different options, and stepping the parameters of a small ``torch.nn`` model in
place (``opt.step()`` reading ``.grad``) next to a deep copy trained by torch.optim.
Tolerances (relative error): float64 1e-8, float32 1e-4. torch keeps its per-parameter
scalars (``step``, NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) in its default dtype:
float64 runs set it to float64.
"""

from __future__ import annotations

import contextlib
import copy
import math
import zlib
from collections.abc import Iterator
from typing import Any

import cases
import numpy as np
import pytest
from cases import NAMES as ALL_NAMES
from cases import full_case, option_cases, random_hyperparameters

import fastgd
import fastgd.cpu
from fastgd import functional as F

torch = pytest.importorskip("torch")

#: The algorithms torch.optim has.
NAMES = [name for name in ALL_NAMES if hasattr(torch.optim, name)]
BIG = 2 * getattr(fastgd.cpu, "BLOCK", 16384) + 37
STEPS = 40
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def rtol_for(name: str, dtype: Any) -> float:
    return 1e-4 if dtype == np.float32 else 1e-8


@contextlib.contextmanager
def torch_default_dtype(dtype: Any) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` (its optimizers' scalar state follows it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(TORCH_DTYPES[np.dtype(dtype).type])
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """torch's and Numba's OpenMP workers busy-wait after a parallel region; interleaved on a
    machine with few cores they slow each other down many times over. The results do not
    depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def serial_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serial loop for every size (test_parallel_kernel_matches_torch and
    test_reference.py cover the multi-threaded kernel against the same numbers)."""
    monkeypatch.setattr(fastgd.cpu, "PARALLEL_THRESHOLD", 10**18)


def seeded_rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def abs_max(x: Any) -> float:
    finite = np.abs(to_numpy(x))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def assert_close(actual: Any, expected: Any, rtol: float, what: str = "",
                 scale: float = 0.0) -> None:
    """Element-wise relative error <= rtol with an absolute floor of rtol * max(scale,
    max|expected|), ``scale`` being the largest magnitude the values took on the way
    (rounding errors are relative to it); NaNs must sit at the same places."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(scale, abs_max(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def torch_class(name: str) -> Any:
    return getattr(torch.optim, name)


SCALAR_STATE = ("step", "mu_product", "eta", "mu")


def torch_arrays(torch_state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in torch_state.items()
            if isinstance(v, torch.Tensor) and k not in SCALAR_STATE}


class Peaks:
    """Largest magnitude each torch parameter and state array took during a run."""

    def __init__(self) -> None:
        self.peak: dict[tuple[int, str], float] = {}

    def track(self, params: list[Any], opt: Any) -> None:
        for i, p in enumerate(params):
            values = {"param": p, **torch_arrays(opt.state.get(p, {}))}
            for key, value in values.items():
                self.peak[i, key] = max(self.peak.get((i, key), 0.0), abs_max(value))

    def __call__(self, i: int, key: str) -> float:
        return self.peak.get((i, key), 0.0)


def compare_states(name: str, fast_state: dict[str, Any], torch_state: dict[str, Any],
                   rtol: float, what: str, peak: Any = lambda key: 0.0) -> None:
    """Every array state torch has (same key names) matches; so do step and mu_product."""
    arrays = torch_arrays(torch_state)
    assert set(arrays) == {k for k, v in fast_state.items() if isinstance(v, np.ndarray)}, what
    for key, value in arrays.items():
        assert_close(fast_state[key], value, rtol, f"{what} state {key!r}", peak(key))
    if "step" in torch_state:  # (torch's SGD does not count steps)
        assert fast_state["step"] == int(to_numpy(torch_state["step"]))
    for key in SCALAR_STATE[1:]:
        if key in torch_state:
            assert math.isclose(fast_state[key], float(to_numpy(torch_state[key])),
                                rel_tol=rtol), (what, key)


def same_accumulator(name: str, hp0: dict[str, Any], hp1: dict[str, Any]) -> dict[str, Any]:
    """torch.optim.Adagrad fills every group's ``sum`` with the *constructor's*
    ``initial_accumulator_value`` (a per-group value is ignored); fastgd honours the group's
    value (checked against the reference in test_reference.py). Compare where they agree."""
    if name == "Adagrad":
        hp1 = {**hp1, "initial_accumulator_value": hp0["initial_accumulator_value"]}
    return hp1


# -- side by side on the same gradients -----------------------------------------------------

SHAPES0 = [(), (0,), (1,), (7,), (1025,)]
TORCH_NO_EMPTY = {"Adafactor"}
SHAPES1 = [(3, 5, 7), (BIG,), (4, 9)]


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("name, options", [
    pytest.param(name, options, id=f"{name}-{'+'.join(options) or 'plain'}")
    for name in NAMES for options in option_cases(name)])
def test_matches_torch_optim(name: str, options: tuple[str, ...], dtype: Any,
                             request: pytest.FixtureRequest) -> None:
    run_side_by_side(name, options, dtype, seeded_rng(request))


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("name", NAMES)
def test_parallel_kernel_matches_torch(name: str, dtype: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-threaded kernel (here from 64 elements on) with every option enabled."""
    monkeypatch.setattr(fastgd.cpu, "PARALLEL_THRESHOLD", 64)
    rng = np.random.default_rng(zlib.crc32(f"{name}-{dtype.__name__}".encode()))
    run_side_by_side(name, option_cases(name)[-1], dtype, rng)


def run_side_by_side(name: str, options: tuple[str, ...], dtype: Any,
                     rng: np.random.Generator) -> None:
    with torch_default_dtype(dtype):
        _run_side_by_side(name, options, dtype, rng)


def _run_side_by_side(name: str, options: tuple[str, ...], dtype: Any,
                      rng: np.random.Generator) -> None:
    hp0 = random_hyperparameters(name, options, rng)
    cases = option_cases(name)
    hp1 = same_accumulator(name, hp0, random_hyperparameters(
        name, cases[int(rng.integers(len(cases)))], rng))
    # (torch's Adafactor divides by a parameter's size: no empty ones)
    shapes = [(2,) if name in TORCH_NO_EMPTY and 0 in s else s for s in SHAPES0 + SHAPES1]
    n0 = len(SHAPES0)
    arrays = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
    # fastgd steps NumPy arrays (the (3, 5, 7) one Fortran-ordered), torch its own tensors.
    arrays[n0] = np.asfortranarray(arrays[n0])
    tensors = [torch.tensor(a.copy(), dtype=TORCH_DTYPES[dtype]) for a in arrays]
    ours = getattr(fastgd, name)(
        [{"params": arrays[:n0]}, {"params": arrays[n0:], **hp1}], **hp0)
    theirs = torch_class(name)(
        [{"params": tensors[:n0]}, {"params": tensors[n0:], **hp1}], **hp0)
    peaks = Peaks()
    peaks.track(tensors, theirs)
    for t in range(1, STEPS + 1):
        grads: list[Any] = []
        for i, (a, p) in enumerate(zip(arrays, tensors, strict=True)):
            if i > 0 and (t + 2 * i) % 7 == 0:  # no gradient: both skip this parameter
                grads.append(None)
                p.grad = None
                continue
            g = np.array(rng.standard_normal(a.shape) * rng.uniform(0.1, 3.0), dtype=dtype)
            grads.append(np.asfortranarray(g) if a.ndim > 1 and a.flags.f_contiguous else g)
            p.grad = torch.from_numpy(g.copy())
        ours.step(grads)
        theirs.step()
        peaks.track(tensors, theirs)
        if t % 10 == 0:  # a learning-rate schedule: options are read again every step
            for opt in (ours, theirs):
                opt.param_groups[0]["lr"] *= 0.7
    rtol = rtol_for(name, dtype)
    for i, (a, p) in enumerate(zip(arrays, tensors, strict=True)):
        what = f"{name} params[{i}] {a.shape}"
        assert_close(a, p, rtol, what, peaks(i, "param"))
        compare_states(name, ours.state[i], theirs.state[p], rtol, what,
                       lambda key, i=i: peaks(i, key))


# -- stepping a torch.nn model in place ---------------------------------------------------------

def make_model(dtype: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


MODEL_CASES = [pytest.param(name, options, id=f"{name}-{'+'.join(options) or 'plain'}")
               for name in NAMES
               for options in (option_cases(name)[0], option_cases(name)[-1])]


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("name, options", MODEL_CASES)
def test_steps_torch_model_like_torch_optim(name: str, options: tuple[str, ...], dtype: Any,
                                            request: pytest.FixtureRequest) -> None:
    with torch_default_dtype(dtype):
        steps_torch_model_like_torch_optim(name, options, dtype, seeded_rng(request))


def steps_torch_model_like_torch_optim(name: str, options: tuple[str, ...], dtype: Any,
                                       rng: np.random.Generator) -> None:
    hp0 = random_hyperparameters(name, options, rng)
    hp1 = same_accumulator(name, hp0, random_hyperparameters(
        name, option_cases(name)[len(option_cases(name)) // 2], rng))
    tdtype = TORCH_DTYPES[dtype]
    model = make_model(tdtype, seed=int(rng.integers(1000)))
    twin = copy.deepcopy(model)
    params, twin_params = list(model.parameters()), list(twin.parameters())
    initial = [p.detach().clone() for p in params]
    # First layer with the constructor's options, second layer with other ones.
    ours = getattr(fastgd, name)(
        [{"params": params[:2]}, {"params": params[2:], **hp1}], **hp0)
    theirs = torch_class(name)(
        [{"params": twin_params[:2]}, {"params": twin_params[2:], **hp1}], **hp0)
    peaks = Peaks()
    peaks.track(twin_params, theirs)
    for _ in range(STEPS):
        x = torch.tensor(rng.standard_normal((8, 6)), dtype=tdtype)
        y = torch.tensor(rng.standard_normal((8, 3)), dtype=tdtype)
        for net, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()  # fastgd reads each parameter's .grad
        peaks.track(twin_params, theirs)
    rtol = rtol_for(name, dtype)
    for i, (p, q) in enumerate(zip(params, twin_params, strict=True)):
        assert p.dtype == tdtype and p.requires_grad
        assert_close(p, q, rtol, f"{name} model parameter {i}", peaks(i, "param"))
        compare_states(name, ours.state[i], theirs.state[q], rtol, f"{name} parameter {i}",
                       lambda key, i=i: peaks(i, key))
    # The model really was trained (not just left alone by both).
    for p, p0 in zip(params, initial, strict=True):
        assert not torch.equal(p.detach(), p0)


def test_model_parameters_change_in_place() -> None:
    model = make_model(torch.float64, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    storage = [p.data_ptr() for p in model.parameters()]
    opt = fastgd.SGD(model.parameters(), lr=0.1)
    model(torch.ones(2, 6, dtype=torch.float64)).sum().backward()
    opt.step()
    for p, b, ptr in zip(model.parameters(), before, storage, strict=True):
        assert p.data_ptr() == ptr
        torch.testing.assert_close(p.detach(), b - 0.1 * p.grad, rtol=1e-12, atol=1e-14)


# -- functional API on torch tensors -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_functional_on_tensors_matches_torch(dtype: Any) -> None:
    rng = np.random.default_rng(21)
    n = 300
    init = torch.tensor(rng.standard_normal(n), dtype=dtype)
    rtol = 1e-4 if dtype == torch.float32 else 1e-8
    # Adam (AMSGrad, L2 weight decay, maximize)
    p, q = init.clone(), init.clone()
    m, v, vmax = (torch.zeros(n, dtype=dtype) for _ in range(3))
    theirs = torch.optim.Adam([q], lr=0.02, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.125,
                              amsgrad=True, maximize=True)
    # SGD (Nesterov) and RMSprop (centered, momentum)
    p2, q2, buf = init.clone(), init.clone(), torch.zeros(n, dtype=dtype)
    sgd = torch.optim.SGD([q2], lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.25)
    p3, q3 = init.clone(), init.clone()
    sq, mom, gavg = (torch.zeros(n, dtype=dtype) for _ in range(3))
    rms = torch.optim.RMSprop([q3], lr=0.01, alpha=0.9, eps=1e-6, momentum=0.5,
                              centered=True)
    for t in range(1, STEPS + 1):
        g = torch.tensor(rng.standard_normal(n), dtype=dtype)
        F.adam(p, g, m, v, vmax, step=t, lr=0.02, beta1=0.8, beta2=0.99, eps=1e-7,
               weight_decay=0.125, maximize=True)
        F.sgd(p2, g, buf, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.25,
              first_step=t == 1)
        F.rmsprop(p3, g, sq, mom, gavg, lr=0.01, alpha=0.9, eps=1e-6, momentum=0.5,
                  centered=True)
        for tensor, opt in ((q, theirs), (q2, sgd), (q3, rms)):
            tensor.grad = g.clone()
            opt.step()
    assert_close(p, q, rtol, "adam")
    assert_close(vmax, theirs.state[q]["max_exp_avg_sq"], rtol, "max_exp_avg_sq")
    assert_close(p2, q2, rtol, "sgd")
    assert_close(buf, sgd.state[q2]["momentum_buffer"], rtol, "momentum_buffer")
    assert_close(p3, q3, rtol, "rmsprop")
    assert_close(gavg, rms.state[q3]["grad_avg"], rtol, "grad_avg")


# -- NaN and Inf like torch ----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_non_finite_gradients_propagate_like_torch(name: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    hp = random_hyperparameters(name, full_case(name), rng)
    n = 200
    a = rng.standard_normal(n)
    p = torch.tensor(a.copy())
    ours = getattr(fastgd, name)([a], **hp)
    with torch_default_dtype(np.float64):
        theirs = torch_class(name)([p], **hp)
        run_with_non_finite_gradients(ours, theirs, a, p, rng)
    expected = p.numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(a), np.isinf(expected))
    assert_close(a, expected, 1e-8, name)


def run_with_non_finite_gradients(ours: Any, theirs: Any, a: np.ndarray, p: Any,
                                  rng: np.random.Generator) -> None:
    n = a.size
    for t in range(1, 8):
        g = rng.standard_normal(n)
        if t == 3:
            g[[5, 17, 150]] = np.nan
            g[[40, 41]] = np.inf
            g[[99]] = -np.inf
        ours.step([g])
        p.grad = torch.from_numpy(g.copy())
        theirs.step()


# -- refusals like torch's ---------------------------------------------------------------------

CANDIDATES = [-1.0, -1e-9, 0.0, 0.5, 1.0, 1.5, 50.0, math.nan, math.inf, -math.inf]


def candidate_options(name: str):
    """Each hyperparameter of ``name`` (a pair's parts one at a time) set to each value of
    CANDIDATES, the others at their defaults."""
    for h in cases.constructor_hypers(name):
        if isinstance(h.default, bool):
            continue
        if isinstance(h.default, tuple):
            for j in range(2):
                for value in CANDIDATES:
                    pair = list(h.default)
                    pair[j] = value
                    yield {h.name: tuple(pair)}
        else:
            for value in CANDIDATES:
                yield {h.name: value}


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_torch_refuses_are_refused(name: str) -> None:
    """Whatever torch.optim refuses, fastgd refuses too (it may refuse more: NaN or infinite
    values torch takes, for instance)."""
    refused = 0
    for options in candidate_options(name):
        try:
            torch_class(name)([torch.zeros(2, requires_grad=True)], **options)
        except (ValueError, TypeError):
            refused += 1
            with pytest.raises((ValueError, TypeError)):
                getattr(fastgd, name)([np.zeros(2)], **options)
    assert refused  # torch refuses some of them: the test is not vacuous
