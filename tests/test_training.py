"""Training-loop features of the optimizer classes: schedules as lr, many-tensor steps."""

import cases
import numpy as np
import pytest

import fastgd
import fastgd.functional as F
from fastgd import cpu
from fastgd import schedules as S

#: Every algorithm, with every switch on.
CONFIGS = [(cases.optimizer_class(name), cases.example(name)) for name in cases.NAMES]
IDS = cases.NAMES

SCHEDULES = [
    S.inverse_sqrt(0.1),
    S.linear_warmup(0.0, 0.05, 4, then=S.cosine(0.05, 10, min_lr=0.001)),
    S.join([S.constant(0.02), S.exponential(0.02, 0.9)], [5]),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("cls, options", CONFIGS, ids=IDS)
def test_schedule_equals_setting_lr_by_hand(cls, options, schedule):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(50)
    q = p.copy()
    options = {k: v for k, v in options.items() if k != "lr"}
    scheduled, manual = cls([p], lr=schedule, **options), cls([q], lr=schedule(1), **options)
    for t in range(1, 21):
        g = rng.standard_normal(50)
        manual.lr = schedule(t)
        scheduled.step([g])
        manual.step([g])
    np.testing.assert_array_equal(p, q)
    assert scheduled.lr is schedule


def test_schedule_is_checked_at_construction():
    with pytest.raises(ValueError, match="lr"):
        fastgd.Adam([np.zeros(3)], lr=lambda t: -1.0)


@pytest.mark.parametrize("threshold", [64, 10**9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, options", CONFIGS, ids=IDS)
def test_many_tensor_step_equals_one_call_per_tensor(cls, options, dtype, threshold,
                                                     monkeypatch):
    monkeypatch.setattr(cpu, "PARALLEL_THRESHOLD", threshold)
    rng = np.random.default_rng(5)
    sizes = [0, 1, 7, 16384 + 3, 40000, 1025, 3]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    params += [np.asfortranarray(rng.standard_normal((9, 11)).astype(dtype)),
               np.array(0.3, dtype)]
    # unaligned views: every tensor starts at a different offset modulo 64 bytes
    buffer = rng.standard_normal(5000).astype(dtype)
    params += [buffer[1:1001], buffer[1003:4003]]
    twins = [np.array(p, order="K") for p in params]
    opt, reference = cls(params, **options), [cls([t], **options) for t in twins]
    for _ in range(4):
        grads = [np.array(rng.standard_normal(p.shape).astype(dtype), order="K")
                 for p in params]
        grads = [np.asfortranarray(g) if p.flags.f_contiguous and not p.flags.c_contiguous
                 else g for g, p in zip(grads, params, strict=True)]
        opt.step(grads)
        for r, g in zip(reference, grads, strict=True):
            r.step([g])
    for p, t in zip(params, twins, strict=True):
        np.testing.assert_array_equal(p, t)


def test_many_tensor_step_matches_functional_adam():
    rng = np.random.default_rng(6)
    params = [rng.standard_normal(n).astype(np.float32) for n in (70000, 5, 33000)]
    copies = [p.copy() for p in params]
    states = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    opt = fastgd.Adam(params, lr=0.01)
    for t in range(1, 4):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        opt.step(grads)
        for c, g, (m, v) in zip(copies, grads, states, strict=True):
            F.adam(c, g, m, v, step=t, lr=0.01)
    for p, c in zip(params, copies, strict=True):
        np.testing.assert_array_equal(p, c)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_matches_torch_clip_grad_norm(max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(n) for n in (10, 40000, 3)]
    tparams = [torch.nn.Parameter(torch.tensor(p)) for p in params]
    opt, topt = fastgd.Adam(params, lr=0.01), torch.optim.Adam(tparams, lr=0.01)
    for _ in range(10):
        grads = [3 * rng.standard_normal(p.shape) for p in params]
        kept = [g.copy() for g in grads]
        info = opt.step(grads, max_norm=max_norm)
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.tensor(g)
        norm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        topt.step()
        assert info.grad_norm == pytest.approx(float(norm), rel=1e-12)
        assert info.finite and not info.skipped
        for g, k in zip(grads, kept, strict=True):
            np.testing.assert_array_equal(g, k)  # the gradients themselves are not written
    for p, tp in zip(params, tparams, strict=True):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cls, options", CONFIGS, ids=IDS)
def test_clipping_scales_the_gradients_inside_the_kernel(cls, options):
    """``step(grads, max_norm=c)`` is, bit for bit, the step with every gradient multiplied
    by ``min(1, c / (norm + 1e-6))`` (the factor applied as the kernel reads it)."""
    rng = np.random.default_rng(9)
    params = [rng.standard_normal(n).astype(np.float32) for n in (40000, 7, 300)]
    twins = [p.copy() for p in params]
    clipped, scaled = cls(params, **options), cls(twins, **options)
    for _ in range(4):
        grads = [(5 * rng.standard_normal(p.shape)).astype(np.float32) for p in params]
        norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
        info = clipped.step(grads, max_norm=1.0)
        assert info.grad_norm == pytest.approx(norm, rel=1e-12)
        factor = np.float32(min(1.0, 1.0 / (info.grad_norm + 1e-6)))
        scaled.step([g * factor for g in grads])
    for p, t in zip(params, twins, strict=True):
        np.testing.assert_array_equal(p, t)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_if_nonfinite_leaves_everything_untouched(bad):
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(n).astype(np.float32) for n in (5, 50000)]
    opt = fastgd.Adam(params, lr=0.1)
    opt.step([np.ones_like(p) for p in params])
    before = opt.state_dict()
    snapshot = [p.copy() for p in params]
    grads = [np.ones_like(p) for p in params]
    grads[1][12345] = bad
    info = opt.step(grads, skip_if_nonfinite=True, max_norm=1.0)
    assert info.skipped and not info.finite
    for p, s in zip(params, snapshot, strict=True):
        np.testing.assert_array_equal(p, s)
    after = opt.state_dict()
    assert after["state"][0]["step"] == before["state"][0]["step"] == 1
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(after["state"][1][key], before["state"][1][key])
    # without skipping, non-finite values propagate as in torch (NaN, or Inf * 0)
    info = opt.step(grads, max_norm=1.0)
    assert not info.finite and not info.skipped
    assert np.isnan(params[1][12345])


def test_global_norm_reduction_matches_numpy():
    from fastgd.reductions import global_norm

    rng = np.random.default_rng(9)
    grads = [rng.standard_normal(n).astype(dt) for n, dt in
             [(0, np.float32), (1, np.float64), (70001, np.float32), (33, np.float64)]]
    expected = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert global_norm(grads) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode", ["class", "class-clipped", "functional"])
def test_four_threads_step_their_own_optimizers_concurrently(mode):
    """Threads stepping their own arrays (with an optimizer each, or through the functional
    API, whose kept checks all threads share) get the results of running alone."""
    import threading

    sizes = (100, 50000, 3000)

    def train(seed, params, errors):
        try:
            rng = np.random.default_rng(seed)
            opt = fastgd.Adam(params, lr=0.01, weight_decay=0.01)
            states = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
            for t in range(1, 31):
                grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
                if mode == "functional":
                    for p, g, (m, v) in zip(params, grads, states, strict=True):
                        F.adam(p, g, m, v, step=t, lr=0.01, weight_decay=0.01)
                else:
                    opt.step(grads, max_norm=10.0 if mode == "class-clipped" else None)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def initial(seed):
        rng = np.random.default_rng(100 + seed)
        return [rng.standard_normal(n).astype(np.float32) for n in sizes]

    expected = []
    for seed in range(4):
        params = initial(seed)
        train(seed, params, [])
        expected.append(params)
    for _ in range(3):
        results, errors = [initial(seed) for seed in range(4)], []
        threads = [threading.Thread(target=train, args=(seed, results[seed], errors))
                   for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for got, want in zip(results, expected, strict=True):
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
