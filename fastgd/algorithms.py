"""The algorithm table: every optimizer declared once.

An :class:`Algorithm` names its per-element rule (:mod:`fastgd.rules`), its state arrays,
its hyperparameters (torch.optim's names, defaults and valid ranges, see
:mod:`fastgd.hyperparams`) and its ``update`` function, which computes the rule's per-step
coefficients and flags on the host, *by name*: it returns a dict keyed by the rule's argument
names (and by the names of the per-parameter scalars it advances, such as NAdam's
``mu_product``). The names are checked against the rule's signature when this module is
imported. The functional API, the optimizer classes, hyperparameter validation, the benchmark
rows, the demo entries and the test cases are all derived from these declarations.

``update`` reads the hyperparameters it needs as positional parameters and, as keyword-only
parameters, what it needs of the step: ``step`` (the 1-based number ``t`` of the step being
taken), ``first_step`` (the parameter's state arrays are new: SGD's first momentum step) and
the per-parameter :class:`Scalar` states.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import ml_dtypes
import numpy as np

from fastgd import orthogonalize, rules
from fastgd.hyperparams import (
    BETA,
    FINITE,
    NON_NEGATIVE,
    UNIT,
    Choice,
    Domain,
    Flag,
    Parts,
    Real,
    Steps,
)

#: The step-dependent inputs an ``update`` function may ask for (besides its scalars).
STEP_INPUTS = ("step", "first_step")


@dataclass(frozen=True)
class Uniform:
    """Typical values drawn uniformly from ``[low, high]`` (``log``: log-uniformly)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: its name and default (torch.optim's), its valid values, and the
    range of typical values (tests and tools draw from it). A ``switch`` turns a part of the
    rule on when non-zero (``momentum``, ``weight_decay``) or true (``nesterov``); tests
    cover both settings. ``keyword_only`` ones follow ``*`` in the class signature."""

    name: str
    default: Any
    domain: Domain
    typical: Uniform | tuple[Uniform, Uniform] | None = None
    switch: bool = False
    keyword_only: bool = False


#: ``State.fill`` of a state that starts as a copy of its parameter
COPY_OF_PARAM = "param"


@dataclass(frozen=True)
class State:
    """A state array, one element per parameter element. An optional one exists when the
    hyperparameter ``when`` passes ``test`` (``momentum_buffer`` when ``momentum != 0``); the
    functional API then requires it, unless ``implied``: there the array's presence sets
    the (boolean) hyperparameter (Adam's ``max_exp_avg_sq`` and ``amsgrad``). New arrays are
    filled with 0, or with the value of the hyperparameter ``fill``, or (``fill="param"``,
    :data:`COPY_OF_PARAM`) are a copy of the parameter (Schedule-Free's ``z``).

    ``eight_bit`` says what the state is with ``state_precision="8bit"`` (every state
    declares it): ``"signed"`` or ``"unsigned"``, blockwise 8-bit codes of bitsandbytes'
    signed or unsigned dynamic map (:mod:`fastgd.quantization`), or ``"full"``: kept at
    full precision, for a reason given in ``why``. ``bf16=False``: also kept at full
    precision with ``state_precision="bf16"`` (a point of the parameter sequence, such as
    Schedule-Free's ``z``, which is as precise as the parameter or useless)."""

    name: str
    when: str | None = None
    test: Callable[[Any], bool] = bool
    fill: str | None = None
    implied: bool = False
    eight_bit: str = ""
    why: str = ""
    bf16: bool = True


@dataclass(frozen=True)
class Scalar:
    """A per-parameter number kept in the optimizer state and advanced by ``update``
    (NAdam's ``mu_product``); it starts at ``initial`` (a number, or the value of the
    hyperparameter of that name)."""

    name: str
    initial: float | str
    domain: Real


@dataclass(frozen=True)
class RuleSpec:
    """The kernel-level signature of a rule: ``rule(p, g, *states, *coefficients, *flags,
    *has_<optional state>)``; coefficients are cast to the array dtype, flags are runtime
    booleans, and each optional state's ``has_`` flag is a literal of the kernel variant."""

    name: str
    rule: Any
    states: tuple[str, ...]
    coefficients: tuple[str, ...]
    flags: tuple[str, ...]
    optional: tuple[str, ...] = ()
    #: per state, its 8-bit form: "signed", "unsigned" or "full" (see :class:`State`)
    eight_bit: tuple[str, ...] = ()
    #: per state, whether it is kept in bfloat16 with bfloat16 state (see :class:`State`)
    bf16: tuple[bool, ...] = ()
    #: states the rule reads but does not write, and states it does not touch (its kernels
    #: take no array for them: the rule gets a placeholder, its result is dropped)
    read_only: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    #: per-element values the rule returns after its states, each summed over the tensor
    #: by the kernels (a two-phase step's first pass, :class:`TwoPhase`, which leaves the
    #: parameter as it is: its kernels do not store it)
    sums: tuple[str, ...] = ()
    #: coefficients that differ per tensor (a two-phase step's second pass: those of
    #: :attr:`TwoPhase.scale`); its many-tensor kernels take them per tensor
    per_tensor: tuple[str, ...] = ()

    def form(self, state: str, precision: str) -> str:
        """The form of ``state`` at an (effective) state precision: ``"full"``, ``"bf16"``
        or ``"8bit"`` (a state that is not quantized stays at full precision under
        ``"8bit"``, one declared ``bf16=False`` under both)."""
        i = self.states.index(state)
        if (self.bf16 and not self.bf16[i]) or (precision == "8bit"
                                                 and self.eight_bit[i] == "full"):
            return "full"
        return precision

    def quantized(self, state: str) -> str:
        """``"signed"`` or ``"unsigned"``: the map of ``state`` with 8-bit state; ``""``:
        it stays at full precision."""
        form = self.eight_bit[self.states.index(state)]
        return "" if form == "full" else form

    def variants(self) -> list[tuple[str, ...]]:
        """Every combination of present optional states (as tuples of state names)."""
        combos: list[tuple[str, ...]] = [()]
        for state in self.optional:
            combos += [c + (state,) for c in combos]
        return combos

    def present_states(self, present_optional: tuple[str, ...]) -> tuple[str, ...]:
        """The state arrays a variant takes, in rule order."""
        return tuple(s for s in self.states if (s not in self.optional or s in present_optional)
                     and s not in self.unused)

    def kernel_name(self, present_optional: tuple[str, ...], target: str) -> str:
        return "_".join((self.name, *present_optional, target))


@dataclass(frozen=True)
class TwoPhase:
    """A step in two passes over each tensor, for rules that need per-tensor reductions
    (LAMB's and LARS's trust ratios, Muon's orthogonalised direction). Both passes' rules
    take and return every state, like any rule. The algorithm's ``rule`` is the first pass:
    it leaves the states of ``first_unused`` alone (its kernel has no array for them) and
    returns, after the states, one value per element for each name of ``sums``, which the
    kernel sums over the tensor in the same pass. ``scale(sums, values, shape)`` turns a
    tensor's sums (by name), the step's values (what ``update`` returned) and the tensor's
    shape into the per-tensor coefficients of ``rule``, the second pass, which only reads
    the states of ``second_reads`` and leaves those of ``second_unused`` alone;
    ``reads_grad``: whether it uses ``g`` (if not, its kernel reads the parameter in its
    place, which adds no memory traffic).

    ``direction``: for steps whose second pass applies a function of the whole matrix
    (Muon), ``direction(matrices, sums, values)`` computes it between the passes with the
    arrays' own library (:mod:`fastgd.orthogonalize`) from the parameter's matrices by name
    (``grad`` as the kernels read it, the first pass's states) in the dtype of the
    computation; the second pass reads it in ``g``'s place."""

    sums: tuple[str, ...]
    rule: Any
    scale: Callable[[Mapping[str, float], Mapping[str, Any], tuple[int, ...]],
                    dict[str, float]]
    first_unused: tuple[str, ...] = ()
    second_reads: tuple[str, ...] = ()
    second_unused: tuple[str, ...] = ()
    reads_grad: bool = True
    direction: Callable[[Mapping[str, Any], Mapping[str, float], Mapping[str, Any]], Any
                        ] | None = None
    #: the step's values that depend on the parameter's dtype (Adafactor's ``eps1=None``:
    #: the dtype's machine epsilon), from the values and that dtype
    for_dtype: Callable[[Mapping[str, Any], np.dtype], dict[str, Any]] | None = None


@dataclass(frozen=True, eq=False)
class Algorithm:
    """One optimizer, declared once (see the module docstring).

    ``fixed`` hyperparameters have a value that the class does not take as an argument
    (AdamW's ``decoupled_weight_decay``); ``constraint`` checks relations between
    hyperparameters; ``math`` is the update in plain notation, shown in the docstrings;
    ``bench`` the options of the benchmark row; ``demo`` the entries of ``fastgd demo``
    (name -> options and learning rate) and ``shown`` the hyperparameters their labels show.
    ``schedule_free``: for Schedule-Free methods, the ``beta`` of their points (from checked
    options): the parameter holds ``y = beta x + (1 - beta) z`` while training and ``x``
    after ``.eval()`` (the class gets ``train()`` and ``eval()``). ``matrices``: its
    parameters must be 2-D (Muon). ``factored``: the states kept, instead of the others,
    for parameters of two or more dimensions, with shapes of their own (Adafactor's row and
    column means, :func:`factor_shapes`; such parameters are stepped by
    :mod:`fastgd.factored`).
    """

    name: str
    summary: str
    math: str
    source: str
    rule: Any
    states: tuple[State, ...]
    hyperparameters: tuple[Hyper, ...]
    update: Callable[..., dict[str, Any]]
    scalars: tuple[Scalar, ...] = ()
    constraint: Callable[[Mapping[str, Any]], None] | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    bench: Mapping[str, Any] = field(default_factory=dict)
    demo: Mapping[str, tuple[Mapping[str, Any], float]] = field(default_factory=dict)
    shown: tuple[str, ...] = ()
    schedule_free: Callable[[Mapping[str, Any]], float] | None = None
    two_phase: TwoPhase | None = None
    matrices: bool = False
    factored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.spec  # noqa: B018 - derive (and so check) the kernel signature at import
        self.second_spec  # noqa: B018

    # -- derived facts ----------------------------------------------------------------------
    @property
    def function_name(self) -> str:
        """Name of the functional API's function (``fastgd.functional.adamw``)."""
        return self.name.lower()

    @cached_property
    def hyper(self) -> dict[str, Hyper]:
        return {h.name: h for h in self.hyperparameters}

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter's default, fixed ones included (a group's options)."""
        return {**{h.name: h.default for h in self.hyperparameters}, **self.fixed}

    @cached_property
    def optional(self) -> tuple[State, ...]:
        return tuple(s for s in self.states if s.when is not None)

    @cached_property
    def reads(self) -> tuple[str, ...]:
        """The hyperparameters ``update`` reads, in its argument order."""
        return tuple(n for n, p in inspect.signature(self.update).parameters.items()
                     if p.kind is p.POSITIONAL_OR_KEYWORD)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """What ``update`` needs of the step (``step``, ``first_step``, scalar states)."""
        return tuple(n for n, p in inspect.signature(self.update).parameters.items()
                     if p.kind is p.KEYWORD_ONLY)

    @cached_property
    def functional_hyperparameters(self) -> tuple[Hyper, ...]:
        """The hyperparameters the functional API takes as arguments: those ``update``
        reads, those that turn an optional state on (unless its array implies it), and
        ``maximize``; not fixed ones. (A pair is taken as its two parts.)"""
        taken = set(self.reads) | {s.when for s in self.optional if not s.implied}
        taken |= {"maximize"} & set(self.hyper)
        return tuple(h for h in self.hyperparameters if h.name in taken)

    @cached_property
    def spec(self) -> RuleSpec:
        """The rule's kernel signature, checked against this declaration (of a two-phase
        step: its first pass)."""
        if self.two_phase is not None:
            return _phase_spec(self, self.rule, (), self.two_phase.first_unused,
                               self.two_phase.sums, first=True)
        return _rule_spec(self)

    @cached_property
    def second_spec(self) -> RuleSpec | None:
        """The kernel signature of a two-phase step's second pass (None: one pass)."""
        phase = self.two_phase
        if phase is None:
            return None
        return _phase_spec(self, phase.rule, phase.second_reads, phase.second_unused, (),
                           first=False)

    def arrays(self, present: tuple[str, ...], ndim: int = 1) -> tuple[str, ...]:
        """The state arrays of a parameter of ``ndim`` dimensions with these optional states
        in use."""
        if self.factored:
            return self.factored if ndim >= 2 else tuple(
                s.name for s in self.states if s.name not in self.factored)
        return tuple(s.name for s in self.states if s.when is None or s.name in present)

    def present(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The optional states that the (checked) options use."""
        return tuple(s.name for s in self.optional if s.test(options[s.when]))

    def check(self, options: Mapping[str, Any], t: int | None = None) -> dict[str, Any]:
        """Checked copies of every hyperparameter in ``options`` (those of this algorithm,
        fixed ones included); with a step ``t``, ``lr`` may be a schedule, checked (and
        returned) at ``t``. Raises ``TypeError``/``ValueError`` naming the first bad one."""
        checked = {}
        for h in self.hyperparameters:
            value = options[h.name]
            if t is not None and h.name == "lr" and callable(value):
                value = value(t)
            checked[h.name] = h.domain.check(h.name, value)
        for name, value in self.fixed.items():
            checked[name] = value
        if self.constraint is not None:
            self.constraint(checked)
        return checked

    def initial_value(self, state: str, options: Mapping[str, Any]) -> float | None:
        """What a new array of ``state`` holds with these (checked) options: a number, or
        None: a copy of its parameter."""
        fill = next(s.fill for s in self.states if s.name == state)
        if fill == COPY_OF_PARAM:
            return None
        return float(options[fill]) if fill else 0.0

    def initial_scalars(self, options: Mapping[str, Any]) -> dict[str, float]:
        """The per-parameter scalars of a parameter's first step (checked ``options``)."""
        return {s.name: float(options[s.initial]) if isinstance(s.initial, str)
                else s.initial for s in self.scalars}

    def variant(self, name: str, summary: str, *, defaults: Mapping[str, Any] = {},
                fixed: Mapping[str, Any] = {}, **changes: Any) -> Algorithm:
        """A new algorithm running the same rule with other defaults and fixed options
        (AdamW: Adam with ``decoupled_weight_decay=True`` and ``weight_decay=1e-2``)."""
        hyper = tuple(replace(h, default=defaults.get(h.name, h.default))
                      for h in self.hyperparameters if h.name not in fixed)
        return replace(self, name=name, summary=summary, hyperparameters=hyper,
                       fixed={**self.fixed, **fixed}, **changes)


def _rule_spec(algorithm: Algorithm) -> RuleSpec:
    """Check that ``algorithm``'s rule takes ``p, g``, its states, then exactly what its
    ``update`` returns (floats: coefficients, then bools: flags), then ``has_<state>`` for
    each optional state; return the rule's :class:`RuleSpec`."""
    name = algorithm.name
    params = tuple(inspect.signature(algorithm.rule.py_func).parameters)
    states = tuple(s.name for s in algorithm.states)
    structural = tuple(f"has_{s.name}" for s in algorithm.optional)
    head, body, tail = params[:2 + len(states)], params[2 + len(states):], params[
        len(params) - len(structural):]
    if head != ("p", "g", *states) or tail != structural:
        raise AssertionError(f"{name}: rule arguments {params} do not start with p, g, "
                             f"{states} and end with {structural}")
    body = body[:len(body) - len(structural)]
    for s in algorithm.states:
        if s.when is not None and s.when not in algorithm.hyper:
            raise AssertionError(f"{name}: state {s.name} depends on unknown {s.when!r}")
        if s.fill not in (None, COPY_OF_PARAM) and s.fill not in algorithm.hyper:
            raise AssertionError(f"{name}: state {s.name} is filled with unknown {s.fill!r}")
    unknown = set(algorithm.reads) - set(algorithm.defaults)
    inputs = set(algorithm.inputs) - set(STEP_INPUTS) - {s.name for s in algorithm.scalars}
    if unknown or inputs:
        raise AssertionError(f"{name}: update reads unknown {sorted(unknown | inputs)}")
    sample = example_update(algorithm)
    scalars = {s.name for s in algorithm.scalars}
    if set(sample) != set(body) | scalars:
        raise AssertionError(f"{name}: update returns {sorted(sample)}, the rule takes "
                             f"{body} (and the scalars are {sorted(scalars)})")
    kinds = [isinstance(sample[b], bool) for b in body]
    if kinds != sorted(kinds):
        raise AssertionError(f"{name}: the rule's coefficients must come before its flags")
    if not all(type(sample[b]) in (bool, float) for b in body):  # (kernels are compiled
        raise AssertionError(f"{name}: update must return floats and bools")  # for these)
    for s in algorithm.states:
        if s.eight_bit not in ("signed", "unsigned", "full") or (s.eight_bit == "full"
                                                                  and not s.why):
            raise AssertionError(f"{name}: state {s.name} must declare eight_bit as "
                                 "'signed', 'unsigned' or 'full' (with why)")
    return RuleSpec(algorithm.rule.__name__.removesuffix("_rule"), algorithm.rule, states,
                    tuple(b for b in body if not isinstance(sample[b], bool)),
                    tuple(b for b in body if isinstance(sample[b], bool)),
                    tuple(s.name for s in algorithm.optional),
                    tuple(s.eight_bit for s in algorithm.states),
                    tuple(s.bf16 for s in algorithm.states))


def _phase_spec(algorithm: Algorithm, rule: Any, read_only: tuple[str, ...],
                unused: tuple[str, ...], sums: tuple[str, ...], first: bool) -> RuleSpec:
    """The kernel signature of one pass of a two-phase step, checked: ``p, g``, the states,
    then values of the step (``update``'s, and the second pass's per-tensor ones)."""
    name = algorithm.name
    params = tuple(inspect.signature(rule.py_func).parameters)
    states = tuple(s.name for s in algorithm.states)
    head = ("p", "g", *states)
    if params[:len(head)] != head or algorithm.optional:
        raise AssertionError(f"{name}: {rule.__name__} must start with {head} (and two-phase "
                             "steps have no optional state)")
    values = example_update(algorithm)
    per_tensor: dict[str, Any] = {}
    if not first:
        per_tensor = algorithm.two_phase.scale(dict.fromkeys(algorithm.two_phase.sums, 1.0),
                                               values, (1, 1))
        values.update(per_tensor)
    body = params[len(head):]
    missing = [b for b in body if b not in values]
    kinds = [isinstance(values.get(b), bool) for b in body]
    if missing or kinds != sorted(kinds):
        raise AssertionError(f"{name}: {rule.__name__} takes {missing or body}: not given "
                             "by update (or flags before coefficients)")
    return RuleSpec(rule.__name__.removesuffix("_rule"), rule, states,
                    tuple(b for b in body if not isinstance(values[b], bool)),
                    tuple(b for b in body if isinstance(values[b], bool)), (),
                    tuple(s.eight_bit for s in algorithm.states),
                    tuple(s.bf16 for s in algorithm.states), read_only, unused, sums,
                    tuple(b for b in body if b in per_tensor))


def example_update(algorithm: Algorithm) -> dict[str, Any]:
    """``update`` at the defaults, on a first step."""
    options = algorithm.check(algorithm.defaults)
    inputs = {"step": 1, "first_step": True, **algorithm.initial_scalars(options)}
    return algorithm.update(**{n: options[n] for n in algorithm.reads},
                            **{n: inputs[n] for n in algorithm.inputs})


# -- hyperparameters shared by many algorithms --------------------------------------------------

def _lr(default: float, low: float, high: float) -> Hyper:
    return Hyper("lr", default, NON_NEGATIVE, Uniform(low, high))


def _betas(default: tuple[float, float] = (0.9, 0.999),
           typical: tuple[Uniform, Uniform] = (Uniform(0.5, 0.95), Uniform(0.9, 0.9999))
           ) -> Hyper:
    return Hyper("betas", default, Parts((BETA, BETA), ("beta1", "beta2")), typical)


def _eps(default: float, low: float = 1e-10, high: float = 1e-6) -> Hyper:
    return Hyper("eps", default, NON_NEGATIVE, Uniform(low, high, log=True))


WEIGHT_DECAY = Hyper("weight_decay", 0.0, NON_NEGATIVE, Uniform(2**-7, 2**-2, log=True),
                     switch=True)
MAXIMIZE = Hyper("maximize", False, Flag(), switch=True, keyword_only=True)


def _flag(name: str, keyword_only: bool = False) -> Hyper:
    return Hyper(name, False, Flag(), switch=True, keyword_only=keyword_only)


def _weight_decay_mode(lr: float, weight_decay: float, decoupled: bool) -> dict[str, Any]:
    """L2 (``g += wd * p``) or decoupled (``p *= 1 - lr * wd``) weight decay."""
    decoupled = decoupled and weight_decay != 0
    return dict(weight_decay=weight_decay, decay_factor=1.0 - lr * weight_decay,
                l2=weight_decay != 0 and not decoupled, decoupled=decoupled)


# -- the algorithms ---------------------------------------------------------------------------

def _sgd_constraint(options: Mapping[str, Any]) -> None:
    if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")


def _sgd_update(lr, momentum, dampening, weight_decay, nesterov, *, first_step):
    return dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                one_minus_dampening=1.0 - dampening, l2=weight_decay != 0,
                first_step=first_step, nesterov=nesterov)


SGD = Algorithm(
    "SGD", "Stochastic gradient descent with optional (Nesterov) momentum.",
    """\
g += weight_decay * p
with momentum: buf = g on the first step, else buf = momentum * buf + (1 - dampening) * g;
               d = g + momentum * buf (nesterov) or d = buf
without:       d = g
p -= lr * d""",
    "torch/optim/sgd.py", rules.sgd_rule,
    states=(State("momentum_buffer", when="momentum", test=lambda m: m != 0,
                  eight_bit="signed"),),
    hyperparameters=(
        _lr(1e-3, 0.01, 0.2),
        Hyper("momentum", 0.0, NON_NEGATIVE, Uniform(0.3, 0.95), switch=True),
        Hyper("dampening", 0.0, FINITE, Uniform(0.05, 0.9), switch=True),
        WEIGHT_DECAY, _flag("nesterov"), MAXIMIZE),
    update=_sgd_update, constraint=_sgd_constraint,
    bench={"lr": 1e-3, "momentum": 0.9},
    demo={"sgd": ({}, 0.01), "momentum": ({"momentum": 0.9}, 0.005),
          "nesterov": ({"momentum": 0.9, "nesterov": True}, 0.005)},
    shown=("momentum", "nesterov"),
)


def _adagrad_update(lr, lr_decay, weight_decay, eps, *, step):
    return dict(clr=lr / (1.0 + (step - 1) * lr_decay), weight_decay=weight_decay, eps=eps,
                l2=weight_decay != 0)


ADAGRAD = Algorithm(
    "Adagrad", "Adagrad: per-element steps scaled by the root of the summed squared gradients.",
    """\
g += weight_decay * p
sum += g * g
p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)""",
    "torch/optim/adagrad.py", rules.adagrad_rule,
    states=(State("sum", fill="initial_accumulator_value", eight_bit="unsigned"),),
    hyperparameters=(
        _lr(1e-2, 0.01, 0.5),
        Hyper("lr_decay", 0.0, NON_NEGATIVE, Uniform(0.01, 0.3), switch=True),
        WEIGHT_DECAY,
        Hyper("initial_accumulator_value", 0.0, NON_NEGATIVE, Uniform(0.05, 1.0),
              switch=True),
        _eps(1e-10), MAXIMIZE),
    update=_adagrad_update, demo={"adagrad": ({}, 0.5)},
)


def _adadelta_update(lr, rho, eps, weight_decay):
    return dict(lr=lr, weight_decay=weight_decay, rho=rho, one_minus_rho=1.0 - rho, eps=eps,
                l2=weight_decay != 0)


ADADELTA = Algorithm(
    "Adadelta", "Adadelta: steps scaled by the ratio of running RMS of updates and gradients.",
    """\
g += weight_decay * p
square_avg = rho * square_avg + (1 - rho) * g * g
delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
acc_delta = rho * acc_delta + (1 - rho) * delta * delta
p -= lr * delta""",
    "torch/optim/adadelta.py", rules.adadelta_rule,
    states=(State("square_avg", eight_bit="unsigned"), State("acc_delta", eight_bit="unsigned")),
    hyperparameters=(
        _lr(1.0, 0.3, 2.0), Hyper("rho", 0.9, UNIT, Uniform(0.5, 0.99)),
        _eps(1e-6, 1e-7, 1e-4), WEIGHT_DECAY, MAXIMIZE),
    update=_adadelta_update, demo={"adadelta": ({}, 1.0)}, shown=("rho",),
)


def _rmsprop_update(lr, alpha, eps, weight_decay, momentum):
    return dict(lr=lr, weight_decay=weight_decay, alpha=alpha, one_minus_alpha=1.0 - alpha,
                eps=eps, momentum=momentum, l2=weight_decay != 0)


RMSPROP = Algorithm(
    "RMSprop", "RMSprop with optional momentum and centering.",
    """\
g += weight_decay * p
square_avg = alpha * square_avg + (1 - alpha) * g * g
centered:  grad_avg = alpha * grad_avg + (1 - alpha) * g;
           avg = sqrt(square_avg - grad_avg * grad_avg) + eps
else:      avg = sqrt(square_avg) + eps
momentum:  buf = momentum * buf + g / avg; p -= lr * buf
else:      p -= lr * g / avg""",
    "torch/optim/rmsprop.py", rules.rmsprop_rule,
    states=(State("square_avg", eight_bit="unsigned"),
            State("momentum_buffer", when="momentum", test=lambda m: m > 0, eight_bit="signed"),
            State("grad_avg", when="centered", eight_bit="signed")),
    hyperparameters=(
        _lr(1e-2, 1e-3, 3e-2), Hyper("alpha", 0.99, NON_NEGATIVE, Uniform(0.8, 0.999)),
        _eps(1e-8, 1e-9, 1e-6), WEIGHT_DECAY,
        Hyper("momentum", 0.0, NON_NEGATIVE, Uniform(0.3, 0.95), switch=True),
        _flag("centered"), MAXIMIZE),
    update=_rmsprop_update, demo={"rmsprop": ({}, 0.01)}, shown=("alpha",),
)


def _adam_update(lr, betas, eps, weight_decay, decoupled_weight_decay, *, step):
    beta1, beta2 = betas
    return dict(step_size=lr / (1.0 - beta1**step),
                **_weight_decay_mode(lr, weight_decay, decoupled_weight_decay),
                beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                one_minus_beta2=1.0 - beta2, sqrt_bc2=math.sqrt(1.0 - beta2**step), eps=eps)


ADAM = Algorithm(
    "Adam", "Adam (AMSGrad with amsgrad=True; AdamW with decoupled_weight_decay=True).",
    """\
g += weight_decay * p   (decoupled_weight_decay: p *= 1 - lr * weight_decay instead)
exp_avg = beta1 * exp_avg + (1 - beta1) * g
exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
amsgrad: max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq), used below for exp_avg_sq
p -= lr / (1 - beta1**t) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**t) + eps)""",
    "torch/optim/adam.py", rules.adam_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned"),
            State("max_exp_avg_sq", when="amsgrad", implied=True, eight_bit="full",
                  why="AMSGrad's running maximum must never decrease; rounding it to the "
                  "nearest 8-bit value can lower it")),
    hyperparameters=(
        _lr(1e-3, 1e-3, 5e-2), _betas(), _eps(1e-8), WEIGHT_DECAY, _flag("amsgrad"), MAXIMIZE,
        _flag("decoupled_weight_decay", keyword_only=True)),
    update=_adam_update, demo={"adam": ({}, 0.05)}, shown=("betas",),
)

ADAMW = ADAM.variant(
    "AdamW", "Adam with decoupled weight decay, p *= 1 - lr * weight_decay (AdamW).",
    defaults={"weight_decay": 1e-2}, fixed={"decoupled_weight_decay": True},
    demo={"adamw": ({}, 0.05)}, shown=("betas", "weight_decay"),
)


def _adamax_update(lr, betas, eps, weight_decay, *, step):
    beta1, beta2 = betas
    return dict(clr=lr / (1.0 - beta1**step), weight_decay=weight_decay, beta1=beta1,
                one_minus_beta1=1.0 - beta1, beta2=beta2, eps=eps, l2=weight_decay != 0)


ADAMAX = Algorithm(
    "Adamax", "Adamax: Adam with the infinity norm.",
    """\
g += weight_decay * p
exp_avg = beta1 * exp_avg + (1 - beta1) * g
exp_inf = max(beta2 * exp_inf, |g| + eps)
p -= lr / (1 - beta1**t) * exp_avg / exp_inf""",
    "torch/optim/adamax.py", rules.adamax_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_inf", eight_bit="unsigned")),
    hyperparameters=(_lr(2e-3, 1e-3, 5e-2), _betas(), _eps(1e-8), WEIGHT_DECAY, MAXIMIZE),
    update=_adamax_update, demo={"adamax": ({}, 0.05)}, shown=("betas",),
)


def nadam_mu(beta1: float, momentum_decay: float, t: int) -> float:
    """NAdam's momentum coefficient ``mu_t = beta1 (1 - 0.5 * 0.96**(t * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def _nadam_update(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *,
                  step, mu_product):
    beta1, beta2 = betas
    mu, mu_next = nadam_mu(beta1, momentum_decay, step), nadam_mu(beta1, momentum_decay,
                                                                   step + 1)
    mu_product *= mu
    return dict(grad_coef=lr * (1.0 - mu) / (1.0 - mu_product),
                avg_coef=lr * mu_next / (1.0 - mu_product * mu_next),
                **_weight_decay_mode(lr, weight_decay, decoupled_weight_decay),
                beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                one_minus_beta2=1.0 - beta2, bc2=1.0 - beta2**step, eps=eps,
                mu_product=mu_product)


NADAM = Algorithm(
    "NAdam", "NAdam: Adam with Nesterov momentum and momentum decay.",
    """\
mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay)); mu_product *= mu_t
g += weight_decay * p   (decoupled_weight_decay: p *= 1 - lr * weight_decay instead)
exp_avg, exp_avg_sq as in Adam; denom = sqrt(exp_avg_sq / (1 - beta2**t)) + eps
p -= lr * (1 - mu_t) / (1 - mu_product) * g / denom
p -= lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * exp_avg / denom""",
    "torch/optim/nadam.py", rules.nadam_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(
        _lr(2e-3, 1e-3, 5e-2), _betas(), _eps(1e-8), WEIGHT_DECAY,
        Hyper("momentum_decay", 4e-3, NON_NEGATIVE, Uniform(1e-3, 3e-2, log=True)),
        _flag("decoupled_weight_decay"), MAXIMIZE),
    update=_nadam_update, scalars=(Scalar("mu_product", 1.0, UNIT),),
    demo={"nadam": ({}, 0.05)}, shown=("betas",),
)



def _radam_update(lr, betas, eps, weight_decay, decoupled_weight_decay, *, step):
    beta1, beta2 = betas
    bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bc2
    step_size = lr / bc1
    if rho_t > 5.0:
        step_size *= math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                               / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) * math.sqrt(bc2)
    return dict(step_size=step_size,
                **_weight_decay_mode(lr, weight_decay, decoupled_weight_decay),
                beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                one_minus_beta2=1.0 - beta2, eps=eps, rectified=rho_t > 5.0)


RADAM = Algorithm(
    "RAdam", "RAdam: Adam with the variance of its adaptive step rectified.",
    """\
