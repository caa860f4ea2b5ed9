"""fastgd's optimizers as :class:`torch.optim.Optimizer` subclasses: ``fastgd.torch.Adam`` ...

For every algorithm of :mod:`fastgd.algorithms` there is a class of the same name, with the
same hyperparameters and defaults as :mod:`fastgd`'s (and as ``torch.optim``'s class where
torch has one), that *is* a ``torch.optim.Optimizer``: torch's LR schedulers,
``torch.amp.GradScaler``, ``ZeroRedundancyOptimizer``, Lightning and the 🤗 Trainer take
it. It has torch's semantics: ``param_groups``, ``state`` keyed by parameter (torch
tensors, zero-copy over the memory the kernels update), ``defaults``, ``step(closure=None)``
reading each parameter's ``.grad`` (parameters without one are skipped),
``zero_grad(set_to_none=True)``, ``add_param_group``, the base class's step and state-dict
hooks, and state dicts in torch's format that ``torch.optim``'s class of the same name
loads, and that load from it.

The update is fastgd's engine (:class:`fastgd.engine.Stepper`) on the tensors in place, as
in the NumPy face: one fused pass over many tensors at once, float16/bfloat16 parameters
(``master_weights``), low-precision state (``state_precision``), fused clipping
(``step(max_norm=...)``) and skipping (``skip_if_nonfinite=True``), CUDA tensors on torch's
current stream. Importing this module imports torch; ``import fastgd`` does not.
"""

from __future__ import annotations

import functools
import operator
from collections import defaultdict
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from fastgd import optim, statedicts
from fastgd.algorithms import ALGORITHMS, Algorithm
from fastgd.arrays import is_device, is_torch, torch_view
from fastgd.engine import Param, StepInfo, Stepper


def as_tensor(array: Any, device: torch.device) -> torch.Tensor:
    """A torch tensor over ``array``'s memory (a NumPy array, or a CUDA array on
    ``device``), without a copy; a tensor as it is."""
    if is_torch(array):
        return array
    if is_device(array):
        return torch.as_tensor(array, device=device)
    return torch_view(array)


def _adopt(entry: dict[str, Any], param: Param) -> None:
    """Keep the state arrays the engine made for ``param`` as torch tensors (zero-copy)."""
    for key, value in entry.items():
        if not isinstance(value, (int, float)) and not is_torch(value):
            entry[key] = as_tensor(value, param.original.device)


def _step_count(value: Any) -> Any:
    """A state entry's ``step`` as an int (torch keeps it as a float tensor)."""
    if is_torch(value) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _ByIndex:
    """The optimizer's state by parameter index, over torch's ``state`` by parameter: what
    the engine reads and writes (``state`` may be replaced, as torch's loading does)."""

    __slots__ = ("_opt",)

    def __init__(self, opt: Optimizer) -> None:
        self._opt = opt

    def get(self, index: int, default: Any = None) -> Any:
        opt = self._opt
        entry = opt.state.get(opt._flat[index], default)
        if entry and type(entry.get("step", 0)) is not int:
            entry["step"] = _step_count(entry["step"])  # (loaded by hand, as ZeRO does)
        return entry

    def setdefault(self, index: int, default: dict[str, Any]) -> dict[str, Any]:
        return self._opt.state.setdefault(self._opt._flat[index], default)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._opt.state[self._opt._flat[index]]


def _tensors(params: Any) -> list[Any]:
    """A group's ``params`` (a tensor, or a list) as torch's ``add_param_group`` will hold
    them (names dropped)."""
    if isinstance(params, torch.Tensor):
        return [params]
    if isinstance(params, set):
        return []  # (torch refuses them)
    return [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]


