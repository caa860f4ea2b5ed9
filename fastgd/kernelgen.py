"""Source text of the element loops, shared by the CPU and CUDA kernel generators.

A kernel is one rule variant (which optional state arrays exist) in one *storage* format,
parts joined by ``_``:

* of ``param`` and ``grad``: ``""`` (float32/float64, computed in that dtype), ``"f16"`` or
  ``"bf16"`` (uint16 views of float16/bfloat16 memory, converted on load and store, computed
  in float32 with float32 state);
* ``"master"``: a float32 master copy of the parameter that the rule updates, the
  low-precision param receiving its rounded value;
* ``"sbf16"``: bfloat16 state arrays (uint16 views), widened to float32 on load and rounded
  to nearest even on store; the rule computes in float32; ``"sbf16sr"``: the same, rounded
  stochastically on store (:func:`fastgd.halfprec.float32_to_bfloat16_stochastic`): the
  kernels then also take ``rounding_key`` and ``rounding_base`` (the number of their first
  element in its tensor; :data:`ROUNDING_ARGS`);
* ``"s8"``: 8-bit blockwise state (:mod:`fastgd.quantization`): each quantized state is two
  arrays, its uint8 codes and ``<state>_absmax`` (float32, one per block of 256 elements);
  the kernel decodes a block into float32, runs the full-precision element loop over it and
  encodes it again (:func:`fastgd.cpu.eight_bit_source`).
"""

from __future__ import annotations

from fastgd.algorithms import RuleSpec
from fastgd.halfprec import CONVERSIONS


def join_storage(*parts: str) -> str:
    """A storage format from its parts (empty parts left out)."""
    return "_".join(p for p in parts if p)


#: the formats of param (and grad) a CPU kernel is generated for
PARAM_STORAGES = ("", "f16", "bf16", "f16_master", "bf16_master")
#: every storage format a CPU kernel is generated for: each param format with full-precision
#: state (that of the computation) and with bfloat16 state
STORAGES = PARAM_STORAGES + tuple(join_storage(p, state) for state in ("sbf16", "sbf16sr",
                                                                        "s8")
                                   for p in PARAM_STORAGES)
_STATE_PARTS = {"sbf16": "bf16", "sbf16sr": "bf16", "s8": "8bit"}
#: the storage part of each state precision (round to nearest for bfloat16)
STATE_STORAGE = {"full": "", "bf16": "sbf16", "8bit": "s8"}
#: the suffix of the array of a quantized state's block maxima (``exp_avg_absmax``)
ABSMAX = "_absmax"
#: the scalar arguments that kernels with stochastic rounding take after the flags
ROUNDING_ARGS = ("rounding_key", "rounding_base")


def stochastic(storage: str) -> bool:
    """Whether a storage format rounds its bfloat16 state stochastically."""
    return "sbf16sr" in storage.split("_")


def split_storage(storage: str) -> tuple[str, bool, str]:
    """``"bf16_master_sbf16"`` -> ``("bf16", True, "bf16")``: the param's low-precision
    format (``""``: none), whether there is a master copy, the state's (``""``: full,
    ``"bf16"`` or ``"8bit"``)."""
    parts = storage.split("_") if storage else []
    low = parts[0] if parts and parts[0] in ("f16", "bf16") else ""
    state = next((_STATE_PARTS[p] for p in parts if p in _STATE_PARTS), "")
    return low, "master" in parts, state


def array_args(spec: RuleSpec, present: tuple[str, ...], storage: str = "") -> list[str]:
    """The arrays a kernel takes: param, grad, [master], the present states in rule order
    (with 8-bit state, a quantized state's codes and then its ``_absmax``)."""
    _, master, state_format = split_storage(storage)
    states = []
    for state in spec.present_states(present):
        states.append(state)
        if state_format == "8bit" and spec.quantized(state):
            states.append(state + ABSMAX)
    return ["param", "grad", *(["master"] if master else []), *states]


def computes_in_float32(storage: str) -> bool:
    """Whether a kernel of this storage format computes in float32 whatever the param's
    dtype (low-precision param or state)."""
    low, _, state = split_storage(storage)
    return bool(low or state)


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
    low, master, state_low = split_storage(storage)

    def read(expr: str, fmt: str) -> str:
        return f"halfprec.{CONVERSIONS[fmt][0]}({expr})" if fmt else expr

    arrays = set(spec.present_states(present))
    grad = read(f"grad[{i}]", low)
    inputs = [f"master[{i}]" if master else read(f"param[{i}]", low), f"{grad} * grad_scale"]
    outputs = ["new_param" if low else f"param[{i}]"]
    stores = []
    for n, state in enumerate(spec.states):
        inputs.append(read(f"{state}[{i}]", state_low) if state in arrays else grad)
        if state not in arrays:
            outputs.append(f"_absent{n}")
        elif state_low and stochastic(storage):
            outputs.append(f"new_{state}")
            stores.append(f"{state}[{i}] = halfprec.float32_to_bfloat16_stochastic("
                          f"new_{state}, rounding_key + {n}, rounding_base + {i})")
        elif state_low:
            outputs.append(f"new_{state}")
            stores.append(f"{state}[{i}] = halfprec.{CONVERSIONS[state_low][1]}(new_{state})")
        else:
            outputs.append(f"{state}[{i}]")
    inputs += [*spec.coefficients, *spec.flags]
    inputs += [str(state in present) for state in spec.optional]
    lines = [f"{', '.join(outputs)} = rules.{spec.rule.__name__}({', '.join(inputs)})"]
    if master:
        lines.append(f"master[{i}] = new_param")
    if low:
        lines.append(f"param[{i}] = halfprec.{CONVERSIONS[low][1]}(new_param)")
    return "\n".join(lines + stores)


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
