"""Functional API: one fused, in-place pass per call, with explicit state arrays.

There is one function per algorithm of :mod:`fastgd.algorithms`, named after it in lower
case (``adam``, ``adamw``, ``sgd``, ...) and generated from its declaration: ``param``,
``grad`` and the state arrays (named after ``torch.optim``'s state keys) come first; then, by
keyword, what the step needs (``step``: the 1-based number ``t`` of the step being taken;
SGD's ``first_step``; per-parameter scalars such as NAdam's ``mu_product``, whose new value
the call returns), the hyperparameters the step uses (torch.optim's names and defaults, a
pair such as ``betas`` given as its parts ``beta1``, ``beta2``) and ``stream``.

Every function checks all of its arguments first (raising ``TypeError``/``ValueError`` that
name the argument, with nothing written), then updates ``param`` and the state arrays in
place in a single pass. State arrays must have ``param``'s shape, dtype and memory order
(float32 state for float16/bfloat16 parameters, whose updates are computed in float32). An
optional state array is required when the hyperparameters use it (``momentum_buffer`` when
``momentum != 0``) and left alone otherwise; Adam's ``max_exp_avg_sq`` turns AMSGrad on. ``g``
in the formulas is the gradient, negated when ``maximize=True``.

Low-precision state (host arrays, parameters that compute in float32): bfloat16 state arrays
(``ml_dtypes.bfloat16``) for every state; or 8-bit state, a ``(codes, absmax)`` pair of
:func:`fastgd.quantization.quantize_blockwise` for each state the algorithm quantizes (the
others full-precision arrays), updated in place like the arrays (see :mod:`fastgd.lowbit`).

``out=(param_out, *states_out)`` makes the call *out of place*: ``param`` and the state
arrays are read (they may be read-only) and their new values written into the ``out``
arrays, in the same single pass (the bytes an in-place call moves), as a pure function needs
(:mod:`fastgd.dask`). ``out`` has one entry per array argument, None where no array is
updated (a state given as None or unused by the hyperparameters); each like the array it
replaces (shape, dtype, memory order; a ``(codes, absmax)`` pair for 8-bit state). An out
array may be the array it replaces (then that one is updated in place), but no other memory
may be shared. Host arrays only.

Host arrays run on the CPU. GPU arrays (anything with ``__cuda_array_interface__``: Numba
device arrays, CuPy, torch CUDA tensors) run on the GPU, in place, queued on ``stream``
(default: the legacy default stream, see :mod:`fastgd.cuda`); mixing host and GPU arrays is
refused.

Schedule-Free's parameter holds ``y`` while training; :func:`schedule_free_eval` and
:func:`schedule_free_train` move it to ``x`` and back (the classes' ``.eval()`` and
``.train()``). Its ``z`` state array starts as a copy of the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastgd import engine
from fastgd.algorithms import ALGORITHMS, Algorithm, Hyper
from fastgd.hyperparams import Parts, Real

ArrayLike = Any  # NumPy array, torch tensor, CUDA array, or anything NumPy views without copying


def _arguments(h: Hyper) -> tuple[str, ...]:
    """The functional arguments of a hyperparameter: its name, or a tuple's parts."""
    return tuple(h.domain.parts) if isinstance(h.domain, Parts) else (h.name,)


def signature_parts(algorithm: Algorithm) -> tuple[list[str], list[str], list[str]]:
    """The functional signature of ``algorithm``: its state arrays, its step inputs and its
    hyperparameters (pairs split into their parts)."""
    return ([s.name for s in algorithm.states], list(algorithm.inputs),
            [a for h in algorithm.functional_hyperparameters for a in _arguments(h)])


def _source(algorithm: Algorithm) -> str:
    states, inputs, hypers = signature_parts(algorithm)
    optional = {s.name for s in algorithm.optional}
    positional, defaulted = [], False
    for name in states:
        defaulted = defaulted or name in optional or bool(algorithm.factored)
        positional.append(f"{name}: ArrayLike" + (" | None = None" if defaulted else ""))
    keywords = [f"{n}: int" if n == "step" else f"{n}: bool = False" if n == "first_step"
                else f"{n}: float" for n in inputs]
    types = {a: d.annotation for h in algorithm.hyperparameters for a, d in zip(
        _arguments(h), h.domain.domains if isinstance(h.domain, Parts) else (h.domain,),
        strict=True)}
    keywords += [f"{n}: {types[n]} = _DEFAULTS[{n!r}]" for n in hypers]
    values = hypers + [f"{s.name} is not None" for s in algorithm.optional if s.implied]
    return f'''\
from __future__ import annotations


def {algorithm.function_name}(param: ArrayLike, grad: ArrayLike, {", ".join(positional)}, *,
        {", ".join(keywords + ["stream: Any = None", "out: Any = None"])}) -> Any:
    return _CALL(param, grad, ({"".join(f"{s}, " for s in states)}),
                 ({"".join(f"{v}, " for v in values)}),
                 ({"".join(f"{n}, " for n in inputs)}), stream, out)
'''


