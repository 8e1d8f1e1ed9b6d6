"""3D by astigmatism: calibration from simulated bead stacks, z fitting against simulated ground truth,
Picasso's calibration YAML and 3D locs files, the CLI."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import yaml
from conftest import match_truth

from napari_localize.api import calibrate_z_stack
from napari_localize.api import localize as api_localize
from napari_localize.cli import main
from napari_localize.core import zfit
from napari_localize.core.locs import Z_FIELDS, locs_dtype
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.pipeline import localize
from napari_localize.core.simulate import (
    SimulationParameters,
    simulate_bead_stack,
    simulate_frames,
    stage_positions,
)
from napari_localize.io.calibration import (
    CalibrationFileError,
    load_calibration,
    plot_calibration,
    save_calibration,
)
from napari_localize.io.locs import load_locs, save_locs
from napari_localize.io.movies.write import write_movie

BASELINE = 100.0
STEP = 20.0
PARAMS = LocalizeParameters(box_size=9, min_net_gradient=800, baseline=BASELINE)


def _stack(seed=1, n_frames=61, offset_sd=15.0):
    p = SimulationParameters(n_frames=n_frames, height=64, width=64, photons=20000, bg=20,
                             baseline=BASELINE, seed=seed)
    frames, truth = simulate_bead_stack(p, n_beads=8, step_nm=STEP, bead_z_offset_sd=offset_sd)
    return p, frames, truth


@pytest.fixture(scope="module")
def stack():
    return _stack()


@pytest.fixture(scope="module")
def calibration(stack):
    _, frames, _ = stack
    return calibrate_z_stack(frames, PARAMS, STEP, magnification_factor=1.0)


@pytest.fixture(scope="module")
def blinking():
    q = SimulationParameters(n_frames=60, height=64, width=64, spots_per_frame=8, photons=3000, bg=20,
                             baseline=BASELINE, z_range=(-450.0, 450.0), seed=5)
    return q, *simulate_frames(q)


def test_stage_positions_follow_picasso_convention():
    z = stage_positions(5, 10.0)
    # frame 0 at +(F-1)*step/2, decreasing by one step per frame
    assert np.allclose(z, [20.0, 10.0, 0.0, -10.0, -20.0])


def test_simulated_astigmatism_widths_follow_the_model():
    p = SimulationParameters(n_frames=2, height=32, width=32, spots_per_frame=3, z_range=(-300.0, 300.0))
    _, truth = simulate_frames(p)
    z = truth["z"].astype(float)
    assert np.all((z >= -300) & (z <= 300))
    assert np.allclose(truth["sx"], p.sigma * np.sqrt(1 + ((z - p.astig_gamma) / p.astig_depth) ** 2), rtol=1e-5)
    assert np.allclose(truth["sy"], p.sigma * np.sqrt(1 + ((z + p.astig_gamma) / p.astig_depth) ** 2), rtol=1e-5)


def test_calibration_recovers_the_true_width_curves(stack, calibration):
    p, _, _ = stack
    cal = calibration
    assert "beads followed" in cal.diagnostics["method"]
    lo, hi = cal.z_range
    assert (lo, hi) == (-600.0, 600.0)
    z = np.linspace(-500, 500, 21)
    wx, wy = cal.widths(z)
    tx, ty = p.widths(z)  # the simulator's curves cross at z = 0, like a recentred calibration
    assert np.max(np.abs(wx - tx)) < 0.03
    assert np.max(np.abs(wy - ty)) < 0.03
    # recentred: the curves cross at z = 0
    assert abs(np.polyval(cal.x_coefficients, 0.0) - np.polyval(cal.y_coefficients, 0.0)) < 0.01
    assert cal.diagnostics["z_precision_nm"] < 20.0


def test_pooled_calibration_matches_picasso_rules(stack):
    _, frames, _ = stack
    locs, _ = localize(frames, PARAMS)
    cal = zfit.calibrate_z(locs, len(frames), STEP, 0.79)
    # independent check of the per-frame one-sd filter and the mean, frame 30 (stage z = 0)
    f = locs[locs["frame"] == 30]
    sx, sy = f["sx"].astype(float), f["sy"].astype(float)
    keep = ((sx - sx.mean()) ** 2 <= sx.var(ddof=1)) & ((sy - sy.mean()) ** 2 <= sy.var(ddof=1))
    assert cal.diagnostics["mean_sx"][30] == pytest.approx(sx[keep].mean())
    assert cal.diagnostics["count"][30] == keep.sum()
    assert cal.magnification_factor == 0.79
    assert len(cal.x_coefficients) == 7


def test_calibration_survives_empty_positions(stack):
    """Picasso #328: a position without spots must not crash the calibration."""
    _, frames, _ = stack
    locs, _ = localize(frames, PARAMS)
    holes = np.isin(locs["frame"], [10, 11, 12, 40])
    cal = zfit.calibrate_z(locs[~holes], len(frames), STEP, 1.0)
    assert np.all(cal.diagnostics["count"][[10, 11, 12, 40]] == 0)
    assert "4 stack position(s) had no spots" in cal.diagnostics["notices"][0]
    assert np.all(np.isfinite(cal.x_coefficients))


