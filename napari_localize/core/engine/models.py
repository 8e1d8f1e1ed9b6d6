"""PSF models of the fit engine: expected photons per pixel and their derivatives by the parameters.

A model is an integer constant and a branch in each function below (see ``docs/architecture.md``). All are
``register_jitable`` (compiled into the CPU and the CUDA drivers alike), allocate nothing and keep per-box
state in ``scratch`` (float64, ``(SCRATCH_ROWS, >= box)``), indexed by row (no views: the CUDA target).

Parameter layouts (IX, IY, IN, IB are common to every model):

``MODEL_GAUSS``        x, y, N, bg, sx, sy
``MODEL_GAUSS_FIXED``  x, y, N, bg              (aux[0] = sx, aux[1] = sy)
``MODEL_ASTIG_Z``      x, y, N, bg, z           (aux[0] = c, aux[1:1+c] = wx(z), aux[1+c:1+2c] = wy(z))
``MODEL_MULTI``        x0, y0, N0, bg, sx, sy, x1, y1, N1, ..., x_{K-1}, y_{K-1}, N_{K-1}   (aux[0] = K)

``MODEL_MULTI`` is K pixel-integrated Gaussians in one box (crowded fields, :mod:`napari_localize.core.crowded`):
one background and one pair of widths for the box, position and photons per emitter; K = 1 is ``MODEL_GAUSS``.
Its inverse Fisher matrix gives every emitter's CRLB with the correlations between emitters.
``MODEL_SPLINE_Z``     x, y, N, bg, z           (aux = :func:`spline_aux`: header, then the 3D spline table)
``MODEL_SPLINE_2D``    x, y, N, bg              (aux = :func:`spline_aux` of a 2D spline)

x, y in box pixels (pixel centres at integer box coordinates), N photons, bg photons per pixel, widths in
pixels, z in calibration nm. Widths of the astigmatic model come from the calibration polynomials (highest
power first, Huang et al., Science 319, 810 (2008)).
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import register_jitable

from .pixels import gauss_rows
from .splines import spline2d_eval, spline3d_eval

MODEL_GAUSS = 0
MODEL_GAUSS_FIXED = 1
MODEL_ASTIG_Z = 2
MODEL_MULTI = 3
MODEL_SPLINE_Z = 4
MODEL_SPLINE_2D = 5
MODEL_NAMES = {MODEL_GAUSS: "gauss", MODEL_GAUSS_FIXED: "gauss_fixed", MODEL_ASTIG_Z: "astig_z",
               MODEL_MULTI: "multi_gauss", MODEL_SPLINE_Z: "spline_z", MODEL_SPLINE_2D: "spline_2d"}
#: most emitters of ``MODEL_MULTI`` in one box
MAX_EMITTERS = 5

# spline aux header: [n_z cells (0 in 2D), n_y, n_x, cx, cy, z_first, z_step, z_init, lateral nodes per pixel],
# then the table
SPLINE_HEADER = 9

IX, IY, IN, IB, ISX, ISY = range(6)
IZ = 4
#: most parameters of any model (CUDA per-thread arrays have this size)
MAX_PARAMS = 6 + 3 * (MAX_EMITTERS - 1)
#: rows of per-box scratch (CUDA per-thread arrays have this many rows of MAX_BOX)
SCRATCH_ROWS = 6 * MAX_EMITTERS
#: widths at or below this (pixels) mark a failed 2D fit
SIGMA_MIN = 0.25
#: the astigmatic model cannot be evaluated where a calibration width is narrower than this (pixels)
MIN_WIDTH = 0.3
#: convergence tolerance of z is this many nm per unit of eps
Z_TOLERANCE_NM = 10.0

# scratch rows: 1D pixel integrals of the emitter and their derivatives by centre and width
_EX, _DEX, _DSX, _EY, _DEY, _DSY, _SCAL = 0, 1, 2, 3, 4, 5, 6


@register_jitable
def _hi(a, b):
    return a if a >= b else b


@register_jitable
def _lo(a, b):
    return a if a <= b else b


@register_jitable
def poly(aux, first, count, z):
    """``np.polyval(aux[first:first+count], z)`` (Horner)."""
    v = 0.0
    for k in range(count):
        v = v * z + aux[first + k]
    return v


@register_jitable
def dpoly(aux, first, count, z):
    """Derivative by z of :func:`poly`."""
    n = count - 1
    v = 0.0
    for k in range(n):
        v = v * z + aux[first + k] * (n - k)
    return v


@register_jitable
def emitter_index(e):
    """Index in ``MODEL_MULTI``'s theta of emitter e's x (its y and N follow)."""
    return 0 if e == 0 else 6 + 3 * (e - 1)


@register_jitable
def n_params(model, aux):
    """Number of fitted parameters of ``model``."""
    if model == MODEL_MULTI:
        return 6 + 3 * (int(aux[0]) - 1)
    if model == MODEL_GAUSS:
        return 6
    if model == MODEL_GAUSS_FIXED or model == MODEL_SPLINE_2D:  # noqa: SIM109 (jitted: no tuple membership)
        return 4
    return 5  # MODEL_ASTIG_Z, MODEL_SPLINE_Z


@register_jitable
def prepare(model, theta, box, aux, scratch):
    """Per-box set-up at ``theta`` (1D pixel integrals into scratch); False if the model is undefined there."""
    if model == MODEL_GAUSS:
        gauss_rows(theta[IX], theta[ISX], box, scratch, _EX)
        gauss_rows(theta[IY], theta[ISY], box, scratch, _EY)
        return True
    if model == MODEL_GAUSS_FIXED:
        gauss_rows(theta[IX], aux[0], box, scratch, _EX)
        gauss_rows(theta[IY], aux[1], box, scratch, _EY)
        return True
    if model == MODEL_MULTI:
        for e in range(int(aux[0])):
            j = emitter_index(e)
            gauss_rows(theta[j], theta[ISX], box, scratch, 6 * e)
            gauss_rows(theta[j + 1], theta[ISY], box, scratch, 6 * e + 3)
        return True
    if model == MODEL_SPLINE_Z or model == MODEL_SPLINE_2D:  # noqa: SIM109 (jitted: no tuple membership)
        return True  # nothing per box: the spline is evaluated per pixel
    # MODEL_ASTIG_Z
    c = int(aux[0])
    wx = poly(aux, 1, c, theta[IZ])
    wy = poly(aux, 1 + c, c, theta[IZ])
    if wx < MIN_WIDTH or wy < MIN_WIDTH:
        return False
    gauss_rows(theta[IX], wx, box, scratch, _EX)
    gauss_rows(theta[IY], wy, box, scratch, _EY)
    scratch[_SCAL, 0] = dpoly(aux, 1, c, theta[IZ])
    scratch[_SCAL, 1] = dpoly(aux, 1 + c, c, theta[IZ])
    return True


@register_jitable
def pixel(model, theta, k, m, aux, scratch, jrow, with_jac):
    """Expected photons of pixel (row k, column m), background included; ``jrow`` = d mu / d theta if asked.

    :func:`prepare` must have been called at ``theta``. Other light (neighbours) is added by the engine.
    """
    if model == MODEL_MULTI:
        return _pixel_multi(theta, k, m, aux, scratch, jrow, with_jac)
    if model == MODEL_SPLINE_Z or model == MODEL_SPLINE_2D:  # noqa: SIM109 (jitted: no tuple membership)
        return _spline_pixel(model, theta, k, m, aux, jrow, with_jac)
    N = theta[IN]
    ex = scratch[_EX, m]
    ey = scratch[_EY, k]
    exy = ex * ey
    mu = N * exy + theta[IB]
    if with_jac:
        jrow[IX] = N * scratch[_DEX, m] * ey
        jrow[IY] = N * ex * scratch[_DEY, k]
        jrow[IN] = exy
        jrow[IB] = 1.0
        if model == MODEL_GAUSS:
            jrow[ISX] = N * scratch[_DSX, m] * ey
            jrow[ISY] = N * ex * scratch[_DSY, k]
        elif model == MODEL_ASTIG_Z:
            jrow[IZ] = (N * scratch[_DSX, m] * ey) * scratch[_SCAL, 0] + (N * ex * scratch[_DSY, k]) * scratch[
                _SCAL, 1]
    return mu


@register_jitable
def _pixel_multi(theta, k, m, aux, scratch, jrow, with_jac):
    mu = theta[IB]
    dsx = 0.0
    dsy = 0.0
    for e in range(int(aux[0])):
        j = emitter_index(e)
        N = theta[j + 2]
        ex = scratch[6 * e, m]
        ey = scratch[6 * e + 3, k]
        mu += N * ex * ey
        if with_jac:
            jrow[j] = N * scratch[6 * e + 1, m] * ey
            jrow[j + 1] = N * ex * scratch[6 * e + 4, k]
            jrow[j + 2] = ex * ey
            dsx += N * scratch[6 * e + 2, m] * ey
            dsy += N * ex * scratch[6 * e + 5, k]
    if with_jac:
        jrow[IB] = 1.0
        jrow[ISX] = dsx
        jrow[ISY] = dsy
    return mu


@register_jitable
def _spline_pixel(model, theta, k, m, aux, jrow, with_jac):
    # emitter at (x, y) sits on spline node (cx, cy): pixel (k, m) is at spline coordinate
    # ((m - x) * os + cx, ...), os lateral nodes per camera pixel (an oversampled spline samples the
    # pixel-integrated PSF at sub-pixel shifts of the emitter)
    N = theta[IN]
    os_ = aux[8]
    sx = (m - theta[IX]) * os_ + aux[3]
    sy = (k - theta[IY]) * os_ + aux[4]
    gz = 0.0
    if model == MODEL_SPLINE_Z:
        sz = (theta[IZ] - aux[5]) / aux[6]
        v, gx, gy, gz = spline3d_eval(aux, SPLINE_HEADER, int(aux[0]), int(aux[1]), int(aux[2]), sx, sy, sz)
    else:
        v, gx, gy = spline2d_eval(aux, SPLINE_HEADER, int(aux[1]), int(aux[2]), sx, sy)
    if v < 0.0:
        # a cubic through a peaked PSF rings slightly below 0 in the tails: no light there, not negative light
        v = 0.0
        gx = 0.0
        gy = 0.0
        gz = 0.0
    if with_jac:
        jrow[IX] = -N * gx * os_
        jrow[IY] = -N * gy * os_
        jrow[IN] = v
        jrow[IB] = 1.0
        if model == MODEL_SPLINE_Z:
            jrow[IZ] = N * gz / aux[6]
    return N * v + theta[IB]


@register_jitable
def tolerance(model, a, theta, eps):
    """Convergence tolerance of parameter ``a``: eps pixels, eps x N, eps x max(bg, 1), Z_TOLERANCE_NM x eps nm."""
    if a == IN:
        return eps * theta[IN]
    if a == IB:
        return eps * _hi(theta[IB], 1.0)
    if (model == MODEL_ASTIG_Z or model == MODEL_SPLINE_Z) and a == IZ:  # noqa: SIM109 (jitted: no tuple membership)
        return Z_TOLERANCE_NM * eps
    if model == MODEL_MULTI and a >= 6 and (a - 6) % 3 == 2:
        return eps * theta[a]
    return eps


@register_jitable
def _moments(data, i, box, bg, cx, cy, order):
    # sum of the background-free positive counts of box i, and their first (order 1, about 0) or second
    # (order 2, about cx, cy) moments along x and y
    total = 0.0
    sx = 0.0
    sy = 0.0
    for k in range(box):
        for m in range(box):
            v = float(data[i, k * box + m]) - bg
            if v > 0:
                total += v
                if order == 1:
                    sx += v * m
                    sy += v * k
                else:
                    sx += v * (m - cx) ** 2
                    sy += v * (k - cy) ** 2
    return total, sx, sy


@register_jitable
def initial_guess(model, data, i, box, aux, theta):
    """Start of the fit from the box ``data[i]``: bg from the border, N from the sum, x, y (and widths) from
    moments; the astigmatic model starts in focus (z = 0)."""
    r = box // 2
    border = 0.0
    nb = 0
    for k in range(box):
        for m in range(box):
            if k == 0 or m == 0 or k == box - 1 or m == box - 1:
                border += float(data[i, k * box + m])
                nb += 1
    bg = border / nb
    total, sx, sy = _moments(data, i, box, bg, 0.0, 0.0, 1)
    if total > 0:
        cx = sx / total
        cy = sy / total
    else:
        cx = float(r)
        cy = float(r)
    cx = _lo(_hi(cx, r - 1.0), r + 1.0)
    cy = _lo(_hi(cy, r - 1.0), r + 1.0)
    theta[IX] = cx
    theta[IY] = cy
    theta[IN] = _hi(total, 1.0)
    theta[IB] = _hi(bg, 1e-3)
    if model == MODEL_GAUSS or model == MODEL_MULTI:
        _, vx, vy = _moments(data, i, box, bg, cx, cy, 2)
        sig_hi = 0.5 * r + 0.5
        if total > 0:
            theta[ISX] = _lo(_hi(math.sqrt(vx / total), 0.7), sig_hi)
            theta[ISY] = _lo(_hi(math.sqrt(vy / total), 0.7), sig_hi)
        else:
            theta[ISX] = 1.0
            theta[ISY] = 1.0
    elif model == MODEL_ASTIG_Z:
        theta[IZ] = 0.0
    elif model == MODEL_SPLINE_Z:
        theta[IZ] = aux[7]  # the calibration's reference height
    if model == MODEL_MULTI:
        # further emitters start around the centre, sharing the light (callers normally give a start)
        K = int(aux[0])
        for e in range(1, K):
            j = emitter_index(e)
            theta[j] = r + (1.0 if e % 2 == 1 else -1.0)
            theta[j + 1] = r + (1.0 if e >= 3 else 0.0)
            theta[j + 2] = theta[IN] / K
        theta[IN] = theta[IN] / K


@register_jitable
def valid(model, theta, box, aux):
    """Whether a finished fit lies inside the model's domain (else it is not a localization)."""
    if model == MODEL_ASTIG_Z:
        return True
    if model == MODEL_MULTI:
        for e in range(1, int(aux[0])):
            j = emitter_index(e)
            if theta[j] < -0.5 or theta[j] > box - 0.5 or theta[j + 1] < -0.5 or theta[j + 1] > box - 0.5:
                return False
            if theta[j + 2] <= 1e-3 * 1.0001:
                return False
    if model == MODEL_SPLINE_Z or model == MODEL_SPLINE_2D:  # noqa: SIM109 (jitted: no tuple membership)
        return theta[IN] > 1e-3 * 1.0001
    if theta[IX] < -0.5 or theta[IX] > box - 0.5 or theta[IY] < -0.5 or theta[IY] > box - 0.5:
        return False
    if theta[IN] <= 1e-3 * 1.0001:
        return False
    if model == MODEL_GAUSS or model == MODEL_MULTI:
        r = box // 2
        if (theta[ISX] <= SIGMA_MIN or theta[ISY] <= SIGMA_MIN
                or theta[ISX] >= r + 0.5 or theta[ISY] >= r + 0.5):
            return False
    return True


