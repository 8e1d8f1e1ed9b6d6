"""Fitting the cubic-spline PSF with the engine: boxes -> x, y, z, photons, bg and their Cramér-Rao bounds.

The model (:data:`~napari_localize.core.engine.MODEL_SPLINE_Z`, or ``MODEL_SPLINE_2D`` for an in-focus
calibration) is fitted by the engine's Levenberg-Marquardt on the Poisson likelihood (MLE) or least squares
(LQ), CPU or CUDA. The likelihood of an experimental PSF can have more than one maximum in z (a defocused
spot above and below focus can look alike, spherical aberration breaks the symmetry only partly), so every
box is fitted from several heights (``starts``, spread over the calibrated range) and the best objective kept.

Positions are box coordinates in the engine (pixel centres at integers); :func:`fit_spline_spots` returns
them in frame coordinates given the box centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .engine import (
    IB,
    IN,
    IX,
    IY,
    IZ,
    MODEL_SPLINE_2D,
    MODEL_SPLINE_Z,
    NOISE_LSQ,
    NOISE_POISSON,
    default_bounds,
    fit_boxes,
    spline_aux,
)
from .spline import SplinePSF

#: heights a fit starts from, as fractions of the calibrated range (plus the calibration's reference height)
DEFAULT_STARTS = (0.2, 0.5, 0.8)


def aux_of(psf: SplinePSF) -> np.ndarray:
    """The engine's ``aux`` for ``psf`` (cached on the object: the table can be large)."""
    aux = psf.__dict__.get("_aux")
    if aux is None:
        aux = spline_aux(psf.coefficients, psf.cx, psf.cy, psf.z_first, psf.z_step, psf.z_init,
                         psf.oversampling)
        psf.__dict__["_aux"] = aux
    return aux


def initial_theta(spots, psf: SplinePSF, z0: float) -> np.ndarray:
    """Start of each box: bg from the border, photons from the sum, x, y from the centroid, z = ``z0``."""
    spots = np.asarray(spots, float)
    n, box, _ = spots.shape
    r = box // 2
    border = np.concatenate([spots[:, 0], spots[:, -1], spots[:, 1:-1, 0], spots[:, 1:-1, -1]], axis=1)
    bg = np.maximum(border.mean(axis=1), 1e-3)
    net = np.clip(spots - bg[:, None, None], 0, None)
    total = net.sum(axis=(1, 2))
    k, m = np.mgrid[0:box, 0:box]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.where(total > 0, (net * m).sum(axis=(1, 2)) / total, r)
        cy = np.where(total > 0, (net * k).sum(axis=(1, 2)) / total, r)
    k = 5 if psf.is_3d else 4
    theta = np.zeros((n, k))
    theta[:, IX] = np.clip(cx, r - 1.0, r + 1.0)
    theta[:, IY] = np.clip(cy, r - 1.0, r + 1.0)
    theta[:, IN] = np.maximum(total, 1.0)
    theta[:, IB] = bg
    if psf.is_3d:
        theta[:, IZ] = z0
    return theta


@dataclass
class SplineFit:
    """Per-box results: theta (x, y box coordinates; N; bg; z nm), CRLB variances, objective, convergence."""

    theta: np.ndarray
    crlb: np.ndarray
    objective: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    gof: np.ndarray
    start: np.ndarray


