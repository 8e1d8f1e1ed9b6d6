"""Cubic-spline PSF: coefficients and evaluation, calibration from simulated pupil-PSF bead stacks, the HDF5
file (ours and Picasso's, both directions), the CLI and its errors."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import DATA

from napari_localize.cli import main
from napari_localize.core import spline_calibrate as sc
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.pupil import ASTIGMATIC_3D, PupilPSF
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack
from napari_localize.core.spline import SplinePSF, evaluate, interpolation_operator, spline_coefficients
from napari_localize.io.movies.write import write_movie
from napari_localize.io.spline_calibration import (
    SplineCalibrationError,
    load_spline_calibration,
    plot_spline_calibration,
    save_spline_calibration,
)

PICASSO_FILE = DATA / "picasso_small_spline_calib.hdf5"
STEP = 40.0
PARAMS = LocalizeParameters(box_size=11, min_net_gradient=1000, baseline=100.0)


# ------------------------------------------------------------------------------------------- spline maths
def test_spline_passes_through_every_node_in_3d_and_2d():
    rng = np.random.default_rng(0)
    v = rng.random((6, 5, 7))
    z, y, x = np.mgrid[0:6, 0:5, 0:7]
    out = evaluate(spline_coefficients(v), x.ravel(), y.ravel(), z.ravel())
    assert np.abs(out[:, 0] - v.ravel()).max() < 1e-12
    v2 = rng.random((5, 8))
    y, x = np.mgrid[0:5, 0:8]
    out = evaluate(spline_coefficients(v2), x.ravel(), y.ravel())
    assert np.abs(out[:, 0] - v2.ravel()).max() < 1e-12


def test_derivatives_match_finite_differences_and_are_continuous():
    rng = np.random.default_rng(1)
    c = spline_coefficients(rng.random((6, 6, 6)))
    pts = rng.uniform(0.2, 4.8, (20, 3))
    h = 1e-6
    base = evaluate(c, pts[:, 0], pts[:, 1], pts[:, 2])
    for axis in range(3):
        q = pts.copy()
        q[:, axis] += h
        fd = (evaluate(c, q[:, 0], q[:, 1], q[:, 2])[:, 0] - base[:, 0]) / h
        assert np.allclose(fd, base[:, axis + 1], atol=1e-4)
    # value and first derivatives continuous across a cell face
    a = evaluate(c, [2.0 - 1e-9], [1.3], [2.7])
    b = evaluate(c, [2.0 + 1e-9], [1.3], [2.7])
    assert np.allclose(a, b, atol=1e-6)


def test_natural_spline_reproduces_a_straight_line_and_has_zero_end_curvature():
    op = interpolation_operator(7)
    line = 2.0 + 0.5 * np.arange(7)
    coef = op @ line  # (6, 4)
    assert np.allclose(coef[:, 2:], 0, atol=1e-12)  # no curvature, no cubic term
    wiggle = np.sin(np.arange(7.0))
    c = op @ wiggle
    assert abs(2 * c[0, 2]) < 1e-12  # f''(0) = 0
    assert abs(2 * c[-1, 2] + 6 * c[-1, 3]) < 1e-12  # f''(n - 1) = 0


def test_spline_model_interpolates_a_smooth_psf_between_the_nodes():
    # a spline through the pixel-integrated Gaussian sampled on the pixel grid reproduces it at half-pixel shifts
    from napari_localize.core.simulate import expected_image

    zs = np.linspace(-1, 1, 21)
    vol = np.stack([expected_image(15, 15, [7.0], [7.0], [1.0], 1.3 + 0.3 * z, 1.3 - 0.3 * z, 0.0) for z in zs])
    psf = SplinePSF(spline_coefficients(vol), cx=7.0, cy=7.0, z_first=-1.0, z_step=0.1, box=13)
    img = psf.patch(6.0 + 0.37, 6.0 - 0.21, 0.33, 13, 13)
    truth = expected_image(13, 13, [6.37], [5.79], [1.0], 1.3 + 0.099, 1.3 - 0.099, 0.0)
    assert np.abs(img - truth).max() < 0.01 * truth.max()
    v, dx, dy, dz = psf.patch(6.37, 5.79, 0.33, 13, 13, derivatives=True)
    h = 1e-5
    assert np.allclose((psf.patch(6.37 + h, 5.79, 0.33, 13, 13) - v) / h, dx, atol=1e-5)
    assert np.allclose((psf.patch(6.37, 5.79, 0.33 + h, 13, 13) - v) / h, dz, atol=1e-4)


def test_bad_coefficients_are_refused():
    with pytest.raises(ValueError, match="coefficients must be"):
        SplinePSF(np.zeros((3, 3, 4)), cx=1, cy=1)
    bad = np.zeros((2, 2, 2, 4, 4, 4))
    bad[0, 0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SplinePSF(bad, cx=1, cy=1)


# ------------------------------------------------------------------------------------------- calibration
def _bead_stack(seed=3, n_beads=6, n_frames=31, extra=None):
    p = SimulationParameters(n_frames=n_frames, height=72, width=72, photons=20000, bg=20, baseline=100.0,
                             seed=seed, psf="pupil", pupil={"zernike_nm": ASTIGMATIC_3D}, min_separation=18,
                             margin=10)
    frames, truth = simulate_bead_stack(p, n_beads=n_beads, step_nm=STEP, bead_z_offset_sd=10.0)
    return frames, truth


@pytest.fixture(scope="module")
def stack():
    return _bead_stack()


@pytest.fixture(scope="module")
def calibrated(stack):
    frames, _ = stack
    return sc.calibrate_spline(frames, PARAMS, STEP, sc.SplineCalibrationOptions(box_size=11,
                                                                               magnification_factor=1.0))


def _fit_height(psf, img):
    g = img.shape[0]
    o = psf.oversampling
    best = None
    for st in np.linspace(0.1, 0.9, 5) * (psf.n_nodes[0] - 1):
        # box pixel m sits at spline coordinate (m - c - dx) o + cx: the emitter dx from the box centre c
        th, rms, ok = sc.fit_shift(img[None], np.ones((1, g, g), bool), psf.coefficients, np.zeros(1),
                                   (img.sum(), 0.0, 0.0, -st, 0.0), nodes_per_px=o,
                                   origin=psf.cx - (g - 1) / 2.0 * o)
        if ok and (best is None or rms < best[1]):
            best = (th, rms)
    th = best[0]
    return th[1], th[2], psf.z_first + psf.z_step * (-th[3]), th[0]


def test_calibration_registers_the_beads_to_their_true_offsets(stack, calibrated):
    frames, truth = stack
    d = calibrated.diagnostics
    assert d["good"].all() and len(d["beads"]) >= 5
    t0 = truth[truth["frame"] == 0]
    true = []
    for _, x, y in d["beads"]:
        i = np.argmin(np.hypot(t0["x"] - x, t0["y"] - y))
        true.append((t0["x"][i] - round(x), t0["y"][i] - round(y), t0["z"][i] - (truth["z"][0] - 0)))
    true = np.array(true)
    true -= true.mean(axis=0)
    sh = d["shifts"]
    # relative bead positions: sub-pixel laterally, a fraction of the 40 nm step axially
    assert np.abs(sh[:, 2] - true[:, 0]).max() < 0.03
    assert np.abs(sh[:, 1] - true[:, 1]).max() < 0.03
    assert np.abs(sh[:, 0] * STEP - (true[:, 2] - np.mean(true[:, 2]))).max() < 4.0


def test_calibrated_model_is_unbiased_on_the_true_psf(calibrated):
    """Noise-free pupil spots fitted with the calibrated spline: z within a few nm across the range."""
    psf = calibrated
    assert psf.z_range[0] <= -500 and psf.z_range[1] >= 500
    truth_psf = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    g = psf.grid_px
    errors = []
    for z in np.arange(-500.0, 501.0, 100.0):
        img = truth_psf.spot(0.2, -0.3, z, g) * 5000.0
        dx, dy, zf, n = _fit_height(psf, img)
        errors.append((dx - 0.2, dy + 0.3, zf - z))
    e = np.array(errors)
    # z: the scan centre is the average bead (offsets sd 10 nm, 6 beads); the shape of z(z_true) follows the
    # truth within 12 nm of that constant on this coarse (40 nm) scan of few beads
    assert np.abs(e[:, 2]).max() < 15.0
    assert np.abs(e[:, 2] - e[:, 2].mean()).max() < 12.0
    assert np.sqrt(np.mean((e[:, 2] - e[:, 2].mean()) ** 2)) < 6.0
    # laterally: one constant offset (the centroid convention, a fraction of a pixel), nothing z-dependent
    assert np.abs(e[:, :2].mean(axis=0)).max() < 0.2
    assert np.abs(e[:, :2] - e[:, :2].mean(axis=0)).max() < 0.03


def test_self_check_reports_the_calibration_precision(calibrated):
    d = calibrated.diagnostics
    assert 0 < d["z_precision_nm"] < 15.0
    assert len(d["check_z"]) > 50


def test_an_aggregate_bead_is_rejected_as_an_outlier():
    frames, truth = _bead_stack(seed=4, n_beads=7)
    frames = frames.astype(float)
    # a second emitter 1.5 px from one bead (an aggregate) changes its PSF: it must not enter the average
    t0 = truth[truth["frame"] == 0]
    psf = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    from napari_localize.core.simulate import stage_positions

    zs = stage_positions(len(frames), STEP)
    for f in range(len(frames)):
        img = np.zeros(frames.shape[1:])
        psf.render(img, [t0["x"][0] + 1.5], [t0["y"][0] + 0.5], [zs[f] - 150.0], [20000.0])
        frames[f] += np.random.default_rng(f).poisson(img)
    cal = sc.calibrate_spline(frames.astype(np.uint16), PARAMS, STEP,
                              sc.SplineCalibrationOptions(box_size=11, magnification_factor=1.0))
    d = cal.diagnostics
    beads = np.array([(x, y) for _, x, y in d["beads"]])
    agg = np.argmin(np.hypot(beads[:, 0] - t0["x"][0], beads[:, 1] - t0["y"][0]))
    assert not d["good"][agg]
    assert d["good"].sum() == len(d["good"]) - 1
    assert "residual" in d["why"][agg] or "margin" in d["why"][agg]


def test_two_dimensional_spline_is_the_in_focus_psf(stack):
    frames, _ = stack
    psf = sc.calibrate_spline(frames, PARAMS, STEP, sc.SplineCalibrationOptions(box_size=11, dimensions="2d"))
    # 6 beads: one node per pixel by default (too few sub-pixel phases for half-pixel nodes), said so
    assert psf.oversampling == 1 and any("one spline node per pixel" in n for n in psf.diagnostics["notices"])
    assert not psf.is_3d and psf.coefficients.shape == (12, 12, 4, 4)
    img = psf.patch(6.0, 6.0, 0.0, 13, 13)
    assert img.sum() == pytest.approx(1.0, rel=0.02)
    sx, sy = psf.gaussian_widths([0.0])
    assert 0.6 < sx[0] < 1.6 and 0.6 < sy[0] < 1.6


def test_calibration_errors_are_clear():
    frames = np.full((20, 40, 40), 100, np.uint16)
    with pytest.raises(ValueError, match="no bead"):
        sc.calibrate_spline(frames, PARAMS, STEP)
    with pytest.raises(ValueError, match="at least 5 z-steps"):
        sc.calibrate_spline(frames[:4], PARAMS, STEP)
    with pytest.raises(ValueError, match="odd"):
        sc.calibrate_spline(frames, PARAMS, STEP, sc.SplineCalibrationOptions(box_size=10))
    with pytest.raises(ValueError, match="frames per step"):
        sc.calibrate_spline(frames, PARAMS, STEP, sc.SplineCalibrationOptions(frames_per_step=40))


def test_frames_per_step_and_order():
    step, fov, n = sc.step_and_fov(12, 3, "fov")
    assert n == 4 and list(step[:6]) == [0, 0, 0, 1, 1, 1] and list(fov[:4]) == [0, 1, 2, 0]
    step, fov, n = sc.step_and_fov(12, 3, "z")
    assert list(step[:5]) == [0, 1, 2, 3, 0] and list(fov[:5]) == [0, 0, 0, 0, 1]
    step, _, _ = sc.step_and_fov(12, 1, "fov", frame_bounds=(2, 5))
    assert list(step[:7]) == [-1, -1, 2, 3, 4, 5, -1]


# ------------------------------------------------------------------------------------------- files
def test_our_file_round_trips_and_documents_its_conventions(calibrated, tmp_path):
    path = save_spline_calibration(tmp_path / "cal.hdf5", calibrated)
    back = load_spline_calibration(path)
    assert back.source == "napari-localize" and back.box == 11
    assert np.allclose(back.coefficients, calibrated.coefficients, rtol=1e-5, atol=1e-9)
    assert back.z_first == pytest.approx(calibrated.z_first) and back.z_step == pytest.approx(calibrated.z_step)
    with h5py.File(path) as f:
        meta = json.loads(f.attrs["metadata"])
        assert f["coefficients"].dtype == np.float32 and "psf" in f
    assert meta["model"] == "spline-3d" and meta["z_center"] == meta["z_init"]
    conv = meta["napari-localize"]["conventions"]
    for word in ("z_center", "magnification_factor", "photon_scale", "pixelsize", "frame 0 at the top"):
        assert word in conv
    # the magnification factor can be overridden when loading: heights scale with it
    half = load_spline_calibration(path, magnification_factor=0.5)
    assert half.z_range[1] == pytest.approx(0.5 * back.z_range[1])


def test_picasso_reads_our_file_and_models_the_same_psf(calibrated, tmp_path):
    from picasso import io as pio
    from picasso.fitting import precision, splinefit

    path = save_spline_calibration(tmp_path / "cal.hdf5", calibrated)
    cal = pio.load_spline_calibration(path)
    coeff = precision._spline_coeff_reshaped(cal)
    box = cal["n_data"][0]
    c = (box - 1) / 2.0
    for xs, ys, k in ((0.0, 0.0, 10.0), (0.3, -0.4, 3.5), (-0.2, 0.25, 22.2)):
        mu, _ = splinefit.model_and_jacobian(splinefit.KIND_3D, coeff, np.array([[1.0, 0, 0, 1.0]]),
                                             np.zeros((1, 2)), np.array([1.0, xs, ys, -k, 0.0]), box)
        # Picasso's z for node coordinate k, by its own rule
        z = (cal["z_init"] - k) * cal["z_step_nm"] * cal["magnification_factor"] + \
            (cal["z_center"] - cal["z_init"]) * cal["z_step_nm"]
        # Picasso reads the one-node-per-pixel table (our oversampled one's nodes at whole-pixel offsets)
        ours = calibrated.pixel_grid().patch(c + xs, c + ys, z, box, box) * cal["photon_scale"]
        assert np.allclose(mu[0], ours, atol=1e-6)


def test_we_read_picassos_file_with_its_conventions():
    psf = load_spline_calibration(PICASSO_FILE)
    with h5py.File(PICASSO_FILE) as f:
        meta = json.loads(f.attrs["metadata"])
        table = f["coefficients"][()]
    assert psf.source == "Picasso" and psf.is_3d and psf.n_nodes == (31, 9, 9)
    # Picasso's z rule with z_init != z_center: node k -> (z_init - k) * step * mag + (z_center - z_init) * step
    assert meta["z_init"] != meta["z_center"]
    for k in (0.0, 7.5, 30.0):
        z = (meta["z_init"] - k) * meta["z_step_nm"] * meta["magnification_factor"] + \
            (meta["z_center"] - meta["z_init"]) * meta["z_step_nm"]
        assert psf.z_first + psf.z_step * k == pytest.approx(z)
    # photons = amplitude * photon_scale: our model is Picasso's unit-peak template / photon_scale
    from picasso.fitting import precision, splinefit

    cal = {**meta, "coefficients": table}
    coeff = precision._spline_coeff_reshaped(cal)
    mu, _ = splinefit.model_and_jacobian(splinefit.KIND_3D, coeff, np.array([[1.0, 0, 0, 1.0]]),
                                         np.zeros((1, 2)), np.array([1.0, 0.2, -0.1, -12.3, 0.0]), 9)
    z = psf.z_first + psf.z_step * 12.3
    assert np.allclose(psf.patch(4.2, 3.9, z, 9, 9) * meta["photon_scale"], mu[0], atol=1e-5)


def test_picassos_calibration_models_the_true_psf():
    """Picasso's calibration of our simulated stack, read by us, puts noise-free spots at the right height."""
    psf = load_spline_calibration(PICASSO_FILE)
    truth_psf = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    for z in (-400.0, 0.0, 400.0):
        _, _, zf, _ = _fit_height(psf, truth_psf.spot(0.0, 0.0, z, 9) * 5000.0)
        assert zf == pytest.approx(z, abs=30.0)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.attrs.__setitem__("metadata", "{not json"), "not JSON"),
    (lambda f: f.attrs.__delitem__("metadata"), "not a spline calibration"),
    (lambda f: f.attrs.__setitem__("metadata", json.dumps({"model": "spline-3d-multichannel"})), "not supported"),
    (lambda f: f.attrs.__setitem__("metadata", json.dumps({"model": "spline-3d", "n_intervals": [8, 8, 29]})),
     "do not match"),
])
def test_broken_spline_files_give_clear_errors(tmp_path, mutate, message):
    path = tmp_path / "bad.hdf5"
    shutil.copy(PICASSO_FILE, path)
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(SplineCalibrationError, match=message):
        load_spline_calibration(path)


