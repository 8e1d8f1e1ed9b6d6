"""The one napari-localize dock: fits 1366x768 and 1920x1080, workflow order, ROI, progress, results, suffix."""

import os
import time

import numpy as np
import pytest
from conftest import DATA, run_and_wait

from napari_localize.core.pipeline import LocalizeStats

pytestmark = pytest.mark.gui


def _inside(widget, window) -> bool:
    """``widget`` is shown and its whole rectangle lies inside ``window`` (no scrolling, nothing clipped)."""
    from qtpy.QtCore import QPoint, QRect

    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, QPoint(0, 0))
    rect = QRect(top_left, widget.size())
    return window.rect().contains(rect) and widget.visibleRegion().boundingRect().size() == widget.size()


def _layout(viewer, size):
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    window.showNormal()
    window.setGeometry(0, 0, *size)
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.05)
    return window


@pytest.mark.parametrize("size", [(1920, 1080), (1366, 768)])
def test_every_run_button_is_inside_the_window(make_napari_viewer, qtbot, size):
    from napari_localize._napari._demo import open_demo

    viewer, widgets = open_demo(make_napari_viewer(show=True), preview=True)
    panel = widgets["panel"]
    window = _layout(viewer, size)
    # the window keeps the screen's size: the dock does not force it taller or wider
    assert window.width() <= size[0] and window.height() <= size[1]
    assert _inside(widgets["Localize"].run_button.native, window)  # pinned: visible without scrolling
    assert _inside(widgets["Localize"].progress_bar, window)
    panel.show_section("z")
    qtbot.wait(50)
    assert _inside(widgets["3D (astigmatism)"].calibrate_button.native, window)
    assert _inside(widgets["Localize"].run_button.native, window)
    panel.tabs.setCurrentIndex(1)
    qtbot.wait(50)
    assert _inside(widgets["Batch (folder)"].run_button.native, window)
    # the canvas keeps a good part of the window (napari's layer list is on the left)
    assert viewer.window._qt_viewer.canvas.native.width() > size[0] // 3


def test_sections_follow_the_workflow(make_napari_viewer):
    from napari_localize._napari._panel import SECTIONS, LocalizePanel

    viewer = make_napari_viewer()
    panel = LocalizePanel(viewer)
    panel.resize(430, 3000)
    panel.show()
    ys = [getattr(panel, name).native.parentWidget().geometry().y() for _, name in SECTIONS]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)
    assert [t for t, _ in SECTIONS] == ["1  Movie and identification", "2  Camera (photon conversion)", "3  Fit",
                                        "4  3D (astigmatism)"]
    assert panel.run_section.title() == "5  Run and results"
    panel.close()


def test_screenshot_at_1080p_with_movie_preview_roi_and_result(make_napari_viewer, tmp_path):
    from napari_localize._napari._demo import screenshot_scene

    viewer, widgets = screenshot_scene(make_napari_viewer(show=True))
    loc = widgets["Localize"]
    result = loc.session.result
    assert result is not None and len(result.locs) > 0
    assert loc.status.value.startswith(f"{result.stats.identified} found, {len(result.locs)} fitted")
    # the ROI of the user's Shapes layer restricted the run
    y0, x0, y1, x1 = loc.session.parameters.roi
    assert (y0, x0, y1, x1) == (20, 20, 108, 108)
    assert result.locs["x"].min() > x0 - 1 and result.locs["x"].max() < x1 and result.locs["y"].min() > y0 - 1
    for name in ("spots (preview)", "my ROI", "localizations", "super-resolution"):
        assert name in viewer.layers
    window = viewer.window._qt_window
    assert _inside(loc.run_button.native, window)
    path = tmp_path / "panel.png"
    image = viewer.screenshot(os.fspath(path), canvas_only=False)
    assert path.exists() and image.shape[0] <= 1080 and image.shape[1] <= 1920 and image.shape[1] > 1600
    assert image[..., :3].std() > 5  # not a blank grab


def test_roi_from_any_shapes_layer_and_hint(make_napari_viewer):
    from napari_localize._napari._preview import rectangle_from_roi
    from napari_localize._napari._widgets import dock_all

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 64, 80), np.uint16), name="movie")
    w = dock_all(viewer)
    ident = w["Identification"]
    # none drawn yet: a Shapes layer is made ready for drawing and the user is told what to do
    layer = ident.use_shapes_layer()
    assert layer.mode == "add_rectangle" and "draw one" in ident.roi_hint.value
    assert ident.session.parameters.roi is None
    # a Shapes layer of the user's own, selected: its rectangle is the ROI
    mine = viewer.add_shapes([rectangle_from_roi((10, 12, 30, 40))], shape_type="rectangle", name="cells")
    viewer.layers.selection.active = mine
    ident.use_shapes_layer()
    assert ident.session.parameters.roi == (10, 12, 30, 40) and "'cells'" in ident.roi_hint.value
    mine.data = [rectangle_from_roi((5, 6, 20, 22))]
    assert ident.session.parameters.roi == (5, 6, 20, 22)


