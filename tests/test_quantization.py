"""8-bit blockwise dynamic-map quantization: the maps, the exact nearest-value encoder, the
blockwise codec and its edge cases, and agreement with bitsandbytes."""

import numba
import numpy as np
import pytest

from fastgd import quantization as q

# bitsandbytes.functional.create_dynamic_map(signed) (bitsandbytes 0.50, torch 2.13 on an x86
# CPU with AVX2/AVX-512), sorted as bitsandbytes returns it: big-endian float32 bit patterns.
BNB_SIGNED_HEX = (
    "bf7e3333bf7a999abf770000bf736666bf6fcccdbf6c3333bf68999abf650000bf616666bf5dcccdbf5a3333"
    "bf56999abf530000bf4f6666bf4bcccdbf483333bf44999abf410000bf3d6666bf39cccdbf363334bf32999a"
    "bf2f0000bf2b6666bf27cccdbf243334bf20999abf1d0000bf196666bf15cccdbf123334bf0e999abf0b0000"
    "bf076666bf03ccccbf003333bef93332bef20000beeaccccbee3999abedc6666bed53333bece0000bec6cccc"
    "bebf999abeb86666beb13333beaa0000bea2ccccbe9b999abe946666be8d3334be860000be7d9999be6f3333"
    "be60cccdbe526666be440000be35999abe273333be18cccdbe0a6666bdf80000bddb3334bdc9eb85bdc428f7"
    "bdbe6667bdb8a3d7bdb2e148bdad1eb8bda75c2abda1999abd9bd70abd96147bbd9051ebbd8a8f5dbd84cccd"
    "bd7e147bbd728f5dbd670a3dbd5b851fbd500000bd447ae1bd38f5c3bd2d70a3bd21eb85bd166667bd0ae148"
    "bcfeb852bce7ae15bcd0a3d7bcb9999abca28f5dbc8b851fbc68f5c3bc3ae148bc1f3b64bc160418bc0ccccd"
    "bc039581bbf4bc6abbe24dd3bbcfdf3bbbbd70a4bbab020dbb989374bb8624ddbb676c8abb428f5cbb1db22d"
    "baf1a9fcbaa7ef9dba7765ffba59e83eba3c6a80ba1eecc1ba016f01b9c7e283b98ce705b923d70bb8ba1f4b"
    "b88aefb3b8378034b7b24206b70205ffb65a1a94b513a3b7000000003513a3b7365a1a94370205ff37b24206"
    "38378034388aefb338ba1f4b3923d70b398ce70539c7e2833a016f013a1eecc13a3c6a803a59e83e3a7765ff"
    "3aa7ef9d3af1a9fc3b1db22d3b428f5c3b676c8a3b8624dd3b9893743bab020d3bbd70a43bcfdf3b3be24dd3"
    "3bf4bc6a3c0395813c0ccccd3c1604183c1f3b643c3ae1483c68f5c33c8b851f3ca28f5d3cb9999a3cd0a3d7"
    "3ce7ae153cfeb8523d0ae1483d1666673d21eb853d2d70a33d38f5c33d447ae13d5000003d5b851f3d670a3d"
    "3d728f5d3d7e147b3d84cccd3d8a8f5d3d9051eb3d96147b3d9bd70a3da1999a3da75c2a3dad1eb83db2e148"
    "3db8a3d73dbe66673dc428f73dc9eb853ddb33343df800003e0a66663e18cccd3e2733333e35999a3e440000"
    "3e5266663e60cccd3e6f33333e7d99993e8600003e8d33343e9466663e9b999a3ea2cccc3eaa00003eb13333"
    "3eb866663ebf999a3ec6cccc3ece00003ed533333edc66663ee3999a3eeacccc3ef200003ef933323f003333"
    "3f03cccc3f0766663f0b00003f0e999a3f1233343f15cccd3f1966663f1d00003f20999a3f2433343f27cccd"
    "3f2b66663f2f00003f32999a3f3633343f39cccd3f3d66663f4100003f44999a3f4833333f4bcccd3f4f6666"
    "3f5300003f56999a3f5a33333f5dcccd3f6166663f6500003f68999a3f6c33333f6fcccd3f7366663f770000"
    "3f7a999a3f7e33333f800000"
)
BNB_UNSIGNED_HEX = (
    "0000000034ae7baa35500998360e9b383692ccf636de4c513714e5d53783126e37e171a0381fe868384f1800"
    "387e479a3896bb9938ae536438c5eb313906594b394154ca397c5049399ba5e439b923a239d6a16339f41f22"
    "3a08ce713a178d503a264c303a350b103a43c9ef3a5288d03a6147af3a70068e3a7ec56e3a9581063aba5e35"
    "3adf3b643b020c4a3b147ae13b26e9783b3958103b4bc6a73b5e35403b70a3d73b8189373b8ac0823b93f7cf"
    "3b9d2f1a3ba666663baf9db23bb8d4fd3bc20c4a3bcb43953bd47ae13bddb22e3be6e9783bf020c53bf9580f"
    "3c0147ae3c05e3543c0a7ef93c0f1aa03c13b6453c1851eb3c1ced923c2189373c2f5c2a3c4666673c5d70a3"
    "3c747ae23c85c28f3c9147af3c9ccccd3ca851eb3cb3d70b3cbf5c293ccae1473cd666673ce1eb873ced70a3"
    "3cf8f5c33d023d703d0800003d0dc28f3d13851f3d1947af3d1f0a3d3d24cccd3d2a8f5c3d3051eb3d36147b"
    "3d3bd70a3d41999a3d475c283d4d1eb83d52e1473d58a3d73d5e66673d6428f73d69eb873d6fae153d7570a3"
    "3d7b33333d807ae23d835c2a3d863d713d891eb83d8c00003d8ee1483d91c2903d94a3d73d97851f3d9a6667"
    "3d9d47af3da028f63da30a3e3da5eb853da8cccd3dabae153dae8f5c3db170a43db451eb3db733333dba147b"
    "3dbcf5c33dbfd70b3dc2b8523dc5999a3dc87ae23dcb5c293dd400003de266663df0cccd3dff33333e06cccc"
    "3e0e00003e1533343e1c66663e23999a3e2acccc3e3200003e3933343e4066663e47999a3e4ecccc3e560000"
    "3e5d33343e6466663e6b999a3e72cccc3e7a00003e8099993e8433333e87cccd3e8b66663e8f00003e92999a"
    "3e9633333e99cccc3e9d66663ea100003ea4999a3ea833333eabcccc3eaf66663eb300003eb6999a3eba3333"
    "3ebdcccc3ec166663ec500003ec8999a3ecc33333ecfcccc3ed366663ed700003eda999a3ede33333ee1cccc"
    "3ee566663ee900003eec999a3ef033333ef3cccc3ef766663efb00003efe99993f01199a3f02e6663f04b333"
    "3f0680003f084ccc3f0a199a3f0be6663f0db3343f0f80003f114ccd3f13199a3f14e6663f16b3343f188000"
    "3f1a4ccd3f1c199a3f1de6663f1fb3343f2180003f234ccd3f25199a3f26e6663f28b3343f2a80003f2c4ccd"
    "3f2e199a3f2fe6663f31b3343f3380003f354ccd3f37199a3f38e6663f3ab3343f3c80003f3e4ccd3f40199a"
    "3f41e6663f43b3343f4580003f474ccc3f49199a3f4ae6663f4cb3343f4e80003f504ccc3f52199a3f53e666"
    "3f55b3343f5780003f594ccc3f5b199a3f5ce6663f5eb3343f6080003f624ccc3f64199a3f65e6663f67b334"
    "3f6980003f6b4ccc3f6d199a3f6ee6663f70b3343f7280003f744ccc3f76199a3f77e6663f79b3343f7b8000"
    "3f7d4ccc3f7f199a3f800000"
)


