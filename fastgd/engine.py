"""The execution layer: every update, from every face, is checked and launched here.

* :class:`Functional` is one fused pass over one parameter with explicit state arrays (the
  functional API): it checks the arrays and the hyperparameters, computes the step's
  scalars and launches the kernel of the arrays' target (CPU or CUDA).
* :class:`Stepper` steps the parameters of an optimizer (the classes): each parameter is
  checked once, when it is added (:class:`Param`); a step checks each gradient against its
  parameter, computes the scalars once per parameter group and step, creates missing state,
  and runs the tensors of each group that share dtype, device, storage format and scalars as
  one launch over a table of their array addresses.

A training loop hands the same arrays every step, so what a step checked and built is kept
for the next: the checked options of each group (until one changes), and the *step plan* --
the launches of the last step with their address tables (the gradients' column is rewritten
on each step). A step that has the same structure (the same parameters with gradients, the
same state arrays, options that need the same state) runs the plan after cheap checks of
every parameter (the same object, memory, shape, dtype, strides, still writable) and every
gradient; any other step goes the full way and makes a new plan. The functional API keeps the
checks of the arrays of its recent calls in the same way (by identity, through weak
references). Either way, every check of a call runs before anything is written: a refused
call changes nothing.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import numpy as np

from fastgd import cpu, factored, lowbit, orthogonalize
from fastgd.algorithms import SCHEDULE_FREE_MODE, Algorithm, RuleSpec, factor_shapes
from fastgd.arrays import (
    address,
    as_array,
    check_like,
    check_no_overlap,
    check_same_gpu,
    check_state_precision,
    check_stream,
    from_host,
    gpu_of,
    is_device,
    is_torch,
    kernel_view,
    memory_order,
    on_device_of,
    on_gpu,
    plain,
    same_layout_address,
    shares_memory,
    stand_in,
    state_dtype,
    storage,
    storage_dtype,
)
from fastgd.halfprec import to_float32
from fastgd.hyperparams import Flag, Parts, integer, learning_rate, number, step_count
from fastgd.kernelgen import (
    OUT,
    STATE_STORAGE,
    array_args,
    computes_in_float32,
    join_storage,
    split_storage,
    stochastic,
)
from fastgd.pointers import address as host_address
from fastgd.reductions import clip_scale, global_norm

_FLOAT64 = np.dtype(np.float64)


class StepInfo(NamedTuple):
    """What a step with ``max_norm`` or ``skip_if_nonfinite`` found."""

    grad_norm: float  #: global L2 norm of the gradients, before clipping
    finite: bool  #: no gradient holds NaN or Inf
    skipped: bool  #: the step changed nothing (``skip_if_nonfinite`` and not ``finite``)


class StepScalars(NamedTuple):
    """The scalars of one step of a rule: its coefficients (Python floats, cast to the array
    dtype by the CPU kernels themselves, on the host for CUDA kernels) and runtime flags, in
    the rule's order; the optional states in use; and the factor applied to every gradient
    element as it is read: -1 for ``maximize``, times the clipping factor when gradients are
    clipped by global norm."""

    coefficients: tuple[float, ...]
    flags: tuple[bool, ...]
    present: tuple[str, ...] = ()
    grad_scale: float = 1.0
    #: everything ``update`` returned, by name (two-phase steps: both passes take from it)
    values: Mapping[str, Any] | None = None

    def kernel_scalars(self, dtype: Any) -> tuple[Any, ...]:
        """A CUDA kernel's scalar arguments: coefficients and ``grad_scale`` in ``dtype``,
        flags."""
        if dtype == _FLOAT64:  # Python floats are float64 already
            return (*self.coefficients, self.grad_scale, *self.flags)
        to = dtype.type
        return (*map(to, self.coefficients), to(self.grad_scale), *self.flags)

    def packed(self) -> tuple[Any, ...]:
        """A CPU kernel's scalar arguments: coefficients and ``grad_scale`` as one tuple of
        floats (the kernel casts them to its dtype), flags."""
        return ((*self.coefficients, self.grad_scale), *self.flags)


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``mapping -> tuple(mapping[n] for n in names)``, at C speed."""
    if not names:
        return lambda mapping: ()
    if len(names) == 1:
        one = operator.itemgetter(names[0])
        return lambda mapping: (one(mapping),)
    return operator.itemgetter(*names)


@cache
def _lookups(algorithm: Algorithm) -> tuple[Any, Any, Any, tuple[str, ...]]:
    """How :func:`step_scalars` reads ``algorithm``'s options and ``update``'s result."""
    spec = algorithm.spec
    return (_getter(algorithm.reads), _getter(spec.coefficients), _getter(spec.flags),
            tuple(s.name for s in algorithm.scalars))


def step_scalars(algorithm: Algorithm, options: Mapping[str, Any],
                 inputs: Mapping[str, Any], present: tuple[str, ...] | None = None
                 ) -> tuple[StepScalars, dict[str, float]]:
    """The scalars of a step with checked ``options`` and ``inputs`` (``step``, ...), and
    the new values of the algorithm's per-parameter scalars. ``present``: the optional
    states the options use, if known."""
    reads, coefficients, flags, scalars = _lookups(algorithm)
    out = algorithm.update(*reads(options), **inputs)
    return (StepScalars(coefficients(out), flags(out),
                        algorithm.present(options) if present is None else present,
                        -1.0 if options.get("maximize") else 1.0,
                        out if algorithm.two_phase is not None else None),
            {n: out[n] for n in scalars} if scalars else {})


@cache
def _input_checks(algorithm: Algorithm) -> tuple[tuple[str, Callable[[str, Any], Any]], ...]:
    """How :func:`check_inputs` checks each of ``algorithm``'s step inputs."""
    domains = {s.name: s.domain for s in algorithm.scalars}
    return tuple((name, (lambda _, value: step_count(value)) if name == "step"
                  else Flag().check if name == "first_step" else domains[name].check)
                 for name in algorithm.inputs)


def check_inputs(algorithm: Algorithm, values: Sequence[Any]) -> dict[str, Any]:
    """The functional API's step inputs (``step``, ``first_step``, scalars: the values of
    ``algorithm.inputs``), checked, by name."""
    return {name: check(name, value)
            for (name, check), value in zip(_input_checks(algorithm), values, strict=True)}


# -- the functional face: one parameter, explicit state -----------------------------------------

def prepare(param: Any, grad: Any, states: Mapping[str, Any], spec: Any,
            writable: bool = True) -> tuple[list[Any], str, tuple[tuple[int, ...], str]]:
    """Check ``param``, ``grad`` and the state arrays (``writable``: those but ``grad``
    must be); return their flat kernel views in order, the storage format of the kernel
    (:mod:`fastgd.kernelgen`), and the parameter's shape and memory order.

    Host arrays give NumPy views, GPU arrays Numba device-array views. State arrays have
    :func:`~fastgd.arrays.state_dtype`, all of them: full precision, or bfloat16 for a
    parameter that computes in float32 (on the CPU). 8-bit state (on the CPU, parameters
    that compute in float32) is a pair ``(codes, absmax)`` for each state that ``spec``
    quantizes (uint8 codes like ``param``, float32 absmax, one per block), the other states
    full-precision arrays.
    """
    eight_bit = any(isinstance(value, tuple) for value in states.values())
    if eight_bit:
        states = _eight_bit_states(states, spec)
    device = is_device(param)
    inputs = {"param": param, "grad": grad, **states}
    for name, value in inputs.items():  # a host/GPU mix is refused before any conversion
        if is_device(value) != device:
            as_array(value, name, writable=False, device=device)
    arrays = {name: as_array(value, name, writable=writable and name != "grad",
                             device=device, codes=eight_bit)
              for name, value in inputs.items()}
    p = arrays["param"]
    order = memory_order(p, "param")
    names = [name for name in arrays if name not in ("param", "grad")]
    low = [n for n in names if storage(arrays[n]) == "bf16"]
    precision = "8bit" if eight_bit else (
        "bf16" if low and state_dtype(p) == np.float32 else "full")
    check_state_precision(precision, p, (low or names or ["param"])[0])
    for name, arr in arrays.items():
        if name.endswith(lowbit.ABSMAX):
            blocks = lowbit.blocks(p.size)
            if arr.dtype != np.float32 or arr.shape != (blocks,):
                raise TypeError(f"{name} must be float32 of shape ({blocks},) (one per "
                                f"block of 256 elements), got {arr.dtype} {arr.shape}")
        elif name != "param":
            form = spec.form(name, precision) if name != "grad" else "full"
            check_like(arr, p, order, name,
                       dtype=None if name == "grad" else state_dtype(p, form))
    if device and storage(p):
        raise TypeError("float16/bfloat16 parameters are supported on the CPU only")
    check_no_overlap(arrays)
    if device:
        check_same_gpu(arrays)
    return ([kernel_view(a, order) if not n.endswith(lowbit.ABSMAX) else a
             for n, a in arrays.items()],
            join_storage(storage(p), STATE_STORAGE[precision]), (tuple(p.shape), order))


