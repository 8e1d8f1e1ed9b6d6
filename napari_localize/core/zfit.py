"""3D by astigmatism: calibration from bead z-stacks and z fitting (Huang et al., Science 319, 810 (2008)).

With a cylindrical lens a spot's widths ``sx`` and ``sy`` (pixels) depend on its height z. A calibration maps
the height (nm, "calibration space", i.e. the stage position of a bead z-stack) to widths with two degree-6
polynomials ``wx(z)``, ``wy(z)`` (numpy order: highest power first), recentred so the curves cross at z = 0.

Two ways to get a localization's z:

``"huang"``
    minimise ``D(z) = (sqrt(sx) - sqrt(wx(z)))^2 + (sqrt(sy) - sqrt(wy(z)))^2`` over the fit range
    (a dense grid finds the global minimum, a golden-section search refines it), from the 2D fit's widths.
``"mle"``
    a Poisson maximum-likelihood fit of x, y, photons, bg and z directly to the pixels, with the widths tied
    to z by the calibration (the astigmatic PSF model); its Cramér-Rao bound gives ``lpz``. It starts from the
    ``"huang"`` result. Its box is by default 4 pixels wider than the 2D box (defocused spots are wide), and
    the light of the frame's other localizations (their 2D fits) is part of the model. ``z_gof``, the
    standardised Poisson deviance of the fit (about N(0, 1) for a box holding one calibrated spot), flags
    boxes the model does not explain; ``ZFitOptions.max_gof`` can drop them.

In both, z (nm) = z_calibration * magnification factor (refractive-index mismatch), ``d_zcalib = sqrt(D)``
and ``lpz`` is the axial precision (nm). The stage position of frame f of F is ``-(f*step - (F-1)*step/2)``.

The fit range is the calibrated range extended by a bounded extrapolation (:func:`fit_range`, 25 % of the
range per end by default): spots a little beyond the calibration get their height instead of piling up on
the edge. Fits that end on the bound of the fit range are dropped; ``drop_out_of_range`` also drops every
extrapolated height. The policy is written to ``_locs.yaml`` (:func:`z_document`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from .locs import Z_FIELDS
from .psf import ISX, ISY, N_PARAMS, cholesky_solve, model

#: the z fitting methods
Z_METHODS = ("mle", "huang")
POLY_DEGREE = 6
DEFAULT_MAGNIFICATION = 0.79
#: grid points of the global search over the fit range
_GRID_POINTS = 512
#: how far past each end of the calibrated range z is searched, as a fraction of the calibrated range
DEFAULT_EXTRAPOLATION = 0.25
#: narrowest width (pixels) an extrapolated calibration may reach
_MIN_WIDTH = 0.3
#: the z MLE's box extends the 2D box by this many pixels on each side by default (see ZFitOptions.box_size)
Z_BOX_MARGIN = 2


# ------------------------------------------------------------------------------------------ calibration
@dataclass
class ZCalibration:
    """An astigmatic calibration: width polynomials of the height in calibration space.

    Attributes
    ----------
    x_coefficients, y_coefficients : ndarray (7,)
        ``wx(z)``, ``wy(z)`` in pixels for z in nm, highest power first (``np.polyval`` order).
    n_frames : int
        Frames of the calibration stack (the whole movie, even with frame bounds).
    step_nm : float
        Stage step between frames (nm).
    magnification_factor : float
        Actual height / calibration height (refractive-index mismatch); 0.79 for oil objectives in water.
    frame_bounds : tuple or None
        ``(first, last)`` frames used (inclusive), or None for all.
    path : str or None
        The stack the calibration came from.
    frames_per_step : int
        Frames acquired at each z position (several fields of view per step, Picasso 0.11); the stack has
        ``n_frames // frames_per_step`` z positions.
    frame_order : {"fov", "z"}
        With several frames per step: ``"fov"``, all frames of a z position follow each other
        (step = frame // frames_per_step); ``"z"``, the whole z scan is repeated (step = frame % steps).
    diagnostics : dict
        Per-position tables of the calibration run (not written to the YAML), see :func:`calibrate_widths`.
    """

    x_coefficients: np.ndarray
    y_coefficients: np.ndarray
    n_frames: int
    step_nm: float
    magnification_factor: float = DEFAULT_MAGNIFICATION
    frame_bounds: tuple[int, int] | None = None
    path: str | None = None
    diagnostics: dict = field(default_factory=dict, repr=False)
    frames_per_step: int = 1
    frame_order: str = "fov"

    def __post_init__(self):
        self.x_coefficients = np.asarray(self.x_coefficients, float).ravel()
        self.y_coefficients = np.asarray(self.y_coefficients, float).ravel()
        for name, c in (("X Coefficients", self.x_coefficients), ("Y Coefficients", self.y_coefficients)):
            if c.size < 2 or not np.all(np.isfinite(c)):
                raise ValueError(f"z calibration: {name} must be at least 2 finite numbers, got {c.tolist()}")
        if not self.step_nm > 0:
            raise ValueError(f"z calibration: the step size must be positive (nm), got {self.step_nm}")
        if int(self.n_frames) < 2:
            raise ValueError(f"z calibration: the number of frames must be at least 2, got {self.n_frames}")
        if not self.magnification_factor > 0:
            raise ValueError(f"z calibration: the magnification factor must be positive, got "
                             f"{self.magnification_factor}")

    @property
    def z_range(self) -> tuple[float, float]:
        """Calibrated heights (nm, calibration space): the stage positions of the frames used."""
        z = stage_positions(int(self.n_frames) // max(int(self.frames_per_step), 1), self.step_nm)
        if self.frame_bounds is not None:
            a, b = self.frame_bounds
            z = z[max(int(a), 0): int(b) + 1]
        return float(z.min()), float(z.max())

    def widths(self, z):
        """``(wx, wy)`` in pixels at calibration heights ``z`` (nm)."""
        return np.polyval(self.x_coefficients, z), np.polyval(self.y_coefficients, z)

    def as_picasso_dict(self) -> dict:
        """Picasso's calibration keys (``picasso_reference.md`` §8.5) with plain Python values."""
        return {
            "Frame bounds": None if self.frame_bounds is None else [int(v) for v in self.frame_bounds],
            "Magnification factor": float(self.magnification_factor),
            "Number of frames": int(self.n_frames),
            "Path": None if self.path is None else str(self.path),
            "Step size in nm": float(self.step_nm),
            "X Coefficients": [float(v) for v in self.x_coefficients],
            "Y Coefficients": [float(v) for v in self.y_coefficients],
            "Frames per step": int(self.frames_per_step),
            "Frame order": str(self.frame_order),
        }

    @classmethod
    def from_picasso_dict(cls, d: dict, magnification_factor: float | None = None) -> ZCalibration:
        """Build from Picasso's calibration dict; ``magnification_factor`` overrides the stored one."""
        missing = [k for k in ("X Coefficients", "Y Coefficients", "Number of frames", "Step size in nm")
                   if k not in d]
        if missing:
            raise ValueError(f"z calibration: missing key(s) {', '.join(missing)}")
        m = magnification_factor if magnification_factor is not None else d.get("Magnification factor")
        if m is None:
            raise ValueError("z calibration has no 'Magnification factor' (an old calibration): pass the "
                             "magnification factor explicitly")
        fb = d.get("Frame bounds")
        if fb is not None and (len(fb) != 2 or fb[0] is None or fb[1] is None):
            fb = None
        order = str(d.get("Frame order") or "fov")
        return cls(d["X Coefficients"], d["Y Coefficients"], int(d["Number of frames"]),
                   float(d["Step size in nm"]), float(m), None if fb is None else (int(fb[0]), int(fb[1])),
                   d.get("Path"), frames_per_step=max(int(d.get("Frames per step") or 1), 1),
                   frame_order=order if order in ("fov", "z") else "fov")


def fit_range(cal: ZCalibration, extrapolation: float = DEFAULT_EXTRAPOLATION) -> tuple[float, float]:
    """Heights (nm, calibration space) searched for z: the calibrated range extended at each end.

    Real samples do not stop at the calibration's edge; clamping z to the calibrated range piles every spot
    beyond it onto the edge (errors of the order of the overshoot). Each end is extended by up to
    ``extrapolation`` x the calibrated range, but only while both width polynomials keep the slope sign they
    have at that end and stay wider than 0.3 px: where a curve would turn back, extrapolation stops (the
    widths would no longer identify one height).
    """
    lo, hi = cal.z_range
    if not extrapolation > 0 or hi <= lo:
        return lo, hi
    reach = float(extrapolation) * (hi - lo)
    ends = []
    for edge, sign in ((lo, -1.0), (hi, 1.0)):
        z = edge + sign * np.linspace(0.0, reach, 1001)
        wx, wy = cal.widths(z)
        dx = np.polyval(np.polyder(cal.x_coefficients), z)
        dy = np.polyval(np.polyder(cal.y_coefficients), z)
        ok = ((np.sign(dx) == np.sign(dx[0])) & (np.sign(dy) == np.sign(dy[0]))
              & (wx > _MIN_WIDTH) & (wy > _MIN_WIDTH))
        n_ok = len(ok) if ok.all() else int(np.argmin(ok))
        ends.append(float(z[max(n_ok - 1, 0)]))
    return ends[0], ends[1]


def stage_positions(n_frames: int, step_nm: float) -> np.ndarray:
    """Stage height (nm) of frame f of F: ``-(f*step - (F-1)*step/2)`` (Picasso's convention)."""
    f = np.arange(int(n_frames), dtype=float)
    return -(f * step_nm - (n_frames - 1) * step_nm / 2.0)


def within_one_sd(frame, sx, sy, n_frames):
    """Picasso's per-position filter: keep a spot whose sx and sy both lie within one sd of its frame's mean.

    Returns ``(keep mask, mean sx per frame, mean sy per frame, count per frame)`` (NaN where empty).
    """
    frame = np.asarray(frame, np.int64)
    keep = np.zeros(len(frame), bool)
    mean_sx = np.full(n_frames, np.nan)
    mean_sy = np.full(n_frames, np.nan)
    count = np.zeros(n_frames, np.int64)
    order = np.argsort(frame, kind="stable")
    bounds = np.searchsorted(frame[order], np.arange(n_frames + 1))
    for f in range(n_frames):
        idx = order[bounds[f]:bounds[f + 1]]
        if len(idx) == 0:
            continue
        a, b = sx[idx], sy[idx]
        if len(idx) > 1:
            ok = ((a - a.mean()) ** 2 <= a.var(ddof=1)) & ((b - b.mean()) ** 2 <= b.var(ddof=1))
        else:
            ok = np.ones(1, bool)
        if not ok.any():
            ok[:] = True  # all equal distances: keep them rather than lose the position
        keep[idx[ok]] = True
        mean_sx[f] = a[ok].mean()
        mean_sy[f] = b[ok].mean()
        count[f] = ok.sum()
    return keep, mean_sx, mean_sy, count


def _crossing(cx, cy, lo, hi):
    """The height where the two width curves cross, nearest the middle of [lo, hi] (nm)."""
    z = np.linspace(lo, hi, 10001)
    diff = np.polyval(cx, z) - np.polyval(cy, z)
    sign = np.nonzero(np.diff(np.sign(diff)) != 0)[0]
    if len(sign) == 0:
        return float(z[np.argmin(np.abs(diff))])
    mid = 0.5 * (lo + hi)
    i = sign[np.argmin(np.abs(z[sign] - mid))]
    # linear interpolation between the two samples around the sign change
    t = diff[i] / (diff[i] - diff[i + 1])
    return float(z[i] + t * (z[i + 1] - z[i]))


def calibrate_widths(z, sx, sy, degree: int = POLY_DEGREE):
    """Fit width polynomials to widths (pixels) at heights ``z`` (nm) and recentre them to cross at z = 0.

    Non-finite entries are skipped. Returns ``(cx, cy, shift)`` where ``shift`` (nm) was subtracted from
    ``z`` before the final fit. Raises ValueError with fewer usable heights than ``degree + 1``.
    """
    z = np.asarray(z, float)
    sx = np.asarray(sx, float)
    sy = np.asarray(sy, float)
    ok = np.isfinite(z) & np.isfinite(sx) & np.isfinite(sy)
    if len(np.unique(z[ok])) < degree + 1:
        raise ValueError(f"z calibration needs widths at {degree + 1} or more heights, found "
                         f"{len(np.unique(z[ok]))}: lower the minimum net gradient or check the stack")
    z, sx, sy = z[ok], sx[ok], sy[ok]
    cx = np.polyfit(z, sx, degree)
    cy = np.polyfit(z, sy, degree)
    shift = _crossing(cx, cy, z.min(), z.max())
    cx = np.polyfit(z - shift, sx, degree)
    cy = np.polyfit(z - shift, sy, degree)
    return cx, cy, shift


def calibrate_z(locs, n_frames: int, step_nm: float, magnification_factor: float = DEFAULT_MAGNIFICATION,
                frame_bounds: tuple[int, int] | None = None, path: str | None = None) -> ZCalibration:
    """Picasso-style calibration from the localizations of a bead z-stack (all spots pooled per frame).

    Per frame the spots within one standard deviation of the mean sx and sy are averaged; frames left
    without spots are skipped (listed in ``diagnostics["notices"]``), never a crash.

    Parameters
    ----------
    locs : structured array
        Localizations with ``frame``, ``sx``, ``sy`` (pixels).
    n_frames : int
        Frames in the stack.
    step_nm : float
        Stage step per frame (nm).
    magnification_factor : float
        Stored in the calibration and applied when fitting z.
    frame_bounds : (first, last) or None
        Only these frames (inclusive) are used.
    """
    _check_stack(n_frames, step_nm)
    frame = np.asarray(locs["frame"], np.int64)
    sel = _in_bounds(frame, frame_bounds)
    keep, mean_sx, mean_sy, count = within_one_sd(frame[sel], np.asarray(locs["sx"], float)[sel],
                                                  np.asarray(locs["sy"], float)[sel], n_frames)
    z_stage = stage_positions(n_frames, step_nm)
    used = _frame_mask(n_frames, frame_bounds)
    mean_sx[~used] = np.nan
    mean_sy[~used] = np.nan
    cx, cy, shift = calibrate_widths(z_stage, mean_sx, mean_sy)
    cal = ZCalibration(cx, cy, n_frames, step_nm, magnification_factor, frame_bounds, path)
    cal.diagnostics = _diagnostics(cal, z_stage - shift, mean_sx, mean_sy, count, used,
                                   frame[sel][keep], np.asarray(locs["sx"])[sel][keep],
                                   np.asarray(locs["sy"])[sel][keep], np.zeros(int(keep.sum())), shift)
    cal.diagnostics["method"] = "pooled spots per frame (Picasso)"
    return cal


def _check_stack(n_frames, step_nm):
    if int(n_frames) < POLY_DEGREE + 1:
        raise ValueError(f"a z calibration stack needs at least {POLY_DEGREE + 1} frames, got {n_frames}")
    if not step_nm > 0:
        raise ValueError(f"the z step size must be positive (nm), got {step_nm}")


def _frame_mask(n_frames, frame_bounds):
    used = np.ones(n_frames, bool)
    if frame_bounds is not None:
        used[:] = False
        used[max(int(frame_bounds[0]), 0): int(frame_bounds[1]) + 1] = True
    return used


def _in_bounds(frame, frame_bounds):
    if frame_bounds is None:
        return np.ones(len(frame), bool)
    return (frame >= frame_bounds[0]) & (frame <= frame_bounds[1])


def _diagnostics(cal, z_cal, mean_sx, mean_sy, count, used, frame, sx, sy, offset, shift):
    """Per-position tables and the calibration's own z precision (z of each kept spot vs its height)."""
    lo, hi = cal.z_range
    z_fit, _ = fit_z_huang(np.asarray(sx, float), np.asarray(sy, float), cal.x_coefficients,
                           cal.y_coefficients, lo, hi)
    z_true = z_cal[frame] + offset
    err = z_fit - z_true
    n = len(z_cal)
    rmse = np.full(n, np.nan)
    bias = np.full(n, np.nan)
    for f in np.unique(frame):
        e = err[frame == f]
        e = e[np.isfinite(e)]
        if len(e):
            rmse[f] = math.sqrt(float(np.mean(e**2)))
            bias[f] = float(np.mean(e))
    empty = np.nonzero(used & (count == 0))[0]
    notices = []
    if len(empty):
        notices.append(f"{len(empty)} stack position(s) had no spots and were skipped: frames "
                       f"{', '.join(str(int(f)) for f in empty[:20])}{' ...' if len(empty) > 20 else ''}")
    good = np.isfinite(err)
    return {
        "z": z_cal, "mean_sx": mean_sx, "mean_sy": mean_sy, "count": count, "used": used,
        "z_rmse": rmse, "z_bias": bias, "shift": float(shift),
        "spot_frame": frame, "spot_sx": np.asarray(sx), "spot_sy": np.asarray(sy), "spot_z_fit": z_fit,
        "spot_z_true": z_true,
        "z_precision_nm": float(np.sqrt(np.mean(err[good] ** 2))) if good.any() else float("nan"),
        "notices": notices,
    }


# ------------------------------------------------------------------------------------------ bead tracking
def track_beads(x, y, radius: float = 1.5):
    """Group spots of a bead z-stack into beads: a spot joins the first bead within ``radius`` pixels.

    Beads are seeded in order of the spots given (pass the brightest first). Returns an int64 bead index per
    spot.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    return _link(x, y, float(radius))


@njit(cache=True, nogil=True)
def _link(x, y, radius):
    n = x.shape[0]
    ids = np.empty(n, np.int64)
    cx = np.empty(n)
    cy = np.empty(n)
    m = 0
    r2 = radius * radius
    for i in range(n):
        found = -1
        for b in range(m):
            if (x[i] - cx[b]) ** 2 + (y[i] - cy[b]) ** 2 <= r2:
                found = b
                break
        if found < 0:
            cx[m] = x[i]
            cy[m] = y[i]
            found = m
            m += 1
        ids[i] = found
    return ids


def bead_boxes(locs, n_frames: int, height: int, width: int, box_size: int, radius: float = 1.5,
               min_fraction: float = 0.2):
    """Fixed box centres of the beads of a stack: ``(x, y)`` integer pixel arrays, one per bead.

    Beads seen in fewer than ``min_fraction`` of the frames, or whose boxes would overlap another bead's,
    are dropped: a box must hold one bead only.
    """
    order = np.argsort(-np.asarray(locs["photons"], float), kind="stable")
    ids = track_beads(locs["x"][order], locs["y"][order], radius)
    frames = np.asarray(locs["frame"])[order]
    xs, ys = [], []
    for b in range(int(ids.max()) + 1 if len(ids) else 0):
        sel = ids == b
        if len(np.unique(frames[sel])) < min_fraction * n_frames:
            continue
        xs.append(float(np.median(locs["x"][order][sel])))
        ys.append(float(np.median(locs["y"][order][sel])))
    xs = np.array(xs)
    ys = np.array(ys)
    r = box_size // 2
    keep = (xs >= r) & (xs <= width - 1 - r) & (ys >= r) & (ys <= height - 1 - r)
    for i in range(len(xs)):
        d = np.maximum(np.abs(xs - xs[i]), np.abs(ys - ys[i]))
        d[i] = np.inf
        if np.any(d < box_size):
            keep[i] = False
    return np.rint(xs[keep]).astype(np.int64), np.rint(ys[keep]).astype(np.int64)


def calibrate_z_beads(frames, params, step_nm: float, magnification_factor: float = DEFAULT_MAGNIFICATION,
                      frame_bounds: tuple[int, int] | None = None, path: str | None = None,
                      locs=None) -> ZCalibration:
    """Calibrate from a bead z-stack by following each bead through the stack in a fixed box.

    The stack is localized with ``params`` (or ``locs`` given); spots are grouped into beads; every bead is
    then fitted with ``params.fit_method`` in its fixed box in every frame (so defocused frames where
    identification fails still count and spots of different beads never mix). Each bead's own height offset
    (a tilted coverslip, a bead off the surface) is estimated from a first calibration and removed, then
    the polynomials are fitted to all bead widths, outliers (more than 4 median absolute deviations) dropped.

    Parameters
    ----------
    frames : array (F, height, width)
        The stack in camera counts (ADU); anything sliceable along frames (a Movie) works.
    params : LocalizeParameters
        Identification, camera and fit parameters.
    step_nm, magnification_factor, frame_bounds, path
        As in :func:`calibrate_z`.
    """
    from .camera import adu_to_photons
    from .pipeline import fit_spots_by_method, localize
    from .spots import cut_spots

    n_frames, height, width = (int(s) for s in frames.shape[-3:])
    _check_stack(n_frames, step_nm)
    if locs is None:
        locs, _ = localize(frames, params)
    if len(locs) == 0:
        raise ValueError("no spots found in the calibration stack: lower the minimum net gradient")
    bx, by = bead_boxes(locs, n_frames, height, width, params.box_size)
    if len(bx) == 0:
        raise ValueError("no bead could be followed through the calibration stack (beads too close together "
                         "or seen in too few frames): use the pooled calibration (calibrate_z)")
    used = _frame_mask(n_frames, frame_bounds)
    fidx = np.nonzero(used)[0]
    nb = len(bx)
    local = np.repeat(np.arange(len(fidx)), nb)
    data = np.asarray(frames[int(fidx[0]): int(fidx[-1]) + 1])[fidx - fidx[0]]
    spots = cut_spots(data, local, np.tile(by, len(fidx)), np.tile(bx, len(fidx)), params.box_size)
    photons = adu_to_photons(spots, params.baseline, params.sensitivity, params.em_gain)
    fit = fit_spots_by_method(photons, params)
    frame = fidx[local]
    bead = np.tile(np.arange(nb), len(fidx))
    sx = np.asarray(fit["sx"], float)
    sy = np.asarray(fit["sy"], float)
    good = np.asarray(fit["converged"], bool) & (np.hypot(fit["dx"], fit["dy"]) < 1.0) & (fit["photons"] > 0)
    frame, bead, sx, sy = frame[good], bead[good], sx[good], sy[good]
    z_stage = stage_positions(n_frames, step_nm)
    # pass 1: Picasso's per-position filter across beads, mean widths, polynomials
    keep, mean_sx, mean_sy, count = within_one_sd(frame, sx, sy, n_frames)
    cx, cy, shift = calibrate_widths(z_stage, mean_sx, mean_sy)
    lo, hi = z_stage[used].min() - shift, z_stage[used].max() - shift
    # pass 2: each bead's height offset (median of fitted minus stage height), then a fit to all beads
    zf, _ = fit_z_huang(sx, sy, cx, cy, lo, hi)
    resid = zf - (z_stage[frame] - shift)
    offset = np.zeros(nb)
    inner = np.abs(z_stage[frame] - shift) < 0.6 * (hi - lo) / 2
    for b in range(nb):
        e = resid[(bead == b) & inner & np.isfinite(resid)]
        if len(e) >= 3:
            offset[b] = float(np.median(e))
    offset -= np.median(offset)
    zb = z_stage[frame] + offset[bead]
    ok = np.ones(len(zb), bool)
    for _ in range(2):
        cx2, cy2, shift2 = calibrate_widths(zb[ok], sx[ok], sy[ok])
        rx = sx - np.polyval(cx2, zb - shift2)
        ry = sy - np.polyval(cy2, zb - shift2)
        madx = 1.4826 * np.median(np.abs(rx[ok])) + 1e-9
        mady = 1.4826 * np.median(np.abs(ry[ok])) + 1e-9
        ok = (np.abs(rx) < 4 * madx) & (np.abs(ry) < 4 * mady)
    cx, cy, shift = calibrate_widths(zb[ok], sx[ok], sy[ok])
    cal = ZCalibration(cx, cy, n_frames, step_nm, magnification_factor, frame_bounds, path)
    _, mean_sx, mean_sy, count = within_one_sd(frame[ok], sx[ok], sy[ok], n_frames)
    cal.diagnostics = _diagnostics(cal, z_stage - shift, mean_sx, mean_sy, count, used, frame[ok], sx[ok],
                                   sy[ok], offset[bead[ok]], shift)
    cal.diagnostics["method"] = f"{nb} beads followed in fixed boxes, per-bead height offsets removed"
    cal.diagnostics["bead_offsets_nm"] = offset
    return cal


# ------------------------------------------------------------------------------------------ z fit (Huang D)
@njit(cache=True, nogil=True)
def _poly(c, z):
    v = 0.0
    for k in range(c.shape[0]):
        v = v * z + c[k]
    return v


@njit(cache=True, nogil=True)
def _dpoly(c, z):
    n = c.shape[0] - 1
    v = 0.0
    for k in range(n):
        v = v * z + c[k] * (n - k)
    return v


@njit(cache=True, nogil=True)
def _distance(a, b, cx, cy, z):
    wx = _poly(cx, z)
    wy = _poly(cy, z)
    if wx <= 0.0 or wy <= 0.0:
        return np.inf
    return (a - math.sqrt(wx)) ** 2 + (b - math.sqrt(wy)) ** 2


@njit(cache=True, nogil=True, parallel=True)
def _fit_z_d(sx, sy, cx, cy, grid, gx, gy, lo, hi, z_out, d_out):
    n = sx.shape[0]
    m = grid.shape[0]
    h = grid[1] - grid[0]
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    for i in prange(n):
        if not (sx[i] > 0.0 and sy[i] > 0.0):
            z_out[i] = np.nan
            d_out[i] = np.nan
            continue
        a = math.sqrt(sx[i])
        b = math.sqrt(sy[i])
        best = np.inf
        jb = -1
        for j in range(m):
            d = (a - gx[j]) ** 2 + (b - gy[j]) ** 2
            if d < best:
                best = d
                jb = j
        if jb < 0:
            z_out[i] = np.nan
            d_out[i] = np.nan
            continue
        # golden-section refinement within one grid step either side of the best grid point
        u = max(grid[jb] - h, lo)
        v = min(grid[jb] + h, hi)
        c = v - invphi * (v - u)
        e = u + invphi * (v - u)
        fc = _distance(a, b, cx, cy, c)
        fe = _distance(a, b, cx, cy, e)
        for _ in range(40):
            if fc < fe:
                v = e
                e = c
                fe = fc
                c = v - invphi * (v - u)
                fc = _distance(a, b, cx, cy, c)
            else:
                u = c
                c = e
                fc = fe
                e = u + invphi * (v - u)
                fe = _distance(a, b, cx, cy, e)
        z = 0.5 * (u + v)
        d = _distance(a, b, cx, cy, z)
        if d > best:
            z = grid[jb]
            d = best
        z_out[i] = z
        d_out[i] = d


def _grid(cx, cy, lo, hi):
    grid = np.linspace(lo, hi, _GRID_POINTS)
    wx = np.polyval(cx, grid)
    wy = np.polyval(cy, grid)
    with np.errstate(invalid="ignore"):
        gx = np.where(wx > 0, np.sqrt(np.abs(wx)), np.inf)
        gy = np.where(wy > 0, np.sqrt(np.abs(wy)), np.inf)
    return grid, gx, gy


def fit_z_huang(sx, sy, cx, cy, lo, hi):
    """Calibration heights (nm) minimising Huang's D over ``[lo, hi]``; returns ``(z, D)``.

    A grid of 512 heights finds the global minimum (so several local minima cannot trap it), a
    golden-section search refines it. Widths <= 0 or non-finite give NaN.
    """
    sx = np.ascontiguousarray(sx, float)
    sy = np.ascontiguousarray(sy, float)
    cx = np.ascontiguousarray(cx, float)
    cy = np.ascontiguousarray(cy, float)
    z = np.empty(len(sx))
    d = np.empty(len(sx))
    if len(sx):
        grid, gx, gy = _grid(cx, cy, float(lo), float(hi))
        _fit_z_d(sx, sy, cx, cy, grid, gx, gy, float(lo), float(hi), z, d)
    return z, d


# ------------------------------------------------------------------------------------------ lpz
def width_se_nm(sigma, photons, bg, pixelsize, other_sigma=None, sigma_unc=None, method="mle"):
    """Standard error of a fitted width (nm) (Kowalewski, Reinhardt et al. 2026, as in Picasso).

    MLE: ``sigma_unc`` (pixels, the CRLB) if given, else Rieger & Stallinga's approximation; LQ/avg:
    Mortensen-style least-squares formula. Inputs in pixels and photons.
    """
    sigma = np.asarray(sigma, float)
    N = np.maximum(np.asarray(photons, float), 1e-9)
    b = np.maximum(np.asarray(bg, float), 0.0)
    sa2 = sigma**2 + 1.0 / 12.0
    if method == "mle":
        if sigma_unc is not None:
            return np.asarray(sigma_unc, float) * pixelsize
        tau = 2 * np.pi * sa2 * b / N
        se2 = sigma**2 / (4 * N) * (1 + 8 * tau + np.sqrt(8 * tau / (1 + 2 * tau)))
        return np.sqrt(se2) * pixelsize
    other = sigma if other_sigma is None else np.asarray(other_sigma, float)
    sa = np.sqrt(sa2)
    sa_o = np.sqrt(other**2 + 1.0 / 12.0)
    se2 = (sa2**2 / N * (512 / 81 + 64 * np.pi * sa * sa_o * b / (3 * N))) / (4 * sigma**2)
    return np.sqrt(se2) * pixelsize


def axial_precision(z_cal, sx, sy, se_x_nm, se_y_nm, cal: ZCalibration, pixelsize):
    """lpz (nm) from the width standard errors and the calibration's slopes at ``z_cal`` (calibration nm)."""
    M = cal.magnification_factor
    with np.errstate(invalid="ignore", divide="ignore"):
        wx = np.polyval(cal.x_coefficients, z_cal) * pixelsize
        wy = np.polyval(cal.y_coefficients, z_cal) * pixelsize
        dwx = np.polyval(np.polyder(cal.x_coefficients), z_cal) * pixelsize
        dwy = np.polyval(np.polyder(cal.y_coefficients), z_cal) * pixelsize
        ax = dwx / (2 * np.sqrt(wx))
        ay = dwy / (2 * np.sqrt(wy))
        dx = se_x_nm / (2 * np.sqrt(np.asarray(sx, float) * pixelsize))
        dy = se_y_nm / (2 * np.sqrt(np.asarray(sy, float) * pixelsize))
        return M * np.sqrt((ax**2 * dx**2 + ay**2 * dy**2) / (ax**2 + ay**2) ** 2)


# ------------------------------------------------------------------------------------------ astigmatic MLE
_NZ = 5  # x, y, photons, bg, z


@njit(cache=True, nogil=True)
def _model_z(th, box, cx, cy, extra, mu, J, J6, t6, scratch):
    """Astigmatic model at ``th = (x, y, N, b, z)`` plus the fixed ``extra`` photons per pixel (neighbours);
    widths from the calibration; J: d mu / d th."""
    wx = _poly(cx, th[4])
    wy = _poly(cy, th[4])
    if wx < 0.3 or wy < 0.3:
        return False
    t6[0] = th[0]
    t6[1] = th[1]
    t6[2] = th[2]
    t6[3] = th[3]
    t6[ISX] = wx
    t6[ISY] = wy
    model(t6, box, mu, J6, scratch)
    for p in range(box * box):
        mu[p] += extra[p]
    if J.shape[0] > 0:
        dwx = _dpoly(cx, th[4])
        dwy = _dpoly(cy, th[4])
        for p in range(box * box):
            for a in range(4):
                J[p, a] = J6[p, a]
            J[p, 4] = J6[p, ISX] * dwx + J6[p, ISY] * dwy
    return True


@njit(cache=True, nogil=True)
def _loglik(data, mu):
    s = 0.0
    for p in range(data.shape[0]):
        x = data[p]
        m = mu[p]
        if x > 0:
            s += x * math.log(m / x) - m + x
        else:
            s -= m
    return s


@njit(cache=True, nogil=True)
def _deviance_moments(mu):
    """Mean and variance of one pixel's Poisson deviance ``2 (x ln(x/mu) - (x - mu))`` for ``x ~ Poisson(mu)``.

    Summed over the distribution below 20 photons, the large-mu expansions ``1 + 1/(6 mu) + 1/(6 mu^2)`` and
    ``2 + 2/(3 mu)`` above (they agree with the sums to < 0.1 % there).
    """
    if mu >= 20.0:
        return 1.0 + 1.0 / (6.0 * mu) + 1.0 / (6.0 * mu * mu), 2.0 + 2.0 / (3.0 * mu)
    if mu <= 0.0:
        return 0.0, 0.0
    log_mu = math.log(mu)
    kmax = int(mu + 12.0 * math.sqrt(mu) + 12.0)
    m1 = 0.0
    m2 = 0.0
    for k in range(kmax + 1):
        pk = math.exp(k * log_mu - mu - math.lgamma(k + 1.0))
        d = 2.0 * mu if k == 0 else 2.0 * (k * math.log(k / mu) - (k - mu))
        m1 += pk * d
        m2 += pk * d * d
    return m1, max(m2 - m1 * m1, 1e-12)


@njit(cache=True, nogil=True)
def _gof(loglik, mu, n_params):
    """Standardised deviance ``(D - E[D]) / sd(D)`` of a fit; ``D = -2 loglik`` (saturated-model ratio).

    ``E[D]`` and ``var(D)`` are summed over the pixels for Poisson counts of the fitted means ``mu``, minus
    ``n_params`` fitted parameters from the mean. About N(0, 1) when the box holds just the model.
    """
    e = 0.0
    v = 0.0
    for p in range(mu.shape[0]):
        a, b = _deviance_moments(mu[p])
        e += a
        v += b
    return (-2.0 * loglik - (e - n_params)) / math.sqrt(v)


@njit(cache=True, nogil=True)
def _add_spot(img, x, y, photons, sx, sy):
    """Add a pixel-integrated Gaussian (``photons`` at ``x, y`` box pixels, widths ``sx, sy``) to ``img``."""
    box = img.shape[0]
    if not (sx > 0.0 and sy > 0.0 and photons > 0.0):
        return
    kx = 1.0 / (math.sqrt(2.0) * sx)
    ky = 1.0 / (math.sqrt(2.0) * sy)
    ex = np.empty(box)
    for m in range(box):
        ex[m] = 0.5 * (math.erf((m + 0.5 - x) * kx) - math.erf((m - 0.5 - x) * kx))
    for k in range(box):
        ey = 0.5 * (math.erf((k + 0.5 - y) * ky) - math.erf((k - 0.5 - y) * ky))
        for m in range(box):
            img[k, m] += photons * ey * ex[m]


@njit(cache=True, nogil=True, parallel=True)
def _neighbour_light(starts, order, x, y, photons, sx, sy, bx, by, box, out):
    r = box // 2
    for g in prange(starts.shape[0] - 1):
        for a in range(starts[g], starts[g + 1]):
            i = order[a]
            for c in range(starts[g], starts[g + 1]):
                j = order[c]
                if j == i:
                    continue
                reach = r + 0.5 + 5.0 * max(sx[j], sy[j])
                if abs(x[j] - bx[i]) > reach or abs(y[j] - by[i]) > reach:
                    continue
                _add_spot(out[i], x[j] - bx[i] + r, y[j] - by[i] + r, photons[j], sx[j], sy[j])


def neighbour_light(frame, x, y, photons, sx, sy, bx, by, box_size: int):
    """Expected photons of the other localizations of the same frame in each box: ``(n, box, box)``.

    ``x, y`` (pixels), ``photons``, ``sx, sy`` (pixels) are the 2D fits; ``bx, by`` the integer box centres.
    The z MLE adds this light to its model, so a neighbour's tail does not widen the spot it fits.
    """
    n = len(x)
    out = np.zeros((n, box_size, box_size))
    if n == 0:
        return out
    frame = np.asarray(frame, np.int64)
    order = np.argsort(frame, kind="stable")
    fs = frame[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(fs))[0] + 1, [n]]).astype(np.int64)
    f64 = [np.ascontiguousarray(v, float) for v in (x, y, photons, sx, sy, bx, by)]
    _neighbour_light(starts, order.astype(np.int64), *f64, int(box_size), out)
    return out


