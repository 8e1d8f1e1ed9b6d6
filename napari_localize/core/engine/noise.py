"""Noise models of the fit engine: the objective per pixel and its gradient/curvature weights.

``NOISE_POISSON``  Poisson maximum likelihood (Fisher scoring; Laurence & Chromy, Nat. Methods 7, 338 (2010)).
``NOISE_LSQ``      least squares.
``NOISE_WLSQ``     weighted least squares, weight 1 / max(data, 1) (the data's Poisson variance).
``NOISE_SCMOS``    Huang et al., Nat. Methods 10, 653 (2013): Poisson likelihood of ``data + v`` given
                   ``mu + v``, with ``v`` the pixel's readout variance / gain^2 (photons^2) from the variance box.

The objective is maximised: the log-likelihood ratio to the saturated model (<= 0) or minus half the
(weighted) squared residuals. The engine accumulates ``g_a += r J_a`` and ``F_ab += w J_a J_b``; at the optimum
``F`` is the Fisher information for the likelihood models (its inverse diagonal is the CRLB) and ``J^T W J``
for the least-squares ones.
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

NOISE_POISSON = 0
NOISE_LSQ = 1
NOISE_WLSQ = 2
NOISE_SCMOS = 3
NOISE_NAMES = {NOISE_POISSON: "poisson", NOISE_LSQ: "lsq", NOISE_WLSQ: "wlsq", NOISE_SCMOS: "scmos"}
#: noise models whose curvature is the Fisher information of a likelihood (CRLB, goodness of fit)
LIKELIHOOD_NOISE = (NOISE_POISSON, NOISE_SCMOS)


@register_jitable
def _shifted(noise, x, mu, v):
    # data and model as the likelihood sees them: + v for sCMOS (Huang et al. 2013)
    xf = float(x)
    if noise == NOISE_SCMOS:
        return xf + v, mu + v
    return xf, mu


@register_jitable
def objective_term(noise, x, mu, v):
    """One pixel's contribution to the objective (data ``x``, model ``mu``, variance term ``v``)."""
    xf, m = _shifted(noise, x, mu, v)
    if noise == NOISE_POISSON or noise == NOISE_SCMOS:
        if xf > 0:
            return xf * math.log(m / xf) - m + xf
        return -m
    d = xf - m
    if noise == NOISE_WLSQ:
        return -(0.5 * d * d / (xf if xf > 1.0 else 1.0))
    return -(0.5 * d * d)


@register_jitable
def gradient_weights(noise, x, mu, v):
    """``(r, w)`` of one pixel: gradient ``r J``, curvature ``w J J^T``."""
    xf, m = _shifted(noise, x, mu, v)
    if noise == NOISE_POISSON:
        w = 1.0 / m
        return xf * w - 1.0, w
    if noise == NOISE_SCMOS:
        w = 1.0 / m
        return (xf if xf > 0.0 else 0.0) * w - 1.0, w
    w = 1.0 / (xf if xf > 1.0 else 1.0) if noise == NOISE_WLSQ else 1.0
    return (xf - m) * w, w


@register_jitable
def deviance_moments(mu):
    """Mean and variance of one pixel's Poisson deviance ``2 (x ln(x/mu) - (x - mu))`` for ``x ~ Poisson(mu)``.

    Summed over the distribution below 20 photons, the large-mu expansions ``1 + 1/(6 mu) + 1/(6 mu^2)`` and
    ``2 + 2/(3 mu)`` above (they agree with the sums to < 0.1 % there).
    """
    if mu >= 20.0:
        return 1.0 + 1.0 / (6.0 * mu) + 1.0 / (6.0 * mu * mu), 2.0 + 2.0 / (3.0 * mu)
    if mu <= 0.0:
        return 0.0, 0.0
    log_mu = math.log(mu)
    kmax = int(mu + 12.0 * math.sqrt(mu) + 12.0)
    m1 = 0.0
    m2 = 0.0
    for k in range(kmax + 1):
        pk = math.exp(k * log_mu - mu - math.lgamma(k + 1.0))
        d = 2.0 * mu if k == 0 else 2.0 * (k * math.log(k / mu) - (k - mu))
        m1 += pk * d
        m2 += pk * d * d
    var = m2 - m1 * m1
    return m1, var if var > 1e-12 else 1e-12