def test_calibration_needs_enough_positions():
    locs = np.zeros(3, locs_dtype("lq"))
    locs["frame"] = [0, 1, 2]
    locs["sx"] = locs["sy"] = 1.0
    with pytest.raises(ValueError, match="7 or more heights"):
        zfit.calibrate_z(locs, 20, 10.0)


def test_huang_fit_finds_the_global_minimum(calibration):
    cal = calibration
    # exact widths at known heights, including both ends of the range
    z_true = np.array([-580.0, -400.0, -150.0, 0.0, 120.0, 390.0, 585.0])
    wx, wy = cal.widths(z_true)
    z, d = zfit.fit_z_huang(wx, wy, cal.x_coefficients, cal.y_coefficients, *cal.z_range)
    assert np.allclose(z, z_true, atol=0.5)
    assert np.all(d < 1e-6)
    z, _ = zfit.fit_z_huang(np.array([-1.0, np.nan]), np.array([1.0, 1.0]), cal.x_coefficients,
                            cal.y_coefficients, *cal.z_range)
    assert np.all(np.isnan(z))


@pytest.mark.parametrize("method", ["mle", "huang"])
def test_z_of_blinking_spots_against_truth(calibration, blinking, method):
    q, frames, truth = blinking
    options = zfit.ZFitOptions(method=method)
    res = api_localize(frames, PARAMS, calibration=calibration, z_options=options)
    locs, info = res.locs, res.info
    # z_gof: the standardised deviance of the astigmatic MLE (N(0, 1) for clean spots); huang fits no pixels
    extra = ["z_gof"] if method == "mle" else []
    assert list(locs.dtype.names[-3 - len(extra):]) == [f[0] for f in Z_FIELDS] + extra
    assert all(locs.dtype[f] == np.float32 for f in [f[0] for f in Z_FIELDS] + extra)
    if method == "mle":
        assert abs(float(np.mean(locs["z_gof"]))) < 0.3 and 0.7 < float(np.std(locs["z_gof"])) < 1.4
    idx = match_truth(locs, truth)
    assert (idx >= 0).mean() > 0.95
    err = locs["z"][idx >= 0] - truth["z"][idx[idx >= 0]]
    rmse = float(np.sqrt(np.mean(err**2)))
    assert rmse < 40.0
    assert abs(float(np.mean(err))) < 8.0
    # lpz is an honest precision: the RMSE is within 40 % of the median predicted precision
    assert 0.6 < rmse / float(np.sqrt(np.mean(locs["lpz"][idx >= 0] ** 2))) < 1.6
    doc = info[-1]
    assert doc["X Coefficients"] == [float(v) for v in calibration.x_coefficients]
    assert doc["Filter range"] == 0.0
    assert doc["Z fit method"].startswith({"mle": "astigmatic", "huang": "Huang"}[method])