def _eight_bit_states(states: Mapping[str, Any], spec: Any) -> dict[str, Any]:
    """The state arguments of an 8-bit call, each quantized state's ``(codes, absmax)``
    pair as two entries (``name``, ``name_absmax``)."""
    expanded: dict[str, Any] = {}
    for name, value in states.items():
        quantized = spec.quantized(name)
        if isinstance(value, tuple) != bool(quantized):
            raise TypeError(
                f"{name}: with 8-bit state, "
                + (f"{name} is a (codes, absmax) pair" if quantized else
                   f"{name} stays a full-precision array (it is not quantized)")
                + f", got {type(value).__name__}")
        if quantized:
            if len(value) != 2:
                raise TypeError(f"{name} must be a (codes, absmax) pair, got {len(value)} "
                                "items")
            expanded[name], expanded[name + lowbit.ABSMAX] = value
        else:
            expanded[name] = value
    return expanded


class Functional:
    """The functional API's calls of one algorithm (each generated function calls one).

    ``Functional(algorithm)(param, grad, states, values, inputs, stream)`` checks every
    argument, runs one step in place, and returns the new per-parameter scalars. ``states``
    are the state arrays in the algorithm's order (None for an unused optional one);
    ``values`` its functional hyperparameter arguments
    (:attr:`~fastgd.algorithms.Algorithm.functional_hyperparameters`, a pair as its two parts),
    then the flags that optional arrays imply; ``inputs`` what the step needs
    (:attr:`~fastgd.algorithms.Algorithm.inputs`).

    Kept between calls: the checked options of the last call (reused when the same value
    objects come again) and, for host arrays, the checks and launch table of each set of
    arrays (reused when the same arrays come again -- identity through weak references, which
    keep no array alive -- after :class:`Param`'s cheap layout checks); a training loop that
    calls it with the same arrays pays for those checks only.
    """

    #: Sets of arrays kept (those of one training loop); at the limit, the dead ones go.
    LIMIT = 4096

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self._layout = [(h.name, len(h.domain.parts) if isinstance(h.domain, Parts) else 1)
                        for h in algorithm.functional_hyperparameters]
        self._layout += [(s.when, 1) for s in algorithm.optional if s.implied]
        self._states = tuple(s.name for s in algorithm.states)
        self._simple = algorithm.inputs in ((), ("step",))
        self._last: tuple[tuple[Any, ...], Any] | None = None
        self._scalars: tuple[dict[str, Any], tuple[Any, ...], Any] | None = None
        self._kept: dict[int, _Kept] = {}  # by the id of the parameter

    def options(self, values: tuple[Any, ...]) -> tuple[dict[str, Any], tuple[str, ...],
                                                     tuple[str, ...], Any]:
        """The checked options of the call with these argument values, the optional states
        they use, the state arrays a step with them takes (names), and how to pick those out
        of the ``states`` argument."""
        algorithm = self.algorithm
        raw = dict(algorithm.defaults)
        i = 0
        for name, width in self._layout:
            raw[name] = values[i] if width == 1 else tuple(values[i:i + width])
            i += width
        options = algorithm.check(raw)
        present = algorithm.present(options)
        # (factored state: the arrays a parameter takes depend on its dimensions, see _first)
        used = self._states if algorithm.factored else algorithm.arrays(present)
        pick = _getter([self._states.index(n) for n in used])
        self._last = (values, (options, present, used, pick))
        return options, present, used, pick

    def __call__(self, param: Any, grad: Any, states: tuple[Any, ...],
                 values: tuple[Any, ...], inputs: tuple[Any, ...], stream: Any = None,
                 out: Sequence[Any] | None = None) -> Any:
        """One step; returns the new per-parameter scalar (a tuple of them if several, None
        if the algorithm has none). ``out``: see :meth:`_into`."""
        algorithm = self.algorithm
        last = self._last  # (the options of the last call, when the same values come again)
        if last is not None and all(map(operator.is_, last[0], values)):
            options, present, used, pick = last[1]
        else:
            options, present, used, pick = self.options(values)
        computed = self._scalars  # (those of the last call, for a loop over parameters)
        if computed is not None and computed[0] is options and all(
                map(operator.is_, computed[1], inputs)) and len(computed[1]) == len(inputs):
            scalars, new = computed[2]
        else:
            if self._simple:  # (the usual inputs: none, or just the step number)
                step = inputs[0] if inputs else 1
                checked = {"step": step if type(step) is int and step > 0 else step_count(step)
                           } if inputs else {}
            else:
                checked = check_inputs(algorithm, inputs)
            scalars, new = step_scalars(algorithm, options, checked, present)
            self._scalars = (options, inputs, (scalars, new))
        arrays = pick(states)
        if out is not None:
            self._into(param, grad, arrays, used, present, scalars, self._outs(out, states, used),
                       stream)
        else:
            self._in_place(param, grad, arrays, used, present, scalars, stream)
        if not new:
            return None
        return next(iter(new.values())) if len(new) == 1 else tuple(new.values())

    def _in_place(self, param: Any, grad: Any, arrays: tuple[Any, ...], used: tuple[str, ...],
                  present: tuple[str, ...], scalars: StepScalars, stream: Any) -> None:
        kept = self._kept.get(id(param)) if stream is None else None
        if kept is None or not kept.run(param, grad, arrays, used, scalars):
            self._first(param, grad, arrays, used, present, scalars, stream)

    def _outs(self, out: Any, states: tuple[Any, ...], used: tuple[str, ...]
              ) -> tuple[Any, tuple[Any, ...]]:
        """The ``out`` argument checked: ``(param's, the states' in the order of
        ``used``)``. It has an entry per array argument, None where the call updates none
        (a state given as None, or one these hyperparameters do not use)."""
        names = ("param", *self._states)
        if not isinstance(out, (tuple, list)) or len(out) != len(names):
            raise TypeError(f"out must be a tuple of {len(names)} arrays, one per array "
                            f"argument ({', '.join(names)}; None where a state is None or "
                            f"unused), got {type(out).__name__}"
                            + (f" of {len(out)}" if isinstance(out, (tuple, list)) else ""))
        for k, (name, state) in enumerate(zip(names, (None, *states), strict=True)):
            updated = k == 0 or (state is not None and name in used)
            if (out[k] is None) == updated:
                raise ValueError(f"out[{k}] ({name}) must be "
                                 + ("an array: the call updates it" if updated else
                                    "None: the call does not update it"))
        return out[0], tuple(out[names.index(n)] for n in used)

    def _into(self, param: Any, grad: Any, arrays: tuple[Any, ...], used: tuple[str, ...],
              present: tuple[str, ...], scalars: StepScalars,
              out: tuple[Any, tuple[Any, ...]], stream: Any) -> None:
        """A step *out of place*: ``param`` and the states (which may be read-only) are
        read and their new values written into the arrays of ``out`` (each like the array
        it replaces: shape, dtype, memory order; 8-bit state as ``(codes, absmax)``), moving
        the same bytes as in place (:data:`~fastgd.kernelgen.OUT` kernels). An ``out``
        array may be the array it replaces (updated in place) but share no other memory.
        Host arrays only. (A step whose passes read the state twice or whose state is
        factored, :attr:`~fastgd.algorithms.Algorithm.two_phase`, copies the arrays into
        ``out`` and steps those in place.)"""
        algorithm = self.algorithm
        out_param, outs = out
        if stream is not None or is_device(param):
            raise TypeError("out= is for host arrays (NumPy, torch CPU tensors); GPU arrays "
                            "are updated in place")
        for name, array in zip(used, arrays, strict=True):
            if array is None and name in present:
                raise ValueError(f"{name} is required with these hyperparameters (got None)")
        given = {n: a for n, a in zip(used, arrays, strict=True) if a is not None}
        targets = {n: a for n, a in zip(used, outs, strict=True) if a is not None}
        spec = algorithm.spec
        if algorithm.two_phase is not None:
            sources = {"param": as_array(param, "param", writable=False, device=False),
                       **{n: as_array(a, n, writable=False, device=False)
                          for n, a in given.items()}}
            read_grad = as_array(grad, "grad", writable=False, device=False)
            if algorithm.factored and sources["param"].ndim >= 2:  # (their own shapes)
                self._factored_arrays(param, dict(zip(used, arrays, strict=True)), present)
                p = sources["param"]
                for name in given:
                    check_like(sources[name], stand_in(factor_shapes(p.shape)[name],
                                                       state_dtype(p)),
                               "C", name, f"param's {name}")
                check_like(read_grad, p, memory_order(p, "param"), "grad")
            else:
                prepare(param, grad, given, spec, writable=False)
            copies = {n: as_array(a, f"out {n}", writable=True, device=False)
                      for n, a in {"param": out_param, **targets}.items()}
            for name, source in sources.items():
                check_like(copies[name], source, memory_order(source, name), f"out {name}",
                           name)
            _check_out_overlap(list(sources.values()), list(copies.values()),
                               list(sources), read_grad)
            check_no_overlap({f"out {n}": c for n, c in copies.items()})
            for name, source in sources.items():
                if not _same_memory(source, copies[name]):
                    np.copyto(copies[name], source)
            self._first(out_param, grad, outs, used, present, scalars, None)
            return
        views, fmt, (shape, order) = prepare(param, grad, given, spec, writable=False)
        check_like(as_array(out_param, "out param", writable=True, device=False),
                   as_array(param, "param", writable=False, device=False), order, "out param")
        try:
            written, out_fmt, _ = prepare(out_param, grad, targets, spec)
        except (TypeError, ValueError) as exc:  # (the out arrays, named as what they replace)
            raise type(exc)(f"out: {exc}") from None
        if out_fmt != fmt:
            raise TypeError("out's state arrays must have the dtypes of the state arrays "
                            f"(kernel formats {out_fmt!r} and {fmt!r})")
        written = [written[0], *written[2:]]
        _check_out_overlap([views[0], *views[2:]], written,
                           ["param", *array_args(spec, present, fmt)[2:]],
                           views[1])
        launch(spec, views + written, scalars, None, join_storage(fmt, OUT))

    def _first(self, param: Any, grad: Any, arrays: tuple[Any, ...], used: tuple[str, ...],
               present: tuple[str, ...], scalars: StepScalars, stream: Any) -> None:
        """A step on arrays not seen before (or changed since): every check, the launch,
        and (host arrays) what to keep of it."""
        if self.algorithm.factored:
            used = self._factored_arrays(param, dict(zip(used, arrays, strict=True)), present)
            arrays = tuple(used.values())
            if set(used) <= set(self.algorithm.factored):  # (two or more dimensions)
                return self._first_factored(param, grad, used, scalars, stream)
            used = tuple(used)
        for name, array in zip(used, arrays, strict=True):
            if array is None and name in present:
                raise ValueError(f"{name} is required with these hyperparameters (got None)")
        views, fmt, (shape, order) = prepare(param, grad, dict(zip(used, arrays, strict=True)),
                                             self.algorithm.spec)
        if self.algorithm.matrices:
            check_matrix(self.algorithm, shape, "param")
        if self.algorithm.two_phase is not None and split_storage(fmt)[2] == "8bit":
            raise TypeError(no_eight_bit(self.algorithm))
        if stream is not None:
            check_stream(stream, views)
        if self.algorithm.two_phase is not None and self.algorithm.two_phase.direction:
            orthogonalize.require(views[0])
        with on_gpu(gpu_of(views[0])):
            if self.algorithm.two_phase is not None:
                run_two_phase(self.algorithm, dict(zip(("param", "grad", *used), views,
                                                       strict=True)), scalars, stream, fmt,
                              layout=(shape, order))
                return
            launch(self.algorithm.spec, views, scalars, stream, fmt)
        eight_bit = split_storage(fmt)[2] == "8bit"  # ((codes, absmax): checked every call)
        if stream is None and isinstance(views[0], np.ndarray) and not eight_bit:
            self._keep(param, arrays, used, fmt, scalars.present)

    def _factored_arrays(self, param: Any, given: Mapping[str, Any],
                         present: tuple[str, ...]) -> dict[str, Any]:
        """Of the state arguments of an algorithm with factored state (Adafactor), those a
        parameter of its dimensions takes, by name; the others must be None."""
        algorithm = self.algorithm
        ndim = len(getattr(param, "shape", ()))
        wanted = algorithm.arrays(present, ndim)
        for name, array in given.items():
            if (array is None) == (name in wanted):
                raise ValueError(f"{name} {'is required' if array is None else 'must be None'}"
                                 f" for a parameter of {ndim} dimensions ("
                                 f"{algorithm.name} keeps {', '.join(wanted)})")
        return {name: given[name] for name in wanted}

    def _first_factored(self, param: Any, grad: Any, given: Mapping[str, Any],
                        scalars: StepScalars, stream: Any) -> None:
        """A step of a parameter with factored state, every array checked first."""
        algorithm = self.algorithm
        views, fmt, (shape, order) = prepare(param, grad, {}, algorithm.spec)
        checked = Param(param, "param")
        factors = {n: factor_array(checked, array, n, n).view for n, array in given.items()}
        check_no_overlap({"grad": views[1], **factors})
        factored.matrices(views[0], shape, order)  # (refuses what it cannot step, first)
        if stream is not None:
            check_stream(stream, views)
        with on_gpu(gpu_of(views[0])):
            run_factored(algorithm, {"param": views[0], "grad": views[1], **factors},
                         scalars, stream, fmt, (shape, order))

    def _keep(self, param: Any, arrays: tuple[Any, ...], used: tuple[str, ...], fmt: str,
              present: tuple[str, ...]) -> None:
        """Keep the checks (already passed) of these arrays for the next call."""
        if len(self._kept) >= self.LIMIT:
            for key, kept in list(self._kept.items()):
                if not kept.alive():
                    self._kept.pop(key, None)
            if len(self._kept) >= self.LIMIT:
                self._kept.clear()
        checked = [Param(a, name) for a, name in zip((param, *arrays), ("param", *used),
                                                       strict=True)]
        addresses = np.array([[checked[0].address, 0, *(c.address for c in checked[1:])]],
                             dtype=np.int64)
        sizes = np.array([checked[0].view.size], dtype=np.int64)
        table = cpu.Table(self.algorithm.spec, present, fmt, checked[0].dtype, addresses, sizes)
        try:
            self._kept[id(param)] = _Kept(checked, table)
        except TypeError:  # an array type without weak references: check it every time
            pass


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size == 0 or (a.ctypes.data == b.ctypes.data and a.nbytes == b.nbytes)




