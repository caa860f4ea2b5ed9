"""The optimizers over Dask arrays: ``fastgd.dask.<Algorithm>``, each chunk stepped where it
lives.

``import fastgd.dask`` gives a class of the same name, hyperparameters, defaults and formulas
as ``fastgd.<Name>`` for every algorithm. ``params`` is a Dask array, a list of them (any
shapes and chunkings), ``(name, array)`` pairs or parameter groups; ``opt.step(grads)`` takes
the gradients as Dask (or NumPy) arrays of the parameters' shapes and dtypes, returns the new
parameter arrays and keeps them at ``opt.params`` (and in ``param_groups``). A gradient
chunked otherwise than its parameter is rechunked to the parameter's chunks first (a
shuffle of that gradient between the workers: pass gradients chunked like the parameters).

**Pure tasks.** Dask arrays are immutable and a task never writes its inputs (a chunk may be
held under another key, and a lost one is recomputed from its inputs). So each chunk's task
runs the fused kernel *out of place* (:data:`fastgd.kernelgen.OUT`): it reads the
parameter's and the state's chunks and writes their new values into fresh chunks -- the
bytes an in-place step moves. The new parameters and state are persisted together, on the
workers, at the end of each step; nothing is gathered to the client. The per-step scalars
(schedules, bias corrections, per-parameter scalars such as NAdam's ``mu_product``) are
computed on the client by the engine, as for the NumPy face, so every chunk's update is the
NumPy face's to the bit.

Four algorithms need a whole tensor per step -- LAMB's and LARS's trust ratios (norms of the
tensor), Muon's orthogonalisation (a function of the matrix) and Adafactor's factored second
moments (row and column means): their task gathers each tensor to one worker, steps a copy
with the NumPy face's kernels and splits it into the parameter's chunks again.

``max_norm`` and ``skip_if_nonfinite`` reduce the gradients' global norm first (one float64
partial sum per chunk, added on the client: the NumPy face's norm to rounding, so clipped
steps agree to about 1e-15 relative) and then run the fused scaled update; a skipped step
changes nothing.

**Lineage.** Each step's chunks are computed from the last step's, so a lost chunk is
recomputed from its history -- which the scheduler keeps, and which grows with every step.
Every ``lineage`` steps (default 100) the optimizer writes its parameters and state chunk by
chunk into ``store`` (one ``.npy`` file per chunk, written by the worker holding it) and
reads them back as arrays without history: a lost chunk is then recomputed from those files
and at most ``lineage`` steps, and the scheduler's task table stays bounded over any number
of steps. ``store`` must be a directory that every worker can read and write (a shared
filesystem); by default the temporary directory of this machine, which serves a local
cluster. Each optimizer writes into a directory of its own there, removed with the
optimizer. ``lineage=None`` never cuts the history. (A cut that fails -- a full disk -- is
a warning: the step it follows is done.)

Options changed in ``param_groups`` between steps take effect as in the NumPy face (state
converted to a new ``state_precision``, a master copy made or dropped with
``master_weights``). The steps are asynchronous: ``step`` returns once the step's tasks are
submitted, so an error inside a task (a gradient whose own computation fails) surfaces when
the new arrays are used, and the optimizer then holds arrays that fail too (keep
checkpoints). Against the NumPy face, "bit for bit" means on C-ordered arrays: the
whole-tensor steps sum their norms in memory order.

**Threads.** Numba's parallel kernels inside a multi-threaded worker would multiply threads.
A chunk's kernel uses ``nthreads // running`` threads of its worker (``running``: the tasks
the worker is running), so the worker's threads are used once: with as many chunks per
worker as threads each chunk runs on its own thread, serially, with no thread pool; a lone
chunk takes every thread. Outside a distributed worker (Dask's local schedulers, which run
chunks on a thread pool) chunks run serially.

State dicts and checkpoints hold NumPy arrays (the state is gathered to the client), in the
NumPy face's format: ``state_dict()``, ``load_state_dict()``, ``fastgd.save``,
``fastgd.load`` move runs between the faces both ways. (Checkpoints of states larger than
the client's memory are left to ``store``'s chunk files.)
Not supported: 8-bit state and stochastic rounding (their blocks and rounding streams follow
a tensor's flat element order, which a chunk of more than one dimension does not hold).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from fastgd import cpu, engine, lowbit, optim
from fastgd.algorithms import ALGORITHMS, SCHEDULE_FREE_MODE, SPECS, factor_shapes
from fastgd.arrays import (
    FLOAT_DTYPES,
    LOW_PRECISION,
    bfloat16,
    check_state_precision,
    from_host,
    is_dask,
    kernel_view,
    stand_in,
    state_dtype,
    storage,
)
from fastgd.engine import StepInfo, Stepper, StepScalars
from fastgd.hyperparams import integer, number
from fastgd.kernelgen import OUT, array_args, join_storage, split_storage
from fastgd.reductions import clip_scale, sum_of_squares

#: The Dask face's own options (keyword-only, after the class options).
FACE_OPTIONS = {"lineage": 100, "store": None}


class _Chunked:
    """A Dask parameter as the engine's checks see it: ``view``, a read-only NumPy stand-in
    of its shape and dtype (no memory), and its storage format."""

    __slots__ = ("original", "view", "storage", "shape", "dtype", "torch", "gpu")

    def __init__(self, array: Any, name: str) -> None:
        if not is_dask(array):
            raise TypeError(f"{name} must be a Dask array, got {type(array).__name__}")
        dtype = np.dtype(array.dtype)
        if dtype not in FLOAT_DTYPES and dtype.name not in LOW_PRECISION:
            raise TypeError(f"{name} must have dtype float32, float64, float16 or bfloat16, "
                            f"got {dtype}")
        self.view = stand_in(array.shape, dtype)
        self.original, self.storage = array, storage(self.view)
        self.shape, self.dtype, self.torch, self.gpu = tuple(array.shape), dtype, None, None


class _Stepper(Stepper):
    """The engine's host side (options, schedules, step inputs, storage formats, state-dict
    checks) over Dask parameters."""

    def new_params(self, originals: Sequence[Any], group: Mapping[str, Any],
                   first: int | None = None, others: list[Any] | None = None) -> list[Any]:
        first = len(self.params) if first is None else first
        params = [_Chunked(p, f"params[{first + i}]") for i, p in enumerate(originals)]
        for i, p in enumerate(params, first):
            check_state_precision(group["state_precision"], p.view, f"params[{i}]")
            if self.algorithm.matrices:
                engine.check_matrix(self.algorithm, p.shape, f"params[{i}]")
        return params  # (Dask arrays are immutable: equal ones, even the same, may both step)


class _Plan(NamedTuple):
    """What every task of one parameter's step needs (sent to the workers)."""

    spec: str  #: the rule (:data:`~fastgd.algorithms.SPECS`)
    fmt: str  #: the kernel storage format (in place)
    scalars: StepScalars
    whole: str | None = None  #: the algorithm, for a step over the whole tensor
    names: tuple[str, ...] = ()  #: the kernel names of the state arrays, in task order


