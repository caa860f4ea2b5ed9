"""Throughput benchmarks: every optimizer step against a memory roofline and baselines.

An element-wise update is memory-bound: it must read ``param``, ``grad`` and each state
array once and write ``param`` and each state array once, ``(3 + 2 * n_states) * itemsize``
bytes per element. The *roofline* is a fused copy kernel that moves exactly those bytes
(same arrays, same reads and writes, trivial arithmetic), measured in the same run. Baselines
are a plain NumPy implementation (with its temporaries; :data:`NUMPY_STEPS`, for the
algorithms that have one) and ``torch.optim`` with its fastest CPU implementation
(``fused=True`` where torch has it, else ``foreach=True``) when torch is installed and has
the algorithm. Every algorithm of :mod:`fastgd.algorithms` has a row (:data:`CASES`).
Short steps are timed in blocks of calls; the blocks of all contenders are interleaved and
the median per call is reported, which is robust to the noise of a shared machine.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import numpy as np

from fastgd import cpu, functional, optim
from fastgd.algorithms import ALGORITHMS, Algorithm
from fastgd.arrays import convert_state, kernel_view, state_dtype, zeros_like
from fastgd.codegen import load_generated


@dataclass(frozen=True)
class Case:
    """A benchmark row: an optimizer class with its options (the algorithm's ``bench``
    options), the state arrays a step of it moves, and the torch.optim class of the same
    name (if torch has one)."""

    name: str
    cls: type
    options: dict[str, Any]
    states: tuple[str, ...]
    torch_name: str
    algorithm: Algorithm


def case(algorithm: Algorithm) -> Case:
    """The benchmark row of ``algorithm``."""
    options = algorithm.check({**algorithm.defaults, **algorithm.bench})
    states = algorithm.arrays(algorithm.present(options))
    return Case(algorithm.function_name, getattr(optim, algorithm.name), dict(algorithm.bench),
                states, algorithm.name, algorithm)


CASES: dict[str, Case] = {a.function_name: case(a) for a in ALGORITHMS.values()}


def bytes_per_step(case: Case, size: int, dtype: np.dtype, precision: str = "full",
                   factored: bool = False) -> int:
    """Bytes a fused step must move (``factored``: of parameters with factored state, whose
    three passes read the parameter and the gradient, the gradient, and the parameter and
    the gradient while writing the parameter; the factors are negligible). Each pass (one,
    or two for a two-phase step) reads the parameter and the gradient (a second pass that
    does not use it: not), reads the states it uses and writes those it changes, and
    writes the parameter (a first pass, which sums: not). A state takes its form's bytes
    at ``precision`` (``spec.form``): bfloat16 2 per element, 8-bit 1 and a float32 absmax
    per block of 256."""
    itemsize = np.dtype(dtype).itemsize
    if factored:
        return 6 * itemsize * size
    algorithm = case.algorithm
    passes = [(algorithm.spec, True)]
    if algorithm.two_phase is not None:
        passes.append((algorithm.second_spec, algorithm.two_phase.reads_grad))
    per_element = 0.0
    for spec, reads_grad in passes:
        per_element += itemsize * (1 + reads_grad + (not spec.sums))
        for state in case.states:
            if state not in spec.unused:
                width = {"bf16": 2, "8bit": 1 + 4 / 256}.get(spec.form(state, precision),
                                                             itemsize)
                per_element += width * (1 + (state not in spec.read_only))
    return int(per_element * size)


def _state_like(param: np.ndarray, precision: str, fill: float | None = 0.0) -> np.ndarray:
    """A state array of ``param`` at ``precision``, filled with ``fill`` (None: a copy of
    ``param``)."""
    if fill is None:
        return convert_state(param, param, state_dtype(param, precision))
    return zeros_like(param, fill=fill, dtype=state_dtype(param, precision))


def training_optimizer(case: Case, params: list[Any], cls: type | None = None,
                       **options: Any) -> Any:
    """The optimizer class of ``case`` (or ``cls``, the same algorithm's class of another
    face) over ``params`` with its options, ready to train (a Schedule-Free one put in
    train mode)."""
    opt = (cls or case.cls)(params, **case.options, **options)
    if isinstance(opt, optim.ScheduleFree):
        opt.train()
    return opt


@cache
def _copy_kernels() -> Any:
    """The roofline kernels ``copy{k}``: param, grad and ``k`` states, for every ``k`` an
    algorithm has."""
    sources = []
    for k in range(1 + max(len(a.spec.states) for a in ALGORITHMS.values())):
        states = [f"s{j}" for j in range(k)]
        body = "; ".join(["g = grad[i]", "param[i] = param[i] + g",
                          *(f"{s}[i] = {s}[i] + g" for s in states)])
        sources.append(cpu.kernel_pair_source(f"copy{k}", ["param", "grad", *states],
                                              2 + k, body))
    header = "import numba\nfrom fastgd.chunks import chunk_bounds\n"
    return load_generated("bench_kernels", header + "".join(sources))


def roofline_step(arrays: list[np.ndarray]) -> None:
    """The memory roofline: read every array once, write param and states once (its time
    is scaled to the bytes of a step where they differ, :func:`run_case`)."""
    cpu.run_pair(_copy_kernels(), f"copy{len(arrays) - 2}", arrays, ())


# -- NumPy baselines: what a careful NumPy user writes (in place where NumPy allows) ----------
# (torch's defaults, SGD with momentum 0.9: the options of the rows of CASES)
_B1, _B2, _EPS = 0.9, 0.999, 1e-8


def _numpy_sgd(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    s[0] *= 0.9
    s[0] += g
    p -= 1e-3 * s[0]


def _numpy_adagrad(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    s[0] += g * g
    p -= 1e-2 * g / (np.sqrt(s[0]) + 1e-10)


def _numpy_adadelta(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    s[0] *= 0.9
    s[0] += 0.1 * g * g
    delta = np.sqrt(s[1] + 1e-6) / np.sqrt(s[0] + 1e-6) * g
    s[1] *= 0.9
    s[1] += 0.1 * delta * delta
    p -= delta


def _numpy_rmsprop(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    s[0] *= 0.99
    s[0] += 0.01 * g * g
    p -= 1e-2 * g / (np.sqrt(s[0]) + _EPS)


def _numpy_moments(g: np.ndarray, s: list[np.ndarray]) -> None:
    s[0] *= _B1
    s[0] += (1 - _B1) * g
    s[1] *= _B2
    s[1] += (1 - _B2) * g * g


def _numpy_adam(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    _numpy_moments(g, s)
    p -= 1e-3 / (1 - _B1**t) * s[0] / (np.sqrt(s[1]) / math.sqrt(1 - _B2**t) + _EPS)


def _numpy_adamw(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    p *= 1 - 1e-3 * 1e-2
    _numpy_adam(p, g, s, t)


def _numpy_nadam(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    _numpy_moments(g, s)
    denom = np.sqrt(s[1] / (1 - _B2**t)) + _EPS
    p -= 1e-4 * g / denom
    p -= 1e-3 * s[0] / denom


def _numpy_adamax(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    s[0] *= _B1
    s[0] += (1 - _B1) * g
    np.maximum(_B2 * s[1], np.abs(g) + _EPS, out=s[1])
    p -= 2e-3 / (1 - _B1**t) * s[0] / s[1]


def _numpy_radam(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    _numpy_moments(g, s)
    bc1, bc2 = 1 - _B1**t, 1 - _B2**t
    rho_inf = 2 / (1 - _B2) - 1
    rho_t = rho_inf - 2 * t * _B2**t / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                         / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        p -= 1e-3 / bc1 * rect * math.sqrt(bc2) * s[0] / (np.sqrt(s[1]) + _EPS)
    else:
        p -= 1e-3 / bc1 * s[0]


def _numpy_rprop(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    sign = np.sign(g * s[0])
    s[1] *= np.where(sign > 0, 1.2, np.where(sign < 0, 0.5, 1.0)).astype(p.dtype)
    np.clip(s[1], 1e-6, 50.0, out=s[1])
    g = np.where(sign < 0, 0, g)
    p -= np.sign(g) * s[1]
    s[0][...] = g


def _numpy_asgd(p: np.ndarray, g: np.ndarray, s: list[np.ndarray], t: int) -> None:
    eta = 1e-2 / (1 + 1e-4 * 1e-2 * (t - 1)) ** 0.75  # (mu stays 1 until t0 = 1e6 steps)
    p *= 1 - 1e-4 * eta
    p -= eta * g
    s[0][...] = p


#: The NumPy baseline of a row, by row name: ``step(param, grad, states, t)`` in place.
NUMPY_STEPS: dict[str, Callable[[np.ndarray, np.ndarray, list[np.ndarray], int], None]] = {
    "sgd": _numpy_sgd, "adagrad": _numpy_adagrad, "adadelta": _numpy_adadelta,
    "rmsprop": _numpy_rmsprop, "adam": _numpy_adam, "adamw": _numpy_adamw,
    "adamax": _numpy_adamax, "nadam": _numpy_nadam, "radam": _numpy_radam,
    "rprop": _numpy_rprop, "asgd": _numpy_asgd,
}


def _torch_parameters(params: list[np.ndarray], grads: list[np.ndarray],
                      device: str = "cpu") -> list[Any]:
    """Copies of the arrays as torch parameters on ``device``, each with its ``.grad``."""
    import torch

    tensors = [torch.nn.Parameter(torch.tensor(p, device=device)) for p in params]
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.tensor(g, device=device)
    return tensors


def _torch_face_steppers(case: Case, params: list[np.ndarray], grads: list[np.ndarray],
                         precision: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The steps of ``fastgd.torch``'s class of ``case`` and of the NumPy face's class over
    the same torch tensors (copies of the arrays, with their ``.grad``): what the
    ``torch.optim.Optimizer`` face adds (ImportError without torch)."""
    import fastgd.torch

    tensors = _torch_parameters(params, grads)
    steps = []
    for cls in (getattr(fastgd.torch, case.cls.__name__), case.cls):
        opt = training_optimizer(case, tensors, cls, state_precision=precision)
        opt.step()
        steps.append(opt.step)
    return steps[0], steps[1]


