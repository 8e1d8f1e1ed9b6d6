"""Cubic-spline evaluation for the fit engine: value and derivatives of a per-cell 64- (3D) or 16-coefficient
(2D) spline table (Babcock & Zhuang, Sci. Rep. 7, 552 (2017)); see :mod:`napari_localize.core.spline`.

The table is a flat float64 array read from ``offset`` on, cells in C order ``[iz, iy, ix]``, then the
coefficients of ``tz^r ty^q tx^p`` as ``[r, q, p]`` (x power fastest): ``register_jitable``, so the CPU and
the CUDA drivers compile the same source. Outside the grid the cell index is clamped and the boundary cell's
polynomial extrapolated (value and derivatives stay continuous).
"""

from __future__ import annotations

import math

from numba import njit
from numba.extending import register_jitable


@register_jitable
def _cell(s, n_cells):
    i = int(math.floor(s))
    if i < 0:
        i = 0
    elif i > n_cells - 1:
        i = n_cells - 1
    return i, s - i


@register_jitable
def spline3d_eval(coef, offset, n_z, n_y, n_x, sx, sy, sz):
    """Value and ``(d/dsx, d/dsy, d/dsz)`` at spline coordinates ``(sx, sy, sz)`` (``n_*`` = numbers of cells)."""
    ix, tx = _cell(sx, n_x)
    iy, ty = _cell(sy, n_y)
    iz, tz = _cell(sz, n_z)
    base = offset + ((iz * n_y + iy) * n_x + ix) * 64
    v = 0.0
    gx = 0.0
    gy = 0.0
    gz = 0.0
    pz = 1.0
    dpz = 0.0
    for r in range(4):
        py = 1.0
        dpy = 0.0
        for q in range(4):
            o = base + r * 16 + q * 4
            c0 = coef[o]
            c1 = coef[o + 1]
            c2 = coef[o + 2]
            c3 = coef[o + 3]
            fx = ((c3 * tx + c2) * tx + c1) * tx + c0
            dfx = (3.0 * c3 * tx + 2.0 * c2) * tx + c1
            v += pz * py * fx
            gx += pz * py * dfx
            gy += pz * dpy * fx
            gz += dpz * py * fx
            dpy = (q + 1) * py
            py *= ty
        dpz = (r + 1) * pz
        pz *= tz
    return v, gx, gy, gz


@register_jitable
def spline2d_eval(coef, offset, n_y, n_x, sx, sy):
    """Value and ``(d/dsx, d/dsy)`` of a 2D table (16 coefficients per cell, ``[q, p]``)."""
    ix, tx = _cell(sx, n_x)
    iy, ty = _cell(sy, n_y)
    base = offset + (iy * n_x + ix) * 16
    v = 0.0
    gx = 0.0
    gy = 0.0
    py = 1.0
    dpy = 0.0
    for q in range(4):
        o = base + q * 4
        c0 = coef[o]
        c1 = coef[o + 1]
        c2 = coef[o + 2]
        c3 = coef[o + 3]
        fx = ((c3 * tx + c2) * tx + c1) * tx + c0
        dfx = (3.0 * c3 * tx + 2.0 * c2) * tx + c1
        v += py * fx
        gx += py * dfx
        gy += dpy * fx
        dpy = (q + 1) * py
        py *= ty
    return v, gx, gy


@njit(cache=True, nogil=True)
def eval3d_serial(coef, n_z, n_y, n_x, sx, sy, sz, out):
    """:func:`spline3d_eval` at many points: ``out[i] = (value, d/dsx, d/dsy, d/dsz)``."""
    for i in range(sx.shape[0]):
        v, gx, gy, gz = spline3d_eval(coef, 0, n_z, n_y, n_x, sx[i], sy[i], sz[i])
        out[i, 0] = v
        out[i, 1] = gx
        out[i, 2] = gy
        out[i, 3] = gz


@njit(cache=True, nogil=True)
def eval2d_serial(coef, n_y, n_x, sx, sy, out):
    """:func:`spline2d_eval` at many points: ``out[i] = (value, d/dsx, d/dsy, 0)``."""
    for i in range(sx.shape[0]):
        v, gx, gy = spline2d_eval(coef, 0, n_y, n_x, sx[i], sy[i])
        out[i, 0] = v
        out[i, 1] = gx
        out[i, 2] = gy
        out[i, 3] = 0.0
