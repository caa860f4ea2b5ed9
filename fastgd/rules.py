"""Per-element update rules: the math of every algorithm, in exactly one place.

Each rule maps the scalars of one element (parameter ``p``, gradient ``g`` and the
algorithm's state) to their new values. The CPU kernels (``prange`` and serial loops) and
the CUDA kernels are all generated from these functions, so the targets cannot drift apart.

Conventions that keep the loops fast and exact:

* Rules take scalars only and contain no float literals: every coefficient (``1 - beta``,
  bias corrections, the decayed learning rate) is computed once per step on the host and
  passed in, already cast to the array dtype, so a float32 loop stays in float32.
* Arguments come in this order: ``p, g``, the state values, the coefficients, the runtime
  flags (loop-invariant booleans), and last the *structural* flags ``has_<state>`` that say
  which optional state arrays exist; the kernel generator writes those as literals. The
  algorithm table (:mod:`fastgd.algorithms`) checks every rule's signature at import.
* Optional state that is absent is passed as a placeholder scalar and its result discarded.
* ``g`` arrives already multiplied by the kernel's ``grad_scale``, which is -1 for
  ``maximize`` (an exact negation) times the clipping factor: a ``maximize`` branch inside
  the loop would cost 10-20% of the bandwidth.
* NaN and Inf propagate as in ``torch.optim``; ``nan_max`` is a NaN-propagating maximum
  like ``torch.maximum``.
"""

from __future__ import annotations

import math

import numba

rule = numba.njit(inline="always", error_model="numpy")


@rule
def nan_max(a, b):
    """``max(a, b)`` that returns NaN when either argument is NaN (``torch.maximum``)."""
    return a if (a >= b or a != a) else b


@rule
def nan_min(a, b):
    """``min(a, b)`` that returns NaN when either argument is NaN (``torch.minimum``)."""
    return a if (a <= b or a != a) else b


@rule
def adam_moments(p, g, exp_avg, exp_avg_sq, weight_decay, decay_factor, beta1,
                 one_minus_beta1, beta2, one_minus_beta2, l2, decoupled):
    """The part Adam and NAdam share: decoupled weight decay ``p *= 1 - lr * wd`` or L2
    ``g += wd * p``; ``m = beta1 m + (1 - beta1) g``;
    ``v = beta2 v + (1 - beta2) g^2``. Returns ``(p, g, m, v)``."""
    if decoupled:
        p = p * decay_factor
    if l2:
        g = g + weight_decay * p
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    return p, g, exp_avg, exp_avg_sq


@rule
def sgd_rule(p, g, momentum_buffer, lr, weight_decay, momentum, one_minus_dampening,
             l2, first_step, nesterov, has_momentum_buffer):
    """SGD with optional momentum, dampening and Nesterov momentum.

    ``g += wd * p``; with momentum ``buf = g`` on the first step, else
    ``buf = momentum * buf + (1 - dampening) * g``; ``d = g + momentum * buf`` (Nesterov) or
    ``d = buf``; without momentum ``d = g``. Then ``p -= lr * d``.
    """
    if l2:
        g = g + weight_decay * p
    if has_momentum_buffer:
        if first_step:
            momentum_buffer = g
        else:
            momentum_buffer = momentum * momentum_buffer + one_minus_dampening * g
        if nesterov:
            d = g + momentum * momentum_buffer
        else:
            d = momentum_buffer
    else:
        d = g
    return p - lr * d, momentum_buffer


@rule
def adagrad_rule(p, g, sum, clr, weight_decay, eps, l2):
    """Adagrad: ``g += wd * p; sum += g * g; p -= clr * g / (sqrt(sum) + eps)``.

    ``clr = lr / (1 + (t - 1) * lr_decay)`` is computed on the host.
    """
    if l2:
        g = g + weight_decay * p
    sum = sum + g * g
    return p - clr * g / (math.sqrt(sum) + eps), sum