def _check_out_overlap(sources: Sequence[np.ndarray], outs: Sequence[np.ndarray],
                       names: Sequence[str], grad: np.ndarray | None = None) -> None:
    """An out-of-place step's arrays: each ``out`` array is the array it replaces (same
    memory) or shares memory with none of the arrays read (nor with ``grad``)."""
    for name, target in zip(names, outs, strict=True):
        for other, source in zip(names, sources, strict=True):
            if (other != name or not _same_memory(source, target)) and shares_memory(
                    source, target):
                raise ValueError(f"out {name} shares memory with {other}; pass a separate "
                                 "array (or that array itself, to update it in place)")
        if grad is not None and shares_memory(grad, target):
            raise ValueError(f"out {name} shares memory with grad")


class _Kept:
    """A functional call's checked arrays: weak references to them, their layouts (detached
    :class:`Param`: no reference to the arrays) and their launch table."""

    __slots__ = ("param", "layout", "states", "table", "addresses", "span")

    def __init__(self, checked: list[Param], table: cpu.Table) -> None:
        self.param = weakref.ref(checked[0].original)  # (TypeError: no weak references)
        self.layout = checked[0].detached()
        self.states = tuple((weakref.ref(c.original), c.detached()) for c in checked[1:])
        self.table, self.addresses = table, table.addresses
        # the memory of the state arrays lies between these addresses
        nonempty = [c for c in checked[1:] if c.nbytes]
        self.span = (min((c.address for c in nonempty), default=0),
                     max((c.address + c.nbytes for c in nonempty), default=0))

    def alive(self) -> bool:
        return self.param() is not None and all(r() is not None for r, _ in self.states)

    def run(self, param: Any, grad: Any, arrays: tuple[Any, ...], used: tuple[str, ...],
            scalars: StepScalars) -> bool:
        """The step on the same arrays as before, if they are (the same objects, with the same
        layout); False (nothing done) if not. ``grad`` is checked as in a first call."""
        layout = self.layout
        if self.param() is not param or not layout.matches(param):
            return False
        for (ref, state), array in zip(self.states, arrays):  # noqa: B905 - equal lengths
            if ref() is not array or not state.matches(array):
                return False
        where, holder = layout.grad_address(grad, None)  # (holder: alive till the return)
        low, high = self.span
        if where and where < high and low < where + layout.nbytes:
            for (_, state), name in zip(self.states, used):  # noqa: B905
                if state.overlaps(where, layout.nbytes):
                    raise ValueError(f"grad and {name} share memory; pass separate arrays")
        self.addresses[0, 1] = where
        self.table.launch(scalars.packed())
        return True


def compute_dtype(param: Any, fmt: str) -> np.dtype:
    """dtype a kernel computes in: the param's, float32 for float16/bfloat16 param or
    state."""
    return np.dtype(np.float32) if computes_in_float32(fmt) else np.dtype(param.dtype)


