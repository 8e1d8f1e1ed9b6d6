"""The z policy: how z is fitted (:class:`ZFitOptions`), which localizations are kept, the 3D fields and the
3D document of ``_locs.yaml``; one policy for the CLI, the API, the widgets and Dask.

In both methods z (nm) = z_calibration * magnification factor (refractive-index mismatch), ``d_zcalib =
sqrt(D)`` and ``lpz`` is the axial precision (nm). Fits that end on the bound of the fit range are dropped;
``drop_out_of_range`` also drops every extrapolated height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .locs import Z_FIELDS
from .zcalib import DEFAULT_EXTRAPOLATION, ZCalibration, fit_range
from .zmodel import _d_at, axial_precision, fit_z_huang, fit_z_mle, neighbour_light, width_se_nm

#: the z fitting methods
Z_METHODS = ("mle", "huang")
#: the z MLE's box extends the 2D box by this many pixels on each side by default (see ZFitOptions.box_size)
Z_BOX_MARGIN = 2


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
    crowded : bool or None
        With ``max_emitters > 1``: look for the spots identification missed in the residual of the 3D fits
        and fit them with everyone's light (:mod:`.crowded_z`). None (default): on for a spline PSF, off for
        the astigmatic polynomial, whose Gaussian model's shape error on a real PSF made false emitters
        (``benchmarks/RESULTS.md``); True/False: on/off for both.
    """

    method: str = "mle"
    filter: float = 0.0
    drop_out_of_range: bool = False
    extrapolation: float = DEFAULT_EXTRAPOLATION
    box_size: int = 0
    neighbours: bool = True
    max_gof: float = 0.0
    crowded: bool | None = None

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
          spots=None, image_shape=None, convergence: float = 1e-3, max_iterations: int = 100,
          device: str = "cpu", variance=None):
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
    convergence, max_iterations, device
        The engine's convergence tolerance, iteration limit and device for the z MLE (the 2D fit's).
    variance : (n, box, box) or None
        Per-pixel readout variance (photons², sCMOS) of ``spots`` (:func:`cut_boxes_scmos`): the z MLE then
        uses the sCMOS likelihood of Huang et al. 2013.

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
                                            z_bounds=(flo, fhi), extra=extra, eps=convergence,
                                            max_iterations=max_iterations, device=device, variance=variance)
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

    spots, _, _ = _cut_counts(frames, locs, first_frame, box_size)
    return adu_to_photons(spots, baseline, sensitivity, em_gain)


def cut_boxes_scmos(frames, locs, first_frame: int, box_size: int, camera):
    """:func:`cut_boxes` with per-pixel sCMOS ``camera`` maps (:class:`~napari_localize.core.camera.CameraMaps`):
    ``(photons, variance)``, each pixel converted with its own offset and sensitivity, and the boxes of its
    readout variance (photons²) for :func:`fit_z`."""
    spots, cy, cx = _cut_counts(frames, locs, first_frame, box_size)
    return camera.boxes_to_photons(spots, cy, cx)


def counts_to_photons(counts, cy, cx, p, camera=None):
    """Boxes of camera counts centred on rows ``cy``, columns ``cx`` in photons, and their readout-variance
    boxes: ``(photons, variance)``, with ``p``'s baseline, sensitivity and EM gain (variance None) or, with
    per-pixel sCMOS ``camera`` maps, pixel by pixel."""
    from .camera import adu_to_photons

    if camera is None:
        return adu_to_photons(counts, p.baseline, p.sensitivity, p.em_gain), None
    return camera.boxes_to_photons(counts, np.asarray(cy, np.int64), np.asarray(cx, np.int64))


def photon_boxes(frames, locs, first_frame: int, box_size: int, p, camera=None):
    """The z fit's boxes of ``locs``: ``(photons, variance)`` (:func:`counts_to_photons`)."""
    counts, cy, cx = _cut_counts(frames, locs, first_frame, box_size)
    return counts_to_photons(counts, cy, cx, p, camera)


def _cut_counts(frames, locs, first_frame, box_size):
    from .spots import cut_spots

    frames = np.asarray(frames)
    _, height, width = frames.shape
    r = box_size // 2
    cx = np.clip(np.rint(locs["x"]).astype(np.int64), r, width - 1 - r)
    cy = np.clip(np.rint(locs["y"]).astype(np.int64), r, height - 1 - r)
    return cut_spots(frames, np.asarray(locs["frame"], np.int64) - first_frame, cy, cx, box_size), cy, cx