@rule
def adadelta_rule(p, g, square_avg, acc_delta, lr, weight_decay, rho, one_minus_rho, eps,
                  l2):
    """Adadelta.

    ``square_avg = rho * square_avg + (1 - rho) * g * g``;
    ``delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g``;
    ``acc_delta = rho * acc_delta + (1 - rho) * delta * delta``; ``p -= lr * delta``.
    """
    if l2:
        g = g + weight_decay * p
    square_avg = rho * square_avg + one_minus_rho * g * g
    delta = math.sqrt(acc_delta + eps) / math.sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + one_minus_rho * delta * delta
    return p - lr * delta, square_avg, acc_delta


@rule
def rmsprop_rule(p, g, square_avg, momentum_buffer, grad_avg, lr, weight_decay, alpha,
                 one_minus_alpha, eps, momentum, l2, has_momentum_buffer, has_grad_avg):
    """RMSprop with optional momentum and centering.

    ``square_avg = alpha * square_avg + (1 - alpha) * g * g``; centered:
    ``grad_avg = alpha * grad_avg + (1 - alpha) * g``,
    ``avg = sqrt(square_avg - grad_avg**2) + eps``, else ``avg = sqrt(square_avg) + eps``;
    momentum: ``buf = momentum * buf + g / avg; p -= lr * buf``, else ``p -= lr * g / avg``.
    """
    if l2:
        g = g + weight_decay * p
    square_avg = alpha * square_avg + one_minus_alpha * g * g
    if has_grad_avg:
        grad_avg = alpha * grad_avg + one_minus_alpha * g
        avg = math.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = math.sqrt(square_avg) + eps
    if has_momentum_buffer:
        momentum_buffer = momentum * momentum_buffer + g / avg
        p = p - lr * momentum_buffer
    else:
        p = p - lr * g / avg
    return p, square_avg, momentum_buffer, grad_avg


