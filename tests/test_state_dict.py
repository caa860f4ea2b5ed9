"""state_dict / load_state_dict: exact resumption, plain contents, refusal of bad dicts, lr.

* Resuming: k steps, ``state_dict()``, a *fresh* optimizer on copies of the parameters,
  ``load_state_dict``, N more steps must equal an uninterrupted run bit for bit -- in this
  process and, through ``pickle``, in a new one.
* A state dict holds only plain Python numbers and NumPy arrays that are copies: mutating it
  does not touch the optimizer (nor does mutating a dict after it was loaded).
* A mismatched or garbage state dict is refused with ``ValueError``/``TypeError`` and the
  optimizer is left exactly as it was (state, hyperparameters, and its next steps).
* Learning rates changed between steps (``param_groups[i]['lr']``, ``opt.lr``) are honoured:
  the result equals the functional API called with the same lr sequence.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import cases
import numpy as np
import pytest

import fastgd
from fastgd.algorithms import ALGORITHMS

#: Every algorithm with every switch on (the test table's example), and a few more settings.
CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    name: (cases.optimizer_class(name), cases.example(name, seed=1)) for name in cases.NAMES}
CONFIGS.update({
    "SGD-nesterov": (fastgd.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True,
                                  "weight_decay": 1e-3, "maximize": True}),
    "RMSprop-plain": (fastgd.RMSprop, {"lr": 0.02, "alpha": 0.95, "maximize": True}),
    "Adam-decoupled": (fastgd.Adam, {"lr": 0.01, "weight_decay": 0.02,
                                     "decoupled_weight_decay": True, "maximize": True}),
    "NAdam-L2": (fastgd.NAdam, {"lr": 0.01, "weight_decay": 1e-3}),
})
NAMES = list(CONFIGS)
K, N = 3, 4                              # steps before the checkpoint, steps after
LATE = 4                                 # params[LATE] has no gradient before step K + 1
LR_CHANGES = {2: (0, 0.6), 5: (1, 1.5)}  # before step i: group g's lr *= factor


def make_params() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.standard_normal(5),                                   # float64
        rng.standard_normal((3, 4)).astype(np.float32),           # float32 2-D
        np.asfortranarray(rng.standard_normal((4, 3))),           # Fortran order
        np.asarray(rng.standard_normal(), dtype=np.float32),      # 0-d
        rng.standard_normal(7),                                   # gets grads late
    ]


def build(cname: str, params: list[Any], **overrides: Any):
    cls, kwargs = CONFIGS[cname]
    kwargs = {**kwargs, **overrides}
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": kwargs["lr"] * 0.5}]
    return cls(groups, **kwargs)


def grads_for(i: int, params: list[Any]) -> list[Any]:
    rng = np.random.default_rng(100 + i)
    grads: list[Any] = [rng.standard_normal(np.shape(p)).astype(p.dtype) for p in params]
    grads[2] = np.asfortranarray(grads[2])
    if i <= K:
        grads[LATE] = None
    return grads


def apply_lr_changes(opt, i: int) -> None:
    if i in LR_CHANGES:
        group, factor = LR_CHANGES[i]
        opt.param_groups[group]["lr"] = opt.param_groups[group]["lr"] * factor


def advance(opt, params, start: int, stop: int) -> None:
    for i in range(start, stop):
        apply_lr_changes(opt, i)
        opt.step(grads_for(i, params))


def copies(params):
    return [p.copy(order="K") for p in params]


def assert_same_arrays(a, b) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert np.array_equal(x, y), f"params[{i}] differs"


def assert_sd_equal(a: Any, b: Any, path: str = "sd") -> None:
    """Deep, exact equality of two state dicts (arrays bit for bit, numbers by type too)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            assert_sd_equal(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_sd_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path
    else:
        assert type(a) is type(b), path
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), path


def uninterrupted(cname: str):
    params = make_params()
    opt = build(cname, params)
    advance(opt, params, 0, K + N)
    return opt, params


def checkpoint(cname: str):
    params = make_params()
    opt = build(cname, params)
    advance(opt, params, 0, K)
    return opt, params


# -- exact resumption -------------------------------------------------------------------------

