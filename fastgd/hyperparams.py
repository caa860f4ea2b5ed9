"""Hyperparameter domains: the valid values of each kind of hyperparameter, and their checks.

A domain checks a value and returns it normalized (a ``float``, a ``bool``, a pair of floats),
or raises ``TypeError``/``ValueError`` naming the hyperparameter. Domains are also plain data
(bounds, parts), so that tests and tools can derive valid and invalid values from them.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Real:
    """Finite real numbers from ``low`` to ``high``; each end is included unless
    ``low_open``/``high_open`` (the default for ``high``: ``[low, high)``)."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    #: None is valid too (a value chosen later: Adafactor's ``eps1``)
    optional: bool = False

    @property
    def annotation(self) -> str:
        """The type of its values, for generated signatures."""
        return "float | None" if self.optional else "float"

    def contains(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below and math.isfinite(v)

    def check(self, name: str, value: Any) -> float | None:
        if type(value) is float and self.contains(value):  # fast path: a plain, valid float
            return value
        if value is None and self.optional:
            return None
        v = real(name, value)
        if not self.contains(v):
            raise ValueError(f"invalid {name}: {value!r} (expected a finite value in "
                             f"{self.describe()})")
        return v

    def describe(self) -> str:
        return (f"{'(' if self.low_open else '['}{self.low}, "
                f"{self.high}{')' if self.high_open else ']'}")


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False`` (Python or NumPy booleans, or the integers 0 and 1)."""

    annotation = "bool"

    def check(self, name: str, value: Any) -> bool:
        if value is True or value is False:
            return value
        if not isinstance(value, (bool, int)) and type(value).__name__ != "bool_":
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        return bool(value)


@dataclass(frozen=True)
class Parts:
    """Several numbers given as a tuple (``betas``), each in its own domain and named by
    its part (``beta1``, ``beta2``); ``ordered`` requires them in non-decreasing order."""

    domains: tuple[Real, ...]
    parts: tuple[str, ...]
    ordered: bool = False

    @property
    def annotation(self) -> str:
        """The type of its values, for generated signatures."""
        return f"tuple[{', '.join(d.annotation for d in self.domains)}]"

    def check(self, name: str, value: Any) -> tuple[float, ...]:
        if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__")
                or len(value) != len(self.parts)):
            kind = "pair" if len(self.parts) == 2 else f"tuple of {len(self.parts)}"
            raise TypeError(f"{name} must be a {kind} ({', '.join(self.parts)}), got "
                            f"{value!r}")
        checked = tuple(d.check(part, v) for d, part, v in
                        zip(self.domains, self.parts, value, strict=True))
        if self.ordered and any(a > b for a, b in zip(checked, checked[1:], strict=False)):
            raise ValueError(f"invalid {name}: {value!r} ({' <= '.join(self.parts)} is "
                             "required)")
        return checked


@dataclass(frozen=True)
class Steps:
    """A number of steps: an ``int`` of at least ``low`` (and below ``high``, if given), or
    (``optional``) ``None`` (a warmup left out). Off, a switch of this domain is None, or
    ``low`` if not optional."""

    low: int = 1
    optional: bool = True
    high: int | None = None

    @property
    def annotation(self) -> str:
        return "int | None" if self.optional else "int"

    @property
    def off(self) -> int | None:
        return None if self.optional else self.low

    def check(self, name: str, value: Any) -> int | None:
        if value is None and self.optional:
            return None
        return integer(name, value, low=self.low, high=self.high)


@dataclass(frozen=True)
class Choice:
    """One of a few named values (``None`` may be one of them)."""

    values: tuple[Any, ...]

    @property
    def annotation(self) -> str:
        return "str | None" if None in self.values else "str"

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, str) or value is None:
            if value in self.values:
                return value
            raise ValueError(f"invalid {name}: {value!r} (expected one of "
                             f"{', '.join(map(repr, self.values))})")
        raise TypeError(f"{name} must be one of {', '.join(map(repr, self.values))}, got "
                        f"{type(value).__name__}")


Domain = Real | Flag | Parts | Steps | Choice

NON_NEGATIVE = Real()
FINITE = Real(low=-math.inf)
BETA = Real(0.0, 1.0)
UNIT = Real(0.0, 1.0, high_open=False)


def real(name: str, value: Any) -> float:
    """``value`` as a float (NaN and infinities included), or a ``TypeError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(
            value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number, got {value!r} ({exc})") from None


def number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
           high_inclusive: bool = False) -> float:
    """``value`` as a finite float in ``[low, high)`` (or ``[low, high]``), else an error
    naming it."""
    return Real(low, high, high_open=not high_inclusive).check(name, value)


def integer(name: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """``value``, an integer (not a bool) in ``[low, high)``, as an ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}), "
                         f"got {value}")
    return int(value)


def step_count(step: Any) -> int:
    """The 1-based step number ``t`` of the step being taken."""
    try:
        if isinstance(step, bool):
            raise TypeError
        t = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, got {type(step).__name__}") from None
    if t < 1:
        raise ValueError(f"invalid step: {step} (the first step is 1)")
    return t


def learning_rate(value: Any, t: int, domain: Real = NON_NEGATIVE) -> float:
    """The learning rate of step ``t``: a number, or a schedule (a callable ``t -> lr``,
    see :mod:`fastgd.schedules`) evaluated at ``t``; checked either way."""
    return domain.check("lr", value(t) if callable(value) else value)
