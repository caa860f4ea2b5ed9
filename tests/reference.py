"""Independent NumPy float64 reference implementations of fastgd's update rules.

Written from the formulas of each algorithm's reference implementation (for torch.optim's
algorithms its documented update and single-tensor path, ``torch/optim/<name>.py``); this
module never imports fastgd. Each class holds the state of *one* parameter: construct it with
the hyperparameters (the reference's names and defaults), then call :meth:`Reference.step`
with the parameter and its gradient; it returns the new parameter (float64) and keeps its
state (float64 arrays named like torch.optim's state keys) in :attr:`Reference.state`.

Everything is computed in float64 with plain, unfused NumPy expressions, one line per line of
the formulas, so that a mismatch points at the formula, not at rounding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "Reference", "SGDRef", "AdagradRef", "AdadeltaRef", "RMSpropRef", "AdamRef", "AdamWRef",
    "AdamaxRef", "NAdamRef", "RAdamRef", "RpropRef", "ASGDRef", "LionRef", "ADOPTRef",
    "AdEMAMixRef", "AdanRef", "ScheduleFreeSGDRef", "ScheduleFreeAdamWRef", "LAMBRef",
    "LARSRef", "MuonRef", "AdafactorRef", "REFERENCES",
    "nadam_mu",
]


class Reference:
    """One parameter's optimizer state and update rule (float64)."""

    #: Hyperparameter names and their defaults (those of torch.optim).
    defaults: dict[str, Any] = {}
    #: State entries that are Python floats, not arrays.
    scalar_state: tuple[str, ...] = ()
    #: Invalid combinations of valid hyperparameters, each with the names its error must
    #: mention (the reference refuses them too).
    invalid: list[tuple[dict[str, Any], tuple[str, ...]]] = []

    def jump(self) -> float:
        """How far one step moves an element that takes the other branch of a step function
        of the rule (Lion's sign) where its argument is within rounding of the branch point:
        0 for rules without one. A float32 run meets such an argument about once in 10**7
        element steps; a float64 one practically never."""
        return 0.0

    def __init__(self, **hyperparameters: Any) -> None:
        unknown = set(hyperparameters) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)}")
        self.hp = {**self.defaults, **hyperparameters}
        self.t = 0
        self.state: dict[str, Any] = {}
        #: Largest finite magnitude that the parameter (key ``"param"``) and each state
        #: array took so far: the scale of the rounding errors a float32 run makes.
        self.peak: dict[str, float] = {}

    def step(self, param: Any, grad: Any) -> np.ndarray:
        """Return the parameter after one step (a new float64 array); update the state."""
        p = np.array(param, dtype=np.float64)
        g = np.array(grad, dtype=np.float64)
        if p.shape != g.shape:
            raise ValueError(f"param {p.shape} and grad {g.shape} differ in shape")
        self._track("param", p)
        self.t += 1
        if self.hp.get("maximize", False):
            g = -g
        p = np.asarray(self._update(p, g), dtype=np.float64)
        # Arithmetic on 0-d arrays gives NumPy scalars: keep every state entry an array.
        for key, value in self.state.items():
            if key not in self.scalar_state:
                self.state[key] = np.asarray(value, dtype=np.float64)
                self._track(key, self.state[key])
        self._track("param", p)
        return p

    def _track(self, key: str, value: np.ndarray) -> None:
        finite = np.abs(value[np.isfinite(value)])
        peak = float(finite.max()) if finite.size else 0.0
        self.peak[key] = max(self.peak.get(key, 0.0), peak)

    def _update(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _zeros(self, p: np.ndarray, name: str, fill: float = 0.0) -> np.ndarray:
        if name not in self.state:
            self.state[name] = np.full(p.shape, fill, dtype=np.float64)
        return self.state[name]

    def _adam_moments(
        self, p: np.ndarray, g: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Adam's weight decay (``decoupled_weight_decay``: ``p *= 1 - lr * wd``, else L2:
        ``g += wd * p``) and moments (``exp_avg``, ``exp_avg_sq``, kept in the state): the
        part Adam, NAdam and RAdam share. Returns the decayed ``p``, the gradient with L2
        decay added, and the new ``exp_avg`` and ``exp_avg_sq``."""
        hp = self.hp
        lr, wd = hp["lr"], hp["weight_decay"]
        beta1, beta2 = hp["betas"]
        exp_avg = self._zeros(p, "exp_avg")
        exp_avg_sq = self._zeros(p, "exp_avg_sq")
        if hp["decoupled_weight_decay"]:
            p = p * (1.0 - lr * wd)
        elif wd != 0:
            g = g + wd * p
        exp_avg = beta1 * exp_avg + (1.0 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * g * g
        self.state["exp_avg"], self.state["exp_avg_sq"] = exp_avg, exp_avg_sq
        return p, g, exp_avg, exp_avg_sq


class SGDRef(Reference):
    """SGD; ``torch_first_step=False`` starts from a zero buffer and applies the general
    momentum rule from the first step on (the EMA form reached through the functional API
    with ``first_step=False``)."""

    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                    maximize=False, torch_first_step=True)
    invalid = [({"nesterov": True, "momentum": 0.0}, ("nesterov",)),
               ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ("nesterov",))]

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        hp = self.hp
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening == 0")

    def _update(self, p, g):
        hp = self.hp
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        momentum = hp["momentum"]
        if momentum != 0:
            if "momentum_buffer" not in self.state:
                if hp["torch_first_step"]:
                    buf = g.copy()
                else:
                    buf = momentum * np.zeros_like(g) + (1.0 - hp["dampening"]) * g
            else:
                buf = momentum * self.state["momentum_buffer"] + (1.0 - hp["dampening"]) * g
            self.state["momentum_buffer"] = buf
            d = g + momentum * buf if hp["nesterov"] else buf
        else:
            d = g
        return p - hp["lr"] * d


class AdagradRef(Reference):
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        total = self._zeros(p, "sum", hp["initial_accumulator_value"])
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        clr = hp["lr"] / (1.0 + (self.t - 1) * hp["lr_decay"])
        total = total + g * g
        self.state["sum"] = total
        return p - clr * g / (np.sqrt(total) + hp["eps"])


class AdadeltaRef(Reference):
    defaults = dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        rho, eps = hp["rho"], hp["eps"]
        square_avg = self._zeros(p, "square_avg")
        acc_delta = self._zeros(p, "acc_delta")
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        square_avg = rho * square_avg + (1.0 - rho) * g * g
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1.0 - rho) * delta * delta
        self.state["square_avg"], self.state["acc_delta"] = square_avg, acc_delta
        return p - hp["lr"] * delta


class RMSpropRef(Reference):
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        alpha, eps, momentum = hp["alpha"], hp["eps"], hp["momentum"]
        square_avg = self._zeros(p, "square_avg")
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        square_avg = alpha * square_avg + (1.0 - alpha) * g * g
        self.state["square_avg"] = square_avg
        if hp["centered"]:
            grad_avg = alpha * self._zeros(p, "grad_avg") + (1.0 - alpha) * g
            self.state["grad_avg"] = grad_avg
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = np.sqrt(square_avg) + eps
        if momentum > 0:
            buf = momentum * self._zeros(p, "momentum_buffer") + g / avg
            self.state["momentum_buffer"] = buf
            return p - hp["lr"] * buf
        return p - hp["lr"] * g / avg


class AdamRef(Reference):
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                    maximize=False, decoupled_weight_decay=False)

    def _update(self, p, g):
        hp = self.hp
        lr, eps = hp["lr"], hp["eps"]
        beta1, beta2 = hp["betas"]
        p, _, exp_avg, exp_avg_sq = self._adam_moments(p, g)
        bc1 = 1.0 - beta1 ** self.t
        bc2 = 1.0 - beta2 ** self.t
        if hp["amsgrad"]:
            # np.maximum propagates NaN, like torch.maximum.
            s = np.maximum(self._zeros(p, "max_exp_avg_sq"), exp_avg_sq)
            self.state["max_exp_avg_sq"] = s
        else:
            s = exp_avg_sq
        return p - (lr / bc1) * exp_avg / (np.sqrt(s) / math.sqrt(bc2) + eps)


class AdamWRef(AdamRef):
    defaults = {**AdamRef.defaults, "weight_decay": 1e-2, "decoupled_weight_decay": True}


class AdamaxRef(Reference):
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        beta1, beta2 = hp["betas"]
        exp_avg = self._zeros(p, "exp_avg")
        exp_inf = self._zeros(p, "exp_inf")
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        exp_avg = beta1 * exp_avg + (1.0 - beta1) * g
        exp_inf = np.maximum(beta2 * exp_inf, np.abs(g) + hp["eps"])
        self.state["exp_avg"], self.state["exp_inf"] = exp_avg, exp_inf
        return p - (hp["lr"] / (1.0 - beta1 ** self.t)) * exp_avg / exp_inf


def nadam_mu(beta1: float, momentum_decay: float, t: int) -> float:
    """``mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


class NAdamRef(Reference):
    scalar_state = ("mu_product",)
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False)

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.state["mu_product"] = 1.0

    def _update(self, p, g):
        hp = self.hp
        lr, eps, t = hp["lr"], hp["eps"], self.t
        beta1, beta2 = hp["betas"]
        p, g, exp_avg, exp_avg_sq = self._adam_moments(p, g)
        mu = nadam_mu(beta1, hp["momentum_decay"], t)
        mu_next = nadam_mu(beta1, hp["momentum_decay"], t + 1)
        mu_product = self.state["mu_product"] * mu
        mu_product_next = mu_product * mu_next
        bc2 = 1.0 - beta2 ** t
        denom = np.sqrt(exp_avg_sq / bc2) + eps
        p = p - lr * (1.0 - mu) / (1.0 - mu_product) * g / denom
        p = p - lr * mu_next / (1.0 - mu_product_next) * exp_avg / denom
        self.state["mu_product"] = mu_product
        return p