# -- the tasks ----------------------------------------------------------------------------------

def _threads() -> int:
    """Threads for the calling task's kernel: its worker's threads over its running tasks
    (1 outside a distributed worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    running = max(1, len(worker.state.executing))
    return max(1, worker.state.nthreads // running)


#: Per process: the memory of the chunks the tasks wrote, by size in bytes, for reuse once
#: nothing holds their chunk any more (see :func:`_fresh`).
_BUFFERS: dict[int, list[np.ndarray]] = {}
_BUFFERS_LOCK = threading.Lock()  # (a worker's threads run tasks at once)
#: the number of :func:`_fresh` calls so far, and of the last that asked for each size
_CALLS = {"count": 0}
_LAST_ASKED: dict[int, int] = {}
#: a size not asked for in this many calls gives its free buffers back
_IDLE_CALLS = 256


def _fresh(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new array for a task's output, in the memory of an earlier output that nothing
    references any more (a chunk the worker has released), else newly allocated.

    A step writes every parameter and state chunk anew; memory allocated anew for them
    (large blocks are mapped afresh by ``malloc``) is faulted in page by page as the kernel
    first writes it, which costs about as much as the write. A buffer is free when only this
    pool refers to it: each array made from it holds a reference to it (NumPy's ``base``),
    so its reference count tells. Free buffers beyond one per size are let go, and all the
    free buffers of a size not asked for in :data:`_IDLE_CALLS` calls."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with _BUFFERS_LOCK:  # (the array made before another thread looks: it is then taken)
        _CALLS["count"] += 1
        _LAST_ASKED[nbytes] = _CALLS["count"]
        for size, last in list(_LAST_ASKED.items()):
            if _CALLS["count"] - last > _IDLE_CALLS:
                kept = [b for b in _BUFFERS[size] if sys.getrefcount(b) > 3]  # (in use)
                _BUFFERS[size] = kept
                if not kept:
                    del _BUFFERS[size], _LAST_ASKED[size]
        pool = _BUFFERS.setdefault(nbytes, [])
        free = [k for k in range(len(pool)) if sys.getrefcount(pool[k]) <= 2]  # (pool, call)
        for k in reversed(free[1:]):
            del pool[k]
        if free:
            buffer = pool[free[0]]
        else:
            buffer = np.empty(nbytes, np.uint8)
            pool.append(buffer)
        return buffer.view(dtype).reshape(shape)


def _contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else a.copy(order="C")


def _update_chunks(param: np.ndarray, grad: np.ndarray, *states: np.ndarray,
                   plan: _Plan) -> tuple[np.ndarray, ...]:
    """One chunk's step, out of place: the new parameter and states, in fresh arrays."""
    read = [_contiguous(a) for a in (param, grad, *states)]
    written = [_fresh(a.shape, a.dtype) for a in (param, *states)]
    with cpu.threads(_threads()):
        engine.launch(SPECS[plan.spec], [kernel_view(a, "C") for a in read + written],
                      plan.scalars, None, join_storage(plan.fmt, OUT))
    return tuple(written)