#: the torch optimizer of a row outside torch.optim: its package and class, by row name
TORCH_PACKAGES = {"schedulefreeadamw": ("schedulefree", "AdamWScheduleFree"),
                  "schedulefreesgd": ("schedulefree", "SGDScheduleFree")}
#: the least speed-up over the package's step of a row of :data:`TORCH_PACKAGES` (2**24
#: float32; the others: at least as fast)
TORCH_PACKAGE_TARGETS = {"schedulefreeadamw": 3.0}


def _torch_stepper(case: Case, params: list[np.ndarray], grads: list[np.ndarray],
                   device: str = "cpu") -> tuple[Callable[[], Any], str]:
    """torch.optim's fastest step of ``case`` on copies of the arrays on ``device`` (fused
    where torch has it, else foreach, else its only one: Muon's), and which it is; for a row of
    :data:`TORCH_PACKAGES`, its package's foreach step (ImportError without it)."""
    import importlib

    import torch

    tensors = _torch_parameters(params, grads, device)
    if case.name in TORCH_PACKAGES:
        package, name = TORCH_PACKAGES[case.name]
        opt = getattr(importlib.import_module(package), name)(tensors, **case.options,
                                                               foreach=True)
        opt.train()
        opt.step()
        return opt.step, f"{package} foreach"
    cls = getattr(torch.optim, case.torch_name, None)
    if cls is None:
        raise RuntimeError(f"torch.optim has no {case.torch_name}")
    for flavour in ("fused", "foreach", "single-tensor"):
        try:
            opt = cls(tensors, **case.options,
                      **({flavour: True} if flavour != "single-tensor" else {}))
            opt.step()
            return opt.step, flavour
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError(f"torch.optim.{case.torch_name} has no step for these arrays here")


