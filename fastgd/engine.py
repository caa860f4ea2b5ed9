"""The execution layer: every update, from every face, is checked and launched here.

* :func:`run` is one fused pass over one parameter with explicit state arrays (the
  functional API): it checks the arrays and the hyperparameters, computes the step's
  scalars and launches the kernel of the arrays' target (CPU or CUDA).
* :class:`Stepper` steps the parameters of an optimizer (the classes): each parameter is
  checked once, when it is added (:class:`Param`); a step checks each gradient against its
  parameter, computes the scalars once per parameter group and step, creates missing state,
  groups the tensors that share dtype, device, storage format and scalars, and runs each
  group as one launch over a table of array addresses. What does not change between steps
  is kept: the checked options of each group (until one of them changes) and the launch
  tables (until a parameter set or a state array changes); a cheap identity check of every
  parameter (same object, memory, shape, dtype, strides, still writable) guards the reuse.

Every check of a call runs before anything is written: a refused call changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fastgd import cpu
from fastgd.algorithms import Algorithm
from fastgd.arrays import (
    address,
    as_array,
    check_like,
    check_no_overlap,
    check_same_gpu,
    check_stream,
    from_host,
    gpu_of,
    is_device,
    is_torch,
    kernel_view,
    memory_order,
    on_gpu,
    state_dtype,
    storage,
    zeros_like,
)
from fastgd.halfprec import to_float32
from fastgd.hyperparams import Flag, learning_rate, number, step_count
from fastgd.pointers import address as host_address
from fastgd.reductions import clip_scale, global_norm

_FLOAT64 = np.dtype(np.float64)


class StepInfo(NamedTuple):
    """What a step with ``max_norm`` or ``skip_if_nonfinite`` found."""

    grad_norm: float  #: global L2 norm of the gradients, before clipping
    finite: bool  #: no gradient holds NaN or Inf
    skipped: bool  #: the step changed nothing (``skip_if_nonfinite`` and not ``finite``)


class StepScalars(NamedTuple):
    """The scalars of one step of a rule: its coefficients (in float64, cast to the array
    dtype just before the kernel runs) and runtime flags, in the rule's order; the optional
    states in use; and the factor applied to every gradient element as it is read: -1 for
    ``maximize``, times the clipping factor when gradients are clipped by global norm."""

    coefficients: tuple[float, ...]
    flags: tuple[bool, ...]
    present: tuple[str, ...] = ()
    grad_scale: float = 1.0

    def kernel_scalars(self, dtype: Any) -> tuple[Any, ...]:
        """The kernel's scalar arguments: coefficients and ``grad_scale`` in ``dtype``, flags."""
        if dtype == _FLOAT64:  # Python floats are float64 already
            return (*self.coefficients, self.grad_scale, *self.flags)
        to = dtype.type
        return (*map(to, self.coefficients), to(self.grad_scale), *self.flags)


def step_scalars(algorithm: Algorithm, options: Mapping[str, Any],
                 inputs: Mapping[str, Any]) -> tuple[StepScalars, dict[str, float]]:
    """The scalars of a step with checked ``options`` and ``inputs`` (``step``, ...), and
    the new values of the algorithm's per-parameter scalars."""
    out = algorithm.update(*[options[n] for n in algorithm.reads], **inputs)
    spec = algorithm.spec
    scalars = StepScalars(tuple(out[n] for n in spec.coefficients),
                          tuple(out[n] for n in spec.flags), algorithm.present(options),
                          -1.0 if options.get("maximize") else 1.0)
    return scalars, {s.name: out[s.name] for s in algorithm.scalars}