def launch(spec: RuleSpec, arrays: list[Any], scalars: StepScalars, stream: Any = None,
           fmt: str = "", rounding: tuple[int, ...] = ()) -> None:
    """Run a rule on checked flat kernel views (param, grad, [master], states in rule
    order) of storage format ``fmt``: NumPy arrays on the CPU, device arrays on the GPU
    (queued on ``stream``, which the caller has checked); ``rounding``: the
    ``(rounding_key, rounding_base)`` of stochastic rounding."""
    if isinstance(arrays[0], np.ndarray):
        cpu.launch(spec, scalars.present, arrays, scalars.packed() + rounding, fmt)
    else:
        from fastgd import cuda

        cuda.launch(spec, scalars.present, arrays,
                    scalars.kernel_scalars(compute_dtype(arrays[0], fmt)) + rounding, stream,
                    fmt)


def no_eight_bit(algorithm: Algorithm) -> str:
    """Why a two-phase step refuses 8-bit state (both faces refuse it, before any write)."""
    return (f"{algorithm.name} has no 8-bit state (its second pass would read what its "
            "first encoded); use bfloat16 state")


def _pass_scalars(spec: RuleSpec, values: Mapping[str, Any], grad_scale: float
                  ) -> StepScalars:
    return StepScalars(tuple(values[c] for c in spec.coefficients),
                       tuple(values[f] for f in spec.flags), (), grad_scale)


def check_matrix(algorithm: Algorithm, shape: Sequence[int], name: str) -> None:
    """An algorithm of 2-D parameters (Muon) refuses others (torch.optim.Muon's error)."""
    if len(shape) != 2:
        raise ValueError(f"{algorithm.name} only supports 2D parameters whereas we found a "
                         f"parameter with size: {tuple(shape)} ({name})")


def run_two_phase(algorithm: Algorithm, arrays: Mapping[str, Any], scalars: StepScalars,
                  stream: Any = None, fmt: str = "", rounding: tuple[int, ...] = (),
                  layout: tuple[tuple[int, ...], str] = ((), "C")) -> None:
    """Both passes of a two-phase step (:class:`~fastgd.algorithms.TwoPhase`) over one
    tensor's checked flat kernel views, by name (``param``, ``grad``, ``master``, the
    states): the first pass updates its states and sums what the trust ratio needs, the
    host turns the sums into the second pass's coefficients (and computes the direction,
    if the step has one), the second pass updates the parameter. ``rounding``: the
    ``(rounding_key, rounding_base)`` of stochastic rounding; ``layout``: the parameter's
    shape and memory order."""
    phase, first, second = algorithm.two_phase, algorithm.spec, algorithm.second_spec
    values = _for_dtype(phase, scalars.values, arrays["param"], fmt)
    picked = [arrays[n] for n in array_args(first, (), fmt)]
    one = _pass_scalars(first, values, scalars.grad_scale)
    if isinstance(picked[0], np.ndarray):
        sums = cpu.reduce(first, picked, one.packed() + rounding, fmt)
    else:
        from fastgd import cuda

        sums = cuda.reduce(first, picked, one.kernel_scalars(compute_dtype(picked[0], fmt))
                           + rounding, stream, fmt)
    named = dict(zip(phase.sums, sums.tolist(), strict=True))
    values = {**values, **phase.scale(named, values, layout[0])}
    views = arrays if phase.reads_grad else {**arrays, "grad": arrays["param"]}
    grad_scale = scalars.grad_scale
    if phase.direction is not None:
        views = {**views, "grad": _direction(algorithm, arrays, named, values, grad_scale,
                                             fmt, layout, stream)}
        grad_scale = 1.0
    launch(second, [views[n] for n in array_args(second, (), fmt)],
           _pass_scalars(second, values, grad_scale), stream, fmt, rounding)


def _for_dtype(phase: Any, values: Mapping[str, Any], param: Any, fmt: str
               ) -> Mapping[str, Any]:
    """The step's values for a parameter of this kernel view and storage format
    (:attr:`~fastgd.algorithms.TwoPhase.for_dtype`)."""
    if phase.for_dtype is None:
        return values
    low = split_storage(fmt)[0]
    dtype = storage_dtype(low) if low else np.dtype(param.dtype)
    return phase.for_dtype(values, dtype)


def run_factored(algorithm: Algorithm, arrays: Mapping[str, Any], scalars: StepScalars,
                 stream: Any, fmt: str, layout: tuple[tuple[int, ...], str]) -> None:
    """A step of a parameter of two or more dimensions with factored state
    (:mod:`fastgd.factored`): its checked flat kernel views and factors by name."""
    values = _for_dtype(algorithm.two_phase, scalars.values, arrays["param"], fmt)
    factored.step({n: a for n, a in arrays.items() if n not in algorithm.factored},
                  *(arrays[n] for n in algorithm.factored), layout, fmt, values,
                  algorithm.two_phase.scale, scalars.grad_scale, stream)


def factor_array(param: Param, array: Any, key: str, name: str) -> Param:
    """A factored state array of ``param`` (:data:`~fastgd.algorithms.factor_shapes`),
    checked like :func:`state_array`: its shape, ``param``'s state dtype, contiguous,
    writable, on its device, not overlapping ``param``."""
    checked = Param(array, name, state=True)
    shape, dtype = factor_shapes(param.shape)[key], state_dtype(param.view)
    if checked.shape != shape or checked.dtype != dtype:
        raise ValueError(f"{name} is {checked.dtype} {checked.shape}, expected {dtype} "
                         f"{shape} for a parameter of shape {param.shape}")
    if checked.gpu != param.gpu:
        raise TypeError(f"{name} is not on its parameter's device")
    if checked.nbytes and param.overlaps(checked.address, checked.nbytes):
        raise ValueError(f"{name} shares memory with its parameter")
    return checked


def _direction(algorithm: Algorithm, arrays: Mapping[str, Any], sums: Mapping[str, float],
               values: Mapping[str, Any], grad_scale: float, fmt: str,
               layout: tuple[tuple[int, ...], str], stream: Any) -> Any:
    """The direction of a two-phase step between its passes (Muon's orthogonalised
    momentum), as the flat view its second pass reads in ``g``'s place."""
    low, _, state = split_storage(fmt)
    shape, order = layout
    dtype = compute_dtype(arrays["param"], fmt)
    with orthogonalize.on_stream(stream, arrays["param"]):
        grad = orthogonalize.as_matrix(arrays["grad"], shape, order, low, dtype)
        matrices = {"grad": grad * dtype.type(grad_scale) if grad_scale != 1.0 else grad}
        for name in algorithm.spec.present_states(()):
            matrices[name] = orthogonalize.as_matrix(arrays[name], shape, order, state,
                                                     dtype)
        direction = algorithm.two_phase.direction(matrices, sums, values)
        return orthogonalize.as_kernel_view(direction, arrays["param"], order, low)


def run_two_phase_table(algorithm: Algorithm, tensors: Sequence[Mapping[str, int]],
                        sizes: np.ndarray, scalars: StepScalars, dtype: Any, fmt: str,
                        keys: np.ndarray | None = None) -> None:
    """:func:`run_two_phase` over several host tensors of one dtype, format and step (the
    addresses of their checked arrays, by name, and their sizes): each pass in one parallel
    region over a table of them, the per-tensor coefficients made on the host in between.
    ``keys``: each tensor's stochastic-rounding key."""
    phase, first, second = algorithm.two_phase, algorithm.spec, algorithm.second_spec
    values = _for_dtype(phase, scalars.values, np.empty(0, dtype), fmt)

    def table(spec: RuleSpec, views: Sequence[Mapping[str, int]]) -> np.ndarray:
        names = array_args(spec, (), fmt)
        columns = np.array([[t[n] for n in names] for t in views], np.int64)
        return columns if keys is None else np.column_stack([columns, keys])

    one = _pass_scalars(first, values, scalars.grad_scale)
    sums = cpu.reduce_table(first, fmt, dtype, table(first, tensors), sizes, one.packed())
    own = [phase.scale(dict(zip(phase.sums, row.tolist(), strict=True)), values, (int(n),))
           for row, n in zip(sums, sizes, strict=True)]
    scales = np.array([[o[n] for n in second.per_tensor] for o in own], np.float64)
    two = _pass_scalars(second, {**values, **own[0]}, scalars.grad_scale)
    views = tensors if phase.reads_grad else [{**t, "grad": t["param"]} for t in tensors]
    cpu.launch_table(second, fmt, dtype, table(second, views), sizes, two.packed(), scales)


# -- Schedule-Free's points ---------------------------------------------------------------------

def move_point(param: Param, master: Param | None, z: Param, weight: float,
               stream: Any = None) -> None:
    """``p = lerp(p, z, weight)`` in place, torch's ``lerp`` (Schedule-Free's ``.eval()``
    and ``.train()``), for checked arrays: the parameter, its float32 master copy if it has
    one (then the master copy is interpolated and the parameter receives its rounded value)
    and its ``z`` (always at full precision). The kernel reads the parameter in the place
    of a gradient."""
    fmt = join_storage(param.storage, "master" if master is not None else "")
    arrays = [param.flat, param.flat, *([master.flat] if master is not None else []), z.flat]
    with on_gpu(param.gpu):
        launch(SCHEDULE_FREE_MODE, arrays, mode_scalars(weight), stream, fmt)