class RAdamRef(Reference):
    """torch.optim.RAdam: Adam's moments, the rectification term ``r_t`` once
    ``rho_t > 5``, plain bias-corrected momentum before."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        lr, eps, t = hp["lr"], hp["eps"], self.t
        beta1, beta2 = hp["betas"]
        p, _, exp_avg, exp_avg_sq = self._adam_moments(p, g)
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        corrected = exp_avg / bias_correction1
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2 ** t / bias_correction2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                             / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            adaptive_lr = math.sqrt(bias_correction2) / (np.sqrt(exp_avg_sq) + eps)
            return p - corrected * lr * adaptive_lr * rect
        return p - corrected * lr



class RpropRef(Reference):
    """torch.optim.Rprop: per-element step sizes, multiplied by ``etaplus`` while
    ``sign(g * prev)`` is positive, by ``etaminus`` when it is negative (where the gradient
    then counts as 0), clamped to ``step_sizes``; the step is ``-sign(g) * step_size``.
    torch's ``sign`` is 0 at NaN."""

    defaults = dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False)

    @staticmethod
    def _sign(x: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(x), 0.0, np.sign(x))

    def _update(self, p, g):
        hp = self.hp
        etaminus, etaplus = hp["etas"]
        step_size_min, step_size_max = hp["step_sizes"]
        prev = self._zeros(p, "prev")
        step_size = self._zeros(p, "step_size", hp["lr"])
        sign = self._sign(g * prev)
        factor = np.where(sign > 0, etaplus, np.where(sign < 0, etaminus, 1.0))
        # np.maximum / np.minimum propagate NaN, like torch.clamp
        step_size = np.minimum(np.maximum(step_size * factor, step_size_min), step_size_max)
        g = np.where(sign < 0, 0.0, g)
        self.state["prev"], self.state["step_size"] = g, step_size
        return p - self._sign(g) * step_size


