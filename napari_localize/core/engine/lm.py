"""The Levenberg-Marquardt / Newton iteration shared by every PSF model, noise model and device.

Every step must not decrease the objective (a rejected step raises the damping), so the iteration cannot run
away as per-parameter Newton steps can. Written once as ``register_jitable`` functions that allocate nothing:
the drivers (``cpu.py``, ``cuda.py``) pass the workspace in. Boxes are rows of 2D arrays (``data[i, p]``,
pixel p = k * box + m), so no function needs an array view (the CUDA target).
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

from .models import (
    MODEL_ASTIG_Z,
    MODEL_SPLINE_2D,
    MODEL_SPLINE_Z,
    _hi,
    _lo,
    initial_guess,
    n_params,
    pixel,
    prepare,
    tolerance,
    valid,
)
from .noise import NOISE_POISSON, NOISE_SCMOS, deviance_moments, gradient_weights, objective_term

#: initial, smallest damping and the damping at which the search for an improving step gives up
LAMBDA_START = 1e-3
LAMBDA_MIN = 1e-9
LAMBDA_MAX = 1e12


@register_jitable
def expected(model, theta, k, m, p, aux, scratch, jrow, with_jac, other, i):
    """Expected photons of pixel (k, m) (p = k * box + m) of box i: the model plus the fixed other light."""
    mu = pixel(model, theta, k, m, aux, scratch, jrow, with_jac)
    if other.shape[0] > 0:
        mu += other[i, p]
    return mu


@register_jitable
def variance(var, i, p):
    """The variance term of pixel p of box i (0 without a variance box)."""
    return var[i, p] if var.shape[0] > 0 else 0.0


@register_jitable
def objective(model, noise, data, var, other, i, box, aux, theta, scratch, jrow):
    """The objective of box ``i`` at ``theta`` (``prepare`` done at theta)."""
    s = 0.0
    p = 0
    for k in range(box):
        for m in range(box):
            mu = expected(model, theta, k, m, p, aux, scratch, jrow, False, other, i)
            s += objective_term(noise, data[i, p], mu, variance(var, i, p))
            p += 1
    return s


@register_jitable
def _accumulate(g, F, jrow, r, w, n):
    # g += r J, lower triangle of F += w J J^T; the usual sizes spelled out so the loops unroll
    if n == 6:
        for a in range(6):
            ja = jrow[a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * jrow[c]
    elif n == 5:
        for a in range(5):
            ja = jrow[a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * jrow[c]
    elif n == 4:
        for a in range(4):
            ja = jrow[a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * jrow[c]
    else:
        for a in range(n):
            ja = jrow[a]
            g[a] += r * ja
            wja = w * ja
            for c in range(a + 1):
                F[a, c] += wja * jrow[c]


@register_jitable
def normal_equations(model, noise, data, var, other, i, box, aux, theta, scratch, jrow, g, F, n):
    """Gradient ``g`` and curvature ``F`` (n x n) of the objective of box ``i`` at ``theta``."""
    for a in range(n):
        g[a] = 0.0
        for c in range(n):
            F[a, c] = 0.0
    p = 0
    for k in range(box):
        for m in range(box):
            mu = expected(model, theta, k, m, p, aux, scratch, jrow, True, other, i)
            r, w = gradient_weights(noise, data[i, p], mu, variance(var, i, p))
            _accumulate(g, F, jrow, r, w, n)
            p += 1
    for a in range(n):
        for c in range(a):
            F[c, a] = F[a, c]


@register_jitable
def cholesky_solve(A, rhs, L, out, n, factored=False):
    """Solve ``A out = rhs`` for the symmetric positive-definite top-left n x n of A; False if it is not.
    ``factored``: ``L`` already holds A's factor (an earlier solve with the same A): only substitute."""
    if not factored:
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


@register_jitable
def inverse_diagonal(F, L, e, col, n, out, i):
    """``out[i, :n]`` = diagonal of F^-1 (the CRLB when F is the Fisher matrix); NaN if F is singular.

    F is factored once (the first unit vector's solve) and each further unit vector only substituted: the
    same numbers as a full solve per vector, a sixth of the work for a 6 x 6 F (the MLE fit: -9 %). A flag of
    the one solve function rather than separate factor and substitute functions: two more functions cost
    ~0.5 s of every fit kernel's first compile."""
    for j in range(n):
        for a in range(n):
            e[a] = 0.0
        e[j] = 1.0
        if not cholesky_solve(F, e, L, col, n, j > 0):
            for a in range(n):
                out[i, a] = math.nan
            return
        out[i, j] = col[j]