def test_magnification_factor_scales_z(calibration, blinking):
    _, frames, _ = blinking
    cal_half = zfit.ZCalibration(calibration.x_coefficients, calibration.y_coefficients, calibration.n_frames,
                                 calibration.step_nm, 0.5)
    opts = zfit.ZFitOptions(method="huang")
    a = api_localize(frames[:10], PARAMS, calibration=calibration, z_options=opts).locs
    b = api_localize(frames[:10], PARAMS, calibration=cal_half, z_options=opts).locs
    assert len(a) == len(b)
    assert np.allclose(b["z"], 0.5 * a["z"], atol=1e-3)


def test_outlier_filter_drops_large_d(calibration, blinking):
    _, frames, _ = blinking
    all_ = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(method="huang")).locs
    res = api_localize(frames, PARAMS, calibration=calibration,
                       z_options=zfit.ZFitOptions(method="huang", filter=1.0))
    filt, info = res.locs, res.info
    rms = np.sqrt(np.mean(all_["d_zcalib"].astype(float) ** 2))
    assert len(filt) == int((all_["d_zcalib"] <= rms).sum())
    assert info[-1]["Filter range"] == 1.0


def test_calibration_yaml_roundtrip_and_picasso_keys(tmp_path, calibration):
    path = save_calibration(tmp_path / "cal.yaml", calibration)
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    assert set(raw) == {"Frame bounds", "Magnification factor", "Number of frames", "Path", "Step size in nm",
                        "X Coefficients", "Y Coefficients", "Frames per step", "Frame order"}  # + Picasso 0.11's
    assert raw["Frames per step"] == 1 and raw["Frame order"] == "fov"
    assert len(raw["X Coefficients"]) == 7
    # highest power first: np.polyval of the stored list reproduces the widths
    assert np.polyval(raw["X Coefficients"], 100.0) == pytest.approx(calibration.widths(100.0)[0])
    back = load_calibration(path)
    assert np.allclose(back.x_coefficients, calibration.x_coefficients)
    assert load_calibration(path, magnification_factor=0.5).magnification_factor == 0.5
    png = plot_calibration(calibration, tmp_path / "cal.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_calibration_files(tmp_path):
    with pytest.raises(CalibrationFileError, match="no such"):
        load_calibration(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("X Coefficients: [1, 2]\n")
    with pytest.raises(CalibrationFileError, match="missing key"):
        load_calibration(bad)
    old = tmp_path / "old.yaml"
    # a (non-degenerate) calibration without a magnification factor: widths 2 -/+ z/1000 px
    old.write_text("X Coefficients: [0.001, 2]\nY Coefficients: [-0.001, 2]\nNumber of frames: 10\n"
                   "Step size in nm: 5\n")
    with pytest.raises(CalibrationFileError, match="magnification factor"):
        load_calibration(old)
    assert load_calibration(old, 0.79).magnification_factor == 0.79


def test_picasso_reads_our_calibration_and_3d_locs(tmp_path, calibration, blinking):
    import picasso.io
    import picasso.zfit

    q, frames, _ = blinking
    cal_path = save_calibration(tmp_path / "cal.yaml", calibration)
    with open(cal_path) as fh:
        picasso_cal = yaml.load(fh, Loader=yaml.FullLoader)
    res = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(method="huang"))
    locs, info = res.locs, res.info
    info[0].update({"Width": 64, "Height": 64, "Frames": len(frames)})
    h5, _ = save_locs(tmp_path / "m_locs.hdf5", locs, info)
    plocs, pinfo = picasso.io.load_locs(h5)
    assert len(plocs) == len(locs)
    assert np.allclose(np.asarray(plocs["z"]), locs["z"])
    # Picasso's own z fit with our calibration file reproduces our Huang z (same D objective)
    import pandas as pd

    df = pd.DataFrame({n: locs[n] for n in locs.dtype.names if n not in ("z", "d_zcalib", "lpz")})
    zlocs, _ = picasso.zfit.zfit(df, pinfo, calibration=picasso_cal, magnification_factor=1.0,
                                 pixelsize=130.0, fitting_method="gaussmle", filter=0)
    zlocs = zlocs.sort_values(["frame", "x"]).reset_index(drop=True)
    ours = np.sort(locs, order=["frame", "x"])
    m = np.abs(np.asarray(zlocs["z"])) < 550  # Picasso searches +-1000 nm, ours the calibrated range
    assert len(zlocs) == len(ours)
    assert np.median(np.abs(np.asarray(zlocs["z"])[m] - ours["z"][m])) < 1.0


def test_cli_calibrate_and_localize_3d(tmp_path, stack, blinking, capsys):
    _, sframes, _ = stack
    q, bframes, truth = blinking
    stack_path = tmp_path / "beads.ome.tif"
    movie_path = tmp_path / "blink.ome.tif"
    write_movie(stack_path, [sframes], sframes.shape, sframes.dtype, pixelsize_nm=130.0)
    write_movie(movie_path, [bframes], bframes.shape, bframes.dtype, pixelsize_nm=130.0)
    common = ["--box-size", "9", "--min-net-gradient", "800", "--baseline", "100"]
    assert main(["calibrate-z", str(stack_path), "--step-nm", str(STEP), "--magnification-factor", "1.0",
                 *common]) == 0
    cal_path = tmp_path / "beads.ome_3d_calib.yaml"
    assert cal_path.exists() and (tmp_path / "beads.ome_3d_calib.png").exists()
    assert main(["localize", str(movie_path), "--zcalib", str(cal_path), *common]) == 0
    h5 = tmp_path / "blink.ome_locs.hdf5"
    with h5py.File(h5, "r") as f:
        locs = f["locs"][...]
    assert locs.dtype.names[-4:] == ("z", "d_zcalib", "lpz", "z_gof")
    idx = match_truth(locs, truth)
    err = locs["z"][idx >= 0] - truth["z"][idx[idx >= 0]]
    assert np.sqrt(np.mean(err**2)) < 40.0
    with open(tmp_path / "blink.ome_locs.yaml") as fh:
        docs = list(yaml.safe_load_all(fh))
    assert docs[-1]["Magnification factor"] == 1.0
    assert docs[-1]["Z Calibration Path"] == os.path.abspath(cal_path)
    # the z MLE's box, neighbour model and goodness-of-fit policy from the CLI, recorded in _locs.yaml
    assert main(["localize", str(movie_path), "--zcalib", str(cal_path), *common, "--z-box-size", "11",
                 "--z-max-gof", "2.5", "--z-no-neighbours", "--suffix", "_g"]) == 0
    with h5py.File(tmp_path / "blink.ome_g_locs.hdf5", "r") as f:
        gof = f["locs"]["z_gof"]
    assert len(gof) < len(locs) and np.all(gof <= 2.5)
    with open(tmp_path / "blink.ome_g_locs.yaml") as fh:
        doc = list(yaml.safe_load_all(fh))[-1]
    assert doc["Z fit box size"] == 11 and doc["Z max goodness of fit (z_gof)"] == 2.5
    assert doc["Z fit models neighbours"] is False
    assert main(["localize", str(movie_path), "--zcalib", str(cal_path), "--z-box-size", "10", "--suffix",
                 "_b"]) == 2
    assert not (tmp_path / "blink.ome_b_locs.hdf5").exists()
    assert "z fit box size" in capsys.readouterr().err
    # bad input: one-line errors, nothing written
    assert main(["localize", str(movie_path), "--zcalib", str(tmp_path / "nope.yaml"), "--suffix", "_x"]) == 2
    assert not (tmp_path / "blink.ome_x_locs.hdf5").exists()
    assert main(["calibrate-z", str(stack_path), "--step-nm", "-5"]) == 2
    assert main(["localize", str(movie_path), "--magnification-factor", "0.8", "--suffix", "_y"]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "--step-nm" in err and "--zcalib" in err


def _beyond_range(z_range, seed):
    q = SimulationParameters(n_frames=30, height=64, width=64, spots_per_frame=8, photons=3000, bg=20,
                             baseline=BASELINE, z_range=z_range, seed=seed)
    return simulate_frames(q)


def _z_errors(locs, truth):
    idx = match_truth(locs, truth)
    return locs["z"][idx >= 0] - truth["z"][idx[idx >= 0]], idx


@pytest.mark.parametrize("method", ["mle", "huang"])
def test_spots_beyond_the_calibrated_range_get_their_height(calibration, method):
    lo, hi = calibration.z_range
    assert (lo, hi) == (-600.0, 600.0)
    frames, truth = _beyond_range((hi + 50.0, hi + 150.0), seed=21)
    frames_n, truth_n = _beyond_range((lo - 150.0, lo - 50.0), seed=22)
    frames = np.concatenate([frames, frames_n])
    truth_n = truth_n.copy()
    truth_n["frame"] += 30
    truth = np.concatenate([truth, truth_n])
    # clamped to the calibrated range (the old behaviour) every spot piles onto the edge: error ~ overshoot
    clamped = api_localize(frames, PARAMS, calibration=calibration,
                           z_options=zfit.ZFitOptions(method=method, extrapolation=0.0)).locs
    err0, _ = _z_errors(clamped, truth)
    assert np.sqrt(np.mean(err0**2)) > 80.0
    res = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(method=method))
    locs, info = res.locs, res.info
    err, idx = _z_errors(locs, truth)
    assert (idx >= 0).mean() > 0.95 and len(locs) > 0.95 * len(truth)
    assert np.sqrt(np.mean(err**2)) < 0.6 * np.sqrt(np.mean(err0**2))
    assert abs(float(np.mean(err))) < 30.0
    assert np.mean(np.abs(err) > 100.0) < 0.1
    doc = info[-1]
    assert doc["Z extrapolation"] == zfit.DEFAULT_EXTRAPOLATION
    flo, fhi = doc["Z fit range in nm"]
    assert flo < lo - 100 and fhi > hi + 100
    # drop_out_of_range removes the extrapolated heights, i.e. (nearly) all of these spots
    res = api_localize(frames, PARAMS, calibration=calibration,
                       z_options=zfit.ZFitOptions(method=method, drop_out_of_range=True))
    dropped, info_d = res.locs, res.info
    assert len(dropped) < 0.1 * len(truth)
    assert np.all((dropped["z"] > lo) & (dropped["z"] < hi))
    assert info_d[-1]["Z drop out of calibrated range"] is True


def test_fits_on_the_fit_range_bound_are_dropped(calibration):
    lo, hi = calibration.z_range
    flo, fhi = zfit.fit_range(calibration)
    frames, truth = _beyond_range((fhi + 300.0, fhi + 400.0), seed=23)
    for method in ("mle", "huang"):
        res = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(method=method))
        locs, info = res.locs, res.info
        # far beyond the fit range a height cannot be measured: no loc reports the bound as its z
        assert np.all(np.abs(locs["z"] - fhi) > 1e-3)
        assert np.all(np.abs(locs["z"] - flo) > 1e-3)
        assert len(locs) < 0.5 * len(truth)
        assert info[-1]["Z drop fits at the fit range bound"] is True


