"""8-bit blockwise "dynamic map" quantization, the storage format of 8-bit optimizer state.

The format is bitsandbytes' blockwise dynamic quantization (``create_dynamic_map``,
``quantize_blockwise`` with ``blocksize=256``): the flat array (C order) is cut into blocks of
``block_size`` consecutive elements; each block keeps one float32 ``absmax`` and one byte per
element, the code of the map value nearest to the element divided by ``absmax``.

The maps
--------
The signed map holds, for the decades :math:`i = 0, \\dots, 6`, the :math:`2^i` midpoints of
``linspace(0.1, 1, 2**i + 1)`` (float32) times :math:`10^{i-6}`, with both signs, plus
:math:`0` and :math:`+1` (256 values, no :math:`-1`). The unsigned map holds :math:`2^{i+1}`
midpoints per decade, non-negative only, plus :math:`0` and :math:`1`. Every value is the
float32 result of bitsandbytes' construction: ``b = linspace`` in float32 as torch computes it
on x86 with AVX2 or AVX-512 (``start + step * k`` contracted to one fused multiply-add),
``mean = (b[k] + b[k + 1]) / 2`` in float32, ``value = float32(10**(i - 6)) * mean`` in
float32. (torch builds without FMA, e.g. ``ATEN_CPU_CAPABILITY=default``, give 42 signed and
31 unsigned values one or two units in the last place apart; see :func:`dynamic_map`.)

Codes
-----
The order of the 256 codes is fastgd's own (bitsandbytes' is the sorted order): with the
magnitudes :math:`0 = v_0 < v_1 < \\dots` of a map in increasing order,

* signed: code :math:`m` is :math:`+v_m` (:math:`m = 0, \\dots, 127`), code 128 is
  :math:`+1` and code :math:`128 + m` is :math:`-v_m` (:math:`m = 1, \\dots, 127`);
* unsigned: code :math:`m` is :math:`v_m` (:math:`m = 0, \\dots, 255`, :math:`v_{255} = 1`),
  which is also bitsandbytes' order.

:data:`SIGNED_MAP` and :data:`UNSIGNED_MAP` are the values indexed by code;
:data:`SIGNED_SORTED_INDEX` / :data:`UNSIGNED_SORTED_INDEX` give each code's position in
bitsandbytes' sorted map (to convert codes to or from bitsandbytes').

Encoding
--------
A normalized value :math:`y` gets the code of the map value nearest to it; of two equally
near values, the one of larger magnitude (ties away from zero). The encoder is exact (it is
checked against a brute-force nearest search) and cheap: with :math:`a = |y|` clamped to
:math:`[2^{-23}, 1]`, the top bits of ``a``'s float32 bit pattern (exponent and 6 or 7
mantissa bits) index a table of "buckets"; a bucket holds at most one decision threshold
:math:`t_m` (the smallest float32 with nearest value :math:`v_{m+1}` rather than
:math:`v_m`), and its table entry packs the magnitude index :math:`m_0` below that threshold
and the threshold's low bits, so that :math:`m = m_0 + [\\text{low bits of } a \\ge
\\text{low bits of } t]`: one table load, a compare and a few integer operations per element.
Negative values clamp to :math:`-v_{127}` (signed map; :math:`-1` is not in it) or to 0
(unsigned map: negative inputs are out of its domain).

Blocks
------
``absmax`` is :math:`\\max |x|` over the block (float32); the normalized value is
:math:`y = x \\cdot \\mathrm{fl}(1 / \\mathrm{absmax})`, multiplication by the float32
reciprocal as in bitsandbytes' kernels. Where that reciprocal would overflow or be subnormal
(:math:`\\mathrm{absmax} < 2^{-126}` or :math:`> 2^{126}`), both ``x`` and ``absmax`` are first
scaled by :math:`2^{64}` or :math:`2^{-64}` (exact), so blocks of subnormal or huge values
keep their full resolution. A block of zeros has ``absmax = 0`` and all codes 0. Decoding is
:math:`\\mathrm{map}[c] \\cdot \\mathrm{absmax}` in float32.

Non-finite values: a NaN in a block makes its ``absmax`` NaN and ±Inf makes it +Inf, and every
element of such a block then decodes to NaN or ±Inf, so a non-finite value in 8-bit state
is never silently turned into a finite one (it spreads to its block, as bitsandbytes' does).

Kernels
-------
Optimizer kernels call the per-element functions inside their own fused loops:
:func:`block_scale` once per block (the two factors of the normalization), then
``encode_signed(x * pre * inv)`` / ``encode_unsigned(...)`` per element, and
``decode_signed(code) * absmax`` / ``decode_unsigned(code) * absmax``. :func:`abs_bits` gives
the bit pattern of :math:`|x|`, whose integer maximum over a block is the bit pattern of its
absmax (NaN included: a NaN's pattern is above every other), a reduction that vectorizes
without fast-math flags.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from fastgd.cpu import PARALLEL_THRESHOLD, parallel_guard
from fastgd.halfprec import bits_as_float32, float32_as_bits

__all__ = ["SIGNED_MAP", "UNSIGNED_MAP", "SIGNED_SORTED_INDEX", "UNSIGNED_SORTED_INDEX",
           "BLOCK_SIZE", "dynamic_map", "quantize_blockwise", "dequantize_blockwise",
           "encode_signed", "encode_unsigned", "decode_signed", "decode_unsigned",
           "block_scale", "abs_bits", "abs_bits_as_float32", "encode_block", "decode_block",
           "encode_with", "SIGNED_ENCODE_TABLE", "UNSIGNED_ENCODE_TABLE", "ENCODE_TABLES"]

#: Elements per block (bitsandbytes' 8-bit optimizers use 256).
BLOCK_SIZE = 256

_F32 = np.float32


def _linspace_fma(steps: int) -> np.ndarray:
    """``torch.linspace(0.1, 1, steps, dtype=torch.float32)`` as torch computes it on x86
    with FMA: ``fma(step, k, start)`` for the first half, ``fma(-step, steps - 1 - k, end)``
    for the rest, with ``step = (end - start) / (steps - 1)`` in float32."""
    start, end = _F32(0.1), _F32(1.0)
    step = (end - start) / _F32(steps - 1)
    k = np.arange(steps, dtype=np.float64)
    # The products and sums below are exact in float64 (at most 24 + 8 significant bits, the
    # terms within a factor 2**8 of each other), so the final cast is the FMA's one rounding.
    low = np.float64(step) * k + np.float64(start)
    high = np.float64(end) - np.float64(step) * (steps - 1 - k)
    return np.where(k < steps // 2, low, high).astype(_F32)


def _linspace_plain(steps: int) -> np.ndarray:
    """As :func:`_linspace_fma` with a rounding after the product (no FMA)."""
    start, end = _F32(0.1), _F32(1.0)
    step = (end - start) / _F32(steps - 1)
    k = np.arange(steps)
    low = start + step * k.astype(_F32)
    high = end - step * (steps - 1 - k).astype(_F32)
    return np.where(k < steps // 2, low, high).astype(_F32)


def _magnitudes(signed: bool, fma: bool = True) -> np.ndarray:
    """The positive values of a dynamic map without 1, in increasing order (float32)."""
    linspace = _linspace_fma if fma else _linspace_plain
    values = []
    for i in range(7):
        bounds = linspace(2 ** (i if signed else i + 1) + 1)
        means = (bounds[:-1] + bounds[1:]) / _F32(2)
        values.append(_F32(10.0 ** (i - 6)) * means)
    out = np.concatenate(values).astype(_F32)
    assert np.all(np.diff(out) > 0)
    return out


def dynamic_map(signed: bool, *, fma: bool = True) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed)``: the 256 values in increasing order.

    Parameters
    ----------
    signed : bool
        The signed map (both signs, plus 0 and +1) or the unsigned one (0, positives, 1).
    fma : bool
        ``True`` (default): the values torch gives on x86 CPUs with AVX2 or AVX-512, where
        ``linspace`` runs with fused multiply-adds; ``False``: those of a torch build without
        FMA. The codecs of this module use ``fma=True``.

    Returns
    -------
    numpy.ndarray
        256 float32 values, sorted.
    """
    mags = _magnitudes(signed, fma)
    parts = [mags, -mags] if signed else [mags]
    return np.sort(np.concatenate([*parts, [_F32(0), _F32(1)]]).astype(_F32))


