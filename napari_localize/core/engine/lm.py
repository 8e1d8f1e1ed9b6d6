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
    _DEX,
    _DEY,
    _DSX,
    _DSY,
    _EX,
    _EY,
    _SCAL,
    IB,
    IN,
    ISX,
    ISY,
    IX,
    IY,
    IZ,
    MODEL_ASTIG_Z,
    MODEL_GAUSS,
    MODEL_GAUSS_FIXED,
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
from .noise import NOISE_LSQ, NOISE_POISSON, NOISE_SCMOS, deviance_moments, gradient_weights, objective_term

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
def _profile_sums(scratch, row, box):
    # sums over a box axis of the products of a Gaussian's 1D profiles: the pixel integrals (scratch row
    # ``row``), their derivatives by the centre (row + 1) and by the width (row + 2), and 1
    s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = 0.0
    for m in range(box):
        a = scratch[row, m]
        d = scratch[row + 1, m]
        w = scratch[row + 2, m]
        s00 += a * a
        s01 += a * d
        s02 += a * w
        s03 += a
        s11 += d * d
        s12 += d * w
        s13 += d
        s22 += w * w
        s23 += w
    return s00, s01, s02, s03, s11, s12, s13, s22, s23


@register_jitable
def _separable_normal_equations(data, other, i, box, theta, scratch, g, F, n):
    """:func:`normal_equations` of least squares (weight 1) and one Gaussian (``MODEL_GAUSS``, n = 6, or
    ``MODEL_GAUSS_FIXED``, n = 4). Every column of the Jacobian is a coefficient (N or 1) times a profile along
    x times a profile along y (the pixel integrals ``ex``, ``ey``, their derivatives by centre and width, or 1),
    so each entry of ``F = J^T J`` is a product of two 1D sums, and ``g = J^T r`` needs only the residual's
    row sums with the x profiles: ~1/4 of the per-pixel accumulation's work, the same numbers to rounding."""
    N = theta[IN]
    b = theta[IB]
    has_other = other.shape[0] > 0
    gx = gy = gn = gb = gsx = gsy = 0.0
    p = 0
    for k in range(box):
        ey = scratch[_EY, k]
        t0 = t1 = t2 = t3 = 0.0
        for m in range(box):
            ex = scratch[_EX, m]
            r = float(data[i, p]) - (N * ex * ey + b)
            if has_other:
                r -= other[i, p]
            t0 += ex * r
            t1 += scratch[_DEX, m] * r
            t2 += scratch[_DSX, m] * r
            t3 += r
            p += 1
        gx += ey * t1
        gy += scratch[_DEY, k] * t0
        gn += ey * t0
        gb += t3
        gsx += ey * t2
        gsy += scratch[_DSY, k] * t0
    X00, X01, X02, X03, X11, X12, X13, X22, X23 = _profile_sums(scratch, _EX, box)
    Y00, Y01, Y02, Y03, Y11, Y12, Y13, Y22, Y23 = _profile_sums(scratch, _EY, box)
    N2 = N * N
    g[IX] = N * gx
    g[IY] = N * gy
    g[IN] = gn
    g[IB] = gb
    F[IX, IX] = N2 * X11 * Y00
    F[IY, IX] = N2 * X01 * Y01
    F[IY, IY] = N2 * X00 * Y11
    F[IN, IX] = N * X01 * Y00
    F[IN, IY] = N * X00 * Y01
    F[IN, IN] = X00 * Y00
    F[IB, IX] = N * X13 * Y03
    F[IB, IY] = N * X03 * Y13
    F[IB, IN] = X03 * Y03
    F[IB, IB] = float(box * box)
    if n == 6:
        g[ISX] = N * gsx
        g[ISY] = N * gsy
        F[ISX, IX] = N2 * X12 * Y00
        F[ISX, IY] = N2 * X02 * Y01
        F[ISX, IN] = N * X02 * Y00
        F[ISX, IB] = N * X23 * Y03
        F[ISX, ISX] = N2 * X22 * Y00
        F[ISY, IX] = N2 * X01 * Y02
        F[ISY, IY] = N2 * X00 * Y12
        F[ISY, IN] = N * X00 * Y02
        F[ISY, IB] = N * X03 * Y23
        F[ISY, ISX] = N2 * X02 * Y02
        F[ISY, ISY] = N2 * X00 * Y22
    for a in range(n):
        for c in range(a):
            F[c, a] = F[a, c]


