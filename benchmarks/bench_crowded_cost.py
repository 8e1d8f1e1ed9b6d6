"""What the crowded-fields default costs over ``--max-emitters 1``, in process and warm.

For each density (spots per 128x128 frame; 2000 photons, bg 20, sigma 1 px, spots may overlap) one movie is
simulated and ``localize_frames`` (identification + fits) runs on it in chunks of 500 frames, alternating the
default (up to 5 emitters per box) and ``max_emitters=1``, best of ``--repeats`` runs each. Printed: process CPU
seconds (all threads; this machine is shared, so CPU time is steadier than wall time), the overhead, and the work
of the crowded step: boxes, boxes refined (the screening's verdict), engine fits and extra emitters fitted,
and its CPU split (screening, refinement, of which engine fits).

``--min-separation 8 --size 256 --densities 55`` is the non-overlapping case (the issue-18 movie: no two spots
within 8 px): there the default must give the same rows as ``max_emitters=1``; the rows that differ are
printed.

    python benchmarks/bench_crowded_cost.py [--densities 5 10 20] [--frames 1000] [--method mle]
                                            [--min-separation 8 --size 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from napari_localize.cli import suggested_min_net_gradient
from napari_localize.core import crowded, pipeline
from napari_localize.core.parameters import LocalizeParameters
from napari_localize.core.simulate import SimulationParameters, simulate_movie


def run(frames, p, chunk=500):
    totals = {}
    stats = pipeline.LocalizeStats()
    parts = []
    t = time.process_time()
    for a in range(0, len(frames), chunk):
        parts.append(pipeline.localize_frames(frames[a:a + chunk], p, a, stats))
        if p.max_emitters > 1:
            for k, v in crowded.last_counts.items():
                totals[k] = totals.get(k, 0) + v
    return time.process_time() - t, totals, np.concatenate(parts)


def differing_rows(locs1, locs5):
    """Rows of the single fit that the default does not reproduce exactly (Picasso's columns)."""
    names = [n for n in locs1.dtype.names if n in locs5.dtype.names]
    a = np.array([tuple(r) for r in locs1[names]], dtype=[(n, locs1.dtype[n]) for n in names])
    b = np.array([tuple(r) for r in locs5[names]], dtype=[(n, locs5.dtype[n]) for n in names])
    return len(np.setdiff1d(a, b)), len(np.setdiff1d(b, a))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", type=float, nargs="+", default=[5, 10, 20])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--method", default="mle", choices=["mle", "lq"])
    ap.add_argument("--photons", type=float, default=2000.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-separation", type=float, default=0.0, help="px; 0: spots may overlap")
    ap.add_argument("--size", type=int, default=128, help="frame height and width (px)")
    args = ap.parse_args(argv)
    print(f"{platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for density in args.densities:
        sp = SimulationParameters(n_frames=args.frames, height=args.size, width=args.size, spots_per_frame=density,
                                  photons=args.photons, bg=20.0, sigma=1.0, baseline=100.0,
                                  min_separation=args.min_separation, seed=3)
        frames, _ = simulate_movie(sp)
        ng = round(suggested_min_net_gradient(sp))
        params = {me: LocalizeParameters(baseline=100.0, min_net_gradient=ng, fit_method=args.method, max_emitters=me)
                  for me in (1, 5)}
        run(frames[:50], params[5])
        run(frames[:50], params[1])  # compiled / loaded from the cache
        best = {1: np.inf, 5: np.inf}
        work = {}
        locs = {}
        for _ in range(args.repeats):
            for me in (5, 1):
                cpu, totals, locs[me] = run(frames, params[me])
                best[me] = min(best[me], cpu)
                work = totals or work
        only1, only5 = differing_rows(locs[1], locs[5])
        over = 100.0 * (best[5] / best[1] - 1.0)
        print(f"{density:g} spots per {args.size}x{args.size} frame (min separation {args.min_separation:g} px), "
              f"{args.frames} frames, {args.method}: max_emitters 1 {best[1]:.3f} s, "
              f"5 {best[5]:.3f} s CPU -> {over:+.0f} %; boxes {work.get('boxes', 0)}, refined "
              f"{work.get('active', 0)} ({100.0 * work.get('active', 0) / max(work.get('boxes', 1), 1):.1f} %), "
              f"fits {work.get('fits', 0)} (+{work.get('extra_emitter_fits', 0)} extra emitters), CPU screening "
              f"{work.get('cpu_screen', 0):.3f} s, refinement {work.get('cpu_refine', 0):.3f} s (engine fits "
              f"{work.get('cpu_fits', 0):.3f} s); rows {len(locs[1])} / {len(locs[5])}, of max_emitters 1 not in "
              f"the default {only1}, of the default not in max_emitters 1 {only5}")


if __name__ == "__main__":
    main()