def test_fit_range_stops_where_a_width_curve_turns_back():
    # calibrated range -100 .. 100 nm; wy is linear and never limits the extension
    cy = np.array([0.005, 3.0])
    cal = zfit.ZCalibration(np.array([1e-4, 0.0, 1.0]), cy, n_frames=21, step_nm=10.0, magnification_factor=1.0)
    lo, hi = cal.z_range
    assert (lo, hi) == (-100.0, 100.0)
    assert zfit.fit_range(cal, 0.0) == (lo, hi)
    cal2 = zfit.ZCalibration(np.array([1e-4, -0.03, 3.25]), cy, n_frames=21, step_nm=10.0,
                             magnification_factor=1.0)  # wx = 1e-4 (z - 150)^2 + 1: minimum at z = 150
    flo, fhi = zfit.fit_range(cal2, 0.5)
    assert flo == pytest.approx(-200.0)  # the low end extends the full 0.5 x 200 nm
    assert hi < fhi <= 150.0 + 0.3  # the high end stops at wx's minimum


# ------------------------------------------------------------------------------------------ neighbours, z_gof
def test_deviance_moments_match_the_poisson_distribution():
    from scipy.stats import poisson

    for mu in (0.05, 0.7, 3.0, 12.0, 19.9, 20.0, 45.0, 300.0):
        k = np.arange(0, int(mu + 30 * np.sqrt(mu) + 40))
        pk = poisson.pmf(k, mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = 2 * np.where(k > 0, k * np.log(k / mu), 0.0) - 2 * (k - mu)
        mean = float(np.sum(pk * dev))
        var = float(np.sum(pk * dev**2)) - mean**2
        m, v = zfit._deviance_moments(mu)
        assert m == pytest.approx(mean, rel=2e-3) and v == pytest.approx(var, rel=5e-3)


def _astig_boxes(cal, n, box, z, photons=2500.0, bg=20.0, neighbour=None, seed=0):
    """Poisson boxes of one astigmatic spot (true widths from ``cal`` at ``z``) at the box centre (+-0.3 px),
    plus, if given, ``neighbour = (dx, dy, photons, sx, sy)`` relative to the spot. Returns boxes, the
    truth, and the neighbour's expected light per box."""
    from napari_localize.core.simulate import expected_image

    rng = np.random.default_rng(seed)
    r = box // 2
    x = r + rng.uniform(-0.3, 0.3, n)
    y = r + rng.uniform(-0.3, 0.3, n)
    wx, wy = cal.widths(np.full(n, float(z)))
    boxes = np.empty((n, box, box))
    light = np.zeros((n, box, box))
    for i in range(n):
        mu = expected_image(box, box, [x[i]], [y[i]], [photons], wx[i], wy[i], bg)
        if neighbour is not None:
            dx, dy, nph, nsx, nsy = neighbour
            light[i] = expected_image(box, box, [x[i] + dx], [y[i] + dy], [nph], nsx, nsy, 0.0)
        boxes[i] = rng.poisson(mu + light[i])
    return boxes, x, y, light


def _mle(cal, boxes, x, y, photons, bg, z0, extra=None):
    lo, hi = zfit.fit_range(cal)
    return zfit.fit_z_mle(boxes, x, y, np.full(len(x), photons), np.full(len(x), bg), np.full(len(x), z0), cal,
                          z_bounds=(lo, hi), extra=extra)


def test_z_gof_flags_an_overlapping_second_spot(calibration):
    """One clean spot per box: z_gof ~ N(0, 1). A second, unmodelled spot 2.5 px away: z_gof is large."""
    box, n = 11, 120
    clean, x, y, _ = _astig_boxes(calibration, n, box, 200.0, seed=3)
    _, _, _, gof = _mle(calibration, clean, x, y, 2500.0, 20.0, 150.0)
    assert abs(float(np.mean(gof))) < 0.3 and 0.75 < float(np.std(gof)) < 1.3
    assert np.mean(gof > 4) < 0.02
    double, x, y, _ = _astig_boxes(calibration, n, box, 200.0, neighbour=(2.5, 0.0, 2000.0, 1.2, 1.2), seed=4)
    _, _, _, gof2 = _mle(calibration, double, x, y, 2500.0, 20.0, 150.0)
    assert np.mean(gof2 > 4) > 0.9


def test_neighbour_light_in_the_model_removes_the_bias(calibration):
    """A bright neighbour whose tail reaches into the box widens the fit; with its light in the model the
    heights are back on the truth and the fits are clean (z_gof ~ N(0, 1))."""
    box, n, z = 13, 120, -300.0
    nb = (6.0, 0.0, 3000.0, 2.0, 1.2)
    boxes, x, y, light = _astig_boxes(calibration, n, box, z, neighbour=nb, seed=5)
    t0, _, _, gof0 = _mle(calibration, boxes, x, y, 2500.0, 20.0, -250.0)
    t1, crlb, _, gof1 = _mle(calibration, boxes, x, y, 2500.0, 20.0, -250.0, extra=light)
    err0 = t0[:, 4] - z
    err1 = t1[:, 4] - z
    lpz = float(np.sqrt(np.mean(crlb[:, 4])))
    assert abs(float(np.mean(err1))) < 0.4 * lpz
    assert np.sqrt(np.mean(err1**2)) < 0.7 * np.sqrt(np.mean(err0**2))
    assert np.mean(gof0) > 3 and abs(float(np.mean(gof1))) < 0.4


def test_neighbour_light_renders_the_other_spots_of_the_frame():
    from napari_localize.core.simulate import expected_image

    # three spots: 0 and 1 in frame 0 (5 px apart), 2 alone in frame 1 at the same place as 0
    frame = np.array([0, 0, 1])
    x = np.array([20.3, 25.1, 20.3])
    y = np.array([30.6, 31.2, 30.6])
    photons = np.array([1000.0, 2000.0, 1500.0])
    sx = np.array([1.1, 1.6, 1.0])
    sy = np.array([1.3, 0.9, 1.0])
    bx, by = np.rint(x), np.rint(y)
    light = zfit.neighbour_light(frame, x, y, photons, sx, sy, bx, by, 9)
    # box of spot 0 holds spot 1's light (independent rendering of the whole frame), nothing of spot 2
    img = expected_image(64, 64, [x[1]], [y[1]], [photons[1]], sx[1], sy[1], 0.0)
    want = img[int(by[0]) - 4: int(by[0]) + 5, int(bx[0]) - 4: int(bx[0]) + 5]
    assert np.allclose(light[0], want, atol=1e-9)
    assert light[0].sum() > 1.0
    assert np.all(light[2] == 0)


def test_max_gof_policy_and_z_box(calibration, blinking):
    _, frames, truth = blinking
    with pytest.raises(ValueError, match="box size"):
        zfit.ZFitOptions(box_size=8).validate()
    with pytest.raises(ValueError, match="max_gof"):
        zfit.ZFitOptions(max_gof=-1).validate()
    assert zfit.ZFitOptions().z_box(9) == 13 and zfit.ZFitOptions(box_size=7).z_box(9) == 7
    all_ = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions()).locs
    res = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(max_gof=1.0))
    cut, info = res.locs, res.info
    assert len(cut) == int((all_["z_gof"] <= 1.0).sum()) < len(all_)
    assert info[-1]["Z max goodness of fit (z_gof)"] == 1.0 and info[-1]["Z fit box size"] == "2D box + 4"
    # the wider box (default) is at least as accurate as the 2D box on the same spots
    small = api_localize(frames, PARAMS, calibration=calibration, z_options=zfit.ZFitOptions(box_size=9)).locs
    rmse = [np.sqrt(np.mean(_z_errors(v, truth)[0] ** 2)) for v in (all_, small)]
    assert rmse[0] <= 1.02 * rmse[1]