class Optimizer(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose step is fastgd's fused update.

    Subclasses set ``algorithm``; the engine checks and steps the parameters (every check
    before any tensor is written), and keeps the state as torch tensors in ``state``.
    """

    algorithm: Algorithm

    def __init__(self, params: Any, defaults: Mapping[str, Any]) -> None:
        self._engine = self._stepper()
        self._engine.check_options(defaults)
        self._indexed = _ByIndex(self)
        self._flat: list[torch.Tensor] = []
        self._counts: list[int] = []  # (the parameters of each group)
        super().__init__(params, dict(defaults))

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch's wrapper of ``step`` (the global and the optimizer's step hooks, and the
        profiler's ``Optimizer.step#...`` range), with the range opened only while a
        profiler runs: opening it costs a step of many tensors 1-2% here, recorded or not."""
        profiled = torch.optim.Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if torch.autograd._profiler_enabled():
                return profiled(*args, **kwargs)
            self = args[0]
            for hook in chain(_global_optimizer_pre_hooks.values(),
                              self._optimizer_step_pre_hooks.values()):
                result = hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"{func} must return None or a tuple of "
                                           f"(new_args, new_kwargs), but got {result}.")
                    args, kwargs = result
            out = func(*args, **kwargs)
            self._optimizer_step_code()
            for hook in chain(self._optimizer_step_post_hooks.values(),
                              _global_optimizer_post_hooks.values()):
                hook(self, args, kwargs)
            return out

        return wrapper

    def _stepper(self) -> Stepper:
        """The engine, which keeps new state as torch tensors, and follows parameters whose
        memory moves (``p.data = ...``) as torch.optim does."""
        return Stepper(self.algorithm, adopt=_adopt, follow=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (torch tensors) with its own options; they are checked
        (options; tensors that can be updated in place) before the group is added."""
        params: list[Param] = []
        if isinstance(param_group, dict) and "params" in param_group:
            if not isinstance(param_group["params"], (torch.Tensor, set)):  # (an iterator:
                param_group["params"] = list(param_group["params"])  # read it once)
            originals = _tensors(param_group["params"])
            if all(isinstance(p, torch.Tensor) for p in originals):
                options = {**self.defaults, **param_group}
                self._engine.check_options(options)
                params = self._engine.new_params(originals, options)
        # (torch's checks, which refuse what was not checked above; then the group is added)
        super().add_param_group(param_group)
        self._engine.params += params
        self._flat += param_group["params"]
        self._counts.append(len(params))

    def parameters(self) -> list[Any]:
        """Every parameter, in order, as a zero-copy array (NumPy, or Numba for GPU
        memory), as :meth:`fastgd.Optimizer.parameters` (for :func:`fastgd.save`)."""
        return [p.view for p in self._current()]

    def _current(self) -> list[Param]:
        """The checked parameters, as the groups now hold them and where their memory now
        is (torch lets both change between steps)."""
        self._regroup()
        return self._engine.current()

    def _regroup(self) -> None:
        """Take the groups' params lists as they are now (changed by hand, as torch
        allows)."""
        flat = [p for group in self.param_groups for p in group["params"]]
        counts = [len(group["params"]) for group in self.param_groups]
        if counts != self._counts or any(map(operator.is_not, flat, self._flat)):
            self._attach(flat)

    def state_nbytes(self) -> int:
        """Bytes held by the optimizer state (every state tensor)."""
        return sum(v.nbytes for entry in self.state.values() for v in entry.values()
                   if is_torch(v))

    # (inside a torch.compile'd function the step runs as it is: its kernels are Numba's,
    # not something to trace)
    @torch.compiler.disable
    def step(self, closure: Callable[[], Any] | None = None, *,
             max_norm: float | None = None, skip_if_nonfinite: bool = False) -> Any:
        """One update of every parameter that has a ``.grad``, in place.

        ``closure`` (torch's convention): called first, with gradients enabled, to compute
        the loss and the gradients; ``step`` returns its loss. ``max_norm`` and
        ``skip_if_nonfinite``: fastgd's fused clipping and skipping (see
        :meth:`fastgd.Optimizer.step`); with either, and no closure, the step returns
        ``StepInfo(grad_norm, finite, skipped)``. CUDA tensors are updated on torch's
        current stream.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._regroup()  # (the engine follows parameters whose memory moved)
        grads = [p.grad for p in self._flat]
        info = self._engine.step(self.param_groups, self._indexed, grads, max_norm=max_norm,
                                 skip_if_nonfinite=skip_if_nonfinite, stream=self._stream())
        return loss if closure is not None else info

    def _stream(self) -> Any:
        """torch's current CUDA stream, where the parameters are CUDA tensors on one device
        and it is not the default stream (which the kernels use anyway)."""
        devices = {p.gpu for p in self._engine.params}
        if len(devices) != 1 or None in devices:
            return None
        stream = torch.cuda.current_stream(devices.pop())
        return None if stream.cuda_stream == 0 else stream

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict of this class, of ``torch.optim``'s class of the same name
        (its implementation options ignored), or of :mod:`fastgd`'s; after the load-state-
        dict pre-hooks, it is checked whole (a mismatched one is refused with nothing
        changed), the state is converted to this optimizer's (its state precision, the
        parameters' devices) and the post-hooks run."""
        if isinstance(state_dict, Mapping):
            state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._current()
        updates, by_index = statedicts.check(self._engine, self.param_groups, state_dict,
                                             foreign_options=True)
        state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for index, entry in by_index.items():
            param = self._flat[index]
            state[param] = {k: v if isinstance(v, (int, float)) else as_tensor(v, param.device)
                            for k, v in entry.items()}
        for update, group in zip(updates, self.param_groups, strict=True):
            group.update(update)
        self.state = state
        self._engine.forget()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _attach(self, flat: list[Any]) -> None:
        """Check every parameter of the groups (``flat``: all of them, in order) and step
        them from now on (the engine starts afresh); nothing changes if one is refused."""
        engine, params = self._engine, []
        for group in self.param_groups:
            params += engine.new_params(group["params"], {**self.defaults, **group},
                                        first=len(params), others=params)
        engine.params = params
        engine.forget(state=False)
        self._flat = flat
        self._counts = [len(group["params"]) for group in self.param_groups]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_engine" not in self.__dict__:  # (unpickled or copied: check the params again)
            self._engine = self._stepper()
            self._indexed = _ByIndex(self)
            self._attach([p for group in self.param_groups for p in group["params"]])


class ScheduleFreeOptimizer(optim.ScheduleFree, Optimizer):
    __doc__ = optim.ScheduleFree.__doc__

    def _entries(self) -> Any:
        return self._indexed


__all__ = ["Optimizer", "ScheduleFreeOptimizer", "StepInfo", "as_tensor", *ALGORITHMS]
globals().update({name: optim.make_class(algorithm, Optimizer, ScheduleFreeOptimizer,
                                         __name__)
                  for name, algorithm in ALGORITHMS.items()})