@njit(cache=True, nogil=True)
def fit_spot_z(spot, box, cx, cy, lo, hi, th, max_iterations, crlb, extra):
    """Poisson MLE of ``th = (x, y, photons, bg, z)`` (box pixels, photons, calibration nm) in place.

    ``extra`` (box*box photons) is added to the model and not fitted: the light of neighbouring spots.
    Levenberg-Marquardt on the log-likelihood with Fisher scoring; every step must improve the likelihood.
    ``crlb`` receives the CRLB variances. Returns ``(log-likelihood, converged, goodness of fit)``: the
    log-likelihood ratio to the saturated model and :func:`_gof` of the final model.
    """
    P = box * box
    mu = np.empty(P)
    mu_t = np.empty(P)
    J = np.empty((P, _NZ))
    J6 = np.empty((P, N_PARAMS))
    no6 = np.empty((0, N_PARAMS))
    noJ = np.empty((0, _NZ))
    t6 = np.empty(N_PARAMS)
    scratch = np.empty((6, box))
    g = np.empty(_NZ)
    F = np.empty((_NZ, _NZ))
    A = np.empty((_NZ, _NZ))
    L = np.zeros((_NZ, _NZ))
    step = np.empty(_NZ)
    trial = np.empty(_NZ)
    if not _model_z(th, box, cx, cy, extra, mu, J, J6, t6, scratch):
        return -np.inf, False, np.nan
    obj = _loglik(spot, mu)
    o = obj
    lam = 1e-3
    converged = False
    for _it in range(max_iterations):
        g[:] = 0.0
        F[:, :] = 0.0
        for p in range(P):
            w = 1.0 / mu[p]
            r = spot[p] * w - 1.0
            for a in range(_NZ):
                g[a] += r * J[p, a]
                for c in range(a + 1):
                    F[a, c] += w * J[p, a] * J[p, c]
        for a in range(_NZ):
            for c in range(a):
                F[c, a] = F[a, c]
        accepted = False
        while lam < 1e12:
            for a in range(_NZ):
                for c in range(_NZ):
                    A[a, c] = F[a, c]
                A[a, a] = F[a, a] * (1.0 + lam) + 1e-12
            if cholesky_solve(A, g, L, step):
                for a in range(_NZ):
                    trial[a] = th[a] + step[a]
                trial[2] = max(trial[2], 1e-3)
                trial[3] = max(trial[3], 1e-3)
                trial[4] = min(max(trial[4], lo), hi)
                trial[0] = min(max(trial[0], -0.5), box - 0.5)
                trial[1] = min(max(trial[1], -0.5), box - 0.5)
                if _model_z(trial, box, cx, cy, extra, mu_t, noJ, no6, t6, scratch):
                    o = _loglik(spot, mu_t)
                    if o >= obj - 1e-12 * abs(obj):
                        accepted = True
                        break
            lam *= 10.0
        if not accepted:
            converged = True
            break
        small = (abs(trial[0] - th[0]) < 1e-4 and abs(trial[1] - th[1]) < 1e-4
                 and abs(trial[4] - th[4]) < 1e-2 and abs(trial[2] - th[2]) < 1e-5 * th[2])
        for a in range(_NZ):
            th[a] = trial[a]
        obj = o
        lam = max(lam * 0.1, 1e-9)
        _model_z(th, box, cx, cy, extra, mu, J, J6, t6, scratch)
        if small:
            converged = True
            break
    # Fisher information at the optimum -> CRLB
    F[:, :] = 0.0
    for p in range(P):
        w = 1.0 / mu[p]
        for a in range(_NZ):
            for c in range(_NZ):
                F[a, c] += w * J[p, a] * J[p, c]
    e = np.empty(_NZ)
    col = np.empty(_NZ)
    for i in range(_NZ):
        e[:] = 0.0
        e[i] = 1.0
        if not cholesky_solve(F, e, L, col):
            crlb[:] = np.nan
            break
        crlb[i] = col[i]
    return obj, converged, _gof(obj, mu, _NZ)


