"""The streaming pipeline on simulated movies: detection, chunking, cancel, progress, parameters."""

import threading

import dask.array as da
import numpy as np
import pytest

from napari_localize import CancelToken, LocalizeCancelled, LocalizeParameters, ParameterError, localize
from napari_localize.core.evaluate import accuracy
from napari_localize.core.pipeline import iter_localize
from napari_localize.core.psf import crlb
from napari_localize.core.simulate import SimulationParameters, simulate_movie

SIM = SimulationParameters(n_frames=120, height=64, width=96, spots_per_frame=8, photons=2000, bg=20,
                           baseline=100, sensitivity=0.5, seed=4)
PARAMS = LocalizeParameters(min_net_gradient=2000, baseline=100, sensitivity=0.5)


@pytest.fixture(scope="module")
def movie():
    return simulate_movie(SIM)


@pytest.mark.parametrize("method", ["mle", "lq", "avg"])
def test_every_spot_found_and_placed(movie, method):
    frames, truth = movie
    res = localize(frames, PARAMS.replace(fit_method=method))
    locs, stats = res.locs, res.stats
    acc, _ = accuracy(truth, locs, tolerance=1.0)
    assert acc.jaccard > 0.99
    assert stats.frames == SIM.n_frames
    bound = np.sqrt(crlb(SIM.photons, SIM.bg, SIM.sigma, SIM.sigma, 7)[0])
    if method == "mle":
        assert acc.rmse_x < 1.1 * bound and acc.rmse_y < 1.1 * bound
        assert np.median(locs["photons"]) == pytest.approx(SIM.photons, rel=0.02)
        assert np.median(locs["bg"]) == pytest.approx(SIM.bg, rel=0.03)
    elif method == "lq":
        assert acc.rmse_x < 1.3 * bound
    else:  # positions at the pixel: error ~ uniform over a pixel
        assert acc.rmse_x < 0.4
    assert list(locs.dtype.names[:11]) == ["frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy",
                                           "ellipticity", "net_gradient"]
    assert np.all(np.diff(locs["frame"].astype(int)) >= 0)


def test_chunked_equals_unchunked(movie):
    frames, _ = movie
    whole = localize(frames, PARAMS, chunk_frames=10_000).locs
    chunked = localize(frames, PARAMS, chunk_frames=7).locs
    assert whole.dtype == chunked.dtype
    np.testing.assert_array_equal(whole, chunked)


def test_array_types_give_identical_results(movie):
    frames, _ = movie
    ref = localize(frames, PARAMS).locs
    lazy = localize(da.from_array(frames, chunks=(16, -1, -1)), PARAMS).locs
    np.testing.assert_array_equal(ref, lazy)


def test_progress_reports_every_chunk(movie):
    frames, _ = movie
    calls = []
    localize(frames, PARAMS, progress=lambda d, t: calls.append((d, t)), chunk_frames=25)
    assert calls == [(25, 120), (50, 120), (75, 120), (100, 120), (120, 120)]


def test_cancel_stops_between_chunks(movie):
    frames, _ = movie
    token = CancelToken()
    seen = []
    with pytest.raises(LocalizeCancelled):
        for chunk in iter_localize(frames, PARAMS, cancel=token, chunk_frames=10):
            seen.append(chunk.stop)
            if len(seen) == 2:
                token.cancel()
    assert seen == [10, 20]


def test_cancel_from_another_thread(movie):
    frames, _ = movie
    token = CancelToken()
    timer = threading.Timer(0.0, token.cancel)
    timer.start()
    timer.join()
    with pytest.raises(LocalizeCancelled):
        localize(frames, PARAMS, cancel=token, chunk_frames=5)