def test_state_follows_the_movie(make_napari_viewer, qtbot):
    from napari_localize._napari._widgets import dock_all

    viewer = make_napari_viewer()
    big = viewer.add_image(np.zeros((5, 64, 80), np.uint16), name="big")
    w = dock_all(viewer)
    ident, loc = w["Identification"], w["Localize"]
    ident.session.update(roi=(10, 10, 60, 70), frame_range=(1, 4))
    loc.status.value = "12 found, 12 fitted, 0 dropped, 5 frames"
    small = viewer.add_image(np.zeros((3, 32, 32), np.uint16), name="small")
    ident.movie.value = small
    assert ident.session.parameters.roi == (10, 10, 32, 32)  # clamped into the new frame
    assert ident.session.parameters.frame_range == (1, 2)
    assert loc.status.value == "ready" and loc.files.value == ""
    ident.movie.value = big
    assert ident.session.movie_layer is big


def test_progress_compiling_message_then_rate_and_time_left(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import threading

    from napari_localize._napari import _widgets
    from napari_localize._napari._widgets import dock_all
    from napari_localize.core.simulate import SimulationParameters, simulate_frames

    frames, _ = simulate_frames(SimulationParameters(n_frames=40, height=32, width=32, spots_per_frame=2,
                                                     photons=3000, bg=10, baseline=100, seed=2))
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="movie")
    w = dock_all(viewer)
    w["Identification"].session.update(baseline=100, min_net_gradient=2000)
    loc = w["Localize"]
    loc.chunk_frames = 5
    monkeypatch.setattr(_widgets, "_KERNELS_READY", threading.Event())  # as in a fresh process
    worker = loc.run()
    assert "compiling kernels (first run only)" in loc.status.value
    assert loc.progress_bar.maximum() == 0  # busy indicator, not a bar stuck at 0
    formats = []
    worker.yielded.connect(lambda *_: formats.append(loc.progress_bar.format()))
    qtbot.waitUntil(lambda: not loc.running, timeout=120_000)
    assert _widgets.kernels_ready()
    assert any("frames/s" in f and "left" in f for f in formats), formats
    assert loc.progress_bar.value() == loc.progress_bar.maximum() == 40
    # the same run again: no compile message
    run_and_wait(qtbot, loc.run)
    assert "compiling" not in loc.status.value and "found" in loc.status.value


def test_result_summary_says_what_was_dropped_and_why():
    from napari_localize._napari._widgets import result_summary

    stats = LocalizeStats(frames=10, identified=50, not_converged=50, localized=0)
    assert result_summary(stats, 0) == "50 found, 0 fitted, 50 dropped (50 fits did not converge), 10 frames"
    stats = LocalizeStats(frames=3, identified=12, not_converged=1, not_sane=2, localized=9)
    assert result_summary(stats, 9) == ("12 found, 9 fitted, 3 dropped (1 fits did not converge, "
                                        "2 failed the sanity filter), 3 frames")
    assert result_summary(LocalizeStats(frames=1, identified=4, localized=4), 4) == \
        "4 found, 4 fitted, 0 dropped, 1 frames"


def test_channel_names_from_the_file_in_layer_names_and_default_suffix(make_napari_viewer, qtbot, tmp_path):
    import shutil

    from napari_localize._napari._reader import napari_get_reader
    from napari_localize._napari._widgets import default_suffix, dock_all

    folder = tmp_path / "mda"
    shutil.copytree(DATA / "ndtiff" / "12_bit_pycromanager_mda", folder)
    layers = napari_get_reader(str(folder))(str(folder))
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["mda [channel DAPI]", "mda [channel FITC]"]
    from napari_localize.io.movies import open_movie

    with open_movie(folder, channel="FITC") as by_name, open_movie(folder, channel=1) as by_index:
        assert by_name.info["Channel"] == "FITC"
        np.testing.assert_array_equal(by_name[:], by_index[:])
    assert [default_suffix(type("L", (), {"metadata": kw["metadata"]})) for _, kw, _ in layers] == \
        ["_DAPI", "_FITC"]
    viewer = make_napari_viewer()
    added = [viewer.add_image(data, **kwargs) for data, kwargs, _ in layers]
    w = dock_all(viewer)
    w["Identification"].movie.value = added[1]
    assert w["Localize"].suffix.value == "_FITC"