@njit(cache=True, nogil=True, parallel=True)
def _fit_z_batch(spots, extra, box, cx, cy, lo, hi, theta, crlb, ll, gof, ok, max_iterations):
    for n in prange(spots.shape[0]):
        spot = spots[n].ravel().astype(np.float64)
        light = extra[n].ravel()
        best = theta[n].copy()
        t = theta[n].copy()
        c = np.empty(_NZ)
        o, conv, q = fit_spot_z(spot, box, cx, cy, lo, hi, t, max_iterations, c, light)
        best[:] = t
        best_o = o
        best_q = q
        best_c = c.copy()
        best_conv = conv
        # second start at the mirror height: astigmatic widths are nearly symmetric, guard the wrong branch
        t2 = theta[n].copy()
        t2[4] = min(max(-theta[n, 4], lo), hi)
        if abs(t2[4] - theta[n, 4]) > 0.05 * (hi - lo):
            o2, conv2, q2 = fit_spot_z(spot, box, cx, cy, lo, hi, t2, max_iterations, c, light)
            if o2 > best_o:
                best[:] = t2
                best_o = o2
                best_q = q2
                best_c[:] = c
                best_conv = conv2
        theta[n, :] = best
        crlb[n, :] = best_c
        ll[n] = best_o
        gof[n] = best_q
        ok[n] = best_conv


