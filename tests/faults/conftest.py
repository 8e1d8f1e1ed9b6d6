"""Fixtures of the fault suite (helpers in faultkit.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faultkit import BASE_ARGS, cli, simulate  # noqa: E402


@pytest.fixture(scope="session")
def small_movie(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("movie") / "m.ome.tif")


@pytest.fixture
def movie_with_result(small_movie, tmp_path):
    """A copy of the small movie in a fresh folder, with an earlier result beside it."""
    movie = tmp_path / small_movie.name
    shutil.copy(small_movie, movie)
    proc = cli(["localize", movie, *BASE_ARGS])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.ome_locs.hdf5").exists()
    return movie


@pytest.fixture
def read_only(tmp_path):
    """A function making a folder unwritable for this process (chmod, or ``chattr +i`` for root)."""
    done = []

    def make(folder):
        folder = Path(folder)
        if os.geteuid() != 0:
            folder.chmod(0o555)
        else:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
                pytest.skip("running as root without a working chattr: no way to make a folder read-only here")
        done.append(folder)
        return folder

    yield make
    for folder in done:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)])
        else:
            folder.chmod(0o755)


