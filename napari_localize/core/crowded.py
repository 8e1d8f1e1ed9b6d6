"""Crowded fields: neighbours fitted together, further emitters found in the residual, kept by a likelihood test.

The orchestration around the fit engine's multi-emitter model (``MODEL_MULTI`` of :mod:`.engine.models`: K
pixel-integrated Gaussians in one box, one background and one pair of widths, fixed "other light"; the joint
Fisher matrix gives each emitter's CRLB), per chunk of frames:

1. Every identified box is fitted with one emitter (the single-emitter fit), then screened once, with no fit
   (:func:`refine_crowded`): only a box whose fit failed, whose other light is significant
   (``sum(other^2 / variance) > light_chi2``), whose residual holds a peak or whose spot is significantly wide
   goes on (a wide spot alone in its box only if its split test, step 2d, keeps the pair), with the emitters
   whose light reaches it; every other box keeps its single fit exactly.
2. Rounds of:
   a. **Groups.** Emitters of a frame closer than ``join_sigmas`` PSF widths are joined into one group
      (nearest pairs first) as long as the group keeps at most ``max_emitters`` emitters and fits a box with a
      pixel to spare. A group is fitted jointly in one box centred on it (several emitters in one model).
   b. **Other light.** The light of every emitter outside a group that reaches its box is added to that box's
      model as fixed light (each neighbour's latest fit), so a neighbour 4-6 px away no longer pulls the fit.
      New groups, failed fits and groups whose other light changed significantly since their last fit are
      refitted.
   c. **Residual re-identification** (as 3D-DAOSTORM, Babcock et al. 2012): in each box the residual
      ``data - model`` is scanned with a PSF-weighted matched filter; a peak whose significance exceeds
      ``candidate_z`` (standard deviations of the Poisson noise of the model) becomes a candidate emitter, at
      any distance from the others (peaks closer than the box are found this way).
   d. **Model selection** (nested models, as ThunderSTORM's multi-emitter fitting, Ovesny et al. 2014, with
      the likelihood-ratio test of Huang et al. 2011): the box is refitted with one emitter more; the candidate
      is kept if twice the log-likelihood gain exceeds ``llr_threshold`` and the fit converged with every
      emitter in the box and apart from the others.
3. A last pass refits every group whose neighbours changed.

The likelihood test always uses the Poisson log-likelihood of the fitted expected image, whatever the fit's
noise model.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from .engine import (
    MAX_EMITTERS,
    MAX_PARAMS,
    MODEL_GAUSS,
    MODEL_MULTI,
    NOISE_LSQ,
    NOISE_POISSON,
    emitter_index,
    fit_boxes,
)


@dataclass
class CrowdedOptions:
    """How crowded boxes are handled (see the module docstring)."""

    #: most emitters fitted together in one box; 1 fits one emitter per identified box (Picasso's behaviour)
    max_emitters: int = 5
    #: rounds of residual re-identification
    rounds: int = 3
    #: significance (Poisson standard deviations of a PSF-weighted sum) of a residual peak to try an emitter
    candidate_z: float = 5.0
    #: 2 x log-likelihood gain an extra emitter must bring
    llr_threshold: float = 30.0
    #: emitters closer than this many PSF widths are fitted jointly in one box
    join_sigmas: float = 3.0
    #: two emitters of a model closer than this many PSF widths are one emitter
    min_separation_sigmas: float = 0.7
    #: a single emitter fitted wider than this many PSF widths is also tried as two (a pair closer than the
    #: residual shows)
    split_width: float = 1.12
    #: ... and its width exceeds the PSF's by this many of its standard deviations (a noisy width of a dim
    #: single spot is not tried as two)
    split_z: float = 3.0
    #: passes refitting every box with neighbour light before the first residual search
    settle_passes: int = 2
    #: passes refitting every box with neighbour light after the last round (neighbours' light settles)
    polish_passes: int = 0
    #: other light in a box (or a change of it) whose significance ``sum(light^2 / variance)`` is below this is
    #: ignored: the box is not refitted for it (it can bias no parameter by more than ``sqrt(light_chi2)`` of
    #: its CRLB standard deviation)
    light_chi2: float = 0.3

    def validate(self):
        if not 1 <= int(self.max_emitters) <= MAX_EMITTERS:
            raise ValueError(f"max emitters must be 1 .. {MAX_EMITTERS}, got {self.max_emitters}")


# ------------------------------------------------------------------------------------------ numba helpers
@njit(cache=True, nogil=True)
def _pixel_integrals(out, box, x, k):
    """``out[m] = (erf((m + 1/2 - x) k) - erf((m - 1/2 - x) k)) / 2`` for the ``box`` pixels of one axis
    (``k = 1 / (sqrt(2) sigma)``): a pixel-integrated unit Gaussian, each pixel edge's erf computed once."""
    lo = math.erf((-0.5 - x) * k)
    for m in range(box):
        hi = math.erf((m + 0.5 - x) * k)
        out[m] = 0.5 * (hi - lo)
        lo = hi


@njit(cache=True, nogil=True)
def _add_light(out, box, x, y, photons, sx, sy, ex, ey):
    """Add a pixel-integrated Gaussian at box coordinates (x, y) to ``out`` (box*box, flattened); ``ex``,
    ``ey``: buffers of ``box``."""
    if not (sx > 0.0 and sy > 0.0 and photons > 0.0):
        return
    _pixel_integrals(ex, box, x, 1.0 / (math.sqrt(2.0) * sx))
    _pixel_integrals(ey, box, y, 1.0 / (math.sqrt(2.0) * sy))
    for k in range(box):
        if ey[k] < 1e-12:
            continue
        for m in range(box):
            out[k * box + m] += photons * ey[k] * ex[m]


#: the screening treats a box as alone (no other light cut into it) when its other light's chi-square
#: ``sum(other^2 / variance)`` is certainly below this: that light could move the box's residual z by at most
#: ~sqrt(1e-4) = 0.01 (Cauchy-Schwarz on the matched filter) and is 3000 times below ``light_chi2``. At 55
#: spots per 256x256 frame (none within 8 px of another), 8 % of the boxes have a neighbour within the light's
#: reach, 1.1 % one whose light can matter
NEGLIGIBLE_LIGHT = 1e-4

#: batches smaller than this run on the calling thread (handing work to the pool costs more than it takes)
SERIAL_BELOW = 2048


def _kdtree(points):
    """scipy's k-d tree of ``points``, imported on first use: ``scipy.spatial`` takes ~0.25 s to import, which
    a run with nothing to refine (or the start of one, before its first chunk) need not pay."""
    from scipy.spatial import cKDTree

    return cKDTree(points)


def _threads() -> int:
    from numba import config

    return max(1, int(config.NUMBA_NUM_THREADS))


def _shared(kernel, n, *args):
    """Run ``kernel(lo, hi, *args)`` over ``[0, n)``: on this thread, or in a few shares on the identification's
    thread pool (the kernels are ``nogil`` and serial, so no parallel region is compiled)."""
    from ._threading import run_kernel

    run_kernel(kernel, n, *args, pool_name="identify", parallel=n >= SERIAL_BELOW)


def _maps(value):
    """A scalar or a per-pixel map as a 2D float64 array (1x1 for a scalar)."""
    return np.ascontiguousarray(np.atleast_2d(np.asarray(value, np.float64)))


def _group_boxes(frames, baseline, factor, variance, static, sel, gframe, gcy, gcx, egroup, order, fstarts, ex, ey,
                 eN, esx, esy, box, data, other, var, search):
    """Cut the box of each group of ``sel`` (camera counts to photons: ``(counts - baseline) * factor``, both
    scalars or per-pixel maps) and its readout-variance box (photons^2, sCMOS; ``variance`` of shape (0, 0):
    none), and render into its other light the light of every other emitter of its frame and the structure of
    the static light an identification prefilter removed (``static``, photons; (0, 0, 0): none)."""
    c = np.ascontiguousarray  # one layout, one compiled specialisation
    _shared(_group_boxes_kernel, len(sel), frames, _maps(baseline), _maps(factor), variance, static,
            c(sel, np.int64), c(gframe, np.int64), c(gcy, np.int64), c(gcx, np.int64), c(egroup, np.int64),
            c(order, np.int64), c(fstarts, np.int64), c(ex, np.float64), c(ey, np.float64), c(eN, np.float64),
            c(esx, np.float64), c(esy, np.float64), box, data, other, var, search, True)


@njit(cache=True, nogil=True)
def _cut_box(frames, baseline, factor, variance, static, f, cy, cx, g, egroup, order, a_lo, a_hi, ex, ey, eN, esx,
             esy, box, data, other, var, bx, by, want_data=True):
    """One box (frame ``f``, centre ``(cy, cx)``) of group ``g``: its photons into ``data`` (unless not
    ``want_data``), its readout variance into ``var`` (sCMOS), and into ``other`` the static light's structure
    and the light of every emitter ``order[a_lo:a_hi]`` (of frame ``f``) not in ``g`` (``egroup``) that
    reaches it. ``bx``, ``by``: buffers of ``box``. Returns False if ``other`` is all zeros (nothing was
    rendered into it)."""
    r = box // 2
    per_pixel = baseline.shape[0] > 1 or factor.shape[0] > 1
    has_var = variance.shape[0] > 0
    for k in range(box):
        for m in range(box):
            y = cy - r + k
            x = cx - r + m
            if want_data:
                if per_pixel:
                    b0 = baseline[y if baseline.shape[0] > 1 else 0, x if baseline.shape[1] > 1 else 0]
                    f0 = factor[y if factor.shape[0] > 1 else 0, x if factor.shape[1] > 1 else 0]
                else:
                    b0 = baseline[0, 0]
                    f0 = factor[0, 0]
                data[k * box + m] = (float(frames[f, y, x]) - b0) * f0
            other[k * box + m] = 0.0
            if has_var:
                var[k * box + m] = variance[y, x]
    lit = static.shape[0] > 0
    if lit:
        # the static light's structure is fixed light (its level above the box's minimum: the flat part
        # is the fitted background)
        low = 1e300
        for k in range(box):
            for m in range(box):
                low = min(low, static[f, cy - r + k, cx - r + m])
        for k in range(box):
            for m in range(box):
                other[k * box + m] = static[f, cy - r + k, cx - r + m] - low
    for a in range(a_lo, a_hi):
        j = order[a]
        if egroup[j] == g:
            continue
        reach = r + 0.5 + 5.0 * max(esx[j], esy[j])
        if abs(ex[j] - cx) > reach or abs(ey[j] - cy) > reach:
            continue
        _add_light(other, box, ex[j] - cx + r, ey[j] - cy + r, eN[j], esx[j], esy[j], bx, by)
        lit = True
    return lit


