"""Identification on sCMOS frames that is not fooled by hot pixels, with the user's net-gradient threshold intact.

A hot pixel (readout variance hundreds to thousands of ADU², a few % of an sCMOS chip) flickers by tens of
ADU from frame to frame; to the net gradient a single bright pixel looks like a spot. Huang et al. (2013) and
SMAP identify on frames filtered with weights from the variance map instead of the raw counts. We do the same,
in a form that leaves ordinary pixels untouched so that a threshold chosen on a uniform camera keeps its meaning:

1. **Per-pixel conversion.** ``d = (ADU - offset) * sensitivity / em_gain`` (photoelectrons), which removes the
   fixed-pattern offset and the pixel-to-pixel gain spread.
2. **Variance-weighted shrinkage.** Each pixel's reading is combined with the inverse-variance weighted mean
   ``m`` of its 8 neighbours::

       d' = a * d + (1 - a) * m,        a = n / (n + e)

   where ``e = max(var_i - 2 var_typ, 0)`` is the pixel's readout variance *in excess of twice the chip's
   typical* (median) and ``n = max(m, 0) + var_typ`` the noise a typical pixel would have there (shot noise of
   the local level plus typical read noise). An ordinary pixel (variance up to twice the median: all but the
   top few % of a healthy chip) keeps ``a = 1``, its own value exactly, and costs nothing; a pixel 100x noisier
   than typical is replaced almost entirely by its neighbours. Neighbours are weighted by ``1 / (n + e_j)``,
   so a hot neighbour hardly enters ``m`` either. Only the noisy pixels are visited.
3. **Back to counts.** ``d'`` is expressed in the ADU of a pixel with the chip's median sensitivity
   (``d' * em_gain / median(sensitivity)``), and :func:`~napari_localize.core.identify.identify` scores it with
   Picasso's net gradient unchanged. On a camera with uniform offset, gain and variance this image equals the
   raw counts minus the offset, so every spot has exactly the net gradient it has in the raw movie.

The threshold is therefore in the same units as always (camera counts), for a pixel of median gain.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._threading import run_kernel
from .identify import identify


@njit(cache=True, nogil=True)
def _prepare(lo, hi, adu, offset, scale, noisy_y, noisy_x, noisy_e, var_typ, k_shot, excess, out, fixed):
    """Frames ``lo..hi-1``: ``out = (adu - offset) * scale`` for every pixel, then the shrinkage of the noisy
    pixels (see the module docstring), all in counts of a median-sensitivity pixel. ``excess`` is the full map
    of ``e`` (0 for ordinary pixels); ``k_shot`` turns a level in counts into its shot-noise variance in
    counts². Serial and ``nogil``: :func:`identification_image` shares the frames over threads."""
    _, h, w = adu.shape
    n_noisy = noisy_y.shape[0]
    for f in range(lo, hi):
        img = out[f]
        for i in range(h):
            for j in range(w):
                img[i, j] = (adu[f, i, j] - offset[i, j]) * scale[i, j]
        for q in range(n_noisy):
            i = noisy_y[q]
            j = noisy_x[q]
            s = 0.0
            c = 0
            for kk in range(max(i - 1, 0), min(i + 2, h)):
                for mm in range(max(j - 1, 0), min(j + 2, w)):
                    if kk != i or mm != j:
                        s += img[kk, mm]
                        c += 1
            level = max(s / c, 0.0) * k_shot + var_typ
            sw = 0.0
            swd = 0.0
            for kk in range(max(i - 1, 0), min(i + 2, h)):
                for mm in range(max(j - 1, 0), min(j + 2, w)):
                    if kk != i or mm != j:
                        wgt = 1.0 / (level + excess[kk, mm])
                        sw += wgt
                        swd += wgt * img[kk, mm]
            mean_n = swd / sw
            noise = max(mean_n, 0.0) * k_shot + var_typ
            a = noise / (noise + noisy_e[q])
            fixed[f, q] = a * img[i, j] + (1.0 - a) * mean_n
        # written back only now: every noisy pixel was estimated from unshrunk neighbours
        for q in range(n_noisy):
            img[noisy_y[q], noisy_x[q]] = fixed[f, q]


#: a pixel whose readout variance is at most this multiple of the chip's median is ordinary (left untouched);
#: above it, the variance in excess of this level decides how much of it is replaced by its neighbours
ORDINARY_VARIANCE_FACTOR = 2.0


def identification_image(frames, offset, sensitivity, variance_e, em_gain=1.0):
    """Frames prepared for identification on an sCMOS camera (see the module docstring).

    Parameters
    ----------
    frames : array (n, height, width) or (height, width)
        Camera counts (ADU).
    offset : array (height, width)
        Offset map, ADU.
    sensitivity : array (height, width) or float
        Electrons per ADU (``1 / gain`` of the calibration, or the scalar sensitivity).
    variance_e : array (height, width)
        Readout variance in photoelectrons² (:func:`~napari_localize.core.camera.readout_variance_photons`).
    em_gain : float

    Returns
    -------
    float32 array of ``frames``' shape, in camera counts of a median-sensitivity pixel, offset removed.
    """
    stack = np.asarray(frames)
    squeeze = stack.ndim == 2
    if squeeze:
        stack = stack[None]
    shape = stack.shape[1:]
    sens = np.broadcast_to(np.asarray(sensitivity, np.float32), shape)
    med = float(np.median(sens))
    to_counts = float(em_gain) / med  # photoelectrons -> counts of a median pixel
    scale = np.ascontiguousarray(sens / np.float32(med), np.float32)
    var_c = np.broadcast_to(np.asarray(variance_e, np.float64), shape) * to_counts**2
    var_typ = float(np.median(var_c))
    excess = np.maximum(var_c - ORDINARY_VARIANCE_FACTOR * var_typ, 0.0)
    noisy_y, noisy_x = np.nonzero(excess > 0)
    out = np.empty(stack.shape, np.float32)
    fixed = np.empty((stack.shape[0], len(noisy_y)), np.float32)
    if stack.size:
        args = (np.ascontiguousarray(stack), np.ascontiguousarray(np.broadcast_to(offset, shape), np.float32),
                scale, noisy_y.astype(np.int64), noisy_x.astype(np.int64), excess[noisy_y, noisy_x], var_typ,
                to_counts, np.ascontiguousarray(excess), out, fixed)
        run_kernel(_prepare, stack.shape[0], *args, pool_name="identify", parallel=stack.size >= 65536)
    return out[0] if squeeze else out


def identify_scmos(frames, box_size, min_net_gradient, offset, sensitivity, variance_e, em_gain=1.0,
                   roi=None, first_frame=0):
    """:func:`~napari_localize.core.identify.identify` on :func:`identification_image` of ``frames``.

    Same arguments and result as ``identify`` plus the camera maps; ``min_net_gradient`` is in camera counts
    of a median-gain pixel.
    """
    image = identification_image(frames, offset, sensitivity, variance_e, em_gain)
    return identify(image, box_size, min_net_gradient, roi=roi, first_frame=first_frame)
