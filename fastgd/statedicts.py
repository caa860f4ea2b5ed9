"""State dicts, checked against an optimizer before anything is changed: one place for the
faces that load them (:mod:`fastgd.optim`, :mod:`fastgd.torch`).

A state dict has torch.optim's layout, ``{'state': {index: {...}}, 'param_groups': [...]}``:
fastgd's own, or a ``torch.optim`` one of the same algorithm (tensors, tensor steps; torch's
implementation options ``foreach``, ``fused``, ``capturable`` and ``differentiable`` are
ignored). :func:`check` returns what to apply: the options of each group and the state of
each parameter (by index), its arrays converted to the optimizer's state precision and to
the parameter's device.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from fastgd import lowbit
from fastgd.algorithms import ALGORITHMS, Algorithm, factor_shapes
from fastgd.arrays import (
    check_state_precision,
    convert_state,
    is_device,
    is_torch,
    on_device_of,
    state_dtype,
    to_host,
)
from fastgd.engine import Stepper

#: Options of torch.optim's state dicts that choose an implementation, not the math.
TORCH_IMPLEMENTATION_OPTIONS = frozenset({"foreach", "fused", "capturable", "differentiable"})
#: Switches torch.optim added to its optimizers over the years: a dict of an older torch
#: lacks them, and means their defaults.
LATER_SWITCHES = frozenset({"maximize", "decoupled_weight_decay"})
#: Every hyperparameter name of every algorithm.
HYPERPARAMETERS = frozenset(h.name for a in ALGORITHMS.values() for h in a.hyperparameters)


def check(engine: Stepper, groups: Sequence[Mapping[str, Any]], state_dict: Any, *,
          foreign_options: bool = False) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Check ``state_dict`` against the optimizer of ``engine`` and parameter ``groups``;
    return the options to update each group with and the new state by parameter index. A
    mismatched state dict raises (``foreign_options``: see :func:`checked_group`)."""
    if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
        raise ValueError("state_dict must have exactly the keys 'state' and 'param_groups'")
    saved_groups = list(state_dict["param_groups"])
    if len(saved_groups) != len(groups):
        raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, this "
                         f"optimizer has {len(groups)}")
    entries = state_dict["state"]
    # (torch's: its groups have implementation options, or its state holds tensors --
    # torch's Muon has neither option)
    from_torch = any(isinstance(g, Mapping) and TORCH_IMPLEMENTATION_OPTIONS & set(g)
                     for g in saved_groups) or (isinstance(entries, Mapping) and any(
                         isinstance(e, Mapping) and any(map(is_torch, e.values()))
                         for e in entries.values()))
    updates, options, positions = [], [], {}
    for i, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        updates.append(checked_group(engine.algorithm, i, saved, group, foreign_options))
        options += [engine.check_options({**group, **updates[-1]})] * len(
            group["params"])
        for key in list(saved["params"]):  # (the saved ids name the parameters in order)
            if isinstance(key, bool) or not isinstance(key, Hashable) or key in positions:
                raise ValueError(f"param_groups[{i}]['params'] holds {key!r}, not the id of "
                                 "another parameter")
            positions[key] = len(positions)
    if not isinstance(entries, Mapping):
        raise TypeError("state_dict['state'] must be a dict")
    new_state = {}
    for key, entry in entries.items():
        index = state_index(key, positions)
        if isinstance(entry, Mapping) and all(v is None for v in entry.values()):
            continue  # (looked up, never stepped: {}, or torch 1.x SGD's momentum_buffer=None)
        new_state[index] = checked_state(engine, index, entry, from_torch, options[index])
    return updates, new_state


def from_torch_value(value: Any, array: bool) -> Any:
    """A torch tensor of a state dict as a NumPy array (float32 for float16/bfloat16, which
    widens them exactly), or as a Python number (a tensor ``step`` or scalar state)."""
    value = value.detach().cpu()
    if not array:
        return value.item() if value.numel() == 1 else value.numpy()
    if value.dtype.is_floating_point and value.element_size() < 4:
        value = value.float()
    return value.numpy()


