"""Dock widgets: Identification, Photon conversion, Fit and Localize.

Each is a small magicgui ``Container`` bound to the viewer's :class:`~._state.LocalizeSession`. They only
edit ``session.parameters`` and show state; identification (preview), the run and the rendering are done by
the core through :mod:`._preview` and :mod:`._worker`.
"""

import os

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
        self.box_size = SpinBox(label="box side length", value=p.box_size, min=3, max=51, step=2,
                                tooltip="odd side length of the fit box in pixels")
        hi = max(10000.0, 2 * p.min_net_gradient)
        self.net_gradient_slider = FloatSlider(label="min. net gradient", value=p.min_net_gradient, min=0,
                                               max=hi, step=1, readout=False,
                                               tooltip="keep spots whose net gradient (camera counts) "
                                                       "is greater than this")
        self.net_gradient = FloatSpinBox(label="", value=p.min_net_gradient, min=0, max=1e9, step=10)
        self.slider_max = FloatSpinBox(label="slider range up to", value=hi, min=1, max=1e9, step=1000,
                                       tooltip="upper end of the min. net gradient slider")
        self.preview = CheckBox(label="preview", value=False, tooltip="identify spots in the frame on screen")
        self.count = Label(label="", value="preview off")
        self.count.native.setWordWrap(True)
        self.roi_on = CheckBox(label="ROI", value=p.roi is not None, tooltip="restrict spots to a rectangle")
        roi = p.roi or (0, 0, 0, 0)
        self.roi_numbers = [SpinBox(label=name, value=v, min=0, max=100000)
                            for name, v in zip(("y0", "x0", "y1", "x1"), roi)]
        self.roi_from_shapes = PushButton(text="ROI from a Shapes rectangle",
                                          tooltip="draw or move a rectangle in the ROI layer to set the ROI")
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
                     self.preview, self.count, self.roi_on, *self.roi_numbers, self.roi_from_shapes,
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
        self.roi_from_shapes.changed.connect(lambda *_: self.preview_controller.use_shapes_layer())
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
        self.em_gain = FloatSpinBox(label="EM gain", value=p.em_gain, min=1, max=10000, step=1,
                                    tooltip="electron-multiplying gain; 1 for sCMOS and conventional CCD")
        self.baseline = FloatSpinBox(label="baseline", value=p.baseline, min=0, max=1e6, step=1,
                                     tooltip="camera offset in counts (ADU), subtracted first")
        self.sensitivity = FloatSpinBox(label="sensitivity", value=p.sensitivity, min=1e-4, max=1e4, step=0.01,
                                        tooltip="electrons per count (e-/ADU), the camera's conversion factor")
        self.qe = FloatSpinBox(label="QE (unused)", value=p.qe, min=0.01, max=1, step=0.01,
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
        self.session.update(baseline=values["baseline"], sensitivity=values["sensitivity"],
                            em_gain=max(values["em_gain"], 1.0), qe=values["qe"], pixelsize=values["pixelsize"],
                            camera=values["camera"])

    def _on_movie(self, layer):
        info = (layer.metadata or {}).get("movie_info") if layer is not None else None
        if not info:
            return
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
        self.convergence = FloatSpinBox(label="convergence", value=p.convergence, min=1e-6, max=1, step=1e-4,
                                        tooltip="stop when position steps are below this (pixels)")
        self.max_iterations = SpinBox(label="max. iterations", value=p.max_iterations, min=1, max=10000)
        self.extend([self.method, self.convergence, self.max_iterations])
        self.method.changed.connect(self._on_method)
        self.convergence.changed.connect(lambda v: self.session.update(convergence=float(v)))
        self.max_iterations.changed.connect(lambda v: self.session.update(max_iterations=int(v)))
        self._on_method(p.fit_method)

    def _on_method(self, method):
        for w in (self.convergence, self.max_iterations):
            w.enabled = method != "avg"
        self.session.update(fit_method=method)


# ---------------------------------------------------------------------------------------- localize
class LocalizeWidget(CancellableRun, Container):
    """Run (Cancel while running), progress, status, where the files went, and the rendering."""

    run_button_idle = ("run_button", "Localize")

    #: frames per chunk of a run (None: from the frame size); smaller means finer progress and cancel
    chunk_frames = None

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.render_method = ComboBox(label="rendering", choices=list(RENDER_METHODS), value="gaussian",
                                      tooltip="histogram: counts per pixel; gaussian: each localization "
                                              "blurred by its precision")
        self.oversampling = SpinBox(label="oversampling", value=8, min=1, max=50,
                                    tooltip="super-resolution pixels per camera pixel (each axis)")
        self.run_button = PushButton(text="Localize")
        self.status = Label(label="", value="ready")
        self.files = Label(label="", value="")
        self.extend([self.render_method, self.oversampling, self.run_button, self.status, self.files])
        for label in (self.status, self.files):
            label.native.setWordWrap(True)
        self.run_button.changed.connect(lambda *_: self._run_or_cancel(self.run))
        self.render_method.changed.connect(self._rerender)
        self.oversampling.changed.connect(self._rerender)
        self.worker = None
        self._cancel = None
        self._pbar = None
        self.progress_values: list[tuple[int, int]] = []

    def run(self):
        """Localize the session's movie with the session's parameters in a thread worker."""
        if self.running:
            return None
        session = self.session
        movie, owned = session.movie_for_run()
        if movie is None:
            show_warning("napari-localize: open a movie (an image layer) first")
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
        path = session.movie_path()
        self.progress_values = []
        start, stop = p.frame_span(movie.shape[0])
        self._begin_run(stop - start, "localizing")
        z = None
        if session.wants_3d():
            z = (session.zcalibration, session.z_options, session.zcalibration_path)
        self.status.value = "localizing in 3D..." if z is not None else "localizing..."
        self.files.value = ""
        gen = localize_steps(movie, p, self._cancel, path, self.chunk_frames, close_movie=owned, z=z)
        self.worker = start_localize(gen, self._on_progress, self._on_returned, self._on_error,
                                     self._on_finished)
        return self.worker

    def _on_progress(self, value):
        done, total = value
        self.progress_values.append((done, total))
        self._advance(done)
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
            self.files.value = "not written: this layer has no movie file; save the localizations layer " \
                               "with File > Save Selected Layers (.hdf5)"
            show_info("napari-localize: the movie layer has no file, so no _locs.hdf5 was written beside it")
        else:
            self.files.value = f"written: {paths[0]}\n{os.path.basename(paths[1])}"
        self.status.value = f"{len(locs)} localizations in {stats.frames} frames"
        if "z" in locs.dtype.names:
            self.status.value = f"{len(locs)} 3D localizations in {stats.frames} frames"
        self.session.result_changed.emit(result)

    def _on_error(self, exc):
        self.status.value = f"failed: {exc}"
        show_error(f"napari-localize: localization failed: {exc}")

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
    """Dock the panels (and the 3D panel) on the right of ``viewer``; return them by title."""
    from ._zwidget import ZWidget

    docked = {}
    for title, cls in (*WIDGETS, (ZWidget.title, ZWidget)):
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=title, area="right", tabify=False)
        docked[title] = widget
    return docked