def _code_values(signed: bool) -> np.ndarray:
    mags = np.concatenate([[_F32(0)], _magnitudes(signed), [_F32(1)]]).astype(_F32)
    if not signed:
        return mags
    return np.concatenate([mags[:129], -mags[1:128]]).astype(_F32)


#: Value of each signed code (float32, indexed by code; see the module notes for the order).
SIGNED_MAP = _code_values(True)
#: Value of each unsigned code (float32, indexed by code; increasing).
UNSIGNED_MAP = _code_values(False)
#: Position of each signed code's value in bitsandbytes' sorted signed map.
SIGNED_SORTED_INDEX = np.searchsorted(dynamic_map(True), SIGNED_MAP).astype(np.uint8)
#: Position of each unsigned code's value in bitsandbytes' sorted unsigned map (the identity).
UNSIGNED_SORTED_INDEX = np.arange(256, dtype=np.uint8)

# Encoder tables. Values below _LOW_BITS (2**-23) encode to 0 in both maps (the first
# threshold is above 2**-22.3); _ONE_BITS is 1.0.
_LOW_BITS = 0x34000000
_ONE_BITS = 0x3F800000


def _thresholds(signed: bool) -> np.ndarray:
    """Bit patterns of the thresholds: ``t[m]`` is the smallest float32 ``a`` whose nearest
    magnitude is ``v[m + 1]`` rather than ``v[m]`` (ties go to ``v[m + 1]``)."""
    mags = np.concatenate([[0.0], _magnitudes(signed).astype(np.float64), [1.0]])
    mid = (mags[:-1] + mags[1:]) / 2  # exact in float64
    t = mid.astype(_F32)
    t = np.where(t.astype(np.float64) < mid, np.nextafter(t, _F32(np.inf)), t).astype(_F32)
    return t.view(np.uint32).astype(np.int64)


