"""Fused CPU kernels (numba): non-local means and the empirical Wiener filter.

:func:`fm2s.classical.vst_nlm` written as torch operations makes about 15 passes over the
plane per offset of the search window (squared differences, box sums, the weight, four
accumulations), each a trip through memory and a dispatch of its own. Here one compiled loop
nest per offset and row computes the same sums from a few rows held in cache: the squared
differences of one new row of patch pixels, the box sums by columns then along the row, the
weight, and the accumulation of both pixels of each pair. On one core of the AVX-512 CPUs
this project measures on, a 512 x 512 plane with 5 x 5 patches takes about 0.02 s per pass,
classical or guided, against 0.04 and 0.05 s for torch's passes (``benchmarks/cpu_floor.py
parts``); on small planes, where torch's dispatch dominates, the gain is larger.

The arithmetic follows the torch version (:func:`fm2s.classical._nl_means`,
:func:`fm2s.classical._guided_nl_means`, which a GPU runs): the same float32 operations,
box sums of 5 x 5 patches in the same order (other sizes add their terms in order), and an
exponential within 2 ulp of torch's. Only the order in which a pixel's pairs are accumulated
differs, so results agree to float32 rounding (a pair whose patch distance lies within
rounding of the classical cut-off may fall on the other side of it).

:func:`wiener_sums` is :func:`fm2s.classical.vst_wiener`'s filter (its DCTs written as
matrix products for torch, and a dozen passes of shrinkage per band of patches) as one pass
down the plane: each row's transform once, every patch's coefficients, their shrinkage and
their putting back along the rows of patches, in loops over a row that the compiler turns into
vector code, with a working set of a few hundred kilobytes. A 512 x 512 plane takes about
0.018 s on one core against 0.031 s for torch's operations; the sums are the same in another
order (results agree to float32 rounding).

The functions compile on first use (a few seconds, then cached beside this module or in
``NUMBA_CACHE_DIR``) and release the GIL, so that bands of a plane run in parallel threads.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["guided_nl_means_band", "nl_means_band", "wiener_sums"]

#: ``int32(high) + FAST_EXP_BIAS``, shifted left by 3, are a float32's bits: Schraudolph's
#: exponential (:func:`fm2s.classical._fast_exp_bits`).
FAST_EXP_BIAS = 1072632447 - (1023 - 127) * 2**20


def _jit(function):
    """Compiled once per machine: cached beside this module, or in ``NUMBA_CACHE_DIR``; where
    neither can be written (a read-only install), compiled once per process instead."""
    options = dict(nogil=True, fastmath=False, error_model="numpy")
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(function)


@_jit
def nl_means_band(padded, radius, reach, slope, offset, kept, below, dropped_bits,
                  itself):
    """The classical (scikit-image fast-mode) non-local means of one band of a reflected
    plane, float32 (R, C): ``total / weights`` at every pixel (only those at least
    ``reach + radius`` from the band's edges are the plane's result).

    A pair ``(p, p + o)`` has the box sum ``b`` of its squared differences over the
    ``2 radius`` by ``2 radius`` pixels from ``-radius + 1`` to ``radius`` of ``p``;
    ``high = offset + slope * b`` (float32), replaced by `below` where not above `kept`
    and clamped at 0, gives the weight's bits ``(int32(high) + FAST_EXP_BIAS) << 3``; a
    weight whose bits are not above `dropped_bits` (an int32) is 0. Both pixels of the pair
    take each other's value with that weight; every pixel has itself with weight `itself`.
    The float arguments must be float32 scalars (their arithmetic is float32, as torch's).
    """
    rows, cols = padded.shape
    side = 2 * radius  # the box: -radius + 1 .. radius
    total = padded * itself
    weights = np.full((rows, cols), itself, dtype=np.float32)
    squares = np.zeros((side, cols), dtype=np.float32)  # row i of the pair at i % side
    columns = np.zeros(cols, dtype=np.float32)
    boxes = np.zeros(cols, dtype=np.float32)
    bits = np.zeros(cols, dtype=np.int32)
    for dy in range(reach + 1):
        if rows - dy < side:
            continue
        for dx in range(-reach if dy else 1, reach + 1):
            # squares at columns j where j and j + dx lie in the band; the box of pixel x
            # lies within them for x from first to last - 1
            low, high = max(0, -dx), min(cols, cols - dx)
            first, last = low + radius - 1, high - radius
            if last <= first:
                continue
            n = last - first
            for i in range(side - 1):
                _square_row(padded[i, low:high], padded[i + dy, low + dx:high + dx],
                            squares[i % side, low:high])
            for y in range(radius - 1, rows - dy - radius):
                top = y - radius + 1
                new = top + side - 1
                weight_bits = bits[first:last]
                if side == 4:  # 5 x 5 patches: pairs of pairs, as torch's doubling sums
                    # the box sums and the weights in one loop (fewer, longer loops)
                    _square_row(padded[new, low:high], padded[new + dy, low + dx:high + dx],
                                squares[new % 4, low:high])
                    _sum4(squares[top % 4, low:high], squares[(top + 1) % 4, low:high],
                          squares[(top + 2) % 4, low:high], squares[new % 4, low:high],
                          columns[low:high])
                    c0, c1 = columns[first - 1:last - 1], columns[first:last]
                    c2, c3 = columns[first + 1:last + 1], columns[first + 2:last + 2]
                    for x in range(n):
                        weight_bits[x] = _weight_bits((c0[x] + c1[x]) + (c2[x] + c3[x]), slope,
                                                      offset, kept, below, dropped_bits)
                else:
                    _square_row(padded[new, low:high], padded[new + dy, low + dx:high + dx],
                                squares[new % side, low:high])
                    box = boxes[first:last]
                    _column_sums(squares, top, side, low, high, columns[low:high])
                    box[:] = columns[first - radius + 1:last - radius + 1]
                    for k in range(2 - radius, radius + 1):
                        _add(box, columns[first + k:last + k])
                    for x in range(n):
                        weight_bits[x] = _weight_bits(box[x], slope, offset, kept, below,
                                                      dropped_bits)
                _accumulate(total, weights, padded, weight_bits.view(np.float32), y, dy, dx,
                            first, last)
    return total / weights


@_jit
def guided_nl_means_band(values, guide, half, reach, scale):
    """Non-local means of one band of `values` (float32, R x C) with the patch similarities
    of `guide`: each pair ``(p, p + o)`` within `reach` weighs ``exp(d scale)``, ``d`` the
    mean over the pairs of patch pixels (``2 half + 1`` square) that lie in the band of the
    squared differences of the guide (`scale` a float32 scalar); every pixel has itself with
    weight 1. Returns ``total / weights`` (only rows at least ``reach + half`` from the band's
    edges are the plane's result, unless the band is the whole plane)."""
    rows, cols = values.shape
    side = 2 * half + 1
    total = values.copy()
    weights = np.ones((rows, cols), dtype=np.float32)
    squares = np.zeros((side, cols), dtype=np.float32)  # row i of the pair at i % side
    # column sums at x + half, between `half` zeros on each side of the pair's columns
    columns = np.zeros(cols + 2 * half, dtype=np.float32)
    boxes = np.zeros(cols, dtype=np.float32)
    col_factors = np.zeros(cols, dtype=np.float32)
    weights_row = np.zeros(cols, dtype=np.float32)
    powers = np.zeros(cols, dtype=np.int32)
    blank = np.zeros(cols, dtype=np.float32)  # the rows above the band
    one = np.float32(1.0)
    for dy in range(reach + 1):
        count_rows = rows - dy
        if count_rows <= 0:
            continue
        for dx in range(-reach if dy else 1, reach + 1):
            low, high = max(0, -dx), min(cols, cols - dx)
            count = high - low
            if count <= 0:
                continue
            factors = col_factors[:count]
            for j in range(count):
                factors[j] = one / np.float32(min(j + half, count - 1) - max(j - half, 0) + 1)
            columns[low:low + half] = 0.0
            columns[high + half:high + 2 * half] = 0.0
            squares[:, low:high] = 0.0
            for i in range(min(half, count_rows)):
                _square_row(guide[i, low:high], guide[i + dy, low + dx:high + dx],
                            squares[i % side, low:high])
            box, weight = boxes[:count], weights_row[:count]
            for y in range(count_rows):
                new = y + half
                # rows y - half .. y + half of the squares (zeros beyond the pair's rows)
                top = max(y - half, 0)
                factor = scale / np.float32(min(y + half, count_rows - 1) - top + 1)
                if new < count_rows:
                    _square_row(guide[new, low:high], guide[new + dy, low + dx:high + dx],
                                squares[new % side, low:high])
                else:
                    squares[new % side, low:high] = 0.0
                if side == 5:  # 5 x 5 patches: x0 + ((x1 + x2) + (x3 + x4)), as torch's sums
                    _sum5(squares[(y - 2) % 5, low:high] if y >= 2 else blank[low:high],
                          squares[(y - 1) % 5, low:high] if y >= 1 else blank[low:high],
                          squares[y % 5, low:high], squares[(y + 1) % 5, low:high],
                          squares[new % 5, low:high], columns[low + half:high + half])
                    # the box sums and the weights' exponents in one loop
                    c0, c1 = columns[low:high], columns[low + 1:high + 1]
                    c2, c3 = columns[low + 2:high + 2], columns[low + 3:high + 3]
                    c4 = columns[low + 4:high + 4]
                    for j in range(count):
                        box_j = c0[j] + ((c1[j] + c2[j]) + (c3[j] + c4[j]))
                        weight[j] = box_j * factor * factors[j]
                else:
                    _column_sums(squares, top, y + half + 1 - top, low, high,
                                 columns[low + half:high + half])
                    box[:] = columns[low:high]
                    for k in range(1, side):
                        _add(box, columns[low + k:high + k])
                    for j in range(count):
                        weight[j] = box[j] * factor * factors[j]
                _exp(weight, powers[:count])
                _accumulate(total, weights, values, weight, y, dy, dx, low, high)
    return total / weights


@numba.njit(inline="always", nogil=True)
def _weight_bits(box, slope, offset, kept, below, dropped_bits):
    """The classical weight's bits for the box sum `box` (:func:`nl_means_band`)."""
    h = offset + slope * box
    h = h if h > kept else below
    b = (np.int32(min(h, np.float32(0.0))) + np.int32(FAST_EXP_BIAS)) << 3
    # the weights are positive floats, ordered as their bits
    return b if b > dropped_bits else np.int32(0)


@numba.njit(inline="always", nogil=True)
def _sum4(a, b, c, d, out):
    """``out = (a + b) + (c + d)``, elementwise."""
    for x in range(len(out)):
        out[x] = (a[x] + b[x]) + (c[x] + d[x])


@numba.njit(inline="always", nogil=True)
def _square_row(a, b, out):
    """``out = (a - b)^2``, elementwise."""
    for x in range(len(out)):
        d = a[x] - b[x]
        out[x] = d * d


@numba.njit(inline="always", nogil=True)
def _column_sums(squares, top, count, low, high, out):
    """`out` = the sum of rows ``top .. top + count - 1`` of the ring `squares`, in order,
    over the columns ``low .. high - 1``."""
    side = len(squares)
    out[:] = squares[top % side, low:high]
    for k in range(1, count):
        _add(out, squares[(top + k) % side, low:high])


@numba.njit(inline="always", nogil=True)
def _sum5(a, b, c, d, e, out):
    """``out = a + ((b + c) + (d + e))``, elementwise."""
    for x in range(len(out)):
        out[x] = a[x] + ((b[x] + c[x]) + (d[x] + e[x]))


@numba.njit(inline="always", nogil=True)
def _add(out, source):
    """``out += source``, elementwise."""
    for x in range(len(out)):
        out[x] += source[x]


@numba.njit(inline="always", nogil=True)
def _accumulate(total, weights, values, weight, y, dy, dx, first, last):
    """Pixel ``(y, x)`` takes the value at ``(y + dy, x + dx)`` and that pixel the value at
    ``(y, x)``, with ``weight[x - first]``, for ``first <= x < last``: first every ``x``, then
    every partner, as the torch version's two whole-plane additions."""
    here_t, here_w, here_v = total[y, first:last], weights[y, first:last], values[y, first:last]
    there = slice(first + dx, last + dx)
    there_t, there_w, there_v = total[y + dy, there], weights[y + dy, there], values[y + dy, there]
    # each array's elements take their terms in the same order as two whole-plane passes
    for x in range(len(weight)):
        here_t[x] += weight[x] * there_v[x]
        here_w[x] += weight[x]
    for x in range(len(weight)):
        there_t[x] += weight[x] * here_v[x]
        there_w[x] += weight[x]


#: Cephes' expf: ln 2 in two parts, and the polynomial of exp(r) - 1 - r on |r| <= ln(2) / 2
_LN2_HIGH, _LN2_LOW = np.float32(0.693359375), np.float32(-2.12194440e-4)
_LOG2E = np.float32(1.44269504088896341)
_EXP_POLY = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                          4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
#: Below this, exp underflows float32's normal range: the weight is 0.
_EXP_FLOOR = np.float32(-87.0)


@numba.njit(inline="always", nogil=True)
def _exp(values, powers):
    """``values = exp(values)`` elementwise (values <= 0; 0 below ``_EXP_FLOOR``; `powers` an
    int32 buffer of the same length): Cephes' float32 exp (within 2 ulp), in loops that the
    compiler turns into vector code (libm's exp is called one value at a time)."""
    p0, p1, p2, p3, p4, p5 = _EXP_POLY
    one, half, zero = np.float32(1.0), np.float32(0.5), np.float32(0.0)
    for x in range(len(values)):
        v = values[x]
        n = np.floor(v * _LOG2E + half)
        r = v - n * _LN2_HIGH - n * _LN2_LOW
        p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
        values[x] = (p * r * r + r + one) if v >= _EXP_FLOOR else zero
        powers[x] = (max(np.int32(n), np.int32(-126)) + np.int32(127)) << 23
    scales = powers.view(np.float32)
    for x in range(len(values)):
        values[x] *= scales[x]


@numba.njit(inline="always", nogil=True)
def _scale_row(coefficients, shrink, weight):
    for j in range(len(coefficients)):
        coefficients[j] *= shrink[j] * weight[j]


@_jit
def wiener_sums(plane, pilot, cosines, taper, variance, total, patch_weights):
    """The sums of :func:`fm2s.classical.vst_wiener` for patches of side 8, in one pass over
    the rows: the windowed, shrunk patches put back (`total`, (H, W)) and each patch's weight
    (`patch_weights`, (H + 7, W + 7)), both float32 and written here.

    `plane` and `pilot` are the padded, stabilised planes, float32 (H + 14, W + 14);
    `cosines` (u, i) the DCT's, `taper` (u, i) the same times the window over ``i``, and
    `variance` (u, v) the noise's variance of each coefficient, all float32 (8, 8).

    The patches of one row ``r`` (top left corners ``(r, c)``) at a time, every sum along the
    row's ``c`` (vector code): the rows' transforms ``h[y][v, c] = sum_j cos[v, j] x[y, c + j]``
    (each row once, in a ring of 8), the coefficients ``C[u, v, c] = sum_i cos[u, i]
    h[r + i][v, c]`` of the plane and the pilot with the shrinkage and the patches' energy,
    the shrunk coefficients put back along columns into a ring of 8 rows of sums, and the
    row that no later patch reaches put back along itself. The same sums as the torch
    version (a GPU's) in another order: the results agree to float32 rounding.
    """
    size = 8
    rows, cols = plane.shape
    height, width = total.shape
    corners, across = rows - size + 1, cols - size + 1
    hx = np.zeros((size, size, across), dtype=np.float32)  # ring: row y at y % 8, [v, c]
    hp = np.zeros((size, size, across), dtype=np.float32)
    coefficients = np.empty((size, size, across), dtype=np.float32)
    shrink = np.empty((size, size, across), dtype=np.float32)
    weight = np.empty(across, dtype=np.float32)
    sums = np.zeros((size, size, across), dtype=np.float32)  # ring: padded row y at y % 8
    row = np.empty(cols, dtype=np.float32)
    back = np.ascontiguousarray(taper.T)  # (i, u)
    floor, one = np.float32(1e-8), np.float32(1.0)
    for y in range(size - 1):
        _row_transform(plane[y], cosines, hx[y % size])
        _row_transform(pilot[y], cosines, hp[y % size])
    for r in range(corners):
        new = r + size - 1
        _row_transform(plane[new], cosines, hx[new % size])
        _row_transform(pilot[new], cosines, hp[new % size])
        weight[:] = 0.0  # the patches' energy, then their weights
        for u in range(size):
            for v in range(size):
                _coefficients(cosines[u], hx, hp, r, v, variance[u, v], coefficients[u, v],
                              shrink[u, v], weight)
        for c in range(across):
            weight[c] = one / max(weight[c], floor)
            patch_weights[r, c] = weight[c]
        for u in range(size):
            for v in range(size):
                _scale_row(coefficients[u, v], shrink[u, v], weight)
        for i in range(size):
            slot = (r + i) % size
            for v in range(size):
                a = coefficients[:, v]
                _add_weighted8(sums[slot, v], back[i], a[0], a[1], a[2], a[3], a[4], a[5],
                               a[6], a[7])
        # padded row r has all its patches: put it back along the row
        slot = r % size
        if size - 1 <= r < size - 1 + height:
            row[:] = 0.0
            s = sums[slot]
            for j in range(size):
                _add_weighted8(row[j:j + across], taper[:, j], s[0], s[1], s[2], s[3], s[4],
                               s[5], s[6], s[7])
            total[r - size + 1] = row[size - 1:size - 1 + width]
        sums[slot] = 0.0


@numba.njit(inline="always", nogil=True)
def _row_transform(x, cosines, out):
    """``out[v, c] = sum_j cosines[v, j] x[c + j]`` (8 taps)."""
    across = out.shape[1]
    for v in range(8):
        out[v] = 0.0
        _add_weighted8(out[v], cosines[v], x[0:across], x[1:across + 1], x[2:across + 2],
                       x[3:across + 3], x[4:across + 4], x[5:across + 5], x[6:across + 6],
                       x[7:across + 7])


@numba.njit(inline="always", nogil=True)
def _add_weighted8(out, w, a0, a1, a2, a3, a4, a5, a6, a7):
    """``out += sum_k w[k] a_k``, elementwise (the terms in order)."""
    w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
    for j in range(len(out)):
        out[j] += (w0 * a0[j] + w1 * a1[j] + w2 * a2[j] + w3 * a3[j] + w4 * a4[j]
                   + w5 * a5[j] + w6 * a6[j] + w7 * a7[j])


@numba.njit(inline="always", nogil=True)
def _coefficients(cos_u, hx, hp, r, v, variance, out, shrink, energy):
    """Coefficient ``(u, v)`` of the patches of row `r` (plane: `out`; pilot: its shrink
    ``q = p^2 / (p^2 + variance)`` in `shrink`), and ``q^2 variance`` added to `energy`."""
    w0, w1, w2, w3 = cos_u[0], cos_u[1], cos_u[2], cos_u[3]
    w4, w5, w6, w7 = cos_u[4], cos_u[5], cos_u[6], cos_u[7]
    x0, x1, x2, x3 = hx[r % 8, v], hx[(r + 1) % 8, v], hx[(r + 2) % 8, v], hx[(r + 3) % 8, v]
    x4, x5, x6, x7 = hx[(r + 4) % 8, v], hx[(r + 5) % 8, v], hx[(r + 6) % 8, v], hx[(r + 7) % 8, v]
    p0, p1, p2, p3 = hp[r % 8, v], hp[(r + 1) % 8, v], hp[(r + 2) % 8, v], hp[(r + 3) % 8, v]
    p4, p5, p6, p7 = hp[(r + 4) % 8, v], hp[(r + 5) % 8, v], hp[(r + 6) % 8, v], hp[(r + 7) % 8, v]
    for c in range(len(out)):
        out[c] = (w0 * x0[c] + w1 * x1[c] + w2 * x2[c] + w3 * x3[c] + w4 * x4[c]
                  + w5 * x5[c] + w6 * x6[c] + w7 * x7[c])
        p = (w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c]
             + w5 * p5[c] + w6 * p6[c] + w7 * p7[c])
        square = p * p
        q = square / (square + variance)
        shrink[c] = q
        energy[c] += q * q * variance
