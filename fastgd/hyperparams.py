"""Hyperparameter checks (torch.optim's rules) and the per-step scalars of every rule.

Each ``*_scalars`` function validates its hyperparameters and returns a :class:`StepScalars`:
the coefficients in float64 (cast to the array dtype just before the kernel runs), the
runtime flags, and the optional state arrays the step needs. Both the functional API and the
optimizer classes go through these functions, so the math of a step lives in one place.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple


class StepScalars(NamedTuple):
    """Per-step scalars of one rule: coefficients, runtime flags, needed optional states,
    and the factor applied to every gradient element as it is read: -1 for ``maximize``,
    times the clipping factor when gradients are clipped by global norm."""

    coefficients: tuple[float, ...]
    flags: tuple[bool, ...]
    optional: tuple[str, ...] = ()
    grad_scale: float = 1.0

    def kernel_scalars(self, dtype: Any) -> tuple[Any, ...]:
        """The kernel's scalar arguments: coefficients and ``grad_scale`` in ``dtype``, flags."""
        to = dtype.type
        return (*map(to, self.coefficients), to(self.grad_scale), *self.flags)


def number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
           high_inclusive: bool = False) -> float:
    """``value`` as a float in ``[low, high)`` (or ``[low, high]``), else an error naming it."""
    if type(value) is float and low <= value and (  # fast path: a plain, valid float
            value < high or high_inclusive and value <= high and value != math.inf):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(
            value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number, got {value!r} ({exc})") from None
    ok = low <= v and (v <= high if high_inclusive else v < high)
    if not ok or math.isinf(v):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"invalid {name}: {value!r} (expected a finite value in "
                         f"[{low}, {high}{bracket})")
    return v


def finite(name: str, value: Any) -> float:
    return number(name, value, low=-math.inf)


def beta(name: str, value: Any) -> float:
    return number(name, value, low=0.0, high=1.0)


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


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, int)) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def direction(maximize: Any) -> float:
    """The gradient's sign: -1 to maximize the objective, else 1."""
    return -1.0 if flag("maximize", maximize) else 1.0


def sgd_scalars(*, lr: Any, momentum: Any, dampening: Any, weight_decay: Any, nesterov: Any,
                maximize: Any, first_step: Any) -> StepScalars:
    lr, momentum = number("lr", lr), number("momentum", momentum)
    dampening, weight_decay = finite("dampening", dampening), number("weight_decay", weight_decay)
    nesterov = flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")
    return StepScalars(
        (lr, weight_decay, momentum, 1.0 - dampening),
        (weight_decay != 0, flag("first_step", first_step), nesterov),
        ("momentum_buffer",) if momentum != 0 else (), direction(maximize))


def adagrad_scalars(*, step: Any, lr: Any, lr_decay: Any, weight_decay: Any, eps: Any,
                    maximize: Any) -> StepScalars:
    t, lr, lr_decay = step_count(step), number("lr", lr), number("lr_decay", lr_decay)
    weight_decay = number("weight_decay", weight_decay)
    clr = lr / (1.0 + (t - 1) * lr_decay)
    return StepScalars((clr, weight_decay, number("eps", eps)), (weight_decay != 0,),
                       grad_scale=direction(maximize))


def adadelta_scalars(*, lr: Any, rho: Any, eps: Any, weight_decay: Any,
                     maximize: Any) -> StepScalars:
    rho = number("rho", rho, high=1.0, high_inclusive=True)
    weight_decay = number("weight_decay", weight_decay)
    return StepScalars((number("lr", lr), weight_decay, rho, 1.0 - rho, number("eps", eps)),
                       (weight_decay != 0,), grad_scale=direction(maximize))


def rmsprop_scalars(*, lr: Any, alpha: Any, eps: Any, weight_decay: Any, momentum: Any,
                    centered: Any, maximize: Any) -> StepScalars:
    alpha, momentum = number("alpha", alpha), number("momentum", momentum)
    weight_decay = number("weight_decay", weight_decay)
    optional = ("momentum_buffer",) * (momentum > 0) + ("grad_avg",) * flag("centered", centered)
    return StepScalars(
        (number("lr", lr), weight_decay, alpha, 1.0 - alpha, number("eps", eps), momentum),
        (weight_decay != 0,), optional, direction(maximize))


def adam_scalars(*, step: Any, lr: Any, beta1: Any, beta2: Any, eps: Any, weight_decay: Any,
                 decoupled_weight_decay: Any, amsgrad: Any, maximize: Any) -> StepScalars:
    t, lr = step_count(step), number("lr", lr)
    beta1, beta2 = beta("beta1", beta1), beta("beta2", beta2)
    weight_decay = number("weight_decay", weight_decay)
    decoupled = flag("decoupled_weight_decay", decoupled_weight_decay) and weight_decay != 0
    bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
    return StepScalars(
        (lr / bc1, weight_decay, 1.0 - lr * weight_decay, beta1, 1.0 - beta1, beta2,
         1.0 - beta2, math.sqrt(bc2), number("eps", eps)),
        (weight_decay != 0 and not decoupled, decoupled),
        ("max_exp_avg_sq",) if flag("amsgrad", amsgrad) else (), direction(maximize))


def adamax_scalars(*, step: Any, lr: Any, beta1: Any, beta2: Any, eps: Any, weight_decay: Any,
                   maximize: Any) -> StepScalars:
    t, lr = step_count(step), number("lr", lr)
    beta1, beta2 = beta("beta1", beta1), beta("beta2", beta2)
    weight_decay = number("weight_decay", weight_decay)
    return StepScalars(
        (lr / (1.0 - beta1**t), weight_decay, beta1, 1.0 - beta1, beta2, number("eps", eps)),
        (weight_decay != 0,), grad_scale=direction(maximize))


def nadam_mu(beta1: float, momentum_decay: float, t: int) -> float:
    """NAdam's momentum coefficient ``mu_t = beta1 (1 - 0.5 * 0.96**(t * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def nadam_scalars(*, step: Any, mu_product: Any, lr: Any, beta1: Any, beta2: Any, eps: Any,
                  weight_decay: Any, momentum_decay: Any, decoupled_weight_decay: Any,
                  maximize: Any) -> tuple[StepScalars, float]:
    """Also returns the product of ``mu_i`` up to this step (the new ``mu_product``)."""
    t, lr = step_count(step), number("lr", lr)
    beta1, beta2 = beta("beta1", beta1), beta("beta2", beta2)
    weight_decay = number("weight_decay", weight_decay)
    momentum_decay = number("momentum_decay", momentum_decay)
    mu_product = number("mu_product", mu_product, high=1.0, high_inclusive=True)
    decoupled = flag("decoupled_weight_decay", decoupled_weight_decay) and weight_decay != 0
    mu, mu_next = nadam_mu(beta1, momentum_decay, t), nadam_mu(beta1, momentum_decay, t + 1)
    mu_product *= mu
    scalars = StepScalars(
        (lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product * mu_next),
         weight_decay, 1.0 - lr * weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
         1.0 - beta2**t, number("eps", eps)),
        (weight_decay != 0 and not decoupled, decoupled), grad_scale=direction(maximize))
    return scalars, mu_product
