"""The dock widgets in a real napari viewer (run under ``xvfb-run -a``).

Expected values come from the simulator's ground truth, from the core called directly, from the CLI, or
from reading the written files with h5py.
"""

import os

import h5py
import numpy as np
import pytest
from conftest import run_and_wait

from napari_localize.cli import main as cli_main
from napari_localize.cli import suggested_min_net_gradient
from napari_localize.core.identify import identify
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.io.movies.write import write_movie

pytestmark = pytest.mark.gui

SIM = SimulationParameters(n_frames=30, height=64, width=64, spots_per_frame=5, photons=3000, bg=10, sigma=1.0,
                           baseline=100, min_separation=10, margin=6, seed=3)
MIN_NG = suggested_min_net_gradient(SIM)
PHOTON = {"baseline": 100.0, "sensitivity": 1.0, "em_gain": 1.0, "min_net_gradient": MIN_NG}


@pytest.fixture(scope="module")
def movie():
    return simulate_frames(SIM)


def _widgets(viewer):
    from napari_localize._napari._widgets import dock_all

    return dock_all(viewer)


def _add_movie(viewer, frames, path=None):
    from napari_localize.io.movies import movie_info

    meta = {"movie_info": movie_info(frames.shape, frames.dtype, path), "movie_path": path}
    return viewer.add_image(frames, name="movie", metadata=meta)


def _boxes_on_truth(points, truth) -> bool:
    """One preview box per true spot, each centred within a pixel of that spot's true position."""
    if len(points) != len(truth):
        return False
    d = np.abs(points[:, None, :] - np.column_stack([truth["y"], truth["x"]])[None]).max(axis=2)
    return bool(np.all(d.min(axis=0) < 1.0) and np.all(d.min(axis=1) < 1.0))


def test_preview_count_matches_truth_and_core(make_napari_viewer, qtbot, movie):
    frames, truth = movie
    viewer = make_napari_viewer()
    _add_movie(viewer, frames)
    w = _widgets(viewer)
    identify_w = w["Identification"]
    identify_w.session.update(**PHOTON)
    viewer.dims.set_current_step(0, 7)
    identify_w.preview.value = True
    layer = viewer.layers["spots (preview)"]
    in_frame = truth[truth["frame"] == 7]
    core = identify(frames[7], 7, MIN_NG)
    assert identify_w.preview_controller.last_count == len(in_frame) == len(core)
    assert identify_w.count.value == f"{len(in_frame)} spots in this frame"
    assert _boxes_on_truth(layer.data, in_frame)

    # the slider moves the preview (debounced); the same layer is updated in place
    n_layers = len(viewer.layers)
    viewer.dims.set_current_step(0, 12)
    in_12 = truth[truth["frame"] == 12]
    qtbot.waitUntil(lambda: _boxes_on_truth(layer.data, in_12), timeout=5000)
    assert viewer.layers["spots (preview)"] is layer and len(viewer.layers) == n_layers

    # a parameter change re-identifies: a huge threshold leaves nothing
    identify_w.net_gradient.value = 1e8
    qtbot.waitUntil(lambda: len(layer.data) == 0, timeout=5000)
    assert identify_w.count.value == "0 spots in this frame"


def test_box_size_is_odd_only(make_napari_viewer, movie, qtbot):
    viewer = make_napari_viewer()
    _add_movie(viewer, movie[0])
    w = _widgets(viewer)["Identification"]
    w.box_size.value = 8
    assert w.box_size.value == 9
    assert w.session.parameters.box_size == 9


def _frame_away_from_roi_border(truth, roi, n_frames):
    """A frame whose spots are all > 1.5 px from the ROI border, with spots inside and outside."""
    y0, x0, y1, x1 = roi
    for f in range(n_frames):
        t = truth[truth["frame"] == f]
        dy = np.minimum(np.abs(t["y"] - (y0 - 0.5)), np.abs(t["y"] - (y1 - 0.5)))
        dx = np.minimum(np.abs(t["x"] - (x0 - 0.5)), np.abs(t["x"] - (x1 - 0.5)))
        inside = (t["y"] > y0 - 0.5) & (t["y"] < y1 - 0.5) & (t["x"] > x0 - 0.5) & (t["x"] < x1 - 0.5)
        if np.all(np.minimum(dy, dx) > 1.5) and 0 < inside.sum() < len(t):
            return f, int(inside.sum())
    raise AssertionError("no suitable frame in the simulated movie")


