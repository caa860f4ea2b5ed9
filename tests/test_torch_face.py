"""``fastgd.torch``: every algorithm as a ``torch.optim.Optimizer`` (skipped without torch).

* Each class is a ``torch.optim.Optimizer`` with fastgd's signature, and steps exactly as the
  NumPy face (:mod:`fastgd`) does on the same data, bit for bit: every algorithm, both
  dtypes, sizes 0 to above the parallel crossover, C and Fortran layouts, two groups,
  parameters without a gradient, fused clipping, float16/bfloat16 parameters and
  low-precision state.
* torch's ecosystem drives it as it drives ``torch.optim``: every LR scheduler (the same
  learning rates and parameters), ``GradScaler`` (the same steps skipped),
  ``clip_grad_norm_``, a ``torch.compile``d model, the step and state-dict hooks.
* State dicts move between ``fastgd.torch``, ``torch.optim`` and the NumPy face both ways,
  and training continues as it would have.
* Bad input is refused before any tensor is written.
"""

from __future__ import annotations

import copy
import inspect
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cases import ALL_NAMES, example, optimizer_class
from torch_models import assert_same_parameters, backward, batches, fit, mlp

import fastgd
from fastgd.algorithms import ALGORITHMS

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastgd.torch")

BIG = 2 * 16384 + 37  # above the parallel crossover
SHAPES = [(), (0,), (1,), (7,), (1025,), (BIG,), (3, 5, 7), (5, 7)]
MATRICES = [(1, 1), (7, 3), (3, 70), (40, 33), (0, 5), (6, 9)]
STEPS = 12
TORCH_NAMES = [name for name in ALL_NAMES if hasattr(torch.optim, name)]


def seeded(request: pytest.FixtureRequest) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def torch_class(name: str) -> type:
    """``fastgd.torch.<name>``; a Schedule-Free one put in train mode when made."""
    cls = getattr(ft, name)
    if not issubclass(cls, ft.ScheduleFreeOptimizer):
        return cls

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        self.train()

    return type(name, (cls,), {"__init__": __init__})


def shapes_of(name: str) -> list[tuple[int, ...]]:
    return MATRICES if ALGORITHMS[name].matrices else SHAPES


def make_tensors(values: list[np.ndarray], fortran: int | None) -> list[Any]:
    """Leaf tensors holding copies of ``values`` (``values[fortran]`` in Fortran order)."""
    tensors = []
    for i, v in enumerate(values):
        t = ft.as_tensor(np.asfortranarray(v) if i == fortran else v.copy(), "cpu")
        tensors.append(t.requires_grad_())
    return tensors


# -- the same classes ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_NAMES)
def test_each_class_is_a_torch_optimizer_with_fastgds_signature(name: str) -> None:
    cls = getattr(ft, name)
    assert issubclass(cls, torch.optim.Optimizer) and cls.__module__ == "fastgd.torch"
    assert inspect.signature(cls) == inspect.signature(getattr(fastgd, name))
    assert cls.__doc__ == getattr(fastgd, name).__doc__
    shape = shapes_of(name)[1]
    opt = cls([torch.zeros(shape, requires_grad=True)])
    assert opt.defaults == getattr(fastgd, name)([np.zeros(shape)]).defaults
    assert dict(opt.state) == {}


def test_import_fastgd_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, fastgd, fastgd.functional; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "False"


# -- the same steps as the NumPy face --------------------------------------------------------------