g += weight_decay * p   (decoupled_weight_decay: p *= 1 - lr * weight_decay instead)
exp_avg, exp_avg_sq as in Adam
rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
rho_t > 5: r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
           p -= lr / (1 - beta1**t) * r_t * sqrt(1 - beta2**t) * exp_avg / (sqrt(exp_avg_sq) + eps)
else:      p -= lr / (1 - beta1**t) * exp_avg""",
    "torch/optim/radam.py", rules.radam_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(
        _lr(1e-3, 1e-3, 5e-2), _betas(), _eps(1e-8), WEIGHT_DECAY,
        _flag("decoupled_weight_decay"), MAXIMIZE),
    update=_radam_update, demo={"radam": ({}, 0.1)}, shown=("betas",),
)



def _rprop_update(etas, step_sizes):
    return dict(etaminus=etas[0], etaplus=etas[1], step_size_min=step_sizes[0],
                step_size_max=step_sizes[1], zero=0.0)


RPROP = Algorithm(
    "Rprop", "Rprop: a step size per element, adapted to the sign changes of its gradient.",
    """\
s = sign(g * prev)
step_size *= etaplus where s > 0, etaminus where s < 0 (and there g = 0)
step_size = clamp(step_size, step_size_min, step_size_max)
p -= sign(g) * step_size;  prev = g
(step_size starts at lr; lr is not used after that)""",
    "torch/optim/rprop.py", rules.rprop_rule,
    states=(State("prev", eight_bit="signed"),
            State("step_size", fill="lr", eight_bit="full",
                  why="each element's step size is multiplied by etaplus or etaminus every "
                  "step and spans decades within a block, where the dynamic map is coarse")),
    hyperparameters=(
        _lr(1e-2, 1e-3, 5e-2),
        Hyper("etas", (0.5, 1.2), Parts((Real(0.0, 1.0, low_open=True), Real(1.0, low_open=True)),
                                        ("etaminus", "etaplus")),
              (Uniform(0.3, 0.8), Uniform(1.05, 1.5))),
        Hyper("step_sizes", (1e-6, 50), Parts((NON_NEGATIVE, NON_NEGATIVE),
                                              ("step_size_min", "step_size_max"), ordered=True),
              (Uniform(1e-6, 1e-3, log=True), Uniform(0.02, 0.5))),
        MAXIMIZE),
    update=_rprop_update, demo={"rprop": ({}, 0.01)}, shown=("etas",),
)



def _asgd_update(lr, lambd, alpha, t0, weight_decay, *, step, eta, mu):
    return dict(step_size=eta, decay=1.0 - lambd * eta, weight_decay=weight_decay,
                ax_weight=mu, l2=weight_decay != 0, averaging=mu != 1.0,
                eta=lr / (1.0 + lambd * lr * step) ** alpha, mu=1.0 / max(1.0, step - t0))


ASGD = Algorithm(
    "ASGD", "ASGD: averaged stochastic gradient descent (SGD with a decaying step size and "
    "an average of the iterates in ax).",
    """\