def fit_z_mle(spots, x0, y0, photons0, bg0, z0, cal: ZCalibration, max_iterations: int = 100,
              z_bounds: tuple[float, float] | None = None, extra=None):
    """Astigmatic-PSF Poisson MLE of ``(x, y, photons, bg, z)`` for a stack of photon boxes.

    Parameters
    ----------
    spots : (n, box, box) photons
    x0, y0 : starting positions in box coordinates (pixels; centre pixel = box // 2)
    photons0, bg0 : starting photons and bg (photons per pixel)
    z0 : starting calibration heights (nm), e.g. from :func:`fit_z_huang`
    cal : ZCalibration
    z_bounds : (lo, hi) or None
        Heights (calibration nm) z is kept in; the calibrated range if None (see :func:`fit_range`).
    extra : (n, box, box) photons or None
        Known light added to each model and not fitted (neighbouring spots, :func:`neighbour_light`).

    Returns
    -------
    theta : (n, 5) fitted x, y (box pixels), photons, bg, z (calibration nm)
    crlb : (n, 5) Cramér-Rao variances of the same
    converged : (n,) bool
    gof : (n,) standardised Poisson deviance of each fit (about N(0, 1) for a box that holds just the model)
    """
    spots = np.ascontiguousarray(spots, np.float32)
    n = len(spots)
    theta = np.column_stack([x0, y0, photons0, bg0, z0]).astype(float) if n else np.zeros((0, _NZ))
    theta = np.ascontiguousarray(theta)
    bad = ~np.isfinite(theta[:, 4])
    theta[bad, 4] = 0.0
    crlb = np.full((n, _NZ), np.nan)
    ll = np.empty(n)
    gof = np.full(n, np.nan)
    ok = np.zeros(n, bool)
    lo, hi = cal.z_range if z_bounds is None else z_bounds
    if n:
        extra = np.zeros(spots.shape) if extra is None else np.ascontiguousarray(extra, float)
        if extra.shape != spots.shape:
            raise ValueError(f"fit_z_mle: extra light must have the shape of the spots {spots.shape}, got "
                             f"{extra.shape}")
        _fit_z_batch(spots, extra, spots.shape[-1], np.ascontiguousarray(cal.x_coefficients),
                     np.ascontiguousarray(cal.y_coefficients), float(lo), float(hi), theta, crlb, ll, gof, ok,
                     int(max_iterations))
    return theta, crlb, ok, gof


