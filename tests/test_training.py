"""Training-loop features of the optimizer classes: schedules as lr, many-tensor steps."""

import numpy as np
import pytest

import fastgd
import fastgd.functional as F
from fastgd import cpu
from fastgd import schedules as S

SCHEDULES = [
    S.inverse_sqrt(0.1),
    S.linear_warmup(0.0, 0.05, 4, then=S.cosine(0.05, 10, min_lr=0.001)),
    S.join([S.constant(0.02), S.exponential(0.02, 0.9)], [5]),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("cls", [fastgd.SGD, fastgd.Adam, fastgd.RMSprop, fastgd.NAdam,
                                 fastgd.Adagrad])
def test_schedule_equals_setting_lr_by_hand(cls, schedule):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(50)
    q = p.copy()
    scheduled, manual = cls([p], lr=schedule), cls([q], lr=1.0)
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
@pytest.mark.parametrize("cls, options", [
    (fastgd.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (fastgd.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fastgd.RMSprop, dict(momentum=0.5, centered=True)),
    (fastgd.NAdam, dict()),
])
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
