"""Optimizer classes with the names, hyperparameters, defaults and formulas of torch.optim.

``params`` is one array, a sequence of arrays (or of ``(name, array)`` pairs), or a list of
parameter-group dicts with per-group options. Arrays are NumPy arrays, memmaps, torch CPU
tensors or anything NumPy views without copying; they are updated in place. ``step(grads)``
takes the gradients in the same structure (``None`` skips a parameter); without ``grads`` the
``.grad`` attribute of each parameter (torch tensors) is used. ``lr`` may be a number or a
schedule, a callable ``t -> lr`` such as those of :mod:`fastgd.schedules`.

float16 and bfloat16 parameters (NumPy, ``ml_dtypes``, torch CPU tensors) are read and
written in place in their own format, with float32 optimizer state and float32 arithmetic;
with ``master_weights=True`` the optimizer also keeps a float32 copy of each such parameter
(state ``master_param``), updates that copy and writes its rounded value to the parameter,
so that small updates are not lost to float16 rounding.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fastgd import algorithms
from fastgd.dispatch import (
    address,
    as_array,
    check_like,
    check_stream,
    flat,
    from_host,
    gpu_of,
    is_device,
    kernel_view,
    memory_order,
    on_gpu,
    shares_memory,
    span,
    state_dtype,
    storage,
    to_host,
    zeros_like,
)
from fastgd.functional import launch_flat, launch_many_flat
from fastgd.halfprec import to_float32
from fastgd.hyperparams import (
    StepScalars,
    adadelta_scalars,
    adagrad_scalars,
    adam_scalars,
    adamax_scalars,
    nadam_mu,
    nadam_scalars,
    number,
    rmsprop_scalars,
    sgd_scalars,
)
from fastgd.reductions import clip_scale, global_norm

__all__ = ["Optimizer", "StepInfo", "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW",
           "Adamax", "NAdam"]


class StepInfo(NamedTuple):
    """What a step with ``max_norm`` or ``skip_if_nonfinite`` found."""

    grad_norm: float  #: global L2 norm of the gradients, before clipping
    finite: bool  #: no gradient holds NaN or Inf
    skipped: bool  #: the step changed nothing (``skip_if_nonfinite`` and not ``finite``)


def _param_groups(params: Any) -> tuple[list[dict[str, Any]], bool]:
    """Normalise ``params`` to a list of groups; also says whether it was a single array."""
    if isinstance(params, np.ndarray) or hasattr(params, "__array_interface__") or (
            type(params).__module__.startswith("torch") and hasattr(params, "detach")):
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


def _unnamed(param: Any) -> Any:
    if isinstance(param, tuple) and len(param) == 2 and isinstance(param[0], str):
        return param[1]
    return param


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step`` and state dicts.

    Subclasses set ``spec`` (the update rule), implement :meth:`_scalars` (the per-step
    scalars of a group at step ``t``) and may override :meth:`_initial_state`.
    """

    spec: algorithms.RuleSpec

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._views: list[np.ndarray] = []
        self._orders: list[str] = []
        self._gpus: list[int | None] = []  # the GPU of each device parameter
        self._flat_params: dict[int, tuple[Any, int]] = {}
        self._flat_states: dict[int, tuple[list[Any], list[Any], list[int]]] = {}
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}
        groups, self._single = _param_groups(params)
        self._check_hyperparameters(self.defaults)
        for group in groups:
            self.add_param_group(group)

    # -- parameters -----------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own options (the others take ``defaults``)."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        group = dict(param_group)
        raw = group["params"]
        if isinstance(raw, np.ndarray) or hasattr(raw, "__array_interface__") or (
                type(raw).__module__.startswith("torch") and hasattr(raw, "detach")):
            raw = [raw]
        originals = [_unnamed(p) for p in raw]
        if not originals:
            raise ValueError("optimizer got an empty parameter list")
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise TypeError(f"unknown option(s) in parameter group: {sorted(unknown)}")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_hyperparameters(group)
        first = len(self._views)
        views = [as_array(p, f"params[{first + i}]", writable=True, device=is_device(p))
                 for i, p in enumerate(originals)]
        orders = [memory_order(v, f"params[{first + i}]") for i, v in enumerate(views)]
        _check_disjoint(self._views + views)
        group["params"] = originals
        self.param_groups.append(group)
        self._views += views
        self._orders += orders
        self._gpus += [gpu_of(v) for v in views]

    def _check_hyperparameters(self, group: Mapping[str, Any]) -> None:
        self._scalars(group, 1, {})

    # -- stepping -------------------------------------------------------------------
    def step(self, grads: Any = None, *, max_norm: float | None = None,
             skip_if_nonfinite: bool = False, stream: Any = None) -> StepInfo | None:
        """Apply one update to every parameter that has a gradient, in place.

        All gradients and hyperparameters are checked before any array is written. GPU
        parameters are updated on ``stream`` (see :mod:`fastgd.cuda`).

        ``max_norm``: clip the gradients by their global L2 norm ``n`` first, like
        ``torch.nn.utils.clip_grad_norm_``: every gradient is multiplied by
        ``min(1, max_norm / (n + 1e-6))`` as the update kernel reads it (the gradient arrays
        are not written). ``skip_if_nonfinite``: if any gradient holds NaN or Inf, change
        nothing (params, state, step counts) — AMP's "found inf". With either option one
        reduction pass computes ``n`` and the step returns ``StepInfo(grad_norm, finite,
        skipped)``; otherwise it returns None.
        """
        grads_flat = self._grad_list(grads)
        work = []
        scalar_cache: dict[tuple[int, int], StepScalars] = {}
        index = 0
        for g_index, group in enumerate(self.param_groups):
            for _ in group["params"]:
                grad = grads_flat[index]
                if grad is not None:
                    view, order = self._views[index], self._orders[index]
                    if not view.flags["WRITEABLE"]:
                        raise ValueError(f"params[{index}] has become read-only")
                    name = f"grads[{index}]"
                    gpu = self._gpus[index]
                    # A plain host array needs no conversion (check_like checks its dtype).
                    garr = grad if type(grad) is np.ndarray and gpu is None else as_array(
                        grad, name, writable=False, device=gpu is not None)
                    check_like(garr, view, order, name, f"params[{index}]")
                    if shares_memory(garr, view):
                        raise ValueError(f"{name} shares memory with params[{index}]")
                    if gpu is not None and gpu_of(garr) != gpu:
                        raise ValueError(f"{name} is on GPU {gpu_of(garr)} but params[{index}] "
                                         f"is on GPU {gpu}")
                    state = self.state.get(index, {})
                    t = state.get("step", 0) + 1
                    key = (g_index, t)
                    if key not in scalar_cache or self._per_param_scalars:
                        scalar_cache[key] = self._scalars(group, t, state)
                    work.append((index, group, kernel_view(garr, order), scalar_cache[key], t))
                index += 1
        if stream is not None:
            check_stream(stream, [self._views[index] for index, *_ in work])
        info = None
        if max_norm is not None or skip_if_nonfinite:
            info = self._reduce(work, max_norm, skip_if_nonfinite)
            if info.skipped:
                return info
            if max_norm is not None:
                scale = clip_scale(info.grad_norm, float(max_norm))
                work = [(i, g, gf, sc._replace(grad_scale=sc.grad_scale * scale), t)
                        for i, g, gf, sc, t in work]
        # Tensors that share dtype, device and step scalars run as one many-tensor launch.
        batches: dict[tuple[Any, int | None, StepScalars, str],
                      tuple[list[list[Any]], list[list[int]]]] = {}
        for index, group, gflat, scalars, _ in work:
            state = self.state.setdefault(index, {})
            view = self._views[index]
            names = self._state_names(scalars.optional)
            for name in names:
                if name not in state:
                    state[name] = self._initial_state(group, view, name)
            fmt = storage(view)
            if fmt and group["master_weights"]:
                fmt += "_master"
                if "master_param" not in state:
                    state["master_param"] = from_host(view, view, np.float32)
                names = ("master_param", *names)
            pflat, paddress = self._kernel_view(index)
            sflats, saddresses = self._state_views(index, names)
            key = (view.dtype, self._gpus[index], scalars, fmt)
            batch = batches.setdefault(key, ([], []))
            batch[0].append([pflat, gflat, *sflats])
            batch[1].append([paddress, address(gflat), *saddresses])
        for (_, gpu, scalars, fmt), (tensors, addresses) in batches.items():
            with on_gpu(gpu):
                if len(tensors) > 1:
                    launch_many_flat(self.spec, tensors, scalars, stream, fmt, addresses)
                else:
                    launch_flat(self.spec, tensors[0], scalars, stream, fmt)
        for index, group, _, _, t in work:
            state = self.state[index]
            self._after_step(state, group, t)
            state["step"] = t
        return info

    def _kernel_view(self, index: int) -> tuple[Any, int]:
        """Flat kernel view of ``params[index]`` and its address (made once: the parameter
        never changes)."""
        cached = self._flat_params.get(index)
        if cached is None:
            view = kernel_view(self._views[index], self._orders[index])
            cached = self._flat_params[index] = (view, address(view))
        return cached

    def _state_names(self, optional: tuple[str, ...]) -> tuple[str, ...]:
        """The state arrays a step uses when the optional states ``optional`` are on."""
        names = self._names.get(optional)
        if names is None:
            off = {state for state, _ in self.spec.optional} - set(optional)
            names = self._names[optional] = tuple(n for n in self.spec.states if n not in off)
        return names

    def _state_views(self, index: int, names: tuple[str, ...]) -> tuple[list[Any], list[int]]:
        """Flat views of the state arrays ``names`` of ``params[index]`` and their addresses,
        remade only when the arrays themselves change (new state, ``load_state_dict``)."""
        state = self.state[index]
        arrays = [state[n] for n in names]
        cached = self._flat_states.get(index)
        if cached is None or len(cached[0]) != len(arrays) or not all(
                map(operator.is_, cached[0], arrays)):
            flats = [flat(a, self._orders[index]) for a in arrays]
            cached = self._flat_states[index] = (arrays, flats, [address(f) for f in flats])
        return cached[1], cached[2]

    def _reduce(self, work: list[Any], max_norm: Any, skip_if_nonfinite: bool) -> StepInfo:
        if max_norm is not None:
            number("max_norm", max_norm)
        grads = [to_float32(gflat, storage(self._views[index]))
                 for index, _, gflat, _, _ in work]
        if not all(isinstance(g, np.ndarray) for g in grads):
            raise TypeError("max_norm and skip_if_nonfinite support host (NumPy) arrays only")
        norm = global_norm(grads)
        finite = math.isfinite(norm)
        return StepInfo(norm, finite, skip_if_nonfinite and not finite)

    _per_param_scalars = False

    def _after_step(self, state: dict[str, Any], group: Mapping[str, Any], t: int) -> None:
        """Hook for scalar state that changes every step (NAdam's ``mu_product``)."""

    def _grad_list(self, grads: Any) -> list[Any]:
        n = len(self._views)
        if grads is None:
            originals = [p for group in self.param_groups for p in group["params"]]
            if not all(hasattr(p, "grad") for p in originals):
                raise TypeError("step() needs grads unless every parameter has a .grad")
            return [p.grad for p in originals]
        if self._single and not isinstance(grads, (list, tuple)):
            return [grads]
        if isinstance(grads, (np.ndarray, str, bytes)) or not isinstance(grads, Sequence):
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

    def _scalars(self, group: Mapping[str, Any], t: int, state: Mapping[str, Any]
                 ) -> StepScalars:
        raise NotImplementedError

    def _initial_state(self, group: Mapping[str, Any], param: np.ndarray, name: str
                       ) -> np.ndarray:
        return zeros_like(param, dtype=state_dtype(param))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the ``.grad`` of parameters that have one (torch tensors)."""
        for group in self.param_groups:
            for p in group["params"]:
                if getattr(p, "grad", None) is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach().zero_()

    # -- learning rate ----------------------------------------------------------------
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

    # -- state dicts ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{'state': {index: {...}}, 'param_groups': [...]}`` of plain numbers and copies."""
        state = {i: {k: (v if isinstance(v, (int, float)) else to_host(v))
                     for k, v in s.items()} for i, s in self.state.items()}
        groups, start = [], 0
        for group in self.param_groups:
            options = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
            options["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(options)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a mismatched one is refused with nothing changed."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict must have exactly the keys 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, this "
                             f"optimizer has {len(self.param_groups)}")
        start = 0
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if set(saved) != set(group):
                raise ValueError(f"param_groups[{i}] has options {sorted(saved)}, expected "
                                 f"{sorted(group)} (a state dict of another optimizer?)")
            count = len(group["params"])
            if list(saved["params"]) != list(range(start, start + count)):
                raise ValueError(f"param_groups[{i}] holds {len(saved['params'])} parameters "
                                 f"{list(saved['params'])[:5]}..., expected {count}")
            start += count
            self._check_hyperparameters({k: v for k, v in saved.items() if k != "params"})
        new_state = {}
        for key, entry in dict(state_dict["state"]).items():
            index = _state_index(key, len(self._views))
            new_state[index] = self._checked_state(index, entry)
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    def _checked_state(self, index: int, entry: Any) -> dict[str, Any]:
        name = f"state[{index}]"
        if not isinstance(entry, Mapping):
            raise TypeError(f"{name} must be a dict")
        scalar_keys = {"step"} | set(self._scalar_state)
        arrays_keys = {*self.spec.states, "master_param"}
        unknown = set(entry) - arrays_keys - scalar_keys
        if unknown:
            raise ValueError(f"{name} has unknown entries {sorted(unknown)} (a state dict of "
                             "another optimizer?)")
        if "step" not in entry:
            raise ValueError(f"{name} has no 'step'")
        step = entry["step"]
        if isinstance(step, np.ndarray) and step.ndim == 0:
            step = step.item()
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{name}['step'] must be a non-negative integer, got {step!r}")
        result: dict[str, Any] = {"step": int(step)}
        for key in self._scalar_state:
            if key not in entry:
                raise ValueError(f"{name} has no {key!r}")
            result[key] = number(f"{name}[{key!r}]", entry[key], high=1.0,
                                 high_inclusive=True)
        view = self._views[index]
        dtype = state_dtype(view)
        for key in (*self.spec.states, "master_param"):
            if key in entry:
                arr = np.asarray(entry[key])
                if arr.shape != tuple(view.shape) or arr.dtype != dtype:
                    raise ValueError(f"{name}[{key!r}] is {arr.dtype} {arr.shape}, expected "
                                     f"{dtype} {tuple(view.shape)} for params[{index}]")
                result[key] = from_host(arr, view, dtype)
        required = [k for k in self.spec.states if k not in dict(self.spec.optional)]
        missing = [k for k in required if k not in result]
        if missing and result["step"] > 0:
            raise ValueError(f"{name} lacks {missing}")
        return result

    _scalar_state: tuple[str, ...] = ()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


