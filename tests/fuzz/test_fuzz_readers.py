"""Seeded byte-mutation fuzzing of every reader: an OME-TIFF, an .nd2, an .ims and a .raw + .yaml.

Each mutant is opened and read in full in a worker subprocess with a watchdog (tests/fuzz/harness.py). Required:
zero tracebacks of unexpected types, zero hangs, zero crashes, zero silent frame-count changes. The mutants are
seeded, so a failure reproduces; ``benchmarks/bench_fuzz.py`` runs many more and prints the counts table.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import tifffile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import HEADER, fuzz_file, fuzz_raw  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
#: mutants per format in CI (the benchmark runs more); NAPARI_LOCALIZE_FUZZ_MUTANTS overrides
MUTANTS = int(os.environ.get("NAPARI_LOCALIZE_FUZZ_MUTANTS", "250"))
TIMEOUT = 20.0  # seconds per mutant before it counts as a hang (a loaded CI machine is slow)


def ome_seed(folder) -> str:
    """A small OME-TIFF as Micro-Manager-free writers make it (20 frames of 32 x 24 uint16)."""
    frames = np.random.default_rng(7).integers(90, 4000, (20, 32, 24)).astype(np.uint16)
    path = os.path.join(folder, "seed.ome.tif")
    tifffile.imwrite(path, frames, metadata={"axes": "TYX", "PhysicalSizeX": 0.13}, ome=True)
    return path


def _check(counts):
    print("\n" + HEADER + "\n" + counts.row())
    bad = {k: counts.examples.get(k, [])[:5] for k in ("traceback", "hang", "crash", "lost")
           if counts.outcomes[k]}
    assert not bad, f"{counts.case}: {bad}"
    assert counts.tried == MUTANTS
    assert counts.outcomes["clean"] > 0 and counts.outcomes["read"] > 0  # the mutations reach both ends


@pytest.mark.parametrize("case", ["ome-tiff", "nd2", "ims"])
def test_fuzz_binary_readers(case, tmp_path):
    if case == "ome-tiff":
        seed = ome_seed(str(tmp_path))
    elif case == "nd2":
        seed = os.path.join(DATA, "nd2", "example-timelapse.nd2")
    else:
        seed = os.path.join(DATA, "ims", "Minimal_IMS_File.ims")
    work = tmp_path / "mutants"
    work.mkdir()
    _check(fuzz_file(case, seed, str(work), MUTANTS, seed=2026, timeout=TIMEOUT))


def test_fuzz_raw_and_sidecar(tmp_path):
    for name in ("testdata.raw", "testdata.yaml"):
        shutil.copy(os.path.join(DATA, name), tmp_path / name)
    work = tmp_path / "mutants"
    work.mkdir()
    _check(fuzz_raw("raw+yaml", str(tmp_path / "testdata.raw"), str(work), MUTANTS, seed=2026, timeout=TIMEOUT))
