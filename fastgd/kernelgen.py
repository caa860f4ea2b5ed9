"""Source text of the element loops, shared by the CPU and CUDA kernel generators."""

from __future__ import annotations

from fastgd.algorithms import RuleSpec


def kernel_args(spec: RuleSpec, present: tuple[str, ...]) -> list[str]:
    """Kernel parameters: the arrays, the coefficients, ``grad_scale``, the runtime flags.

    ``grad_scale`` multiplies every gradient element as it is read (gradient clipping by
    global norm, fused into the update; 1 otherwise)."""
    return ["param", "grad", *spec.present_states(present), *spec.coefficients, "grad_scale",
            *spec.flags]


def rule_call(spec: RuleSpec, present: tuple[str, ...], i: str) -> str:
    """One statement applying ``spec``'s rule to element ``i`` of every array.

    Absent optional states get the gradient as a placeholder value and their result is
    dropped; the structural flags are written as literals so that the compiler removes the
    branches they guard.
    """
    arrays = set(spec.present_states(present))
    inputs = [f"param[{i}]", f"grad[{i}] * grad_scale"]
    outputs = [f"param[{i}]"]
    for n, state in enumerate(spec.states):
        inputs.append(f"{state}[{i}]" if state in arrays else f"grad[{i}]")
        outputs.append(f"{state}[{i}]" if state in arrays else f"_absent{n}")
    inputs += [*spec.coefficients, *spec.flags]
    inputs += [str(state in present) for state, _ in spec.optional]
    return f"{', '.join(outputs)} = rules.{spec.rule.__name__}({', '.join(inputs)})"