class ASGDRef(Reference):
    """torch.optim.ASGD: SGD with the decay factor ``1 - lambd * eta`` and an average ``ax``
    of the iterates; ``eta`` and ``mu`` (starting at ``lr`` and 1) are the values computed
    at the end of the previous step."""

    scalar_state = ("eta", "mu")
    defaults = dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
                    maximize=False)

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.state["eta"], self.state["mu"] = self.hp["lr"], 1.0

    def _update(self, p, g):
        hp = self.hp
        lr, lambd, t = hp["lr"], hp["lambd"], self.t
        eta, mu = self.state["eta"], self.state["mu"]
        ax = self._zeros(p, "ax")
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        p = p * (1.0 - lambd * eta)
        p = p - eta * g
        self.state["ax"] = ax + (p - ax) * mu if mu != 1 else p.copy()
        self.state["eta"] = lr / (1.0 + lambd * lr * t) ** hp["alpha"]
        self.state["mu"] = 1.0 / max(1.0, t - hp["t0"])
        return p


class LionRef(Reference):
    """Lion (lucidrains/lion-pytorch's ``update_fn``; optax.lion up to rounding): decoupled
    weight decay, the sign of the interpolated momentum (``jnp.sign``: 0 at 0, NaN at NaN),
    then the momentum update."""

    defaults = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)

    def jump(self) -> float:
        return 2.0 * self.hp["lr"]  # (sign -1 instead of +1, or the reverse)

    def _update(self, p, g):
        hp = self.hp
        lr, wd = hp["lr"], hp["weight_decay"]
        beta1, beta2 = hp["betas"]
        exp_avg = self._zeros(p, "exp_avg")
        p = p * (1.0 - lr * wd)
        p = p - lr * np.sign(exp_avg * beta1 + (1.0 - beta1) * g)
        self.state["exp_avg"] = exp_avg * beta2 + (1.0 - beta2) * g
        return p