@njit(cache=True, nogil=True)
def _group_boxes_kernel(lo, hi, frames, baseline, factor, variance, static, sel, gframe, gcy, gcx, egroup, order,
                        fstarts, ex, ey, eN, esx, esy, box, data, other, var, search, want_data):
    has_var = variance.shape[0] > 0
    bx = np.empty(box)
    by = np.empty(box)
    none = np.empty(0)
    for q in range(lo, hi):
        g = sel[q]
        f = gframe[g]
        _cut_box(frames, baseline, factor, variance, static, f, gcy[g], gcx[g], g, egroup, order, fstarts[f],
                 fstarts[f + 1], ex, ey, eN, esx, esy, box, data[g], other[g], var[g] if has_var else none, bx, by,
                 want_data)


def _residual_peaks(data, other, var, K, theta, box, out, want_ll=True):
    """Per box: Poisson log-likelihood of the model and the most significant residual peak.

    ``out[g] = (loglik, z, row, column, photons, light)``: z is the PSF-weighted residual sum over its noise
    standard deviation at the best pixel, (row, column) the residual's centroid around it (box pixels),
    photons a rough estimate of the missing spot's photons, and light the significance of the box's other
    light, ``sum(other^2 / variance)`` (the chi-square it adds; see :func:`fit_crowded`). ``var``: readout
    variance boxes (sCMOS; the likelihood is then Huang et al.'s), shape (0, pixels) for none. The
    log-likelihood is skipped (0) unless ``want_ll``.
    """
    c = np.ascontiguousarray
    _shared(_residual_peaks_kernel, len(data), c(data, np.float64), c(other, np.float64), c(var, np.float64),
            c(K, np.int64), c(theta, np.float64), int(box), out, bool(want_ll))


@njit(cache=True, nogil=True)
def _box_residual(data, other, var, K, th, box, want_ll, ex, ey, res, den, hs, hv, wx, wy):
    """The residual of one box's model (``th``: the parameters of its ``K`` emitters) and its most significant
    peak: returns ``(loglik, light, z, row, column)`` (see :func:`_residual_peaks`). ``var`` of length 0: no
    readout variance. The other arguments are work buffers: ``ex``, ``ey`` (MAX_EMITTERS, box); ``res``,
    ``den`` (box * 3 box: rows padded by ``box`` zeros either side) and ``hs``, ``hv`` (3 box * box: ``box``
    rows of zeros above and below), zero outside the box; on return ``res[k * 3 box + box + m]`` is the
    residual at pixel (k, m)."""
    W = 3 * box
    # the expected photons: K pixel-integrated Gaussians (the engine's MODEL_MULTI), background, other light
    sx = th[4]
    sy = th[5]
    kx = 1.0 / (math.sqrt(2.0) * sx)
    ky = 1.0 / (math.sqrt(2.0) * sy)
    for e in range(K):
        j = 0 if e == 0 else 6 + 3 * (e - 1)
        _pixel_integrals(ex[e], box, th[j], kx)
        _pixel_integrals(ey[e], box, th[j + 1], ky)
    has_var = var.shape[0] > 0
    ll = 0.0
    light = 0.0
    if K == 1 and not has_var and not want_ll:
        # the screening's case (one emitter, no readout variance, no likelihood), in fewer operations: the
        # same numbers
        bg = th[3]
        n0 = th[2]
        for k in range(box):
            eyk = ey[0, k]
            for m in range(box):
                p = k * box + m
                o = other[p]
                u = bg + o
                u += n0 * ex[0, m] * eyk
                den[k * W + box + m] = max(u, 1e-9)
                res[k * W + box + m] = data[p] - u
                if o != 0.0:
                    light += o * o / max(max(u, 1e-9), 1.0)
        return _peak_z(res, den, hs, hv, wx, wy, sx, sy, box, ll, light)
    for k in range(box):
        for m in range(box):
            p = k * box + m
            u = th[3] + other[p]
            for e in range(K):
                u += th[2 if e == 0 else 8 + 3 * (e - 1)] * ex[e, m] * ey[e, k]
            v = var[p] if has_var else 0.0
            mv = max(u + v, 1e-9)
            den[k * W + box + m] = mv
            res[k * W + box + m] = data[p] - u
            if want_ll:
                x = data[p] + v
                if x > 0:
                    ll += x * math.log(mv / x) - mv + x
                else:
                    ll -= mv
            o = other[p]
            if o != 0.0:
                light += o * o / max(mv, 1.0)
    return _peak_z(res, den, hs, hv, wx, wy, sx, sy, box, ll, light)


@njit(cache=True, nogil=True)
def _peak_z(res, den, hs, hv, wx, wy, sx, sy, box, ll, light):
    """The most significant peak of a residual ``res`` (noise variance ``den``; :func:`_box_residual`'s padded
    layout): ``(ll, light, z, row, column)``."""
    W = 3 * box
    # matched filter (separable Gaussian weights over +-1 width): residual sum over its noise sd; the zeros
    # around the box stand for the pixels outside it
    rw = 1
    smax = max(sx, sy)
    if smax == smax:
        rw = min(box, max(1, int(round(smax))))
    for t in range(-rw, rw + 1):
        wx[t + rw] = math.exp(-0.5 * t * t / (sx * sx))
        wy[t + rw] = math.exp(-0.5 * t * t / (sy * sy))
    n_w = 2 * rw + 1
    w0, w1, w2 = wx[0], wx[1], wx[2]
    for k in range(box):
        for m in range(box):
            a_s = 0.0
            a_v = 0.0
            base = k * W + box + m - rw
            if rw == 1:  # the usual width, unrolled (the same sums)
                a_s = w0 * res[base] + w1 * res[base + 1] + w2 * res[base + 2]
                a_v = w0 * w0 * den[base] + w1 * w1 * den[base + 1] + w2 * w2 * den[base + 2]
            else:
                for t in range(n_w):
                    w = wx[t]
                    a_s += w * res[base + t]
                    a_v += w * w * den[base + t]
            hs[(k + box) * box + m] = a_s
            hv[(k + box) * box + m] = a_v
    best = -1e300
    bk = 0
    bm = 0
    w0, w1, w2 = wy[0], wy[1], wy[2]
    for k in range(box):
        for m in range(box):
            a_s = 0.0
            a_v = 0.0
            base = (k + box - rw) * box + m
            if rw == 1:
                a_s = w0 * hs[base] + w1 * hs[base + box] + w2 * hs[base + 2 * box]
                a_v = w0 * w0 * hv[base] + w1 * w1 * hv[base + box] + w2 * w2 * hv[base + 2 * box]
            else:
                for t in range(n_w):
                    w = wy[t]
                    a_s += w * hs[base + t * box]
                    a_v += w * w * hv[base + t * box]
            z = a_s / math.sqrt(max(a_v, 1e-12))
            if z > best:
                best = z
                bk = k
                bm = m
    return ll, light, best, bk, bm


@njit(cache=True, nogil=True)
def _residual_peaks_kernel(lo, hi, data, other, var, K, theta, box, out, want_ll):
    W = 3 * box
    res = np.zeros(box * W)
    den = np.zeros(box * W)
    hs = np.zeros(W * box)
    hv = np.zeros(W * box)
    ex = np.empty((MAX_EMITTERS, box))
    ey = np.empty((MAX_EMITTERS, box))
    wx = np.empty(2 * box + 1)
    wy = np.empty(2 * box + 1)
    has_var = var.shape[0] > 0
    none = np.empty(0)
    for g in range(lo, hi):
        ll, light, best, bk, bm = _box_residual(data[g], other[g], var[g] if has_var else none, K[g], theta[g], box,
                                                want_ll, ex, ey, res, den, hs, hv, wx, wy)
        out[g, 0] = ll
        out[g, 5] = light
        sx = theta[g, 4]
        sy = theta[g, 5]
        # centroid of the positive residual around the peak, and the photons it holds
        tot = 0.0
        ck = 0.0
        cm = 0.0
        for a in range(max(0, bk - 1), min(box, bk + 2)):
            for b in range(max(0, bm - 1), min(box, bm + 2)):
                d = res[a * W + box + b]
                if d > 0:
                    tot += d
                    ck += d * a
                    cm += d * b
        if tot > 0:
            ck /= tot
            cm /= tot
        else:
            ck = bk
            cm = bm
        fx = math.erf(1.5 / (math.sqrt(2.0) * sx))
        fy = math.erf(1.5 / (math.sqrt(2.0) * sy))
        out[g, 1] = best
        out[g, 2] = ck
        out[g, 3] = cm
        out[g, 4] = max(tot / max(fx * fy, 0.05), 10.0)


@njit(cache=True, nogil=True)
def _erf_approx(x):
    """erf(x) to 3e-7 (Abramowitz & Stegun 1964, 7.1.28: ``1 - (1 + a1 x + ... + a6 x^6)^-16``): no ``exp``,
    a third of the library erf's time; for the screening's model, where 3e-7 of a spot's photons per pixel is
    far below any pixel's noise."""
    a = abs(x)
    p = 1.0 + a * (0.0705230784 + a * (0.0422820123 + a * (0.0092705272 + a * (0.0001520143 + a * (
        0.0002765672 + a * 0.0000430638)))))
    p *= p
    p *= p
    p *= p
    p *= p
    y = 1.0 - 1.0 / p
    return y if x >= 0.0 else -y


@njit(cache=True, nogil=True)
def _pixel_integrals_approx(out, box, x, k):
    """:func:`_pixel_integrals` with :func:`_erf_approx` (each value within 3e-7)."""
    lo = _erf_approx((-0.5 - x) * k)
    for m in range(box):
        hi = _erf_approx((m + 0.5 - x) * k)
        out[m] = 0.5 * (hi - lo)
        lo = hi


