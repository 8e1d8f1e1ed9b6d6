"""``localize --camera-calibration``: per-pixel conversion, hot-pixel-proof identification, sCMOS MLE at its CRLB."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from napari_localize.cli import main, suggested_min_net_gradient
from napari_localize.core.camera import CameraMaps, readout_variance_photons
from napari_localize.core.camera_calibration import CameraCalibration
from napari_localize.core.evaluate import match
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.simulate import SimulationParameters
from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel, simulate_scmos_movie
from napari_localize.io.camera_calibration import save_camera_calibration
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie

MODEL = SCMOSModel(chip_height=64, chip_width=80, hot_fraction=0.03, seed=5)
ORIGIN = (8, 16)  # the movies are a 48x56 camera ROI of the 64x80 chip


def _sim(photons, n_frames=150, seed=3):
    return SimulationParameters(n_frames=n_frames, height=48, width=56, spots_per_frame=5, photons=photons, bg=10.0,
                                sigma=1.0, seed=seed, min_separation=9, margin=5)


def _threshold(p):
    return suggested_min_net_gradient(SimulationParameters(**{**p.as_dict(), "sensitivity": 1.0 / MODEL.gain}))


@pytest.fixture(scope="module")
def chip_calibration(tmp_path_factory):
    """The chip's true maps as a calibration file (full chip)."""
    offset, variance, gain, _ = MODEL.maps()
    path = tmp_path_factory.mktemp("cal") / "chip_scmos_calib.hdf5"
    save_camera_calibration(path, CameraCalibration(offset, variance, gain, {"Frames": 0, "model": "scmos-noise"}))
    return path


@pytest.fixture(scope="module")
def cropped_movie(tmp_path_factory):
    """A .raw movie of the camera ROI (its YAML carries the ROI) and its truth."""
    p = _sim(600)
    frames, truth = simulate_scmos_movie(p, MODEL, ORIGIN)
    path = tmp_path_factory.mktemp("movie") / "roi.raw"
    write_movie(path, [frames], frames.shape, frames.dtype, sensor_origin=ORIGIN)
    return path, frames, truth, p


