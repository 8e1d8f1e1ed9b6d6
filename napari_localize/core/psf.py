"""The pixel-integrated Gaussian PSF and the Levenberg-Marquardt engine shared by the MLE and LQ fits.

Model of the expected photons in pixel (row k, column m) of a box, pixel centres at integer box coordinates
0 .. box-1 (Smith et al., Nat. Methods 7, 373 (2010), with the erf argument scaled by sqrt(2) sigma)::

    mu[k, m] = N * Ex[m] * Ey[k] + b
    Ex[m]    = 1/2 [erf((m - x + 1/2) / (sqrt(2) sx)) - erf((m - x - 1/2) / (sqrt(2) sx))]

Parameters ``theta = (x, y, N, b, sx, sy)``: position (pixels, box coordinates), total photons, background
photons per pixel, Gaussian standard deviations (pixels).

The fit is a Levenberg-Marquardt iteration on either the Poisson log-likelihood (scoring with the Fisher
information, Laurence & Chromy, Nat. Methods 7, 338 (2010)) or the sum of squared residuals. Every step must
improve the objective, so the iteration cannot run away the way per-parameter Newton steps can (the cause of
Picasso's tail of failed MLE fits).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

N_PARAMS = 6
IX, IY, IN, IB, ISX, ISY = range(6)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

MODE_POISSON = 0
MODE_LSQ = 1

#: widths outside these bounds (pixels) mark a failed fit
SIGMA_MIN = 0.25


@njit(cache=True, nogil=True)
def pixel_integrals(centre, sigma, n, E, dE_dc, dE_ds):
    """Fraction of a unit 1D Gaussian falling in each pixel 0..n-1, and its derivatives."""
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


@njit(cache=True, nogil=True)
def model(theta, box, mu, J, scratch):
    """Expected photons ``mu`` (box*box) and, if ``J`` has rows, the Jacobian d mu / d theta."""
    Ex = scratch[0]
    dEx = scratch[1]
    dSx = scratch[2]
    Ey = scratch[3]
    dEy = scratch[4]
    dSy = scratch[5]
    pixel_integrals(theta[IX], theta[ISX], box, Ex, dEx, dSx)
    pixel_integrals(theta[IY], theta[ISY], box, Ey, dEy, dSy)
    N = theta[IN]
    b = theta[IB]
    with_jac = J.shape[0] > 0
    p = 0
    for k in range(box):
        for m in range(box):
            exy = Ex[m] * Ey[k]
            mu[p] = N * exy + b
            if with_jac:
                J[p, IX] = N * dEx[m] * Ey[k]
                J[p, IY] = N * Ex[m] * dEy[k]
                J[p, IN] = exy
                J[p, IB] = 1.0
                J[p, ISX] = N * dSx[m] * Ey[k]
                J[p, ISY] = N * Ex[m] * dSy[k]
            p += 1


@njit(cache=True, nogil=True)
def objective(data, mu, mode):
    """Poisson log-likelihood ratio to the saturated model (<= 0), or minus half the squared residuals."""
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
def normal_equations(data, mu, J, mode, g, F):
    """Gradient ``g`` of the objective and its curvature matrix ``F`` (Fisher information or J^T J)."""
    g[:] = 0.0
    F[:, :] = 0.0
    for p in range(data.shape[0]):
        if mode == MODE_POISSON:
            w = 1.0 / mu[p]
            r = data[p] * w - 1.0
        else:
            w = 1.0
            r = data[p] - mu[p]
        for a in range(N_PARAMS):
            ja = J[p, a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * J[p, c]
    for a in range(N_PARAMS):
        for c in range(a):
            F[c, a] = F[a, c]


@njit(cache=True, nogil=True)
def cholesky_solve(A, rhs, L, out):
    """Solve ``A out = rhs`` for a symmetric positive-definite A; False if A is not positive definite."""
    n = A.shape[0]
    for i in range(n):
        for j in range(i + 1):
            s = A[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            if i == j:
                if s <= 0.0 or not math.isfinite(s):
                    return False
                L[i, i] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    for i in range(n):
        s = rhs[i]
        for k in range(i):
            s -= L[i, k] * out[k]
        out[i] = s / L[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s -= L[k, i] * out[k]
        out[i] = s / L[i, i]
    return True


@njit(cache=True, nogil=True)
def inverse_diagonal(F, L, e, col, out):
    """Diagonal of F^-1 (the CRLB when F is the Fisher matrix); NaN where F is singular."""
    n = F.shape[0]
    for i in range(n):
        e[:] = 0.0
        e[i] = 1.0
        if not cholesky_solve(F, e, L, col):
            out[:] = np.nan
            return
        out[i] = col[i]


@njit(cache=True, nogil=True)
def initial_guess(spot, box, theta):
    """Background from the box border, photons from the sum, position and widths from moments."""
    r = box // 2
    border = 0.0
    nb = 0
    for k in range(box):
        for m in range(box):
            if k == 0 or m == 0 or k == box - 1 or m == box - 1:
                border += spot[k * box + m]
                nb += 1
    bg = border / nb
    total = 0.0
    sx = 0.0
    sy = 0.0
    for k in range(box):
        for m in range(box):
            v = spot[k * box + m] - bg
            if v > 0:
                total += v
                sx += v * m
                sy += v * k
    if total > 0:
        cx = sx / total
        cy = sy / total
    else:
        cx = float(r)
        cy = float(r)
    cx = min(max(cx, r - 1.0), r + 1.0)
    cy = min(max(cy, r - 1.0), r + 1.0)
    vx = 0.0
    vy = 0.0
    for k in range(box):
        for m in range(box):
            v = spot[k * box + m] - bg
            if v > 0:
                vx += v * (m - cx) ** 2
                vy += v * (k - cy) ** 2
    sig_hi = 0.5 * r + 0.5
    if total > 0:
        gx = min(max(math.sqrt(vx / total), 0.7), sig_hi)
        gy = min(max(math.sqrt(vy / total), 0.7), sig_hi)
    else:
        gx = 1.0
        gy = 1.0
    theta[IX] = cx
    theta[IY] = cy
    theta[IN] = max(total, 1.0)
    theta[IB] = max(bg, 1e-3)
    theta[ISX] = gx
    theta[ISY] = gy


@njit(cache=True, nogil=True)
def _clamp_params(theta, box):
    lo = -0.5 * box
    hi = 1.5 * box
    theta[IX] = min(max(theta[IX], lo), hi)
    theta[IY] = min(max(theta[IY], lo), hi)
    theta[IN] = max(theta[IN], 1e-3)
    theta[IB] = max(theta[IB], 1e-3)
    theta[ISX] = min(max(theta[ISX], 0.5 * SIGMA_MIN), float(box))
    theta[ISY] = min(max(theta[ISY], 0.5 * SIGMA_MIN), float(box))


@njit(cache=True, nogil=True)
def fit_spot(spot, box, mode, eps, max_iterations, theta, curvature_diag_inv):
    """Fit one spot (flattened box*box photons) in place of ``theta``.

    Returns ``(objective, iterations, converged)`` and fills ``curvature_diag_inv`` with the diagonal of
    the inverse curvature matrix at the optimum (the CRLB for the Poisson mode).
    """
    P = box * box
    mu = np.empty(P)
    mu_try = np.empty(P)
    J = np.empty((P, N_PARAMS))
    no_jac = np.empty((0, N_PARAMS))
    scratch = np.empty((6, box))
    g = np.empty(N_PARAMS)
    F = np.empty((N_PARAMS, N_PARAMS))
    A = np.empty((N_PARAMS, N_PARAMS))
    L = np.zeros((N_PARAMS, N_PARAMS))
    delta = np.empty(N_PARAMS)
    trial = np.empty(N_PARAMS)
    e = np.empty(N_PARAMS)
    col = np.empty(N_PARAMS)

    initial_guess(spot, box, theta)
    model(theta, box, mu, J, scratch)
    obj = objective(spot, mu, mode)
    lam = 1e-3
    converged = False
    iterations = 0
    for it in range(max_iterations):
        iterations = it + 1
        normal_equations(spot, mu, J, mode, g, F)
        accepted = False
        while lam < 1e12:
            for a in range(N_PARAMS):
                for c in range(N_PARAMS):
                    A[a, c] = F[a, c]
                A[a, a] = F[a, a] * (1.0 + lam) + 1e-12
            if cholesky_solve(A, g, L, delta):
                for a in range(N_PARAMS):
                    trial[a] = theta[a] + delta[a]
                _clamp_params(trial, box)
                model(trial, box, mu_try, no_jac, scratch)
                obj_try = objective(spot, mu_try, mode)
                if obj_try >= obj - 1e-12 * abs(obj):
                    accepted = True
                    break
            lam *= 10.0
        if not accepted:
            # no direction improves the objective any more: we sit at the optimum
            converged = True
            break
        small = (
            abs(trial[IX] - theta[IX]) < eps
            and abs(trial[IY] - theta[IY]) < eps
            and abs(trial[ISX] - theta[ISX]) < eps
            and abs(trial[ISY] - theta[ISY]) < eps
            and abs(trial[IN] - theta[IN]) < eps * theta[IN]
            and abs(trial[IB] - theta[IB]) < eps * max(theta[IB], 1.0)
        )
        for a in range(N_PARAMS):
            theta[a] = trial[a]
        obj = obj_try
        lam = max(lam * 0.1, 1e-9)
        model(theta, box, mu, J, scratch)
        if small:
            converged = True
            break
    normal_equations(spot, mu, J, mode, g, F)
    if mode == MODE_POISSON:
        inverse_diagonal(F, L, e, col, curvature_diag_inv)
    else:
        # least squares: report the diagonal of (J^T J)^-1 (scaled later if wanted)
        inverse_diagonal(F, L, e, col, curvature_diag_inv)
    # a fit that ran to the parameter walls or left its box is not a localization
    r = box // 2
    if (
        theta[ISX] <= SIGMA_MIN or theta[ISY] <= SIGMA_MIN
        or theta[ISX] >= r + 0.5 or theta[ISY] >= r + 0.5
        or theta[IX] < -0.5 or theta[IX] > box - 0.5
        or theta[IY] < -0.5 or theta[IY] > box - 0.5
        or theta[IN] <= 1e-3 * 1.0001
    ):
        converged = False
    return obj, iterations, converged


@njit(cache=True, nogil=True)
def fisher_information(theta, box):
    """Fisher information matrix of the Poisson integrated-Gaussian model at ``theta``."""
    P = box * box
    mu = np.empty(P)
    J = np.empty((P, N_PARAMS))
    scratch = np.empty((6, box))
    model(theta, box, mu, J, scratch)
    F = np.zeros((N_PARAMS, N_PARAMS))
    for p in range(P):
        for a in range(N_PARAMS):
            for c in range(N_PARAMS):
                F[a, c] += J[p, a] * J[p, c] / mu[p]
    return F


def crlb(photons, bg, sx, sy, box_size, x=None, y=None):
    """Cramér-Rao lower bound of (x, y, photons, bg, sx, sy) for one spot, as variances.

    Positions default to the box centre. Units: pixels for x, y, sx, sy; photons for photons and bg.
    """
    r = box_size // 2
    theta = np.array([r if x is None else x, r if y is None else y, photons, bg, sx, sy], float)
    F = fisher_information(theta, box_size)
    return np.diag(np.linalg.inv(F))


@njit(cache=True, nogil=True, parallel=True)
def _fit_batch(spots, box, mode, eps, max_iterations, theta, var, obj, iterations, converged):
    for n in prange(spots.shape[0]):
        t = theta[n]
        o, it, ok = fit_spot(spots[n].ravel().astype(np.float64), box, mode, eps, max_iterations, t, var[n])
        obj[n] = o
        iterations[n] = it
        converged[n] = ok


def fit_spots(spots, mode, eps, max_iterations):
    """Fit every spot of a ``(n, box, box)`` stack (photons) with the integrated Gaussian.

    Returns ``theta`` (n, 6) in box coordinates, the diagonal of the inverse curvature (n, 6), the final
    objective (n), iteration counts (n) and convergence flags (n).
    """
    spots = np.ascontiguousarray(spots, dtype=np.float32)
    n, box, box2 = spots.shape
    if box != box2:
        raise ValueError("spots must be square boxes")
    theta = np.empty((n, N_PARAMS))
    var = np.empty((n, N_PARAMS))
    obj = np.empty(n)
    iterations = np.zeros(n, np.int64)
    converged = np.zeros(n, np.bool_)
    if n:
        _fit_batch(spots, box, mode, float(eps), int(max_iterations), theta, var, obj, iterations, converged)
    return theta, var, obj, iterations, converged