def fit_spline_boxes(spots, psf: SplinePSF, method: str = "mle", starts=DEFAULT_STARTS, eps: float = 1e-3,
                     max_iterations: int = 100, other=None, variance=None, device: str = "cpu",
                     gof: bool = False) -> SplineFit:
    """Fit ``(n, box, box)`` photon boxes with the spline PSF from several starting heights; keep the best.

    ``method``: ``"mle"`` (Poisson likelihood; CRLB) or ``"lq"`` (least squares). ``other``: fixed light of
    neighbours per box (photons), ``variance``: sCMOS per-pixel readout variance (photons^2).
    """
    spots = np.asarray(spots)
    if spots.ndim != 3 or spots.shape[1] != spots.shape[2] or spots.shape[1] % 2 == 0:
        raise ValueError(f"spline fit: expected odd square boxes (n, box, box), got {spots.shape}")
    box = spots.shape[1]
    grid = psf.grid_px
    if box > grid:
        raise ValueError(f"the fit box ({box} px) is larger than the spline calibration's grid ({grid} nodes): "
                         f"use a box of at most {grid - 2 if grid % 2 else grid - 1}")
    if method not in ("mle", "lq"):
        raise ValueError(f"spline fit method must be 'mle' or 'lq', got {method!r}")
    from .engine import NOISE_SCMOS, NOISE_WLSQ

    noise = NOISE_POISSON if method == "mle" else NOISE_LSQ
    if variance is not None:
        # sCMOS: the likelihood of Huang et al. 2013 (MLE), or least squares weighted by each pixel's variance
        noise = NOISE_SCMOS if method == "mle" else NOISE_WLSQ
    model = MODEL_SPLINE_Z if psf.is_3d else MODEL_SPLINE_2D
    aux = aux_of(psf)
    lo_z, hi_z = psf.z_range
    bounds = default_bounds(model, box, (lo_z, hi_z) if psf.is_3d else None)
    heights = [psf.z_init] + [lo_z + f * (hi_z - lo_z) for f in starts] if psf.is_3d else [0.0]

    def run(theta0, iterations, rows=None):
        sub = spots if rows is None else spots[rows]
        return fit_boxes(sub, model, noise, theta0=theta0, aux=aux, bounds=bounds,
                         variance=None if variance is None else (variance if rows is None else variance[rows]),
                         other=None if other is None else (other if rows is None else other[rows]),
                         eps=eps, max_iterations=iterations, gof=gof, device=device)

    if len(heights) == 1:
        res = run(initial_theta(spots, psf, heights[0]), max_iterations)
        obj = np.where(np.isfinite(res.objective), res.objective, -np.inf)
        return SplineFit(res.theta, res.crlb, obj, res.iterations, res.converged, res.gof,
                         np.zeros(len(obj), np.int64))
    # a few iterations from every height tell the basins apart; the best is then fitted to convergence
    scout = min(SCOUT_ITERATIONS, max_iterations)
    best_obj = np.full(len(spots), -np.inf)
    best_theta = np.zeros((len(spots), 5 if psf.is_3d else 4))
    best_start = np.zeros(len(spots), np.int64)
    for i, z0 in enumerate(heights):
        res = run(initial_theta(spots, psf, z0), scout)
        obj = np.where(np.isfinite(res.objective), res.objective, -np.inf)
        better = obj > best_obj + 1e-9
        best_obj[better] = obj[better]
        best_theta[better] = res.theta[better]
        best_start[better] = i
    res = run(best_theta, max_iterations)
    obj = np.where(np.isfinite(res.objective), res.objective, -np.inf)
    return SplineFit(res.theta, res.crlb, obj, res.iterations + scout, res.converged, res.gof, best_start)


#: iterations of the scouting fits from each starting height
SCOUT_ITERATIONS = 3


def spline_crlb(psf: SplinePSF, x, y, z, photons, bg, box: int) -> np.ndarray:
    """Cramér-Rao variances (x, y px^2; N; bg; z nm^2) of the Poisson spline model at the given parameters."""
    from .engine import curvature

    model = MODEL_SPLINE_Z if psf.is_3d else MODEL_SPLINE_2D
    aux = aux_of(psf)
    out = []
    for xi, yi, zi, ni, bi in np.broadcast(x, y, z, photons, bg):
        theta = [xi, yi, ni, bi, zi] if psf.is_3d else [xi, yi, ni, bi]
        F = curvature(theta, box, model, NOISE_POISSON, aux)
        k = len(theta)
        out.append(np.diag(np.linalg.inv(F[:k, :k])))
    return np.array(out)


# ------------------------------------------------------------------------------------------- localization
#: 3D fields of a spline localization: Picasso's ``z, d_zcalib, lpz`` (d_zcalib is 0: no width matching)
#: and ``z_gof``, the standardised Poisson deviance of the fit (about N(0, 1) for one spot of the model)
SPLINE_EXTRA_FIELDS = [("z_gof", "<f4")]


def spline_locs_dtype(fit_method: str, is_3d: bool = True) -> np.dtype:
    """The table of a spline run: the 2D fields of ``fit_method`` (sx, sy: the model's Gaussian-equivalent
    widths at the fitted z) plus ``z, d_zcalib, lpz, z_gof`` in 3D."""
    from .locs import Z_FIELDS, locs_dtype

    base = locs_dtype(fit_method).descr
    return np.dtype(base + (Z_FIELDS + SPLINE_EXTRA_FIELDS if is_3d else []))


def _width_table(psf: SplinePSF):
    table = psf.__dict__.get("_widths")
    if table is None:
        zz = np.linspace(*psf.z_range, 41) if psf.is_3d else np.zeros(1)
        sx, sy = psf.gaussian_widths(zz)
        table = (zz, sx, sy)
        psf.__dict__["_widths"] = table
    return table


def spline_widths(psf: SplinePSF, z):
    """Gaussian-equivalent widths (pixels) of the model at heights ``z`` (for the sx, sy columns)."""
    zz, sx, sy = _width_table(psf)
    if not psf.is_3d:
        return np.full(np.shape(z), sx[0]), np.full(np.shape(z), sy[0])
    return np.interp(z, zz, sx), np.interp(z, zz, sy)


