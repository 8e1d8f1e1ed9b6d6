"""Drift correction from the localizations themselves: RCC and AIM.

Both methods cut the localizations into temporal segments, measure how far each segment is shifted against a
reference, and interpolate the per-segment shifts to every frame (a natural cubic spline through the segment
centres, continued linearly past the first and last centre).

Drift convention (Picasso's): ``drift[f] = (dx, dy)`` in camera pixels is where the sample sat in frame ``f``
relative to its mean position, and the corrected coordinates are ``x - dx[frame]``, ``y - dy[frame]``. The
drift is reported with zero mean over the frames, so the corrected image stays where the sample was on
average.

The shift between two sets of localizations
-------------------------------------------
Both methods need the shift ``s`` that best superposes a *target* set on a *reference* set. The cross-
correlation of two images in which every localization is rendered as a Gaussian of width ``w`` is, exactly, a
sum of Gaussians of width ``w * sqrt(2)`` centred on the pairwise displacements ``b - a`` (``a`` in the target,
``b`` in the reference). We therefore never render: the displacements of all pairs closer than the search
radius are collected through a cell grid (numba), histogrammed and smoothed for a robust global maximum, and
the maximum is then refined by mean-shift iterations on the displacements themselves (the exact, continuous
mode of the correlation, with no pixel grid and no peak-fitting bias). The kernel width is matched to the
localization precision (``sqrt(2) * median lp``), the optimal (matched) filter for a displacement that is
the difference of two noisy positions.

RCC (redundant cross-correlation; Wang, Schnitzbauer et al., Opt. Express 22, 15982 (2014))
    every pair of segments ``i < j`` gives a measured drift difference ``r_ij = d_j - d_i``; the segment
    drifts ``d`` solve the over-determined system in the least-squares sense (zero mean), and pairs whose
    residual exceeds ``rmax`` are dropped one at a time (the worst first, as long as every segment stays
    connected) before solving again. A coarse FFT cross-correlation of the segments, rendered on a grid of
    half a camera pixel, finds each pair's shift within ``max_shift`` first; the pair displacements then
    refine it; further passes on the drift-corrected coordinates (no longer blurred by the drift within a
    segment) refine it until a pass changes it by less than a tenth of the kernel width.

AIM (adaptive intersection maximization; Ma et al., Sci. Adv. 2024, as Picasso's ``aim``)
    round 1 takes the first segment as the reference and tracks the segments in time order, each search
    starting from the previous segment's drift and confined to ``roi_radius`` around it (so drift may grow
    without bound while each step stays small); round 2 takes the whole round-1-corrected data set as the
    reference (leaving out the segment being aligned, which would otherwise pull its own shift to zero) and
    re-measures every segment, the first included, within two kernel widths of its round-1 position. The
    drifts of the two rounds add. The overlap ("the number of intersecting localizations") is the smoothed
    pair count, maximized as above: within the intersect distance rather than on Picasso's grid of
    intersect-distance cells.

Pure numpy + numba (+ scipy for the spline); the segment pairs run on a thread pool. Cost: proportional to
the localizations times their neighbours within the search radius (benchmarks/RESULTS.md: 10^6 localizations
in 7-14 s on a loaded 2-core VM, about 1.2x picassosr's time, at 6-27x its accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

DRIFT_METHODS = ("rcc", "aim")
#: Picasso's defaults: RCC segments of 1000 frames, AIM segments of 100 frames, AIM's intersect distance and
#: search radius of 20 nm and 60 nm at 130 nm pixels
DEFAULT_SEGMENTATION = {"rcc": 1000, "aim": 100}
AIM_INTERSECT_DISTANCE_PX = 20 / 130
AIM_ROI_RADIUS_PX = 60 / 130


#: cell of the grids that index the reference localizations (camera pixels)
GRID_CELL_PX = 0.25
#: localizations of a segment used as the target of one shift measurement (a seeded random subset beyond
#: this): 5000 targets already put the shift's standard error far below the localization precision, and the
#: cost of a measurement is proportional to them; the reference always keeps every localization
MAX_TARGETS = 5000
#: AIM's second round takes the whole data set as its reference; beyond this many localizations a seeded
#: random subset of it (every site keeps many localizations, the cost falls in proportion)
MAX_REFERENCE = 200000


def _map(fn, items):
    """``map`` on a thread pool (the numba kernels release the GIL), in order."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


