"""``fastgd demo``: fastgd's optimizers on small problems you can look at.

Three experiments, every update made by fastgd's own optimizer classes:

1. :func:`parabola_experiment`: ``L(x) = x**2`` with plain gradient descent. ``lr = 0.6``
   from ``x = 6`` converges (6 -> -1.2 -> 0.24 -> ...); ``lr = 1.0`` from ``x = 3`` bounces
   between 3 and -3 forever. The learning-rate lesson.
2. :func:`regression_experiment`: fit ``y = w x + b`` to ``y = 3x + 5`` on ``x = 0..19`` from
   ``(w, b) = (0, 0)``. Loss ``mean((w x + b - y)**2) / 2``, gradient (the *sum* form)
   ``(sum((yhat - y) x), sum(yhat - y))``. Each optimizer runs until the loss is below a
   tolerance (the iterations it needs are reported).
3. :func:`surface_experiment`: two-dimensional test surfaces (:data:`SURFACES`), every
   optimizer from the same point for the same number of steps.

:func:`run` does all three, prints plain-text tables and, when matplotlib is installed
(``pip install 'fastgd[plot]'``), writes PNG files: the paths over the loss contours and the
loss against the step. matplotlib is imported only when pictures are drawn.

A 2-D point is a float64 NumPy array of shape ``(2,)`` stepped in place by an optimizer
(:func:`descend`; Muon, an optimizer of matrices, steps it as a ``(1, 2)`` view); a
surface's math is a pair of small functions ``value(x, y)`` and ``gradient(x, y)`` that
also work elementwise on grids (for the contour plots).
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

import fastgd
from fastgd import schedules
from fastgd.algorithms import ALGORITHMS
from fastgd.optim import Optimizer, ScheduleFreeOptimizer

__all__ = ["Objective", "Surface", "LinearRegression", "Parabola", "OptimizerConfig", "Trace",
           "DemoResult", "OPTIMIZERS", "DEFAULT_LR", "SCHEDULES", "SURFACES", "REGRESSION",
           "PLOT_HINT", "regression_problem", "make_config", "descend", "parabola_experiment",
           "regression_experiment", "surface_experiment", "format_table", "plot_parabola",
           "plot_paths", "animate_paths", "run", "add_arguments", "main"]

PLOT_HINT = "pip install 'fastgd[plot]'"
DEFAULT_OUT = "fastgd-demo"
EXPERIMENTS = ("parabola", "regression", "surfaces")
Array = np.ndarray


# -- objectives ------------------------------------------------------------------------------

class Objective(Protocol):
    """What :func:`descend` minimises: a loss and its gradient at a point ``p`` (1-D array)."""

    min_value: float  #: the global minimum of the loss

    def losses(self, points: Array) -> Array:
        """The loss at each row of ``points`` (shape ``(n, dim)``)."""
        ...

    def grad(self, p: Array) -> Array:
        """The gradient at ``p``, a new array shaped like ``p``."""
        ...


@dataclass(frozen=True)
class Parabola:
    """``L(x) = x**2`` (the gradient is ``2x``); its minimum 0 is at ``x = 0``."""

    min_value: float = 0.0

    def losses(self, points: Array) -> Array:
        return np.sum(points * points, axis=-1)

    def grad(self, p: Array) -> Array:
        return 2.0 * p


Field = Callable[[Any, Any], Any]
GradientField = Callable[[Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Surface:
    """A loss ``value(x, y)`` on the plane with its ``gradient(x, y) -> (dx, dy)``.

    Both work on floats and elementwise on arrays (for the contour grid). ``minima`` are the
    global minimisers (marked with a star), ``start`` the default starting point, ``xlim`` and
    ``ylim`` the plotted window, ``lrs`` the default learning rate of each optimizer (by
    name; :data:`DEFAULT_LR` fills the others) and ``steps`` the default number of steps.
    """

    name: str
    title: str
    formula: str
    value: Field
    gradient: GradientField
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    lrs: Mapping[str, float] = field(default_factory=dict)
    steps: int = 200
    xlabel: str = "x"
    ylabel: str = "y"
    note: str = ""

    @cached_property
    def min_value(self) -> float:
        """The loss at the global minimisers."""
        return min(float(self.value(x, y)) for x, y in self.minima)

    def losses(self, points: Array) -> Array:
        return np.asarray(self.value(points[:, 0], points[:, 1]), dtype=np.float64)

    def grad(self, p: Array) -> Array:
        x, y = p.tolist()  # Python floats: the cheapest scalar math
        return np.array(self.gradient(x, y), dtype=np.float64)


def bowl_value(x: Any, y: Any) -> Any:
    """Ill-conditioned quadratic bowl ``(x**2 + 20 y**2) / 2`` (condition number 20)."""
    return 0.5 * (x * x + 20.0 * y * y)


def bowl_gradient(x: Any, y: Any) -> tuple[Any, Any]:
    return x, 20.0 * y


def rosenbrock_value(x: Any, y: Any) -> Any:
    """Rosenbrock's banana valley ``(1 - x)**2 + 100 (y - x**2)**2``, minimum at (1, 1)."""
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


def rosenbrock_gradient(x: Any, y: Any) -> tuple[Any, Any]:
    return -2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)


def saddle_value(x: Any, y: Any) -> Any:
    """``x**2 + (y**2 - 1)**2 / 4``: a saddle at (0, 0) between the minima (0, -1), (0, 1)."""
    return x * x + 0.25 * (y * y - 1.0) ** 2


def saddle_gradient(x: Any, y: Any) -> tuple[Any, Any]:
    return 2.0 * x, y * (y * y - 1.0)


def bumpy_value(x: Any, y: Any) -> Any:
    """A wide bowl with ripples, ``(x**2 + y**2) / 10 + (1 - cos(2x) cos(2y)) / 2``: local
    minima near the points ``(i, j) * pi / 2`` with ``i + j`` even, the global one 0 at
    (0, 0)."""
    return 0.1 * (x * x + y * y) + 0.5 * (1.0 - np.cos(2.0 * x) * np.cos(2.0 * y))


