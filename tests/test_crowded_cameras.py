"""The crowded-fields refit with per-pixel sCMOS maps and with identification prefilters.

Ground truth from the simulators; every comparison is between runs on the same movie.
"""

import numpy as np
import pytest

from napari_localize.cli import suggested_min_net_gradient
from napari_localize.core.camera import CameraMaps
from napari_localize.core.camera_calibration import CameraCalibration
from napari_localize.core.evaluate import accuracy, nearest_neighbour_distance
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.pipeline import localize
from napari_localize.core.simulate import SimulationParameters, expected_image, simulate_frames
from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel, simulate_scmos_movie


def _errors(truth, locs):
    acc, m = accuracy(truth, locs, tolerance=1.0)
    ex = locs["x"][m.locs_index].astype(float) - truth["x"][m.truth_index]
    ey = locs["y"][m.locs_index].astype(float) - truth["y"][m.truth_index]
    return acc, m, np.hypot(ex, ey)


def _rms(v):
    return float(np.sqrt(np.mean(v**2)))


@pytest.fixture(scope="module")
def scmos_crowd():
    """A crowded field (overlapping spots) on a chip with uneven gain, offset and hot pixels."""
    model = SCMOSModel(chip_height=64, chip_width=64, hot_fraction=0.02, gain_spread=0.1, seed=21)
    p = SimulationParameters(n_frames=200, height=64, width=64, spots_per_frame=30, photons=2000.0, bg=10.0,
                             sigma=1.0, seed=8, min_separation=0.0)
    frames, truth = simulate_scmos_movie(p, model)
    cam = SCMOSCamera(model)
    maps = CameraMaps.from_calibration(CameraCalibration(cam.offset, cam.variance, cam.gain), 1.0)
    ng = suggested_min_net_gradient(SimulationParameters(**{**p.as_dict(), "sensitivity": 1.0 / model.gain}))
    return frames, truth, maps, ng


@pytest.mark.parametrize("method", ["mle", "lq"])
def test_scmos_maps_crowded_refit_finds_overlapping_spots(scmos_crowd, method):
    frames, truth, maps, ng = scmos_crowd
    p = LocalizeParameters(box_size=7, min_net_gradient=ng, fit_method=method)
    locs, _ = localize(frames, p, camera=maps)
    single, _ = localize(frames, LocalizeParameters(box_size=7, min_net_gradient=ng, fit_method=method,
                                                    max_emitters=1), camera=maps)
    acc, m, err = _errors(truth, locs)
    acc1, m1, err1 = _errors(truth, single)
    # spots closer than a box are found (the single fit has one emitter per box)
    assert acc.jaccard > acc1.jaccard + 0.05, (acc.jaccard, acc1.jaccard)
    assert (locs["n_emitters"] > 1).mean() > 0.05 and (locs["llr"] > 30).sum() > 100
    # spots with a neighbour 3-6 px away: the neighbour's light is modelled, so they are fitted better
    nn = nearest_neighbour_distance(truth)
    near = (nn[m.truth_index] > 3) & (nn[m.truth_index] < 6)
    near1 = (nn[m1.truth_index] > 3) & (nn[m1.truth_index] < 6)
    assert near.sum() > 500
    assert _rms(err[near]) < 0.8 * _rms(err1[near1]), (_rms(err[near]), _rms(err1[near1]))
    # spots far from any other: as accurate as the single fit (within the RMSE's sampling error)
    far = nn[m.truth_index] > 8
    far1 = nn[m1.truth_index] > 8
    assert _rms(err[far]) < 1.05 * _rms(err1[far1])


def test_scmos_isolated_boxes_keep_the_single_emitter_fit():
    model = SCMOSModel(chip_height=48, chip_width=56, hot_fraction=0.03, seed=9)
    p = SimulationParameters(n_frames=80, height=48, width=56, spots_per_frame=4, photons=1500.0, bg=10.0,
                             sigma=1.0, seed=2, min_separation=16, margin=5)
    frames, truth = simulate_scmos_movie(p, model)
    cam = SCMOSCamera(model)
    maps = CameraMaps.from_calibration(CameraCalibration(cam.offset, cam.variance, cam.gain), 1.0)
    ng = suggested_min_net_gradient(SimulationParameters(**{**p.as_dict(), "sensitivity": 1.0 / model.gain}))
    locs, _ = localize(frames, LocalizeParameters(min_net_gradient=ng), camera=maps)
    single, _ = localize(frames, LocalizeParameters(min_net_gradient=ng, max_emitters=1), camera=maps)
    assert len(locs) == len(single) > 200
    for name in single.dtype.names:
        np.testing.assert_array_equal(locs[name], single[name], err_msg=name)


@pytest.fixture(scope="module")
def debris_crowd():
    """Overlapping blinking spots on a field with static bright debris (as bright as a molecule) and an
    illumination gradient: what the temporal median is for."""
    p = SimulationParameters(n_frames=160, height=64, width=64, spots_per_frame=25, photons=2000.0, bg=10.0,
                             baseline=100, seed=14, min_separation=0.0)
    frames, truth = simulate_frames(p)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:64, 0:64]
    static = 30.0 * np.exp(-((xx - 12) ** 2 + (yy - 48) ** 2) / (2 * 20.0**2))
    dx, dy = rng.uniform(5, 59, 10), rng.uniform(5, 59, 10)
    static += expected_image(64, 64, dx, dy, np.full(10, 2500.0), 1.3, 1.3, 0.0)
    movie = (frames.astype(np.float32) + rng.poisson(static, frames.shape)).astype(np.uint16)
    return movie, truth, p, np.column_stack([dx, dy])


def test_prefilter_crowded_refit_finds_spots_but_not_the_debris(debris_crowd):
    movie, truth, sp, debris = debris_crowd
    ng = round(suggested_min_net_gradient(sp))
    kw = dict(baseline=100.0, min_net_gradient=ng, temporal_median=40)
    locs, _ = localize(movie, LocalizeParameters(**kw))
    single, _ = localize(movie, LocalizeParameters(**kw, max_emitters=1))
    acc, m, err = _errors(truth, locs)
    acc1, m1, err1 = _errors(truth, single)
    # overlapping spots are found; the debris' light, static, is fixed light of the refits
    assert acc.jaccard > acc1.jaccard + 0.2, (acc.jaccard, acc1.jaccard)
    assert acc.precision > max(acc1.precision, 0.97), (acc.precision, acc1.precision)

    def false_on_debris(result, matching):
        matched = np.zeros(len(result), bool)
        matched[matching.locs_index] = True
        d = np.hypot(result["x"][:, None] - debris[None, :, 0], result["y"][:, None] - debris[None, :, 1])
        return int(((d.min(axis=1) < 1.5) & ~matched).sum())

    assert false_on_debris(locs, m) <= false_on_debris(single, m1)
    assert (locs["n_emitters"] > 1).sum() > 200


def test_the_run_records_the_refit_with_a_prefilter(debris_crowd):
    from napari_localize.api import localize as api_localize

    movie, truth, sp, _ = debris_crowd
    res = api_localize(movie[:60], LocalizeParameters(baseline=100.0, min_net_gradient=2000, temporal_median=20))
    locs, info = res.locs, res.info
    doc = info[2]
    assert doc["Max emitters per box"] == 5 and "Multi-emitter fit" in doc
    assert not any("Crowded fields" in d for d in info), "the refit is no longer recorded as off"
    assert (locs["n_emitters"] >= 1).all()
