"""The 2D Gaussian fit (free widths) on the engine: the MLE and LQ methods' common call, and its CRLB.

Model of the expected photons in pixel (row k, column m) of a box, pixel centres at integer box coordinates
0 .. box-1 (Smith et al., Nat. Methods 7, 373 (2010)): ``mu[k, m] = N Ex[m] Ey[k] + b`` with the pixel
integrals of :mod:`napari_localize.core.engine.pixels`. Parameters ``theta = (x, y, N, b, sx, sy)``. The fit
itself (Levenberg-Marquardt on the Poisson likelihood or the squared residuals) is
:func:`napari_localize.core.engine.fit_boxes`; this module fixes the model and keeps the historic tuple
return of :func:`fit_spots`.
"""

from __future__ import annotations

import numpy as np

from .engine import (
    IB,
    IN,
    ISX,
    ISY,
    IX,
    IY,
    MODEL_GAUSS,
    NOISE_LSQ,
    NOISE_POISSON,
    NOISE_SCMOS,
    NOISE_WLSQ,
    SIGMA_MIN,
    curvature,
    fit_boxes,
)

N_PARAMS = 6
MODE_POISSON = NOISE_POISSON
MODE_LSQ = NOISE_LSQ

__all__ = ["N_PARAMS", "IX", "IY", "IN", "IB", "ISX", "ISY", "MODE_POISSON", "MODE_LSQ", "SIGMA_MIN",
           "fit_spots", "fisher_information", "crlb"]


def fit_spots(spots, mode, eps, max_iterations, device: str = "cpu", batch_spots: int | None = None,
              variance=None, crlb: bool = True):
    """Fit every spot of a ``(n, box, box)`` stack (photons) with the free-width integrated Gaussian.

    Returns ``theta`` (n, 6) in box coordinates, the diagonal of the inverse curvature (n, 6), the final
    objective (n), iteration counts (n) and convergence flags (n). ``mode``: :data:`MODE_POISSON` or
    :data:`MODE_LSQ`. ``variance``: per-pixel readout-variance boxes (photons², sCMOS): the Poisson mode
    becomes the sCMOS likelihood of Huang et al. (2013) (its CRLB in the second return), least squares is
    weighted by the per-pixel variance (data + readout variance). ``crlb=False``: the second return is NaN
    (the CPU engine then skips the curvature at the optimum).
    """
    spots = np.asarray(spots)
    if spots.ndim != 3 or spots.shape[1] != spots.shape[2]:
        raise ValueError("spots must be square boxes")
    noise = int(mode)
    if variance is not None:
        noise = NOISE_SCMOS if noise == NOISE_POISSON else NOISE_WLSQ
    r = fit_boxes(spots, MODEL_GAUSS, noise, eps=eps, max_iterations=max_iterations, device=device,
                  batch_boxes=batch_spots, variance=variance, crlb=crlb)
    return r.theta, r.crlb, r.objective, r.iterations, r.converged


def fisher_information(theta, box):
    """Fisher information matrix of the Poisson integrated-Gaussian model at ``theta``."""
    return curvature(np.asarray(theta, float), int(box), MODEL_GAUSS, NOISE_POISSON)


def crlb(photons, bg, sx, sy, box_size, x=None, y=None):
    """Cramér-Rao lower bound of (x, y, photons, bg, sx, sy) for one spot, as variances.

    Positions default to the box centre. Units: pixels for x, y, sx, sy; photons for photons and bg.
    """
    r = box_size // 2
    theta = np.array([r if x is None else x, r if y is None else y, photons, bg, sx, sy], float)
    return np.diag(np.linalg.inv(fisher_information(theta, box_size)))