class ADOPTRef(Reference):
    """ADOPT (iShohei220/adopt, the single-tensor path): the first step only sets
    ``exp_avg_sq = g^2``; later steps normalize by the previous second moment, clip at
    ``(t - 1) ** 0.25``, then update the momentum and ``exp_avg_sq``."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decouple=False,
                    maximize=False)

    def _update(self, p, g):
        hp = self.hp
        lr, wd, eps = hp["lr"], hp["weight_decay"], hp["eps"]
        beta1, beta2 = hp["betas"]
        exp_avg = self._zeros(p, "exp_avg")
        exp_avg_sq = self._zeros(p, "exp_avg_sq")
        if wd != 0 and not hp["decouple"]:
            g = g + wd * p
        if self.t == 1:
            self.state["exp_avg_sq"] = exp_avg_sq + g * g
            return p
        if wd != 0 and hp["decouple"]:
            p = p - lr * wd * p
        clip = (self.t - 1) ** 0.25
        normed = np.clip(g / np.maximum(np.sqrt(exp_avg_sq), eps), -clip, clip)
        exp_avg = exp_avg + (1.0 - beta1) * (normed - exp_avg)
        self.state["exp_avg"] = exp_avg
        self.state["exp_avg_sq"] = beta2 * exp_avg_sq + (1.0 - beta2) * g * g
        return p - lr * exp_avg


def ademamix_alpha(step: int, alpha: float, warmup: int | None) -> float:
    """apple/ml-ademamix's ``linear_warmup_scheduler(step, alpha, 0, warmup)``."""
    if warmup is None or step >= warmup:
        return alpha
    return step / warmup * alpha


def ademamix_beta3(step: int, beta3: float, beta1: float, warmup: int | None) -> float:
    """apple/ml-ademamix's ``linear_hl_warmup_scheduler(step, beta3, beta1, warmup)``: the
    half-life ``ln(0.5) / ln(beta + 1e-8) - 1`` moves linearly from beta1's to beta3's."""
    if warmup is None or step >= warmup:
        return beta3
    a = step / warmup
    half = [math.log(0.5) / math.log(b + 1e-8) - 1.0 for b in (beta1, beta3)]
    return 0.5 ** (1.0 / ((1.0 - a) * half[0] + a * half[1] + 1.0))