@njit(cache=True, nogil=True, forceinline=True)
def _unlit_z(spots, g, th, box, ex, ey, dp, hs, sx_, sy_):
    """:func:`_box_residual`'s ``z`` of a box with no other light, one emitter, no readout variance, a positive
    background and photons and a matched filter of +-1 pixel: the filter is separable, so its model terms
    are products of one-dimensional sums and only the data is filtered; the emitter's pixel integrals come
    from :func:`_erf_approx` (``z`` within ~1e-4 of :func:`_box_residual`'s; it is compared with
    ``candidate_z``) and the best pixel is found on ``z |z|`` (one division a pixel, no square root).
    ``spots[g]``: the box's photons; ``dp`` (box * 3 box) and ``hs`` (3 box * box) zero outside the box;
    ``sx_``, ``sy_``: buffers of (4, box)."""
    W = 3 * box
    sx = th[4]
    sy = th[5]
    _pixel_integrals_approx(ex, box, th[0], 1.0 / (math.sqrt(2.0) * sx))
    _pixel_integrals_approx(ey, box, th[1], 1.0 / (math.sqrt(2.0) * sy))
    bg = th[3]
    n0 = th[2]
    for k in range(box):
        for m in range(box):
            dp[k * W + box + m] = spots[g, k * box + m]
    # per axis: the window sums of the weights, of their squares, and of the emitter's profile with both
    wx0 = math.exp(-0.5 / (sx * sx))
    wy0 = math.exp(-0.5 / (sy * sy))
    for axis in range(2):
        prof = ex if axis == 0 else ey
        out = sx_ if axis == 0 else sy_
        w0 = wx0 if axis == 0 else wy0
        for m in range(box):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for t in range(-1, 2):
                b = m + t
                if 0 <= b < box:
                    w = 1.0 if t == 0 else w0
                    a0 += w
                    a1 += w * w
                    a2 += w * prof[b]
                    a3 += w * w * prof[b]
            out[0, m] = a0
            out[1, m] = a1
            out[2, m] = a2
            out[3, m] = a3
    for k in range(box):
        for m in range(box):
            base = k * W + box + m - 1
            hs[(k + box) * box + m] = wx0 * dp[base] + dp[base + 1] + wx0 * dp[base + 2]
    best = -1e300
    for k in range(box):
        for m in range(box):
            base = (k + box - 1) * box + m
            a_s = wy0 * hs[base] + hs[base + box] + wy0 * hs[base + 2 * box]
            a_s -= bg * sx_[0, m] * sy_[0, k] + n0 * sx_[2, m] * sy_[2, k]
            a_v = bg * sx_[1, m] * sy_[1, k] + n0 * sx_[3, m] * sy_[3, k]
            z2 = a_s * abs(a_s) / max(a_v, 1e-12)
            if z2 > best:
                best = z2
    return math.copysign(math.sqrt(abs(best)), best)


def _screen(cam, G, E, theta, out, spots=None):
    """The screening of every box of ``G`` (one emitter each, its own group; ``theta`` its single fit): per
    box ``out[g] = (z, light)`` of :func:`_residual_peaks` for the box cut by :func:`_group_boxes`, without
    storing the boxes. ``spots``: the boxes' photons (n, box, box) as the single fit saw them, read instead of
    the frames (in order, so faster), or None."""
    c = np.ascontiguousarray
    n = len(G.frame)
    if spots is None or np.shape(spots)[0] != n:
        spots = np.zeros((0, cam.npx), np.float32)
    spots = c(np.reshape(spots, (len(spots), cam.npx)), np.float32)
    order = np.arange(n, dtype=np.int64)
    frame = c(G.frame, np.int64)
    if n > 1 and np.any(np.diff(frame) < 0):
        order = np.argsort(frame, kind="stable").astype(np.int64)
    fstarts = np.searchsorted(frame[order], np.arange(cam.n_frames + 1)).astype(np.int64)
    # the emitters whose light can reach a box: within r + 1/2 + 5 widths (as _cut_box renders it) of its
    # centre; in the identification's row-major order they are a window of rows, found by bisection
    yb = c(E.hy[order], np.int64)
    same = frame[order][1:] == frame[order][:-1]
    with np.errstate(invalid="ignore"):
        dev = np.abs(E.y - E.hy)
        reach = cam.box // 2 + 0.5 + 5.0 * np.fmax(E.sx, E.sy)
        span = float(np.nanmax(reach) + np.max(dev)) if n else 0.0
    if not (np.isfinite(span) and np.all(np.diff(yb)[same] >= 0)):
        span = -1.0  # scan every emitter of the frame
    _shared(_screen_kernel, n, cam.frames, spots, cam.baseline, cam.factor, cam.variance, cam.static, frame,
            c(G.cy, np.int64), c(G.cx, np.int64), order, fstarts, yb, span, np.arange(n, dtype=np.int64),
            c(E.x, np.float64), c(E.y, np.float64), c(E.N, np.float64), c(E.sx, np.float64), c(E.sy, np.float64),
            c(theta, np.float64), cam.box, out, 1, False)


@njit(cache=True, nogil=True)
def _screen_kernel(lo, hi, frames, spots, baseline, factor, variance, static, gframe, gcy, gcx, order, fstarts, yb,
                   span, egroup, ex, ey, eN, esx, esy, theta, box, out, k1, want_ll):
    # k1 = 1 and want_ll = False come as arguments: literals would compile _box_residual and _cut_box a second
    # time
    npx = box * box
    W = 3 * box
    has_var = variance.shape[0] > 0
    data = np.empty(npx)
    other = np.empty(npx)
    var = np.empty(npx if has_var else 0)
    res = np.zeros(box * W)
    den = np.zeros(box * W)
    hs = np.zeros(W * box)
    hv = np.zeros(W * box)
    bx = np.empty((1, box))
    by = np.empty((1, box))
    wx = np.empty(2 * box + 1)
    wy = np.empty(2 * box + 1)
    read = spots.shape[0] > 0
    sums_x = np.empty((4, box))
    sums_y = np.empty((4, box))
    for q in range(lo, hi):
        g = order[q]
        f = gframe[g]
        a_lo = fstarts[f]
        a_hi = fstarts[f + 1]
        if span >= 0.0:  # the emitters of rows cy +- span (bisection: yb is sorted within the frame)
            lo_ = a_lo
            hi_ = a_hi
            while lo_ < hi_:
                mid = (lo_ + hi_) // 2
                if yb[mid] < gcy[g] - span:
                    lo_ = mid + 1
                else:
                    hi_ = mid
            top = a_hi
            hi_ = a_hi
            a_lo = lo_
            while lo_ < hi_:
                mid = (lo_ + hi_) // 2
                if yb[mid] <= gcy[g] + span:
                    lo_ = mid + 1
                else:
                    hi_ = mid
            a_hi = min(lo_, top)
        th = theta[g]
        smax = max(th[4], th[5])
        usual = read and not has_var and th[3] > 1e-9 and th[2] >= 0.0 and smax < 1.5 and th[4] > 0.0 and th[5] > 0.0
        if usual and static.shape[0] == 0:
            # most boxes: can other emitters' light in reach (_cut_box's test, written out here: a shared helper
            # made the screening ~19 % slower) matter? Their photons inside the box are at most each one's
            # Gaussian mass beyond the box's nearer edge on each axis, ``t``; the light's chi-square
            # sum(other^2 / u), u >= max(bg, 1), is then at most (sum t)^2 / max(bg, 1). Below NEGLIGIBLE_LIGHT
            # the box counts as alone and nothing is cut
            r = box // 2
            edge = r + 0.5
            near = 0.0
            for a in range(a_lo, a_hi):
                j = order[a]
                if egroup[j] == g:
                    continue
                reach = edge + 5.0 * max(esx[j], esy[j])
                dx = abs(ex[j] - gcx[g])
                dy = abs(ey[j] - gcy[g])
                if dx > reach or dy > reach:
                    continue
                t = eN[j] if eN[j] > 0.0 else 0.0  # _add_light renders no emitter without photons
                if dx > edge:
                    t *= 0.5 * math.erfc((dx - edge) / (math.sqrt(2.0) * esx[j]))
                if dy > edge:
                    t *= 0.5 * math.erfc((dy - edge) / (math.sqrt(2.0) * esy[j]))
                near += t
            lit = not (near * near <= NEGLIGIBLE_LIGHT * max(th[3], 1.0))
        else:
            lit = True
        if lit:
            lit = _cut_box(frames, baseline, factor, variance, static, f, gcy[g], gcx[g], g, egroup, order, a_lo,
                           a_hi, ex, ey, eN, esx, esy, box, data, other, var, bx[0], by[0], not read)
        if usual and not lit:
            # the usual box: alone, a one-pixel filter (the width rounds to 1)
            if box == 7:
                # the same call, on purpose: _unlit_z is inlined, and in this branch LLVM knows box == 7, so it
                # unrolls this copy's pixel loops for the default box (280 against 360 ns). A literal 7 would do
                # the same but type and compile _unlit_z a second time (+0.7 s CPU on a first run)
                out[g, 0] = _unlit_z(spots, g, th, box, bx[0], by[0], res, hs, sums_x, sums_y)
            else:
                out[g, 0] = _unlit_z(spots, g, th, box, bx[0], by[0], res, hs, sums_x, sums_y)
            out[g, 1] = 0.0
            continue
        if read:
            for p in range(npx):
                data[p] = spots[g, p]
        ll, light, best, bk, bm = _box_residual(data, other, var, k1, th, box, want_ll, bx, by, res, den, hs, hv, wx,
                                                wy)
        out[g, 0] = best
        out[g, 1] = light


def compile_kernels(frames_dtype) -> None:
    """Compile (or load from numba's cache) the screening, cutting and residual kernels for frames of
    ``frames_dtype``, with the argument types a run passes them, on a tiny synthetic chunk (no fit, nothing
    stored): what :mod:`~napari_localize.core.warmup` runs in a second process while a first run identifies
    and fits its first chunk. The run then loads them instead of compiling them (``tests/test_warmup.py``
    checks that it compiles none of them again)."""
    from .identify import IDENTIFICATION_DTYPE

    box, sigma, n = 7, 1.2, 2
    frames = np.full((1, 3 * box, 3 * box), 110, np.dtype(frames_dtype))
    ids = np.zeros(n, IDENTIFICATION_DTYPE)
    ids["y"] = box
    ids["x"] = (box, 2 * box)
    ones = np.ones(n)
    fit0 = {"converged": np.ones(n, bool), "dx": 0.0 * ones, "dy": 0.0 * ones, "photons": 500.0 * ones,
            "bg": 10.0 * ones, "sx": sigma * ones, "sy": sigma * ones}
    cam = _Camera(np.ascontiguousarray(frames), 100.0, 0.5, None, None, box)
    E, _ = _emitters(ids, fit0, sigma)
    G = _Boxes(np.asarray(ids["frame"], np.int64), np.asarray(ids["y"], np.int64), np.asarray(ids["x"], np.int64))
    theta = _single_theta(fit0, box)
    _screen(cam, G, E, theta, np.zeros((n, 2)), np.zeros((n, box, box), np.float32))
    # the boxes cut with their neighbours' light and searched, as the split test and the refinement do
    order, fstarts = _frame_index(E, cam.n_frames, np.ones(n, bool))
    data, other, var, search = cam.empty(n)
    cam.cut(np.arange(n, dtype=np.int64), G, np.arange(n, dtype=np.int64), order, fstarts, E, data, other, var,
            search)
    _residual_peaks(data, other, var, np.ones(n, np.int64), theta, box, np.zeros((n, 6)))


