"""Crowded fields: joint multi-emitter fits, neighbours' light and residual re-identification.

Every accuracy assertion is against the simulator's ground truth, with bounds from the Cramér-Rao lower bound,
against picassosr run on the same movie, or against the storm-analysis reference table.
"""

import math
import subprocess
import sys

import h5py
import numpy as np
import pytest

from napari_localize import LocalizeParameters
from napari_localize.api import localize
from napari_localize.cli import main, suggested_min_net_gradient
from napari_localize.core.evaluate import accuracy, nearest_neighbour_distance
from napari_localize.core.locs import CROWDED_FIELDS, locs_dtype
from napari_localize.core.psf import crlb
from napari_localize.core.simulate import SimulationParameters, simulate_movie
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie

BASELINE = 100.0


def simulate(density, n_frames, photons=2000.0, seed=11, min_separation=0.0, size=128):
    sp = SimulationParameters(n_frames=n_frames, height=size, width=size, spots_per_frame=density,
                              photons=photons, bg=20.0, sigma=1.0, baseline=BASELINE, min_separation=min_separation,
                              seed=seed)
    frames, truth = simulate_movie(sp)
    return frames, truth, sp


def params(sp, **kw):
    return LocalizeParameters(baseline=BASELINE, min_net_gradient=round(suggested_min_net_gradient(sp)), **kw)


def crlb_x_sd(truth, box=7):
    """Root mean CRLB variance of x (pixels) of isolated spots with the true parameters and offsets."""
    r = box // 2
    var = [crlb(float(t["photons"]), float(t["bg"]), float(t["sx"]), float(t["sy"]), box,
                r + t["x"] - round(float(t["x"])), r + t["y"] - round(float(t["y"])))[0] for t in truth]
    return float(np.sqrt(np.mean(var)))


def errors(truth, locs):
    acc, m = accuracy(truth, locs, tolerance=1.0)
    ex = locs["x"][m.locs_index].astype(float) - truth["x"][m.truth_index]
    ey = locs["y"][m.locs_index].astype(float) - truth["y"][m.truth_index]
    return acc, m, ex, ey


def rms(*a):
    v = np.concatenate(a)
    return float(np.sqrt(np.mean(v**2)))


@pytest.mark.parametrize("photons", [500.0, 2000.0])
def test_isolated_spots_at_the_crlb_among_20_per_frame(photons):
    frames, truth, sp = simulate(20, 120, photons)
    locs = localize(frames, params(sp)).locs
    single = localize(frames, params(sp, max_emitters=1)).locs
    acc, m, ex, ey = errors(truth, locs)
    nn = nearest_neighbour_distance(truth)[m.truth_index]
    rng = np.random.default_rng(0)
    for radius, bound in ((4.0, 1.10), (6.0, 1.05)):
        sel = nn > radius
        assert sel.sum() > 1000
        sample = rng.choice(m.truth_index[sel], 400, replace=False)
        ratio = rms(ex[sel], ey[sel]) / crlb_x_sd(truth[sample])
        assert ratio <= bound, (radius, ratio)
    # the joint fit finds at least what one emitter per box found
    acc1, _, _, _ = errors(truth, single)
    assert acc.jaccard >= acc1.jaccard
    # the uncertainty reported per emitter is the CRLB: it matches the scatter of isolated spots
    sel = nn > 6.0
    lp = locs["lpx"][m.locs_index][sel]
    assert 0.9 < rms(ex[sel]) / np.sqrt(np.mean(lp**2)) < 1.1


def _picasso(movie, method, suffix, ng):
    cmd = [sys.executable, "-m", "picasso", "localize", str(movie), "-a", method, "-b", "7", "-g", str(ng),
           "-bl", str(int(BASELINE)), "-s", "1", "-ga", "1", "-d", "0", "-sf", suffix]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    locs, _ = load_locs(movie.parent / f"{movie.name[:-len('.ome.tif')]}.ome{suffix}_locs.hdf5")
    return locs