class AdEMAMixRef(Reference):
    """AdEMAMix (apple/ml-ademamix ``pytorch/ademamix.py``): bias-corrected fast EMA and
    second moment, an uncorrected slow EMA weighted by ``alpha``, decoupled decay times lr."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, beta3_warmup=None,
                    alpha_warmup=None, eps=1e-8, weight_decay=0.0, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        lr, t = hp["lr"], self.t
        beta1, beta2, beta3 = hp["betas"]
        alpha = ademamix_alpha(t, hp["alpha"], hp["alpha_warmup"])
        beta3 = ademamix_beta3(t, beta3, beta1, hp["beta3_warmup"])
        fast = beta1 * self._zeros(p, "exp_avg_fast") + (1.0 - beta1) * g
        slow = beta3 * self._zeros(p, "exp_avg_slow") + (1.0 - beta3) * g
        sq = beta2 * self._zeros(p, "exp_avg_sq") + (1.0 - beta2) * g * g
        self.state.update(exp_avg_fast=fast, exp_avg_slow=slow, exp_avg_sq=sq)
        denom = np.sqrt(sq) / math.sqrt(1.0 - beta2**t) + hp["eps"]
        update = (fast / (1.0 - beta1**t) + alpha * slow) / denom + hp["weight_decay"] * p
        return p - lr * update


class AdanRef(Reference):
    """Adan (sail-sg/Adan, ``_single_tensor_adan``): the gradient's change ``d`` (0 on the
    first step), three bias-corrected moments, proximal (``p / (1 + lr wd)`` after the
    step) or plain (``no_prox``: ``p (1 - lr wd)`` before it) weight decay."""

    defaults = dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0,
                    no_prox=False, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        lr, wd, t = hp["lr"], hp["weight_decay"], self.t
        beta1, beta2, beta3 = hp["betas"]
        previous = -self.state["neg_pre_grad"] if t > 1 else g
        d = g - previous
        m = beta1 * self._zeros(p, "exp_avg") + (1.0 - beta1) * g
        m_d = beta2 * self._zeros(p, "exp_avg_diff") + (1.0 - beta2) * d
        n = beta3 * self._zeros(p, "exp_avg_sq") + (1.0 - beta3) * (g + beta2 * d) ** 2
        self.state.update(exp_avg=m, exp_avg_diff=m_d, exp_avg_sq=n, neg_pre_grad=-g)
        denom = np.sqrt(n) / math.sqrt(1.0 - beta3**t) + hp["eps"]
        if hp["no_prox"]:
            p = p * (1.0 - lr * wd)
        p = p - lr / (1.0 - beta1**t) * m / denom - lr * beta2 / (1.0 - beta2**t) * m_d / denom
        return p if hp["no_prox"] else p / (1.0 + lr * wd)


class ScheduleFreeSGDRef(Reference):
    """Schedule-Free SGD (facebookresearch/schedule_free, ``SGDScheduleFree``): with ``y``
    the parameter, ``c_t = w_t / sum(w_1..w_t)``, ``w_t = t^r lr_max^weight_lr_power``
    (``lr_max`` the largest warmed-up learning rate so far),
    ``y <- (1 - c) y + c z + lr (beta (1 - c) - 1) g``, ``z <- z - lr g``, the gradient
    with ``weight_decay * y`` added; ``z`` starts as the parameter. :meth:`x` is the point
    ``.eval()`` shows."""

    defaults = dict(lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                    weight_lr_power=2.0, maximize=False)
    scalar_state = ("lr_max", "weight_sum")

    def beta(self) -> float:
        return self.hp["momentum"]

    def _normalized(self, g: np.ndarray) -> np.ndarray:
        return g

    def x(self, y: np.ndarray) -> np.ndarray:
        """The average ``x`` (what ``.eval()`` puts in the parameter) of the point ``y``."""
        beta = self.beta()
        return (y - (1.0 - beta) * self.state["z"]) / beta

    def _update(self, p, g):
        hp, t = self.hp, self.t
        warmup = hp["warmup_steps"]
        lr = hp["lr"] * min(1.0, t / warmup) if warmup else hp["lr"]
        lr_max = max(lr, self.state.get("lr_max", -1.0))
        weight = t ** hp["r"] * lr_max ** hp["weight_lr_power"]
        weight_sum = self.state.get("weight_sum", 0.0) + weight
        c = weight / weight_sum if weight_sum else 0.0
        z = self.state.get("z", p)
        gn = self._normalized(g) + hp["weight_decay"] * p
        y = (1.0 - c) * p + c * z + lr * (self.beta() * (1.0 - c) - 1.0) * gn
        self.state.update(z=z - lr * gn, lr_max=lr_max, weight_sum=weight_sum)
        return y


class ScheduleFreeAdamWRef(ScheduleFreeSGDRef):
    """Schedule-Free AdamW (``AdamWScheduleFree``): Schedule-Free SGD with ``beta1`` for
    ``beta`` and the gradient divided by ``sqrt(v / (1 - beta2^t)) + eps``,
    ``v = beta2 v + (1 - beta2) g^2`` (no first moment)."""

    defaults = dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    warmup_steps=0, r=0.0, weight_lr_power=2.0, maximize=False)

    def beta(self) -> float:
        return self.hp["betas"][0]

    def _normalized(self, g):
        beta2 = self.hp["betas"][1]
        v = beta2 * self._zeros(g, "exp_avg_sq") + (1.0 - beta2) * g * g
        self.state["exp_avg_sq"] = v
        return g / (np.sqrt(v / (1.0 - beta2**self.t)) + self.hp["eps"])


def trust_ratio(p: np.ndarray, u: np.ndarray, coefficient: float = 1.0,
                eps: float = 0.0) -> float:
    """``coefficient * |p| / (|u| + eps)`` over the whole tensor, 1 if either norm is 0
    (optax's ``scale_by_trust_ratio``)."""
    pn, un = float(np.sqrt(np.sum(p * p))), float(np.sqrt(np.sum(u * u)))
    return 1.0 if pn == 0.0 or un == 0.0 else coefficient * pn / (un + eps)


class LAMBRef(Reference):
    """LAMB (``optax.lamb``): Adam's bias-corrected step plus ``wd * p``, times the
    tensor's trust ratio ``|p| / |u|``."""

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, maximize=False)

    def _update(self, p, g):
        hp, t = self.hp, self.t
        beta1, beta2 = hp["betas"]
        m = (1.0 - beta1) * g + beta1 * self._zeros(p, "exp_avg")
        v = (1.0 - beta2) * g * g + beta2 * self._zeros(p, "exp_avg_sq")
        self.state.update(exp_avg=m, exp_avg_sq=v)
        u = (m / (1.0 - beta1**t)) / (np.sqrt(v / (1.0 - beta2**t)) + hp["eps"])
        u = u + hp["weight_decay"] * p
        return p - hp["lr"] * trust_ratio(p, u) * u


