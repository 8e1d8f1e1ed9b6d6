"""z of astigmatic spots: Huang's D minimisation on the fitted widths, the astigmatic-PSF MLE on the pixels
(the engine's ``MODEL_ASTIG_Z``), the neighbours' light, and the axial precision ``lpz``.

``"huang"``
    minimise ``D(z) = (sqrt(sx) - sqrt(wx(z)))^2 + (sqrt(sy) - sqrt(wy(z)))^2`` over the fit range
    (a dense grid finds the global minimum, a golden-section search refines it), from the 2D fit's widths.
``"mle"``
    a Poisson maximum-likelihood fit of x, y, photons, bg and z directly to the pixels, with the widths tied
    to z by the calibration (:data:`napari_localize.core.engine.MODEL_ASTIG_Z`); its Cramér-Rao bound gives
    ``lpz``; started from the ``"huang"`` result and from its mirror height. The light of the frame's other
    localizations (their 2D fits) can be part of the model (``other``). ``z_gof`` is the standardised Poisson
    deviance of the fit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .engine import MODEL_ASTIG_Z, NOISE_POISSON, NOISE_SCMOS, astig_aux, default_bounds, fit_boxes
from .engine.models import poly
from .engine.noise import deviance_moments as _deviance_moments_jit
from .engine.pixels import add_gaussian
from .zcalib import ZCalibration

#: grid points of the global search over the fit range
_GRID_POINTS = 512
_NZ = 5  # x, y, photons, bg, z


@njit(cache=True, nogil=True)
def _distance(a, b, cx, cy, z):
    wx = poly(cx, 0, cx.shape[0], z)
    wy = poly(cy, 0, cy.shape[0], z)
    if wx <= 0.0 or wy <= 0.0:
        return np.inf
    return (a - math.sqrt(wx)) ** 2 + (b - math.sqrt(wy)) ** 2


def _shared(kernel, n, *args, serial_below=4096):
    """``kernel(a, b, *args)`` over ``[0, n)``: serial ``nogil`` kernels shared over threads (no parfor); fewer
    than ``serial_below`` items run on this thread."""
    from ._threading import run_kernel

    run_kernel(kernel, n, *args, pool_name="zfit", parallel=n >= serial_below)


@njit(cache=True, nogil=True)
def _fit_z_d(start, stop, sx, sy, cx, cy, grid, gx, gy, lo, hi, z_out, d_out):
    m = grid.shape[0]
    h = grid[1] - grid[0]
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    for i in range(start, stop):
        if not (sx[i] > 0.0 and sy[i] > 0.0):
            z_out[i] = np.nan
            d_out[i] = np.nan
            continue
        a = math.sqrt(sx[i])
        b = math.sqrt(sy[i])
        best = np.inf
        jb = -1
        for j in range(m):
            d = (a - gx[j]) ** 2 + (b - gy[j]) ** 2
            if d < best:
                best = d
                jb = j
        if jb < 0:
            z_out[i] = np.nan
            d_out[i] = np.nan
            continue
        # golden-section refinement within one grid step either side of the best grid point
        u = max(grid[jb] - h, lo)
        v = min(grid[jb] + h, hi)
        c = v - invphi * (v - u)
        e = u + invphi * (v - u)
        fc = _distance(a, b, cx, cy, c)
        fe = _distance(a, b, cx, cy, e)
        for _ in range(40):
            if fc < fe:
                v = e
                e = c
                fe = fc
                c = v - invphi * (v - u)
                fc = _distance(a, b, cx, cy, c)
            else:
                u = c
                c = e
                fc = fe
                e = u + invphi * (v - u)
                fe = _distance(a, b, cx, cy, e)
        z = 0.5 * (u + v)
        d = _distance(a, b, cx, cy, z)
        if d > best:
            z = grid[jb]
            d = best
        z_out[i] = z
        d_out[i] = d


def _grid(cx, cy, lo, hi):
    grid = np.linspace(lo, hi, _GRID_POINTS)
    wx = np.polyval(cx, grid)
    wy = np.polyval(cy, grid)
    with np.errstate(invalid="ignore"):
        gx = np.where(wx > 0, np.sqrt(np.abs(wx)), np.inf)
        gy = np.where(wy > 0, np.sqrt(np.abs(wy)), np.inf)
    return grid, gx, gy


def fit_z_huang(sx, sy, cx, cy, lo, hi):
    """Calibration heights (nm) minimising Huang's D over ``[lo, hi]``; returns ``(z, D)``.

    A grid of 512 heights finds the global minimum (so several local minima cannot trap it), a
    golden-section search refines it. Widths <= 0 or non-finite give NaN.
    """
    sx = np.ascontiguousarray(sx, float)
    sy = np.ascontiguousarray(sy, float)
    cx = np.ascontiguousarray(cx, float)
    cy = np.ascontiguousarray(cy, float)
    z = np.empty(len(sx))
    d = np.empty(len(sx))
    if len(sx):
        grid, gx, gy = _grid(cx, cy, float(lo), float(hi))
        _shared(_fit_z_d, len(sx), sx, sy, cx, cy, grid, gx, gy, float(lo), float(hi), z, d)
    return z, d


# ------------------------------------------------------------------------------------------ lpz
def width_se_nm(sigma, photons, bg, pixelsize, other_sigma=None, sigma_unc=None, method="mle"):
    """Standard error of a fitted width (nm) (Kowalewski, Reinhardt et al. 2026, as in Picasso).

    MLE: ``sigma_unc`` (pixels, the CRLB) if given, else Rieger & Stallinga's approximation; LQ/avg:
    Mortensen-style least-squares formula. Inputs in pixels and photons.
    """
    sigma = np.asarray(sigma, float)
    N = np.maximum(np.asarray(photons, float), 1e-9)
    b = np.maximum(np.asarray(bg, float), 0.0)
    sa2 = sigma**2 + 1.0 / 12.0
    if method == "mle":
        if sigma_unc is not None:
            return np.asarray(sigma_unc, float) * pixelsize
        tau = 2 * np.pi * sa2 * b / N
        se2 = sigma**2 / (4 * N) * (1 + 8 * tau + np.sqrt(8 * tau / (1 + 2 * tau)))
        return np.sqrt(se2) * pixelsize
    other = sigma if other_sigma is None else np.asarray(other_sigma, float)
    sa = np.sqrt(sa2)
    sa_o = np.sqrt(other**2 + 1.0 / 12.0)
    se2 = (sa2**2 / N * (512 / 81 + 64 * np.pi * sa * sa_o * b / (3 * N))) / (4 * sigma**2)
    return np.sqrt(se2) * pixelsize


def axial_precision(z_cal, sx, sy, se_x_nm, se_y_nm, cal: ZCalibration, pixelsize):
    """lpz (nm) from the width standard errors and the calibration's slopes at ``z_cal`` (calibration nm)."""
    M = cal.magnification_factor
    with np.errstate(invalid="ignore", divide="ignore"):
        wx = np.polyval(cal.x_coefficients, z_cal) * pixelsize
        wy = np.polyval(cal.y_coefficients, z_cal) * pixelsize
        dwx = np.polyval(np.polyder(cal.x_coefficients), z_cal) * pixelsize
        dwy = np.polyval(np.polyder(cal.y_coefficients), z_cal) * pixelsize
        ax = dwx / (2 * np.sqrt(wx))
        ay = dwy / (2 * np.sqrt(wy))
        dx = se_x_nm / (2 * np.sqrt(np.asarray(sx, float) * pixelsize))
        dy = se_y_nm / (2 * np.sqrt(np.asarray(sy, float) * pixelsize))
        return M * np.sqrt((ax**2 * dx**2 + ay**2 * dy**2) / (ax**2 + ay**2) ** 2)