def _update_whole(plan: _Plan, param: np.ndarray, grad: np.ndarray,
                  *states: np.ndarray) -> tuple[np.ndarray, ...]:
    """A whole tensor's step (two passes, factored state): a copy stepped in place."""
    algorithm = ALGORITHMS[plan.whole]
    new = [np.array(a, order="C") for a in (param, *states)]
    views = {"param": kernel_view(new[0], "C"), "grad": kernel_view(_contiguous(grad), "C")}
    for name, array in zip(plan.names, new[1:], strict=True):
        views[name] = array if name in algorithm.factored else kernel_view(array, "C")
    layout = (tuple(param.shape), "C")
    with cpu.threads(_threads()):
        if algorithm.factored and param.ndim >= 2:
            engine.run_factored(algorithm, views, plan.scalars, None, plan.fmt, layout)
        else:
            engine.run_two_phase(algorithm, views, plan.scalars, None, plan.fmt, (), layout)
    return tuple(new)


def _block_sum_of_squares(block: np.ndarray) -> np.ndarray:
    """A gradient chunk's ``||g||^2`` in float64 (float16/bfloat16 widened first), as a
    1-element array (a reduction's chunk)."""
    flat = _contiguous(block).reshape(-1)
    if flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    with cpu.threads(_threads()):
        total = sum_of_squares([flat])
    return np.array([total]).reshape((1,) * block.ndim)


def _new_state(param: np.ndarray, name: str, value: float | None, target: str,
               master: bool) -> np.ndarray:
    """A new state chunk of ``param``'s chunk, as the NumPy face makes it."""
    if master:
        return from_host(param, param, np.float32)
    return lowbit.make(param, name, param if value is None else value, target, "")[name]


def _save_block(block: np.ndarray, path: str, block_info: Any = None) -> np.ndarray:
    """Write a chunk to ``path/<its position>.npy`` (bfloat16 as its bits); returns a
    1-element marker."""
    where = ".".join(map(str, block_info[0]["chunk-location"]))
    data = block.view(np.uint16) if storage(block) == "bf16" else block
    target = os.path.join(path, f"{where}.npy")
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        np.save(handle, _contiguous(data), allow_pickle=False)
    os.replace(tmp, target)
    return np.zeros((1,) * block.ndim, np.int8)


