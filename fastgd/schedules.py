"""Learning-rate schedules: picklable callables ``step -> lr``.

Step convention
---------------
A schedule is called with ``t``, the 1-based number of the step *about to be taken*: ``t = 1``
on the first step (the same count the optimizers use for bias correction). So
``schedule(1)`` is the lr of the first update, and the "decay progress" of most schedules is
``t - 1`` (zero on the first step).

Joining schedules
-----------------
:func:`join` runs several schedules one after the other. ``boundaries[i]`` is the first step
``t`` of schedule ``i + 1``, and each schedule sees its own step count restarted at 1 at its
boundary: at global step ``t`` in ``[boundaries[i-1], boundaries[i])`` schedule ``i`` is called
with ``t - boundaries[i-1] + 1``. :class:`linear_warmup` with ``then=`` follows the same rule
with the single boundary ``warmup_steps + 1``: the ramp reaches ``peak_lr`` exactly at that
step, which is also where ``then`` is called with 1, so a ``then`` that starts at ``peak_lr``
joins continuously::

    warm_cos = join([linear_warmup(0.0, 1e-3, 100), cosine(1e-3, 900)], [101])
    same = linear_warmup(0.0, 1e-3, 100, then=cosine(1e-3, 900))

Every schedule checks its arguments when it is built (``TypeError``/``ValueError`` naming the
argument) and ``t`` when it is called, returns a Python ``float``, has a ``repr`` that reads
as the call that built it, and pickles (they are small frozen dataclasses, not closures), so an
optimizer holding one can be checkpointed.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from fastgd.hyperparams import number, step_count

__all__ = [
    "Schedule",
    "constant",
    "inverse_sqrt",
    "step_decay",
    "exponential",
    "polynomial",
    "linear_decay",
    "cosine",
    "linear_warmup",
    "join",
]

ScheduleLike = Callable[[int], float]


# -- argument checks: each returns the normalized value or raises an error naming `name` ------

def _rate(name: str, value: Any) -> float:
    """A learning rate: a finite real number >= 0."""
    return number(name, value)


def _positive(name: str, value: Any) -> float:
    v = number(name, value)
    if v <= 0:
        raise ValueError(f"invalid {name}: {value!r} (expected a finite value > 0)")
    return v


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < low:
        raise ValueError(f"invalid {name}: {value!r} (expected an integer >= {low})")
    return n


def _length(name: str, value: Any) -> int:
    """A number of steps: a positive integer."""
    return _integer(name, value, 1)


def _schedule(name: str, value: Any) -> ScheduleLike:
    if not callable(value):
        raise TypeError(f"{name} must be a schedule (a callable step -> lr), "
                        f"got {type(value).__name__}")
    return value


def _optional_schedule(name: str, value: Any) -> ScheduleLike | None:
    return None if value is None else _schedule(name, value)


def _sequence(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
    return tuple(value)


# -- shared math ------------------------------------------------------------------------------

def _interpolate(start: float, end: float, frac: float) -> float:
    """``start + (end - start) * frac``, exactly ``start`` at 0 and ``end`` at 1, kept between."""
    value = start * (1.0 - frac) + end * frac
    return min(max(value, min(start, end)), max(start, end))


def _handover(schedule: ScheduleLike, t: int, boundary: int) -> float:
    """``schedule`` started at global step ``boundary``: its own count restarts at 1 there."""
    return float(schedule(t - boundary + 1))


# -- schedules --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """Base class: ``schedule(t)`` checks ``t`` (an integer >= 1) and returns a finite float.

    Subclasses are frozen dataclasses; they normalize their fields in ``__post_init__`` through
    :meth:`_check` and implement :meth:`_lr` for an already validated ``t``.
    """

    def __call__(self, step: int) -> float:
        t = step_count(step)
        try:
            lr = float(self._lr(t))
        except OverflowError:
            lr = math.inf
        if not math.isfinite(lr):
            raise OverflowError(f"{self!r} at step {t}: the lr is not finite")
        return lr

    def _lr(self, t: int) -> float:
        raise NotImplementedError

    def _check(self, **checks: Callable[[str, Any], Any]) -> None:
        """Replace each named field by ``check(name, value)``, which validates and normalizes."""
        for name, check in checks.items():
            self._set(name, check(name, getattr(self, name)))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # the dataclass is frozen


@dataclass(frozen=True)
class constant(Schedule):
    """``lr_t = lr``."""

    lr: float

    def __post_init__(self) -> None:
        self._check(lr=_rate)

    def _lr(self, t: int) -> float:
        return self.lr


@dataclass(frozen=True)
class inverse_sqrt(Schedule):
    """``lr_t = lr / sqrt(t)`` (the classic ``lr0 / sqrt(t)`` decay)."""

    lr: float

    def __post_init__(self) -> None:
        self._check(lr=_rate)

    def _lr(self, t: int) -> float:
        return self.lr / math.sqrt(t)


@dataclass(frozen=True)
class step_decay(Schedule):
    """``lr_t = lr * gamma ** ((t - 1) // step_size)`` (torch's StepLR, counted from t = 1).

    ``gamma > 1`` grows the lr; a step whose lr overflows raises ``OverflowError``.
    """

    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        self._check(lr=_rate, step_size=_length, gamma=_positive)

    def _lr(self, t: int) -> float:
        return self.lr * self.gamma ** ((t - 1) // self.step_size)


@dataclass(frozen=True)
class exponential(Schedule):
    """``lr_t = lr * gamma ** (t - 1)``.

    ``gamma > 1`` grows the lr; a step whose lr overflows raises ``OverflowError``.
    """

    lr: float
    gamma: float

    def __post_init__(self) -> None:
        self._check(lr=_rate, gamma=_positive)

    def _lr(self, t: int) -> float:
        return self.lr * self.gamma ** (t - 1)


@dataclass(frozen=True)
class polynomial(Schedule):
    """``lr_t = (lr - end_lr) * (1 - s / total_steps) ** power + end_lr``.

    With ``s = min(t - 1, total_steps)``: starts at ``lr`` (t = 1), reaches ``end_lr`` at
    ``t = total_steps + 1`` and stays there.
    ``power = 1`` is a linear decay (:func:`linear_decay`); ``end_lr > lr`` ramps up instead.
    """

    lr: float
    total_steps: int
    end_lr: float = 0.0
    power: float = 1.0

    def __post_init__(self) -> None:
        self._check(lr=_rate, total_steps=_length, end_lr=_rate, power=_positive)

    def _lr(self, t: int) -> float:
        s = min(t - 1, self.total_steps)
        return _interpolate(self.end_lr, self.lr, (1.0 - s / self.total_steps) ** self.power)


def linear_decay(lr: float, total_steps: int, end_lr: float = 0.0) -> polynomial:
    """``lr_t = lr + (end_lr - lr) * s / total_steps``, ``s = min(t - 1, total_steps)``.

    Shorthand for ``polynomial(lr, total_steps, end_lr, power=1.0)`` (and reprs as that).
    """
    return polynomial(lr, total_steps, end_lr, 1.0)


@dataclass(frozen=True)
class cosine(Schedule):
    """``lr_t = min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * s / total_steps))``.

    With ``s = min(t - 1, total_steps)``: starts at ``lr`` (t = 1), reaches the floor ``min_lr``
    at ``t = total_steps + 1`` and stays there; never below ``min_lr`` (``0 <= min_lr <= lr``).
    """

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        self._check(lr=_rate, total_steps=_length, min_lr=_rate)
        if self.min_lr > self.lr:
            raise ValueError(f"invalid min_lr: {self.min_lr!r} (must not exceed lr={self.lr!r})")

    def _lr(self, t: int) -> float:
        s = min(t - 1, self.total_steps)
        weight = 0.5 * (1.0 + math.cos(math.pi * s / self.total_steps))
        return _interpolate(self.min_lr, self.lr, weight)


@dataclass(frozen=True)
class linear_warmup(Schedule):
    """Linear ramp from ``start_lr`` to ``peak_lr``, then ``then`` (default: constant ``peak_lr``).

    ``lr_t = start_lr + (peak_lr - start_lr) * (t - 1) / warmup_steps`` for
    ``t <= warmup_steps + 1`` (so ``lr_1 = start_lr`` and ``lr_{warmup_steps+1} = peak_lr``);
    from ``t = warmup_steps + 1`` on, ``lr_t = then(t - warmup_steps)``: ``then`` has its own
    step count restarting at 1, as in :func:`join` with ``boundaries=[warmup_steps + 1]``.
    A ``then`` starting at ``peak_lr`` therefore joins continuously.
    """

    start_lr: float
    peak_lr: float
    warmup_steps: int
    then: ScheduleLike | None = None

    def __post_init__(self) -> None:
        self._check(start_lr=_rate, peak_lr=_rate, warmup_steps=_length,
                    then=_optional_schedule)

    def _lr(self, t: int) -> float:
        if t <= self.warmup_steps:
            return _interpolate(self.start_lr, self.peak_lr, (t - 1) / self.warmup_steps)
        if self.then is None:
            return self.peak_lr
        return _handover(self.then, t, self.warmup_steps + 1)


@dataclass(frozen=True)
class join(Schedule):
    """Run ``schedules`` one after the other, each with its step count restarted at 1.

    ``boundaries[i]`` is the first global step of ``schedules[i + 1]`` (strictly increasing,
    ``boundaries[0] >= 2``, ``len(boundaries) == len(schedules) - 1``). For ``t`` in
    ``[b_{i-1}, b_i)`` (with ``b_{-1} = 1``, ``b_{n-1} = inf``):
    ``lr_t = schedules[i](t - b_{i-1} + 1)``. Like ``optax.join_schedules`` in 1-based steps.
    """

    schedules: Sequence[ScheduleLike]
    boundaries: Sequence[int]

    def __post_init__(self) -> None:
        schedules = _sequence("schedules", self.schedules)
        boundaries = _sequence("boundaries", self.boundaries)
        if not schedules:
            raise ValueError("invalid schedules: expected at least one schedule")
        self._set("schedules", tuple(_schedule(f"schedules[{i}]", s)
                                     for i, s in enumerate(schedules)))
        self._set("boundaries", tuple(_integer(f"boundaries[{i}]", b, 2)
                                      for i, b in enumerate(boundaries)))
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(f"invalid boundaries: expected len(schedules) - 1 = "
                             f"{len(self.schedules) - 1} boundaries, got {len(self.boundaries)}")
        if any(a >= b for a, b in pairwise(self.boundaries)):
            raise ValueError(f"invalid boundaries: {self.boundaries!r} "
                             "(expected strictly increasing)")

    def _lr(self, t: int) -> float:
        i = bisect.bisect_right(self.boundaries, t)
        return _handover(self.schedules[i], t, self.boundaries[i - 1] if i else 1)
