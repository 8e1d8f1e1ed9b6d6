"""Super-resolution rendering: localizations onto a finer pixel grid.

Two renderings, both onto a grid ``oversampling`` times finer than the camera pixels:

* **histogram**: each localization adds 1 to the super-resolution pixel that contains it;
* **gaussian**: each localization adds a normalised 2D Gaussian whose standard deviations are its
  localization precision (``lpx``, ``lpy``, camera pixels), never narrower than ``min_blur`` camera
  pixels, so the image shows how well each position is known (Baddeley et al. 2010, *Microsc. Microanal.*).

Coordinates follow the package convention: x = column, y = row, camera pixel centres at integers, so camera
pixel ``i`` spans ``[i - 0.5, i + 0.5)`` and super-resolution pixel ``k`` spans
``[(k / oversampling) - 0.5, ((k + 1) / oversampling) - 0.5)``. The histogram is ``np.bincount``; the
Gaussian a numba kernel (pixel-integrated weights).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .engine.pixels import add_gaussian

RENDER_METHODS = ("histogram", "gaussian")


def _histogram(shape, xs, ys, ovs) -> np.ndarray:
    """Counts per super-resolution pixel (``np.bincount`` of the flat pixel index; NaN and outside dropped)."""
    h, w = shape
    with np.errstate(invalid="ignore"):
        u = np.floor((xs + 0.5) * ovs)
        v = np.floor((ys + 0.5) * ovs)
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)  # False for NaN
    flat = v[inside].astype(np.intp) * w + u[inside].astype(np.intp)
    return np.bincount(flat, minlength=h * w).reshape(h, w).astype(np.float64)


@njit(cache=True, nogil=True)
def _gaussian(image, xs, ys, sxs, sys_, ovs):
    h, w = image.shape
    eu = np.empty(w)
    ev = np.empty(h)
    for n in range(xs.shape[0]):
        # centre and widths in super-resolution pixels, pixel k centred at k + 0.5 on this axis
        u = (xs[n] + 0.5) * ovs
        v = (ys[n] + 0.5) * ovs
        su = sxs[n] * ovs
        sv = sys_[n] * ovs
        if not (math.isfinite(u) and math.isfinite(v) and su > 0.0 and sv > 0.0):
            continue
        half_u = int(math.ceil(4.5 * su)) + 1
        half_v = int(math.ceil(4.5 * sv)) + 1
        j0 = max(int(u) - half_u, 0)
        j1 = min(int(u) + half_u + 1, w)
        i0 = max(int(v) - half_v, 0)
        i1 = min(int(v) + half_v + 1, h)
        if j0 >= j1 or i0 >= i1:
            continue
        # pixel-integrated weights (the sum over an unclipped window is 1); pixel centres at integers there
        add_gaussian(image, u - 0.5, v - 0.5, 1.0, su, sv, j0, j1, i0, i1, eu, ev)


def render(locs, height: int, width: int, oversampling: float = 5.0, method: str = "histogram",
           min_blur: float = 0.0, roi=None) -> np.ndarray:
    """Render localizations into a super-resolution image.

    Parameters
    ----------
    locs : structured array
        Localizations with fields ``x`` and ``y`` (camera pixels); ``lpx`` and ``lpy`` (camera pixels)
        are needed for ``method="gaussian"``.
    height, width : int
        Camera frame size in pixels.
    oversampling : float
        Super-resolution pixels per camera pixel along each axis (e.g. 10 gives 13 nm pixels for a
        130 nm camera pixel).
    method : {"histogram", "gaussian"}
        Counts per super-resolution pixel, or one unit-integral Gaussian of width ``lpx``, ``lpy`` per
        localization.
    min_blur : float
        Smallest Gaussian standard deviation in camera pixels (``method="gaussian"`` only); a floor for
        fits that report an implausibly small precision.
    roi : (y0, x0, y1, x1) or None
        Render only this part of the frame (camera pixels, half-open); the image then starts at
        ``(y0, x0)``.

    Returns
    -------
    numpy.ndarray, float32, shape ``(ceil(h * oversampling), ceil(w * oversampling))``
        Localizations per super-resolution pixel (the sum of the image is the number of localizations
        inside the field, up to Gaussian tails cut at the border).
    """
    if method not in RENDER_METHODS:
        raise ValueError(f"render method must be one of {', '.join(RENDER_METHODS)}, got {method!r}")
    if not oversampling > 0:
        raise ValueError(f"oversampling must be > 0, got {oversampling}")
    y0, x0, y1, x1 = (0, 0, int(height), int(width)) if roi is None else (int(v) for v in roi)
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"empty render field (y0 x0 y1 x1) = {y0} {x0} {y1} {x1}")
    shape = (int(math.ceil((y1 - y0) * oversampling)), int(math.ceil((x1 - x0) * oversampling)))
    image = np.zeros(shape, np.float64)
    if len(locs):
        xs = np.asarray(locs["x"], np.float64) - x0
        ys = np.asarray(locs["y"], np.float64) - y0
        if method == "histogram":
            image = _histogram(shape, xs, ys, float(oversampling))
        else:
            floor = float(min_blur)
            sx = np.maximum(np.asarray(locs["lpx"], np.float64), floor)
            sy = np.maximum(np.asarray(locs["lpy"], np.float64), floor)
            _gaussian(image, xs, ys, sx, sy, float(oversampling))
    return image.astype(np.float32)
