"""What each update rule needs: its state arrays, coefficients and flags.

A :class:`RuleSpec` describes the signature of one rule in :mod:`fastgd.rules` so that the
kernel generators can write the loops, and the dispatch layer can pass arguments in order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fastgd import rules


@dataclass(frozen=True)
class RuleSpec:
    """Signature of a per-element rule.

    ``states`` lists every state array the rule can update, in argument order;
    ``optional`` maps the optional ones to the structural flag that enables them (the
    structural flags are the rule's last arguments, in the order of ``optional``);
    ``coefficients`` are the per-step scalars cast to the array dtype, ``flags`` the runtime
    booleans.
    """

    name: str
    rule: Any
    states: tuple[str, ...]
    coefficients: tuple[str, ...]
    flags: tuple[str, ...]
    optional: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        expected = ("p", "g", *self.states, *self.coefficients, *self.flags,
                    *(flag for _, flag in self.optional))
        actual = tuple(inspect.signature(self.rule.py_func).parameters)
        if actual != expected:
            raise AssertionError(f"{self.name}: rule signature {actual} != spec {expected}")

    def variants(self) -> list[tuple[str, ...]]:
        """Every combination of present optional states (as tuples of state names)."""
        combos: list[tuple[str, ...]] = [()]
        for state, _ in self.optional:
            combos += [c + (state,) for c in combos]
        return combos

    def present_states(self, present_optional: tuple[str, ...]) -> tuple[str, ...]:
        """The state arrays a variant takes, in rule order."""
        optional = {state for state, _ in self.optional}
        return tuple(s for s in self.states if s not in optional or s in present_optional)

    def kernel_name(self, present_optional: tuple[str, ...], target: str) -> str:
        return "_".join((self.name, *present_optional, target))


SGD = RuleSpec(
    "sgd", rules.sgd_rule,
    states=("momentum_buffer",),
    coefficients=("lr", "weight_decay", "momentum", "one_minus_dampening"),
    flags=("l2", "first_step", "nesterov"),
    optional=(("momentum_buffer", "use_momentum"),),
)
ADAGRAD = RuleSpec(
    "adagrad", rules.adagrad_rule,
    states=("sum",),
    coefficients=("clr", "weight_decay", "eps"),
    flags=("l2",),
)
ADADELTA = RuleSpec(
    "adadelta", rules.adadelta_rule,
    states=("square_avg", "acc_delta"),
    coefficients=("lr", "weight_decay", "rho", "one_minus_rho", "eps"),
    flags=("l2",),
)
RMSPROP = RuleSpec(
    "rmsprop", rules.rmsprop_rule,
    states=("square_avg", "momentum_buffer", "grad_avg"),
    coefficients=("lr", "weight_decay", "alpha", "one_minus_alpha", "eps", "momentum"),
    flags=("l2",),
    optional=(("momentum_buffer", "use_momentum"), ("grad_avg", "centered")),
)
ADAM = RuleSpec(
    "adam", rules.adam_rule,
    states=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    coefficients=("step_size", "weight_decay", "decay_factor", "beta1", "one_minus_beta1",
                  "beta2", "one_minus_beta2", "sqrt_bc2", "eps"),
    flags=("l2", "decoupled"),
    optional=(("max_exp_avg_sq", "amsgrad"),),
)
ADAMAX = RuleSpec(
    "adamax", rules.adamax_rule,
    states=("exp_avg", "exp_inf"),
    coefficients=("clr", "weight_decay", "beta1", "one_minus_beta1", "beta2", "eps"),
    flags=("l2",),
)
NADAM = RuleSpec(
    "nadam", rules.nadam_rule,
    states=("exp_avg", "exp_avg_sq"),
    coefficients=("grad_coef", "avg_coef", "weight_decay", "decay_factor", "beta1",
                  "one_minus_beta1", "beta2", "one_minus_beta2", "bc2", "eps"),
    flags=("l2", "decoupled"),
)

SPECS: dict[str, RuleSpec] = {
    s.name: s for s in (SGD, ADAGRAD, ADADELTA, RMSPROP, ADAM, ADAMAX, NADAM)
}
