"""Drift correction (RCC, AIM) on simulated DNA-PAINT sites with a known drift."""

import numpy as np
import pytest

from napari_localize.core.drift import (
    DriftError,
    apply_drift,
    interpolate_drift,
    segment_bounds,
    undrift,
)
from napari_localize.core.simulate_sites import SiteSimulation, drift_error, simulate_sites, site_residual


@pytest.fixture(scope="module")
def sites_data():
    sim = SiteSimulation(n_frames=10000, n_sites=500, seed=3)
    locs, sites, drift, info, site_index = simulate_sites(sim)
    return sim, locs, sites, drift, site_index


def _floor(locs, drift, n_frames, segmentation):
    """The precision floor of a drift estimate with this segmentation: the statistical error of a segment's
    shift (sqrt(2) lp / sqrt(locs per segment)) and the error of interpolating the true drift from its
    segment means through the same spline, added in quadrature."""
    lp = float(np.sqrt(np.mean(np.asarray(locs["lpx"], float) ** 2)))
    bounds = segment_bounds(n_frames, segmentation)
    means = np.array([drift[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    interp = drift_error(interpolate_drift(bounds, means, n_frames), drift, locs["frame"])
    stat = np.sqrt(2) * lp / np.sqrt(len(locs) / (len(bounds) - 1))
    return float(np.hypot(interp, stat)), lp


@pytest.mark.parametrize("method,segmentation", [("rcc", 1000), ("rcc", 500), ("aim", 100)])
def test_drift_reaches_the_precision_floor(sites_data, method, segmentation):
    sim, locs, sites, drift, site_index = sites_data
    before = site_residual(locs, sites, site_index)
    result = undrift(locs, sim.n_frames, method, segmentation)
    assert result.drift.shape == (sim.n_frames, 2)
    assert abs(result.drift.mean(axis=0)).max() < 1e-4  # zero-mean convention
    floor, lp = _floor(locs, drift, sim.n_frames, segmentation)
    err = drift_error(result.drift, drift, locs["frame"])
    assert err < 1.5 * floor, (err, floor)
    corrected = apply_drift(locs, result)
    after = site_residual(corrected, sites, site_index)
    # uncorrected, the sites are smeared by the drift; corrected, only the localization precision is left
    assert before > 5 * lp
    assert after < 1.05 * lp, (after, lp)
    # the input is untouched
    assert site_residual(locs, sites, site_index) == before


def test_aim_follows_a_drift_larger_than_its_search_radius(sites_data):
    sim = SiteSimulation(n_frames=6000, n_sites=400, drift_px=4.0, seed=5)  # ~4 px >> 0.46 px radius
    locs, sites, drift, _, site_index = simulate_sites(sim)
    result = undrift(locs, sim.n_frames, "aim", 100)
    floor, lp = _floor(locs, drift, sim.n_frames, 100)
    assert drift_error(result.drift, drift, locs["frame"]) < 1.5 * floor
    assert site_residual(apply_drift(locs, result), sites, site_index) < 1.05 * lp


def test_rcc_finds_drift_beyond_one_pixel_between_segments():
    sim = SiteSimulation(n_frames=6000, n_sites=400, drift_px=3.0, seed=6)
    locs, sites, drift, _, site_index = simulate_sites(sim)
    result = undrift(locs, sim.n_frames, "rcc", 500)
    floor, lp = _floor(locs, drift, sim.n_frames, 500)
    assert drift_error(result.drift, drift, locs["frame"]) < 1.5 * floor
    assert result.diagnostics["pairs"] == 12 * 11 // 2


def test_no_drift_gives_no_correction():
    sim = SiteSimulation(n_frames=4000, n_sites=300, drift_px=0.0, seed=7)
    locs, *_ = simulate_sites(sim)
    for method, seg in (("rcc", 500), ("aim", 100)):
        result = undrift(locs, sim.n_frames, method, seg)
        lp = float(np.sqrt(np.mean(np.asarray(locs["lpx"], float) ** 2)))
        assert np.abs(result.drift).max() < lp / 2


def test_drift_is_deterministic(sites_data):
    sim, locs, *_ = sites_data
    a = undrift(locs, sim.n_frames, "aim", 200).drift
    b = undrift(locs, sim.n_frames, "aim", 200).drift
    np.testing.assert_array_equal(a, b)


def test_bad_input_is_a_clear_error(sites_data):
    sim, locs, *_ = sites_data
    with pytest.raises(DriftError, match="no localizations"):
        undrift(locs[:0], sim.n_frames, "rcc")
    with pytest.raises(DriftError, match="at least two segments"):
        undrift(locs, sim.n_frames, "rcc", 20000)
    with pytest.raises(DriftError, match="method"):
        undrift(locs, sim.n_frames, "fiducials")
    with pytest.raises(DriftError, match="segmentation"):
        undrift(locs, sim.n_frames, "aim", 0)
    early = locs[locs["frame"] >= 500]
    with pytest.raises(DriftError, match="first segment"):
        undrift(early, sim.n_frames, "aim", 100)
    with pytest.raises(DriftError, match="covers"):
        apply_drift(locs, np.zeros((10, 2)))


def test_segments_and_interpolation():
    np.testing.assert_array_equal(segment_bounds(1000, 300), [0, 300, 600, 1000])  # 100-frame tail joins
    np.testing.assert_array_equal(segment_bounds(1000, 250), [0, 250, 500, 750, 1000])
    # a linear drift is interpolated (and extrapolated past the centres) exactly
    bounds = segment_bounds(1000, 100)
    centres = (bounds[:-1] + bounds[1:] - 1) / 2
    seg = np.column_stack([0.002 * centres, -0.001 * centres])
    d = interpolate_drift(bounds, seg, 1000)
    f = np.arange(1000)
    np.testing.assert_allclose(d[:, 0], 0.002 * f, atol=1e-9)
    np.testing.assert_allclose(d[:, 1], -0.001 * f, atol=1e-9)
