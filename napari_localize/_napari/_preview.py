"""Live identification preview and the Shapes-rectangle ROI, both driven by the shared session.

The preview identifies spots in the frame on screen only (the core's ``identify`` on one frame, a few ms for
256x256) and shows them as box-sized squares in one Points layer whose data is replaced in place, never
re-added. It follows the frame slider and parameter changes through a short single-shot timer, so a burst of
slider events costs one identification.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QTimer

from ..core.identify import identify

PREVIEW_LAYER = "spots (preview)"
#: circles at the emitters the fit finds in the previewed frame (several per box in crowded fields)
EMITTER_LAYER = "emitters (preview)"
ROI_LAYER = "ROI"
#: milliseconds between the last change and the preview update
DEBOUNCE_MS = 40


def roi_from_rectangle(vertices, height: int, width: int):
    """The pixel ROI ``(y0, x0, y1, x1)`` (half-open) whose pixel centres lie inside a rectangle.

    ``vertices`` are the rectangle's corners in layer data coordinates; only the last two columns
    (y, x) count, so a rectangle drawn on a 3D movie works too. Returns ``None`` if no pixel is inside.
    """
    v = np.asarray(vertices, float)[:, -2:]
    ymin, xmin = v.min(axis=0)
    ymax, xmax = v.max(axis=0)
    y0 = min(max(math.ceil(ymin), 0), height)
    x0 = min(max(math.ceil(xmin), 0), width)
    y1 = min(max(math.ceil(ymax), 0), height)
    x1 = min(max(math.ceil(xmax), 0), width)
    if y1 <= y0 or x1 <= x0:
        return None
    return (int(y0), int(x0), int(y1), int(x1))


def rectangle_from_roi(roi) -> np.ndarray:
    """The corners (y, x) of the rectangle drawn for a pixel ROI: pixel edges at ``index - 0.5``."""
    y0, x0, y1, x1 = roi
    return np.array([[y0 - 0.5, x0 - 0.5], [y0 - 0.5, x1 - 0.5], [y1 - 0.5, x1 - 0.5], [y1 - 0.5, x0 - 0.5]])


class PreviewController:
    """Keeps the preview Points layer and the ROI rectangle in step with the session.

    Parameters
    ----------
    session : LocalizeSession
    on_count : callable(str)
        Receives the status line ("N spots in this frame").
    """

    def __init__(self, session, on_count=None, parent=None):
        self.session = session
        self.enabled = False
        self.on_count = on_count or (lambda text: None)
        self.last_count: int | None = None
        #: the localizations of the previewed frame (emitter circles), None when not shown
        self.last_emitters = None
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.refresh)
        self._syncing_roi = False
        self._roi_layer = None
        viewer = session.viewer
        viewer.dims.events.current_step.connect(self._schedule)
        session.parameters_changed.connect(self._on_parameters)
        session.movie_changed.connect(self._schedule)

    def close(self):
        """Stop following the viewer and the session (the owning widget is going away)."""
        self.enabled = False
        self.on_count = lambda text: None
        self._timer.stop()
        viewer = self.session.viewer
        if viewer is not None:
            viewer.dims.events.current_step.disconnect(self._schedule)
        self.session.parameters_changed.disconnect(self._on_parameters)
        self.session.movie_changed.disconnect(self._schedule)
        if self._roi_layer is not None:
            self._roi_layer.events.data.disconnect(self._on_shapes)
            self._roi_layer = None

    # -- preview -------------------------------------------------------------------------------
    def set_enabled(self, on: bool):
        self.enabled = bool(on)
        layer = self._points_layer(create=False)
        if layer is not None:
            layer.visible = self.enabled
        emitters = self._emitter_layer(create=False)
        if emitters is not None:
            emitters.visible = self.enabled
        if self.enabled:
            self.refresh()
        else:
            self.on_count("preview off")

    def _schedule(self, *_):
        if self.enabled:
            self._timer.start()

    def _on_parameters(self, p):
        self.sync_rectangle(p.roi, p.rois)
        self._schedule()

    def refresh(self):
        """Identify the current frame now and update the preview layer (no debounce)."""
        self._timer.stop()
        session = self.session
        layer = session.movie_layer
        if not self.enabled:
            return
        if layer is None:
            self.last_count = None
            self.on_count("no movie layer selected")
            return
        p = session.parameters
        frame_index = session.current_frame()
        frame = np.asarray(layer.data[frame_index] if layer.ndim >= 3 else layer.data)
        height, width = frame.shape[-2:]
        try:
            p.validate(height=height, width=width)
        except ValueError as exc:
            self.on_count(str(exc))
            return
        try:
            maps = self._camera_maps(layer, frame.shape[-2:])
        except ValueError as exc:
            self.on_count(f"sCMOS calibration: {exc}")
            return
        if maps is None:  # with the run's prefilters and ROIs
            ids = self._identify(layer, frame, p, frame_index)
        else:  # as the run does: offset/gain-corrected, variance-aware
            from ..core.identify_scmos import identify_scmos

            ids = identify_scmos(frame, p.box_size, p.min_net_gradient, maps.offset, maps.sensitivity, maps.variance,
                                 maps.em_gain, p.roi, frame_index)
        # a 2D layer (y, x) refreshed per frame: box-sized points in a 3D layer would stretch the frame axis
        coords = np.column_stack([ids["y"], ids["x"]]).astype(float)
        points = self._points_layer(create=True, ndim=2)
        points.data = coords
        points.size = float(p.box_size)
        points.features = {"net_gradient": ids["net_gradient"]}
        self.last_count = len(ids)
        self.last_emitters = None
        text = f"{len(ids)} spots in this frame"
        emitters = self._emitters(frame, p, frame_index)
        if emitters is not None:
            self.last_emitters = emitters
            if len(emitters) != len(ids):
                text += f", {len(emitters)} emitters fitted"
        self.on_count(text)

    def _emitters(self, frame, p, frame_index):
        """Fit the previewed frame as a run would (multi-emitter fits included) and show a circle per emitter.

        Only when several emitters per box are allowed (else the boxes say it all); None then."""
        layer = self._emitter_layer(create=False)
        if p.max_emitters <= 1 or p.fit_method == "avg":
            if layer is not None:
                layer.data = np.zeros((0, 2))
            return None
        from ..core.pipeline import LocalizeStats, localize_frames

        locs = localize_frames(frame[None], p, frame_index, LocalizeStats(device="cpu"))
        layer = self._emitter_layer(create=True)
        layer.data = np.column_stack([locs["y"], locs["x"]]).astype(float)
        layer.size = 2.0 * (locs["sx"] + locs["sy"]) if len(locs) else 1.0
        layer.features = {"photons": locs["photons"], "n_emitters": locs["n_emitters"]}
        return locs

    def _emitter_layer(self, create: bool):
        viewer = self.session.viewer
        if EMITTER_LAYER in viewer.layers:
            return viewer.layers[EMITTER_LAYER]
        if not create:
            return None
        return viewer.add_points(np.zeros((0, 2)), name=EMITTER_LAYER, symbol="disc", face_color="transparent",
                                 border_color="cyan", border_width=0.1, size=2.0)

    def _camera_maps(self, layer, shape):
        """The session's sCMOS maps windowed to the layer's movie (cached), or None without a calibration."""
        session = self.session
        cal = getattr(session, "camera_calibration", None)
        if cal is None:
            return None
        from ..api import camera_maps
        from ..io.movies import ArrayMovie

        p = session.parameters
        info = dict((layer.metadata or {}).get("movie_info") or {})
        key = (id(cal), tuple(shape), p.sensitivity, p.em_gain, repr(info.get("Micro-Manager Metadata", {}).get("ROI")
                                                                       if isinstance(info.get("Micro-Manager Metadata"),
                                                                                     dict) else None),
               repr(info.get("Camera ROI")), repr(info.get("Sensor origin")))
        cached = getattr(self, "_maps_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        stub = ArrayMovie(np.zeros((1,) + tuple(shape), np.uint8), info={k: v for k, v in info.items()
                                                                          if k not in ("Frames", "Height", "Width")})
        maps = camera_maps(cal, stub, p)
        self._maps_cache = (key, maps)
        return maps

    def _identify(self, layer, frame, p, frame_index):
        """The run's identification of one frame: its prefilters (the temporal median from the layer's
        movie, cached per layer and window) and its ROIs."""
        from ..core.pipeline import identify_in_regions
        from ..core.prefilter import TemporalMedianBackground, prefilter_frames

        prefilter = p.prefilter()
        stack = frame[None] if frame.ndim == 2 else frame
        if not prefilter.active or layer.ndim < 3:
            if p.rois:
                return identify_in_regions(np.asarray(stack), p, frame_index)
            return identify(frame, p.box_size, p.min_net_gradient, p.roi, frame_index)
        background = None
        if prefilter.temporal_median:
            key = (id(layer.data), prefilter.temporal_median, prefilter.stride)
            cached = getattr(self, "_background", None)
            if cached is None or cached[0] != key:
                cached = (key, TemporalMedianBackground(layer.data, prefilter.temporal_median,
                                                        prefilter.median_stride))
                self._background = cached
            background = cached[1]
        filtered = prefilter_frames(np.asarray(stack), frame_index, prefilter, background)
        return identify_in_regions(filtered, p, frame_index)

    def _points_layer(self, create: bool, ndim: int = 2):
        viewer = self.session.viewer
        if PREVIEW_LAYER in viewer.layers:
            layer = viewer.layers[PREVIEW_LAYER]
            if layer.ndim == ndim or not create:
                return layer
            viewer.layers.remove(layer)
        if not create:
            return None
        return viewer.add_points(
            np.zeros((0, ndim)), name=PREVIEW_LAYER, symbol="square", face_color="transparent",
            border_color="yellow", border_width=0.08, size=self.session.parameters.box_size,
        )

    # -- ROI from a Shapes rectangle ----------------------------------------------------------
    def use_shapes_layer(self, layer=None):
        """Follow ``layer`` (or a new "ROI" Shapes layer) so that its rectangle sets the ROI."""
        viewer = self.session.viewer
        if layer is None:
            if ROI_LAYER in viewer.layers:
                layer = viewer.layers[ROI_LAYER]
            else:
                layer = viewer.add_shapes(ndim=2, name=ROI_LAYER, edge_color="cyan", face_color="transparent",
                                          edge_width=0.5)
        if self._roi_layer is not None and self._roi_layer is not layer:
            self._roi_layer.events.data.disconnect(self._on_shapes)
        if self._roi_layer is not layer:
            layer.events.data.connect(self._on_shapes)
        self._roi_layer = layer
        if self.session.parameters.roi is not None and len(layer.data) == 0:
            self.sync_rectangle(self.session.parameters.roi, self.session.parameters.rois)
        else:
            self._on_shapes()
        return layer

    def _frame_shape(self):
        layer = self.session.movie_layer
        if layer is None:
            return None
        return tuple(int(s) for s in layer.data.shape[-2:])

    def _on_shapes(self, event=None):
        if self._syncing_roi or self._roi_layer is None:
            return
        shape = self._frame_shape()
        if shape is None:
            return
        rectangles = [d for d, kind in zip(self._roi_layer.data, self._roi_layer.shape_type)
                      if kind == "rectangle"]
        # every rectangle is an ROI, in the layer's order (overlaps belong to the earlier one)
        rois = [r for r in (roi_from_rectangle(d, *shape) for d in rectangles) if r is not None]
        self._syncing_roi = True
        try:
            self.session.update(roi=rois[0] if rois else None, rois=tuple(rois[1:]) or None)
        finally:
            self._syncing_roi = False

    def sync_rectangle(self, roi, rois=None):
        """Draw ``roi`` (and ``rois``) as the rectangles of the ROI layer (if one is followed)."""
        layer = self._roi_layer
        if layer is None or self._syncing_roi:
            return
        wanted = ([roi] if roi is not None else []) + list(rois or ())
        current = [d for d, kind in zip(layer.data, layer.shape_type) if kind == "rectangle"]
        shape = self._frame_shape()
        if shape is not None and [roi_from_rectangle(d, *shape) for d in current] == [tuple(r) for r in wanted]:
            return
        self._syncing_roi = True
        try:
            corners = [rectangle_from_roi(r) for r in wanted]
            if layer.ndim > 2 and corners:
                lead = np.zeros((4, layer.ndim - 2))
                corners = [np.column_stack([lead, c]) for c in corners]
            layer.selected_data = set()
            layer.data = []
            if corners:
                layer.add_rectangles(corners)
        finally:
            self._syncing_roi = False