def state_index(key: Any, positions: Mapping[Any, int]) -> int:
    """The parameter index of state key ``key``: the position of the parameter whose id it
    is in the saved groups (``positions``), as torch maps them; an integer id may be
    spelled as its digits (a dict that went through JSON)."""
    if isinstance(key, str) and key.isdigit() and key not in positions:
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, Hashable) or key not in positions:
        raise ValueError(f"state key {key!r} is not the id of a parameter of the saved "
                         "param_groups")
    return positions[key]


def checked_group(algorithm: Algorithm, i: int, saved: Any, group: Mapping[str, Any],
                  foreign_options: bool = False) -> dict[str, Any]:
    """The options of saved group ``i`` to apply to ``group``, checked. Every
    hyperparameter must be there, but for the :data:`LATER_SWITCHES` a dict of an older
    torch lacks: they take their defaults, as torch fills them in (fastgd's dicts, which
    hold its class options, have every option). ``foreign_options``: options the optimizer
    does not know (not hyperparameters of another algorithm), such as a torch scheduler's
    ``initial_lr``, are kept, as torch keeps them; otherwise they are refused."""
    if not isinstance(saved, Mapping):
        raise TypeError(f"param_groups[{i}] must be a dict")
    keys = set(saved) - TORCH_IMPLEMENTATION_OPTIONS - {"params", "param_names"}
    missing = set(algorithm.defaults) - keys
    # (foreign options: not another algorithm's hyperparameters)
    allowed = keys - (HYPERPARAMETERS - set(algorithm.defaults)) if foreign_options else (
        set(group) - {"params", "param_names"})
    # (fastgd's own dicts, which hold its class options, have every option)
    if "params" not in saved or not keys <= allowed or not missing <= (
            set() if "state_precision" in saved else LATER_SWITCHES):
        raise ValueError(f"param_groups[{i}] has options {sorted(saved)}, expected "
                         f"{sorted(allowed | {'params'})} (a state dict of another "
                         "optimizer?)")
    count = len(group["params"])
    ids = saved.get("params")
    if not isinstance(ids, (Sequence, np.ndarray)) or isinstance(ids, (str, bytes)) or (
            len(ids) != count):
        raise ValueError(f"param_groups[{i}] holds {saved['params']!r}, the ids of "
                         f"{count} parameters expected")
    for name, value in algorithm.fixed.items():
        if saved.get(name, value) != value:
            raise ValueError(f"param_groups[{i}]: {name} is always {value} for "
                             f"{algorithm.name}, got {saved[name]!r}")
    if "state_precision" in saved:  # (what the saved state was: it is converted to
        check_state_precision(saved["state_precision"])  # this optimizer's precision)
    # (how the state is stored stays this optimizer's choice: state_precision and, with
    # it, stochastic_rounding; the rounding seed comes with the run)
    update = {**{k: algorithm.defaults[k] for k in missing},
              **{k: saved[k] for k in keys - {"state_precision", "stochastic_rounding"}}}
    if "param_names" in saved:
        names = saved["param_names"]
        if (not isinstance(names, Sequence) or len(names) != count
                or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"param_groups[{i}]['param_names'] must be {count} names")
        update["param_names"] = list(names)
    return copy.deepcopy(update)