class DriftError(ValueError):
    """Drift cannot be estimated from these localizations; the message says why and what to change."""


@dataclass
class DriftResult:
    """A drift estimate.

    Attributes
    ----------
    method : str
        ``"rcc"`` or ``"aim"``.
    drift : numpy.ndarray, float32, shape (n_frames, 2)
        ``(dx, dy)`` per frame in camera pixels, zero mean; corrected ``x = x - dx[frame]``.
    segment_bounds : numpy.ndarray, int, shape (n_segments + 1,)
        First frame of each segment, then the end frame (half-open).
    segment_drift : numpy.ndarray, float64, shape (n_segments, 2)
        The measured drift of each segment (the spline knots, at the segment centres).
    parameters : dict
        What was used (segmentation, radii, kernel width), for the metadata.
    diagnostics : dict
        RCC: pairs used/dropped and the residual; AIM: pairs per round.
    """

    method: str
    drift: np.ndarray
    segment_bounds: np.ndarray
    segment_drift: np.ndarray
    parameters: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ cell grid
class _Grid:
    """Reference points sorted by the cell of a regular grid, for radius queries from numba."""

    def __init__(self, x, y, cell, frames=None):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        self.cell = float(cell)
        if len(x):
            self.x0 = float(np.min(x)) - 1e-9
            self.y0 = float(np.min(y)) - 1e-9
            span = max(float(np.max(x)) - self.x0, float(np.max(y)) - self.y0, self.cell)
        else:
            self.x0 = self.y0 = 0.0
            span = self.cell
        # at most ~4M cells: wider cells for huge fields (queries stay exact, just scan more points)
        self.cell = max(self.cell, span / 2000.0)
        self.nx = int(math.floor((float(np.max(x, initial=0)) - self.x0) / self.cell)) + 1
        self.ny = int(math.floor((float(np.max(y, initial=0)) - self.y0) / self.cell)) + 1
        ix = np.floor((x - self.x0) / self.cell).astype(np.int64)
        iy = np.floor((y - self.y0) / self.cell).astype(np.int64)
        key = iy * self.nx + ix
        order = np.argsort(key, kind="stable")
        self.x = x[order]
        self.y = y[order]
        self.frames = (np.zeros(len(x), np.int64) if frames is None else np.asarray(frames, np.int64)[order])
        self.starts = np.searchsorted(key[order], np.arange(self.nx * self.ny + 1)).astype(np.int64)


@njit(cache=True, nogil=True)
def _pair_histogram(tx, ty, ox, oy, cx, cy, half, h, gx, gy, gframes, starts, x0, y0, cell, nx, ny, excl_lo,
                    excl_hi, hist):
    """Histogram (bins of ``h``, centred on ``(cx, cy)``, half-width ``half``) of the displacements
    ``b - (a + o)`` of reference points ``b`` from shifted target points ``a``.

    Reference points whose frame lies in ``[excl_lo, excl_hi)`` are left out. Returns the pairs counted.
    """
    nb = hist.shape[0] // 2
    n = 0
    for k in range(tx.shape[0]):
        ax = tx[k] + ox
        ay = ty[k] + oy
        kx = int(math.floor((ax + cx - x0) / cell))
        ky = int(math.floor((ay + cy - y0) / cell))
        rcx = int(math.ceil(half / cell))
        for iy in range(max(ky - rcx, 0), min(ky + rcx + 1, ny)):
            for ix in range(max(kx - rcx, 0), min(kx + rcx + 1, nx)):
                c = iy * nx + ix
                for m in range(starts[c], starts[c + 1]):
                    if excl_lo <= gframes[m] < excl_hi:
                        continue
                    i = int(math.floor((gy[m] - ay - cy) / h + 0.5)) + nb
                    j = int(math.floor((gx[m] - ax - cx) / h + 0.5)) + nb
                    if 0 <= i < hist.shape[0] and 0 <= j < hist.shape[1]:
                        hist[i, j] += 1.0
                        n += 1
    return n


