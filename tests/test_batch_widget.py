"""The Batch dock widget in a real napari viewer (under ``xvfb-run -a``): a folder of movies, one broken.

Expected tables come from :func:`napari_localize.api.localize_file` run on the same movies and from the
simulator's ground truth; files are read back with h5py.
"""

import os

import h5py
import numpy as np
import pytest
from conftest import run_and_wait

from napari_localize import LocalizeParameters
from napari_localize.api import localize_file
from napari_localize.cli import suggested_min_net_gradient
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.io.movies.write import write_movie

pytestmark = pytest.mark.gui

SIMS = [SimulationParameters(n_frames=20, height=48, width=48, spots_per_frame=4, photons=3000, bg=10,
                             baseline=100, min_separation=10, margin=6, seed=seed) for seed in (1, 2)]
MIN_NG = suggested_min_net_gradient(SIMS[0])
SESSION = {"baseline": 100.0, "sensitivity": 1.0, "em_gain": 1.0, "min_net_gradient": MIN_NG, "fit_method": "lq",
           "roi": (4, 4, 40, 40), "frame_range": (0, 9)}


@pytest.fixture
def folder(tmp_path):
    truths = []
    for i, sim in enumerate(SIMS):
        frames, truth = simulate_frames(sim)
        write_movie(os.fspath(tmp_path / f"movie{i}.ome.tif"), [frames], frames.shape, frames.dtype)
        truths.append(truth)
    broken = tmp_path / "movie2.ome.tif"
    broken.write_bytes((tmp_path / "movie0.ome.tif").read_bytes()[:20000])  # cut inside its frames
    return tmp_path, truths


def _table(path):
    with h5py.File(path) as f:
        return f["locs"][...]


def _batch(viewer, folder):
    from napari_localize._napari._batch_widget import BatchWidget
    from napari_localize._napari._state import session_for

    session_for(viewer).update(**SESSION)
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Batch")
    widget.folder.value = folder
    return widget


def test_folder_batch_writes_each_movie_and_reports_the_broken_one(make_napari_viewer, folder, qtbot):
    tmp_path, truths = folder
    viewer = make_napari_viewer()
    w = _batch(viewer, tmp_path)
    assert w.found.value.startswith("3 movies")
    run_and_wait(qtbot, w.run)
    assert w.status.value == "done: 2 localized, 1 failed, 0 skipped"
    by_name = {os.path.basename(o.path): o for o in w.outcomes}
    assert "movie2.ome.tif" in by_name["movie2.ome.tif"].error
    assert not (tmp_path / "movie2.ome_locs.hdf5").exists()
    # whole movies (ROI and frame range of the session dropped), same as the API with those parameters
    p = LocalizeParameters(**{k: v for k, v in SESSION.items() if k not in ("roi", "frame_range")})
    for i, truth in enumerate(truths):
        ref_h5 = localize_file(tmp_path / f"movie{i}.ome.tif", p, suffix="_ref").hdf5_path
        got = _table(tmp_path / f"movie{i}.ome_locs.hdf5")
        np.testing.assert_array_equal(got, _table(ref_h5))
        assert len(got) == len(truth)  # every simulated spot of every frame
        assert by_name[f"movie{i}.ome.tif"].localizations == len(truth)
    frames_seen = [(e.index, e.frames_done) for e in w.events if e.frames_total]
    assert (0, 20) in frames_seen and (1, 20) in frames_seen
    assert "FAILED" in w.results.value and "movie1.ome.tif: " in w.results.value

    # a second run skips what is already there
    before = _table(tmp_path / "movie0.ome_locs.hdf5")
    w.skip_existing.value = True
    run_and_wait(qtbot, w.run)
    assert w.status.value == "done: 0 localized, 1 failed, 2 skipped"
    np.testing.assert_array_equal(_table(tmp_path / "movie0.ome_locs.hdf5"), before)


def test_cancelled_batch_writes_nothing_more(make_napari_viewer, folder, qtbot, lockstep_workers):
    tmp_path, _ = folder
    viewer = make_napari_viewer()
    w = _batch(viewer, tmp_path)
    w.whole_movies.value = False
    original = w._on_event
    pressed = []

    def cancel_when_first_movie_starts(event):
        original(event)
        w.cancel()
        pressed.append(event.index)

    w._on_event = cancel_when_first_movie_starts
    run_and_wait(qtbot, w.run)
    assert pressed[0] == 0  # pressed while the first movie was running
    assert w.status.value.startswith("cancelled")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["movie0.ome.tif", "movie1.ome.tif", "movie2.ome.tif"]


def test_batch_on_a_local_dask_cluster_in_a_thread_worker(make_napari_viewer, qtbot, folder):
    tmp_path, truths = folder
    viewer = make_napari_viewer()
    w = _batch(viewer, tmp_path)
    w.scheduler.value = "local"
    w.suffix.value = "_dask"
    worker = w.run()
    assert worker is not None and w.run_button.text == "Cancel"
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.status.value == "done: 2 localized, 1 failed, 0 skipped", w.status.value
    p = LocalizeParameters(**{k: v for k, v in SESSION.items() if k not in ("roi", "frame_range")})
    for i in range(2):
        ref_h5 = localize_file(tmp_path / f"movie{i}.ome.tif", p, suffix="_ref").hdf5_path
        np.testing.assert_array_equal(_table(tmp_path / f"movie{i}.ome_dask_locs.hdf5"), _table(ref_h5))


def test_folder_without_movies_does_not_start(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    w = _batch(viewer, tmp_path)
    assert w.found.value == "no movie files in this folder"
    assert run_and_wait(qtbot, w.run) is None
    assert w.status.value.startswith("not started")