def default_bounds(model: int, box: int, z_range=None):
    """``(lo, hi)`` float64 arrays (MAX_PARAMS) the engine clamps each trial step to."""
    lo = np.full(MAX_PARAMS, -np.inf)
    hi = np.full(MAX_PARAMS, np.inf)
    lo[IN] = lo[IB] = 1e-3
    if model in (MODEL_SPLINE_Z, MODEL_SPLINE_2D):
        # within 1.5 px of the box centre every pixel of the box stays on a spline grid of box + 2 nodes
        r = box // 2
        lo[IX] = lo[IY] = r - 1.5
        hi[IX] = hi[IY] = r + 1.5
        if model == MODEL_SPLINE_Z and z_range is not None:
            lo[IZ], hi[IZ] = float(z_range[0]), float(z_range[1])
    elif model == MODEL_ASTIG_Z:
        lo[IX] = lo[IY] = -0.5
        hi[IX] = hi[IY] = box - 0.5
        if z_range is not None:
            lo[IZ], hi[IZ] = float(z_range[0]), float(z_range[1])
    else:
        lo[IX] = lo[IY] = -0.5 * box
        hi[IX] = hi[IY] = 1.5 * box
        if model == MODEL_GAUSS or model == MODEL_MULTI:
            lo[ISX] = lo[ISY] = 0.5 * SIGMA_MIN
            hi[ISX] = hi[ISY] = float(box)
        if model == MODEL_MULTI:
            for j in range(6, MAX_PARAMS, 3):
                lo[j] = lo[j + 1] = -0.5 * box
                hi[j] = hi[j + 1] = 1.5 * box
                lo[j + 2] = 1e-3
    return lo, hi