def test_dense_fields_beat_picasso_by_a_tenth_in_jaccard(tmp_path):
    # one movie: 30 frames of 80 spots, then 20 frames of 150 spots per 128x128 frame (spots may overlap)
    f80, t80, sp = simulate(80, 30, seed=21)
    f150, t150, _ = simulate(150, 20, seed=22)
    t150 = t150.copy()
    t150["frame"] += 30
    frames = np.concatenate([f80, f150])
    movie = tmp_path / "dense.ome.tif"
    write_movie(movie, [frames], frames.shape, frames.dtype)
    ng = round(suggested_min_net_gradient(sp))
    ours = localize(frames, params(sp)).locs
    theirs = {m: _picasso(movie, m, "_" + m, ng) for m in ("lq", "mle")}
    for truth, lo, hi in ((t80, 0, 30), (t150, 30, 50)):
        def part(locs, lo=lo, hi=hi):
            return locs[(locs["frame"] >= lo) & (locs["frame"] < hi)]

        acc, _, ex, ey = errors(truth, part(ours))
        best_j = 0.0
        for method, locs in theirs.items():
            pacc, _, pex, pey = errors(truth, part(locs))
            best_j = max(best_j, pacc.jaccard)
            assert rms(ex, ey) <= rms(pex, pey), (lo, method)
        assert acc.jaccard >= best_j + 0.10, (lo, acc.jaccard, best_j)


@pytest.mark.parametrize("box", [7, 9])
def test_storm_analysis_frame(data_dir, box):
    d = data_dir / "smlm_ground_truth"
    frames = np.fromfile(d / "test.dax", ">u2").reshape(10, 256, 256)[:1].astype(np.uint16)
    with h5py.File(d / "test_ref.hdf5") as f:
        g = f["fr_0"]
        truth = np.zeros(len(g["x"]), [("frame", "<u4"), ("x", "<f4"), ("y", "<f4")])
        truth["x"], truth["y"] = g["x"][...], g["y"][...]
    assert len(truth) == 200
    p = LocalizeParameters(box_size=box, min_net_gradient=1000, baseline=BASELINE)
    locs = localize(frames, p).locs
    single = localize(frames, p.replace(max_emitters=1)).locs
    acc, _, ex, ey = errors(truth, locs)
    acc1, _, ex1, ey1 = errors(truth, single)
    assert acc.jaccard >= 0.90, acc.jaccard
    assert acc.jaccard > acc1.jaccard + 0.05
    assert rms(ex, ey) < rms(ex1, ey1)


@pytest.mark.parametrize("method", ["mle", "lq"])
def test_sparse_spots_give_exactly_the_single_emitter_fit(method):
    # no spot reaches another's box: the crowded run must change nothing
    frames, truth, sp = simulate(6, 60, seed=5, min_separation=16.0)
    res = localize(frames, params(sp, fit_method=method))
    locs, info = res.locs, res.info
    res = localize(frames, params(sp, fit_method=method, max_emitters=1))
    single, info1 = res.locs, res.info
    assert len(locs) == len(single) > 300
    assert single.dtype == locs_dtype(method)
    assert locs.dtype.names == locs_dtype(method).names + tuple(n for n, _ in CROWDED_FIELDS)
    for name in single.dtype.names:
        np.testing.assert_array_equal(locs[name], single[name], err_msg=name)
    assert (locs["n_emitters"] == 1).all() and (locs["llr"] == 0).all()
    assert info[2]["Max emitters per box"] == 5 and info1[2]["Max emitters per box"] == 1