def _docstring(algorithm: Algorithm) -> str:
    states, inputs, _ = signature_parts(algorithm)
    returns = [s.name for s in algorithm.scalars]
    lines = [algorithm.summary, "", "::", "", *("    " + line for line in
                                              algorithm.math.splitlines()), "",
             f"State arrays: {', '.join(f'``{s}``' for s in states)}."]
    if returns:
        lines.append(f"Returns the new {' and '.join(f'``{r}``' for r in returns)} "
                     "(pass it to the next step).")
    lines.append(f"Formulas and defaults: ``{algorithm.source}``.")
    return "\n".join(lines)


def keywords(algorithm: Algorithm, options: Mapping[str, Any], strict: bool = False
             ) -> dict[str, Any] | None:
    """The keyword arguments of ``algorithm``'s function that mean what the class options
    ``options`` (constructor keyword arguments) mean: pairs given as their parts. Options the
    function does not take (they play no part in a step: ``initial_accumulator_value``; or an
    array implies them: ``amsgrad``) are left out, or (``strict``) make it return None."""
    taken = {h.name: h for h in algorithm.functional_hyperparameters}
    result = {}
    for key, value in options.items():
        h = taken.get(key)
        if h is None:
            if strict:
                return None
        elif isinstance(h.domain, Parts):
            if not isinstance(value, (tuple, list)) or len(value) != len(h.domain.parts):
                if strict:
                    return None
                continue
            result.update(zip(h.domain.parts, value, strict=True))
        else:
            result[key] = value
    return result


def call(algorithm: Algorithm, param: ArrayLike, grad: ArrayLike,
         states: Mapping[str, ArrayLike], options: Mapping[str, Any], *, step: int,
         scalars: Mapping[str, float] | None = None, first_step: bool | None = None,
         **extra: Any) -> dict[str, float]:
    """Step ``param`` with ``algorithm``'s function, given class options (``options``, see
    :func:`keywords`), the state arrays by name, the step number, the per-parameter scalars
    (the first step's when None) and SGD's ``first_step`` (``step == 1`` when None); returns
    the new scalars by name; ``extra`` keyword arguments go to the function as they are
    (over ``options``). (For tools that drive every algorithm alike.)"""
    if scalars is None:
        scalars = algorithm.initial_scalars(algorithm.check({**algorithm.defaults, **options}))
    inputs = {"step": step, "first_step": step == 1 if first_step is None else first_step,
              **scalars}
    result = globals()[algorithm.function_name](
        param, grad, **states, **{n: inputs[n] for n in algorithm.inputs},
        **{**keywords(algorithm, options), **extra})
    names = [s.name for s in algorithm.scalars]
    values = () if result is None else (result,) if len(names) == 1 else tuple(result)
    return dict(zip(names, values, strict=True))


def make_function(algorithm: Algorithm) -> Any:
    """The functional API's function of ``algorithm`` (with a real signature)."""
    defaults = dict(algorithm.defaults)
    for h in algorithm.hyperparameters:
        if isinstance(h.domain, Parts):
            defaults.update(zip(h.domain.parts, h.default, strict=True))
    namespace: dict[str, Any] = {"ArrayLike": ArrayLike, "Any": Any,
                                 "_CALL": engine.Functional(algorithm), "_DEFAULTS": defaults}
    exec(_source(algorithm), namespace)  # noqa: S102 - a signature generated from the table
    function = namespace[algorithm.function_name]
    function.__doc__ = _docstring(algorithm)
    function.__module__ = __name__
    return function


def _schedule_free_beta(beta: float) -> float:
    return Real(0.0, 1.0, low_open=True).check("beta", beta)


def schedule_free_eval(param: ArrayLike, z: ArrayLike, *, beta: float,
                       stream: Any = None) -> None:
    """Move a Schedule-Free parameter from ``y`` (where gradients are taken) to ``x`` (the
    average the method returns) in place: ``param = lerp(param, z, 1 - 1 / beta)``
    (``schedulefree``'s ``.eval()``; ``beta``: ``beta1`` or ``momentum``). One fused pass;
    ``z`` is the state array of :func:`schedulefreeadamw` / :func:`schedulefreesgd`."""
    engine.schedule_free_point(param, z, 1.0 - 1.0 / _schedule_free_beta(beta), stream)


def schedule_free_train(param: ArrayLike, z: ArrayLike, *, beta: float,
                        stream: Any = None) -> None:
    """Move a Schedule-Free parameter from ``x`` back to ``y`` in place:
    ``param = lerp(param, z, 1 - beta)`` (``schedulefree``'s ``.train()``)."""
    engine.schedule_free_point(param, z, 1.0 - _schedule_free_beta(beta), stream)


__all__ = [a.function_name for a in ALGORITHMS.values()] + ["schedule_free_eval",
                                                            "schedule_free_train"]
globals().update({a.function_name: make_function(a) for a in ALGORITHMS.values()})
