"""Adafactor's factored state (parameters of two or more dimensions): against
``torch.optim.Adafactor`` (its single-tensor and foreach paths) and the NumPy reference.

Vectors (full ``variance``) run through every generic test with the other algorithms; these
tests cover what only matrices and higher-dimensional parameters have: the row and column
factors, their shapes in state dicts and checkpoints, layouts, and the functional face's
factor arguments.
"""

from __future__ import annotations

import cases
import numpy as np
import pytest
from cases import relative, run_against_reference
from reference import AdafactorRef

import fastgd
import fastgd.functional as F

TOL = {np.float64: 1e-8, np.float32: 1e-4}
SHAPES = [(5,), (4, 3), (2, 3, 4), (), (6, 1), (1, 6), (33, 70), (2, 2, 3, 5), (0, 3),
          (3, 0)]
#: torch's own test inputs of Adafactor (torch/testing/_internal/common_optimizers.py)
TORCH_INPUTS = [{}, {"weight_decay": 0.1, "lr": 0.01}, {"weight_decay": 0.1, "maximize": True},
                {"beta2_decay": -1.0}, {"d": 1.5}]


def random_options(rng: np.random.Generator) -> dict:
    return dict(lr=float(rng.uniform(1e-3, 0.5)), beta2_decay=float(rng.uniform(-1.0, -0.5)),
                eps=(None if rng.integers(2) else float(10 ** rng.uniform(-30, -20)),
                     float(10 ** rng.uniform(-4, -2))),
                d=float(rng.uniform(1.0, 2.0)),
                weight_decay=float(rng.choice([0.0, rng.uniform(0.01, 0.3)])),
                maximize=bool(rng.integers(2)))