def torch_newton_schulz(grad: Any, ns_coefficients: Any, ns_steps: int, eps: float) -> Any:
    """``torch.optim._muon._zeropower_via_newtonschulz`` in the matrix's own dtype (torch's
    runs in bfloat16): put in its place, ``torch.optim.Muon`` computes what fastgd's Muon
    does, with torch's products."""
    import torch

    a, b, c = ns_coefficients
    x = grad.T if grad.size(0) > grad.size(1) else grad
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


#: bitsandbytes' 8-bit optimizer of a row, by row name (the baseline of 8-bit state)
BNB_8BIT = {"sgd": "SGD8bit", "adagrad": "Adagrad8bit", "rmsprop": "RMSprop8bit",
            "adam": "Adam8bit", "adamw": "AdamW8bit"}


def _bnb_stepper(case: Case, params: list[np.ndarray], grads: list[np.ndarray]
                 ) -> Callable[[], Any]:
    """bitsandbytes' 8-bit optimizer of ``case`` (blockwise, its default ``min_8bit_size``)
    on copies of the arrays as torch CPU tensors; ImportError without bitsandbytes,
    RuntimeError when it has no such optimizer."""
    import bitsandbytes as bnb  # noqa: F401 - (ImportError: no baseline)

    name = BNB_8BIT.get(case.name)
    if name is None:
        raise RuntimeError(f"bitsandbytes has no 8-bit {case.name}")
    opt = getattr(bnb.optim, name)(_torch_parameters(params, grads), **case.options)
    opt.step()
    return opt.step


def _optax_transforms() -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    """optax's transformation of a row, by row name, from the row's (checked) options."""
    return {
        "lion": lambda optax, o: optax.lion(o["lr"], b1=o["betas"][0], b2=o["betas"][1],
                                            weight_decay=o["weight_decay"]),
        "adopt": lambda optax, o: optax.contrib.adopt(o["lr"], b1=o["betas"][0],
                                                      b2=o["betas"][1], eps=o["eps"]),
        "ademamix": lambda optax, o: optax.contrib.ademamix(
            o["lr"], b1=o["betas"][0], b2=o["betas"][1], b3=o["betas"][2], alpha=o["alpha"],
            eps=o["eps"], weight_decay=o["weight_decay"]),
        "adan": lambda optax, o: optax.adan(o["lr"], b1=o["betas"][0], b2=o["betas"][1],
                                            b3=o["betas"][2], eps=o["eps"], eps_root=0.0,
                                            weight_decay=o["weight_decay"]),
        "adam": lambda optax, o: optax.adam(o["lr"], b1=o["betas"][0], b2=o["betas"][1],
                                            eps=o["eps"]),
        "adamw": lambda optax, o: optax.adamw(o["lr"], b1=o["betas"][0], b2=o["betas"][1],
                                              eps=o["eps"], weight_decay=o["weight_decay"]),
        "lamb": lambda optax, o: optax.lamb(o["lr"], b1=o["betas"][0], b2=o["betas"][1],
                                            eps=o["eps"], weight_decay=o["weight_decay"]),
        "lars": lambda optax, o: optax.lars(o["lr"], weight_decay=o["weight_decay"],
                                            trust_coefficient=o["trust_coefficient"],
                                            eps=o["eps"], momentum=o["momentum"],
                                            nesterov=o["nesterov"]),
    }