@pytest.mark.parametrize("method", ["mle", "huang"])
def test_streamed_3d_file_equals_the_in_memory_run_with_a_whole_run_filter(tmp_path, calibration, blinking,
                                                                           method):
    """Written chunk by chunk (7 frames each), the z filter's RMS still comes from the whole run."""
    _, frames, _ = blinking
    options = zfit.ZFitOptions(method=method, filter=1.0)
    whole = api_localize(frames, PARAMS, calibration=calibration, z_options=options).locs
    unfiltered = api_localize(frames, PARAMS, calibration=calibration,
                              z_options=zfit.ZFitOptions(method=method)).locs
    assert 0 < len(whole) < len(unfiltered)  # the filter dropped some
    res = api_localize(frames, PARAMS, output=tmp_path / "b_locs.hdf5", calibration=calibration,
                       z_options=options, chunk_frames=7)
    (h5, _), stats = res.paths, res.stats
    streamed, streamed_info = load_locs(h5)
    assert streamed.dtype == whole.dtype and ("z_gof" in streamed.dtype.names) == (method == "mle")
    np.testing.assert_array_equal(streamed, whole)
    assert stats.localized == len(whole)
    assert streamed_info[-1]["Filter range"] == 1.0


def test_picasso_opens_the_streamed_3d_mle_file(tmp_path, calibration, blinking):
    """The default 3D output (z MLE, with z_gof, appended chunk by chunk) opens in Picasso unchanged."""
    import picasso.io

    _, frames, _ = blinking
    res = api_localize(frames, PARAMS, output=tmp_path / "s_locs.hdf5", calibration=calibration, chunk_frames=11)
    (h5, _), stats = res.paths, res.stats
    ours, _ = load_locs(h5)
    plocs, pinfo = picasso.io.load_locs(h5)
    assert len(plocs) == len(ours) == stats.localized > 0
    assert list(plocs.columns) == list(ours.dtype.names) and list(plocs.columns)[-4:] == ["z", "d_zcalib", "lpz",
                                                                                          "z_gof"]
    np.testing.assert_array_equal(np.asarray(plocs["z"]), ours["z"])
    assert pinfo[-1]["Z fit method"] == "astigmatic PSF maximum likelihood"
    assert pinfo[-1]["Z fit models neighbours"] is True


