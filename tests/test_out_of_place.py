"""The functional API out of place (``out=``): the arrays read, their new values written into
the ``out`` arrays, bit for bit what the in-place call writes."""

import cases
import numpy as np
import pytest

from fastgd import functional as F
from fastgd.arrays import bfloat16
from fastgd.quantization import quantize_blockwise

SIZES = [0, 1, 7, 1025, 70001]  # (the last above the parallel threshold)


def _shapes(name):
    if cases.ALGORITHMS[name].matrices:
        return [(0, 3), (1, 1), (7, 5), (33, 31), (300, 241)]
    return [(n,) for n in SIZES] + [(33, 31)]


def _arrays(name, hp, shape, dtype, rng):
    """A parameter, a gradient and state arrays after two in-place steps (so that every
    state holds values of its own), and the per-parameter scalars."""
    param = rng.standard_normal(shape).astype(dtype)
    states = {s: np.asarray(np.broadcast_to(cases.state_fill(name, s, hp, param),
                                            cases.state_shape(name, s, shape)), dtype).copy()
              for s in cases.state_names(name, hp, len(shape))}
    scalars = cases.initial_scalars(name, hp)
    for t in (1, 2):
        scalars = cases.call_functional(name, param, rng.standard_normal(shape).astype(dtype),
                                        states, hp, t, scalars) or scalars
    return param, rng.standard_normal(shape).astype(dtype), states, scalars


def _out(name, states, like):
    """The ``out`` tuple of a call: param's, then one per state argument (None if unused)."""
    return (like["param"], *(like.get(s.name) for s in cases.ALGORITHMS[name].states))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", cases.ALL_NAMES)
def test_out_of_place_equals_in_place(name, dtype):
    rng = np.random.default_rng(7)
    hp = cases.example(name, seed=3)
    for shape in _shapes(name):
        param, grad, states, scalars = _arrays(name, hp, shape, dtype, rng)
        inputs = {"param": param, **states}
        copies = {k: v.copy() for k, v in inputs.items()}
        expected = cases.call_functional(name, copies["param"], grad,
                                         {k: v for k, v in copies.items() if k != "param"},
                                         hp, 3, scalars)
        for array in inputs.values():
            array.flags.writeable = False  # (read, never written)
        before = {k: v.copy() for k, v in inputs.items()}
        outs = {k: np.full_like(v, np.nan) for k, v in inputs.items()}
        got = cases.call_functional(name, param, grad, states, hp, 3, scalars,
                                    out=_out(name, states, outs))
        assert got == expected
        for key in inputs:
            np.testing.assert_array_equal(inputs[key], before[key])
            assert np.array_equal(outs[key], copies[key], equal_nan=True), (shape, key)