def expected_map(signed):
    text = BNB_SIGNED_HEX if signed else BNB_UNSIGNED_HEX
    return np.frombuffer(bytes.fromhex("".join(text)), dtype=">f4").astype(np.float32)


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


@numba.njit(error_model="numpy")
def encode_all(y, signed):
    out = np.empty(y.size, np.uint8)
    for i in range(y.size):
        out[i] = q.encode_signed(y[i]) if signed else q.encode_unsigned(y[i])
    return out




def nearest_codes(y, signed):
    """Brute force: the code of the map value nearest to each float32 ``y`` (midpoints
    compared in float64, where they are exact; ties to the larger magnitude; NaN: code 0)."""
    values = (q.SIGNED_MAP if signed else q.UNSIGNED_MAP).astype(np.float64)
    order = np.argsort(values)
    s = values[order]
    y = np.asarray(y, np.float64)
    k = np.clip(np.searchsorted(s, y), 1, s.size - 1)
    lo, hi = s[k - 1], s[k]
    mid = (lo + hi) / 2
    up = (y > mid) | ((y == mid) & (lo >= 0))
    codes = order[np.where(up, k, k - 1)].astype(np.uint8)
    codes[np.isnan(y)] = 0
    if not signed:
        codes[y < 0] = 0
    return codes