def _bucket_table(signed: bool, shift: int) -> np.ndarray:
    """Entry ``b`` covers the float32 bit patterns ``[_LOW_BITS + b << shift, ... + 1 <<
    shift)``: ``(m0 << (shift + 1)) | off``, ``m0`` the magnitude index of the bucket's start
    and ``off`` the low bits of the one threshold inside the bucket (``1 << shift``: none)."""
    t = _thresholds(signed)
    n = ((_ONE_BITS - _LOW_BITS) >> shift) + 1
    start = _LOW_BITS + (np.arange(n, dtype=np.int64) << shift)
    m0 = np.searchsorted(t, start, side="right")       # thresholds <= start
    inside = np.searchsorted(t, start + (1 << shift), side="left") - m0
    assert inside.max() <= 1, "a bucket holds two thresholds"
    assert m0[0] == 0 and inside[0] == 0 and m0[-1] == t.size and inside[-1] == 0
    off = np.where(inside == 1, t[np.minimum(m0, t.size - 1)] - start, 1 << shift)
    return ((m0 << (shift + 1)) | off).astype(np.int32)


_S_SHIFT = 17   # 6 mantissa bits per bucket: signed thresholds are >= 2**-6.2 apart near 1
_U_SHIFT = 16   # 7 mantissa bits: unsigned ones are half as far apart
_S_TABLE = _bucket_table(True, _S_SHIFT)
_U_TABLE = _bucket_table(False, _U_SHIFT)
#: The encoder's bucket table of each map (int32; see the module notes): kernels that keep
#: the tables elsewhere (GPU shared memory) pass them to :func:`encode_with`.
SIGNED_ENCODE_TABLE, UNSIGNED_ENCODE_TABLE = _S_TABLE, _U_TABLE
ENCODE_TABLES = {"signed": _S_TABLE, "unsigned": _U_TABLE}

_jit = numba.njit(inline="always", error_model="numpy")
_NORMAL = _F32(2.0**-126)       # smallest normal float32
_LARGE = _F32(2.0**126)         # largest absmax whose reciprocal is normal
_UP = _F32(2.0**64)
_DOWN = _F32(2.0**-64)