def _load_block(path: str, dtype: str) -> np.ndarray:
    data = np.load(path, allow_pickle=False)
    return data.view(bfloat16()) if dtype == "bfloat16" else data


# -- the optimizers -----------------------------------------------------------------------------

class Optimizer(optim.Optimizer):
    """Base class of the Dask optimizers: the NumPy face's parameter groups, options, state
    dicts and checkpoints over Dask arrays (see the module docstring); ``state`` holds each
    parameter's step count, scalars and state arrays (Dask arrays, persisted)."""

    engine_class = _Stepper

    def __init__(self, params: Any, defaults: Mapping[str, Any], *, lineage: Any = 100,
                 store: Any = None) -> None:
        self.lineage = None if lineage is None else integer("lineage", lineage, low=1)
        if store is not None and not isinstance(store, (str, os.PathLike)):
            raise TypeError(f"store must be a directory path, got {type(store).__name__}")
        self._store = None if store is None else Path(store).absolute()
        if self._store is not None and self.lineage is not None:
            try:
                self._store.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"store {str(self._store)!r} is not a usable directory: "
                                 f"{exc}") from None
            if not os.access(self._store, os.W_OK | os.X_OK):
                raise ValueError(f"store {str(self._store)!r} is not writable")
        self._run: Path | None = None  # (this optimizer's own directory in the store)
        self._cuts = self._since_cut = 0
        self.info: StepInfo | None = None
        super().__init__(params, defaults)

    @staticmethod
    def _check_face_options(group: Mapping[str, Any]) -> None:
        if group["state_precision"] == "8bit":
            raise ValueError("fastgd.dask keeps full or bfloat16 state (state_precision="
                             "'8bit' quantizes blocks of a tensor's flat elements, which "
                             "the chunks of a Dask array do not hold)")
        if group["stochastic_rounding"]:
            raise ValueError("fastgd.dask rounds bfloat16 state to nearest "
                             "(stochastic_rounding=True follows a tensor's flat elements)")

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        if isinstance(param_group, Mapping):
            self._check_face_options({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @property
    def params(self) -> list[Any]:
        """The parameters (Dask arrays), in order: those the last step returned."""
        return [p for group in self.param_groups for p in group["params"]]

    def parameters(self) -> list[Any]:
        return self.params

    # -- stepping -------------------------------------------------------------------------------
    def step(self, grads: Any = None, *, max_norm: float | None = None,
             skip_if_nonfinite: bool = False, stream: Any = None) -> list[Any]:
        """One step of every parameter that has a gradient; returns the new parameters (all
        of them, in order; also ``opt.params``). ``grads``: Dask or NumPy arrays in the
        structure of ``params`` (None skips a parameter). ``max_norm`` and
        ``skip_if_nonfinite`` as in :meth:`fastgd.Optimizer.step` (the step's
        :class:`~fastgd.StepInfo` is then at :attr:`info`). Everything is checked before
        anything changes."""
        if callable(grads) and not is_dask(grads):
            raise TypeError("fastgd.dask optimizers take the gradients: step(grads)")
        if stream is not None:
            raise TypeError("stream applies to GPU arrays; fastgd.dask steps host chunks")
        grads = [None if g is None else self._grad(i, g)
                 for i, g in enumerate(self._grad_list(grads))]
        for group in self.param_groups:  # (options may have been changed since)
            self._check_face_options(group)
        work = self._work(grads)
        self.info = None
        scale = 1.0
        if max_norm is not None or skip_if_nonfinite:
            if max_norm is not None:
                number("max_norm", max_norm)
            sums = dask.compute(*[g.map_blocks(_block_sum_of_squares, dtype=np.float64,
                                               chunks=(1,) * g.ndim).sum()
                                  for g in grads if g is not None])
            norm = math.sqrt(float(sum(sums)))
            finite = math.isfinite(norm)
            self.info = StepInfo(norm, finite, skip_if_nonfinite and not finite)
            if self.info.skipped:
                return self.params
            if max_norm is not None:
                scale = clip_scale(norm, float(max_norm))
        updates = [self._update(w, grads[w[0]], scale) for w in work]
        flat = [a for new, _ in updates for a in new.values()]
        persisted = iter(dask.persist(*flat))
        for (new, entry), (i, *_) in zip(updates, work, strict=True):
            values = {name: next(persisted) for name in new}
            self._set_param(i, values.pop("param"))
            self.state[i] = {**entry, **values}
        self._since_cut += bool(work)
        if self.lineage is not None and self._since_cut >= self.lineage:
            try:
                self._cut_lineage()
            except OSError as exc:  # (the step is done: a retry must not take it again)
                warnings.warn(f"fastgd.dask: the lineage cut after this step failed ({exc});"
                              " the history keeps growing until a cut succeeds",
                              RuntimeWarning, stacklevel=2)
        return self.params

    def _grad(self, index: int, grad: Any) -> Any:
        """Gradient ``index`` checked against its parameter, chunked like it."""
        param = self._engine.params[index]
        name = f"grads[{index}]"
        if isinstance(grad, (np.ndarray, np.generic)):
            grad = da.from_array(np.asarray(grad), chunks=param.original.chunks)
        elif not is_dask(grad):
            raise TypeError(f"{name} must be a Dask or NumPy array, got "
                            f"{type(grad).__name__}")
        if tuple(grad.shape) != param.shape:
            raise ValueError(f"{name} has shape {tuple(grad.shape)}, expected {param.shape} "
                             f"like params[{index}]")
        if np.dtype(grad.dtype) != param.dtype:
            raise TypeError(f"{name} has dtype {grad.dtype}, expected {param.dtype} like "
                            f"params[{index}]")
        return grad if grad.chunks == param.original.chunks else grad.rechunk(
            param.original.chunks)

    def _work(self, grads: list[Any]) -> list[tuple[Any, ...]]:
        """Each parameter with a gradient: ``(index, group index, options, scalars, new
        per-parameter scalars, step)``, every option checked."""
        stepper, algorithm, work, start = self._engine, self.algorithm, [], 0
        for g, group in enumerate(self.param_groups):
            for i in range(start, start + len(group["params"])):
                if grads[i] is None:
                    continue
                entry = self.state.get(i)
                t = entry["step"] + 1 if entry else 1
                options, present = stepper._group_options(g, group, t)
                inputs = dict(zip(algorithm.inputs, stepper._inputs(g, group, t, entry),
                                  strict=True))
                scalars, new = engine.step_scalars(algorithm, options, inputs, present)
                work.append((i, g, options, scalars, new, t))
            start += len(group["params"])
        return work

    def _update(self, work: tuple[Any, ...], grad: Any, scale: float
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The new arrays of one parameter's step (by state name, ``param`` first; not yet
        computed) and its new state entry without them (numbers, the arrays it keeps)."""
        i, _, options, scalars, new, t = work
        algorithm, param = self.algorithm, self._engine.params[i]
        array = self.params[i]
        fmt = self._engine.storage_format(param, options)
        entry = dict(self.state.get(i, {}))
        master = split_storage(fmt)[1]
        if master and "master_param" not in entry:
            entry["master_param"] = array.map_blocks(
                _new_state, "master_param", None, "full", True, dtype=np.float32)
        elif not master:
            entry.pop("master_param", None)  # (stale once the parameter steps alone)
        precision = self._engine.precision(param, options)
        for name in algorithm.arrays(scalars.present, len(param.shape)):
            if name in entry:
                if name not in algorithm.factored:  # (the group's precision changed)
                    target = algorithm.spec.form(name, precision)
                    dtype = state_dtype(param.view, target)
                    if entry[name].dtype != dtype:
                        entry[name] = entry[name].map_blocks(_new_state, name, None, target,
                                                             False, dtype=dtype)
                continue
            if name in algorithm.factored:
                entry[name] = da.zeros(factor_shapes(param.shape)[name],
                                       dtype=state_dtype(param.view))
                continue
            target = algorithm.spec.form(name, precision)
            value = algorithm.initial_value(name, options)
            source = entry.get("master_param", array) if value is None else array
            entry[name] = source.map_blocks(_new_state, name, value, target, False,
                                            dtype=state_dtype(param.view, target))
        scalars = scalars._replace(grad_scale=scalars.grad_scale * scale)
        names = array_args(algorithm.spec, scalars.present, fmt)[2:] if (
            algorithm.two_phase is None) else ["master"] * master + list(
            algorithm.arrays(scalars.present, len(param.shape)))
        keys = ["master_param" if n == "master" else n for n in names]
        states = [entry[k] for k in keys]
        if algorithm.two_phase is not None:
            plan = _Plan(algorithm.spec.name, fmt, scalars, algorithm.name, tuple(names))
            outputs = self._whole(plan, array, grad, states)
        else:
            outputs = self._chunks(_Plan(algorithm.spec.name, fmt, scalars), array, grad,
                                   states)
        entry.update({"step": t, **new})
        return dict(zip(["param", *keys], outputs, strict=True)), entry

    @staticmethod
    def _chunks(plan: _Plan, param: Any, grad: Any, states: Sequence[Any]) -> list[Any]:
        """The new parameter and state arrays of an element-wise step: one task per chunk
        (writing fresh chunks), one array per output."""
        index = tuple(range(param.ndim))
        inputs = [param, grad, *states]
        meta = np.empty((0,) * param.ndim, object)
        steps = da.blockwise(_update_chunks, index, *[x for a in inputs for x in (a, index)],
                             plan=plan, dtype=object, meta=meta)
        return [steps.map_blocks(_pick, j, dtype=a.dtype, meta=np.empty((0,) * a.ndim,
                                                                        a.dtype))
                for j, a in enumerate([param, *states])]

    @staticmethod
    def _whole(plan: _Plan, param: Any, grad: Any, states: Sequence[Any]) -> list[Any]:
        """The new arrays of a step over whole tensors: one task, then the chunks again."""
        step = dask.delayed(_update_whole, pure=True, nout=1 + len(states))(
            plan, param, grad, *states)
        return [da.from_delayed(step[j], a.shape, dtype=a.dtype).rechunk(a.chunks)
                for j, a in enumerate([param, *states])]

    def _set_param(self, index: int, array: Any) -> None:
        start = 0
        for group in self.param_groups:
            count = len(group["params"])
            if index < start + count:
                group["params"][index - start] = array
                break
            start += count
        self._engine.params[index].original = array

    # -- lineage ----------------------------------------------------------------------------------
    def _directory(self) -> Path:
        """This optimizer's own directory for its cuts (made on first use, removed with
        the optimizer): in ``store``, or a temporary directory."""
        if self._run is None:
            self._run = Path(tempfile.mkdtemp(prefix="fastgd-dask-", dir=self._store))
            weakref.finalize(self, shutil.rmtree, str(self._run), True)
        return self._run

    def _cut_lineage(self) -> None:
        """Write the parameters and state chunk by chunk to the store and read them back as
        arrays without history (see the module docstring); the previous cut's files go."""
        self._cuts, self._since_cut = self._cuts + 1, 0
        root = self._directory() / f"cut-{self._cuts}"
        arrays = {("param", i): a for i, a in enumerate(self.params)}
        arrays.update({(k, i): v for i, entry in self.state.items() for k, v in entry.items()
                       if is_dask(v)})
        writes = []
        for (key, i), array in arrays.items():
            path = root / f"{i}-{key}"
            path.mkdir(parents=True, exist_ok=True)
            writes.append(array.map_blocks(_save_block, str(path), dtype=np.int8,
                                           chunks=(1,) * array.ndim if array.ndim else ()))
        dask.compute(*writes)
        reloaded = dict(zip(arrays, dask.persist(*[
            _from_files(root / f"{i}-{key}", a) for (key, i), a in arrays.items()]),
            strict=True))
        for (key, i), array in reloaded.items():
            if key == "param":
                self._set_param(i, array)
            else:
                self.state[i][key] = array
        previous = root.parent / f"cut-{self._cuts - 1}"
        shutil.rmtree(previous, ignore_errors=True)

    # -- state dicts ----------------------------------------------------------------------------
    @staticmethod
    def _export(value: Any, param: Any) -> Any:
        return value  # (gathered by state_dict, all at once)

    def state_dict(self) -> dict[str, Any]:
        """The NumPy face's state dict: the state gathered to NumPy arrays (one compute)."""
        sd = super().state_dict()
        keys = [(i, k) for i, entry in sd["state"].items() for k, v in entry.items()
                if is_dask(v)]
        values = dask.compute(*[sd["state"][i][k] for i, k in keys])
        for (i, k), value in zip(keys, values, strict=True):
            sd["state"][i][k] = np.asarray(value)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state dict of any face (checked whole first); the state arrays become
        Dask arrays chunked like their parameters, persisted."""
        super().load_state_dict(state_dict)
        params = self.params
        pending = {(i, k): v for i, entry in self.state.items() for k, v in entry.items()
                   if isinstance(v, np.ndarray)}
        arrays = [da.from_array(v, chunks=params[i].chunks if v.shape == params[i].shape
                                else v.shape) for (i, _), v in pending.items()]
        for (i, k), array in zip(pending, dask.persist(*arrays), strict=True):
            self.state[i][k] = array

    def load_parameters(self, values: Mapping[int, np.ndarray]) -> None:
        """Replace parameters by these values (by index), chunked like them (checkpoints)."""
        arrays = {i: da.from_array(v, chunks=self.params[i].chunks) for i, v in values.items()}
        for i, array in zip(arrays, dask.persist(*arrays.values()), strict=True):
            self._set_param(i, array)


def _pick(block: tuple[np.ndarray, ...], j: int) -> np.ndarray:
    return block[j]


def _from_files(path: Path, like: Any) -> Any:
    """The array of ``like``'s chunks written under ``path`` (:func:`_save_block`)."""
    name = f"fastgd-load-{dask.base.tokenize(str(path), like.name)}"
    graph: dict[Any, Any] = {}
    for location in np.ndindex(*like.numblocks):
        file = str(path / f"{'.'.join(map(str, location))}.npy")
        graph[(name, *location)] = (_load_block, file, np.dtype(like.dtype).name)
    return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=()), name,
                    like.chunks, meta=np.empty((0,) * like.ndim, like.dtype))


