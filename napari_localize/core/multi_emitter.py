"""K pixel-integrated Gaussians in one box: the multi-emitter model and its Levenberg-Marquardt fit.

Parameters of a box with K emitters (K = 1 is the single-emitter model exactly)::

    theta = (x0, y0, N0, bg, sx, sy, x1, y1, N1, ..., x_{K-1}, y_{K-1}, N_{K-1})

Positions in box pixels (pixel centres at 0 .. box-1), photons per emitter, one background (photons per pixel)
and one pair of widths (pixels) for the whole box (the PSF does not change across a few pixels). Expected
photons per pixel::

    mu[k, m] = bg + other[k, m] + sum_e N_e Ex_e[m] Ey_e[k]

``other`` is fixed light (the fitted neighbours outside this box's group), added to the model and not fitted.
The fit maximises the Poisson likelihood (Fisher scoring) or minimises squared residuals, with every step
improving the objective; the inverse Fisher matrix of all 3K + 3 parameters gives each emitter's CRLB
(correlations between emitters included).

This prototype driver is replaced by the shared engine's model when that lands (see docs/architecture.md).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .psf import MODE_POISSON, SIGMA_MIN, cholesky_solve, pixel_integrals

#: most emitters in one box
MAX_EMITTERS = 5
MAX_PARAMS = 6 + 3 * (MAX_EMITTERS - 1)


@njit(cache=True, nogil=True, inline="always")
def n_params(K):
    return 6 + 3 * (K - 1)


@njit(cache=True, nogil=True, inline="always")
def emitter_index(e):
    """Index of emitter e's x in theta (y and N follow)."""
    return 0 if e == 0 else 6 + 3 * (e - 1)


@njit(cache=True, nogil=True)
def me_model(theta, K, box, other, mu, J, with_jac, S):
    """Expected photons ``mu`` (box*box) of K emitters + bg + other; Jacobian into ``J`` if ``with_jac``."""
    sx = theta[4]
    sy = theta[5]
    for e in range(K):
        j = emitter_index(e)
        pixel_integrals(theta[j], sx, box, S[6 * e], S[6 * e + 1], S[6 * e + 2])
        pixel_integrals(theta[j + 1], sy, box, S[6 * e + 3], S[6 * e + 4], S[6 * e + 5])
    b = theta[3]
    use_other = other.shape[0] > 0
    p = 0
    for k in range(box):
        for m in range(box):
            v = b
            if use_other:
                v += other[p]
            dsx = 0.0
            dsy = 0.0
            for e in range(K):
                j = emitter_index(e)
                N = theta[j + 2]
                ex = S[6 * e, m]
                ey = S[6 * e + 3, k]
                v += N * ex * ey
                if with_jac:
                    J[p, j] = N * S[6 * e + 1, m] * ey
                    J[p, j + 1] = N * ex * S[6 * e + 4, k]
                    J[p, j + 2] = ex * ey
                    dsx += N * S[6 * e + 2, m] * ey
                    dsy += N * ex * S[6 * e + 5, k]
            if with_jac:
                J[p, 3] = 1.0
                J[p, 4] = dsx
                J[p, 5] = dsy
            mu[p] = v
            p += 1


@njit(cache=True, nogil=True)
def _objective(data, mu, mode):
    s = 0.0
    if mode == MODE_POISSON:
        for p in range(data.shape[0]):
            x = data[p]
            m = mu[p]
            if x > 0:
                s += x * math.log(m / x) - m + x
            else:
                s -= m
    else:
        for p in range(data.shape[0]):
            d = data[p] - mu[p]
            s -= 0.5 * d * d
    return s