@register_jitable
def _weighted_separable_normal_equations(noise, data, var, other, i, box, theta, scratch, g, F):
    """:func:`normal_equations` of one Gaussian with free widths (``MODEL_GAUSS``, n = 6) for a noise model
    with a weight per pixel (the likelihoods, weighted least squares). Column ``a`` of the Jacobian is
    ``c_a u_a(m) v_a(k)``: a coefficient (N or 1), a profile along x and one along y (the pixel integrals, their
    derivatives by centre and width, or 1), so ``F_ab = c_a c_b sum_k v_a(k) v_b(k) R_ab(k)`` with the row sums
    ``R_ab(k) = sum_m w_km u_a(m) u_b(m)``: ten row sums of the four x profiles' products per pixel instead of
    the 27 multiply-adds of the per-pixel accumulation, and the same numbers to rounding."""
    N = theta[IN]
    b = theta[IB]
    has_other = other.shape[0] > 0
    gx = gy = gn = gb = gsx = gsy = 0.0
    fxx = fyx = fyy = fnx = fny = fnn = fbx = fby = fbn = fbb = 0.0
    fsx_x = fsx_y = fsx_n = fsx_b = fsx_sx = fsy_x = fsy_y = fsy_n = fsy_b = fsy_sx = fsy_sy = 0.0
    p = 0
    for k in range(box):
        ey = scratch[_EY, k]
        dey = scratch[_DEY, k]
        dsy = scratch[_DSY, k]
        # x profiles: 0 the pixel integrals, 1 their derivative by x, 2 by sx, 3 one
        t0 = t1 = t2 = t3 = 0.0
        r00 = r01 = r02 = r03 = r11 = r12 = r13 = r22 = r23 = r33 = 0.0
        for m in range(box):
            ex = scratch[_EX, m]
            dex = scratch[_DEX, m]
            dsx = scratch[_DSX, m]
            mu = N * ex * ey + b
            if has_other:
                mu += other[i, p]
            r, w = gradient_weights(noise, data[i, p], mu, variance(var, i, p))
            t0 += ex * r
            t1 += dex * r
            t2 += dsx * r
            t3 += r
            wa = w * ex
            wd = w * dex
            ws = w * dsx
            r00 += wa * ex
            r01 += wa * dex
            r02 += wa * dsx
            r03 += wa
            r11 += wd * dex
            r12 += wd * dsx
            r13 += wd
            r22 += ws * dsx
            r23 += ws
            r33 += w
            p += 1
        gx += ey * t1
        gy += dey * t0
        gn += ey * t0
        gb += t3
        gsx += ey * t2
        gsy += dsy * t0
        # columns (x profile, y profile): x (1, ey), y (0, dey), N (0, ey), bg (3, 1), sx (2, ey), sy (0, dsy)
        ee = ey * ey
        ed = ey * dey
        es = ey * dsy
        fxx += ee * r11
        fyx += ed * r01
        fyy += dey * dey * r00
        fnx += ee * r01
        fny += ed * r00
        fnn += ee * r00
        fbx += ey * r13
        fby += dey * r03
        fbn += ey * r03
        fbb += r33
        fsx_x += ee * r12
        fsx_y += ed * r02
        fsx_n += ee * r02
        fsx_b += ey * r23
        fsx_sx += ee * r22
        fsy_x += es * r01
        fsy_y += dey * dsy * r00
        fsy_n += es * r00
        fsy_b += dsy * r03
        fsy_sx += es * r02
        fsy_sy += dsy * dsy * r00
    N2 = N * N
    g[IX] = N * gx
    g[IY] = N * gy
    g[IN] = gn
    g[IB] = gb
    g[ISX] = N * gsx
    g[ISY] = N * gsy
    F[IX, IX] = N2 * fxx
    F[IY, IX] = N2 * fyx
    F[IY, IY] = N2 * fyy
    F[IN, IX] = N * fnx
    F[IN, IY] = N * fny
    F[IN, IN] = fnn
    F[IB, IX] = N * fbx
    F[IB, IY] = N * fby
    F[IB, IN] = fbn
    F[IB, IB] = fbb
    F[ISX, IX] = N2 * fsx_x
    F[ISX, IY] = N2 * fsx_y
    F[ISX, IN] = N * fsx_n
    F[ISX, IB] = N * fsx_b
    F[ISX, ISX] = N2 * fsx_sx
    F[ISY, IX] = N2 * fsy_x
    F[ISY, IY] = N2 * fsy_y
    F[ISY, IN] = N * fsy_n
    F[ISY, IB] = N * fsy_b
    F[ISY, ISX] = N2 * fsy_sx
    F[ISY, ISY] = N2 * fsy_sy
    for a in range(6):
        for c in range(a):
            F[c, a] = F[a, c]