def test_shapes_rectangle_sets_roi_and_restricts_identification(make_napari_viewer, qtbot, movie):
    frames, truth = movie
    viewer = make_napari_viewer()
    _add_movie(viewer, frames)
    w = _widgets(viewer)["Identification"]
    w.session.update(**PHOTON)
    roi = (10, 8, 40, 44)
    frame, n_inside = _frame_away_from_roi_border(truth, roi, SIM.n_frames)
    viewer.dims.set_current_step(0, frame)
    w.preview.value = True
    w.roi_from_shapes.changed.emit(True)
    shapes = viewer.layers["ROI"]
    # a rectangle with edges on pixel borders: pixels y0..y1-1, x0..x1-1
    shapes.add_rectangles([[roi[0] - 0.5, roi[1] - 0.5], [roi[2] - 0.5, roi[3] - 0.5]])
    assert w.session.parameters.roi == roi
    assert [s.value for s in w.roi_numbers] == list(roi) and w.roi_on.value
    qtbot.waitUntil(lambda: w.preview_controller.last_count == n_inside, timeout=5000)
    pts = viewer.layers["spots (preview)"].data
    assert np.all((pts[:, 0] >= roi[0]) & (pts[:, 0] < roi[2]) & (pts[:, 1] >= roi[1]) & (pts[:, 1] < roi[3]))

    # moving the rectangle moves the ROI
    shapes.data = [shapes.data[0] + np.array([2.0, 3.0])]
    assert w.session.parameters.roi == (12, 11, 42, 47)
    # typing numbers moves the rectangle
    w.roi_numbers[0].value = 5
    corners = viewer.layers["ROI"].data[-1]
    np.testing.assert_allclose(corners.min(axis=0), [4.5, 10.5])
    np.testing.assert_allclose(corners.max(axis=0), [41.5, 46.5])


def test_run_gives_the_same_localizations_as_the_cli(make_napari_viewer, tmp_path, movie, qtbot):
    frames, truth = movie
    path = os.fspath(tmp_path / "sim.ome.tif")
    write_movie(path, [frames], frames.shape, frames.dtype)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-localize")
    assert layer.metadata["movie_path"] == path
    w = _widgets(viewer)
    w["Identification"].session.update(**PHOTON, frame_range=(2, 25), fit_method="lq")
    w["Localize"].render_method.value = "histogram"
    run_and_wait(qtbot, w["Localize"].run)
    result = w["Localize"].session.result
    found, fitted = result.stats.identified, len(result.locs)
    # what happened to every spot: found = fitted + dropped, and why they were dropped
    assert w["Localize"].status.value.startswith(f"{found} found, {fitted} fitted, {found - fitted} dropped")
    assert w["Localize"].status.value.endswith(", 24 frames") and result.stats.frames == 24
    assert found - fitted == result.stats.not_converged + result.stats.not_sane
    assert cli_main(["localize", path, "--suffix", "_cli", "--baseline", "100", "--sensitivity", "1",
                     "--gain", "1", "--min-net-gradient", str(MIN_NG), "--frames", "2", "25",
                     "--fit-method", "lq"]) == 0
    with h5py.File(tmp_path / "sim.ome_locs.hdf5") as f:
        gui = f["locs"][...]
    with h5py.File(tmp_path / "sim.ome_cli_locs.hdf5") as f:
        cli = f["locs"][...]
    assert gui.dtype == cli.dtype
    np.testing.assert_array_equal(gui, cli)
    assert (tmp_path / "sim.ome_locs.yaml").exists()
    assert str(tmp_path / "sim.ome_locs.hdf5") in w["Localize"].files.value
    # every simulated spot of frames 2..25 was found
    assert len(gui) == int(((truth["frame"] >= 2) & (truth["frame"] <= 25)).sum())

    points = viewer.layers["localizations"]
    np.testing.assert_array_equal(points.data[:, 0], gui["frame"])
    np.testing.assert_allclose(points.data[:, 1:], np.column_stack([gui["y"], gui["x"]]), atol=1e-4)
    np.testing.assert_array_equal(points.features["photons"], gui["photons"])
    image = viewer.layers["super-resolution"]
    assert image.data.sum() == len(gui)  # histogram: one count per localization