def adjacent_midpoints(signed):
    """Every midpoint between neighbouring map values (rounded to float32) and its two
    float32 neighbours."""
    s = np.sort((q.SIGNED_MAP if signed else q.UNSIGNED_MAP).astype(np.float64))
    mid = ((s[:-1] + s[1:]) / 2).astype(np.float32)
    return np.concatenate([mid, np.nextafter(mid, np.float32(-np.inf)),
                           np.nextafter(mid, np.float32(np.inf))])


# -- the maps ---------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_maps_are_bitsandbytes_values(signed):
    expected = expected_map(signed)
    assert np.array_equal(bits(q.dynamic_map(signed)), bits(expected))
    table = q.SIGNED_MAP if signed else q.UNSIGNED_MAP
    assert table.dtype == np.float32 and table.shape == (256,)
    assert np.array_equal(bits(np.sort(table)), bits(expected))
    index = q.SIGNED_SORTED_INDEX if signed else q.UNSIGNED_SORTED_INDEX
    assert np.array_equal(bits(expected[index]), bits(table))


def test_map_layout():
    mags = q.SIGNED_MAP[:128]
    assert mags[0] == 0 and np.all(np.diff(mags) > 0) and q.SIGNED_MAP[128] == 1
    assert np.array_equal(q.SIGNED_MAP[129:], -mags[1:])
    assert q.UNSIGNED_MAP[0] == 0 and q.UNSIGNED_MAP[255] == 1
    assert np.all(np.diff(q.UNSIGNED_MAP) > 0)


def test_map_without_fma_differs_by_an_ulp_or_two():
    for signed, count in ((True, 42), (False, 31)):
        a, b = q.dynamic_map(signed), q.dynamic_map(signed, fma=False)
        assert np.count_nonzero(a != b) == count
        assert np.all(np.abs(a - b) <= 2 * np.spacing(np.maximum(np.abs(a), np.abs(b))))


def test_maps_match_installed_bitsandbytes():
    functional = pytest.importorskip("bitsandbytes.functional")
    torch = pytest.importorskip("torch")
    fma = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for signed in (True, False):
        theirs = functional.create_dynamic_map(signed=signed).numpy()
        assert np.array_equal(bits(theirs), bits(q.dynamic_map(signed, fma=fma)))


# -- the per-element codec --------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_decode_is_the_table(signed):
    codes = np.arange(256, dtype=np.uint8)
    table = q.SIGNED_MAP if signed else q.UNSIGNED_MAP
    values = np.empty(codes.size, np.float32)
    q.decode_block(codes, np.float32(1), values, signed)  # (decode_signed/unsigned per code)
    assert np.array_equal(bits(values), bits(table))


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_nearest_on_a_sweep_of_bit_patterns(signed):
    """Every 257th float32 in [0, 1] (and a little beyond), both signs."""
    pos = np.arange(0, 0x3F900000, 257, dtype=np.uint32).view(np.float32)
    y = np.concatenate([pos, -pos])
    assert np.array_equal(encode_all(y, signed), nearest_codes(y, signed))


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_nearest_at_every_midpoint(signed):
    y = adjacent_midpoints(signed)
    y = np.concatenate([y, -y, q.SIGNED_MAP, q.UNSIGNED_MAP])
    assert np.array_equal(encode_all(y, signed), nearest_codes(y, signed))


