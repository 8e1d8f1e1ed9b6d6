"""The 3D (astigmatism) dock widget in a real napari viewer (run under ``xvfb-run -a``).

Expected values come from the simulator's ground truth (bead widths, spot heights), from the CLI and the API
called directly on the same files, and from reading the written files with h5py / PyYAML.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import match_truth, run_and_wait

from napari_localize.api import calibrate_z_stack, localize
from napari_localize.cli import main as cli_main
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack, simulate_frames
from napari_localize.core.zfit import ZFitOptions
from napari_localize.io.calibration import load_calibration
from napari_localize.io.movies import open_movie
from napari_localize.io.movies.write import write_movie

pytestmark = pytest.mark.gui

STEP = 20.0
#: the bead stack: 61 frames 20 nm apart (+-600 nm), 8 beads, astigmatic foci at -/+400 nm
BEADS = SimulationParameters(n_frames=61, height=64, width=64, photons=20000, bg=20, baseline=100, seed=1)
#: blinking spots at known heights inside the calibrated range
BLINK = SimulationParameters(n_frames=24, height=64, width=64, spots_per_frame=8, photons=3000, bg=20,
                             baseline=100, z_range=(-450.0, 450.0), seed=5)
SESSION = {"box_size": 9, "min_net_gradient": 800.0, "baseline": 100.0, "sensitivity": 1.0, "em_gain": 1.0,
           "fit_method": "mle", "pixelsize": 130.0}
PARAMS = LocalizeParameters(**SESSION)


def _write(folder, name, frames) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.fspath(folder / name)
    write_movie(path, [frames], frames.shape, frames.dtype)
    return path


@pytest.fixture(scope="module")
def bead_stack():
    return simulate_bead_stack(BEADS, n_beads=8, step_nm=STEP, bead_z_offset_sd=10.0)


@pytest.fixture(scope="module")
def cli_calibration(tmp_path_factory, bead_stack):
    """A calibration YAML written by ``napari-localize calibrate-z`` from the bead stack file."""
    folder = tmp_path_factory.mktemp("cli_calibration")
    stack = _write(folder, "beads.ome.tif", bead_stack[0])
    out = os.fspath(folder / "cli_calib.yaml")
    assert cli_main(["calibrate-z", stack, "--step-nm", str(STEP), "--magnification-factor", "1.0",
                     "--box-size", "9", "--min-net-gradient", "800", "--baseline", "100", "--sensitivity", "1",
                     "--gain", "1", "--output", out]) == 0
    return out


@pytest.fixture(scope="module")
def blinking(tmp_path_factory):
    frames, truth = simulate_frames(BLINK)
    return frames, truth, tmp_path_factory.mktemp("blinking")


def _dock(viewer):
    from napari_localize._napari._widgets import dock_all

    widgets = dock_all(viewer)
    widgets["Identification"].session.update(**SESSION)
    return widgets


def test_load_cli_calibration_shows_summary(make_napari_viewer, cli_calibration, qtbot):
    viewer = make_napari_viewer()
    zw = _dock(viewer)["3D (astigmatism)"]
    assert not zw.fit_z.enabled  # nothing to fit z with yet
    zw.magnification.value = 0.5  # the file's own factor (1.0) wins when loading ...
    zw.calibration_file.value = cli_calibration
    zw.load_button.clicked.emit()
    session = zw.session
    assert session.zcalibration is not None and session.zcalibration_path == os.path.abspath(cli_calibration)
    stored = yaml.safe_load((Path(cli_calibration)).read_text())
    np.testing.assert_array_equal(session.zcalibration.x_coefficients, stored["X Coefficients"])
    assert zw.magnification.value == stored["Magnification factor"] == 1.0
    # the calibrated range is the stack's +-600 nm (61 frames, 20 nm), times the factor 1.0
    assert "calibrated z: -600 .. 600 nm" in zw.summary.value
    assert cli_calibration in zw.summary.value and "61 frames, step 20 nm" in zw.summary.value
    assert zw.fit_z.enabled and not zw.fit_z.value
    # ... and a change of the factor afterwards applies to the loaded calibration
    zw.magnification.value = 0.8
    assert session.zcalibration.magnification_factor == 0.8
    assert "calibrated z: -480 .. 480 nm" in zw.summary.value


def test_calibrate_open_stack_writes_the_api_calibration(make_napari_viewer, tmp_path, bead_stack, qtbot):
    frames, truth = bead_stack
    stack = _write(tmp_path, "beads.ome.tif", frames)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(stack, plugin="napari-localize")
    w = _dock(viewer)
    zw = w["3D (astigmatism)"]
    assert zw.session.movie_layer is layer and zw.stack.value == layer.name
    zw.step_nm.value = STEP
    zw.magnification.value = 1.0
    run_and_wait(qtbot, zw.calibrate)
    yaml_path = tmp_path / "beads.ome_3d_calib.yaml"
    assert yaml_path.exists() and (tmp_path / "beads.ome_3d_calib.png").exists()
    written = yaml.safe_load(yaml_path.read_text())
    with open_movie(stack) as movie:
        api = calibrate_z_stack(movie, PARAMS, STEP, 1.0, path=os.path.abspath(stack))
    expected = api.as_picasso_dict()
    assert set(written) == set(expected)
    for key in ("X Coefficients", "Y Coefficients"):
        np.testing.assert_allclose(written[key], expected[key], rtol=1e-9, atol=1e-12)
    for key in ("Number of frames", "Step size in nm", "Magnification factor", "Frame bounds", "Path"):
        assert written[key] == expected[key]
    # the calibration recovers the simulator's width curves over the inner stack
    z = np.linspace(-450, 450, 31)
    wx, wy = BEADS.widths(z)
    assert np.max(np.abs(np.polyval(written["X Coefficients"], z) - wx)) < 0.05
    assert np.max(np.abs(np.polyval(written["Y Coefficients"], z) - wy)) < 0.05
    # it is now the session's calibration; the status gives its own z precision and where it went
    session = zw.session
    assert session.zcalibration_path == os.fspath(yaml_path)
    precision = api.diagnostics["z_precision_nm"]
    assert f"z precision {precision:.1f} nm" in zw.status.value and str(yaml_path) in zw.status.value
    assert "8 beads followed" in zw.summary.value and zw.fit_z.enabled


def test_calibrate_layer_without_file_keeps_it_in_memory(make_napari_viewer, tmp_path, bead_stack, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(bead_stack[0], name="beads")
    zw = _dock(viewer)["3D (astigmatism)"]
    zw.step_nm.value = STEP
    run_and_wait(qtbot, zw.calibrate)
    assert zw.session.zcalibration is not None and zw.session.zcalibration_path is None
    assert "in memory only" in zw.status.value and "in memory only" in zw.summary.value
    assert os.listdir(tmp_path) == []


def test_fit_z_run_matches_api_and_truth(make_napari_viewer, cli_calibration, blinking, qtbot):
    frames, truth, folder = blinking
    path = _write(folder, "blink.ome.tif", frames)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-localize")
    w = _dock(viewer)
    zw, loc = w["3D (astigmatism)"], w["Localize"]
    assert zw.load(cli_calibration)
    zw.fit_z.value = True
    zw.z_method.value = "mle"
    assert zw.session.wants_3d()
    loc.chunk_frames = 5  # several chunks: the result must not depend on them
    run_and_wait(qtbot, loc.run)
    stats, n = loc.session.result.stats, len(loc.session.result.locs)
    assert loc.status.value.startswith(f"{stats.identified} found, {n} fitted in 3D, {stats.identified - n} dropped")
    assert loc.status.value.endswith(f", {len(frames)} frames")
    with h5py.File(folder / "blink.ome_locs.hdf5") as f:
        gui = f["locs"][...]
    docs = list(yaml.safe_load_all((folder / "blink.ome_locs.yaml").read_text()))
    assert docs[-1]["Z Calibration Path"] == os.path.abspath(cli_calibration)
    # the same file through the API, with the same parameters and calibration
    with open_movie(path) as movie:
        api = localize(movie, PARAMS, calibration=load_calibration(cli_calibration),
                       z_options=ZFitOptions(method="mle")).locs
    assert gui.dtype == api.dtype and "z" in gui.dtype.names
    np.testing.assert_array_equal(gui, api)
    # the Points layer carries z and is coloured by it
    points = viewer.layers["localizations"]
    np.testing.assert_array_equal(points.features["z"], gui["z"])
    assert points.face_color_mode == "colormap" and points.face_colormap.name == "turbo"
    z = gui["z"].astype(float)
    expected_colors = points.face_colormap.map((z - z.min()) / (z.max() - z.min()))
    np.testing.assert_allclose(points.face_color, expected_colors, atol=1e-6)
    # heights against the simulation: nearly every spot found, RMSE near the predicted precision (lpz)
    idx = match_truth(gui, truth)
    assert (idx >= 0).mean() > 0.95 and len(gui) > 0.9 * len(truth)
    err = gui["z"][idx >= 0] - truth["z"][idx[idx >= 0]]
    rmse = float(np.sqrt(np.mean(err**2)))
    predicted = float(np.sqrt(np.mean(gui["lpz"][idx >= 0].astype(float) ** 2)))
    assert rmse < 40.0 and rmse < 1.6 * predicted
    assert abs(float(np.mean(err))) < 10.0


def test_cancel_during_3d_run_writes_nothing(make_napari_viewer, qtbot, tmp_path, cli_calibration, blinking, lockstep_workers):
    frames, _, _ = blinking
    path = _write(tmp_path, "cancel.ome.tif", frames)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-localize")
    w = _dock(viewer)
    zw, loc = w["3D (astigmatism)"], w["Localize"]
    assert zw.load(cli_calibration)
    zw.fit_z.value = True
    loc.chunk_frames = 1
    worker = loc.run()
    worker.yielded.connect(lambda value: loc.cancel() if value[0] > 0 else None)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert loc.status.value == "cancelled: nothing written"
    assert loc.progress_values[-1][0] < len(frames)
    assert os.listdir(tmp_path) == ["cancel.ome.tif"]
    assert "localizations" not in viewer.layers and not loc.running


def test_fit_z_needs_a_calibration_and_bad_yaml_is_reported(make_napari_viewer, tmp_path, cli_calibration,
                                                            qtbot):
    viewer = make_napari_viewer()
    zw = _dock(viewer)["3D (astigmatism)"]
    session = zw.session
    assert not zw.fit_z.enabled and not session.wants_3d()
    zw.fit_z.value = True  # even if ticked programmatically, no calibration means a 2D run
    assert not session.wants_3d()
    bad = tmp_path / "bad.yaml"
    bad.write_text("X Coefficients: [1, 2\nStep size: [")
    assert not zw.load(bad)
    assert zw.status.value.startswith("calibration not loaded") and str(bad) in zw.status.value
    assert session.zcalibration is None and not zw.fit_z.enabled
    missing = tmp_path / "keys.yaml"
    missing.write_text("Step size in nm: 10\n")
    assert not zw.load(missing)
    assert "missing key" in zw.status.value and "X Coefficients" in zw.status.value
    assert not zw.load(tmp_path / "nowhere.yaml")
    assert "no such z calibration file" in zw.status.value
    # a good calibration then a bad one: the good one stays
    assert zw.load(cli_calibration) and zw.fit_z.enabled
    assert not zw.load(bad)
    assert session.zcalibration_path == os.path.abspath(cli_calibration) and zw.fit_z.enabled


def test_threaded_calibration_cancel_then_run(make_napari_viewer, qtbot, tmp_path, bead_stack, lockstep_workers):
    stack = _write(tmp_path, "beads.ome.tif", bead_stack[0])
    viewer = make_napari_viewer()
    viewer.open(stack, plugin="napari-localize")
    zw = _dock(viewer)["3D (astigmatism)"]
    zw.step_nm.value = STEP
    zw.chunk_frames = 1
    worker = zw.calibrate()
    assert zw.calibrate_button.text == "Cancel"
    worker.yielded.connect(lambda value: zw.cancel() if value[0] > 0 else None)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert zw.status.value == "calibration cancelled: nothing written"
    assert zw.progress_values[-1][0] < BEADS.n_frames
    assert os.listdir(tmp_path) == ["beads.ome.tif"] and zw.session.zcalibration is None
    assert zw.calibrate_button.text == "Calibrate from open stack" and not zw.running
    zw.chunk_frames = None
    worker = zw.calibrate()
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert zw.progress_values[-1] == (BEADS.n_frames, BEADS.n_frames)
    assert sorted(os.listdir(tmp_path)) == ["beads.ome.tif", "beads.ome_3d_calib.png", "beads.ome_3d_calib.yaml"]
    assert zw.session.zcalibration_path == os.fspath(tmp_path / "beads.ome_3d_calib.yaml") and zw.fit_z.enabled


def test_every_z_policy_of_the_cli_is_in_the_widget(make_napari_viewer, tmp_path, cli_calibration, blinking, qtbot):
    """The widget's z options give the same run as the CLI flags (one outlier policy for both)."""
    from napari_localize.cli import main as cli_main

    frames, _, folder = blinking
    path = _write(folder, "policy.ome.tif", frames)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-localize")
    w = _dock(viewer)
    zw, loc = w["3D (astigmatism)"], w["Localize"]
    assert zw.load(cli_calibration)
    zw.fit_z.value = True
    zw.z_box_size.value = 11
    zw.neighbours.value = False
    zw.max_gof.value = 3.0
    zw.z_filter.value = 2.0
    assert zw.session.z_options == ZFitOptions(method="mle", filter=2.0, box_size=11, neighbours=False, max_gof=3.0)
    run_and_wait(qtbot, loc.run)
    p = loc.session.parameters
    assert cli_main(["localize", path, "--suffix", "_cli", "--zcalib", cli_calibration, "--z-box-size", "11",
                     "--z-no-neighbours", "--z-max-gof", "3", "--z-filter", "2", "--box-size", str(p.box_size),
                     "--min-net-gradient", str(p.min_net_gradient), "--baseline", str(p.baseline),
                     "--sensitivity", str(p.sensitivity), "--gain", str(p.em_gain),
                     "--pixelsize", str(p.pixelsize)]) == 0
    with h5py.File(folder / "policy.ome_locs.hdf5") as f:
        gui = f["locs"][...]
    with h5py.File(folder / "policy.ome_cli_locs.hdf5") as f:
        cli = f["locs"][...]
    assert len(gui) > 0
    np.testing.assert_array_equal(gui, cli)
    # an even z box is refused with a message naming it; the last valid options stay
    zw.z_box_size.value = 12
    assert "box" in zw.status.value and zw.session.z_options.box_size == 11
