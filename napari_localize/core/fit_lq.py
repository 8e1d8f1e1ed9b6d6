"""Least-squares fit of the pixel-integrated Gaussian, with Mortensen precision.

Unlike Picasso's LQ (a Gaussian sampled at pixel centres, whose fitted width is biased to
sqrt(sigma^2 + 1/12)), the model here is integrated over each pixel, so sx and sy estimate the PSF's
standard deviation directly, the same quantity the MLE reports. The precision is Mortensen et al.,
Nat. Methods 7, 377 (2010), eq. 6, with pixel size 1 and anisotropic widths as in Picasso:

    sa^2 = s^2 + 1/12,  Var = sa^2 / N * (16/9 + 8 pi sa sa_perp b / N),  doubled with EM gain.
"""

from __future__ import annotations

import numpy as np

from .device import fit_spots
from .psf import IB, IN, ISX, ISY, IX, IY, MODE_LSQ


def mortensen_precision(photons, bg, s, s_perp, em=False):
    """Localization precision (pixels) along the axis of width ``s``; NaN where undefined."""
    sa2 = np.asarray(s, float) ** 2 + 1.0 / 12.0
    sa2_perp = np.asarray(s_perp, float) ** 2 + 1.0 / 12.0
    with np.errstate(invalid="ignore", divide="ignore"):
        var = sa2 / photons * (16.0 / 9.0 + 8.0 * np.pi * np.sqrt(sa2 * sa2_perp) * bg / photons)
        if em:
            var = 2.0 * var
        return np.sqrt(np.where(var > 0, var, np.nan))


def fit_lq(spots, convergence=0.001, max_iterations=100, em=False, device=None, variance=None):
    """Fit ``(n, box, box)`` photon spots by least squares; return a dict of per-spot columns.

    ``device`` is ``"cpu"``, ``"cuda"`` or None (chosen by :func:`napari_localize.core.device.select_device`).
    ``variance``: per-pixel readout-variance boxes (photons², sCMOS): each pixel is weighted by the inverse of
    its data plus readout variance, and the box's mean readout variance enters the precision as background
    variance (Mortensen's ``b``), as for a camera with read noise.
    """
    spots = np.asarray(spots)
    box = spots.shape[-1]
    r = box // 2
    # the precision is Mortensen's formula: no curvature at the optimum needed
    theta, _, obj, iterations, converged = fit_spots(spots, MODE_LSQ, convergence, max_iterations, device,
                                                     variance, crlb=False)
    photons = theta[:, IN]
    bg = theta[:, IB]
    sx = theta[:, ISX]
    sy = theta[:, ISY]
    noise_bg = bg if variance is None else bg + np.asarray(variance, float).reshape(len(bg), -1).mean(axis=1)
    return {
        "dx": theta[:, IX] - r,
        "dy": theta[:, IY] - r,
        "photons": photons,
        "bg": bg,
        "sx": sx,
        "sy": sy,
        "lpx": mortensen_precision(photons, noise_bg, sx, sy, em),
        "lpy": mortensen_precision(photons, noise_bg, sy, sx, em),
        "residual_sum_squares": -2.0 * obj,
        "iterations": iterations,
        "converged": converged,
    }
