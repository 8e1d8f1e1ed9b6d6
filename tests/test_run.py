"""The one run (core/run.py): every sink and every caller give the same table, in 2D and 3D.

Real files, a real Dask LocalCluster on loopback; the 3D calibration is the simulator's own astigmatism
(its width curves fitted with the calibration polynomials), so z is checked against the simulator's truth.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from napari_localize import LocalizeParameters
from napari_localize.api import localize
from napari_localize.core.pipeline import CancelToken, LocalizeCancelled, LocalizeStats
from napari_localize.core.run import MemorySink, TeeSink, ZRun, run, run_dtype, run_steps
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.core.zfit import ZCalibration, ZFitOptions
from napari_localize.io.locs import LocsWriter, load_locs
from napari_localize.io.movies import ArrayMovie, open_movie
from napari_localize.io.movies.write import write_movie

BASELINE = 100.0
P = LocalizeParameters(box_size=9, min_net_gradient=800, baseline=BASELINE)


@pytest.fixture(scope="module")
def movie3d():
    q = SimulationParameters(n_frames=40, height=48, width=48, spots_per_frame=6, photons=3000, bg=20,
                             baseline=BASELINE, z_range=(-400.0, 400.0), seed=21)
    frames, truth = simulate_frames(q)
    z = np.linspace(-600, 600, 121)
    wx, wy = q.widths(z)
    cal = ZCalibration(np.polyfit(z, wx, 6), np.polyfit(z, wy, 6), 61, 20.0, magnification_factor=1.0)
    return frames, truth, cal


def test_memory_file_and_tee_sinks_give_one_table(movie3d, tmp_path):
    frames, truth, cal = movie3d
    z = ZRun(cal, ZFitOptions(method="mle", filter=2.0))
    mem = run(ArrayMovie(frames), P, MemorySink(run_dtype(P, z)), z, chunk_frames=7)
    h5 = tmp_path / "a_locs.hdf5"
    res = run(ArrayMovie(frames), P, LocsWriter(h5, run_dtype(P, z)), z, chunk_frames=13)
    tee_h5 = tmp_path / "b_locs.hdf5"
    tee = run(ArrayMovie(frames), P, TeeSink(MemorySink(run_dtype(P, z)), LocsWriter(tee_h5, run_dtype(P, z))), z)
    on_disk, info = load_locs(res.paths[0])
    assert len(mem.locs) > 0.8 * len(truth)
    np.testing.assert_array_equal(on_disk, mem.locs)  # the chunking does not change the result
    np.testing.assert_array_equal(load_locs(tee.paths[0])[0], mem.locs)
    np.testing.assert_array_equal(tee.locs, mem.locs)
    assert mem.paths is None and res.locs is None
    assert mem.info == res.info == tee.info and info[-1]["Z fit method"] == mem.info[-1]["Z fit method"]
    assert mem.stats.localized == len(mem.locs)
    # the API's 3D call is this run
    api_locs = localize(frames, P, calibration=cal, z_options=ZFitOptions(method="mle", filter=2.0)).locs
    np.testing.assert_array_equal(api_locs, mem.locs)
    # z against the simulator's truth: nearest true spot of the frame
    err = []
    for row in mem.locs:
        t = truth[truth["frame"] == row["frame"]]
        j = np.argmin(np.hypot(t["x"] - row["x"], t["y"] - row["y"]))
        if np.hypot(t["x"][j] - row["x"], t["y"][j] - row["y"]) < 0.5:
            err.append((row["z"] - t["z"][j]) / row["lpz"])
    err = np.asarray(err)
    assert len(err) > 0.7 * len(truth)
    assert np.sqrt(np.mean(err**2)) < 1.6


def test_cancelled_run_commits_nothing(movie3d, tmp_path):
    frames, _, cal = movie3d
    h5 = tmp_path / "c_locs.hdf5"
    cancel = CancelToken()
    steps = run_steps(ArrayMovie(frames), P, LocsWriter(h5, run_dtype(P)), None, cancel, chunk_frames=5)
    next(steps)
    next(steps)
    cancel.cancel()
    with pytest.raises(LocalizeCancelled):
        for _ in steps:
            pass
    assert not h5.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_stats_merge_adds_blocks():
    a = LocalizeStats(frames=3, identified=10, not_converged=1, not_sane=2, localized=7, device="cpu")
    a.seconds["fit"] = 1.5
    b = LocalizeStats(frames=4, identified=5, not_converged=0, not_sane=1, localized=4)
    b.seconds["fit"] = 0.5
    a.merge(b)
    assert (a.frames, a.identified, a.not_converged, a.not_sane, a.localized) == (7, 15, 1, 3, 11)
    assert a.seconds["fit"] == 2.0 and a.device == "cpu"


def test_dask_and_batch_do_3d_like_a_serial_run(movie3d, tmp_path):
    from napari_localize._napari._batch_widget import batch_steps
    from napari_localize.distributed import localize_files_distributed

    frames, _, cal = movie3d
    path = tmp_path / "m3d.ome.tif"
    write_movie(path, [frames], frames.shape, frames.dtype)
    options = ZFitOptions(method="mle", filter=2.0)
    with open_movie(path) as movie:
        serial_h5, _ = localize(movie, P, output=tmp_path / "serial_locs.hdf5", calibration=cal,
                                z_options=options).paths
    serial, serial_info = load_locs(serial_h5)
    assert "z" in serial.dtype.names and "z_gof" in serial.dtype.names
    results = localize_files_distributed([path], P, "local", workers=2, suffix="_dask", frames_per_task=9,
                                         calibration=cal, z_options=dataclasses.replace(options))
    (_, h5, stats, error), = results
    assert error is None
    locs, info = load_locs(h5)
    np.testing.assert_array_equal(locs, serial)  # blocks in frame order, whole-run z filter
    assert info[-1] == serial_info[-1]  # the 3D document
    assert stats.frames == len(frames) and stats.localized == len(serial)
    # the Batch widget's in-process batch with the session's calibration (Fit z on)
    events = list(batch_steps([str(path)], P, CancelToken(), suffix="_batch", z=(cal, options, None)))
    outcome, = events[-1].finished
    assert outcome.error is None and outcome.localizations == len(serial)
    with h5py.File(outcome.hdf5_path, "r") as f:
        np.testing.assert_array_equal(f["locs"][()], serial)


def test_2d_api_is_the_memory_run(movie3d):
    frames, _, _ = movie3d
    res = localize(frames, P)
    locs, info, stats = res.locs, res.info, res.stats
    mem = run(ArrayMovie(frames), P, MemorySink(run_dtype(P)))
    np.testing.assert_array_equal(locs, mem.locs)
    assert len(info) == 3 and stats.localized == len(locs)