@register_jitable
def goodness_of_fit(model, noise, var, other, i, box, aux, theta, scratch, jrow, loglik, n):
    """Standardised Poisson deviance ``(D - E[D]) / sd(D)`` of a fit, ``D = -2 loglik``: about N(0, 1) when the
    box holds just the model (``E[D]`` and ``var(D)`` summed over pixels, minus n fitted parameters)."""
    e = 0.0
    s2 = 0.0
    p = 0
    for k in range(box):
        for m in range(box):
            mu = expected(model, theta, k, m, p, aux, scratch, jrow, False, other, i)
            if noise == NOISE_SCMOS:
                mu += variance(var, i, p)
            a, b = deviance_moments(mu)
            e += a
            s2 += b
            p += 1
    return (-2.0 * loglik - (e - n)) / math.sqrt(s2)


@register_jitable
def fit_box(model, noise, data, var, other, i, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
            theta, trial, g, delta, jrow, e, col, F, A, L, scratch, var_out):
    """Fit box ``i`` of ``data`` (photons, ``(n_boxes, box*box)``) in place of ``theta``.

    ``var``/``other``: ``(n_boxes, box*box)`` variance (sCMOS) and fixed other light, or ``(0, .)`` for none.
    ``guess``: start from the model's initial guess instead of ``theta``. Writes the inverse curvature
    diagonal (CRLB) to ``var_out[i]``. Returns ``(objective, iterations, converged, gof)``; gof is NaN unless
    ``want_gof``, the model is a 3D one (astigmatic or spline) and the noise model is a likelihood.
    """
    n = n_params(model, aux)
    if guess:
        initial_guess(model, data, i, box, aux, theta)
    if not prepare(model, theta, box, aux, scratch):
        for a in range(n):
            var_out[i, a] = math.nan
        return -math.inf, 0, False, math.nan
    obj = objective(model, noise, data, var, other, i, box, aux, theta, scratch, jrow)
    lam = LAMBDA_START
    converged = False
    iterations = 0
    for it in range(max_iterations):
        iterations = it + 1
        normal_equations(model, noise, data, var, other, i, box, aux, theta, scratch, jrow, g, F, n)
        accepted = False
        obj_try = obj
        while lam < LAMBDA_MAX:
            for a in range(n):
                for c in range(n):
                    A[a, c] = F[a, c]
                A[a, a] = F[a, a] * (1.0 + lam) + 1e-12
            if cholesky_solve(A, g, L, delta, n):
                for a in range(n):
                    trial[a] = _lo(_hi(theta[a] + delta[a], lo[a]), hi[a])
                if prepare(model, trial, box, aux, scratch):
                    obj_try = objective(model, noise, data, var, other, i, box, aux, trial, scratch, jrow)
                    if obj_try >= obj - 1e-12 * abs(obj):
                        accepted = True
                        break
            lam *= 10.0
        if not accepted:
            # no damping gives an improving step: theta is the optimum (scratch back to theta)
            prepare(model, theta, box, aux, scratch)
            converged = True
            break
        small = True
        for a in range(n):
            if not abs(trial[a] - theta[a]) < tolerance(model, a, theta, eps):
                small = False
        for a in range(n):
            theta[a] = trial[a]
        obj = obj_try
        lam = _hi(lam * 0.1, LAMBDA_MIN)
        if small:
            converged = True
            break
    # scratch holds theta's set-up in every branch
    normal_equations(model, noise, data, var, other, i, box, aux, theta, scratch, jrow, g, F, n)
    inverse_diagonal(F, L, e, col, n, var_out, i)
    if not valid(model, theta, box, aux):
        converged = False
    gof = math.nan
    # the 3D models' z-fit quality (--z-max-gof); a 2D model reports NaN: its kernels then never compile it
    if want_gof and (model == MODEL_ASTIG_Z or model == MODEL_SPLINE_Z or model == MODEL_SPLINE_2D) and (
            noise == NOISE_POISSON or noise == NOISE_SCMOS):
        gof = goodness_of_fit(model, noise, var, other, i, box, aux, theta, scratch, jrow, obj, n)
    return obj, iterations, converged, gof

