"""Localizations streamed to disk chunk by chunk: same table as in memory, atomic, nothing left on failure."""

import h5py
import numpy as np
import pytest
import tifffile

from napari_localize import CancelToken, LocalizeCancelled, LocalizeParameters
from napari_localize.api import localize, localize_file
from napari_localize.core.locs import locs_dtype
from napari_localize.core.simulate import SimulationParameters, simulate_movie
from napari_localize.io.locs import LocsFileError, LocsWriter, load_locs, save_locs
from napari_localize.io.movies import ArrayMovie


@pytest.fixture(scope="module")
def movie():
    frames, truth = simulate_movie(SimulationParameters(n_frames=60, height=48, width=48, spots_per_frame=6,
                                                        photons=2000, bg=20, seed=11))
    return frames, truth


def test_streamed_file_equals_in_memory_result(tmp_path, movie):
    frames, truth = movie
    p = LocalizeParameters(min_net_gradient=1000)
    in_memory = localize(frames, p).locs
    assert len(in_memory) > 0.9 * len(truth)  # the run finds the simulated spots
    chunks = []
    res = localize(frames, p, output=tmp_path / "m_locs.hdf5", chunk_frames=7,
                   progress=lambda done, total: chunks.append(done))
    (h5, _), stats = res.paths, res.stats
    assert len(chunks) == 9  # 60 frames in chunks of 7: the table was appended 9 times
    with h5py.File(h5) as f:
        ds = f["locs"]
        assert ds.chunks is not None and ds.maxshape == (None,)  # grown on disk, not built in memory
        streamed = ds[...]
    np.testing.assert_array_equal(streamed, in_memory)
    assert stats.localized == len(in_memory)
    back, back_info = load_locs(h5)
    assert back_info[0]["Frames"] == 60 and back_info[2]["Localizations"] == len(in_memory)
    assert set(stats.seconds) == {"read", "identify", "fit", "write"}


def test_cancelled_stream_keeps_earlier_result(tmp_path, movie):
    frames, _ = movie
    p = LocalizeParameters(min_net_gradient=1000)
    target = tmp_path / "m_locs.hdf5"
    earlier = save_locs(target, np.zeros(3, locs_dtype("mle")), [{"Frames": 1}])
    before = [open(path, "rb").read() for path in earlier]
    cancel = CancelToken()

    def progress(done, total):
        if done >= 14:
            cancel.cancel()

    with pytest.raises(LocalizeCancelled):
        localize(frames, p, output=target, progress=progress, cancel=cancel, chunk_frames=7)
    assert [open(path, "rb").read() for path in earlier] == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m_locs.hdf5", "m_locs.yaml"]


def test_failing_read_mid_movie_leaves_no_partial_file(tmp_path, movie):
    frames, _ = movie
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, frames)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the last third of the frames is missing
    with pytest.raises((ValueError, OSError)):
        localize_file(path, LocalizeParameters(min_net_gradient=1000))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.tif"]


def test_writer_refuses_rows_of_another_layout(tmp_path):
    with LocsWriter(tmp_path / "a_locs.hdf5", locs_dtype("mle")) as writer, \
            pytest.raises(LocsFileError, match="dtype"):
        writer.append(np.zeros(2, locs_dtype("lq")))
    assert list(tmp_path.iterdir()) == []  # never committed: nothing published, temporary file removed


def test_many_small_appends_read_back_in_order(tmp_path, movie):
    """A table appended in many pieces reads back in order, whatever the HDF5 chunking."""
    frames, _ = movie
    p = LocalizeParameters(min_net_gradient=1000)
    whole = localize(ArrayMovie(frames), p).locs
    LocsWriter.CHUNK_ROWS, saved = 5, LocsWriter.CHUNK_ROWS  # many HDF5 chunks, boundaries inside appends
    try:
        h5, _ = localize(frames, p, output=tmp_path / "m_locs.hdf5", chunk_frames=3).paths
    finally:
        LocsWriter.CHUNK_ROWS = saved
    back, _ = load_locs(h5)
    np.testing.assert_array_equal(back, whole)
