"""Source text of the element loops, shared by the CPU and CUDA kernel generators.

A kernel is one rule variant (which optional state arrays exist) in one *storage* format of
``param`` and ``grad``: ``""`` (float32/float64, computed in that dtype), ``"f16"`` or
``"bf16"`` (uint16 views of float16/bfloat16 memory, converted on load and store, computed in
float32 with float32 state), optionally with ``"_master"``: a float32 master copy of the
parameter that the rule updates, the low-precision param receiving its rounded value.
"""

from __future__ import annotations

from fastgd.algorithms import RuleSpec
from fastgd.halfprec import CONVERSIONS

#: every storage format a CPU kernel is generated for
STORAGES = ("", "f16", "bf16", "f16_master", "bf16_master")


def split_storage(storage: str) -> tuple[str, bool]:
    """``"bf16_master"`` -> ``("bf16", True)``."""
    low, _, master = storage.partition("_")
    return low, bool(master)


def array_args(spec: RuleSpec, present: tuple[str, ...], storage: str = "") -> list[str]:
    """The arrays a kernel takes: param, grad, [master], the present states in rule order."""
    master = ["master"] if split_storage(storage)[1] else []
    return ["param", "grad", *master, *spec.present_states(present)]


def scalar_args(spec: RuleSpec) -> list[str]:
    """The values a kernel computes with in the array dtype: the rule's coefficients and
    ``grad_scale``, which multiplies every gradient element as it is read (-1 for
    ``maximize``, times the factor of gradient clipping by global norm)."""
    return [*spec.coefficients, "grad_scale"]


def kernel_args(spec: RuleSpec, present: tuple[str, ...], storage: str = "") -> list[str]:
    """Kernel parameters: the arrays, the scalars (:func:`scalar_args`), the runtime flags."""
    return [*array_args(spec, present, storage), *scalar_args(spec), *spec.flags]


def n_arrays(spec: RuleSpec, present: tuple[str, ...], storage: str = "") -> int:
    """How many of :func:`kernel_args` are arrays."""
    return len(array_args(spec, present, storage))


def rule_call(spec: RuleSpec, present: tuple[str, ...], i: str, storage: str = "") -> str:
    """Statements applying ``spec``'s rule to element ``i`` of every array.

    Absent optional states get the gradient as a placeholder value and their result is
    dropped; the structural flags are written as literals so that the compiler removes the
    branches they guard.
    """
    low, master = split_storage(storage)
    load, store = CONVERSIONS[low] if low else ("", "")

    def read(expr: str) -> str:
        return f"halfprec.{load}({expr})" if low else expr

    arrays = set(spec.present_states(present))
    grad = read(f"grad[{i}]")
    inputs = [f"master[{i}]" if master else read(f"param[{i}]"), f"{grad} * grad_scale"]
    outputs = ["new_param" if low else f"param[{i}]"]
    for n, state in enumerate(spec.states):
        inputs.append(f"{state}[{i}]" if state in arrays else grad)
        outputs.append(f"{state}[{i}]" if state in arrays else f"_absent{n}")
    inputs += [*spec.coefficients, *spec.flags]
    inputs += [str(state in present) for state in spec.optional]
    lines = [f"{', '.join(outputs)} = rules.{spec.rule.__name__}({', '.join(inputs)})"]
    if master:
        lines.append(f"master[{i}] = new_param")
    if low:
        lines.append(f"param[{i}] = halfprec.{store}(new_param)")
    return "\n".join(lines)


def rule_calls(spec: RuleSpec, present: tuple[str, ...], indices: list[str]) -> str:
    """Statements applying ``spec``'s rule to several elements (one per index) of arrays in
    the compute dtype: every load first, then the rules, then every store, so that the loads
    of all the elements are in flight together (a GPU thread's memory-level parallelism)."""
    arrays = set(spec.present_states(present))
    loads, calls, stores = [], [], []
    for u, i in enumerate(indices):
        loads += [f"param_{u} = param[{i}]", f"grad_{u} = grad[{i}] * grad_scale"]
        inputs, outputs = [f"param_{u}", f"grad_{u}"], [f"param_{u}"]
        stores.append(f"param[{i}] = param_{u}")
        for n, state in enumerate(spec.states):
            if state in arrays:
                loads.append(f"{state}_{u} = {state}[{i}]")
                stores.append(f"{state}[{i}] = {state}_{u}")
            inputs.append(f"{state}_{u}" if state in arrays else f"grad_{u}")
            outputs.append(f"{state}_{u}" if state in arrays else f"_absent{n}")
        inputs += [*spec.coefficients, *spec.flags]
        inputs += [str(state in present) for state in spec.optional]
        calls.append(f"{', '.join(outputs)} = rules.{spec.rule.__name__}({', '.join(inputs)})")
    return "\n".join(loads + calls + stores)