def _optax_stepper(case: Case, params: list[np.ndarray], grads: list[np.ndarray]
                   ) -> Callable[[], Any]:
    """optax's step of ``case`` under ``jax.jit`` with the parameters and optimizer state
    donated (updated in place, as fastgd's), float32 only; ImportError without optax,
    RuntimeError when it has no such optimizer or dtype."""
    import jax
    import optax

    make = _optax_transforms().get(case.name)
    if make is None or params[0].dtype != np.float32:
        raise RuntimeError(f"no optax baseline for {case.name} in {params[0].dtype}")
    transform = make(optax, case.algorithm.check({**case.algorithm.defaults,
                                                  **case.options}))

    def update(p: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = transform.update(g, state, p)
        return optax.apply_updates(p, updates), state

    step = jax.jit(update, donate_argnums=(0, 1))
    arrays = [jax.numpy.asarray(p) for p in params]
    held = [arrays, transform.init(arrays), [jax.numpy.asarray(g) for g in grads]]

    def run() -> None:
        held[0], held[1] = step(held[0], held[1], held[2])
        jax.block_until_ready(held[0])

    run()  # (compiles)
    return run


#: torchao's 8-bit optimizer of a row, by row name
TORCHAO_8BIT = {"adam": "Adam8bit", "adamw": "AdamW8bit"}


def _torchao_stepper(case: Case, params: list[np.ndarray], grads: list[np.ndarray]
                     ) -> tuple[Callable[[], Any], float]:
    """torchao's 8-bit optimizer of ``case`` (blockwise, 256 elements per block) on copies
    of the arrays as torch CPU tensors, and the seconds its first step took (torchao
    compiles its step with ``torch.compile``); ImportError without torchao, RuntimeError
    when it has no such optimizer."""
    import inspect

    import torchao.optim  # (ImportError: no baseline)

    name = TORCHAO_8BIT.get(case.name)
    if name is None:
        raise RuntimeError(f"torchao has no 8-bit {case.name}")
    cls = getattr(torchao.optim, name)
    accepted = inspect.signature(cls).parameters
    opt = cls(_torch_parameters(params, grads),
              **{k: v for k, v in case.options.items() if k in accepted})
    return opt.step, _timed(opt.step)


def _functional_stepper(case: Case, param: np.ndarray, grad: np.ndarray,
                        precision: str = "full") -> Callable[[], None]:
    """The functional API's step of ``case`` over ``param`` (with state arrays of its own,
    at ``precision``), called as a training loop calls it: the arrays in order, the next
    step number by keyword, the options of the case."""
    algorithm = case.algorithm
    options = algorithm.check({**algorithm.defaults, **case.options})
    fills = {s.name: algorithm.initial_value(s.name, options) for s in algorithm.states}
    arrays: list[Any] = [param, grad, *(_state_like(param, algorithm.spec.form(s.name,
                                                                               precision),
                                                    fills[s.name])
                                        if s.name in case.states else None
                                        for s in algorithm.states)]
    while arrays[-1] is None:  # (optional arrays left out, as a user would)
        arrays.pop()
    kwargs = functional.keywords(algorithm, case.options) or {}
    fn = getattr(functional, algorithm.function_name)
    counter = itertools.count(1)
    if algorithm.inputs == ("step",):
        if not kwargs:
            return lambda: fn(*arrays, step=next(counter))
        return lambda: fn(*arrays, step=next(counter), **kwargs)
    names = [s.name for s in algorithm.scalars]
    scalars = algorithm.initial_scalars(options)  # (passed on from step to step)
    if algorithm.inputs == ("step", *names):
        if len(names) == 1:
            def step() -> None:
                scalars[names[0]] = fn(*arrays, step=next(counter), **scalars, **kwargs)
        else:
            def step() -> None:
                scalars.update(zip(names, fn(*arrays, step=next(counter), **scalars, **kwargs),
                                   strict=True))
        return step

    def step() -> None:
        t = next(counter)
        given = {"step": t, "first_step": t == 1, **scalars}
        result = fn(*arrays, **{n: given[n] for n in algorithm.inputs}, **kwargs)
        if names:
            scalars.update(zip(names, (result,) if len(names) == 1 else result, strict=True))

    return step


def many_tensor_sizes(count: int = 161, total: int = 16_000_000, largest: int = 2_400_000,
                      seed: int = 0) -> list[int]:
    """Log-normally distributed tensor sizes, like a ResNet-50's 161 parameter tensors."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=2.0, size=count)
    sizes = np.maximum(1, raw / raw.sum() * total).astype(np.int64)
    sizes = np.minimum(sizes, largest)
    sizes[np.argmax(sizes)] = largest
    return [int(n) for n in sizes]


#: The weight matrices of a transformer block (4096 x 4096, 4096 x 11008 and 11008 x 4096)
#: scaled by 1/4 to fit a small machine: the tensors of ``--many`` for optimizers made for
#: matrices (Muon, whose steps are bound by their matrix products; Adafactor, whose state
#: of matrices is factored).
TRANSFORMER_BLOCK = [(1024, 1024), (1024, 2752), (2752, 1024)]
#: The least speed-up over torch.optim's step of the same name over
#: :data:`TRANSFORMER_BLOCK` (float32)
MATRIX_TARGETS = {"muon": 1.0, "adafactor": 3.0}


def for_matrices(case: Case) -> bool:
    """Whether ``case``'s optimizer is made for matrices (benchmarked on
    :data:`TRANSFORMER_BLOCK`)."""
    return case.algorithm.matrices or bool(case.algorithm.factored)


def matrix_shape(size: int) -> tuple[int, int]:
    """The most nearly square matrix of ``size`` elements (a row of an optimizer of
    matrices at that size)."""
    rows = max(1, math.isqrt(size))
    while size % rows:
        rows -= 1
    return rows, size // rows


def _shape(case: Case, size: int | tuple[int, ...]) -> int | tuple[int, ...]:
    if isinstance(size, tuple) or not case.algorithm.matrices:
        return size
    return matrix_shape(size)


@dataclass
class Result:
    algorithm: str
    dtype: str
    size: int
    tensors: int
    seconds: float
    gbps: float
    roofline_seconds: float
    pct_roofline: float
    numpy_speedup: float | None
    torch_speedup: float | None
    torch_impl: str | None
    #: the functional API's step time over the class step's (one tensor; None otherwise)
    functional_ratio: float | None = None
    #: ``fastgd.torch``'s step time over the class step's, both over the same torch tensors
    #: with their ``.grad`` (None without torch)
    torch_face_ratio: float | None = None
    #: where the step ran: "cpu", or the GPU's name
    device: str = "cpu"
    #: the precision of the optimizer state ("full", "bf16", "8bit")
    state_precision: str = "full"
    #: bitsandbytes' 8-bit optimizer's step time over this one's (8-bit rows, when installed)
    bnb_speedup: float | None = None
    #: torchao's 8-bit optimizer's step time over this one's, and the seconds of its first
    #: step, which compiles it (8-bit Adam and AdamW rows, when installed)
    torchao_speedup: float | None = None
    torchao_compile_seconds: float | None = None
    #: optax's step time (``jax.jit``, donated buffers) over this one's (rows optax has)
    optax_speedup: float | None = None


def _timed(fn: Callable[[], Any], number: int = 1) -> float:
    """Seconds per call of ``fn``, over ``number`` calls in a row."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


