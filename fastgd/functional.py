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
from fastgd.algorithms import ALGORITHMS, Algorithm
from fastgd.hyperparams import Pair

ArrayLike = Any  # NumPy array, torch tensor, CUDA array, or anything NumPy views without copying


def _result(new: dict[str, float]) -> Any:
    """What a function returns: None, its one new scalar, or a tuple of them."""
    if not new:
        return None
    values = tuple(new.values())
    return values[0] if len(values) == 1 else values


def signature_parts(algorithm: Algorithm) -> tuple[list[str], list[str], list[str]]:
    """The functional signature of ``algorithm``: its state arrays, its step inputs and its
    hyperparameters (pairs split into their parts)."""
    shown = set(algorithm.reads) | {s.when for s in algorithm.optional if not s.implied}
    shown |= {"maximize"} & set(algorithm.hyper)
    hypers = []
    for h in algorithm.hyperparameters:
        if h.name in shown:
            hypers += list(h.domain.parts) if isinstance(h.domain, Pair) else [h.name]
    return [s.name for s in algorithm.states], list(algorithm.inputs), hypers


def _source(algorithm: Algorithm) -> str:
    states, inputs, hypers = signature_parts(algorithm)
    optional = {s.name for s in algorithm.optional}
    positional, defaulted = [], False
    for name in states:
        defaulted = defaulted or name in optional
        positional.append(f"{name}: ArrayLike" + (" | None = None" if defaulted else ""))
    keywords = [f"{n}: int" if n == "step" else f"{n}: bool = False" if n == "first_step"
                else f"{n}: float" for n in inputs]
    types = {p: h.domain.first.annotation if isinstance(h.domain, Pair) else h.domain.annotation
             for h in algorithm.hyperparameters
             for p in (h.domain.parts if isinstance(h.domain, Pair) else (h.name,))}
    keywords += [f"{n}: {types[n]} = _DEFAULTS[{n!r}]" for n in hypers]
    options = []
    for h in algorithm.hyperparameters:
        if isinstance(h.domain, Pair) and h.domain.parts[0] in hypers:
            options.append(f"{h.name!r}: ({', '.join(h.domain.parts)})")
        elif h.name in hypers:
            options.append(f"{h.name!r}: {h.name}")
    options += [f"{s.when!r}: {s.name} is not None" for s in algorithm.optional if s.implied]
    return f'''\
from __future__ import annotations


def {algorithm.function_name}(param: ArrayLike, grad: ArrayLike, {", ".join(positional)}, *,
        {", ".join(keywords + ["stream: Any = None"])}) -> Any:
    return _result(engine.run(
        _ALGORITHM, param, grad, {{{", ".join(f"{s!r}: {s}" for s in states)}}},
        {{**_DEFAULTS, {", ".join(options)}}},
        {{{", ".join(f"{n!r}: {n}" for n in inputs)}}}, stream))
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
    namespace: dict[str, Any] = {"ArrayLike": ArrayLike, "Any": Any, "engine": engine,
                                 "_result": _result, "_ALGORITHM": algorithm,
                                 "_DEFAULTS": defaults}
    exec(_source(algorithm), namespace)  # noqa: S102 - a signature generated from the table
    function = namespace[algorithm.function_name]
    function.__doc__ = _docstring(algorithm)
    function.__module__ = __name__
    return function


__all__ = [a.function_name for a in ALGORITHMS.values()]
globals().update({a.function_name: make_function(a) for a in ALGORITHMS.values()})
