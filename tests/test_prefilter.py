"""Prefilters for identification: rolling temporal median and spatial Gaussian."""

import numpy as np
import pytest

from napari_localize.core.identify import identify
from napari_localize.core.prefilter import (
    Prefilter,
    PrefilterError,
    TemporalMedianBackground,
    iter_prefiltered,
)
from napari_localize.core.simulate import SimulationParameters, expected_image, simulate_frames


def jaccard(ids, truth, radius=1.5):
    """Jaccard index of identifications (integer pixel centres) against the true spots, per frame."""
    tp = 0
    for f in np.unique(np.concatenate([ids["frame"], truth["frame"]])):
        a = ids[ids["frame"] == f]
        t = truth[truth["frame"] == f]
        if not len(a) or not len(t):
            continue
        d = np.hypot(a["x"][:, None] - t["x"][None, :], a["y"][:, None] - t["y"][None, :])
        used = set()
        for i in np.argsort(d.min(axis=1)):
            j = int(np.argmin(np.where([k in used for k in range(len(t))], np.inf, d[i])))
            if d[i, j] <= radius and j not in used:
                used.add(j)
                tp += 1
    return tp / (len(ids) + len(truth) - tp)


def best_jaccard(frames, truth, thresholds, box=7):
    return max(jaccard(identify(frames, box, g), truth) for g in thresholds)


@pytest.fixture(scope="module")
def debris_movie():
    """Blinking spots on a field with static bright debris and a strong illumination gradient."""
    p = SimulationParameters(n_frames=120, height=64, width=64, spots_per_frame=6, photons=1500, bg=10,
                             baseline=100, seed=4)
    frames, truth = simulate_frames(p)
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:64, 0:64]
    static = 40.0 * np.exp(-((xx - 10) ** 2 + (yy - 50) ** 2) / (2 * 20.0 ** 2))  # uneven illumination
    static += expected_image(64, 64, rng.uniform(5, 59, 12), rng.uniform(5, 59, 12), np.full(12, 2500.0),
                             1.3, 1.3, 0.0)  # static debris: as bright as a molecule, there in every frame
    movie = frames.astype(np.float32) + rng.poisson(static, frames.shape).astype(np.float32)
    return movie, truth


def test_temporal_median_removes_static_background(debris_movie):
    movie, truth = debris_movie
    thresholds = [300, 500, 800, 1200, 1800, 2500, 3500]
    raw = best_jaccard(movie, truth, thresholds)
    filtered = np.concatenate([f for _, _, f in iter_prefiltered(movie, Prefilter(temporal_median=41),
                                                                 chunk_frames=25)])
    med = best_jaccard(filtered, truth, thresholds)
    # the debris is found in every frame without the filter and never with it
    assert raw < 0.6, raw
    assert med > 0.9, med
    assert med > raw + 0.3


def test_gaussian_filter_helps_noisy_spots():
    p = SimulationParameters(n_frames=60, height=64, width=64, spots_per_frame=6, photons=150, bg=40,
                             baseline=100, seed=5)
    frames, truth = simulate_frames(p)
    thresholds = [20, 30, 40, 60, 80, 100, 130, 160, 200, 260, 330, 420, 550]
    raw = best_jaccard(frames, truth, thresholds)
    smooth = np.concatenate([f for _, _, f in iter_prefiltered(frames, Prefilter(gaussian_sigma=1.0))])
    filt = best_jaccard(smooth, truth, thresholds)
    assert filt > raw + 0.1, (raw, filt)  # measured 0.76 -> 0.91


def test_streamed_median_is_the_exact_rolling_median():
    rng = np.random.default_rng(1)
    movie = rng.poisson(50, (37, 9, 11)).astype(np.uint16)
    window = 9
    streamed = np.concatenate([f for _, _, f in iter_prefiltered(
        movie, Prefilter(temporal_median=window, median_stride=1), chunk_frames=5)])
    expected = np.empty(movie.shape, np.float32)
    for t in range(len(movie)):
        a = min(max(t - window // 2, 0), len(movie) - window)
        expected[t] = movie[t] - np.median(movie[a:a + window].astype(np.float64), axis=0)
    np.testing.assert_allclose(streamed, expected, atol=1e-4)
    # anchors every 4 frames: exact at the anchors, interpolated between, never far off a static scene
    bg = TemporalMedianBackground(movie, window, stride=4)
    for t in bg.anchors:
        a = min(max(t - window // 2, 0), len(movie) - window)
        np.testing.assert_allclose(bg.background(t), np.median(movie[a:a + window], axis=0), atol=1e-4)
    assert len(bg._cache) <= 4  # bounded: a few anchor medians, never the movie


def test_raw_frames_are_passed_through_unchanged(debris_movie):
    movie, _ = debris_movie
    for first, raw, filt in iter_prefiltered(movie, Prefilter(temporal_median=21, gaussian_sigma=1.0),
                                             chunk_frames=50):
        np.testing.assert_array_equal(raw, movie[first:first + len(raw)])
        assert filt.dtype == np.float32 and filt.shape == raw.shape
    off = next(iter_prefiltered(movie, Prefilter()))
    assert off[2] is off[1]  # no prefilter: the raw frames themselves


def test_short_movie_uses_the_whole_movie_as_window():
    movie = np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4)
    bg = TemporalMedianBackground(movie, 100)
    np.testing.assert_allclose(bg.background(0), np.median(movie, axis=0))


@pytest.mark.parametrize("kwargs,match", [({"temporal_median": -3}, "temporal-median"),
                                          ({"temporal_median": 1}, "itself"),
                                          ({"temporal_median": 2.5}, "whole number"),
                                          ({"gaussian_sigma": -1}, "gaussian-filter"),
                                          ({"gaussian_sigma": float("nan")}, "gaussian-filter")])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(PrefilterError, match=match):
        Prefilter(**kwargs).validate()


def test_document_uses_picassos_keys():
    doc = Prefilter(temporal_median=100, gaussian_sigma=1.5).document()
    assert doc["Temporal Median Window"] == 100 and doc["Gaussian Filter Sigma"] == 1.5
