"""CUDA engine for the MLE and LQ fits: one GPU thread fits one spot.

Same model and algorithm as the CPU engine in :mod:`napari_localize.core.psf` (pixel-integrated Gaussian,
Levenberg-Marquardt on the Poisson log-likelihood with Fisher scoring, or on the squared residuals; the same
initial guess, damping schedule, clamps, convergence test and failure flags), in float64, so the two
engines agree to rounding. The Jacobian is not stored: each pass over the box rebuilds it, pixel by pixel,
from the six 1D pixel integrals, so a thread needs only a few kB of local memory for any box up to
:data:`~napari_localize.core.device.MAX_BOX`.

Import this module only through :mod:`napari_localize.core.device` (it imports ``numba.cuda``). Under
``NUMBA_ENABLE_CUDASIM=1`` the kernel runs in numba's CUDA simulator (slow, for tests).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .device import MAX_BOX
from .psf import IB, IN, ISX, ISY, IX, IY, MODE_POISSON, N_PARAMS, SIGMA_MIN

_MAX_PIXELS = MAX_BOX * MAX_BOX
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
#: threads per block
THREADS = 128
#: bytes of spots sent to the GPU per kernel launch
BATCH_BYTES = 256 * 1024 * 1024


@cuda.jit(device=True)
def _hi(a, b):
    # max(a, b) (the built-in min/max do not compile for the CUDA target of numba 0.68)
    return a if a >= b else b


@cuda.jit(device=True)
def _lo(a, b):
    return a if a <= b else b


@cuda.jit(device=True)
def _pixel_integrals(centre, sigma, n, E, dE_dc, dE_ds):
    # fraction of a unit 1D Gaussian in pixels 0..n-1 and its derivatives by centre and sigma
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


@cuda.jit(device=True)
def _objective(spot, box, N, b, Ex, Ey, mode):
    # Poisson log-likelihood ratio to the saturated model, or minus half the squared residuals
    s = 0.0
    p = 0
    for k in range(box):
        for m in range(box):
            mu = N * (Ex[m] * Ey[k]) + b
            x = spot[p]
            if mode == MODE_POISSON:
                if x > 0:
                    s += x * math.log(mu / x) - mu + x
                else:
                    s -= mu
            else:
                d = x - mu
                s -= 0.5 * d * d
            p += 1
    return s


@cuda.jit(device=True)
def _normal_equations(spot, box, N, Ex, dEx, dSx, Ey, dEy, dSy, b, mode, g, F, jrow):
    # gradient g and curvature F (Fisher information or J^T J), Jacobian rebuilt pixel by pixel
    for a in range(N_PARAMS):
        g[a] = 0.0
        for c in range(N_PARAMS):
            F[a, c] = 0.0
    p = 0
    for k in range(box):
        for m in range(box):
            exy = Ex[m] * Ey[k]
            mu = N * exy + b
            jrow[IX] = N * dEx[m] * Ey[k]
            jrow[IY] = N * Ex[m] * dEy[k]
            jrow[IN] = exy
            jrow[IB] = 1.0
            jrow[ISX] = N * dSx[m] * Ey[k]
            jrow[ISY] = N * Ex[m] * dSy[k]
            if mode == MODE_POISSON:
                w = 1.0 / mu
                r = spot[p] * w - 1.0
            else:
                w = 1.0
                r = spot[p] - mu
            for a in range(N_PARAMS):
                ja = jrow[a]
                g[a] += r * ja
                wja = w * ja
                for c in range(a + 1):
                    F[a, c] += wja * jrow[c]
            p += 1
    for a in range(N_PARAMS):
        for c in range(a):
            F[c, a] = F[a, c]


@cuda.jit(device=True)
def _cholesky_solve(A, rhs, L, out):
    # solve A out = rhs for a symmetric positive-definite 6x6 A; False if A is not positive definite
    for i in range(N_PARAMS):
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
    for i in range(N_PARAMS):
        s = rhs[i]
        for k in range(i):
            s -= L[i, k] * out[k]
        out[i] = s / L[i, i]
    for i in range(N_PARAMS - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, N_PARAMS):
            s -= L[k, i] * out[k]
        out[i] = s / L[i, i]
    return True


@cuda.jit(device=True)
def _initial_guess(spot, box, theta):
    # background from the box border, photons from the sum, position and widths from moments
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
    cx = _lo(_hi(cx, r - 1.0), r + 1.0)
    cy = _lo(_hi(cy, r - 1.0), r + 1.0)
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
        gx = _lo(_hi(math.sqrt(vx / total), 0.7), sig_hi)
        gy = _lo(_hi(math.sqrt(vy / total), 0.7), sig_hi)
    else:
        gx = 1.0
        gy = 1.0
    theta[IX] = cx
    theta[IY] = cy
    theta[IN] = _hi(total, 1.0)
    theta[IB] = _hi(bg, 1e-3)
    theta[ISX] = gx
    theta[ISY] = gy


@cuda.jit(device=True)
def _clamp_params(theta, box):
    lo = -0.5 * box
    hi = 1.5 * box
    theta[IX] = _lo(_hi(theta[IX], lo), hi)
    theta[IY] = _lo(_hi(theta[IY], lo), hi)
    theta[IN] = _hi(theta[IN], 1e-3)
    theta[IB] = _hi(theta[IB], 1e-3)
    theta[ISX] = _lo(_hi(theta[ISX], 0.5 * SIGMA_MIN), float(box))
    theta[ISY] = _lo(_hi(theta[ISY], 0.5 * SIGMA_MIN), float(box))


@cuda.jit(cache=True)  # compiled once per machine (seconds), then loaded from numba's cache
def _fit_kernel(spots, box, mode, eps, max_iterations, theta_out, var_out, obj_out, iterations_out,
                converged_out):
    n = cuda.grid(1)
    if n >= spots.shape[0]:
        return
    spot = cuda.local.array(_MAX_PIXELS, float64)
    Ex = cuda.local.array(MAX_BOX, float64)
    dEx = cuda.local.array(MAX_BOX, float64)
    dSx = cuda.local.array(MAX_BOX, float64)
    Ey = cuda.local.array(MAX_BOX, float64)
    dEy = cuda.local.array(MAX_BOX, float64)
    dSy = cuda.local.array(MAX_BOX, float64)
    theta = cuda.local.array(N_PARAMS, float64)
    trial = cuda.local.array(N_PARAMS, float64)
    g = cuda.local.array(N_PARAMS, float64)
    delta = cuda.local.array(N_PARAMS, float64)
    jrow = cuda.local.array(N_PARAMS, float64)
    e = cuda.local.array(N_PARAMS, float64)
    col = cuda.local.array(N_PARAMS, float64)
    F = cuda.local.array((N_PARAMS, N_PARAMS), float64)
    A = cuda.local.array((N_PARAMS, N_PARAMS), float64)
    L = cuda.local.array((N_PARAMS, N_PARAMS), float64)
    for a in range(N_PARAMS):
        for c in range(N_PARAMS):
            L[a, c] = 0.0
    for p in range(box * box):
        spot[p] = spots[n, p]

    _initial_guess(spot, box, theta)
    _pixel_integrals(theta[IX], theta[ISX], box, Ex, dEx, dSx)
    _pixel_integrals(theta[IY], theta[ISY], box, Ey, dEy, dSy)
    obj = _objective(spot, box, theta[IN], theta[IB], Ex, Ey, mode)
    lam = 1e-3
    converged = False
    iterations = 0
    for it in range(max_iterations):
        iterations = it + 1
        _normal_equations(spot, box, theta[IN], Ex, dEx, dSx, Ey, dEy, dSy, theta[IB], mode, g, F, jrow)
        accepted = False
        obj_try = obj
        while lam < 1e12:
            for a in range(N_PARAMS):
                for c in range(N_PARAMS):
                    A[a, c] = F[a, c]
                A[a, a] = F[a, a] * (1.0 + lam) + 1e-12
            if _cholesky_solve(A, g, L, delta):
                for a in range(N_PARAMS):
                    trial[a] = theta[a] + delta[a]
                _clamp_params(trial, box)
                # the trial's integrals go to the x/y arrays; on rejection they are rebuilt from theta below
                _pixel_integrals(trial[IX], trial[ISX], box, Ex, dEx, dSx)
                _pixel_integrals(trial[IY], trial[ISY], box, Ey, dEy, dSy)
                obj_try = _objective(spot, box, trial[IN], trial[IB], Ex, Ey, mode)
                if obj_try >= obj - 1e-12 * abs(obj):
                    accepted = True
                    break
            lam *= 10.0
        if not accepted:
            # no direction improves the objective any more: theta is the optimum
            _pixel_integrals(theta[IX], theta[ISX], box, Ex, dEx, dSx)
            _pixel_integrals(theta[IY], theta[ISY], box, Ey, dEy, dSy)
            converged = True
            break
        small = (
            abs(trial[IX] - theta[IX]) < eps
            and abs(trial[IY] - theta[IY]) < eps
            and abs(trial[ISX] - theta[ISX]) < eps
            and abs(trial[ISY] - theta[ISY]) < eps
            and abs(trial[IN] - theta[IN]) < eps * theta[IN]
            and abs(trial[IB] - theta[IB]) < eps * _hi(theta[IB], 1.0)
        )
        for a in range(N_PARAMS):
            theta[a] = trial[a]
        obj = obj_try
        lam = _hi(lam * 0.1, 1e-9)
        if small:
            converged = True
            break
        # (the accepted trial's integrals already sit in Ex..dSy for the next pass)
    # the integrals in Ex..dSy belong to theta here in every branch
    _normal_equations(spot, box, theta[IN], Ex, dEx, dSx, Ey, dEy, dSy, theta[IB], mode, g, F, jrow)
    # diagonal of F^-1: the CRLB (Poisson) or of (J^T J)^-1 (least squares); NaN if F is singular
    singular = False
    for i in range(N_PARAMS):
        for a in range(N_PARAMS):
            e[a] = 0.0
        e[i] = 1.0
        if not _cholesky_solve(F, e, L, col):
            singular = True
            break
        var_out[n, i] = col[i]
    if singular:
        for i in range(N_PARAMS):
            var_out[n, i] = math.nan
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
    for a in range(N_PARAMS):
        theta_out[n, a] = theta[a]
    obj_out[n] = obj
    iterations_out[n] = iterations
    converged_out[n] = 1 if converged else 0


def fit_spots(spots, mode, eps, max_iterations, batch_spots: int | None = None):
    """Fit every spot of a ``(n, box, box)`` stack (photons) on the GPU.

    Same arguments and returns as :func:`napari_localize.core.psf.fit_spots`: ``theta`` (n, 6) in box
    coordinates (x, y, photons, bg, sx, sy), the diagonal of the inverse curvature (n, 6), the final objective
    (n), iteration counts (n) and convergence flags (n). Spots go to the GPU in batches of ``batch_spots``
    (default: about 256 MB of spots per batch).
    """
    spots = np.ascontiguousarray(spots, dtype=np.float32)
    n, box, box2 = spots.shape
    if box != box2:
        raise ValueError("spots must be square boxes")
    if box > MAX_BOX:
        raise ValueError(f"the CUDA fit handles boxes up to {MAX_BOX} pixels, not {box}")
    theta = np.empty((n, N_PARAMS))
    var = np.empty((n, N_PARAMS))
    obj = np.empty(n)
    iterations = np.zeros(n, np.int64)
    converged = np.zeros(n, np.uint8)
    flat = spots.reshape(n, box * box)
    step = int(batch_spots) if batch_spots else max(1, BATCH_BYTES // (4 * box * box))
    for a in range(0, n, step):
        b = min(a + step, n)
        m = b - a
        d_spots = cuda.to_device(flat[a:b])
        d_theta = cuda.device_array((m, N_PARAMS), np.float64)
        d_var = cuda.device_array((m, N_PARAMS), np.float64)
        d_obj = cuda.device_array(m, np.float64)
        d_it = cuda.device_array(m, np.int64)
        d_conv = cuda.device_array(m, np.uint8)
        blocks = (m + THREADS - 1) // THREADS
        _fit_kernel[blocks, THREADS](d_spots, box, int(mode), float(eps), int(max_iterations), d_theta, d_var,
                                     d_obj, d_it, d_conv)
        theta[a:b] = d_theta.copy_to_host()
        var[a:b] = d_var.copy_to_host()
        obj[a:b] = d_obj.copy_to_host()
        iterations[a:b] = d_it.copy_to_host()
        converged[a:b] = d_conv.copy_to_host()
    return theta, var, obj, iterations, converged.astype(bool)