def test_layer_without_file_is_localized_but_not_written(make_napari_viewer, tmp_path, movie, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(movie[0][:5])  # a plain array layer: no reader metadata, no file
    w = _widgets(viewer)
    w["Identification"].session.update(**PHOTON)
    run_and_wait(qtbot, w["Localize"].run)
    assert "not written" in w["Localize"].files.value
    assert len(viewer.layers["localizations"].data) == int((movie[1]["frame"] < 5).sum())
    assert os.listdir(tmp_path) == []


def test_bad_parameters_are_reported_not_run(make_napari_viewer, movie, qtbot):
    viewer = make_napari_viewer()
    _add_movie(viewer, movie[0])
    w = _widgets(viewer)
    w["Identification"].session.update(frame_range=(500, 600))
    assert run_and_wait(qtbot, w["Localize"].run) is None
    assert "frame range starts at 500" in w["Localize"].status.value
    assert not w["Localize"].running and "localizations" not in viewer.layers


def test_threaded_run_progress_and_cancel(make_napari_viewer, qtbot, tmp_path, lockstep_workers):
    p = SimulationParameters(n_frames=600, height=48, width=48, spots_per_frame=3, photons=3000, bg=10,
                             baseline=100, min_separation=10, margin=6, seed=5)
    frames, truth = simulate_frames(p)
    movie_path = os.fspath(tmp_path / "threaded.tif")  # only its name is used: files would go beside it
    viewer = make_napari_viewer()
    _add_movie(viewer, frames, movie_path)
    w = _widgets(viewer)
    w["Identification"].session.update(**PHOTON)
    loc = w["Localize"]
    loc.chunk_frames = 1

    # cancel after the first chunk: the run stops, writes nothing, and the button is Run again
    worker = loc.run()
    assert loc.run_button.text == "Cancel"
    worker.yielded.connect(lambda value: loc.cancel() if value[0] > 0 else None)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert loc.status.value == "cancelled: nothing written"
    assert loc.progress_values and loc.progress_values[-1][0] < len(frames)
    assert os.listdir(tmp_path) == []
    assert loc.run_button.text == "Localize" and not loc.running
    assert "localizations" not in viewer.layers

    # the viewer still works: the preview answers, and a full threaded run reports progress to the end
    identify_w = w["Identification"]
    viewer.dims.set_current_step(0, 3)
    identify_w.preview.value = True
    assert identify_w.preview_controller.last_count == int((truth["frame"] == 3).sum())
    loc.chunk_frames = 100
    worker = loc.run()
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    done = [d for d, _ in loc.progress_values]
    assert done == sorted(done) and done[-1] == len(frames) == loc.progress_values[-1][1]
    assert sorted(os.listdir(tmp_path)) == ["threaded_locs.hdf5", "threaded_locs.yaml"]
    with h5py.File(tmp_path / "threaded_locs.hdf5") as f:
        assert len(f["locs"]) == len(truth)


def test_parameters_persist_between_sessions(make_napari_viewer, movie, qtbot):
    from napari_localize._napari._state import PARAMETERS_FILE, config_dir

    viewer = make_napari_viewer()
    _add_movie(viewer, movie[0])
    w = _widgets(viewer)
    w["Identification"].box_size.value = 9
    w["Identification"].net_gradient.value = 1234.0
    w["Photon conversion"].baseline.value = 398.0
    w["Photon conversion"].sensitivity.value = 0.45
    w["Fit"].method.value = "lq"
    saved = os.path.join(os.environ["NAPARI_LOCALIZE_CONFIG_DIR"], PARAMETERS_FILE)
    assert config_dir() == os.environ["NAPARI_LOCALIZE_CONFIG_DIR"] and os.path.exists(saved)

    other = make_napari_viewer()  # a new session restores what the last one used
    w2 = _widgets(other)
    assert w2["Identification"].box_size.value == 9
    assert w2["Identification"].net_gradient.value == 1234.0
    assert w2["Photon conversion"].baseline.value == 398.0
    assert w2["Photon conversion"].sensitivity.value == 0.45
    assert w2["Fit"].method.value == "lq"


def test_sample_data_and_demo(make_napari_viewer):
    from napari_localize._napari._demo import open_demo
    from napari_localize._napari._sample_data import SAMPLE

    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-localize", "dna_paint")
    assert layers[0].data.shape == (SAMPLE.n_frames, SAMPLE.height, SAMPLE.width)
    viewer.layers.clear()
    viewer, widgets = open_demo(viewer)
    assert set(widgets) == {"Identification", "Photon conversion", "Fit", "Localize", "3D (astigmatism)",
                            "Batch (folder)", "Undrift", "panel"}
    assert widgets["Identification"].count.value.endswith("spots in this frame")
    assert widgets["Photon conversion"].baseline.value == SAMPLE.baseline


def test_camera_config_fills_photon_conversion_from_movie_metadata(make_napari_viewer, movie, qtbot, tmp_path):
    from napari_localize._napari._state import session_for
    from napari_localize._napari._widgets import PhotonWidget

    config = tmp_path / "cams.yaml"
    config.write_text(
        "Cameras:\n"
        "  Zyla:\n"
        "    Baseline: 100\n"
        "    Pixelsize: 108\n"
        "    Sensitivity Categories: [PixelReadoutRate]\n"
        "    Sensitivity: {'200 MHz': 0.46, '540 MHz': 0.6}\n"
        "  EMCCD:\n"
        "    Baseline: 200\n"
        "    Sensitivity: 4.2\n"
        "    Gain Property Name: Gain\n"
    )
    viewer = make_napari_viewer()
    widget = PhotonWidget(viewer)
    session = session_for(viewer)
    widget.camera.load_config(config)
    frames, _ = movie
    info = {"Frames": len(frames), "Height": frames.shape[1], "Width": frames.shape[2], "Camera": "EMCCD",
            "Micro-Manager Metadata": {"EMCCD-Gain": "150"}}
    layer = viewer.add_image(frames, metadata={"movie_info": info})
    session.set_movie_layer(layer)
    p = session.parameters
    assert (p.baseline, p.sensitivity, p.em_gain, p.camera) == (200.0, 4.2, 150.0, "EMCCD")
    assert widget.baseline.value == 200.0 and widget.em_gain.value == 150.0  # the fields follow ...
    widget.sensitivity.value = 3.9  # ... and stay editable
    assert session.parameters.sensitivity == 3.9
    info2 = dict(info, Camera="Zyla", **{"Micro-Manager Metadata": {"Zyla-PixelReadoutRate": "540 MHz"}})
    session.set_movie_layer(viewer.add_image(frames, metadata={"movie_info": info2}))
    p = session.parameters
    assert (p.baseline, p.sensitivity, p.em_gain, p.pixelsize, p.camera) == (100.0, 0.6, 1.0, 108.0, "Zyla")


def test_bead_stack_sample_calibrates():
    from napari_localize import LocalizeParameters
    from napari_localize._napari._sample_data import BEAD_STACK, BEAD_STEP_NM, make_bead_stack_sample
    from napari_localize.api import calibrate_z_stack
    from napari_localize.core.simulate import stage_positions

    [(frames, kwargs, kind)] = make_bead_stack_sample()
    assert kind == "image" and frames.shape == (121, 96, 96)
    cal = calibrate_z_stack(frames, LocalizeParameters(box_size=9, min_net_gradient=2000, baseline=100),
                            BEAD_STEP_NM, magnification_factor=1.0)
    # the simulator's widths (Huang model, foci at -/+400 nm) are recovered across the stack
    z = stage_positions(BEAD_STACK.n_frames, BEAD_STEP_NM)[10:-10]
    true_wx = BEAD_STACK.sigma * np.sqrt(1 + ((z - BEAD_STACK.astig_gamma) / BEAD_STACK.astig_depth) ** 2)
    true_wy = BEAD_STACK.sigma * np.sqrt(1 + ((z + BEAD_STACK.astig_gamma) / BEAD_STACK.astig_depth) ** 2)
    assert np.max(np.abs(np.polyval(cal.x_coefficients, z) - true_wx)) < 0.05
    assert np.max(np.abs(np.polyval(cal.y_coefficients, z) - true_wy)) < 0.05