def test_truncated_and_missing_files(tmp_path):
    bad = tmp_path / "trunc.hdf5"
    bad.write_bytes(PICASSO_FILE.read_bytes()[:5000])
    with pytest.raises(SplineCalibrationError, match="trunc.hdf5"):
        load_spline_calibration(bad)
    with pytest.raises(SplineCalibrationError, match="no such"):
        load_spline_calibration(tmp_path / "nope.hdf5")


def test_png_is_written(calibrated, tmp_path):
    png = plot_spline_calibration(calibrated, tmp_path / "cal.png")
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000


# ------------------------------------------------------------------------------------------- CLI
def test_cli_calibrates_a_spline_and_keeps_the_poly_default(stack, tmp_path, capsys):
    frames, _ = stack
    movie = tmp_path / "beads.ome.tif"
    write_movie(movie, iter([frames]), frames.shape, frames.dtype, pixelsize_nm=130.0)
    assert main(["calibrate-z", str(movie), "--step-nm", "40", "--model", "spline", "--box-size", "11",
                 "--baseline", "100", "--min-net-gradient", "1000", "--magnification-factor", "1"]) == 0
    out = capsys.readouterr().out
    cal = tmp_path / "beads.ome_spline_calib.hdf5"
    assert cal.exists() and (tmp_path / "beads.ome_spline_calib.png").exists()
    assert "calibration z precision" in out
    psf = load_spline_calibration(cal)
    assert psf.box == 11 and psf.pixelsize == 130.0 and psf.magnification_factor == 1.0
    assert psf.oversampling == 1  # 6 beads: whole-pixel nodes by default
    # half-pixel nodes on request: the factor is in the file and the grid is the same in pixels
    assert main(["calibrate-z", str(movie), "--step-nm", "40", "--model", "spline", "--box-size", "11",
                 "--baseline", "100", "--min-net-gradient", "1000", "--magnification-factor", "1",
                 "--spline-oversampling", "2", "--output", str(tmp_path / "half.hdf5")]) == 0
    half = load_spline_calibration(tmp_path / "half.hdf5")
    assert half.oversampling == 2 and half.grid_px == psf.grid_px == 13 and half.n_nodes[-1] == 25


@pytest.mark.parametrize("argv, message", [
    (["--model", "spline", "--output", "x.yaml"], ".hdf5"),
    (["--model", "spline", "--box-size", "10"], "odd"),
    (["--model", "spline", "--pooled"], "--model poly only"),
    (["--dimensions", "2d"], "--model spline only"),
    (["--spline-oversampling", "2"], "--model spline only"),
])
def test_cli_refuses_bad_spline_options(stack, tmp_path, capsys, argv, message):
    frames, _ = stack
    movie = tmp_path / "beads.tif"
    write_movie(movie, iter([frames[:6]]), (6,) + frames.shape[1:], frames.dtype)
    argv = [a if a != "x.yaml" else str(tmp_path / "x.yaml") for a in argv]
    assert main(["calibrate-z", str(movie), "--step-nm", "40"] + argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*calib*"))
