"""Astigmatic z calibration from bead z-stacks (Huang et al., Science 319, 810 (2008)).

With a cylindrical lens a spot's widths ``sx`` and ``sy`` (pixels) depend on its height z. A calibration maps
the height (nm, "calibration space", i.e. the stage position of a bead z-stack) to widths with two degree-6
polynomials ``wx(z)``, ``wy(z)`` (numpy order: highest power first), recentred so the curves cross at z = 0.
The stage position of frame f of F is ``-(f*step - (F-1)*step/2)``. The fit range is the calibrated range
extended by a bounded extrapolation (:func:`fit_range`). The z fits are in :mod:`.zmodel`, the policy (options,
filters, the 3D document) in :mod:`.zpolicy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

POLY_DEGREE = 6
DEFAULT_MAGNIFICATION = 0.79
#: how far past each end of the calibrated range z is searched, as a fraction of the calibrated range
DEFAULT_EXTRAPOLATION = 0.25
#: narrowest width (pixels) an extrapolated calibration may reach
_MIN_WIDTH = 0.3

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
        z = stage_positions(int(self.n_frames), self.step_nm)
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
        return cls(d["X Coefficients"], d["Y Coefficients"], int(d["Number of frames"]),
                   float(d["Step size in nm"]), float(m), None if fb is None else (int(fb[0]), int(fb[1])),
                   d.get("Path"))


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
    from .zmodel import fit_z_huang

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
    from .zmodel import fit_z_huang

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