@pytest.mark.parametrize("signed", [True, False])
def test_encode_ties_go_away_from_zero(signed):
    s = np.sort((q.SIGNED_MAP if signed else q.UNSIGNED_MAP).astype(np.float64))
    mid = (s[:-1] + s[1:]) / 2
    exact = mid.astype(np.float32).astype(np.float64) == mid
    assert exact.sum() > 50
    ties = mid[exact].astype(np.float32)
    got = (q.SIGNED_MAP if signed else q.UNSIGNED_MAP)[encode_all(ties, signed)]
    larger = np.where(ties > 0, s[1:][exact], s[:-1][exact])
    assert np.array_equal(got.astype(np.float64), larger)


@pytest.mark.parametrize("signed", [True, False])
def test_encode_is_nearest_on_random_values_of_every_magnitude(signed):
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    y = np.concatenate([pattern.view(np.float32),                       # anything at all
                        rng.uniform(-1, 1, 100_000).astype(np.float32),
                        (rng.uniform(-1, 1, 100_000) * 10.0 ** rng.uniform(-9, 0, 100_000)
                         ).astype(np.float32),
                        np.array([0, -0.0, 1, -1, 1.5, -1.5, np.inf, -np.inf, 1e-45,
                                  -1e-45, 1e-39, 3e38, -3e38], np.float32)])
    y = y[~np.isnan(y)]
    assert np.array_equal(encode_all(y, signed), nearest_codes(y, signed))


def test_encode_nan_and_out_of_domain():
    nan = np.array([np.nan, -np.nan], np.float32)
    assert set(encode_all(nan, True)) <= set(range(256))
    assert np.all(encode_all(nan, False) == 0)
    assert np.all(encode_all(np.array([-0.5, -1e-30, -np.inf], np.float32), False) == 0)
    assert q.SIGNED_MAP[encode_all(np.array([-1.0], np.float32), True)[0]] == -q.SIGNED_MAP[127]


# -- the blockwise codec ----------------------------------------------------------------

def reference_quantize(x, signed, block_size=256):
    flat = np.ascontiguousarray(x, np.float32).reshape(-1)
    blocks = -(-flat.size // block_size)
    pad = np.zeros(blocks * block_size, np.float32)
    pad[:flat.size] = flat
    absmax = np.abs(pad.reshape(blocks, block_size)).max(axis=1)
    with np.errstate(all="ignore"):
        inv = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0)).astype(np.float32)
        y = flat * np.repeat(inv, block_size)[:flat.size]
    return nearest_codes(y, signed).reshape(np.shape(x)), absmax