@njit(cache=True, nogil=True)
def _smoothed_peak(hist, h, radius, sigma):
    """Maximum, within ``radius`` of the centre, of the histogram smoothed by a Gaussian of ``sigma``."""
    size = hist.shape[0]
    nb = size // 2
    kr = int(math.ceil(3.0 * sigma / h))
    kern = np.empty(2 * kr + 1)
    for t in range(-kr, kr + 1):
        kern[t + kr] = math.exp(-0.5 * (t * h / sigma) ** 2)
    tmp = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            acc = 0.0
            for t in range(-kr, kr + 1):
                jj = j + t
                if 0 <= jj < size:
                    acc += kern[t + kr] * hist[i, jj]
            tmp[i, j] = acc
    best = -1.0
    bi = nb
    bj = nb
    lim = radius / h
    for i in range(size):
        for j in range(size):
            if (i - nb) ** 2 + (j - nb) ** 2 > lim * lim:
                continue
            acc = 0.0
            for t in range(-kr, kr + 1):
                ii = i + t
                if 0 <= ii < size:
                    acc += kern[t + kr] * tmp[ii, j]
            if acc > best:
                best = acc
                bi = i
                bj = j
    return (bj - nb) * h, (bi - nb) * h, best


@njit(cache=True, nogil=True)
def _mean_shift(hist, h, sx, sy, sigma, max_iterations):
    """Refine ``(sx, sy)`` (relative to the histogram centre) to the local mode of the Gaussian kernel
    density of the displacements, from their fine histogram (bins of ``h``, a small fraction of sigma)."""
    size = hist.shape[0]
    nb = size // 2
    cut2 = (4.0 * sigma) ** 2
    inv = 0.5 / (sigma * sigma)
    weight = 0.0
    for _ in range(max_iterations):
        wsum = 0.0
        xsum = 0.0
        ysum = 0.0
        i0 = max(int(math.floor((sy - 4.0 * sigma) / h)) + nb, 0)
        i1 = min(int(math.ceil((sy + 4.0 * sigma) / h)) + nb + 1, size)
        j0 = max(int(math.floor((sx - 4.0 * sigma) / h)) + nb, 0)
        j1 = min(int(math.ceil((sx + 4.0 * sigma) / h)) + nb + 1, size)
        for i in range(i0, i1):
            dy = (i - nb) * h
            ey = dy - sy
            for j in range(j0, j1):
                c = hist[i, j]
                if c == 0.0:
                    continue
                dx = (j - nb) * h
                ex = dx - sx
                e2 = ex * ex + ey * ey
                if e2 < cut2:
                    w = c * math.exp(-e2 * inv)
                    wsum += w
                    xsum += w * dx
                    ysum += w * dy
        if wsum <= 0.0:
            break
        nx = xsum / wsum
        ny = ysum / wsum
        step = abs(nx - sx) + abs(ny - sy)
        sx = nx
        sy = ny
        weight = wsum
        if step < 1e-6:
            break
    return sx, sy, weight