def _d_at(sx, sy, cal, z):
    """Huang's D of widths ``sx, sy`` at calibration heights ``z``."""
    wx, wy = cal.widths(z)
    with np.errstate(invalid="ignore"):
        return (np.sqrt(sx) - np.sqrt(wx)) ** 2 + (np.sqrt(sy) - np.sqrt(wy)) ** 2


# ------------------------------------------------------------------------------------------ neighbours' light
@njit(cache=True, nogil=True)
def _neighbour_light(g0, g1, starts, order, x, y, photons, sx, sy, bx, by, box, out):
    # frames g0..g1-1 of the frame groups (starts)
    r = box // 2
    for g in range(g0, g1):
        ex = np.empty(box)
        ey = np.empty(box)
        for a in range(starts[g], starts[g + 1]):
            i = order[a]
            for c in range(starts[g], starts[g + 1]):
                j = order[c]
                if j == i:
                    continue
                reach = r + 0.5 + 5.0 * max(sx[j], sy[j])
                if abs(x[j] - bx[i]) > reach or abs(y[j] - by[i]) > reach:
                    continue
                add_gaussian(out[i], x[j] - bx[i] + r, y[j] - by[i] + r, photons[j], sx[j], sy[j], 0, box, 0, box,
                             ex, ey)


def neighbour_light(frame, x, y, photons, sx, sy, bx, by, box_size: int):
    """Expected photons of the other localizations of the same frame in each box: ``(n, box, box)``.

    ``x, y`` (pixels), ``photons``, ``sx, sy`` (pixels) are the 2D fits; ``bx, by`` the integer box centres.
    The z MLE adds this light to its model, so a neighbour's tail does not widen the spot it fits.
    """
    n = len(x)
    out = np.zeros((n, box_size, box_size))
    if n == 0:
        return out
    frame = np.asarray(frame, np.int64)
    order = np.argsort(frame, kind="stable")
    fs = frame[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(fs))[0] + 1, [n]]).astype(np.int64)
    f64 = [np.ascontiguousarray(v, float) for v in (x, y, photons, sx, sy, bx, by)]
    _shared(_neighbour_light, len(starts) - 1, starts, order.astype(np.int64), *f64, int(box_size), out,
            serial_below=64)  # per frame
    return out