@_jit
def abs_bits(x):  # pragma: no cover - jit
    """Bit pattern of ``|x|`` for float32 ``x``, as a non-negative int32: non-negative floats
    order like their bit patterns, and NaN's are above +Inf's. (int32, not uint32: Numba
    widens uint32 arithmetic to 64 bits, which halves the vector width.)"""
    return np.int32(float32_as_bits(x) & np.uint32(0x7FFFFFFF))


@_jit
def abs_bits_as_float32(bits):  # pragma: no cover - jit
    """float32 whose bit pattern is the non-negative int32 ``bits`` (inverse of
    :func:`abs_bits` for non-negative values)."""
    return bits_as_float32(np.uint32(bits))


def _encoder(table: np.ndarray, shift: int, signed: bool) -> Any:
    """The per-element encoder of one map as a Numba intrinsic: LLVM IR with 32-bit integer
    lanes (Numba would widen int32 arithmetic to 64 bits, halving the vector width)."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    low_mask, off_mask = (1 << shift) - 1, (2 << shift) - 1

    @intrinsic
    def encode(typingctx, y, table_type):
        def codegen(context, builder, signature, args):
            value, table_arg = args
            data = context.make_array(signature.args[1])(context, builder, table_arg).data
            bits = builder.bitcast(value, i32)
            a = builder.and_(bits, i32(0x7FFFFFFF))             # |y| (NaN: above 1.0)
            a = builder.select(builder.icmp_signed("<", a, i32(_LOW_BITS)), i32(_LOW_BITS), a)
            a = builder.select(builder.icmp_signed(">", a, i32(_ONE_BITS)), i32(_ONE_BITS), a)
            bucket = builder.lshr(builder.sub(a, i32(_LOW_BITS)), i32(shift))
            entry = builder.load(builder.gep(data, [builder.zext(bucket, i64)]))
            above = builder.icmp_unsigned(">=", builder.and_(a, i32(low_mask)),
                                          builder.and_(entry, i32(off_mask)))
            m = builder.add(builder.ashr(entry, i32(shift + 1)), builder.zext(above, i32))
            if signed:
                neg = builder.select(builder.icmp_signed("<", m, i32(127)), m, i32(127))
                neg = builder.select(builder.icmp_signed("!=", neg, i32(0)),
                                     builder.or_(neg, i32(128)), i32(0))
                code = builder.select(builder.icmp_signed("<", bits, i32(0)), neg, m)
            else:
                positive = builder.fcmp_ordered(">", value, ir.Constant(ir.FloatType(), 0.0))
                code = builder.select(positive, m, i32(0))
            return builder.trunc(code, ir.IntType(8))

        return types.uint8(types.float32, table_type), codegen

    return encode


_encode_signed = _encoder(_S_TABLE, _S_SHIFT, True)
_encode_unsigned = _encoder(_U_TABLE, _U_SHIFT, False)


@_jit
def encode_signed(y):  # pragma: no cover - jit
    """Signed code (uint8) of the map value nearest to float32 ``y`` (ties away from zero;
    ``y`` should lie in [-1, 1]: larger magnitudes get the code of +1 or of the most negative
    value, NaN that of one of them)."""
    return _encode_signed(y, _S_TABLE)


@_jit
def encode_unsigned(y):  # pragma: no cover - jit
    """Unsigned code (uint8) of the map value nearest to float32 ``y`` (ties away from zero;
    negative ``y`` and NaN give code 0, ``y > 1`` the code of 1)."""
    return _encode_unsigned(y, _U_TABLE)


@_jit
def encode_with(y, table, signed):  # pragma: no cover - jit
    """:func:`encode_signed` (``signed``) or :func:`encode_unsigned` of ``y`` with the map's
    bucket table ``table`` (a copy of :data:`SIGNED_ENCODE_TABLE` or
    :data:`UNSIGNED_ENCODE_TABLE`, e.g. in GPU shared memory)."""
    if signed:
        return _encode_signed(y, table)
    return _encode_unsigned(y, table)


@_jit
def decode_signed(code):  # pragma: no cover - jit
    """Value (float32) of signed ``code``."""
    return SIGNED_MAP[code]


@_jit
def decode_unsigned(code):  # pragma: no cover - jit
    """Value (float32) of unsigned ``code``."""
    return UNSIGNED_MAP[code]


@_jit
def block_scale(absmax):  # pragma: no cover - jit
    """The factors ``(pre, inv)`` of a block's normalization ``y = (x * pre) * inv``.

    ``inv = 1 / absmax`` and ``pre = 1`` for ``2**-126 <= absmax <= 2**126``; beyond, ``pre``
    is ``2**64`` or ``2**-64`` and ``inv = 1 / (absmax * pre)``, which keeps ``inv`` a normal
    float32. A zero block gets ``inv = 0`` (all codes 0), a NaN one ``inv = NaN`` and an
    infinite one ``inv = 0`` (its finite elements give 0, its infinite ones NaN).
    """
    pre = _F32(1.0)
    if absmax < _NORMAL:
        pre = _UP
    elif absmax > _LARGE:
        pre = _DOWN
    inv = _F32(1.0) / (absmax * pre) if absmax != _F32(0.0) else _F32(0.0)
    return pre, inv


@_jit
def encode_block(values, codes, signed):  # pragma: no cover - jit
    """Quantize one block in place: ``codes[i]`` of ``values[i]`` (float32); returns the
    block's absmax (float32). ``signed``: the map."""
    top = np.int32(0)
    for i in range(values.size):
        top = max(top, abs_bits(values[i]))
    amax = abs_bits_as_float32(top)
    pre, inv = block_scale(amax)
    if signed:
        for i in range(values.size):
            codes[i] = encode_signed((values[i] * pre) * inv)
    else:
        for i in range(values.size):
            codes[i] = encode_unsigned((values[i] * pre) * inv)
    return amax


