"""Name collisions (refused up front, or distinct default names) and concurrent writers/readers."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from faultkit import BASE_ARGS, REPO, assert_clean_failure, assert_unchanged, cli, snapshot, temp_files, two_channel_ome


@pytest.mark.parametrize("names", [("m.tif", "m.tiff"), ("m.raw", "m.tif")])
def test_folder_batch_refuses_colliding_outputs_up_front(small_movie, tmp_path, names):
    """``m.tif`` + ``m.tiff`` (or ``m.raw`` + ``m.tif``) would both write ``m_locs.hdf5``: refused before any
    run, naming both, and nothing is written."""
    from napari_localize.io.movies import open_movie, write_raw_info

    for name in names:
        if name.endswith(".raw"):
            with open_movie(small_movie) as m:
                np.asarray(m[:]).astype("<u2").tofile(tmp_path / name)
                write_raw_info(tmp_path / name, "<", "uint16", *m.shape)
        else:
            shutil.copy(small_movie, tmp_path / name)
    before = snapshot(tmp_path)
    proc = cli(["localize", tmp_path, *BASE_ARGS])
    assert_clean_failure(proc, names[0], names[1], "m_locs.hdf5", "--suffix", code=2)
    assert_unchanged(tmp_path, before)
    assert sorted(snapshot(tmp_path)) == sorted(before)


def test_ndtiff_folders_sharing_a_name_collide_in_one_output_dir(tmp_path):
    src = REPO / "tests" / "data" / "ndtiff" / "ndtiff3.2_11bit_1"
    for name in ("run.1", "run.2"):
        shutil.copytree(src, tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    proc = cli(["localize", tmp_path / "run.1", tmp_path / "run.2", "--output-dir", out, "--box-size", "5"])
    assert_clean_failure(proc, "would all write", code=2)
    assert list(out.iterdir()) == []


def test_channels_get_distinct_default_names(tmp_path):
    """``--channel 0`` then ``--channel 1`` of a two-channel movie: two results, neither overwritten."""
    movie = two_channel_ome(tmp_path / "two.ome.tif")
    for ch in (0, 1):
        proc = cli(["localize", movie, "--channel", ch, "--min-net-gradient", "1e9", "--box-size", "5"])
        assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "two.ome_ch0_locs.hdf5" in names and "two.ome_ch1_locs.hdf5" in names
    from napari_localize.io.locs import load_locs

    assert load_locs(tmp_path / "two.ome_ch1_locs.hdf5")[1][0]["Channel"] == "B"
    proc = cli(["localize", movie, "--min-net-gradient", "1e9"])  # no choice: refused, listing the channels
    assert_clean_failure(proc, "two.ome.tif", "A", "B")


def _save_pair(args):
    path, k = args
    sys.path.insert(0, str(REPO))
    from napari_localize.core.locs import locs_dtype
    from napari_localize.io.locs import save_locs

    locs = np.zeros(k + 1, locs_dtype("lq"))
    locs["frame"] = k
    save_locs(path, locs, [{"Frames": 1, "Width": 8, "Height": 8}, {"writer": k, "rows": k + 1}])
    return k


def test_concurrent_save_locs_never_mix_a_pair(tmp_path):
    """300 saves from 4 processes to one path: after each race the pair on disk is from one writer."""
    from napari_localize.io.locs import load_locs

    path = str(tmp_path / "race_locs.hdf5")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(10):
            list(pool.imap_unordered(_save_pair, [(path, round_ * 30 + k) for k in range(30)]))
            locs, info = load_locs(path)
            assert len(locs) == info[1]["rows"] and np.all(locs["frame"] == info[1]["writer"])
    assert temp_files(tmp_path) == []


def test_second_rename_failing_rolls_the_pair_back(tmp_path, monkeypatch):
    """If publishing the second file of the pair fails, the first is rolled back: the old pair stays whole."""
    from napari_localize.core.errors import OutputError
    from napari_localize.core.locs import locs_dtype
    from napari_localize.io import publish
    from napari_localize.io.locs import save_locs

    path = tmp_path / "p_locs.hdf5"
    save_locs(path, np.zeros(2, locs_dtype("lq")), [{"old": True}])
    before = snapshot(tmp_path)
    real = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2 and not os.path.basename(str(src)).startswith(publish.BACKUP_PREFIX):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(publish.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="no space left.*unchanged"):
        save_locs(path, np.zeros(5, locs_dtype("lq")), [{"old": False}])
    monkeypatch.setattr(publish.os, "replace", real)
    assert snapshot(tmp_path) == before


def test_preview_during_a_run_with_parallel_kernels(tmp_path):
    """The preview (identify + fit of one frame) in one thread while a run localizes in another, as in napari:
    with numba's workqueue layer this aborts the process; the threadsafe layer must not."""
    code = f"""
import sys, threading
sys.path.insert(0, {str(REPO)!r})
import numba, numpy as np
from napari_localize import LocalizeParameters, localize
from napari_localize.core.pipeline import localize_frames
from napari_localize.core.simulate import SimulationParameters, simulate_frames
frames, _ = simulate_frames(SimulationParameters(n_frames=400, height=64, width=64, spots_per_frame=8), 0, 400)
p = LocalizeParameters(baseline=100, min_net_gradient=1500)
errors = []
def run():
    try:
        localize(frames, p, chunk_frames=64)  # 512 boxes a chunk: the fit's thread pool (>= 256 boxes)
    except BaseException as exc:
        errors.append(exc)
threads = [threading.Thread(target=run) for _ in range(2)]
for t in threads: t.start()
for _ in range(60):  # the live preview, frame after frame, while the runs go on
    localize_frames(frames[_ % 400], p)
for t in threads: t.join()
try:
    layer = numba.threading_layer()
except ValueError:  # no parallel kernel ran: the fit and identification run serial kernels on Python threads
    layer = "none"
print("layer", layer, "errors", len(errors))
"""
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "errors 0" in proc.stdout
    # a parallel kernel that did run (crowded fields) ran on a threadsafe layer
    assert proc.stdout.split()[1] in ("tbb", "omp", "none"), proc.stdout


def test_reading_while_napari_displays(small_movie):
    """The reader's own lock: display, preview and a worker read one Movie from three threads."""
    from napari_localize.io.movies import open_movie

    with open_movie(small_movie) as m:
        ref = np.asarray(m)
        bad = []

        def reader(seed):
            rng = np.random.default_rng(seed)
            for _ in range(200):
                a = int(rng.integers(0, len(m)))
                if not np.array_equal(m[a], ref[a]):
                    bad.append(a)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert bad == []