#: Pause before each timing block: the worker threads of the previous contender (torch's
#: OpenMP pool, Numba's) spin for a while after their parallel region and would otherwise
#: compete with the next contender for the cores.
_SETTLE = 0.02


def _calls_per_block(fn: Callable[[], Any], block_seconds: float = 0.02) -> int:
    """How many calls make a timing block of about ``block_seconds`` (short steps are timed
    in blocks: one call is too short for the clock, and a block is not disturbed by what
    the previous block left behind, such as torch's spinning worker threads)."""
    return max(1, int(block_seconds / max(_timed(fn), 1e-7)))


def run_case(case: Case, size: int, dtype: Any, repeat: int, baselines: bool = True,
             rng: np.random.Generator | None = None, tensors: list[int] | None = None,
             precision: str = "full") -> Result:
    """Benchmark one (algorithm, size, dtype): fastgd step (with state at ``precision``),
    roofline and baselines.

    With ``tensors`` (a list of sizes), one step over that many arrays (``size`` is ignored);
    the roofline is then the copy kernel over one array of the same total size."""
    rng = rng or np.random.default_rng(0)
    dtype = np.dtype(dtype)
    shapes = [_shape(case, n) for n in tensors or [size]]
    params = [rng.standard_normal(n).astype(dtype) for n in shapes]
    grads = [rng.standard_normal(n).astype(dtype) for n in shapes]
    total = sum(p.size for p in params)
    opt = training_optimizer(case, params, state_precision=precision)
    opt.step(grads)  # compiles (or loads from cache) and allocates state
    if tensors:
        whole = rng.standard_normal(total).astype(dtype)
        spec = case.algorithm.spec
        states = [_state_like(whole, spec.form(s, precision))
                  for s in case.states]
        copy_arrays = [whole, zeros_like(whole)] + [kernel_view(s, "C") for s in states]
    else:
        copy_arrays = [params[0].reshape(-1), grads[0].reshape(-1)] + [
            kernel_view(opt.state[0][s], "C") for s in case.states]
    fns: dict[str, Callable[[], Any]] = {
        "fastgd": lambda: opt.step(grads),
        "roofline": lambda: roofline_step(copy_arrays),
    }
    if not tensors and precision != "8bit":  # (the functional API takes no 8-bit state)
        fns["functional"] = _functional_stepper(case, params[0].copy(), grads[0], precision)
    try:
        fns["fastgd.torch"], fns["on tensors"] = _torch_face_steppers(case, params, grads,
                                                                      precision)
    except ImportError:  # (no torch)
        pass
    torch_impl = None
    numpy_baseline = NUMPY_STEPS.get(case.name)
    if baselines and numpy_baseline is not None:
        copies = [(p.copy(), [zeros_like(p) + 1 for _ in case.states]) for p in params]
        counter = iter(range(1, 1 << 60))

        def numpy_step() -> None:
            t = next(counter)
            for (p, states), g in zip(copies, grads, strict=True):
                numpy_baseline(p, g, states, t)

        fns["numpy"] = numpy_step
    if baselines:
        try:
            fns["torch"], torch_impl = _torch_stepper(case, params, grads)
        except (ImportError, RuntimeError):  # no torch, or no such torch.optim class
            pass
    if baselines and precision == "8bit":
        try:
            fns["bnb"] = _bnb_stepper(case, params, grads)
        except (ImportError, RuntimeError):  # no bitsandbytes, or no such optimizer
            pass
    if baselines and precision == "full":
        try:
            fns["optax"] = _optax_stepper(case, params, grads)
        except (ImportError, RuntimeError):  # no optax, or no such optimizer here
            pass
    compile_seconds = None
    if baselines and precision == "8bit":
        try:
            fns["torchao"], compile_seconds = _torchao_stepper(case, params, grads)
        except (ImportError, RuntimeError):  # no torchao, or no such optimizer
            pass
    for fn in fns.values():
        fn()  # warm-up
    times = interleaved_times(fns, repeat)
    step = times["fastgd"]
    moved = bytes_per_step(case, total, dtype, precision, factored=bool(
        case.algorithm.factored) and all(p.ndim >= 2 for p in params))
    # (the copy kernel's bandwidth over the bytes the step moves, where they differ: a
    # two-phase step's passes move more than one pass over its arrays)
    copied = sum(a.nbytes for a in copy_arrays) + sum(a.nbytes for a in copy_arrays[2:]) + (
        copy_arrays[0].nbytes)
    times["roofline"] = times["roofline"] * (moved / copied)

    def ratio(key: str, over: str = "fastgd") -> float | None:
        # Per repetition, so that both sides of a ratio see the same state of the machine.
        return float(np.median(times[key] / times[over])) if key in times else None

    seconds = float(np.median(step))
    return Result(
        algorithm=case.name, dtype=dtype.name, size=total, tensors=len(shapes),
        seconds=seconds, gbps=moved / seconds / 1e9, state_precision=precision,
        roofline_seconds=float(np.median(times["roofline"])),
        pct_roofline=100.0 * ratio("roofline"), numpy_speedup=ratio("numpy"),
        torch_speedup=ratio("torch"), torch_impl=torch_impl,
        functional_ratio=ratio("functional"), torch_face_ratio=ratio("fastgd.torch", "on tensors"),
        bnb_speedup=ratio("bnb"),
        torchao_speedup=ratio("torchao"), torchao_compile_seconds=compile_seconds,
        optax_speedup=ratio("optax"))


