"""float16 / bfloat16 parameters: read and written in place, float32 state and arithmetic."""

import cases
import numpy as np
import pytest

import fastgd
from fastgd import cpu

ml_dtypes = pytest.importorskip("ml_dtypes")
LOW = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
#: Every algorithm, with every switch on.
CONFIGS = [(cases.optimizer_class(name), cases.example(name)) for name in cases.NAMES]


def rounded(x, dtype):
    return x.astype(dtype).astype(np.float32)


@pytest.fixture(params=[64, 10**9], ids=["parallel", "serial"])
def threshold(request, monkeypatch):
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", request.param)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("cls, options", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
@pytest.mark.parametrize("master", [False, True])
def test_matches_float32_with_rounding(cls, options, dtype, master, threshold):
    """Low precision = the float32 rule on the widened values, the result rounded to nearest
    even; with master weights, the float32 trajectory itself (the param is its rounding)."""
    rng = np.random.default_rng(0)
    sizes = (1, 7, 300, 1025)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    reference = [p.astype(np.float32) for p in params]
    opt = cls(params, master_weights=master, **options)
    ref = cls(reference, **options)
    for _ in range(6):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        opt.step(grads)
        ref.step([g.astype(np.float32) for g in grads])
        if not master:
            for r in reference:
                r[...] = rounded(r, dtype)
    for i, (p, r) in enumerate(zip(params, reference, strict=True)):
        assert p.dtype == dtype
        np.testing.assert_array_equal(p.astype(np.float32), rounded(r, dtype))
        if master:
            np.testing.assert_array_equal(opt.state[i]["master_param"], r)
        for key, value in ref.state[i].items():
            if isinstance(value, np.ndarray):
                assert opt.state[i][key].dtype == np.float32
                np.testing.assert_array_equal(opt.state[i][key], value)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_trains_a_small_problem_like_float32(dtype):
    """Least squares: float16/bfloat16 weights with master weights reach float32's loss."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 16)).astype(np.float32)
    w_true = rng.standard_normal(16).astype(np.float32)
    y = x @ w_true

    def train(w, **options):
        opt = fastgd.Adam([w], lr=0.05, **options)
        for _ in range(300):
            w32 = w.astype(np.float32)
            grad = x.T @ (x @ w32 - y) / len(y)
            opt.step([grad.astype(w.dtype)])
        w32 = w.astype(np.float32)
        return float(np.mean((x @ w32 - y) ** 2) / 2)

    loss32 = train(np.zeros(16, np.float32))
    loss_low = train(np.zeros(16, dtype), master_weights=True)
    scale = float(np.mean(y**2))
    assert loss32 < 1e-4 * scale
    assert loss_low < 1e-2 * scale   # within the parameter format's rounding


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_torch_low_precision_tensors_in_place(dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float16 if dtype == np.float16 else torch.bfloat16
    t = torch.linspace(-1, 1, 50, dtype=tdtype)
    start = t.float().numpy().copy()
    opt = fastgd.SGD([t], lr=0.25)
    opt.step([torch.ones(50, dtype=tdtype)])
    np.testing.assert_array_equal(t.float().numpy(),
                                  rounded(start - np.float32(0.25), dtype))


def test_clipping_and_checkpoint_with_low_precision(tmp_path):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(50).astype(np.float16),
              rng.standard_normal(20).astype(ml_dtypes.bfloat16)]
    grads = [[(10 * rng.standard_normal(p.shape)).astype(p.dtype) for p in params]
             for _ in range(6)]
    straight = [p.copy() for p in params]
    opt = fastgd.Adam(straight, master_weights=True)
    for g in grads:
        info = opt.step(g, max_norm=1.0)
    expected = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in grads[-1]))
    assert info.grad_norm == pytest.approx(expected, rel=1e-6)

    resumed = [p.copy() for p in params]
    opt = fastgd.Adam(resumed, master_weights=True)
    for g in grads[:3]:
        opt.step(g, max_norm=1.0)
    fastgd.save(tmp_path / "c.npz", opt)
    again = [np.zeros_like(p) for p in params]
    opt2 = fastgd.Adam(again, master_weights=True)
    fastgd.load(tmp_path / "c.npz", opt2)
    for g in grads[3:]:
        opt2.step(g, max_norm=1.0)
    for a, b in zip(straight, again, strict=True):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_low_precision_inputs_are_checked():
    p = np.zeros(4, np.float16)
    with pytest.raises(TypeError, match="exp_avg"):
        fastgd.functional.adam(p, np.zeros(4, np.float16), np.zeros(4, np.float16),
                               np.zeros(4, np.float32), step=1)
    with pytest.raises(TypeError, match="grad"):
        fastgd.functional.adam(p, np.zeros(4, np.float32), np.zeros(4, np.float32),
                               np.zeros(4, np.float32), step=1)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    fastgd.functional.adam(p, np.ones(4, np.float16), m, v, step=1, lr=0.5)
    np.testing.assert_array_equal(p, np.full(4, -0.5, np.float16))
