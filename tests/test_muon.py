"""Muon: an optimizer of matrices (2-D parameters only), so not in the generic tests' table.

Against ``torch.optim.Muon`` (its Newton–Schulz function replaced by one in the parameters'
dtype: torch runs it in bfloat16, which no float64 comparison survives, and fastgd in the
dtype of the computation) and against the NumPy reference ``MuonRef``; every shared feature
of the classes: many matrices in one step, clipping, non-finite skip, schedules, float16 and
bfloat16 parameters, bfloat16 state, state dicts both ways with torch, checkpoints, layouts
and bad input.
"""

from __future__ import annotations

import math

import cases
import numpy as np
import pytest
from cases import relative, run_against_reference
from reference import MuonRef

import fastgd
import fastgd.functional as F
from fastgd import orthogonalize
from fastgd.algorithms import MUON
from fastgd.bench import torch_newton_schulz

TOL = {np.float64: 1e-8, np.float32: 1e-4}
#: torch's own test inputs of Muon (torch/testing/_internal/common_optimizers.py)
TORCH_INPUTS = [{}, {"lr": 0.01}, {"weight_decay": 0.2}, {"momentum": 0.8}, {"ns_steps": 6},
                {"ns_coefficients": (3.4, -4.7, 2.0)}]
SHAPES = [(4, 6), (8, 3), (5, 5), (1, 7), (7, 1), (33, 65), (70, 20)]


def random_options(rng: np.random.Generator) -> dict:
    a, b, c = rng.uniform(3.3, 3.5), rng.uniform(-4.8, -4.6), rng.uniform(1.9, 2.1)
    return dict(lr=float(rng.uniform(5e-3, 5e-2)),
                weight_decay=float(rng.choice([0.0, rng.uniform(0.01, 0.3)])),
                momentum=float(rng.uniform(0.3, 0.99)), nesterov=bool(rng.integers(2)),
                ns_coefficients=(a, b, c), eps=float(10 ** rng.uniform(-9, -6)),
                ns_steps=int(rng.integers(3, 8)),
                adjust_lr_fn=[None, "original", "match_rms_adamw"][rng.integers(3)])


@pytest.fixture
def torch_same_dtype_ns(monkeypatch):
    """torch.optim.Muon with its Newton–Schulz iterations in the matrix's own dtype."""
    torch = pytest.importorskip("torch")
    from torch.optim import _muon

    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz", torch_newton_schulz)
    return torch


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_matches_torch_on_random_configurations(torch_same_dtype_ns, dtype, seed):
    torch = torch_same_dtype_ns
    rng = np.random.default_rng(100 + seed)
    options = random_options(rng) if seed else {}
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), 3, replace=False)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    theirs = [torch.tensor(p.copy()) for p in params]
    ours = fastgd.Muon(params, **options)
    torch_opt = torch.optim.Muon(theirs, **options)
    for _ in range(40):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ours.step(grads)
        for t, g in zip(theirs, grads, strict=True):
            t.grad = torch.tensor(g)
        torch_opt.step()
    for i, (p, t) in enumerate(zip(params, theirs, strict=True)):
        assert relative(p, t.numpy()) <= TOL[dtype], (shapes[i], options)
        assert relative(ours.state[i]["momentum_buffer"],
                        torch_opt.state[t]["momentum_buffer"].numpy()) <= TOL[dtype]


@pytest.mark.parametrize("options", TORCH_INPUTS + [{"nesterov": False}, {"momentum": 0.0},
                                                    {"adjust_lr_fn": "match_rms_adamw"}])
def test_torch_test_inputs(torch_same_dtype_ns, options):
    torch = torch_same_dtype_ns
    rng = np.random.default_rng(7)
    p = rng.standard_normal((6, 9))
    t = torch.tensor(p.copy())
    ours, theirs = fastgd.Muon([p], **options), torch.optim.Muon([t], **options)
    for _ in range(10):
        g = rng.standard_normal(p.shape)
        ours.step([g])
        t.grad = torch.tensor(g)
        theirs.step()
    assert relative(p, t.numpy()) <= 1e-12


def test_a_tensor_learning_rate_as_torch():
    torch = pytest.importorskip("torch")
    p = np.ones((3, 4))
    fastgd.Muon([p], lr=torch.tensor(0.001)).step([np.full((3, 4), 0.5)])
    assert np.isfinite(p).all() and (p < 1).all()