def mode_scalars(weight: float) -> StepScalars:
    """The scalars of :data:`~fastgd.algorithms.SCHEDULE_FREE_MODE` moving a point by
    ``weight`` (``lerp`` computes from the nearer end, as torch's does)."""
    return StepScalars((weight, 1.0 - weight), (abs(weight) < 0.5,))


def schedule_free_point(param: Any, z: Any, weight: float, stream: Any = None) -> None:
    """:func:`move_point` for the functional API: ``param`` and its ``z`` (of
    :func:`~fastgd.arrays.state_dtype`), checked first."""
    checked, z_checked = Param(param, "param"), Param(z, "z", state=True)
    check_like(z_checked.view, checked, checked.order, "z", dtype=state_dtype(checked.view))
    if z_checked.nbytes and checked.overlaps(z_checked.address, z_checked.nbytes):
        raise ValueError("z shares memory with param")
    if stream is not None:
        check_stream(stream, [checked.view, z_checked.view])
    move_point(checked, None, z_checked, weight, stream)


# -- arrays checked once ------------------------------------------------------------------------

def _names(index: int | None) -> tuple[str, str]:
    """How errors name a gradient and its parameter: ``grads[i]``, ``params[i]`` (the
    classes) or ``grad``, ``param`` (the functional API: ``index`` None)."""
    return ("grad", "param") if index is None else (f"grads[{index}]", f"params[{index}]")


class Param:
    """An array the engine writes (a parameter; in the functional API, a state array too),
    checked once: the object it was given (``original``), a zero-copy view (NumPy, or a
    Numba device array), its memory order, flat kernel view, address, size in bytes, GPU
    (None on the host) and storage format, and what :meth:`recheck` compares."""

    __slots__ = ("original", "view", "order", "flat", "address", "nbytes", "gpu", "storage",
                 "dtype", "shape", "strides", "torch", "gpu_grad")

    def __init__(self, original: Any, name: str, state: bool = False) -> None:
        device = is_device(original)
        view = as_array(original, name, writable=True, device=device, codes=state)
        self.order = memory_order(view, name)
        self.storage = storage(view)
        if device and self.storage and not state:
            raise TypeError(f"{name}: float16/bfloat16 parameters are supported on the CPU "
                            "only")
        self.original, self.view = original, view
        self.flat = kernel_view(view, self.order)
        self.address = address(self.flat)
        self.nbytes = view.size * view.dtype.itemsize
        self.gpu = gpu_of(view)
        self.dtype, self.shape, self.strides = view.dtype, tuple(view.shape), view.strides
        # torch tensors are checked through torch (their NumPy view would cost a microsecond)
        self.torch = ((original.dtype, original.shape, original.stride(), original.device)
                      if is_torch(original) else None)
        self.gpu_grad = 0  # the address of the last GPU gradient that passed every check

    def detached(self) -> Param:
        """A copy that holds no reference to the array (what :meth:`recheck` and
        :meth:`grad_address` compare with stays)."""
        copy = object.__new__(Param)
        for name in Param.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.original = copy.view = copy.flat = None
        return copy

    def matches(self, obj: Any) -> bool:
        """Whether ``obj`` (this array) still has the memory, shape, dtype and layout it was
        checked with (not after ``tensor.data = ...`` or ``array.shape = ...``), and is
        still writable."""
        if isinstance(obj, np.ndarray):
            return (obj.dtype is self.dtype and obj.shape == self.shape
                    and obj.strides == self.strides and obj.flags.writeable)
        if self.torch is not None:
            return ((obj.data_ptr() == self.address or not self.nbytes)
                    and obj.dtype is self.torch[0]
                    and obj.shape == self.torch[1] and obj.stride() == self.torch[2])
        return tuple(obj.shape) == self.shape and obj.dtype == self.dtype

    def recheck(self, obj: Any, index: int) -> None:
        """Refuse ``params[index]`` if it no longer :meth:`matches`."""
        if not self.matches(obj):
            raise ValueError(f"params[{index}] changed (memory, shape, dtype, layout or "
                             "writability) since it was given to the optimizer; make a new "
                             "optimizer")

    def grad_address(self, grad: Any, index: int | None) -> tuple[int, Any]:
        """Check ``grad`` (``grads[index]``; the functional API's ``grad`` for None) against
        this parameter (same device, shape, dtype, memory order, no overlap); return its
        address and the array that holds it (``grad`` itself, or a view of it, which must
        stay alive until the kernel has run)."""
        if self.gpu is None and type(grad) is np.ndarray:
            fast = (grad.dtype is self.dtype and grad.shape == self.shape
                    and grad.strides == self.strides)
            where = host_address(grad.view(np.uint16) if self.storage else grad) if (
                fast and grad.size) else None
        elif self.torch is not None and is_torch(grad) and not grad.is_sparse:
            dtype, shape, stride, device = self.torch
            fast = (grad.dtype is dtype and grad.shape == shape and grad.stride() == stride
                    and grad.device == device)
            where = grad.data_ptr() if fast and self.nbytes else None
        elif self.gpu is not None and self.nbytes:
            # A CUDA array at the address of the last gradient that passed every check, with
            # the same layout: what GPU holds it need not be asked of the driver again.
            where = same_layout_address(grad, self.shape, self.dtype, self.strides, self.order)
            fast = where is not None and where == self.gpu_grad
        else:
            fast, where = False, None
        if not fast:
            grad = self.grad_view(grad, index)
            where = address(grad) if grad.size else None
            if self.gpu is not None and where is not None:
                self.gpu_grad = where
        if where is None:  # empty: nothing to read, nothing to overlap
            return 0, grad
        if self.overlaps(where, self.nbytes):
            raise ValueError("{} shares memory with {}".format(*_names(index)))
        return where, grad

    def overlaps(self, where: int, nbytes: int) -> bool:
        """Whether this array's memory meets ``nbytes`` bytes at address ``where``."""
        return where < self.address + self.nbytes and self.address < where + nbytes

    def grad_view(self, grad: Any, index: int | None) -> Any:
        """The flat kernel view of ``grad`` after every check of :meth:`grad_address`."""
        name, param_name = _names(index)
        view = as_array(grad, name, writable=False, device=self.gpu is not None)
        check_like(view, self, self.order, name, param_name)
        if self.gpu is not None and gpu_of(view) != self.gpu:
            raise ValueError(f"{name} is on GPU {gpu_of(view)} but {param_name} is on GPU "
                             f"{self.gpu}")
        return kernel_view(view, self.order)


# -- the class face: parameters checked once, state kept per parameter --------------------------

class _Work(NamedTuple):
    """One parameter's part of a step, checked."""

    index: int
    group: int
    start: int  # the index of the group's first parameter
    options: dict[str, Any]
    grad: Any
    holder: Any  # what holds the gradient's memory (alive until the launch)
    address: int
    key: Any  # the step inputs (``t``, or ``(t, *inputs)``): equal keys, equal scalars
    scalars: StepScalars
    new: dict[str, float]
    step: int


def state_kind(spec: Any, fmt: str, name: str, param: Param) -> tuple[np.dtype, bool]:
    """The dtype of state entry ``name`` of ``param`` in a kernel of storage ``fmt``, and
    whether it is a quantized state's block maxima (1-D, one per block)."""
    state_format = split_storage(fmt)[2]
    if name == "master_param":
        return np.dtype(np.float32), False
    if name.endswith(lowbit.ABSMAX):
        return np.dtype(np.float32), True
    return state_dtype(param.view, spec.form(name, state_format or "full")), False


def state_array(param: Param, array: Any, name: str, kind: tuple[np.dtype, bool]) -> Param:
    """A state array of ``param`` (made by the optimizer, loaded, or set by hand), checked
    (like ``param`` in shape, device and memory order, of the ``kind``'s dtype, writable,
    not overlapping ``param``; block maxima: 1-D, one per quantization block) as a
    :class:`Param`, whose :meth:`~Param.matches` later steps check."""
    dtype, absmax = kind
    checked = Param(array, name, state=True)
    if absmax:
        if checked.view.dtype != dtype or checked.shape != (lowbit.blocks(param.view.size),):
            raise ValueError(f"{name} must be {dtype} of shape "
                             f"({lowbit.blocks(param.view.size)},), got "
                             f"{checked.view.dtype} {checked.shape}")
        return checked
    check_like(checked.view, param, param.order, name, "its parameter", dtype=dtype)
    if checked.nbytes and param.overlaps(checked.address, checked.nbytes):
        raise ValueError(f"{name} shares memory with its parameter")
    return checked


