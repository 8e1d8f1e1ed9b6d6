"""Dock widgets: Identification, Photon conversion, Fit and Localize.

Each is a small magicgui ``Container`` bound to the viewer's :class:`~._state.LocalizeSession`. They only
edit ``session.parameters`` and show state; identification (preview), the run and the rendering are done by
the core through :mod:`._preview` and :mod:`._worker`.
"""

import math
import os
import re
import threading
import time

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..core.render import RENDER_METHODS, render
from ._preview import PreviewController
from ._state import LocalizeResult, session_for
from ._worker import CancellableRun, Cancelled, localize_steps, start_localize

FIT_CHOICES = [("MLE, integrated Gaussian", "mle"), ("LQ, Gaussian", "lq"), ("Average of ROI", "avg")]
RESULT_POINTS = "localizations"
RESULT_IMAGE = "super-resolution"


def _movie_layers(viewer):
    return [layer for layer in viewer.layers
            if isinstance(layer, napari.layers.Image) and layer.ndim >= 2 and layer.name != RESULT_IMAGE]


# ---------------------------------------------------------------------------------------- identification
class IdentifyWidget(Container):
    """Movie layer, box size, min. net gradient, live preview, ROI (numbers or a Shapes rectangle), frames."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        p = self.session.parameters
        self.movie = ComboBox(label="movie", choices=self._movie_choices, nullable=True,
                              tooltip="the image layer to localize (frames, height, width)")
        self.box_size = SpinBox(label="box side length (px)", value=p.box_size, min=3, max=51, step=2,
                                tooltip="odd side length of the fit box in pixels")
        hi = max(10000.0, 2 * p.min_net_gradient)
        self.net_gradient_slider = FloatSlider(label="min. net gradient (camera counts)",
                                               value=p.min_net_gradient, min=0, max=hi, step=1, readout=False,
                                               tooltip="keep spots whose net gradient (camera counts) "
                                                       "is greater than this")
        self.net_gradient = FloatSpinBox(label="", value=p.min_net_gradient, min=0, max=1e9, step=10)
        self.slider_max = FloatSpinBox(label="slider up to (camera counts)", value=hi, min=1, max=1e9, step=1000,
                                       tooltip="upper end of the min. net gradient slider")
        self.preview = CheckBox(label="preview", value=False, tooltip="identify spots in the frame on screen")
        self.count = Label(label="", value="preview off")
        self.count.native.setWordWrap(True)
        self.roi_on = CheckBox(label="ROI", value=p.roi is not None, tooltip="restrict spots to a rectangle")
        roi = p.roi or (0, 0, 0, 0)
        self.roi_numbers = [SpinBox(label=name, value=v, min=0, max=100000)
                            for name, v in zip(("y0", "x0", "y1", "x1"), roi)]
        self.roi_from_shapes = PushButton(text="ROI from a Shapes layer",
                                          tooltip="use the rectangle of the selected Shapes layer (or of any "
                                                  "Shapes layer); draw or move it to change the ROI")
        self.roi_hint = Label(label="", value="")
        self.roi_hint.native.setWordWrap(True)
        self.roi_hint.visible = False
        self.all_frames = CheckBox(label="all frames", value=p.frame_range is None)
        first, last = p.frame_range or (0, 0)
        self.first_frame = SpinBox(label="first frame", value=first, min=0, max=10**9)
        self.last_frame = SpinBox(label="last frame", value=last, min=0, max=10**9)
        self.roi_count = Label(label="", value="")
        self.segments = LineEdit(label="frame segments", value="",
                                 tooltip="several frame ranges, 0-based and inclusive, e.g. 0-999, 3000-3999 "
                                         "(empty: the frame range above)")
        self.segments_status = Label(label="", value="")
        self.temporal_median = SpinBox(label="temporal median", value=int(p.temporal_median), min=0, max=100000,
                                       tooltip="identify on the movie minus its rolling per-pixel median over "
                                               "this many frames (0: off); fitting uses the raw movie")
        self.gaussian_filter = FloatSpinBox(label="Gaussian filter", value=float(p.gaussian_filter), min=0,
                                            max=20, step=0.1, tooltip="identify on the movie smoothed by a "
                                            "Gaussian of this sigma in pixels (0: off)")
        self.extend([self.movie, self.box_size, self.net_gradient_slider, self.net_gradient, self.slider_max,
                     self.preview, self.count, self.roi_on, *self.roi_numbers, self.roi_from_shapes, self.roi_hint,
                     self.roi_count, self.all_frames, self.first_frame, self.last_frame, self.segments,
                     self.segments_status, self.temporal_median, self.gaussian_filter])

        self.preview_controller = PreviewController(self.session, on_count=self._show_count,
                                                    parent=self.native)
        self.box_size.changed.connect(self._on_box_size)
        self.net_gradient_slider.changed.connect(self._on_slider)
        self.net_gradient.changed.connect(self._on_net_gradient)
        self.slider_max.changed.connect(self._on_slider_max)
        self.preview.changed.connect(self.preview_controller.set_enabled)
        self.roi_on.changed.connect(self._on_roi_numbers)
        for w in self.roi_numbers:
            w.changed.connect(self._on_roi_numbers)
        self.roi_from_shapes.changed.connect(lambda *_: self.use_shapes_layer())
        for w in (self.all_frames, self.first_frame, self.last_frame):
            w.changed.connect(self._on_frames)
        self.segments.changed.connect(self._on_segments)
        self.temporal_median.changed.connect(
            lambda v: self.session.update(temporal_median=int(v) if int(v) != 1 else 0))
        self.gaussian_filter.changed.connect(lambda v: self.session.update(gaussian_filter=float(v)))
        self.movie.changed.connect(self._on_movie)
        self.session.parameters_changed.connect(self._show_parameters)
        napari_viewer.layers.events.inserted.connect(self._layers_changed)
        napari_viewer.layers.events.removed.connect(self._layers_changed)
        self._layers_changed()
        self._enable_rows()
        self.native.destroyed.connect(self._disconnect)

    def _disconnect(self, *_):
        """The Qt widget is gone: stop listening to the viewer and the shared session."""
        self.preview_controller.close()
        self.session.parameters_changed.disconnect(self._show_parameters)
        self.viewer.layers.events.inserted.disconnect(self._layers_changed)
        self.viewer.layers.events.removed.disconnect(self._layers_changed)

    # -- layers -------------------------------------------------------------------------------
    def _movie_choices(self, _widget=None):
        return [(layer.name, layer) for layer in _movie_layers(self.viewer)]

    def _layers_changed(self, *_):
        self.movie.reset_choices()
        layers = [c for c in self.movie.choices if c is not None]
        if self.movie.value is None and layers:
            self.movie.value = layers[0]
        self._on_movie(self.movie.value)

    def _on_movie(self, layer):
        self.session.set_movie_layer(layer)
        if layer is not None:
            n = int(layer.data.shape[0]) if layer.ndim >= 3 else 1
            for w in (self.first_frame, self.last_frame):
                w.max = max(n - 1, 0)
            height, width = (int(s) for s in layer.data.shape[-2:])
            for w, limit in zip(self.roi_numbers, (height, width, height, width)):
                w.max = limit
            p = self.session.parameters
            # the ROI and frame range follow the movie: clamped into the new frame, dropped if nothing is left
            if p.roi is not None:
                y0, x0, y1, x1 = p.roi
                roi = (min(y0, height), min(x0, width), min(y1, height), min(x1, width))
                self.session.update(roi=roi if roi[2] > roi[0] and roi[3] > roi[1] else None)
            if p.frame_range is not None:
                first, last = (min(v, max(n - 1, 0)) for v in p.frame_range)
                self.session.update(frame_range=(first, max(first, last)))

    def use_shapes_layer(self, layer=None):
        """Set the ROI from a Shapes layer the user drew: ``layer``, else the selected Shapes layer, else the
        last Shapes layer holding a rectangle; without one, an empty "ROI" layer is added with a hint."""
        viewer = self.viewer
        shapes = [x for x in viewer.layers if isinstance(x, napari.layers.Shapes)]
        if layer is None:
            active = viewer.layers.selection.active
            if isinstance(active, napari.layers.Shapes):
                layer = active
            else:
                with_rect = [x for x in shapes if "rectangle" in list(x.shape_type)]
                layer = with_rect[-1] if with_rect else (shapes[-1] if shapes else None)
        layer = self.preview_controller.use_shapes_layer(layer)
        if "rectangle" not in list(layer.shape_type):
            viewer.layers.selection.active = layer
            layer.mode = "add_rectangle"
            self.roi_hint.value = (f"no rectangle yet: draw one in the Shapes layer '{layer.name}' "
                                   "(rectangle tool, R) and the ROI follows it")
        else:
            self.roi_hint.value = f"ROI follows the last rectangle of '{layer.name}'"
        self.roi_hint.visible = True
        return layer

    # -- parameters ---------------------------------------------------------------------------
    def _on_box_size(self, value):
        if value % 2 == 0:  # odd only: a typed even value goes to the next odd one
            self.box_size.value = value + 1
            return
        self.session.update(box_size=int(value))

    def _on_slider(self, value):
        self.net_gradient.value = value

    def _on_net_gradient(self, value):
        if value > self.slider_max.value:
            self.slider_max.value = value
        with self.net_gradient_slider.changed.blocked():
            self.net_gradient_slider.value = value
        self.session.update(min_net_gradient=float(value))

    def _on_slider_max(self, value):
        self.net_gradient_slider.max = value

    def _on_roi_numbers(self, *_):
        self._enable_rows()
        if not self.roi_on.value:
            self.session.update(roi=None, rois=None)
            return
        roi = tuple(int(w.value) for w in self.roi_numbers)
        if roi[2] > roi[0] and roi[3] > roi[1]:
            self.session.update(roi=roi)

    def _on_frames(self, *_):
        self._enable_rows()
        if self.all_frames.value:
            self.session.update(frame_range=None)
        else:
            first, last = int(self.first_frame.value), int(self.last_frame.value)
            self.session.update(frame_range=(first, max(first, last)))

    def _on_segments(self, text):
        try:
            segments = parse_segments(text)
        except ValueError as exc:
            self.segments_status.value = str(exc)
            return
        self.segments_status.value = "" if not segments else f"{len(segments)} segment(s)"
        self.session.update(frame_segments=segments)

    def _enable_rows(self):
        for w in self.roi_numbers:
            w.enabled = self.roi_on.value
        for w in (self.first_frame, self.last_frame):
            w.enabled = not self.all_frames.value

    def _show_parameters(self, p):
        """Reflect parameters changed elsewhere (a Shapes rectangle) without echoing them back."""
        with self.changed.blocked():
            if p.roi is not None:
                for w, v in zip(self.roi_numbers, p.roi):
                    with w.changed.blocked():
                        w.value = v
            with self.roi_on.changed.blocked():
                self.roi_on.value = p.roi is not None
            n = (p.roi is not None) + len(p.rois or ())
            self.roi_count.value = f"{n} ROIs (every rectangle of the ROI layer)" if n > 1 else ""
            self._enable_rows()

    def _show_count(self, text):
        self.count.value = text


def parse_segments(text: str):
    """``"0-999, 3000-3999"`` -> ``((0, 999), (3000, 3999))`` (0-based, inclusive); empty -> ``None``."""
    parts = [t.strip() for t in str(text).replace(";", ",").split(",") if t.strip()]
    out = []
    for part in parts:
        pieces = [q.strip() for q in part.split("-")]
        if len(pieces) != 2 or not all(q.isdigit() for q in pieces):
            raise ValueError(f"{part!r}: write segments as FIRST-LAST, e.g. 0-999, 3000-3999")
        first, last = int(pieces[0]), int(pieces[1])
        if last < first:
            raise ValueError(f"{part!r}: the last frame comes before the first")
        out.append((first, last))
    return tuple(out) or None


# ---------------------------------------------------------------------------------------- photon conversion
class PhotonWidget(Container):
    """Photon conversion: photons = (counts - baseline) * sensitivity / EM gain; pixel size for the record."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.session = session_for(napari_viewer)
        p = self.session.parameters
        # --- camera selector goes here: the camera-config widget (CameraWidget, _camera_widget.py) will be
        # embedded into this slot and fill the fields below from its .values() when a camera is chosen.
        self.camera_slot = Container(labels=False)
        self.camera_slot.visible = False
        self.em_gain = FloatSpinBox(label="EM gain (x)", value=p.em_gain, min=1, max=10000, step=1,
                                    tooltip="electron-multiplying gain; 1 for sCMOS and conventional CCD")
        self.baseline = FloatSpinBox(label="baseline (camera counts)", value=p.baseline, min=0, max=1e6, step=1,
                                     tooltip="camera offset in counts (ADU), subtracted first")
        self.sensitivity = FloatSpinBox(label="sensitivity (e-/count)", value=p.sensitivity, min=1e-4, max=1e4,
                                        step=0.01,
                                        tooltip="electrons per count (e-/ADU), the camera's conversion factor")
        self.qe = FloatSpinBox(label="QE (recorded only)", value=p.qe, min=0.01, max=1, step=0.01,
                               tooltip="quantum efficiency: written to _locs.yaml, not used in the conversion "
                                       "(as in Picasso)")
        self.pixelsize = FloatSpinBox(label="pixel size (nm)", value=p.pixelsize, min=1, max=10000, step=1,
                                      tooltip="camera pixel size in the sample plane, nm")
        self.extend([self.camera_slot, self.em_gain, self.baseline, self.sensitivity, self.qe, self.pixelsize])
        for name in ("em_gain", "baseline", "sensitivity", "qe", "pixelsize"):
            getattr(self, name).changed.connect(lambda value, name=name: self.session.update(**{name: value}))
        self.session.parameters_changed.connect(self._show_parameters)
        # the camera selector (config file, camera, cascading sensitivity menus, wavelength) fills the fields
        # below, which stay editable; it matches each new movie's metadata
        from ._camera_widget import CameraWidget

        self.camera = CameraWidget()
        self.camera.set_value_fields_visible(False)
        self.camera.changed.connect(self._on_camera_values)
        self.embed_camera(self.camera)
        # sCMOS: per-pixel maps instead of the scalar baseline/sensitivity; a camera config may name them
        from ._scmos_widget import SCMOSCalibrationWidget

        self.scmos = SCMOSCalibrationWidget(napari_viewer)
        self.insert(1, self.scmos)
        self.scmos.changed.connect(self.session.set_camera_calibration)
        self.session.movie_changed.connect(self._on_movie)
        if self.session.movie_layer is not None:
            self._on_movie(self.session.movie_layer)

    def embed_camera(self, camera_widget):
        """Put the camera selector in its slot."""
        self.camera_slot.append(camera_widget)
        self.camera_slot.visible = True

    def _on_camera_values(self, values: dict):
        if self.camera.config is None:
            return  # without a config the user's own values stand (the movie's pixel size is applied below)
        named = getattr(self.camera.last_match, "camera_calibration", None)
        if named and named != self.scmos.path:
            self.scmos.load(named)  # the camera's sCMOS maps, as the config names them
        self.session.update(baseline=values["baseline"], sensitivity=values["sensitivity"],
                            em_gain=max(values["em_gain"], 1.0), qe=values["qe"], pixelsize=values["pixelsize"],
                            camera=values["camera"])

    def _on_movie(self, layer):
        info = (layer.metadata or {}).get("movie_info") if layer is not None else None
        if not info:
            return
        from ..core.camera import movie_sensor_origin

        self.scmos.movie_origin = movie_sensor_origin(info) or (0, 0)
        if self.camera.config is not None:
            self.camera.match_movie(info)
        elif info.get("Pixelsize"):
            self.session.update(pixelsize=float(info["Pixelsize"]))

    def _show_parameters(self, p):
        for name in ("em_gain", "baseline", "sensitivity", "qe", "pixelsize"):
            w = getattr(self, name)
            if w.value != getattr(p, name):
                with w.changed.blocked():
                    w.value = getattr(p, name)


