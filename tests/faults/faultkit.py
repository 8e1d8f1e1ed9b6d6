"""Helpers of the fault suite: real subprocess runs of the CLI, real faults, and the checks every case makes.

Every case asserts the same four things: the message is clear (one line, ``napari-localize: error:`` or
``interrupted``, naming the file or value), there is no traceback, no temporary file is left, and an earlier
result is byte-identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
BASE_ARGS = ["--baseline", "100", "--min-net-gradient", "1500"]


def cli(args, cwd=None, timeout=300, preexec_fn=None, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m napari_localize.cli ARGS`` in a subprocess (this checkout first on the path)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e.setdefault("NUMBA_NUM_THREADS", "2")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "napari_localize.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn, env=e)


def snapshot(folder) -> dict:
    """Every file in ``folder`` (recursively) and its bytes."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder) -> list[str]:
    """Hidden temporary files of ours (or of the old naming) under ``folder``."""
    return [str(p) for p in Path(folder).rglob(".*") if p.is_file() and
            (p.name.startswith(".napari-localize-") or p.name.startswith(".tmp-"))]


def assert_clean_failure(proc, *needles, code=None):
    """Non-zero exit, no traceback, one ``napari-localize:`` line that contains each of ``needles``."""
    err = proc.stderr
    assert proc.returncode != 0, (proc.stdout, err)
    if code is not None:
        assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("napari-localize:")]
    assert lines, err
    for needle in needles:
        assert any(needle in ln for ln in lines), (needle, err)


def assert_unchanged(folder, before: dict):
    """No temporary file, and every earlier file byte-identical (new files allowed only if listed)."""
    assert temp_files(folder) == []
    after = snapshot(folder)
    for name, data in before.items():
        assert after.get(name) == data, f"{name} changed or vanished"


def simulate(path, frames=40, height=40, width=48, spots=4, seed=3, **extra):
    """A small simulated movie written by our own simulator (in process, fast)."""
    from napari_localize.core.simulate import SimulationParameters, simulate_frames
    from napari_localize.io.movies.write import write_movie

    p = SimulationParameters(n_frames=frames, height=height, width=width, spots_per_frame=spots, seed=seed,
                             baseline=100, sensitivity=0.5, **extra)
    data, _ = simulate_frames(p, 0, frames)
    write_movie(str(path), [data], data.shape, data.dtype, pixelsize_nm=130)
    return Path(path)


def two_channel_ome(path, frames=6, height=24, width=32):
    """An OME-TIFF with channels "A" and "B" (T x C x Y x X)."""
    rng = np.random.default_rng(0)
    data = rng.integers(100, 200, (frames, 2, height, width)).astype(np.uint16)
    tifffile.imwrite(path, data, metadata={"axes": "TCYX", "Channel": {"Name": ["A", "B"]}}, ome=True)
    return Path(path)
