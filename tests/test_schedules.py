"""Learning-rate schedules: closed forms, shapes, joins, validation, repr and pickling.

The expected values are written out here from the formulas (1-based ``t``), independently of
the module's code; joins are checked both by value and by recording the local step counts a
joined schedule is called with.
"""

from __future__ import annotations

import math
import pickle
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgd import schedules as S
from fastgd.schedules import (
    Schedule,
    constant,
    cosine,
    exponential,
    inverse_sqrt,
    join,
    linear_decay,
    linear_warmup,
    polynomial,
    step_decay,
)

TS = (1, 2, 3, 7, 10, 11, 50, 99, 100, 101, 102, 1000, 10**6)


def names_argument(message: str, name: str) -> bool:
    """``message`` mentions ``name`` as a word (``lr`` does not match ``min_lr``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


class Recorder:
    """A schedule-like callable that records the step counts it is called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, t: int) -> float:
        self.calls.append(t)
        return float(t)


# -- closed forms -----------------------------------------------------------------------------

def poly_ref(lr: float, total: int, end: float, power: float, t: int) -> float:
    s = min(t - 1, total)
    return (lr - end) * (1 - s / total) ** power + end


def cos_ref(lr: float, total: int, floor: float, t: int) -> float:
    s = min(t - 1, total)
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * s / total))