def bumpy_gradient(x: Any, y: Any) -> tuple[Any, Any]:
    return (0.2 * x + np.sin(2.0 * x) * np.cos(2.0 * y),
            0.2 * y + np.cos(2.0 * x) * np.sin(2.0 * y))


SURFACES: dict[str, Surface] = {s.name: s for s in (
    Surface("bowl", "Ill-conditioned bowl", r"$(x^2 + 20y^2)/2$", bowl_value, bowl_gradient,
            start=(-4.5, 1.2), minima=((0.0, 0.0),), xlim=(-5.0, 1.5), ylim=(-1.6, 1.6),
            steps=100,
            lrs={"sgd": 0.09, "momentum": 0.02, "nesterov": 0.02, "adagrad": 1.0,
                 "adadelta": 10.0, "rmsprop": 0.1, "adam": 0.3, "adamw": 0.3, "adamax": 0.3,
                 "nadam": 0.3, "radam": 0.3, "rprop": 0.01, "asgd": 0.05},
            note="steep in y, shallow in x: big steps zig-zag across the valley"),
    Surface("rosenbrock", "Rosenbrock valley", r"$(1-x)^2 + 100(y-x^2)^2$", rosenbrock_value,
            rosenbrock_gradient, start=(-1.2, 1.0), minima=((1.0, 1.0),), xlim=(-1.7, 1.7),
            ylim=(-0.7, 2.0), steps=500,
            lrs={"sgd": 1.5e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 1.0,
                 "adadelta": 1.0, "rmsprop": 0.03, "adam": 0.1, "adamw": 0.1, "adamax": 0.3,
                 "nadam": 0.1, "radam": 3e-3, "rprop": 0.01, "asgd": 3e-3,
                 "schedulefree-sgd": 5e-3},
            note="a curved, nearly flat valley floor: who crawls?"),
    Surface("saddle", "Saddle", r"$x^2 + (y^2-1)^2/4$", saddle_value, saddle_gradient,
            start=(-2.0, 1e-5), minima=((0.0, -1.0), (0.0, 1.0)), xlim=(-2.3, 1.0),
            ylim=(-1.5, 1.5), steps=150,
            lrs={"sgd": 0.1, "momentum": 0.01, "nesterov": 0.01, "adagrad": 0.3,
                 "adadelta": 3.0, "rmsprop": 0.03, "adam": 0.1, "adamw": 0.1,
                 "adamax": 0.1, "nadam": 0.1, "radam": 0.1, "rprop": 0.01, "asgd": 0.1},
            note="starts next to the ridge through the saddle point (0, 0): who stalls?"),
    Surface("bumpy", "Bumpy bowl", r"$(x^2+y^2)/10 + (1 - \cos 2x \cos 2y)/2$",
            bumpy_value, bumpy_gradient, start=(-4.0, 3.4), minima=((0.0, 0.0),),
            xlim=(-5.0, 2.0), ylim=(-2.0, 4.5), steps=200,
            lrs={"sgd": 0.1, "momentum": 0.03, "nesterov": 0.03, "adagrad": 1.0,
                 "adadelta": 10.0, "rmsprop": 0.1, "adam": 0.3, "adamw": 0.3,
                 "adamax": 0.3, "nadam": 0.3, "radam": 0.3, "rprop": 0.01, "asgd": 0.1},
            note="local minima everywhere: who gets stuck?"),
)}


@dataclass(frozen=True)
class LinearRegression:
    """Least squares for ``yhat = w x + b``: loss ``mean((yhat - y)**2) / 2``.

    The gradient is the *sum* form ``(sum((yhat - y) x), sum(yhat - y))`` (``n`` times the
    gradient of the loss), as in the classic exercise.
    """

    x: Array
    y: Array

    def residuals(self, w: Any, b: Any) -> Array:
        """``yhat - y = w x + b - y``, with the data along a new last axis when ``w`` and ``b``
        are arrays (grids of parameters)."""
        if isinstance(w, float) and isinstance(b, float):
            return w * self.x + b - self.y
        return np.asarray(w)[..., None] * self.x + np.asarray(b)[..., None] - self.y

    def value(self, w: Any, b: Any) -> Any:
        return 0.5 * np.mean(self.residuals(w, b) ** 2, axis=-1)

    def gradient(self, w: Any, b: Any) -> tuple[Any, Any]:
        r = self.residuals(w, b)
        return r @ self.x, r.sum(axis=-1)

    def surface(self, true_w: float, true_b: float) -> Surface:
        """This loss as a :class:`Surface` in the ``(w, b)`` plane."""
        return Surface("regression", "Linear regression", r"$\frac{1}{2}\,"
                       r"\mathrm{mean}\,(wx + b - y)^2$", self.value, self.gradient,
                       start=(0.0, 0.0), minima=((true_w, true_b),), xlim=(-1.0, 7.0),
                       ylim=(-2.0, 8.0), xlabel="w (slope)", ylabel="b (intercept)",
                       note=f"a long, narrow valley (condition number {self.condition:.0f}): "
                       "GD with a decaying lr crawls along it; a large lr0 first overshoots "
                       "in w, far beyond this window")

    @property
    def condition(self) -> float:
        """Condition number of the loss's Hessian (how elongated its valley is)."""
        hessian = np.array([[self.x @ self.x, self.x.sum()], [self.x.sum(), self.x.size]])
        return float(np.linalg.cond(hessian))


def regression_problem(true_w: float = 3.0, true_b: float = 5.0, n: int = 20) -> Surface:
    """The loss of fitting ``y = w x + b`` to ``y = true_w x + true_b`` on ``x = 0..n-1``."""
    x = np.arange(n, dtype=np.float64)
    return LinearRegression(x, true_w * x + true_b).surface(true_w, true_b)


# -- optimizers ------------------------------------------------------------------------------

