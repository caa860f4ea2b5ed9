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
  encodes it again (:func:`fastgd.cpu.eight_bit_source`);
* ``"out"`` (CPU kernels of element-wise rules, with any of the above but stochastic
  rounding): *out of place*: the kernel reads ``param`` and the states and writes their new
  values into the arrays ``out_param``, ``out_<state>`` (and ``out_master``, 8-bit
  ``out_<state>_absmax``) that follow them, moving the same bytes as in place.
"""

from __future__ import annotations

from typing import NamedTuple

from fastgd.algorithms import RuleSpec
from fastgd.halfprec import CONVERSIONS

#: the names the generated kernels give their own variables (CPU and CUDA): a rule's
#: states, coefficients and flags, which the kernels take as arguments, must not take one
LOCAL_NAMES = frozenset({
    "i", "n", "b", "c", "k", "q", "t", "w", "lo", "hi", "head", "dtype", "coefficients",
    "stride", "stop", "start", "group", "live", "warp", "lane", "scratch", "above",
    "middle", "tensors", "table", "sizes", "addresses", "likes", "blocks", "like",
    "like_bits", "like_codes", "rounding_key", "rounding_base", "param", "grad", "master",
    "grad_scale"})


def check_names(spec: RuleSpec) -> None:
    """Refuse a rule whose argument names would shadow a kernel's own variables."""
    reserved = LOCAL_NAMES.union(*EIGHT_BIT_NAMES.values())  # (with the 8-bit tables)
    taken = reserved & {*spec.coefficients, *spec.flags, *spec.states}
    if taken:
        raise AssertionError(f"{spec.name}: {sorted(taken)} are names of the kernels' own "
                             "variables; rename them in the rule")


def join_storage(*parts: str) -> str:
    """A storage format from its parts (empty parts left out)."""
    return "_".join(p for p in parts if p)


#: the formats of param (and grad) a CPU kernel is generated for
PARAM_STORAGES = ("", "f16", "bf16", "f16_master", "bf16_master")
#: the storage part of out-of-place kernels
OUT = "out"
#: the formats of the in-place CPU kernels: each param format with full-precision state
#: (that of the computation), with bfloat16 state and with 8-bit state
IN_PLACE = PARAM_STORAGES + tuple(join_storage(p, state) for state in ("sbf16", "sbf16sr",
                                                                        "s8")
                                  for p in PARAM_STORAGES)
#: every storage format a CPU kernel is generated for: the in-place ones, and out of place
#: all of them but those of stochastic rounding
STORAGES = IN_PLACE + tuple(join_storage(s, OUT) for s in IN_PLACE if "sbf16sr" not in s)
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