def interleaved_times(fns: dict[str, Callable[[], Any]], repeat: int,
                      settle: float = _SETTLE) -> dict[str, np.ndarray]:
    """Seconds per call of each function, ``repeat`` times, interleaved.

    The memory bandwidth of a shared machine drifts by tens of percent over seconds, so the
    contenders take turns: repetition ``r`` times each of them once, in an order that is
    reversed on every other repetition (a linear drift then hits all alike), and ratios are
    taken within a repetition (``settle``: seconds of rest before each timing).
    """
    numbers = {key: _calls_per_block(fn) for key, fn in fns.items()}
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeat):
        for key in keys if r % 2 == 0 else keys[::-1]:
            time.sleep(settle)
            times[key].append(_timed(fns[key], numbers[key]))
    return {k: np.array(v) for k, v in times.items()}


def startup_seconds(repeat: int = 3) -> float:
    """Seconds for ``import fastgd`` and a first Adam step in a new process, with the kernel
    cache warm (the best of ``repeat`` runs, after one run that fills the cache)."""
    import subprocess
    import sys

    code = ("import time; t = time.perf_counter(); import numpy as np, fastgd; "
            "p = np.zeros(1000, np.float32); fastgd.Adam([p]).step([p + 1]); "
            "print(time.perf_counter() - t)")
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True,
                                 capture_output=True, text=True).stdout)
            for _ in range(repeat + 1)]
    return min(runs[1:])


def combinations(algorithms: Iterable[str], sizes: Iterable[int], dtypes: Iterable[str],
                 many: bool, precisions: Iterable[str]
                 ) -> list[tuple[str, int, str, list[int] | None, str]]:
    """The cases to run, ``(algorithm, size, dtype, tensors, precision)``: every
    combination (``tensors``: None, or with ``many`` the sizes of
    :func:`many_tensor_sizes`, or for an optimizer of matrices the shapes of
    :data:`TRANSFORMER_BLOCK`), low-precision state with float32 parameters only (and not
    8-bit state for two-phase steps, which refuse it)."""
    return [(a, s, d, tensors, p) for a in algorithms for p in precisions for d in dtypes
            for s, tensors in [(s, None) for s in sizes] + ([(0, (
                TRANSFORMER_BLOCK if for_matrices(CASES[a]) else many_tensor_sizes()))]
                if many else []) if (p == "full" or d == "float32")
            and not (p == "8bit" and CASES[a].algorithm.two_phase)]