@_jit
def decode_block(codes, absmax, out, signed):  # pragma: no cover - jit
    """Dequantize one block: ``out[i] = map[codes[i]] * absmax`` (float32)."""
    if signed:
        for i in range(out.size):
            out[i] = decode_signed(codes[i]) * absmax
    else:
        for i in range(out.size):
            out[i] = decode_unsigned(codes[i]) * absmax


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _block(values, codes, absmax, b, block_size, signed, encode):  # pragma: no cover - jit
    """Block ``b``: quantize ``values`` into ``codes`` and ``absmax`` (``encode``), or
    dequantize them into ``values``."""
    lo = b * block_size
    if encode:
        absmax[b] = encode_block(values[lo:lo + block_size], codes[lo:lo + block_size],
                                 signed)
    else:
        decode_block(codes[lo:lo + block_size], absmax[b], values[lo:lo + block_size], signed)


@numba.njit(error_model="numpy", nogil=True, cache=True)
def _serial(values, codes, absmax, block_size, signed, encode):  # pragma: no cover - jit
    for b in range(absmax.size):
        _block(values, codes, absmax, b, block_size, signed, encode)


@numba.njit(parallel=True, error_model="numpy", nogil=True, cache=True)
def _parallel(values, codes, absmax, block_size, signed, encode):  # pragma: no cover - jit
    for b in numba.prange(absmax.size):
        _block(values, codes, absmax, b, block_size, signed, encode)


def _run(values: np.ndarray, codes: np.ndarray, absmax: np.ndarray, block_size: int,
         signed: bool, encode: bool) -> None:
    """Every block, over the threads for large arrays."""
    if values.size >= PARALLEL_THRESHOLD:
        with parallel_guard():
            _parallel(values, codes, absmax, block_size, signed, encode)
    elif values.size:
        _serial(values, codes, absmax, block_size, signed, encode)


_INPUT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _check_block_size(block_size: object) -> int:
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size,
                                                                 (int, np.integer)):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return int(block_size)


def _check_signed(signed: object) -> bool:
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    return bool(signed)