def test_frame_range_and_roi(movie):
    frames, truth = movie
    p = PARAMS.replace(frame_range=(10, 29), roi=(0, 0, 32, 48))
    res = localize(frames, p)
    locs, stats = res.locs, res.stats
    assert stats.frames == 20
    assert locs["frame"].min() >= 10 and locs["frame"].max() <= 29
    assert np.all(np.round(locs["y"]) < 32) and np.all(np.round(locs["x"]) < 48)
    inside = truth[(truth["frame"] >= 10) & (truth["frame"] <= 29) & (np.round(truth["y"]) < 32)
                   & (np.round(truth["x"]) < 48)]
    assert abs(len(locs) - len(inside)) <= 1
    # a range running past the end is clipped to the movie
    stats = localize(frames, PARAMS.replace(frame_range=(100, 10_000))).stats
    assert stats.frames == 20


@pytest.mark.parametrize(
    "change, message",
    [
        ({"box_size": 6}, "odd"),
        ({"roi": (0, 0, 65, 10)}, "ROI"),
        ({"roi": (10, 10, 5, 20)}, "ROI"),
        ({"frame_range": (500, 600)}, "frame range"),
        ({"fit_method": "spline"}, "fit method"),
        ({"sensitivity": 0}, "sensitivity"),
    ],
)
def test_bad_parameters_are_named(movie, change, message):
    frames, _ = movie
    with pytest.raises(ParameterError, match=message):
        localize(frames, PARAMS.replace(**change))


def test_photon_conversion_with_em_gain():
    p = SimulationParameters(n_frames=40, height=48, width=48, spots_per_frame=4, photons=1500, bg=10,
                             baseline=200, sensitivity=10.0, em_gain=100.0, seed=2)
    frames, truth = simulate_movie(p)
    lp = LocalizeParameters(min_net_gradient=2000, baseline=200, sensitivity=10.0, em_gain=100.0)
    locs = localize(frames, lp).locs
    acc, _ = accuracy(truth, locs)
    assert acc.jaccard > 0.97
    assert np.median(locs["photons"]) == pytest.approx(1500, rel=0.05)
    assert np.median(locs["bg"]) == pytest.approx(10, rel=0.1)


def test_overlapped_chunks_equal_one_at_a_time(movie, monkeypatch):
    """Chunks processed two at a time (the pipeline overlap) give the table and counts of one at a time."""
    import napari_localize.core.pipeline as pipeline

    frames, _ = movie
    res = localize(frames, PARAMS, chunk_frames=9)
    overlapped, s2 = res.locs, res.stats
    monkeypatch.setattr(pipeline, "PIPELINE_DEPTH", 1)
    res = localize(frames, PARAMS, chunk_frames=9)
    serial, s1 = res.locs, res.stats
    np.testing.assert_array_equal(overlapped, serial)
    assert (s2.frames, s2.identified, s2.localized, s2.not_converged) == \
        (s1.frames, s1.identified, s1.localized, s1.not_converged)


class _Recording:
    """A movie that records how many chunk reads are in flight at once and can fail at one frame."""

    def __init__(self, frames, fail_at=None):
        self.frames, self.fail_at = frames, fail_at
        self.shape, self.dtype = frames.shape, frames.dtype
        self.lock = threading.Lock()
        self.active = self.most = 0
        self.reads = []

    def __getitem__(self, key):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.reads.append(key.start)
        try:
            if self.fail_at is not None and key.start <= self.fail_at < key.stop:
                raise OSError(f"bad sector at frame {self.fail_at}")
            threading.Event().wait(0.05)  # a slow disk: the other chunk's reading must overlap it
            return self.frames[key]
        finally:
            with self.lock:
                self.active -= 1


def test_next_chunk_is_read_while_this_one_is_processed(movie):
    frames, _ = movie
    rec = _Recording(frames)
    starts = [c.start for c in iter_localize(rec, PARAMS, chunk_frames=20)]
    assert starts == list(range(0, 120, 20))  # in order
    assert rec.most == 2


def test_a_failing_chunk_stops_the_run_and_nothing_after_it_starts(movie):
    frames, _ = movie
    rec = _Recording(frames, fail_at=45)
    seen = []
    with pytest.raises(OSError, match="frame 45"):
        for chunk in iter_localize(rec, PARAMS, chunk_frames=20):
            seen.append(chunk.start)
    assert seen == [0, 20]
    assert max(rec.reads) <= 60  # at most the chunk after the failing one was already started
