"""The residual of 3D fits: the model image of localizations (astigmatic Gaussian, spline) and the PSF model's
shape error, measured on isolated spots by height and put back (:mod:`.crowded_z`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numba import njit
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from .crowded_z import CrowdedZOptions


def model_photons_astig(shape, locs, cal, first_frame: int = 0) -> np.ndarray:
    """Expected photons per pixel of the astigmatic 3D ``locs`` (no background): ``(n, height, width)``."""
    from .engine.pixels import add_gaussian

    n, h, w = shape
    out = np.zeros((n, h, w))
    if not len(locs):
        return out
    z_cal = np.asarray(locs["z"], float) / cal.magnification_factor
    wx, wy = cal.widths(z_cal)
    scratch = np.empty(max(h, w))
    for f, x, y, photons, sx, sy in zip(np.asarray(locs["frame"]) - first_frame, locs["x"], locs["y"],
                                        locs["photons"], wx, wy):
        reach = int(np.ceil(5.0 * max(sx, sy))) + 1
        ix, iy = int(round(float(x))), int(round(float(y)))
        x0, x1 = max(ix - reach, 0), min(ix + reach + 1, w)
        y0, y1 = max(iy - reach, 0), min(iy + reach + 1, h)
        if x1 > x0 and y1 > y0:
            add_gaussian(out[int(f)], float(x), float(y), float(photons), float(sx), float(sy), x0, x1, y0, y1,
                         scratch, scratch.copy())
    return out


def model_photons_spline(shape, locs, psf, first_frame: int = 0) -> np.ndarray:
    """Expected photons per pixel of the spline-fitted ``locs`` (no background): ``(n, height, width)``.

    All spots at once: the spline is evaluated on every spot's window in one call, then added to the frames."""
    from .spline import evaluate

    out = np.zeros(shape)
    n = len(locs)
    if not n:
        return out
    _, h, w = shape
    o = psf.oversampling
    rx = int(np.ceil(max(psf.cx, psf.n_nodes[-1] - 1 - psf.cx) / o)) + 1
    ry = int(np.ceil(max(psf.cy, psf.n_nodes[-2] - 1 - psf.cy) / o)) + 1
    if n > _BATCH:
        for a in range(0, n, _BATCH):
            out += model_photons_spline(shape, locs[a:a + _BATCH], psf, first_frame)
        return out
    x = np.asarray(locs["x"], float)
    y = np.asarray(locs["y"], float)
    z = np.asarray(locs["z"], float) if "z" in locs.dtype.names else np.zeros(n)
    k, m = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    cols = np.rint(x)[:, None, None].astype(np.int64) + m[None]
    rows = np.rint(y)[:, None, None].astype(np.int64) + k[None]
    sx, sy, sz = psf.spline_coordinates(cols, rows, x[:, None, None], y[:, None, None],
                                        np.broadcast_to(z[:, None, None], cols.shape))
    keep = psf.inside(sx, sy) & (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    vals = evaluate(psf.coefficients, sx[keep], sy[keep], None if sz is None else np.asarray(sz)[keep])[:, 0]
    frame = np.broadcast_to((np.asarray(locs["frame"]) - first_frame)[:, None, None], cols.shape)[keep]
    photons = np.broadcast_to(np.asarray(locs["photons"], float)[:, None, None], cols.shape)[keep]
    _accumulate(out, frame, rows[keep], cols[keep], photons * vals)
    return out


@njit(cache=True, nogil=True)
def _corner(py, px, c):
    # pixel (row, column) of bilinear corner c (0: floor, floor; 1: floor, +1; 2: +1, floor; 3: +1, +1) of the
    # point (py, px), and its weight
    y0 = math.floor(py)
    x0 = math.floor(px)
    fy = py - y0
    fx = px - x0
    if c == 0:
        return int(y0), int(x0), (1.0 - fy) * (1.0 - fx)
    if c == 1:
        return int(y0), int(x0) + 1, (1.0 - fy) * fx
    if c == 2:
        return int(y0) + 1, int(x0), fy * (1.0 - fx)
    return int(y0) + 1, int(x0) + 1, fy * fx


@njit(cache=True, nogil=True)
def _gather(images, frame, x, y, r, out):
    # out[i, k, m]: the bilinear value of images[frame[i]] at (y[i] + k - r, x[i] + m - r), corners outside the
    # image counted as 0
    _, h, w = images.shape
    for i in range(x.shape[0]):
        f = frame[i]
        for k in range(2 * r + 1):
            for m in range(2 * r + 1):
                s = 0.0
                for c in range(4):
                    row, col, wgt = _corner(y[i] + (k - r), x[i] + (m - r), c)
                    if 0 <= row < h and 0 <= col < w:
                        s += images[f, row, col] * wgt
                out[i, k, m] = s


@njit(cache=True, nogil=True)
def _splat(images, patches, frame, x, y):
    # images[frame[i]] += patches[i] put bilinearly at (x[i], y[i]) (its middle pixel there); per pixel the
    # values are added spot by spot, corner by corner, row by row
    _, h, w = images.shape
    r = patches.shape[1] // 2
    for i in range(x.shape[0]):
        f = frame[i]
        for c in range(4):
            for k in range(2 * r + 1):
                for m in range(2 * r + 1):
                    row, col, wgt = _corner(y[i] + (k - r), x[i] + (m - r), c)
                    if 0 <= row < h and 0 <= col < w:
                        images[f, row, col] += patches[i, k, m] * wgt


@njit(cache=True, nogil=True)
def _add_at(images, frame, rows, cols, values):
    # images[frame, rows, cols] += values, in order (repeated pixels summed)
    for q in range(values.shape[0]):
        images[frame[q], rows[q], cols[q]] += values[q]


def _patches(images, frame, x, y, r):
    """The ``(2r+1)^2`` patches of ``images[frame]`` centred on ``(x, y)`` (bilinear; 0 outside): ``(n, .., ..)``."""
    x = np.ascontiguousarray(x, np.float64)
    out = np.zeros((len(x), 2 * r + 1, 2 * r + 1))
    if len(x):
        _gather(np.ascontiguousarray(images), np.ascontiguousarray(frame, np.int64), x,
                np.ascontiguousarray(y, np.float64), int(r), out)
    return out


def _add_patches(images, patches, frame, x, y):
    """Add each patch (centred on its middle pixel) to ``images[frame]`` at ``(x, y)`` (bilinear splat)."""
    if len(patches):
        _splat(images, np.ascontiguousarray(patches, np.float64), np.ascontiguousarray(frame, np.int64),
               np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64))