def holds(entry: Mapping[str, Any], arrays: Sequence[tuple[str, Param]]) -> bool:
    """Whether a parameter's state ``entry`` still holds these (checked) state arrays, with
    the layout they were checked with."""
    for name, checked in arrays:
        array = entry.get(name)
        if array is not checked.original or not checked.matches(array):
            return False
    return True


class _Unit:
    """One launch: the tensors of one parameter group that share dtype, device, storage
    format and scalars, with their launch table (the address of every array of every
    tensor; the gradients' column is rewritten on each step). Kept while the tensors' state
    arrays are the same objects, with the same layout."""

    __slots__ = ("spec", "group", "indices", "params", "names", "states", "fmt", "present",
                 "rounding", "addresses", "sizes", "table", "device_table", "device_likes",
                 "members")

    def __init__(self, spec: Any, group: int, start: int, params: list[tuple[int, Param]],
                 names: tuple[str, ...], state: Mapping[int, Mapping[str, Any]], fmt: str,
                 present: tuple[str, ...]) -> None:
        self.spec = spec
        self.group, self.fmt, self.present, self.names = group, fmt, present, names
        self.indices = tuple(i for i, _ in params)
        self.params = tuple(p for _, p in params)
        self.states = tuple(tuple(state_array(p, state[i][n], f"state[{i}][{n!r}]",
                                              state_kind(spec, fmt, n, p))
                                  for n in names) for i, p in params)
        self.rounding = stochastic(fmt)  # (a column of rounding keys after the arrays)
        rows = [[p.address, 0, *(s.address for s in states), *([0] if self.rounding else [])]
                for p, states in zip(self.params, self.states, strict=True)]
        self.addresses = np.array(rows, dtype=np.int64).reshape(
            len(rows), 2 + len(names) + self.rounding)
        self.sizes = np.array([p.view.size for p in self.params], dtype=np.int64)
        # (index, position in the group's params, param, (name, state array) per state)
        self.members = tuple((i, i - start, p, tuple(zip(names, states, strict=True)))
                             for i, p, states in zip(self.indices, self.params, self.states,
                                                     strict=True))
        first = self.params[0]
        self.table = (cpu.Table(spec, present, fmt, first.dtype, self.addresses, self.sizes)
                      if first.gpu is None else None)
        self.device_table: Any = None  # (GPU: the table's device copy, kept across steps)
        self.device_likes: Any = None  # (GPU: the kernel's arrays of each dtype)

    def holds(self, state: Mapping[int, Mapping[str, Any]]) -> bool:
        """Whether the tensors' state arrays are still those of the table, unchanged."""
        for i, _, _, arrays in self.members:
            entry = state.get(i)
            if entry is None or not holds(entry, arrays):
                return False
        return True

    def launch(self, scalars: StepScalars, grads: Sequence[int], stream: Any,
               rounding: tuple[int, int]) -> None:
        """Run the step with ``scalars``, the gradients at addresses ``grads``; ``rounding``
        is the ``(rounding_seed, step)`` of stochastic rounding."""
        if len(grads) == 1:
            self.addresses[0, 1] = grads[0]
        else:
            self.addresses[:, 1] = grads
        if self.rounding:
            self.addresses[:, -1] = lowbit.rounding_keys(*rounding, self.indices)
        if self.table is not None:
            self.table.launch(scalars.packed())
            return
        from fastgd import cuda

        first = self.params[0]
        if self.device_table is None:
            self.device_table = cuda.TableCache()
            self.device_likes = cuda.kernel_likes(
                self.spec, self.present, self.fmt,
                [first.flat, first.flat, *(s.flat for s in self.states[0])])
        with on_gpu(first.gpu):
            cuda.launch_table(self.spec, self.present, self.addresses, self.sizes,
                              self.device_likes,
                              scalars.kernel_scalars(compute_dtype(first.flat, self.fmt)),
                              stream, self.device_table, self.fmt)


def rounds_to(master: Any, param: Param) -> bool:
    """Whether a float32 master copy rounds to its (float16 or bfloat16) parameter's values,
    as a step leaves them (or is not a master copy of its shape, for the checks to refuse);
    not when the parameter was changed without it (by another optimizer, or by hand)."""
    values = plain(master)
    if not isinstance(values, np.ndarray) or values.shape != param.shape or (
            values.dtype != np.float32):
        return True
    return bool(np.array_equal(values.astype(param.view.dtype), param.view, equal_nan=True))


def check_disjoint(params: list[Param]) -> None:
    """Parameters must not share memory (the same array twice would be updated twice)."""
    spans = sorted((p.gpu is not None, p.gpu or 0, p.address, p.nbytes, i)
                   for i, p in enumerate(params) if p.nbytes)
    for a, b in zip(spans, spans[1:], strict=False):
        if a[:2] == b[:2] and b[2] < a[2] + a[3]:
            raise ValueError(f"params[{min(a[4], b[4])}] and params[{max(a[4], b[4])}] share "
                             "memory (a parameter listed twice?)")


class _Plan(NamedTuple):
    """The units of the last step, to run again while a step has the same structure."""

    state: dict[int, dict[str, Any]]
    count: int
    units: list[_Unit]
    idle: tuple[int, ...]  # the parameters without a gradient


#: option types compared as they are
_PLAIN = frozenset({float, int, bool, str, type(None)})


def _option_values(group: Mapping[str, Any]) -> dict[str, Any]:
    """A group's options to compare with those of the last step, by value: an option
    changed in place (a tensor ``lr`` filled by torch's schedulers, a list of ``betas``
    assigned to) is a changed option."""
    return {k: v if type(v) in _PLAIN else _value(v) for k, v in group.items()
            if k != "params"}


def _value(option: Any) -> Any:
    """An option as values: arrays and tensors as lists, lists and tuples as tuples."""
    if is_torch(option) or isinstance(option, np.ndarray):
        return option.tolist()
    if isinstance(option, (list, tuple)):
        return tuple(v if type(v) in _PLAIN else _value(v) for v in option)
    return option


