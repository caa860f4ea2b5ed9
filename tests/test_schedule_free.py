"""Schedule-Free's modes: the parameter holds ``y`` while training and ``x`` after
``.eval()``; a new optimizer is in eval mode; a step in eval mode is an error; checkpoints
resume in the mode they were saved in. (The steps themselves are tested with every other
algorithm, against ``reference.py`` and against the ``schedulefree`` package.)"""

from __future__ import annotations

from typing import Any

import cases
import ml_dtypes
import numpy as np
import pytest
from reference import REFERENCES
from test_reference import assert_close, seeded_rng

import fastgd
import fastgd.functional as F
from fastgd.algorithms import ALGORITHMS

NAMES = ["ScheduleFreeAdamW", "ScheduleFreeSGD"]
SHAPES = [(0,), (1,), (7,), (33, 5), (40_000,)]  # (the last above the parallel crossover)
BF16 = np.dtype(ml_dtypes.bfloat16)


def beta(name: str, hp: dict[str, Any]) -> float:
    return ALGORITHMS[name].schedule_free(ALGORITHMS[name].check({**ALGORITHMS[name].defaults,
                                                                  **hp}))


def params_of(rng: np.random.Generator, dtype: Any = np.float64) -> list[np.ndarray]:
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params[3] = np.asfortranarray(params[3])
    return params