g += weight_decay * p
p = p * (1 - lambd * eta) - eta * g
ax = ax + (p - ax) * mu   while mu < 1, else ax = p
then eta = lr / (1 + lambd * lr * t)**alpha, mu = 1 / max(1, t - t0) for the next step
(eta starts at lr, mu at 1)""",
    "torch/optim/asgd.py", rules.asgd_rule,
    states=(State("ax", eight_bit="full",
                  why="the averaged parameter is the model the method returns"),),
    hyperparameters=(
        _lr(1e-2, 1e-3, 5e-2),
        Hyper("lambd", 1e-4, NON_NEGATIVE, Uniform(1e-5, 0.1, log=True)),
        Hyper("alpha", 0.75, NON_NEGATIVE, Uniform(0.3, 1.0)),
        Hyper("t0", 1e6, NON_NEGATIVE, Uniform(0.0, 30.0)),
        WEIGHT_DECAY, MAXIMIZE),
    update=_asgd_update, scalars=(Scalar("eta", "lr", NON_NEGATIVE), Scalar("mu", 1.0, UNIT)),
    demo={"asgd": ({}, 0.05)}, shown=("lambd", "t0"),
)

def _three_betas(default: tuple[float, float, float],
                 typical: tuple[Uniform, Uniform, Uniform]) -> Hyper:
    return Hyper("betas", default, Parts((BETA, BETA, BETA), ("beta1", "beta2", "beta3")),
                 typical)


def _lion_update(lr, betas, weight_decay):
    beta1, beta2 = betas
    return dict(lr=lr, decay_factor=1.0 - lr * weight_decay, beta1=beta1,
                one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                one=1.0, zero=0.0)


LION = Algorithm(
    "Lion", "Lion: the sign of an interpolated momentum (evolved sign momentum).",
    """\
