"""More seeded byte-mutation fuzzing than CI runs: every reader, every real sample file in tests/data.

    python benchmarks/bench_fuzz.py [--mutants N] [--seed S] [--timeout T] [--keep DIR]

Prints the counts table (case class, tried, read intact, clean errors, tracebacks, hangs, crashes, data lost)
and a few examples of any bad outcome; exits 1 if any traceback, hang, crash or silent frame loss occurred.
The mutants are seeded (same seed, same mutants), so a bad one reproduces.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "fuzz"))
sys.path.insert(0, REPO)

from harness import HEADER, Worker, fuzz_file, fuzz_raw  # noqa: E402

DATA = os.path.join(REPO, "tests", "data")


def cases(work):
    sys.path.insert(0, os.path.join(REPO, "tests", "fuzz"))
    from test_fuzz_readers import ome_seed

    yield "ome-tiff (tifffile)", ome_seed(work), None
    yield "nd2 camera time-lapse", os.path.join(DATA, "nd2", "example-timelapse.nd2"), None
    cluster = os.path.join(DATA, "nd2", "cluster.nd2")
    if os.path.exists(cluster):
        yield "nd2 confocal T x Z x C", cluster, {"channel": 0}
    yield "ims (Imaris 5.5)", os.path.join(DATA, "ims", "Minimal_IMS_File.ims"), None
    # NDTiff is not fuzzed here: tifffile follows NDTiff.index to the stack file named there, so a mutated copy
    # beside it would not be read (the fault suite covers a cut index)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=int, default=1000, help="mutants per case (default 1000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per mutant before it is a hang")
    ap.add_argument("--keep", help="keep the bad mutants in this folder")
    args = ap.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="napari-localize-fuzz-")
    os.makedirs(work, exist_ok=True)
    rows, bad = [], 0
    worker = Worker()
    t0 = time.perf_counter()
    try:
        for case, seed_path, options in cases(work):
            sub = os.path.join(work, case.split()[0].replace("/", "_") + f"-{len(rows)}")
            os.makedirs(sub, exist_ok=True)
            counts = fuzz_file(case, seed_path, sub, args.mutants, args.seed, args.timeout, options, worker)
            rows.append(counts)
        shutil.copy(os.path.join(DATA, "testdata.raw"), work)
        shutil.copy(os.path.join(DATA, "testdata.yaml"), work)
        sub = os.path.join(work, "raw")
        os.makedirs(sub, exist_ok=True)
        rows.append(fuzz_raw("raw + yaml sidecar", os.path.join(work, "testdata.raw"), sub, args.mutants,
                             args.seed, args.timeout, worker=worker))
    finally:
        worker.close()
    print(HEADER)
    for counts in rows:
        print(counts.row())
    for counts in rows:
        for outcome in ("traceback", "hang", "crash", "lost"):
            for example in counts.examples.get(outcome, [])[:3]:
                bad += 1
                print(f"  {counts.case}: {outcome}: {example}")
    print(f"\n{sum(c.tried for c in rows)} mutants in {time.perf_counter() - t0:.0f} s (seed {args.seed})"
          + (f"; mutants kept in {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