class Stepper:
    """Steps the parameters of an optimizer; see the module docstring."""

    def __init__(self, algorithm: Algorithm,
                 adopt: Callable[[dict[str, Any], Param], None] | None = None,
                 follow: bool = False) -> None:
        self.algorithm = algorithm
        self.params: list[Param] = []
        #: a parameter whose memory moved (``tensor.data = ...``, as ZeRO's bucket views do)
        #: is checked again and stepped where it now is, as torch.optim does; otherwise such a
        #: parameter is refused
        self.follow = follow
        #: called with a parameter's state entry and the parameter after the step made or
        #: converted state arrays in it (a face that keeps the state as its own arrays
        #: replaces them there, zero-copy)
        self.adopt = adopt
        self._options: dict[int, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {}
        self._units: dict[tuple[Any, ...], _Unit] = {}
        #: two-phase steps: each parameter's checked state arrays, by its index
        self._checked: dict[int, tuple[Any, ...]] = {}
        self._plan: _Plan | None = None
        self._simple = algorithm.inputs == ("step",)
        #: the parameters whose master copies were checked since the state was replaced
        self._masters_checked: set[int] = set()

    def new_params(self, originals: Sequence[Any], group: Mapping[str, Any],
                   first: int | None = None, others: list[Param] | None = None
                   ) -> list[Param]:
        """The parameters of a new group (its options ``group``), checked (arrays that can
        be updated in place, a state precision they allow, matrices for an optimizer of
        matrices, no memory shared with another parameter: with those of :attr:`params`,
        or ``others``); they join :attr:`params` when the caller adds them (``first``: the
        index of the first, by default after the last of :attr:`params`)."""
        others = self.params if others is None else others
        first = len(self.params) if first is None else first
        params = [Param(p, f"params[{first + i}]") for i, p in enumerate(originals)]
        for i, p in enumerate(params, first):
            check_state_precision(group["state_precision"], p.view, f"params[{i}]")
            if self.algorithm.matrices:
                check_matrix(self.algorithm, p.shape, f"params[{i}]")
        check_disjoint(others + params)
        return params

    def check_options(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The checked options of a parameter group (``lr`` at step 1 if a schedule)."""
        options = self.algorithm.check(group, t=1)
        options["master_weights"] = Flag().check("master_weights", group["master_weights"])
        options["state_precision"] = check_state_precision(group["state_precision"])
        options["min_8bit_size"] = integer("min_8bit_size", group["min_8bit_size"])
        options["stochastic_rounding"] = Flag().check("stochastic_rounding",
                                                      group["stochastic_rounding"])
        if options["stochastic_rounding"] and options["state_precision"] != "bf16":
            raise ValueError("stochastic_rounding=True rounds bfloat16 state: it needs "
                             "state_precision='bf16', got "
                             f"{options['state_precision']!r}")
        options["rounding_seed"] = integer("rounding_seed", group["rounding_seed"],
                                           high=2**63)
        if self.algorithm.schedule_free:
            options["train_mode"] = Flag().check("train_mode", group["train_mode"])
        if self.algorithm.two_phase is not None and options["state_precision"] == "8bit":
            raise ValueError(no_eight_bit(self.algorithm))
        return options

    @staticmethod
    def precision(param: Param, options: Mapping[str, Any]) -> str:
        """The precision of ``param``'s state with these (checked) options (``"8bit"``
        falls back to ``"full"`` below ``min_8bit_size`` elements)."""
        return lowbit.effective(options["state_precision"], param.view.size,
                                options["min_8bit_size"])

    @classmethod
    def storage_format(cls, param: Param, options: Mapping[str, Any]) -> str:
        """The kernel storage format of ``param`` with these (checked) options: its own
        format, a float32 master copy (``master_weights``, float16/bfloat16 parameters),
        bfloat16 or 8-bit state."""
        master = bool(param.storage) and options["master_weights"]
        state = STATE_STORAGE[cls.precision(param, options)]
        if state == "sbf16" and options["stochastic_rounding"]:
            state = "sbf16sr"
        return join_storage(param.storage, "master" if master else "", state)

    def forget(self, state: bool = True) -> None:
        """Drop what is kept between steps (after the parameters moved; with ``state``, after
        the state was replaced: each master copy is then checked again before its next use,
        :meth:`current_master`)."""
        self._options.clear()
        self._units.clear()
        self._checked.clear()
        self._plan = None
        if state:
            self._masters_checked.clear()

    def current_master(self, index: int, entry: dict[str, Any], param: Param) -> None:
        """Make parameter ``index``'s master copy (in its state ``entry``) current: made from
        the parameter if there is none, or if it no longer rounds to the parameter (which
        was changed without it: stepped by another optimizer, or by hand), checked once
        after the state was replaced."""
        if "master_param" not in entry or (index not in self._masters_checked and not (
                rounds_to(entry["master_param"], param))):
            entry["master_param"] = from_host(param.view, param.view, np.float32)
            if self.adopt is not None:
                self.adopt(entry, param)
        self._masters_checked.add(index)

    def _group_options(self, index: int, group: Mapping[str, Any], t: int
                       ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The checked options of group ``index`` at step ``t``, and the optional states
        they use: checked again only when an option changed; a schedule is evaluated (and
        its value checked) at ``t``."""
        cached = self._options.get(index)
        values = _option_values(group)
        try:
            same = cached is not None and cached[0] == values
        except (TypeError, ValueError):  # an option NumPy cannot compare as a whole
            same = False
        if not same:
            options = self.check_options(group)
            cached = self._options[index] = (values, options, self.algorithm.present(options))
        options = cached[1]
        lr = group["lr"]
        if callable(lr):
            options = {**options, "lr": learning_rate(lr, t)}
        return options, cached[2]

    def step(self, groups: Sequence[Mapping[str, Any]], state: dict[int, dict[str, Any]],
             grads: Sequence[Any], *, max_norm: Any = None, skip_if_nonfinite: bool = False,
             stream: Any = None) -> StepInfo | None:
        """One step of every parameter whose gradient (``grads[i]``, aligned with the
        parameters) is not None, in place; see :meth:`fastgd.Optimizer.step`."""
        if (max_norm is None and not skip_if_nonfinite and self.algorithm.two_phase is None
                and self._planned(groups, state, grads, stream)):
            return None
        work = self._check(groups, state, grads)
        if stream is not None:
            check_stream(stream, [self.params[w.index].view for w in work])
        info = None
        if max_norm is not None or skip_if_nonfinite:
            info = self._reduce(work, max_norm, skip_if_nonfinite)
            if info.skipped:
                return info
            if max_norm is not None:
                scale = clip_scale(info.grad_norm, float(max_norm))
                work = [w._replace(scalars=w.scalars._replace(
                    grad_scale=w.scalars.grad_scale * scale)) for w in work]
        units = self._launch(work, state, stream)
        for w in work:
            self._finish((state[w.index],), w.step, w.new)
        done = {w.index for w in work}
        self._plan = _Plan(state, len(grads), units,
                           tuple(i for i in range(len(grads)) if i not in done))
        return info

    @staticmethod
    def _finish(entries: Sequence[dict[str, Any]], step: int, new: dict[str, float]) -> None:
        """Count step ``step`` of the parameters of these state ``entries`` and keep their
        ``new`` scalars."""
        for entry in entries:
            entry["step"] = step
            if new:
                entry.update(new)

    def _planned(self, groups: Sequence[Mapping[str, Any]], state: dict[int, dict[str, Any]],
                 grads: Sequence[Any], stream: Any = None) -> bool:
        """Run the step by the plan of the last one if it has the same structure (the same
        parameters with gradients, state arrays, batches); False (nothing done) if not. Every
        gradient is checked as in :meth:`_check`, before anything runs."""
        plan = self._plan
        if plan is None or plan.state is not state or plan.count != len(grads) or (
                plan.idle and any(grads[i] is not None for i in plan.idle)):
            return False
        algorithm, simple = self.algorithm, self._simple
        runs, holders = [], []
        for unit in plan.units:
            group = groups[unit.group]
            originals = group["params"]
            found = None
            addresses, entries = [], []
            for i, j, param, arrays in unit.members:
                grad = grads[i]
                entry = state.get(i)
                if (grad is None or originals[j] is not param.original or not entry
                        or not holds(entry, arrays)):  # (state replaced or changed by hand)
                    return False
                if not param.matches(param.original):
                    if self.follow:
                        return False
                    param.recheck(param.original, i)
                where, holder = param.grad_address(grad, i)
                holders.append(holder)
                t = entry["step"] + 1
                key = t if simple else (t, *self._inputs(unit.group, group, t, entry,
                                                         not unit.names))
                if found is None:
                    options, present = self._group_options(unit.group, group, t)
                    if present != unit.present or unit.fmt != self.storage_format(
                            param, options):
                        return False
                    values = {"step": t} if simple else dict(zip(
                        algorithm.inputs, key[1:], strict=True))
                    found = (key, t, *step_scalars(algorithm, options, values, present),
                             options["rounding_seed"])
                elif key != found[0]:
                    return False
                addresses.append(where)
                entries.append(entry)
            runs.append((unit, found, addresses, entries))
        if stream is not None:
            check_stream(stream, [p.view for unit in plan.units for p in unit.params])
        for unit, found, addresses, _ in runs:  # (``holders`` keeps the gradients alive)
            unit.launch(found[2], addresses, stream, (found[4], found[1]))
        for _, (_, t, _, new, _), _, entries in runs:
            self._finish(entries, t, new)
        return True

    def _check(self, groups: Sequence[Mapping[str, Any]], state: dict[int, dict[str, Any]],
               grads: Sequence[Any]) -> list[_Work]:
        """Check every gradient and every group's options; the work of the step."""
        algorithm = self.algorithm
        inputs = algorithm.inputs
        work = []
        start = 0
        for g, group in enumerate(groups):
            originals = group["params"]
            found: dict[Any, tuple[dict[str, Any], StepScalars, dict[str, float]]] = {}
            for i, original in enumerate(originals, start):
                grad = grads[i]
                if grad is None:
                    continue
                param = self.params[i]
                if original is not param.original:
                    raise ValueError(f"params[{i}] was replaced in param_groups; make a new "
                                     "optimizer or use add_param_group")
                if not param.matches(original):
                    if not self.follow:
                        param.recheck(original, i)  # (refused)
                    param = self._moved(i)
                where, holder = param.grad_address(grad, i)
                entry = state.get(i)
                t = entry["step"] + 1 if entry else 1
                key: Any = t if self._simple else (t, *self._inputs(g, group, t, entry))
                hit = found.get(key)
                if hit is None:
                    options, present = self._group_options(g, group, t)
                    values = {"step": t} if self._simple else dict(zip(inputs, key[1:],
                                                                       strict=True))
                    hit = found[key] = (options, *step_scalars(algorithm, options, values,
                                                               present))
                work.append(_Work(i, g, start, hit[0], grad, holder, where, key, hit[1],
                                  hit[2], t))
            start += len(originals)
        return work

    def current(self) -> list[Param]:
        """The parameters, each where its memory now is (with :attr:`follow`: one that moved
        is checked again there)."""
        if self.follow:
            for i, param in enumerate(self.params):
                if not param.matches(param.original):
                    self._moved(i)
        return self.params

    def _moved(self, index: int) -> Param:
        """Parameter ``index`` checked again where its memory now is (and as it now is: its
        state, if any, is checked against it before the next step uses it)."""
        param = self.params[index]
        moved = Param(param.original, f"params[{index}]")
        if self.algorithm.matrices:
            check_matrix(self.algorithm, moved.shape, f"params[{index}]")
        check_disjoint(self.params[:index] + [moved] + self.params[index + 1:])
        self.forget(state=False)  # (the launches of the last steps hold its old address)
        self.params[index] = moved
        return moved

    def _inputs(self, g: int, group: Mapping[str, Any], t: int,
                entry: Mapping[str, Any] | None, first: bool | None = None
                ) -> tuple[Any, ...]:
        """The values of ``update``'s step inputs for one parameter, as a tuple (``first``:
        whether its state arrays are new this step, if known)."""
        algorithm = self.algorithm
        values = []
        for name in algorithm.inputs:
            if name == "step":
                values.append(t)
            elif name == "first_step":
                if first is None:
                    present = self._group_options(g, group, t)[1]
                    first = not entry or not any(
                        n in entry for n in algorithm.arrays(present))
                values.append(first)
            elif entry and name in entry:
                values.append(entry[name])
            else:
                values.append(algorithm.initial_scalars(self._group_options(g, group, t)[0])[
                    name])
        return tuple(values)

    def _reduce(self, work: list[_Work], max_norm: Any, skip_if_nonfinite: bool) -> StepInfo:
        if max_norm is not None:
            number("max_norm", max_norm)
        params = self.params
        if any(params[w.index].gpu is not None for w in work):
            raise TypeError("max_norm and skip_if_nonfinite support host (NumPy) arrays only")
        grads = [to_float32(params[w.index].grad_view(w.grad, w.index),
                            params[w.index].storage) for w in work]
        norm = global_norm(grads)
        finite = math.isfinite(norm)
        return StepInfo(norm, finite, skip_if_nonfinite and not finite)

    def _launch(self, work: list[_Work], state: dict[int, dict[str, Any]], stream: Any
                ) -> list[_Unit]:
        """Create missing state, then run the tensors of each group that share dtype,
        device, storage format and scalars as one launch each; returns the launches. Every
        launch's arrays are checked before the first runs; if one is refused, the state is
        left as it was."""
        for w in work:  # (before any state is made or converted)
            param = self.params[w.index]
            check_state_precision(w.options["state_precision"], param.view,
                                  f"params[{w.index}]")
        before = {w.index: dict(state.get(w.index) or {}) for w in work}
        checked = set(self._masters_checked)
        try:  # (state made, then every launch's arrays checked; or all of it undone)
            batches = self._make_state(work, state)
            if self.algorithm.two_phase is not None:
                kept = [self._two_phase_state(w, state[w.index]) for w in work]
                if self.algorithm.two_phase.direction is not None:
                    for w in work:
                        orthogonalize.require(self.params[w.index].view)
            else:
                units = [(self._unit(items, state, fmt, items[0].scalars.present), items)
                         for (_, _, _, fmt, _), items in batches.items()]
        except BaseException:
            for index, old in before.items():
                entry = state.get(index)
                if entry is not None:
                    entry.clear()
                    entry.update(old)
            self._masters_checked = checked
            raise
        if self.algorithm.two_phase is not None:
            self._run_two_phase(work, kept, batches, stream)
            return []
        for unit, items in units:
            unit.launch(items[0].scalars, [w.address for w in items], stream,
                        (items[0].options["rounding_seed"], items[0].step))
        return [unit for unit, _ in units]

    def _make_state(self, work: list[_Work], state: dict[int, dict[str, Any]]
                    ) -> dict[tuple[Any, ...], list[_Work]]:
        """Create the missing state of the step's parameters (or convert it to their
        groups' precision); the tensors of each launch: those that share group, dtype,
        device, storage format and scalars."""
        spec = self.algorithm.spec
        batches: dict[tuple[Any, ...], list[_Work]] = {}
        for w in work:
            param = self.params[w.index]
            entry = state.setdefault(w.index, {})
            fmt = self.storage_format(param, w.options)
            if split_storage(fmt)[1]:
                self.current_master(w.index, entry, param)
            else:
                entry.pop("master_param", None)  # (stale once the parameter steps alone)
            precision = self.precision(param, w.options)
            for name in self.algorithm.arrays(w.scalars.present, param.view.ndim):
                if name in self.algorithm.factored:
                    if name not in entry:
                        entry[name] = on_device_of(np.zeros(factor_shapes(param.shape)[name],
                                                            state_dtype(param.view)),
                                                   param.view)
                    continue
                quantized = spec.quantized(name)
                target = spec.form(name, precision)
                if name not in entry:
                    value = self.algorithm.initial_value(name, w.options)
                    if value is None:  # (a copy of the parameter, or of its master copy)
                        value = plain(entry.get("master_param", param.view))
                    entry.update(lowbit.make(param.view, name, value, target, quantized))
                elif lowbit.form_of(entry, name, param.view) not in (None, target):
                    lowbit.convert(entry, name, param.view, target, quantized)  # (changed)
            if self.adopt is not None:
                self.adopt(entry, param)
            batches.setdefault((w.group, param.dtype, param.gpu, fmt, w.key), []).append(w)
        return batches

    def _run_two_phase(self, work: list[_Work], kept: list[tuple[Any, ...]],
                       batches: Mapping[tuple[Any, ...], list[_Work]], stream: Any) -> None:
        """A two-phase step (every tensor checked: ``kept``, :meth:`_two_phase_state`): host
        tensors batch by batch (each pass one parallel region over the batch), GPU tensors
        and lone host tensors one by one (the same sums and results: the chunks of the sums
        are the same)."""
        kept_of = {w.index: k for w, k in zip(work, kept, strict=True)}
        algorithm = self.algorithm
        for (_, dtype, gpu, fmt, _), items in batches.items():
            factored = [w for w in items if algorithm.factored
                        and self.params[w.index].view.ndim >= 2]
            for w in factored:
                param = self.params[w.index]
                views = {"param": param.flat, "grad": param.grad_view(w.grad, w.index),
                         **kept_of[w.index][2]}
                with on_gpu(gpu):
                    run_factored(algorithm, views, w.scalars, stream, fmt,
                                 (param.shape, param.order))
            items = [w for w in items if w not in factored]
            if not items:
                continue
            first = items[0]
            keys = lowbit.rounding_keys(first.options["rounding_seed"], first.step,
                                        [w.index for w in items]) if stochastic(fmt) else None
            if gpu is None and len(items) > 1 and algorithm.two_phase.direction is None:
                tensors = [{"param": self.params[w.index].address,
                            "grad": w.address or self.params[w.index].address,
                            **kept_of[w.index][3]} for w in items]
                sizes = np.array([self.params[w.index].view.size for w in items], np.int64)
                run_two_phase_table(self.algorithm, tensors, sizes, first.scalars, dtype, fmt,
                                    keys)
                continue
            for j, w in enumerate(items):
                param = self.params[w.index]
                arrays = {"param": param.flat, "grad": param.grad_view(w.grad, w.index),
                          **kept_of[w.index][2]}
                rounding = () if keys is None else (int(keys[j]), 0)
                with on_gpu(gpu):
                    run_two_phase(self.algorithm, arrays, w.scalars, stream, fmt, rounding,
                                  (param.shape, param.order))

    def _two_phase_state(self, w: _Work, entry: Mapping[str, Any]) -> tuple[Any, ...]:
        """The checked state arrays of a two-phase step over one parameter (its state made,
        checked once while the same arrays hold): ``(fmt, checked, flat views by kernel
        name, addresses by kernel name)``."""
        param, spec = self.params[w.index], self.algorithm.spec
        fmt = self.storage_format(param, w.options)
        kept = self._checked.get(w.index)
        if kept is None or kept[0] != fmt or not holds(entry, kept[1]):
            names = [("master", "master_param")] if split_storage(fmt)[1] else []
            names += [(n, n) for n in self.algorithm.arrays(w.scalars.present,
                                                            param.view.ndim)]
            checked = tuple((key, factor_array(param, entry[key], key,
                                               f"state[{w.index}][{key!r}]")
                             if key in self.algorithm.factored else
                             state_array(param, entry[key], f"state[{w.index}][{key!r}]",
                                         state_kind(spec, fmt, key, param)))
                            for _, key in names)
            if set(self.algorithm.factored) & {key for _, key in names}:
                factored.matrices(param.flat, param.shape, param.order)  # (or refused)
            pairs = list(zip(names, checked, strict=True))
            kept = self._checked[w.index] = (fmt, checked,
                                             {name: c.view if name in self.algorithm.factored
                                              else c.flat for (name, _), (_, c) in pairs},
                                             {name: c.address for (name, _), (_, c) in pairs})
        return kept

    def _unit(self, items: list[_Work], state: dict[int, dict[str, Any]], fmt: str,
              present: tuple[str, ...]) -> _Unit:
        """The launch of these tensors: made once, kept while their state arrays stay the
        same objects."""
        master = split_storage(fmt)[1]
        names = (("master_param",) if master else ()) + tuple(
            array_args(self.algorithm.spec, present, fmt)[2 + master:])
        key = (tuple(w.index for w in items), fmt, present)
        unit = self._units.get(key)
        if unit is None or not unit.holds(state):
            members = [(w.index, self.params[w.index]) for w in items]
            unit = self._units[key] = _Unit(self.algorithm.spec, items[0].group,
                                            items[0].start, members, names, state, fmt, present)
        return unit
