"""``napari-localize demo``: napari with the simulated DNA-PAINT movie and the dock widgets."""

from __future__ import annotations


def open_demo(viewer=None, preview: bool = True):
    """Add the sample movie to ``viewer`` (a new one if ``None``), dock the panels, turn the preview on.

    Returns ``(viewer, widgets)`` with the docked widgets by title.
    """
    import napari

    from ._sample_data import SAMPLE_PARAMETERS, make_dna_paint_sample
    from ._state import session_for
    from ._widgets import dock_all

    viewer = viewer or napari.Viewer(title="napari-localize demo")
    data, kwargs, _ = make_dna_paint_sample()[0]
    layer = viewer.add_image(data, **kwargs)
    session = session_for(viewer)
    session.update(**SAMPLE_PARAMETERS)
    widgets = dock_all(viewer)
    widgets["Identification"].movie.value = layer
    widgets["Identification"].preview.value = preview
    return viewer, widgets


def run_demo(quit_after: float | None = None) -> int:
    """Open the demo and run napari's event loop; quit after ``quit_after`` seconds if given."""
    import napari
    from qtpy.QtCore import QTimer

    viewer, _ = open_demo()
    if quit_after is not None:
        QTimer.singleShot(int(quit_after * 1000), viewer.close)
    napari.run()
    return 0


def screenshot_scene(viewer=None, size=(1920, 1080), roi=(20, 20, 108, 108), timeout_s: float = 600.0):
    """The README's picture: the demo at ``size`` with preview, an ROI drawn in a Shapes layer and a finished run.

    Returns ``(viewer, widgets)``; ``viewer.screenshot(path, canvas_only=False)`` then saves the window.
    """
    import time

    from qtpy.QtWidgets import QApplication

    from ._preview import rectangle_from_roi

    viewer, widgets = open_demo(viewer, preview=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.setGeometry(0, 0, *size)
    shapes = viewer.add_shapes([rectangle_from_roi(roi)], shape_type="rectangle", name="my ROI",
                               edge_color="cyan", face_color="transparent", edge_width=0.6)
    widgets["Identification"].use_shapes_layer(shapes)
    viewer.dims.set_current_step(0, 10)
    loc = widgets["Localize"]
    loc.run()
    deadline = time.monotonic() + timeout_s
    while loc.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    sr = viewer.layers["super-resolution"]
    sr.contrast_limits = (0.0, sr.contrast_limits[1] / 4)  # the sites stand out over the raw frame
    viewer.layers[0].opacity = 0.7
    viewer.layers.selection.active = sr
    viewer.reset_view()
    QApplication.processEvents()
    return viewer, widgets
