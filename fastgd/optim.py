"""Optimizer classes with the names, hyperparameters, defaults and formulas of torch.optim.

There is one class per algorithm of :mod:`fastgd.algorithms`, generated from its declaration
(its signature: ``params``, then the hyperparameters with their defaults, keyword-only ones
after ``*``, then ``master_weights``). :class:`Optimizer` is their base class:

``params`` is one array, a sequence of arrays, a sequence of ``(name, array)`` pairs (such as
``model.named_parameters()``), or a list of parameter-group dicts with per-group options.
Arrays are NumPy arrays, memmaps, torch tensors, CUDA arrays (CuPy, Numba) or anything NumPy
views without copying; they are updated in place. ``step(grads)`` takes the gradients in the
same structure (``None`` skips a parameter); ``step()`` reads the ``.grad`` of each parameter
(torch tensors) and ``step(closure)`` calls ``closure`` first, as torch does. ``lr`` may be a
number or a schedule, a callable ``t -> lr`` such as those of :mod:`fastgd.schedules`.

float16 and bfloat16 parameters (NumPy, ``ml_dtypes``, torch CPU tensors) are read and
written in place in their own format, with float32 optimizer state and float32 arithmetic;
with ``master_weights=True`` the optimizer also keeps a float32 copy of each such parameter
(state ``master_param``), updates that copy and writes its rounded value to the parameter,
so that small updates are not lost to float16 rounding.

``state_precision`` (every class, per parameter group): ``"full"`` keeps the state in the
dtype the update computes in; ``"bf16"`` keeps it in bfloat16, widened to float32 in
registers and rounded to nearest even as it is stored (stochastically with
``stochastic_rounding=True``, reproducibly from ``rounding_seed``), in the same single pass;
``"8bit"`` keeps the states the algorithm declares quantized as blockwise 8-bit codes
(bitsandbytes' dynamic maps, :mod:`fastgd.lowbit`), for parameters of at least
``min_8bit_size`` elements.
Low precision needs parameters that compute in float32, on the CPU. State dicts hold the
state at the optimizer's precision and say which it is; loading any precision converts it
to the optimizer's own.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fastgd import lowbit, statedicts
from fastgd.algorithms import ALGORITHMS, Algorithm, Hyper
from fastgd.arrays import (
    check_stream,
    is_array,
    is_torch,
    state_dtype,
    to_host,
    torch_view,
)
from fastgd.engine import Param, StepInfo, Stepper, move_point, state_array
from fastgd.hyperparams import number
from fastgd.kernelgen import split_storage

#: Options every fastgd optimizer class has besides its algorithm's hyperparameters.
CLASS_OPTIONS = {"master_weights": False, "state_precision": "full",
                 "min_8bit_size": lowbit.MIN_8BIT_SIZE, "stochastic_rounding": False,
                 "rounding_seed": 0}


def _param_groups(params: Any) -> tuple[list[dict[str, Any]], bool]:
    """Normalise ``params`` to a list of groups; also says whether it was a single array."""
    if is_array(params):
        return [{"params": [params]}], True
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise TypeError("params must be an array, a sequence of arrays or a list of "
                        f"parameter-group dicts, got {type(params).__name__}")
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(item, Mapping) for item in items):
        return [dict(item) for item in items], False
    if any(isinstance(item, Mapping) for item in items):
        raise TypeError("params mixes parameter-group dicts and arrays")
    return [{"params": items}], False


def _split_names(items: list[Any]) -> tuple[list[str] | None, list[Any]]:
    """``(names, arrays)`` of a group's params: ``(name, array)`` pairs give names (as in
    ``model.named_parameters()``); a group mixing named and unnamed ones is refused."""
    named = [isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in items]
    if not any(named):
        return None, items
    if not all(named):
        raise ValueError("all optimizer params should be with/without names; some param "
                         "names are missing")
    return [p[0] for p in items], [p[1] for p in items]


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step`` and state dicts.

    Subclasses set ``algorithm`` (a declaration of :mod:`fastgd.algorithms`); the engine
    (:class:`fastgd.engine.Stepper`) does the checking and the stepping.
    """

    algorithm: Algorithm
    #: the engine's class (a face over other arrays derives its own)
    engine_class: type[Stepper] = Stepper

    def __init__(self, params: Any, defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._engine = self.engine_class(self.algorithm)
        self._named: bool | None = None
        groups, self._single = _param_groups(params)
        self._engine.check_options(self.defaults)
        for group in groups:
            self.add_param_group(group)

    # -- parameters -----------------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own options (the others take ``defaults``).

        Its ``params`` may be ``(name, array)`` pairs; then every group must be named, and
        the names are kept under ``"param_names"`` (as torch does)."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        group = dict(param_group)
        raw = group["params"]
        if is_array(raw):
            raw = [raw]
        elif isinstance(raw, (set, frozenset)):
            raise TypeError("params must be an ordered collection (a list), not a set")
        elif isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
            raise TypeError(f"params must be arrays, got {type(raw).__name__}")
        names, originals = _split_names(list(raw))
        if not originals:
            raise ValueError("optimizer got an empty parameter list")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown option(s) in parameter group: {sorted(unknown)}")
        if self._named is not None and self._named != (names is not None):
            raise ValueError("all optimizer param groups should be with/without names; "
                             f"cannot add a group {'with' if names else 'without'} names")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._engine.check_options(group)
        params = self._engine.new_params(originals, group)
        group["params"] = originals
        if names is not None:
            group["param_names"] = names
        self.param_groups.append(group)
        self._engine.params += params
        self._named = names is not None

    def parameters(self) -> list[Any]:
        """Every parameter, in order, as a zero-copy array (a NumPy array, or a Numba
        device array for GPU memory)."""
        return [p.view for p in self._current()]

    def _current(self) -> list[Param]:
        """The checked parameters, as they are now."""
        return self._engine.current()

    # -- stepping -----------------------------------------------------------------------------
    def step(self, grads: Any = None, *, max_norm: float | None = None,
             skip_if_nonfinite: bool = False, stream: Any = None) -> StepInfo | Any:
        """Apply one update to every parameter that has a gradient, in place.

        ``grads``: the gradients, in the structure of ``params``; omitted, each parameter's
        ``.grad`` (torch tensors). A callable is a *closure*, as in torch: it is called
        first (with gradients enabled, for torch tensors), computes the loss and the
        gradients, and ``step`` returns what it returned.

        All gradients and hyperparameters are checked before any array is written. GPU
        parameters are updated on ``stream`` (see :mod:`fastgd.cuda`).

        ``max_norm``: clip the gradients by their global L2 norm ``n`` first, like
        ``torch.nn.utils.clip_grad_norm_``: every gradient is multiplied by
        ``min(1, max_norm / (n + 1e-6))`` as the update kernel reads it (the gradient arrays
        are not written). ``skip_if_nonfinite``: if any gradient holds NaN or Inf, change
        nothing (params, state, step counts) — AMP's "found inf". With either option one
        reduction pass computes ``n`` and (without a closure) the step returns
        ``StepInfo(grad_norm, finite, skipped)``; otherwise it returns None.
        """
        loss = None
        closure = grads if callable(grads) and not is_array(grads) else None
        if closure is not None:
            loss, grads = self._call(closure), None
        info = self._engine.step(self.param_groups, self.state, self._grad_list(grads),
                                 max_norm=max_norm, skip_if_nonfinite=skip_if_nonfinite,
                                 stream=stream)
        return loss if closure is not None else info

    def _call(self, closure: Callable[[], Any]) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and any(is_torch(p.original) for p in self._engine.params):
            with torch.enable_grad():
                return closure()
        return closure()

    def _grad_list(self, grads: Any) -> list[Any]:
        n = len(self._engine.params)
        if type(grads) is list and len(grads) == n and (n == 1 or n != len(self.param_groups)):
            return grads  # the common case: one flat list (not one list per group)
        if grads is None:
            originals = [p for group in self.param_groups for p in group["params"]]
            if not all(hasattr(p, "grad") for p in originals):
                raise TypeError("step() needs grads unless every parameter has a .grad")
            return [p.grad for p in originals]
        if self._single and not isinstance(grads, (list, tuple)):
            return [grads]
        if is_array(grads) or isinstance(grads, (str, bytes)) or not isinstance(grads,
                                                                                Sequence):
            raise TypeError(f"grads must be a sequence of {n} arrays (like params), "
                            f"got {type(grads).__name__}")
        groups = self.param_groups
        if len(groups) > 1 and len(grads) == len(groups) and all(
                isinstance(g, (list, tuple)) for g in grads):
            for i, (g, group) in enumerate(zip(grads, groups, strict=True)):
                if len(g) != len(group["params"]):
                    raise ValueError(f"grads[{i}] has {len(g)} arrays, parameter group {i} "
                                     f"has {len(group['params'])}")
            grads = [g for per_group in grads for g in per_group]
        if len(grads) != n:
            raise ValueError(f"got {len(grads)} gradients for {n} parameters")
        return list(grads)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the ``.grad`` of parameters that have one (torch tensors)."""
        for group in self.param_groups:
            for p in group["params"]:
                if getattr(p, "grad", None) is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach().zero_()

    # -- learning rate ----------------------------------------------------------------------
    @property
    def lr(self) -> Any:
        """The learning rate or schedule of every group (``param_groups`` when they differ).

        A schedule is any callable ``t -> lr`` (see :mod:`fastgd.schedules`), evaluated once
        per step with ``t``, the 1-based number of the step being taken."""
        rates = {group["lr"] for group in self.param_groups}
        if len(rates) != 1:
            raise ValueError("parameter groups have different learning rates; read "
                             "param_groups[i]['lr']")
        return rates.pop()

    @lr.setter
    def lr(self, value: Any) -> None:
        number("lr", value(1) if callable(value) else value)
        for group in self.param_groups:
            group["lr"] = value

    # -- state dicts --------------------------------------------------------------------------
    def state_nbytes(self) -> int:
        """Bytes held by the optimizer state (every state array)."""
        return sum(v.nbytes for entry in self.state.values() for v in entry.values()
                   if hasattr(v, "nbytes"))

    def state_dict(self) -> dict[str, Any]:
        """``{'state': {index: {...}}, 'param_groups': [...]}``, torch.optim's layout:
        numbers, and copies of the state arrays -- NumPy arrays, or torch tensors on the
        parameter's device when the parameter is a torch tensor (so that ``torch.optim``'s
        optimizer of the same name loads it)."""
        params = self._engine.params
        state = {i: {k: v if isinstance(v, (int, float)) else self._export(v, params[i])
                     for k, v in entry.items()} for i, entry in self.state.items()}
        groups, start = [], 0
        for group in self.param_groups:
            options = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
            options["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(options)
        return {"state": state, "param_groups": groups}

    @staticmethod
    def _export(value: Any, param: Param) -> Any:
        host = to_host(value)
        return host if param.torch is None else torch_view(host).to(param.torch[3])

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, or a ``torch.optim`` state dict of the same
        algorithm (tensors, tensor steps; torch's implementation options ``foreach``,
        ``fused``, ``capturable`` and ``differentiable`` are ignored). A mismatched one is
        refused with nothing changed."""
        updates, state = statedicts.check(self._engine, self.param_groups, state_dict)
        for update, group in zip(updates, self.param_groups, strict=True):
            group.update(update)
        self.state = state
        self._engine.forget()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items())
                      if k not in ("params", "param_names")]
        return "\n".join(lines) + "\n)"