@pytest.mark.parametrize("cname", NAMES)
@pytest.mark.parametrize("fresh", ["same-options", "default-options"])
def test_resume_is_bit_identical(cname, fresh):
    ref_opt, ref_params = uninterrupted(cname)
    opt, params = checkpoint(cname)
    sd = opt.state_dict()
    assert LATE not in sd["state"] and set(sd["state"]) == {0, 1, 2, 3}
    resumed_params = copies(params)
    if fresh == "same-options":
        new = build(cname, resumed_params)
    else:   # the dict carries every hyperparameter, lr changes included
        cls = CONFIGS[cname][0]
        new = cls([{"params": resumed_params[:3]}, {"params": resumed_params[3:]}])
    new.load_state_dict(sd)
    assert_sd_equal(new.state_dict(), sd)
    advance(new, resumed_params, K, K + N)
    assert_same_arrays(resumed_params, ref_params)
    assert_sd_equal(new.state_dict(), ref_opt.state_dict())
    assert {i: s["step"] for i, s in new.state_dict()["state"].items()} == {
        0: K + N, 1: K + N, 2: K + N, 3: K + N, LATE: N - 1}
    # the optimizer that was checkpointed is not disturbed by state_dict() either
    advance(opt, params, K, K + N)
    assert_same_arrays(params, ref_params)


@pytest.mark.parametrize("cname", NAMES)
def test_resume_with_load_into_same_optimizer_after_divergence(cname):
    """Loading an old dict into an optimizer that went on rolls it back exactly."""
    ref_opt, ref_params = uninterrupted(cname)
    opt, params = checkpoint(cname)
    sd = opt.state_dict()
    saved_params = copies(params)
    advance(opt, params, K, K + 2)               # diverge ...
    for p, saved in zip(params, saved_params, strict=True):
        p[...] = saved                           # ... restore params in place ...
    opt.load_state_dict(sd)                      # ... and the optimizer state
    advance(opt, params, K, K + N)
    assert_same_arrays(params, ref_params)


@pytest.mark.parametrize("cname", NAMES)
def test_step_zero_state_dict_round_trip(cname):
    params = make_params()
    opt = build(cname, params)
    sd = opt.state_dict()
    assert sd["state"] == {}
    fresh = build(cname, copies(make_params()))
    fresh.load_state_dict(sd)
    ref_opt, ref_params = uninterrupted(cname)
    advance(fresh, fresh.param_groups[0]["params"] + fresh.param_groups[1]["params"], 0,
            K + N)
    assert_same_arrays(fresh.param_groups[0]["params"] + fresh.param_groups[1]["params"],
                       ref_params)


# -- contents ---------------------------------------------------------------------------------

def _walk(obj: Any, path: str, arrays: list[np.ndarray]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert type(key) in (str, int), f"{path}: key {key!r} of type {type(key)}"
            _walk(value, f"{path}[{key!r}]", arrays)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _walk(value, f"{path}[{i}]", arrays)
    elif isinstance(obj, np.ndarray):
        assert type(obj) is np.ndarray, f"{path}: {type(obj)} is not a plain ndarray"
        arrays.append(obj)
    else:
        assert type(obj) in (int, float, bool, str), f"{path}: {obj!r} is a {type(obj)}"


@pytest.mark.parametrize("cname", NAMES)
def test_state_dict_holds_plain_numbers_and_array_copies(cname):
    opt, params = checkpoint(cname)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    arrays: list[np.ndarray] = []
    _walk(sd, "sd", arrays)
    assert arrays, "state arrays expected"
    for i, entry in sd["state"].items():
        assert type(i) is int
        assert type(entry["step"]) is int and entry["step"] == K
        for scalar in opt.algorithm.scalars:
            assert type(entry[scalar.name]) is float, scalar.name
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert value.shape == cases.state_shape(opt.algorithm.name, key,
                                                        params[i].shape), key
                assert value.dtype == params[i].dtype, key
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1, 2], [3, 4]]
    live = list(params) + [v for s in opt.state.values() for v in s.values()
                           if isinstance(v, np.ndarray)]
    for arr in arrays:
        for other in live:
            assert not np.shares_memory(arr, other)
    # with torch tensors as parameters the arrays are torch tensors (copies), which
    # torch.optim can load
    torch = pytest.importorskip("torch")
    tparams = [torch.from_numpy(p) for p in copies(make_params())]
    topt = build(cname, tparams)
    advance(topt, make_params(), 0, K)   # grads depend on shapes and dtypes only
    tsd = topt.state_dict()
    for i, entry in tsd["state"].items():
        for key, value in entry.items():
            if key in sd["state"][i] and isinstance(sd["state"][i][key], np.ndarray):
                assert isinstance(value, torch.Tensor), key
                assert value.data_ptr() not in [t.data_ptr() for t in tparams]
                entry[key] = value.numpy()
    assert_sd_equal(tsd, sd)


