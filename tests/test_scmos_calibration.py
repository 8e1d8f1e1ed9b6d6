"""sCMOS camera calibration: the maps are recovered, the file is Picasso 0.11's, crops map onto the chip."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from napari_localize.cli import main
from napari_localize.core.camera import (
    adu_to_photons_per_pixel,
    calibration_for_movie,
    movie_sensor_origin,
    readout_variance_photons,
)
from napari_localize.core.camera_calibration import (
    MIN_DARK_FRAMES,
    CameraCalibration,
    CameraCalibrationError,
    PixelMoments,
    calibrate_camera,
    validate_calibration,
)
from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel, flat_field
from napari_localize.io.camera_calibration import (
    CameraCalibrationFileError,
    load_camera_calibration,
    save_camera_calibration,
)
from napari_localize.io.movies.write import write_movie

MODEL = SCMOSModel(chip_height=64, chip_width=64, seed=11)
LEVELS = (30.0, 80.0, 200.0)  # photoelectrons per pixel at the flat field's centre
#: rounding to integer ADU adds 1/12 ADU² to every pixel's readout variance as the camera reports it
QUANTIZATION = 1.0 / 12.0


def chunks(frames, step=128):
    for a in range(0, len(frames), step):
        yield frames[a:a + step]


@pytest.fixture(scope="module")
def measured():
    """1000 dark frames and 3 light levels of 1000 frames of the simulated chip, calibrated."""
    cam = SCMOSCamera(MODEL)
    dark = cam.frames(1000, 0.0, seed=1)
    lights = [cam.frames(1000, flat_field(cam.shape, lv), seed=2 + i) for i, lv in enumerate(LEVELS)]
    cal = calibrate_camera(chunks(dark), [chunks(x) for x in lights], dark_frames=1000, light_frames=[1000] * 3)
    return cam, cal, dark, lights


def test_calibration_recovers_the_true_maps(measured):
    cam, cal, _, _ = measured
    m = 1000
    # offset: 0.5 ADU on the ordinary pixels; every pixel within 5 standard errors sqrt(var / M) of the truth
    err = cal.offset - cam.offset
    ordinary = ~cam.hot
    assert np.quantile(np.abs(err[ordinary]), 0.99) < 0.5
    assert np.median(np.abs(err)) < 0.5
    assert np.all(np.abs(err) < 5 * np.sqrt((cam.variance + QUANTIZATION) / m) + 0.05)
    # variance: median relative error < 5 % (its standard error is sqrt(2 / (M - 1)) = 4.5 % per pixel)
    true_var = cam.variance + QUANTIZATION
    rel = cal.variance / true_var - 1
    assert np.median(np.abs(rel)) < 0.05
    assert abs(np.median(rel)) < 0.01  # unbiased
    assert np.mean(np.abs(rel) < 4 * np.sqrt(2 / (m - 1))) > 0.995
    # gain: median relative error < 5 %
    rel_g = cal.gain / cam.gain - 1
    assert np.median(np.abs(rel_g)) < 0.05
    assert abs(np.median(rel_g)) < 0.01
    # hot pixels: the calibration's count is the chip's, and every hot pixel is above the threshold
    assert cal.metadata["Hot pixels"] == int((cal.variance > cal.metadata["Hot pixel threshold (ADU^2)"]).sum())
    assert np.all(cal.variance[cam.hot] > cal.metadata["Hot pixel threshold (ADU^2)"])
    assert abs(cal.metadata["Hot pixels"] - cam.hot.sum()) <= 0.1 * cam.hot.sum() + 2
    assert cal.metadata["Gain levels"] == 3 and cal.metadata["Frames"] == 1000


def test_streamed_moments_equal_the_two_pass_result_on_a_large_offset():
    rng = np.random.default_rng(0)
    frames = 30000.0 + rng.normal(0, 0.01, (777, 5, 6))  # E[x²] - E[x]² would lose every digit here
    acc = PixelMoments((5, 6))
    for a in range(0, 777, 50):
        acc.add(frames[a:a + 50])
    np.testing.assert_allclose(acc.mean, frames.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(acc.variance, frames.var(axis=0, ddof=1), rtol=1e-7)
    assert acc.count == 777


def test_too_few_dark_frames_is_refused_with_a_reason():
    cam = SCMOSCamera(MODEL, shape=(8, 8))
    with pytest.raises(CameraCalibrationError, match=f"at least {MIN_DARK_FRAMES}.*sqrt"):
        calibrate_camera(chunks(cam.frames(50)))
    with pytest.raises(CameraCalibrationError, match="light movie 1 has 5 frames"):
        calibrate_camera(chunks(cam.frames(200)), [chunks(cam.frames(5, 50.0))], light_frames=[5])
    with pytest.raises(CameraCalibrationError, match="no brighter"):
        calibrate_camera(chunks(cam.frames(200)), [chunks(cam.frames(100, 0.0, seed=5))])


def test_one_light_level_and_a_short_dark_movie_give_notices():
    cam = SCMOSCamera(MODEL, shape=(8, 8))
    cal = calibrate_camera(chunks(cam.frames(300)), [chunks(cam.frames(200, 100.0, seed=3))])
    text = " ".join(cal.metadata["Notices"])
    assert "300 dark frames" in text and "one light level" in text


def test_validation_accepts_the_same_camera_and_rejects_a_warmer_one(measured):
    _, cal, _, _ = measured
    same = SCMOSCamera(MODEL).frames(1000, 0.0, seed=99)
    report = validate_calibration(cal, chunks(same))
    assert report["Valid"], report
    assert abs(report["Mean p-value"] - 0.5) < 0.1
    warm = SCMOSCamera(SCMOSModel(**{**MODEL.as_dict(), "read_noise": MODEL.read_noise * 1.25,
                                     "hot_variance": tuple(MODEL.hot_variance)})).frames(1000, 0.0, seed=98)
    report = validate_calibration(cal, chunks(warm))
    assert not report["Valid"] and "noisier" in report["Reason"]
    assert report["Variance ratio median"] > 1.3
    with pytest.raises(CameraCalibrationError, match="the test movie is 8x8"):
        validate_calibration(cal, chunks(same[:, :8, :8]))


def test_per_pixel_conversion_recovers_the_photons(measured):
    cam, cal, _, lights = measured
    mu = flat_field(cam.shape, LEVELS[1])
    photons = adu_to_photons_per_pixel(lights[1].mean(axis=0), cal.offset, 1.0 / cal.gain)
    rel = photons / mu - 1
    assert np.median(np.abs(rel)) < 0.03
    # a scalar baseline and sensitivity leave the chip's gain spread and offset pattern in the photons
    scalar = adu_to_photons_per_pixel(lights[1].mean(axis=0), np.median(cal.offset), 1.0 / np.median(cal.gain))
    assert np.median(np.abs(scalar / mu - 1)) > 1.5 * np.median(np.abs(rel))
    var_e = readout_variance_photons(cal.variance, 1.0 / cal.gain)
    np.testing.assert_allclose(np.median(var_e), np.median(cam.variance / cam.gain**2), rtol=0.05)


# ------------------------------------------------------------------------------------------------ files
def test_file_layout_is_picassos_and_round_trips(tmp_path, measured):
    _, cal, _, _ = measured
    path = save_camera_calibration(tmp_path / "c_scmos_calib.hdf5", cal)
    with h5py.File(path) as f:
        assert set(f) == {"offset", "variance", "gain"}
        assert all(f[k].dtype == np.float32 and f[k].shape == (64, 64) for k in f)
        meta = json.loads(f.attrs["metadata"])
        assert isinstance(f.attrs["metadata"], str)
    assert meta["Height"] == 64 and meta["Frames"] == 1000 and meta["model"] == "scmos-noise"
    back = load_camera_calibration(path)
    np.testing.assert_array_equal(back.offset, cal.offset)
    np.testing.assert_array_equal(back.variance, cal.variance)
    np.testing.assert_array_equal(back.gain, cal.gain)
    assert back.metadata["Hot pixels"] == cal.metadata["Hot pixels"]


def test_bad_calibration_files_give_clear_errors(tmp_path):
    p = tmp_path / "x.hdf5"
    with pytest.raises(CameraCalibrationFileError, match="no such"):
        load_camera_calibration(p)
    p.write_bytes(b"not hdf5")
    with pytest.raises(CameraCalibrationFileError, match="not an HDF5 file"):
        load_camera_calibration(p)
    with h5py.File(p, "w") as f:
        f["offset"] = np.zeros((4, 4), np.float32)
    with pytest.raises(CameraCalibrationFileError, match="missing dataset 'variance'"):
        load_camera_calibration(p)
    with h5py.File(p, "w") as f:
        f["offset"] = np.zeros((4, 4), np.float32)
        f["variance"] = np.ones((4, 5), np.float32)
        f.attrs["metadata"] = "{}"
    with pytest.raises(CameraCalibrationFileError, match="variance map is 4x5"):
        load_camera_calibration(p)
    with h5py.File(p, "w") as f:
        f["offset"] = np.zeros((4, 4), np.float32)
        f["variance"] = np.zeros((4, 4), np.float32)
        f.attrs["metadata"] = "{}"
    with pytest.raises(CameraCalibrationFileError, match="variance <= 0"):
        load_camera_calibration(p)


def _picasso(code: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_picasso_reads_our_calibration(tmp_path, measured):
    cam, cal, _, _ = measured
    path = save_camera_calibration(tmp_path / "ours_scmos_calib.hdf5", cal)
    out = _picasso(
        "import json, numpy as np\n"
        "from picasso.io import load_camera_calibration\n"
        f"c = load_camera_calibration({os.fspath(path)!r})\n"
        "print(json.dumps({'offset': float(c['offset'].astype(np.float64).sum()),"
        " 'variance': float(c['variance'].astype(np.float64).sum()), 'gain': float(c['gain'].astype(np.float64).sum()),"
        " 'dtype': str(c['gain'].dtype), 'Frames': c['Frames'], 'Hot pixels': c['Hot pixels'],"
        " 'shape': list(c['offset'].shape)}))\n", tmp_path)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["shape"] == [64, 64] and got["dtype"] == "float32"
    assert got["Frames"] == 1000 and got["Hot pixels"] == cal.metadata["Hot pixels"]
    for name in ("offset", "variance", "gain"):
        assert got[name] == pytest.approx(float(getattr(cal, name).astype(np.float64).sum()), rel=1e-12)


def test_our_calibration_reads_picassos(tmp_path):
    """``picasso camera-calibrate`` on our simulated movies; we load its file and it agrees with ours and the truth."""
    cam = SCMOSCamera(MODEL, shape=(24, 32))
    dark = cam.frames(300, 0.0, seed=1)
    write_movie(tmp_path / "dark.ome.tif", [dark], dark.shape, dark.dtype)
    lights = []
    for i, lv in enumerate(LEVELS):
        x = cam.frames(300, flat_field(cam.shape, lv), seed=2 + i)
        lights.append(x)
        write_movie(tmp_path / f"light{i}.ome.tif", [x], x.shape, x.dtype)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "picasso", "camera-calibrate", "dark.ome.tif", "-o", "picasso_calib.hdf5"]
    for i in range(3):
        cmd += ["-l", f"light{i}.ome.tif"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    theirs = load_camera_calibration(tmp_path / "picasso_calib.hdf5")
    ours = calibrate_camera(chunks(dark), [chunks(x) for x in lights])
    assert theirs.shape == (24, 32) and theirs.has_gain
    assert theirs.metadata["Frames"] == 300
    np.testing.assert_allclose(theirs.offset, ours.offset, atol=1e-3)
    np.testing.assert_allclose(theirs.variance, ours.variance, rtol=1e-4)
    # the gains are two estimates of the same slope (theirs unweighted, ours weighted): both near the truth
    assert np.median(np.abs(theirs.gain / cam.gain - 1)) < 0.08
    assert np.median(np.abs(ours.gain / cam.gain - 1)) < 0.08


# ------------------------------------------------------------------------------------------------ crops
def test_a_cropped_movie_maps_to_its_part_of_the_chip(measured):
    cam, cal, _, _ = measured
    sub, how = calibration_for_movie(cal, (10, 20, 30), origin=(5, 7))
    assert sub.shape == (20, 30) and sub.origin == (5, 7)
    np.testing.assert_array_equal(sub.offset, cal.offset[5:25, 7:37])
    np.testing.assert_array_equal(sub.gain, cal.gain[5:25, 7:37])
    # from Micro-Manager's per-image ROI ("x-y-width-height")
    info = {"Micro-Manager Metadata": {"ROI": "7-5-30-20"}}
    assert movie_sensor_origin(info) == (5, 7)
    sub2, how2 = calibration_for_movie(cal, (20, 30), info)
    np.testing.assert_array_equal(sub2.variance, sub.variance)
    assert "metadata" in how2
    # an explicit offset wins over the metadata
    sub3, _ = calibration_for_movie(cal, (20, 30), info, origin=(0, 0))
    np.testing.assert_array_equal(sub3.offset, cal.offset[:20, :30])
    # a calibration of a cropped ROI: movie positions are taken relative to its own sensor origin
    part = cal.crop(10, 10, 40, 40)
    sub4, _ = calibration_for_movie(part, (20, 30), origin=(15, 17))
    np.testing.assert_array_equal(sub4.offset, cal.offset[15:35, 17:47])
    same, how = calibration_for_movie(cal, (64, 64), {"Micro-Manager Metadata": {"ROI": "0-0-64-64"}})
    assert same is cal


def test_size_mismatch_and_outside_windows_are_clear_errors(measured):
    _, cal, _, _ = measured
    with pytest.raises(CameraCalibrationError, match=r"64x64 pixels but the movie is 20x30.*--camera-calibration-offset"):
        calibration_for_movie(cal, (20, 30), {})
    with pytest.raises(CameraCalibrationError, match="does not lie inside the 64x64 calibration"):
        calibration_for_movie(cal, (20, 30), origin=(50, 0))
    with pytest.raises(CameraCalibrationError, match="does not lie inside"):
        calibration_for_movie(cal, (80, 80), {})
    # a Picasso calibration with no sensor origin, applied to a movie of its size: no shift whatever the ROI says
    same, _ = calibration_for_movie(CameraCalibration(cal.offset, cal.variance), (64, 64),
                                    {"Camera ROI": [100, 200, 64, 64]})
    assert same.shape == (64, 64)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_calibrates_a_cropped_acquisition_and_validates(tmp_path, capsys):
    common = ["--scmos", "--height", "24", "--width", "32", "--chip-size", "64", "64", "--chip-origin", "8", "16",
              "--camera-seed", "11"]
    assert main(["simulate", os.fspath(tmp_path / "dark.raw"), "--dark", "--frames", "400", *common]) == 0
    lights = []
    for i, lv in enumerate(LEVELS):
        lights += ["--light", os.fspath(tmp_path / f"flat{i}.raw")]
        assert main(["simulate", lights[-1], "--flat", str(lv), "--frames", "300", "--seed", str(i + 5),
                     *common]) == 0
    capsys.readouterr()
    out = tmp_path / "cam.hdf5"
    assert main(["camera-calibrate", os.fspath(tmp_path / "dark.raw"), *lights, "--output", os.fspath(out)]) == 0
    text = capsys.readouterr().out
    assert "hot pixels" in text and "gain" in text and (tmp_path / "cam.png").stat().st_size > 10000
    cal = load_camera_calibration(out)
    assert cal.origin == (8, 16) and cal.metadata["Sensor origin"] == [8, 16]
    truth = load_camera_calibration(tmp_path / "dark_camera_truth.hdf5")  # the full chip's true maps
    assert truth.shape == (64, 64)
    np.testing.assert_allclose(np.median(np.abs(cal.gain / truth.gain[8:32, 16:48] - 1)), 0, atol=0.06)
    assert np.median(np.abs(cal.offset - truth.offset[8:32, 16:48])) < 0.5
    # a fresh dark movie of the same camera passes validation; exit 1 for one of another camera
    fresh = tmp_path / "fresh.raw"
    assert main(["simulate", os.fspath(fresh), "--dark", "--frames", "300", "--seed", "77", *common]) == 0
    capsys.readouterr()
    assert main(["camera-calibrate", os.fspath(fresh), "--validate", os.fspath(out)]) == 0
    assert "valid: the calibration describes this camera" in capsys.readouterr().out
    other = tmp_path / "other.raw"
    assert main(["simulate", os.fspath(other), "--dark", "--frames", "300", *common[:-1], "12"]) == 0
    capsys.readouterr()
    assert main(["camera-calibrate", os.fspath(other), "--validate", os.fspath(out)]) == 1
    assert "NOT valid" in capsys.readouterr().out


def test_cli_refuses_a_short_dark_movie_and_writes_nothing(tmp_path, capsys):
    dark = tmp_path / "short.raw"
    assert main(["simulate", os.fspath(dark), "--dark", "--frames", "40", "--scmos", "--height", "8",
                 "--width", "8"]) == 0
    assert main(["camera-calibrate", os.fspath(dark)]) == 2
    err = capsys.readouterr().err
    assert "40 frames" in err and "at least 100" in err
    assert not (tmp_path / "short_scmos_calib.hdf5").exists()
    assert main(["camera-calibrate", os.fspath(dark), "--output", os.fspath(tmp_path / "x.txt")]) == 2


def test_camera_config_names_a_calibration_per_camera(tmp_path):
    from napari_localize.core.camera import match_camera
    from napari_localize.io.camera_config import CameraConfigError, load_camera_config

    (tmp_path / "cfg.yaml").write_text(
        "Cameras:\n"
        "  Zyla:\n    Sensitivity: 0.5\n    Baseline: 100\n"
        "  Flash:\n    Sensitivity: 0.47\n    Quantum Efficiency: {525: 0.8, 595: 0.8}\n"
        "camera-calibrations:\n"
        "  Zyla: maps/zyla_scmos_calib.hdf5\n"
        "  Flash: {525: /data/flash_525.hdf5, 595: /data/flash_595.hdf5}\n")
    config = load_camera_config(tmp_path / "cfg.yaml")
    m = match_camera(config, {"Camera": "Zyla"})
    assert m.camera_calibration == os.path.normpath(tmp_path / "maps" / "zyla_scmos_calib.hdf5")
    m = match_camera(config, {"Camera": "Flash"}, wavelength="595")
    assert m.camera_calibration == os.path.normpath("/data/flash_595.hdf5")
    m = match_camera(config, {"Camera": "Flash"}, wavelength="700")
    assert m.camera_calibration is None and any("no sCMOS calibration" in n for n in m.notices)
    (tmp_path / "bad.yaml").write_text("Cameras:\n  Zyla:\n    Sensitivity: 0.5\ncamera-calibrations:\n  Other: x.hdf5\n")
    with pytest.raises(CameraConfigError, match="names camera 'Other'"):
        load_camera_config(tmp_path / "bad.yaml")


def test_picasso_localizes_with_our_calibration(tmp_path):
    """``picasso localize -cm OURS`` runs on a movie of the chip and finds its spots (Picasso uses our maps)."""
    from napari_localize.core.simulate import SimulationParameters
    from napari_localize.core.simulate_scmos import simulate_scmos_movie

    model = SCMOSModel(chip_height=40, chip_width=40, seed=4, hot_fraction=0.0)
    cam = SCMOSCamera(model)
    cal = calibrate_camera([cam.frames(200, 0.0)], [[cam.frames(100, lv, seed=i + 1)] for i, lv in
                                                     enumerate((40.0, 120.0, 300.0))])
    save_camera_calibration(tmp_path / "ours.hdf5", cal)
    p = SimulationParameters(n_frames=10, height=40, width=40, spots_per_frame=3, photons=3000, bg=10, seed=1)
    frames, truth = simulate_scmos_movie(p, model)
    write_movie(tmp_path / "m.ome.tif", [frames], frames.shape, frames.dtype)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "picasso", "localize", "m.ome.tif", "-b", "7", "-g", "3000", "-a",
                        "mle", "-cm", "ours.hdf5", "-d", "0"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Loaded sCMOS camera calibration (offset, variance and gain maps, 40x40 pixels" in r.stdout
    with h5py.File(tmp_path / "m.ome_locs.hdf5") as f:
        locs = f["locs"][()]
    from napari_localize.core.evaluate import match

    m = match(truth, locs, 0.5)
    assert m.jaccard > 0.9
    # photons come out in photoelectrons: our gain map was applied
    assert np.median(locs["photons"][m.locs_index] / truth["photons"][m.truth_index]) == pytest.approx(1.0, abs=0.1)