def test_close_pairs_are_resolved_with_joint_crlb():
    # one pair 1.6-2.4 px apart per 24x24 frame; the box holds both
    n = 300
    rng = np.random.default_rng(3)
    from napari_localize.core.simulate import expected_image

    frames = np.empty((n, 24, 24), np.uint16)
    truth = np.zeros(2 * n, [("frame", "<u4"), ("x", "<f4"), ("y", "<f4")])
    for f in range(n):
        d = rng.uniform(1.6, 2.4)
        a = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(11, 13, 2)
        xs = [cx - 0.5 * d * np.cos(a), cx + 0.5 * d * np.cos(a)]
        ys = [cy - 0.5 * d * np.sin(a), cy + 0.5 * d * np.sin(a)]
        mu = expected_image(24, 24, xs, ys, [2000.0, 2000.0], 1.0, 1.0, 20.0)
        frames[f] = rng.poisson(mu) + BASELINE
        truth["frame"][2 * f:2 * f + 2] = f
        truth["x"][2 * f:2 * f + 2] = xs
        truth["y"][2 * f:2 * f + 2] = ys
    sp = SimulationParameters(photons=2000.0)
    locs = localize(frames, params(sp)).locs
    single = localize(frames, params(sp, max_emitters=1)).locs
    acc, m, ex, ey = errors(truth, locs)
    acc1, _, _, _ = errors(truth, single)
    assert acc1.jaccard < 0.6  # one box, one emitter: at most one of each pair
    assert acc.jaccard > 0.9
    matched = locs[m.locs_index]
    assert np.mean(matched["n_emitters"] == 2) > 0.9
    assert (matched["llr"] > 30).mean() > 0.9
    # the joint Fisher matrix: each emitter's bound is wider than an isolated spot's, and it is the scatter
    iso = np.sqrt(crlb(2000.0, 20.0, 1.0, 1.0, 7)[0])
    lp = np.sqrt(np.mean(matched["lpx"] ** 2))
    assert lp > 1.15 * iso
    z = ex / matched["lpx"]
    assert 0.85 < 1.4826 * np.median(np.abs(z - np.median(z))) < 1.15
    assert np.mean(np.abs(z) > 4) < 0.05


def test_cli_max_emitters_flag_and_record(tmp_path):
    movie = tmp_path / "m.ome.tif"
    assert main(["simulate", str(movie), "--frames", "20", "--height", "64", "--width", "64", "--spots-per-frame",
                 "30", "--min-separation", "0", "--baseline", "100", "--seed", "2"]) == 0
    base = ["localize", str(movie), "--baseline", "100", "--min-net-gradient", "1200"]
    assert main(base + ["--suffix", "_one", "--max-emitters", "1"]) == 0
    assert main(base + ["--suffix", "_many"]) == 0
    one, info1 = load_locs(tmp_path / "m.ome_one_locs.hdf5")
    many, info = load_locs(tmp_path / "m.ome_many_locs.hdf5")
    assert info1[2]["Max emitters per box"] == 1 and "n_emitters" not in one.dtype.names
    assert info[2]["Max emitters per box"] == 5
    assert "Min. 2 log-likelihood ratio" in info[2]["Multi-emitter fit"]
    assert list(many.dtype.names[-2:]) == ["n_emitters", "llr"]
    assert (many["n_emitters"] > 1).any() and len(many) > len(one)


@pytest.mark.parametrize("value", ["0", "6", "2.5"])
def test_cli_rejects_bad_max_emitters(tmp_path, capsys, value):
    movie = tmp_path / "m.ome.tif"
    assert main(["simulate", str(movie), "--frames", "2", "--height", "32", "--width", "32"]) == 0
    capsys.readouterr()
    code = main(["localize", str(movie), "--max-emitters", value]) if value != "2.5" else None
    if value == "2.5":
        with pytest.raises(SystemExit):
            main(["localize", str(movie), "--max-emitters", value])
        return
    assert code != 0
    assert "max emitters" in capsys.readouterr().err