p *= 1 - lr * weight_decay   (decoupled weight decay)
p -= lr * sign(beta1 * exp_avg + (1 - beta1) * g)
exp_avg = beta2 * exp_avg + (1 - beta2) * g""",
    "optax.lion; lucidrains/lion-pytorch", rules.lion_rule,
    states=(State("exp_avg", eight_bit="signed"),),
    hyperparameters=(
        _lr(1e-4, 1e-4, 3e-3),
        _betas((0.9, 0.99), (Uniform(0.8, 0.95), Uniform(0.95, 0.999))),
        WEIGHT_DECAY, MAXIMIZE),
    update=_lion_update, demo={"lion": ({}, 0.05)}, shown=("betas",),
)


def _adopt_update(lr, betas, eps, weight_decay, decouple, *, step):
    beta1, beta2 = betas
    weight = 1.0 - beta1  # (torch's lerp: two formulas, by the weight)
    decoupled = decouple and weight_decay != 0
    return dict(lr=lr, weight_decay=weight_decay, neg_lr_wd=-lr * weight_decay,
                lerp_weight=weight, lerp_rest=1.0 - weight, one_minus_beta2=1.0 - beta2,
                beta2=beta2, eps=eps, clip=float(step - 1) ** 0.25,
                l2=weight_decay != 0 and not decoupled, decoupled=decoupled,
                first=step == 1, lerp_low=abs(weight) < 0.5)


ADOPT = Algorithm(
    "ADOPT", "ADOPT: Adam that normalizes the gradient by the second moment of the steps "
    "before it, then clips it (converges with any beta2).",
    """\
