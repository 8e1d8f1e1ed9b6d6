"""The identification kernel as it was before issue 18 (commit 0a0f051), kept only as the baseline of
``bench_identify.py``: a float32 copy of the chunk, the box-maximum test and the net gradient pixel by pixel,
one frame per thread. Not used by the package.

Original docstring: Spot identification: box local maxima scored by Picasso's net gradient.

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
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

IDENTIFICATION_DTYPE = np.dtype(
    [("frame", "<i8"), ("x", "<i8"), ("y", "<i8"), ("net_gradient", "<f4")]
)


@njit(cache=True, nogil=True, inline="always")
def _clamp(i, n):
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


@njit(cache=True, nogil=True)
def _is_box_maximum(img, i, j, r):
    """True if (i, j) is the first maximum, in row-major order, of the box centred on it."""
    v = img[i, j]
    # cheap rejection on the 8 neighbours first: almost every pixel fails here
    for k in range(i - 1, i + 2):
        for m in range(j - 1, j + 2):
            w = img[k, m]
            if w > v or (w == v and (k < i or (k == i and m < j))):
                return False
    for k in range(i - r, i + r + 1):
        for m in range(j - r, j + r + 1):
            w = img[k, m]
            if w > v:
                return False
            if w == v and (k < i or (k == i and m < j)):
                return False
    return True


@njit(cache=True, nogil=True)
def net_gradient_at(img, i, j, r):
    """Picasso's net gradient of the box of half-width ``r`` centred on row ``i``, column ``j``.

    Sum over the box pixels except the centre of the un-halved central-difference gradient projected on the
    unit vector pointing to the centre. Pixels one step outside the frame are replaced by the edge pixel.
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
            gy = img[kp, m] - img[km, m]
            gx = img[k, mp] - img[k, mm]
            dy = np.float32(i - k)
            dx = np.float32(j - m)
            d = np.float32(np.sqrt(dy * dy + dx * dx))
            ng += (gy * dy + gx * dx) / d
    return ng


@njit(cache=True, nogil=True, parallel=True)
def _identify_frames(frames, r, y0, x0, y1, x1, min_ng, out_y, out_x, out_ng, counts):
    n_frames, h, w = frames.shape
    cap = out_y.shape[1]
    i_lo = max(r, y0)
    i_hi = min(h - r, y1)
    j_lo = max(r, x0)
    j_hi = min(w - r, x1)
    for f in prange(n_frames):
        img = frames[f]
        n = 0
        for i in range(i_lo, i_hi):
            for j in range(j_lo, j_hi):
                if _is_box_maximum(img, i, j, r):
                    ng = net_gradient_at(img, i, j, r)
                    if ng > min_ng and n < cap:
                        out_y[f, n] = i
                        out_x[f, n] = j
                        out_ng[f, n] = ng
                        n += 1
        counts[f] = n


def identify(frames, box_size, min_net_gradient, roi=None, first_frame=0):
    """Find spots in a stack of frames.

    Parameters
    ----------
    frames : array (n_frames, height, width) or (height, width)
        Raw camera counts (ADU), any real dtype.
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
    stack = np.asarray(frames)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected frames of shape (n, height, width), got {stack.shape}")
    if box_size % 2 != 1:
        raise ValueError(f"box size must be odd, got {box_size}")
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    n, h, w = stack.shape
    r = box_size // 2
    if roi is None:
        y0, x0, y1, x1 = 0, 0, h, w
    else:
        y0, x0, y1, x1 = (int(v) for v in roi)
    # two maxima cannot share a box, so each box-sized tile holds at most one
    cap = max(1, -(-h // (r + 1)) * -(-w // (r + 1)))
    out_y = np.empty((n, cap), np.int64)
    out_x = np.empty((n, cap), np.int64)
    out_ng = np.empty((n, cap), np.float32)
    counts = np.zeros(n, np.int64)
    if n:
        _identify_frames(stack, r, y0, x0, y1, x1, np.float32(min_net_gradient), out_y, out_x, out_ng, counts)
    total = int(counts.sum())
    ids = np.empty(total, IDENTIFICATION_DTYPE)
    mask = np.arange(cap)[None, :] < counts[:, None]
    ids["frame"] = (np.nonzero(mask)[0] + first_frame).astype(np.int64)
    ids["y"] = out_y[mask]
    ids["x"] = out_x[mask]
    ids["net_gradient"] = out_ng[mask]
    return ids