def kernels_cached(frames_dtype) -> bool:
    """Whether :func:`compile_kernels` of ``frames_dtype`` would find its kernels in numba's cache (or
    compiled here): the screening's and the cut's cache indexes hold an entry for frames of that dtype, the
    residual search's one at all."""
    from numba import typeof

    from .warmup import in_cache

    frames_type = typeof(np.zeros((1, 1, 1), np.dtype(frames_dtype)))
    of_dtype = lambda sig: len(sig) > 2 and sig[2] == frames_type  # noqa: E731  (frames: the third argument)
    return (in_cache(_screen_kernel, of_dtype) and in_cache(_group_boxes_kernel, of_dtype)
            and in_cache(_residual_peaks_kernel, lambda sig: True))


def _step(v):
    # rounded to steps of 1/32 octave (the width statistics below move by < 0.6 % within a step)
    return float(2.0 ** (round(math.log2(v) * 32.0) / 32.0))


#: the chunk's typical spot (medians of photons, background, narrower width) is taken over at most about this
#: many of its converged single fits, evenly spaced: the medians' sampling error is then 2 % of a spot's
#: scatter, below the rounding of :func:`_width_noise`, and a chunk of 27 500 spots spends 0.1 ms on them, not 2
TYPICAL_SAMPLE = 4096