def test_an_out_array_may_be_its_own_input():
    rng = np.random.default_rng(0)
    p, g, m, v = (rng.standard_normal(5000).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    expected = [a.copy() for a in (p, m, v)]
    F.adam(*expected[:1], g, *expected[1:], step=4, lr=0.1)
    new_p = np.empty_like(p)
    F.adam(p, g, m, v, step=4, lr=0.1, out=(new_p, m, v, None))  # (the state in place)
    for a, b in zip((new_p, m, v), expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_low_precision_and_layouts(layout):
    rng = np.random.default_rng(1)
    shape = (300, 257)
    for pdtype, sdtype in [(np.float16, np.float32), (bfloat16(), np.float32),
                           (np.float32, bfloat16())]:
        p = np.asarray(rng.standard_normal(shape), pdtype, order=layout)
        g = np.asarray(rng.standard_normal(shape), pdtype, order=layout)
        m = np.asarray(rng.standard_normal(shape) * 0.1, sdtype, order=layout)
        v = np.asarray(rng.random(shape) * 0.01, sdtype, order=layout)
        expected = [a.copy(order="K") for a in (p, m, v)]
        F.adamw(expected[0], g, expected[1], expected[2], step=5, lr=0.01)
        outs = [np.empty_like(a, order="K") for a in (p, m, v)]
        F.adamw(p, g, m, v, step=5, lr=0.01, out=(*outs, None))
        for a, b in zip(outs, expected, strict=True):
            assert a.tobytes() == b.tobytes()


def test_eight_bit_state():
    rng = np.random.default_rng(2)
    n = 70000 + 13
    p, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    m = quantize_blockwise(rng.standard_normal(n).astype(np.float32) * 0.1, signed=True)
    v = quantize_blockwise(rng.random(n).astype(np.float32) * 0.01, signed=False)
    expected = [p.copy(), tuple(a.copy() for a in m), tuple(a.copy() for a in v)]
    F.adam(expected[0], g, expected[1], expected[2], step=3, lr=0.01)
    outs = [np.empty_like(p), tuple(np.empty_like(a) for a in m),
            tuple(np.empty_like(a) for a in v)]
    F.adam(p, g, m, v, step=3, lr=0.01, out=(*outs, None))
    np.testing.assert_array_equal(outs[0], expected[0])
    for got, want in zip(outs[1:], expected[1:], strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_bad_out_is_refused_with_nothing_written():
    rng = np.random.default_rng(3)
    p, g, m, v = (rng.standard_normal((40, 30)).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    good = [np.zeros_like(p) for _ in range(3)]
    cases_ = [
        ((good[0],), TypeError, "tuple of 4"),
        (good, TypeError, "tuple of 4"),
        ((good[0], good[1], good[2], np.zeros_like(p)), ValueError, r"out\[3\].*None"),
        ((None, good[1], good[2], None), ValueError, r"out\[0\]"),
        ((good[0], None, good[2], None), ValueError, r"out\[1\]"),
        ((np.zeros((40, 31), np.float32), good[1], good[2], None), ValueError, "shape"),
        ((np.zeros_like(p, np.float64), good[1], good[2], None), TypeError, "dtype"),
        ((np.zeros_like(p, order="F"), good[1], good[2], None), ValueError, "contiguous"),
        ((good[0], np.zeros_like(p, np.float64), good[2], None), TypeError, "dtype"),
        ((m, good[1], good[2], None), ValueError, "shares memory"),
        ((good[0], g, good[2], None), ValueError, "grad"),
        ((good[0], good[1], good[1], None), ValueError, "share memory"),
    ]
    frozen = np.zeros_like(p)
    frozen.flags.writeable = False
    cases_.append(((frozen, good[1], good[2], None), ValueError, "read-only"))
    before = [a.copy() for a in (p, g, m, v, *good)]
    for out, error, match in cases_:
        with pytest.raises(error, match=match):
            F.adam(p, g, m, v, step=1, out=out)
        for a, b in zip((p, g, m, v, *good), before, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="out"):  # (two-phase steps check theirs too)
        F.lamb(p, g, m, v, step=1, out=(good[0][:3], good[1], good[2]))


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    p, g, square_avg, momentum, grad_avg = (
        torch.from_numpy(rng.standard_normal(3000).astype(np.float32)) for _ in range(5))
    square_avg.abs_()
    square_avg.add_(grad_avg * grad_avg)
    inputs = (p, square_avg, momentum, grad_avg)
    expected = [t.clone() for t in inputs]
    F.rmsprop(expected[0], g, *expected[1:], lr=0.01, momentum=0.9, centered=True)
    outs = [torch.empty_like(t) for t in inputs]
    F.rmsprop(p, g, *inputs[1:], lr=0.01, momentum=0.9, centered=True, out=tuple(outs))
    for a, b in zip(outs, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lamb", "muon"])
def test_two_phase_low_precision_and_checks_before_writing(name):
    rng = np.random.default_rng(5)
    f = getattr(F, name)
    kw = {"step": 1} if name == "lamb" else {}
    for pdtype, sdtype in [(np.float16, np.float32), (bfloat16(), np.float32),
                           (np.float32, bfloat16())]:
        p, g = (rng.standard_normal((20, 30)).astype(pdtype) for _ in range(2))
        states = [np.zeros((20, 30), sdtype) for _ in range(2 if name == "lamb" else 1)]
        expected = [p.copy(), *(s.copy() for s in states)]
        f(expected[0], g, *expected[1:], **kw)
        outs = [np.empty_like(a) for a in (p, *states)]
        f(p, g, *states, **kw, out=tuple(outs))
        for a, b in zip(outs, expected, strict=True):
            assert a.tobytes() == b.tobytes()
    p, g = (rng.standard_normal((20, 30)).astype(np.float32) for _ in range(2))
    states = [np.zeros((20, 30), np.float32) for _ in range(2 if name == "lamb" else 1)]
    outs = [np.zeros_like(p) for _ in range(1 + len(states))]
    kept = g.copy()
    for out, grad, match in [((g, *outs[1:]), g, "grad"),
                             ((*outs[:-1], outs[0]), g, "share memory"),
                             (tuple(outs), g[:10], "shape")]:
        with pytest.raises(ValueError, match=match):
            f(p, grad, *states, **kw, out=out)
        assert not any(o.any() for o in outs)
        np.testing.assert_array_equal(g, kept)