SIZES = [0, 1, 7, 255, 256, 257, 1025, 70_000]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", SIZES)
def test_quantize_matches_reference(n, signed):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    if not signed:
        x = np.abs(x)
    codes, absmax = q.quantize_blockwise(x, signed=signed)
    ref_codes, ref_absmax = reference_quantize(x, signed)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert absmax.dtype == np.float32 and absmax.shape == (-(-n // 256),)
    assert np.array_equal(bits(absmax), bits(ref_absmax))
    assert np.array_equal(codes, ref_codes)
    out = q.dequantize_blockwise(codes, absmax, signed=signed)
    table = q.SIGNED_MAP if signed else q.UNSIGNED_MAP
    expected = table[codes] * np.repeat(absmax, 256)[:n]
    assert out.dtype == np.float32 and np.array_equal(bits(out), bits(expected))


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_at_most_half_the_local_gap(signed):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((40, 300)) * 10.0 ** rng.uniform(-3, 3, (40, 1))).astype(
        np.float32)
    if not signed:
        x = x * x
    codes, absmax = q.quantize_blockwise(x, signed=signed)
    out = q.dequantize_blockwise(codes, absmax, signed=signed)
    table = q.SIGNED_MAP if signed else q.UNSIGNED_MAP
    s = np.sort(table.astype(np.float64))
    k = np.searchsorted(s, table[codes].astype(np.float64))
    gap_down = s[k] - s[np.maximum(k - 1, 0)]
    gap_up = s[np.minimum(k + 1, 255)] - s[k]
    half_gap = np.maximum(gap_down, gap_up) / 2
    scale = np.repeat(absmax, 256)[:x.size].reshape(x.shape).astype(np.float64)
    bound = (half_gap + 2.0**-22) * scale        # + the roundings of x / absmax and the product
    assert np.all(np.abs(out.astype(np.float64) - x) <= bound)


def test_block_sizes_and_layouts():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((33, 70)).astype(np.float32)
    for block_size in (1, 64, 100, 5000):
        codes, absmax = q.quantize_blockwise(x, signed=True, block_size=block_size)
        ref_codes, ref_absmax = reference_quantize(x, True, block_size)
        assert np.array_equal(codes, ref_codes) and np.array_equal(absmax, ref_absmax)
        out = q.dequantize_blockwise(codes, absmax, signed=True, block_size=block_size)
        assert out.shape == x.shape
    view = x[:, ::2].T                                        # not contiguous: read in C order
    codes, absmax = q.quantize_blockwise(view, signed=True)
    ref = q.quantize_blockwise(np.ascontiguousarray(view), signed=True)
    assert np.array_equal(codes, ref[0]) and np.array_equal(absmax, ref[1])
    back = q.dequantize_blockwise(codes.T.copy().T, absmax, signed=True)
    assert np.array_equal(back, q.dequantize_blockwise(codes, absmax, signed=True))
    for dtype in (np.float16, np.float64):
        c, a = q.quantize_blockwise(x.astype(dtype), signed=True)
        ref = q.quantize_blockwise(x.astype(dtype).astype(np.float32), signed=True)
        assert np.array_equal(c, ref[0]) and np.array_equal(a, ref[1])
    out = np.empty(codes.shape, np.float64)
    assert q.dequantize_blockwise(codes, absmax, signed=True, out=out, dtype=np.float64) is out
    assert np.array_equal(out, q.dequantize_blockwise(codes, absmax, signed=True))


def test_zero_subnormal_and_huge_blocks():
    tiny = np.float32(1e-45) * np.arange(-128, 128, dtype=np.float32)     # subnormals
    huge = np.float32(3.4e38) * np.linspace(-1, 1, 256, dtype=np.float32)
    x = np.concatenate([np.zeros(256, np.float32), tiny, huge, tiny * np.float32(1e5)])
    codes, absmax = q.quantize_blockwise(x, signed=True)
    assert absmax[0] == 0 and np.all(codes[:256] == 0)
    assert np.array_equal(bits(absmax[1:]), bits([np.abs(b).max() for b in
                                                  x[256:].reshape(3, 256)]))
    out = q.dequantize_blockwise(codes, absmax, signed=True)
    assert np.all(np.isfinite(out)) and np.all(out[:256] == 0)
    # full resolution in every block: within half a gap of the exact quotient x / absmax
    y = x[256:].astype(np.float64) / np.repeat(absmax[1:], 256)
    assert np.array_equal(codes[256:], nearest_codes(y.astype(np.float32), True))
    assert np.abs(out[256:] - x[256:]).max() <= np.abs(x[256:]).max() * 0.01
    ucodes, uabsmax = q.quantize_blockwise(np.abs(x), signed=False)
    assert np.all(np.isfinite(q.dequantize_blockwise(ucodes, uabsmax, signed=False)))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_poison_their_block_only(bad, signed):
    x = np.random.default_rng(3).uniform(0.5, 1, 768).astype(np.float32)
    x[300] = bad
    codes, absmax = q.quantize_blockwise(x, signed=signed)
    assert np.isnan(absmax[1]) if np.isnan(bad) else absmax[1] == np.inf
    out = q.dequantize_blockwise(codes, absmax, signed=signed)
    assert not np.any(np.isfinite(out[256:512]))
    assert np.all(np.isfinite(out[:256])) and np.all(np.isfinite(out[512:]))


def test_unsigned_map_clamps_negative_values_to_zero():
    x = np.array([-3.0, -1e-20, 0.0, 2.0], np.float32)
    codes, absmax = q.quantize_blockwise(x, signed=False)
    assert absmax[0] == 3 and list(codes[:2]) == [0, 0] and codes[3] != 0


def test_invalid_arguments():
    x = np.ones(10, np.float32)
    codes, absmax = q.quantize_blockwise(x, signed=True)
    with pytest.raises(TypeError, match="x must"):
        q.quantize_blockwise(np.ones(10, np.int32), signed=True)
    with pytest.raises(TypeError, match="x must"):
        q.quantize_blockwise([1.0, 2.0], signed=True)
    with pytest.raises(TypeError, match="signed"):
        q.quantize_blockwise(x, signed=1)
    with pytest.raises(ValueError, match="block_size"):
        q.quantize_blockwise(x, signed=True, block_size=0)
    with pytest.raises(TypeError, match="block_size"):
        q.quantize_blockwise(x, signed=True, block_size=2.0)
    with pytest.raises(TypeError, match="codes"):
        q.dequantize_blockwise(codes.astype(np.int8), absmax, signed=True)
    with pytest.raises(TypeError, match="absmax"):
        q.dequantize_blockwise(codes, absmax.astype(np.float64), signed=True)
    with pytest.raises(ValueError, match="absmax"):
        q.dequantize_blockwise(codes, np.ones(2, np.float32), signed=True)
    with pytest.raises(TypeError, match="dtype"):
        q.dequantize_blockwise(codes, absmax, signed=True, dtype=np.int32)
    with pytest.raises(ValueError, match="out"):
        q.dequantize_blockwise(codes, absmax, signed=True, out=np.empty(9, np.float32))
    with pytest.raises(TypeError, match="out"):
        q.dequantize_blockwise(codes, absmax, signed=True, out=np.empty(10, np.float64))


def test_agrees_with_bitsandbytes():
    """bitsandbytes' torch ("default") backend: the same codes (it ties to the lower value,
    this codec away from zero, which random data never hits); its C++ CPU kernel rounds
    through a 65536-bin table and is not always nearest: where the two differ, this codec's
    value must be strictly nearer."""
    functional = pytest.importorskip("bitsandbytes.functional")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(256 * 50) * 10.0 ** rng.uniform(-30, 30, (50, 1)).repeat(
        256, 1).ravel()).astype(np.float32)
    for signed in (True, False):
        xs = x if signed else np.abs(x)
        code = functional.create_dynamic_map(signed=signed)
        theirs, state = functional.quantize_blockwise(torch.from_numpy(xs), code=code,
                                                      blocksize=256)
        ours, absmax = q.quantize_blockwise(xs, signed=signed)
        assert np.array_equal(bits(state.absmax.numpy()), bits(absmax))
        index = q.SIGNED_SORTED_INDEX if signed else q.UNSIGNED_SORTED_INDEX
        ours_sorted = index[ours]
        values = code.numpy().astype(np.float64)
        y = (xs * (np.float32(1) / np.repeat(absmax, 256))).astype(np.float64)
        differ = ours_sorted != theirs.numpy()
        assert np.all(np.abs(values[ours_sorted] - y)[differ]
                      < np.abs(values[theirs.numpy()] - y)[differ])
        back = functional.dequantize_blockwise(torch.from_numpy(ours_sorted),
                                               absmax=torch.from_numpy(absmax), code=code,
                                               blocksize=256).numpy()
        assert np.array_equal(bits(back), bits(q.dequantize_blockwise(ours, absmax,
                                                                      signed=signed)))
