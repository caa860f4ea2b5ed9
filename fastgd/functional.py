"""Functional API: one fused, in-place pass per call, with explicit state arrays.

Every function checks all of its arguments first (raising ``TypeError``/``ValueError`` that
name the argument, with nothing written), then updates ``param`` and the state arrays in
place in a single pass. State arrays must have ``param``'s shape, dtype and memory order
(float32 state for float16/bfloat16 parameters, whose updates are computed in float32);
their names follow ``torch.optim``'s state keys. ``step`` is the 1-based number of the step
being taken (``t``). ``g`` below is the gradient, negated when ``maximize=True``.

Host arrays run on the CPU. GPU arrays (anything with ``__cuda_array_interface__``: Numba
device arrays, CuPy, torch CUDA tensors) run on the GPU, in place, queued on ``stream``
(default: the legacy default stream, see :mod:`fastgd.cuda`); mixing host and GPU arrays is
refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastgd import algorithms, cpu
from fastgd.dispatch import check_stream, gpu_of, on_gpu, prepare
from fastgd.hyperparams import (
    StepScalars,
    adadelta_scalars,
    adagrad_scalars,
    adam_scalars,
    adamax_scalars,
    nadam_scalars,
    rmsprop_scalars,
    sgd_scalars,
)

ArrayLike = Any  # NumPy array, torch CPU tensor, or anything NumPy views without copying

__all__ = ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "adamax", "nadam"]


def run_step(spec: algorithms.RuleSpec, param: ArrayLike, grad: ArrayLike,
             states: dict[str, ArrayLike | None], scalars: StepScalars,
             stream: Any = None) -> None:
    """Check the arrays, then apply one step of ``spec`` with precomputed ``scalars``."""
    optional = {state for state, _ in spec.optional}
    for name in scalars.optional:
        if states.get(name) is None:
            raise ValueError(f"{name} is required with these hyperparameters (got None)")
    used = {name: states[name] for name in spec.states
            if name not in optional or name in scalars.optional}
    arrays, storage = prepare(param, grad, used)
    if stream is not None:
        check_stream(stream, arrays)
    with on_gpu(gpu_of(arrays[0])):
        launch_flat(spec, arrays, scalars, stream, storage)


def compute_dtype(arrays: list[Any], storage: str) -> np.dtype:
    """dtype the kernel computes in: the param's, float32 for float16/bfloat16 storage."""
    return np.dtype(np.float32) if storage else np.dtype(arrays[0].dtype)


def launch_flat(spec: algorithms.RuleSpec, arrays: list[Any], scalars: StepScalars,
                stream: Any = None, storage: str = "") -> None:
    """Run a step on already checked flat kernel views (param, grad, [master], states in
    rule order) of ``storage`` format (see :mod:`fastgd.kernelgen`).

    NumPy arrays run on the CPU; device arrays on the GPU, queued on ``stream`` (which the
    caller has checked, :func:`fastgd.dispatch.check_stream`).
    """
    kernel_scalars = scalars.kernel_scalars(compute_dtype(arrays, storage))
    if isinstance(arrays[0], np.ndarray):
        cpu.launch(spec, scalars.optional, arrays, kernel_scalars, storage)
    else:
        from fastgd import cuda

        cuda.launch(spec, scalars.optional, arrays, kernel_scalars, stream)


def launch_many_flat(spec: algorithms.RuleSpec, tensors: list[list[Any]],
                     scalars: StepScalars, stream: Any = None, storage: str = "",
                     addresses: list[list[int]] | None = None) -> None:
    """Run one step over many tensors (checked flat kernel views of one dtype, storage
    format and device) at once: one parallel region on the CPU, one launch on the GPU (on
    ``stream``, checked like :func:`launch_flat`'s). ``addresses``, if known, are those of
    the arrays of ``tensors``."""
    kernel_scalars = scalars.kernel_scalars(compute_dtype(tensors[0], storage))
    if isinstance(tensors[0][0], np.ndarray):
        cpu.launch_many(spec, scalars.optional, tensors, kernel_scalars, storage, addresses)
    else:
        from fastgd import cuda

        cuda.launch_many(spec, scalars.optional, tensors, kernel_scalars, stream, addresses)