g += weight_decay * p   (decouple: p *= 1 - lr * weight_decay instead, from step 2)
step 1:  exp_avg_sq = g * g   (nothing else)
then:    n = clamp(g / max(sqrt(exp_avg_sq), eps), -(t - 1)**0.25, (t - 1)**0.25)
         exp_avg = exp_avg + (1 - beta1) * (n - exp_avg)
         p -= lr * exp_avg
         exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g""",
    "iShohei220/adopt (torch-adopt); optax.contrib.adopt", rules.adopt_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(
        _lr(1e-3, 1e-3, 3e-2), _betas((0.9, 0.9999)), _eps(1e-6, 1e-8, 1e-5), WEIGHT_DECAY,
        _flag("decouple"), MAXIMIZE),
    update=_adopt_update, demo={"adopt": ({}, 0.05)}, shown=("betas",),
)


def linear_warmup(step: int, end: float, start: float, warmup: int) -> float:
    """AdEMAMix's ``alpha`` at ``step``: linear from ``start`` to ``end`` over ``warmup``
    steps (``linear_warmup_scheduler`` of apple/ml-ademamix)."""
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * start + a * end
    return end


def half_life_warmup(step: int, end: float, start: float, warmup: int) -> float:
    """AdEMAMix's ``beta3`` at ``step``: its half-life ``log(0.5) / log(beta) - 1`` linear
    from ``start``'s to ``end``'s over ``warmup`` steps (``linear_hl_warmup_scheduler``)."""
    def half_life(beta: float) -> float:
        return math.log(0.5) / math.log(beta + 1e-8) - 1.0

    if step < warmup:
        a = step / float(warmup)
        return math.pow(0.5, 1.0 / ((1.0 - a) * half_life(start) + a * half_life(end) + 1.0))
    return end


def _ademamix_update(lr, betas, alpha, beta3_warmup, alpha_warmup, eps, weight_decay, *,
                     step):
    beta1, beta2, beta3 = betas
    if alpha_warmup is not None:
        alpha = linear_warmup(step, alpha, 0.0, alpha_warmup)
    if beta3_warmup is not None:
        beta3 = half_life_warmup(step, beta3, beta1, beta3_warmup)
    return dict(lr=lr, weight_decay=weight_decay, bc1=1.0 - beta1**step, beta1=beta1,
                one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
                beta3=beta3, one_minus_beta3=1.0 - beta3,
                sqrt_bc2=math.sqrt(1.0 - beta2**step), alpha=alpha, eps=eps)


ADEMAMIX = Algorithm(
    "AdEMAMix", "AdEMAMix: Adam with a second, slow EMA of the gradient mixed in.",
    """\