def test_3d_fits_one_emitter_per_box_whatever_max_emitters(calibration):
    """A defocused astigmatic spot is wide in one axis: the 2D multi-emitter model (one pair of widths per box)
    must not split it into a false pair. A 3D run fits one emitter per box (with neighbours' light) and says so."""
    q = SimulationParameters(n_frames=40, height=64, width=64, spots_per_frame=8, photons=3000, bg=20,
                             baseline=BASELINE, z_range=(-700.0, 700.0), seed=11)
    frames, truth = simulate_frames(q)
    five = api_localize(frames, PARAMS.replace(max_emitters=5), calibration=calibration)
    one = api_localize(frames, PARAMS.replace(max_emitters=1), calibration=calibration)
    np.testing.assert_array_equal(five.locs, one.locs)
    assert "n_emitters" not in five.locs.dtype.names
    assert len(five.locs) <= len(truth)
    assert [d["Max emitters per box"] for d in five.info if "Max emitters per box" in d] == [1]


NEIGHBOUR_LIGHT_SCRIPT = """
import json
import numpy as np
from napari_localize.core import zfit
from napari_localize.core.simulate import expected_image
# 80 frames of two spots 5 px apart: enough frames that the frames are shared over threads
n = 80
frame = np.repeat(np.arange(n), 2)
x = np.tile([20.3, 25.1], n)
y = np.tile([30.6, 31.2], n)
photons = np.tile([1000.0, 2000.0], n)
sx = np.tile([1.1, 1.6], n)
sy = np.tile([1.3, 0.9], n)
bx, by = np.rint(x), np.rint(y)
first = zfit.neighbour_light(frame, x, y, photons, sx, sy, bx, by, 9)  # this process's first call
again = zfit.neighbour_light(frame, x, y, photons, sx, sy, bx, by, 9)
img = expected_image(64, 64, [x[1]], [y[1]], [photons[1]], sx[1], sy[1], 0.0)
want = img[int(by[0]) - 4: int(by[0]) + 5, int(bx[0]) - 4: int(bx[0]) + 5]
print(json.dumps({"first": float(np.max(np.abs(first[0::2] - want))),
                  "again": float(np.max(np.abs(again[0::2] - want)))}))
"""


def test_neighbour_light_of_a_process_first_call_on_threads_is_rendered_once():
    # the first call of a kernel in a process (numba compiles or loads it then) shared over two threads: every
    # box gets its neighbour's light once (a compile-once call on the first frame once added it twice there)
    import json
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    done = subprocess.run([sys.executable, "-c", NEIGHBOUR_LIGHT_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["again"] < 1e-9
    assert out["first"] < 1e-9