def run_against_torch(torch, shapes, options, dtype, rng, steps=40, foreach=False):
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    theirs = [torch.tensor(p.copy()) for p in params]
    ours = fastgd.Adafactor(params, **options)
    torch_opt = torch.optim.Adafactor(theirs, foreach=foreach, **options)
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ours.step(grads)
        for t, g in zip(theirs, grads, strict=True):
            t.grad = torch.tensor(g)
        torch_opt.step()
    return params, theirs, ours, torch_opt


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_matches_torch_on_random_configurations(dtype, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(200 + seed)
    options = random_options(rng) if seed else {}
    shapes = [s for s in SHAPES if 0 not in s]
    params, theirs, ours, torch_opt = run_against_torch(torch, shapes, options, dtype, rng,
                                                        foreach=bool(seed % 2))
    for i, (p, t) in enumerate(zip(params, theirs, strict=True)):
        assert relative(p, t.numpy()) <= TOL[dtype], (shapes[i], options)
        for key, value in torch_opt.state[t].items():
            if key != "step" and value is not None:
                assert ours.state[i][key].shape == tuple(value.shape), key
                assert relative(ours.state[i][key], value.numpy()) <= TOL[dtype], key


@pytest.mark.parametrize("options", TORCH_INPUTS)
def test_torch_test_inputs(options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    params, theirs, _, _ = run_against_torch(torch, [(7, 9), (2, 5, 4), (6,)], options,
                                             np.float64, rng, steps=15)
    for p, t in zip(params, theirs, strict=True):
        assert relative(p, t.numpy()) <= 1e-12


def test_empty_parameters_step():
    """(torch divides by their size: ``ZeroDivisionError``.) Here they do not move, and the
    means over their empty rows or columns are NaN, as the formulas say."""
    params = [np.zeros((0, 3)), np.zeros((3, 0)), np.ones((2, 2))]
    opt = fastgd.Adafactor(params)
    opt.step([np.zeros((0, 3)), np.zeros((3, 0)), np.ones((2, 2))])
    assert np.isnan(opt.state[0]["col_var"]).all() and opt.state[0]["row_var"].shape == (0, 1)
    assert np.isnan(opt.state[1]["row_var"]).all() and opt.state[1]["col_var"].shape == (1, 0)
    assert np.isfinite(params[2]).all() and (params[2] < 1).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(9, 13), (13, 9), (3, 5, 7), (2, 3, 4, 5), (1, 1), (40, 1)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_layouts_match_the_reference(dtype, shape, order):
    rng = np.random.default_rng(sum(shape))
    p, opt, ref, expected = run_against_reference("Adafactor", random_options(rng), shape,
                                                  dtype, order, rng)
    assert relative(p, expected) <= 3 * TOL[dtype]
    for key in ("row_var", "col_var"):
        assert relative(opt.state[0][key], ref.state[key]) <= TOL[dtype]
    assert p.flags[f"{order}_CONTIGUOUS"]


def test_the_functional_api_takes_the_factors():
    rng = np.random.default_rng(23)
    p = rng.standard_normal((6, 10))
    q = p.copy()
    rows, cols = np.zeros((6, 1)), np.zeros((1, 10))
    opt = fastgd.Adafactor([p], lr=0.05, weight_decay=0.1)
    for t in range(1, 6):
        g = rng.standard_normal(p.shape)
        opt.step([g])
        F.adafactor(q, g, row_var=rows, col_var=cols, step=t, lr=0.05, weight_decay=0.1)
    np.testing.assert_array_equal(q, p)
    np.testing.assert_array_equal(rows, opt.state[0]["row_var"])
    with pytest.raises(ValueError, match="variance must be None"):
        F.adafactor(q, g, np.zeros_like(q), rows, cols, step=6)
    with pytest.raises(ValueError, match="col_var is required"):
        F.adafactor(q, g, row_var=rows, step=6)
    with pytest.raises(ValueError, match="row_var must be None"):
        F.adafactor(np.ones(3), np.ones(3), np.zeros(3), row_var=rows, step=1)
    with pytest.raises(ValueError, match="col_var"):
        F.adafactor(q, g, row_var=rows, col_var=np.zeros((1, 9)), step=6)
    both = np.zeros(16)
    with pytest.raises(ValueError, match="share memory"):
        F.adafactor(q, g, row_var=both[:6].reshape(6, 1), col_var=both[5:15].reshape(1, 10),
                    step=6)
    inside = np.zeros(64)
    inside[:60] = g.reshape(-1)
    with pytest.raises(ValueError, match="share memory"):  # (a factor inside the gradient)
        F.adafactor(q, inside[:60].reshape(6, 10), row_var=inside[55:61].reshape(6, 1),
                    col_var=cols, step=6)
    np.testing.assert_array_equal(q, p)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
@pytest.mark.parametrize("master", [False, True])
def test_low_precision_parameters(low, master):
    import ml_dtypes

    dtype = np.float16 if low == "float16" else ml_dtypes.bfloat16
    rng = np.random.default_rng(24)
    p = rng.standard_normal((16, 24)).astype(dtype)
    ref, expected = AdafactorRef(lr=0.02), p.astype(np.float64)
    opt = fastgd.Adafactor([p], lr=0.02, master_weights=master)
    for _ in range(8):
        g = rng.standard_normal(p.shape).astype(dtype)
        opt.step([g])
        expected = ref.step(expected.astype(dtype), g.astype(np.float64)) if not master \
            else ref.step(expected, g.astype(np.float64))
    assert p.dtype == dtype and opt.state[0]["row_var"].dtype == np.float32
    tol = 2e-3 if low == "float16" else 2e-2
    assert relative(p.astype(np.float64), expected) <= tol


def test_bfloat16_state_keeps_the_factors_at_full_precision():
    rng = np.random.default_rng(28)
    shapes = [(20, 30), (50,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    twins = [p.copy() for p in params]
    low = fastgd.Adafactor(params, state_precision="bf16", stochastic_rounding=True)
    full = fastgd.Adafactor(twins)
    for _ in range(10):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        low.step(grads)
        full.step(grads)
    assert low.state[0]["row_var"].dtype == np.float32
    assert str(low.state[1]["variance"].dtype) == "bfloat16"
    np.testing.assert_array_equal(params[0], twins[0])  # (factors: the same computation)
    assert relative(params[1], twins[1]) <= 1e-2
    with pytest.raises(ValueError, match="8-bit"):
        fastgd.Adafactor(params, state_precision="8bit")


def test_many_tensors_clipping_skip_and_schedules():
    cases.check_clipping_skip_and_schedule("Adafactor", [(8, 3), (4,), (2, 5, 6)],
                                           np.random.default_rng(25))


def test_state_dicts_move_between_fastgd_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(26)
    shapes = [(7, 10), (5,), (2, 3, 4)]
    params = [rng.standard_normal(s) for s in shapes]
    theirs = [torch.tensor(p.copy()) for p in params]
    ours, torch_opt = fastgd.Adafactor(params), torch.optim.Adafactor(theirs)
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(8)]
    for gs in grads[:4]:
        ours.step(gs)
    for p, t in zip(params, theirs, strict=True):
        t.copy_(torch.tensor(p))
    saved = ours.state_dict()
    torch_opt.load_state_dict({"state": {i: {k: torch.tensor(np.asarray(v, np.float64))
                                             for k, v in entry.items()}
                                         for i, entry in saved["state"].items()},
                               "param_groups": torch_opt.state_dict()["param_groups"]})
    for gs in grads[4:]:
        ours.step(gs)
        for t, g in zip(theirs, gs, strict=True):
            t.grad = torch.tensor(g)
        torch_opt.step()
    for p, t in zip(params, theirs, strict=True):
        assert relative(p, t.numpy()) <= 1e-12
    again = fastgd.Adafactor([t.numpy().copy() for t in theirs])
    again.load_state_dict(torch_opt.state_dict())
    assert again.state[0]["row_var"].shape == (7, 1)
    bad = ours.state_dict()
    bad["state"][0]["row_var"] = np.zeros((7, 2))
    with pytest.raises(ValueError, match="row_var"):
        again.load_state_dict(bad)
    bad = ours.state_dict()
    bad["state"][0]["variance"] = np.zeros((7, 10))
    with pytest.raises(ValueError, match="variance"):
        again.load_state_dict(bad)


def test_checkpoints_resume_bit_for_bit(tmp_path):
    rng = np.random.default_rng(27)
    shapes = [(9, 4), (3,), (2, 2, 5)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    straight = [p.copy() for p in params]
    opt = fastgd.Adafactor(straight)
    for gs in grads:
        opt.step(gs)
    first = fastgd.Adafactor(params)
    for gs in grads[:3]:
        first.step(gs)
    fastgd.save(tmp_path / "adafactor.ckpt", first)
    resumed_params = [np.zeros_like(p) for p in params]
    resumed = fastgd.Adafactor(resumed_params)
    fastgd.load(tmp_path / "adafactor.ckpt", resumed)
    for gs in grads[3:]:
        resumed.step(gs)
    for p, q in zip(resumed_params, straight, strict=True):
        np.testing.assert_array_equal(p, q)


def test_a_bad_gradient_or_state_changes_nothing():
    p, q = np.ones((3, 4)), np.ones((4, 4))
    opt = fastgd.Adafactor([p, q])
    with pytest.raises(ValueError, match="grads\\[1\\]"):
        opt.step([np.ones((3, 4)), np.ones((4, 5))])
    opt.step([np.ones((3, 4)), np.ones((4, 4))])
    before = [p.copy(), q.copy(), opt.state[0]["row_var"].copy()]
    opt.state[1]["col_var"] = np.zeros((1, 3))
    with pytest.raises(ValueError, match="col_var"):
        opt.step([np.ones((3, 4)), np.ones((4, 4))])
    for now, then in zip([p, q, opt.state[0]["row_var"]], before, strict=True):
        np.testing.assert_array_equal(now, then)
    opt.state[1]["col_var"] = np.zeros((1, 4))
    opt.state[0]["row_var"] = p.reshape(-1)[:3].reshape(3, 1)  # (inside its parameter)
    with pytest.raises(ValueError, match="row_var.*shares memory"):
        opt.step([np.ones((3, 4)), np.ones((4, 4))])
    np.testing.assert_array_equal(q, before[1])