def out_of_place(storage: str) -> bool:
    """Whether a storage format's kernels write out of place (into ``out_`` arrays)."""
    return OUT in storage.split("_")


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
    (with 8-bit state, a quantized state's codes and then its ``_absmax``); out of place,
    then the ``out_`` array of each of them but grad."""
    _, master, state_format = split_storage(storage)
    states = []
    for state in spec.present_states(present):
        states.append(state)
        if state_format == "8bit" and spec.quantized(state):
            states.append(state + ABSMAX)
    arrays = ["param", "grad", *(["master"] if master else []), *states]
    if out_of_place(storage):
        arrays += [f"out_{a}" for a in arrays if a != "grad"]
    return arrays


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


#: names the generated 8-bit kernels give, per quantized state ``s``: the block's decode
#: scale (``s_scale``), the two factors of its normalization (``s_pre``, ``s_inv``); and the
#: decode and encode tables of each map
EIGHT_BIT_NAMES = {"signed": ("signed_map", "signed_table"),
                   "unsigned": ("unsigned_map", "unsigned_table")}


class ElementCode(NamedTuple):
    """Statements applying a rule to one element: its loads, the rule call, its stores, and
    (a rule with sums) the additions of its values to the kernel's accumulators."""

    loads: list[str]
    call: str
    stores: list[str]
    sums: list[str]


def accumulator(name: str) -> str:
    """The kernel variable that sums the rule's value ``name`` over its elements."""
    return f"acc_{name}"


def eight_bit_kernels(spec: RuleSpec) -> bool:
    """Whether kernels with 8-bit state exist for a rule: not for the passes of a two-phase
    step (a pass that only reads a state, skips it or sums values)."""
    return not (spec.sums or spec.read_only or spec.unused)


def storages(spec: RuleSpec) -> tuple[str, ...]:
    """The storage formats kernels of ``spec`` are generated for (those with 8-bit state
    and those out of place only for element-wise rules, :func:`eight_bit_kernels`)."""
    return STORAGES if eight_bit_kernels(spec) else tuple(
        s for s in IN_PLACE if split_storage(s)[2] != "8bit")


def element_code(spec: RuleSpec, present: tuple[str, ...], i: str, u: int = 0,
                 storage: str = "") -> ElementCode:
    """The statements applying ``spec``'s rule to element ``i`` of every array, in
    variables suffixed ``_{u}`` (so that several elements can be in flight together).

    Absent optional states (and states the rule does not use) get the gradient as a
    placeholder value and their result is dropped, as is that of a read-only state; the
    structural flags are written as literals so that the compiler removes the
    branches they guard. Low-precision arrays are converted as they are loaded and stored;
    8-bit states (in kernels generated for whole blocks, see :data:`EIGHT_BIT_NAMES`) are
    decoded on load and encoded on store.
    """
    low, master, state_low = split_storage(storage)
    out = "out_" if out_of_place(storage) else ""

    def read(expr: str, fmt: str) -> str:
        # (np.float32: a no-op when compiled; the CUDA simulator, which runs the kernel as
        # Python, would otherwise carry the value on as a Python float, in float64)
        return f"np.float32(halfprec.{CONVERSIONS[fmt][0]}({expr}))" if fmt else expr

    arrays = set(spec.present_states(present))
    param, grad = f"param_{u}", f"grad_{u}"
    loads = [f"{param} = {f'master[{i}]' if master else read(f'param[{i}]', low)}",
             f"{grad} = {read(f'grad[{i}]', low)} * grad_scale"]
    stores = [f"{out}master[{i}] = {param}"] if master else []
    stores.append(f"{out}param[{i}] = halfprec.{CONVERSIONS[low][1]}({param})" if low
                  else f"{out}param[{i}] = {param}")
    if spec.sums:  # (a first pass, which does not change the parameter)
        stores.clear()
    inputs, outputs = [param, grad], [param]
    for n, state in enumerate(spec.states):
        if state not in arrays:
            inputs.append(grad)
            outputs.append(f"_absent{n}")
            continue
        value = f"{state}_{u}"
        inputs.append(value)
        outputs.append(value)
        form = spec.form(state, state_low or "full")
        quantized = spec.quantized(state) if form == "8bit" else ""
        if quantized:
            decode, encode = EIGHT_BIT_NAMES[quantized]
            loads.append(f"{value} = {decode}[{state}[{i}]] * {state}_scale")
            stores.append(f"{out}{state}[{i}] = quantization.encode_with(({value} * {state}_pre)"
                          f" * {state}_inv, {encode}, {quantized == 'signed'})")
        elif form == "bf16":
            loads.append(f"{value} = {read(f'{state}[{i}]', 'bf16')}")
            stores.append(
                f"{out}{state}[{i}] = halfprec.float32_to_bfloat16_stochastic({value}, "
                f"rounding_key + {n}, rounding_base + {i})" if stochastic(storage) else
                f"{out}{state}[{i}] = halfprec.{CONVERSIONS['bf16'][1]}({value})")
        else:
            loads.append(f"{value} = {state}[{i}]")
            stores.append(f"{out}{state}[{i}] = {value}")
        if state in spec.read_only:
            stores.pop()
            outputs[-1] = f"_absent{n}"
    inputs += [*spec.coefficients, *spec.flags]
    inputs += [str(state in present) for state in spec.optional]
    outputs += [f"{name}_{u}" for name in spec.sums]
    call = f"{', '.join(outputs)} = rules.{spec.rule.__name__}({', '.join(inputs)})"
    return ElementCode(loads, call, stores, [f"{accumulator(name)} += {name}_{u}"
                                             for name in spec.sums])


def rule_calls(spec: RuleSpec, present: tuple[str, ...], indices: list[str],
               storage: str = "") -> str:
    """Statements applying ``spec``'s rule to several elements (one per index): every load
    first, then the rules, then every store, so that the loads of all the elements are in
    flight together (a GPU thread's memory-level parallelism)."""
    code = [element_code(spec, present, i, u, storage) for u, i in enumerate(indices)]
    return "\n".join([line for c in code for line in c.loads] + [c.call for c in code]
                     + [line for c in code for line in c.stores + c.sums])


def rule_call(spec: RuleSpec, present: tuple[str, ...], i: str, storage: str = "") -> str:
    """Statements applying ``spec``'s rule to element ``i`` of every array."""
    return rule_calls(spec, present, [i], storage)
