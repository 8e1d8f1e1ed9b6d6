"""Cubic-spline PSF calibration from a bead z-stack.

The steps follow Li et al., Nat. Methods 15, 367 (2018) and Babcock & Zhuang, Sci. Rep. 7, 552 (2017):

1. **Beads.** Spots are identified in every frame (the localization threshold); a bead is a pixel neighbourhood
   where spots are found in at least ``min_fraction`` of the z-steps of its field of view. Beads too close to
   another bead (their calibration boxes would overlap) or to the frame edge are left out.
2. **Volumes.** Each bead's box (the spline grid plus a registration margin) is cut from every z-step, converted
   to photons, its background (mean of the box border over the least-lit half of the steps) subtracted and its
   brightness (median of the in-box sum over the steps) divided out.
3. **Registration.** Every bead volume is fitted, by Gauss-Newton least squares, as ``a T(x - dx, y - dy,
   z - dz) + c`` with ``T`` the spline of the current average: a sub-pixel, sub-step 3D shift per bead. The
   beads are resampled onto the common grid (cubic interpolation) and averaged again; three rounds. The mean
   shift of the beads is kept at zero, so the template's heights are those of the average bead.
4. **Outliers.** Beads whose normalised residual exceeds the median by more than 3 robust standard
   deviations, whose shift runs off the margin or whose fit fails are dropped and the average rebuilt.
5. **Centre, template, smoothing.** The emitter is the intensity centroid of the registered average around its
   most compact slice within :data:`CENTROID_RADIUS_NM`, in a window centred on the centroid itself. The
   template is then fitted to the bead pixels by linear least squares on a grid of ``oversampling`` lateral
   nodes per pixel (bead ``b``'s pixel ``m`` samples the pixel-integrated PSF at the offset
   ``m - dx_b - centre``: the beads' diverse sub-pixel positions fill in the half-pixel nodes), slice by slice,
   through the same interpolating spline the fit evaluates. Every voxel's profile along z is smoothed
   (penalised second differences, strength by generalised cross-validation), the template **normalised** (unit
   peak at the most compact slice; the photon scale is that slice's sum over the grid's pixels) and the
   **coefficients** computed (:func:`~.spline.spline_coefficients`).
6. **Self-check.** Every single bead slice is fitted back with the finished spline (least squares, x, y, z,
   amplitude, background free): the calibration's own z precision and bias per height.

Heights: z-step ``s`` of ``S`` sits at the stage height ``-(s - (S - 1) / 2) * step`` (Picasso's convention,
frame 0 at the top), times the magnification factor; z = 0 is the centre of the scan (the average bead's
height there), not the focus. A 2D calibration keeps only the most compact slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spline import SplinePSF, evaluate, spline_coefficients

#: beads needed for half-pixel lateral nodes by default: each bead samples the PSF at one sub-pixel phase,
#: with fewer the half-pixel nodes are poorly constrained (measured: 6 beads on a 40 nm scan gave a larger z
#: error with 2 nodes per pixel than with 1; 11 beads on 20 nm a smaller one)
MIN_BEADS_OVERSAMPLED = 8

#: registration margin (pixels) around the spline grid
PAD = 2

#: the emitter's lateral position is the intensity centroid of the in-focus average bead within this radius
#: (nm; a window of ``2 ceil(R / pixel) + 1`` pixels centred on the emitter): a coma tail carries a lever, so
#: the window is a convention -- a physical one, the same as :mod:`.pupil`'s, independent of the fit box
CENTROID_RADIUS_NM = 1200.0


def bead_pad(grid: int, pixelsize: float) -> int:
    """Pixels cut around the spline grid of a bead: the registration margin, and room for the centroid window."""
    import math

    return max(PAD, int(math.ceil(CENTROID_RADIUS_NM / pixelsize)) + 1 - grid // 2)


@dataclass
class SplineCalibrationOptions:
    """How to calibrate. ``box_size`` is the fit box (odd); the spline grid is ``box_size + 2`` pixels wide."""

    box_size: int = 13
    frames_per_step: int = 1
    #: "fov": the fields of view of one step follow each other; "z": each field of view is a whole stack
    frame_order: str = "fov"
    #: (first, last) 0-based inclusive frames to use, or None
    frame_bounds: tuple | None = None
    #: "3d" (z from the PSF shape) or "2d" (the most compact slice only, for in-focus data)
    dimensions: str = "3d"
    magnification_factor: float = 0.79
    smooth: bool = True
    #: a bead must be identified in at least this fraction of its steps
    min_fraction: float = 0.3
    registration_rounds: int = 3
    #: rounds of model-based refinement after the registration (each bead's residual to the shifted model,
    #: shifted back and averaged, is added to the template): removes the blur of interpolating pixelated beads
    refine_rounds: int = 3
    #: lateral spline nodes per camera pixel: 2 samples the pixel-integrated PSF at half-pixel shifts of the
    #: emitter (the beads' sub-pixel positions fill them in), 1 is one node per pixel (Picasso's grid);
    #: None: 2 when at least :data:`MIN_BEADS_OVERSAMPLED` beads are registered, else 1
    oversampling: int | None = None

    def validate(self):
        if self.box_size % 2 != 1 or self.box_size < 5:
            raise ValueError(f"the spline calibration box must be odd and >= 5 pixels, got {self.box_size}")
        if self.frames_per_step < 1:
            raise ValueError(f"frames per step must be >= 1, got {self.frames_per_step}")
        if self.frame_order not in ("fov", "z"):
            raise ValueError(f"frame order must be 'fov' or 'z', got {self.frame_order!r}")
        if self.dimensions not in ("3d", "2d"):
            raise ValueError(f"dimensions must be '3d' or '2d', got {self.dimensions!r}")
        if not self.magnification_factor > 0:
            raise ValueError(f"magnification factor must be positive, got {self.magnification_factor}")
        if self.oversampling is not None and (int(self.oversampling) != self.oversampling
                                              or not 1 <= self.oversampling <= 4):
            raise ValueError(f"spline oversampling must be 1, 2, 3 or 4 nodes per pixel, got {self.oversampling}")


def step_and_fov(n_frames: int, frames_per_step: int, frame_order: str, frame_bounds=None):
    """``(step_of_frame, fov_of_frame, n_steps)``; -1 marks frames not used."""
    fps = max(1, int(frames_per_step))
    n_steps = n_frames // fps
    if n_steps < 1:
        raise ValueError(f"{fps} frames per step but the stack has only {n_frames} frames")
    f = np.arange(n_frames)
    if frame_order == "z":
        step, fov = f % n_steps, f // n_steps
    else:
        step, fov = f // fps, f % fps
    unused = f >= n_steps * fps
    if frame_bounds is not None:
        lo, hi = (int(v) for v in frame_bounds)
        unused |= (f < lo) | (f > hi)
    step = np.where(unused, -1, step)
    fov = np.where(unused, -1, fov)
    return step, fov, n_steps


def step_heights(n_steps: int, step_nm: float) -> np.ndarray:
    """Stage height (nm) of each z-step: ``-(s - (S - 1) / 2) * step``."""
    return -(np.arange(n_steps) - (n_steps - 1) / 2.0) * step_nm


# ----------------------------------------------------------------------------------------------- beads
def find_beads(frames, fov_frames, box_size, min_net_gradient, grid, roi=None, min_fraction=0.3, pad=PAD):
    """Bead centres ``(x, y)`` (float pixels) of one field of view, and the rejected ones with reasons."""
    from .identify import identify

    stack = np.asarray(frames)
    h, w = stack.shape[-2:]
    ids = identify(stack, box_size, min_net_gradient, roi=roi)
    counts = np.zeros((h, w))
    np.add.at(counts, (ids["y"], ids["x"]), 1.0)
    # a bead's spots wander by a pixel or two through focus: count them in 5x5 neighbourhoods
    from scipy.ndimage import maximum_filter, uniform_filter

    near = uniform_filter(counts, 5, mode="constant") * 25.0
    peaks = (near == maximum_filter(near, 2 * (box_size // 2) + 1, mode="constant")) & \
        (near >= min_fraction * fov_frames)
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-near[ys, xs], kind="stable")
    beads, rejected = [], []
    for y, x in zip(ys[order], xs[order]):
        if any(max(abs(x - bx), abs(y - by)) < 3 for bx, by, _ in beads):
            continue  # the same bead
        sel = (np.abs(ids["x"] - x) <= 2) & (np.abs(ids["y"] - y) <= 2)
        beads.append((float(np.mean(ids["x"][sel])), float(np.mean(ids["y"][sel])), int(sel.sum())))
    half = grid // 2 + pad
    kept = []
    for i, (x, y, _) in enumerate(beads):
        if x < half or y < half or x > w - 1 - half or y > h - 1 - half:
            rejected.append(((x, y), "too close to the frame edge"))
            continue
        close = [j for j, (x2, y2, _) in enumerate(beads) if j != i and max(abs(x - x2), abs(y - y2)) < grid]
        if close:
            rejected.append(((x, y), "another bead within the calibration box"))
            continue
        kept.append((x, y))
    return kept, rejected


# ----------------------------------------------------------------------------------------------- fitting
def fit_shift(data, valid, coef, cz_offsets, start, max_iterations=30, fix_z=False, dz_bounds=None,
              nodes_per_px=1, origin=0.0):
    """Least-squares ``a T(m - dx, k - dy, zs - dz) + c`` of ``data[s, k, m]`` (damped Gauss-Newton).

    ``coef`` is the spline of ``T`` on the same lateral grid as ``data`` (3D, or 2D: no z); slice ``s`` sits
    at spline z coordinate ``cz_offsets[s] - dz``, and only voxels whose coordinate lies on the spline's z
    range count. An oversampled ``coef`` (``nodes_per_px`` lateral nodes per pixel) is evaluated at
    ``(m - dx) nodes_per_px + origin``. ``start`` = (a, dx, dy, dz, c); ``dz`` stays within ``dz_bounds``. Returns
    ``(params, rms, ok)``; ``rms`` is the residual RMS over the voxels used.
    """
    ns, h, w = data.shape
    k, m = np.mgrid[0:h, 0:w]
    theta = np.array(start, float)
    is_3d = coef.ndim == 6
    n_z = coef.shape[0] if is_3d else 0
    offs = np.asarray(cz_offsets, float)
    if dz_bounds is None:
        dz_bounds = (offs.max() - n_z - 0.5, offs.min() + 0.5)
    base = valid & np.isfinite(data)
    kk = np.broadcast_to(k, data.shape)
    mm = np.broadcast_to(m, data.shape)

    def cost(t):
        if is_3d:
            sz_s = offs - t[3]
            on = (sz_s >= -0.5) & (sz_s <= n_z + 0.5)
            use = base & on[:, None, None]
        else:
            use = base
        if not use.any():
            return np.inf, None, None, use
        sx = (mm - t[1])[use] * nodes_per_px + origin
        sy = (kk - t[2])[use] * nodes_per_px + origin
        if is_3d:
            sz = np.broadcast_to((offs - t[3])[:, None, None], data.shape)[use]
            out = evaluate(coef, sx, sy, sz)
        else:
            out = evaluate(coef, sx, sy)
        r = data[use] - (t[0] * out[:, 0] + t[4])
        return float(r @ r) / len(r), out, r, use

    c0, out, r, _ = cost(theta)
    if not np.isfinite(c0):
        return theta, float("nan"), False
    ok = True
    free = [0, 1, 2, 4] if (fix_z or not is_3d) else [0, 1, 2, 3, 4]
    for _ in range(max_iterations):
        jac = np.stack([out[:, 0], -nodes_per_px * theta[0] * out[:, 1], -nodes_per_px * theta[0] * out[:, 2],
                        theta[0] * -out[:, 3],
                        np.ones(len(r))], axis=1)[:, free]
        a = jac.T @ jac
        g = jac.T @ r
        improved = False
        for _try in range(10):
            try:
                step = np.linalg.solve(a + lam_of(a, _try), g)
            except np.linalg.LinAlgError:
                ok = False
                break
            t2 = theta.copy()
            t2[free] += step
            t2[3] = np.clip(t2[3], dz_bounds[0], dz_bounds[1])
            c2, out2, r2, _ = cost(t2)
            if c2 <= c0:
                improved = True
                delta = np.abs(t2 - theta)
                theta, c0, out, r = t2, c2, out2, r2
                break
        if not improved or not ok:
            break
        if np.all(delta[1:4] < 1e-4):
            break
    return theta, float(np.sqrt(c0)), bool(ok and np.all(np.isfinite(theta)) and theta[0] > 0)


def lam_of(a, attempt):
    """Levenberg damping of the ``attempt``-th try: 1e-4 x 10^attempt times the diagonal."""
    return (1e-4 * 10.0**attempt) * np.diag(np.diag(a) + 1e-12)


def _shift_volume(vol, valid, dz, dy, dx):
    """``vol`` resampled at ``(s + dz, k + dy, m + dx)`` (cubic), and where that is inside the data."""
    from scipy.ndimage import shift

    filled = np.where(valid, vol, 0.0)
    out = shift(filled, (-dz, -dy, -dx), order=3, mode="nearest", prefilter=True)
    # lateral box edges are padded (the margin is cropped later); along z a shift runs off the scan; pixels
    # past the frame (a bead near the edge) are not data
    ok = shift(valid.astype(float), (-dz, 0.0, 0.0), order=1, mode="constant", cval=0.0) > 0.999
    inside = np.any(valid, axis=0).astype(float)
    ok &= shift(inside, (-dy, -dx), order=1, mode="nearest") > 0.999
    return out, ok


def _robust_sd(x):
    x = np.asarray(x, float)
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) + 1e-12


# ----------------------------------------------------------------------------------------------- calibrate
def calibrate_spline(frames, params, step_nm: float, options: SplineCalibrationOptions | None = None,
                     path: str | None = None, progress=None) -> SplinePSF:
    """Calibrate a spline PSF from a bead z-stack (``frames`` in ADU, anything sliceable along frames).

    ``params`` (a :class:`~.parameters.LocalizeParameters`) gives the identification threshold, the photon
    conversion and the pixel size. Returns a :class:`~.spline.SplinePSF` whose ``diagnostics`` describe the
    run (for :func:`napari_localize.io.spline_calibration.plot_spline_calibration`). Raises ``ValueError``
    with the reason when no calibration can be made.
    """
    from .camera import adu_to_photons

    o = options or SplineCalibrationOptions()
    o.validate()
    if not step_nm > 0:
        raise ValueError(f"the z step must be positive (nm), got {step_nm}")
    stack = np.asarray(frames[:] if not isinstance(frames, np.ndarray) else frames)
    if stack.ndim != 3:
        raise ValueError(f"a bead z-stack has shape (frames, height, width), got {stack.shape}")
    n_frames, height, width = stack.shape
    step_of, fov_of, n_steps = step_and_fov(n_frames, o.frames_per_step, o.frame_order, o.frame_bounds)
    steps_used = np.unique(step_of[step_of >= 0])
    if len(steps_used) < (5 if o.dimensions == "3d" else 1):
        raise ValueError(f"a 3D spline calibration needs at least 5 z-steps, got {len(steps_used)}")
    heights = step_heights(n_steps, step_nm)
    grid = o.box_size + 2
    pad = bead_pad(grid, float(params.pixelsize))
    big = grid + 2 * pad
    r = big // 2
    c_big = (big - 1) / 2.0
    notices = []

    # 1-2: beads and their normalised volumes
    volumes, masks, bead_xy, rejected = [], [], [], []
    for fov in np.unique(fov_of[fov_of >= 0]):
        fidx = np.nonzero(fov_of == fov)[0]
        beads, rej = find_beads(stack[fidx], len(np.unique(step_of[fidx])), o.box_size,
                                params.min_net_gradient, grid, params.roi, o.min_fraction)
        rejected += [(int(fov), xy, why) for xy, why in rej]
        for x, y in beads:
            ix, iy = int(round(x)), int(round(y))
            vol = np.full((n_steps, big, big), np.nan)
            for s in steps_used:
                sel = fidx[step_of[fidx] == s]
                if len(sel):
                    # the cut may reach past the frame (the centroid window's margin): those pixels stay NaN
                    y0, y1 = max(iy - r, 0), min(iy + r + 1, height)
                    x0, x1 = max(ix - r, 0), min(ix + r + 1, width)
                    cut = stack[sel, y0:y1, x0:x1].astype(float)
                    vol[s, y0 - iy + r: y1 - iy + r, x0 - ix + r: x1 - ix + r] = adu_to_photons(
                        cut, params.baseline, params.sensitivity, params.em_gain).mean(0)
            valid = np.isfinite(vol)
            border = np.concatenate([vol[:, 0], vol[:, -1], vol[:, 1:-1, 0], vol[:, 1:-1, -1]], axis=1)
            bmean = np.nanmean(border, axis=1)
            ok_steps = np.isfinite(bmean)
            low = np.sort(bmean[ok_steps])[: max(1, ok_steps.sum() // 2)]
            vol = vol - float(np.mean(low))
            bright = float(np.nanmedian(np.nansum(vol, axis=(1, 2))[ok_steps]))
            if not bright > 0:
                rejected.append((int(fov), (x, y), "no light above the background"))
                continue
            volumes.append(vol / bright)
            masks.append(valid)
            bead_xy.append((int(fov), x, y))
    if progress:
        progress(1, 4)
    if not volumes:
        raise ValueError("no bead found in the calibration stack (lower the minimum net gradient, or the beads "
                         "are too close together or to the edge for the calibration box)")
    vols = np.stack(volumes)
    valids = np.stack(masks)
    nb = len(vols)
    # a z-stack is registered in 3D (also for a 2D calibration); a few in-focus frames only laterally
    reg3d = len(steps_used) >= 5
    if not reg3d:
        vols = np.nanmean(np.where(valids, vols, np.nan), axis=1)[:, None]
        valids = np.all(np.isfinite(vols), axis=1, keepdims=True) & np.isfinite(vols)
        n_steps_reg = 1
    else:
        n_steps_reg = n_steps

    # 3-4: registration and outlier rejection
    template = np.nanmedian(np.where(valids, vols, np.nan), axis=0)
    shifts = np.zeros((nb, 3))
    scale = np.ones((nb, 2))  # amplitude and offset of each bead relative to the template
    scale[:, 1] = 0.0
    good = np.ones(nb, bool)
    rms = np.full(nb, np.nan)
    why = [""] * nb
    for _round in range(max(1, o.registration_rounds)):
        tmask = np.isfinite(template)
        tfill = _fill_z(template, tmask)
        coef = spline_coefficients(tfill if reg3d else tfill[0])
        for b in range(nb):
            inner = np.zeros_like(valids[b])
            inner[:, pad:-pad, pad:-pad] = True
            theta, rms[b], ok = fit_shift(vols[b], valids[b] & inner, coef, np.arange(n_steps_reg, dtype=float),
                                          (1.0, shifts[b, 2], shifts[b, 1], shifts[b, 0], 0.0),
                                          fix_z=not reg3d, dz_bounds=(-n_steps_reg / 4.0, n_steps_reg / 4.0))
            shifts[b] = theta[3], theta[2], theta[1]
            scale[b] = theta[0], theta[4]
            if not ok:
                good[b] = False
                why[b] = "registration failed"
            elif np.any(np.abs(shifts[b, 1:]) > PAD - 0.25):
                good[b] = False
                why[b] = f"lateral shift {shifts[b, 2]:+.2f}, {shifts[b, 1]:+.2f} px beyond the margin"
        if good.sum() >= 3:
            lim = np.median(rms[good]) + 3.0 * _robust_sd(rms[good])
            for b in np.nonzero(good & (rms > lim))[0]:
                good[b] = False
                why[b] = f"residual {rms[b]:.2g} > {lim:.2g} (3 robust SD above the median)"
        if not good.any():
            raise ValueError("every bead was rejected in the registration: " + "; ".join(sorted(set(why))))
        shifts[good] -= shifts[good].mean(axis=0)
        acc = np.zeros_like(template)
        cnt = np.zeros_like(template)
        for b in np.nonzero(good)[0]:
            sv, sm = _shift_volume((vols[b] - scale[b, 1]) / scale[b, 0], valids[b], *shifts[b])
            acc += np.where(sm, sv, 0.0)
            cnt += sm
        need = max(1, int(np.ceil(0.5 * good.sum())))
        template = np.where(cnt >= need, acc / np.maximum(cnt, 1), np.nan)
    for _ in range(o.refine_rounds if reg3d else 0):
        template = _refine(template, vols, valids, shifts, scale, good)
    if progress:
        progress(2, 4)

    # which steps are fully covered
    covered = np.all(np.isfinite(template[:, pad:-pad, pad:-pad]), axis=(1, 2))
    if reg3d:
        idx = np.nonzero(covered)[0]
        if len(idx) < 5:
            raise ValueError("fewer than 5 z-steps are covered by the registered beads")
        s0, s1 = int(idx[0]), int(idx[-1]) + 1
    else:
        s0, s1 = 0, 1

    # 5: centring, the (oversampled) template, smoothing, normalisation
    if o.oversampling is None:
        os_ = 2 if good.sum() >= MIN_BEADS_OVERSAMPLED else 1
        if os_ == 1:
            notices.append(f"{int(good.sum())} beads registered (fewer than {MIN_BEADS_OVERSAMPLED}): one spline "
                           "node per pixel; more beads allow half-pixel nodes (less z bias near focus)")
    else:
        os_ = int(o.oversampling)
    vol1 = template[s0:s1]
    if reg3d and o.smooth:
        vol1 = _smooth_z(vol1)
    ref = int(np.nanargmax(np.nanmax(vol1, axis=(1, 2))))
    # the emitter is where the intensity centroid of the in-focus image is (the whole-box centroid of the
    # background-free average bead around its most compact slice): a linear, shift-equivariant measure
    half_window = int(np.ceil(CENTROID_RADIUS_NM / float(params.pixelsize)))
    centre = _centred_centroid(vol1[max(0, ref - 1): ref + 2], half_window)
    vol = _oversampled_template(vols, valids, shifts, scale, good, s0, s1, centre, grid, os_,
                                vol1 if reg3d else vol1[:1])
    if reg3d and o.smooth:
        vol = _smooth_z(vol)
    if o.dimensions == "2d":
        # the most compact slice of the scan (in-focus data)
        vol = vol[ref]
    on_pixels = vol[..., ::os_, ::os_]  # nodes at whole-pixel offsets: a camera patch, emitter on a pixel centre
    peak = float(np.max(on_pixels[ref] if vol.ndim == 3 else on_pixels))
    unit = vol / peak
    photon_scale = float(np.clip(unit[ref][::os_, ::os_] if unit.ndim == 3 else unit[::os_, ::os_], 0,
                                 None).sum())
    volume = unit / photon_scale  # N * volume summed over the grid's pixels at the reference slice = N
    coef = spline_coefficients(volume)
    mag = float(o.magnification_factor)
    h = heights[s0:s1]
    centre_idx = (n_steps - 1) / 2.0 - s0  # node index of stage height 0
    n_fine = os_ * (grid - 1) + 1
    psf = SplinePSF(coef, cx=(n_fine - 1) / 2.0, cy=(n_fine - 1) / 2.0, oversampling=os_,
                    z_first=float(h[0] * mag) if volume.ndim == 3 else 0.0,
                    z_step=float(-step_nm * mag), pixelsize=float(params.pixelsize),
                    magnification_factor=mag, box=o.box_size,
                    z_init=float(h[ref] * mag) if volume.ndim == 3 else 0.0, volume=volume, path=path)
    psf.meta.update({
        "Step size in nm": float(step_nm), "Frames per step": int(o.frames_per_step),
        "Frame order": o.frame_order, "Frame bounds": list(o.frame_bounds) if o.frame_bounds else None,
        "z_center": float(centre_idx), "photon_scale": photon_scale, "unit_peak": unit,
        "n_beads": int(nb), "n_beads_used": int(good.sum()), "reference_slice": int(ref),
    })
    if psf.is_3d:
        sx, sy = psf.gaussian_widths([psf.z_init])
        psf.meta["effective_sigma"] = float(np.sqrt(sx[0] * sy[0]))
    else:
        sx, sy = psf.gaussian_widths([0.0])
        psf.meta["effective_sigma"] = float(np.sqrt(sx[0] * sy[0]))
    if progress:
        progress(3, 4)

    # 6: the calibration's own precision: every bead slice fitted back
    psf.diagnostics = _self_check(psf, vols, valids, shifts, good, s0, s1, centre, pad) if psf.is_3d else \
        {"z_precision_nm": float("nan")}
    psf.diagnostics.update({
        "beads": bead_xy, "good": good, "shifts": shifts, "rms": rms, "why": why, "rejected": rejected,
        "heights": h * mag, "template_raw": template[s0:s1], "centre_px": (centre[0] - c_big, centre[1] - c_big),
        "method": f"spline {o.dimensions}: {int(good.sum())} of {nb} beads registered and averaged "
                  f"({len(rejected)} more left out at detection)",
        "notices": notices,
    })
    if progress:
        progress(4, 4)
    return psf


def _refine(template, vols, valids, shifts, scale, good):
    """One model-based correction of the template: beads minus the shifted spline model, shifted back, averaged.

    Averaging interpolated bead images blurs an undersampled PSF; the residuals to the exact (spline) model at
    each bead's sub-pixel position are small, so interpolating them costs only a second-order error.
    """
    finite = np.isfinite(template)
    coef = spline_coefficients(_fill_z(template, finite))
    ns, h, w = template.shape
    s_idx, k, m = np.mgrid[0:ns, 0:h, 0:w]
    acc = np.zeros_like(template)
    cnt = np.zeros_like(template)
    for b in np.nonzero(good)[0]:
        dz, dy, dx = shifts[b]
        sz = s_idx - dz
        on = valids[b] & (sz >= 0) & (sz <= ns - 1)
        out = evaluate(coef, (m - dx)[on], (k - dy)[on], sz[on])[:, 0]
        res = np.zeros_like(template)
        res[on] = (vols[b][on] - scale[b, 1]) / scale[b, 0] - out
        back, ok = _shift_volume(res, on, dz, dy, dx)
        acc += np.where(ok, back, 0.0)
        cnt += ok
    need = max(1, int(np.ceil(0.5 * good.sum())))
    return np.where(finite & (cnt >= need), template + acc / np.maximum(cnt, 1), template)


def _fill_z(template, mask):
    """Template with missing voxels filled from the nearest covered slice (for the registration spline)."""
    t = template.copy()
    covered = np.nonzero(np.all(mask, axis=(1, 2)))[0]
    if len(covered) == 0:
        return np.nan_to_num(t)
    for s in range(len(t)):
        if not np.all(mask[s]):
            nearest = covered[np.argmin(np.abs(covered - s))]
            t[s] = np.where(mask[s], t[s], t[nearest])
    return t


def smoothing_matrix(n: int, lam: float) -> np.ndarray:
    """Penalised smoother along one axis: ``S = (I + lam D^T D)^-1`` with ``D`` the second differences.

    The discrete counterpart of a cubic smoothing spline on a uniform grid (Whittaker; Eilers, Anal. Chem.
    75, 3631 (2003)).
    """
    d = np.diff(np.eye(n), 2, axis=0)
    return np.linalg.inv(np.eye(n) + lam * d.T @ d)


def _smooth_z(vol):
    """Each voxel's profile along z smoothed; one penalty for all voxels, by generalised cross-validation."""
    n = len(vol)
    y = vol.reshape(n, -1)
    best = None
    for lam in 10.0 ** np.arange(-2.0, 4.01, 0.25):
        s = smoothing_matrix(n, lam)
        resid = y - s @ y
        gcv = n * float(np.sum(resid**2)) / (n - np.trace(s)) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, s)
    return (best[2] @ y).reshape(vol.shape)