@njit(cache=True, nogil=True)
def _deviance_moments(mu):
    """Mean and variance of one pixel's Poisson deviance for ``x ~ Poisson(mu)`` (the engine's, for tests)."""
    return _deviance_moments_jit(mu)


# ------------------------------------------------------------------------------------------ astigmatic MLE
def fit_z_mle(spots, x0, y0, photons0, bg0, z0, cal: ZCalibration, max_iterations: int = 100,
              z_bounds: tuple[float, float] | None = None, extra=None, eps: float = 1e-3, device: str = "cpu",
              variance=None):
    """Astigmatic-PSF Poisson MLE of ``(x, y, photons, bg, z)`` for a stack of photon boxes (the engine); with
    per-pixel readout ``variance`` boxes (photons², sCMOS) the likelihood of Huang et al. 2013.

    Parameters
    ----------
    spots : (n, box, box) photons
    x0, y0 : starting positions in box coordinates (pixels; centre pixel = box // 2)
    photons0, bg0 : starting photons and bg (photons per pixel)
    z0 : starting calibration heights (nm), e.g. from :func:`fit_z_huang`; a second start at the mirror
        height ``-z0`` guards the wrong branch of the nearly symmetric widths (the better likelihood wins)
    cal : ZCalibration
    z_bounds : (lo, hi) or None
        Heights (calibration nm) z is kept in; the calibrated range if None (see :func:`fit_range`).
    extra : (n, box, box) photons or None
        Known light added to each model and not fitted (neighbouring spots, :func:`neighbour_light`).
    eps, max_iterations : convergence tolerance and iteration limit of the engine (the 2D fit's).

    Returns
    -------
    theta : (n, 5) fitted x, y (box pixels), photons, bg, z (calibration nm)
    crlb : (n, 5) Cramér-Rao variances of the same
    converged : (n,) bool
    gof : (n,) standardised Poisson deviance of each fit (about N(0, 1) for a box that holds just the model)
    """
    spots = np.ascontiguousarray(spots, np.float32)
    n = len(spots)
    theta = np.column_stack([x0, y0, photons0, bg0, z0]).astype(float) if n else np.zeros((0, _NZ))
    theta = np.ascontiguousarray(theta)
    theta[~np.isfinite(theta[:, 4]), 4] = 0.0
    if n == 0:
        return theta, np.full((0, _NZ), np.nan), np.zeros(0, bool), np.zeros(0)
    if extra is not None:
        extra = np.asarray(extra, float)
        if extra.shape != spots.shape:
            raise ValueError(f"fit_z_mle: extra light must have the shape of the spots {spots.shape}, got "
                             f"{extra.shape}")
    lo, hi = cal.z_range if z_bounds is None else z_bounds
    box = spots.shape[-1]
    aux = astig_aux(cal.x_coefficients, cal.y_coefficients)
    bounds = default_bounds(MODEL_ASTIG_Z, box, (lo, hi))

    if variance is not None:
        variance = np.asarray(variance, float)
        if variance.shape != spots.shape:
            raise ValueError(f"fit_z_mle: the variance boxes must have the shape of the spots {spots.shape}, got "
                             f"{variance.shape}")
    noise = NOISE_POISSON if variance is None else NOISE_SCMOS

    def run(sel, start):
        return fit_boxes(spots[sel], MODEL_ASTIG_Z, noise, theta0=start, aux=aux, bounds=bounds,
                         other=None if extra is None else extra[sel], eps=eps, max_iterations=max_iterations,
                         gof=True, device=device, variance=None if variance is None else variance[sel])

    everything = np.ones(n, bool)
    best = run(everything, theta)
    mirror = theta.copy()
    mirror[:, 4] = np.clip(-theta[:, 4], lo, hi)
    second = np.abs(mirror[:, 4] - theta[:, 4]) > 0.05 * (hi - lo)
    if second.any():
        alt = run(second, mirror[second])
        idx = np.nonzero(second)[0]
        win = alt.objective > best.objective[idx]
        w = idx[win]
        best.theta[w] = alt.theta[win]
        best.crlb[w] = alt.crlb[win]
        best.converged[w] = alt.converged[win]
        best.gof[w] = alt.gof[win]
    return best.theta, best.crlb, best.converged, best.gof
