"""The spline PSF run with the rest of the pipeline: sCMOS maps (per-pixel conversion, variance-aware
identification, the sCMOS likelihood), identification prefilters and a Dask cluster (LocalCluster on
loopback), each against the simulator's truth or the serial run."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import match_truth

from napari_localize.cli import main
from napari_localize.core.camera_calibration import CameraCalibration
from napari_localize.core.pupil import ASTIGMATIC_3D, PupilPSF
from napari_localize.core.simulate import SimulationParameters, expected_image, simulate_frames
from napari_localize.core.simulate_scmos import SCMOSModel, simulate_scmos_movie
from napari_localize.core.spline import SplinePSF, spline_coefficients
from napari_localize.io.camera_calibration import save_camera_calibration
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie
from napari_localize.io.spline_calibration import save_spline_calibration

PUPIL = {"zernike_nm": ASTIGMATIC_3D}


@pytest.fixture(scope="module")
def spline_file(tmp_path_factory):
    """The pupil PSF itself as a spline (20 nm apart, one node per pixel): the model of the movies."""
    pp = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    zs = np.arange(600.0, -601.0, -20.0)
    vol = pp.stack(zs, 13)
    psf = SplinePSF(spline_coefficients(vol), cx=6.0, cy=6.0, z_first=600.0, z_step=-20.0, box=11, z_init=0.0,
                    volume=vol, magnification_factor=1.0)
    return save_spline_calibration(tmp_path_factory.mktemp("cal") / "pupil_spline.hdf5", psf)


def _z_rmse(locs, truth):
    idx = match_truth(locs, truth, 1.0)
    m = idx >= 0
    return m.sum() / len(truth), float(np.sqrt(np.mean((locs["z"][m] - truth["z"][idx[m]]) ** 2))), idx


# ------------------------------------------------------------------------------------------------ sCMOS
MODEL = SCMOSModel(chip_height=48, chip_width=48, hot_fraction=0.03, seed=5)


def test_spline_run_uses_the_scmos_maps(spline_file, tmp_path):
    offset, variance, gain, _ = MODEL.maps()
    cal = tmp_path / "chip_scmos_calib.hdf5"
    save_camera_calibration(cal, CameraCalibration(offset, variance, gain, {"Frames": 0, "model": "scmos-noise"}))
    p = SimulationParameters(n_frames=40, height=48, width=48, spots_per_frame=4, photons=3000, bg=10.0, seed=3,
                             z_range=(-400.0, 400.0), psf="pupil", pupil=PUPIL, min_separation=14, margin=7)
    frames, truth = simulate_scmos_movie(p, MODEL)
    movie = tmp_path / "scmos.ome.tif"
    write_movie(movie, iter([frames]), frames.shape, frames.dtype)
    common = ["localize", str(movie), "--zcalib", str(spline_file), "--min-net-gradient", "300"]
    assert main(common + ["--camera-calibration", str(cal), "--suffix", "_maps"]) == 0
    locs, info = load_locs(tmp_path / "scmos.ome_maps_locs.hdf5")
    found, rmse, idx = _z_rmse(locs, truth)
    assert found >= 0.9, found
    assert rmse < 25.0, rmse
    # the run says which maps it used
    assert any("calib" in str(v).lower() for doc in info for v in doc.values() if isinstance(v, str))
    # hot pixels are not localized: every loc is a true spot
    assert (idx >= 0).mean() > 0.97
    # the same movie with a scalar conversion (the chip's mean offset and gain) is worse
    assert main(common + ["--baseline", f"{offset.mean():.3f}", "--sensitivity", f"{1.0 / gain.mean():.5f}",
                          "--suffix", "_scalar"]) == 0
    scalar, _ = load_locs(tmp_path / "scmos.ome_scalar_locs.hdf5")
    s_found, s_rmse, s_idx = _z_rmse(scalar, truth)
    assert (s_idx >= 0).mean() < (idx >= 0).mean() or s_rmse > rmse


# ---------------------------------------------------------------------------------------------- prefilter
def test_spline_run_with_the_temporal_median_ignores_static_debris(spline_file, tmp_path):
    p = SimulationParameters(n_frames=80, height=48, width=48, spots_per_frame=3, photons=3000, bg=10.0,
                             baseline=100.0, seed=4, z_range=(-400.0, 400.0), psf="pupil", pupil=PUPIL,
                             min_separation=14, margin=7)
    frames, truth = simulate_frames(p)
    rng = np.random.default_rng(9)
    dx, dy = rng.uniform(6, 42, 3), rng.uniform(6, 42, 3)
    static = expected_image(48, 48, dx, dy, np.full(3, 3000.0), 1.3, 1.3, 0.0)  # debris, in every frame
    movie_frames = (frames.astype(np.float32) + rng.poisson(static, frames.shape)).astype(np.uint16)
    movie = tmp_path / "debris.ome.tif"
    write_movie(movie, iter([movie_frames]), movie_frames.shape, movie_frames.dtype)
    common = ["localize", str(movie), "--zcalib", str(spline_file), "--baseline", "100", "--min-net-gradient",
              "600"]
    assert main(common + ["--suffix", "_raw"]) == 0
    assert main(common + ["--temporal-median", "41", "--gaussian-filter", "0.8", "--suffix", "_med"]) == 0
    raw, _ = load_locs(tmp_path / "debris.ome_raw_locs.hdf5")
    med, _ = load_locs(tmp_path / "debris.ome_med_locs.hdf5")

    def near_debris(x, y, r):
        return np.hypot(np.asarray(x)[:, None] - dx[None], np.asarray(y)[:, None] - dy[None]).min(axis=1) < r

    # spots clear of the debris (the fit still sees the raw frame: a box holding debris is not one emitter)
    clear = truth[~near_debris(truth["x"], truth["y"], 8.0)]
    found, rmse, _ = _z_rmse(med, clear)
    assert found >= 0.9, found
    assert rmse < 25.0, rmse
    # the debris itself is localized in nearly every frame without the filter, hardly ever with it
    on_raw = int(near_debris(raw["x"], raw["y"], 1.5).sum())
    on_med = int(near_debris(med["x"], med["y"], 1.5).sum())
    assert on_raw > 100 and on_med < 0.1 * on_raw, (on_raw, on_med)


# ------------------------------------------------------------------------------------------------- Dask
def test_spline_run_on_a_local_dask_cluster_equals_the_serial_run(spline_file, tmp_path):
    p = SimulationParameters(n_frames=30, height=40, width=40, spots_per_frame=3, photons=3000, bg=10.0,
                             baseline=100.0, seed=6, z_range=(-400.0, 400.0), psf="pupil", pupil=PUPIL,
                             min_separation=14, margin=7)
    frames, truth = simulate_frames(p)
    movie = tmp_path / "d.ome.tif"
    write_movie(movie, iter([frames]), frames.shape, frames.dtype)
    common = ["localize", str(movie), "--zcalib", str(spline_file), "--baseline", "100", "--min-net-gradient",
              "600"]
    assert main(common + ["--suffix", "_serial"]) == 0
    assert main(common + ["--suffix", "_dask", "--scheduler", "local", "--workers", "1"]) == 0
    a, ia = load_locs(tmp_path / "d.ome_serial_locs.hdf5")
    b, ib = load_locs(tmp_path / "d.ome_dask_locs.hdf5")
    assert len(a) > 50
    np.testing.assert_array_equal(a, b)
    assert ia[-1]["Spline calibration"] == ib[-1]["Spline calibration"] == str(spline_file)
    found, rmse, _ = _z_rmse(b, truth)
    assert found >= 0.9 and rmse < 25.0