def neighbour_light_spline(frame, x, y, photons, z, bx, by, box: int, psf: SplinePSF):
    """Expected photons of the frame's other localizations in each box (``bx, by`` box centres, pixels)."""
    n = len(x)
    out = np.zeros((n, box, box))
    r = box // 2
    reach = box + psf.grid_px / 2.0
    order = np.argsort(frame, kind="stable")
    f = np.asarray(frame)[order]
    starts = np.searchsorted(f, np.unique(f))
    ends = np.append(starts[1:], len(f))
    for a, b in zip(starts, ends):
        idx = order[a:b]
        if len(idx) < 2:
            continue
        for i in idx:
            near = idx[(idx != i) & (np.abs(x[idx] - bx[i]) < reach) & (np.abs(y[idx] - by[i]) < reach)]
            for j in near:
                out[i] += photons[j] * psf.patch(x[j] - bx[i] + r, y[j] - by[i] + r, z[j] if psf.is_3d else 0.0,
                                                 box, box)
    return out


def localize_frames_spline(frames, p, psf: SplinePSF, first_frame: int = 0, stats=None, neighbours: bool = True,
                           max_gof: float = 0.0, device: str | None = None, camera=None, identify_frames=None):
    """Localize ``frames`` (ADU) with the spline PSF: identify with ``p.box_size``, fit the spline in boxes of
    ``p.box_size`` (MLE or LQ by ``p.fit_method``), one pass with the neighbours' light if ``neighbours``.

    ``camera``: per-pixel sCMOS maps (:class:`~napari_localize.core.camera.CameraMaps`) of these frames: they
    replace ``p.baseline``/``p.sensitivity``, identification is variance-aware and the MLE uses the sCMOS
    likelihood (Poisson light plus each pixel's readout variance). ``identify_frames``: what identification
    sees when a prefilter is on (same shape); the fit always uses ``frames``.

    Returns the :func:`spline_locs_dtype` table; fits that did not converge, ended on a bound of the
    calibrated z range, fail Picasso's sanity filter or (``max_gof`` > 0) fit badly are dropped and counted.
    """
    import time

    from .camera import adu_to_photons
    from .locs import sane
    from .pipeline import LocalizeStats, identify_chunk
    from .spots import cut_spots

    stats = stats if stats is not None else LocalizeStats()
    method = "lq" if p.fit_method == "lq" else "mle"
    if device is None:
        from .device import select_device

        device = select_device(p.box_size, method)
    stats.device = stats.device or device
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n, height, width = frames.shape
    t0 = time.perf_counter()
    ids = identify_chunk(frames, p, first_frame, camera, identify_frames)  # as the 2D run
    t1 = time.perf_counter()
    box = int(p.box_size)
    r = box // 2
    # boxes start on the identified pixel; a defocused or aberrated spot's brightest pixel can lie more than a
    # pixel from its centre, so boxes whose fit ends off-centre are cut again around the fit and refitted
    cx = ids["x"].astype(np.int64)
    cy = ids["y"].astype(np.int64)
    local = ids["frame"] - first_frame

    def cut(cx, cy):
        spots = cut_spots(frames, local, cy, cx, box)
        if camera is None:
            return adu_to_photons(spots, p.baseline, p.sensitivity, p.em_gain), None
        return camera.boxes_to_photons(spots, cy, cx)

    def fit(photons, other=None, sel=None):
        var = variance if (variance is None or sel is None) else variance[sel]
        return fit_spline_boxes(photons if sel is None else photons[sel], psf, method, eps=p.convergence,
                                max_iterations=p.max_iterations, device=device, gof=method == "mle",
                                other=None if other is None else (other if sel is None else other[sel]),
                                variance=var)

    photons, variance = cut(cx, cy)
    res = fit(photons)
    for _ in range(RECENTRE_ROUNDS):
        off_x = np.rint(res.theta[:, IX] - r).astype(np.int64)
        off_y = np.rint(res.theta[:, IY] - r).astype(np.int64)
        nx = np.clip(cx + off_x, r, width - 1 - r)
        ny = np.clip(cy + off_y, r, height - 1 - r)
        move = ((nx != cx) | (ny != cy)) & np.isfinite(res.theta).all(axis=1)
        if not move.any():
            break
        cx = np.where(move, nx, cx)
        cy = np.where(move, ny, cy)
        photons, variance = cut(cx, cy)
        again = fit(photons, sel=move)
        _take(res, again, move)
    if neighbours and len(ids) > 1 and method == "mle":
        th = res.theta
        x = cx + th[:, IX] - r
        y = cy + th[:, IY] - r
        z = th[:, IZ] if psf.is_3d else np.zeros(len(th))
        ok = res.converged & np.isfinite(th).all(axis=1)
        light = neighbour_light_spline(ids["frame"], np.where(ok, x, -1e9), np.where(ok, y, -1e9),
                                       np.where(ok, th[:, IN], 0.0), z, cx.astype(float), cy.astype(float),
                                       box, psf)
        lit = light.reshape(len(light), -1).max(axis=1) > 0
        if lit.any():
            again = fit(photons, light, lit)
            _take(res, again, lit)
    ids = ids.copy()
    ids["x"] = cx
    ids["y"] = cy
    t2 = time.perf_counter()
    stats.seconds["identify"] += t1 - t0
    stats.seconds["fit"] += t2 - t1
    stats.frames += n
    stats.identified += len(ids)
    locs = spline_locs(ids, res, psf, p, box)
    keep = res.converged & np.isfinite(res.theta).all(axis=1) & np.isfinite(res.crlb).all(axis=1)
    if psf.is_3d:
        lo, hi = psf.z_range
        edge = 1e-6 * (hi - lo)
        keep &= (res.theta[:, IZ] > lo + edge) & (res.theta[:, IZ] < hi - edge)
        if max_gof > 0:
            keep &= locs["z_gof"] <= max_gof
    good = sane(locs, width, height)
    stats.not_converged += int((~keep).sum())
    stats.not_sane += int((keep & ~good).sum())
    locs = locs[keep & good]
    stats.localized += len(locs)
    return locs


