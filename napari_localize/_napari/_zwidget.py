"""The 3D dock widget: load or make a z calibration (astigmatic polynomials or an experimental spline PSF),
and switch the Localize run to 3D.

A calibration comes from a file (a YAML of polynomials or a spline ``.hdf5``, ours or Picasso's) or from the
bead z-stack open in the viewer (the session's movie layer), calibrated in a thread worker with the session's
identification, camera and fit parameters, exactly as ``napari-localize calibrate-z --model poly|spline``
does (same API, same files + PNG beside the stack). **Show PSF** adds the spline model as an image layer
(z, y, x). With **Fit z** on, the Localize panel's run fits z too and writes the 3D ``_locs.hdf5``; with a
spline calibration the run fits the spline PSF in boxes of the calibration's size (the Identification
panel's box is set to it). The widget only edits the shared :class:`~._state.LocalizeSession`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.spline import SplinePSF
from ..core.zfit import DEFAULT_MAGNIFICATION, ZFitOptions
from ..io.calibration import load_calibration
from ..io.spline_calibration import is_spline_calibration_path, load_spline_calibration
from ._state import session_for
from ._worker import CancellableRun, Cancelled, calibrate_spline_steps, calibrate_steps, start_localize

MODEL_CHOICES = [("polynomial widths (astigmatism)", "poly"), ("spline PSF (experimental)", "spline")]

Z_METHOD_CHOICES = [("MLE, astigmatic PSF", "mle"), ("Huang, from the widths (as Picasso)", "huang")]
#: the stage step (nm) a movie's metadata may carry (the simulated bead stack does)
STEP_KEY = "Step size in nm"


def describe_calibration(cal, path: str | None) -> str:
    """One paragraph about ``cal``: calibrated height range (nm), factor, source, positions and beads."""
    if isinstance(cal, SplinePSF):
        return describe_spline(cal, path)
    lo, hi = cal.z_range
    m = cal.magnification_factor
    lines = [f"calibrated z: {lo * m:.0f} .. {hi * m:.0f} nm (x magnification factor {m:g}); "
             f"{cal.n_frames} frames, step {cal.step_nm:g} nm"]
    d = cal.diagnostics or {}
    if d:
        used = d.get("used")
        count = d.get("count")
        if used is not None and count is not None:
            n_used = int(sum(bool(u) for u in used))
            n_filled = int(sum(1 for u, c in zip(used, count, strict=True) if u and c > 0))
            lines.append(f"{n_filled} of {n_used} positions with spots")
        offsets = d.get("bead_offsets_nm")
        if offsets is not None:
            lines.append(f"{len(offsets)} beads followed")
        precision = d.get("z_precision_nm")
        if precision is not None and math.isfinite(precision):
            lines.append(f"calibration z precision {precision:.1f} nm (RMSE of its own spots)")
    lines.append(f"source: {path}" if path else "source: in memory only (not written: the stack has no file)")
    return "\n".join(lines)


def describe_spline(psf: SplinePSF, path: str | None) -> str:
    lines = []
    if psf.is_3d:
        lo, hi = psf.z_range
        lines.append(f"spline PSF ({psf.source}): z {lo:.0f} .. {hi:.0f} nm (x magnification factor "
                     f"{psf.magnification_factor:g}), {psf.n_nodes[0]} slices")
    else:
        lines.append(f"2D spline PSF ({psf.source}), in focus")
    lines.append(f"fit box {psf.box} px, grid {psf.grid_px} px, pixel {psf.pixelsize:g} nm")
    d = psf.diagnostics or {}
    if "good" in d:
        lines.append(f"{int(sum(d['good']))} of {len(d['good'])} beads averaged")
    precision = d.get("z_precision_nm")
    if precision is not None and math.isfinite(precision):
        lines.append(f"calibration z precision {precision:.1f} nm (its own bead slices)")
    lines += [f"note: {n}" for n in psf.notices]
    lines.append(f"source: {path}" if path else "source: in memory only (not written: the stack has no file)")
    return "\n".join(lines)


class ZWidget(CancellableRun, Container):
    """3D (astigmatism): calibration file or calibration from the open bead stack; Fit z and its options."""

    run_button_idle = ("calibrate_button", "Calibrate from open stack")

    title = "3D (astigmatism)"

    #: frames per chunk of a calibration run (None: from the frame size)
    chunk_frames = None

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        opts = self.session.z_options
        # --- calibration
        self.model = ComboBox(label="PSF model", choices=MODEL_CHOICES, value="poly",
                              tooltip="polynomial: Gaussian widths sx(z), sy(z) (Huang 2008); spline: the beads' "
                                      "averaged PSF as a cubic spline (aberrated optics). Loading a file sets it")
        self.calibration_file = FileEdit(label="calibration file", mode="r", filter="*.yaml *.yml *.hdf5 *.h5",
                                         tooltip="an astigmatic calibration YAML or a spline calibration .hdf5 "
                                                 "(ours or Picasso's)")
        self.magnification = FloatSpinBox(label="magnification factor", value=DEFAULT_MAGNIFICATION, min=0.01,
                                          max=10, step=0.01,
                                          tooltip="actual / calibration height (refractive-index mismatch): "
                                                  "0.79 for an oil objective imaging in water. Loading a file "
                                                  "shows its stored factor; a change here applies to the "
                                                  "loaded calibration and to the next calibration")
        self.load_button = PushButton(text="Load calibration")
        self.show_psf_button = PushButton(text="Show PSF model",
                                          tooltip="add the spline PSF model as an image layer (z, y, x)")
        self.summary = Label(label="", value="no calibration")
        # --- calibrate from the open stack
        self.stack = Label(label="bead stack", value="")
        self.step_nm = FloatSpinBox(label="step (nm)", value=10.0, min=0.01, max=10000, step=1,
                                    tooltip="stage step between frames of the bead z-stack, nm")
        self.follow_beads = CheckBox(label="follow beads", value=True,
                                     tooltip="fit every bead in a fixed box through the stack and remove each "
                                             "bead's height offset; off: pool all spots per frame as Picasso")
        self.calibrate_button = PushButton(text="Calibrate from open stack",
                                           tooltip="calibrate on the movie chosen in the Identification panel "
                                                   "with its box, net gradient, camera and fit settings; its "
                                                   "frame range (if set) gives the frame bounds")
        # --- z fit
        self.fit_z = CheckBox(label="Fit z", value=False, tooltip="the Localize run also fits z (needs a "
                                                                   "calibration)")
        self.z_method = ComboBox(label="z method", choices=Z_METHOD_CHOICES, value=opts.method,
                                 tooltip="MLE: Poisson maximum likelihood of x, y, z, photons, bg with the "
                                         "calibrated astigmatic PSF; Huang: z from the fitted widths")
        self.z_filter = FloatSpinBox(label="outlier filter", value=opts.filter, min=0, max=100, step=0.5,
                                     tooltip="drop localizations with d_zcalib > this x RMS(d_zcalib); 0 keeps "
                                             "all")
        self.extrapolation = FloatSpinBox(label="extrapolation", value=opts.extrapolation, min=0, max=1,
                                          step=0.05, tooltip="search z up to this fraction of the calibrated "
                                                             "range past each end")
        self.drop_out_of_range = CheckBox(label="drop out of range", value=opts.drop_out_of_range,
                                          tooltip="drop localizations whose z lies beyond the calibrated range")
        self.z_box_size = SpinBox(label="z box (px)", value=opts.box_size, min=0, max=41, step=1,
                                  tooltip="MLE: odd box the astigmatic PSF is fitted in; 0: the 2D box + 4")
        self.neighbours = CheckBox(label="model neighbours", value=opts.neighbours,
                                   tooltip="MLE: add the light of the frame's other localizations to the model")
        self.max_gof = FloatSpinBox(label="max z_gof", value=opts.max_gof, min=0, max=1000, step=0.5,
                                    tooltip="MLE: drop localizations whose goodness of fit z_gof (about N(0,1) "
                                            "for one clean spot) exceeds this; 0 keeps all")
        self.status = Label(label="", value="")
        for label in (self.summary, self.status, self.stack):
            label.native.setWordWrap(True)
        self.extend([self.model, self.calibration_file, self.magnification, self.load_button,
                     self.show_psf_button, self.summary, self.stack,
                     self.step_nm, self.follow_beads, self.calibrate_button, self.fit_z, self.z_method,
                     self.z_filter, self.extrapolation, self.drop_out_of_range, self.z_box_size,
                     self.neighbours, self.max_gof, self.status])

        self.worker = None
        self._cancel = None
        self._pbar = None
        self.progress_values: list[tuple[int, int]] = []
        self.load_button.changed.connect(lambda *_: self.load())
        self.show_psf_button.changed.connect(lambda *_: self.show_psf())
        self.model.changed.connect(lambda *_: self._enable_options())
        self.calibrate_button.changed.connect(lambda *_: self._run_or_cancel(self.calibrate))
        self.magnification.changed.connect(self._on_magnification)
        self.fit_z.changed.connect(self._on_fit_z)
        for w in self._option_widgets():
            w.changed.connect(self._on_options)
        self.session.movie_changed.connect(self._on_movie)
        self.session.zcalibration_changed.connect(self._show_calibration)
        self.native.destroyed.connect(self._disconnect)
        self._on_movie(self.session.movie_layer)
        self._show_calibration(self.session.zcalibration)

    def _disconnect(self, *_):
        self.session.movie_changed.disconnect(self._on_movie)
        self.session.zcalibration_changed.disconnect(self._show_calibration)

    # -- calibration file ---------------------------------------------------------------------
    def load(self, path=None) -> bool:
        """Load the calibration YAML ``path`` (default: the file field); report errors in the status."""
        path = os.fspath(path if path is not None else self.calibration_file.value)
        if not path or path == "." or os.path.isdir(path):
            self._fail("choose a calibration file (YAML or spline .hdf5) first")
            return False
        if is_spline_calibration_path(path):
            return self._load_spline(path)
        try:
            try:
                cal = load_calibration(path)
                note = ""
            except ValueError as exc:
                if "Magnification factor" not in str(exc):
                    raise
                cal = load_calibration(path, float(self.magnification.value))  # an old calibration
                note = f"; the file stores no magnification factor: using {self.magnification.value:g}"
        except (ValueError, OSError) as exc:
            self._fail(f"calibration not loaded: {exc}")
            return False
        path = os.path.abspath(path)
        with self.magnification.changed.blocked():
            self.magnification.value = float(cal.magnification_factor)
        with self.model.changed.blocked():
            self.model.value = "poly"
        self.session.set_zcalibration(cal, path)
        self.status.value = f"loaded {os.path.basename(path)}{note}"
        return True

    def _load_spline(self, path) -> bool:
        try:
            psf = load_spline_calibration(path)
        except (ValueError, OSError) as exc:
            self._fail(f"calibration not loaded: {exc}")
            return False
        with self.model.changed.blocked():
            self.model.value = "spline"
        self._use_spline(psf, os.path.abspath(path))
        self.status.value = f"loaded {os.path.basename(path)} ({psf.source} spline PSF)"
        return True

    def _use_spline(self, psf: SplinePSF, path):
        with self.magnification.changed.blocked():
            self.magnification.value = float(psf.magnification_factor)
        if self.session.parameters.box_size != psf.box:
            # the spline run fits in the calibration's box: the Identification panel follows
            self.session.update(box_size=int(psf.box))
        self.session.set_zcalibration(psf, path)

    def show_psf(self):
        """Add the spline model (centred emitter, every calibrated height) as an image layer; return it."""
        psf = self.session.zcalibration
        if not isinstance(psf, SplinePSF):
            self._fail("load or calibrate a spline PSF first")
            return None
        if psf.is_3d:
            lo, hi = psf.z_range
            zs = np.arange(lo, hi + 1e-9, abs(psf.z_step))
            data = psf.stack(zs, psf.grid_px - (1 - psf.grid_px % 2))
            scale = (abs(psf.z_step), psf.pixelsize, psf.pixelsize)
            translate = (float(zs[0]), 0.0, 0.0)
        else:
            data = psf.patch((psf.grid_px - 1) / 2.0, (psf.grid_px - 1) / 2.0, 0.0, psf.grid_px, psf.grid_px)
            scale = (psf.pixelsize, psf.pixelsize)
            translate = (0.0, 0.0)
        name = "spline PSF model"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_image(data, name=name, colormap="magma", scale=scale, translate=translate,
                                      metadata={"spline_calibration": self.session.zcalibration_path})
        self.status.value = ("PSF model shown: photons share per pixel of a centred emitter; the first axis is "
                             "z in nm" if psf.is_3d else "PSF model shown (2D)")
        return layer

    def _on_magnification(self, value):
        cal = self.session.zcalibration
        if isinstance(cal, SplinePSF):
            if cal.magnification_factor != float(value):
                self.session.set_zcalibration(cal.with_magnification(float(value)), self.session.zcalibration_path)
            return
        if cal is not None and cal.magnification_factor != float(value):
            self.session.set_zcalibration(dataclasses.replace(cal, magnification_factor=float(value)),
                                          self.session.zcalibration_path)

    def _show_calibration(self, cal):
        has = cal is not None
        self.summary.value = describe_calibration(cal, self.session.zcalibration_path) if has else "no calibration"
        self.fit_z.enabled = has
        self.show_psf_button.enabled = isinstance(cal, SplinePSF)
        with self.fit_z.changed.blocked():
            self.fit_z.value = has and self.session.fit_z
        if has:
            with self.magnification.changed.blocked():
                self.magnification.value = float(cal.magnification_factor)
        self._enable_options()

    # -- calibrate from the open stack -------------------------------------------------------
    def _on_movie(self, layer):
        if layer is None:
            self.stack.value = "none: choose the bead stack in the Identification panel"
            return
        self.stack.value = layer.name
        info = (layer.metadata or {}).get("movie_info") or {}
        step = info.get(STEP_KEY)
        if step:
            with contextlib.suppress(TypeError, ValueError):
                self.step_nm.value = float(step)

    def calibrate(self):
        """Calibrate on the session's movie layer (a bead z-stack) in a thread worker; return the worker."""
        if self.running:
            return None
        movie, owned = self.session.movie_for_run()
        if movie is None:
            show_warning("napari-localize: open a bead z-stack (an image layer) first")
            self.status.value = "not started: open a bead z-stack and choose it in the Identification panel"
            return None
        p = self.session.parameters
        try:
            p.validate(*movie.shape)
            if int(movie.shape[0]) < 2:
                raise ValueError("a z-stack needs at least 2 frames")
        except ValueError as exc:
            if owned:
                movie.close()
            self._fail(f"not started: {exc}")
            return None
        self.progress_values = []
        if self.model.value == "spline":
            return self._calibrate_spline(movie, owned)
        self._begin_run(int(movie.shape[0]), "z calibration")
        self.status.value = "calibrating..."
        gen = calibrate_steps(movie, p, float(self.step_nm.value), float(self.magnification.value),
                              bool(self.follow_beads.value), self._cancel, self.session.movie_path(),
                              self.chunk_frames, close_movie=owned)
        self.worker = start_localize(gen, self._on_progress, self._on_returned, self._on_error,
                                     self._on_finished)
        return self.worker

    def _calibrate_spline(self, movie, owned):
        from ..core.spline_calibrate import SplineCalibrationOptions

        p = self.session.parameters
        box = p.box_size if p.box_size >= 9 else 13
        options = SplineCalibrationOptions(box_size=box, magnification_factor=float(self.magnification.value),
                                           frame_bounds=p.frame_range)
        self._begin_run(4, "spline calibration")
        self.status.value = f"calibrating the spline PSF (fit box {box} px)..."
        gen = calibrate_spline_steps(movie, p, float(self.step_nm.value), options, self._cancel,
                                     self.session.movie_path(), close_movie=owned)
        self.worker = start_localize(gen, self._on_progress, self._on_returned, self._on_error,
                                     self._on_finished)
        return self.worker

    def _on_progress(self, value):
        done, total = value
        self.progress_values.append((done, total))
        self._advance(done)
        self.status.value = f"calibrating: localized {done} / {total} frames"

    def _on_returned(self, value):
        if isinstance(value, Cancelled):
            self.status.value = "calibration cancelled: nothing written"
            return
        cal, yaml_path, png_path = value
        if isinstance(cal, SplinePSF):
            self._use_spline(cal, yaml_path)
        else:
            self.session.set_zcalibration(cal, yaml_path)
        d = cal.diagnostics or {}
        text = f"calibrated: z precision {d.get('z_precision_nm', float('nan')):.1f} nm"
        if yaml_path is None:
            text += "; kept in memory only (this layer has no stack file to write beside)"
            show_info("napari-localize: the stack layer has no file: the calibration is kept in memory only")
        else:
            text += f"; written {yaml_path} and {os.path.basename(png_path)}"
        for notice in d.get("notices", []):
            text += f"\nnotice: {notice}"
        self.status.value = text

    def _on_error(self, exc):
        self._fail(f"calibration failed: {exc}")

    # -- z fit options -----------------------------------------------------------------------
    def _on_fit_z(self, value):
        self.session.fit_z = bool(value) and self.session.zcalibration is not None
        self._enable_options()

    def _on_options(self, *_):
        options = ZFitOptions(method=self.z_method.value, filter=float(self.z_filter.value),
                              drop_out_of_range=bool(self.drop_out_of_range.value),
                              extrapolation=float(self.extrapolation.value),
                              box_size=int(self.z_box_size.value), neighbours=bool(self.neighbours.value),
                              max_gof=float(self.max_gof.value))
        try:
            options.validate()
        except ValueError as exc:
            self._fail(str(exc))
            return
        self.session.z_options = options

    def _option_widgets(self):
        return (self.z_method, self.z_filter, self.extrapolation, self.drop_out_of_range, self.z_box_size,
                self.neighbours, self.max_gof)

    def _enable_options(self):
        on = self.session.wants_3d()
        spline = isinstance(self.session.zcalibration, SplinePSF)
        for w in self._option_widgets():
            # a spline fit has no width matching (method, d_zcalib filter) and no separate z box or
            # extrapolation (the spline is defined on its calibrated range only)
            w.enabled = on and (not spline or w in (self.neighbours, self.max_gof))
        self.follow_beads.enabled = self.model.value == "poly"

    def _fail(self, text):
        self.status.value = text
        show_error(f"napari-localize: {text}")