def run(algorithms: Iterable[str], sizes: Iterable[int], dtypes: Iterable[str], repeat: int,
        baselines: bool = True, progress: bool = True, many: bool = False,
        precisions: Iterable[str] = ("full",)) -> list[Result]:
    """Benchmark every combination, with a progress bar; ``many`` adds, per algorithm and
    dtype, one step over the 161 tensors of :func:`many_tensor_sizes`. Low-precision state
    (``precisions`` other than ``"full"``) is benchmarked with float32 parameters only."""
    from tqdm import tqdm

    results = []
    for name, size, dtype, tensors, precision in tqdm(
            combinations(algorithms, sizes, dtypes, many, precisions), desc="fastgd bench",
            disable=not progress, unit="case"):
        results.append(run_case(CASES[name], size, dtype, repeat, baselines, tensors=tensors,
                                precision=precision))
    return results


def format_table(results: list[Result]) -> str:
    """A plain-text table of results (the algorithm column names the GPU of GPU rows)."""
    header = ("algorithm", "dtype", "size", "time/step", "GB/s", "% roofline", "vs numpy",
              "vs torch", "vs optax", "functional", "fastgd.torch", "vs bnb 8-bit",
              "vs torchao 8-bit")
    rows = [header]
    for r in results:
        size = str(r.size) if r.tensors == 1 else f"{r.size} in {r.tensors}"
        name = _label(r) if r.device == "cpu" else f"{_label(r)} ({r.device})"
        rows.append((name, r.dtype, size, _fmt_time(r.seconds), f"{r.gbps:.1f}",
                     f"{r.pct_roofline:.0f}%", _ratio(r.numpy_speedup),
                     _ratio(r.torch_speedup) + (f" ({r.torch_impl})" if r.torch_impl else ""),
                     _ratio(r.optax_speedup), _ratio(r.functional_ratio),
                     _ratio(r.torch_face_ratio), _ratio(r.bnb_speedup), _torchao(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(results: list[Result], machine: dict[str, Any],
                    startup: float | None = None) -> str:
    """The results as a Markdown report: the table, then each target met or missed (the
    CPU's targets for CPU rows, the GPU's for GPU rows)."""
    lines = [f"Machine: {machine.get('processor') or machine.get('platform')}, "
             f"{machine.get('threads')} threads; numba {machine.get('numba')}, "
             f"numpy {machine.get('numpy')}, Python {machine.get('python')}.", "",
             "| device | algorithm | dtype | size | time/step | GB/s | % roofline | vs NumPy "
             "| vs torch | vs optax | functional | fastgd.torch | vs bnb 8-bit "
             "| vs torchao 8-bit |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for r in results:
        size = str(r.size) if r.tensors == 1 else f"{r.size} in {r.tensors} tensors"
        torch = _ratio(r.torch_speedup) + (f" ({r.torch_impl})" if r.torch_impl else "")
        lines.append(f"| {r.device} | {_label(r)} | {r.dtype} | {size} | "
                     f"{_fmt_time(r.seconds)} | {r.gbps:.1f} | {r.pct_roofline:.0f}% | "
                     f"{_ratio(r.numpy_speedup)} | {torch} | {_ratio(r.optax_speedup)} | "
                     f"{_ratio(r.functional_ratio)} | {_ratio(r.torch_face_ratio)} | "
                     f"{_ratio(r.bnb_speedup)} | {_torchao(r)} |")
    lines += ["", "(functional: the functional API's step time over the class step's; "
              "fastgd.torch: the step time of the torch.optim.Optimizer class over the "
              "class step's, both over the same torch tensors; "
              "torchao: its step, and in brackets the seconds its first step took to "
              "compile; on a GPU the roofline is a device-to-device copy.)", "", "Targets:",
              ""]
    lines += _cpu_targets([r for r in results if r.device == "cpu"], startup)
    lines += _gpu_targets([r for r in results if r.device != "cpu"])
    return "\n".join(lines) + "\n"


def _label(r: Result) -> str:
    """The algorithm of a row, with its state precision when not full."""
    return r.algorithm if r.state_precision == "full" else (
        f"{r.algorithm} [{r.state_precision} state]")


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


#: the speed-up over optax's jit-compiled step each row must reach (2**24 float32)
OPTAX_TARGETS = {"lion": 2.5, "adopt": 2.5, "adan": 2.5, "ademamix": 1.0, "lamb": 4.0}


def _torchao(r: Result) -> str:
    """torchao's column: the ratio, and its compile time."""
    if r.torchao_speedup is None:
        return "-"
    return f"{r.torchao_speedup:.2f}x ({r.torchao_compile_seconds:.0f} s compile)"


def _cpu_targets(results: list[Result], startup: float | None) -> list[str]:
    lines = []
    # (Muon's step is bound by its products, not memory: no roofline or small-step targets)
    products = {r.algorithm for r in results if CASES[r.algorithm].algorithm.matrices}
    for r in (r for r in results if r.size >= 2**24 and r.tensors == 1
              and r.algorithm not in products):
        # low-precision state: >= 85% of the roofline of the bytes it moves, and Adam(W) at
        # least 1.3x torch's fused float32 step; full precision: >= 90%, at least torch's
        low = r.state_precision != "full"
        least = 1.3 if low and r.algorithm in ("adam", "adamw") else 1.0
        least = TORCH_PACKAGE_TARGETS.get(r.algorithm, least)
        baseline = TORCH_PACKAGES.get(r.algorithm, ("torch",))[0]
        ok_torch = r.torch_speedup is None or r.torch_speedup >= least
        if r.state_precision == "8bit":  # (8-bit AdamW: 1.5x torch's fused, 20x bnb's)
            least = 1.5 if r.algorithm == "adamw" else 1.0
            ok_torch = r.torch_speedup is None or r.torch_speedup >= least
        # (two passes, LAMB and LARS: >= 80% of the roofline of the bytes of both)
        wall = 85 if low else 80 if CASES[r.algorithm].algorithm.two_phase else 90
        lines.append(f"- {_label(r)} {r.dtype} 2**24: {r.pct_roofline:.0f}% of roofline "
                     f"({_verdict(r.pct_roofline >= wall)} >= {wall}%), "
                     f"{_ratio(r.torch_speedup)} {baseline} "
                     f"({_verdict(ok_torch)} >= {least}x)"
                     + (f", {_ratio(r.bnb_speedup)} bitsandbytes 8-bit "
                        f"({_verdict(r.bnb_speedup >= 20)} >= 20x)"
                        if r.bnb_speedup is not None and r.algorithm == "adamw" else "")
                     + (f", {_ratio(r.optax_speedup)} optax "
                        f"({_verdict(r.optax_speedup >= OPTAX_TARGETS[r.algorithm])} >= "
                        f"{OPTAX_TARGETS[r.algorithm]}x)"
                        if r.optax_speedup is not None and r.algorithm in OPTAX_TARGETS
                        else ""))
    full = {(r.algorithm, r.dtype, r.size, r.tensors): r for r in results
            if r.state_precision == "full"}
    for r in (r for r in results if r.state_precision == "8bit" and r.algorithm in (
            "sgd", "rmsprop", "adagrad") and r.size >= 2**24):
        base = full.get((r.algorithm, r.dtype, r.size, r.tensors))
        if base is not None:
            ok = base.seconds >= 1.3 * r.seconds
            lines.append(f"- {_label(r)} {r.dtype} 2**24: {base.seconds / r.seconds:.2f}x "
                         f"fastgd's full-precision step ({_verdict(ok)} >= 1.3x)")
    for r in (r for r in results if r.size <= 1000 and r.tensors == 1
              and r.algorithm not in products):
        if r.torch_speedup is not None and r.algorithm not in TORCH_PACKAGES:
            lines.append(f"- {r.algorithm} {r.dtype} {r.size}: class step "
                         f"{1 / r.torch_speedup:.2f} of torch's "
                         f"({_verdict(r.torch_speedup >= 4)} <= 0.25)")
        if r.functional_ratio is not None:
            lines.append(f"- {r.algorithm} {r.dtype} {r.size}: functional call "
                         f"{r.functional_ratio:.2f} of the class step's "
                         f"({_verdict(r.functional_ratio <= 1)} <= 1)")
    for r in (r for r in results if r.torch_face_ratio is not None
              and (r.size >= 2**24 or r.tensors > 1)):
        what = f"{r.tensors} tensors" if r.tensors > 1 else "2**24"
        lines.append(f"- {_label(r)} {r.dtype} {what}: fastgd.torch step "
                     f"{r.torch_face_ratio:.2f} of the NumPy face's on the same tensors "
                     f"({_verdict(r.torch_face_ratio <= 1.05)} <= 1.05)")
    for r in (r for r in results if r.tensors > 1 and r.torch_speedup is not None):
        least = MATRIX_TARGETS.get(r.algorithm, 1.2)
        lines.append(f"- {r.algorithm} {r.dtype}, {r.tensors} tensors: "
                     f"{_ratio(r.torch_speedup)} torch ({_verdict(r.torch_speedup >= least)} "
                     f">= {least}x)")
    if startup is not None:
        lines.append(f"- import + first Adam step, new process, warm cache: {startup:.2f} s "
                     f"({_verdict(startup < 1)} < 1 s)")
    return lines


def _gpu_targets(results: list[Result]) -> list[str]:
    """The GPU's targets: Adam at >= 2**26 elements at >= 85% of a device-to-device copy and
    at least torch's fused step; the many-tensor step at least torch's; every row at 2**26 or
    more below 80% of the copy named."""
    lines = []
    for r in results:
        big = r.size >= 2**26 and r.tensors == 1
        if big and r.algorithm == "adam":
            ok_torch = r.torch_speedup is None or r.torch_speedup >= 1
            lines.append(f"- GPU adam {r.dtype} {r.size}: {r.pct_roofline:.0f}% of the copy "
                         f"({_verdict(r.pct_roofline >= 85)} >= 85%), "
                         f"{_ratio(r.torch_speedup)} torch ({_verdict(ok_torch)} >= 1x)")
        elif big and r.pct_roofline < 80:
            lines.append(f"- GPU {r.algorithm} {r.dtype} {r.size}: {r.pct_roofline:.0f}% of "
                         "the copy (below 80%)")
        if r.tensors > 1 and r.torch_speedup is not None:
            lines.append(f"- GPU {r.algorithm} {r.dtype}, {r.tensors} tensors: "
                         f"{_ratio(r.torch_speedup)} torch "
                         f"({_verdict(r.torch_speedup >= 1)} >= 1x)")
    return lines


def _fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def as_records(results: list[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