CLOSED_FORMS = [
    (constant(0.3), lambda t: 0.3),
    (inverse_sqrt(0.5), lambda t: 0.5 / math.sqrt(t)),
    (inverse_sqrt(0.0), lambda t: 0.0),
    (step_decay(1.0, 10), lambda t: 0.1 ** ((t - 1) // 10)),
    (step_decay(0.2, 3, gamma=0.5), lambda t: 0.2 * 0.5 ** ((t - 1) // 3)),
    (step_decay(0.2, 1, gamma=1.0), lambda t: 0.2),
    (exponential(0.1, 0.99), lambda t: 0.1 * 0.99 ** (t - 1)),
    (exponential(0.1, 1.0), lambda t: 0.1),
    (polynomial(1e-3, 100), lambda t: poly_ref(1e-3, 100, 0.0, 1.0, t)),
    (polynomial(1e-2, 50, end_lr=1e-4, power=2.0), lambda t: poly_ref(1e-2, 50, 1e-4, 2.0, t)),
    (polynomial(1e-2, 50, end_lr=1e-3, power=0.5), lambda t: poly_ref(1e-2, 50, 1e-3, 0.5, t)),
    (polynomial(0.0, 10, end_lr=1.0), lambda t: min(t - 1, 10) / 10),  # ramping up
    (linear_decay(2.0, 100, end_lr=1.0), lambda t: 2.0 - min(t - 1, 100) / 100),
    (cosine(1e-3, 100), lambda t: cos_ref(1e-3, 100, 0.0, t)),
    (cosine(1e-3, 1000, min_lr=1e-5), lambda t: cos_ref(1e-3, 1000, 1e-5, t)),
    (cosine(0.5, 7, min_lr=0.5), lambda t: 0.5),
    (linear_warmup(0.0, 1e-3, 100),
     lambda t: 1e-3 * (t - 1) / 100 if t <= 101 else 1e-3),
    (linear_warmup(1e-4, 1e-3, 10),
     lambda t: 1e-4 + 9e-4 * (t - 1) / 10 if t <= 11 else 1e-3),
    (linear_warmup(0.0, 1e-3, 10, then=cosine(1e-3, 90)),
     lambda t: 1e-3 * (t - 1) / 10 if t <= 11 else cos_ref(1e-3, 90, 0.0, t - 10)),
    (join([constant(1.0), exponential(0.5, 0.5), inverse_sqrt(3.0)], [4, 11]),
     lambda t: 1.0 if t < 4 else 0.5 * 0.5 ** (t - 4) if t < 11 else 3.0 / math.sqrt(t - 10)),
    (join([polynomial(1.0, 5)], []), lambda t: poly_ref(1.0, 5, 0.0, 1.0, t)),
]


@pytest.mark.parametrize("schedule, formula", CLOSED_FORMS, ids=[repr(s) for s, _ in CLOSED_FORMS])
def test_closed_forms(schedule: Schedule, formula: Any) -> None:
    for t in TS:
        got = schedule(t)
        assert type(got) is float
        assert got == pytest.approx(formula(t), rel=1e-12, abs=1e-300), t


def test_spot_values() -> None:
    """A few values worked out by hand."""
    assert step_decay(1.0, 2, gamma=0.5)(1) == 1.0
    assert step_decay(1.0, 2, gamma=0.5)(2) == 1.0
    assert step_decay(1.0, 2, gamma=0.5)(3) == 0.5
    assert step_decay(1.0, 2, gamma=0.5)(5) == 0.25
    assert exponential(1.0, 0.5)(4) == 0.125
    assert exponential(1.0, 2.0)(4) == 8.0  # gamma > 1 grows
    assert inverse_sqrt(1.0)(4) == 0.5
    assert linear_decay(1.0, 4)(3) == 0.5
    assert polynomial(1.0, 4, power=2.0)(3) == 0.25
    assert cosine(1.0, 2)(2) == pytest.approx(0.5)
    assert linear_warmup(0.0, 1.0, 4)(3) == 0.5


def test_starts_at_lr_and_ends_at_floor_exactly() -> None:
    for lr, floor in [(1e-3, 0.0), (0.3, 0.1), (1e-3, 1e-5), (7.0, 6.999)]:
        for total in (1, 3, 1000):
            for sched in (cosine(lr, total, min_lr=floor), polynomial(lr, total, end_lr=floor),
                          polynomial(lr, total, end_lr=floor, power=3.0)):
                assert sched(1) == lr
                for t in (total + 1, total + 2, 10 * total + 5, 10**9):
                    assert sched(t) == floor, (sched, t)
    assert linear_warmup(0.1, 0.7, 3)(1) == 0.1
    assert linear_warmup(0.1, 0.7, 3)(4) == 0.7


def test_accepts_numpy_integers_and_returns_python_float() -> None:
    sched = cosine(np.float32(1e-3), np.int64(10), min_lr=np.float64(0.0))
    assert type(sched.lr) is float and type(sched.total_steps) is int
    for t in (np.int64(3), np.int32(3), np.uint8(3), 3):
        value = sched(t)
        assert type(value) is float and value == cos_ref(float(np.float32(1e-3)), 10, 0.0, 3)


# -- shapes -----------------------------------------------------------------------------------

DECAYING = [
    inverse_sqrt(1e-2),
    step_decay(1e-2, 7, gamma=0.3),
    exponential(1e-2, 0.97),
    polynomial(1e-2, 100),
    polynomial(1e-2, 100, end_lr=1e-3, power=0.5),
    polynomial(1e-2, 100, end_lr=1e-3, power=3.0),
    cosine(1e-2, 100),
    cosine(1e-2, 100, min_lr=1e-3),
]


@pytest.mark.parametrize("schedule", DECAYING, ids=repr)
def test_decaying_schedules_never_increase(schedule: Schedule) -> None:
    values = [schedule(t) for t in range(1, 300)]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < values[0]


def test_warmup_rises_linearly_then_holds() -> None:
    sched = linear_warmup(1e-5, 1e-3, 50)
    values = [sched(t) for t in range(1, 200)]
    steps = np.diff(values[:51])
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps, (1e-3 - 1e-5) / 50, rtol=1e-9)
    assert values[50:] == [1e-3] * len(values[50:])


def test_cosine_floor_and_symmetry() -> None:
    sched = cosine(1.0, 100, min_lr=0.25)
    values = [sched(t) for t in range(1, 1000)]
    assert min(values) == 0.25 and max(values) == 1.0
    # the half-way point is the mean of lr and min_lr; the curve is point-symmetric about it
    assert sched(51) == pytest.approx(0.625, rel=1e-12)
    for k in range(1, 50):
        assert sched(51 - k) - 0.625 == pytest.approx(0.625 - sched(51 + k), rel=1e-9)


# -- joins ------------------------------------------------------------------------------------

@pytest.mark.parametrize("then", [
    None,
    cosine(1e-3, 900),
    cosine(1e-3, 900, min_lr=1e-5),
    linear_decay(1e-3, 900),
    polynomial(1e-3, 900, power=2.0),
    exponential(1e-3, 0.999),
], ids=repr)
def test_warmup_then_decay_is_continuous(then: Schedule | None) -> None:
    peak, warmup = 1e-3, 100
    b = warmup + 1  # the first step after the warmup
    for sched in (linear_warmup(0.0, peak, warmup, then=then),
                  join([linear_warmup(0.0, peak, warmup), then or constant(peak)], [b])):
        assert sched(b) == peak
        assert sched(b - 1) < peak
        ramp_step = peak / warmup
        assert abs(sched(b) - sched(b - 1)) == pytest.approx(ramp_step, rel=1e-9)
        # after the peak the schedule moves on smoothly: no jump bigger than a warmup step
        for t in range(b, b + 50):
            assert abs(sched(t + 1) - sched(t)) <= ramp_step * (1 + 1e-9), t
        assert sched(b + 1) <= peak


def test_warmup_then_equals_join() -> None:
    decay = cosine(1e-3, 900, min_lr=1e-5)
    a = linear_warmup(1e-6, 1e-3, 100, then=decay)
    b = join([linear_warmup(1e-6, 1e-3, 100), decay], [101])
    assert [a(t) for t in range(1, 1200)] == [b(t) for t in range(1, 1200)]


def test_join_restarts_each_count_at_its_boundary() -> None:
    rec = [Recorder(), Recorder(), Recorder()]
    sched = join(rec, [3, 7])
    values = [sched(t) for t in range(1, 11)]
    assert values == [1, 2, 1, 2, 3, 4, 1, 2, 3, 4]
    assert rec[0].calls == [1, 2]
    assert rec[1].calls == [1, 2, 3, 4]
    assert rec[2].calls == [1, 2, 3, 4]


def test_warmup_then_count_restarts_at_one() -> None:
    rec = Recorder()
    sched = linear_warmup(0.0, 1.0, 5, then=rec)
    assert [sched(t) for t in range(1, 9)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 3.0]
    assert rec.calls == [1, 2, 3]


def test_nested_joins() -> None:
    inner = join([constant(1.0), constant(2.0)], [3])
    outer = join([constant(0.5), inner, constant(3.0)], [2, 6])
    assert [outer(t) for t in range(1, 9)] == [0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_join_accepts_iterables_and_stores_tuples() -> None:
    sched = join((s for s in [constant(1.0), constant(2.0)]), np.array([5]))
    assert sched.schedules == (constant(1.0), constant(2.0))
    assert sched.boundaries == (5,) and type(sched.boundaries[0]) is int
    assert sched(4) == 1.0 and sched(5) == 2.0


# -- validation -------------------------------------------------------------------------------

BAD_ARGS = [
    (constant, dict(lr=-1e-3), ValueError, "lr"),
    (constant, dict(lr=math.nan), ValueError, "lr"),
    (constant, dict(lr=math.inf), ValueError, "lr"),
    (constant, dict(lr="0.1"), TypeError, "lr"),
    (constant, dict(lr=True), TypeError, "lr"),
    (constant, dict(lr=None), TypeError, "lr"),
    (inverse_sqrt, dict(lr=-1.0), ValueError, "lr"),
    (step_decay, dict(lr=1.0, step_size=0), ValueError, "step_size"),
    (step_decay, dict(lr=1.0, step_size=-3), ValueError, "step_size"),
    (step_decay, dict(lr=1.0, step_size=2.0), TypeError, "step_size"),
    (step_decay, dict(lr=1.0, step_size=True), TypeError, "step_size"),
    (step_decay, dict(lr=1.0, step_size=2, gamma=0.0), ValueError, "gamma"),
    (step_decay, dict(lr=1.0, step_size=2, gamma=-0.5), ValueError, "gamma"),
    (step_decay, dict(lr=-1.0, step_size=2), ValueError, "lr"),
    (exponential, dict(lr=1.0, gamma=0.0), ValueError, "gamma"),
    (exponential, dict(lr=1.0, gamma=math.nan), ValueError, "gamma"),
    (exponential, dict(lr=1.0, gamma="x"), TypeError, "gamma"),
    (polynomial, dict(lr=1.0, total_steps=0), ValueError, "total_steps"),
    (polynomial, dict(lr=1.0, total_steps=1.5), TypeError, "total_steps"),
    (polynomial, dict(lr=1.0, total_steps=10, end_lr=-0.1), ValueError, "end_lr"),
    (polynomial, dict(lr=1.0, total_steps=10, power=0.0), ValueError, "power"),
    (polynomial, dict(lr=1.0, total_steps=10, power=-1.0), ValueError, "power"),
    (linear_decay, dict(lr=1.0, total_steps=-1), ValueError, "total_steps"),
    (linear_decay, dict(lr=1.0, total_steps=10, end_lr=-1.0), ValueError, "end_lr"),
    (cosine, dict(lr=-1.0, total_steps=10), ValueError, "lr"),
    (cosine, dict(lr=1.0, total_steps=0), ValueError, "total_steps"),
    (cosine, dict(lr=1.0, total_steps=10, min_lr=-0.1), ValueError, "min_lr"),
    (cosine, dict(lr=1.0, total_steps=10, min_lr=2.0), ValueError, "min_lr"),
    (linear_warmup, dict(start_lr=-1.0, peak_lr=1.0, warmup_steps=5), ValueError, "start_lr"),
    (linear_warmup, dict(start_lr=0.0, peak_lr=-1.0, warmup_steps=5), ValueError, "peak_lr"),
    (linear_warmup, dict(start_lr=0.0, peak_lr=1.0, warmup_steps=0), ValueError,
     "warmup_steps"),
    (linear_warmup, dict(start_lr=0.0, peak_lr=1.0, warmup_steps=5, then=0.1), TypeError,
     "then"),
    (join, dict(schedules=[], boundaries=[]), ValueError, "schedules"),
    (join, dict(schedules=constant(1.0), boundaries=[]), TypeError, "schedules"),
    (join, dict(schedules=[constant(1.0), 0.5], boundaries=[3]), TypeError, "schedules[1]"),
    (join, dict(schedules=[constant(1.0)], boundaries=5), TypeError, "boundaries"),
    (join, dict(schedules=[constant(1.0)] * 2, boundaries=[]), ValueError, "boundaries"),
    (join, dict(schedules=[constant(1.0)] * 2, boundaries=[3, 5]), ValueError, "boundaries"),
    (join, dict(schedules=[constant(1.0)] * 3, boundaries=[5, 5]), ValueError, "boundaries"),
    (join, dict(schedules=[constant(1.0)] * 3, boundaries=[6, 5]), ValueError, "boundaries"),
    (join, dict(schedules=[constant(1.0)] * 2, boundaries=[1]), ValueError, "boundaries[0]"),
    (join, dict(schedules=[constant(1.0)] * 2, boundaries=[2.5]), TypeError, "boundaries[0]"),
]


@pytest.mark.parametrize("factory, kwargs, exc, name", BAD_ARGS,
                         ids=[f"{f.__name__}-{k}" for f, k, _, _ in BAD_ARGS])
def test_bad_arguments_are_refused_naming_them(factory: Any, kwargs: dict[str, Any],
                                               exc: type[Exception], name: str) -> None:
    with pytest.raises(exc) as info:
        factory(**kwargs)
    assert names_argument(str(info.value), name), str(info.value)


ALL = [s for s, _ in CLOSED_FORMS]


@pytest.mark.parametrize("step, exc", [
    (0, ValueError), (-1, ValueError), (1.0, TypeError), (1.5, TypeError), ("1", TypeError),
    (None, TypeError), (True, TypeError), (np.float64(2.0), TypeError),
])
@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_bad_steps_are_refused(schedule: Schedule, step: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="step"):
        schedule(step)


def test_overflow_is_an_error_not_inf() -> None:
    with pytest.raises(OverflowError, match="exponential"):
        exponential(1.0, 2.0)(5000)
    with pytest.raises(OverflowError):
        step_decay(1e300, 1, gamma=10.0)(10)  # finite gamma ** 9, inf product


def test_schedules_are_frozen() -> None:
    sched = cosine(1e-3, 10)
    with pytest.raises(AttributeError):
        sched.lr = 1.0  # type: ignore[misc]


# -- repr and pickle --------------------------------------------------------------------------

def test_repr_reads_as_the_call() -> None:
    assert repr(cosine(1e-3, 1000)) == "cosine(lr=0.001, total_steps=1000, min_lr=0.0)"
    assert repr(constant(1)) == "constant(lr=1.0)"
    assert repr(step_decay(0.1, 30)) == "step_decay(lr=0.1, step_size=30, gamma=0.1)"
    assert repr(linear_decay(1.0, 10)) == (
        "polynomial(lr=1.0, total_steps=10, end_lr=0.0, power=1.0)")
    assert repr(linear_warmup(0, 1e-3, 100, then=inverse_sqrt(1e-3))) == (
        "linear_warmup(start_lr=0.0, peak_lr=0.001, warmup_steps=100, "
        "then=inverse_sqrt(lr=0.001))")
    assert repr(join([constant(1.0), exponential(1.0, 0.5)], [10])) == (
        "join(schedules=(constant(lr=1.0), exponential(lr=1.0, gamma=0.5)), boundaries=(10,))")


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_repr_evaluates_back_and_pickle_round_trips(schedule: Schedule) -> None:
    namespace = {name: getattr(S, name) for name in S.__all__}
    assert eval(repr(schedule), namespace) == schedule
    clone = pickle.loads(pickle.dumps(schedule))
    assert clone == schedule and hash(clone) == hash(schedule)
    assert [clone(t) for t in TS] == [schedule(t) for t in TS]


def test_all_is_complete() -> None:
    for name in S.__all__:
        assert getattr(S, name).__doc__, name
    assert {"constant", "inverse_sqrt", "step_decay", "exponential", "polynomial",
            "linear_decay", "cosine", "linear_warmup", "join"} <= set(S.__all__)


# -- properties -------------------------------------------------------------------------------

rates = st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False)
positive_rates = st.floats(1e-8, 10.0)
lengths = st.integers(1, 10_000)
decay_factors = st.floats(1e-6, 1.0)
steps = st.integers(1, 10**8)


@st.composite
def cosines(draw: st.DrawFn) -> cosine:
    lr = draw(rates)
    return cosine(lr, draw(lengths), min_lr=draw(st.floats(0.0, lr)))


base_schedules = st.one_of(
    st.builds(constant, rates),
    st.builds(inverse_sqrt, rates),
    st.builds(step_decay, rates, lengths, decay_factors),
    st.builds(exponential, rates, decay_factors),
    st.builds(polynomial, rates, lengths, rates, st.floats(0.01, 10.0)),
    st.builds(linear_decay, rates, lengths, rates),
    cosines(),
    st.builds(linear_warmup, rates, rates, lengths),
)


def extend(children: st.SearchStrategy[Schedule]) -> st.SearchStrategy[Schedule]:
    @st.composite
    def joins(draw: st.DrawFn) -> join:
        parts = draw(st.lists(children, min_size=1, max_size=4))
        gaps = draw(st.lists(lengths, min_size=len(parts) - 1, max_size=len(parts) - 1))
        return join(parts, list(np.cumsum(gaps) + 1))

    return st.one_of(st.builds(linear_warmup, rates, rates, lengths, children), joins())


any_schedule = st.recursive(base_schedules, extend, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(any_schedule, st.lists(steps, min_size=1, max_size=20))
def test_property_finite_non_negative_floats(schedule: Schedule, ts: list[int]) -> None:
    for t in ts + [1, 2]:
        value = schedule(t)
        assert type(value) is float
        assert math.isfinite(value) and value >= 0.0


@settings(max_examples=200, deadline=None)
@given(any_schedule)
def test_property_pickle_and_repr(schedule: Schedule) -> None:
    clone = pickle.loads(pickle.dumps(schedule))
    assert clone == schedule and repr(clone) == repr(schedule)
    assert clone(1) == schedule(1) and clone(12345) == schedule(12345)


@settings(max_examples=300, deadline=None)
@given(cosines(), steps)
def test_property_cosine_stays_within_lr_and_floor(sched: cosine, t: int) -> None:
    assert sched.min_lr <= sched(t) <= sched.lr
    assert sched(t) >= sched(t + 1)


@settings(max_examples=300, deadline=None)
@given(rates, lengths, rates, st.floats(0.01, 10.0), steps)
def test_property_polynomial_between_ends(lr: float, total: int, end: float, power: float,
                                          t: int) -> None:
    sched = polynomial(lr, total, end_lr=end, power=power)
    assert min(lr, end) <= sched(t) <= max(lr, end)
    assert sched(t) == pytest.approx(poly_ref(lr, total, end, power, t), rel=1e-9, abs=1e-12)
    assert sched(total + 1 + t) == end


@settings(max_examples=300, deadline=None)
@given(rates, rates, lengths, steps)
def test_property_warmup_formula(start: float, peak: float, warmup: int, t: int) -> None:
    sched = linear_warmup(start, peak, warmup)
    expected = start + (peak - start) * (min(t, warmup + 1) - 1) / warmup
    assert sched(t) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert sched(warmup + 1) == peak and sched(1) == start