# ------------------------------------------------------------------------------------------ locs -> 3D locs
@dataclass
class ZFitOptions:
    """How z is fitted; one policy for the CLI, the API and the widgets, written to ``_locs.yaml``.

    Attributes
    ----------
    method : {"mle", "huang"}
        ``"mle"``: astigmatic-PSF maximum likelihood (needs the pixels); ``"huang"``: D minimisation on the
        fitted widths.
    filter : float
        If > 0, drop localizations with ``d_zcalib > filter * RMS(d_zcalib)`` (Picasso's filter). 0 is off.
    drop_out_of_range : bool
        Drop localizations whose z lies beyond the calibrated range (extrapolated heights).
    extrapolation : float
        z is searched up to this fraction of the calibrated range past each end (see :func:`fit_range`).
        A fit that ends on the bound of the search is always dropped: it reports the bound, not a height.
    box_size : int
        ``"mle"``: side (pixels, odd) of the box the astigmatic PSF is fitted in; 0 (default) uses the 2D
        box size + 4 (:data:`Z_BOX_MARGIN` pixels each side). A defocused spot is wide: a larger box holds
        more of its width information (smaller ``lpz``); with ``neighbours`` the extra pixels cost no
        accuracy in crowded frames (``benchmarks/RESULTS.md``, 3D).
    neighbours : bool
        ``"mle"``: add the light of the other localizations of the frame (their 2D fits) to the model, so
        a neighbour's tail in the box does not widen the spot being fitted.
    max_gof : float
        ``"mle"``: if > 0, drop localizations whose goodness of fit ``z_gof`` exceeds it. ``z_gof`` is the
        standardised Poisson deviance of the astigmatic fit, ``(D - E[D]) / sd(D)``: about N(0, 1) when the
        box holds one spot of the calibrated shape, large when it holds more (an unmodelled neighbour, two
        overlapping emitters). 0 is off.
    """

    method: str = "mle"
    filter: float = 0.0
    drop_out_of_range: bool = False
    extrapolation: float = DEFAULT_EXTRAPOLATION
    box_size: int = 0
    neighbours: bool = True
    max_gof: float = 0.0

    def z_box(self, box_size_2d: int) -> int:
        """The box side (pixels) the z MLE cuts, given the 2D fit's box."""
        return int(self.box_size) if self.box_size else int(box_size_2d) + 2 * Z_BOX_MARGIN

    def validate(self):
        if self.method not in Z_METHODS:
            raise ValueError(f"z fit method must be one of {', '.join(Z_METHODS)}, got {self.method!r}")
        if not self.filter >= 0:
            raise ValueError(f"z outlier filter must be >= 0, got {self.filter}")
        if not 0 <= self.extrapolation <= 1:
            raise ValueError(f"z extrapolation must be in [0, 1] (fraction of the calibrated range), got "
                             f"{self.extrapolation}")
        if self.box_size and (int(self.box_size) != self.box_size or self.box_size < 3 or self.box_size % 2 == 0):
            raise ValueError(f"z fit box size must be an odd number of pixels >= 3 (or 0: the 2D box + "
                             f"{2 * Z_BOX_MARGIN}), got {self.box_size}")
        if not self.max_gof >= 0:
            raise ValueError(f"z goodness-of-fit limit (max_gof) must be >= 0 (0 is off), got {self.max_gof}")