def test_close_to_torch_as_shipped():
    """torch's own Newton–Schulz runs in bfloat16: the parameters stay within its rounding."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p = rng.standard_normal((48, 80)).astype(np.float32)
    t = torch.tensor(p.copy())
    ours, theirs = fastgd.Muon([p], lr=0.02), torch.optim.Muon([t], lr=0.02)
    start = p.copy()
    for _ in range(5):
        g = rng.standard_normal(p.shape).astype(np.float32)
        ours.step([g])
        t.grad = torch.tensor(g)
        theirs.step()
    moved = np.abs(t.numpy() - start).max()
    assert np.abs(p - t.numpy()).max() <= 0.05 * moved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (9, 9), (40, 130), (130, 40),
                                   (300, 300)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_matches_the_numpy_reference(dtype, shape, order):
    rng = np.random.default_rng(sum(shape))
    p, opt, ref, expected = run_against_reference("Muon", random_options(rng), shape, dtype,
                                                  order, rng)
    assert relative(p, expected) <= 3 * TOL[dtype]
    assert relative(opt.state[0]["momentum_buffer"], ref.state["momentum_buffer"]) <= TOL[dtype]
    assert p.flags[f"{order}_CONTIGUOUS"]


def test_the_functional_api_is_the_class():
    rng = np.random.default_rng(4)
    p = rng.standard_normal((12, 5))
    q, buf = p.copy(), np.zeros_like(p)
    opt = fastgd.Muon([p], lr=0.03, weight_decay=0.05)
    for _ in range(5):
        g = rng.standard_normal(p.shape)
        opt.step([g])
        F.muon(q, g, buf, lr=0.03, weight_decay=0.05)
    np.testing.assert_array_equal(q, p)
    np.testing.assert_array_equal(buf, opt.state[0]["momentum_buffer"])


def test_empty_matrices_step():
    params = [np.zeros((0, 5)), np.zeros((5, 0)), np.ones((2, 3))]
    opt = fastgd.Muon(params)
    opt.step([np.zeros((0, 5)), np.zeros((5, 0)), np.ones((2, 3))])
    assert opt.state[1]["momentum_buffer"].shape == (5, 0) and (params[2] < 1).all()
    F.muon(np.zeros((5, 0)), np.zeros((5, 0)), np.zeros((5, 0)))


def test_many_tensors_clipping_skip_and_schedules():
    cases.check_clipping_skip_and_schedule("Muon", [(8, 3), (5, 11)], np.random.default_rng(5))


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
@pytest.mark.parametrize("master", [False, True])
def test_low_precision_parameters(low, master):
    import ml_dtypes

    dtype = np.float16 if low == "float16" else ml_dtypes.bfloat16
    rng = np.random.default_rng(6)
    p32 = rng.standard_normal((16, 24)).astype(np.float32)
    p = p32.astype(dtype)
    ref, expected = MuonRef(lr=0.02), p.astype(np.float64)
    opt = fastgd.Muon([p], lr=0.02, master_weights=master)
    for _ in range(8):
        g = rng.standard_normal(p.shape).astype(dtype)
        opt.step([g])
        expected = ref.step(expected, g.astype(np.float64))
    assert p.dtype == dtype
    tol = 1e-2 if low == "float16" else 5e-2
    assert relative(p.astype(np.float64), expected) <= tol


def test_bfloat16_state():
    rng = np.random.default_rng(8)
    p = rng.standard_normal((20, 30)).astype(np.float32)
    q = p.copy()
    low = fastgd.Muon([p], lr=0.02, state_precision="bf16")
    full = fastgd.Muon([q], lr=0.02)
    for _ in range(10):
        g = rng.standard_normal(p.shape).astype(np.float32)
        low.step([g])
        full.step([g])
    assert str(low.state[0]["momentum_buffer"].dtype) == "bfloat16"
    assert relative(p, q) <= 1e-2
    with pytest.raises(ValueError, match="8-bit"):
        fastgd.Muon([p], state_precision="8bit")


def test_state_dicts_move_between_fastgd_and_torch(torch_same_dtype_ns):
    torch = torch_same_dtype_ns
    rng = np.random.default_rng(9)
    p = rng.standard_normal((7, 10))
    t = torch.tensor(p.copy())
    ours, theirs = fastgd.Muon([p], lr=0.02), torch.optim.Muon([t], lr=0.02)
    grads = [rng.standard_normal(p.shape) for _ in range(8)]
    for g in grads[:4]:
        ours.step([g])
    # fastgd -> torch, and torch continues as fastgd does
    t.copy_(torch.tensor(p))
    theirs.load_state_dict({"state": {0: {k: torch.tensor(np.asarray(v)) for k, v in
                                          ours.state_dict()["state"][0].items()}},
                            "param_groups": theirs.state_dict()["param_groups"]})
    for g in grads[4:]:
        ours.step([g])
        t.grad = torch.tensor(g)
        theirs.step()
    assert relative(p, t.numpy()) <= 1e-12
    # torch -> fastgd
    q = t.numpy().copy()
    again = fastgd.Muon([q], lr=0.02)
    again.load_state_dict(theirs.state_dict())
    g = rng.standard_normal(p.shape)
    again.step([g])
    t.grad = torch.tensor(g)
    theirs.step()
    assert relative(q, t.numpy()) <= 1e-12


def test_a_state_dict_made_by_torch_loads(torch_same_dtype_ns):
    """torch's Muon counts no steps and its groups name no implementation options."""
    torch = torch_same_dtype_ns
    rng = np.random.default_rng(15)
    t = torch.tensor(rng.standard_normal((4, 6)))
    theirs = torch.optim.Muon([t], lr=0.02)
    t.grad = torch.tensor(rng.standard_normal((4, 6)))
    theirs.step()
    assert "step" not in theirs.state[t]
    p = t.numpy().copy()
    ours = fastgd.Muon([p], lr=0.02)
    ours.load_state_dict(theirs.state_dict())
    g = rng.standard_normal((4, 6))
    ours.step([g])
    t.grad = torch.tensor(g)
    theirs.step()
    assert relative(p, t.numpy()) <= 1e-12


