"""The sCMOS calibration part of the camera panel, in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_and_wait

from napari_localize.core.camera_calibration import calibrate_camera
from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel
from napari_localize.io.camera_calibration import save_camera_calibration

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    cam = SCMOSCamera(SCMOSModel(chip_height=40, chip_width=48, seed=2))
    cal = calibrate_camera([cam.frames(300, 0.0)], [[cam.frames(100, lv, seed=i + 1)] for i, lv in
                                                     enumerate((40.0, 120.0, 300.0))])
    path = tmp_path_factory.mktemp("cal") / "cam_scmos_calib.hdf5"
    save_camera_calibration(path, cal)
    return path, cal


def test_load_a_calibration_and_show_its_maps(make_napari_viewer, calibration_file):
    from napari_localize._napari._widgets import PhotonWidget

    path, cal = calibration_file
    viewer = make_napari_viewer()
    widget = PhotonWidget(viewer)
    seen = []
    widget.scmos.changed.connect(seen.append)
    widget.scmos._file.value = str(path)  # as the file picker sets it
    assert widget.scmos.calibration is not None and seen[-1] is widget.scmos.calibration
    assert "40x48 px" in widget.scmos._summary.value and "hot pixels" in widget.scmos._summary.value
    widget.scmos._show.clicked.emit()
    names = [layer.name for layer in viewer.layers]
    assert names == [f"{path.name} offset", f"{path.name} variance (log10)", f"{path.name} gain"]
    np.testing.assert_array_equal(viewer.layers[f"{path.name} gain"].data, cal.gain)
    np.testing.assert_allclose(viewer.layers[f"{path.name} variance (log10)"].data, np.log10(cal.variance))
    widget.scmos._show.clicked.emit()  # showing again replaces, never duplicates
    assert len(viewer.layers) == 3
    widget.scmos._clear.clicked.emit()
    assert widget.scmos.calibration is None and seen[-1] is None


def test_a_bad_file_is_reported_and_nothing_is_kept(make_napari_viewer, tmp_path):
    from napari_localize._napari._widgets import PhotonWidget

    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"nope")
    widget = PhotonWidget(make_napari_viewer())
    widget.scmos._file.value = str(bad)
    assert widget.scmos.calibration is None and "not an HDF5 file" in widget.scmos._summary.value


def test_the_camera_config_names_the_calibration(make_napari_viewer, calibration_file, tmp_path):
    from napari_localize._napari._state import session_for
    from napari_localize._napari._widgets import PhotonWidget

    path, _ = calibration_file
    config = tmp_path / "cams.yaml"
    config.write_text(f"Cameras:\n  Flash:\n    Baseline: 100\n    Sensitivity: 0.5\n"
                      f"camera-calibrations:\n  Flash: {path}\n")
    viewer = make_napari_viewer()
    widget = PhotonWidget(viewer)
    widget.camera.load_config(config)
    info = {"Frames": 3, "Height": 20, "Width": 24, "Camera": "Flash",
            "Micro-Manager Metadata": {"ROI": "8-4-24-20"}}
    session_for(viewer).set_movie_layer(viewer.add_image(np.zeros((3, 20, 24)), metadata={"movie_info": info}))
    assert widget.scmos.path == str(path)
    assert widget.scmos.movie_origin == (4, 8)
    layers = widget.scmos.show_maps()
    assert tuple(layers[0].translate) == (-4, -8)  # the chip's maps drawn under the cropped movie's pixels


def test_the_run_and_the_preview_use_the_loaded_calibration(make_napari_viewer, qtbot, tmp_path):
    """Photon conversion panel: load the chip's maps; the Localize run records them and the preview's spots
    are those of the variance-aware identification (not the hot pixels)."""
    from napari_localize.cli import suggested_min_net_gradient
    from napari_localize.core.camera import CameraMaps
    from napari_localize.core.camera_calibration import CameraCalibration
    from napari_localize.core.identify_scmos import identify_scmos
    from napari_localize.core.simulate import SimulationParameters
    from napari_localize.core.simulate_scmos import simulate_scmos_movie
    from napari_localize.io.movies.write import write_movie

    model = SCMOSModel(chip_height=48, chip_width=48, hot_fraction=0.04, seed=6)
    p = SimulationParameters(n_frames=20, height=48, width=48, spots_per_frame=3, photons=500, bg=10, seed=2)
    frames, truth = simulate_scmos_movie(p, model)
    offset, variance, gain, _ = model.maps()
    cal_path = save_camera_calibration(tmp_path / "chip_scmos_calib.hdf5", CameraCalibration(offset, variance, gain))
    movie = tmp_path / "m.ome.tif"
    write_movie(movie, [frames], frames.shape, frames.dtype)
    viewer = make_napari_viewer()
    from napari_localize._napari._widgets import dock_all

    w = dock_all(viewer)
    (layer,) = viewer.open(str(movie), plugin="napari-localize")
    threshold = suggested_min_net_gradient(SimulationParameters(**{**p.as_dict(), "sensitivity": 0.5}))
    w["Identification"].session.update(min_net_gradient=threshold, baseline=100.0, sensitivity=0.5)
    w["Photon conversion"].scmos.load(cal_path)
    session = w["Identification"].session
    assert session.camera_calibration is w["Photon conversion"].scmos.calibration
    # the preview on the frame shown
    w["Identification"].preview.value = True
    w["Identification"].preview_controller.refresh()
    maps = CameraMaps.from_calibration(CameraCalibration(offset, variance, gain), 0.5)
    f = session.current_frame()
    expected = identify_scmos(frames[f], 7, threshold, maps.offset, maps.sensitivity, maps.variance)
    assert w["Identification"].preview_controller.last_count == len(expected)
    # the run
    run_and_wait(qtbot, w["Localize"].run)  # a real thread worker
    result = session.result
    assert result is not None and len(result.locs) >= 0.97 * len(truth)
    fit_doc = next(d for d in result.info if "Camera calibration path" in d)
    assert fit_doc["Camera calibration path"] == os.path.abspath(cal_path)
