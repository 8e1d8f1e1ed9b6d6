"""One parameter object for the Python API, the CLI and the napari widgets.

Every field carries its unit in its name or its docstring. The same object is written into ``_locs.yaml``
with Picasso's key spelling (see :func:`identify_document` and :func:`fit_document`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

FIT_METHODS = ("mle", "lq", "avg")
#: Picasso's API names of the fit methods, written as ``Fit method`` into ``_locs.yaml``.
PICASSO_FIT_METHOD = {"mle": "gaussmle", "lq": "gausslq", "avg": "avg"}


from .errors import ParameterError  # noqa: F401, E402  (defined with the project's other error types)


@dataclass
class LocalizeParameters:
    """Everything that decides what a localization run produces.

    Attributes
    ----------
    box_size : int
        Side length of the square box (pixels) used for the local-maximum test, the net gradient and the fit.
        Must be odd. Picasso's rule of thumb: ``round(6 * sigma_psf + 1)``.
    min_net_gradient : float
        Keep a candidate only if its net gradient (camera counts, ADU) is strictly greater than this.
        Same definition as Picasso, so thresholds carry over.
    roi : tuple of 4 ints or None
        ``(y0, x0, y1, x1)`` in pixels, half-open: a spot is kept if its centre pixel lies in
        ``y0 <= y < y1`` and ``x0 <= x < x1``. ``None`` is the whole frame.
    frame_range : tuple of 2 ints or None
        ``(first, last)``, 0-based and inclusive, as Picasso's frame bounds. ``None`` is the whole movie.
    fit_method : str
        ``"mle"`` (Poisson maximum likelihood, integrated Gaussian), ``"lq"`` (least squares, integrated
        Gaussian) or ``"avg"`` (background-corrected sum of the box).
    baseline : float
        Camera offset in ADU, subtracted before photon conversion.
    sensitivity : float
        Electrons per ADU (e-/ADU), also called conversion factor.
    em_gain : float
        Electron-multiplying gain (1 for sCMOS and conventional CCD).
    qe : float
        Quantum efficiency; recorded in ``_locs.yaml`` but not used, as in Picasso since 0.6.
    pixelsize : float
        Camera pixel size in the sample plane, nm. Recorded for downstream tools.
    convergence : float
        MLE and LQ stop when every position step is below this (pixels) and the relative change of
        photons, background and widths is below it too.
    max_iterations : int
        Iteration limit of the MLE and LQ fits; a fit that reaches it is reported as not converged.
    camera : str or None
        Name of the camera the photon parameters came from (recorded only).
    max_emitters : int
        MLE and LQ: most emitters fitted together in one box (1 .. 5). With more than 1 (the default, 5),
        neighbours are fitted jointly or as fixed light and further emitters are found in the fit residual and
        kept by a likelihood-ratio test (``docs/algorithms.md``); 1 fits one emitter per identified box, as
        Picasso does.
    rois : tuple of ROIs or None
        More ROIs ``(y0, x0, y1, x1)`` after ``roi`` (Picasso 0.11's repeated ``--roi``): overlaps are clipped,
        earlier ROIs first (:func:`~napari_localize.core.regions.clip_rois`); identification sees a padded crop
        so spots at ROI borders are kept.
    frame_segments : tuple of (first, last) or None
        Frame segments, 0-based inclusive (repeated ``--frames``); merged where they overlap. With
        ``frame_range`` also set, only frames in both are processed (a Dask block restricts a run this way).
    temporal_median : int
        Prefilter for identification only: subtract the rolling per-pixel median of this many frames
        (0: off); see :mod:`~napari_localize.core.prefilter`. Fitting always sees the raw movie.
    gaussian_filter : float
        Prefilter for identification only: Gaussian smoothing of this standard deviation in pixels (0: off).
    """

    box_size: int = 7
    min_net_gradient: float = 5000.0
    roi: tuple[int, int, int, int] | None = None
    frame_range: tuple[int, int] | None = None
    fit_method: str = "mle"
    baseline: float = 0.0
    sensitivity: float = 1.0
    em_gain: float = 1.0
    qe: float = 1.0
    pixelsize: float = 130.0
    convergence: float = 0.001
    max_iterations: int = 100
    camera: str | None = None
    max_emitters: int = 5
    rois: tuple | None = None
    frame_segments: tuple | None = None
    temporal_median: int = 0
    gaussian_filter: float = 0.0

    def region_list(self) -> list | None:
        """All ROIs (``roi`` then ``rois``) clipped into disjoint rectangles; ``None`` for the whole frame."""
        from .regions import clip_rois

        rois = ([self.roi] if self.roi is not None else []) + list(self.rois or ())
        return clip_rois(rois) if rois else None

    def prefilter(self):
        """The identification prefilter (:class:`~napari_localize.core.prefilter.Prefilter`)."""
        from .prefilter import Prefilter

        return Prefilter(temporal_median=int(self.temporal_median), gaussian_sigma=float(self.gaussian_filter))

    def frame_spans(self, n_frames: int) -> list[tuple[int, int]]:
        """Half-open ``[start, stop)`` frame intervals to process, in order (segments within the range)."""
        from .regions import merge_segments

        if self.frame_segments:
            spans = [(a, b + 1) for a, b in merge_segments(self.frame_segments, n_frames)]
        else:
            spans = [(0, n_frames)]
        if self.frame_range is not None:
            lo, hi = self.frame_range[0], min(self.frame_range[1] + 1, n_frames)
            spans = [(max(a, lo), min(b, hi)) for a, b in spans]
        return [(a, b) for a, b in spans if b > a]

    def replace(self, **changes) -> LocalizeParameters:
        return dataclasses.replace(self, **changes)

    def validate(self, n_frames: int | None = None, height: int | None = None, width: int | None = None):
        """Raise :class:`ParameterError` with an actionable message if a value cannot work."""
        b = self.box_size = _integer("box size", self.box_size, 3, "an odd integer >= 3 (pixels), e.g. 7")
        if b % 2 == 0:
            raise _error("box size", f"box size must be odd so that the box has a centre pixel, got {b}; use "
                                     f"{b - 1} or {b + 1}")
        if self.fit_method not in FIT_METHODS:
            raise ParameterError(f"fit method must be one of {', '.join(FIT_METHODS)}, got {self.fit_method!r}")
        self.min_net_gradient = _real("minimum net gradient", self.min_net_gradient, ">= 0 (camera counts)",
                                      lo=0.0)
        self.baseline = _real("baseline", self.baseline, "a finite number of camera counts (ADU)")
        self.sensitivity = _real("sensitivity", self.sensitivity, "> 0 (electrons per ADU)", lo=0.0, lo_open=True)
        self.em_gain = _real("EM gain", self.em_gain, ">= 1 (1 for sCMOS/CCD)", lo=1.0)
        self.qe = _real("quantum efficiency", self.qe, "in (0, 1]", lo=0.0, lo_open=True, hi=1.0)
        self.pixelsize = _real("pixel size", self.pixelsize, "> 0 (nm)", lo=0.0, lo_open=True)
        self.convergence = _real("convergence", self.convergence, "> 0 (pixels), e.g. 0.001", lo=0.0,
                                 lo_open=True)
        self.max_iterations = _integer("max iterations", self.max_iterations, 1, "an integer >= 1, e.g. 100")
        if self.roi is not None:
            try:
                roi = tuple(self.roi)
            except TypeError:
                roi = ()
            if len(roi) != 4:
                raise ParameterError(f"ROI must be 4 integers (y0 x0 y1 x1) in pixels, got {self.roi!r}")
            self.roi = tuple(_integer("ROI " + n, v, 0, "an integer pixel index >= 0")
                             for n, v in zip(("y0", "x0", "y1", "x1"), roi))
        if self.frame_range is not None:
            try:
                fr = tuple(self.frame_range)
            except TypeError:
                fr = ()
            if len(fr) != 2:
                raise ParameterError(f"frame range must be 2 integers (first last), got {self.frame_range!r}")
            self.frame_range = tuple(_integer("frame range " + n, v, None, "an integer frame number")
                                     for n, v in zip(("first", "last"), fr))
        from .engine import MAX_EMITTERS

        self.max_emitters = _integer("max emitters", self.max_emitters, 1,
                                     f"an integer from 1 (one emitter per box, Picasso's behaviour) to {MAX_EMITTERS}")
        if self.max_emitters > MAX_EMITTERS:
            raise _error("max emitters", f"max emitters per box must be an integer from 1 (one emitter per box, "
                                         f"Picasso's behaviour) to {MAX_EMITTERS}, got {self.max_emitters}")
        if height is not None and width is not None:
            if height < b or width < b:
                raise ParameterError(f"frames of {height}x{width} px are smaller than the box size {b}")
            if self.roi is not None:
                y0, x0, y1, x1 = self.roi
                if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
                    raise ParameterError(
                        f"ROI (y0 x0 y1 x1) = {y0} {x0} {y1} {x1} is not inside the {height}x{width} px frame; "
                        f"use 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}"
                    )
            if self.rois:
                from .regions import RegionError, check_rois

                try:
                    check_rois(([self.roi] if self.roi is not None else []) + list(self.rois), height, width)
                except RegionError as exc:
                    raise ParameterError(str(exc)) from None
        from .prefilter import PrefilterError

        try:
            self.prefilter().validate()
        except PrefilterError as exc:
            raise ParameterError(str(exc)) from None
        if n_frames is not None:
            if n_frames < 1:
                raise ParameterError("the movie has no frames")
            if self.frame_range is not None:
                first, last = self.frame_range
                if not (0 <= first <= last):
                    raise ParameterError(f"frame range {first} {last} must satisfy 0 <= first <= last")
                if first >= n_frames:
                    raise ParameterError(
                        f"frame range starts at {first} but the movie has only {n_frames} frames (0-based)"
                    )
            if self.frame_segments:
                from .regions import RegionError

                try:
                    spans = self.frame_spans(n_frames)
                except RegionError as exc:
                    raise ParameterError(str(exc)) from None
                if not spans:
                    raise ParameterError("the frame segments and the frame range have no frame in common")

    def frame_span(self, n_frames: int) -> tuple[int, int]:
        """The half-open frame interval ``[start, stop)`` holding every frame to process (with segments: from
        the first segment's start to the last one's end; :meth:`frame_spans` gives the segments)."""
        if self.frame_segments:
            spans = self.frame_spans(n_frames)
            return (spans[0][0], spans[-1][1]) if spans else (0, 0)
        if self.frame_range is None:
            return 0, n_frames
        first, last = self.frame_range
        return first, min(last + 1, n_frames)


def _real(name, value, valid: str, lo=None, hi=None, lo_open=False) -> float:
    """``value`` as a finite float within the bounds, or a ParameterError naming it and the valid range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(name, f"{name} must be a number, {valid}; got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or \
            (hi is not None and v > hi):
        raise _error(name, f"{name} must be {valid}; got {value!r}")
    return v


def _error(name, message) -> ParameterError:
    exc = ParameterError(message)
    exc.parameter = name  # which value: the CLI names its flag
    return exc


def _integer(name, value, lo, valid: str) -> int:
    """``value`` as an int (integral floats such as 7.0 accepted), or a ParameterError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(name, f"{name} must be {valid}; got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise _error(name, f"{name} must be {valid}; got {value!r}")
    v = int(value)
    if lo is not None and v < lo:
        raise _error(name, f"{name} must be {valid}; got {value!r}")
    return v


def identify_document(p: LocalizeParameters, generated_by: str) -> dict:
    """The identification document of ``_locs.yaml``, with Picasso's keys."""
    from .regions import roi_metadata, segments_metadata

    roi = roi_metadata(p.region_list() or [])
    if p.frame_segments:
        frames = segments_metadata(sorted((int(a), int(b)) for a, b in p.frame_segments))
        if p.frame_range is not None:
            frames = {"Segments": frames, "Within": [int(p.frame_range[0]), int(p.frame_range[1])]}
    else:
        frames = None if p.frame_range is None else [int(p.frame_range[0]), int(p.frame_range[1])]
    doc = {
        "Generated by": f"{generated_by} Identify",
        "Box Size": int(p.box_size),
        "Min. Net Gradient": float(p.min_net_gradient),
        "ROI": roi,
        "Frame Bounds": frames,
    }
    if p.temporal_median or p.gaussian_filter:
        doc.update(p.prefilter().document())
    return doc


def fit_document(p: LocalizeParameters, generated_by: str) -> dict:
    """The fit document of ``_locs.yaml``, with Picasso's keys plus ours."""
    doc = {
        "Generated by": f"{generated_by} Fit 2D",
        "Fit method": PICASSO_FIT_METHOD[p.fit_method],
        "Baseline": float(p.baseline),
        "Sensitivity": float(p.sensitivity),
        "Gain": float(p.em_gain),
        "Qe": float(p.qe),
        "Pixelsize": float(p.pixelsize),
        "Camera": p.camera if p.camera else "None",
    }
    if p.fit_method in ("mle", "lq"):
        doc["Convergence criterion"] = float(p.convergence)
        doc["Max iterations"] = int(p.max_iterations)
        doc["PSF model"] = "pixel-integrated Gaussian, free sx and sy"
        doc["Max emitters per box"] = int(p.max_emitters)
        if p.max_emitters > 1:
            from .crowded import CrowdedOptions

            o = CrowdedOptions(max_emitters=p.max_emitters)
            doc["Multi-emitter fit"] = {
                "Rounds of residual re-identification": int(o.rounds),
                "Candidate significance (sd)": float(o.candidate_z),
                "Min. 2 log-likelihood ratio": float(o.llr_threshold),
                "Joint fit within (PSF widths)": float(o.join_sigmas),
            }
    if p.fit_method == "avg":
        doc["PSF model"] = "none: box sum minus border background"
    return doc
