"""Spot identification: box local maxima scored by Picasso's net gradient.

The score and the maximum test are those of Picasso: Localize (``picasso_reference.md`` §2), so a user's
``min_net_gradient`` carries over. Two deliberate differences:

* **Edges.** Picasso scans rows and columns ``r .. size - r - 2`` and, for a candidate at row or column ``r``,
  its outer-ring gradient reads index -1, which numba wraps to the opposite border. We scan the symmetric range
  ``r .. size - r - 1`` (every box that fits in the frame) and take the gradient one pixel outside the frame
  as the nearest edge pixel (replicate padding). Inside the frame the net gradient is identical to Picasso's.
* **ROI.** Picasso crops the frame to the ROI first, so nothing is found within ``r + 1`` pixels of the ROI
  border. We keep every spot whose centre pixel lies inside the ROI, using the pixels around it.

Identification runs on raw camera counts (ADU): only pixel differences enter the net gradient, so the baseline
cancels, but sensitivity and EM gain do not.

How it is computed (the result is that of the rule above, pixel for pixel; only the order of work changes):

1. **Box maximum by separable dilation.** The maximum of every box is a running maximum along each row
   (``2r + 1`` wide) followed by running maxima down the columns, loops over contiguous rows that the compiler
   vectorises. The work is done in blocks of rows (the row maxima of one block, plus its ``r``-row halo, stay in
   the cache) and the blocks of all frames are shared among threads, so one large frame uses every core as well
   as many small ones do.
2. **Ties as four comparisons.** "First maximum in row-major order" is: strictly greater than the box rows above
   and the ``r`` pixels to the left, and not smaller than the rest of its row of the box and the rows below. All
   four are vectorised masks; a flat top yields its first pixel, as in Picasso.
3. **Net gradient only at the maxima** (about one pixel in ``(r + 1)**2`` on noise). A vectorised estimate (the
   net gradient written as a linear filter) with a proven bound on its distance from the exact float32 sum rejects
   the boxes that cannot pass the threshold; the rest get the exact sum, which alone decides and is stored.

The comparisons run on the camera's own integers for ``uint16`` (no float copy of the chunk) and on ``float32``
data as it is; any other dtype is converted to ``float32`` first (the only two compiled variants, which keeps the
first-run compile short). The net gradient reads every pixel as ``float32`` and sums in a fixed order, so it is
the same number, bit for bit, whichever of the two variants ran.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import config, njit

IDENTIFICATION_DTYPE = np.dtype(
    [("frame", "<i8"), ("x", "<i8"), ("y", "<i8"), ("net_gradient", "<f4")]
)

#: dtypes the identification kernel is compiled for; everything else is converted to float32 first
NATIVE_DTYPES = (np.dtype(np.uint16), np.dtype(np.float32))

#: pixels per block of rows handed to one thread (the row maxima of a block stay in the L2 cache)
BLOCK_PIXELS = 32 * 1024


@njit(cache=True, nogil=True, inline="always")
def _clamp(i, n):
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


@njit(cache=True, nogil=True)
def net_gradient_at(img, i, j, r):
    """Picasso's net gradient of the box of half-width ``r`` centred on row ``i``, column ``j``.

    Sum over the box pixels except the centre of the un-halved central-difference gradient projected on the
    unit vector pointing to the centre. Pixels one step outside the frame are replaced by the edge pixel.
    Pixels are read as float32 and the sum is float32, accumulated row by row.
    """
    h, w = img.shape
    ng = np.float32(0.0)
    for k in range(i - r, i + r + 1):
        kp = _clamp(k + 1, h)
        km = _clamp(k - 1, h)
        for m in range(j - r, j + r + 1):
            if k == i and m == j:
                continue
            mp = _clamp(m + 1, w)
            mm = _clamp(m - 1, w)
            gy = np.float32(img[kp, m]) - np.float32(img[km, m])
            gx = np.float32(img[k, mp]) - np.float32(img[k, mm])
            dy = np.float32(i - k)
            dx = np.float32(j - m)
            d = np.float32(np.sqrt(dy * dy + dx * dx))
            ng += (gy * dy + gx * dx) / d
    return ng


@njit(cache=True, nogil=True)
def _running_max(row, n, out):
    """``out[j] = max(row[j:j + n])`` for every ``j`` of ``out`` (NaN is passed over unless first)."""
    width = out.shape[0]
    for j in range(width):
        out[j] = row[j]
    for k in range(1, n):
        for j in range(width):
            a = row[j + k]
            m = out[j]
            out[j] = a if a > m else m


@njit(cache=True, nogil=True)
def _column_max(rows, first, n, out):
    """``out[j] = max(rows[first:first + n, j])``."""
    width = out.shape[0]
    top = rows[first]
    for j in range(width):
        out[j] = top[j]
    for k in range(first + 1, first + n):
        row = rows[k]
        for j in range(width):
            a = row[j]
            m = out[j]
            out[j] = a if a > m else m


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _net_gradient_estimate(img, i, j, r, kernel, abs_kernel):
    """Estimate of :func:`net_gradient_at` for an interior box, and a bound on the difference.

    The net gradient is linear in the pixels: ``sum(kernel * (patch - v))`` over the box and the ring around it
    (``kernel`` sums to zero, so subtracting the centre value ``v`` changes nothing but the rounding). With
    ``abs_kernel`` the same sum of absolute weights, ``mag = sum(abs_kernel * |patch - v|)`` bounds the sum of
    the magnitudes of every product that :func:`net_gradient_at` rounds, so both its float32 result and this
    estimate (float32, any summation order) lie within a few hundred float32 ulps of ``mag`` of the exact
    value. The box and its ring must lie inside the frame.
    """
    v = np.float32(img[i, j])
    est = np.float32(0.0)
    mag = np.float32(0.0)
    n = 2 * r + 3
    for kk in range(n):
        row = img[i - r - 1 + kk, j - r - 1:j + r + 2]
        for mm in range(n):
            dv = np.float32(row[mm]) - v
            est += kernel[kk, mm] * dv
            mag += abs_kernel[kk, mm] * abs(dv)
    return est, mag


def range_bound_factors(r):
    """``(s, a)`` for the cheap first test of a box maximum: if its centre ``v`` is the largest pixel of its box,
    the net gradient is at most ``s * (v - min)`` with ``min`` the smallest pixel of the box and its ring.

    Why: the net gradient is ``sum(K * patch)`` over the box and its ring (:func:`_net_gradient_weights`), and
    ``K`` sums to zero, so it equals ``sum_ring K (x - v) - sum_box K (v - x)``. Every ring weight is <= 0 and
    ``v - x >= 0`` in the box, so each term is at most ``|K| (v - min)`` where ``K < 0`` and at most 0 where
    ``K > 0``: ``s`` is the sum of the negative weights' magnitudes (35.06 for a 7-pixel box), from the exact
    weights, rounded up. ``a``: the sum of the contributions' magnitudes, so that ``a * max(v - min, max - v)``
    bounds the magnitudes :func:`estimate_tolerance` scales."""
    kernel, abs_kernel = _net_gradient_weights(r)
    return float(-kernel[kernel < 0].sum()) * (1.0 + 1e-9), float(abs_kernel.sum()) * (1.0 + 1e-9)


def estimate_tolerance(r):
    """``t`` with ``|net_gradient_at - estimate| <= t * mag`` (see :func:`_net_gradient_estimate`).

    Standard float32 error bounds: the exact sum rounds about ``(2r + 1)**2 + 6`` times (48 partial sums and
    the terms' products and quotient, each within 2**-24 of its magnitude) and the estimate about
    ``(2r + 3)**2 + 3`` times; this takes twice the sum of both counts.
    """
    return 2.0 * ((2 * r + 1) ** 2 + (2 * r + 3) ** 2 + 9) * 2.0**-24


def _net_gradient_kernel(r):
    """:func:`_net_gradient_weights` as float32, for the identification kernel's estimate."""
    kernel, abs_kernel = _net_gradient_weights(r)
    return kernel.astype(np.float32), abs_kernel.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _net_gradient_weights(r):
    """The net gradient as a linear filter ``(2r + 3, 2r + 3)`` over the box and its ring, and the same with
    every contribution's weight taken as positive (float64; read only)."""
    n = 2 * r + 3
    kernel = np.zeros((n, n))
    abs_kernel = np.zeros((n, n))
    for dy in range(-r, r + 1):  # box pixel p at offset (dy, dx) from the centre; centre of the patch is (r+1, r+1)
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            d = np.hypot(dy, dx)
            wy, wx = -dy / d, -dx / d  # unit vector from p towards the centre
            k, m = r + 1 + dy, r + 1 + dx
            for (a, c), w in (((k + 1, m), wy), ((k - 1, m), -wy), ((k, m + 1), wx), ((k, m - 1), -wx)):
                kernel[a, c] += w
                abs_kernel[a, c] += abs(w)
    kernel.flags.writeable = False
    abs_kernel.flags.writeable = False
    return kernel, abs_kernel


@njit(cache=True, nogil=True)
def _identify_blocks(frames, r, i_lo, i_hi, j_lo, j_hi, block_rows, min_ng, kernel, abs_kernel, tolerance,
                     range_factors, t_first, t_last, hmax, lines, flags, words, out_y, out_x, out_ng, counts):
    """Box maxima of frames[:, i_lo:i_hi, j_lo:j_hi] with net gradient > min_ng, block of rows by block.

    Task ``t`` is block ``t % n_blocks`` of frame ``t // n_blocks``; its spots go to ``out_*[t, :counts[t]]``
    in row-major order. This call does tasks ``t_first .. t_last - 1`` with its own scratch (``hmax``:
    ``(block_rows + 2r, width)`` of the frames' dtype, ``lines``: ``(3, width)`` of it, ``flags``: zeroed uint8 of
    ``width`` rounded up to 8, ``words``: the same memory as uint64); threads run calls on disjoint ranges at
    the same time (the GIL is released).

    Most box maxima are noise, far below the threshold. Two bounds reject those whose exact net gradient cannot
    exceed ``min_ng`` whatever the rounding: first the range of the patch (``range_factors``,
    :func:`range_bound_factors`: a min and max over the patch, which rejects most of the noise maxima of a
    typical movie), then a vectorised estimate of the net gradient (a linear filter, no divisions); only the
    rest get :func:`net_gradient_at`, whose value alone decides and is stored.
    """
    s_neg = range_factors[0]
    a_mag = range_factors[1]
    limit = np.float64(min_ng)
    h, w = frames.shape[1], frames.shape[2]
    n_blocks = (i_hi - i_lo + block_rows - 1) // block_rows
    width = j_hi - j_lo
    b = 2 * r + 1
    cap = out_y.shape[1]
    # hmax: row maxima of the block and its halo; flags: 1 where a pixel is the first maximum of its box
    above = lines[0]  # maxima of the r rows of the box above the centre row
    below = lines[1]  # ... and below it
    left = lines[2]  # maxima of the r pixels left of the centre
    for t in range(t_first, t_last):
        img = frames[t // n_blocks]
        ib = i_lo + (t % n_blocks) * block_rows
        ie = min(ib + block_rows, i_hi)
        for q in range(ie - ib + 2 * r):
            _running_max(img[ib - r + q, j_lo - r:j_hi + r], b, hmax[q])
        n = 0
        for i in range(ib, ie):
            q0 = i - ib  # hmax[q0 + k] holds the row maxima of image row i - r + k
            _column_max(hmax, q0, r, above)
            _column_max(hmax, q0 + r + 1, r, below)
            _running_max(img[i, j_lo - r:j_hi - 1], r, left)
            centre = hmax[q0 + r]
            row = img[i, j_lo:j_hi]
            for j in range(width):
                v = row[j]
                # strictly above what comes before in row-major order, not below what comes after
                flags[j] = (v > above[j]) & (v > left[j]) & (v >= centre[j]) & (v >= below[j])
            for word in range(words.shape[0]):
                if words[word] == 0:
                    continue
                for j in range(8 * word, 8 * word + 8):
                    if flags[j] == 0:
                        continue
                    c = j + j_lo
                    if r < i < h - r - 1 and r < c < w - r - 1:
                        # the range of the patch (box and ring), in the image's dtype (integer minima and
                        # maxima vectorise; NaN pixels are passed over), written out here: a function of its
                        # own cost ~0.5 s more of the first run's compile
                        lo_ = img[i, c]
                        hi_ = lo_
                        for k in range(i - r - 1, i + r + 2):
                            prow = img[k, c - r - 1:c + r + 2]
                            for m in range(2 * r + 3):
                                u = prow[m]
                                lo_ = u if u < lo_ else lo_
                                hi_ = u if u > hi_ else hi_
                        lo = np.float64(lo_)
                        v = np.float64(img[i, c])
                        spread = max(v - lo, np.float64(hi_) - v)
                        if s_neg * (v - lo) + tolerance * a_mag * spread <= limit:
                            continue
                        est, mag = _net_gradient_estimate(img, i, c, r, kernel, abs_kernel)
                        if np.float64(est) + tolerance * np.float64(mag) <= np.float64(min_ng):
                            continue
                    ng = net_gradient_at(img, i, c, r)
                    if ng > min_ng and n < cap:
                        out_y[t, n] = i
                        out_x[t, n] = c
                        out_ng[t, n] = ng
                        n += 1
        counts[t] = n


def identification_threads() -> int:
    """Threads that share the identification of a chunk: numba's thread count (``NUMBA_NUM_THREADS``)."""
    return max(1, int(config.NUMBA_NUM_THREADS))


def _pool():
    """The identification's thread pool (also used by the crowded refit's screening and batches)."""
    from ._threading import pool

    return pool("identify", identification_threads())


def native_stack(frames) -> np.ndarray:
    """``frames`` as a C-contiguous 3D array of a dtype the kernel is compiled for (copy only if needed)."""
    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (n, height, width), got {stack.shape}")
    dtype = stack.dtype if stack.dtype in NATIVE_DTYPES else np.dtype(np.float32)
    return np.ascontiguousarray(stack, dtype=dtype)


def block_rows_for(width: int) -> int:
    """Rows per block: about :data:`BLOCK_PIXELS` pixels, at least 8 rows."""
    return max(8, BLOCK_PIXELS // max(1, width))


def identify(frames, box_size, min_net_gradient, roi=None, first_frame=0):
    """Find spots in a stack of frames.

    Parameters
    ----------
    frames : array (n_frames, height, width) or (height, width)
        Raw camera counts (ADU), any real dtype (uint16 and float32 are used as they are, others are
        converted to float32).
    box_size : int
        Odd box side length in pixels.
    min_net_gradient : float
        Keep candidates whose net gradient is strictly greater than this (ADU).
    roi : (y0, x0, y1, x1) or None
        Half-open pixel ranges in which the spot centre must lie.
    first_frame : int
        Frame number of ``frames[0]`` in the movie, added to the ``frame`` column.

    Returns
    -------
    numpy structured array with fields ``frame``, ``x``, ``y`` (int64, pixel indices, x = column) and
    ``net_gradient`` (float32), sorted by frame, then row, then column.
    """
    if box_size % 2 != 1 or box_size < 3:
        raise ValueError(f"box size must be odd and at least 3, got {box_size}")
    stack = native_stack(frames)
    n, h, w = stack.shape
    r = box_size // 2
    if roi is None:
        y0, x0, y1, x1 = 0, 0, h, w
    else:
        y0, x0, y1, x1 = (int(v) for v in roi)
    i_lo, i_hi = max(r, y0), min(h - r, y1)
    j_lo, j_hi = max(r, x0), min(w - r, x1)
    if n == 0 or i_hi <= i_lo or j_hi <= j_lo:
        return np.empty(0, IDENTIFICATION_DTYPE)
    block_rows = min(block_rows_for(j_hi - j_lo), i_hi - i_lo)
    n_blocks = -(-(i_hi - i_lo) // block_rows)
    n_tasks = n * n_blocks
    # two maxima cannot share a box, so each (r + 1)-sided tile of a block holds at most one
    cap = -(-block_rows // (r + 1)) * -(-(j_hi - j_lo) // (r + 1))
    out_y = np.empty((n_tasks, cap), np.int32)
    out_x = np.empty((n_tasks, cap), np.int32)
    out_ng = np.empty((n_tasks, cap), np.float32)
    counts = np.zeros(n_tasks, np.int64)
    kernel, abs_kernel = _net_gradient_kernel(r)
    args = (stack, r, i_lo, i_hi, j_lo, j_hi, block_rows, np.float32(min_net_gradient), kernel, abs_kernel,
            estimate_tolerance(r), np.array(range_bound_factors(r)))
    threads = identification_threads()
    # a few more shares than threads, handed out in turn, so a thread slowed by other work does not hold up the rest
    shares = min(n_tasks, 1 if threads == 1 or n * h * w < 65536 else 4 * threads)
    edges = [n_tasks * k // shares for k in range(shares + 1)]
    def share(a, b):
        width = j_hi - j_lo
        hmax = np.empty((block_rows + 2 * r, width), stack.dtype)
        lines = np.empty((3, width), stack.dtype)
        flags = np.zeros((width + 7) // 8 * 8, np.uint8)
        _identify_blocks(*args, a, b, hmax, lines, flags, flags.view(np.uint64), out_y, out_x, out_ng, counts)

    if shares == 1:
        share(0, n_tasks)
    else:
        for job in [_pool().submit(share, a, b) for a, b in zip(edges[:-1], edges[1:])]:
            job.result()
    mask = np.arange(cap)[None, :] < counts[:, None]
    ids = np.empty(int(counts.sum()), IDENTIFICATION_DTYPE)
    ids["frame"] = np.nonzero(mask)[0] // n_blocks + first_frame
    ids["y"] = out_y[mask]
    ids["x"] = out_x[mask]
    ids["net_gradient"] = out_ng[mask]
    return ids