def _centroid(vol):
    """Intensity centroid ``(x, y)`` (pixels of the box) of the slices summed.

    The bead volumes are background-free already (their border level was subtracted), so the whole box
    counts as it is: clipping or a second background would remove tail light unevenly (coma) and move it.
    """
    img = np.nansum(vol, axis=0)
    k, m = np.mgrid[0: img.shape[0], 0: img.shape[1]]
    s = img.sum()
    return float((img * m).sum() / s), float((img * k).sum() / s)


def _centred_centroid(vol, half: int, rounds: int = 20):
    """Intensity centroid ``(x, y)`` (box pixels) of the slices of ``vol`` summed, in a ``2 half + 1`` pixel
    window centred on the centroid itself (found by iteration; the window's values are the slices' cubic
    interpolation at the sub-pixel shift). A window fixed on the box would be off-centre by the beads' mean
    offset and cut the PSF's tails unevenly, moving the centroid towards the box centre.
    """
    from scipy.ndimage import map_coordinates

    img = np.nansum(vol, axis=0)
    n = img.shape[0]
    c = np.array(_centroid(vol))
    mid = (n - 1) / 2.0
    for _ in range(rounds):
        w = int(min(half, np.floor(mid - np.max(np.abs(c - mid)))))
        if w < 2:
            break
        j = np.arange(-w, w + 1, dtype=float)
        yy, xx = np.meshgrid(c[1] + j, c[0] + j, indexing="ij")
        win = map_coordinates(img, [yy, xx], order=3, mode="nearest")
        total = win.sum()
        if not total > 0:
            break
        step = np.array([(win * xx).sum() / total, (win * yy).sum() / total]) - c
        c = c + step
        if np.max(np.abs(step)) < 1e-6:
            break
    return float(c[0]), float(c[1])


