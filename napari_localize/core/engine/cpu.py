"""CPU driver of the fit engine: one serial ``nogil`` kernel per (PSF model, noise model) pair, run on a few
Python threads over contiguous slices of the boxes, one workspace per slice (nothing allocated per box). The
numerics are in ``lm.py``, ``models.py`` and ``noise.py``, shared with the CUDA driver.

Why threads and not ``parallel=True``: a parfor costs numba ~20 s of compile on top of the loop body and
compiles the body a second time for its unsigned loop index; a serial kernel compiled once, released from the
GIL, gives the same scaling. The pair is a closure constant of its kernel, so numba prunes the other models'
branches (the literal-specialised functions of ``lm.py``) and compiles only the kernels a run uses; each is
compiled once per machine and then loaded from numba's on-disk cache (the closure's constants are part of its
cache key).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .lm import fit_box, normal_equations
from .models import MAX_PARAMS, SCRATCH_ROWS, n_params, prepare
from .specialise import specialised

#: batches of fewer boxes than this run on the calling thread: handing them to the pool costs more than they take
SERIAL_BELOW = 256
#: slices per thread: a thread slowed by other work does not hold up the rest
SLICES_PER_THREAD = 4

_KERNELS: dict = {}
_KERNELS_LOCK = threading.Lock()


def _fit_slice(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof, theta_io,
               var_out, obj_out, it_out, conv_out, gof_out, start, stop):
    # boxes start..stop-1 with one workspace; compiled per (model, noise) pair by kernel()
    n = n_params(model, aux)
    vec = np.zeros((7, MAX_PARAMS))  # theta, trial, g, delta, jrow, e, col
    mat = np.zeros((3, MAX_PARAMS, MAX_PARAMS))  # F, A, L
    scr = np.zeros((SCRATCH_ROWS, box))
    theta = vec[0]
    for i in range(start, stop):
        for a in range(n):
            theta[a] = theta_io[i, a]
        o, its, ok, q = fit_box(model, noise, data, var, other, i, box, aux, lo, hi, guess, eps, max_iterations,
                                want_gof, theta, vec[1], vec[2], vec[3], vec[4], vec[5], vec[6], mat[0], mat[1],
                                mat[2], scr, var_out)
        for a in range(n):
            theta_io[i, a] = theta[a]
        obj_out[i] = o
        it_out[i] = its
        conv_out[i] = ok
        gof_out[i] = q


_KERNEL_JIT = njit(cache=True, nogil=True)


def kernel(model: int, noise: int):
    """The CPU kernel of one (PSF model, noise model) pair (built on first use, compiled or loaded from numba's
    cache on its first call): :func:`_fit_slice` with the pair as constants (:mod:`.specialise`)."""
    key = (int(model), int(noise))
    with _KERNELS_LOCK:
        k = _KERNELS.get(key)
        if k is None:
            k = _KERNELS[key] = specialised(_fit_slice, *key, jit=_KERNEL_JIT)
    return k


def _pool(threads: int):
    from .._threading import pool

    return pool("fit", threads)


def fit_boxes_cpu(model, noise, data, var, other, box, aux, lo, hi, guess, eps, max_iterations, want_gof,
                  theta_io, var_out, obj_out, it_out, conv_out, gof_out, threads=1):
    """Fit every box with the kernel of (model, noise) on ``threads`` threads; results into the output arrays."""
    k = kernel(model, noise)
    if not k.signatures:
        from ..warmup import wait_for

        wait_for(model, noise)  # being compiled in a second process: load it then rather than compile it twice
    n = data.shape[0]
    args = (int(model), int(noise), data, var, other, int(box), aux, lo, hi, bool(guess), float(eps),
            int(max_iterations), bool(want_gof), theta_io, var_out, obj_out, it_out, conv_out, gof_out)
    threads = max(1, int(threads))
    if threads == 1 or n < SERIAL_BELOW:
        k(*args, 0, n)
        return
    shares = min(n // (SERIAL_BELOW // 4) or 1, SLICES_PER_THREAD * threads)
    edges = [n * s // shares for s in range(shares + 1)]
    if not k.signatures:
        k(*args, 0, edges[1])  # compile (or load) once, not in every thread at the same time
        edges = edges[1:]
    for job in [_pool(threads).submit(k, *args, a, b) for a, b in zip(edges[:-1], edges[1:])]:
        job.result()


def _curvature(model, noise, data, var, other, i, box, aux, theta):
    # curvature matrix of box i at theta; compiled per (model, noise) pair by curvature_kernel(). The box index
    # is an argument, not a literal 0, so the engine functions are typed as in _fit_slice (and reused)
    n = n_params(model, aux)
    scratch = np.zeros((SCRATCH_ROWS, box))
    jrow = np.zeros(MAX_PARAMS)
    g = np.zeros(MAX_PARAMS)
    F = np.zeros((MAX_PARAMS, MAX_PARAMS))
    prepare(model, theta, box, aux, scratch)
    normal_equations(model, noise, data, var, other, i, box, aux, theta, scratch, jrow, g, F, n)
    return F[:n, :n].copy()


def curvature_kernel(model: int, noise: int):
    """The curvature (Fisher information) kernel of one (PSF model, noise model) pair: :func:`_curvature`
    specialised like the fit kernels (a generic one would compile every model's branches, ~4 s)."""
    key = ("curvature", int(model), int(noise))
    with _KERNELS_LOCK:
        k = _KERNELS.get(key)
        if k is None:
            k = _KERNELS[key] = specialised(_curvature, int(model), int(noise), jit=_KERNEL_JIT)
    return k


def curvature_cpu(model, noise, data, var, other, box, aux, theta):
    """Curvature matrix (Fisher information for the likelihood models) of box 0 at ``theta``."""
    return curvature_kernel(model, noise)(int(model), int(noise), data, var, other, 0, int(box), aux, theta)