def _screened_and_stored(frames, fit_fn):
    """Identify ``frames`` (box 7), fit the boxes with ``fit_fn`` (``fit_mle`` or ``fit_lq``), screen them, and
    also cut every box with all other emitters' light rendered and search its residual (the stored boxes' path):
    ``(ids, fit, G, theta, bad, screened, stored)`` (``screened[g] = (z, light)``, ``stored[g]`` the six
    columns of ``_residual_peaks``)."""
    from napari_localize.core import crowded
    from napari_localize.core.identify import identify
    from napari_localize.core.spots import cut_spots

    p = params(SimulationParameters(photons=2000.0))
    ids = identify(frames, 7, p.min_net_gradient)
    spots = cut_spots(frames, ids["frame"], ids["y"], ids["x"], 7).astype(np.float32) - np.float32(BASELINE)
    fit = fit_fn(spots, p.convergence, p.max_iterations)
    sigma = crowded._psf_width(crowded._typical(crowded._single_theta(fit, 7), fit["converged"]), 7)
    cam = crowded._Camera(frames, BASELINE, 1.0, None, None, 7)
    E, G, bad = crowded._state(ids, fit, 7, sigma)
    theta = G.theta.copy()
    theta[bad, :6] = (3, 3, 100.0, 1.0, sigma, sigma)
    screened = np.zeros((len(ids), 2))
    crowded._screen(cam, G, E, theta, screened, spots)
    order, fstarts = crowded._frame_index(E, len(frames), np.ones(len(E), bool))
    data, other, var, search = cam.empty(len(ids))
    every = np.arange(len(ids), dtype=np.int64)
    cam.cut(every, G, every, order, fstarts, E, data, other, var, search)
    stored = np.zeros((len(ids), 6))
    crowded._residual_peaks(search, other, var, G.K, theta, 7, stored, want_ll=False)
    return ids, fit, G, theta, bad, screened, stored