def _weights(coords, n: int) -> np.ndarray:
    """Rows of the linear map from ``n`` node values to their interpolating spline at ``coords`` (nodes)."""
    from .spline import interpolation_operator

    op = interpolation_operator(n)  # (n - 1, 4, n)
    c = np.asarray(coords, float)
    i = np.clip(np.floor(c).astype(int), 0, n - 2)
    t = c - i
    powers = t[:, None] ** np.arange(4)[None, :]
    return np.einsum("ap,apn->an", powers, op[i])


def _oversampled_template(vols, valids, shifts, scale, good, s0, s1, centre, grid, os_, coarse):
    """The registered beads' common PSF on a grid of ``os_`` lateral nodes per pixel, slice by slice.

    Bead ``b``'s pixel ``m`` (box coordinates) lies ``v = m - dx_b - centre_x`` pixels from the emitter, so
    its value samples the pixel-integrated PSF at the sub-pixel shift ``v``; the nodes of the template sit at
    ``v = (j - c) / os_``. The node values are the linear least-squares fit of every bead pixel (through the
    template's interpolating spline, so the spline the fit uses is the one fitted), a small ridge towards the
    one-node-per-pixel average ``coarse`` keeping nodes no bead phase constrains. Beads are first moved to
    the template's heights (cubic interpolation along z, which a z-stack samples finely).
    """
    from scipy.linalg import cho_factor, cho_solve
    from scipy.ndimage import shift as ndi_shift

    n_fine = os_ * (grid - 1) + 1
    cf = (n_fine - 1) / 2.0
    big = vols.shape[-1]
    m = np.arange(big, dtype=float)
    rows, grams, datas, masks = [], [], [], []
    for b in np.nonzero(good)[0]:
        dz, dy, dx = shifts[b]
        sx = (m - dx - centre[0]) * os_ + cf
        sy = (m - dy - centre[1]) * os_ + cf
        ux = (sx >= 0) & (sx <= n_fine - 1)
        uy = (sy >= 0) & (sy <= n_fine - 1)
        wx = _weights(sx[ux], n_fine)
        wy = _weights(sy[uy], n_fine)
        v = (vols[b] - scale[b, 1]) / scale[b, 0]
        valid = valids[b]
        if vols.shape[1] > 1 and abs(dz) > 1e-9:
            v = ndi_shift(np.where(valid, v, 0.0), (-dz, 0.0, 0.0), order=3, mode="nearest")
            valid = ndi_shift(valid.astype(float), (-dz, 0.0, 0.0), order=1, mode="constant", cval=0.0) > 0.999
        v = v[s0:s1][:, uy][:, :, ux]
        ok = np.all(valid[s0:s1][:, uy][:, :, ux], axis=(1, 2))
        rows.append((wy, wx))
        grams.append((wy.T @ wy, wx.T @ wx))
        datas.append(v)
        masks.append(ok)
    # the coarse (one node per pixel) average, interpolated onto the fine nodes: the ridge's target
    c_big = (big - 1) / 2.0
    u = (np.arange(n_fine) - cf) / os_
    target_x = u + centre[0] - c_big + (coarse.shape[-1] - 1) / 2.0
    target_y = u + centre[1] - c_big + (coarse.shape[-2] - 1) / 2.0
    tx = _weights(np.clip(target_x, 0, coarse.shape[-1] - 1), coarse.shape[-1])
    ty = _weights(np.clip(target_y, 0, coarse.shape[-2] - 1), coarse.shape[-2])
    masks = np.array(masks)
    out = np.zeros((len(coarse), n_fine, n_fine))
    factors = {}
    for s in range(len(coarse)):
        use = tuple(np.nonzero(masks[:, s])[0]) if masks.shape[1] > s else ()
        prior = ty @ np.nan_to_num(coarse[s]) @ tx.T
        if not use:
            out[s] = prior
            continue
        if use not in factors:
            a = np.zeros((n_fine * n_fine, n_fine * n_fine))
            for i in use:
                a += np.kron(*grams[i])
            mu = RIDGE * float(np.mean(np.diag(a)))
            factors[use] = (cho_factor(a + mu * np.eye(len(a))), mu)
        fac, mu = factors[use]
        rhs = sum((rows[i][0].T @ datas[i][s] @ rows[i][1]).ravel() for i in use) + mu * prior.ravel()
        out[s] = cho_solve(fac, rhs).reshape(n_fine, n_fine)
    return out


