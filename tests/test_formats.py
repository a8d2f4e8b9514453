"""Element formats: decode equals ml_dtypes on every code; encode is RNE with saturation, on every backend.

Each backend's encode/decode (a native cast where it has one) is compared with the shared array-API code
and with ml_dtypes, over the whole code grid, the midpoints between neighbouring codes, and random values.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from conftest import FRAMEWORKS, to_framework, to_numpy

from breccia import formats
from breccia.backends import get_backend
from breccia.formats import E2M1, E4M3, E5M2, E8M0, INT4, INT8

ML_DTYPES = {
    "E4M3": ml_dtypes.float8_e4m3fn,
    "E5M2": ml_dtypes.float8_e5m2,
    "E2M1": ml_dtypes.float4_e2m1fn,
    "E8M0": ml_dtypes.float8_e8m0fnu,
}
FLOATS = [E4M3, E5M2, E2M1]


def _reference_values(fmt: formats.ElementFormat) -> np.ndarray:
    """Every finite value of ``fmt`` (both signs), the midpoints between neighbours, and random values."""
    table = formats.decode_table(fmt)
    grid = np.unique(table[np.isfinite(table)])
    midpoints = (grid[:-1] + grid[1:]) / 2
    rng = np.random.default_rng(0)
    random = rng.uniform(-fmt.max_value, fmt.max_value, 20000).astype(np.float32)
    tiny = (rng.standard_normal(2000) * 2.0 ** rng.integers(-14, -5, 2000)).astype(np.float32)
    values = np.concatenate([grid, midpoints, random, tiny, [-0.0, 0.0]]).astype(np.float32)
    return values[np.abs(values) <= fmt.max_value]


def _ml_dtypes_codes(values: np.ndarray, fmt: formats.ElementFormat) -> np.ndarray:
    return values.astype(ML_DTYPES[fmt.name]).view(np.uint8)


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E8M0], ids=str)
def test_decode_table_equals_ml_dtypes_on_all_256_codes(fmt):
    expected = np.arange(256, dtype=np.uint8).view(ML_DTYPES[fmt.name]).astype(np.float32)
    np.testing.assert_array_equal(formats.decode_table(fmt), expected)


def test_decode_table_e2m1_equals_ml_dtypes_on_all_16_codes():
    expected = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(formats.decode_table(E2M1), expected)


def test_decode_table_int4_is_twos_complement():
    np.testing.assert_array_equal(
        formats.decode_table(INT4), [0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1]
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("fmt", FLOATS, ids=str)
def test_shared_encode_equals_ml_dtypes(framework, fmt):
    backend = get_backend(framework)
    values = _reference_values(fmt)
    shared = formats.encode(backend.xp, backend.pow2, to_framework(framework, values), fmt)
    np.testing.assert_array_equal(to_numpy(shared), _ml_dtypes_codes(values, fmt))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("fmt", FLOATS, ids=str)
def test_backend_encode_is_bit_identical_to_shared_code(framework, fmt):
    """A backend's native cast (ml_dtypes, torch .to, XLA convert, ...) is only allowed if it matches."""
    backend = get_backend(framework)
    values = _reference_values(fmt)
    beyond = np.array([fmt.max_value * 1.01, -fmt.max_value * 7, np.inf, -np.inf, 3e38], np.float32)
    values = np.concatenate([values, beyond])
    x = to_framework(framework, values)
    shared = to_numpy(formats.encode(backend.xp, backend.pow2, x, fmt))
    native = to_numpy(backend.encode(x, fmt))
    np.testing.assert_array_equal(native, shared)
    # beyond the range: saturate to the largest finite code, keeping the sign
    top = _ml_dtypes_codes(np.array([fmt.max_value], np.float32), fmt)[0]
    np.testing.assert_array_equal(
        shared[-5:], [top, top | (1 << (fmt.bits - 1)), top, top | (1 << (fmt.bits - 1)), top]
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1, E8M0, INT8, INT4], ids=str)
def test_backend_decode_equals_table(framework, fmt):
    backend = get_backend(framework)
    n = 1 << fmt.bits
    codes = np.arange(n, dtype=np.uint8)
    if fmt is INT8:
        codes = codes.view(np.int8)
    decoded = to_numpy(backend.decode(to_framework(framework, codes), fmt))
    np.testing.assert_array_equal(decoded, formats.decode_table(fmt)[np.arange(n)])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_integer_encode_rounds_half_to_even_and_clips(framework):
    backend = get_backend(framework)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.4, 200.0, -128.4, -300.0], np.float32)
    int8 = to_numpy(formats.encode(backend.xp, backend.pow2, to_framework(framework, x), INT8))
    np.testing.assert_array_equal(int8, [0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128])
    x4 = np.array([0.5, 1.5, 6.5, 7.5, 9.0, -8.4, -9.0, -3.5], np.float32)
    nibbles = to_numpy(formats.encode(backend.xp, backend.pow2, to_framework(framework, x4), INT4))
    np.testing.assert_array_equal(
        nibbles, np.array([0, 2, 6, 7, 7, -8, -8, -4], np.int8).view(np.uint8) & 0x0F
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_pack_nibbles_puts_element_2i_in_the_low_nibble(framework, n):
    backend = get_backend(framework)
    codes = (np.arange(3 * n, dtype=np.uint8) % 16).reshape(3, n)
    packed = to_numpy(formats.pack_nibbles(backend.xp, to_framework(framework, codes)))
    assert packed.shape == (3, formats.packed_length(n))
    np.testing.assert_array_equal(packed[:, 0] & 0x0F, codes[:, 0])
    if n > 1:
        np.testing.assert_array_equal(packed[:, 0] >> 4, codes[:, 1])
    unpacked = to_numpy(formats.unpack_nibbles(backend.xp, to_framework(framework, packed), n))
    np.testing.assert_array_equal(unpacked, codes)
    np.testing.assert_array_equal(to_numpy(backend.pack_nibbles(to_framework(framework, codes))), packed)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_pow2_and_floor_log2_are_exact(framework):
    backend = get_backend(framework)
    e = np.arange(-126, 128, dtype=np.float32)
    powers = np.ldexp(np.float32(1), e.astype(np.int32)).astype(np.float32)
    np.testing.assert_array_equal(to_numpy(backend.pow2(to_framework(framework, e))), powers)
    below = np.nextafter(powers[1:], np.float32(0))
    values = np.concatenate([powers, below]).astype(np.float32)
    expected = np.concatenate([e, e[:-1]])
    got = to_numpy(formats.floor_log2(backend.xp, backend.pow2, to_framework(framework, values)))
    np.testing.assert_array_equal(got, expected)


def test_e8m0_encode_clamps_and_marks_nan():
    e = np.array([-200, -127, 0, 5, 127, 300, np.nan], np.float32)
    np.testing.assert_array_equal(formats.encode_e8m0(np, e), [0, 0, 127, 132, 254, 254, 255])


def test_unknown_format_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="E4M3, E5M2"):
        formats.format_by_name("E3M4")


def test_the_kernel_constants_come_out_as_the_literals_the_kernels_used():
    """breccia.formats' FLOAT32 and encode_constants give the numbers the Triton, Pallas and numba
    kernels once wrote as literals (the GPU kernels cannot run here)."""
    f32 = formats.FLOAT32
    assert (f32.bias, f32.mantissa_bits, f32.e_min, f32.exponent_bits) == (127, 23, -126, 8)
    assert f32.max_value == 3.4028234663852886e38 and 2.0**f32.e_min == 1.1754943508222875e-38
    assert 2.0**formats.SUBNORMAL_SHIFT == 18446744073709551616.0
    assert formats.LN2_F32 == 0.6931471824645996
    assert f32.mantissa_bits - f32.e_min == 149 and "FLOAT32" not in formats.FORMATS
    assert tuple(formats.encode_constants(formats.E2M1)) == (6.0, 1.0, 22, 252, 2.0, 3)
    assert tuple(formats.encode_constants(formats.E4M3)) == (448.0, 2.0**-6, 20, 960, 2.0**9, 7)
    assert tuple(formats.encode_constants(formats.E5M2)) == (57344.0, 2.0**-14, 21, 448, 2.0**16, 7)
