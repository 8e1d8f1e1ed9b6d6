"""CPU driver of the fit engine: ``njit``, parallel over boxes, one workspace per thread (nothing allocated
per box). The numerics are in ``lm.py``, ``models.py`` and ``noise.py``, shared with the CUDA driver."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .lm import fit_box, normal_equations
from .models import MAX_PARAMS, SCRATCH_ROWS, n_params, prepare

#: batches of fewer boxes than this run on one thread: waking the thread pool costs more than they take
SERIAL_BELOW = 256


@njit(cache=True, nogil=True, parallel=True)
def fit_boxes_cpu(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
                  theta_io, var_out, obj_out, it_out, conv_out, gof_out, n_slots):
    vec = np.zeros((n_slots, 7, MAX_PARAMS))
    mat = np.zeros((n_slots, 3, MAX_PARAMS, MAX_PARAMS))
    scr = np.zeros((n_slots, SCRATCH_ROWS, box))
    for i in prange(data.shape[0]):
        _fit_one(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof, theta_io,
                 var_out, obj_out, it_out, conv_out, gof_out, i, numba.get_thread_id(), vec, mat, scr)


@njit(cache=True, nogil=True)
def fit_boxes_cpu_serial(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
                         theta_io, var_out, obj_out, it_out, conv_out, gof_out, n_slots):
    """:func:`fit_boxes_cpu` on the calling thread (small batches); the same results."""
    vec = np.zeros((1, 7, MAX_PARAMS))
    mat = np.zeros((1, 3, MAX_PARAMS, MAX_PARAMS))
    scr = np.zeros((1, SCRATCH_ROWS, box))
    for i in range(data.shape[0]):
        _fit_one(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof, theta_io,
                 var_out, obj_out, it_out, conv_out, gof_out, i, 0, vec, mat, scr)


@njit(cache=True, nogil=True)
def _fit_one(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof, theta_io,
             var_out, obj_out, it_out, conv_out, gof_out, i, t, vec, mat, scr):
    n = n_params(model, aux)
    theta = vec[t, 0]
    for a in range(n):
        theta[a] = theta_io[i, a]
    o, its, ok, q = fit_box(model, noise, data, var, other, i, box, aux, lo, hi, guess, eps, max_iterations,
                            want_gof, theta, vec[t, 1], vec[t, 2], vec[t, 3], vec[t, 4], vec[t, 5], vec[t, 6],
                            mat[t, 0], mat[t, 1], mat[t, 2], scr[t], var_out)
    for a in range(n):
        theta_io[i, a] = theta[a]
    obj_out[i] = o
    it_out[i] = its
    conv_out[i] = ok
    gof_out[i] = q


@njit(cache=True, nogil=True)
def curvature_cpu(model, noise, data, var, other, box, aux, theta):
    """Curvature matrix (Fisher information for the likelihood models) of box 0 at ``theta``."""
    n = n_params(model, aux)
    scratch = np.zeros((SCRATCH_ROWS, box))
    jrow = np.zeros(MAX_PARAMS)
    g = np.zeros(MAX_PARAMS)
    F = np.zeros((MAX_PARAMS, MAX_PARAMS))
    prepare(model, theta, box, aux, scratch)
    normal_equations(model, noise, data, var, other, 0, box, aux, theta, scratch, jrow, g, F, n)
    return F[:n, :n].copy()