class LARSRef(Reference):
    """LARS (``optax.lars``): ``u = g + wd p`` times the tensor's trust ratio
    ``tc |p| / (|u| + eps)``, then ``-lr``, then momentum (optax's ``trace``)."""

    defaults = dict(lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=0.0,
                    nesterov=False, maximize=False)

    def _update(self, p, g):
        hp = self.hp
        u = g + hp["weight_decay"] * p
        u = -hp["lr"] * trust_ratio(p, u, hp["trust_coefficient"], hp["eps"]) * u
        trace = u + hp["momentum"] * self._zeros(p, "momentum_buffer")
        self.state["momentum_buffer"] = trace
        return p + (u + hp["momentum"] * trace if hp["nesterov"] else trace)


class MuonRef(Reference):
    """Muon (``torch.optim.Muon``, its code: the momentum as an EMA, torch's ``lerp``): the
    Nesterov direction orthogonalised by Newton–Schulz iterations, in float64 (torch runs
    them in bfloat16), scaled by the adjusted learning rate; decoupled weight decay."""

    defaults = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                    ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                    adjust_lr_fn=None)
    invalid = [({"adjust_lr_fn": "arbitrary"}, ("adjust_lr_fn",))]

    @staticmethod
    def orthogonalize(d, coefficients, steps, eps):
        a, b, c = coefficients
        x = d.T if d.shape[0] > d.shape[1] else d
        x = x / max(float(np.linalg.norm(x)), eps)
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.T if d.shape[0] > d.shape[1] else x

    def _update(self, p, g):
        hp = self.hp
        mu = hp["momentum"]
        buf = mu * self._zeros(p, "momentum_buffer") + (1.0 - mu) * g
        self.state["momentum_buffer"] = buf
        d = (1.0 - mu) * g + mu * buf if hp["nesterov"] else buf
        o = self.orthogonalize(d, hp["ns_coefficients"], hp["ns_steps"], hp["eps"])
        rows, columns = p.shape
        if hp["adjust_lr_fn"] == "match_rms_adamw":
            lr = hp["lr"] * 0.2 * math.sqrt(max(rows, columns))
        else:
            lr = hp["lr"] * math.sqrt(max(1.0, rows / columns))
        return p * (1.0 - hp["lr"] * hp["weight_decay"]) - lr * o