def _shift(tx, ty, grid: _Grid, start, radius, sigma, exclude=(0, 0)):
    """Shift ``s`` (search within ``radius`` of ``start``) that superposes target + s on the reference.

    Two passes over the pairs, nothing stored per pair: a histogram of bins sigma/2 over the search region
    finds the smoothed maximum, then a histogram of bins sigma/8 around it gives the exact kernel mode by
    mean shift (a search radius within 2 sigma needs only the fine one). Returns ``(sx, sy, weight)``;
    weight 0 when no pair was found (the shift is then ``start``).
    """
    ox, oy = float(start[0]), float(start[1])
    sigma = float(sigma)
    tx = np.ascontiguousarray(tx, np.float64)
    ty = np.ascontiguousarray(ty, np.float64)
    args = (grid.x, grid.y, grid.frames, grid.starts, grid.x0, grid.y0, grid.cell, grid.nx, grid.ny,
            int(exclude[0]), int(exclude[1]))
    hf = sigma / 8.0
    nbf = int(math.ceil(6.0 * sigma / hf))
    fine = np.zeros((2 * nbf + 1, 2 * nbf + 1))
    if radius <= 2.0 * sigma:  # a refinement: one fine histogram around the start is enough
        px = py = 0.0
        n = _pair_histogram(tx, ty, ox, oy, 0.0, 0.0, nbf * hf, hf, *args, fine)
        if n == 0:
            return ox, oy, 0.0
    else:
        h = sigma / 2.0
        half = float(radius) + 3.0 * sigma
        nb = int(math.ceil(half / h))
        coarse = np.zeros((2 * nb + 1, 2 * nb + 1))
        n = _pair_histogram(tx, ty, ox, oy, 0.0, 0.0, nb * h, h, *args, coarse)
        if n == 0:
            return ox, oy, 0.0
        px, py, _ = _smoothed_peak(coarse, h, float(radius), sigma)
        _pair_histogram(tx, ty, ox, oy, px, py, nbf * hf, hf, *args, fine)
    sx, sy, weight = _mean_shift(fine, hf, 0.0, 0.0, sigma, 30)
    if abs(sx) > 2 * sigma or abs(sy) > 2 * sigma:  # left the fine window: keep the smoothed maximum
        sx = sy = 0.0
    return ox + px + sx, oy + py + sy, weight


