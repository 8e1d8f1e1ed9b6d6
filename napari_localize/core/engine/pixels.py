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
def gauss_integrals(centre, sigma, n, E, dE_dc, dE_ds):
    """Fractions ``E[0:n]`` of a unit 1D Gaussian in pixels 0..n-1 and their derivatives by centre and sigma."""
    inv_s = 1.0 / sigma
    t0 = -0.5 - centre
    erf0 = math.erf(t0 * inv_s * _INV_SQRT2)
    g0 = math.exp(-0.5 * (t0 * inv_s) ** 2)
    for i in range(n):
        t1 = i + 0.5 - centre
        erf1 = math.erf(t1 * inv_s * _INV_SQRT2)
        g1 = math.exp(-0.5 * (t1 * inv_s) ** 2)
        E[i] = 0.5 * (erf1 - erf0)
        dE_dc[i] = (g0 - g1) * _INV_SQRT_2PI * inv_s
        dE_ds[i] = (t0 * g0 - t1 * g1) * _INV_SQRT_2PI * inv_s * inv_s
        t0 = t1
        erf0 = erf1
        g0 = g1


@register_jitable
def gauss_fractions(centre, sigma, first, n, E):
    """Fractions ``E[0:n]`` of a unit 1D Gaussian in pixels ``first .. first+n-1`` (no derivatives)."""
    k = _INV_SQRT2 / sigma
    e0 = math.erf((first - 0.5 - centre) * k)
    for i in range(n):
        e1 = math.erf((first + i + 0.5 - centre) * k)
        E[i] = 0.5 * (e1 - e0)
        e0 = e1


@register_jitable
def add_gaussian(img, x, y, photons, sx, sy, ex, ey):
    """Add ``photons`` of a pixel-integrated Gaussian at ``(x, y)`` (pixels) with widths ``sx, sy`` to ``img``.

    Only the pixels within 5 sigma (+1) of the centre are touched; ``ex``, ``ey`` are scratch rows of at
    least that length (or the image's width/height).
    """
    h, w = img.shape
    if not (sx > 0.0 and sy > 0.0 and photons > 0.0):
        return
    x0 = max(int(math.floor(x - 5.0 * sx - 1.0)), 0)
    x1 = min(int(math.ceil(x + 5.0 * sx + 1.0)), w - 1)
    y0 = max(int(math.floor(y - 5.0 * sy - 1.0)), 0)
    y1 = min(int(math.ceil(y + 5.0 * sy + 1.0)), h - 1)
    if x1 < x0 or y1 < y0:
        return
    nx = min(x1 - x0 + 1, ex.shape[0])
    ny = min(y1 - y0 + 1, ey.shape[0])
    gauss_fractions(x, sx, x0, nx, ex)
    gauss_fractions(y, sy, y0, ny, ey)
    for k in range(ny):
        a = photons * ey[k]
        for m in range(nx):
            img[y0 + k, x0 + m] += a * ex[m]
