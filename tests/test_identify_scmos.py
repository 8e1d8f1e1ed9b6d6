"""Identification on sCMOS frames: hot pixels are not spots, and the net-gradient threshold keeps its meaning."""

from __future__ import annotations

import numpy as np
import pytest

from napari_localize.cli import suggested_min_net_gradient
from napari_localize.core.camera import readout_variance_photons
from napari_localize.core.identify import identify
from napari_localize.core.identify_scmos import identification_image, identify_scmos
from napari_localize.core.simulate import SimulationParameters
from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel, simulate_scmos_movie


def _score(ids, truth, hot, n_frames, radius=1.5):
    tp = fp = fp_hot = 0
    for f in range(n_frames):
        t = truth[truth["frame"] == f]
        for r in ids[ids["frame"] == f]:
            d = np.hypot(t["x"] - r["x"], t["y"] - r["y"])
            if len(d) and d.min() < radius:
                tp += 1
            else:
                fp += 1
                fp_hot += bool(hot[max(r["y"] - 1, 0):r["y"] + 2, max(r["x"] - 1, 0):r["x"] + 2].any())
    return tp, fp, fp_hot


@pytest.mark.parametrize("photons", [400, 800])
def test_hot_pixels_are_not_found_as_spots(photons):
    model = SCMOSModel(chip_height=64, chip_width=64, seed=3, hot_fraction=0.03)
    p = SimulationParameters(n_frames=200, height=64, width=64, spots_per_frame=4, photons=photons, bg=10,
                             sigma=1.0, seed=5)
    frames, truth = simulate_scmos_movie(p, model)
    cam = SCMOSCamera(model)
    sensitivity = 1.0 / cam.gain
    var_e = readout_variance_photons(cam.variance, sensitivity)
    p.sensitivity = 1.0 / model.gain  # the threshold a user would choose for this brightness on a median pixel
    threshold = suggested_min_net_gradient(p)
    raw = _score(identify(frames, 7, threshold), truth, cam.hot, p.n_frames)
    ours = _score(identify_scmos(frames, 7, threshold, cam.offset, sensitivity, var_e), truth, cam.hot, p.n_frames)
    assert ours[0] >= raw[0]  # every spot the raw counts find, and those a hot neighbour hid
    assert ours[0] >= 0.99 * len(truth)
    assert ours[2] <= raw[2] / 2
    if photons == 400:  # at this threshold the raw counts do find hot pixels: the comparison means something
        assert raw[2] >= 20
        assert ours[2] <= 2


def test_the_threshold_keeps_its_meaning_on_a_uniform_camera():
    """Uniform offset, gain and variance: the prepared image is the raw counts minus the offset, so the same
    spots come out with the same net gradients."""
    model = SCMOSModel(chip_height=48, chip_width=48, offset_sd=0, column_sd=0, gain_spread=0, variance_log_sd=0,
                       hot_fraction=0, seed=2)
    p = SimulationParameters(n_frames=40, height=48, width=48, spots_per_frame=3, photons=600, bg=10, seed=8)
    frames, _ = simulate_scmos_movie(p, model)
    cam = SCMOSCamera(model)
    sensitivity = 1.0 / cam.gain
    var_e = readout_variance_photons(cam.variance, sensitivity)
    image = identification_image(frames, cam.offset, sensitivity, var_e)
    np.testing.assert_allclose(image, frames.astype(np.float32) - np.float32(model.offset), atol=1e-3)
    a = identify(frames, 7, 700.0)
    b = identify_scmos(frames, 7, 700.0, cam.offset, sensitivity, var_e)
    assert len(a) > 50
    np.testing.assert_array_equal(a[["frame", "x", "y"]], b[["frame", "x", "y"]])
    np.testing.assert_allclose(a["net_gradient"], b["net_gradient"], rtol=1e-4)


def test_gain_spread_is_flat_fielded_in_median_gain_counts():
    """A uniform light level reads as a flat image whatever each pixel's gain and offset."""
    model = SCMOSModel(chip_height=32, chip_width=32, gain_spread=0.1, hot_fraction=0, read_noise=0.0, seed=4)
    cam = SCMOSCamera(model)
    mu = np.full(cam.shape, 1000.0)
    expected = cam.gain * mu + cam.offset  # noiseless mean counts
    sensitivity = 1.0 / cam.gain
    image = identification_image(expected, cam.offset, sensitivity, np.full(cam.shape, 1e-6))
    np.testing.assert_allclose(image, 1000.0 / np.median(sensitivity), rtol=1e-5)
    assert np.std(expected) > 50  # the raw counts were far from flat
