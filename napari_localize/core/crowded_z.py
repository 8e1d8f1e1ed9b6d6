"""Crowded fields in 3D (astigmatic polynomial z and cubic-spline z): iterative residual peak finding.

The 3D fit is one emitter per box with the light of the frame's other localizations in the model (the
neighbours' light, :func:`~.zmodel.neighbour_light`, :func:`~.spline_fit.neighbour_light_spline`). What it
misses are spots that identification did not return: a spot whose box centre lies within the box of a
brighter one (identification keeps one local maximum per box). Here, as in 3D-DAOSTORM (Babcock et al. 2012,
Optical Nanoscopy 1:6), the fitted localizations are rendered with the calibrated PSF and subtracted from the
frames, and so is the PSF model's shape error as measured on the chunk's isolated spots
(:func:`measure_shape_error`); identification (the run's net-gradient threshold and box) runs again on this
residual; its peaks farther than :attr:`CrowdedZOptions.min_separation` from every localization are fitted in
the residual, then they and their neighbours are fitted again, each with the others' light from their 3D fits
(:func:`refit_astig`, :func:`refit_spline`). Added emitters that end dimmer than
:attr:`CrowdedZOptions.min_photons_fraction` of the chunk's median, or on top of another localization, are
dropped.

Why not a likelihood-ratio test, as the 2D fit does (:mod:`.crowded`)? With a calibration made from beads the
PSF model is never exact; at 3000 photons the shape error alone gives a two-emitter model a large likelihood
gain, and a fixed chi-square threshold then splits isolated spots (measured on pupil-function simulations with
bead calibrations: ``benchmarks/RESULTS.md``). The net gradient of the residual is a threshold on light, not on
likelihood, and the shape error that every spot of a height leaves is measured and removed before it is
applied. Used by :func:`~.run.run_steps` when :func:`~.run.z_crowded` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .zresidual import (  # noqa: F401  (shape_error_image: part of this module's interface)
    measure_shape_error,
    model_photons_astig,
    model_photons_spline,
    shape_error_image,
)

#: rounds of residual re-identification by default
DEFAULT_ROUNDS = 3


@dataclass
class CrowdedZOptions:
    """How the 3D residual search adds emitters.

    Attributes
    ----------
    rounds : int
        Rounds of residual re-identification (each followed by a refit of the chunk); 0 is off.
    min_separation : float
        A residual peak closer than this (pixels) to a localization of its frame is the shape error of that
        fit, not a spot.
    min_photons_fraction : float
        An added emitter must end with at least this fraction of the median photons of the chunk's
        localizations.
    duplicate_px : float
        An added emitter that ends closer than this (pixels) to another localization is dropped.
    isolation_boxes, min_isolated, z_bins : float, int, int
        The shape error of the PSF model (:func:`shape_error_image`) is measured on localizations with no
        other within ``isolation_boxes`` boxes, in up to ``z_bins`` bins by height of at least
        ``min_isolated`` of them.
    refit_rounds : int
        Rounds of refitting every spot that has others' light in its box with the light of the others' 3D
        fits (:func:`refit_astig`, :func:`refit_spline`); one more after emitters were added.
    """

    rounds: int = DEFAULT_ROUNDS
    min_separation: float = 1.5
    min_photons_fraction: float = 0.2
    duplicate_px: float = 1.5
    isolation_boxes: float = 2.0
    min_isolated: int = 30
    z_bins: int = 12
    refit_rounds: int = 2

    def as_document(self, max_emitters: int) -> dict:
        return {
            "Max emitters per box": int(max_emitters),
            "Multi-emitter fit 3D": {
                "Method": "residual re-identification (net gradient), refit with the neighbours' light",
                "Rounds of residual re-identification": int(self.rounds),
                "Min. separation from a localization (px)": float(self.min_separation),
                "Min. photons of an added emitter (fraction of the median)": float(self.min_photons_fraction),
                "Shape error measured in z bins (max)": int(self.z_bins),
                "Refit rounds with the neighbours' 3D light": int(self.refit_rounds),
            },
        }


# ------------------------------------------------------------------------------------------ the driver
def _far_from(ids, locs, first_frame: int, distance: float) -> np.ndarray:
    """Mask of ``ids`` farther than ``distance`` (pixels) from every localization of their frame."""
    keep = np.ones(len(ids), bool)
    if not len(locs) or not len(ids):
        return keep
    for f in np.unique(ids["frame"]):
        si = np.nonzero(ids["frame"] == f)[0]
        sl = np.nonzero(locs["frame"] == f)[0]
        if not len(sl):
            continue
        tree = cKDTree(np.column_stack([locs["x"][sl], locs["y"][sl]]).astype(float))
        d, _ = tree.query(np.column_stack([ids["x"][si], ids["y"][si]]).astype(float))
        keep[si] = d > distance
    return keep


def _nearest(ids, locs):
    """Distance (pixels) to and index of the nearest localization of the same frame for each of ``ids``."""
    d = np.full(len(ids), np.inf)
    j = np.full(len(ids), -1, np.int64)
    for f in np.unique(ids["frame"]):
        si = np.nonzero(ids["frame"] == f)[0]
        sl = np.nonzero(locs["frame"] == f)[0]
        if not len(sl):
            continue
        dd, jj = cKDTree(np.column_stack([locs["x"][sl], locs["y"][sl]]).astype(float)).query(
            np.column_stack([ids["x"][si], ids["y"][si]]).astype(float))
        d[si] = dd
        j[si] = sl[jj]
    return d, j


def _drop_weak_and_duplicates(locs, added, o: CrowdedZOptions) -> np.ndarray:
    """Keep mask: added emitters must be bright enough and not sit on another localization."""
    keep = np.ones(len(locs), bool)
    if not added.any():
        return keep
    base = locs["photons"][~added]
    floor = o.min_photons_fraction * float(np.median(base)) if len(base) else 0.0
    keep &= ~added | (locs["photons"] >= floor)
    for f in np.unique(locs["frame"][added]):
        s = np.nonzero((locs["frame"] == f) & keep)[0]
        if len(s) < 2:
            continue
        xy = np.column_stack([locs["x"][s], locs["y"][s]]).astype(float)
        for a, b in cKDTree(xy).query_pairs(o.duplicate_px):
            i, j = s[a], s[b]
            if added[i] and not added[j]:
                keep[i] = False
            elif added[j] and not added[i]:
                keep[j] = False
            elif added[i] and added[j]:
                keep[i if locs["photons"][i] < locs["photons"][j] else j] = False
    return keep


def refit_astig(frames, locs, p, z, first_frame: int = 0, rounds: int = 2, always=None, camera=None,
                device: str = "cpu"):
    """The astigmatic z MLE of ``locs`` again, each spot with the light of the others as the 3D fits see it.

    The run's z fit adds the neighbours' light from their 2D fits (free widths, one emitter per box): next to
    a close neighbour those are pulled and too wide. Here that light is rendered from the 3D fits (position,
    photons, and the calibrated widths at the fitted height) and every spot is fitted again, ``rounds`` times.
    Only rows with light of others in their box (and those marked ``always``) are refitted: an isolated
    spot keeps the run's fit. A row whose refit fails keeps its previous values; returns ``(locs, good)``,
    ``good`` marking the rows whose last refit succeeded (or that were not refitted). ``camera``: per-pixel
    sCMOS maps (the boxes converted pixel by pixel, the sCMOS likelihood). ``device``: the run's engine.
    """
    from .device import fit_device
    from .zcalib import fit_range
    from .zmodel import fit_z_mle, neighbour_light
    from .zpolicy import photon_boxes

    locs = locs.copy()
    good = np.ones(len(locs), bool)
    if len(locs) < 2 or rounds <= 0:
        return locs, good
    cal = z.calibration
    M = cal.magnification_factor
    box = z.options.z_box(p.box_size)
    r = box // 2
    h, w = np.asarray(frames).shape[-2:]
    flo, fhi = fit_range(cal, z.options.extrapolation)
    edge = 1e-6 * (cal.z_range[1] - cal.z_range[0])
    photons = np.asarray(locs["photons"], float).copy()
    bg = np.asarray(locs["bg"], float).copy()
    for _ in range(rounds):
        x = np.asarray(locs["x"], float)
        y = np.asarray(locs["y"], float)
        zc = np.asarray(locs["z"], float) / M
        wx, wy = cal.widths(zc)
        spots, variance = photon_boxes(frames, locs, first_frame, box, p, camera)
        bx = np.clip(np.rint(x), r, w - 1 - r)
        by = np.clip(np.rint(y), r, h - 1 - r)
        extra = neighbour_light(locs["frame"], x, y, photons, wx, wy, bx, by, box)
        sel = extra.reshape(len(extra), -1).max(axis=1) > 1e-3 * np.maximum(photons, 1.0) / box**2
        if always is not None:
            sel |= always
        theta = np.column_stack([x - bx + r, y - by + r, photons, bg, zc])
        crlb = np.full((len(locs), 5), np.nan)
        conv = np.zeros(len(locs), bool)
        gof = np.zeros(len(locs))
        if sel.any():
            t, c, v, g = fit_z_mle(spots[sel], theta[sel, 0], theta[sel, 1], photons[sel], bg[sel], zc[sel], cal,
                                   z_bounds=(flo, fhi), extra=extra[sel], eps=p.convergence,
                                   max_iterations=p.max_iterations, device=fit_device(device, box),
                                   variance=None if variance is None else variance[sel])
            theta[sel], crlb[sel], conv[sel], gof[sel] = t, c, v, g
        good = sel & conv & np.isfinite(theta).all(axis=1) & np.isfinite(crlb[:, 4]) & (crlb[:, 4] > 0)
        good &= (theta[:, 4] > flo + edge) & (theta[:, 4] < fhi - edge)
        locs["x"] = np.where(good, theta[:, 0] - r + bx, x)
        locs["y"] = np.where(good, theta[:, 1] - r + by, y)
        locs["z"] = np.where(good, theta[:, 4] * M, locs["z"])
        locs["lpz"] = np.where(good, M * np.sqrt(np.where(good, crlb[:, 4], 1.0)), locs["lpz"])
        if "z_gof" in locs.dtype.names:
            locs["z_gof"] = np.where(good, gof, locs["z_gof"])
        photons = np.where(good, theta[:, 2], photons)
        bg = np.where(good, theta[:, 3], bg)
    return locs, good | ~sel


def new_rows_astig(residual_adu, new, like, p, z, first_frame: int = 0, camera=None, device: str = "cpu"):
    """3D rows (dtype of ``like``) for the residual peaks ``new``: a 2D fit in the residual's box, then Huang's
    z from its widths; the start of their z MLE with everyone's light (:func:`refit_astig`). ``camera``:
    per-pixel sCMOS maps (the box converted pixel by pixel, the 2D fit with its readout variance)."""
    from .device import fit_device
    from .pipeline import fit_spots_by_method
    from .spots import cut_spots
    from .zcalib import fit_range
    from .zmodel import fit_z_huang
    from .zpolicy import counts_to_photons

    cal = z.calibration
    spots = cut_spots(residual_adu, np.asarray(new["frame"], np.int64) - first_frame, new["y"], new["x"],
                      p.box_size)
    photons, variance = counts_to_photons(spots, new["y"], new["x"], p, camera)
    fit = fit_spots_by_method(photons, p.replace(fit_method="mle" if p.fit_method == "mle" else "lq"),
                              fit_device(device, p.box_size), variance)
    rows = np.zeros(len(new), like.dtype)
    rows["frame"] = new["frame"]
    rows["x"] = new["x"] + fit["dx"]
    rows["y"] = new["y"] + fit["dy"]
    rows["net_gradient"] = new["net_gradient"]
    for name in ("photons", "sx", "sy", "bg", "lpx", "lpy"):
        if name in rows.dtype.names:
            rows[name] = fit[name]
    flo, fhi = fit_range(cal, z.options.extrapolation)
    zc, D = fit_z_huang(fit["sx"], fit["sy"], cal.x_coefficients, cal.y_coefficients, flo, fhi)
    rows["z"] = zc * cal.magnification_factor
    rows["d_zcalib"] = np.sqrt(D)
    ok = np.asarray(fit["converged"], bool) & np.isfinite(rows["z"]) & (rows["photons"] > 0)
    return rows[ok]


def refit_spline(frames, locs, p, psf, first_frame: int = 0, rounds: int = 2, always=None, camera=None,
                 device: str = "cpu"):
    """:func:`refit_astig` for the spline PSF: every spot with others' light in its box (or ``always``) fitted
    again from its fit with the light of the others' 3D fits, ``rounds`` times; returns ``(locs, good)``.
    ``camera``: per-pixel sCMOS maps (:class:`~napari_localize.core.camera.CameraMaps`): the boxes are converted
    pixel by pixel and fitted with the sCMOS likelihood (MLE) or least squares weighted by each pixel's
    variance (LQ), as the run's own fit. ``device``: the run's engine."""
    from .device import fit_device
    from .engine import (
        IB,
        IN,
        IX,
        IY,
        IZ,
        MODEL_SPLINE_Z,
        NOISE_LSQ,
        NOISE_POISSON,
        NOISE_SCMOS,
        NOISE_WLSQ,
        default_bounds,
        fit_boxes,
    )
    from .locs import ellipticity
    from .spline_fit import aux_of, neighbour_light_spline, spline_widths
    from .spots import cut_spots
    from .zpolicy import counts_to_photons

    locs = locs.copy()
    good = np.ones(len(locs), bool)
    sel = np.zeros(len(locs), bool)
    if len(locs) < 2 or rounds <= 0 or not psf.is_3d:
        return locs, good
    frames = np.asarray(frames)
    box = int(p.box_size)
    r = box // 2
    h, w = frames.shape[-2:]
    lo, hi = psf.z_range
    edge = 1e-6 * (hi - lo)
    noise = NOISE_POISSON if p.fit_method != "lq" else NOISE_LSQ
    if camera is not None:
        noise = NOISE_SCMOS if p.fit_method != "lq" else NOISE_WLSQ
    bounds = default_bounds(MODEL_SPLINE_Z, box, (lo, hi))
    local = np.asarray(locs["frame"], np.int64) - first_frame
    for _ in range(rounds):
        x = np.asarray(locs["x"], float)
        y = np.asarray(locs["y"], float)
        cx = np.clip(np.rint(x), r, w - 1 - r).astype(np.int64)
        cy = np.clip(np.rint(y), r, h - 1 - r).astype(np.int64)
        light = neighbour_light_spline(locs["frame"], x, y, np.asarray(locs["photons"], float),
                                       np.asarray(locs["z"], float), cx.astype(float), cy.astype(float), box, psf)
        sel = light.reshape(len(light), -1).max(axis=1) > 1e-3 * np.maximum(locs["photons"], 1.0) / box**2
        if always is not None:
            sel |= always
        good = np.zeros(len(locs), bool)
        if not sel.any():
            break
        spots, variance = counts_to_photons(cut_spots(frames, local[sel], cy[sel], cx[sel], box), cy[sel],
                                            cx[sel], p, camera)
        theta0 = np.column_stack([x[sel] - cx[sel] + r, y[sel] - cy[sel] + r, locs["photons"][sel],
                                  locs["bg"][sel], locs["z"][sel]]).astype(float)
        res = fit_boxes(spots, MODEL_SPLINE_Z, noise, theta0=theta0, aux=aux_of(psf), bounds=bounds,
                        other=light[sel], variance=variance, eps=p.convergence, max_iterations=p.max_iterations,
                        gof=noise in (NOISE_POISSON, NOISE_SCMOS), device=fit_device(device, box))
        th = res.theta
        ok = res.converged & np.isfinite(th).all(axis=1) & np.isfinite(res.crlb).all(axis=1)
        ok &= (th[:, IZ] > lo + edge) & (th[:, IZ] < hi - edge)
        idx = np.nonzero(sel)[0][ok]
        good[idx] = True
        th, sd = th[ok], np.sqrt(res.crlb[ok])
        locs["x"][idx] = cx[idx] + th[:, IX] - r
        locs["y"][idx] = cy[idx] + th[:, IY] - r
        locs["photons"][idx] = th[:, IN]
        locs["bg"][idx] = th[:, IB]
        locs["z"][idx] = th[:, IZ]
        locs["lpx"][idx] = sd[:, IX]
        locs["lpy"][idx] = sd[:, IY]
        locs["lpz"][idx] = sd[:, IZ]
        sx, sy = spline_widths(psf, th[:, IZ])
        locs["sx"][idx] = sx
        locs["sy"][idx] = sy
        locs["ellipticity"][idx] = ellipticity(sx, sy)
        if "z_gof" in locs.dtype.names and res.gof is not None:
            locs["z_gof"][idx] = np.where(np.isfinite(res.gof[ok]), res.gof[ok], 0.0)
    return locs, good | ~sel


def new_rows_spline(residual_adu, new, like, p, psf, first_frame: int = 0, camera=None, device: str = "cpu"):
    """Spline-fitted rows (dtype of ``like``) for the residual peaks ``new``, fitted in the residual (camera
    counts with the offset; ``camera``: per-pixel sCMOS maps, used as in :func:`refit_spline`)."""
    from .device import fit_device
    from .spline_fit import fit_spline_boxes, spline_locs
    from .spots import cut_spots
    from .zpolicy import counts_to_photons

    box = int(p.box_size)
    counts = cut_spots(residual_adu, np.asarray(new["frame"], np.int64) - first_frame, new["y"], new["x"], box)
    spots, variance = counts_to_photons(counts, new["y"], new["x"], p, camera)
    res = fit_spline_boxes(spots, psf, "lq" if p.fit_method == "lq" else "mle", eps=p.convergence,
                           max_iterations=p.max_iterations, gof=p.fit_method != "lq", variance=variance,
                           device=fit_device(device, box))
    rows = spline_locs(new, res, psf, p, box)
    lo, hi = psf.z_range
    ok = res.converged & np.isfinite(res.theta).all(axis=1) & (rows["photons"] > 0)
    ok &= (rows["z"] > lo) & (rows["z"] < hi)
    out = np.zeros(int(ok.sum()), like.dtype)
    for name in like.dtype.names:
        if name in rows.dtype.names:
            out[name] = rows[name][ok]
    return out


def localize_frames_z_crowded(frames, p, z, first_frame: int = 0, stats=None, camera=None, identify_frames=None,
                              options: CrowdedZOptions | None = None):
    """3D localizations of ``frames`` (ADU) with the residual search for spots identification missed.

    ``p``: the run's parameters (its ``max_emitters`` is ignored: 3D fits one emitter per box); ``z``: the
    run's :class:`~.run.ZRun` (astigmatic or spline). Returns the 3D table of the run (whole-run filters not
    applied).
    """
    from .pipeline import LocalizeStats, identify_chunk

    o = options or CrowdedZOptions()
    stats = stats if stats is not None else LocalizeStats()
    if not stats.device:
        from .device import select_device

        stats.device = select_device(p.box_size, p.fit_method)
    device = stats.device  # every fit of the search runs on the run's engine (the GPU where the box allows)
    p1 = p.replace(max_emitters=1) if p.max_emitters != 1 else p
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]

    # the run's fit of the chunk: one emitter per box, with the neighbours' light
    if z.spline:
        from .spline_fit import localize_frames_spline

        locs = localize_frames_spline(frames, p1, z.calibration, first_frame, stats, neighbours=z.options.neighbours,
                                      max_gof=z.options.max_gof, camera=camera, identify_frames=identify_frames)
    else:
        from .pipeline import localize_frames
        from .run import fit_z_chunk

        locs2d = localize_frames(frames, p1, first_frame, stats, camera, identify_frames)
        locs = fit_z_chunk(frames, locs2d, p1, z, first_frame, camera, device)
        if o.refit_rounds and z.options.neighbours:
            locs, _ = refit_astig(frames, locs, p1, z, first_frame, o.refit_rounds, camera=camera, device=device)
    if o.rounds <= 0:
        return locs
    if camera is not None:
        # what the run's identification saw: the per-pixel converted, hot-pixel-shrunk image in counts of a
        # median-sensitivity pixel (identify_scmos); the model goes into the same units, and into each pixel's
        # own counts for the residual that new spots are fitted in
        from .identify_scmos import identification_image

        seen = identification_image(frames, camera.offset, camera.sensitivity, camera.variance, camera.em_gain)
        per_count = float(camera.em_gain) / float(np.median(camera.sensitivity))  # counts of a median pixel
        per_adu = (float(camera.em_gain) / np.asarray(camera.sensitivity, np.float32)).astype(np.float32)
    else:
        seen = np.asarray(identify_frames if identify_frames is not None else frames, np.float32)
    look = np.arange(len(frames))  # the frames searched this round: all, then those that gained a spot
    measured = None
    for _ in range(o.rounds):
        here = locs[np.isin(np.asarray(locs["frame"]) - first_frame, look)]
        if z.spline:
            model = model_photons_spline(frames.shape, here, z.calibration, first_frame)
        else:
            model = model_photons_astig(frames.shape, here, z.calibration, first_frame)
        # the model in camera counts (no offset): photons = (ADU - baseline) * sensitivity / gain; what
        # identification sees is prefiltered linearly (the temporal median's background is subtracted, the
        # Gaussian filter smooths): the model is smoothed the same way
        if camera is not None:
            model_adu = (model * per_count).astype(np.float32)
            raw_residual = np.asarray(frames, np.float32) - (model * per_adu).astype(np.float32)
        else:
            model_adu = (model * (p1.em_gain / p1.sensitivity)).astype(np.float32)
            # new spots start from a fit in the residual of the raw frames
            raw_residual = None if identify_frames is None else np.asarray(frames, np.float32) - model_adu
        if identify_frames is not None and p1.prefilter().gaussian_sigma > 0:
            from .prefilter import gaussian_filter_frames

            model_adu = gaussian_filter_frames(model_adu, p1.prefilter().gaussian_sigma)
        residual = seen - model_adu
        if measured is None:  # the shape error, from the first round's fits of the whole chunk
            measured = measure_shape_error(residual, locs, first_frame, p1.box_size, o)
        residual -= shape_error_image(residual, here, first_frame, p1.box_size, o, measured)
        new = identify_chunk(residual[look], p1, 0)
        new["frame"] = first_frame + look[new["frame"]]
        new = new[_far_from(new, locs, first_frame, o.min_separation)]
        if not len(new):
            break
        new = new.copy()
        new["net_gradient"] = -np.abs(new["net_gradient"])  # tags the added spots through the fits
        start = residual if raw_residual is None else raw_residual
        if z.spline:
            rows = new_rows_spline(start, new, locs, p1, z.calibration, first_frame, camera, device)
        else:
            rows = new_rows_astig(start, new, locs, p1, z, first_frame, camera, device)
        both = np.concatenate([locs, rows])
        is_new = np.asarray(both["net_gradient"]) < 0
        # only the frames with a new spot change
        touched = np.isin(both["frame"], np.unique(rows["frame"]))
        if z.spline:
            sub, good_sub = refit_spline(frames, both[touched], p1, z.calibration, first_frame,
                                         o.refit_rounds + 1, always=is_new[touched], camera=camera, device=device)
        else:
            sub, good_sub = refit_astig(frames, both[touched], p1, z, first_frame, o.refit_rounds + 1,
                                        always=is_new[touched], camera=camera, device=device)
        both[touched] = sub
        good = np.ones(len(both), bool)
        good[touched] = good_sub
        good |= ~is_new  # an old row whose refit fails keeps its fit
        good &= _drop_weak_and_duplicates(both, is_new, o)
        # an old row with no accepted new emitter near it goes back to its fit before this round
        accepted = both[is_new & good]
        n_old = len(locs)
        d = _nearest(both[:n_old], accepted)[0] if len(accepted) else np.full(n_old, np.inf)
        back = d > z.options.z_box(p1.box_size)
        both[:n_old][back] = locs[back]
        n_added = int((is_new & good).sum())
        stats.identified += n_added
        stats.localized += n_added
        locs = both[good]
        locs = locs[np.lexsort((locs["x"], locs["frame"]))]
        if not n_added:
            break
        look = np.unique(np.asarray(accepted["frame"]) - first_frame)
    locs["net_gradient"] = np.abs(locs["net_gradient"])
    return locs