def run_both(name: str, options: dict[str, Any], values: list[np.ndarray],
             rng: np.random.Generator, fortran: int | None = None,
             step_options: Callable[[int], dict[str, Any]] = lambda t: {},
             grad_dtype: Any = None) -> tuple[Any, list[Any], Any, list[np.ndarray]]:
    """``STEPS`` steps of ``name`` with ``options`` by both faces, on two parameter groups,
    with the same gradients (every third step leaves ``params[1]`` without one)."""
    tensors = make_tensors(values, fortran)
    arrays = [fastgd_view(t).copy(order="A") for t in tensors]
    half = len(values) // 2
    ours = torch_class(name)([{"params": tensors[:half]}, {"params": tensors[half:],
                                                          "lr": 0.5 * options.get("lr", 1e-3)}],
                             **options)
    numpy_face = optimizer_class(name)([{"params": arrays[:half]},
                                        {"params": arrays[half:],
                                         "lr": 0.5 * options.get("lr", 1e-3)}], **options)
    for t in range(1, STEPS + 1):
        grads = [rng.standard_normal(v.shape).astype(grad_dtype or v.dtype) for v in values]
        if fortran is not None:  # (in the parameter's layout, as autograd makes it)
            grads[fortran] = np.asfortranarray(grads[fortran])
        if t % 3 == 0:
            grads[1] = None
        for tensor, g in zip(tensors, grads, strict=True):
            tensor.grad = None if g is None else ft.as_tensor(g.copy(order="A"), "cpu")
        info = ours.step(**step_options(t))
        expected = numpy_face.step(grads, **step_options(t))
        if info is None or expected is None:
            assert info is expected
        else:  # (the norm's float64 sum is vectorized by address: equal to rounding)
            assert info._replace(grad_norm=0.0) == expected._replace(grad_norm=0.0)
            assert info.grad_norm == pytest.approx(expected.grad_norm, rel=1e-12, nan_ok=True)
    return ours, tensors, numpy_face, arrays


def assert_same_run(ours: Any, tensors: list[Any], numpy_face: Any,
                    arrays: list[np.ndarray], rtol: float = 0.0) -> None:
    """Parameters and state equal (to ``rtol``; bit for bit by default)."""
    def same(a: Any, b: Any, what: str) -> None:
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=rtol, atol=rtol, err_msg=what)

    for i, (t, a) in enumerate(zip(tensors, arrays, strict=True)):
        same(fastgd_view(t), a, f"params[{i}]")
        theirs = numpy_face.state.get(i, {})
        entry = ours.state.get(t, {})
        assert set(entry) == set(theirs), i
        for key, value in theirs.items():
            if isinstance(value, (int, float)):
                assert entry[key] == pytest.approx(value, rel=rtol) and type(
                    entry[key]) is type(value), (i, key)
            else:
                assert isinstance(entry[key], torch.Tensor), (i, key)
                same(fastgd_view(entry[key]), value, f"state[{i}][{key!r}]")


def fastgd_view(tensor: Any) -> np.ndarray:
    """A NumPy view of a tensor (bfloat16 ones as ``ml_dtypes.bfloat16``)."""
    from fastgd.arrays import as_ndarray

    return as_ndarray(tensor.detach(), "tensor", writable=False, codes=True)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(np.float64, id="f64")])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_steps_equal_the_numpy_face(name: str, dtype: Any,
                                    request: pytest.FixtureRequest) -> None:
    rng = seeded(request)
    values = [rng.standard_normal(s).astype(dtype) for s in shapes_of(name)]
    run = run_both(name, example(name, seed=3), values, rng, fortran=len(values) - 1)
    assert_same_run(*run)


@pytest.mark.parametrize("name", ["SGD", "Adam", "Lion", "LAMB", "Adafactor", "Muon"])
def test_fused_clipping_and_skipping_equal_the_numpy_face(name: str,
                                                          request: pytest.FixtureRequest
                                                          ) -> None:
    rng = seeded(request)
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes_of(name)]

    def options(t: int) -> dict[str, Any]:
        return {"max_norm": 0.5 + t % 2, "skip_if_nonfinite": True}

    run = run_both(name, example(name, seed=4), values, rng, step_options=options)
    assert_same_run(*run, rtol=1e-5)
    ours, tensors = run[0], run[1]
    tensors[0].grad = torch.full_like(tensors[0], np.inf) if tensors[0].numel() else None
    tensors[2].grad[...] = np.nan
    before = [t.detach().clone() for t in tensors]
    info = ours.step(skip_if_nonfinite=True)
    assert info.skipped and not info.finite
    assert all(torch.equal(a, b) for a, b in zip(before, tensors, strict=True))