exp_avg_fast = beta1 * exp_avg_fast + (1 - beta1) * g
exp_avg_slow = beta3 * exp_avg_slow + (1 - beta3) * g
exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
u = (exp_avg_fast / (1 - beta1**t) + alpha * exp_avg_slow)
    / (sqrt(exp_avg_sq) / sqrt(1 - beta2**t) + eps) + weight_decay * p
p -= lr * u
(alpha rises linearly from 0 over alpha_warmup steps; beta3's half-life linearly from
beta1's over beta3_warmup steps)""",
    "apple/ml-ademamix; optax.contrib.ademamix", rules.ademamix_rule,
    states=(State("exp_avg_fast", eight_bit="signed"), State("exp_avg_slow", eight_bit="signed"),
            State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(
        _lr(1e-3, 1e-3, 3e-2),
        _three_betas((0.9, 0.999, 0.9999),
                     (Uniform(0.5, 0.95), Uniform(0.9, 0.9999), Uniform(0.95, 0.9999))),
        Hyper("alpha", 2.0, NON_NEGATIVE, Uniform(0.5, 8.0)),
        Hyper("beta3_warmup", None, Steps(), Uniform(2, 60), switch=True),
        Hyper("alpha_warmup", None, Steps(), Uniform(2, 60), switch=True),
        _eps(1e-8), WEIGHT_DECAY, MAXIMIZE),
    update=_ademamix_update, demo={"ademamix": ({}, 0.03)}, shown=("alpha",),
)


def _adan_update(lr, betas, eps, weight_decay, no_prox, *, step):
    beta1, beta2, beta3 = betas
    return dict(step_size=lr / (1.0 - beta1**step),
                step_size_diff=lr * beta2 / (1.0 - beta2**step),
                decay_factor=1.0 - lr * weight_decay, prox_factor=1.0 + lr * weight_decay,
                beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                one_minus_beta2=1.0 - beta2, beta3=beta3, one_minus_beta3=1.0 - beta3,
                sqrt_bc3=math.sqrt(1.0 - beta3**step), eps=eps, first=step == 1,
                no_prox=no_prox)


ADAN = Algorithm(
    "Adan", "Adan: adaptive Nesterov momentum, from the gradient and its change.",
    """\
d = g - g_prev   (0 on the first step)
exp_avg = beta1 * exp_avg + (1 - beta1) * g
exp_avg_diff = beta2 * exp_avg_diff + (1 - beta2) * d
exp_avg_sq = beta3 * exp_avg_sq + (1 - beta3) * (g + beta2 * d)**2
den = sqrt(exp_avg_sq) / sqrt(1 - beta3**t) + eps
p -= lr / (1 - beta1**t) * exp_avg / den + lr * beta2 / (1 - beta2**t) * exp_avg_diff / den
weight decay: p /= 1 + lr * weight_decay after (proximal), or p *= 1 - lr * weight_decay
before (no_prox); neg_pre_grad = -g""",
    "sail-sg/Adan; optax.adan", rules.adan_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned"),
            State("exp_avg_diff", eight_bit="signed"),
            State("neg_pre_grad", eight_bit="full",
                  why="the previous gradient: its difference with the next gradient is the "
                  "signal, and 8-bit codes would add noise of the gradient's own size to it")),
    hyperparameters=(
        _lr(1e-3, 1e-3, 3e-2),
        _three_betas((0.98, 0.92, 0.99),
                     (Uniform(0.9, 0.99), Uniform(0.8, 0.95), Uniform(0.95, 0.999))),
        _eps(1e-8), WEIGHT_DECAY, _flag("no_prox"), MAXIMIZE),
    update=_adan_update, demo={"adan": ({}, 0.05)}, shown=("betas",),
)

def _schedule_free_update(lr, beta, weight_decay, warmup_steps, r, weight_lr_power, *,
                          step, lr_max, weight_sum):
    """The coefficients of a Schedule-Free step (``schedulefree``'s ``step``, ``k = t - 1``),
    without AdamW's second moment."""
    k = step - 1
    lr = lr * ((k + 1) / warmup_steps) if k < warmup_steps else lr
    lr_max = max(lr, lr_max)
    weight = (k + 1) ** r * lr_max ** weight_lr_power
    weight_sum = weight_sum + weight
    ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
    return dict(lr=lr, y_coef=lr * (beta * (1.0 - ckp1) - 1.0), weight_decay=weight_decay,
                ckp1=ckp1, ckp1_rest=1.0 - ckp1, l2=weight_decay != 0,
                ckp1_low=abs(ckp1) < 0.5, lr_max=lr_max, weight_sum=weight_sum)


def _schedule_free_sgd_update(lr, momentum, weight_decay, warmup_steps, r, weight_lr_power,
                              *, step, lr_max, weight_sum):
    return _schedule_free_update(lr, momentum, weight_decay, warmup_steps, r,
                                 weight_lr_power, step=step, lr_max=lr_max,
                                 weight_sum=weight_sum)


def _schedule_free_adamw_update(lr, betas, eps, weight_decay, warmup_steps, r,
                                weight_lr_power, *, step, lr_max, weight_sum):
    beta1, beta2 = betas
    shared = _schedule_free_update(lr, beta1, weight_decay, warmup_steps, r, weight_lr_power,
                                   step=step, lr_max=lr_max, weight_sum=weight_sum)
    l2, low = shared.pop("l2"), shared.pop("ckp1_low")
    return dict(shared, beta2=beta2, one_minus_beta2=1.0 - beta2, bc2=1.0 - beta2**step,
                eps=eps, l2=l2, ckp1_low=low)


