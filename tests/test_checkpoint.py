"""fastgd.save / fastgd.load: bit-identical resume, atomic writes, refusals, and the clean-up
of what killed saves left behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cases
import numpy as np
import pytest

import fastgd
from fastgd import schedules as S


def _with_schedule(i: int, options: dict) -> dict:
    """``options`` with its lr as a number, or turned into one of two schedules."""
    lr = options["lr"]
    return {**options, "lr": (lr, S.linear_warmup(0.0, lr, 3, then=S.cosine(lr, 20)),
                              S.inverse_sqrt(lr))[i % 3]}


#: Every algorithm with every switch on, its lr a number or a schedule.
CONFIGS = [(cases.optimizer_class(name), _with_schedule(i, cases.example(name)))
           for i, name in enumerate(cases.NAMES)]


def make_params(rng):
    return [rng.standard_normal(7).astype(np.float32),
            np.asfortranarray(rng.standard_normal((3, 4))), np.array(1.5)]


def grads_for(params, rng):
    return [np.require(rng.standard_normal(p.shape).astype(p.dtype),
                       requirements="F" if p.ndim > 1 else "C") for p in params]


@pytest.mark.parametrize("cls, options", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_resume_is_bit_identical(cls, options, tmp_path):
    rng = np.random.default_rng(0)
    grads = [grads_for(make_params(np.random.default_rng(1)), rng) for _ in range(12)]
    straight = make_params(np.random.default_rng(1))
    opt = cls(straight, **options)
    for g in grads:
        opt.step(g)

    first = make_params(np.random.default_rng(1))
    opt = cls(first, **options)
    for g in grads[:5]:
        opt.step(g)
    path = tmp_path / "ckpt.npz"
    fastgd.save(path, opt)
    resumed = [np.zeros_like(p) for p in first]      # fresh arrays: values come from the file
    opt2 = cls(resumed, **options)
    fastgd.load(path, opt2)
    for g in grads[5:]:
        opt2.step(g)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert opt2.param_groups[0]["lr"] == options.get("lr", opt2.defaults["lr"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary file left


def saved_adam(path, seed):
    """An Adam optimizer after one step, its parameters, and ``rng`` for more; saved to
    ``path``."""
    rng = np.random.default_rng(seed)
    params = make_params(rng)
    opt = fastgd.Adam(params)
    opt.step(grads_for(params, rng))
    fastgd.save(path, opt)
    return opt, params, rng


def refused(opt, params, path, match):
    before = opt.state_dict()
    snapshot = [p.copy() for p in params]
    with pytest.raises((ValueError, TypeError), match=match):
        fastgd.load(path, opt)
    after = opt.state_dict()
    assert after["state"].keys() == before["state"].keys()
    for i, s in before["state"].items():
        for k, v in s.items():
            np.testing.assert_array_equal(after["state"][i][k], v)
    for p, s in zip(params, snapshot, strict=True):
        np.testing.assert_array_equal(p, s)


def test_mismatched_checkpoints_are_refused(tmp_path):
    path = tmp_path / "adam.npz"
    _, _, rng = saved_adam(path, 2)

    other = make_params(rng)
    sgd = fastgd.SGD(other, momentum=0.9)
    sgd.step(grads_for(other, rng))
    refused(sgd, other, path, "Adam checkpoint")

    shapes = [np.zeros(8, np.float32), np.zeros((3, 4)), np.array(0.0)]
    refused(fastgd.Adam(shapes), shapes, path, "parameters")
    dtypes = [np.zeros(7, np.float64), np.zeros((3, 4)), np.array(0.0)]
    refused(fastgd.Adam(dtypes), dtypes, path, "parameters")
    fewer = [np.zeros(7, np.float32)]
    refused(fastgd.Adam(fewer), fewer, path, "parameters")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_corrupt_checkpoints_are_refused(tmp_path, damage):
    path = tmp_path / "c.npz"
    opt, params, _ = saved_adam(path, 3)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint" * 10)
    elif damage == "empty":
        np.savez(path, x=np.zeros(3))
    else:
        path.unlink()
    refused(opt, params, path, "checkpoint")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    opt, params, rng = saved_adam(path, 4)
    good = path.read_bytes()
    opt.step(grads_for(params, rng))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        fastgd.save(path, opt)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_unstorable_hyperparameter_is_refused(tmp_path):
    opt = fastgd.SGD([np.zeros(3)], lr=lambda t: 0.1)
    with pytest.raises(TypeError, match="checkpoint"):
        fastgd.save(tmp_path / "x.npz", opt)
    assert list(tmp_path.iterdir()) == []


HANGING_SAVE = r"""
import os, sys, time
import numpy as np
import fastgd

os.fsync = lambda fd: time.sleep(3600)   # the data is written; the save hangs before renaming
p = np.ones(100_000)
opt = fastgd.Adam([p])
opt.step([np.ones(100_000)])
fastgd.save(sys.argv[1], opt)
"""


def hanging_save(path):
    """A save of ``path`` in another process, stopped after writing its temporary file
    (which it holds locked); returns the process and the temporary file."""
    env = dict(os.environ)
    root = str(Path(fastgd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    before = set(path.parent.glob(f".{path.name}.*.tmp"))
    proc = subprocess.Popen([sys.executable, "-c", HANGING_SAVE, str(path)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        new = set(path.parent.glob(f".{path.name}.*.tmp")) - before
        if new and next(iter(new)).stat().st_size > 1_000_000:
            return proc, next(iter(new))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the child's save did not start")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX processes and file locks")
def test_a_killed_save_is_cleaned_up_but_a_running_one_is_not_touched(tmp_path):
    path = tmp_path / "ckpt.npz"
    opt, params, _ = saved_adam(path, seed=3)
    running, running_tmp = hanging_save(path)
    killed, killed_tmp = hanging_save(path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        fastgd.save(path, opt)                 # removes what the killed save left ...
        assert not killed_tmp.exists()
        assert running_tmp.exists()            # ... and leaves the running save alone
    finally:
        running.kill()
        running.wait()
    fastgd.save(path, opt)                     # now that one is dead too
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    fresh = fastgd.Adam([np.zeros_like(p) for p in params])
    fastgd.load(path, fresh)
