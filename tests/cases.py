"""The test table: every test case is drawn from here (as torch's ``optim_db`` does).

It pairs each algorithm of fastgd's registry (:data:`fastgd.algorithms.ALGORITHMS`) with its
independent NumPy reference (:data:`reference.REFERENCES`) and derives the cases from the
algorithm's declaration: the option matrix (every valid combination of its *switches*:
options that turn a part of the rule on), random valid hyperparameters drawn from each
hyperparameter's typical range, invalid ones from its domain (and the reference's own list of
invalid combinations), and calls of the functional API built from its signature. An algorithm
added to the registry is covered by every test that iterates :data:`NAMES`;
``test_table.py`` fails when it lacks a reference or a case.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np
from reference import REFERENCES

import fastgd
from fastgd import functional as F
from fastgd.algorithms import ALGORITHMS, Algorithm, Hyper, Uniform, factor_shapes
from fastgd.hyperparams import Choice, Flag, Parts, Real, Steps

#: Every algorithm (class names), in registry order.
ALL_NAMES = list(ALGORITHMS)
#: Those whose parameters may have any shape: the generic tests run them on vectors and
#: arrays of every size and layout (Muon, for matrices only, has tests of its own).
NAMES = [name for name in ALL_NAMES if not ALGORITHMS[name].matrices]
NAN, INF = math.nan, math.inf


def algorithm(name: str) -> Algorithm:
    return ALGORITHMS[name]


def optimizer_class(name: str) -> type[fastgd.Optimizer]:
    """``name``'s class; for Schedule-Free ones (which start in eval mode, where a step is
    an error) a subclass whose new optimizers are put in train mode, so that every test
    that trains can make it the same way."""
    cls = getattr(fastgd, name)
    return _in_train_mode(cls) if issubclass(cls, fastgd.ScheduleFreeOptimizer) else cls


@functools.cache
def _in_train_mode(cls: type[fastgd.ScheduleFreeOptimizer]) -> type[fastgd.Optimizer]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        self.train()

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


def functional(name: str) -> Any:
    return getattr(F, ALGORITHMS[name].function_name)


def constructor_hypers(name: str) -> list[Hyper]:
    """The hyperparameters the class takes (fixed ones are not arguments)."""
    return list(ALGORITHMS[name].hyperparameters)


# -- the option matrix ---------------------------------------------------------------------------

def switches(name: str) -> tuple[str, ...]:
    """The options that turn a part of ``name``'s rule on (non-zero or true)."""
    return tuple(h.name for h in constructor_hypers(name) if h.switch)


def option_cases(name: str) -> list[tuple[str, ...]]:
    """Every valid combination of ``name``'s switches (as tuples of those on)."""
    cases = []
    rng = np.random.default_rng(0)
    options = switches(name)
    for bits in itertools.product((False, True), repeat=len(options)):
        on = tuple(o for o, b in zip(options, bits, strict=True) if b)
        try:
            ALGORITHMS[name].check({**ALGORITHMS[name].defaults,
                                    **random_hyperparameters(name, on, rng)})
        except ValueError:  # a combination the algorithm refuses (nesterov with dampening)
            continue
        cases.append(on)
    return cases


def full_case(name: str) -> tuple[str, ...]:
    """The valid option combination with the most switches on."""
    return max(option_cases(name), key=len)


def draw(typical: Uniform, rng: np.random.Generator) -> float:
    if typical.log:
        return float(np.exp(rng.uniform(np.log(typical.low), np.log(typical.high))))
    return float(rng.uniform(typical.low, typical.high))


def random_hyperparameters(name: str, on: tuple[str, ...] | set[str],
                           rng: np.random.Generator) -> dict[str, Any]:
    """Random valid, non-default constructor kwargs (torch.optim names) with the switches
    ``on`` turned on and the others off (0 or False)."""
    hp: dict[str, Any] = {}
    for h in constructor_hypers(name):
        if isinstance(h.domain, Flag):
            hp[h.name] = h.name in on
        elif isinstance(h.domain, Choice):
            hp[h.name] = h.domain.values[int(rng.integers(len(h.domain.values)))]
        elif isinstance(h.domain, Steps):  # (a warmup: None or 0 when off, a number on)
            hp[h.name] = int(round(draw(h.typical, rng))) if h.name in on else h.domain.off
        elif h.switch and h.name not in on:
            hp[h.name] = 0.0
        elif isinstance(h.typical, tuple):
            hp[h.name] = tuple(draw(t, rng) for t in h.typical)
        else:
            hp[h.name] = draw(h.typical, rng)
    if hp.get("weight_decay"):
        # A power of two: then ``g + wd * p`` is one correctly rounded float32 operation, so
        # a float32 run and the float64 reference see the same sign of an L2-decayed gradient
        # that nearly cancels (the first Adam/Adagrad/RMSprop step is sign(g) * lr, so a sign
        # flip in float32 would be a real difference that no tolerance covers).
        hp["weight_decay"] = float(2.0 ** np.round(np.log2(hp["weight_decay"])))
    return hp