#: how often a box is cut again around a fit that ended off its centre
RECENTRE_ROUNDS = 2


def _take(res: SplineFit, other: SplineFit, where):
    """Replace the rows ``where`` of ``res`` by ``other`` (fitted on those rows only)."""
    for name in ("theta", "crlb", "objective", "iterations", "converged", "gof", "start"):
        a = getattr(res, name)
        b = getattr(other, name)
        if a is not None and b is not None:
            a[where] = b


def spline_locs(ids, res: SplineFit, psf: SplinePSF, p, box: int) -> np.ndarray:
    """The localization table of spline fits of the boxes centred on ``ids``."""
    from .locs import ellipticity

    r = box // 2
    th = res.theta
    locs = np.zeros(len(ids), spline_locs_dtype(p.fit_method if p.fit_method in ("mle", "lq") else "mle",
                                                psf.is_3d))
    locs["frame"] = ids["frame"]
    locs["x"] = ids["x"] + th[:, IX] - r
    locs["y"] = ids["y"] + th[:, IY] - r
    locs["photons"] = th[:, IN]
    locs["bg"] = th[:, IB]
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(res.crlb)
    locs["lpx"] = sd[:, IX]
    locs["lpy"] = sd[:, IY]
    locs["net_gradient"] = ids["net_gradient"]
    z = th[:, IZ] if psf.is_3d else np.zeros(len(th))
    sx, sy = spline_widths(psf, z)
    locs["sx"] = sx
    locs["sy"] = sy
    locs["ellipticity"] = ellipticity(sx, sy)
    names = locs.dtype.names
    if "log_likelihood" in names:
        locs["log_likelihood"] = res.objective
        locs["iterations"] = res.iterations
        locs["photons_unc"] = sd[:, IN]
        locs["bg_unc"] = sd[:, IB]
    if psf.is_3d:
        locs["z"] = z
        locs["lpz"] = sd[:, IZ]
        locs["d_zcalib"] = 0.0
        locs["z_gof"] = np.where(np.isfinite(res.gof), res.gof, 0.0) if res.gof is not None else 0.0
    return locs


def spline_z_document(psf: SplinePSF, options, generated_by: str, calibration_path=None) -> dict:
    """The 3D document of ``_locs.yaml`` for a spline run (Picasso's 3D keys where they apply)."""
    path = None if calibration_path is None else str(calibration_path)
    lo, hi = psf.z_range
    return {
        "Generated by": f"{generated_by} Fit 3D (spline PSF)",
        "Calibration path": path, "Z Calibration Path": path, "Spline calibration": path,
        "Z fit method": "spline PSF (the fit method's estimator: MLE or least squares)",
        "Spline calibration source": psf.source,
        "Spline box size": int(psf.grid_px),
        "Spline lateral oversampling": int(psf.oversampling),
        "Z calibrated range in nm": [float(lo), float(hi)],
        "Z fit range in nm": [float(lo), float(hi)],
        "Z drop fits at the fit range bound": True,
        "Z fit models neighbours": bool(getattr(options, "neighbours", True)),
        "Z max goodness of fit (z_gof)": float(getattr(options, "max_gof", 0.0)),
        "Magnification Factor": float(psf.magnification_factor),
        "Pixelsize of the calibration": float(psf.pixelsize),
        "Notices": list(psf.notices),
    }
