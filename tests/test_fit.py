"""Fits against simulator ground truth, with tolerances from the Cramér-Rao lower bound."""

import numpy as np
import pytest

from napari_localize.core.fit_avg import fit_avg
from napari_localize.core.fit_lq import fit_lq, mortensen_precision
from napari_localize.core.fit_mle import fit_mle
from napari_localize.core.psf import crlb
from napari_localize.core.simulate import expected_image, simulate_spots

N_SPOTS = 4000
BG = 20.0
SIGMA = 1.0
BOX = 7


def mean_crlb(photons, dx, dy, index):
    """sqrt of the CRLB variance averaged over the true sub-pixel positions (independent of the fitter)."""
    r = BOX // 2
    var = [crlb(photons, BG, SIGMA, SIGMA, BOX, r + a, r + b)[index] for a, b in zip(dx[:400], dy[:400])]
    return float(np.sqrt(np.mean(var)))


@pytest.fixture(scope="module", params=[500.0, 2000.0, 5000.0])
def spots(request):
    photons = request.param
    s, dx, dy = simulate_spots(N_SPOTS, photons, BG, SIGMA, BOX, seed=int(photons))
    return photons, s, dx, dy


def test_mle_reaches_the_crlb_without_outlier_tail(spots):
    photons, s, dx, dy = spots
    fit = fit_mle(s)
    assert fit["converged"].mean() > 0.995
    ok = fit["converged"]
    ex = fit["dx"][ok] - dx[ok]
    ey = fit["dy"][ok] - dy[ok]
    bound_x = mean_crlb(photons, dx, dy, 0)
    bound_y = mean_crlb(photons, dx, dy, 1)
    # statistical error of an RMSE from 4000 samples is ~1.1 %: 1.05 leaves room for that only
    assert np.sqrt(np.mean(ex**2)) <= 1.05 * bound_x
    assert np.sqrt(np.mean(ey**2)) <= 1.05 * bound_y
    # no tail: a Gaussian error distribution puts ~0.006 % beyond 4 sigma
    assert np.mean(np.abs(ex) > 4 * bound_x) < 0.002
    assert np.abs(ex).max() < 6 * bound_x
    # unbiased within 3 standard errors
    assert abs(ex.mean()) < 3 * bound_x / np.sqrt(ok.sum())
    # reported lpx is the CRLB at the fitted parameters: close to the true bound
    assert np.median(fit["lpx"][ok]) == pytest.approx(bound_x, rel=0.05)


def test_mle_photons_background_and_width(spots):
    photons, s, dx, dy = spots
    fit = fit_mle(s)
    ok = fit["converged"]
    c = crlb(photons, BG, SIGMA, SIGMA, BOX)
    n = ok.sum()
    for name, truth, var in (("photons", photons, c[2]), ("bg", BG, c[3]), ("sx", SIGMA, c[4]), ("sy", SIGMA, c[5])):
        est = fit[name][ok]
        sd = np.sqrt(var)
        assert abs(est.mean() - truth) < 5 * sd / np.sqrt(n) + 0.003 * truth, name
        assert est.std() < 1.15 * sd, name
        assert np.median(fit[name + "_unc"][ok]) == pytest.approx(sd, rel=0.1), name


def test_lq_is_unbiased_and_its_mortensen_precision_is_honest(spots):
    photons, s, dx, dy = spots
    fit = fit_lq(s)
    ok = fit["converged"]
    assert ok.mean() > 0.995
    ex = fit["dx"][ok] - dx[ok]
    rmse = np.sqrt(np.mean(ex**2))
    bound = mean_crlb(photons, dx, dy, 0)
    assert bound <= rmse * 1.02  # least squares cannot beat the bound ...
    assert rmse < 1.3 * bound  # ... and stays close to it
    # pixel-integrated model: sx estimates sigma itself, not sqrt(sigma^2 + 1/12) (= 1.041 for sigma 1)
    assert np.median(fit["sx"][ok]) == pytest.approx(SIGMA, abs=0.015)
    assert np.median(fit["photons"][ok]) == pytest.approx(photons, rel=0.02)
    assert np.median(fit["bg"][ok]) == pytest.approx(BG, rel=0.05)
    assert np.median(fit["lpx"][ok]) == pytest.approx(rmse, rel=0.12)


def test_noiseless_spot_recovered_exactly():
    r = BOX // 2
    mu = expected_image(BOX, BOX, [r + 0.27], [r - 0.31], [3000], 1.2, 0.9, 15)[None].astype(np.float32)
    for fitter in (fit_mle, fit_lq):
        f = fitter(mu, convergence=1e-6)
        assert f["converged"][0]
        assert f["dx"][0] == pytest.approx(0.27, abs=1e-3)
        assert f["dy"][0] == pytest.approx(-0.31, abs=1e-3)
        assert f["photons"][0] == pytest.approx(3000, rel=2e-3)
        assert f["bg"][0] == pytest.approx(15, rel=5e-3)
        assert f["sx"][0] == pytest.approx(1.2, abs=2e-3)
        assert f["sy"][0] == pytest.approx(0.9, abs=2e-3)


def test_em_gain_doubles_variance():
    s, _, _ = simulate_spots(50, 2000, BG, SIGMA, BOX, seed=9)
    for fitter in (fit_mle, fit_lq):
        a = fitter(s)
        b = fitter(s, em=True)
        np.testing.assert_allclose(b["lpx"], np.sqrt(2) * a["lpx"], rtol=1e-6)


def test_mortensen_formula_values():
    # hand evaluation of Mortensen eq. 6 for s = 1, N = 1000, b = 10 (pixel units)
    sa2 = 1 + 1 / 12
    expected = np.sqrt(sa2 / 1000 * (16 / 9 + 8 * np.pi * sa2 * 10 / 1000))
    assert mortensen_precision(1000.0, 10.0, 1.0, 1.0) == pytest.approx(expected)


def test_pure_noise_is_flagged_not_silently_fitted():
    rng = np.random.default_rng(1)
    noise = rng.poisson(20.0, (500, BOX, BOX)).astype(np.float32)
    fit = fit_mle(noise)
    # most noise boxes have no spot: either the fit fails, or it finds a tiny, badly determined one
    accepted = fit["converged"]
    assert accepted.mean() < 0.15
    assert np.all(fit["photons"][accepted] < 1000)
    assert np.all(np.isfinite(fit["lpx"][accepted]))


def test_avg_background_corrected_sum():
    box = 11
    r = box // 2
    mu = expected_image(box, box, [r], [r], [3000], 0.8, 0.8, 12)[None].astype(np.float32)
    f = fit_avg(mu)
    # 5 pixels from the centre the border is pure background for sigma 0.8: its mean is bg
    assert f["bg"][0] == pytest.approx(12, rel=0.001)
    assert f["photons"][0] == pytest.approx(3000, rel=0.01)
    assert f["dx"][0] == 0 and f["dy"][0] == 0
    assert f["converged"][0]