def _hot_fp(locs, m, hot):
    unmatched = np.ones(len(locs), bool)
    unmatched[m.locs_index] = False
    count = 0
    for j in np.nonzero(unmatched)[0]:
        y, x = int(round(float(locs["y"][j]))), int(round(float(locs["x"][j])))
        count += bool(hot[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any())
    return count


def test_cli_localizes_a_cropped_movie_with_a_full_chip_calibration(cropped_movie, chip_calibration, capsys):
    path, _, truth, p = cropped_movie
    thr = f"{_threshold(p):.1f}"
    cam = SCMOSCamera(MODEL, ORIGIN, (p.height, p.width))
    scalar = ["--baseline", f"{MODEL.offset}", "--sensitivity", f"{1 / MODEL.gain}"]
    assert main(["localize", os.fspath(path), "--min-net-gradient", thr, *scalar, "--camera-calibration",
                 os.fspath(chip_calibration), "--suffix", "_scmos"]) == 0
    assert main(["localize", os.fspath(path), "--min-net-gradient", thr, *scalar, "--suffix", "_scalar"]) == 0
    base = os.path.splitext(path)[0]
    ours, info = load_locs(base + "_scmos_locs.hdf5")
    plain, _ = load_locs(base + "_scalar_locs.hdf5")
    m_ours, m_plain = match(truth, ours, 1.0), match(truth, plain, 1.0)
    assert m_ours.jaccard >= 0.98
    assert m_ours.jaccard >= m_plain.jaccard
    assert _hot_fp(ours, m_ours, cam.hot) <= _hot_fp(plain, m_plain, cam.hot) / 2
    # the record: which calibration, where the movie lay on it, its metadata
    fit_doc = next(d for d in info if "Camera calibration path" in d)
    assert fit_doc["Camera calibration path"] == os.path.abspath(chip_calibration)
    assert fit_doc["Camera offset source"] == "per-pixel map" and fit_doc["Camera gain source"] == "per-pixel map"
    assert "rows 8..55, columns 16..71" in fit_doc["Camera calibration window"]
    with open(base + "_scmos_locs.yaml") as fh:
        assert any("Camera calibration path" in (d or {}) for d in yaml.safe_load_all(fh))


def test_a_cropped_tiff_without_roi_metadata_needs_the_offset(cropped_movie, chip_calibration, tmp_path, capsys):
    _, frames, truth, p = cropped_movie
    tif = tmp_path / "roi.ome.tif"
    write_movie(tif, [frames], frames.shape, frames.dtype)
    args = ["localize", os.fspath(tif), "--min-net-gradient", f"{_threshold(p):.1f}", "--camera-calibration",
            os.fspath(chip_calibration)]
    assert main(args) != 0
    assert "--camera-calibration-offset" in capsys.readouterr().err
    assert not (tmp_path / "roi.ome_locs.hdf5").exists()
    assert main(args + ["--camera-calibration-offset", "8", "16"]) == 0
    locs, _ = load_locs(tmp_path / "roi.ome_locs.hdf5")
    assert match(truth, locs, 1.0).jaccard >= 0.98
    assert main(args + ["--camera-calibration-offset", "30", "16"]) != 0  # outside the chip
    assert "does not lie inside" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mle", "lq"])
def test_scmos_fit_reaches_the_crlb_and_reports_it(method):
    """Isolated spots on a chip with hot pixels: RMSE <= 1.1 x the sCMOS CRLB at the truth (MLE); lpx tracks it."""
    from napari_localize.core.engine import MODEL_GAUSS, NOISE_SCMOS, curvature
    from napari_localize.core.pipeline import localize

    model = SCMOSModel(chip_height=48, chip_width=56, hot_fraction=0.03, seed=9)
    p = _sim(500, n_frames=300, seed=11)
    frames, truth = simulate_scmos_movie(p, model)
    cam = SCMOSCamera(model)
    cal = CameraCalibration(cam.offset, cam.variance, cam.gain)
    maps = CameraMaps.from_calibration(cal, 1.0)
    params = LocalizeParameters(box_size=7, min_net_gradient=_threshold(p), fit_method=method)
    locs, _ = localize(frames, params, camera=maps)
    m = match(truth, locs, 1.0)
    assert m.jaccard > 0.97
    ex = locs["x"][m.locs_index] - truth["x"][m.truth_index]
    var_e = readout_variance_photons(cam.variance, 1.0 / cam.gain)
    crlb = []
    for t in truth[m.truth_index]:
        cy, cx = int(round(float(t["y"]))), int(round(float(t["x"])))
        v = var_e[cy - 3:cy + 4, cx - 3:cx + 4]
        theta = [3 + t["x"] - cx, 3 + t["y"] - cy, t["photons"], t["bg"], t["sx"], t["sy"]]
        crlb.append(np.linalg.inv(curvature(theta, 7, MODEL_GAUSS, NOISE_SCMOS, variance=v))[0, 0])
    bound = np.sqrt(np.mean(crlb))
    rmse = np.sqrt(np.mean(ex**2))
    n = len(ex)
    if method == "mle":
        # RMSE estimated from n errors has a relative sd of about 1/sqrt(2n) (3 % here): 1.1 is a real test
        assert rmse <= 1.1 * bound
        assert np.median(locs["lpx"][m.locs_index]) == pytest.approx(np.median(np.sqrt(crlb)), rel=0.1)
    else:
        assert rmse <= 1.15 * bound  # weighted least squares: close to the bound, not at it
    assert n > 0.97 * len(truth)


def test_the_camera_config_names_the_calibration_for_the_run(cropped_movie, chip_calibration, tmp_path):
    path, _, truth, p = cropped_movie
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(f"Cameras:\n  Sim:\n    Baseline: 100\n    Sensitivity: 0.5\n"
                   f"camera-calibrations:\n  Sim: {chip_calibration}\n")
    assert main(["localize", os.fspath(path), "--min-net-gradient", f"{_threshold(p):.1f}", "--camera-config",
                 os.fspath(cfg), "--camera", "Sim", "--output-dir", os.fspath(tmp_path)]) == 0
    locs, info = load_locs(tmp_path / "roi_locs.hdf5")
    assert any(d.get("Camera calibration path") == os.path.abspath(chip_calibration) for d in info)
    assert match(truth, locs, 1.0).jaccard >= 0.98


SIM_SCRIPT = r"""
import json
import numpy as np
from napari_localize.core.fit_mle import fit_mle
from napari_localize.core.fit_lq import fit_lq
from napari_localize.core.simulate import simulate_spots
rng = np.random.default_rng(1)
spots, dx, dy = simulate_spots(40, 500.0, 10.0, 1.0, 7, seed=4)
var = rng.lognormal(np.log(3.0), 0.5, spots.shape).astype(np.float32)
var[:, 1, 2] = 500.0  # a hot pixel in every box
out = {}
for name, fit in (("mle", fit_mle), ("lq", fit_lq)):
    cpu = fit(spots, device="cpu", variance=var)
    gpu = fit(spots, device="cuda", variance=var)
    out[name] = [float(np.max(np.abs(cpu["dx"] - gpu["dx"]))), float(np.max(np.abs(cpu["lpx"] - gpu["lpx"]))),
                 float(np.sqrt(np.mean((cpu["dx"] - dx) ** 2)))]
print(json.dumps(out))
"""


def test_the_cuda_engine_fits_with_the_variance_boxes_as_the_cpu_does():
    """sCMOS MLE and variance-weighted LQ through the fit wrappers on the CUDA driver (numba's simulator)."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    r = subprocess.run([sys.executable, "-c", SIM_SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name, (d_pos, d_lp, rmse) in out.items():
        assert d_pos < 1e-6 and d_lp < 1e-6, name
        assert rmse < 0.2, name  # and the fits are real ones (500 photons: CRLB about 0.06 px)
