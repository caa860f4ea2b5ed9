"""``fastgd.torch`` in torch's ecosystem, against the same code with ``torch.optim``.

* Every ``torch.optim.lr_scheduler`` scheduler (and ``swa_utils.SWALR``) drives a
  ``fastgd.torch`` optimizer to the same learning rates, momenta and parameters.
* ``torch.amp.GradScaler`` skips the same steps (Inf/NaN gradients) and keeps the same scale,
  with ``unscale_`` and ``clip_grad_norm_`` between; a ``torch.compile``d model trains the
  same.
* State dicts move both ways between ``torch.optim`` and ``fastgd.torch`` (and the NumPy
  face, and ``fastgd.save`` checkpoints), and training continues as it would have.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from cases import ALL_NAMES, full_case, random_hyperparameters
from test_torch_parity import TORCH_DTYPES, same_accumulator, torch_default_dtype
from torch_models import assert_same_parameters, backward, batches, fit, mlp

import fastgd

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastgd.torch")
lr_scheduler = torch.optim.lr_scheduler

STEPS = 12


def groups(model: Any) -> list[dict[str, Any]]:
    """Two parameter groups, the second at half the learning rate."""
    return [{"params": list(model[0].parameters())},
            {"params": list(model[2].parameters()), "lr": 5e-3}]


# -- LR schedulers ---------------------------------------------------------------------------------

SCHEDULERS: dict[str, Callable[[Any], Any]] = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.95 ** e),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.9),
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5, 8], gamma=0.3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=6),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
            lr_scheduler.ExponentialLR(o, gamma=0.8)], milestones=[3]),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=1e-4),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=4),
         lr_scheduler.ExponentialLR(o, gamma=0.9)]),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=2e-2, step_size_up=3,
                                                mode="triangular2"),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=4, T_mult=2, eta_min=1e-4),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=[5e-2, 2e-2],
                                                    total_steps=STEPS),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=8, power=2.0),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=2e-3, anneal_epochs=4),
}
#: plateaus and improvements, for ReduceLROnPlateau
METRICS = [1.0, 0.9, 0.9, 0.9, 0.95, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7]
OPTIMIZERS = {
    "SGD": {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "AdamW": {"lr": 1e-2, "weight_decay": 1e-2},
    "RMSprop": {"lr": 1e-2, "momentum": 0.5, "centered": True},
    "NAdam": {"lr": 1e-2, "decoupled_weight_decay": True, "weight_decay": 1e-2},
}


def test_every_torch_scheduler_is_covered() -> None:
    assert set(lr_scheduler.__all__) - {"LRScheduler"} <= set(SCHEDULERS)


def train_with_scheduler(cls: type, options: dict[str, Any], scheduler: str
                         ) -> tuple[list[Any], list[Any]]:
    """Train :func:`mlp` for :data:`STEPS` steps, stepping the scheduler after each; the
    learning rate (and momentum options) of each group at each step, and the parameters."""
    model = mlp()
    opt = cls(groups(model), **options)
    sched = SCHEDULERS[scheduler](opt)
    seen = []

    def after(t: int) -> None:  # (the scheduler's step after the optimizer's)
        if t:
            sched.step(METRICS[t - 1]) if scheduler == "ReduceLROnPlateau" else sched.step()
            seen.append([{k: g[k] for k in ("lr", "momentum", "betas") if k in g}
                         for g in opt.param_groups])

    fit(model, opt, STEPS, before=after)
    after(STEPS)
    return seen, list(model.parameters())


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_scheduler_drives_the_same_learning_rates_and_parameters(scheduler: str,
                                                                 optimizer: str) -> None:
    options = OPTIMIZERS[optimizer]
    with torch_default_dtype(np.float64):  # (torch's scalar state: NAdam's mu_product)
        expected, params = train_with_scheduler(getattr(torch.optim, optimizer), options,
                                                scheduler)
        seen, ours = train_with_scheduler(getattr(ft, optimizer), options, scheduler)
    assert seen == expected
    assert len({str(s) for s in seen}) > 1  # (the scheduler changed something)
    assert_same_parameters(ours, params)


def test_scheduler_state_and_optimizer_state_resume_together() -> None:
    def run(cls: type, stop: int = STEPS, resume: Any = None) -> Any:
        model = mlp()
        opt = cls(groups(model), lr=1e-2, weight_decay=1e-2)
        sched = lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=STEPS)
        data, start = batches(), 0
        if resume is not None:
            model.load_state_dict(resume[0])
            sched.load_state_dict(resume[2])
            opt.load_state_dict(resume[1])  # (after the scheduler, as torch says)
            start = resume[3]
        for t in range(stop):
            batch = next(data)
            if t >= start:
                opt.zero_grad()
                backward(model, batch)
                opt.step()
                sched.step()
        return model, opt, sched

    torch_model, _, _ = run(torch.optim.AdamW)
    model, opt, sched = run(ft.AdamW, stop=5)
    saved = (model.state_dict(), opt.state_dict(), sched.state_dict(), 5)
    # (a state dict holds the optimizer's tensors, which the optimizer loading it may keep)
    torch_resumed, _, _ = run(torch.optim.AdamW, resume=copy.deepcopy(saved))
    ours, _, _ = run(ft.AdamW, resume=copy.deepcopy(saved))
    assert_same_parameters(ours, torch_model)
    assert_same_parameters(torch_resumed, torch_model)


# -- AMP, clipping, torch.compile ------------------------------------------------------------------

INF_STEPS = {2, 5, 6}


def train_with_scaler(cls: type, clip: bool) -> tuple[list[float], Any, list[Any]]:
    """Mixed-precision training (bfloat16 autocast, float32 parameters) with a GradScaler;
    the loss is Inf on :data:`INF_STEPS`, whose steps the scaler must skip."""
    model = mlp(dtype=torch.float32)
    opt = cls(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    scales, data = [], batches(torch.float32)
    for t in range(STEPS):
        x, y = next(data)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        if t in INF_STEPS:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, opt.state[model[0].weight]["step"], list(model.parameters())


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "unscale+clip"])
def test_grad_scaler_skips_the_same_steps(clip: bool) -> None:
    scales, steps, params = train_with_scaler(torch.optim.AdamW, clip)
    our_scales, our_steps, ours = train_with_scaler(ft.AdamW, clip)
    assert our_scales == scales and len(set(scales)) > 1
    assert our_steps == int(steps) == STEPS - len(INF_STEPS)
    assert_same_parameters(ours, params, rtol=1e-5, atol=1e-6)


def test_clip_grad_norm_then_step() -> None:
    models = [mlp(), mlp()]
    for model, cls in zip(models, (torch.optim.SGD, ft.SGD), strict=True):
        opt = cls(model.parameters(), lr=0.1, momentum=0.9)
        def clip(opt: Any, args: Any, kwargs: Any, model: Any = model) -> None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)

        opt.register_step_pre_hook(clip)  # (between backward and step)
        fit(model, opt, STEPS)
    assert_same_parameters(*models)


def test_compiled_model_trains_as_the_eager_model_with_torch_optim() -> None:
    models = [mlp(), mlp()]
    fit(models[0], torch.optim.Adam(models[0].parameters(), lr=1e-2), 5)
    fit(models[1], ft.Adam(models[1].parameters(), lr=1e-2), 5,
        forward=torch.compile(models[1]))
    assert_same_parameters(*models, rtol=1e-9, atol=1e-11)


def test_compiled_training_step_with_the_optimizer_step_inside() -> None:
    """The optimizer's step inside a ``torch.compile``d function runs as it is (it is not
    traced)."""
    results = []
    for cls, compiled in ((torch.optim.Adam, False), (ft.Adam, True)):
        model = mlp()
        opt = cls(model.parameters(), lr=1e-2)
        batch = next(batches())

        def train_step(model: Any = model, opt: Any = opt, batch: Any = batch) -> Any:
            opt.zero_grad()
            loss = backward(model, batch)
            opt.step()
            return loss

        step = torch.compile(train_step) if compiled else train_step
        results.append(([step().item() for _ in range(5)], model))
    (losses, theirs), (ours, model) = results
    np.testing.assert_allclose(ours, losses, rtol=1e-12)
    assert_same_parameters(model, theirs)


# -- state dicts, both ways ------------------------------------------------------------------------

TORCH_NAMES = [name for name in ALL_NAMES if hasattr(torch.optim, name)]
K, N = 6, 20
RTOL = {np.float32: 1e-4, np.float64: 1e-8}


@contextmanager
def torch_muon_in_the_matrix_dtype() -> Iterator[None]:
    """torch's Muon with its Newton-Schulz products in the parameter's dtype (torch runs
    them in bfloat16), as fastgd computes them."""
    from torch.optim import _muon

    from fastgd.bench import torch_newton_schulz

    original = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = torch_newton_schulz
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


def shapes(name: str) -> list[tuple[int, ...]]:
    return [(5, 3), (3, 4), (2, 9), (7, 1)] if name == "Muon" else [(5,), (3, 4), (), (7,)]


def options(name: str, rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    hp0 = random_hyperparameters(name, full_case(name), rng)
    return hp0, same_accumulator(name, hp0, random_hyperparameters(name, (), rng))


def train(opt: Any, tensors: list[Any], rng: np.random.Generator, steps: int) -> None:
    dtype = tensors[0].dtype
    for _ in range(steps):
        for t in tensors:
            t.grad = torch.tensor(rng.standard_normal(tuple(t.shape)), dtype=dtype)
        opt.step()


def assert_same(ours: Any, theirs: Any, mine: list[Any], others: list[Any],
                rtol: float) -> None:
    for i, (a, b) in enumerate(zip(mine, others, strict=True)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol, msg=f"params[{i}]")
        state, expected = ours.state[a], theirs.state[b]
        for key, value in expected.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1 or key != "step":
                torch.testing.assert_close(torch.as_tensor(state[key]).to(value.dtype), value,
                                           rtol=rtol, atol=rtol, msg=f"state[{i}][{key!r}]")
            elif type(theirs).__name__ not in ("SGD", "Muon"):  # (they count no steps)
                assert state[key] == int(value), (i, key)


DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TORCH_NAMES)
def test_state_dicts_move_both_ways_and_training_continues(name: str, dtype: Any,
                                                           request: pytest.FixtureRequest
                                                           ) -> None:
    rng = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
    hp0, hp1 = options(name, rng)
    with torch_default_dtype(dtype), torch_muon_in_the_matrix_dtype():
        def tensors() -> list[Any]:
            return [torch.tensor(rng.standard_normal(s), dtype=TORCH_DTYPES[dtype],
                                 requires_grad=True) for s in shapes(name)]

        def build(cls: type, params: list[Any], hp0: dict[str, Any] = hp0,
                  hp1: dict[str, Any] = hp1) -> Any:
            return cls([{"params": params[:2]}, {"params": params[2:], **hp1}], **hp0)

        # torch -> fastgd.torch
        theirs_params = tensors()
        theirs = build(getattr(torch.optim, name), theirs_params)
        train(theirs, theirs_params, rng, K)
        mine = [t.detach().clone().requires_grad_() for t in theirs_params]
        ours = build(getattr(ft, name), mine, {}, {})
        ours.load_state_dict(theirs.state_dict())
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        seed = int(rng.integers(2**31))
        train(ours, mine, np.random.default_rng(seed), N)
        train(theirs, theirs_params, np.random.default_rng(seed), N)
        assert_same(ours, theirs, mine, theirs_params, RTOL[dtype])
        # fastgd.torch -> torch (from the run above, continued)
        twins = [t.detach().clone().requires_grad_() for t in mine]
        back = build(getattr(torch.optim, name), twins, {}, {})
        back.load_state_dict(copy.deepcopy(ours.state_dict()))  # (ours goes on too)
        seed = int(rng.integers(2**31))
        train(ours, mine, np.random.default_rng(seed), N)
        train(back, twins, np.random.default_rng(seed), N)
        assert_same(ours, back, mine, twins, RTOL[dtype])


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion", "Adafactor", "ScheduleFreeAdamW"])
def test_numpy_face_dicts_and_checkpoints_move_both_ways(name: str, tmp_path: Any) -> None:
    """A NumPy-face optimizer's state dict and checkpoint load into ``fastgd.torch``'s and
    back, bit for bit."""
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(9,), (4, 6)]]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in values]
             for _ in range(8)]
    arrays = [v.copy() for v in values]
    numpy_face = getattr(fastgd, name)(arrays, lr=1e-2)
    tensors = [torch.from_numpy(v.copy()).requires_grad_() for v in values]
    ours = getattr(ft, name)(tensors, lr=1e-2)
    if name.startswith("ScheduleFree"):
        numpy_face.train()
        ours.train()

    def step(opt: Any, t: int) -> None:
        if opt is numpy_face:
            opt.step(grads[t])
            return
        for tensor, g in zip(tensors, grads[t], strict=True):
            tensor.grad = torch.from_numpy(g)
        opt.step()

    for t in range(4):
        step(numpy_face, t)
    ours.load_state_dict(numpy_face.state_dict())
    for tensor, a in zip(tensors, arrays, strict=True):
        tensor.detach().copy_(torch.from_numpy(a))
    step(ours, 4)
    fastgd.save(tmp_path / "ours.npz", ours)
    numpy_face.load_state_dict(ours.state_dict())
    for tensor, a in zip(tensors, arrays, strict=True):
        a[...] = tensor.detach().numpy()
    step(numpy_face, 5)
    fastgd.load(tmp_path / "ours.npz", ours)  # (back to after step 5: step 6 again)
    step(ours, 5)
    for t in (6, 7):
        step(ours, t)
        step(numpy_face, t)
    for tensor, a in zip(tensors, arrays, strict=True):
        np.testing.assert_array_equal(tensor.detach().numpy(), a)