#: our 3D field after Picasso's ``z, d_zcalib, lpz`` when z comes from the astigmatic MLE: ``z_gof``, the
#: standardised Poisson deviance of the fit (see :class:`ZFitOptions`); ``"huang"`` fits no pixels, has none
Z_EXTRA_FIELDS = [("z_gof", "<f4")]


def with_z_fields(locs, gof: bool = False) -> np.ndarray:
    """A copy of ``locs`` with the 3D fields ``z, d_zcalib, lpz`` (and ``z_gof`` if ``gof``) appended (zeros)."""
    fields = Z_FIELDS + (Z_EXTRA_FIELDS if gof else [])
    dtype = np.dtype(locs.dtype.descr + [f for f in fields if f[0] not in locs.dtype.names])
    out = np.zeros(len(locs), dtype)
    for name in locs.dtype.names:
        out[name] = locs[name]
    return out


def fit_z(locs, cal: ZCalibration, pixelsize: float, fit_method: str = "mle", options: ZFitOptions | None = None,
          spots=None, image_shape=None):
    """Give 2D localizations a height: returns ``(locs3d, kept mask)``.

    Parameters
    ----------
    locs : structured array
        2D localizations (Picasso fields; ``sx``, ``sy`` in pixels).
    cal : ZCalibration
    pixelsize : float
        Camera pixel size (nm), for ``lpz``.
    fit_method : str
        The 2D fit method (``mle``, ``lq``, ``avg``), for the width standard errors.
    options : ZFitOptions
    spots : (n, box, box) photons or None
        The boxes of the localizations from :func:`cut_boxes`; required for ``options.method == "mle"``,
        which otherwise falls back to ``"huang"``.
    image_shape : (height, width) or None
        Frame size, to place boxes as :func:`cut_boxes` does near the edges.

    ``z`` and ``lpz`` are in nm (times the magnification factor), ``d_zcalib`` is sqrt(D) (sqrt(pixels)).
    Rows that fail the policy of ``options`` are removed; ``kept`` marks them in the input.
    """
    options = options or ZFitOptions()
    options.validate()
    lo, hi = cal.z_range
    flo, fhi = fit_range(cal, options.extrapolation)
    M = cal.magnification_factor
    sx = np.asarray(locs["sx"], float)
    sy = np.asarray(locs["sy"], float)
    z_cal, D = fit_z_huang(sx, sy, cal.x_coefficients, cal.y_coefficients, flo, fhi)
    names = locs.dtype.names
    se_x = width_se_nm(sx, locs["photons"], locs["bg"], pixelsize, sy,
                       locs["sx_unc"] if "sx_unc" in names else None, "mle" if fit_method == "mle" else "lq")
    se_y = width_se_nm(sy, locs["photons"], locs["bg"], pixelsize, sx,
                       locs["sy_unc"] if "sy_unc" in names else None, "mle" if fit_method == "mle" else "lq")
    lpz = axial_precision(z_cal, sx, sy, se_x, se_y, cal, pixelsize)
    mle = options.method == "mle" and spots is not None
    out = with_z_fields(locs, gof=mle)
    if mle and len(locs):
        box = spots.shape[-1]
        r = box // 2
        h_img, w_img = (int(v) for v in image_shape) if image_shape is not None else (10**9, 10**9)
        bx = np.clip(np.rint(locs["x"]), r, w_img - 1 - r)
        by = np.clip(np.rint(locs["y"]), r, h_img - 1 - r)
        x0 = np.asarray(locs["x"], float) - bx + r
        y0 = np.asarray(locs["y"], float) - by + r
        extra = None
        if options.neighbours:
            extra = neighbour_light(locs["frame"], locs["x"], locs["y"], locs["photons"], sx, sy, bx, by, box)
        theta, crlb, conv, gof = fit_z_mle(spots, x0, y0, locs["photons"], locs["bg"], z_cal, cal,
                                            z_bounds=(flo, fhi), extra=extra)
        good = conv & np.isfinite(theta[:, 4]) & np.isfinite(crlb[:, 4]) & (crlb[:, 4] > 0)
        out["z_gof"] = gof  # NaN (row dropped below) where the model could not be evaluated at all
        z_cal = np.where(good, theta[:, 4], z_cal)
        lpz = np.where(good, M * np.sqrt(np.where(good, crlb[:, 4], 1.0)), lpz)
        D = np.where(good, _d_at(sx, sy, cal, z_cal), D)
        out["x"] = np.where(good, theta[:, 0] - r + bx, out["x"])
        out["y"] = np.where(good, theta[:, 1] - r + by, out["y"])
    out["z"] = z_cal * M
    out["d_zcalib"] = np.sqrt(D)
    out["lpz"] = lpz
    keep = np.isfinite(out["z"]) & np.isfinite(out["d_zcalib"]) & np.isfinite(out["lpz"])
    if mle:
        keep &= np.isfinite(out["z_gof"])
    # a fit on the bound of the search reports the bound, not a height
    edge = 1e-6 * (hi - lo)
    if options.extrapolation > 0:
        keep &= (z_cal > flo + edge) & (z_cal < fhi - edge)
    if options.drop_out_of_range:
        keep &= (z_cal > lo + edge) & (z_cal < hi - edge)
    if options.max_gof > 0 and mle:
        keep &= out["z_gof"] <= options.max_gof
    if options.filter > 0 and keep.any():
        rms = math.sqrt(float(np.mean(out["d_zcalib"][keep].astype(float) ** 2)))
        keep &= out["d_zcalib"] <= options.filter * rms
    return out[keep], keep