@njit(cache=True, nogil=True)
def _normal_equations(data, mu, J, P, mode, g, F):
    for a in range(P):
        g[a] = 0.0
        for c in range(P):
            F[a, c] = 0.0
    for p in range(data.shape[0]):
        if mode == MODE_POISSON:
            w = 1.0 / mu[p]
            r = data[p] * w - 1.0
        else:
            w = 1.0
            r = data[p] - mu[p]
        for a in range(P):
            ja = J[p, a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * J[p, c]
    for a in range(P):
        for c in range(a):
            F[c, a] = F[a, c]


@njit(cache=True, nogil=True)
def _clamp(theta, K, box):
    lo = -0.5 * box
    hi = 1.5 * box
    for e in range(K):
        j = emitter_index(e)
        theta[j] = min(max(theta[j], lo), hi)
        theta[j + 1] = min(max(theta[j + 1], lo), hi)
        theta[j + 2] = max(theta[j + 2], 1e-3)
    theta[3] = max(theta[3], 1e-3)
    theta[4] = min(max(theta[4], 0.5 * SIGMA_MIN), float(box))
    theta[5] = min(max(theta[5], 0.5 * SIGMA_MIN), float(box))


@njit(cache=True, nogil=True)
def me_valid(theta, K, box):
    """The fit ended inside the model's domain: widths in (SIGMA_MIN, r + 1/2), every emitter in its box."""
    r = box // 2
    if theta[4] <= SIGMA_MIN or theta[5] <= SIGMA_MIN or theta[4] >= r + 0.5 or theta[5] >= r + 0.5:
        return False
    for e in range(K):
        j = emitter_index(e)
        if theta[j] < -0.5 or theta[j] > box - 0.5 or theta[j + 1] < -0.5 or theta[j + 1] > box - 0.5:
            return False
        if theta[j + 2] <= 1e-3 * 1.0001:
            return False
    return True


@njit(cache=True, nogil=True)
def me_fit(data, other, box, K, mode, eps, max_iterations, theta, var):
    """Fit K emitters in one box from the start ``theta`` (in place); ``var`` gets diag(F^-1).

    Returns ``(objective, iterations, converged)``; objective is the Poisson log-likelihood ratio to the
    saturated model (<= 0) or minus half the squared residuals.
    """
    P = n_params(K)
    npx = box * box
    mu = np.empty(npx)
    mu_try = np.empty(npx)
    J = np.empty((npx, P))
    S = np.empty((6 * K, box))
    g = np.empty(P)
    F = np.empty((P, P))
    A = np.empty((P, P))
    L = np.zeros((P, P))
    delta = np.empty(P)
    trial = np.empty(P)
    e_ = np.empty(P)
    col = np.empty(P)
    me_model(theta, K, box, other, mu, J, True, S)
    obj = _objective(data, mu, mode)
    lam = 1e-3
    converged = False
    iterations = 0
    obj_try = obj
    for it in range(max_iterations):
        iterations = it + 1
        _normal_equations(data, mu, J, P, mode, g, F)
        accepted = False
        while lam < 1e12:
            for a in range(P):
                for c in range(P):
                    A[a, c] = F[a, c]
                A[a, a] = F[a, a] * (1.0 + lam) + 1e-12
            if cholesky_solve(A, g, L, delta):
                for a in range(P):
                    trial[a] = theta[a] + delta[a]
                _clamp(trial, K, box)
                me_model(trial, K, box, other, mu_try, J, False, S)
                obj_try = _objective(data, mu_try, mode)
                if obj_try >= obj - 1e-12 * abs(obj):
                    accepted = True
                    break
            lam *= 10.0
        if not accepted:
            converged = True
            break
        small = (abs(trial[3] - theta[3]) < eps * max(theta[3], 1.0) and abs(trial[4] - theta[4]) < eps
                 and abs(trial[5] - theta[5]) < eps)
        for e in range(K):
            j = emitter_index(e)
            small = small and abs(trial[j] - theta[j]) < eps and abs(trial[j + 1] - theta[j + 1]) < eps \
                and abs(trial[j + 2] - theta[j + 2]) < eps * theta[j + 2]
        for a in range(P):
            theta[a] = trial[a]
        obj = obj_try
        lam = max(lam * 0.1, 1e-9)
        me_model(theta, K, box, other, mu, J, True, S)
        if small:
            converged = True
            break
    _normal_equations(data, mu, J, P, mode, g, F)
    for i in range(P):
        for a in range(P):
            e_[a] = 0.0
        e_[i] = 1.0
        if not cholesky_solve(F, e_, L, col):
            for a in range(P):
                var[a] = np.nan
            break
        var[i] = col[i]
    if not me_valid(theta, K, box):
        converged = False
    return obj, iterations, converged


def fit_boxes_multi(data, other, K, box, mode, eps, max_iterations, theta, var, obj, iterations, converged):
    """Fit every box ``g`` (``data[g]``: box*box photons, ``other[g]`` fixed light) with ``K[g]`` emitters."""
    args = (data, other, K, box, mode, eps, max_iterations, theta, var, obj, iterations, converged)
    if len(data) < 256:
        _fit_boxes_serial(*args)
    else:
        _fit_boxes_parallel(*args)


@njit(cache=True, nogil=True)
def _fit_boxes_serial(data, other, K, box, mode, eps, max_iterations, theta, var, obj, iterations, converged):
    for g in range(data.shape[0]):
        o, it, ok = me_fit(data[g], other[g], box, K[g], mode, eps, max_iterations, theta[g], var[g])
        obj[g] = o
        iterations[g] = it
        converged[g] = ok


@njit(cache=True, nogil=True, parallel=True)
def _fit_boxes_parallel(data, other, K, box, mode, eps, max_iterations, theta, var, obj, iterations, converged):
    for g in prange(data.shape[0]):
        o, it, ok = me_fit(data[g], other[g], box, K[g], mode, eps, max_iterations, theta[g], var[g])
        obj[g] = o
        iterations[g] = it
        converged[g] = ok


@njit(cache=True, nogil=True)
def me_expected(theta, K, box, other, mu):
    """Expected photons of a fitted box (``mu``: box*box), other light included."""
    S = np.empty((6 * K, box))
    J = np.empty((0, 0))
    me_model(theta, K, box, other, mu, J, False, S)
