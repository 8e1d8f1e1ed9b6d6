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