def grad_like(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal(p.shape).astype(p.dtype)
    return np.asfortranarray(g) if p.ndim > 1 and p.flags.f_contiguous else g


def trained(name: str, hp: dict[str, Any], params: list[np.ndarray], rng: np.random.Generator,
            steps: int = 12, **options: Any) -> fastgd.Optimizer:
    opt = getattr(fastgd, name)(params, **hp, **options)
    opt.train()
    for _ in range(steps):
        opt.step([grad_like(p, rng) for p in params])
    return opt


@pytest.mark.parametrize("name", NAMES)
def test_a_new_optimizer_is_in_eval_mode_where_a_step_is_refused(name):
    p = np.ones(5)
    opt = getattr(fastgd, name)([p])
    assert opt.param_groups[0]["train_mode"] is False
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        opt.step([np.ones(5)])
    assert opt.state == {} and np.all(p == 1.0)
    opt.train()
    opt.step([np.ones(5)])
    opt.step([np.arange(5.0)])  # (after the first step y = z = x)
    before = p.copy()
    opt.eval()
    moved = p.copy()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step([np.ones(5)])
    assert opt.state[0]["step"] == 2 and np.array_equal(p, moved) and not np.array_equal(
        p, before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_eval_puts_x_in_the_parameter_and_train_puts_y_back(name, dtype, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay",), rng)
    params = params_of(rng, dtype)
    opt = trained(name, hp, params, rng)
    y = [p.copy() for p in params]
    b = beta(name, hp)
    rtol = 1e-13 if dtype == np.float64 else 2e-6
    opt.eval()
    for i, p in enumerate(params):
        z = opt.state[i]["z"].astype(np.float64)
        expected = (y[i].astype(np.float64) - (1.0 - b) * z) / b
        assert_close(p, expected, rtol, f"x of params[{i}]", np.abs(z).max(initial=0.0))
    x = [p.copy() for p in params]
    opt.eval()  # (already in eval mode: nothing moves)
    assert all(np.array_equal(a, c) for a, c in zip(params, x, strict=True))
    opt.train()
    for i, p in enumerate(params):
        assert_close(p, y[i], rtol, f"y of params[{i}]", np.abs(x[i]).max(initial=0.0))
    assert all(g["train_mode"] for g in opt.param_groups)


@pytest.mark.parametrize("name", NAMES)
def test_x_is_the_average_of_the_references_iterates(name, request):
    """The reference's ``x`` (``(y - (1 - beta) z) / beta``) after a run is what eval shows."""
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay", "warmup_steps"), rng)
    p0 = rng.standard_normal(1025)
    p, ref, expected = p0.copy(), REFERENCES[name](**hp), p0.copy()
    opt = getattr(fastgd, name)([p], **hp)
    opt.train()
    for _ in range(30):
        g = rng.standard_normal(1025)
        opt.step([g])
        expected = ref.step(expected, g)
    opt.eval()
    assert_close(p, ref.x(expected), 1e-10, "x", ref.peak["param"])


def test_each_group_moves_with_its_own_beta_and_parameters_without_z_stay():
    rng = np.random.default_rng(0)
    a, b, idle = (rng.standard_normal(50) for _ in range(3))
    opt = fastgd.ScheduleFreeAdamW([{"params": [a]}, {"params": [b, idle], "betas": (0.5, 0.9)}])
    opt.train()
    opt.step([rng.standard_normal(50), rng.standard_normal(50), None])
    ya, yb, before = a.copy(), b.copy(), idle.copy()
    opt.eval()
    np.testing.assert_allclose(a, (ya - 0.1 * opt.state[0]["z"]) / 0.9, rtol=1e-12)
    np.testing.assert_allclose(b, (yb - 0.5 * opt.state[1]["z"]) / 0.5, rtol=1e-12)
    assert np.array_equal(idle, before) and 2 not in opt.state


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_in_either_mode_resumes_bit_identically(name, mode, tmp_path, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay", "warmup_steps"), rng)
    params = params_of(rng)
    opt = trained(name, hp, params, rng, steps=7)
    if mode == "eval":
        opt.eval()
    fastgd.save(tmp_path / "ckpt.npz", opt)
    restored = [np.zeros_like(p, order="K") for p in params]
    again = getattr(fastgd, name)(restored, **hp)
    fastgd.load(tmp_path / "ckpt.npz", again)
    assert again.param_groups[0]["train_mode"] == (mode == "train")
    grads = [[grad_like(p, rng) for p in params] for _ in range(6)]
    for run in (opt, again):
        if mode == "eval":
            run.train()
        for g in grads:
            run.step(g)
        run.eval()
    for i, (a, b) in enumerate(zip(params, restored, strict=True)):
        assert np.array_equal(a, b), f"params[{i}]"
        assert np.array_equal(opt.state[i]["z"], again.state[i]["z"]), f"z of params[{i}]"


@pytest.mark.parametrize("name", NAMES)
def test_the_functional_steps_and_points_equal_the_class(name, request):
    rng = seeded_rng(request)
    hp = cases.random_hyperparameters(name, ("weight_decay", "warmup_steps"), rng)
    p0 = rng.standard_normal((9, 13)).astype(np.float32)
    mine, theirs = p0.copy(), p0.copy()
    opt = getattr(fastgd, name)([mine], **hp)
    opt.train()
    runner = cases.FunctionalRunner(name, hp, theirs, rng)
    assert np.array_equal(runner.states["z"], p0)  # (z starts as the parameter)
    for _ in range(9):
        g = rng.standard_normal(p0.shape).astype(np.float32)
        opt.step([g])
        runner.step(g)
    opt.eval()
    F.schedule_free_eval(theirs, runner.states["z"], beta=beta(name, hp))
    assert np.array_equal(mine, theirs)
    opt.train()
    F.schedule_free_train(theirs, runner.states["z"], beta=beta(name, hp))
    assert np.array_equal(mine, theirs)
    assert runner.scalars == {k: opt.state[0][k] for k in ("lr_max", "weight_sum")}


def test_the_functional_points_refuse_bad_input_untouched():
    p, z = np.arange(6.0), np.ones(6)
    for kwargs, error, words in [
            (dict(param=p, z=z, beta=0.0), ValueError, "beta"),
            (dict(param=p, z=z, beta=1.5), ValueError, "beta"),
            (dict(param=p, z=z.astype(np.float32), beta=0.9), TypeError, "z"),
            (dict(param=p, z=np.ones(5), beta=0.9), ValueError, "z"),
            (dict(param=p, z=p[::-1], beta=0.9), ValueError, "z"),
            (dict(param=p.astype(int), z=z, beta=0.9), TypeError, "param")]:
        with pytest.raises(error, match=words):
            F.schedule_free_eval(**kwargs)
        assert np.array_equal(p, np.arange(6.0)) and np.all(z == 1.0)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "bfloat16+master"])
def test_low_precision_parameters_move_in_float32(fmt):
    """The point is computed in float32 (from the master copy, if any) and rounded into
    the parameter; the master copy holds it unrounded."""
    rng = np.random.default_rng(1)
    dtype = np.float16 if fmt == "float16" else BF16
    master = fmt.endswith("master")
    p = rng.standard_normal(1000).astype(dtype)
    opt = trained("ScheduleFreeAdamW", {"lr": 0.01}, [p], rng, master_weights=master)
    y = opt.state[0]["master_param"].copy() if master else p.astype(np.float32)
    opt.eval()
    z = opt.state[0]["z"]
    assert z.dtype == np.float32
    x = y + np.float32(1.0 - 1.0 / 0.9) * (z - y)
    np.testing.assert_allclose(p.astype(np.float32), x.astype(dtype).astype(np.float32),
                               rtol=0, atol=np.float32(2e-7) * np.abs(x).max())
    if master:
        np.testing.assert_allclose(opt.state[0]["master_param"], x, rtol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_z_stays_at_full_precision_with_low_precision_state(precision):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(5000).astype(np.float32)
    opt = trained("ScheduleFreeAdamW", {"lr": 0.01}, [p], rng, state_precision=precision,
                  min_8bit_size=256)
    assert opt.state[0]["z"].dtype == np.float32
    assert opt.state[0]["exp_avg_sq"].dtype == (BF16 if precision == "bf16" else np.uint8)
    y = p.copy()
    opt.eval()
    opt.train()
    np.testing.assert_allclose(p, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["yes", None, 0.5])
def test_a_bad_train_mode_is_refused(bad):
    with pytest.raises(TypeError, match="train_mode"):
        fastgd.ScheduleFreeSGD([{"params": [np.ones(3)], "train_mode": bad}])
    opt = fastgd.ScheduleFreeSGD([np.ones(3)])
    sd = opt.state_dict()
    sd["param_groups"][0]["train_mode"] = bad
    with pytest.raises(TypeError, match="train_mode"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["train_mode"] is False


def test_eval_moves_the_master_copy_only_while_the_group_keeps_one():
    """With ``master_weights`` turned off, steps stop updating the master copy: the points
    are then those of the parameter itself."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(300).astype(BF16)
    opt = trained("ScheduleFreeSGD", {"lr": 0.05}, [p], rng, steps=1, master_weights=True)
    opt.param_groups[0]["master_weights"] = False
    for _ in range(5):
        opt.step([grad_like(p, rng)])
    y = p.copy()
    opt.eval()
    opt.train()
    np.testing.assert_allclose(p.astype(np.float32), y.astype(np.float32), rtol=2**-7)


def test_a_malformed_state_dict_is_refused_with_a_value_error():
    opt = fastgd.ScheduleFreeAdamW([np.ones(3)])
    groups = [{"params": [0], "k": 1, "lr_max": 0.1, "weight_sum": 0.01}]
    for bad in ({"param_groups": groups}, {"param_groups": groups, "state": {}, "x": 1}):
        with pytest.raises(ValueError, match="state_dict"):
            opt.load_state_dict(bad)