def _typical(theta, ok):
    """The chunk's typical single spot from its single fits ``theta`` (rows x, y, N, bg, sx, sy; ``ok``: the
    converged ones): median photons and background (rounded to 1/32 octave) and the median of each spot's
    narrower width; None if no fit converged with finite values."""
    rows = np.flatnonzero(ok)
    rows = rows[:: max(1, len(rows) // TYPICAL_SAMPLE)]
    t = theta[rows]
    t = t[np.isfinite(t[:, 2:6]).all(axis=1)]
    if len(t) == 0:
        return None
    s_min = float(np.median(np.minimum(t[:, 4], t[:, 5])))
    return _step(float(np.median(np.maximum(t[:, 2], 1.0)))), _step(float(np.median(np.maximum(t[:, 3], 0.01)))), s_min


def _width_noise(typical, sigma, box, noise=NOISE_POISSON):
    """How much a single spot's fitted width scatters in this chunk: the standard deviation of ``sx`` for the
    chunk's ``typical`` spot (:func:`_typical`: its photons and background) at width ``sigma``
    (:func:`_width_stats`) for the fit's ``noise`` model, and those photons (it scales about as
    ``1 / sqrt(photons)``). ``sigma`` is rounded to 1/200 px (the standard deviation moves by < 0.6 %), so the
    chunks of one movie share one computation."""
    N, bg = typical[:2] if typical is not None else (1000.0, 1.0)
    return _width_stats(N, bg, round(float(sigma) * 200.0) / 200.0, int(box), noise == NOISE_LSQ)[0], N


def _psf_width(typical, box, noise=NOISE_POISSON):
    """The PSF width (px) of a chunk from its ``typical`` spot (:func:`_typical`): the median of each spot's
    narrower fitted width (a blend of two spots widens one axis, rarely both, so this holds in crowded fields),
    corrected for the bias of that minimum. A single spot's fitted ``sx`` and ``sy`` scatter by ``sd`` with
    correlation ``rho`` (:func:`_width_stats` at the typical photons and background), so the narrower of the two
    is on average ``sd sqrt((1 - rho) / pi)`` below the true width (0.016 px, half a standard deviation, for
    2000 photons, bg 20 and LQ): uncorrected, single spots looked wider than the PSF by that much, and 0.4 % of
    the isolated spots of a sparse LQ movie went to the split test instead of 0.07 %."""
    if typical is None or not typical[2] > 0.0:
        return 1.0
    N, bg, s_min = typical
    sd, rho = _width_stats(N, bg, round(s_min * 200.0) / 200.0, int(box), noise == NOISE_LSQ)
    bias = sd * math.sqrt(max(1.0 - rho, 0.0) / math.pi) if np.isfinite(sd) else 0.0
    return s_min + min(bias, 0.1 * s_min)


@functools.lru_cache(maxsize=256)
def _width_stats(N, bg, sigma, box, least_squares=False):
    """Standard deviation of the fitted ``sx`` of a single Gaussian spot (photons ``N``, background ``bg``,
    width ``sigma``, centred in the box) under Poisson noise, and the correlation of ``sx`` with ``sy``: from
    the Cramér-Rao bound (the engine's Fisher matrix), which the likelihood fits reach; for unweighted least
    squares (``least_squares``), which does not reach it, from the estimator's own covariance
    ``(J^T J)^-1 J^T diag(mu) J (J^T J)^-1`` (``J``: the model's Jacobian, ``mu``: its expected photons). On
    simulated isolated spots (2000 photons, bg 20, sigma 1 px) the fitted widths scatter by 0.0288 px (MLE)
    and 0.0350 px (LQ) against 0.0287 and 0.0367 from here."""
    from .engine import MODEL_GAUSS, curvature
    from .engine.models import SCRATCH_ROWS, pixel, prepare

    r = box // 2
    try:
        if not least_squares:
            F = curvature([r, r, N, bg, sigma, sigma], box, MODEL_GAUSS, compiled=False)  # ~1 ms, no compile
            cov = np.linalg.inv(F)
        else:
            # the engine's model functions in the interpreter, as curvature(compiled=False)
            theta = np.zeros(MAX_PARAMS)
            theta[:6] = (r, r, N, bg, sigma, sigma)
            aux = np.zeros(1)
            scratch = np.zeros((SCRATCH_ROWS, box))
            jrow = np.zeros(MAX_PARAMS)
            prepare(MODEL_GAUSS, theta, box, aux, scratch)
            J = np.empty((box * box, 6))
            mu = np.empty(box * box)
            for k in range(box):
                for m in range(box):
                    mu[k * box + m] = pixel(MODEL_GAUSS, theta, k, m, aux, scratch, jrow, True)
                    J[k * box + m] = jrow[:6]
            A = np.linalg.inv(J.T @ J)
            cov = A @ (J.T @ (mu[:, None] * J)) @ A
        sd = float(np.sqrt(cov[4, 4]))
        rho = float(cov[4, 5] / np.sqrt(cov[4, 4] * cov[5, 5]))
    except np.linalg.LinAlgError:
        return np.inf, 0.0
    return (sd, rho) if np.isfinite(sd) and np.isfinite(rho) else (np.inf, 0.0)


def _wide(theta, sigma, options, width_noise):
    """Single-emitter fits (``theta`` rows: x, y, N, bg, sx, sy) wider than the PSF by ``split_width`` and
    by ``split_z`` standard deviations of a single spot's fitted width (:func:`_width_noise`, scaled to each
    spot's photons)."""
    sd, n_med = width_noise
    s = np.maximum(theta[:, 4], theta[:, 5])
    with np.errstate(invalid="ignore", divide="ignore"):
        sd_i = sd * np.sqrt(n_med / np.maximum(theta[:, 2], 1.0))
        return (s > options.split_width * sigma) & (s - sigma > options.split_z * sd_i)


def _split_starts(data, theta, box, sigma):
    """Start parameters of two emitters for one-emitter fits ``theta`` that came out wider than the PSF.

    The pair lies along the elongation: half-separations ``sqrt(s^2 - sigma^2)`` in x and y from the fitted
    widths, the diagonal's sign from the data's xy moment about the fitted centre.
    """
    out = np.zeros((len(theta), MAX_PARAMS))
    if len(theta) == 0:
        return out
    d = data.reshape(len(theta), box, box) - theta[:, 3][:, None, None]
    k, m = np.mgrid[0:box, 0:box]
    cxy = np.sum(d * (m[None] - theta[:, 0][:, None, None]) * (k[None] - theta[:, 1][:, None, None]), axis=(1, 2))
    ax = np.sqrt(np.maximum(theta[:, 4] ** 2 - sigma**2, 0.0))
    ay = np.sqrt(np.maximum(theta[:, 5] ** 2 - sigma**2, 0.0)) * np.where(cxy < 0, -1.0, 1.0)
    out[:, 0] = theta[:, 0] - ax
    out[:, 1] = theta[:, 1] - ay
    out[:, 2] = 0.5 * theta[:, 2]
    out[:, 3] = theta[:, 3]
    out[:, 4] = sigma
    out[:, 5] = sigma
    out[:, 6] = theta[:, 0] + ax
    out[:, 7] = theta[:, 1] + ay
    out[:, 8] = 0.5 * theta[:, 2]
    return out


# ------------------------------------------------------------------------------------------ orchestration
class _Emitters:
    """Growing per-emitter state (frame coordinates)."""

    def __init__(self, frame, x, y, N, bg, sx, sy, ng):
        self.frame = np.asarray(frame, np.int64)
        self.x = np.asarray(x, float)
        self.y = np.asarray(y, float)
        self.N = np.asarray(N, float)
        self.bg = np.asarray(bg, float)
        self.sx = np.asarray(sx, float)
        self.sy = np.asarray(sy, float)
        self.ng = np.asarray(ng, np.float32)
        self.added = np.zeros(len(self.x), bool)
        #: the box an emitter alone is fitted in: its identified pixel (an added emitter: its nearest pixel)
        self.hx = np.rint(self.x).astype(np.int64)
        self.hy = np.rint(self.y).astype(np.int64)
        #: twice the log-likelihood gain that accepted this emitter (0: identified, not added)
        self.llr = np.zeros(len(self.x))

    def __len__(self):
        return len(self.x)

    def append(self, frame, x, y, N, bg, sx, sy, ng):
        for name, v in (("frame", frame), ("x", x), ("y", y), ("N", N), ("bg", bg), ("sx", sx), ("sy", sy),
                        ("ng", ng)):
            cur = getattr(self, name)
            setattr(self, name, np.concatenate([cur, np.asarray(v, cur.dtype)]))
        self.added = np.concatenate([self.added, np.ones(len(np.atleast_1d(x)), bool)])
        self.hx = np.concatenate([self.hx, np.rint(np.atleast_1d(x)).astype(np.int64)])
        self.hy = np.concatenate([self.hy, np.rint(np.atleast_1d(y)).astype(np.int64)])
        self.llr = np.concatenate([self.llr, np.zeros(len(np.atleast_1d(x)))])


class _Groups:
    """Groups of emitters fitted in one box: CSR membership, box centres and the latest fit."""

    def __init__(self, frame, cy, cx, start, members, npx):
        self.frame = np.asarray(frame, np.int64)
        self.cy = np.asarray(cy, np.int64)
        self.cx = np.asarray(cx, np.int64)
        self.start = np.asarray(start, np.int64)
        self.members = np.asarray(members, np.int64)
        G = len(self.frame)
        self.K = np.diff(self.start).astype(np.int64)
        self.theta = np.zeros((G, MAX_PARAMS))
        self.var = np.full((G, MAX_PARAMS), np.nan)
        self.obj = np.zeros(G)
        self.iterations = np.zeros(G, np.int64)
        self.converged = np.zeros(G, bool)
        self.llr = np.zeros(G)
        self.fitted = np.zeros(G, bool)
        #: photons of other light in the box when it was last fitted
        self.light = np.zeros(G)
        #: the residual of the latest fit was searched (and gave no emitter that passed the test)
        self.checked = np.zeros(G, bool)
        #: the other light in the box when it was last fitted (photons per pixel)
        self.other_fit = np.zeros((G, npx))
        #: the last fit had other light in its box
        self.lit = np.zeros(G, bool)

    def __len__(self):
        return len(self.frame)

    def member_list(self, g):
        return self.members[self.start[g]:self.start[g + 1]]


def _frame_index(E, n_frames, alive):
    idx = np.flatnonzero(alive)
    order = idx[np.argsort(E.frame[idx], kind="stable")]
    fstarts = np.searchsorted(E.frame[order], np.arange(n_frames + 1)).astype(np.int64)
    return order.astype(np.int64), fstarts


@njit(cache=True, nogil=True)
def _join(a, b, x, y, n, max_emitters, span_max):
    """Union-find over the edges (a[k], b[k]) taken in order, keeping groups small and box-sized."""
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    x0 = x.copy()
    x1 = x.copy()
    y0 = y.copy()
    y1 = y.copy()
    for k in range(a.shape[0]):
        i = a[k]
        while parent[i] != i:
            i = parent[i]
        j = b[k]
        while parent[j] != j:
            j = parent[j]
        if i == j or size[i] + size[j] > max_emitters:
            continue
        nx0 = min(x0[i], x0[j])
        nx1 = max(x1[i], x1[j])
        ny0 = min(y0[i], y0[j])
        ny1 = max(y1[i], y1[j])
        if nx1 - nx0 > span_max or ny1 - ny0 > span_max:
            continue
        parent[j] = i
        size[i] += size[j]
        x0[i], x1[i], y0[i], y1[i] = nx0, nx1, ny0, ny1
    root = np.empty(n, np.int64)
    for i in range(n):
        j = i
        while parent[j] != j:
            j = parent[j]
        root[i] = j
    return root


def _make_groups(E, alive, box, height, width, max_emitters, join_px):
    """Join emitters of one frame closer than ``join_px``, nearest pairs first, within the size limits."""
    idx = np.flatnonzero(alive)
    n = len(E)
    a = b = np.zeros(0, np.int64)
    if max_emitters > 1 and len(idx) > 1:
        # frames far apart in a combined coordinate so one tree serves the chunk
        pts = np.column_stack([E.x[idx] + E.frame[idx] * 1e5, E.y[idx]])
        pairs = _kdtree(pts).query_pairs(join_px, output_type="ndarray")
        if len(pairs):
            a, b = idx[pairs[:, 0]], idx[pairs[:, 1]]
            o = np.argsort(np.hypot(E.x[a] - E.x[b], E.y[a] - E.y[b]), kind="stable")
            a, b = a[o].astype(np.int64), b[o].astype(np.int64)
    root = _join(a, b, E.x, E.y, n, int(max_emitters), float(box - 3))
    members = idx[np.lexsort((idx, root[idx]))]
    rs = root[members]
    start = np.concatenate([[0], np.flatnonzero(np.diff(rs)) + 1, [len(members)]]).astype(np.int64)
    r = box // 2
    if len(members):
        s0 = start[:-1]
        cx = np.rint(0.5 * (np.minimum.reduceat(E.x[members], s0) + np.maximum.reduceat(E.x[members], s0)))
        cy = np.rint(0.5 * (np.minimum.reduceat(E.y[members], s0) + np.maximum.reduceat(E.y[members], s0)))
        # an emitter alone stays in its own box while it lies a pixel inside it (sparse spots keep the box,
        # and so the fit, of the identification)
        one = np.diff(start) == 1
        m0 = members[s0]
        home = one & (np.abs(E.x[m0] - E.hx[m0]) <= 1.0) & (np.abs(E.y[m0] - E.hy[m0]) <= 1.0)
        cx = np.where(home, E.hx[m0], cx)
        cy = np.where(home, E.hy[m0], cy)
        cx = np.clip(cx, r, width - r - 1).astype(np.int64)
        cy = np.clip(cy, r, height - r - 1).astype(np.int64)
        frame = E.frame[members[s0]]
    else:
        cx = cy = frame = np.zeros(0, np.int64)
    return _Groups(frame, cy, cx, start, members, box * box)


def _slots(G, gsel):
    """For groups ``gsel``: row (into gsel), emitter, theta index of x, for every member."""
    K = G.K[gsel]
    rows = np.repeat(np.arange(len(gsel)), K)
    first = np.repeat(G.start[gsel], K)
    pos = np.arange(len(rows)) - np.repeat(np.cumsum(K) - K, K)
    mem = G.members[first + pos]
    j = np.where(pos == 0, 0, 6 + 3 * (pos - 1))
    return rows, mem, j


def _theta_from_emitters(E, G, gsel, box):
    """Start parameters of groups ``gsel`` from their members' latest values."""
    r = box // 2
    theta = np.zeros((len(gsel), MAX_PARAMS))
    if len(gsel) == 0:
        return theta
    rows, mem, j = _slots(G, gsel)
    theta[rows, j] = E.x[mem] - G.cx[gsel][rows] + r
    theta[rows, j + 1] = E.y[mem] - G.cy[gsel][rows] + r
    theta[rows, j + 2] = np.maximum(E.N[mem], 10.0)
    w = np.maximum(E.N[mem], 1.0)
    wsum = np.bincount(rows, w, len(gsel))
    theta[:, 3] = np.maximum(np.bincount(rows, w * E.bg[mem], len(gsel)) / wsum, 1e-2)
    theta[:, 4] = np.bincount(rows, w * E.sx[mem], len(gsel)) / wsum
    theta[:, 5] = np.bincount(rows, w * E.sy[mem], len(gsel)) / wsum
    return theta


def _store(E, G, gsel, theta, box):
    """Write the fitted parameters of groups ``gsel`` back to their members."""
    r = box // 2
    if len(gsel) == 0:
        return
    rows, mem, j = _slots(G, gsel)
    E.x[mem] = theta[rows, j] + G.cx[gsel][rows] - r
    E.y[mem] = theta[rows, j + 1] + G.cy[gsel][rows] - r
    E.N[mem] = theta[rows, j + 2]
    E.bg[mem] = theta[rows, 3]
    E.sx[mem] = theta[rows, 4]
    E.sy[mem] = theta[rows, 5]


def _inherit(G_old, G_new, n, alive):
    """Copy the fit of every old group whose members (in order) and box are unchanged into ``G_new``."""
    og = np.full(n, -1, np.int64)
    og[G_old.members] = np.repeat(np.arange(len(G_old)), G_old.K)
    if len(G_new) == 0:
        return
    first = G_new.members[G_new.start[:-1]]
    cand = og[first]
    same = (cand >= 0)
    c = np.where(same, cand, 0)
    same &= G_old.fitted[c] & (G_old.K[c] == G_new.K) & (G_old.cy[c] == G_new.cy) & (G_old.cx[c] == G_new.cx)
    # every member in the same old group, at the same place
    rows = np.repeat(np.arange(len(G_new)), G_new.K)
    pos = np.arange(len(rows)) - np.repeat(G_new.start[:-1], G_new.K)
    mem = G_new.members
    ok_mem = (og[mem] == c[rows]) & (G_old.members[np.minimum(G_old.start[c[rows]] + pos, len(G_old.members) - 1)]
                                      == mem) & alive[mem]
    same &= np.bincount(rows, ~ok_mem, len(G_new)) == 0
    s = np.flatnonzero(same)
    src = c[s]
    G_new.theta[s], G_new.var[s], G_new.obj[s] = G_old.theta[src], G_old.var[src], G_old.obj[src]
    G_new.iterations[s], G_new.converged[s], G_new.llr[s] = G_old.iterations[src], G_old.converged[src], \
        G_old.llr[src]
    G_new.fitted[s] = True
    G_new.light[s] = G_old.light[src]
    G_new.checked[s] = G_old.checked[src]
    G_new.other_fit[s] = G_old.other_fit[src]
    G_new.lit[s] = G_old.lit[src]


#: the crowded refits go to the engine in batches of at most this many boxes, shared by the identification's
#: threads: the engine runs a batch this small on its calling thread, without a parallel launch (which costs
#: more than a few hundred small fits take)
FIT_BATCH = 192


def _fit_batches(spots, model, noise, theta0, aux, other, variance, eps, max_iterations, device):
    """:func:`~napari_localize.core.engine.fit_boxes` of ``spots``, several small batches at a time on threads.

    A batch's work is counted in single-emitter fits: a fit of K emitters costs ~K^2 of them (its normal
    equations), so the ~100 two-emitter split tests of a sparse chunk (~5 ms) are shared between the threads
    too."""
    from .engine import FitResult

    n = len(spots)
    kw = dict(aux=aux, eps=eps, max_iterations=max_iterations, device=device)
    per_fit = float(aux[0]) ** 2 if int(model) == MODEL_MULTI and len(aux) else 1.0
    threads = _threads()
    if device != "cpu" or n * per_fit <= FIT_BATCH or threads == 1:
        return fit_boxes(spots, model, noise, theta0=theta0, other=other, variance=variance, **kw)
    from .identify import _pool

    size = min(FIT_BATCH, -(-n // threads))
    edges = list(range(0, n, size)) + [n]
    jobs = [_pool().submit(fit_boxes, spots[a:b], model, noise, theta0=theta0[a:b], other=other[a:b],
                           variance=None if variance is None else variance[a:b], **kw)
            for a, b in zip(edges[:-1], edges[1:], strict=True)]
    parts = [job.result() for job in jobs]
    return FitResult(*(np.concatenate([getattr(r, f) for r in parts]) for f in
                       ("theta", "crlb", "objective", "iterations", "converged", "gof")))


def _emitters(ids, fit0, sigma):
    """The emitters of the single-emitter fits ``fit0`` of the boxes ``ids`` (failed fits at their box's
    centre, at width ``sigma``), and which fits failed."""
    conv0 = np.asarray(fit0["converged"], bool)
    E = _Emitters(ids["frame"], ids["x"] + np.where(conv0, fit0["dx"], 0.0),
                  ids["y"] + np.where(conv0, fit0["dy"], 0.0), fit0["photons"], fit0["bg"], fit0["sx"], fit0["sy"],
                  ids["net_gradient"])
    E.hx = np.asarray(ids["x"], np.int64).copy()
    E.hy = np.asarray(ids["y"], np.int64).copy()
    # failed single fits restart from their box's moments
    bad = ~conv0 | ~np.isfinite(E.x) | ~np.isfinite(E.N)
    E.x[bad] = ids["x"][bad]
    E.y[bad] = ids["y"][bad]
    E.sx[bad] = sigma
    E.sy[bad] = sigma
    E.N[bad] = np.where(np.isfinite(E.N[bad]) & (E.N[bad] > 10), E.N[bad], 100.0)
    E.bg[bad] = np.where(np.isfinite(E.bg[bad]) & (E.bg[bad] > 0), E.bg[bad], 1.0)
    return E, bad


def _single_theta(fit0, box):
    """The single fits' parameters (x, y in box pixels, N, bg, sx, sy), one row per box."""
    r = box // 2
    return np.column_stack([fit0["dx"] + r, fit0["dy"] + r, fit0["photons"], fit0["bg"], fit0["sx"],
                            fit0["sy"]]).astype(np.float64)


def _state(ids, fit0, box, sigma):
    """Emitters and singleton groups (one per identified box) with the single-emitter fits ``fit0``."""
    conv0 = np.asarray(fit0["converged"], bool)
    E, bad = _emitters(ids, fit0, sigma)
    G = _Groups(ids["frame"], ids["y"], ids["x"], np.arange(len(E) + 1), np.arange(len(E)), box * box)
    G.theta[:, :6] = _single_theta(fit0, box)
    nan = np.full(len(E), np.nan)
    var0 = np.column_stack([fit0["lpx"], fit0["lpy"]] + [fit0.get(k, nan) for k in
                                                         ("photons_unc", "bg_unc", "sx_unc", "sy_unc")]) ** 2
    G.var[:, :6] = var0
    G.obj[:] = fit0["log_likelihood"] if "log_likelihood" in fit0 else -0.5 * fit0["residual_sum_squares"]
    G.iterations[:] = fit0["iterations"]
    G.converged[:] = conv0
    G.fitted[:] = conv0
    return E, G, bad


@dataclass
class _Boxes:
    """Box places (frame, centre row and column) for :meth:`_Camera.cut`."""

    frame: np.ndarray
    cy: np.ndarray
    cx: np.ndarray


def _split_test(cam, G, theta, E, sel, p, options, noise, device, sigma):
    """The refinement's split test (:func:`_refine`, step d) of single-emitter boxes ``sel`` (of the boxes
    ``G``, box g holding emitter g, fitted with ``theta[g]``) with no other light: whether the box fitted as two
    (started from :func:`_split_starts`) converges with the two apart and gains ``llr_threshold`` in twice the
    log-likelihood."""
    box = cam.box
    n = len(sel)
    order, fstarts = _frame_index(E, cam.n_frames, np.ones(len(E), bool))
    data, other, var, search = cam.empty(n)
    # the boxes alone, as groups 0 .. n-1 (box sel[q] holds emitter sel[q])
    egroup = np.full(len(E), -1, np.int64)
    egroup[sel] = np.arange(n)
    cam.cut(np.arange(n, dtype=np.int64), _Boxes(G.frame[sel], G.cy[sel], G.cx[sel]), egroup, order, fstarts, E,
            data, other, var, search)
    theta = theta[sel]
    base = np.zeros((n, 6))
    _residual_peaks(data, other, var, np.ones(n, np.int64), theta, box, base)
    theta1 = _split_starts(data, theta, box, sigma)
    P = 6 + 3
    res = _fit_batches(data.reshape(-1, box, box), MODEL_MULTI, noise, theta1[:, :P], np.array([2.0]),
                       other.reshape(-1, box, box), var.reshape(-1, box, box) if cam.has_var else None,
                       float(p.convergence), int(p.max_iterations), device)
    last_counts["fits"] += n
    last_counts["extra_emitter_fits"] += n
    t1 = np.zeros((n, MAX_PARAMS))
    t1[:, :P] = res.theta
    res1 = np.zeros((n, 6))
    _residual_peaks(data, other, var, np.full(n, 2, np.int64), t1, box, res1)
    llr = 2.0 * (res1[:, 0] - base[:, 0])
    apart = np.hypot(t1[:, 0] - t1[:, 6], t1[:, 1] - t1[:, 7]) >= options.min_separation_sigmas * sigma
    keep = res.converged & (llr > options.llr_threshold) & apart
    if _DEBUG:
        print("split test of lone wide boxes", n, "kept", int(keep.sum()))
    return keep


def _near_seeds(E, seed, reach):
    """The emitters of ``E`` (in the identification's frame, row order) within ``max(reach[a], reach[b])`` of a
    seed ``b`` of their frame, found in each seed's window of rows (not a tree of every emitter); None if the
    emitters are not in that order."""
    dev = np.abs(E.y - E.hy)
    if len(E) == 0 or not np.all(np.isfinite(dev)):
        return None
    span = int(math.ceil(float(reach.max()) + 2.0 * float(dev.max()))) + 1
    key = E.frame * np.int64(1 << 32) + E.hy
    if span >= 1 << 30 or np.any(np.diff(key) < 0):
        return None
    s = np.flatnonzero(seed)
    lo = np.searchsorted(key, key[s] - span, side="left")
    counts = np.searchsorted(key, key[s] + span, side="right") - lo
    a = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(lo, counts)
    b = np.repeat(s, counts)
    close = np.hypot(E.x[a] - E.x[b], E.y[a] - E.y[b]) <= np.maximum(reach[a], reach[b])
    return a[close]


def _take(d, mask):
    """Rows ``mask`` of a structured array or of a dict of columns."""
    if isinstance(d, np.ndarray):
        return d[mask]
    return {k: (np.asarray(v)[mask] if np.ndim(v) else v) for k, v in d.items()}


_DEBUG = bool(__import__("os").environ.get("NAPARI_LOCALIZE_CROWDED_DEBUG"))

#: counters of the last :func:`fit_crowded` call (boxes refitted, extra fits, passes; for benchmarks)
last_counts: dict = {}


def fit_crowded(frames, ids, fit0, p, options: CrowdedOptions, noise=NOISE_POISSON, baseline=0.0, factor=1.0,
                device="cpu", variance=None, static=None):
    """Emitters of a chunk: the single-emitter fits ``fit0`` of the identified boxes ``ids``, refined.

    ``frames`` are the chunk's frames ``(n, height, width)``, photons = ``(frames - baseline) * factor``
    (``baseline`` and ``factor`` scalars or per-pixel maps, sCMOS); ``variance`` the per-pixel readout
    variance map (photons^2; the joint fits then use ``noise`` with variance boxes, the likelihood test
    Huang et al.'s sCMOS likelihood); ``static`` (photons, the chunk's shape) the static light an
    identification prefilter removed (a temporal median's background): its structure within a box (above
    the box's minimum, the flat rest being the fitted background) is fixed other light in every refit, the
    residual search and the likelihood test, so static debris is neither fitted as an emitter nor pulls one;
    every fit uses the raw photons. ``ids`` the identification with ``frame`` relative to the chunk; ``fit0``
    the dict of :func:`~napari_localize.core.fit_mle.fit_mle` (or ``fit_lq``) for those boxes. Returns a dict of
    per-emitter columns: ``frame``, ``x``, ``y`` (frame pixels), the fit columns of ``fit0`` (per emitter;
    box-wide bg, widths and log-likelihood), ``converged``, ``net_gradient``, ``n_emitters`` (emitters fitted
    in that box), ``llr`` (twice the log-likelihood gain of the box's last accepted extra emitter; 0 for a box
    of one) and ``added``, ordered by frame, box (row-major) and emitter. See :func:`refine_crowded`.
    """
    box = int(p.box_size)
    conv0 = np.asarray(fit0["converged"], bool)
    ok_w = conv0 & np.isfinite(fit0["sx"])
    sigma = _psf_width(_typical(_single_theta(fit0, box), ok_w), box, noise)
    active, out, keys = refine_crowded(frames, ids, fit0, p, options, noise, baseline, factor, device, variance,
                                       static)
    rest = ~active
    Ei, Gi, _ = _state(_take(ids, rest), _take(fit0, rest), box, sigma)
    single, single_keys = _columns(Ei, Gi, np.ones(len(Ei), bool), box)
    if out is None:
        return single
    out = {k: np.concatenate([out[k], single[k]]) for k in out}
    o = np.lexsort([np.concatenate([a, b]) for a, b in zip(keys, single_keys, strict=True)])
    return {k: v[o] for k, v in out.items()}


def refine_crowded(frames, ids, fit0, p, options: CrowdedOptions, noise=NOISE_POISSON, baseline=0.0, factor=1.0,
                   device="cpu", variance=None, static=None, spots=None):
    """The work of :func:`fit_crowded` on the boxes that need it; every other box keeps its single fit.

    Returns ``(active, columns, keys)``: which boxes of ``ids`` were refined, the per-emitter columns of
    :func:`fit_crowded` for those boxes (None if none) and their sort keys ``(emitter, box column, box row,
    frame)`` (for :func:`numpy.lexsort`, to merge them with the single fits of the other boxes).

    **Screening.** Every box is first cut once with the light of all other emitters of its frame and its
    residual searched (one pass, no fit). A box needs the crowded machinery only if its single fit failed,
    its other light is significant (``sum(other^2 / variance) > light_chi2``: by Cauchy-Schwarz this bounds the
    bias the ignored light can cause in any parameter to ``sqrt(light_chi2)`` CRLB standard deviations), its
    residual holds a peak above ``candidate_z``, or its spot is significantly wider than the PSF (``split_width``,
    ``split_z``). Those boxes and the emitters whose light reaches them are refined. ``spots``: the photons of
    the boxes ``ids`` (n, box, box) as the single fit saw them (the screening reads them instead of the
    frames), or None.
    """
    frames = np.ascontiguousarray(frames)
    n_frames, height, width = frames.shape
    box = int(p.box_size)
    conv0 = np.asarray(fit0["converged"], bool)
    ok_w = conv0 & np.isfinite(fit0["sx"])
    theta0 = _single_theta(fit0, box)
    typical = _typical(theta0, ok_w)
    sigma = _psf_width(typical, box, noise)  # the PSF width: a typical spot's narrower fitted width
    cam = _Camera(frames, baseline, factor, variance, static, box)
    E, bad = _emitters(ids, fit0, sigma)
    # the boxes, one emitter each, and their single fits
    G = _Boxes(np.asarray(ids["frame"], np.int64), np.asarray(ids["y"], np.int64), np.asarray(ids["x"], np.int64))
    width_noise = _width_noise(typical, sigma, box, noise)
    n = len(E)
    last_counts.clear()
    last_counts.update(boxes=n, active=0, fits=0, extra_emitter_fits=0, passes=0)
    t0 = time.process_time()
    if n == 0 or int(options.max_emitters) < 2:
        return np.zeros(n, bool), None, None
    # screening: one cut of every box with all other light, one residual search of the single fits
    theta = theta0.copy()
    r = box // 2
    theta[bad, :6] = (r, r, 100.0, 1.0, sigma, sigma)
    res = np.zeros((n, 2))
    from .warmup import wait_for_crowded

    wait_for_crowded(frames.dtype)  # its kernels being compiled in a second process (first run): load them then
    _screen(cam, G, E, theta, res, spots)
    with np.errstate(invalid="ignore"):
        wide = conv0 & _wide(theta0, sigma, options, width_noise)
        seed = bad | (res[:, 1] > options.light_chi2) | (res[:, 0] > options.candidate_z) | wide
        # a wide spot with no other light and no residual peak in its box is refined only for the split test
        # (the refinement would try it as two and keep its fit unless the pair passes): test it here and refine
        # only the boxes where the pair is kept
        lone = np.flatnonzero(wide & ~bad & (res[:, 1] == 0.0) & ~(res[:, 0] > options.candidate_z))
    if len(lone):
        seed[lone[~_split_test(cam, G, theta0, E, lone, p, options, noise, device, sigma)]] = False
    active = seed.copy()
    if _DEBUG:
        print("seeds", int(seed.sum()), "bad", int(bad.sum()), "light", int((res[:, 1] > options.light_chi2).sum()),
              "z", int((res[:, 0] > options.candidate_z).sum()), "wide", int(wide.sum()), "of", n)
    if seed.any() and not seed.all():
        # and the emitters whose light reaches a seed's box (their fits may change with the seed's)
        w = np.minimum(np.maximum(E.sx, E.sy), r + 0.5)
        reach = math.sqrt(2.0) * (r + 0.5 + 5.0 * np.where(np.isfinite(w), w, sigma))
        near = _near_seeds(E, seed, reach)
        if near is not None:
            active[near] = True
        else:
            pts = np.column_stack([E.x + E.frame * 1e5, E.y])
            pairs = _kdtree(pts).query_pairs(float(reach.max()), output_type="ndarray")
            if len(pairs):
                a_, b_ = pairs[:, 0], pairs[:, 1]
                close = np.hypot(*(pts[a_] - pts[b_]).T) <= np.maximum(reach[a_], reach[b_])
                a_, b_ = a_[close], b_[close]
                active[a_[seed[b_]]] = True
                active[b_[seed[a_]]] = True
    last_counts["active"] = int(active.sum())
    t1 = time.process_time()
    last_counts["cpu_screen"] = t1 - t0
    if not active.any():
        return active, None, None
    out, keys = _refine(cam, _take(ids, active), _take(fit0, active), p, options, noise, device, sigma,
                        width_noise)
    last_counts["cpu_refine"] = time.process_time() - t1
    return active, out, keys


class _Camera:
    """The chunk's frames and how boxes are cut from them (photon conversion, variance, static light)."""

    def __init__(self, frames, baseline, factor, variance, static, box):
        self.frames = frames
        self.n_frames, self.height, self.width = frames.shape
        self.baseline = _maps(baseline)
        self.factor = _maps(factor)
        self.has_var = variance is not None
        self.variance = np.zeros((0, 0)) if variance is None else np.ascontiguousarray(variance, np.float64)
        self.has_static = static is not None
        self.static = np.zeros((0, 0, 0), np.float32) if static is None else np.ascontiguousarray(static, np.float32)
        self.box = int(box)
        self.npx = self.box * self.box

    def empty(self, n):
        data = np.zeros((n, self.npx))
        other = np.zeros((n, self.npx))
        var = np.zeros((n if self.has_var else 0, self.npx))
        return data, other, var, data

    def cut(self, sel, G, egroup, order, fstarts, E, data, other, var, search):
        _group_boxes(self.frames, self.baseline, self.factor, self.variance, self.static, sel, G.frame, G.cy, G.cx,
                     egroup, order, fstarts, E.x, E.y, E.N, E.sx, E.sy, self.box, data, other, var, search)


def _refine(cam, ids, fit0, p, options, noise, device, sigma, width_noise):
    """The crowded refinement (module docstring, steps 1-3) of the boxes ``ids`` (their single fits ``fit0``)."""
    n_frames, height, width = cam.n_frames, cam.height, cam.width
    box = cam.box
    r = box // 2
    npx = cam.npx
    E, G, bad = _state(ids, fit0, box, sigma)
    conv0 = G.converged.copy()
    alive = np.ones(len(E), bool)
    dirty = ~conv0
    join_px = options.join_sigmas * sigma
    min_sep = options.min_separation_sigmas * sigma
    max_em = int(options.max_emitters)
    counts = last_counts

    def boxes(G, extra=None, arrays=None):
        """Data and other light of the groups that can have other light or need a fit (or ``extra``, filled
        into ``arrays``)."""
        order, fstarts = _frame_index(E, n_frames, alive)
        egroup = np.full(len(E), -1, np.int64)
        egroup[G.members] = np.repeat(np.arange(len(G)), G.K)
        near = np.zeros(len(G), bool)
        ai = np.flatnonzero(alive)
        if len(ai) > 1:
            # an emitter lights a box within r + 1/2 + 5 widths of its centre (as _group_boxes renders it), and
            # a group's members lie within (box - 3) / sqrt(2) of its centre
            w = np.minimum(np.maximum(E.sx[ai], E.sy[ai]), r + 0.5)
            reach = r + 0.5 + 5.0 * w + (box - 3) / math.sqrt(2.0)
            pts = np.column_stack([E.x[ai] + E.frame[ai] * 1e5, E.y[ai]])
            pairs = _kdtree(pts).query_pairs(float(reach.max()), output_type="ndarray")
            if len(pairs):
                a_, b_ = pairs[:, 0], pairs[:, 1]
                d = np.hypot(*(pts[a_] - pts[b_]).T)
                ga, gb = egroup[ai[a_]], egroup[ai[b_]]
                differ = (ga != gb) & (d <= np.maximum(reach[a_], reach[b_]))
                near[ga[differ]] = True
                near[gb[differ]] = True
        if extra is None:
            # the groups that can have other light now, that had it at their last fit, or need a fit
            sel = np.flatnonzero(near | dirty | G.lit).astype(np.int64)
            arrays = cam.empty(len(G))
        else:
            sel = np.asarray(extra, np.int64)
        cam.cut(sel, G, egroup, order, fstarts, E, *arrays)
        return arrays, sel

    def fit(G, gsel, arrays, theta0=None, K=None):
        """Fit groups ``gsel`` with the engine's multi-emitter model, one call per number of emitters."""
        data, other, var, _ = arrays
        theta = _theta_from_emitters(E, G, gsel, box) if theta0 is None else theta0.copy()
        K = G.K[gsel] if K is None else K
        var_out = np.full((len(gsel), MAX_PARAMS), np.nan)
        obj = np.empty(len(gsel))
        its = np.zeros(len(gsel), np.int64)
        conv = np.zeros(len(gsel), np.bool_)
        for k in np.unique(K):
            rows = np.flatnonzero(k == K)
            P = 6 + 3 * (int(k) - 1)
            g = gsel[rows]
            _t = time.perf_counter()
            _c = time.process_time()
            # one emitter: the engine's single Gaussian (the same model as MODEL_MULTI with K = 1, less work)
            res = _fit_batches(data[g].reshape(-1, box, box), MODEL_GAUSS if k == 1 else MODEL_MULTI, noise,
                               theta[rows, :P], None if k == 1 else np.array([float(k)]),
                               other[g].reshape(-1, box, box), var[g].reshape(-1, box, box) if cam.has_var else None,
                               float(p.convergence), int(p.max_iterations), device)
            counts["cpu_fits"] = counts.get("cpu_fits", 0.0) + time.process_time() - _c
            theta[rows, :P] = res.theta
            var_out[rows, :P] = res.crlb
            obj[rows], its[rows], conv[rows] = res.objective, res.iterations, res.converged
            counts["fits"] += len(rows)
            counts["extra_emitter_fits"] += len(rows) * (int(k) - 1)
        return theta, var_out, obj, its, conv

    rounds = options.rounds if max_em > 1 else 0

    def regroup(G):
        Gn = _make_groups(E, alive, box, height, width, max_em, join_px)
        _inherit(G, Gn, len(E), alive)
        return Gn

    def significance(a, rows):
        """``sum(a^2 / variance)`` of boxes ``rows`` (the variance estimated by the photons, floored at 1)."""
        data, _, var, _ = arrays
        den = np.maximum(data[rows] + (var[rows] if cam.has_var else 0.0), 1.0)
        return np.sum(a * a / den, axis=1)

    rnd = 0
    passes = 0
    polish = 0
    settle = 0
    while True:
        passes += 1
        arrays, cut = boxes(G)
        data, other, var, search = arrays
        # refit new boxes, failed ones, and boxes whose other light changed significantly since their last fit
        change = np.zeros(len(G))
        change[cut] = significance(other[cut] - G.other_fit[cut], cut)
        gsel = np.flatnonzero(dirty | (change > options.light_chi2))
        if _DEBUG:
            print("pass", passes, "groups", len(G), "cut", len(cut), "dirty", int(dirty.sum()), "refit", len(gsel),
                  "K", np.bincount(G.K[gsel]) if len(gsel) else None)
        if len(gsel):
            theta, var_f, obj, its, conv = fit(G, gsel, arrays)
            G.theta[gsel], G.var[gsel], G.obj[gsel], G.iterations[gsel], G.converged[gsel] = theta, var_f, obj, its, \
                conv
            G.fitted[gsel] = True
            G.other_fit[gsel] = other[gsel]
            G.lit[gsel] = np.any(other[gsel] != 0.0, axis=1)
            G.checked[gsel] = False
            okg = gsel[conv]
            _store(E, G, okg, theta[conv], box)
        # two emitters on one spot (two boxes whose fits ran to the same place) are one: keep the brighter
        ai = np.flatnonzero(alive)
        killed = False
        if len(ai) > 1 and passes < 2 * rounds + 4:
            pairs = _kdtree(np.column_stack([E.x[ai] + E.frame[ai] * 1e5, E.y[ai]])).query_pairs(
                min_sep, output_type="ndarray")
            for a, b in pairs:
                i, j = ai[a], ai[b]
                if alive[i] and alive[j]:
                    alive[j if E.N[j] < E.N[i] else i] = False
                    killed = True
        if killed:
            G = regroup(G)
            dirty = ~G.fitted
            continue
        if rnd == 0 and settle < options.settle_passes and len(gsel):
            # let the neighbours' light settle (each refit with the others' refits) before reading residuals
            settle += 1
            continue
        if rnd >= rounds:
            if polish < options.polish_passes and len(gsel):
                polish += 1
                continue
            break
        rnd += 1
        # residual re-identification in every converged box with room for one emitter more
        cand_g = np.flatnonzero(G.converged & (max_em > G.K) & ~G.checked)
        G.checked[cand_g] = True
        # boxes not cut yet this pass (no neighbour in reach, fit unchanged): cut them for the residual search
        missing = cand_g[~np.any(data[cand_g] != 0.0, axis=1)]
        if len(missing):
            boxes(G, missing, arrays)
        if len(cand_g) == 0:
            rnd = rounds
            continue
        res = np.zeros((len(cand_g), 6))
        _residual_peaks(search[cand_g], other[cand_g], var[cand_g] if cam.has_var else var,
                        np.ascontiguousarray(G.K[cand_g]), G.theta[cand_g], box, res)
        base_ll = dict(zip(cand_g.tolist(), res[:, 0].tolist(), strict=True))
        hit = res[:, 1] > options.candidate_z
        # a single emitter fitted wider than the PSF may be two closer than the residual shows: split it
        th = G.theta[cand_g]
        wide = ~hit & (G.K[cand_g] == 1) & _wide(th, sigma, options, width_noise)
        split_g, split_th = cand_g[wide], th[wide]
        cand_g, res = cand_g[hit], res[hit]
        cx = res[:, 3] + G.cx[cand_g] - r
        cy = res[:, 2] + G.cy[cand_g] - r
        cf = G.frame[cand_g]
        # one candidate per place: the most significant; none on top of an emitter
        keep = np.ones(len(cand_g), bool)
        if len(cand_g):
            order_z = np.argsort(-res[:, 1], kind="stable")
            tree_pts = np.column_stack([cx + cf * 1e5, cy])
            tree = _kdtree(tree_pts)
            for a in order_z:
                if not keep[a]:
                    continue
                for b in tree.query_ball_point(tree_pts[a], 1.0 * sigma + 0.5):
                    if b != a and keep[b] and res[b, 1] <= res[a, 1]:
                        keep[b] = False
            ai = np.flatnonzero(alive)
            etree = _kdtree(np.column_stack([E.x[ai] + E.frame[ai] * 1e5, E.y[ai]]))
            dist, _ = etree.query(tree_pts, k=1)
            keep &= dist > min_sep
        cand_g, res = cand_g[keep], res[keep]
        # nested models: the box with one emitter more, started at the residual peak or from a split
        theta1 = np.concatenate([G.theta[cand_g], _split_starts(data[split_g], split_th, box, sigma)])
        if len(cand_g):
            j = 6 + 3 * (G.K[cand_g] - 1)
            rows = np.arange(len(cand_g))
            theta1[rows, j] = res[:, 3]
            theta1[rows, j + 1] = res[:, 2]
            theta1[rows, j + 2] = res[:, 4]
        cand_g = np.concatenate([cand_g, split_g]).astype(np.int64)
        if len(cand_g) == 0:
            rnd = rounds
            continue
        K1 = G.K[cand_g] + 1
        t1, v1, o1, it1, c1 = fit(G, cand_g, arrays, theta1, K1)
        base = np.array([base_ll[int(g)] for g in cand_g])
        res1 = np.zeros((len(cand_g), 6))
        _residual_peaks(search[cand_g], other[cand_g], var[cand_g] if cam.has_var else var, np.ascontiguousarray(K1),
                        t1, box, res1)
        llr = 2.0 * (res1[:, 0] - base)
        accept = c1 & (llr > options.llr_threshold)
        for row in np.flatnonzero(accept):
            pos = np.array([[t1[row, emitter_index(e)], t1[row, emitter_index(e) + 1]] for e in range(K1[row])])
            d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
            d[np.diag_indices(len(pos))] = np.inf
            if d.min() < min_sep:
                accept[row] = False
        acc = np.flatnonzero(accept)
        if _DEBUG:
            print("round", rnd, "candidates", len(cand_g), "split", len(split_g), "accepted", len(acc))
        if len(acc) == 0:
            rnd = rounds
            continue
        # the accepted emitters join the emitter list; their boxes keep the new fit
        g_acc = cand_g[acc]
        n_old = len(E)
        new_idx = np.arange(n_old, n_old + len(acc))
        jn = 6 + 3 * (G.K[g_acc] - 1)
        E.append(G.frame[g_acc], t1[acc, jn] + G.cx[g_acc] - r, t1[acc, jn + 1] + G.cy[g_acc] - r,
                 t1[acc, jn + 2], t1[acc, 3], t1[acc, 4], t1[acc, 5],
                 np.zeros(len(acc), np.float32))
        alive = np.concatenate([alive, np.ones(len(acc), bool)])
        E.llr[new_idx] = llr[acc]
        # the accepted boxes: their members, new emitter last, and the joint fit
        o = np.argsort(g_acc, kind="stable")
        members = np.insert(G.members, G.start[g_acc[o] + 1], new_idx[o])
        grew = np.zeros(len(G) + 1, np.int64)
        grew[g_acc + 1] = 1
        G2 = _Groups(G.frame, G.cy, G.cx, G.start + np.cumsum(grew), members, npx)
        for name in ("theta", "var", "obj", "iterations", "converged", "llr", "fitted", "light", "checked",
                     "other_fit", "lit"):
            setattr(G2, name, getattr(G, name))
        G2.theta[g_acc], G2.var[g_acc], G2.obj[g_acc] = t1[acc], v1[acc], o1[acc]
        G2.iterations[g_acc], G2.converged[g_acc], G2.llr[g_acc] = it1[acc], True, llr[acc]
        G2.fitted[g_acc] = True
        G2.other_fit[g_acc] = other[g_acc]
        G2.lit[g_acc] = np.any(other[g_acc] != 0.0, axis=1)
        G2.checked[g_acc] = False
        _store(E, G2, g_acc, t1[acc], box)
        G = regroup(G2)
        dirty = ~G.fitted
    counts["passes"] += passes
    return _columns(E, G, alive, box)


def _columns(E, G, alive, box):
    """Per-emitter output columns from the latest group fits."""
    r = box // 2
    gi, ii, j = _slots(G, np.arange(len(G)))
    n = len(gi)
    ei = np.arange(n) - np.repeat(G.start[:-1], G.K)
    th = G.theta[gi] if n else np.zeros((0, MAX_PARAMS))
    var = G.var[gi] if n else np.zeros((0, MAX_PARAMS))
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(np.where(var > 0, var, np.nan))
    take = np.arange(n)
    # a box's likelihood ratio: the weakest of its added emitters' (the last emitter a test accepted)
    box_llr = np.full(len(G), np.inf)
    if n:
        np.minimum.at(box_llr, gi, np.where(E.llr[ii] > 0, E.llr[ii], np.inf))
    box_llr[~np.isfinite(box_llr)] = 0.0
    out = {
        "frame": G.frame[gi],
        "x": th[take, j] + G.cx[gi] - r,
        "y": th[take, j + 1] + G.cy[gi] - r,
        "photons": th[take, j + 2],
        "bg": th[:, 3], "sx": th[:, 4], "sy": th[:, 5],
        "lpx": sd[take, j], "lpy": sd[take, j + 1], "photons_unc": sd[take, j + 2],
        "bg_unc": sd[:, 3], "sx_unc": sd[:, 4], "sy_unc": sd[:, 5],
        "log_likelihood": G.obj[gi], "iterations": G.iterations[gi], "converged": G.converged[gi],
        "net_gradient": E.ng[ii], "n_emitters": G.K[gi], "llr": box_llr[gi], "added": E.added[ii],
    }
    # frame, then box in row-major order (the identification's order), then emitter
    keys = (ei, G.cx[gi], G.cy[gi], G.frame[gi])
    order = np.lexsort(keys)
    return {k: v[order] for k, v in out.items()}, tuple(k[order] for k in keys)
