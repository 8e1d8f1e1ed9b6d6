"""The pixel-integrated Gaussian: the one implementation used by the fit, the simulator and the renderer.

A unit 1D Gaussian of standard deviation ``sigma`` centred at ``centre`` puts the fraction
``E[i] = 1/2 [erf((i + 1/2 - centre) / (sqrt(2) sigma)) - erf((i - 1/2 - centre) / (sqrt(2) sigma))]`` of its
light into pixel i (pixel centres at integer coordinates; Smith et al., Nat. Methods 7, 373 (2010)). A 2D
spot is ``N * Ex[m] * Ey[k]`` in pixel (row k, column m).
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@register_jitable
def gauss_rows(centre, sigma, n, S, row):
    """Fractions of a unit 1D Gaussian in pixels 0..n-1 into ``S[row]``, their derivatives by the centre into
    ``S[row+1]`` and by sigma into ``S[row+2]`` (row-indexed scratch: no array views, for the CUDA target)."""
    inv_s = 1.0 / sigma
    t0 = -0.5 - centre
    erf0 = math.erf(t0 * inv_s * _INV_SQRT2)
    g0 = math.exp(-0.5 * (t0 * inv_s) ** 2)
    for i in range(n):
        t1 = i + 0.5 - centre
        erf1 = math.erf(t1 * inv_s * _INV_SQRT2)
        g1 = math.exp(-0.5 * (t1 * inv_s) ** 2)
        S[row, i] = 0.5 * (erf1 - erf0)
        S[row + 1, i] = (g0 - g1) * _INV_SQRT_2PI * inv_s
        S[row + 2, i] = (t0 * g0 - t1 * g1) * _INV_SQRT_2PI * inv_s * inv_s
        t0 = t1
        erf0 = erf1
        g0 = g1


@register_jitable
def gauss_fractions(centre, sigma, first, n, E):
    """Fractions ``E[0:n]`` of a unit 1D Gaussian in pixels ``first .. first+n-1`` (no derivatives)."""
    k = 1.0 / (math.sqrt(2.0) * sigma)
    e0 = math.erf((first - 0.5 - centre) * k)
    for i in range(n):
        e1 = math.erf((first + i + 0.5 - centre) * k)
        E[i] = 0.5 * (e1 - e0)
        e0 = e1


@register_jitable
def add_gaussian(img, x, y, photons, sx, sy, x0, x1, y0, y1, ex, ey):
    """Add ``photons`` of a pixel-integrated Gaussian at ``(x, y)`` (pixels, centres at integers) with widths
    ``sx, sy`` to the window ``img[y0:y1, x0:x1]`` (inside the image); ``ex``, ``ey`` are scratch of at least
    the window's width and height. Nothing is added for widths or photons <= 0."""
    if not (sx > 0.0 and sy > 0.0 and photons > 0.0):
        return
    nx = x1 - x0
    ny = y1 - y0
    if nx <= 0 or ny <= 0:
        return
    gauss_fractions(x, sx, x0, nx, ex)
    gauss_fractions(y, sy, y0, ny, ey)
    for k in range(ny):
        a = photons * ey[k]
        for m in range(nx):
            img[y0 + k, x0 + m] += a * ex[m]