@pytest.mark.parametrize("cname", NAMES)
def test_mutating_a_state_dict_does_not_touch_the_optimizer(cname):
    opt, params = checkpoint(cname)
    twin, twin_params = checkpoint(cname)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                value.fill(1e3)
            else:
                entry[key] = 99 if key == "step" else 0.5
        entry["bogus"] = 1
    for group in sd["param_groups"]:
        group["lr"] = -1.0
        group["params"].append(42)
        group["new"] = 0
    sd["state"][0] = "garbage"
    sd["param_groups"].append({})
    assert_sd_equal(opt.state_dict(), twin.state_dict())
    advance(opt, params, K, K + N)
    advance(twin, twin_params, K, K + N)
    assert_same_arrays(params, twin_params)


@pytest.mark.parametrize("cname", NAMES)
def test_mutating_a_loaded_state_dict_does_not_touch_the_optimizer(cname):
    ref_opt, ref_params = uninterrupted(cname)
    opt, params = checkpoint(cname)
    sd = opt.state_dict()
    new_params = copies(params)
    new = build(cname, new_params)
    new.load_state_dict(sd)
    for entry in sd["state"].values():
        for value in entry.values():
            if isinstance(value, np.ndarray):
                value.fill(-7.0)
        entry["step"] = 1000
    for group in sd["param_groups"]:
        group["lr"] = 123.0
    advance(new, new_params, K, K + N)
    assert_same_arrays(new_params, ref_params)


def test_state_dict_does_not_share_mutable_options():
    p = np.ones(3)
    opt = fastgd.Adam([p], lr=0.1, betas=[0.9, 0.999])
    sd = opt.state_dict()
    sd["param_groups"][0]["betas"][0] = 0.5
    assert opt.param_groups[0]["betas"][0] == 0.9


@pytest.mark.parametrize("cname", NAMES)
def test_pickle_round_trip_in_process(cname):
    ref_opt, ref_params = uninterrupted(cname)
    opt, params = checkpoint(cname)
    blob = pickle.dumps(opt.state_dict())
    new_params = copies(params)
    new = build(cname, new_params)
    new.load_state_dict(pickle.loads(blob))
    advance(new, new_params, K, K + N)
    assert_same_arrays(new_params, ref_params)


# -- a new process ----------------------------------------------------------------------------