def astig_aux(x_coefficients, y_coefficients) -> np.ndarray:
    """``aux`` of :data:`MODEL_ASTIG_Z` from two calibration polynomials (np.polyval order)."""
    cx = np.asarray(x_coefficients, float).ravel()
    cy = np.asarray(y_coefficients, float).ravel()
    c = max(len(cx), len(cy))
    cx = np.concatenate([np.zeros(c - len(cx)), cx])
    cy = np.concatenate([np.zeros(c - len(cy)), cy])
    return np.concatenate([[float(c)], cx, cy])


def spline_aux(coefficients, cx: float, cy: float, z_first: float = 0.0, z_step: float = 1.0,
               z_init: float = 0.0, oversampling: float = 1.0) -> np.ndarray:
    """``aux`` of :data:`MODEL_SPLINE_Z` (coefficients ``(nz, ny, nx, 4, 4, 4)``) or :data:`MODEL_SPLINE_2D`
    (``(ny, nx, 4, 4)``), see :mod:`napari_localize.core.spline`: the emitter sits on spline node ``(cx, cy)``,
    node ``k`` along z is at height ``z_first + k z_step`` (nm), fits start at ``z_init``; ``oversampling``
    lateral nodes per camera pixel."""
    if not oversampling > 0:
        raise ValueError(f"spline oversampling must be positive, got {oversampling}")
    c = np.ascontiguousarray(coefficients, np.float64)
    if c.ndim == 6:
        head = [c.shape[0], c.shape[1], c.shape[2], cx, cy, z_first, z_step, z_init, oversampling]
    elif c.ndim == 4:
        head = [0, c.shape[0], c.shape[1], cx, cy, 0.0, 1.0, 0.0, oversampling]
    else:
        raise ValueError(f"spline coefficients must be (nz, ny, nx, 4, 4, 4) or (ny, nx, 4, 4), got {c.shape}")
    return np.concatenate([np.asarray(head, float), c.ravel()])