# ------------------------------------------------------------------------------------------------ helpers
def _columns(locs):
    names = locs.dtype.names
    for need in ("frame", "x", "y"):
        if need not in names:
            raise DriftError(f"the localizations have no {need!r} column")
    frame = np.asarray(locs["frame"], np.int64)
    x = np.asarray(locs["x"], np.float64)
    y = np.asarray(locs["y"], np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return frame[ok], x[ok], y[ok], ok


def kernel_width(locs, floor: float = 0.02) -> float:
    """Matched kernel width (camera pixels) for pair displacements: ``sqrt(2) * median(lp)``, clipped."""
    names = locs.dtype.names
    if len(locs) and "lpx" in names and "lpy" in names:
        lp = np.concatenate([np.asarray(locs["lpx"], np.float64), np.asarray(locs["lpy"], np.float64)])
        lp = lp[np.isfinite(lp) & (lp > 0)]
        if len(lp):
            return float(np.clip(math.sqrt(2.0) * np.median(lp), floor, 0.5))
    return 0.1


def segment_bounds(n_frames: int, segmentation: int) -> np.ndarray:
    """Segments of ``segmentation`` frames from frame 0; a last piece shorter than half joins the one before."""
    n_frames = int(n_frames)
    segmentation = int(segmentation)
    if segmentation < 1:
        raise DriftError(f"segmentation must be >= 1 frame, got {segmentation}")
    bounds = list(range(0, n_frames, segmentation)) + [n_frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < segmentation / 2:
        del bounds[-2]
    return np.asarray(bounds, np.int64)


def interpolate_drift(bounds: np.ndarray, segment_drift: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-frame drift from the segment drifts: natural cubic spline through the centres, linear beyond."""
    from scipy.interpolate import CubicSpline

    t = (bounds[:-1] + bounds[1:] - 1) / 2.0
    frames = np.arange(int(n_frames), dtype=np.float64)
    out = np.empty((len(frames), segment_drift.shape[1]))
    if len(t) == 1:
        out[:] = segment_drift[0]
        return out
    for d in range(segment_drift.shape[1]):
        if len(t) == 2:
            slope = (segment_drift[1, d] - segment_drift[0, d]) / (t[1] - t[0])
            out[:, d] = segment_drift[0, d] + slope * (frames - t[0])
            continue
        spline = CubicSpline(t, segment_drift[:, d], bc_type="natural")
        out[:, d] = spline(frames)
        d0 = spline(t[0], 1)
        d1 = spline(t[-1], 1)
        lo = frames < t[0]
        hi = frames > t[-1]
        out[lo, d] = segment_drift[0, d] + d0 * (frames[lo] - t[0])
        out[hi, d] = segment_drift[-1, d] + d1 * (frames[hi] - t[-1])
    return out


def _finish(method, bounds, seg_drift, n_frames, parameters, diagnostics) -> DriftResult:
    drift = interpolate_drift(bounds, seg_drift, n_frames)
    mean = drift.mean(axis=0)
    drift -= mean
    seg_drift = seg_drift - mean
    return DriftResult(method, drift.astype(np.float32), bounds, seg_drift, parameters, diagnostics)


def apply_drift(locs, drift) -> np.ndarray:
    """A copy of ``locs`` with ``x - dx[frame]`` and ``y - dy[frame]`` (``drift``: array or DriftResult)."""
    drift = np.asarray(getattr(drift, "drift", drift))
    out = np.array(locs, copy=True)
    frame = np.asarray(out["frame"], np.int64)
    if len(frame) and (frame.min() < 0 or frame.max() >= len(drift)):
        raise DriftError(f"localizations in frame {int(frame.max())} but the drift covers {len(drift)} frames")
    out["x"] = out["x"] - drift[frame, 0].astype(out["x"].dtype)
    out["y"] = out["y"] - drift[frame, 1].astype(out["y"].dtype)
    return out


def _segments(frame, bounds):
    order = np.argsort(frame, kind="stable")
    idx = np.searchsorted(frame[order], bounds)
    return order, idx


def _targets(index, seed):
    """At most :data:`MAX_TARGETS` of a segment's localization indices (a seeded random subset)."""
    if len(index) <= MAX_TARGETS:
        return index
    rng = np.random.default_rng([seed, len(index)])
    return np.sort(rng.choice(index, MAX_TARGETS, replace=False))


# ------------------------------------------------------------------------------------------------ RCC
def _render_coarse(x, y, x0, y0, ny, nx, cell):
    img, _, _ = np.histogram2d((y - y0) / cell, (x - x0) / cell, bins=(ny, nx), range=((0, ny), (0, nx)))
    return img


def undrift_rcc(locs, n_frames: int, segmentation: int = DEFAULT_SEGMENTATION["rcc"], max_shift: float = 5.0,
                rmax: float = 0.2, sigma: float | None = None, progress=None) -> DriftResult:
    """Drift by redundant cross-correlation of all segment pairs.

    Parameters
    ----------
    locs : structured array
        Localizations with ``frame``, ``x``, ``y`` (camera pixels); ``lpx``/``lpy`` set the kernel width.
    n_frames : int
        Frames of the movie (the drift covers all of them).
    segmentation : int
        Frames per segment (Picasso's ``--segmentation``, default 1000).
    max_shift : float
        Largest drift between any two segments, camera pixels (the coarse search window).
    rmax : float
        Pairs whose least-squares residual exceeds this (camera pixels) are dropped as failed correlations.
    sigma : float, optional
        Kernel width (camera pixels); default :func:`kernel_width`.
    progress : callable, optional
        ``progress(done, total)`` over the segment pairs.
    """
    frame, x, y, _ = _columns(locs)
    bounds = segment_bounds(n_frames, segmentation)
    n_seg = len(bounds) - 1
    if n_seg < 2:
        raise DriftError(f"{n_frames} frames make one segment of {segmentation}: use a smaller --segmentation "
                         "(at least two segments are needed)")
    sigma = kernel_width(locs) if sigma is None else float(sigma)
    order, idx = _segments(frame, bounds)
    segs = [order[idx[s]:idx[s + 1]] for s in range(n_seg)]
    if min(len(s) for s in segs) == 0:
        empty = [s for s in range(n_seg) if len(segs[s]) == 0]
        raise DriftError(f"segments {empty} (of {segmentation} frames) hold no localizations: use a larger "
                         "--segmentation")
    seg_drift, diag = _rcc_pass(x, y, segs, max_shift, rmax, sigma, coarse=True, progress=progress)
    # further passes on the corrected coordinates: the drift within each segment no longer blurs the
    # segments, so the pair shifts sharpen; stop when a pass changes the drift by less than 1/10 of the kernel
    passes = 1
    while passes < 5:
        d = interpolate_drift(bounds, seg_drift, n_frames)
        xc = x - d[frame, 0]
        yc = y - d[frame, 1]
        # the first refinement searches half a pixel (pass 1 can be that far off when the segments were
        # blurred by a fast drift), later ones two kernel widths
        radius = max(0.5, 2 * sigma) if passes == 1 else 2 * sigma
        update, diag2 = _rcc_pass(xc, yc, segs, radius, rmax, sigma, coarse=False)
        seg_drift = seg_drift + update
        passes += 1
        diag = {"pairs": diag["pairs"], "pairs_dropped": diag2["pairs_dropped"],
                "residual_px": diag2["residual_px"], "passes": passes}
        if np.abs(update).max() < 0.1 * sigma:
            break
    params = {"segmentation": int(segmentation), "max_shift_px": float(max_shift), "rmax_px": float(rmax),
              "kernel_px": float(sigma)}
    return _finish("rcc", bounds, seg_drift, n_frames, params, diag)


def _rcc_pass(x, y, segs, max_shift, rmax, sigma, coarse, progress=None):
    """Segment drifts from all segment pairs: coarse FFT correlation (optional), then pair refinement."""
    n_seg = len(segs)
    x0, y0 = float(x.min()), float(y.min())
    span = max(float(x.max()) - x0, float(y.max()) - y0, 1.0)
    cell = max(0.5, span / 1024.0) if coarse else max_shift
    if coarse:
        # FFT cross-correlation on a grid of half a camera pixel (at most 1024 cells a side), padded by max_shift
        # so shifts do not wrap around
        pad = int(math.ceil(max_shift / cell)) + 2
        nyc = int(span / cell) + 1 + 2 * pad
        nxc = nyc
        ky = np.fft.fftfreq(nyc)[:, None]
        kx = np.fft.rfftfreq(nxc)[None, :]
        blur = np.exp(-2.0 * (np.pi ** 2) * (ky ** 2 + kx ** 2))  # Gaussian of one cell
        spectra = [np.fft.rfft2(_render_coarse(x[s], y[s], x0 - pad * cell, y0 - pad * cell, nyc, nxc, cell))
                   * blur for s in segs]
        lim = max_shift / cell
        sy_, sx_ = np.meshgrid(np.fft.fftfreq(nyc) * nyc, np.fft.fftfreq(nxc) * nxc, indexing="ij")
        outside = sy_ ** 2 + sx_ ** 2 > lim ** 2
    grids = [_Grid(x[s], y[s], GRID_CELL_PX) for s in segs]
    targets = [_targets(s, k) for k, s in enumerate(segs)]
    jobs = []
    for i in range(n_seg - 1):
        for j in range(i + 1, n_seg):
            cx = cy = 0.0
            if coarse:
                cc = np.fft.irfft2(spectra[i] * np.conj(spectra[j]), s=(nyc, nxc))
                cc[outside] = -np.inf
                k = int(np.argmax(cc))
                cy, cx = sy_.flat[k] * cell, sx_.flat[k] * cell  # reference i ~ target j + (cx, cy)
            jobs.append((i, j, cx, cy))
    total = len(jobs)
    done = [0]

    def run(job):
        i, j, cx, cy = job
        t = targets[j]
        result = _shift(x[t], y[t], grids[i], (cx, cy), cell, sigma)
        done[0] += 1
        if progress is not None:
            progress(done[0], total)
        return result

    pairs, shifts = [], []
    for (i, j, _, _), (s_x, s_y, w) in zip(jobs, _map(run, jobs)):
        if w > 0:
            pairs.append((i, j))
            shifts.append((-s_x, -s_y))  # d_j - d_i
    seg_drift, kept, residual = _solve_redundant(n_seg, pairs, np.asarray(shifts, np.float64), rmax)
    return seg_drift, {"pairs": len(pairs), "pairs_dropped": len(pairs) - int(kept.sum()), "residual_px": residual}


def _solve_redundant(n_seg, pairs, r, rmax):
    """Least-squares segment drifts (zero mean) from pairwise differences, dropping residuals above rmax."""
    if len(pairs) == 0:
        raise DriftError("no two segments share structure: the drift cannot be measured")
    pairs = np.asarray(pairs, np.int64)
    kept = np.ones(len(pairs), bool)

    def solve(mask):
        a = np.zeros((int(mask.sum()) + 1, n_seg))
        rows = np.nonzero(mask)[0]
        a[np.arange(len(rows)), pairs[rows, 1]] = 1.0
        a[np.arange(len(rows)), pairs[rows, 0]] = -1.0
        a[-1, :] = 1.0  # zero mean
        b = np.vstack([r[rows], np.zeros((1, 2))])
        d, *_ = np.linalg.lstsq(a, b, rcond=None)
        return d

    def connected(mask):
        parent = list(range(n_seg))

        def root(u):
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        for (i, j) in pairs[mask]:
            parent[root(int(i))] = root(int(j))
        return len({root(u) for u in range(n_seg)}) == 1

    if not connected(kept):
        raise DriftError("some segments could not be correlated with any other: use a larger --segmentation")
    d = solve(kept)
    while True:
        res = np.full(len(pairs), -1.0)
        rows = np.nonzero(kept)[0]
        res[rows] = np.hypot(*(d[pairs[rows, 1]] - d[pairs[rows, 0]] - r[rows]).T)
        for worst in np.argsort(res)[::-1]:
            if res[worst] <= rmax:
                worst = None
                break
            trial = kept.copy()
            trial[worst] = False
            if connected(trial):
                break
        else:
            worst = None
        if worst is None:
            break
        kept[worst] = False
        d = solve(kept)
    rows = np.nonzero(kept)[0]
    residual = float(np.sqrt(np.mean(np.sum((d[pairs[rows, 1]] - d[pairs[rows, 0]] - r[rows]) ** 2, axis=1))))
    return d, kept, residual


# ------------------------------------------------------------------------------------------------ AIM
def undrift_aim(locs, n_frames: int, segmentation: int = DEFAULT_SEGMENTATION["aim"],
                intersect_distance: float = AIM_INTERSECT_DISTANCE_PX, roi_radius: float = AIM_ROI_RADIUS_PX,
                progress=None) -> DriftResult:
    """Drift by adaptive intersection maximization (two rounds, see the module docstring).

    Parameters
    ----------
    locs : structured array
        Localizations with ``frame``, ``x``, ``y`` (camera pixels); ``lpx``/``lpy`` set the kernel width.
    n_frames : int
        Frames of the movie.
    segmentation : int
        Frames per segment (default 100, Picasso's).
    intersect_distance : float
        Camera pixels within which two localizations count as intersecting (default 20 nm at 130 nm/px);
        the kernel width is the larger of half of it and ``sqrt(2) * median lp``.
    roi_radius : float
        Largest drift between consecutive segments, camera pixels (default 60 nm at 130 nm/px).
    progress : callable, optional
        ``progress(done, total)`` over the segments of both rounds.
    """
    frame, x, y, _ = _columns(locs)
    bounds = segment_bounds(n_frames, segmentation)
    n_seg = len(bounds) - 1
    if not (intersect_distance > 0 and roi_radius > 0):
        raise DriftError("the intersect distance and the search radius must be > 0 camera pixels")
    sigma = max(intersect_distance / 2.0, kernel_width(locs))
    order, idx = _segments(frame, bounds)
    segs = [order[idx[s]:idx[s + 1]] for s in range(n_seg)]
    if len(segs[0]) == 0:
        raise DriftError(f"the first segment (frames 0..{bounds[1] - 1}) holds no localizations: AIM needs it "
                         "as the reference; use a larger --segmentation")
    total = 2 * n_seg
    done = 0
    # round 1: the first segment is the reference, each search starts at the previous segment's shift
    grid = _Grid(x[segs[0]], y[segs[0]], GRID_CELL_PX)
    seg1 = np.zeros((n_seg, 2))
    shift = (0.0, 0.0)
    for s in range(1, n_seg):
        if len(segs[s]):
            t = _targets(segs[s], s)
            sx, sy, w = _shift(x[t], y[t], grid, shift, roi_radius, sigma)
            if w > 0:
                shift = (sx, sy)
        seg1[s] = (-shift[0], -shift[1])
        done += 1
        if progress is not None:
            progress(done, total)
    d1 = interpolate_drift(bounds, seg1, n_frames)
    xc = x - d1[frame, 0]
    yc = y - d1[frame, 1]
    # round 2: everything (round-1 corrected) is the reference, without the segment being aligned
    ref = np.arange(len(xc))
    if len(ref) > MAX_REFERENCE:
        ref = np.sort(np.random.default_rng([len(ref), 2]).choice(ref, MAX_REFERENCE, replace=False))
    grid = _Grid(xc[ref], yc[ref], GRID_CELL_PX, frames=frame[ref])
    seg2 = np.zeros((n_seg, 2))

    def run(s):
        result = (0.0, 0.0, 0.0)
        if len(segs[s]):
            t = _targets(segs[s], s)
            result = _shift(xc[t], yc[t], grid, (0.0, 0.0), min(roi_radius, 2 * sigma), sigma,
                            exclude=(bounds[s], bounds[s + 1]))
        done[0] += 1
        if progress is not None:
            progress(done[0], total)
        return result

    done = [done]
    for s, (sx, sy, w) in enumerate(_map(run, list(range(n_seg)))):
        seg2[s] = (-sx, -sy) if w > 0 else (seg2[s - 1] if s else (0.0, 0.0))
    params = {"segmentation": int(segmentation), "intersect_distance_px": float(intersect_distance),
              "roi_radius_px": float(roi_radius), "kernel_px": float(sigma)}
    return _finish("aim", bounds, seg1 + seg2, n_frames, params, {"segments": n_seg})


def undrift(locs, n_frames: int, method: str = "rcc", segmentation: int | None = None, progress=None,
            **options) -> DriftResult:
    """Estimate the drift with ``method`` (``"rcc"`` or ``"aim"``); see :func:`undrift_rcc`, :func:`undrift_aim`."""
    if method not in DRIFT_METHODS:
        raise DriftError(f"drift method must be one of {', '.join(DRIFT_METHODS)}, got {method!r}")
    if len(locs) == 0:
        raise DriftError("no localizations: nothing to undrift")
    seg = DEFAULT_SEGMENTATION[method] if segmentation is None else int(segmentation)
    fn = undrift_rcc if method == "rcc" else undrift_aim
    return fn(locs, int(n_frames), seg, progress=progress, **options)