_SCHEDULE_FREE_MATH = """\
lr_t = lr * min(1, t / warmup_steps);  lr_max = max(lr_max, lr_t)
c = w_t / sum of w_1..w_t with w_t = t**r * lr_max**weight_lr_power
g += weight_decay * y
y = (1 - c) y + c z;  y += lr_t * (beta * (1 - c) - 1) * g;  z -= lr_t * g
(y: the parameter while training, the point gradients are taken at; .eval() puts
x = (y - (1 - beta) z) / beta there, the average the method returns, and .train() y again;
a step in eval mode is an error; z starts as a copy of the parameter)"""

_SCHEDULE_FREE_HYPER = (
    WEIGHT_DECAY,
    Hyper("warmup_steps", 0, Steps(low=0, optional=False), Uniform(2, 20), switch=True),
    Hyper("r", 0.0, NON_NEGATIVE, Uniform(0.0, 2.0)),
    Hyper("weight_lr_power", 2.0, NON_NEGATIVE, Uniform(0.0, 3.0)),
    MAXIMIZE)
_SCHEDULE_FREE_SCALARS = (Scalar("lr_max", -1.0, FINITE), Scalar("weight_sum", 0.0,
                                                                   NON_NEGATIVE))
_Z = State("z", fill=COPY_OF_PARAM, eight_bit="full", bf16=False,
           why="z is a point of the parameter sequence (x and y are averages of it): "
           "rounding it to bfloat16 or 8 bits would add noise of the parameter's own size")
_SCHEDULE_FREE_SOURCE = "facebookresearch/schedule_free (the schedulefree package)"


#: Schedule-Free's beta: x = y / beta - ..., so 0 is excluded
_POSITIVE_BETA = Real(0.0, 1.0, low_open=True)


SCHEDULE_FREE_SGD = Algorithm(
    "ScheduleFreeSGD", "Schedule-Free SGD: momentum as an average of the iterates, no "
    "learning-rate schedule needed.",
    _SCHEDULE_FREE_MATH.replace("beta", "momentum"), _SCHEDULE_FREE_SOURCE,
    rules.schedule_free_sgd_rule, states=(_Z,),
    hyperparameters=(_lr(1.0, 0.05, 0.5),
                     Hyper("momentum", 0.9, _POSITIVE_BETA, Uniform(0.5, 0.95)),
                     *_SCHEDULE_FREE_HYPER),
    update=_schedule_free_sgd_update, scalars=_SCHEDULE_FREE_SCALARS,
    schedule_free=lambda options: options["momentum"],
    bench={"lr": 1e-3}, demo={"schedulefree-sgd": ({}, 0.05)}, shown=("momentum",),
)