FORMATS = {
    "bf16 params, master weights": ({"master_weights": True}, "bfloat16", None),
    "f16 params": ({}, np.float16, None),
    "bf16 state": ({"state_precision": "bf16"}, np.float32, None),
    "bf16 state, stochastic rounding": ({"state_precision": "bf16", "stochastic_rounding": True,
                                        "rounding_seed": 7}, np.float32, None),
    "8-bit state": ({"state_precision": "8bit", "min_8bit_size": 256}, np.float32, None),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion", "LAMB", "Adafactor"])
def test_storage_formats_equal_the_numpy_face(name: str, fmt: str,
                                              request: pytest.FixtureRequest) -> None:
    options, dtype, _ = FORMATS[fmt]
    if ALGORITHMS[name].two_phase is not None and options.get("state_precision") == "8bit":
        pytest.skip("two-phase steps refuse 8-bit state")
    if dtype == "bfloat16":
        from fastgd.arrays import bfloat16

        dtype = bfloat16()
    rng = seeded(request)
    values = [rng.standard_normal(s).astype(dtype) for s in [(7,), (1025,), (BIG,), (9, 4)]]
    hp = {**example(name, seed=5), **options}
    if name == "SGD":
        hp["momentum"] = 0.9
    run = run_both(name, hp, values, rng, grad_dtype=dtype)
    assert_same_run(*run)
    ours, tensors = run[0], run[1]
    if options.get("state_precision") == "8bit":
        first = ALGORITHMS[name].states[0].name
        assert ours.state[tensors[2]][first].dtype == torch.uint8
    if options.get("master_weights"):
        assert ours.state[tensors[1]]["master_param"].dtype == torch.float32


# -- torch.optim's semantics ---------------------------------------------------------------------

def one_batch(model: Any) -> None:
    """Gradients of :func:`mlp`'s loss on a batch in every parameter's ``.grad``."""
    backward(model, next(batches()))


def test_state_is_torch_tensors_updated_in_place() -> None:
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=1e-2)
    one_batch(model)
    opt.step()
    weight = model[0].weight
    entry = opt.state[weight]
    assert set(entry) == {"step", "exp_avg", "exp_avg_sq"} and entry["step"] == 1
    pointers = {k: v.data_ptr() for k, v in entry.items() if isinstance(v, torch.Tensor)}
    average = entry["exp_avg"].clone()
    where = weight.data_ptr()
    opt.step()
    assert {k: v.data_ptr() for k, v in opt.state[weight].items()
            if isinstance(v, torch.Tensor)} == pointers
    assert weight.data_ptr() == where and not torch.equal(average, entry["exp_avg"])
    assert opt.state_nbytes() == sum(2 * p.numel() * 8 for p in model.parameters())


def test_parameters_without_gradient_are_skipped_and_zero_grad_resets() -> None:
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=0.1, momentum=0.9)
    frozen = model[2].bias
    one_batch(model)
    frozen.grad = None
    before = frozen.detach().clone()
    opt.step()
    assert frozen not in opt.state and torch.equal(frozen, before)
    assert model[0].weight in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    one_batch(model)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_closure_add_param_group_and_named_parameters_like_torch() -> None:
    results = []
    for make in (torch.optim.AdamW, ft.AdamW):
        model = mlp()
        first, second = list(model[0].named_parameters()), list(model[2].named_parameters())
        opt = make(first, lr=1e-2, weight_decay=0.1)
        batch = next(batches())

        def closure(model: Any = model, opt: Any = opt, batch: Any = batch) -> Any:
            opt.zero_grad()
            return backward(model, batch)

        losses = [opt.step(closure).item() for _ in range(3)]
        opt.add_param_group({"params": second, "lr": 5e-3})
        losses += [opt.step(closure).item() for _ in range(4)]
        assert opt.param_groups[1]["param_names"] == ["weight", "bias"]
        results.append((losses, model))
    (losses, theirs), (ours, model) = results
    np.testing.assert_allclose(ours, losses, rtol=1e-12)
    assert_same_parameters(model, theirs)