# ---------------------------------------------------------------------------------------- fit
class FitWidget(Container):
    """Fit method and the MLE/LQ stopping rule."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.session = session_for(napari_viewer)
        p = self.session.parameters
        self.method = ComboBox(label="method", choices=FIT_CHOICES, value=p.fit_method,
                               tooltip="MLE: Poisson maximum likelihood (Smith et al. 2010); "
                                       "LQ: least squares; Average of ROI: box sum minus background")
        self.convergence = FloatSpinBox(label="convergence (px)", value=p.convergence, min=1e-6, max=1, step=1e-4,
                                        tooltip="stop when position steps are below this (pixels)")
        self.max_iterations = SpinBox(label="max. iterations", value=p.max_iterations, min=1, max=10000)
        self.max_emitters = SpinBox(label="max. emitters per box", value=p.max_emitters, min=1, max=5,
                                    tooltip="MLE/LQ: overlapping spots are fitted together, up to this many per "
                                            "box, and spots closer than the box are found in the fit residual; "
                                            "1 fits one emitter per box, as Picasso")
        self.extend([self.method, self.convergence, self.max_iterations, self.max_emitters])
        self.max_emitters.changed.connect(lambda v: self.session.update(max_emitters=int(v)))
        self.method.changed.connect(self._on_method)
        self.convergence.changed.connect(lambda v: self.session.update(convergence=float(v)))
        self.max_iterations.changed.connect(lambda v: self.session.update(max_iterations=int(v)))
        self._on_method(p.fit_method)

    def _on_method(self, method):
        for w in (self.convergence, self.max_iterations, self.max_emitters):
            w.enabled = method != "avg"
        self.session.update(fit_method=method)


# ---------------------------------------------------------------------------------------- kernel warm-up
_KERNELS_READY = threading.Event()
_WARMUP_LOCK = threading.Lock()
_warmup_started = False


def kernels_ready() -> bool:
    """True once the numba kernels are compiled (or loaded from numba's disk cache) in this process."""
    return _KERNELS_READY.is_set()


def warm_up_kernels() -> threading.Thread | None:
    """Compile the identification and fit kernels in the background (once per process).

    A second process localizes a tiny simulated movie with MLE and LQ (:mod:`napari_localize.core.warmup`),
    which compiles every kernel of a 2D run into numba's disk cache without holding this process's GIL (the
    viewer's); a background thread then runs the same tiny movie here, which only loads them. Should the second
    process fail, that thread compiles them itself. A run started meanwhile is safe (numba compiles under its
    own lock).
    """
    global _warmup_started
    with _WARMUP_LOCK:
        if _warmup_started:
            return None
        _warmup_started = True

    def work():
        try:
            from ..core.warmup import compile_in_background_process, localize_tiny_movie

            compile_in_background_process()
            localize_tiny_movie()
        except Exception:  # noqa: BLE001  (a failed warm-up only means the first run compiles)
            pass
        finally:
            _KERNELS_READY.set()

    thread = threading.Thread(target=work, name="napari-localize kernel warm-up", daemon=True)
    thread.start()
    return thread


def default_suffix(layer) -> str:
    """``_<channel>`` for a layer of one channel of a multi-channel file, so channels never overwrite each other."""
    meta = (layer.metadata or {}) if layer is not None else {}
    info = meta.get("movie_info") or {}
    channel = info.get("Channel")
    if channel is None or meta.get("movie_channel") is None:
        return ""
    return "_" + (re.sub(r"[^\w.-]+", "-", str(channel)).strip("-") or str(meta["movie_channel"]))


def result_summary(stats, n_locs: int, three_d: bool = False) -> str:
    """"N found, M fitted, K dropped (why)": what happened to every spot of a run."""
    dropped = int(stats.identified) - int(n_locs)
    why = []
    if stats.not_converged:
        why.append(f"{stats.not_converged} fits did not converge")
    if stats.not_sane:
        why.append(f"{stats.not_sane} failed the sanity filter")
    other = dropped - int(stats.not_converged) - int(stats.not_sane)
    if other > 0:
        why.append(f"{other} out of the z range" if three_d else f"{other} removed by the filters")
    text = f"{stats.identified} found, {n_locs} fitted{' in 3D' if three_d else ''}, {max(dropped, 0)} dropped"
    return text + (f" ({', '.join(why)})" if why else "") + f", {stats.frames} frames"


# ---------------------------------------------------------------------------------------- localize
def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "? s"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class LocalizeWidget(CancellableRun, Container):
    """Run (Cancel while running), progress, status, where the files went, and the rendering."""

    run_button_idle = ("run_button", "Localize")

    #: frames per chunk of a run (None: from the frame size); smaller means finer progress and cancel
    chunk_frames = None

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        from qtpy.QtWidgets import QProgressBar

        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.render_method = ComboBox(label="rendering", choices=list(RENDER_METHODS), value="gaussian",
                                      tooltip="histogram: counts per pixel; gaussian: each localization "
                                              "blurred by its precision")
        self.oversampling = SpinBox(label="oversampling (per px)", value=8, min=1, max=50,
                                    tooltip="super-resolution pixels per camera pixel (each axis)")
        self.suffix = LineEdit(label="file suffix", value="",
                               tooltip="output <movie><suffix>_locs.hdf5; one channel of a multi-channel file "
                                       "gets _<channel> by default")
        self.run_button = PushButton(text="Localize")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m frames")
        self.progress_bar.setTextVisible(True)
        self.status = Label(label="", value="ready")
        self.files = Label(label="", value="")
        self.extend([self.render_method, self.oversampling, self.suffix, self.run_button, self.status, self.files])
        layout = self.native.layout()
        for i in range(layout.count()):  # the progress bar right below the Localize button
            row = layout.itemAt(i).widget()
            if row is not None and (row is self.run_button.native or row.isAncestorOf(self.run_button.native)):
                layout.insertWidget(i + 1, self.progress_bar)
                break
        else:
            layout.addWidget(self.progress_bar)
        for label in (self.status, self.files):
            label.native.setWordWrap(True)
        self.run_button.changed.connect(lambda *_: self._run_or_cancel(self.run))
        self.render_method.changed.connect(self._rerender)
        self.oversampling.changed.connect(self._rerender)
        self.worker = None
        self._cancel = None
        self._pbar = None
        self._t0 = None
        self.progress_values: list[tuple[int, int]] = []
        self.session.movie_changed.connect(self._on_movie)
        self._on_movie(self.session.movie_layer)
        self.native.destroyed.connect(lambda *_: self._disconnect())

    def _disconnect(self):
        self.session.movie_changed.disconnect(self._on_movie)

    def _on_movie(self, layer):
        """A new movie: the last result's status is cleared and the suffix defaults to its channel."""
        if self.running:
            return
        self.suffix.value = default_suffix(layer)
        self.status.value = "ready" if layer is not None else "open a movie (an image layer) first"
        self.files.value = ""
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

    def run(self):
        """Localize the session's movie with the session's parameters in a thread worker."""
        if self.running:
            return None
        session = self.session
        movie, owned = session.movie_for_run()
        if movie is None:
            show_warning("napari-localize: open a movie (an image layer) first")
            self.status.value = "not started: open a movie (an image layer) first"
            return None
        p = session.parameters
        try:
            p.validate(*movie.shape)
        except ValueError as exc:
            if owned:
                movie.close()
            show_error(f"napari-localize: {exc}")
            self.status.value = f"not started: {exc}"
            return None
        try:
            camera = session.camera_maps_for(movie)
            if camera is not None and session.wants_3d():
                raise ValueError("the sCMOS calibration is used by 2D runs only for now; turn Fit z off or clear "
                                 "the calibration in the camera panel")
        except ValueError as exc:
            if owned:
                movie.close()
            show_error(f"napari-localize: {exc}")
            self.status.value = f"not started: {exc}"
            return None
        path = session.movie_path()
        self.progress_values = []
        start, stop = p.frame_span(movie.shape[0])
        self._begin_run(stop - start, "localizing")
        self._t0 = None
        self._t_start = time.perf_counter()
        self.progress_bar.setRange(0, max(stop - start, 1))
        self.progress_bar.setValue(0)
        z = None
        if session.wants_3d():
            z = (session.zcalibration, session.z_options, session.zcalibration_path)
        what = "localizing in 3D" if z is not None else "localizing"
        if kernels_ready():
            self.status.value = f"{what}..."
        else:
            self.progress_bar.setRange(0, 0)  # busy: numba compiles before the first chunk
            self.status.value = f"{what}: compiling kernels (first run only)..."
        self.files.value = ""
        gen = localize_steps(movie, p, self._cancel, path, self.chunk_frames, close_movie=owned, z=z,
                             suffix=self.suffix.value.strip(), camera=camera)
        self.worker = start_localize(gen, self._on_progress, self._on_returned, self._on_error,
                                     self._on_finished)
        return self.worker

    def _on_progress(self, value):
        done, total = value
        self.progress_values.append((done, total))
        self._advance(done)
        if done == 0:
            return
        _KERNELS_READY.set()
        now = time.perf_counter()
        if self._t0 is None:  # rate from the second chunk on: the first one may include compiling
            self._t0 = (now, done)
            rate = done / max(now - self._t_start, 1e-9)
        else:
            rate = (done - self._t0[1]) / max(now - self._t0[0], 1e-9)
        left = (total - done) / rate if rate > 0 else float("nan")
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.progress_bar.setFormat(f"%v / %m frames, {rate:,.0f} frames/s, {_duration(left)} left")
        self.status.value = f"localizing: {done} / {total} frames"

    def _on_returned(self, value):
        if isinstance(value, Cancelled):
            self.status.value = "cancelled: nothing written"
            return
        locs, info, stats, paths = value
        movie_layer = self.session.movie_layer
        shape = tuple(int(s) for s in movie_layer.data.shape) if movie_layer is not None else None
        result = LocalizeResult(locs=locs, info=info, movie_shape=shape, paths=paths, stats=stats)
        self.session.result = result
        self._show_result(result)
        if paths is None:
            self.files.value = "not written (the layer has no file): File > Save Selected Layers (.hdf5)"
            show_info("napari-localize: the movie layer has no file, so no _locs.hdf5 was written beside it")
        else:
            self.files.value = f"written: {paths[0]}\n{os.path.basename(paths[1])}"
        self.status.value = result_summary(stats, len(locs), "z" in locs.dtype.names)
        self.progress_bar.setFormat("%v / %m frames, done")
        self.session.result_changed.emit(result)

    def _on_error(self, exc):
        self.status.value = f"failed: {exc}"
        show_error(f"napari-localize: localization failed: {exc}")

    def _on_finished(self):
        super()._on_finished()
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)


    # -- results ------------------------------------------------------------------------------
    def _show_result(self, result: LocalizeResult):
        locs = result.locs
        coords = np.column_stack([locs["frame"].astype(float), locs["y"], locs["x"]]) if len(locs) \
            else np.zeros((0, 3))
        features = {name: np.asarray(locs[name]) for name in locs.dtype.names}
        meta = {"locs_info": result.info, "locs_path": result.paths[0] if result.paths else None,
                "pixelsize": float(self.session.parameters.pixelsize)}
        viewer = self.viewer
        if RESULT_POINTS in viewer.layers:
            layer = viewer.layers[RESULT_POINTS]
            layer.data = coords
            layer.features = features
            layer.metadata.update(meta)
        else:
            layer = viewer.add_points(coords, name=RESULT_POINTS, features=features, metadata=meta, size=0.6,
                                      border_width=0, out_of_slice_display=False)
        if len(locs) and "z" in locs.dtype.names:  # 3D: colour by height (nm), blue below, red above
            layer.face_color = "z"
            layer.face_colormap = "turbo"
        elif len(locs):
            layer.face_color = "photons"
            layer.face_colormap = "viridis"
        self._rerender()

    def _rerender(self, *_):
        result = self.session.result
        if result is None or result.movie_shape is None:
            return
        ovs = int(self.oversampling.value)
        image = render(result.locs, result.movie_shape[-2], result.movie_shape[-1], ovs,
                       self.render_method.value, min_blur=0.5 / ovs)
        scale = (1.0 / ovs, 1.0 / ovs)
        # super-resolution pixel k starts at camera coordinate k/ovs - 0.5
        translate = (-0.5 + 0.5 / ovs, -0.5 + 0.5 / ovs)
        hi = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
        viewer = self.viewer
        if RESULT_IMAGE in viewer.layers:
            layer = viewer.layers[RESULT_IMAGE]
            layer.data = image
            layer.scale = scale
            layer.translate = translate
            layer.contrast_limits = (0.0, max(hi, 1e-6))
        else:
            viewer.add_image(image, name=RESULT_IMAGE, scale=scale, translate=translate, colormap="magma",
                             blending="additive", contrast_limits=(0.0, max(hi, 1e-6)))


# ---------------------------------------------------------------------------------------- all panels
WIDGETS = (("Identification", IdentifyWidget), ("Photon conversion", PhotonWidget), ("Fit", FitWidget),
           ("Localize", LocalizeWidget))


def dock_all(viewer) -> dict:
    """Dock the one napari-localize panel (every step, see :mod:`._panel`) on the right of ``viewer``.

    Returns its sections by their stand-alone titles ("Identification", "Photon conversion", "Fit",
    "Localize", "3D (astigmatism)", "Batch (folder)") and the panel itself as ``"panel"``.
    """
    from ._panel import dock_panel

    panel = dock_panel(viewer)
    return {**panel.widgets, "panel": panel}