def example(name: str, seed: int = 0) -> dict[str, Any]:
    """Fixed random hyperparameters of ``name`` with :func:`full_case`'s switches on."""
    return random_hyperparameters(name, full_case(name), np.random.default_rng(seed))


# -- invalid hyperparameters ---------------------------------------------------------------------

def _bad_reals(domain: Real) -> list[Any]:
    values: list[Any] = [NAN, INF, -INF, "0.5", True, [0.5], 1 + 1j, object()]
    if not domain.optional:
        values.append(None)
    if math.isfinite(domain.low):
        values.append(domain.low if domain.low_open else domain.low - 0.5)
    if math.isfinite(domain.high):
        values.append(domain.high if domain.high_open else domain.high + 0.5)
    return values


def bad_hyperparameters(name: str) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """Invalid constructor kwargs of ``name``, each with the names its error must mention:
    every value outside each hyperparameter's domain, and the reference's list of invalid
    combinations."""
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for h in constructor_hypers(name):
        domain = h.domain
        if isinstance(domain, Flag):
            cases += [({h.name: bad}, (h.name,)) for bad in ("yes", None, 0.5, [True])]
        elif isinstance(domain, Choice):
            cases += [({h.name: bad}, (h.name,)) for bad in ("other", 1, 0.5, True, ["a"])
                      if bad not in domain.values]
        elif isinstance(domain, Steps):
            cases += [({h.name: bad}, (h.name,)) for bad in (
                domain.low - 1, -3, 2.5, "10", True, *(() if domain.optional else (None,)),
                *(() if domain.high is None else (domain.high,)))]
        elif isinstance(domain, Parts):
            good = tuple(h.default)
            cases += [({h.name: bad}, (h.name,)) for bad in (good[0], good + good[:1], "ab")]
            if domain.ordered:
                cases.append(({h.name: good[::-1]}, (h.name,)))
            for j, part in enumerate(domain.parts):
                part_domain = domain.domains[j]
                for bad in _bad_reals(part_domain):
                    value = list(good)
                    value[j] = bad
                    cases.append(({h.name: tuple(value)}, (part, h.name)))
        else:
            cases += [({h.name: bad}, (h.name,)) for bad in _bad_reals(domain)]
    cases += [(dict(options), names) for options, names in REFERENCES[name].invalid]
    return cases


def functional_overrides(name: str, options: dict[str, Any], strict: bool = True
                         ) -> dict[str, Any] | None:
    """Constructor kwargs as functional keyword arguments (:func:`fastgd.functional.keywords`):
    None (``strict``) when the functional API has no such arguments."""
    return F.keywords(ALGORITHMS[name], options, strict=strict)


# -- the functional API ------------------------------------------------------------------------

def state_names(name: str, hp: dict[str, Any], ndim: int = 1) -> list[str]:
    """The state arrays a step of ``name`` with constructor kwargs ``hp`` uses (of a
    parameter of ``ndim`` dimensions)."""
    a = ALGORITHMS[name]
    options = a.check({**a.defaults, **hp})
    return list(a.arrays(a.present(options), ndim))


