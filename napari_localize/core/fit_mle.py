"""Poisson maximum-likelihood fit of the pixel-integrated Gaussian (Smith et al., Nat. Methods 7, 373 (2010)).

Free parameters x, y, photons, bg, sx, sy. Uncertainties are the Cramér-Rao lower bound from the Fisher
information at the fitted parameters. With EM gain the excess-noise factor 2 (Mortensen et al.,
Nat. Methods 7, 377 (2010)) doubles the variances; Picasso does this for LQ but not for MLE.
"""

from __future__ import annotations

import numpy as np

from .device import fit_spots
from .psf import IB, IN, ISX, ISY, IX, IY, MODE_POISSON


def fit_mle(spots, convergence=0.001, max_iterations=100, em=False, device=None, variance=None):
    """Fit ``(n, box, box)`` photon spots; return a dict of per-spot columns.

    Positions ``dx``, ``dy`` are relative to the box centre pixel (pixels). Also returns photons, bg
    (photons per pixel), sx, sy (pixels), lpx, lpy (pixels), photons_unc, bg_unc, sx_unc, sy_unc,
    log_likelihood, iterations and converged. ``device`` is ``"cpu"``, ``"cuda"`` or None (chosen by
    :func:`napari_localize.core.device.select_device`). ``variance``: per-pixel readout-variance boxes
    (photons², sCMOS): the likelihood and the CRLB become those of Huang et al. (2013).
    """
    spots = np.asarray(spots)
    box = spots.shape[-1]
    r = box // 2
    theta, var, ll, iterations, converged = fit_spots(spots, MODE_POISSON, convergence, max_iterations, device,
                                                       variance)
    if em:
        var = var * 2.0
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(np.where(var > 0, var, np.nan))
    return {
        "dx": theta[:, IX] - r,
        "dy": theta[:, IY] - r,
        "photons": theta[:, IN],
        "bg": theta[:, IB],
        "sx": theta[:, ISX],
        "sy": theta[:, ISY],
        "lpx": sd[:, IX],
        "lpy": sd[:, IY],
        "photons_unc": sd[:, IN],
        "bg_unc": sd[:, IB],
        "sx_unc": sd[:, ISX],
        "sy_unc": sd[:, ISY],
        "log_likelihood": ll,
        "iterations": iterations,
        "converged": converged,
    }