#: name -> (optimizer class, options that define the variant): every ``demo`` entry of the
#: algorithm table (``sgd``, ``momentum``, ``nesterov``, ``adam``, ...)
OPTIMIZERS: dict[str, tuple[type[Optimizer], dict[str, Any]]] = {
    name: (getattr(fastgd, a.name), dict(options))
    for a in ALGORITHMS.values() for name, (options, _) in a.demo.items()}

#: learning rate of an optimizer a surface does not list
DEFAULT_LR: dict[str, float] = {name: lr for a in ALGORITHMS.values()
                                for name, (_, lr) in a.demo.items()}

#: hyperparameters (besides lr) shown in labels, per class
SHOWN: dict[type[Optimizer], tuple[str, ...]] = {
    getattr(fastgd, a.name): a.shown for a in ALGORITHMS.values()}

#: schedule name -> (builder from (lr, steps), label format)
SCHEDULES: dict[str, tuple[Callable[[float, int], Any], str]] = {
    "constant": (lambda lr, steps: lr, "{lr:g}"),
    "inverse_sqrt": (lambda lr, steps: schedules.inverse_sqrt(lr), "{lr:g}/sqrt(t)"),
    "cosine": (lambda lr, steps: schedules.cosine(lr, steps), "cosine({lr:g}->0)"),
    "linear_decay": (lambda lr, steps: schedules.linear_decay(lr, steps), "linear({lr:g}->0)"),
}


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimizer of a demo: a fastgd class with its learning rate and options.

    ``schedule`` names a :data:`SCHEDULES` entry that turns ``lr`` into a schedule from
    :mod:`fastgd.schedules` (``"constant"`` keeps the number).
    """

    name: str
    cls: type[Optimizer]
    lr: float
    options: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "constant"

    def build(self, param: Array, steps: int) -> Optimizer:
        """The optimizer over ``param`` (its learning-rate schedule spans ``steps``)."""
        lr = SCHEDULES[self.schedule][0](self.lr, steps)
        opt = self.cls(param, lr=lr, **self.options)
        if isinstance(opt, ScheduleFreeOptimizer):
            opt.train()  # (the path shown is that of y, where the gradients are taken)
        return opt

    @property
    def label(self) -> str:
        """``'momentum: SGD(lr=0.01, momentum=0.9)'``: the name and every hyperparameter that
        shapes the path."""
        defaults = {k: p.default for k, p in inspect.signature(self.cls).parameters.items()}
        shown = [k for k in SHOWN.get(self.cls, ()) if k in defaults]
        shown += [k for k in self.options if k not in shown]
        values = {**defaults, **self.options}
        parts = ["lr=" + SCHEDULES[self.schedule][1].format(lr=self.lr)]
        for key in shown:
            value = values[key]
            if key == "nesterov" and not value or key == "momentum" and not value:
                continue
            if isinstance(value, tuple):
                value = "(" + ", ".join(f"{v:g}" for v in value) + ")"
            elif isinstance(value, float):
                value = f"{value:g}"
            parts.append(f"{key}={value}")
        return f"{self.name}: {self.cls.__name__}({', '.join(parts)})"


def make_config(name: str, lr: float | None = None, *, schedule: str | None = None,
                options: Mapping[str, Any] | None = None,
                default_lr: Mapping[str, float] | None = None) -> OptimizerConfig:
    """The :data:`OPTIMIZERS` entry ``name`` with a learning rate (``default_lr[name]`` or
    :data:`DEFAULT_LR` when ``lr`` is None) and extra ``options``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
    cls, base = OPTIMIZERS[name]
    if lr is None:
        lr = (default_lr or {}).get(name, DEFAULT_LR[name])
    return OptimizerConfig(name, cls, float(lr), {**base, **(options or {})},
                           schedule or "constant")


# -- running ---------------------------------------------------------------------------------

@dataclass
class Trace:
    """One optimizer's run: the points visited and the loss at each (index = step)."""

    config: OptimizerConfig  #: the optimizer and its hyperparameters
    path: Array  #: ``(steps + 1, dim)``: the start, then the point after every step
    losses: Array  #: ``(steps + 1,)``
    min_value: float  #: the objective's global minimum
    tol: float  #: the tolerance on ``loss - min_value`` behind ``steps_to_tol``
    diverged: bool  #: the loss became non-finite or blew up (the run stopped there)
    steps_to_tol: int | None  #: the first step with ``loss - min_value <= tol``

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def steps(self) -> int:
        return len(self.path) - 1

    @property
    def final(self) -> Array:
        return self.path[-1]

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def gaps(self) -> Array:
        """``loss - min_value`` at every step."""
        return self.losses - self.min_value