#: ridge of the oversampled template fit, relative to the mean diagonal of its normal matrix
RIDGE = 0.02


def _self_check(psf, vols, valids, shifts, good, s0, s1, centre=None, pad=PAD, max_beads=12, max_slices=30):
    """Fit good beads' single slices with the finished spline (least squares, multi-start in z).

    The reference height of bead ``b``'s slice ``s`` is where the registration put it on the template
    (index ``s - s0 - dz_b``): the error is that of the model and the fit, not of the bead's own height.
    """
    g = psf.grid_px
    n_nodes = psf.n_nodes[0]
    o = psf.oversampling
    # bead b's emitter sits at crop pixel dx_b + centre - pad; the spline's emitter node is psf.cx
    off = (0.0, 0.0) if centre is None else (centre[0] - pad, centre[1] - pad)
    starts = np.linspace(0.15, 0.85, 4) * (n_nodes - 1)
    rows = []
    beads = np.nonzero(good)[0][:max_beads]
    for b in beads:
        for s in range(s0, s1, max(1, (s1 - s0) // max_slices)):
            img = vols[b][s, pad:pad + g, pad:pad + g]
            if not np.all(valids[b][s, pad:pad + g, pad:pad + g]):
                continue
            true_idx = s - s0 - shifts[b, 0]
            # only the pixels the spline covers at the bead's registered position (no extrapolation)
            px = np.arange(g, dtype=float)
            inx = np.abs((px - shifts[b, 2] - off[0]) * o) <= psf.cx
            iny = np.abs((px - shifts[b, 1] - off[1]) * o) <= psf.cy
            cover = (iny[:, None] & inx[None, :])[None]
            best = None
            for st in starts:
                theta, rms, ok = fit_shift(img[None], cover, psf.coefficients, np.zeros(1),
                                           (float(img.sum()), shifts[b, 2] + off[0], shifts[b, 1] + off[1],
                                            -st, 0.0), nodes_per_px=o, origin=psf.cx)
                if ok and (best is None or rms < best[1]):
                    best = (theta, rms)
            if best is None:
                continue
            theta = best[0]
            fit_idx = -theta[3]
            rows.append((b, psf.z_first + psf.z_step * true_idx, (fit_idx - true_idx) * psf.z_step,
                         theta[1] - shifts[b, 2] - off[0], theta[2] - shifts[b, 1] - off[1]))
    if not rows:
        return {"z_precision_nm": float("nan")}
    a = np.array(rows, float)
    ze = a[:, 2]
    return {
        "check_bead": a[:, 0].astype(int), "check_z": a[:, 1], "check_dz": ze, "check_dx": a[:, 3],
        "check_dy": a[:, 4], "z_precision_nm": float(np.sqrt(np.mean(ze**2))),
        "z_median_abs_nm": float(np.median(np.abs(ze))),
    }
