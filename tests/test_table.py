"""The algorithm table and the test table cover each other.

Every algorithm of the registry must have an independent reference, test cases (typical
values of every hyperparameter, invalid ones, option combinations), a benchmark row and a
demo entry; its defaults must be those of the reference and, where torch.optim has the
algorithm, of torch.optim; and a declaration that does not fit its rule must fail at import.
"""

from __future__ import annotations

import dataclasses
import inspect

import cases
import numpy as np
import pytest
from reference import REFERENCES

import fastgd
from fastgd import bench, demo, rules
from fastgd import functional as F
from fastgd.algorithms import ALGORITHMS, SCHEDULE_FREE_MODE, SPECS, Algorithm, State
from fastgd.hyperparams import Choice, Flag

#: Options of the classes that are fastgd's own (not hyperparameters of an algorithm).
CLASS_ONLY = set(fastgd.optim.CLASS_OPTIONS)
#: Options of torch.optim's classes that choose an implementation, not the math.
TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}


def test_every_algorithm_has_a_reference() -> None:
    assert set(REFERENCES) == set(ALGORITHMS)


@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_every_algorithm_has_test_cases(name: str) -> None:
    for h in cases.constructor_hypers(name):
        assert isinstance(h.domain, (Flag, Choice)) or h.typical is not None, (
            f"{name}.{h.name} has no typical values to draw test cases from")
    assert cases.option_cases(name)
    bad = cases.bad_hyperparameters(name)
    assert {names[-1] for _, names in bad} >= {
        h.name for h in cases.constructor_hypers(name)}
    hp = cases.random_hyperparameters(name, cases.full_case(name), np.random.default_rng(1))
    algorithm = ALGORITHMS[name]
    algorithm.check({**algorithm.defaults, **hp})  # drawn values are valid


@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_defaults_are_the_references(name: str) -> None:
    signature = inspect.signature(getattr(fastgd, name))
    ours = {k: p.default for k, p in signature.parameters.items()
            if k != "params" and k not in CLASS_ONLY}
    reference = {k: v for k, v in REFERENCES[name].defaults.items()
                 if k not in ALGORITHMS[name].fixed and not k.startswith("torch_")}
    assert ours == reference
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, name):
        return
    theirs = {k: p.default for k, p in inspect.signature(
        getattr(torch.optim, name)).parameters.items()
        if k not in ("self", "params") and k not in TORCH_ONLY}
    assert ours == theirs


@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_every_algorithm_has_a_bench_row_and_a_demo_entry(name: str) -> None:
    algorithm = ALGORITHMS[name]
    case = bench.CASES[algorithm.function_name]
    assert case.cls is getattr(fastgd, name)
    assert set(case.states) <= {s.name for s in algorithm.states}
    assert algorithm.demo and all(demo.OPTIMIZERS[n][0] is case.cls for n in algorithm.demo)


@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_classes_and_functions_show_their_math(name: str) -> None:
    algorithm = ALGORITHMS[name]
    for obj in (getattr(fastgd, name), cases.functional(name)):
        assert algorithm.math.splitlines()[0] in obj.__doc__
        assert algorithm.summary in obj.__doc__


def test_the_original_functions_keep_their_signatures() -> None:
    """The functional API is public: these names (and their order) must not change."""
    expected = {
        "sgd": "param grad momentum_buffer first_step lr momentum dampening weight_decay "
               "nesterov maximize stream out",
        "adagrad": "param grad sum step lr lr_decay weight_decay eps maximize stream out",
        "adadelta": "param grad square_avg acc_delta lr rho eps weight_decay maximize stream out",
        "rmsprop": "param grad square_avg momentum_buffer grad_avg lr alpha eps weight_decay "
                   "momentum centered maximize stream out",
        "adam": "param grad exp_avg exp_avg_sq max_exp_avg_sq step lr beta1 beta2 eps "
                "weight_decay maximize decoupled_weight_decay stream out",
        "adamw": "param grad exp_avg exp_avg_sq max_exp_avg_sq step lr beta1 beta2 eps "
                 "weight_decay maximize stream out",
        "adamax": "param grad exp_avg exp_inf step lr beta1 beta2 eps weight_decay maximize "
                  "stream out",
        "nadam": "param grad exp_avg exp_avg_sq step mu_product lr beta1 beta2 eps "
                 "weight_decay momentum_decay decoupled_weight_decay maximize stream out",
    }
    for name, parameters in expected.items():
        signature = inspect.signature(getattr(F, name))
        assert list(signature.parameters) == parameters.split(), name
        positional = [p for p in signature.parameters.values()
                      if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in positional][:2] == ["param", "grad"]
    assert set(F.__all__) == {a.function_name for a in ALGORITHMS.values()} | {
        "schedule_free_eval", "schedule_free_train"}


def test_a_declaration_that_does_not_fit_its_rule_fails() -> None:
    adam = ALGORITHMS["Adam"]

    def no_eps(*args, **kwargs):
        out = adam.update(*args, **kwargs)
        del out["eps"]
        return out

    no_eps.__signature__ = inspect.signature(adam.update)  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="eps"):
        dataclasses.replace(adam, name="Broken", update=no_eps)
    with pytest.raises(AssertionError, match="exp_avg"):
        dataclasses.replace(adam, name="Broken", states=(
            State("exp_avg_sq"), State("exp_avg"), *adam.states[2:]))
    with pytest.raises(AssertionError, match="eight_bit"):  # (its 8-bit form undeclared)
        dataclasses.replace(adam, name="Broken", states=(
            State("exp_avg"), *adam.states[1:]))
    with pytest.raises(AssertionError, match="why"):  # (full precision, without a reason)
        dataclasses.replace(adam, name="Broken", states=(
            State("exp_avg", eight_bit="full"), *adam.states[1:]))
    with pytest.raises(AssertionError, match="rule"):
        dataclasses.replace(adam, name="Broken", rule=rules.nadam_rule)


def test_a_rule_whose_names_shadow_a_kernels_variables_is_refused() -> None:
    """A coefficient or flag named like a kernel's own variable (``first`` was once the
    8-bit CUDA kernels' loop variable, and ADOPT's flag) is refused when kernels are made."""
    from fastgd import cpu
    from fastgd.kernelgen import LOCAL_NAMES, check_names

    adam = SPECS["adam"]
    for name in ("lane", "lo", "group", "stop"):
        assert name in LOCAL_NAMES
        clash = dataclasses.replace(adam, coefficients=(*adam.coefficients[:-1], name))
        with pytest.raises(AssertionError, match=name):
            check_names(clash)
        with pytest.raises(AssertionError, match=name):
            cpu.generate_source(clash, ())
    for spec in SPECS.values():
        check_names(spec)


def test_every_rule_is_declared_once() -> None:
    assert {spec.rule for spec in SPECS.values()} == {a.rule for a in ALGORITHMS.values()} | {
        SCHEDULE_FREE_MODE.rule} | {  # (Schedule-Free's .train()/.eval(), second passes)
        a.two_phase.rule for a in ALGORITHMS.values() if a.two_phase}
    assert all(isinstance(a, Algorithm) for a in ALGORITHMS.values())
