"""Optimizer checkpoints in one ``.npz`` file, written atomically.

The file holds the optimizer's :meth:`~fastgd.Optimizer.state_dict` (state arrays, step
counts, hyperparameters; schedules stored as their constructor arguments), the algorithm's
name, each parameter's shape and dtype and, by default, the parameter values. It is written
to a temporary file in the same directory (``.<name>.<random>.tmp``) and renamed into place,
so a crash never leaves a half-written checkpoint. The writer holds a lock on its temporary
file while it writes; a later save to the same path removes the temporary files of saves
that died (killed mid-write: their lock is gone) and leaves those of saves still running in
other processes alone. Loading checks everything first and refuses a checkpoint of another
algorithm, shape or dtype (or a corrupt file) with nothing changed. No pickle is involved:
a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fastgd import schedules
from fastgd.arrays import bfloat16, is_dask, is_device, is_torch, storage, to_host
from fastgd.optim import Optimizer

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be removed, which protects it instead
    fcntl = None  # type: ignore[assignment]

FORMAT = "fastgd-checkpoint-1"


def _encode(value: Any) -> Any:
    """JSON form of a hyperparameter (numbers, bools, tuples, fastgd schedules)."""
    if isinstance(value, schedules.Schedule):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"schedule": type(value).__name__, "fields": fields}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)) or (
            is_torch(value) and value.numel() == 1):  # (a tensor lr: its number)
        return value.item()
    raise TypeError(f"cannot store hyperparameter {value!r} in a checkpoint (only numbers, "
                    "bools and fastgd.schedules objects)")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        cls = getattr(schedules, str(value.get("schedule")), None)
        if not (isinstance(cls, type) and issubclass(cls, schedules.Schedule)):
            raise ValueError(f"unknown schedule in checkpoint: {value.get('schedule')!r}")
        return cls(**{k: _decode(v) for k, v in value["fields"].items()})
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


def _portable(arr: np.ndarray) -> np.ndarray:
    """bfloat16 arrays as their uint16 bits (``.npz`` stores them without pickle)."""
    return arr.view(np.uint16) if storage(arr) == "bf16" else arr


def _host(value: Any) -> Any:
    """A state-dict array as a NumPy array (torch tensors converted; bfloat16 ones to
    ``ml_dtypes.bfloat16``)."""
    if not is_torch(value):
        return value
    import torch

    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(bfloat16())
    return value.numpy()


#: Temporary files younger than this are left alone even when unlocked: their writer may
#: not have taken its lock yet (it locks right after creating the file, before writing).
_GRACE_SECONDS = 60.0


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of earlier saves to ``path`` whose writer died."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            with open(tmp, "rb") as handle:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                info = os.fstat(handle.fileno())
                if info.st_size == 0 and time.time() - info.st_mtime < _GRACE_SECONDS:
                    continue
                os.unlink(tmp)  # (while holding the lock: no writer can be in it)
        except OSError:  # locked by a running save, gone already, or in use (Windows)
            continue


def save(path: str | os.PathLike[str], optimizer: Optimizer, *, params: bool = True) -> None:
    """Write ``optimizer``'s state (and, with ``params=True``, its parameters) to ``path``."""
    sd = optimizer.state_dict()
    meta = {
        "format": FORMAT,
        "algorithm": type(optimizer).__name__,
        "params": [[list(v.shape), str(v.dtype)] for v in optimizer.parameters()],
        "param_groups": [{k: _encode(v) for k, v in g.items()} for g in sd["param_groups"]],
        "scalars": {str(i): {k: v for k, v in s.items() if isinstance(v, (int, float))}
                    for i, s in sd["state"].items()},
    }
    arrays = {f"state/{i}/{k}": _host(v) for i, s in sd["state"].items()
              for k, v in s.items() if not isinstance(v, (int, float))}
    meta["bfloat16"] = sorted(k for k, v in arrays.items() if storage(v) == "bf16")
    arrays = {k: _portable(v) for k, v in arrays.items()}
    if params:
        arrays.update({f"param/{i}": _portable(np.asarray(v) if is_dask(v) else to_host(v))
                       for i, v in enumerate(optimizer.parameters())})
    path = Path(path)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if fcntl is not None:  # held until the file is renamed into place
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            np.savez(handle, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     **arrays)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike[str], optimizer: Optimizer) -> None:
    """Restore a checkpoint written by :func:`save` into ``optimizer`` (and its parameters,
    if saved); a checkpoint that does not match is refused with nothing changed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            arrays = {name: data[name] for name in data.files if name != "__meta__"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable fastgd checkpoint: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastgd checkpoint")
    name = type(optimizer).__name__
    if meta.get("algorithm") != name:
        raise ValueError(f"{path} holds a {meta.get('algorithm')} checkpoint, not {name}")
    views = optimizer.parameters()
    expected = [[list(v.shape), str(v.dtype)] for v in views]
    if meta.get("params") != expected:
        raise ValueError(f"{path} was saved for parameters {meta.get('params')}, this "
                         f"optimizer has {expected}")
    state: dict[int, dict[str, Any]] = {}
    for index, scalars in meta.get("scalars", {}).items():
        state[int(index)] = dict(scalars)
    bf16 = set(meta.get("bfloat16", ()))  # (state arrays stored as their uint16 bits)
    for key, value in arrays.items():
        kind, *rest = key.split("/")
        if kind == "state":
            if key in bf16 and value.dtype == np.uint16:
                value = value.view(bfloat16())
            state.setdefault(int(rest[0]), {})[rest[1]] = value
    try:
        groups = [{k: _decode(v) for k, v in g.items()} for g in meta["param_groups"]]
        groups = [{**g, "params": list(g["params"])} for g in groups]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} has malformed parameter groups: {exc}") from None
    saved_params = {int(k.split("/")[1]): v for k, v in arrays.items() if k.startswith("param/")}
    for i, value in saved_params.items():
        view = views[i] if 0 <= i < len(views) else None
        target = None if view is None or is_device(view) else _portable(view)
        if view is None or value.shape != tuple(view.shape) or value.dtype != (
                view.dtype if target is None else target.dtype):
            raise ValueError(f"{path}: saved param/{i} does not match the optimizer's")
    optimizer.load_state_dict({"state": state, "param_groups": groups})  # checks, then sets
    if any(map(is_dask, views)):  # (immutable arrays: the optimizer takes new ones)
        optimizer.load_parameters({i: value.view(views[i].dtype)
                                   for i, value in saved_params.items()})
        return
    for i, value in saved_params.items():
        view = views[i]
        if is_device(view):
            view.copy_to_device(value)
        else:
            _portable(view)[...] = value