def _accumulate(images, frame, rows, cols, values):
    """``images[frame, rows, cols] += values`` with repeated pixels summed."""
    if len(values):
        _add_at(images, np.ascontiguousarray(frame, np.int64), np.ascontiguousarray(rows, np.int64),
                np.ascontiguousarray(cols, np.int64), np.ascontiguousarray(values, np.float64))


def measure_shape_error(residual, locs, first_frame: int, box: int, o: CrowdedZOptions):
    """The PSF model's shape error by height: ``(edges, shapes)`` (z bin edges, nm; one patch per bin, per
    photon), or None with too few isolated localizations.

    For the isolated localizations (no other within :attr:`CrowdedZOptions.isolation_boxes` boxes) in each
    of :attr:`CrowdedZOptions.z_bins` bins of equal count by height, the pixel-wise median of their residual
    patches (centred on the fit, less the median of the patch border, divided by its photons) is the shape
    error of the model at those heights: the median ignores the occasional unseen neighbour, which a mean would
    smear in.
    """
    n = len(locs)
    if not n:
        return None
    d_self, _ = _nearest_other(locs)
    isolated = np.nonzero(d_self > o.isolation_boxes * box)[0]
    bins = min(int(o.z_bins), len(isolated) // max(int(o.min_isolated), 1))
    if bins < 1:
        return None
    z = np.asarray(locs["z"], float)[isolated] if "z" in locs.dtype.names else np.zeros(len(isolated))
    edges = np.quantile(z, np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    k = np.clip(np.searchsorted(edges, z, "right") - 1, 0, bins - 1)
    photons = np.maximum(np.asarray(locs["photons"], float)[isolated], 1.0)
    patches = _patches(residual, np.asarray(locs["frame"])[isolated] - first_frame, locs["x"][isolated],
                       locs["y"][isolated], box)
    border = np.concatenate([patches[:, 0], patches[:, -1], patches[:, 1:-1, 0], patches[:, 1:-1, -1]], axis=1)
    patches = (patches - np.median(border, axis=1)[:, None, None]) / photons[:, None, None]
    shapes = np.stack([np.median(patches[k == b], axis=0) if (k == b).any() else np.zeros(patches.shape[1:])
                       for b in range(bins)])
    return edges, shapes


def shape_error_image(residual, locs, first_frame: int, box: int, o: CrowdedZOptions, measured=None):
    """The shape error of every localization put back: ``(n, height, width)`` (like ``residual``).

    Each localization's photons times the patch of its height's bin (:func:`measure_shape_error`, measured on
    ``residual`` unless ``measured`` is given); subtracted from the residual, a fit's shape error no longer
    reads as a spot.
    """
    out = np.zeros(residual.shape, np.float32)
    if measured is None:
        measured = measure_shape_error(residual, locs, first_frame, box, o)
    if measured is None or not len(locs):
        return out
    edges, shapes = measured
    z = np.asarray(locs["z"], float) if "z" in locs.dtype.names else np.zeros(len(locs))
    k = np.clip(np.searchsorted(edges, z, "right") - 1, 0, len(shapes) - 1)
    frame = np.asarray(locs["frame"]) - first_frame
    photons = np.maximum(np.asarray(locs["photons"], float), 1.0)
    for a in range(0, len(locs), _BATCH):
        i = slice(a, a + _BATCH)
        _add_patches(out, photons[i, None, None] * shapes[k[i]], frame[i], locs["x"][i], locs["y"][i])
    return out


#: spots per vectorised batch (memory: ~ 4 x (2 box + 1)^2 values per spot)
_BATCH = 2000


def _nearest_other(locs):
    """Distance (pixels) to the nearest other localization of the same frame."""
    d = np.full(len(locs), np.inf)
    j = np.full(len(locs), -1, np.int64)
    for f in np.unique(locs["frame"]):
        s = np.nonzero(locs["frame"] == f)[0]
        if len(s) < 2:
            continue
        dd, jj = cKDTree(np.column_stack([locs["x"][s], locs["y"][s]]).astype(float)).query(
            np.column_stack([locs["x"][s], locs["y"][s]]).astype(float), k=2)
        d[s] = dd[:, 1]
        j[s] = s[jj[:, 1]]
    return d, j