def checked_state(engine: Stepper, index: int, entry: Any, from_torch: bool,
                  options: Mapping[str, Any]) -> dict[str, Any]:
    """A state entry checked against parameter ``index`` and its group's (checked)
    ``options``: after a first step it holds every state array the options use (unless
    the algorithm starts its state on a first step: SGD's momentum buffer)."""
    name = f"state[{index}]"
    if not isinstance(entry, Mapping):
        raise TypeError(f"{name} must be a dict")
    algorithm = engine.algorithm
    scalars = {s.name: s for s in algorithm.scalars}
    states = {s.name for s in algorithm.states}
    arrays = {*states, *(n + lowbit.ABSMAX for n in states), "master_param"}
    entry = {k: from_torch_value(v, k in arrays) if is_torch(v) else v for k, v in entry.items()}
    unknown = set(entry) - arrays - set(scalars) - {"step"}
    if unknown:
        raise ValueError(f"{name} has unknown entries {sorted(unknown)} (a state dict of "
                         "another optimizer?)")
    if "step" not in entry and not (from_torch and "step" not in algorithm.inputs):
        raise ValueError(f"{name} has no 'step'")
    step = entry.get("step", 0)  # (torch's SGD does not count steps)
    if isinstance(step, np.ndarray) and step.ndim == 0:
        step = step.item()
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"{name}['step'] must be a non-negative integer, got {step!r}")
    result: dict[str, Any] = {"step": int(step)}
    for key, scalar in scalars.items():
        if key not in entry:
            raise ValueError(f"{name} has no {key!r}")
        result[key] = scalar.domain.check(f"{name}[{key!r}]", entry[key])
    view = engine.params[index].view
    precision = lowbit.effective(options["state_precision"], view.size,
                                 options["min_8bit_size"])
    loaded = {k: to_host(v) if is_device(v) else np.asarray(v)
              for k, v in entry.items() if k in arrays}
    if "master_param" in loaded:
        arr = loaded["master_param"]
        if arr.shape != view.shape or arr.dtype != np.float32:
            raise ValueError(f"{name}['master_param'] is {arr.dtype} {arr.shape}, "
                             f"expected float32 {view.shape} for params[{index}]")
        result["master_param"] = convert_state(arr, view, np.dtype(np.float32))
    kept = set(algorithm.arrays(algorithm.present(options), view.ndim))
    foreign = sorted(states & set(loaded) - kept) if algorithm.factored else []
    if foreign:
        raise ValueError(f"{name}[{foreign[0]!r}]: a parameter of {view.ndim} dimensions "
                         f"keeps {sorted(kept)}")
    for key in sorted(set(algorithm.factored) & set(loaded)):
        arr, shape = loaded[key], factor_shapes(view.shape)[key]
        if arr.shape != shape or arr.dtype != state_dtype(view):
            raise ValueError(f"{name}[{key!r}] is {arr.dtype} {arr.shape}, expected "
                             f"{state_dtype(view)} {shape} for params[{index}]")
        result[key] = on_device_of(arr, view)
    for key in sorted(states & set(loaded) - set(algorithm.factored)):
        quantized = algorithm.spec.quantized(key)
        current = lowbit.form_of(loaded, key, view)
        if current is None or (current == "8bit" and not quantized):
            raise ValueError(
                f"{name}[{key!r}] is {loaded[key].dtype} {loaded[key].shape}, expected "
                f"the state of params[{index}] ({state_dtype(view)}, bfloat16"
                + (" or 8-bit codes with their absmax" if quantized else "")
                + f", shape {view.shape})")
        # (any form converts to this optimizer's precision)
        result.update(lowbit.make(view, key, lowbit.values(loaded, key, quantized),
                                  algorithm.spec.form(key, precision), quantized)
                      if current != "8bit" or precision != "8bit" else
                      {key: convert_state(loaded[key], view, np.dtype(np.uint8)),
                       key + lowbit.ABSMAX: on_device_of(loaded[key + lowbit.ABSMAX],
                                                         view)})
    stray = [k for k in loaded if k.endswith(lowbit.ABSMAX)
             and k.removesuffix(lowbit.ABSMAX) not in loaded]
    if stray:
        raise ValueError(f"{name} has {stray} without their codes")
    required = () if "first_step" in algorithm.inputs else algorithm.arrays(
        algorithm.present(options), view.ndim)
    missing = [k for k in required if k not in result]
    if missing and result["step"] > 0:
        raise ValueError(f"{name} lacks {missing}")
    return result