class ScheduleFree:
    """What the Schedule-Free optimizers of every face add to their base class
    (``schedulefree``'s semantics).

    The parameter holds ``y``, the point where gradients are taken, while training, and
    ``x``, the average the method returns, for evaluation: :meth:`eval` moves it to ``x``
    and :meth:`train` back to ``y`` (each a fused pass ``p = lerp(p, z, w)``, torch's
    ``lerp``, as the package computes it). The mode is the group option ``train_mode``; an
    optimizer starts in eval mode, as the package does, and a step in eval mode is an error:
    call ``train()`` before training and ``eval()`` before evaluating or saving the model
    to use. State dicts hold the mode with the parameter groups, and checkpoints the
    parameter as it is (``x`` or ``y``): a resumed optimizer is in the mode it was saved in,
    so the same calls continue the run exactly. :meth:`load_state_dict` also takes the
    ``schedulefree`` package's state dicts (its per-group ``k``, ``lr_max`` and
    ``weight_sum`` become each parameter's ``step``, ``lr_max`` and ``weight_sum``).
    """

    #: the ``schedulefree`` package's group entries that fastgd keeps per parameter
    PACKAGE_COUNTERS = {"k": "step", "lr_max": "lr_max", "weight_sum": "weight_sum"}

    algorithm: Algorithm
    _engine: Stepper
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Any, defaults: Mapping[str, Any], **face: Any) -> None:
        super().__init__(params, {**defaults, "train_mode": False},  # type: ignore[call-arg]
                         **face)

    def _entries(self) -> Mapping[int, dict[str, Any]]:
        """Each parameter's state, by its index."""
        raise NotImplementedError

    def add_param_group(self, param_group: Any) -> None:
        """Add a group (see the base class); it starts in the optimizer's mode."""
        modes = {group["train_mode"] for group in self.param_groups}
        if len(modes) == 1 and isinstance(param_group, dict):
            param_group.setdefault("train_mode", modes.pop())
        super().add_param_group(param_group)  # type: ignore[misc]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) and set(
            state_dict) == {"state", "param_groups"} else None
        if isinstance(groups, list) and groups and all(
                isinstance(g, Mapping) and set(self.PACKAGE_COUNTERS) <= set(g) for g in groups):
            state_dict = self._from_package(state_dict)
        super().load_state_dict(state_dict)  # type: ignore[misc]

    def _from_package(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """A ``schedulefree`` state dict in fastgd's layout."""
        state = dict(state_dict["state"]) if isinstance(state_dict["state"], Mapping) else {}
        groups = []
        for group in state_dict["param_groups"]:
            counters = {ours: group[theirs] for theirs, ours in self.PACKAGE_COUNTERS.items()}
            for index in group.get("params", ()):
                if index in state and isinstance(state[index], Mapping):
                    state[index] = {**state[index], **counters}
            groups.append({"maximize": False, **{
                k: v for k, v in group.items()
                if k not in self.PACKAGE_COUNTERS and k != "scheduled_lr"}})
        return {"state": state, "param_groups": groups}

    def step(self, *args: Any, **options: Any) -> Any:
        """One step (see the base class's ``step``); refused in eval mode."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}.step() in eval mode: call .train() "
                               "before training steps (and .eval() before evaluating)")
        return super().step(*args, **options)  # type: ignore[misc]

    def train(self, stream: Any = None) -> None:
        """Put every parameter at ``y = beta x + (1 - beta) z`` (training mode); GPU
        parameters on ``stream`` (see :meth:`Optimizer.step`)."""
        self._move(True, stream)

    def eval(self, stream: Any = None) -> None:
        """Put every parameter at ``x = (y - (1 - beta) z) / beta`` (eval mode)."""
        self._move(False, stream)

    def _move(self, train: bool, stream: Any) -> None:
        start, moves = 0, []
        for group in self.param_groups:  # (every group checked before any is moved)
            count = len(group["params"])
            if group["train_mode"] != train:
                options = self._engine.check_options(group)
                beta = self.algorithm.schedule_free(options)
                weight = 1.0 - beta if train else 1.0 - 1.0 / beta
                for i in range(start, start + count):
                    entry = self._entries().get(i, {})
                    if "z" in entry:
                        moves.append((i, entry, options, weight))
            start += count
        self._apply_moves(moves, stream)
        for group in self.param_groups:
            group["train_mode"] = train

    def _apply_moves(self, moves: list[tuple[int, dict[str, Any], Mapping[str, Any], float]],
                     stream: Any) -> None:
        """Move parameters between their points: ``(index, state entry, group options,
        weight)`` each (all of them checked first)."""
        params = self._current()
        points = [(params[i], *self._points(i, entry, options), weight)
                  for i, entry, options, weight in moves]
        if stream is not None:
            check_stream(stream, [param.view for param, *_ in points])
        for param, master, z, weight in points:
            move_point(param, master, z, weight, stream)

    def _points(self, index: int, entry: dict[str, Any], options: Mapping[str, Any]
                ) -> tuple[Param | None, Param]:
        """The checked master copy (if the group's parameters have one: it holds the
        point) and ``z`` of parameter ``index``."""
        param = self._engine.params[index]
        keeps = split_storage(self._engine.storage_format(param, options))[1]
        if keeps and "master_param" in entry:  # (renewed if the parameter changed alone)
            self._engine.current_master(index, entry, param)
        master = entry.get("master_param") if keeps else None
        return (None if master is None else state_array(
                    param, master, f"state[{index}]['master_param']",
                    (np.dtype(np.float32), False)),
                state_array(param, entry["z"], f"state[{index}]['z']",
                            (state_dtype(param.view), False)))


class ScheduleFreeOptimizer(ScheduleFree, Optimizer):
    __doc__ = ScheduleFree.__doc__

    def _entries(self) -> Mapping[int, dict[str, Any]]:
        return self.state


# -- one class per algorithm ---------------------------------------------------------------------

def _class_doc(algorithm: Algorithm) -> str:
    states = [s.name + (f" (with {s.when})" if s.when else "") for s in algorithm.states]
    options = ", ".join(f"{h.name}={h.default!r}" for h in algorithm.hyperparameters)
    lines = [algorithm.summary, "", "Per element, each step (``g``: the gradient, negated when "
             "``maximize``; ``t``: the step number)::", "",
             *("    " + line for line in algorithm.math.splitlines()), "",
             f"State: {', '.join(states)}"
             + "".join(f", {s.name} (a number)" for s in algorithm.scalars) + ".",
             "With ``state_precision='8bit'``: " + ("refused (a two-phase step reads "
                                                   "the state twice)" if algorithm.two_phase
                                                   else "; ".join(
                 f"{s.name} {s.eight_bit}" + (" map" if s.eight_bit != "full" else
                                              f" precision ({s.why})")
                 for s in algorithm.states)) + ".",
             f"Hyperparameters and defaults: {options}"
             + "".join(f", {k}={v!r} (fixed)" for k, v in algorithm.fixed.items()) + ".",
             f"Formulas and defaults: ``{algorithm.source}``; see :class:`Optimizer` for "
             "``params``, ``step`` and the state dicts."]
    return "\n".join(lines)


def make_class(algorithm: Algorithm, base: type = Optimizer,
               schedule_free: type = ScheduleFreeOptimizer, module: str = __name__,
               face_options: Mapping[str, Any] | None = None) -> type:
    """The optimizer class of ``algorithm`` (a subclass of ``base``, or of ``schedule_free``
    for a Schedule-Free algorithm) with a real signature and the math in its docstring.
    ``face_options``: keyword-only options of the face (with their defaults), passed to
    the base class's ``__init__`` as keyword arguments (not parameter-group options)."""
    face_options = dict(face_options or {})
    hypers = algorithm.hyperparameters

    def argument(h: Hyper) -> str:
        kind = "float | Callable[[int], float]" if h.name == "lr" else h.domain.annotation
        return f"{h.name}: {kind} = _DEFAULTS[{h.name!r}]"

    positional = [argument(h) for h in hypers if not h.keyword_only]
    keyword = [argument(h) for h in hypers if h.keyword_only]
    keyword += [f"{n}: {type(v).__name__} = {v!r}" for n, v in CLASS_OPTIONS.items()]
    keyword += [f"{n}: Any = _FACE[{n!r}]" for n in face_options]
    options = ", ".join([f"{h.name!r}: {h.name}" for h in hypers] + ["**_FIXED"]
                        + [f"{n!r}: {n}" for n in CLASS_OPTIONS])
    face = "".join(f", {n}={n}" for n in face_options)
    source = f'''\
from __future__ import annotations


def __init__(self, params: Any, {", ".join(positional)}, *, {", ".join(keyword)}) -> None:
    _BASE.__init__(self, params, {{{options}}}{face})
'''
    base = schedule_free if algorithm.schedule_free else base
    namespace: dict[str, Any] = {"Any": Any, "_BASE": base,
                                 "_DEFAULTS": {h.name: h.default for h in hypers},
                                 "_FIXED": dict(algorithm.fixed), "_FACE": face_options}
    exec(source, namespace)  # noqa: S102 - a signature generated from the table
    init = namespace["__init__"]
    init.__qualname__ = f"{algorithm.name}.__init__"
    return type(algorithm.name, (base,), {
        "algorithm": algorithm, "__init__": init, "__doc__": _class_doc(algorithm),
        "__module__": module})


#: What every optimizer class shares (exported with the classes).
BASES = ("Optimizer", "ScheduleFreeOptimizer", "StepInfo")
__all__ = [*BASES, *ALGORITHMS]
globals().update({name: make_class(algorithm) for name, algorithm in ALGORITHMS.items()})
