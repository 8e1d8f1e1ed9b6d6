"""The pupil-function PSF simulator: normalisation, Zernike terms, astigmatism sign, centroid, pixel integration,
and its use in simulated movies and bead stacks (CLI included)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_localize.cli import main
from napari_localize.core.pupil import ASTIGMATIC_3D, PupilPSF, noll_to_nm, zernike
from napari_localize.core.simulate import SimulationParameters, simulate_bead_stack, simulate_frames
from napari_localize.io.locs import load_locs


def test_noll_indices_follow_noll_1976():
    expected = [(0, 0), (1, 1), (1, -1), (2, 0), (2, -2), (2, 2), (3, -1), (3, 1), (3, -3), (3, 3), (4, 0)]
    assert [noll_to_nm(j) for j in range(1, 12)] == expected


def test_zernike_terms_are_orthonormal_on_the_disc():
    n = 801
    u = np.linspace(-1, 1, n)
    x, y = np.meshgrid(u, u)
    rho, phi = np.hypot(x, y), np.arctan2(y, x)
    inside = rho <= 1
    zs = {j: zernike(j, rho[inside], phi[inside]) for j in (4, 5, 6, 7, 8, 11)}
    for j, a in zs.items():
        assert np.sqrt(np.mean(a**2)) == pytest.approx(1.0, abs=0.01)
        for k, b in zs.items():
            if k != j:
                assert abs(np.mean(a * b)) < 0.01


def test_in_focus_psf_holds_nearly_all_light_and_has_the_diffraction_width():
    psf = PupilPSF(na=1.4, wavelength_nm=600, pixel_nm=100, supersampling=5)
    img = psf.spot(0.0, 0.0, 0.0, 61)
    # Parseval normalisation: a 6 um box catches all but the far tail of the Airy pattern
    assert 0.97 < img.sum() <= 1.0
    sx, sy = psf.gaussian_widths([0.0], box=21)
    # the paraxial Gaussian approximation of the Airy disc: 0.21 lambda / NA, widened by the pixel
    expected = np.hypot(0.21 * 600 / 1.4, 100 / np.sqrt(12)) / 100
    assert sx[0] == pytest.approx(expected, rel=0.08)
    assert sx[0] == pytest.approx(sy[0], rel=1e-6)


def test_astigmatism_splits_the_foci_with_the_documented_sign():
    psf = PupilPSF(zernike_nm={"astigmatism": 70.0})
    zs = np.linspace(-600, 600, 25)
    sx, sy = psf.gaussian_widths(zs)
    # narrowest in x above the focal plane, in y below; symmetric
    assert zs[np.argmin(sx)] > 150 and zs[np.argmin(sy)] < -150
    assert zs[np.argmin(sx)] == pytest.approx(-zs[np.argmin(sy)])
    # paraxial focal shift of a Z(2,2) term: 2 n sqrt(6) a / NA^2
    shift = 2 * 1.518 * np.sqrt(6) * 70.0 / 1.45**2
    assert zs[np.argmin(sx)] == pytest.approx(shift, abs=75)


def test_defocus_without_aberrations_is_symmetric_in_z():
    psf = PupilPSF()
    a = psf.spot(0.0, 0.0, 400.0, 15)
    b = psf.spot(0.0, 0.0, -400.0, 15)
    assert np.allclose(a, b, atol=1e-12)
    assert a.max() < 0.6 * psf.spot(0.0, 0.0, 0.0, 15).max()


def test_coma_keeps_the_intensity_centroid_on_the_emitter():
    psf = PupilPSF(zernike_nm={"coma_x": 40.0, "coma_y": -30.0})
    raw = PupilPSF(zernike_nm={"coma_x": 40.0, "coma_y": -30.0}, centroid_at_emitter=False)
    k, m = np.mgrid[0:19, 0:19]  # 1.2 um either side, CENTROID_RADIUS_NM
    # in focus the centroid is on the emitter; defocused, coma's tail leaves the box unevenly (the spline models
    # that; only a constant offset between truth and calibration would bias fits)
    for z, tol in ((0.0, 0.02), (-300.0, 0.1), (300.0, 0.1)):
        img = psf.spot(0.3, -0.2, z, 19)
        cx, cy = (img * m).sum() / img.sum() - 9, (img * k).sum() / img.sum() - 9
        assert cx == pytest.approx(0.3, abs=tol) and cy == pytest.approx(-0.2, abs=tol)
    # without the correction coma moves the centroid by a good fraction of a pixel
    img = raw.spot(0.0, 0.0, 0.0, 19)
    assert abs((img * m).sum() / img.sum() - 9) > 0.2


def test_pixel_integration_converges_with_supersampling():
    ref = PupilPSF(zernike_nm=ASTIGMATIC_3D, supersampling=16).spot(0.31, -0.17, 150.0, 11)
    coarse = PupilPSF(zernike_nm=ASTIGMATIC_3D, supersampling=1).spot(0.31, -0.17, 150.0, 11)
    fine = PupilPSF(zernike_nm=ASTIGMATIC_3D, supersampling=4).spot(0.31, -0.17, 150.0, 11)
    assert np.abs(fine - ref).max() < 0.25 * np.abs(coarse - ref).max()
    assert np.abs(fine - ref).max() < 0.02 * ref.max()


def test_sub_pixel_shift_moves_the_spot_exactly():
    psf = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    a = psf.spot(1.0, 0.0, 200.0, 15)
    b = psf.spot(0.0, 0.0, 200.0, 15)
    assert np.allclose(a[:, 1:], b[:, :-1], atol=1e-12)


def test_render_handles_spots_at_the_frame_edge():
    psf = PupilPSF()
    img = np.zeros((20, 20))
    psf.render(img, [0.2], [19.6], [0.0], [1000.0])
    full = psf.spot(0.0, 0.0, 0.0, 41) * 1000
    assert 0.2 * full.sum() < img.sum() < 0.5 * full.sum()  # about a quarter of the light is in the frame
    assert img[19, 0] == img.max()


def test_bad_optics_are_refused():
    with pytest.raises(ValueError, match="NA"):
        PupilPSF(na=1.6)
    with pytest.raises(ValueError, match="unknown aberration"):
        PupilPSF(zernike_nm={"trefoil-ish": 3.0})


def test_simulated_pupil_movie_has_its_truth_where_the_light_is():
    p = SimulationParameters(n_frames=4, height=48, width=48, spots_per_frame=4, photons=5000, bg=0.0,
                             baseline=0.0, z_range=(-400.0, 400.0), psf="pupil", pupil={"zernike_nm": ASTIGMATIC_3D},
                             dtype="float32", min_separation=14, margin=8, seed=5)
    frames, truth = simulate_frames(p)
    assert "z" in truth.dtype.names and np.all(np.abs(truth["z"]) <= 400)
    psf = PupilPSF(zernike_nm=ASTIGMATIC_3D)
    k, m = np.mgrid[0:48, 0:48]
    for t in truth[:6]:
        expect = np.zeros((48, 48))
        psf.render(expect, [t["x"]], [t["y"]], [t["z"]], [t["photons"]])
        near = (np.abs(m - t["x"]) < 4) & (np.abs(k - t["y"]) < 4)
        frame = frames[t["frame"]].astype(float)
        # Poisson noise around the expected image of that spot (others are >= 14 px away)
        assert np.abs(frame[near] - expect[near]).max() < 6 * np.sqrt(expect[near].max()) + 3
    # truth widths follow the astigmatism
    hi = truth["z"] > 250
    lo = truth["z"] < -250
    if hi.any() and lo.any():
        assert np.all(truth["sx"][hi] < truth["sy"][hi]) and np.all(truth["sx"][lo] > truth["sy"][lo])


def test_pupil_bead_stack_and_cli(tmp_path):
    out = tmp_path / "beads.tif"
    assert main(["simulate", str(out), "--psf", "pupil", "--beads", "3", "--frames", "9", "--height", "40",
                 "--width", "40", "--photons", "20000", "--min-separation", "14", "--step-nm", "100",
                 "--aberrations", "astigmatism=70,spherical=20"]) == 0
    locs, info = load_locs(tmp_path / "beads_truth_locs.hdf5")
    assert len(locs) == 27 and "z" in locs.dtype.names
    # frame f sits at stage height -(f - 4) * 100
    assert np.allclose(np.unique(locs["z"])[::-1], -(np.arange(9) - 4) * 100.0)
    assert info[1]["Simulation"]["pupil"]["zernike_nm"] == {"astigmatism": 70.0, "spherical": 20.0}
    p = SimulationParameters(n_frames=9, height=40, width=40, photons=20000, psf="pupil",
                             pupil={"zernike_nm": {"astigmatism": 70.0, "spherical": 20.0}}, min_separation=14)
    _, truth = simulate_bead_stack(p, n_beads=3, step_nm=100.0)
    assert np.allclose(truth["x"], locs["x"]) and np.allclose(truth["z"], locs["z"])


@pytest.mark.parametrize("argv, message", [
    (["--psf", "pupil", "--aberrations", "astigmatism"], "NAME=NM"),
    (["--psf", "pupil", "--aberrations", "wobble=3"], "unknown aberration"),
    (["--aberrations", "astigmatism=50"], "--psf pupil only"),
    (["--psf", "spline"], "--spline-calibration"),
    (["--z-range", "300", "-300"], "LOW must be below"),
    (["--na", "1.7", "--psf", "pupil"], "NA"),
])
def test_simulate_cli_refuses_bad_psf_options(tmp_path, capsys, argv, message):
    assert main(["simulate", str(tmp_path / "m.tif"), "--frames", "2"] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.tif").exists()
