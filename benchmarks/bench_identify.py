"""Identification speed: the current kernel against the pre-issue-18 one (``identify_v1.py``), in one process.

Both run on the same simulated movie, interleaved (old, new, old, new, ...), and the best of N repeats is kept,
so load from other processes on a shared machine hurts both alike. Prints milliseconds per megapixel (wall
clock with every thread, and CPU time with one thread), candidates found, and whether both found the same
spots with the same net gradients (they must: the rule is unchanged).

    python benchmarks/bench_identify.py [--frames 400] [--size 256] [--spots 55] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import identify_v1  # noqa: E402

from napari_localize.core import identify as identify_new  # noqa: E402
from napari_localize.core.simulate import SimulationParameters, simulate_movie  # noqa: E402


def best_of(fn, repeats, clock):
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spots", type=float, default=55)
    ap.add_argument("--box", type=int, default=7)
    ap.add_argument("--min-net-gradient", type=float, default=1200)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    p = SimulationParameters(n_frames=args.frames, height=args.size, width=args.size,
                             spots_per_frame=args.spots, poisson_count=True, seed=7)
    frames, _ = simulate_movie(p)
    mpx = frames.size / 1e6
    box, ng = args.box, args.min_net_gradient
    kernels = {"v1 (before)": identify_v1.identify, "current": identify_new.identify}
    results = {name: fn(frames, box, ng) for name, fn in kernels.items()}  # compiles, and the answer
    a, b = results.values()
    same = len(a) == len(b) and all(np.array_equal(a[k], b[k]) for k in a.dtype.names)
    threads = numba.config.NUMBA_NUM_THREADS
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({threads} threads), numba {numba.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"movie: {args.frames} frames of {args.size}x{args.size} uint16 ({mpx:.1f} Mpx), {args.spots:g} spots/frame;"
          f" box {box}, min net gradient {ng:g}: {len(b)} spots; same spots and net gradients: {same}")

    timings = {name: [float("inf"), float("inf")] for name in kernels}
    for _ in range(args.repeats):  # interleaved
        for name, fn in kernels.items():
            timings[name][0] = min(timings[name][0], best_of(lambda fn=fn: fn(frames, box, ng), 1, time.perf_counter))
    numba.set_num_threads(1)
    single = {"v1 (before)": lambda: identify_v1.identify(frames, box, ng)}
    saved = identify_new.identification_threads
    identify_new.identification_threads = lambda: 1
    try:
        single["current"] = lambda: identify_new.identify(frames, box, ng)
        for _ in range(args.repeats):
            for name, fn in single.items():
                timings[name][1] = min(timings[name][1], best_of(fn, 1, time.process_time))
    finally:
        identify_new.identification_threads = saved
        numba.set_num_threads(threads)
    print(f"{'kernel':14} {'ms/Mpx wall, ' + str(threads) + ' threads':>26} {'ms/Mpx CPU, 1 thread':>22}")
    for name, (wall, cpu) in timings.items():
        print(f"{name:14} {wall / mpx * 1e3:26.2f} {cpu / mpx * 1e3:22.2f}")
    old, new = timings["v1 (before)"], timings["current"]
    print(f"speed-up: {old[0] / new[0]:.1f}x wall ({threads} threads), {old[1] / new[1]:.1f}x CPU (1 thread)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