def descend(objective: Objective, start: Sequence[float] | Array, config: OptimizerConfig,
            steps: int, *, tol: float = 1e-3, stop_at_tol: bool = False,
            blowup: float = 1e6) -> Trace:
    """Minimise ``objective`` from ``start`` for ``steps`` optimizer steps (fewer when it
    diverges, or once ``loss - min_value <= tol`` with ``stop_at_tol``).

    The point is a float64 array stepped in place by ``config``'s fastgd optimizer. A run
    *diverges* when its loss gap becomes non-finite or exceeds ``blowup`` times its starting
    gap (at least 1); the trace ends at that step. Losses are evaluated in blocks of steps
    (vectorized), so a long run costs little more than its optimizer steps.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    p = np.array(start, dtype=np.float64).reshape(-1)
    # (an optimizer of matrices steps the point as a 1 x dim matrix: a view of it)
    shape = (1, p.size) if config.cls.algorithm.matrices else p.shape
    optimizer = config.build(p.reshape(shape), max(steps, 1))
    path = np.empty((steps + 1, p.size))
    losses = np.empty(steps + 1)
    path[0] = p
    floor = objective.min_value
    step, grad = optimizer.step, objective.grad
    with np.errstate(all="ignore"):
        losses[0] = objective.losses(path[:1])[0]
        limit = blowup * max(losses[0] - floor, 1.0)
        reached = 0 if losses[0] - floor <= tol else None
        diverged, done, block = False, 0, 16
        while done < steps and not (stop_at_tol and reached is not None):
            end = min(done + block, steps)
            for t in range(done + 1, end + 1):
                step(grad(p).reshape(shape))
                path[t] = p
            losses[done + 1:end + 1] = objective.losses(path[done + 1:end + 1])
            gaps = losses[done + 1:end + 1] - floor
            bad = np.flatnonzero(~(gaps <= limit))  # also catches NaN
            first_bad = len(gaps) if bad.size == 0 else int(bad[0])
            hits = np.flatnonzero(gaps[:first_bad] <= tol)
            if reached is None and hits.size:
                reached = done + 1 + int(hits[0])
            if bad.size:
                diverged, end = True, done + 1 + first_bad
            elif stop_at_tol and reached is not None:
                end = reached
            done, block = end, min(2 * block, 2048)
            if diverged:
                break
    return Trace(config, path[:done + 1].copy(), losses[:done + 1].copy(), floor, tol,
                 diverged, reached)


def parabola_experiment(runs: Sequence[tuple[float, float]] = ((6.0, 0.6), (3.0, 1.0)),
                        steps: int = 10) -> list[Trace]:
    """``L(x) = x**2`` by ``fastgd.SGD`` (plain gradient descent) for each ``(x0, lr)``."""
    return [descend(Parabola(), [x0], make_config("sgd", lr), steps, tol=1e-6)
            for x0, lr in runs]


#: regression defaults: name -> (lr, schedule, most iterations). Each gets the loss within
#: 1e-3 of its minimum 0, i.e. (w, b) to about (3 +- 0.01, 5 +- 0.1). Plain gradient descent
#: needs ~35,000 iterations: the valley is long and narrow (condition number 464, largest
#: curvature 2485) and lr0 / sqrt(t) shrinks while it crawls along the floor. Its lr0 = 2e-3
#: is above the stable 2 / 2485 = 8e-4 for the first 6 steps, which overshoot wildly in w
#: before the decay tames them; a stable lr0 = 8e-4 would need ~280,000 iterations.
REGRESSION: dict[str, tuple[float, str, int]] = {
    "sgd": (2e-3, "inverse_sqrt", 100_000),
    "adagrad": (2.0, "constant", 10_000),
    "rmsprop": (0.1, "constant", 10_000),
    "momentum": (5e-4, "constant", 10_000),
    "adam": (0.5, "constant", 10_000),
}


def _configs(names: Iterable[str], default_lr: Mapping[str, float],
             lr: Mapping[str, Any] | None, hparams: Mapping[str, Mapping[str, Any]] | None,
             schedule: Mapping[str, str] | None = None) -> list[OptimizerConfig]:
    """Configs for ``names``: ``lr[name]`` (a number, or ``'schedule:number'``) or the
    default, with ``hparams[name]`` as extra options."""
    configs = []
    for name in names:
        rate, sched = _parse_lr((lr or {}).get(name))
        configs.append(make_config(name, rate, default_lr=default_lr,
                                   schedule=sched or (schedule or {}).get(name),
                                   options=(hparams or {}).get(name)))
    unknown = set(lr or {}) - set(names)
    unknown |= set(hparams or {}) - set(names)
    if unknown:
        raise ValueError(f"--lr/--hp name optimizers that are not run: {sorted(unknown)}")
    return configs


def _parse_lr(value: Any) -> tuple[float | None, str | None]:
    """``0.1`` -> (0.1, None); ``'cosine:0.1'`` -> (0.1, 'cosine')."""
    if value is None or isinstance(value, (int, float)):
        return value, None
    text = str(value)
    schedule, _, number = text.rpartition(":")
    return float(number), (schedule or None)


def regression_experiment(optimizers: Sequence[str] | None = None, *,
                          lr: Mapping[str, Any] | None = None,
                          hparams: Mapping[str, Mapping[str, Any]] | None = None,
                          tol: float = 1e-3, max_steps: int | None = None,
                          problem: Surface | None = None) -> tuple[Surface, list[Trace]]:
    """Fit ``y = 3x + 5`` (``x = 0..19``) from ``(w, b) = (0, 0)`` with each optimizer until
    the loss is within ``tol`` of its minimum (0), or ``max_steps`` (default per optimizer,
    :data:`REGRESSION`). ``optimizers`` default to those of :data:`REGRESSION` (gradient
    descent with ``lr / sqrt(t)``, Adagrad, RMSprop, momentum, Adam)."""
    problem = problem or regression_problem()
    names = list(optimizers or REGRESSION)
    default_lr = {n: v[0] for n, v in REGRESSION.items()}
    default_schedule = {n: v[1] for n, v in REGRESSION.items()}
    traces = []
    for config in _configs(names, default_lr, lr, hparams, default_schedule):
        cap = max_steps or REGRESSION.get(config.name, (0, "", 10_000))[2]
        traces.append(descend(problem, problem.start, config, cap, tol=tol, stop_at_tol=True))
    return problem, traces


def surface_experiment(surface: Surface | str, optimizers: Sequence[str] | None = None, *,
                       steps: int | None = None, start: Sequence[float] | None = None,
                       lr: Mapping[str, Any] | None = None,
                       hparams: Mapping[str, Mapping[str, Any]] | None = None,
                       tol: float = 1e-3) -> list[Trace]:
    """Every optimizer (default: all of :data:`OPTIMIZERS`) on ``surface`` from the same
    point for the same number of ``steps`` (default: the surface's); ``lr`` overrides the
    surface's learning rates, ``hparams`` adds options (``{'adam': {'amsgrad': True}}``)."""
    if isinstance(surface, str):
        surface = SURFACES[surface]
    point = surface.start if start is None else tuple(start)
    steps = surface.steps if steps is None else steps
    return [descend(surface, point, config, steps, tol=tol)
            for config in _configs(optimizers or list(OPTIMIZERS), surface.lrs, lr, hparams)]


# -- tables ----------------------------------------------------------------------------------

def format_table(traces: Sequence[Trace], *, point_names: tuple[str, str] = ("x", "y"),
                 until_tol: bool = False) -> str:
    """A plain-text table, one row per run: optimizer (with hyperparameters), final point,
    final loss, steps, the first step within the tolerance, diverged or not.

    ``until_tol``: the runs stopped at the tolerance, so the steps are the iterations each
    needed and the table says whether it got there instead.
    """
    tol = traces[0].tol if traces else 0.0
    head = ["optimizer", *point_names, "final loss"]
    head += (["iterations", f"loss<={tol:g}"] if until_tol else
             ["steps", f"steps to loss-min<={tol:g}"])
    head.append("diverged")
    rows = []
    for tr in traces:
        point = [f"{v:.4g}" for v in tr.final[:len(point_names)]]
        point += [""] * (len(point_names) - len(point))
        reached = tr.steps_to_tol is not None
        rows.append([tr.label, *point, f"{tr.final_loss:.3e}", str(tr.steps),
                     ("yes" if reached else "no") if until_tol else
                     (str(tr.steps_to_tol) if reached else "-"),
                     "yes" if tr.diverged else "no"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parabola_lines(traces: Sequence[Trace], shown: int = 6) -> str:
    """One line per 1-D run: the first ``shown`` steps and what became of it."""
    lines = []
    for tr in traces:
        xs = " -> ".join(f"{v:g}" for v in np.round(tr.path[:shown + 1, 0], 10))
        lines.append(f"  {tr.label} from x={tr.path[0, 0]:g}: {xs} ... ({_fate(tr)}; "
                     f"x after {tr.steps} steps = {tr.final[0]:.4g})")
    return "\n".join(lines)


# -- pictures --------------------------------------------------------------------------------

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")


def _pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _style(index: int) -> dict[str, Any]:
    """A distinct color, marker and line style for the ``index``-th optimizer."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    return {"color": colors[index % len(colors)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def _marks(count: int, log: bool = False, every: int = 12) -> Any:
    """``markevery`` for a line of ``count`` points: about ``every`` markers, spread evenly
    (or evenly on a log axis)."""
    if count <= every:
        return None
    if log:
        return sorted({int(i) for i in np.geomspace(1, count, every)} - {count})
    return max(1, count // every)


def _plain_log_ticks(axis: Any) -> None:
    """Log-scale ticks labelled ``1e-06`` rather than mathtext (much faster to draw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10.0, numticks=9))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e")
                                           .replace("e-0", "e-").replace("e+", "e")))
    axis.set_minor_formatter(NullFormatter())