def _d_at(sx, sy, cal, z):
    wx, wy = cal.widths(z)
    with np.errstate(invalid="ignore"):
        return (np.sqrt(sx) - np.sqrt(wx)) ** 2 + (np.sqrt(sy) - np.sqrt(wy)) ** 2


def z_document(cal: ZCalibration, options: ZFitOptions, generated_by: str, calibration_path=None) -> dict:
    """The 3D document of ``_locs.yaml``: Picasso's keys plus the calibration and our z-fit policy."""
    doc = {
        "Generated by": f"{generated_by} Fit 3D",
        "Calibration path": None if calibration_path is None else str(calibration_path),
        "Z Calibration Path": None if calibration_path is None else str(calibration_path),
        "Filter range": float(options.filter),
        "Z fit method": {"mle": "astigmatic PSF maximum likelihood", "huang": "Huang D minimisation"}[
            options.method],
        "Z drop out of calibrated range": bool(options.drop_out_of_range),
        "Z calibrated range in nm": [float(v) for v in cal.z_range],
        "Z extrapolation": float(options.extrapolation),
        "Z fit range in nm": [float(v) for v in fit_range(cal, options.extrapolation)],
        "Z drop fits at the fit range bound": bool(options.extrapolation > 0),
    }
    if options.method == "mle":
        doc["Z fit box size"] = int(options.box_size) if options.box_size else f"2D box + {2 * Z_BOX_MARGIN}"
        doc["Z fit models neighbours"] = bool(options.neighbours)
        doc["Z max goodness of fit (z_gof)"] = float(options.max_gof)
    doc.update(cal.as_picasso_dict())
    doc["Magnification Factor"] = float(cal.magnification_factor)
    return doc


def cut_boxes(frames, locs, first_frame: int, box_size: int, baseline: float, sensitivity: float,
              em_gain: float):
    """Photon boxes centred on ``round(x), round(y)`` of each localization (clipped inside the frame).

    ``frames`` hold the movie frames ``first_frame ..``; this is what :func:`fit_z` expects as ``spots``.
    """
    from .camera import adu_to_photons
    from .spots import cut_spots

    frames = np.asarray(frames)
    _, height, width = frames.shape
    r = box_size // 2
    cx = np.clip(np.rint(locs["x"]).astype(np.int64), r, width - 1 - r)
    cy = np.clip(np.rint(locs["y"]).astype(np.int64), r, height - 1 - r)
    spots = cut_spots(frames, np.asarray(locs["frame"], np.int64) - first_frame, cy, cx, box_size)
    return adu_to_photons(spots, baseline, sensitivity, em_gain)