def sgd(param: ArrayLike, grad: ArrayLike, momentum_buffer: ArrayLike | None = None, *,
        lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
        first_step: bool = False, stream: Any = None) -> None:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    ``g += weight_decay * p``; if ``momentum != 0``:
    ``buf = g`` when ``first_step`` (torch's first step), else
    ``buf = momentum * buf + (1 - dampening) * g``; ``d = g + momentum * buf`` if
    ``nesterov`` else ``d = buf``. Without momentum ``d = g``. Then ``p -= lr * d``.

    ``momentum_buffer`` is required when ``momentum != 0`` (and left alone otherwise).
    With a zero buffer and ``first_step=False`` the buffer is an exponential moving average
    from the first step on (``dampening = beta``).
    """
    scalars = sgd_scalars(lr=lr, momentum=momentum, dampening=dampening,
                          weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                          first_step=first_step)
    run_step(algorithms.SGD, param, grad, {"momentum_buffer": momentum_buffer}, scalars, stream)


def adagrad(param: ArrayLike, grad: ArrayLike, sum: ArrayLike, *, step: int,  # noqa: A002
            lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            eps: float = 1e-10, maximize: bool = False,
            stream: Any = None) -> None:
    """Adagrad.

    ``g += weight_decay * p; sum += g * g;
    p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)``.
    """
    scalars = adagrad_scalars(step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              eps=eps, maximize=maximize)
    run_step(algorithms.ADAGRAD, param, grad, {"sum": sum}, scalars, stream)


def adadelta(param: ArrayLike, grad: ArrayLike, square_avg: ArrayLike, acc_delta: ArrayLike,
             *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, maximize: bool = False,
             stream: Any = None) -> None:
    """Adadelta.

    ``square_avg = rho * square_avg + (1 - rho) g^2``;
    ``delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g``;
    ``acc_delta = rho * acc_delta + (1 - rho) delta^2``; ``p -= lr * delta``.
    """
    scalars = adadelta_scalars(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                               maximize=maximize)
    run_step(algorithms.ADADELTA, param, grad,
             {"square_avg": square_avg, "acc_delta": acc_delta}, scalars, stream)


def rmsprop(param: ArrayLike, grad: ArrayLike, square_avg: ArrayLike,
            momentum_buffer: ArrayLike | None = None, grad_avg: ArrayLike | None = None, *,
            lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
            maximize: bool = False, stream: Any = None) -> None:
    """RMSprop.

    ``square_avg = alpha * square_avg + (1 - alpha) g^2``; if ``centered``:
    ``grad_avg = alpha * grad_avg + (1 - alpha) g`` and
    ``avg = sqrt(square_avg - grad_avg^2) + eps``, else ``avg = sqrt(square_avg) + eps``.
    With ``momentum > 0``: ``buf = momentum * buf + g / avg; p -= lr * buf``; else
    ``p -= lr * g / avg``. ``momentum_buffer`` (``grad_avg``) is required when
    ``momentum > 0`` (``centered``).
    """
    scalars = rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                              momentum=momentum, centered=centered, maximize=maximize)
    run_step(algorithms.RMSPROP, param, grad, {"square_avg": square_avg,
             "momentum_buffer": momentum_buffer, "grad_avg": grad_avg}, scalars, stream)


def adam(param: ArrayLike, grad: ArrayLike, exp_avg: ArrayLike, exp_avg_sq: ArrayLike,
         max_exp_avg_sq: ArrayLike | None = None, *, step: int, lr: float = 1e-3,
         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
         maximize: bool = False, stream: Any = None) -> None:
    """Adam (AMSGrad when ``max_exp_avg_sq`` is given).

    ``g += weight_decay * p`` (or, decoupled, ``p *= 1 - lr * weight_decay``);
    ``m = beta1 m + (1 - beta1) g``; ``v = beta2 v + (1 - beta2) g^2``;
    AMSGrad: ``vmax = max(vmax, v)`` and ``v`` below is ``vmax``;
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """
    scalars = adam_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                           weight_decay=weight_decay,
                           decoupled_weight_decay=decoupled_weight_decay,
                           amsgrad=max_exp_avg_sq is not None, maximize=maximize)
    run_step(algorithms.ADAM, param, grad, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
             "max_exp_avg_sq": max_exp_avg_sq}, scalars, stream)


def adamw(param: ArrayLike, grad: ArrayLike, exp_avg: ArrayLike, exp_avg_sq: ArrayLike,
          max_exp_avg_sq: ArrayLike | None = None, *, step: int, lr: float = 1e-3,
          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2, maximize: bool = False,
          stream: Any = None) -> None:
    """AdamW: :func:`adam` with decoupled weight decay ``p *= 1 - lr * weight_decay``."""
    adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
         beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
         maximize=maximize, stream=stream)


def adamax(param: ArrayLike, grad: ArrayLike, exp_avg: ArrayLike, exp_inf: ArrayLike, *,
           step: int, lr: float = 2e-3, beta1: float = 0.9, beta2: float = 0.999,
           eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
             stream: Any = None) -> None:
    """Adamax (Adam with the infinity norm).

    ``m = beta1 m + (1 - beta1) g``; ``u = max(beta2 u, |g| + eps)``;
    ``p -= lr / (1 - beta1^t) * m / u``.
    """
    scalars = adamax_scalars(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, maximize=maximize)
    run_step(algorithms.ADAMAX, param, grad, {"exp_avg": exp_avg, "exp_inf": exp_inf}, scalars,
             stream)


def nadam(param: ArrayLike, grad: ArrayLike, exp_avg: ArrayLike, exp_avg_sq: ArrayLike, *,
          step: int, mu_product: float, lr: float = 2e-3, beta1: float = 0.9,
          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
          maximize: bool = False, stream: Any = None) -> float:
    """NAdam; returns the new ``mu_product`` to pass to the next step (start with 1.0).

    ``mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay))``; ``P_t = P_{t-1} mu_t``
    (``mu_product`` is ``P_{t-1}``); ``m``, ``v`` as in Adam;
    ``denom = sqrt(v / (1 - beta2^t)) + eps``;
    ``p -= lr (1 - mu_t) / (1 - P_t) * g / denom + lr mu_{t+1} / (1 - P_t mu_{t+1}) * m / denom``.
    """
    scalars, new_mu_product = nadam_scalars(
        step=step, mu_product=mu_product, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
        weight_decay=weight_decay, momentum_decay=momentum_decay,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    run_step(algorithms.NADAM, param, grad, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq},
             scalars, stream)
    return new_mu_product