def test_screening_finds_the_hidden_neighbours_as_the_stored_boxes_do():
    # the screening cuts and searches each box in one pass (the photons the single fit saw, a separable
    # filter where no other light falls): its residual significance is the stored boxes' (cut, then searched),
    # and it flags the boxes whose second spot, 1.5-3 px away, identification did not see
    from napari_localize.core import crowded
    from napari_localize.core.fit_mle import fit_mle
    from napari_localize.core.simulate import expected_image

    n = 200
    rng = np.random.default_rng(8)
    frames = np.empty((n, 48, 48), np.uint16)
    hidden = []
    for f in range(n):
        # a pair (the second spot dimmer) in one half, a lone spot in the other, a spot 6-7 px from the lone one
        d, a = rng.uniform(1.5, 3.0), rng.uniform(0, 2 * np.pi)
        px, py = rng.uniform(10, 14, 2)
        lx, ly = rng.uniform(32, 36), rng.uniform(10, 14)
        xs = [px, px + d * np.cos(a), lx, lx + 4.5, rng.uniform(10, 38)]
        ys = [py, py + d * np.sin(a), ly, ly + 4.5, rng.uniform(32, 38)]
        mu = expected_image(48, 48, xs, ys, [2000.0, 1000.0, 2000.0, 2000.0, 2000.0], 1.0, 1.0, 20.0)
        frames[f] = rng.poisson(mu) + BASELINE
        hidden.append((px, py))
    hidden = np.array(hidden)
    ids, fit, G, theta, bad, screened, stored = _screened_and_stored(frames, fit_mle)
    conv = fit["converged"]
    typical = crowded._typical(crowded._single_theta(fit, 7), conv)
    sigma = crowded._psf_width(typical, 7)
    # the lone boxes' z uses a 3e-7 erf: the model moves by <= 2 x 3e-7 x 2000 photons a pixel, its filtered sum
    # (weights summing to < 4) by < 5e-3, and z (a noise of sqrt(bg x sum w^2) > 4 photons) by < 1.2e-3
    np.testing.assert_allclose(screened[:, 0], stored[:, 1], rtol=0, atol=1.2e-3)
    lit = screened[:, 1] > 0  # boxes with other light go through the stored boxes' own code
    np.testing.assert_allclose(screened[lit, 0], stored[lit, 1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(screened[:, 1], stored[:, 5])
    assert (screened[:, 1] > 0).sum() > n  # the spots 4.5 px apart light each other's boxes
    # the pair's box (at its brighter spot), the other boxes
    at_pair = np.zeros(len(ids), bool)
    for i, row in enumerate(ids):
        at_pair[i] = np.hypot(row["x"] - hidden[row["frame"], 0], row["y"] - hidden[row["frame"], 1]) < 1.5
    assert at_pair.sum() > 0.9 * n
    flagged = (screened[:, 0] > 5.0) | crowded._wide(G.theta, sigma, crowded.CrowdedOptions(),
                                                      crowded._width_noise(typical, sigma, 7))
    assert flagged[at_pair].mean() > 0.9
    assert (screened[~at_pair, 0] > 5.0).mean() < 0.02


def test_the_screening_ignores_only_light_too_faint_to_matter():
    """A neighbour whose light can reach a box only faintly (the screening's bound: its Gaussian mass beyond the
    box's nearer edges, squared, over the background, below ``NEGLIGIBLE_LIGHT``) is not cut into the box: the
    box's residual z then differs from the one with every neighbour's light rendered by at most what that light
    can move it (Cauchy-Schwarz), and every box whose other light is larger is cut exactly as before."""
    from napari_localize.core import crowded
    from napari_localize.core.fit_lq import fit_lq
    from napari_localize.core.simulate import expected_image

    n = 300
    rng = np.random.default_rng(21)
    frames = np.empty((n, 40, 40), np.uint16)
    for f in range(n):
        # two spots 6.5-11 px apart in any direction: from light that matters down to none
        d, a = rng.uniform(6.5, 11.0), rng.uniform(0, 2 * np.pi)
        x0, y0 = rng.uniform(14, 26, 2)
        mu = expected_image(40, 40, [x0, x0 + d * np.cos(a)], [y0, y0 + d * np.sin(a)], [2000.0, 2000.0], 1.0,
                            1.0, 20.0)
        frames[f] = rng.poisson(mu) + BASELINE
    ids, fit, G, theta, bad, screened, stored = _screened_and_stored(frames, fit_lq)
    assert fit["converged"].mean() > 0.99 and len(ids) > 1.9 * n
    light = stored[:, 5]
    ok = ~bad
    ignored = ok & (screened[:, 1] == 0) & (light > 0)
    cut = ok & (screened[:, 1] > 0)
    assert ignored.sum() > 0.2 * n and cut.sum() > 0.2 * n  # both kinds occur at these distances
    # ignored light is far below what makes a box be refitted (light_chi2)
    assert crowded.NEGLIGIBLE_LIGHT / crowded.CrowdedOptions().light_chi2 <= 1e-3
    assert np.all(light[ignored] < crowded.NEGLIGIBLE_LIGHT)
    np.testing.assert_array_equal(screened[cut, 1], light[cut])
    assert np.all(light[ok & ~cut] < crowded.NEGLIGIBLE_LIGHT)  # no light that matters is ever ignored
    # |dz| <= sqrt(light) (the filtered residual) + |z| x the light's share of the noise variance, plus the
    # lone-box z's own erf approximation (1.2e-3, test above)
    z = stored[:, 1]
    bound = np.sqrt(light) + np.abs(z) * np.sqrt(light / np.maximum(theta[:, 3], 1.0)) + 1.2e-3
    assert np.all(np.abs(screened[ignored, 0] - z[ignored]) <= bound[ignored])


def test_the_psf_width_of_a_chunk_with_failed_or_non_finite_fits():
    """A chunk whose single fits all failed has no typical spot (the PSF width falls back to 1 px and the width
    scatter to a nominal spot); non-finite fits are left out of the medians; an extreme bias correction is
    capped at a tenth of the width."""
    from napari_localize.core import crowded

    theta = np.tile([3.0, 3.0, 2000.0, 20.0, 1.0, 1.1], (100, 1))
    assert crowded._typical(theta, np.zeros(100, bool)) is None
    assert crowded._psf_width(None, 7) == 1.0
    assert np.isfinite(crowded._width_noise(None, 1.0, 7)[0])
    theta[::2, 4] = np.nan
    theta[1::4, 2] = np.inf
    N, bg, s_min = crowded._typical(theta, np.ones(100, bool))
    # photons and background rounded to 1/32 octave; the narrower width exact (the NaN rows left out)
    assert (N, bg, s_min) == (crowded._step(2000.0), crowded._step(20.0), 1.0)
    assert abs(N / 2000.0 - 1.0) < 0.011 and abs(bg / 20.0 - 1.0) < 0.011
    psf = crowded._psf_width((N, bg, s_min), 7)
    sd, rho = crowded._width_stats(N, bg, 1.0, 7)
    assert psf == pytest.approx(1.0 + sd * math.sqrt((1.0 - rho) / math.pi), rel=1e-12)
    assert crowded._psf_width((10.0, 500.0, 1.0), 7) <= 1.1  # a dim spot on a bright background: capped


def test_the_screenings_erf_is_within_3e7():
    from napari_localize.core.crowded import _erf_approx

    x = np.linspace(-7.0, 7.0, 140_001)
    err = np.array([_erf_approx(v) for v in x]) - np.array([math.erf(v) for v in x])
    assert np.max(np.abs(err)) < 3e-7
    assert _erf_approx(0.0) == 0.0 and _erf_approx(-1.0) == -_erf_approx(1.0)


@pytest.mark.parametrize("method", ["lq", "mle"])
def test_the_split_gate_uses_the_fitted_widths_real_scatter(method):
    """A box is tried as two emitters when its single fit is wider than the PSF by ``split_z`` standard
    deviations of a single spot's fitted width. That standard deviation is the Cramér-Rao bound for the MLE and
    the least-squares estimator's own (larger) covariance for LQ: both must match how the widths of simulated
    isolated spots actually scatter, or LQ sends noise to the split test (and MLE misses pairs)."""
    from napari_localize.core import crowded
    from napari_localize.core.engine import NOISE_LSQ, NOISE_POISSON
    from napari_localize.core.pipeline import localize_frames

    frames, _, sp = simulate(25, 200, min_separation=12.0, seed=5)
    locs = localize_frames(frames, params(sp, fit_method=method, max_emitters=1))
    assert len(locs) > 4900
    N, bg, sigma = (float(np.median(locs[k])) for k in ("photons", "bg", "sx"))
    predicted, rho = crowded._width_stats(N, bg, sigma, 7, method == "lq")
    crlb_sd = crowded._width_stats(N, bg, sigma, 7, False)[0]
    measured = float(np.std(locs["sx"]))
    assert abs(measured / predicted - 1.0) < 0.08  # sampling error of 5000 widths: 1 %
    if method == "lq":
        assert predicted > 1.15 * crlb_sd  # least squares does not reach the bound
    # sx and sy of one spot scatter together (both trade against the background): the predicted correlation
    # is the simulated one (sampling error of 5000 pairs: 0.013)
    assert 0.1 < rho < 0.7
    assert abs(np.corrcoef(locs["sx"], locs["sy"])[0, 1] - rho) < 0.07
    noise = NOISE_LSQ if method == "lq" else NOISE_POISSON
    theta = np.column_stack([locs["x"], locs["y"], locs["photons"], locs["bg"], locs["sx"], locs["sy"]])
    ok = np.ones(len(locs), bool)
    typical = crowded._typical(theta, ok)
    assert typical[0] == pytest.approx(N, rel=0.012) and typical[1] == pytest.approx(bg, rel=0.012)
    assert crowded._width_noise(typical, sigma, 7, noise)[0] == pytest.approx(predicted, rel=0.02)
    # the PSF width from the narrower axis of each spot, corrected for the minimum's bias: the simulated width
    # to a fifth of a spot's width scatter (the median of 5000: 0.02 of it), where the plain median of the
    # minimum is half a scatter low
    psf = crowded._psf_width(typical, 7, noise)
    s_min = float(np.median(np.minimum(locs["sx"], locs["sy"])))
    assert sp.sigma - s_min > 0.35 * measured
    assert abs(psf - sp.sigma) < 0.2 * measured
    # so that isolated spots are rarely tried as two: a 3-sd gate on the wider axis of two (two one-sided
    # 3-sd tails: <= 0.27 %)
    wide = crowded._wide(theta, psf, crowded.CrowdedOptions(), crowded._width_noise(typical, psf, 7, noise))
    assert wide.mean() < 0.003