def quantize_blockwise(x: np.ndarray, *, signed: bool, block_size: int = BLOCK_SIZE
                       ) -> tuple[np.ndarray, np.ndarray]:
    """8-bit blockwise quantization of ``x`` with the signed or unsigned dynamic map.

    With the flat ``x`` (C order) cut into blocks :math:`B_j` of ``block_size`` elements
    (the last one possibly shorter),

    .. math::

        \\mathrm{absmax}_j = \\max_{i \\in B_j} |x_i|, \\qquad
        c_i = \\operatorname*{arg\\,min}_c \\bigl|\\mathrm{map}[c] - x_i \\cdot
        \\mathrm{fl}(1 / \\mathrm{absmax}_j)\\bigr| ,

    ties to the value of larger magnitude; see the module notes for blocks whose reciprocal
    would not be a normal float32, for zero and for non-finite blocks.

    Parameters
    ----------
    x : numpy.ndarray
        float32 values (float16, bfloat16 and float64 are converted to float32 first); any
        shape and memory layout.
    signed : bool
        Use the signed map (for signed state such as Adam's first moment) or the unsigned
        one (non-negative state; negative values get code 0).
    block_size : int
        Elements per block, positive (default 256).

    Returns
    -------
    codes : numpy.ndarray
        uint8 codes, ``x``'s shape (C order).
    absmax : numpy.ndarray
        float32, one per block: ``ceil(x.size / block_size)`` values.
    """
    signed = _check_signed(signed)
    block_size = _check_block_size(block_size)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.name not in _INPUT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    flat = np.ascontiguousarray(x, dtype=_F32).reshape(-1)
    codes = np.empty(x.shape, dtype=np.uint8)
    absmax = np.empty(-(-flat.size // block_size), dtype=_F32)
    _run(flat, codes.reshape(-1), absmax, block_size, signed, True)
    return codes, absmax


def dequantize_blockwise(codes: np.ndarray, absmax: np.ndarray, *, signed: bool,
                         block_size: int = BLOCK_SIZE, out: np.ndarray | None = None,
                         dtype: type | np.dtype = np.float32) -> np.ndarray:
    """Values of 8-bit blockwise ``codes``: :math:`x_i = \\mathrm{map}[c_i] \\cdot
    \\mathrm{absmax}_j` (float32 product) for element :math:`i` of block :math:`j`.

    Parameters
    ----------
    codes : numpy.ndarray
        uint8 codes from :func:`quantize_blockwise` (any shape and layout, read in C order).
    absmax : numpy.ndarray
        float32, one per block of ``block_size`` elements: ``ceil(codes.size / block_size)``.
    signed : bool
        The map the codes refer to.
    block_size : int
        Elements per block, positive (default 256).
    out : numpy.ndarray, optional
        C-contiguous array of ``codes``'s shape and of dtype ``dtype`` to write into.
    dtype : numpy dtype
        float32 (default) or float64 (the float32 products, widened).

    Returns
    -------
    numpy.ndarray
        The values, ``codes``'s shape: ``out`` if given.
    """
    signed = _check_signed(signed)
    block_size = _check_block_size(block_size)
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
        raise TypeError("codes must be a numpy.ndarray of dtype uint8, got "
                        + (str(codes.dtype) if isinstance(codes, np.ndarray)
                           else type(codes).__name__))
    if not isinstance(absmax, np.ndarray) or absmax.dtype != np.float32:
        raise TypeError("absmax must be a numpy.ndarray of dtype float32, got "
                        + (str(absmax.dtype) if isinstance(absmax, np.ndarray)
                           else type(absmax).__name__))
    blocks = -(-codes.size // block_size)
    if absmax.ndim != 1 or absmax.size != blocks:
        raise ValueError(f"absmax must be 1-D with {blocks} values (one per block of "
                         f"{block_size} of {codes.size} codes), got shape {absmax.shape}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if out is not None:
        if not isinstance(out, np.ndarray) or out.dtype != dtype:
            raise TypeError(f"out must be a numpy.ndarray of dtype {dtype}")
        if out.shape != codes.shape or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous array of shape "
                             f"{codes.shape}, got shape {out.shape}")
    flat = np.ascontiguousarray(codes).reshape(-1)
    absmax = np.ascontiguousarray(absmax)
    values = out if out is not None and dtype == np.float32 else np.empty(codes.shape, _F32)
    _run(values.reshape(-1), flat, absmax, block_size, signed, False)
    if dtype == np.float32:
        return values
    if out is None:
        return values.astype(dtype)
    out[...] = values
    return out