def test_step_and_state_dict_hooks_run() -> None:
    model = mlp()
    opt = ft.RMSprop(model.parameters(), lr=1e-2)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd pre"))

    def add_marker(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append("sd post")
        return {**sd, "marker": 1}

    opt.register_state_dict_post_hook(add_marker)

    def drop_marker(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        calls.append("load pre")
        return {k: v for k, v in sd.items() if k != "marker"}

    opt.register_load_state_dict_pre_hook(drop_marker)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    one_batch(model)
    opt.step()
    sd = opt.state_dict()
    assert sd["marker"] == 1
    opt.load_state_dict(sd)
    assert calls == ["pre", "post", "sd pre", "sd post", "load pre", "load post"]


def test_global_hooks_hooks_that_change_the_arguments_and_the_profilers_range() -> None:
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=1e-2)
    seen: list[Any] = []
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("global pre", o))),
               register_optimizer_step_post_hook(
                   lambda o, a, k: seen.append(("global post", k)))]
    opt.register_step_pre_hook(lambda o, a, k: (a, {**k, "max_norm": 1e-3}))
    try:
        one_batch(model)
        info = opt.step()  # (the hook clips it)
    finally:
        for handle in handles:
            handle.remove()
    assert info.grad_norm > 1e-3 and seen == [("global pre", opt),
                                              ("global post", {"max_norm": 1e-3})]
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.register_step_pre_hook(lambda o, a, k: 1)
        opt.step()
    opt = ft.SGD(model.parameters(), lr=1e-2)
    with torch.profiler.profile() as profile:
        opt.step()
    assert "Optimizer.step#SGD.step" in {e.key for e in profile.key_averages()}


def test_copy_and_pickle_keep_a_working_optimizer() -> None:
    import pickle

    model = mlp()
    opt = ft.NAdam(model.parameters(), lr=1e-2)
    one_batch(model)
    opt.step()
    clones = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    opt.step()
    for clone in clones:
        params = [p for g in clone.param_groups for p in g["params"]]
        for p, q in zip(params, model.parameters(), strict=True):
            assert p.data_ptr() != q.data_ptr()
            p.grad = q.grad.clone()
        clone.step()
        for p, q in zip(params, model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


# -- bad input -------------------------------------------------------------------------------------

def test_bad_input_refused_before_anything_changes() -> None:
    model = mlp()
    params = list(model.parameters())
    with pytest.raises(TypeError, match="Tensors"):
        ft.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="lr"):
        ft.Adam(params, lr=-1.0)
    with pytest.raises(ValueError, match="beta2"):
        ft.Adam([{"params": params[:2]}, {"params": params[2:], "betas": (0.9, 1.5)}])
    with pytest.raises(ValueError, match="non-leaf"):
        ft.SGD([params[0] * 2])
    with pytest.raises(ValueError, match="share memory"):
        ft.SGD([params[0], params[0].detach()])
    with pytest.raises(ValueError, match="2D parameters"):
        ft.Muon([torch.zeros(3, requires_grad=True)])
    opt = ft.Adam(params, lr=1e-2)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": params[:1]})
    assert len(opt.param_groups) == 1 and len(opt._engine.params) == 4
    with pytest.raises(ValueError, match="eps"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "eps": -1.0})
    assert len(opt.param_groups) == 1 and len(opt._engine.params) == 4
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    params[2].grad = torch.ones(16, 3, dtype=params[2].dtype).t()  # another layout
    with pytest.raises(ValueError, match=r"grads\[2\] must be contiguous"):
        opt.step()
    params[2].grad = torch.ones_like(params[2])
    params[3].grad = torch.ones_like(params[3]).to_sparse()
    with pytest.raises((TypeError, ValueError), match=r"grads\[3\]"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert dict(opt.state) == {}
    opt.param_groups[0]["lr"] = -0.1  # (set by hand: refused at the step)
    params[3].grad = torch.ones_like(params[3])
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_mismatched_state_dicts_refused_with_nothing_changed() -> None:
    model = mlp()
    opt = ft.Adam(model.parameters(), lr=1e-2)
    one_batch(model)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    other = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    other.step()
    bad = copy.deepcopy(saved)
    bad["state"][0]["exp_avg"] = torch.zeros(5)
    for sd in (other.state_dict(), bad, {"state": {}}, {**saved, "param_groups": []}):
        with pytest.raises((TypeError, ValueError)):
            opt.load_state_dict(sd)
        assert opt.state_dict()["state"][0]["step"] == 1
        torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"],
                                   saved["state"][0]["exp_avg"])


