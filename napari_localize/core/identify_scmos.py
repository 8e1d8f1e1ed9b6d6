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

   where ``e = max(var_i - var_typ, 0)`` is the pixel's readout variance *in excess of the chip's typical*
   (median, photoelectrons²) and ``n = max(m, 0) + var_typ`` the noise a typical pixel would have there (shot
   noise of the local level plus typical read noise). A pixel with the typical variance keeps ``a = 1`` (its own
   value, exactly); a pixel 100x noisier than typical is replaced almost entirely by its neighbours. Neighbours
   are weighted by ``1 / (n + e_j)``, so a hot neighbour hardly enters ``m`` either.
3. **Back to counts.** ``d'`` is expressed in the ADU of a pixel with the chip's median sensitivity
   (``d' * em_gain / median(sensitivity)``), and :func:`~napari_localize.core.identify.identify` scores it with
   Picasso's net gradient unchanged. On a camera with uniform offset, gain and variance this image equals the
   raw counts minus the offset, so every spot has exactly the net gradient it has in the raw movie.

The threshold is therefore in the same units as always (camera counts), for a pixel of median gain.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .identify import identify


@njit(cache=True, nogil=True, parallel=True)
def _shrink(photons, var_e, var_typ, out):
    n_frames, h, w = photons.shape
    for f in prange(n_frames):
        img = photons[f]
        for i in range(h):
            for j in range(w):
                # typical-pixel noise of the local level: from the unweighted 8-neighbour mean first
                s = 0.0
                c = 0
                for k in range(max(i - 1, 0), min(i + 2, h)):
                    for m in range(max(j - 1, 0), min(j + 2, w)):
                        if k != i or m != j:
                            s += img[k, m]
                            c += 1
                level = max(s / c, 0.0)
                sw = 0.0
                swd = 0.0
                for k in range(max(i - 1, 0), min(i + 2, h)):
                    for m in range(max(j - 1, 0), min(j + 2, w)):
                        if k != i or m != j:
                            wgt = 1.0 / (level + var_typ + max(var_e[k, m] - var_typ, 0.0))
                            sw += wgt
                            swd += wgt * img[k, m]
                mean_n = swd / sw
                excess = var_e[i, j] - var_typ
                if excess <= 0.0:
                    out[f, i, j] = img[i, j]
                else:
                    noise = max(mean_n, 0.0) + var_typ
                    a = noise / (noise + excess)
                    out[f, i, j] = a * img[i, j] + (1.0 - a) * mean_n


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
    from .camera import adu_to_photons_per_pixel

    stack = np.asarray(frames)
    squeeze = stack.ndim == 2
    if squeeze:
        stack = stack[None]
    photons = np.ascontiguousarray(adu_to_photons_per_pixel(stack, offset, sensitivity, em_gain), np.float64)
    var_e = np.ascontiguousarray(np.broadcast_to(variance_e, stack.shape[1:]), np.float64)
    var_typ = float(np.median(var_e))
    out = np.empty_like(photons)
    if photons.size:
        _shrink(photons, var_e, var_typ, out)
    to_counts = float(em_gain) / float(np.median(sensitivity))
    out = (out * to_counts).astype(np.float32)
    return out[0] if squeeze else out


def identify_scmos(frames, box_size, min_net_gradient, offset, sensitivity, variance_e, em_gain=1.0,
                   roi=None, first_frame=0):
    """:func:`~napari_localize.core.identify.identify` on :func:`identification_image` of ``frames``.

    Same arguments and result as ``identify`` plus the camera maps; ``min_net_gradient`` is in camera counts
    of a median-gain pixel.
    """
    image = identification_image(frames, offset, sensitivity, variance_e, em_gain)
    return identify(image, box_size, min_net_gradient, roi=roi, first_frame=first_frame)
