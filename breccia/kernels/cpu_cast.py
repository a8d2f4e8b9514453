"""The one-pass CPU casts (numba): every block read from memory once, its codes and scale written.

The input is a C-contiguous ``[rows, cols]`` array of the tensor's bits (float32 as uint32, bfloat16
as uint16, float16 as int16; :mod:`._host` makes it without a copy), cut into
``block_rows x block_cols`` blocks (ragged at the edges: a block holds only the elements inside the
tensor, which is what the shared code's zero padding amounts to, zeros never changing an amax). The
loop runs over the rows of blocks, split among the threads (``prange``; a 1-row tensor runs on
one), and along each row over its blocks; for each block:

1. one read: the largest finite magnitude (an integer maximum over bit patterns; see
   :mod:`._cpu_scalar`) and whether the block holds a NaN;
2. the recipe's rule on that amax (the float32 arithmetic of :mod:`breccia.scaling`);
3. a second read of the same block, from cache: ``code = encode(fl32(x * multiplier))``, code 0 for
   a NaN element (the shared code zeroes NaN before the multiply); E2M1 codes are packed two a
   byte, element ``2i`` in the low nibble;
4. the stored scale, or the NaN marker (float32 NaN, E8M0 255) for a block holding a NaN.

A per-tensor cast needs the whole tensor's amax first, so it reads the tensor twice
(:func:`tensor_cast`). Everything is compiled on first use and cached on disk (``cache=True``), one
specialization per input dtype and scale dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..scaling import KernelRule
from ._cpu_scalar import (
    E8M0_BIAS,
    as_float,
    deepseek_scale,
    encode,
    mx_exponent,
    patterns,
    pow2,
    te_multiplier,
    u32,
    widen,
    widen_as,
)

#: the Float8 rules and the MX rules, numbered by breccia.scaling.KernelRule (plain ints: numba
#: compiles them as constants)
TE, DEEPSEEK, MX_FLOOR, MX_CEIL = (
    rule.code for rule in (KernelRule.TE, KernelRule.DEEPSEEK, KernelRule.MX_FLOOR, KernelRule.MX_CEIL)
)


@njit
def _amax(x, top, low, nan):
    """``top``/``low``/``nan`` updated with the 1-D ``x``: the largest finite magnitude pattern, the
    smallest nonzero one, whether one is NaN."""
    mask, inf = patterns(x[0])
    for i in range(x.size):
        m = u32(u32(x[i]) & mask)
        top = max(top, m if m < inf else u32(0))
        low = min(low, m if m != u32(0) else inf)
        nan |= u32(m > inf)
    return top, low, nan


@njit
def _encode(x, out, q, f):
    """``out[i] = encode(fl32(x[i] * q))`` over the 1-D ``x`` (0 for NaN): the element codes."""
    mask, inf = patterns(x[0])
    for i in range(x.size):
        code = encode(as_float(widen(x[i])) * q, f)
        out[i] = np.uint8(0 if u32(u32(x[i]) & mask) > inf else code)


@njit
def _encode_packed(x, out, q, f):
    """:func:`_encode` of E2M1 codes packed two a byte (element ``2i`` low; a last odd element
    takes a zero high nibble)."""
    mask, inf = patterns(x[0])
    n = x.size
    for i in range(n // 2):
        lo, hi = x[2 * i], x[2 * i + 1]
        lo_code = 0 if u32(u32(lo) & mask) > inf else encode(as_float(widen(lo)) * q, f)
        hi_code = 0 if u32(u32(hi) & mask) > inf else encode(as_float(widen(hi)) * q, f)
        out[i] = np.uint8(lo_code | (hi_code << 4))
    if n % 2:
        last = x[n - 1]
        out[n // 2] = np.uint8(0 if u32(u32(last) & mask) > inf else encode(as_float(widen(last)) * q, f))


@njit
def _block_amax(x, r0, r1, c0, c1):
    """(float32 amax over the finite elements, the smallest nonzero magnitude (float32; Inf or NaN
    if there is none), whether one is NaN) of ``x[r0:r1, c0:c1]``."""
    inf = patterns(x[0, 0])[1]
    top, low, nan = u32(0), inf, u32(0)
    for r in range(r0, r1):
        top, low, nan = _amax(x[r, c0:c1], top, low, nan)
    return as_float(widen_as(top, x[r0, c0])), as_float(widen_as(low, x[r0, c0])), nan != 0


@njit(cache=True, parallel=True)
def float8_blocks(x, out, scales, lows, block_rows, block_cols, rule, fmax, eps, power_2, f):
    """Float8CurrentScaling/Float8BlockScaling per block: ``te`` (``x * q``, stored ``1 / q``) or
    ``deepseek`` (``x * fl32(1 / s)``, stored ``s``); float32 scales, NaN for a NaN block.
    ``lows[i]``: the smallest nonzero magnitude in row of blocks ``i``. As in :func:`mx_blocks`, the
    loops are written out and whole blocks loop over ``block_cols`` columns."""
    rows, cols = x.shape
    whole = cols // block_cols
    reciprocal = np.float32(1.0) / fmax
    for i in prange(scales.shape[0]):
        r0 = i * block_rows
        r1 = min(r0 + block_rows, rows)
        mask, inf = patterns(x[0, 0])
        low = inf
        for j in range(whole + (whole * block_cols < cols)):
            base = j * block_cols
            n = block_cols if j < whole else cols - base
            top, nan = u32(0), u32(0)
            for r in range(r0, r1):
                xr = x[r]
                if j < whole:
                    for k in range(block_cols):
                        m = u32(u32(xr[base + k]) & mask)
                        top = max(top, m if m < inf else u32(0))
                        low = min(low, m if m != u32(0) else inf)
                        nan |= u32(m > inf)
                else:
                    for k in range(n):
                        m = u32(u32(xr[base + k]) & mask)
                        top = max(top, m if m < inf else u32(0))
                        low = min(low, m if m != u32(0) else inf)
                        nan |= u32(m > inf)
            amax = as_float(widen_as(top, x[0, 0]))
            if rule == TE:
                q = te_multiplier(amax, fmax, eps, power_2)
                stored = np.float32(1.0) / q
            else:
                stored = deepseek_scale(amax, reciprocal, power_2)
                q = np.float32(1.0) / stored
            for r in range(r0, r1):
                xr, orow = x[r], out[r]
                if j < whole:
                    for k in range(block_cols):
                        v = xr[base + k]
                        code = encode(as_float(widen(v)) * q, f)
                        orow[base + k] = np.uint8(0 if u32(u32(v) & mask) > inf else code)
                else:
                    for k in range(n):
                        v = xr[base + k]
                        code = encode(as_float(widen(v)) * q, f)
                        orow[base + k] = np.uint8(0 if u32(u32(v) & mask) > inf else code)
            scales[i, j] = np.float32(np.nan) if nan else stored
        lows[i] = as_float(widen_as(low, x[0, 0]))


@njit(cache=True, parallel=True)
def mx_blocks(x, out, scales, lows, block_cols, rule, fmax, emax_elem, f):
    """MXFP8 per block of ``block_cols``: ``x * 2**-e``, stored E8M0 ``e + 127`` (255 for a NaN
    block), ``e`` by the OCP floor rule or the ceil rule (:func:`._cpu_scalar.mx_exponent`);
    ``lows`` as in :func:`float8_blocks`. The block loops are written out, and whole blocks loop
    over ``block_cols`` (the same count every time, which the compiler vectorizes best), the
    ragged last block over what is left."""
    rows, cols = x.shape
    whole = cols // block_cols
    ceil = rule == MX_CEIL
    for r in prange(rows):
        xr, orow = x[r], out[r]
        mask, inf = patterns(xr[0])
        low = inf
        for j in range(whole + (whole * block_cols < cols)):
            base = j * block_cols
            top, nan = u32(0), u32(0)
            if j < whole:
                for i in range(block_cols):
                    m = u32(u32(xr[base + i]) & mask)
                    top = max(top, m if m < inf else u32(0))
                    low = min(low, m if m != u32(0) else inf)
                    nan |= u32(m > inf)
            else:
                for i in range(cols - base):
                    m = u32(u32(xr[base + i]) & mask)
                    top = max(top, m if m < inf else u32(0))
                    low = min(low, m if m != u32(0) else inf)
                    nan |= u32(m > inf)
            e = mx_exponent(as_float(widen_as(top, xr[0])), fmax, emax_elem, ceil)
            q = pow2(-e)
            if j < whole:
                for i in range(block_cols):
                    v = xr[base + i]
                    code = encode(as_float(widen(v)) * q, f)
                    orow[base + i] = np.uint8(0 if u32(u32(v) & mask) > inf else code)
            else:
                for i in range(cols - base):
                    v = xr[base + i]
                    code = encode(as_float(widen(v)) * q, f)
                    orow[base + i] = np.uint8(0 if u32(u32(v) & mask) > inf else code)
            scales[r, j] = np.uint8(255) if nan else np.uint8(e + E8M0_BIAS)
        lows[r] = as_float(widen_as(low, xr[0]))


@njit(cache=True, parallel=True)
def mx4_blocks(x, out, scales, lows, block_cols, rule, fmax, emax_elem, f):
    """:func:`mx_blocks` for MXFP4: E2M1 codes packed two a byte (``block_cols`` even)."""
    rows, cols = x.shape
    whole = cols // block_cols
    ceil = rule == MX_CEIL
    for r in prange(rows):
        xr, orow = x[r], out[r]
        mask, inf = patterns(xr[0])
        low = inf
        for j in range(whole + (whole * block_cols < cols)):
            base = j * block_cols
            top, nan = u32(0), u32(0)
            if j < whole:
                for i in range(block_cols):
                    m = u32(u32(xr[base + i]) & mask)
                    top = max(top, m if m < inf else u32(0))
                    low = min(low, m if m != u32(0) else inf)
                    nan |= u32(m > inf)
            else:
                for i in range(cols - base):
                    m = u32(u32(xr[base + i]) & mask)
                    top = max(top, m if m < inf else u32(0))
                    low = min(low, m if m != u32(0) else inf)
                    nan |= u32(m > inf)
            e = mx_exponent(as_float(widen_as(top, xr[0])), fmax, emax_elem, ceil)
            q = pow2(-e)
            if j < whole:
                half = base // 2
                for k in range(block_cols // 2):
                    lo, hi = xr[base + 2 * k], xr[base + 2 * k + 1]
                    lo_code = 0 if u32(u32(lo) & mask) > inf else encode(as_float(widen(lo)) * q, f)
                    hi_code = 0 if u32(u32(hi) & mask) > inf else encode(as_float(widen(hi)) * q, f)
                    orow[half + k] = np.uint8(lo_code | (hi_code << 4))
            else:
                _encode_packed(xr[base:], orow[base // 2 :], q, f)
            scales[r, j] = np.uint8(255) if nan else np.uint8(e + E8M0_BIAS)
        lows[r] = as_float(widen_as(low, xr[0]))


@njit(cache=True, parallel=True)
def tensor_cast(x, out, lows, fmax, eps, power_2, f):
    """Float8CurrentScaling per tensor (``te``), two passes: the finite amax and NaN flag of every row
    (in parallel; max is exact in any order), then every element times the one multiplier ``q``.
    Returns the stored scale ``1 / q``, or NaN if an element is NaN; ``lows`` as in
    :func:`float8_blocks`."""
    rows, cols = x.shape
    tops = np.zeros(rows, np.float32)
    nans = np.zeros(rows, np.bool_)
    for r in prange(rows):
        amax, lows[r], nan = _block_amax(x, r, r + 1, 0, cols)
        tops[r] = amax
        nans[r] = nan
    q = te_multiplier(tops.max(), fmax, eps, power_2)
    for r in prange(rows):
        _encode(x[r], out[r], q, f)
    return np.float32(np.nan) if nans.any() else np.float32(1.0) / q