def _draw_contours(ax: Any, surface: Surface, traces: Sequence[Trace], *,
                   resolution: int = 200) -> None:
    """Log-spaced contours of ``loss - min`` in the surface's window, the minima as gold
    stars and the start point as a white circle."""
    from matplotlib.colors import LogNorm

    grid_x, grid_y = np.meshgrid(np.linspace(*surface.xlim, resolution),
                                 np.linspace(*surface.ylim, resolution))
    gap = np.maximum(surface.value(grid_x, grid_y) - surface.min_value, 1e-12)
    high = float(gap.max())
    low = max(float(np.percentile(gap, 0.5)), high * 1e-7)
    levels = np.geomspace(low, high, 22)
    ax.contourf(grid_x, grid_y, gap, levels=levels, norm=LogNorm(), cmap="Greys", alpha=0.3,
                extend="both")
    ax.contour(grid_x, grid_y, gap, levels=levels, colors="0.55", linewidths=0.4)
    mins = np.array(surface.minima)
    ax.plot(mins[:, 0], mins[:, 1], linestyle="none", marker="*", markersize=20,
            markerfacecolor="gold", markeredgecolor="black", label="minimum", zorder=5)
    if traces:
        start = traces[0].path[0]
        ax.plot(start[0], start[1], linestyle="none", marker="o", markersize=9,
                markerfacecolor="white", markeredgecolor="black", label="start", zorder=5)
    ax.set_xlim(*surface.xlim)
    ax.set_ylim(*surface.ylim)
    ax.set_xlabel(surface.xlabel)
    ax.set_ylabel(surface.ylabel)


def _draw_paths(ax: Any, traces: Sequence[Trace], upto: int | None = None) -> list[Any]:
    """Each path (up to step ``upto``) as a line with a few markers, an ``x`` where a run
    diverged."""
    lines = []
    for i, tr in enumerate(traces):
        path = tr.path if upto is None else tr.path[:upto + 1]
        (line,) = ax.plot(path[:, 0], path[:, 1], linewidth=1.8, markersize=5, alpha=0.9,
                          markevery=_marks(tr.steps + 1), label=tr.label, zorder=3,
                          **_style(i))
        lines.append(line)
        if tr.diverged and upto is None:
            ax.plot(*tr.final[:2], marker="x", markersize=12, color=line.get_color(), zorder=4)
    return lines


def _draw_losses(ax: Any, traces: Sequence[Trace], *, log_steps: bool = False) -> None:
    """``loss - min`` against the step on a log scale, the tolerance dashed, an ``x`` where
    a run diverged."""
    for i, tr in enumerate(traces):
        gaps = np.maximum(tr.gaps, 1e-16)
        steps = np.arange(tr.steps + 1)
        if log_steps:  # step 0 has no place on a log axis
            steps, gaps = steps[1:], gaps[1:]
        ax.plot(steps, gaps, linewidth=1.6, markersize=5, label=tr.label,
                markevery=_marks(len(steps), log_steps), **_style(i))
        if tr.diverged:
            ax.plot(steps[-1], gaps[-1], marker="x", markersize=12, color=_style(i)["color"])
    if traces:
        ax.axhline(traces[0].tol, color="black", linestyle="--", linewidth=0.8,
                   label=f"tolerance {traces[0].tol:g}")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    if log_steps:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("step" + (" (log scale)" if log_steps else ""))
    ax.set_ylabel("loss - minimum (log scale)")
    ax.grid(True, which="major", alpha=0.3)