def check_inputs(algorithm: Algorithm, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Checked step inputs of the functional API (``step``, ``first_step``, scalars)."""
    domains = {s.name: s.domain for s in algorithm.scalars}
    checked = {}
    for name in algorithm.inputs:
        value = inputs[name]
        if name == "step":
            checked[name] = step_count(value)
        elif name == "first_step":
            checked[name] = Flag().check(name, value)
        else:
            checked[name] = domains[name].check(name, value)
    return checked


# -- the functional face: one parameter, explicit state -----------------------------------------

def prepare(param: Any, grad: Any, states: Mapping[str, Any]) -> tuple[list[Any], str]:
    """Check ``param``, ``grad`` and the state arrays; return their flat kernel views in
    order, and the storage format of ``param`` and ``grad``.

    Host arrays give NumPy views, GPU arrays Numba device-array views. State arrays have
    :func:`~fastgd.arrays.state_dtype`.
    """
    device = is_device(param)
    inputs = {"param": param, "grad": grad, **states}
    for name, value in inputs.items():  # a host/GPU mix is refused before any conversion
        if is_device(value) != device:
            as_array(value, name, writable=False, device=device)
    arrays = {name: as_array(value, name, writable=name != "grad", device=device)
              for name, value in inputs.items()}
    p = arrays["param"]
    order = memory_order(p, "param")
    for name, arr in arrays.items():
        if name != "param":
            check_like(arr, p, order, name, dtype=None if name == "grad" else state_dtype(p))
    if device and storage(p):
        raise TypeError("float16/bfloat16 parameters are supported on the CPU only")
    check_no_overlap(arrays)
    if device:
        check_same_gpu(arrays)
    return [kernel_view(a, order) for a in arrays.values()], storage(p)


def run(algorithm: Algorithm, param: Any, grad: Any, states: Mapping[str, Any | None],
        options: Mapping[str, Any], inputs: Mapping[str, Any], stream: Any = None
        ) -> dict[str, float]:
    """One step of ``algorithm`` over ``param`` with explicit ``states`` (by name; an
    optional one the options do not use may be None), hyperparameters ``options`` and step
    ``inputs``, in place; returns the new per-parameter scalars."""
    options = algorithm.check(options, t=None)
    inputs = check_inputs(algorithm, inputs)
    present = algorithm.present(options)
    for name in present:
        if states.get(name) is None:
            raise ValueError(f"{name} is required with these hyperparameters (got None)")
    spec = algorithm.spec
    used = {name: states[name] for name in spec.present_states(present)}
    arrays, fmt = prepare(param, grad, used)
    if stream is not None:
        check_stream(stream, arrays)
    scalars, new = step_scalars(algorithm, options, inputs)
    with on_gpu(gpu_of(arrays[0])):
        launch(algorithm, arrays, scalars, stream, fmt)
    return new


def compute_dtype(param: Any, fmt: str) -> np.dtype:
    """dtype a kernel computes in: the param's, float32 for float16/bfloat16 storage."""
    return np.dtype(np.float32) if fmt else np.dtype(param.dtype)


def launch(algorithm: Algorithm, arrays: list[Any], scalars: StepScalars, stream: Any = None,
           fmt: str = "") -> None:
    """Run a step on checked flat kernel views (param, grad, [master], states in rule
    order) of storage format ``fmt``: NumPy arrays on the CPU, device arrays on the GPU
    (queued on ``stream``, which the caller has checked)."""
    kernel_scalars = scalars.kernel_scalars(compute_dtype(arrays[0], fmt))
    if isinstance(arrays[0], np.ndarray):
        cpu.launch(algorithm.spec, scalars.present, arrays, kernel_scalars, fmt)
    else:
        from fastgd import cuda

        cuda.launch(algorithm.spec, scalars.present, arrays, kernel_scalars, stream)


# -- the class face: parameters checked once, state kept per parameter --------------------------

class Param:
    """A parameter as the engine holds it: the object it was given (``original``), a
    zero-copy view (NumPy, or a Numba device array), its memory order, flat kernel view,
    address, GPU (None on the host) and storage format, checked once when it is added."""

    __slots__ = ("original", "view", "order", "flat", "address", "nbytes", "gpu", "storage",
                 "dtype", "shape", "strides", "torch")

    def __init__(self, original: Any, name: str) -> None:
        device = is_device(original)
        view = as_array(original, name, writable=True, device=device)
        self.order = memory_order(view, name)
        self.storage = storage(view)
        if device and self.storage:
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

    def recheck(self, name: str) -> None:
        """Refuse a parameter whose memory, shape, dtype or layout changed since it was
        added (``tensor.data = ...``, ``array.shape = ...``), or that became read-only."""
        o = self.original
        if self.torch is not None:
            ok = (o.data_ptr() == self.address and o.dtype is self.torch[0]
                  and o.shape == self.torch[1] and o.stride() == self.torch[2])
        elif isinstance(o, np.ndarray):
            ok = (o.dtype is self.dtype and o.shape == self.shape and o.strides == self.strides
                  and o.flags.writeable)
        else:
            ok = tuple(o.shape) == self.shape and o.dtype == self.dtype
        if not ok:
            raise ValueError(f"{name} changed (memory, shape, dtype, layout or writability) "
                             "since it was given to the optimizer; make a new optimizer")

    def grad_address(self, grad: Any, name: str) -> tuple[int, Any]:
        """Check ``grad`` against this parameter (same device, shape, dtype, memory order,
        no overlap); return its address and the array that holds it (``grad`` itself, or a
        view of it, which must stay alive until the kernel has run)."""
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
        else:
            fast, where = False, None
        if not fast:
            grad = self.grad_view(grad, name)
            where = address(grad) if grad.size else None
        if where is None:  # empty: nothing to read, nothing to overlap
            return 0, grad
        if where < self.address + self.nbytes and self.address < where + self.nbytes:
            raise ValueError(f"{name} shares memory with {name.replace('grads', 'params')}")
        return where, grad

    def grad_view(self, grad: Any, name: str) -> Any:
        """The flat kernel view of ``grad`` after every check of :meth:`grad_address`."""
        view = as_array(grad, name, writable=False, device=self.gpu is not None)
        check_like(view, self.view, self.order, name, name.replace("grads", "params"))
        if self.gpu is not None and gpu_of(view) != self.gpu:
            raise ValueError(f"{name} is on GPU {gpu_of(view)} but "
                             f"{name.replace('grads', 'params')} is on GPU {self.gpu}")
        return kernel_view(view, self.order)


class _Work(NamedTuple):
    index: int
    options: dict[str, Any]
    grad: Any
    holder: Any  # what holds the gradient's memory (alive until the launch)
    address: int
    scalars: StepScalars
    new: dict[str, float]
    step: int


class Stepper:
    """Steps the parameters of an optimizer; see the module docstring."""

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self.params: list[Param] = []
        self._options: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._tables: dict[tuple[Any, ...], tuple[list[Any], Any]] = {}

    def check_options(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The checked options of a parameter group (``lr`` at step 1 if a schedule)."""
        options = self.algorithm.check(group, t=1)
        options["master_weights"] = Flag().check("master_weights", group["master_weights"])
        return options

    def forget(self) -> None:
        """Drop what is kept between steps (after the state was replaced)."""
        self._options.clear()
        self._tables.clear()

    def _group_options(self, index: int, group: Mapping[str, Any], t: int) -> dict[str, Any]:
        """The checked options of group ``index`` at step ``t``: checked again only when an
        option changed; a schedule is evaluated (and its value checked) at ``t``."""
        raw = tuple(v for k, v in group.items() if k != "params" and k != "param_names")
        cached = self._options.get(index)
        try:
            same = cached is not None and cached[0] == raw
        except (TypeError, ValueError):  # an option NumPy cannot compare as a whole
            same = False
        if not same:
            cached = self._options[index] = (raw, self.check_options(group))
        options = cached[1]
        lr = group["lr"]
        if callable(lr):
            options = {**options, "lr": learning_rate(lr, t)}
        return options

    def step(self, groups: Sequence[Mapping[str, Any]], state: dict[int, dict[str, Any]],
             grads: Sequence[Any], *, max_norm: Any = None, skip_if_nonfinite: bool = False,
             stream: Any = None) -> StepInfo | None:
        """One step of every parameter whose gradient (``grads[i]``, aligned with the
        parameters) is not None, in place; see :meth:`fastgd.Optimizer.step`."""
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
        self._launch(work, state, stream)
        for w in work:
            entry = state[w.index]
            entry["step"] = w.step
            if w.new:
                entry.update(w.new)
        return info

    def _check(self, groups: Sequence[Mapping[str, Any]], state: dict[int, dict[str, Any]],
               grads: Sequence[Any]) -> list[_Work]:
        """Check every gradient and every group's options; the work of the step."""
        algorithm = self.algorithm
        inputs = algorithm.inputs
        simple = inputs == ("step",)
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
                param.recheck(f"params[{i}]")
                where, holder = param.grad_address(grad, f"grads[{i}]")
                entry = state.get(i)
                t = entry["step"] + 1 if entry else 1
                key: Any = t if simple else (t, *self._inputs(g, group, t, entry))
                hit = found.get(key)
                if hit is None:
                    options = self._group_options(g, group, t)
                    values = {"step": t} if simple else dict(zip(inputs, key[1:],
                                                                 strict=True))
                    hit = found[key] = (options, *step_scalars(algorithm, options, values))
                work.append(_Work(i, hit[0], grad, holder, where, hit[1], hit[2], t))
            start += len(originals)
        return work

    def _inputs(self, g: int, group: Mapping[str, Any], t: int,
                entry: Mapping[str, Any] | None) -> tuple[Any, ...]:
        """The values of ``update``'s step inputs for one parameter, as a tuple."""
        algorithm = self.algorithm
        options = None
        values = []
        for name in algorithm.inputs:
            if name == "step":
                values.append(t)
            elif name == "first_step":
                options = options or self._group_options(g, group, t)
                needed = algorithm.spec.present_states(algorithm.present(options))
                values.append(not entry or not any(n in entry for n in needed))
            elif entry and name in entry:
                values.append(entry[name])
            else:
                options = options or self._group_options(g, group, t)
                values.append(algorithm.initial_scalars(options)[name])
        return tuple(values)

    def _reduce(self, work: list[_Work], max_norm: Any, skip_if_nonfinite: bool) -> StepInfo:
        if max_norm is not None:
            number("max_norm", max_norm)
        params = self.params
        if any(params[w.index].gpu is not None for w in work):
            raise TypeError("max_norm and skip_if_nonfinite support host (NumPy) arrays only")
        grads = [to_float32(params[w.index].grad_view(w.grad, f"grads[{w.index}]"),
                            params[w.index].storage) for w in work]
        norm = global_norm(grads)
        finite = math.isfinite(norm)
        return StepInfo(norm, finite, skip_if_nonfinite and not finite)

    def _launch(self, work: list[_Work], state: dict[int, dict[str, Any]], stream: Any) -> None:
        """Create missing state, then run the tensors that share dtype, device, storage
        format and scalars as one launch each."""
        spec = self.algorithm.spec
        batches: dict[tuple[Any, ...], list[_Work]] = {}
        for w in work:
            param = self.params[w.index]
            entry = state.setdefault(w.index, {})
            fmt = param.storage
            if fmt and w.options["master_weights"]:
                fmt += "_master"
                if "master_param" not in entry:
                    entry["master_param"] = from_host(param.view, param.view, np.float32)
            for name in spec.present_states(w.scalars.present):
                if name not in entry:
                    entry[name] = self._new_state(param, name, w.options)
            batches.setdefault((param.dtype, param.gpu, w.scalars, fmt), []).append(w)
        for (_, gpu, scalars, fmt), items in batches.items():
            addresses, sizes, like, table = self._table(items, state, fmt, scalars.present)
            addresses[:, 1] = [w.address for w in items]
            kernel_scalars = scalars.kernel_scalars(compute_dtype(like, fmt))
            if gpu is None:
                cpu.launch_table(spec, scalars.present, table, kernel_scalars, fmt)
            else:
                from fastgd import cuda

                with on_gpu(gpu):
                    cuda.launch_table(spec, scalars.present, addresses, sizes, like,
                                      kernel_scalars, stream)

    def _new_state(self, param: Param, name: str, options: Mapping[str, Any]) -> Any:
        fill = next(s.fill for s in self.algorithm.states if s.name == name)
        return zeros_like(param.view, fill=options[fill] if fill else 0.0,
                          dtype=state_dtype(param.view))

    def _table(self, items: list[_Work], state: dict[int, dict[str, Any]], fmt: str,
               present: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """The launch table of these tensors: made once, kept while their state arrays
        stay the same objects (the gradient column is rewritten on every step)."""
        names = (("master_param",) if fmt.endswith("_master") else ()) + \
            self.algorithm.spec.present_states(present)
        key = (tuple(w.index for w in items), fmt, present)
        arrays = [state[w.index][n] for w in items for n in names]
        cached = self._tables.get(key)
        if cached is None or len(cached[0]) != len(arrays) or not all(
                a is b for a, b in zip(cached[0], arrays, strict=True)):
            params = [self.params[w.index] for w in items]
            rows = [[p.address, 0, *(address(state[w.index][n]) for n in names)]
                    for p, w in zip(params, items, strict=True)]
            addresses = np.array(rows, dtype=np.int64).reshape(len(items), 2 + len(names))
            sizes = np.array([p.view.size for p in params], dtype=np.int64)
            like = params[0].flat
            table = (cpu.Table(addresses, sizes, *cpu.likes(fmt, params[0].dtype))
                     if params[0].gpu is None else None)
            cached = self._tables[key] = (arrays, (addresses, sizes, like, table))
        return cached[1]