class AdafactorRef(Reference):
    """Adafactor (``torch.optim.Adafactor``): relative step ``rho = min(lr, 1/sqrt(t))``,
    ``alpha = max(eps2, RMS(p)) rho``; a second moment factored into row and column means
    over the last two dimensions of parameters with two or more (``row_var``, ``col_var``),
    full for others (``variance``), averaged with weight ``t**beta2_decay``;
    ``u = g / sqrt(max(v, eps1^2))`` clipped by ``max(1, RMS(u) / d)``. ``eps1=None`` is
    the machine epsilon of the parameter's dtype."""

    defaults = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                    maximize=False)

    dtype: Any = None

    def step(self, param: Any, grad: Any) -> np.ndarray:
        if self.dtype is None:  # (eps1=None: that of the first parameter's dtype)
            self.dtype = np.asarray(param).dtype
        return super().step(param, grad)

    def _update(self, p, g):
        hp, t = self.hp, self.t
        eps1, eps2 = hp["eps"]
        if eps1 is None:
            import ml_dtypes

            eps1 = float(ml_dtypes.finfo(self.dtype).eps)
        weight = t ** hp["beta2_decay"]
        rho = min(hp["lr"], 1.0 / math.sqrt(t))
        size = max(p.size, 1)
        alpha = max(eps2, float(np.sqrt(np.sum(p * p) / size))) * rho
        p = p * (1.0 - hp["lr"] * hp["weight_decay"])
        if p.ndim >= 2:
            with np.errstate(all="ignore"):  # (empty rows or columns: means of NaN)
                rows = (1.0 - weight) * self._factor(p, "row_var", -1) + weight * np.sum(
                    g * g, axis=-1, keepdims=True) / p.shape[-1]
                cols = (1.0 - weight) * self._factor(p, "col_var", -2) + weight * np.sum(
                    g * g, axis=-2, keepdims=True) / p.shape[-2]
                v = rows * cols / np.maximum(np.sum(rows, axis=-2, keepdims=True)
                                             / p.shape[-2], eps1)
            self.state.update(row_var=rows, col_var=cols)
        else:
            v = (1.0 - weight) * self._zeros(p, "variance") + weight * g * g
            self.state["variance"] = v
        u = g / np.sqrt(np.maximum(v, eps1 * eps1))
        denom = max(1.0, float(np.sqrt(np.sum(u * u) / size)) / hp["d"])
        return p - alpha / denom * u

    def _factor(self, p, name, axis):
        if name not in self.state:
            shape = list(p.shape)
            shape[axis] = 1
            self.state[name] = np.zeros(shape)
        return self.state[name]


#: Reference class per optimizer name (fastgd's class names).
REFERENCES: dict[str, type[Reference]] = {
    "SGD": SGDRef, "Adagrad": AdagradRef, "Adadelta": AdadeltaRef, "RMSprop": RMSpropRef,
    "Adam": AdamRef, "AdamW": AdamWRef, "Adamax": AdamaxRef, "NAdam": NAdamRef,
    "RAdam": RAdamRef, "Rprop": RpropRef, "ASGD": ASGDRef, "Lion": LionRef, "ADOPT": ADOPTRef,
    "AdEMAMix": AdEMAMixRef, "Adan": AdanRef, "ScheduleFreeSGD": ScheduleFreeSGDRef,
    "ScheduleFreeAdamW": ScheduleFreeAdamWRef, "LAMB": LAMBRef, "LARS": LARSRef,
    "Muon": MuonRef, "Adafactor": AdafactorRef,
}