def test_checkpoints_resume_bit_for_bit(tmp_path):
    rng = np.random.default_rng(10)
    p = rng.standard_normal((9, 4)).astype(np.float32)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for _ in range(6)]
    straight = p.copy()
    opt = fastgd.Muon([straight], lr=0.02)
    for g in grads:
        opt.step([g])
    first = fastgd.Muon([p], lr=0.02)
    for g in grads[:3]:
        first.step([g])
    fastgd.save(tmp_path / "muon.ckpt", first)
    q = np.zeros_like(p)
    resumed = fastgd.Muon([q], lr=0.02)
    fastgd.load(tmp_path / "muon.ckpt", resumed)
    for g in grads[3:]:
        resumed.step([g])
    np.testing.assert_array_equal(q, straight)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_only_matrices(shape):
    p = np.ones(shape)
    with pytest.raises(ValueError, match="2D parameters"):
        fastgd.Muon([p])
    opt = fastgd.Muon([np.ones((2, 2))])
    with pytest.raises(ValueError, match="2D parameters"):
        opt.add_param_group({"params": [p]})
    with pytest.raises(ValueError, match="2D parameters"):
        F.muon(p, np.ones(shape), np.zeros(shape))
    np.testing.assert_array_equal(p, np.ones(shape))


@pytest.mark.parametrize(("options", "error", "names"), [
    ({"adjust_lr_fn": "arbitrary"}, ValueError, "adjust_lr_fn"),
    ({"adjust_lr_fn": 1}, TypeError, "adjust_lr_fn"),
    ({"ns_steps": 100}, ValueError, "ns_steps"),
    ({"ns_steps": 2.5}, TypeError, "ns_steps"),
    ({"ns_coefficients": (3.4, -4.7)}, TypeError, "ns_coefficients"),
    ({"ns_coefficients": (3.4, float("nan"), 2.0)}, ValueError, "ns_b"),
    ({"momentum": -0.1}, ValueError, "momentum"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"lr": -1.0}, ValueError, "lr"),
    ({"eps": -1.0}, ValueError, "eps"),
])
def test_bad_hyperparameters(options, error, names):
    p = np.ones((3, 3))
    with pytest.raises(error, match=names):
        fastgd.Muon([p], **options)
    buf = np.zeros((3, 3))
    keywords = F.keywords(MUON, options)  # (empty: no such functional arguments)
    if keywords:
        with pytest.raises(error, match=names):
            F.muon(p, np.ones((3, 3)), buf, **keywords)
    np.testing.assert_array_equal(p, np.ones((3, 3)))
    np.testing.assert_array_equal(buf, np.zeros((3, 3)))


def test_a_bad_gradient_changes_nothing():
    p, q = np.ones((3, 4)), np.ones((4, 4))
    opt = fastgd.Muon([p, q])
    with pytest.raises(ValueError, match="grads\\[1\\]"):
        opt.step([np.ones((3, 4)), np.ones((4, 5))])
    np.testing.assert_array_equal(p, np.ones((3, 4)))
    assert opt.state == {} or all(s.get("step", 0) == 0 for s in opt.state.values())


def test_newton_schulz_orthogonalises():
    """Its fixed point: the singular values of the result lie near 1 (within the band the
    quintic's coefficients leave, about 0.7 to 1.2)."""
    rng = np.random.default_rng(11)
    for shape in [(30, 50), (50, 30)]:
        d = rng.standard_normal(shape)
        o = orthogonalize.newton_schulz(d, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        s = np.linalg.svd(o, compute_uv=False)
        assert o.shape == shape and 0.6 < s.min() and s.max() < 1.25
        np.testing.assert_allclose(o, MuonRef.orthogonalize(d, (3.4445, -4.7750, 2.0315), 5,
                                                            1e-7), atol=1e-12)


def test_adjusted_learning_rates():
    assert orthogonalize.adjusted_lr(0.1, (8, 2), None) == pytest.approx(0.2)
    assert orthogonalize.adjusted_lr(0.1, (2, 8), "original") == pytest.approx(0.1)
    assert orthogonalize.adjusted_lr(0.1, (2, 8), "match_rms_adamw") == pytest.approx(
        0.1 * 0.2 * math.sqrt(8))