CHILD = r"""
import pickle, sys
import numpy as np
import fastgd

with open(sys.argv[1], "rb") as f:
    jobs = pickle.load(f)
results = {}
for name, job in jobs.items():
    cls = getattr(fastgd, job["cls"])
    params = job["params"]
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": job["kwargs"]["lr"] * 0.5}]
    opt = cls(groups, **job["kwargs"])
    opt.load_state_dict(job["state_dict"])
    for i, grads in job["steps"]:
        if i in job["lr_changes"]:
            group, factor = job["lr_changes"][i]
            opt.param_groups[group]["lr"] = opt.param_groups[group]["lr"] * factor
        opt.step(grads)
    results[name] = {"params": params, "state_dict": opt.state_dict()}
with open(sys.argv[2], "wb") as f:
    pickle.dump(results, f)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(fastgd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def new_process_results(tmp_path_factory):
    """Every config checkpointed here, pickled, resumed in ONE new Python process."""
    jobs = {}
    for cname in NAMES:
        opt, params = checkpoint(cname)
        new_params = copies(params)
        jobs[cname] = {
            "cls": CONFIGS[cname][0].__name__, "kwargs": CONFIGS[cname][1],
            "params": new_params, "state_dict": opt.state_dict(),
            "steps": [(i, grads_for(i, new_params)) for i in range(K, K + N)],
            "lr_changes": LR_CHANGES,
        }
    folder = tmp_path_factory.mktemp("pickled")
    infile, outfile = folder / "jobs.pkl", folder / "results.pkl"
    infile.write_bytes(pickle.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(infile), str(outfile)],
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pickle.loads(outfile.read_bytes())


@pytest.mark.parametrize("cname", NAMES)
def test_pickled_state_dict_resumes_identically_in_new_process(cname, new_process_results):
    ref_opt, ref_params = uninterrupted(cname)
    result = new_process_results[cname]
    assert_same_arrays(result["params"], ref_params)
    assert_sd_equal(result["state_dict"], ref_opt.state_dict())


# -- refusing mismatched dicts ----------------------------------------------------------------

class Guard:
    """Everything observable about an optimizer, to show a refused load changed nothing."""

    def __init__(self, cname: str) -> None:
        self.cname = cname
        self.opt, self.params = checkpoint(cname)
        self.twin, self.twin_params = checkpoint(cname)
        self.sd = self.opt.state_dict()
        self.saved_params = copies(self.params)

    def good_dict(self) -> dict:
        return copy.deepcopy(self.sd)

    def refuse(self, bad: Any) -> BaseException:
        with pytest.raises((ValueError, TypeError)) as info:
            self.opt.load_state_dict(bad)
        assert_sd_equal(self.opt.state_dict(), self.sd)
        assert_same_arrays(self.params, self.saved_params)
        return info.value

    def assert_still_in_step(self) -> None:
        advance(self.opt, self.params, K, K + N)
        advance(self.twin, self.twin_params, K, K + N)
        assert_same_arrays(self.params, self.twin_params)
        assert_sd_equal(self.opt.state_dict(), self.twin.state_dict())


def first_array_key(entry: dict) -> str:
    return next(k for k, v in entry.items() if isinstance(v, np.ndarray))


@pytest.mark.parametrize("cname", NAMES)
def test_dict_of_another_algorithm_refused(cname):
    guard = Guard(cname)
    cls = CONFIGS[cname][0]
    twins = {fastgd.Adam, fastgd.AdamW}          # same options and state: interchangeable
    tried = 0
    for other in NAMES:
        other_cls = CONFIGS[other][0]
        if other_cls is cls or {cls, other_cls} == twins:
            continue
        other_sd = checkpoint(other)[0].state_dict()
        guard.refuse(other_sd)                               # whole dict
        mixed = guard.good_dict()
        mixed["state"] = copy.deepcopy(other_sd["state"])    # our options, their state
        own_keys = {k for e in guard.sd["state"].values() for k in e}
        their_keys = {k for e in other_sd["state"].values() for k in e}
        if own_keys != their_keys:
            guard.refuse(mixed)
        tried += 1
    assert tried >= 5
    guard.assert_still_in_step()


def test_adam_into_sgd_and_back_explicitly():
    for target, source in (("SGD", "Adam"), ("Adam", "SGD"),
                           ("NAdam", "Adam-decoupled"), ("Adagrad", "Adadelta")):
        guard = Guard(target)
        exc = guard.refuse(checkpoint(source)[0].state_dict())
        assert "param_groups" in str(exc) or "state" in str(exc)
        guard.assert_still_in_step()


def structural_cases(sd: dict, cname: str):
    """(label, bad dict) pairs derived from a good state dict ``sd`` (deep-copied each)."""
    def variant(edit):
        d = copy.deepcopy(sd)
        edit(d)
        return d

    arr_key = first_array_key(sd["state"][0])
    yield "one group", variant(lambda d: d["param_groups"].pop())
    yield "three groups", variant(lambda d: d["param_groups"].append(
        copy.deepcopy(d["param_groups"][1])))
    yield "group short", variant(lambda d: d["param_groups"][0]["params"].pop())
    yield "group long", variant(lambda d: d["param_groups"][1]["params"].append(5))
    yield "params permuted", variant(lambda d: d["param_groups"][0].__setitem__(
        "params", [1, 0, 2]))
    yield "params moved", variant(lambda d: (d["param_groups"][0]["params"].append(3),
                                             d["param_groups"][1]["params"].remove(3)))
    yield "array shape", variant(lambda d: d["state"][0].__setitem__(arr_key, np.zeros(6)))
    yield "array transposed", variant(lambda d: d["state"][1].__setitem__(
        arr_key, np.zeros((4, 3), np.float32)))
    yield "array 0-d vs 1-d", variant(lambda d: d["state"][3].__setitem__(
        arr_key, np.zeros(1, np.float32)))
    key1 = first_array_key(sd["state"][1])  # (Adafactor's: a factor of the 2-D params[1])
    yield "dtype 64 for 32", variant(lambda d: d["state"][1].__setitem__(
        key1, d["state"][1][key1].astype(np.float64)))
    yield "dtype 32 for 64", variant(lambda d: d["state"][0].__setitem__(
        arr_key, d["state"][0][arr_key].astype(np.float32)))
    yield "dtype int", variant(lambda d: d["state"][0].__setitem__(
        arr_key, d["state"][0][arr_key].astype(np.int64)))
    yield "array is a string", variant(lambda d: d["state"][0].__setitem__(arr_key, "zeros"))
    yield "array is None", variant(lambda d: d["state"][0].__setitem__(arr_key, None))
    yield "no state", variant(lambda d: d.pop("state"))
    yield "no param_groups", variant(lambda d: d.pop("param_groups"))
    yield "extra top-level key", variant(lambda d: d.__setitem__("extra", 1))
    yield "group without lr", variant(lambda d: d["param_groups"][0].pop("lr"))
    yield "group extra option", variant(lambda d: d["param_groups"][1].__setitem__("foo", 1))
    yield "group without params", variant(lambda d: d["param_groups"][0].pop("params"))
    yield "entry without step", variant(lambda d: d["state"][0].pop("step"))
    yield "entry unknown key", variant(lambda d: d["state"][2].__setitem__("bogus", 1.0))
    yield "entry not a dict", variant(lambda d: d["state"].__setitem__(1, 5))
    yield "entry list", variant(lambda d: d["state"].__setitem__(1, [1, 2]))
    yield "step negative", variant(lambda d: d["state"][0].__setitem__("step", -1))
    yield "step fractional", variant(lambda d: d["state"][0].__setitem__("step", 2.5))
    yield "step string", variant(lambda d: d["state"][0].__setitem__("step", "3"))
    yield "step bool", variant(lambda d: d["state"][0].__setitem__("step", True))
    yield "step None", variant(lambda d: d["state"][0].__setitem__("step", None))
    yield "state key text", variant(lambda d: d["state"].__setitem__("abc", d["state"][0]))
    yield "state key out of range", variant(lambda d: d["state"].__setitem__(
        5, copy.deepcopy(d["state"][0])))
    yield "state key negative", variant(lambda d: d["state"].__setitem__(
        -1, copy.deepcopy(d["state"][0])))
    yield "state key None", variant(lambda d: d["state"].__setitem__(
        None, copy.deepcopy(d["state"][0])))
    yield "lr negative", variant(lambda d: d["param_groups"][1].__setitem__("lr", -0.1))
    yield "lr NaN", variant(lambda d: d["param_groups"][0].__setitem__("lr", math.nan))
    yield "lr text", variant(lambda d: d["param_groups"][0].__setitem__("lr", "0.1"))
    yield "weight_decay negative", variant(lambda d: d["param_groups"][0].__setitem__(
        "weight_decay", -1.0))
    # one good group and one bad: neither may be applied
    yield "group 0 fine, group 1 bad", variant(lambda d: (
        d["param_groups"][0].__setitem__("lr", 0.123),
        d["param_groups"][1].__setitem__("lr", math.inf)))
    # good state for params 0..2, bad for 3: none may be applied
    yield "state 0 fine, state 3 bad", variant(lambda d: (
        d["state"][0].__setitem__(arr_key, d["state"][0][arr_key] + 1),
        d["state"][3].__setitem__(arr_key, np.zeros(2, np.float32))))
    algorithm = CONFIGS[cname][0].algorithm
    optional = {s.name for s in algorithm.optional}
    required = [k for k, v in sd["state"][0].items()
                if isinstance(v, np.ndarray) and k not in optional]
    for key in required:
        yield f"missing {key}", variant(lambda d, key=key: d["state"][0].pop(key))
    for scalar in (s.name for s in algorithm.scalars):
        yield f"missing {scalar}", variant(lambda d, k=scalar: d["state"][0].pop(k))
        yield f"{scalar} text", variant(lambda d, k=scalar: d["state"][0].__setitem__(k, "x"))
        yield f"{scalar} NaN", variant(lambda d, k=scalar: d["state"][0].__setitem__(
            k, math.nan))
    if "betas" in sd["param_groups"][0]:
        yield "beta2 == 1", variant(lambda d: d["param_groups"][0].__setitem__(
            "betas", (0.9, 1.0)))
        yield "betas scalar", variant(lambda d: d["param_groups"][0].__setitem__(
            "betas", 0.9))
    if algorithm.name == "SGD":
        yield "nesterov without momentum", variant(lambda d: (
            d["param_groups"][0].__setitem__("nesterov", True),
            d["param_groups"][0].__setitem__("momentum", 0.0)))


GARBAGE = [None, "garbage", 42, 1.5, [], [1, 2], b"\x00", {},
           {"state": None, "param_groups": None}, {"state": {}, "param_groups": "x"},
           {"state": {}, "param_groups": None}, {"state": 5, "param_groups": []},
           {"state": {}, "param_groups": [1, 2]}, {"state": {}, "param_groups": ["ab", "cd"]}]


@pytest.mark.parametrize("cname", NAMES)
def test_mismatched_and_garbage_dicts_refused(cname):
    guard = Guard(cname)
    labels = []
    for label, bad in structural_cases(guard.sd, cname):
        try:
            guard.refuse(bad)
        except BaseException as exc:
            raise AssertionError(f"case {label!r} was not refused cleanly: {exc!r}") from exc
        labels.append(label)
    assert len(labels) >= 35
    for bad in GARBAGE:
        guard.refuse(bad)
    # a dict with valid groups but a garbage 'state' mapping
    bad = guard.good_dict()
    bad["state"] = None
    guard.refuse(bad)
    bad["state"] = [1, 2, 3]
    guard.refuse(bad)
    guard.assert_still_in_step()


@pytest.mark.parametrize("cname", NAMES)
def test_dict_from_different_parameter_count_refused(cname):
    guard = Guard(cname)
    small = make_params()[:4]
    other = build(cname, small)
    for i in range(K):
        other.step(grads_for(i, make_params())[:4])
    guard.refuse(other.state_dict())
    one_group = CONFIGS[cname][0](make_params(), **CONFIGS[cname][1])
    guard.refuse(one_group.state_dict())
    guard.assert_still_in_step()


@pytest.mark.parametrize("cname", NAMES)
def test_dict_with_other_shapes_refused(cname):
    guard = Guard(cname)
    params = [np.zeros(6), np.zeros((4, 3), np.float32), np.asfortranarray(np.zeros((4, 3))),
              np.zeros((), np.float32), np.zeros(7)]
    other = build(cname, params)
    for i in range(K):
        grads = grads_for(i, make_params())
        grads[0] = np.ones(6)
        grads[1] = np.ones((4, 3), np.float32)
        other.step(grads)
    guard.refuse(other.state_dict())
    guard.assert_still_in_step()


def test_state_keys_as_strings_accepted():
    """JSON-style string indices are a valid spelling of parameter indices."""
    ref_opt, ref_params = uninterrupted("Adam")
    opt, params = checkpoint("Adam")
    sd = opt.state_dict()
    sd["state"] = {str(k): v for k, v in sd["state"].items()}
    new_params = copies(params)
    new = build("Adam", new_params)
    new.load_state_dict(sd)
    advance(new, new_params, K, K + N)
    assert_same_arrays(new_params, ref_params)


def test_nadam_mu_product_out_of_range_refused_at_load():
    guard = Guard("NAdam")
    bad = guard.good_dict()
    bad["state"][0]["mu_product"] = 2.0
    guard.refuse(bad)


@pytest.mark.parametrize("key", [0.5, True])
def test_non_integer_state_keys_refused(key):
    guard = Guard("Adam")
    bad = guard.good_dict()
    bad["state"] = {key if i == int(key) else i: v for i, v in bad["state"].items()}
    guard.refuse(bad)


# -- learning rate changes --------------------------------------------------------------------

def functional_twin(cname: str, params: list[np.ndarray]):
    """A function ``step(t, grads, lrs)`` applying the config with the functional API (its
    state made on the first step, with that step's learning rate)."""
    cls, kw = CONFIGS[cname]
    takes_lr = "lr" in {h.name for h in ALGORITHMS[cls.__name__].functional_hyperparameters}
    runners: list[cases.FunctionalRunner] = []

    def step(t: int, grads, lrs) -> None:
        if t == 1:
            runners[:] = [cases.FunctionalRunner(cls.__name__, {**kw, "lr": lr}, p, offset=False)
                          for p, lr in zip(params, lrs, strict=True)]
        for runner, g, lr in zip(runners, grads, lrs, strict=True):
            runner.step(g, **({"lr": lr} if takes_lr else {}))

    return step


LRS = [0.1, 0.05, 0.2, 0.01, 0.07, 0.3]


@pytest.mark.parametrize("cname", NAMES)
def test_lr_changes_between_steps_match_functional(cname):
    cls, kw = CONFIGS[cname]
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(6), rng.standard_normal((2, 3)).astype(np.float32)]
    params, fparams = copies(start), copies(start)
    opt = cls(params, **kw)
    fstep = functional_twin(cname, fparams)
    for t, lr in enumerate(LRS, start=1):
        how = t % 3
        if how == 0:
            opt.lr = lr
        elif how == 1:
            opt.param_groups[0]["lr"] = lr
        else:
            for group in opt.param_groups:
                group["lr"] = lr
        assert opt.lr == lr and opt.param_groups[0]["lr"] == lr
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in start]
        opt.step(grads)
        fstep(t, grads, [lr, lr])
        assert_same_arrays(params, fparams)
    assert opt.state_dict()["param_groups"][0]["lr"] == LRS[-1]
    assert not np.array_equal(params[0], start[0])


