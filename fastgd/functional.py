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

Host arrays run on the CPU. GPU arrays (anything with ``__cuda_array_interface__``: Numba
device arrays, CuPy, torch CUDA tensors) run on the GPU, in place, queued on ``stream``
(default: the legacy default stream, see :mod:`fastgd.cuda`); mixing host and GPU arrays is
refused.
"""

from __future__ import annotations

from typing import Any

from fastgd import engine
from fastgd.algorithms import ALGORITHMS, Algorithm, Hyper
from fastgd.hyperparams import Pair

ArrayLike = Any  # NumPy array, torch tensor, CUDA array, or anything NumPy views without copying


def _result(new: dict[str, float]) -> Any:
    """What a function returns: None, its one new scalar, or a tuple of them."""
    if not new:
        return None
    values = tuple(new.values())
    return values[0] if len(values) == 1 else values


def _arguments(h: Hyper) -> tuple[str, ...]:
    """The functional arguments of a hyperparameter: its name, or a pair's two parts."""
    return tuple(h.domain.parts) if isinstance(h.domain, Pair) else (h.name,)


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
        defaulted = defaulted or name in optional
        positional.append(f"{name}: ArrayLike" + (" | None = None" if defaulted else ""))
    keywords = [f"{n}: int" if n == "step" else f"{n}: bool = False" if n == "first_step"
                else f"{n}: float" for n in inputs]
    types = {a: h.domain.first.annotation if isinstance(h.domain, Pair) else h.domain.annotation
             for h in algorithm.hyperparameters for a in _arguments(h)}
    keywords += [f"{n}: {types[n]} = _DEFAULTS[{n!r}]" for n in hypers]
    values = hypers + [f"{s.name} is not None" for s in algorithm.optional if s.implied]
    return f'''\
from __future__ import annotations


def {algorithm.function_name}(param: ArrayLike, grad: ArrayLike, {", ".join(positional)}, *,
        {", ".join(keywords + ["stream: Any = None"])}) -> Any:
    return _result(_CALL(param, grad, ({"".join(f"{s}, " for s in states)}),
                         ({"".join(f"{v}, " for v in values)}),
                         ({"".join(f"{n}, " for n in inputs)}), stream))
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


def make_function(algorithm: Algorithm) -> Any:
    """The functional API's function of ``algorithm`` (with a real signature)."""
    defaults = dict(algorithm.defaults)
    for h in algorithm.hyperparameters:
        if isinstance(h.domain, Pair):
            defaults.update(zip(h.domain.parts, h.default, strict=True))
    namespace: dict[str, Any] = {"ArrayLike": ArrayLike, "Any": Any, "_result": _result,
                                 "_CALL": engine.Functional(algorithm), "_DEFAULTS": defaults}
    exec(_source(algorithm), namespace)  # noqa: S102 - a signature generated from the table
    function = namespace[algorithm.function_name]
    function.__doc__ = _docstring(algorithm)
    function.__module__ = __name__
    return function


__all__ = [a.function_name for a in ALGORITHMS.values()]
globals().update({a.function_name: make_function(a) for a in ALGORITHMS.values()})
