"""The fit engine: PSF models x noise models x devices, written once (see ``docs/architecture.md``).

:func:`fit_boxes` is the one Python entry point; ``models.py``, ``noise.py`` and ``lm.py`` hold the numerics
(``register_jitable``), ``cpu.py`` and ``cuda.py`` compile them for the CPU and for CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import _cache

_cache.install()  # before any kernel of the package is compiled or loaded from the cache

from .models import (  # noqa: E402
    IB,
    IN,
    ISX,
    ISY,
    IX,
    IY,
    IZ,
    MAX_EMITTERS,
    MAX_PARAMS,
    MODEL_ASTIG_Z,
    MODEL_GAUSS,
    MODEL_GAUSS_FIXED,
    MODEL_MULTI,
    MODEL_NAMES,
    MODEL_SPLINE_2D,
    MODEL_SPLINE_Z,
    SIGMA_MIN,
    SPLINE_HEADER,
    astig_aux,
    default_bounds,
    emitter_index,
    spline_aux,
)
from .noise import NOISE_LSQ, NOISE_NAMES, NOISE_POISSON, NOISE_SCMOS, NOISE_WLSQ  # noqa: E402

__all__ = [
    "FitResult", "fit_boxes", "curvature", "default_bounds", "astig_aux", "MODEL_GAUSS", "MODEL_GAUSS_FIXED",
    "MODEL_ASTIG_Z", "MODEL_MULTI", "MAX_EMITTERS", "emitter_index", "MODEL_SPLINE_Z", "MODEL_SPLINE_2D",
    "spline_aux", "NOISE_POISSON", "NOISE_LSQ", "NOISE_WLSQ", "NOISE_SCMOS", "IX", "IY", "IN", "IB", "ISX", "ISY",
    "IZ", "MAX_PARAMS", "SIGMA_MIN",
]

_N_PARAMS = {MODEL_GAUSS: 6, MODEL_GAUSS_FIXED: 4, MODEL_ASTIG_Z: 5, MODEL_SPLINE_Z: 5, MODEL_SPLINE_2D: 4}


@dataclass
class FitResult:
    """Per-box results of :func:`fit_boxes` (n rows each).

    theta : (n, n_params) fitted parameters (layout of the model, box coordinates)
    crlb : (n, n_params) diagonal of the inverse curvature: Cramér-Rao variances for the likelihood noise
        models, ``diag((J^T W J)^-1)`` for the least-squares ones; NaN where the curvature is singular
    objective : (n,) final objective (log-likelihood ratio to the saturated model, or -RSS/2)
    iterations : (n,) int64, converged : (n,) bool, gof : (n,) standardised deviance (NaN unless asked, for a 3D model)
    """

    theta: np.ndarray
    crlb: np.ndarray
    objective: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    gof: np.ndarray


def _boxes(a, n, P, name):
    if a is None:
        return np.zeros((0, P))
    a = np.ascontiguousarray(a, np.float64).reshape(len(a), -1) if np.ndim(a) else None
    if a is None or a.shape != (n, P):
        raise ValueError(f"fit_boxes: {name} must have the shape of the boxes ({n} boxes of {P} pixels)")
    return a


def n_params(model: int, aux=None) -> int:
    """Number of parameters of ``model`` (``MODEL_MULTI``: with ``aux[0]`` = K emitters)."""
    if int(model) == MODEL_MULTI:
        k = int(np.ravel(aux)[0]) if aux is not None and np.size(aux) else 0
        if not 1 <= k <= MAX_EMITTERS:
            raise ValueError(f"the multi-emitter model needs aux = (K,) with 1 <= K <= {MAX_EMITTERS}")
        return 6 + 3 * (k - 1)
    try:
        return _N_PARAMS[int(model)]
    except KeyError:
        raise ValueError(f"unknown PSF model {model!r}; known: {MODEL_NAMES}") from None


def _check_spline_aux(model, aux):
    if aux.size <= SPLINE_HEADER:
        raise ValueError("the spline models need aux = spline_aux(coefficients, ...)")
    nz, ny, nx = (int(v) for v in aux[:3])
    per = 64 if model == MODEL_SPLINE_Z else 16
    cells = nz * ny * nx if model == MODEL_SPLINE_Z else ny * nx
    if (model == MODEL_SPLINE_Z) != (nz > 0) or aux.size != SPLINE_HEADER + per * cells:
        raise ValueError("spline aux does not match its model (3D table for MODEL_SPLINE_Z, 2D for "
                         "MODEL_SPLINE_2D) or its header")


def fit_boxes(spots, model: int = MODEL_GAUSS, noise: int = NOISE_POISSON, theta0=None, aux=None, bounds=None,
              variance=None, other=None, eps: float = 1e-3, max_iterations: int = 100, gof: bool = False,
              device: str = "cpu", batch_boxes: int | None = None, crlb: bool = True) -> FitResult:
    """Fit every box of ``spots`` ((n, box, box) photons) with one PSF model and one noise model.

    ``theta0`` (n, n_params) is the start (None: the model's initial guess from each box). ``aux``: model
    constants (see :mod:`.models`). ``bounds``: ``(lo, hi)`` per parameter (default
    :func:`.models.default_bounds`). ``variance``: per-pixel variance boxes (photons^2, sCMOS noise model).
    ``other``: fixed expected photons of other light in each box (neighbours). ``device``: ``"cpu"`` or
    ``"cuda"``. ``crlb=False``: the caller does not use the bound (a least-squares fit with Mortensen's
    precision): the CPU engine skips the curvature at the optimum and ``FitResult.crlb`` is NaN.
    """
    spots = np.asarray(spots)
    if spots.ndim != 3 or spots.shape[1] != spots.shape[2]:
        raise ValueError(f"spots must be a stack of square boxes (n, box, box), got shape {spots.shape}")
    k = n_params(model, aux)
    if int(noise) not in NOISE_NAMES:
        raise ValueError(f"unknown noise model {noise!r}; known: {NOISE_NAMES}")
    if int(noise) == NOISE_SCMOS and variance is None:
        raise ValueError("the sCMOS noise model needs a per-pixel variance box for every spot")
    n, box, _ = spots.shape
    P = box * box
    data = np.ascontiguousarray(spots, np.float32).reshape(n, P)
    var = _boxes(variance, n, P, "variance")
    oth = _boxes(other, n, P, "other light")
    aux = np.zeros(1) if aux is None else np.ascontiguousarray(aux, np.float64).ravel()
    if model == MODEL_GAUSS_FIXED and aux.size < 2:
        raise ValueError("the fixed-width Gaussian needs aux = (sx, sy)")
    if model == MODEL_ASTIG_Z and (aux.size < 3 or aux.size != 1 + 2 * int(aux[0])):
        raise ValueError("the astigmatic model needs aux = astig_aux(x_coefficients, y_coefficients)")
    if model in (MODEL_SPLINE_Z, MODEL_SPLINE_2D):
        _check_spline_aux(model, aux)
    lo, hi = default_bounds(model, box) if bounds is None else bounds
    lo = np.ascontiguousarray(np.resize(np.asarray(lo, float), MAX_PARAMS))
    hi = np.ascontiguousarray(np.resize(np.asarray(hi, float), MAX_PARAMS))
    theta = np.zeros((n, k))
    guess = theta0 is None
    if not guess:
        theta[:] = np.asarray(theta0, float).reshape(n, k)
    skip_crlb = not crlb and device == "cpu"
    crlb = np.empty((0 if skip_crlb else n, k))
    obj = np.empty(n)
    iterations = np.zeros(n, np.int64)
    converged = np.zeros(n, np.bool_)
    q = np.full(n, np.nan)
    if n:
        args = (int(model), int(noise), data, var, oth, int(box), aux, lo, hi, bool(guess), float(eps),
                int(max_iterations), bool(gof), theta, crlb, obj, iterations, converged, q)
        if device == "cuda":
            from .cuda import fit_boxes_cuda

            fit_boxes_cuda(*args, batch_boxes=batch_boxes)
        elif device == "cpu":
            from .cpu import fit_boxes_cpu

            fit_boxes_cpu(*args, threads=int(numba.config.NUMBA_NUM_THREADS))
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if skip_crlb:
        crlb = np.full((n, k), np.nan)
    return FitResult(theta, crlb, obj, iterations, converged, q)


def curvature(theta, box: int, model: int = MODEL_GAUSS, noise: int = NOISE_POISSON, aux=None, variance=None,
              other=None, compiled: bool = True) -> np.ndarray:
    """Expected curvature (the Fisher information for the likelihood models) of one box at ``theta``.

    For Poisson and sCMOS it does not depend on the data; its inverse is the CRLB. ``compiled=False`` runs the
    same engine functions in the interpreter (about a millisecond for a Gaussian box, and no kernel to compile:
    for a one-off matrix in a run that does not otherwise need this model's kernel).
    """
    from .cpu import _curvature, curvature_cpu

    P = int(box) * int(box)
    aux = np.zeros(1) if aux is None else np.ascontiguousarray(aux, np.float64).ravel()
    var = np.zeros((0, P)) if variance is None else np.ascontiguousarray(variance, float).reshape(1, P)
    oth = np.zeros((0, P)) if other is None else np.ascontiguousarray(other, float).reshape(1, P)
    theta = np.zeros(MAX_PARAMS) + np.resize(np.asarray(theta, float), MAX_PARAMS) * (
        np.arange(MAX_PARAMS) < n_params(model, aux))
    if not compiled:
        return _curvature(int(model), int(noise), np.zeros((1, P), np.float32), var, oth, 0, int(box), aux, theta)
    return curvature_cpu(int(model), int(noise), np.zeros((1, P), np.float32), var, oth, int(box), aux, theta)