@pytest.mark.parametrize("cname", NAMES)
def test_per_group_lr_changes_match_functional(cname):
    cls, kw = CONFIGS[cname]
    rng = np.random.default_rng(8)
    start = [rng.standard_normal(6), rng.standard_normal(4)]
    params, fparams = copies(start), copies(start)
    opt = cls([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.0123}], **kw)
    with pytest.raises(ValueError, match="lr"):
        _ = opt.lr                                  # groups differ: ambiguous
    fstep = functional_twin(cname, fparams)
    lrs1 = [0.02, 0.02, 0.3, 0.3, 0.001]
    for t, (lr0, lr1) in enumerate(zip(LRS, lrs1, strict=False), start=1):
        opt.param_groups[0]["lr"] = lr0
        opt.param_groups[1]["lr"] = lr1
        grads = [rng.standard_normal(p.shape) for p in start]
        opt.step(grads)
        fstep(t, grads, [lr0, lr1])
        assert_same_arrays(params, fparams)
    opt.lr = 0.125                                   # sets every group
    assert opt.lr == 0.125 and [g["lr"] for g in opt.param_groups] == [0.125, 0.125]


@pytest.mark.parametrize("cname", ["Adam", "SGD", "NAdam"])
def test_lr_changed_before_checkpoint_is_carried_by_the_dict(cname):
    opt, params = checkpoint(cname)
    base_lr = CONFIGS[cname][1]["lr"]
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == pytest.approx(base_lr * 0.6)   # LR_CHANGES[2]
    assert sd["param_groups"][1]["lr"] == pytest.approx(base_lr * 0.5)
    new = build(cname, copies(params), lr=1.0)
    new.load_state_dict(sd)
    assert [g["lr"] for g in new.param_groups] == [g["lr"] for g in sd["param_groups"]]


@pytest.mark.parametrize("name", [n for n in cases.NAMES if cases.algorithm(n).two_phase])
def test_a_two_phase_step_checks_every_tensor_before_it_runs(name):
    """A bad state array of a later tensor is refused before an earlier one is stepped."""
    params = [np.ones(50), np.ones(60)]
    opt = cases.optimizer_class(name)(params, lr=0.1)
    opt.step([np.ones(50), np.ones(60)])
    before = copy.deepcopy(opt.state)
    snapshot = [p.copy() for p in params]
    key = cases.state_names(name, {})[0]
    opt.state[1][key] = np.zeros(60, np.float32)
    with pytest.raises(TypeError, match=key):
        opt.step([np.ones(50), np.ones(60)])
    assert all(np.array_equal(p, s) for p, s in zip(params, snapshot, strict=True))
    assert opt.state[0]["step"] == before[0]["step"]
    assert all(np.array_equal(opt.state[0][k], v) for k, v in before[0].items()
               if isinstance(v, np.ndarray))