SCHEDULE_FREE_ADAMW = Algorithm(
    "ScheduleFreeAdamW", "Schedule-Free AdamW: Adam's normalized gradient in Schedule-Free's "
    "averaged iterates, no learning-rate schedule needed.",
    """\
exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
g = g / (sqrt(exp_avg_sq / (1 - beta2**t)) + eps), then with beta = beta1:
""" + _SCHEDULE_FREE_MATH, _SCHEDULE_FREE_SOURCE, rules.schedule_free_adamw_rule,
    states=(_Z, State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(_lr(0.0025, 1e-3, 3e-2),
                     Hyper("betas", (0.9, 0.999), Parts((_POSITIVE_BETA, BETA),
                                                        ("beta1", "beta2")),
                           (Uniform(0.5, 0.95), Uniform(0.9, 0.9999))),
                     _eps(1e-8), *_SCHEDULE_FREE_HYPER),
    update=_schedule_free_adamw_update, scalars=_SCHEDULE_FREE_SCALARS,
    schedule_free=lambda options: options["betas"][0],
    bench={"lr": 1e-3}, demo={"schedulefree-adamw": ({}, 0.2)}, shown=("betas",),
)


def factor_shapes(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The shapes of Adafactor's factors of a parameter of ``shape`` (two or more
    dimensions): ``row_var`` ``(..., R, 1)`` and ``col_var`` ``(..., 1, C)``."""
    return {"row_var": (*shape[:-1], 1), "col_var": (*shape[:-2], 1, shape[-1])}


def trust_ratio(param_norm: float, update_norm: float, coefficient: float = 1.0,
                eps: float = 0.0) -> float:
    """``coefficient * |p| / (|u| + eps)``, or 1 when either norm is 0 (optax's
    ``scale_by_trust_ratio``; NaN norms give NaN)."""
    if param_norm == 0.0 or update_norm == 0.0:
        return 1.0
    return coefficient * param_norm / (update_norm + eps)


def _lamb_update(lr, betas, eps, weight_decay, *, step):
    beta1, beta2 = betas
    return dict(lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
                one_minus_beta2=1.0 - beta2, inv_bc1=1.0 / (1.0 - beta1**step),
                inv_bc2=1.0 / (1.0 - beta2**step), eps=eps, weight_decay=weight_decay)


def _lamb_scale(sums, values, shape):
    ratio = trust_ratio(math.sqrt(sums["param_sq"]), math.sqrt(sums["update_sq"]))
    return {"step_size": values["lr"] * ratio}


_NORMS = ("param_sq", "update_sq")

LAMB = Algorithm(
    "LAMB", "LAMB: Adam's step plus weight decay, scaled per tensor by the trust ratio "
    "|p| / |u| (layer-wise adaptive moments, for large batches).",
    """\
exp_avg = beta1 * exp_avg + (1 - beta1) * g
exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
u = exp_avg / (1 - beta1**t) / (sqrt(exp_avg_sq / (1 - beta2**t)) + eps) + weight_decay * p
p -= lr * |p| / |u| * u   (norms over the tensor; the ratio is 1 if either is 0)
(two passes: the moments and both norms, then the update)""",
    "optax.lamb", rules.lamb_rule,
    states=(State("exp_avg", eight_bit="signed"), State("exp_avg_sq", eight_bit="unsigned")),
    hyperparameters=(_lr(1e-3, 1e-3, 3e-2), _betas(), _eps(1e-6, 1e-8, 1e-5), WEIGHT_DECAY,
                     MAXIMIZE),
    update=_lamb_update,
    two_phase=TwoPhase(_NORMS, rules.lamb_apply_rule, _lamb_scale,
                       second_reads=("exp_avg", "exp_avg_sq"), reads_grad=False),
    demo={"lamb": ({}, 0.05)}, shown=("betas",),
)


def _lars_update(lr, momentum, weight_decay, trust_coefficient, eps, nesterov):
    return dict(lr=lr, trust_coefficient=trust_coefficient, eps=eps,
                weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def _lars_scale(sums, values, shape):
    ratio = trust_ratio(math.sqrt(sums["param_sq"]), math.sqrt(sums["update_sq"]),
                        values["trust_coefficient"], values["eps"])
    return {"step_size": -values["lr"] * ratio}


LARS = Algorithm(
    "LARS", "LARS: SGD with momentum whose step is scaled per tensor by the trust ratio "
    "trust_coefficient |p| / (|u| + eps) (layer-wise adaptive rate scaling).",
    """\
u = g + weight_decay * p
u *= trust_coefficient * |p| / (|u| + eps)   (norms over the tensor; 1 if either is 0)
momentum_buffer = -lr * u + momentum * momentum_buffer
p += momentum_buffer   (nesterov: p += -lr * u + momentum * momentum_buffer)
(two passes: both norms, then the update)""",
    "optax.lars", rules.lars_rule,
    states=(State("momentum_buffer", eight_bit="signed"),),
    hyperparameters=(
        _lr(1.0, 0.5, 5.0),
        Hyper("momentum", 0.9, NON_NEGATIVE, Uniform(0.3, 0.95)),
        WEIGHT_DECAY,
        Hyper("trust_coefficient", 0.001, NON_NEGATIVE, Uniform(1e-3, 1e-1, log=True)),
        Hyper("eps", 0.0, NON_NEGATIVE, Uniform(1e-9, 1e-6, log=True), switch=True),
        _flag("nesterov"), MAXIMIZE),
    update=_lars_update,
    two_phase=TwoPhase(_NORMS, rules.lars_apply_rule, _lars_scale,
                       first_unused=("momentum_buffer",)),
    bench={"lr": 1.0}, demo={"lars": ({}, 20.0)}, shown=("momentum",),
)


def _muon_update(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                 adjust_lr_fn):
    return dict(one_minus_momentum=1.0 - momentum, momentum=momentum,
                buffer_low=abs(1.0 - momentum) < 0.5, nesterov_low=abs(momentum) < 0.5,
                nesterov=nesterov, decay_factor=1.0 - lr * weight_decay, lr=lr,
                ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn)


def _muon_scale(sums, values, shape):
    return {"step_size": -orthogonalize.adjusted_lr(values["lr"], shape,
                                                    values["adjust_lr_fn"])}


MUON = Algorithm(
    "Muon", "Muon: momentum orthogonalised per weight matrix by Newton–Schulz iterations "
    "(2-D parameters only).",
    """\
momentum_buffer = momentum * momentum_buffer + (1 - momentum) * g
d = (1 - momentum) * g + momentum * momentum_buffer   (nesterov; else d = momentum_buffer)
X = d / max(|d|_F, eps)   (transposed if it has more rows than columns)
ns_steps times: A = X X^T; X = a X + (b A + c A A) X   ((a, b, c) = ns_coefficients)
p = p * (1 - lr * weight_decay) - lr * ratio * X   (ratio = sqrt(max(1, rows / columns)),
    or 0.2 sqrt(max(rows, columns)) with adjust_lr_fn="match_rms_adamw")
(two passes: the momentum and |d|_F, then the update; the products between them)""",
    "torch.optim.Muon", rules.muon_rule,
    states=(State("momentum_buffer", eight_bit="signed"),),
    hyperparameters=(
        _lr(1e-3, 5e-3, 5e-2),
        Hyper("weight_decay", 0.1, NON_NEGATIVE, Uniform(2**-7, 2**-2, log=True),
              switch=True),
        Hyper("momentum", 0.95, NON_NEGATIVE, Uniform(0.3, 0.99)),
        Hyper("nesterov", True, Flag(), switch=True),
        Hyper("ns_coefficients", (3.4445, -4.7750, 2.0315),
              Parts((FINITE, FINITE, FINITE), ("ns_a", "ns_b", "ns_c")),
              (Uniform(3.3, 3.5), Uniform(-4.8, -4.6), Uniform(1.9, 2.1))),
        Hyper("eps", 1e-7, NON_NEGATIVE, Uniform(1e-9, 1e-6, log=True)),
        Hyper("ns_steps", 5, Steps(low=0, optional=False, high=100), Uniform(3, 7)),
        Hyper("adjust_lr_fn", None, Choice((None, "original", "match_rms_adamw"))),
    ),
    update=_muon_update,
    two_phase=TwoPhase(("direction_sq",), rules.muon_apply_rule, _muon_scale,
                       second_unused=("momentum_buffer",),
                       direction=orthogonalize.muon_direction),
    matrices=True, bench={"lr": 0.02}, demo={"muon": ({}, 0.05)}, shown=("momentum",),
)


def _adafactor_update(lr, beta2_decay, eps, d, weight_decay, *, step):
    weight = float(step) ** beta2_decay
    return dict(weight=weight, rest=1.0 - weight, floor=0.0 if eps[0] is None else
                eps[0] * eps[0], low=abs(weight) < 0.5, decay_factor=1.0 - lr * weight_decay,
                rho=min(lr, 1.0 / math.sqrt(step)), eps1=eps[0], eps2=eps[1], d=d)


def _adafactor_for_dtype(values, dtype):
    if values["eps1"] is not None:
        return dict(values)
    eps1 = float(ml_dtypes.finfo(dtype).eps)
    return {**values, "eps1": eps1, "floor": eps1 * eps1}


def _adafactor_scale(sums, values, shape):
    size = math.prod(shape)
    if size == 0:
        return {"step_size": 0.0}
    alpha = max(values["eps2"], math.sqrt(sums["param_sq"] / size)) * values["rho"]
    return {"step_size": alpha / max(1.0, math.sqrt(sums["update_sq"] / size) / values["d"])}


ADAFACTOR = Algorithm(
    "Adafactor", "Adafactor: a second moment factored into row and column means for "
    "parameters of two or more dimensions, relative step sizes and update clipping.",
    """\
rho = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho   (RMS over the tensor)
p *= 1 - lr * weight_decay
2+ dims: row_var = lerp(row_var, mean(g^2 over columns), t**beta2_decay), col_var likewise
    v = row_var col_var / max(mean(row_var), eps1)   (per matrix of the last two dims)
vectors: variance = lerp(variance, g^2, t**beta2_decay);  v = variance
u = g / sqrt(max(v, eps1^2));  p -= alpha / max(1, RMS(u) / d) * u
(eps1=None: the machine epsilon of the parameter's dtype; vectors: two passes, 2+ dims:
three, the factors updated on the host between them)""",
    "torch.optim.Adafactor", rules.adafactor_rule,
    states=(State("variance", eight_bit="unsigned"),
            State("row_var", eight_bit="full", why="a row or column mean per row or column",
                  bf16=False),
            State("col_var", eight_bit="full", why="a row or column mean per row or column",
                  bf16=False)),
    hyperparameters=(
        _lr(1e-2, 1e-3, 5e-2),
        Hyper("beta2_decay", -0.8, Real(-math.inf, 0.0, high_open=False), Uniform(-1.0, -0.5)),
        Hyper("eps", (None, 1e-3), Parts((Real(optional=True), NON_NEGATIVE),
                                         ("eps1", "eps2")),
              (Uniform(1e-30, 1e-20, log=True), Uniform(1e-4, 1e-2, log=True))),
        Hyper("d", 1.0, Real(1.0), Uniform(1.0, 2.0)),
        WEIGHT_DECAY, MAXIMIZE),
    update=_adafactor_update,
    two_phase=TwoPhase(_NORMS, rules.adafactor_apply_rule, _adafactor_scale,
                       first_unused=("row_var", "col_var"), second_reads=("variance",),
                       second_unused=("row_var", "col_var"), for_dtype=_adafactor_for_dtype),
    factored=("row_var", "col_var"),
    demo={"adafactor": ({}, 0.3)}, shown=("beta2_decay",),
)


#: Every algorithm, by class name.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    SGD, ADAGRAD, ADADELTA, RMSPROP, ADAM, ADAMW, ADAMAX, NADAM, RADAM, RPROP, ASGD,
    LION, ADOPT, ADEMAMIX, ADAN, SCHEDULE_FREE_SGD, SCHEDULE_FREE_ADAMW, LAMB, LARS, MUON,
    ADAFACTOR,
)}

#: The kernel that moves a Schedule-Free parameter between its points (``.train()``,
#: ``.eval()``): ``p = lerp(p, z, weight)``, reading the parameter as its ``g``.
SCHEDULE_FREE_MODE = RuleSpec("schedule_free_mode", rules.schedule_free_mode_rule, ("z",),
                              ("weight", "rest"), ("low",), (), ("full",), (False,))

#: Every rule's kernel signature, by rule name (algorithms may share a rule).
SPECS: dict[str, RuleSpec] = {a.spec.name: a.spec for a in ALGORITHMS.values()}
SPECS.update({a.second_spec.name: a.second_spec for a in ALGORITHMS.values()
              if a.second_spec is not None})
SPECS[SCHEDULE_FREE_MODE.name] = SCHEDULE_FREE_MODE