def state_shape(name: str, state: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of state array ``state`` of a parameter of ``shape`` (Adafactor's factors
    have their own)."""
    if state in ALGORITHMS[name].factored:
        return factor_shapes(shape)[state]
    return shape


def state_fill(name: str, state: str, hp: dict[str, Any], param: np.ndarray) -> Any:
    """The value a new state array starts with (a number, or a copy of ``param``)."""
    a = ALGORITHMS[name]
    value = a.initial_value(state, a.check({**a.defaults, **hp}))
    return param.copy() if value is None else value


def initial_scalars(name: str, hp: dict[str, Any]) -> dict[str, float]:
    a = ALGORITHMS[name]
    return a.initial_scalars(a.check({**a.defaults, **hp}))


def call_functional(name: str, param: Any, grad: Any, states: dict[str, Any],
                    hp: dict[str, Any], t: int, scalars: dict[str, float] | None = None,
                    **overrides: Any) -> dict[str, float]:
    """One functional step of ``name`` with constructor kwargs ``hp`` at step ``t``
    (``first_step`` on ``t == 1``); returns the new scalars by name."""
    return F.call(ALGORITHMS[name], param, grad, states, hp, step=t, scalars=scalars,
                  **overrides)


def relative(a: Any, b: Any) -> float:
    """The largest difference of ``a`` from ``b`` relative to ``b``'s largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) if b.size else 0.0


def run_against_reference(name: str, options: dict[str, Any], shape: tuple[int, ...],
                          dtype: Any, order: str, rng: np.random.Generator, steps: int = 12
                          ) -> tuple[np.ndarray, Any, Any, np.ndarray]:
    """``steps`` class steps of ``name`` on one array of ``shape``, ``dtype`` and memory
    ``order`` and the same on its reference; ``(param, optimizer, reference, expected)``."""
    p = np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)
    ref, expected = REFERENCES[name](**options), p.astype(np.float64)
    opt = optimizer_class(name)([p], **options)
    for _ in range(steps):
        g = np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)
        opt.step([g])
        expected = ref.step(expected, g)
    return p, opt, ref, expected


def check_clipping_skip_and_schedule(name: str, shapes: list[tuple[int, ...]],
                                     rng: np.random.Generator) -> None:
    """Five steps of ``name`` over arrays of ``shapes`` with a cosine learning rate and
    ``max_norm`` equal its reference's on the clipped gradients; then a step with
    ``skip_if_nonfinite`` and a non-finite gradient changes nothing."""
    params = [rng.standard_normal(s) for s in shapes]
    expected = [p.copy() for p in params]
    lr = fastgd.schedules.cosine(0.05, 10)
    ours = optimizer_class(name)(params, lr=lr)
    refs = [REFERENCES[name](lr=lr(1)) for _ in shapes]
    for t in range(1, 6):
        grads = [rng.standard_normal(s) for s in shapes]
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        info = ours.step(grads, max_norm=0.5)
        assert math.isclose(info.grad_norm, norm, rel_tol=1e-12)
        scale = min(1.0, 0.5 / (norm + 1e-6))
        for i, ref in enumerate(refs):
            ref.hp["lr"] = lr(t)
            expected[i] = ref.step(expected[i], grads[i] * scale)
    for p, e in zip(params, expected, strict=True):
        assert relative(p, e) <= 1e-10
    before = [p.copy() for p in params]
    assert ours.step([np.full(s, np.nan) for s in shapes], skip_if_nonfinite=True).skipped
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p, b)
    assert all(ours.state[i]["step"] == 5 for i in range(len(shapes)))


class FunctionalRunner:
    """Drives ``fastgd.functional`` with explicit state arrays, like an optimizer would.
    ``offset`` places each state array at a random element offset in a larger buffer (so
    that alignment must not matter)."""

    def __init__(self, name: str, hp: dict[str, Any], param: np.ndarray,
                 rng: np.random.Generator | None = None, offset: bool = True) -> None:
        self.name, self.hp, self.param, self.t = name, dict(hp), param, 0
        self.scalars = initial_scalars(name, hp)
        order = "F" if param.flags.f_contiguous and not param.flags.c_contiguous else "C"
        rng = rng or np.random.default_rng(0)
        self.states = {}
        for state in state_names(name, hp, param.ndim):
            shape = state_shape(name, state, param.shape)
            start = int(rng.integers(4)) if offset else 0
            buffer = np.empty(math.prod(shape) + start, dtype=param.dtype)
            arr = buffer[start:].reshape(shape, order=order)
            arr[...] = state_fill(name, state, hp, param) if shape == param.shape else 0.0
            self.states[state] = arr

    def step(self, grad: Any, **overrides: Any) -> None:
        self.t += 1
        self.scalars = call_functional(self.name, self.param, grad, self.states, self.hp,
                                       self.t, self.scalars, **overrides) or self.scalars
