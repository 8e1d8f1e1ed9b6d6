"""Side-by-side benchmark: napari-localize and picassosr on the same simulated movie.

Runs both command-line tools as separate processes on one movie (default: 1000 frames of 128x128 px, 20 spots per
frame, 2000 photons, bg 20 photons/px), with the same box, threshold and photon conversion, and prints detection
(Jaccard), precision (RMSE, RMSE/CRLB), wall time and peak memory (max RSS) for each fit method, with the ratios.

napari-localize runs twice: "cold" with an empty numba cache (first run after installing) and "warm" (every later
run). Picasso compiles its kernels in every run.

    python benchmarks/bench_localize.py [--frames 1000] [--methods lq mle] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from napari_localize.core.evaluate import accuracy
from napari_localize.core.psf import crlb
from napari_localize.io.locs import load_locs

PICASSO_METHOD = {"lq": "lq", "mle": "mle", "avg": "avg"}


def run(cmd, env=None):
    """Run a command; return (wall seconds, peak RSS in MiB of the process tree's largest member)."""
    return run_with_output(cmd, env)[:2]


def run_with_output(cmd, env=None):
    """Like :func:`run`, also returning the command's output (stdout and stderr)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out = proc.stdout.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def mean_crlb_x(truth, box=7):
    r = box // 2
    rng = np.random.default_rng(0)
    pick = rng.choice(len(truth), min(300, len(truth)), replace=False)
    var = [crlb(float(t["photons"]), float(t["bg"]), float(t["sx"]), float(t["sy"]), box,
                r + t["x"] - round(float(t["x"])), r + t["y"] - round(float(t["y"])))[0] for t in truth[pick]]
    return float(np.sqrt(np.mean(var)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spots", type=float, default=20)
    ap.add_argument("--photons", type=float, default=2000)
    ap.add_argument("--bg", type=float, default=20)
    ap.add_argument("--methods", nargs="+", default=["lq", "mle"])
    ap.add_argument("--min-net-gradient", type=int, default=1200)
    ap.add_argument("--photon-spread", type=float, default=0.0, help="relative sd of photons per spot")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="bench-localize-")
    os.makedirs(work, exist_ok=True)
    movie = os.path.join(work, "bench.ome.tif")
    py = sys.executable
    baseline, ng = 100, args.min_net_gradient
    subprocess.run([py, "-m", "napari_localize.cli", "simulate", movie, "--frames", str(args.frames), "--height",
                    str(args.size), "--width", str(args.size), "--spots-per-frame", str(args.spots), "--photons",
                    str(args.photons), "--photon-spread", str(args.photon_spread), "--bg", str(args.bg),
                    "--baseline", str(baseline), "--seed", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    truth, _ = load_locs(os.path.join(work, "bench.ome_truth_locs.hdf5"))
    bound = mean_crlb_x(truth)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"movie: {args.frames} frames of {args.size}x{args.size} px, {len(truth)} spots, {args.photons:g} photons, "
          f"(spread {args.photon_spread:g}), bg {args.bg:g}; box 7, min net gradient {ng}; "
          f"mean CRLB(x) = {bound:.4f} px")
    header = f"{'method':6} {'tool':22} {'wall s':>8} {'peak MiB':>9} {'locs':>7} {'Jaccard':>8} {'RMSE px':>8} " \
             f"{'RMSE/CRLB':>9}"
    print(header)
    print("-" * len(header))
    rows = {}
    cache = tempfile.mkdtemp(prefix="numba-cache-")
    try:
        for method in args.methods:
            runs = {}
            for label in ("napari-localize cold", "napari-localize warm", "picassosr"):
                suffix = "_" + label.split()[-1].replace("-", "") + "_" + method
                if label.startswith("napari-localize"):
                    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                    if label.endswith("cold"):
                        shutil.rmtree(cache, ignore_errors=True)
                    cmd = [py, "-m", "napari_localize.cli", "localize", movie, "--fit-method", method, "--baseline",
                           str(baseline), "--min-net-gradient", str(ng), "--suffix", suffix]
                else:
                    env = None
                    cmd = [py, "-m", "picasso", "localize", movie, "-a", PICASSO_METHOD[method], "-b", "7", "-g",
                           str(ng), "-bl", str(baseline), "-s", "1", "-ga", "1", "-d", "0", "-sf", suffix]
                wall, rss = run(cmd, env)
                locs, _ = load_locs(os.path.join(work, f"bench.ome{suffix}_locs.hdf5"))
                acc, _ = accuracy(truth, locs, tolerance=1.0)
                rmse = float(np.hypot(acc.rmse_x, acc.rmse_y) / np.sqrt(2))
                runs[label] = (wall, rss, len(locs), acc.jaccard, rmse)
                print(f"{method:6} {label:22} {wall:8.2f} {rss:9.0f} {len(locs):7d} {acc.jaccard:8.4f} {rmse:8.4f} "
                      f"{rmse / bound:9.3f}", flush=True)
            rows[method] = runs
        print()
        for method, runs in rows.items():
            pic = runs["picassosr"]
            for label in ("napari-localize cold", "napari-localize warm"):
                ours = runs[label]
                print(f"{method}: {label} / picassosr: wall time {ours[0] / pic[0]:.2f}x, peak memory "
                      f"{ours[1] / pic[1]:.2f}x, RMSE {ours[4] / pic[4]:.3f}x, Jaccard {ours[3]:.4f} vs {pic[3]:.4f}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
