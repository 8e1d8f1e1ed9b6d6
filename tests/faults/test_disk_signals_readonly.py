"""Real faults while writing: a file-size limit (RLIMIT_FSIZE, as ``ulimit -f``), SIGTERM/SIGINT/SIGHUP in the
middle of a run, a read-only output folder, and temporary files left by a killed run."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from faultkit import BASE_ARGS, REPO, assert_clean_failure, assert_unchanged, cli, simulate, snapshot, temp_files


def _earlier_result(folder, name="m.ome"):
    """An earlier result pair (its bytes are what must survive)."""
    from napari_localize.core.locs import locs_dtype
    from napari_localize.io.locs import save_locs

    locs = np.zeros(3, locs_dtype("mle"))
    locs["x"] = [1, 2, 3]
    save_locs(folder / f"{name}_locs.hdf5", locs, [{"Frames": 1, "Width": 48, "Height": 40}, {"earlier": True}])


@pytest.mark.parametrize("limit", [0, 4096])
def test_file_size_limit(movie_with_result, limit):
    """``ulimit -f``: the write fails with one line naming the limit; no segfault, no temp file, earlier kept."""
    folder = movie_with_result.parent
    before = snapshot(folder)

    def lower_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = cli(["localize", movie_with_result, *BASE_ARGS, "--min-net-gradient", "500"], preexec_fn=lower_limit)
    assert proc.returncode > 0, (proc.returncode, proc.stderr)  # > 0: not killed by a signal (segfault, SIGXFSZ)
    assert_clean_failure(proc, "file-size limit", "m.ome_locs")
    assert_unchanged(folder, before)


def test_file_size_limit_in_process(tmp_path):
    """The writer itself: a failed append leaves nothing, and closing after it does not crash."""
    code = f"""
import resource, sys, numpy as np
sys.path.insert(0, {str(REPO)!r})
from napari_localize.core.errors import OutputError
from napari_localize.core.locs import locs_dtype
from napari_localize.io.locs import LocsWriter
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
dt = locs_dtype("mle")
try:
    with LocsWriter({str(tmp_path / "a_locs.hdf5")!r}, dt) as w:
        for _ in range(100):
            w.append(np.zeros(10_000, dt))
        w.commit([{{}}])
except OutputError as exc:
    sys.stderr.write("caught: " + str(exc) + "\\n")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "caught:" in proc.stderr and "file-size limit" in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def long_movie(tmp_path_factory):
    """A movie that takes a few seconds to localize, so a signal lands mid-run."""
    return simulate(tmp_path_factory.mktemp("long") / "m.ome.tif", frames=3000, height=48, width=48, spots=6)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_mid_run(long_movie, tmp_path, sig):
    """SIGTERM (SLURM, timeout), SIGINT (Ctrl-C), SIGHUP (ssh closed) mid-run: exit 128+signal, one line, no
    temporary file, the earlier result byte-identical."""
    movie = tmp_path / long_movie.name
    shutil.copy(long_movie, movie)
    _earlier_result(tmp_path)
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "napari_localize.cli", "localize", str(movie), *BASE_ARGS,
                             "--min-net-gradient", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 240
    while not temp_files(tmp_path):  # the run has started writing
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)
    assert proc.poll() is None, "the run finished before the signal: make the movie longer"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert f"interrupted ({signal.Signals(sig).name})" in err
    assert_unchanged(tmp_path, before)
    assert sorted(snapshot(tmp_path)) == sorted(before)  # and nothing new


def test_read_only_output_folder(movie_with_result, tmp_path, read_only):
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    before = snapshot(tmp_path)
    proc = cli(["localize", movie_with_result, *BASE_ARGS, "--output-dir", out])
    assert_clean_failure(proc, "not writable", code=1)
    assert_unchanged(tmp_path, before)


def test_read_only_folder_keeps_earlier_result(movie_with_result, read_only):
    folder = movie_with_result.parent
    before = snapshot(folder)
    read_only(folder)
    proc = cli(["localize", movie_with_result, *BASE_ARGS])
    assert_clean_failure(proc, "m.ome_locs", "not writable")
    assert_unchanged(folder, before)


def test_stale_temp_files_of_a_killed_run_are_swept(movie_with_result):
    """Our temporary files from a dead process (SIGKILL) are removed by the next run; others' files stay."""
    from napari_localize.io.publish import _HOST, TMP_PREFIX

    folder = movie_with_result.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = folder / f"{TMP_PREFIX}{_HOST}-{dead.pid}-abcd1234.hdf5"
    stale.write_bytes(b"half a table")
    old = time.time() - 60
    os.utime(stale, (old, old))
    foreign = folder / ".tmp-someone-else.hdf5"
    foreign.write_bytes(b"not ours")
    os.utime(foreign, (old, old))
    proc = cli(["localize", movie_with_result, *BASE_ARGS])
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert foreign.read_bytes() == b"not ours"