class ScheduleFreeOptimizer(optim.ScheduleFree, Optimizer):
    __doc__ = optim.ScheduleFree.__doc__

    def _entries(self) -> Mapping[int, dict[str, Any]]:
        return self.state

    def _apply_moves(self, moves: list[tuple[int, dict[str, Any], Mapping[str, Any], float]],
                     stream: Any) -> None:
        if stream is not None:
            raise TypeError("stream applies to GPU arrays; fastgd.dask steps host chunks")
        updates = []
        for i, entry, options, weight in moves:
            fmt = self._engine.storage_format(self._engine.params[i], options)
            master = split_storage(fmt)[1] and "master_param" in entry
            fmt = join_storage(split_storage(fmt)[0], "master" if master else "")
            scalars = engine.mode_scalars(weight)
            param = self.params[i]
            states = [entry["master_param"]] if master else []
            # (the mode's kernel reads the parameter as its gradient)
            new = self._chunks(_Plan(SCHEDULE_FREE_MODE.name, fmt, scalars), param, param,
                               [*states, entry["z"]])
            updates.append((i, new[:-1]))
        persisted = iter(dask.persist(*[a for _, new in updates for a in new]))
        for i, new in updates:
            self._set_param(i, next(persisted))
            if len(new) > 1:
                self.state[i]["master_param"] = next(persisted)


CLASSES = {name: optim.make_class(algorithm, Optimizer, ScheduleFreeOptimizer, __name__,
                                  FACE_OPTIONS)
           for name, algorithm in ALGORITHMS.items()}
globals().update(CLASSES)
__all__ = ["Optimizer", "ScheduleFreeOptimizer", "StepInfo", *CLASSES]
