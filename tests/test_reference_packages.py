"""fastgd's optimizers beyond torch.optim against the packages that define them (the
``refs`` extra; each test is skipped without its package): optax with JAX's float64
(``jax_enable_x64``), the paper's own torch implementations where they are on PyPI
(``torch-adopt``, ``lion-pytorch``) and the ``schedulefree`` package. 40+ steps, random
hyperparameters and shapes, float64 within 1e-8 and float32 within 1e-4 relative (to the
largest magnitude the value took), each reference running in the same dtype (a float32 Lion
step and a float64 one take different signs where the interpolated momentum is within
rounding of zero, about once in 10**7 elements: compared like with like, both round alike).

apple/ml-ademamix and sail-sg/Adan are not packaged: their formulas are in
``reference.py`` (``AdEMAMixRef``, ``AdanRef``), which ``test_reference.py`` runs against
every kernel; here AdEMAMix also meets optax's, and Adan optax's first step (optax 0.2.8
weights the gradient change by ``1 - b2`` where sail-sg and the paper use ``b2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cases
import numpy as np
import pytest
from reference import REFERENCES, ademamix_alpha, ademamix_beta3
from test_reference import assert_close, seeded_rng

import fastgd

STEPS = 40
SHAPES = [(7,), (33, 5), (1025,), ()]
RTOL = {np.float64: 1e-8, np.float32: 1e-4}


@pytest.fixture(scope="module")
def optax() -> Any:
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    return optax


def run_both(name: str, options: dict[str, Any], dtype: Any, rng: np.random.Generator,
             reference: Callable[[list[np.ndarray]], Callable[[list[np.ndarray]], list[Any]]],
             steps: int = STEPS) -> None:
    """Step fastgd's ``name`` and a reference (``reference(params)`` returns a function
    from gradients to the new parameters) on the same random gradients; compare every step
    (as ``test_reference.assert_close`` does, Lion's rare sign flips included)."""
    jump = REFERENCES[name](**options).jump()
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    mine = [p.copy() for p in params]
    opt = getattr(fastgd, name)(mine, **options)
    step = reference([p.copy() for p in params])
    peak = [np.abs(p).max(initial=0.0) for p in params]
    for t in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        opt.step(grads)
        theirs = step([g.copy() for g in grads])
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            b = np.asarray(b, dtype=np.float64)
            peak[i] = max(peak[i], np.abs(b).max(initial=0.0))
            assert_close(a, b, RTOL[dtype], f"{name} step {t + 1}, params[{i}]", peak[i],
                         jump)


def optax_stepper(optax: Any, transform: Any) -> Callable[[list[np.ndarray]], Any]:
    import jax.numpy as jnp

    def start(params: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[Any]]:
        state = {"params": [jnp.asarray(p) for p in params]}
        state["opt"] = transform.init(state["params"])

        def step(grads: list[np.ndarray]) -> list[Any]:
            updates, state["opt"] = transform.update([jnp.asarray(g) for g in grads],
                                                     state["opt"], state["params"])
            state["params"] = optax.apply_updates(state["params"], updates)
            return [np.asarray(p) for p in state["params"]]

        return step

    return start


def torch_stepper(cls: Any, **options: Any) -> Callable[[list[np.ndarray]], Any]:
    import torch

    def start(params: list[np.ndarray]) -> Callable[[list[np.ndarray]], list[Any]]:
        tensors = [torch.nn.Parameter(torch.tensor(p)) for p in params]
        opt = cls(tensors, **options)

        def step(grads: list[np.ndarray]) -> list[Any]:
            for t, g in zip(tensors, grads, strict=True):
                t.grad = torch.tensor(g)
            opt.step()
            return [t.detach().numpy().copy() for t in tensors]

        return step

    return start


DTYPES = [np.float64, np.float32]


#: optax's transformation of an algorithm that takes betas and weight decay, from its
#: hyperparameters
OPTAX_WITH_DECAY = {
    "Lion": lambda optax, hp: optax.lion(hp["lr"], b1=hp["betas"][0], b2=hp["betas"][1],
                                         weight_decay=hp["weight_decay"]),
    "LAMB": lambda optax, hp: optax.lamb(hp["lr"], b1=hp["betas"][0], b2=hp["betas"][1],
                                         eps=hp["eps"], weight_decay=hp["weight_decay"]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("name", list(OPTAX_WITH_DECAY))
def test_equals_optax_with_and_without_weight_decay(optax, name, dtype, decay, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay",) if decay else (), rng)
    run_both(name, hp, dtype, rng, optax_stepper(optax, OPTAX_WITH_DECAY[name](optax, hp)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lion_equals_lion_pytorch(dtype, request):
    pytest.importorskip("torch")
    lion_pytorch = pytest.importorskip("lion_pytorch")
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("Lion", ("weight_decay",), rng)
    run_both("Lion", hp, dtype, rng, torch_stepper(
        lion_pytorch.Lion, lr=hp["lr"], betas=hp["betas"], weight_decay=hp["weight_decay"]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on", [(), ("weight_decay",), ("weight_decay", "decouple")],
                         ids=["plain", "l2", "decoupled"])
def test_adopt_equals_the_official_implementation(dtype, on, request):
    pytest.importorskip("torch")
    adopt = pytest.importorskip("adopt")
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("ADOPT", on, rng)
    # (its single-tensor path: the foreach one rounds the clip value to float32)
    run_both("ADOPT", hp, dtype, rng, torch_stepper(
        adopt.ADOPT, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
        weight_decay=hp["weight_decay"], decouple=hp["decouple"], foreach=False))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adopt_equals_optax_without_weight_decay(optax, dtype, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("ADOPT", (), rng)
    b1, b2 = hp["betas"]
    run_both("ADOPT", hp, dtype, rng, optax_stepper(optax, optax.contrib.adopt(
        hp["lr"], b1=b1, b2=b2, eps=hp["eps"])))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on", [(), ("weight_decay", "beta3_warmup", "alpha_warmup")],
                         ids=["plain", "warmups"])
def test_ademamix_equals_optax(optax, dtype, on, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("AdEMAMix", on, rng)
    b1, b2, b3 = hp["betas"]
    # optax's schedules get its 0-based count (a concrete one: the update is not jitted
    # here); apple's warmups the 1-based step
    alpha = (lambda c: ademamix_alpha(int(c) + 1, hp["alpha"], hp["alpha_warmup"])) \
        if hp["alpha_warmup"] else hp["alpha"]
    beta3 = (lambda c: ademamix_beta3(int(c) + 1, b3, b1, hp["beta3_warmup"])) \
        if hp["beta3_warmup"] else b3
    transform = optax.contrib.ademamix(hp["lr"], b1=b1, b2=b2, b3=beta3, alpha=alpha,
                                       eps=hp["eps"], weight_decay=hp["weight_decay"])
    run_both("AdEMAMix", hp, dtype, rng, optax_stepper(optax, transform))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("no_prox", [False, True])
def test_adan_first_step_equals_optax(optax, dtype, no_prox, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("Adan", ("no_prox",) if no_prox else (), rng)
    b1, b2, b3 = hp["betas"]
    run_both("Adan", hp, dtype, rng, optax_stepper(optax, optax.adan(
        hp["lr"], b1=b1, b2=b2, b3=b3, eps=hp["eps"], eps_root=0.0)), steps=1)


@pytest.mark.xfail(strict=True, reason="optax 0.2.8's adan weights the gradient change by "
                   "1 - b2 where sail-sg/Adan and the paper use b2 (optax PR #1715)")
def test_adan_later_steps_equal_optax(optax, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("Adan", (), rng)
    b1, b2, b3 = hp["betas"]
    run_both("Adan", hp, np.float64, rng, optax_stepper(optax, optax.adan(
        hp["lr"], b1=b1, b2=b2, b3=b3, eps=hp["eps"], eps_root=0.0)), steps=3)


#: fastgd's Schedule-Free classes and the ``schedulefree`` package's
SCHEDULE_FREE = {"ScheduleFreeAdamW": "AdamWScheduleFree", "ScheduleFreeSGD": "SGDScheduleFree"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on", [(), ("weight_decay", "warmup_steps")], ids=["plain", "decay"])
@pytest.mark.parametrize("name", list(SCHEDULE_FREE))
def test_schedule_free_equals_the_package(name, on, dtype, request):
    """Steps, ``eval()`` (x compared) and ``train()`` again every 15 steps, the state (z,
    exp_avg_sq) and the step's scalars against ``schedulefree``'s single-tensor path."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, on, rng)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    mine = [p.copy() for p in params]
    opt = getattr(fastgd, name)(mine, **hp)
    tensors = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    ref = getattr(schedulefree, SCHEDULE_FREE[name])(
        tensors, foreach=False, **{k: v for k, v in hp.items() if k != "maximize"})
    opt.train()
    ref.train()
    peak = {}

    def compare(what: str, ours: Any, theirs: Any) -> None:
        theirs = theirs.detach().numpy().astype(np.float64)
        peak[what] = max(peak.get(what, 0.0), float(np.abs(theirs).max(initial=0.0)))
        assert_close(ours, theirs, RTOL[dtype], what, peak[what])

    for t in range(1, STEPS + 6):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        opt.step(grads)
        for tensor, g in zip(tensors, grads, strict=True):
            tensor.grad = torch.tensor(g)  # (the package overwrites it)
        ref.step()
        moved = t % 15 == 0
        if moved:
            opt.eval()
            ref.eval()
        for i, tensor in enumerate(tensors):
            compare(f"step {t}{' eval' if moved else ''}, params[{i}]", mine[i], tensor)
            for key, value in ref.state[tensor].items():
                compare(f"step {t}, state[{i}][{key!r}]", opt.state[i][key], value)
            assert opt.state[i]["step"] == ref.param_groups[0]["k"] == t
            assert opt.state[i]["lr_max"] == ref.param_groups[0]["lr_max"]
            np.testing.assert_allclose(opt.state[i]["weight_sum"],
                                       ref.param_groups[0]["weight_sum"], rtol=1e-15)
        if moved:
            opt.train()
            ref.train()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(SCHEDULE_FREE))
def test_schedule_free_loads_the_packages_state_dict(name, mode, request):
    """A run of the package, saved in either mode, continues in fastgd as in the package."""
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay", "warmup_steps"), rng)
    options = {k: v for k, v in hp.items() if k != "maximize"}
    tensors = [torch.nn.Parameter(torch.tensor(rng.standard_normal(s))) for s in SHAPES]
    ref = getattr(schedulefree, SCHEDULE_FREE[name])(tensors, foreach=False, **options)
    ref.train()
    for _ in range(8):
        for tensor in tensors:
            tensor.grad = torch.tensor(rng.standard_normal(tensor.shape))
        ref.step()
    getattr(ref, mode)()
    mine = [t.detach().numpy().copy() for t in tensors]
    opt = getattr(fastgd, name)(mine, **options)
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["train_mode"] == (mode == "train")
    ref.train()
    opt.train()
    for _ in range(8):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for tensor, g in zip(tensors, grads, strict=True):
            tensor.grad = torch.tensor(g)
        ref.step()
        opt.step(grads)
    ref.eval()
    opt.eval()
    for i, tensor in enumerate(tensors):
        assert_close(mine[i], tensor.detach().numpy(), RTOL[np.float64], f"params[{i}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on", [(), ("weight_decay", "eps", "nesterov")], ids=["plain", "all"])
def test_lars_equals_optax(optax, dtype, on, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters("LARS", on, rng)
    run_both("LARS", hp, dtype, rng, optax_stepper(optax, optax.lars(
        hp["lr"], weight_decay=hp["weight_decay"], trust_coefficient=hp["trust_coefficient"],
        eps=hp["eps"], momentum=hp["momentum"], nesterov=hp["nesterov"])))


@pytest.mark.parametrize("name", ["LAMB", "LARS"])
def test_trust_ratio_is_one_for_a_zero_tensor_as_in_optax(optax, name):
    """A zero parameter (a bias initialised to 0) or a zero update takes the plain step."""
    import jax.numpy as jnp

    params = [np.zeros(5), np.ones(4)]
    grads = [np.arange(5.0), np.zeros(4)]
    mine = [p.copy() for p in params]
    getattr(fastgd, name)(mine, lr=0.1).step(grads)
    transform = optax.lamb(0.1) if name == "LAMB" else optax.lars(0.1)
    theirs = [jnp.asarray(p) for p in params]
    updates, _ = transform.update([jnp.asarray(g) for g in grads], transform.init(theirs),
                                  theirs)
    for a, b in zip(mine, optax.apply_updates(theirs, updates), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-12, atol=1e-15)
    assert np.any(mine[0] != 0.0)
