"""CUDA driver of the fit engine: one thread per box, the workspace in ``cuda.local.array``.

The numerics are the ``register_jitable`` functions of ``lm.py``, ``models.py`` and ``noise.py`` that the CPU
driver compiles too, in float64, so both devices agree to rounding. Import this module only through
:mod:`napari_localize.core.device` (it imports ``numba.cuda``); under ``NUMBA_ENABLE_CUDASIM=1`` the kernel
runs in numba's CUDA simulator (slow, for tests).
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64

from ..device import MAX_BOX
from .lm import fit_box
from .models import MAX_PARAMS, SCRATCH_ROWS, n_params

#: threads per block
THREADS = 128
#: bytes of boxes sent to the GPU per kernel launch
BATCH_BYTES = 256 * 1024 * 1024


@cuda.jit(cache=True)  # compiled once per machine (seconds), then loaded from numba's cache
def fit_kernel(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
               theta_io, var_out, obj_out, it_out, conv_out, gof_out):
    i = cuda.grid(1)
    if i >= data.shape[0]:
        return
    theta = cuda.local.array(MAX_PARAMS, float64)
    trial = cuda.local.array(MAX_PARAMS, float64)
    g = cuda.local.array(MAX_PARAMS, float64)
    delta = cuda.local.array(MAX_PARAMS, float64)
    jrow = cuda.local.array(MAX_PARAMS, float64)
    e = cuda.local.array(MAX_PARAMS, float64)
    col = cuda.local.array(MAX_PARAMS, float64)
    F = cuda.local.array((MAX_PARAMS, MAX_PARAMS), float64)
    A = cuda.local.array((MAX_PARAMS, MAX_PARAMS), float64)
    L = cuda.local.array((MAX_PARAMS, MAX_PARAMS), float64)
    scratch = cuda.local.array((SCRATCH_ROWS, MAX_BOX), float64)
    n = n_params(model, aux)
    for a in range(MAX_PARAMS):
        for c in range(MAX_PARAMS):
            L[a, c] = 0.0
    for a in range(n):
        theta[a] = theta_io[i, a]
    o, its, ok, q = fit_box(model, noise, data, var, other, i, box, aux, lo, hi, guess, eps, max_iterations,
                            want_gof, theta, trial, g, delta, jrow, e, col, F, A, L, scratch, var_out)
    for a in range(n):
        theta_io[i, a] = theta[a]
    obj_out[i] = o
    it_out[i] = its
    conv_out[i] = 1 if ok else 0
    gof_out[i] = q


def fit_boxes_cuda(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
                   theta, var_out, obj, iterations, converged, gof, batch_boxes=None):
    """Run :func:`fit_kernel` over ``data`` in batches (about 256 MB of boxes each), results into the arrays."""
    if box > MAX_BOX:
        raise ValueError(f"the CUDA fit handles boxes up to {MAX_BOX} pixels, not {box}")
    n = data.shape[0]
    step = int(batch_boxes) if batch_boxes else max(1, BATCH_BYTES // (4 * box * box))
    d_aux, d_lo, d_hi = cuda.to_device(aux), cuda.to_device(lo), cuda.to_device(hi)
    conv = np.zeros(n, np.uint8)
    for a in range(0, n, step):
        b = min(a + step, n)
        m = b - a
        d_var = cuda.to_device(var[a:b] if var.shape[0] else var)
        d_other = cuda.to_device(other[a:b] if other.shape[0] else other)
        d_theta = cuda.to_device(np.ascontiguousarray(theta[a:b]))
        d_vo = cuda.device_array((m, var_out.shape[1]), np.float64)
        d_obj = cuda.device_array(m, np.float64)
        d_it = cuda.device_array(m, np.int64)
        d_conv = cuda.device_array(m, np.uint8)
        d_gof = cuda.device_array(m, np.float64)
        blocks = (m + THREADS - 1) // THREADS
        fit_kernel[blocks, THREADS](int(model), int(noise), cuda.to_device(data[a:b]), d_var, d_other, int(box),
                                    d_aux, d_lo, d_hi, bool(guess), float(eps), int(max_iterations),
                                    bool(want_gof), d_theta, d_vo, d_obj, d_it, d_conv, d_gof)
        theta[a:b] = d_theta.copy_to_host()
        var_out[a:b] = d_vo.copy_to_host()
        obj[a:b] = d_obj.copy_to_host()
        iterations[a:b] = d_it.copy_to_host()
        conv[a:b] = d_conv.copy_to_host()
        gof[a:b] = d_gof.copy_to_host()
    converged[:] = conv.astype(bool)
