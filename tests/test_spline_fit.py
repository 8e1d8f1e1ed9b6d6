"""The spline PSF on the engine: CRLB on spline-simulated spots, CUDA (simulator) = CPU, no z bias on pupil-
simulated spots after a calibration, the spline run through the CLI (our file and Picasso's), Picasso opens
the 3D locs, and the errors of the options that do not apply."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, match_truth

from napari_localize.cli import main
from napari_localize.core import spline_calibrate as sc
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.pupil import ASTIGMATIC_3D, PupilPSF
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack, simulate_frames
from napari_localize.core.spline import SplinePSF, spline_coefficients
from napari_localize.core.spline_fit import fit_spline_boxes, spline_crlb
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie
from napari_localize.io.spline_calibration import save_spline_calibration

PICASSO_FILE = DATA / "picasso_small_spline_calib.hdf5"


@pytest.fixture(scope="module")
def ideal():
    """The spline of the noise-free pupil PSF sampled on the pixel grid, 20 nm apart: the model itself."""
    pp = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    zs = np.arange(700.0, -701.0, -20.0)
    vol = pp.stack(zs, 15)
    return SplinePSF(spline_coefficients(vol), cx=7.0, cy=7.0, z_first=700.0, z_step=-20.0, box=13, z_init=0.0,
                     volume=vol)


def _spline_spots(psf, n, photons, bg, seed, box=13, z_range=(-500, 500)):
    rng = np.random.default_rng(seed)
    r = box // 2
    x = r + rng.uniform(-0.5, 0.5, n)
    y = r + rng.uniform(-0.5, 0.5, n)
    z = rng.uniform(*z_range, n) if psf.is_3d else np.zeros(n)
    spots = np.stack([rng.poisson(photons * psf.patch(x[i], y[i], z[i], box, box) + bg) for i in range(n)])
    return spots.astype(np.float32), x, y, z


def test_spline_mle_reaches_the_crlb_on_spline_simulated_spots(ideal):
    spots, x, y, z = _spline_spots(ideal, 1200, 3000.0, 20.0, seed=2)
    res = fit_spline_boxes(spots, ideal, "mle")
    assert res.converged.all()
    crlb = spline_crlb(ideal, x, y, z, 3000.0, 20.0, 13)
    for j, truth, name in ((0, x, "x"), (1, y, "y"), (4, z, "z")):
        rmse = np.sqrt(np.mean((res.theta[:, j] - truth) ** 2))
        bound = np.sqrt(np.mean(crlb[:, j]))
        assert rmse <= 1.1 * bound, f"{name}: RMSE {rmse:.4g} > 1.1 x CRLB {bound:.4g}"
        assert rmse >= 0.85 * bound, f"{name}: RMSE {rmse:.4g} below the bound {bound:.4g}?"
    # the reported precisions are the bound at the fit
    assert np.median(np.sqrt(res.crlb[:, 4]) / np.sqrt(crlb[:, 4])) == pytest.approx(1.0, abs=0.05)
    assert np.mean(res.theta[:, 2]) == pytest.approx(3000.0, rel=0.01)


def test_spline_lq_is_unbiased_and_near_the_crlb(ideal):
    spots, x, y, z = _spline_spots(ideal, 400, 3000.0, 20.0, seed=3)
    res = fit_spline_boxes(spots, ideal, "lq")
    assert res.converged.mean() > 0.99
    crlb = spline_crlb(ideal, x, y, z, 3000.0, 20.0, 13)
    dz = res.theta[:, 4] - z
    assert abs(dz.mean()) < 3 * dz.std() / np.sqrt(len(dz))
    # unweighted least squares is not efficient under Poisson noise (every pixel weighs the same)
    rmse, bound = np.sqrt(np.mean(dz**2)), np.sqrt(np.mean(crlb[:, 4]))
    assert rmse < 2.0 * bound, f"LQ z RMSE {rmse:.1f} nm vs the Poisson CRLB {bound:.1f} nm"


def test_two_dimensional_spline_fit_reaches_the_crlb():
    from napari_localize.core.simulate import expected_image

    vol = expected_image(15, 15, [7.0], [7.0], [1.0], 1.1, 1.1, 0.0)
    psf = SplinePSF(spline_coefficients(vol), cx=7.0, cy=7.0, box=13)
    spots, x, y, _ = _spline_spots(psf, 600, 2000.0, 10.0, seed=4)
    res = fit_spline_boxes(spots, psf, "mle")
    crlb = spline_crlb(psf, x, y, 0.0, 2000.0, 10.0, 13)
    assert res.theta.shape == (600, 4)
    for j, truth in ((0, x), (1, y)):
        assert np.sqrt(np.mean((res.theta[:, j] - truth) ** 2)) <= 1.1 * np.sqrt(np.mean(crlb[:, j]))


def test_multi_start_finds_the_far_height(ideal):
    # a spot at the edge of the range is found from the start heights, not only near the reference height
    spots, _, _, z = _spline_spots(ideal, 60, 5000.0, 10.0, seed=5, z_range=(550, 650))
    one = fit_spline_boxes(spots, ideal, "mle", starts=())
    many = fit_spline_boxes(spots, ideal, "mle")
    assert np.mean(many.objective >= one.objective - 1e-6) > 0.95
    assert np.sqrt(np.mean((many.theta[:, 4] - z) ** 2)) < 20.0
    assert np.sqrt(np.mean((many.theta[:, 4] - z) ** 2)) <= np.sqrt(np.mean((one.theta[:, 4] - z) ** 2)) + 1e-9


def test_cuda_kernel_equals_the_cpu_under_the_simulator(ideal, tmp_path):
    """The same engine source compiled for CUDA (numba's simulator) gives the CPU's fits."""
    small = SplinePSF(ideal.coefficients[25:46, 2:12, 2:12].copy(), cx=5.0, cy=5.0, z_first=200.0, z_step=-20.0,
                      box=9, z_init=0.0)
    spots, _, _, _ = _spline_spots(small, 3, 3000.0, 20.0, seed=6, box=9, z_range=(-150, 150))
    np.save(tmp_path / "spots.npy", spots)
    save_spline_calibration(tmp_path / "cal.hdf5", small)
    code = (
        "import numpy as np, sys\n"
        "from napari_localize.io.spline_calibration import load_spline_calibration\n"
        "from napari_localize.core.spline_fit import fit_spline_boxes\n"
        f"psf = load_spline_calibration(r'{tmp_path / 'cal.hdf5'}')\n"
        f"spots = np.load(r'{tmp_path / 'spots.npy'}')\n"
        "for method in ('mle', 'lq'):\n"
        "    a = fit_spline_boxes(spots, psf, method, starts=(0.5,), device='cpu')\n"
        "    b = fit_spline_boxes(spots, psf, method, starts=(0.5,), device='cuda')\n"
        "    assert np.allclose(a.theta, b.theta, rtol=0, atol=1e-9), (a.theta, b.theta)\n"
        "    assert (a.iterations == b.iterations).all() and (a.converged == b.converged).all()\n"
        "    assert np.allclose(a.crlb, b.crlb, rtol=1e-9, atol=0)\n"
        "print('same')\n"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "same" in out.stdout


# ----------------------------------------------------------------------------------------- pupil data
@pytest.fixture(scope="module")
def calibrated():
    p = SimulationParameters(n_frames=81, height=96, width=96, photons=20000, bg=20, baseline=100.0, seed=1,
                             psf="pupil", pupil={"zernike_nm": ASTIGMATIC_3D}, min_separation=20, margin=12)
    frames, _ = simulate_bead_stack(p, n_beads=12, step_nm=20.0)
    params = LocalizeParameters(box_size=13, min_net_gradient=1000, baseline=100.0)
    return sc.calibrate_spline(frames, params, 20.0, sc.SplineCalibrationOptions(box_size=13,
                                                                               magnification_factor=1.0))


def _pupil_spots(n, seed, noisy, pp=None, photons=5000.0, bg=20.0):
    pp = pp or PupilPSF(zernike_nm=ASTIGMATIC_3D)
    rng = np.random.default_rng(seed)
    z = rng.uniform(-600, 600, n)
    d = rng.uniform(-0.5, 0.5, (n, 2))
    mu = np.stack([pp.spot(d[i, 0], d[i, 1], z[i], 13) * photons + bg for i in range(n)])
    return (rng.poisson(mu) if noisy else mu).astype(np.float32), z, d


def _bin_bias(dz, z):
    out = []
    for a in range(-600, 600, 100):
        s = (z >= a) & (z < a + 100)
        out.append((dz[s].mean(), dz[s].std() / np.sqrt(s.sum())))
    return np.array(out)


def test_calibration_has_half_pixel_nodes(calibrated):
    # 11 beads: half-pixel lateral nodes by default; the grid is still the fit box + 2 pixels
    assert calibrated.oversampling == 2 and calibrated.grid_px == 15 and calibrated.n_nodes[-1] == 29


def test_oversampled_spline_fit_reaches_the_crlb_on_its_own_spots(calibrated):
    spots, x, y, z = _spline_spots(calibrated, 800, 3000.0, 20.0, seed=21)
    res = fit_spline_boxes(spots, calibrated, "mle")
    assert res.converged.mean() > 0.99
    ok = res.converged
    crlb = spline_crlb(calibrated, x[ok], y[ok], z[ok], 3000.0, 20.0, 13)
    for j, truth, name in ((0, x, "x"), (1, y, "y"), (4, z, "z")):
        rmse = np.sqrt(np.mean((res.theta[ok, j] - truth[ok]) ** 2))
        bound = np.sqrt(np.mean(crlb[:, j]))
        assert 0.85 * bound <= rmse <= 1.1 * bound, f"{name}: RMSE {rmse:.4g} vs CRLB {bound:.4g}"


def test_spline_fit_is_unbiased_in_z_on_pupil_simulated_spots(calibrated):
    """Pupil-PSF spots (not the model) fitted with the calibrated spline: bias per 100 nm bin <= 5 nm."""
    # noise-free: the model error alone
    spots, z, d = _pupil_spots(300, 8, noisy=False)
    res = fit_spline_boxes(spots, calibrated, "mle")
    assert res.converged.all()
    bias = _bin_bias(res.theta[:, 4] - z, z)
    assert np.abs(bias[:, 0]).max() <= 5.0, np.round(bias[:, 0], 1)
    lat = np.array([np.mean(res.theta[:, 0] - 6 - d[:, 0]), np.mean(res.theta[:, 1] - 6 - d[:, 1])])
    # the lateral origin is a convention for a PSF with coma (the centroid within 1.2 um); the pupil
    # simulator's and the calibration's agree to a few hundredths of a pixel (see the symmetric-PSF test)
    assert np.abs(lat).max() < 0.03, lat
    # Poisson noise: the bias is still within 5 nm (+ 2 standard errors of the bin's mean)
    spots, z, d = _pupil_spots(1200, 9, noisy=True)
    res = fit_spline_boxes(spots, calibrated, "mle")
    ok = res.converged
    assert ok.mean() > 0.99
    bias = _bin_bias(res.theta[ok, 4] - z[ok], z[ok])
    assert np.all(np.abs(bias[:, 0]) <= 5.0 + 2 * bias[:, 1]), np.round(bias, 1)
    # and the z precision is the spline's CRLB at the fit (the model is close to the truth)
    crlb = spline_crlb(calibrated, res.theta[ok, 0], res.theta[ok, 1], res.theta[ok, 4], 5000.0, 20.0, 13)
    ratio = np.sqrt(np.mean((res.theta[ok, 4] - z[ok]) ** 2) / np.mean(crlb[:, 4]))
    assert 0.85 < ratio < 1.2, ratio


@pytest.fixture(scope="module")
def calibrated_symmetric():
    """A calibration of a PSF without odd aberrations: its centroid is the emitter whatever the window."""
    zern = {"astigmatism": 80.0, "spherical": 25.0}
    p = SimulationParameters(n_frames=61, height=96, width=96, photons=20000, bg=20, baseline=100.0, seed=2,
                             psf="pupil", pupil={"zernike_nm": zern}, min_separation=20, margin=12)
    frames, _ = simulate_bead_stack(p, n_beads=12, step_nm=20.0)
    params = LocalizeParameters(box_size=13, min_net_gradient=1000, baseline=100.0)
    return sc.calibrate_spline(frames, params, 20.0, sc.SplineCalibrationOptions(box_size=13,
                                                                               magnification_factor=1.0)), zern


def test_calibration_puts_the_emitter_on_the_pixel_centre_convention(calibrated_symmetric):
    """No constant lateral offset from the centring: pupil spots (truth at integer box coordinates + d) are
    fitted where they are, and spots rendered with the calibrated spline itself too."""
    psf, zern = calibrated_symmetric
    assert psf.oversampling == 2
    pp = PupilPSF(zernike_nm=zern)
    spots, z, d = _pupil_spots(200, 11, noisy=False, pp=pp)
    keep = np.abs(z) < 500  # inside the 61-step scan's range
    res = fit_spline_boxes(spots[keep], psf, "mle")
    lat = np.array([np.mean(res.theta[:, 0] - 6 - d[keep, 0]), np.mean(res.theta[:, 1] - 6 - d[keep, 1])])
    assert np.abs(lat).max() < 0.01, lat
    # spline-simulated spots: the fit returns the position the spline was rendered at
    rng = np.random.default_rng(12)
    x = 6 + rng.uniform(-0.5, 0.5, 100)
    y = 6 + rng.uniform(-0.5, 0.5, 100)
    zz = rng.uniform(-400, 400, 100)
    spots = np.stack([psf.patch(x[i], y[i], zz[i], 13, 13) * 5000 + 20 for i in range(100)])
    res = fit_spline_boxes(spots, psf, "mle")
    assert np.abs(res.theta[:, 0] - x).max() < 1e-3 and np.abs(res.theta[:, 1] - y).max() < 1e-3


def test_oversampled_file_round_trips_and_picasso_reads_its_pixel_table(calibrated, tmp_path):
    import h5py
    from picasso import io as pio

    from napari_localize.io.spline_calibration import load_spline_calibration

    path = save_spline_calibration(tmp_path / "cal.hdf5", calibrated)
    back = load_spline_calibration(path)
    assert back.oversampling == 2 and back.grid_px == 15 and back.cx == 14.0
    assert np.allclose(back.coefficients, calibrated.coefficients, rtol=1e-9, atol=1e-12)
    with h5py.File(path) as f:
        assert "coefficients_oversampled" in f
    cal = pio.load_spline_calibration(path)
    assert cal["n_data"][:2] == [15, 15] and cal["oversampling"] == 1.0
    # both tables are the same PSF at whole-pixel offsets; between them the pixel table interpolates
    a = back.patch(6.0, 6.0, 0.0, 13, 13)
    b = back.pixel_grid().patch(6.0, 6.0, 0.0, 13, 13)
    assert np.allclose(a, b, atol=1e-9)
    c = back.patch(6.5, 6.5, 0.0, 13, 13)
    e = back.pixel_grid().patch(6.5, 6.5, 0.0, 13, 13)
    assert np.abs(c - e).max() < 0.1 * c.max()


def test_localize_cli_with_our_spline_file_and_picasso_reads_the_result(calibrated, tmp_path, capsys):
    cal = save_spline_calibration(tmp_path / "cal.hdf5", calibrated)
    q = SimulationParameters(n_frames=40, height=64, width=64, spots_per_frame=5, photons=3000, bg=20,
                             baseline=100.0, seed=9, z_range=(-500.0, 500.0), psf="pupil",
                             pupil={"zernike_nm": ASTIGMATIC_3D}, min_separation=16, margin=8)
    frames, truth = simulate_frames(q)
    movie = tmp_path / "movie.ome.tif"
    write_movie(movie, iter([frames]), frames.shape, frames.dtype, pixelsize_nm=130.0)
    assert main(["localize", str(movie), "--zcalib", str(cal), "--baseline", "100", "--min-net-gradient",
                 "600"]) == 0
    locs, info = load_locs(tmp_path / "movie.ome_locs.hdf5")
    assert {"z", "lpz", "d_zcalib", "z_gof"} <= set(locs.dtype.names)
    assert info[1]["Box Size"] == 13  # the calibration's box
    assert info[-1]["Spline calibration"] == str(cal)
    idx = match_truth(locs, truth, 1.0)
    m = idx >= 0
    assert m.sum() >= 0.9 * len(truth)
    dz = locs["z"][m] - truth["z"][idx[m]]
    assert np.sqrt(np.mean(dz**2)) < 30.0
    assert np.median(locs["lpz"][m]) == pytest.approx(np.sqrt(np.mean(dz**2)), rel=0.5)
    # Picasso opens our 3D file
    from picasso import io as pio

    plocs, _ = pio.load_locs(str(tmp_path / "movie.ome_locs.hdf5"))
    assert len(plocs) == len(locs) and np.allclose(plocs["z"], locs["z"])


def test_localize_cli_reads_picassos_spline_file(tmp_path):
    q = SimulationParameters(n_frames=20, height=48, width=48, spots_per_frame=3, photons=4000, bg=20,
                             baseline=100.0, seed=10, z_range=(-400.0, 400.0), psf="pupil",
                             pupil={"zernike_nm": ASTIGMATIC_3D}, min_separation=16, margin=8)
    frames, truth = simulate_frames(q)
    movie = tmp_path / "m.tif"
    write_movie(movie, iter([frames]), frames.shape, frames.dtype)
    assert main(["localize", str(movie), "--zcalib", str(PICASSO_FILE), "--baseline", "100",
                 "--min-net-gradient", "600"]) == 0
    locs, info = load_locs(tmp_path / "m_locs.hdf5")
    assert info[1]["Box Size"] == 9 and info[-1]["Spline calibration source"] == "Picasso"
    idx = match_truth(locs, truth, 1.0)
    m = idx >= 0
    assert m.sum() >= 0.8 * len(truth)
    assert np.median(np.abs(locs["z"][m] - truth["z"][idx[m]])) < 40.0


@pytest.mark.parametrize("argv, message", [
    (["--z-method", "huang"], "huang"),
    (["--z-filter", "2"], "--z-max-gof"),
    (["--fit-method", "avg"], "avg"),
    (["--box-size", "11"], "larger than the spline calibration's grid"),
    (["--z-box-size", "11"], "--z-box-size"),
])
def test_localize_cli_refuses_options_that_do_not_apply_to_a_spline(tmp_path, capsys, argv, message):
    movie = tmp_path / "m.tif"
    write_movie(movie, iter([np.full((2, 32, 32), 100, np.uint16)]), (2, 32, 32), np.uint16)
    assert main(["localize", str(movie), "--zcalib", str(PICASSO_FILE)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m_locs.hdf5").exists()