def _state_index(key: Any, count: int) -> int:
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise ValueError(f"state key {key!r} is not a parameter index")
    index = int(key)
    if not 0 <= index < count:
        raise ValueError(f"state key {key!r} is out of range for {count} parameters")
    return index


def _check_disjoint(views: list[Any]) -> None:
    """Parameters must not share memory (the same array twice would be updated twice)."""
    spans = sorted((*s, i) for i, s in enumerate(map(span, views)) if s and s[1])
    for (start_a, size_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        if start_b < start_a + size_a:
            raise ValueError(f"params[{min(a, b)}] and params[{max(a, b)}] share memory "
                             "(a parameter listed twice?)")


def _lr(group: Mapping[str, Any], t: int) -> Any:
    """The group's learning rate for step ``t``: a number, or a schedule evaluated at ``t``."""
    lr = group["lr"]
    return lr(t) if callable(lr) else lr


def _betas(group: Mapping[str, Any]) -> tuple[Any, Any]:
    betas = group["betas"]
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return betas[0], betas[1]


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum; see
    :func:`fastgd.functional.sgd` for the math. State: ``momentum_buffer``."""

    spec = algorithms.SGD

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, master_weights=master_weights))

    _per_param_scalars = True

    def _scalars(self, group, t, state):
        return sgd_scalars(lr=_lr(group, t), momentum=group["momentum"],
                           dampening=group["dampening"], weight_decay=group["weight_decay"],
                           nesterov=group["nesterov"], maximize=group["maximize"],
                           first_step="momentum_buffer" not in state)


class Adagrad(Optimizer):
    """Adagrad; see :func:`fastgd.functional.adagrad`. State: ``sum``."""

    spec = algorithms.ADAGRAD

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize, master_weights=master_weights))

    def _check_hyperparameters(self, group):
        super()._check_hyperparameters(group)
        number("initial_accumulator_value", group["initial_accumulator_value"])

    def _scalars(self, group, t, state):
        return adagrad_scalars(step=t, lr=_lr(group, t), lr_decay=group["lr_decay"],
                               weight_decay=group["weight_decay"], eps=group["eps"],
                               maximize=group["maximize"])

    def _initial_state(self, group, param, name):
        return zeros_like(param, fill=group["initial_accumulator_value"],
                          dtype=state_dtype(param))


class Adadelta(Optimizer):
    """Adadelta; see :func:`fastgd.functional.adadelta`. State: ``square_avg``,
    ``acc_delta``."""

    spec = algorithms.ADADELTA

    def __init__(self, params: Any, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, master_weights=master_weights))

    def _scalars(self, group, t, state):
        return adadelta_scalars(lr=_lr(group, t), rho=group["rho"], eps=group["eps"],
                                weight_decay=group["weight_decay"], maximize=group["maximize"])


class RMSprop(Optimizer):
    """RMSprop with optional momentum and centering; see :func:`fastgd.functional.rmsprop`.
    State: ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered)."""

    spec = algorithms.RMSPROP

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize, master_weights=master_weights))

    def _scalars(self, group, t, state):
        return rmsprop_scalars(lr=_lr(group, t), alpha=group["alpha"], eps=group["eps"],
                               weight_decay=group["weight_decay"], momentum=group["momentum"],
                               centered=group["centered"], maximize=group["maximize"])


class Adam(Optimizer):
    """Adam (AMSGrad with ``amsgrad=True``; AdamW with ``decoupled_weight_decay=True``); see
    :func:`fastgd.functional.adam`. State: ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``."""

    spec = algorithms.ADAM

    def __init__(self, params: Any, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      master_weights=master_weights))

    def _scalars(self, group, t, state):
        beta1, beta2 = _betas(group)
        return adam_scalars(step=t, lr=_lr(group, t), beta1=beta1, beta2=beta2, eps=group["eps"],
                            weight_decay=group["weight_decay"],
                            decoupled_weight_decay=group["decoupled_weight_decay"],
                            amsgrad=group["amsgrad"], maximize=group["maximize"])


class AdamW(Adam):
    """Adam with decoupled weight decay, ``p *= 1 - lr * weight_decay`` (default 1e-2)."""

    def __init__(self, params: Any, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, master_weights: bool = False) -> None:
        Optimizer.__init__(self, params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=True, master_weights=master_weights))


class Adamax(Optimizer):
    """Adamax; see :func:`fastgd.functional.adamax`. State: ``exp_avg``, ``exp_inf``."""

    spec = algorithms.ADAMAX

    def __init__(self, params: Any, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize, master_weights=master_weights))

    def _scalars(self, group, t, state):
        beta1, beta2 = _betas(group)
        return adamax_scalars(step=t, lr=_lr(group, t), beta1=beta1, beta2=beta2,
                              eps=group["eps"], weight_decay=group["weight_decay"],
                              maximize=group["maximize"])


class NAdam(Optimizer):
    """NAdam; see :func:`fastgd.functional.nadam`. State: ``exp_avg``, ``exp_avg_sq`` and the
    number ``mu_product``."""

    spec = algorithms.NADAM
    _scalar_state = ("mu_product",)
    _per_param_scalars = True

    def __init__(self, params: Any, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 master_weights: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize, master_weights=master_weights))

    def _scalars(self, group, t, state):
        beta1, beta2 = _betas(group)
        return nadam_scalars(step=t, mu_product=state.get("mu_product", 1.0), lr=_lr(group, t),
                             beta1=beta1, beta2=beta2, eps=group["eps"],
                             weight_decay=group["weight_decay"],
                             momentum_decay=group["momentum_decay"],
                             decoupled_weight_decay=group["decoupled_weight_decay"],
                             maximize=group["maximize"])[0]

    def _after_step(self, state, group, t):
        # The step's scalars were checked and computed already: advance the product only
        # (without evaluating a schedule or re-checking every hyperparameter once more).
        mu = nadam_mu(float(_betas(group)[0]), float(group["momentum_decay"]), t)
        state["mu_product"] = state.get("mu_product", 1.0) * mu