@register_jitable
def _widths_to_z(scratch, g, F):
    """Turn the free-width Gaussian's ``g`` and ``F`` (n = 6) into the astigmatic model's (n = 5: x, y, N, bg, z):
    its z column of the Jacobian is ``a J_sx + c J_sy`` with ``a = dwx/dz``, ``c = dwy/dz`` (``prepare``'s
    ``_SCAL`` row), so ``g_z = a g_sx + c g_sy`` and ``F`` contracts the same way (``IZ`` is ``ISX``'s slot)."""
    a = scratch[_SCAL, 0]
    c = scratch[_SCAL, 1]
    gz = a * g[ISX] + c * g[ISY]
    fzz = a * a * F[ISX, ISX] + 2.0 * a * c * F[ISY, ISX] + c * c * F[ISY, ISY]
    for j in range(4):
        fz = a * F[ISX, j] + c * F[ISY, j]
        F[IZ, j] = fz
        F[j, IZ] = fz
    g[IZ] = gz
    F[IZ, IZ] = fzz


@register_jitable
def normal_equations(model, noise, data, var, other, i, box, aux, theta, scratch, jrow, g, F, n):
    """Gradient ``g`` and curvature ``F`` (n x n) of the objective of box ``i`` at ``theta``."""
    # if / else, not an early return: a specialised twin then keeps only one of the two (the switches fold)
    if noise == NOISE_LSQ and (model == MODEL_GAUSS or model == MODEL_GAUSS_FIXED):
        _separable_normal_equations(data, other, i, box, theta, scratch, g, F, n)
    elif model == MODEL_GAUSS:
        _weighted_separable_normal_equations(noise, data, var, other, i, box, theta, scratch, g, F)
    elif model == MODEL_ASTIG_Z:
        # the free-width Gaussian's sums at the calibration's widths, contracted to z
        if noise == NOISE_LSQ:
            _separable_normal_equations(data, other, i, box, theta, scratch, g, F, 6)
        else:
            _weighted_separable_normal_equations(noise, data, var, other, i, box, theta, scratch, g, F)
        _widths_to_z(scratch, g, F)
    else:
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

    With ``F = L L^T`` (Cholesky), ``F^-1 = L^-T L^-1``, so ``(F^-1)_jj = |L^-1 e_j|^2``: one factorisation and
    one forward substitution per unit vector, starting at its own row, with the reciprocals of L's diagonal
    computed once (no back substitution, no division per element; a sum of squares, so never negative).
    The same numbers to rounding as a full solve per unit vector, about a third of its time (6 x 6: 0.28
    against 0.76 us, measured in a loop). The factor comes from :func:`cholesky_solve` (its solve of a zero
    vector is the cheap part) rather than a factorisation function of its own: one more function to compile
    in every fit kernel (a factor / substitute split cost ~0.5 s of first compile for two)."""
    for a in range(n):
        e[a] = 0.0
    if not cholesky_solve(F, e, L, col, n):
        for a in range(n):
            out[i, a] = math.nan
        return
    for a in range(n):
        e[a] = 1.0 / L[a, a]
    for j in range(n):
        # column j of L^-1 (zero above row j) into col[j:n], its squared norm into out
        w = e[j]
        col[j] = w
        s2 = w * w
        for r in range(j + 1, n):
            s = 0.0
            for k in range(j, r):
                s += L[r, k] * col[k]
            w = -s * e[r]
            col[r] = w
            s2 += w * w
        out[i, j] = s2


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
    diagonal (CRLB) to ``var_out[i]``; a ``var_out`` of no rows asks for none (the curvature at the optimum
    is then not computed). Returns ``(objective, iterations, converged, gof)``; gof is NaN unless
    ``want_gof``, the model is a 3D one (astigmatic or spline) and the noise model is a likelihood.
    """
    n = n_params(model, aux)
    if guess:
        initial_guess(model, data, i, box, aux, theta)
    want_crlb = var_out.shape[0] > 0
    if not prepare(model, theta, box, aux, scratch):
        if want_crlb:
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
    if want_crlb:
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