def test_parameters_whose_memory_moves_are_followed_like_torch() -> None:
    """``p.data = ...`` (as ZeRO's bucket views do) moves a parameter: torch.optim steps it
    where it now is, and so does fastgd.torch; a new shape that its state does not fit is
    refused, naming the state, with nothing changed."""
    def move(t: int, model: Any) -> None:
        if t == 3:
            with torch.no_grad():
                for p in model.parameters():
                    p.data = p.data.clone()

    models = [mlp(), mlp()]
    opts = [torch.optim.Adam(models[0].parameters(), lr=1e-2),
            ft.Adam(models[1].parameters(), lr=1e-2)]
    for model, opt in zip(models, opts, strict=True):
        fit(model, opt, 6, before=lambda t, model=model: move(t, model))
    assert_same_parameters(*models)
    model, opt = models[1], opts[1]
    weight = model[0].weight
    weight.data = torch.zeros(2, 2, dtype=weight.dtype)
    weight.grad = torch.zeros(2, 2, dtype=weight.dtype)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# -- what torch allows of groups, parameters and state dicts -------------------------------------

def test_groups_from_iterators_and_frozensets_like_torch() -> None:
    model = mlp()
    opt = ft.Adam([{"params": model[0].parameters()},
                   {"params": frozenset(model[2].parameters()), "lr": 0.5}], lr=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    extra = torch.zeros(3, requires_grad=True)
    opt.add_param_group({"params": iter([extra])})
    one_batch(model)
    extra.grad = torch.ones(3)
    opt.step()
    assert extra.abs().max() > 0 and len(opt.state) == 5
    with pytest.raises(TypeError, match="ordered collections"):
        opt.add_param_group({"params": {torch.zeros(2, requires_grad=True)}})


def test_parameters_appended_to_a_group_are_stepped_like_torch() -> None:
    models = [mlp(), mlp()]
    extras = [torch.ones(4, dtype=torch.float64, requires_grad=True) for _ in models]
    for model, extra, cls in zip(models, extras, (torch.optim.SGD, ft.SGD), strict=True):
        opt = cls(model[0].parameters(), lr=0.1, momentum=0.9)

        def append(t: int, opt: Any = opt, model: Any = model, extra: Any = extra) -> None:
            if t == 2:
                opt.param_groups[0]["params"] += [*model[2].parameters(), extra]

        opt.register_step_pre_hook(  # (after zero_grad and backward)
            lambda o, a, k, extra=extra: setattr(extra, "grad", torch.full_like(extra, 0.5)))
        fit(model, opt, 5, before=append)
    assert_same_parameters(*models)
    assert_same_parameters(extras[:1], extras[1:])
    assert not torch.equal(extras[1], torch.ones(4, dtype=torch.float64))


def test_a_tensor_lr_changed_in_place_is_read_again() -> None:
    models = [mlp(), mlp()]
    for model, cls in zip(models, (torch.optim.Adam, ft.Adam), strict=True):
        opt = cls(model.parameters(), lr=torch.tensor(0.01, dtype=torch.float64))
        schedule = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # (fill_ on the lr)
        fit(model, opt, 6, before=lambda t, s=schedule: s.step() if t else None)
    assert_same_parameters(*models)


def test_state_dict_with_empty_entries_other_ids_and_missing_later_switches() -> None:
    """torch's loading rules: an entry never stepped (``{}``) is no state; the ids of the
    saved groups name the parameters in order, whatever they are; switches torch added
    later (``maximize``, ``decoupled_weight_decay``) default when a dict lacks them; a
    fastgd dict has every option."""
    model = mlp()
    theirs = torch.optim.Adam(model.parameters(), lr=0.01)
    one_batch(model)
    model[2].bias.grad = None
    theirs.step()
    _ = theirs.state[model[2].bias]  # (an empty entry)
    sd = copy.deepcopy(theirs.state_dict())
    names = ["a", "b", "c", "d"]
    sd["state"] = {names[k]: v for k, v in sd["state"].items()}
    sd["param_groups"][0]["params"] = names
    for key in ("maximize", "decoupled_weight_decay"):
        del sd["param_groups"][0][key]
    ours = ft.Adam(model.parameters())
    ours.load_state_dict(sd)
    assert set(ours.state) == {model[0].weight, model[0].bias, model[2].weight}
    assert ours.param_groups[0]["maximize"] is False
    for opt in (ours, theirs):
        one_batch(model)
        opt.step()
    mine = ours.state_dict()
    del mine["param_groups"][0]["maximize"]
    with pytest.raises(ValueError, match="another optimizer"):
        ft.Adam(model.parameters()).load_state_dict(mine)
    sd["param_groups"][0]["params"] = ["a", "a", "c", "d"]
    with pytest.raises(ValueError, match="'a'"):
        ours.load_state_dict(sd)


def test_torch_distributed_checkpoint_state_dict_round_trip() -> None:
    """``torch.distributed.checkpoint.state_dict`` keys the state by parameter name."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    models = [mlp(), mlp()]
    opts = [torch.optim.AdamW(models[0].parameters(), lr=0.01),
            ft.AdamW(models[1].parameters(), lr=0.01)]
    for model, opt in zip(models, opts, strict=True):
        fit(model, opt, 3)
        saved = get_optimizer_state_dict(model, opt)
        assert saved["param_groups"][0]["params"][0] == "0.weight"
        fresh = type(opt)(model.parameters(), lr=0.01)
        set_optimizer_state_dict(model, fresh, copy.deepcopy(saved))
        fit(model, fresh, 3)
    assert_same_parameters(*models)


def test_moved_parameters_are_saved_loaded_and_moved_where_they_are(tmp_path: Any) -> None:
    p = torch.ones(3, requires_grad=True)
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    p.data = torch.zeros(3)
    fastgd.save(tmp_path / "opt.npz", opt)
    np.testing.assert_array_equal(opt.parameters()[0], np.zeros(3, np.float32))
    p.data = torch.full((3,), 5.0)
    fastgd.load(tmp_path / "opt.npz", opt)
    assert torch.equal(p, torch.zeros(3))
    z = torch.ones(3, requires_grad=True)
    sf = ft.ScheduleFreeSGD([z], lr=0.1)
    sf.train()
    z.grad = torch.ones(3)
    sf.step()
    z.data = z.data.clone()
    sf.eval()
    reference = fastgd.ScheduleFreeSGD([torch.ones(3)], lr=0.1)
    reference.train()
    reference.step([torch.ones(3)])
    reference.eval()
    torch.testing.assert_close(z.detach(), torch.from_numpy(reference.parameters()[0]))


def test_master_copy_left_behind_by_another_optimizer_is_renewed() -> None:
    """A master copy that no longer rounds to its parameter (the parameter stepped by
    torch.optim meanwhile, or with master_weights off) starts again from the parameter."""
    p = torch.randn(16).bfloat16().requires_grad_()
    ours = ft.AdamW([p], lr=0.1, master_weights=True)
    theirs = torch.optim.AdamW([p], lr=0.1)
    for opt in (ours, theirs, ours):
        opt.load_state_dict(copy.deepcopy((theirs if opt is ours else ours).state_dict()))
        for _ in range(5):
            before = p.detach().float()
            p.grad = torch.ones(16, dtype=torch.bfloat16)
            opt.step()
            step = (p.detach().float() - before).abs()
            assert (step < 0.2).all() and (step > 0.02).all()  # (about lr: no jump back)
    ours.param_groups[0]["master_weights"] = False
    p.grad = torch.ones(16, dtype=torch.bfloat16)
    ours.step()
    assert "master_param" not in ours.state[p]
    ours.param_groups[0]["master_weights"] = True
    before = p.detach().float()
    ours.step()
    assert ((p.detach().float() - before).abs() < 0.2).all()


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_a_schedule_free_group_added_while_training_trains(name: str) -> None:
    for module in (fastgd, ft):
        a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
        opt = getattr(module, name)([a])
        opt.train()
        opt.add_param_group({"params": [b]})
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
        assert b.abs().max() > 0


def test_checkpoint_of_a_tensor_lr_and_of_scheduler_options(tmp_path: Any) -> None:
    """``fastgd.save`` keeps a tensor ``lr`` as its number and the options torch's
    schedulers add to the groups; ``fastgd.load`` restores them."""
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=torch.tensor(0.1), momentum=0.9)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)
    fit(model, opt, 2)
    fastgd.save(tmp_path / "opt.npz", opt)
    fresh = ft.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fastgd.load(tmp_path / "opt.npz", fresh)
    assert fresh.param_groups[0]["max_lr"] == 0.5
    assert fresh.param_groups[0]["lr"] == pytest.approx(float(opt.param_groups[0]["lr"]))


def test_groups_regrouped_or_grown_by_hand_load_and_step_like_torch() -> None:
    """Changes to the groups' params lists reach every method, not only ``step``."""
    start = [torch.randn(3, dtype=torch.float64) for _ in range(3)]
    saved = torch.optim.Adam([{"params": [t.clone().requires_grad_() for t in start]}], lr=0.1)
    for i, t in enumerate(saved.param_groups[0]["params"]):
        t.grad = torch.full((3,), float(i + 1), dtype=torch.float64)
    saved.step()
    sd = saved.state_dict()
    results = []
    for cls in (torch.optim.Adam, ft.Adam):
        a, b, c = (t.clone().requires_grad_() for t in start)
        opt = cls([{"params": [a, c]}], lr=0.1)
        opt.param_groups[0]["params"].insert(1, b)  # (by hand, before the load)
        opt.load_state_dict(copy.deepcopy(sd))
        assert set(opt.state) == {a, b, c}
        group = opt.param_groups[0]  # (the same parameters, in two groups now)
        opt.param_groups[:] = [{**group, "params": [a, b]}, {**group, "params": [c], "lr": 0.5}]
        for t in (a, b, c):
            t.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        results.append([a, b, c])
    assert_same_parameters(*results)
    assert len(opt.parameters()) == 3


def test_a_refused_step_leaves_the_state_as_it_was() -> None:
    p1 = torch.zeros(4, requires_grad=True)
    p2 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    for cls in (ft.Adam, fastgd.Adam):
        opt = cls([p1, p2], lr=0.1)
        state = opt.state[p2] if cls is ft.Adam else opt.state.setdefault(1, {})
        state.update(step=1, exp_avg=torch.zeros(4), exp_avg_sq=torch.zeros(4))
        p1.grad, p2.grad = torch.ones(4), torch.ones(4, dtype=torch.float64)
        with pytest.raises(TypeError, match=r"state\[1\]"):
            opt.step()
        first = opt.state.get(p1 if cls is ft.Adam else 0)
        assert not first and not p1.any()
        state.clear()
        opt.step()
        assert (p1 < 0).all()
        p1.data.zero_()


def test_options_changed_in_place_inside_a_tuple() -> None:
    models = [mlp(), mlp()]
    for model, cls in zip(models, (torch.optim.Adam, ft.Adam), strict=True):
        betas = tuple(torch.tensor(b, dtype=torch.float64) for b in (0.9, 0.999))
        opt = cls(model.parameters(), lr=0.01, betas=betas)
        fit(model, opt, 6, before=lambda t, b=betas: b[0].fill_(0.9 - 0.1 * t))
    assert_same_parameters(*models)


def test_an_idle_parameters_stale_master_copy_is_renewed_when_it_steps() -> None:
    p, q = (torch.randn(16).bfloat16().requires_grad_() for _ in range(2))
    ours = ft.AdamW([p, q], lr=0.1, master_weights=True)
    theirs = torch.optim.AdamW([p, q], lr=0.1)
    p.grad, q.grad = torch.ones(16, dtype=torch.bfloat16), torch.ones(16, dtype=torch.bfloat16)
    for opt in (ours, theirs):
        opt.load_state_dict(copy.deepcopy((theirs if opt is ours else ours).state_dict()))
        for _ in range(3):
            opt.step()
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    grad = q.grad
    q.grad = None
    ours.step()  # (q idle)
    q.grad, before = grad, q.detach().float()
    ours.step()
    assert ((q.detach().float() - before).abs() < 0.2).all()


def test_torch_1x_sgd_dicts_and_ids_as_arrays_load() -> None:
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=0.1)
    sd = {"state": {i: {"momentum_buffer": None} for i in range(4)},
          "param_groups": [{"lr": 0.05, "momentum": 0, "dampening": 0, "weight_decay": 0,
                            "nesterov": False, "params": np.arange(4)}]}
    opt.load_state_dict(sd)
    assert dict(opt.state) == {} and opt.param_groups[0]["lr"] == 0.05


def test_schedule_free_eval_renews_a_master_copy_left_behind() -> None:
    p = torch.zeros(8).bfloat16().requires_grad_()
    opt = ft.ScheduleFreeAdamW([p], lr=0.01, master_weights=True)
    opt.train()
    for _ in range(3):
        p.grad = torch.ones(8, dtype=torch.bfloat16)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    p.data.fill_(5.0)  # (changed without the optimizer)
    opt.load_state_dict(sd)
    opt.eval()
    assert ((p.float() - 5.0).abs() < 1.0).all()  # (x = (y - (1 - beta) z) / beta, from y = 5)
