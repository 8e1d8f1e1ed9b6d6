"""The 3D panel with a spline PSF, in a real napari viewer: load Picasso's file, show the PSF model as a layer,
calibrate the open pupil-PSF bead stack, and the Localize run with Fit z (= the CLI's result, near the truth)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import DATA, match_truth, run_and_wait

from napari_localize.cli import main as cli_main
from napari_localize.core.pupil import ASTIGMATIC_3D
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack, simulate_frames
from napari_localize.io.movies.write import write_movie
from napari_localize.io.spline_calibration import load_spline_calibration

pytestmark = pytest.mark.gui

PICASSO_FILE = DATA / "picasso_small_spline_calib.hdf5"
SESSION = {"box_size": 7, "min_net_gradient": 800.0, "baseline": 100.0, "sensitivity": 1.0, "em_gain": 1.0,
           "fit_method": "mle", "pixelsize": 130.0}
PUPIL = {"zernike_nm": ASTIGMATIC_3D}


def _dock(viewer):
    from napari_localize._napari._widgets import dock_all

    widgets = dock_all(viewer)
    widgets["Identification"].session.update(**SESSION)
    return widgets


def test_load_picassos_spline_and_show_the_psf_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    zw = _dock(viewer)["3D (astigmatism)"]
    assert not zw.show_psf_button.enabled
    assert zw.load(PICASSO_FILE)
    session = zw.session
    assert zw.model.value == "spline" and "spline PSF (Picasso)" in zw.summary.value
    # the run fits in the calibration's box: the Identification panel's box follows it
    assert session.parameters.box_size == 9
    assert zw.show_psf_button.enabled and zw.fit_z.enabled
    layer = zw.show_psf()
    psf = load_spline_calibration(PICASSO_FILE)
    assert layer.data.shape == (31, 9, 9)
    np.testing.assert_allclose(layer.data[10], psf.spot(0.0, 0.0, float(layer.translate[0] + 10 * layer.scale[0]), 9),
                               atol=1e-9)
    # the magnification factor applies to the loaded spline
    zw.magnification.value = 0.5
    assert session.zcalibration.z_range == pytest.approx(tuple(0.5 * v for v in psf.z_range))
    # options that do not apply to a spline fit are off
    zw.fit_z.value = True
    assert zw.neighbours.enabled and zw.max_gof.enabled and not zw.z_method.enabled and not zw.z_filter.enabled


def test_calibrate_spline_from_the_open_stack_and_fit_z(make_napari_viewer, tmp_path, qtbot):
    p = SimulationParameters(n_frames=41, height=80, width=80, photons=20000, bg=20, baseline=100, seed=2,
                             psf="pupil", pupil=PUPIL, min_separation=20, margin=12)
    frames, _ = simulate_bead_stack(p, n_beads=8, step_nm=30.0)
    stack = os.fspath(tmp_path / "beads.ome.tif")
    write_movie(stack, [frames], frames.shape, frames.dtype)
    viewer = make_napari_viewer()
    viewer.open(stack, plugin="napari-localize")
    w = _dock(viewer)
    zw, loc = w["3D (astigmatism)"], w["Localize"]
    zw.model.value = "spline"
    zw.step_nm.value = 30.0
    zw.magnification.value = 1.0
    run_and_wait(qtbot, zw.calibrate, timeout=600_000)
    cal = tmp_path / "beads.ome_spline_calib.hdf5"
    assert cal.exists() and (tmp_path / "beads.ome_spline_calib.png").exists(), zw.status.value
    session = zw.session
    assert session.zcalibration_path == os.fspath(cal) and session.parameters.box_size == 13
    assert "beads averaged" in zw.summary.value
    # a blinking movie through the Localize panel with Fit z equals the CLI's run with the same file
    q = SimulationParameters(n_frames=16, height=64, width=64, spots_per_frame=4, photons=3000, bg=20,
                             baseline=100, seed=3, z_range=(-400.0, 400.0), psf="pupil", pupil=PUPIL,
                             min_separation=16, margin=8)
    blink, truth = simulate_frames(q)
    movie = os.fspath(tmp_path / "blink.ome.tif")
    write_movie(movie, [blink], blink.shape, blink.dtype)
    (layer,) = viewer.open(movie, plugin="napari-localize")
    session.set_movie_layer(layer)
    zw.fit_z.value = True
    assert session.wants_3d()
    run_and_wait(qtbot, loc.run, timeout=600_000)
    assert "fitted in 3D" in loc.status.value, loc.status.value
    with h5py.File(tmp_path / "blink.ome_locs.hdf5") as f:
        gui = f["locs"][...]
    out = tmp_path / "cli"
    out.mkdir()
    assert cli_main(["localize", movie, "--zcalib", os.fspath(cal), "--min-net-gradient", "800", "--baseline",
                     "100", "--output-dir", os.fspath(out)]) == 0
    with h5py.File(out / "blink.ome_locs.hdf5") as f:
        cli = f["locs"][...]
    np.testing.assert_array_equal(gui, cli)
    idx = match_truth(gui, truth)
    assert (idx >= 0).mean() > 0.9
    err = gui["z"][idx >= 0] - truth["z"][idx[idx >= 0]]
    assert np.sqrt(np.mean(err**2)) < 40.0