def _legend_below(fig: Any, handles: list[Any], labels: list[str], *, ncol: int,
                  top: float = 0.86, left: float = 0.06, wspace: float = 0.22,
                  fontsize: float = 9) -> None:
    """A figure legend under the axes; the axes are laid out to leave it room."""
    rows = math.ceil(len(handles) / ncol)
    height = fig.get_size_inches()[1]
    bottom = (0.85 + 0.023 * fontsize * rows) / height
    fig.subplots_adjust(left=left, right=0.98, top=top, bottom=bottom, wspace=wspace)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=fontsize,
               frameon=False, bbox_to_anchor=(0.5, 0.01), markerscale=0.8)


def plot_paths(surface: Surface, traces: Sequence[Trace], path: str | Path, *,
               title: str | None = None, log_steps: bool = False) -> Path:
    """Paths over the loss contours (left) and loss against step (right), as a PNG; the
    legend names every optimizer with its hyperparameters."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7.2),
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    _draw_contours(left, surface, traces)
    _draw_paths(left, traces)
    start = traces[0].path[0] if traces else np.array(surface.start)
    left.set_title(f"{surface.title}: {surface.formula}, paths from "
                   f"({start[0]:g}, {start[1]:g})", fontsize=11)
    _draw_losses(right, traces, log_steps=log_steps)
    note = "\n" + textwrap.fill(surface.note, 75) if surface.note else ""
    right.set_title("loss - minimum per step" + note, fontsize=11)
    handles, labels = left.get_legend_handles_labels()
    for handle, label in zip(*right.get_legend_handles_labels(), strict=True):
        if label.startswith("tolerance"):
            handles.append(handle)
            labels.append(label)
    fig.suptitle(title or f"fastgd optimizers on the {surface.title.lower()}", fontsize=14)
    _legend_below(fig, handles, labels, ncol=3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_parabola(traces: Sequence[Trace], path: str | Path) -> Path:
    """One column per run: the iterates on the curve ``L(x) = x**2`` (top) and ``x`` against
    the step (bottom), the first values written out."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(traces), figsize=(6.5 * len(traces), 9), squeeze=False,
                             gridspec_kw={"height_ratios": [1.3, 1]})
    for i, tr in enumerate(traces):
        top, bottom = axes[0, i], axes[1, i]
        pts = tr.path[:, 0]
        style = _style(i)
        reach = max(float(np.max(np.abs(pts))), 1.0) * 1.15
        xs = np.linspace(-reach, reach, 400)
        top.plot(xs, xs ** 2, color="0.5", linewidth=1.2, linestyle="-", label="L(x) = x²")
        top.plot(pts, pts ** 2, linewidth=1.2, alpha=0.85, markersize=7, label=tr.label,
                 **style)
        for value, ks in _first_visits(pts, shown=4).items():
            if abs(value) < 0.1 * reach:  # too close to the bottom to label legibly
                continue
            names = ", ".join(f"x{k}" for k in ks[:3]) + (", …" if len(ks) > 3 else "")
            top.annotate(f"{names} = {value:g}", (value, value * value),
                         textcoords="offset points", xytext=(-10 if value > 0 else 10, 6),
                         ha="right" if value > 0 else "left", fontsize=9)
        top.plot(0, 0, marker="*", markersize=18, markerfacecolor="gold",
                 markeredgecolor="black", linestyle="none", label="minimum (x = 0)")
        seq = " → ".join(f"{v:g}" for v in np.round(pts[:4], 10))
        top.set_title(f"lr = {tr.config.lr:g} from x = {pts[0]:g}: {_fate(tr)}\n{seq} → …",
                      fontsize=11)
        top.set_xlabel("x")
        top.set_ylabel("L(x)")
        top.set_ylim(-0.05 * reach ** 2, reach ** 2 * 1.1)
        top.legend(loc="upper center", fontsize=9)
        top.grid(True, alpha=0.3)
        steps = np.arange(tr.steps + 1)
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.plot(steps, pts, markersize=6, **style)
        for k in steps[:4]:
            bottom.annotate(f"{pts[k]:g}", (k, pts[k]), textcoords="offset points",
                            xytext=(6, 6 if pts[k] >= 0 else -14), fontsize=9)
        bottom.set_xlabel("step k")
        bottom.set_ylabel("x after step k")
        bottom.set_title("the iterates step by step", fontsize=11)
        bottom.grid(True, alpha=0.3)
    fig.suptitle("Gradient descent on L(x) = x²:  x ← x − lr · 2x  (fastgd.SGD)", fontsize=13)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.07, wspace=0.22, hspace=0.35)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _first_visits(values: Array, shown: int) -> dict[float, list[int]]:
    """The distinct values among the first ``shown`` (rounded), each with every step that
    lands on it."""
    rounded = np.round(values, 10)
    visits: dict[float, list[int]] = {}
    for value in rounded[:shown]:
        visits.setdefault(float(value), [])
    for k, value in enumerate(rounded):
        if float(value) in visits:
            visits[float(value)].append(k)
    return visits


def _fate(trace: Trace) -> str:
    """'converges', 'diverges' or 'oscillates' for a 1-D run."""
    if trace.steps_to_tol is not None:
        return "converges"
    if trace.diverged or trace.gaps[-1] > trace.gaps[0]:
        return "diverges"
    return "oscillates forever" if trace.gaps[-1] >= trace.gaps[0] else "converges slowly"