@rule
def adam_rule(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, weight_decay,
              decay_factor, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bc2, eps,
              l2, decoupled, has_max_exp_avg_sq):
    """Adam / AdamW (/ AMSGrad).

    L2: ``g += wd * p``; decoupled (AdamW): ``p *= 1 - lr * wd`` (``decay_factor``);
    ``m = beta1 * m + (1 - beta1) * g``; ``v = beta2 * v + (1 - beta2) * g * g``;
    ``s = v`` or, with AMSGrad, ``vmax = max(vmax, v); s = vmax``;
    ``p -= (lr / bc1) * m / (sqrt(s) / sqrt(bc2) + eps)`` with ``bc_i = 1 - beta_i**t``.
    """
    p, g, exp_avg, exp_avg_sq = adam_moments(
        p, g, exp_avg, exp_avg_sq, weight_decay, decay_factor, beta1, one_minus_beta1, beta2,
        one_minus_beta2, l2, decoupled)
    if has_max_exp_avg_sq:
        max_exp_avg_sq = nan_max(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    p = p - step_size * exp_avg / (math.sqrt(second) / sqrt_bc2 + eps)
    return p, exp_avg, exp_avg_sq, max_exp_avg_sq


@rule
def adamax_rule(p, g, exp_avg, exp_inf, clr, weight_decay, beta1, one_minus_beta1, beta2,
                eps, l2):
    """Adamax: ``m = beta1 * m + (1 - beta1) * g; u = max(beta2 * u, |g| + eps)``;
    ``p -= (lr / (1 - beta1**t)) * m / u``.
    """
    if l2:
        g = g + weight_decay * p
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_inf = nan_max(beta2 * exp_inf, abs(g) + eps)
    return p - clr * exp_avg / exp_inf, exp_avg, exp_inf


@rule
def nadam_rule(p, g, exp_avg, exp_avg_sq, grad_coef, avg_coef, weight_decay, decay_factor,
               beta1, one_minus_beta1, beta2, one_minus_beta2, bc2, eps, l2,
               decoupled):
    """NAdam (Nesterov-accelerated Adam with momentum decay).

    ``m``, ``v`` as in Adam; ``denom = sqrt(v / bc2) + eps``;
    ``p -= lr (1 - mu_t) / (1 - prod_{i<=t} mu_i) * g / denom``;
    ``p -= lr mu_{t+1} / (1 - prod_{i<=t+1} mu_i) * m / denom`` (``grad_coef``,
    ``avg_coef`` from the host).
    """
    p, g, exp_avg, exp_avg_sq = adam_moments(
        p, g, exp_avg, exp_avg_sq, weight_decay, decay_factor, beta1, one_minus_beta1, beta2,
        one_minus_beta2, l2, decoupled)
    denom = math.sqrt(exp_avg_sq / bc2) + eps
    p = p - grad_coef * g / denom
    p = p - avg_coef * exp_avg / denom
    return p, exp_avg, exp_avg_sq


@rule
def radam_rule(p, g, exp_avg, exp_avg_sq, step_size, weight_decay, decay_factor, beta1,
               one_minus_beta1, beta2, one_minus_beta2, eps, l2, decoupled, rectified):
    """RAdam (rectified Adam).

    Weight decay and moments as in Adam; once the variance of the adaptive step is
    tractable (``rectified``, decided on the host from ``t`` and ``beta2``):
    ``p -= step_size * m / (sqrt(v) + eps)`` with
    ``step_size = lr / bc1 * r_t * sqrt(bc2)``; before that ``p -= (lr / bc1) * m``.
    """
    p, g, exp_avg, exp_avg_sq = adam_moments(
        p, g, exp_avg, exp_avg_sq, weight_decay, decay_factor, beta1, one_minus_beta1, beta2,
        one_minus_beta2, l2, decoupled)
    if rectified:
        p = p - step_size * exp_avg / (math.sqrt(exp_avg_sq) + eps)
    else:
        p = p - step_size * exp_avg
    return p, exp_avg, exp_avg_sq


@rule
def rprop_rule(p, g, prev, step_size, etaminus, etaplus, step_size_min, step_size_max, zero):
    """Rprop: a step size per element, grown while the gradient keeps its sign.

    ``s = sign(g * prev)``; ``step_size *= etaplus`` where ``s > 0``, ``etaminus`` where
    ``s < 0`` (and there ``g = 0``: no step, and the next step sees no sign change);
    ``step_size = clamp(step_size, step_size_min, step_size_max)``;
    ``p -= sign(g) * step_size``; ``prev = g``. As in torch, ``sign`` is 0 at NaN: a NaN
    gradient element leaves ``p`` and its step size as they are (and is kept in ``prev``).
    """
    gp = g * prev
    if gp > zero:
        step_size = step_size * etaplus
    elif gp < zero:
        step_size = step_size * etaminus
        g = zero
    step_size = nan_min(nan_max(step_size, step_size_min), step_size_max)
    if g > zero:
        p = p - step_size
    elif g < zero:
        p = p + step_size
    return p, g, step_size


@rule
def asgd_rule(p, g, ax, step_size, decay, weight_decay, ax_weight, l2, averaging):
    """ASGD (averaged SGD).

    ``g += wd * p``; ``p = p * decay - step_size * g`` (``step_size``: this step's ``eta``,
    ``decay = 1 - lambd * eta``); ``ax = ax + (p - ax) * ax_weight`` while averaging
    (``ax_weight``: this step's ``mu``, below 1), else ``ax = p``.
    """
    if l2:
        g = g + weight_decay * p
    p = p * decay - step_size * g
    if averaging:
        ax = ax + (p - ax) * ax_weight
    else:
        ax = p
    return p, ax


@rule
def sign(x, one, zero):
    """``sign(x)``: ``one`` or ``-one``, and ``x`` itself at zero (keeping the sign of
    ``-0.0``) and at NaN (which propagates), as ``jnp.sign``."""
    if x > zero:
        return one
    if x < zero:
        return -one
    return x


@rule
def lion_rule(p, g, exp_avg, lr, decay_factor, beta1, one_minus_beta1, beta2,
              one_minus_beta2, one, zero):
    """Lion (evolved sign momentum).

    ``p *= 1 - lr * wd`` (decoupled weight decay); ``p -= lr * sign(beta1 m + (1 - beta1) g)``;
    ``m = beta2 m + (1 - beta2) g``.
    """
    p = p * decay_factor
    p = p - lr * sign(exp_avg * beta1 + one_minus_beta1 * g, one, zero)
    exp_avg = exp_avg * beta2 + one_minus_beta2 * g
    return p, exp_avg


@rule
def lerp(start, end, weight, rest, low):
    """torch's ``lerp(start, end, weight)``: ``start + weight (end - start)`` when ``low``
    (``|weight| < 0.5``), else ``end - (end - start) rest`` (``rest = 1 - weight``)."""
    if low:
        return start + weight * (end - start)
    return end - (end - start) * rest


@rule
def adopt_rule(p, g, exp_avg, exp_avg_sq, lr, weight_decay, neg_lr_wd, lerp_weight,
               lerp_rest, one_minus_beta2, beta2, eps, clip, l2, decoupled, first, lerp_low):
    """ADOPT (Adam with the gradient normalized by the second moment of the *previous*
    steps, then clipped).

    ``g += wd * p`` (L2); on the first step only ``v = g^2``. Then: ``p += -lr wd p``
    (decoupled); ``n = clamp(g / max(sqrt(v), eps), -clip, clip)`` (``clip = (t - 1)^0.25``);
    ``m = lerp(m, n, 1 - beta1)`` (torch's two-branch ``lerp``: ``lerp_low`` when
    ``1 - beta1 < 0.5``); ``p -= lr m``; ``v = beta2 v + (1 - beta2) g^2``.
    """
    if l2:
        g = g + weight_decay * p
    if first:
        exp_avg_sq = exp_avg_sq + g * g
        return p, exp_avg, exp_avg_sq
    if decoupled:
        p = p + neg_lr_wd * p
    n = g / nan_max(math.sqrt(exp_avg_sq), eps)
    n = nan_min(nan_max(n, -clip), clip)
    exp_avg = lerp(exp_avg, n, lerp_weight, lerp_rest, lerp_low)
    p = p - lr * exp_avg
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (g * g)
    return p, exp_avg, exp_avg_sq


@rule
def ademamix_rule(p, g, exp_avg_fast, exp_avg_slow, exp_avg_sq, lr, weight_decay, bc1,
                  beta1, one_minus_beta1, beta2, one_minus_beta2, beta3, one_minus_beta3,
                  sqrt_bc2, alpha, eps):
    """AdEMAMix (a fast and a slow EMA of the gradient).

    ``m1 = beta1 m1 + (1 - beta1) g``; ``m2 = beta3 m2 + (1 - beta3) g`` (``beta3`` and
    ``alpha`` this step's, after their warmups); ``v = beta2 v + (1 - beta2) g^2``;
    ``u = (m1 / (1 - beta1^t) + alpha m2) / (sqrt(v) / sqrt(1 - beta2^t) + eps) + wd p``;
    ``p -= lr u``.
    """
    exp_avg_fast = exp_avg_fast * beta1 + one_minus_beta1 * g
    exp_avg_slow = exp_avg_slow * beta3 + one_minus_beta3 * g
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (g * g)
    denom = math.sqrt(exp_avg_sq) / sqrt_bc2 + eps
    update = (exp_avg_fast / bc1 + alpha * exp_avg_slow) / denom
    update = update + weight_decay * p
    p = p - lr * update
    return p, exp_avg_fast, exp_avg_slow, exp_avg_sq


@rule
def adan_rule(p, g, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, step_size,
              step_size_diff, decay_factor, prox_factor, beta1, one_minus_beta1, beta2,
              one_minus_beta2, beta3, one_minus_beta3, sqrt_bc3, eps, first, no_prox):
    """Adan (adaptive Nesterov momentum), sail-sg/Adan's formulation.

    ``d = g - g_prev`` (0 on the first step); ``m = beta1 m + (1 - beta1) g``;
    ``m_d = beta2 m_d + (1 - beta2) d``; ``u = g + beta2 d``;
    ``n = beta3 n + (1 - beta3) u^2``; ``den = sqrt(n) / sqrt(1 - beta3^t) + eps``;
    ``p -= lr / (1 - beta1^t) m / den + lr beta2 / (1 - beta2^t) m_d / den``, with weight
    decay ``p *= 1 - lr wd`` before (``no_prox``) or ``p /= 1 + lr wd`` after;
    ``neg_pre_grad = -g``.
    """
    if first:
        neg_pre_grad = -g
    diff = neg_pre_grad + g
    exp_avg = exp_avg * beta1 + one_minus_beta1 * g
    exp_avg_diff = exp_avg_diff * beta2 + one_minus_beta2 * diff
    u = diff * beta2 + g
    exp_avg_sq = exp_avg_sq * beta3 + one_minus_beta3 * (u * u)
    denom = math.sqrt(exp_avg_sq) / sqrt_bc3 + eps
    if no_prox:
        p = p * decay_factor
    p = p - step_size * (exp_avg / denom)
    p = p - step_size_diff * (exp_avg_diff / denom)
    if not no_prox:
        p = p / prox_factor
    return p, exp_avg, exp_avg_sq, exp_avg_diff, -g


@rule
def schedule_free_step(p, gn, z, lr, y_coef, weight_decay, ckp1, ckp1_rest, l2, ckp1_low):
    """The step Schedule-Free SGD and AdamW share, with ``p`` holding ``y`` (the point the
    gradient is taken at) and ``gn`` the (normalized) gradient: ``gn += wd y``;
    ``y = lerp(y, z, c)``; ``y += lr (beta (1 - c) - 1) gn`` (``y_coef``);
    ``z -= lr gn``. Returns ``(y, z)``."""
    if l2:
        gn = gn + weight_decay * p
    p = lerp(p, z, ckp1, ckp1_rest, ckp1_low)
    p = p + y_coef * gn
    z = z - lr * gn
    return p, z


@rule
def schedule_free_sgd_rule(p, g, z, lr, y_coef, weight_decay, ckp1, ckp1_rest, l2,
                           ckp1_low):
    """Schedule-Free SGD: :func:`schedule_free_step` with the gradient itself."""
    return schedule_free_step(p, g, z, lr, y_coef, weight_decay, ckp1, ckp1_rest, l2,
                              ckp1_low)


@rule
def schedule_free_adamw_rule(p, g, z, exp_avg_sq, lr, y_coef, weight_decay, ckp1, ckp1_rest,
                             beta2, one_minus_beta2, bc2, eps, l2, ckp1_low):
    """Schedule-Free AdamW: ``v = beta2 v + (1 - beta2) g^2``, then
    :func:`schedule_free_step` with ``g / (sqrt(v / (1 - beta2^t)) + eps)``."""
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * (g * g)
    gn = g / (math.sqrt(exp_avg_sq / bc2) + eps)
    p, z = schedule_free_step(p, gn, z, lr, y_coef, weight_decay, ckp1, ckp1_rest, l2,
                              ckp1_low)
    return p, z, exp_avg_sq


@rule
def schedule_free_mode_rule(p, g, z, weight, rest, low):
    """Schedule-Free's switch between its points, ``p = lerp(p, z, weight)``: from ``y`` to
    ``x`` (``.eval()``, ``weight = 1 - 1/beta``) and back (``.train()``,
    ``weight = 1 - beta``). ``g`` is unused (its kernels read the parameter there)."""
    return lerp(p, z, weight, rest, low), z


@rule
def lamb_direction(p, exp_avg, exp_avg_sq, inv_bc1, inv_bc2, eps, weight_decay):
    """LAMB's direction before its trust ratio: the bias-corrected Adam step plus weight
    decay, ``m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + wd p`` (``inv_bc``: the
    reciprocals of the bias corrections)."""
    return (exp_avg * inv_bc1) / (math.sqrt(exp_avg_sq * inv_bc2) + eps) + weight_decay * p


@rule
def lamb_rule(p, g, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2, one_minus_beta2,
              inv_bc1, inv_bc2, eps, weight_decay):
    """LAMB, first pass: Adam's moments, and the squares of ``p`` and of the direction
    ``u`` (:func:`lamb_direction`), summed over the tensor for its trust ratio."""
    exp_avg = one_minus_beta1 * g + beta1 * exp_avg
    exp_avg_sq = one_minus_beta2 * (g * g) + beta2 * exp_avg_sq
    u = lamb_direction(p, exp_avg, exp_avg_sq, inv_bc1, inv_bc2, eps, weight_decay)
    return p, exp_avg, exp_avg_sq, p * p, u * u


@rule
def lamb_apply_rule(p, g, exp_avg, exp_avg_sq, inv_bc1, inv_bc2, eps, weight_decay,
                    step_size):
    """LAMB, second pass: ``p -= lr * ratio * u`` (``step_size``; the moments are read
    only, ``g`` is not used)."""
    p = p - step_size * lamb_direction(p, exp_avg, exp_avg_sq, inv_bc1, inv_bc2, eps,
                                       weight_decay)
    return p, exp_avg, exp_avg_sq


@rule
def lars_rule(p, g, momentum_buffer, weight_decay):
    """LARS, first pass: the squares of ``p`` and of ``u = g + wd p``, summed over the
    tensor for its trust ratio (the momentum is not touched)."""
    u = g + weight_decay * p
    return p, momentum_buffer, p * p, u * u


@rule
def lars_apply_rule(p, g, momentum_buffer, weight_decay, step_size, momentum, nesterov):
    """LARS, second pass: ``u = -lr ratio (g + wd p)`` (``step_size = -lr ratio``);
    ``buf = u + momentum buf``; ``p += u + momentum buf`` (``nesterov``) or ``buf``."""
    u = step_size * (g + weight_decay * p)
    momentum_buffer = u + momentum * momentum_buffer
    if nesterov:
        return p + (u + momentum * momentum_buffer), momentum_buffer
    return p + momentum_buffer, momentum_buffer


@rule
def muon_rule(p, g, momentum_buffer, one_minus_momentum, momentum, buffer_low,
              nesterov_low, nesterov):
    """Muon, first pass: ``buf = lerp(buf, g, 1 - momentum)``; the direction to
    orthogonalise, ``d = lerp(g, buf, momentum)`` (``nesterov``) or ``buf``, squared and
    summed over the tensor for its Frobenius norm."""
    momentum_buffer = lerp(momentum_buffer, g, one_minus_momentum, momentum, buffer_low)
    d = momentum_buffer
    if nesterov:
        d = lerp(g, momentum_buffer, momentum, one_minus_momentum, nesterov_low)
    return p, momentum_buffer, d * d


@rule
def muon_apply_rule(p, g, momentum_buffer, decay_factor, step_size):
    """Muon, second pass: ``p = p (1 - lr wd) + step_size O`` with the orthogonalised
    direction ``O`` in ``g``'s place (``step_size = -adjusted lr``; the momentum buffer is
    not touched)."""
    return p * decay_factor + step_size * g, momentum_buffer


@rule
def adafactor_rule(p, g, variance, row_var, col_var, weight, rest, floor, low):
    """Adafactor, first pass (vectors): ``variance = lerp(variance, g^2, t^beta2_decay)``;
    the squares of ``p`` and of ``u = g / sqrt(max(variance, eps1^2))`` (``floor``), summed
    over the tensor for its step size (the factors of matrices are not used)."""
    variance = lerp(variance, g * g, weight, rest, low)
    u = g / math.sqrt(nan_max(variance, floor))
    return p, variance, row_var, col_var, p * p, u * u


@rule
def adafactor_apply_rule(p, g, variance, row_var, col_var, floor, decay_factor, step_size):
    """Adafactor, second pass (vectors): ``p = p (1 - lr wd) - step_size u`` with
    ``step_size = alpha / denom`` (the variance is read only)."""
    u = g / math.sqrt(nan_max(variance, floor))
    return p * decay_factor - step_size * u, variance, row_var, col_var