def animate_paths(surface: Surface, traces: Sequence[Trace], path: str | Path, *,
                  frames: int = 60, fps: int = 12, dpi: int = 80) -> Path | None:
    """An animated GIF of the paths growing step by step (matplotlib's PillowWriter); None,
    after saying why, when pillow is not available.

    The still parts (contours, minima, legend) are drawn once into an image that every
    frame shows under a transparent axes holding only the paths: a few ms per frame.
    """
    plt = _pyplot()
    from matplotlib import animation

    if not animation.writers.is_available("pillow"):
        print("--animate needs pillow for GIFs (pip install pillow); no GIF written",
              file=sys.stderr)
        return None
    size = (9.0, 9.0)
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    _draw_contours(ax, surface, traces, resolution=150)
    for line in _draw_paths(ax, traces, upto=0):  # for the legend entries only
        line.set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    _legend_below(fig, handles, labels, ncol=2, top=0.94, left=0.09, fontsize=7.5)
    ax.set_title(f"{surface.title}: {surface.formula}", fontsize=11)
    fig.canvas.draw()
    still = np.asarray(fig.canvas.buffer_rgba()).copy()
    position = ax.get_position()
    plt.close(fig)

    fig = plt.figure(figsize=size, dpi=dpi)
    fig.figimage(still, origin="upper")
    over = fig.add_axes(position, zorder=2)  # above the image (figure images come last)
    over.set_xlim(*surface.xlim)
    over.set_ylim(*surface.ylim)
    over.axis("off")
    lines = _draw_paths(over, traces, upto=0)
    counter = over.text(0.02, 0.97, "", transform=over.transAxes, fontsize=12, va="top",
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    longest = max(tr.steps for tr in traces)
    ticks = np.unique(np.linspace(0, longest, min(frames, longest + 1)).astype(int))

    def update(k: int) -> list[Any]:
        for line, tr in zip(lines, traces, strict=True):
            line.set_data(tr.path[:k + 1, 0], tr.path[:k + 1, 1])
        counter.set_text(f"step {k}")
        return [*lines, counter]

    anim = animation.FuncAnimation(fig, update, frames=ticks, blit=False)
    anim.save(path, writer=animation.PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)
    return Path(path)


# -- the whole demo --------------------------------------------------------------------------

@dataclass
class DemoResult:
    """What :func:`run` computed and wrote."""

    parabola: list[Trace] = field(default_factory=list)
    regression: list[Trace] = field(default_factory=list)
    surfaces: dict[str, list[Trace]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    plotted: bool = False
    seconds: float = 0.0


def run(out: str | Path | None = DEFAULT_OUT, *, experiments: Sequence[str] = EXPERIMENTS,
        optimizers: Sequence[str] | None = None, surfaces: Sequence[str] | None = None,
        steps: int | None = None, start: Sequence[float] | None = None,
        lr: Mapping[str, Any] | None = None,
        hparams: Mapping[str, Mapping[str, Any]] | None = None, tol: float = 1e-3,
        regression_lr: Mapping[str, Any] | None = None, regression_tol: float = 1e-3,
        regression_steps: int | None = None, animate: bool = False,
        stream: TextIO | None = None) -> DemoResult:
    """Run the experiments, print their tables to ``stream`` (stdout) and, with matplotlib,
    write PNGs (and GIFs with ``animate``) into ``out`` (None: no pictures).

    ``optimizers`` selects by name for the surfaces and the regression (default: all of
    :data:`OPTIMIZERS` on the surfaces, :data:`REGRESSION` for the regression). ``lr`` maps
    names to learning rates on the surfaces (``0.1`` or ``'cosine:0.1'``), ``regression_lr``
    in the regression (whose sum-form gradient is steep: curvature up to ~2500); ``hparams``
    maps names to other options (``{'momentum': {'momentum': 0.5}}``) in both.
    """
    stream = stream or sys.stdout
    began = time.perf_counter()
    bad = set(experiments) - set(EXPERIMENTS)
    if bad:
        raise ValueError(f"unknown experiments {sorted(bad)}; choose from {EXPERIMENTS}")
    names = list(surfaces or SURFACES)
    bad = set(names) - set(SURFACES)
    if bad:
        raise ValueError(f"unknown surfaces {sorted(bad)}; choose from {sorted(SURFACES)}")
    plt = _pyplot() if out is not None else None
    folder = Path(out) if plt is not None and out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    result = DemoResult(plotted=folder is not None)

    def say(text: str = "") -> None:
        print(text, file=stream)

    if "parabola" in experiments:
        result.parabola = parabola_experiment()
        say("1. L(x) = x^2 by gradient descent (fastgd.SGD), x <- x - lr * 2x")
        say(_parabola_lines(result.parabola))
        say()
        if folder is not None:
            result.files.append(plot_parabola(result.parabola, folder / "parabola.png"))
    if "regression" in experiments:
        problem, result.regression = regression_experiment(
            optimizers, lr=regression_lr,
            hparams=_running(hparams, optimizers or REGRESSION), tol=regression_tol,
            max_steps=regression_steps)
        say("2. Linear regression y = 3x + 5 on x = 0..19 from (w, b) = (0, 0); loss "
            "mean((wx + b - y)^2)/2, gradient (sum((yhat - y) x), sum(yhat - y))")
        say(f"   each optimizer runs until loss <= {regression_tol:g}")
        say(format_table(result.regression, point_names=("w", "b"), until_tol=True))
        say()
        if folder is not None:
            result.files.append(plot_paths(
                problem, result.regression, folder / "regression.png", log_steps=True,
                title="Fitting y = 3x + 5: paths of (w, b) over the loss contours"))
    if "surfaces" in experiments:
        for number, name in enumerate(names, start=1):
            surface = SURFACES[name]
            traces = surface_experiment(surface, optimizers, steps=steps, start=start, lr=lr,
                                        hparams=hparams, tol=tol)
            result.surfaces[name] = traces
            say(f"3.{number} {surface.title}: {_plain(surface.formula)}, from "
                f"({traces[0].path[0, 0]:g}, {traces[0].path[0, 1]:g}), "
                f"{steps or surface.steps} steps ({surface.note})")
            say(format_table(traces))
            say()
            if folder is not None:
                result.files.append(plot_paths(surface, traces, folder / f"{name}.png"))
                if animate:
                    gif = animate_paths(surface, traces, folder / f"{name}.gif")
                    if gif is not None:
                        result.files.append(gif)
    result.seconds = time.perf_counter() - began
    if folder is not None:
        say(f"wrote {len(result.files)} files to {folder}/: "
            + ", ".join(p.name for p in result.files))
    elif out is not None:
        say(f"no pictures: matplotlib is not installed. For the PNGs: {PLOT_HINT}")
    return result


def _running(options: Mapping[str, Any] | None, names: Iterable[str]) -> dict[str, Any]:
    """``options`` of the optimizers in ``names`` only."""
    keep = set(names)
    return {k: v for k, v in (options or {}).items() if k in keep}


def _plain(formula: str) -> str:
    """A mathtext formula as plain text for the terminal."""
    for old, new in (("$", ""), (r"\cos ", "cos "), (r"\,", " "), ("{", "("), ("}", ")"),
                     (r"\frac", ""), (r"\mathrm", "")):
        formula = formula.replace(old, new)
    return formula


# -- command line ----------------------------------------------------------------------------

def _name_values(text: str) -> dict[str, str]:
    """``'adam=0.1,sgd=0.01'`` -> ``{'adam': '0.1', 'sgd': '0.01'}``."""
    pairs = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _lr_option(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in _name_values(text).items():
        if name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(f"unknown optimizer {name!r}; choose from "
                                             f"{sorted(OPTIMIZERS)}")
        try:
            rate, schedule = _parse_lr(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad learning rate {value!r}") from None
        if schedule is not None and schedule not in SCHEDULES:
            raise argparse.ArgumentTypeError(f"unknown schedule {schedule!r}; choose from "
                                             f"{sorted(SCHEDULES)}")
        if rate is None or not math.isfinite(rate) or rate < 0:
            raise argparse.ArgumentTypeError(f"bad learning rate {value!r}")
        result[name] = value if schedule else rate
    return result


def _hp_value(text: str) -> Any:
    """``'true'`` -> True, ``'0.9/0.99'`` -> (0.9, 0.99), else a float."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "/" in text:
        return tuple(float(v) for v in text.split("/"))
    return float(text)


def _hp_option(text: str) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for key, value in _name_values(text).items():
        name, dot, option = key.partition(".")
        if not dot or name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(f"expected OPTIMIZER.OPTION=VALUE with an "
                                             f"optimizer from {sorted(OPTIMIZERS)}, got {key!r}")
        cls = OPTIMIZERS[name][0]
        known = [k for k in inspect.signature(cls).parameters if k not in ("params", "lr")]
        if option not in known:
            raise argparse.ArgumentTypeError(f"{cls.__name__} has no option {option!r} "
                                             f"(use --lr for lr); options: {known}")
        try:
            result.setdefault(name, {})[option] = _hp_value(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad value {value!r} for {key}") from None
    return result


def _names(choices: Iterable[str], what: str) -> Callable[[str], list[str]]:
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad}; choose from {allowed}")
        return items
    return parse


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y, got {text!r}") from None
    return x, y


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastgd demo``."""
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help=f"folder for the PNG files (default ./{DEFAULT_OUT})")
    parser.add_argument("--experiments", type=_names(EXPERIMENTS, "experiments"),
                        default=list(EXPERIMENTS),
                        help=f"comma-separated from {','.join(EXPERIMENTS)} (default: all)")
    parser.add_argument("--optimizers", type=_names(OPTIMIZERS, "optimizers"),
                        help=f"comma-separated from {','.join(OPTIMIZERS)} (default: all on the "
                        f"surfaces; {','.join(REGRESSION)} for the regression)")
    parser.add_argument("--surfaces", type=_names(SURFACES, "surfaces"),
                        help=f"comma-separated from {','.join(SURFACES)} (default: all)")
    parser.add_argument("--steps", type=_positive_int,
                        help="steps on every surface (default: " + ", ".join(
                            f"{s.name} {s.steps}" for s in SURFACES.values()) + ")")
    parser.add_argument("--start", type=_point, metavar="X,Y",
                        help="starting point on the surfaces (default: each surface's own)")
    parser.add_argument("--lr", type=_lr_option, metavar="NAME=LR,...",
                        help="learning rates, e.g. adam=0.1,sgd=0.01; a schedule from "
                        f"{','.join(SCHEDULES)} as NAME=SCHEDULE:LR, e.g. adam=cosine:0.3")
    parser.add_argument("--hp", type=_hp_option, metavar="NAME.OPTION=VALUE,...",
                        help="other hyperparameters (surfaces and regression), e.g. "
                        "momentum.momentum=0.5,"
                        "adam.betas=0.8/0.99,rmsprop.centered=true")
    parser.add_argument("--regression-lr", type=_lr_option, metavar="NAME=LR,...",
                        help="learning rates in the regression, e.g. adam=0.3 (sgd keeps its "
                        "lr/sqrt(t) decay unless given a schedule, e.g. sgd=constant:8e-4)")
    parser.add_argument("--tol", type=_positive_float, default=1e-3,
                        help="tolerance on loss - minimum for 'steps to reach' on the "
                        "surfaces (default 1e-3)")
    parser.add_argument("--regression-tol", type=_positive_float, default=1e-3,
                        help="the regression runs until loss <= this (default 1e-3)")
    parser.add_argument("--regression-steps", type=_positive_int, metavar="N",
                        help="most iterations per optimizer in the regression (default: "
                        f"{', '.join(f'{k} {v[2]}' for k, v in REGRESSION.items())})")
    parser.add_argument("--animate", action="store_true",
                        help="also write an animated GIF of the paths on each surface")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    return parser


def main(args: argparse.Namespace) -> int:
    """``fastgd demo`` with parsed ``args``."""
    try:
        result = run(None if args.no_plots else args.out, experiments=args.experiments,
                     optimizers=args.optimizers, surfaces=args.surfaces, steps=args.steps,
                     start=args.start, lr=args.lr, hparams=args.hp, tol=args.tol,
                     regression_lr=args.regression_lr, regression_tol=args.regression_tol,
                     regression_steps=args.regression_steps, animate=args.animate)
    except (TypeError, ValueError) as exc:  # e.g. a hyperparameter fastgd refuses
        raise SystemExit(f"fastgd demo: {exc}") from None
    print(f"done in {result.seconds:.1f} s")
    return 0
