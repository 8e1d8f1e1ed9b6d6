"""Speed (issue 18): napari-localize against picassosr on one simulated movie, with the cold start.

1. **Cold start**: the quick-start of the README (``napari-localize simulate demo.ome.tif`` then ``napari-localize
   localize demo.ome.tif --baseline 100 --min-net-gradient 1200``) with an empty numba cache (NUMBA_CACHE_DIR
   set to a new folder: the first run after installing), then once more with that cache (every later run).
2. **Both tools on the same movie** (default: the issue's 1.05 GB movie, 8000 frames of 256x256 px, ~55 spots per
   frame), each fit method, same box, threshold and camera conversion, numba cache warm for ours; picassosr
   compiles in every run. Per run: wall time, CPU time (user + system, all threads), peak memory (max RSS),
   localizations, the ratio to picassosr, napari-localize's own time split (read / identify / fit / write,
   seconds summed over chunks; reading runs in a background thread) and its fits per second per core (spots
   fitted / fit seconds / cores).

Every number comes from separate processes started by this script, one after the other. On a shared machine
the CPU times are the steadier ones; the ratios are only meaningful when both tools ran under the same load.
``--repeats N`` alternates the two tools N times per method (ours, picassosr, ours, ...) and prints each
round's wall-time ratio and the ratio of the median wall times: Picasso's own time moves by +-20 % from run to
run on a shared VM, so one pair of runs says little about a ratio near 0.10.

    python benchmarks/bench_speed.py [--frames 8000] [--size 256] [--methods lq mle] [--no-picasso] [--workdir DIR]
                                     [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median

CAMERA = ["--baseline", "100", "--min-net-gradient", "1200"]
PICASSO_CAMERA = ["-b", "7", "-g", "1200", "-bl", "100", "-s", "1", "-ga", "1", "-d", "0"]


def run(cmd, env=None, cwd=None):
    """Run ``cmd``; return wall s, CPU s (user + system), peak RSS MiB and its output."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    out_bytes = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out = out_bytes.decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, out


def time_split(output: str) -> dict:
    m = re.search(r"\[read ([\d.]+) s, identify ([\d.]+) s, fit ([\d.]+) s, write ([\d.]+) s\]", output)
    return dict(zip(("read", "identify", "fit", "write"), map(float, m.groups()))) if m else {}


def spots_fitted(output: str) -> int | None:
    m = re.search(r"\((\d+) spots", output)
    return int(m.group(1)) if m else None


def count_locs(path) -> int:
    import h5py

    with h5py.File(path, "r") as fh:
        return len(fh["locs"])


def cold_start(py, work):
    """(cold, warm) runs of the quick-start, each (wall, cpu, rss, output)."""
    demo = os.path.join(work, "demo.ome.tif")
    subprocess.run([py, "-m", "napari_localize.cli", "simulate", demo], check=True, stdout=subprocess.DEVNULL)
    cache = tempfile.mkdtemp(prefix="numba-cache-", dir=work)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    cmd = [py, "-m", "napari_localize.cli", "localize", demo, *CAMERA]
    return run(cmd, env), run(cmd, env)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spots", type=float, default=55, help="mean spots per frame (Poisson)")
    ap.add_argument("--methods", nargs="+", default=["lq", "mle"])
    ap.add_argument("--no-picasso", action="store_true", help="only napari-localize")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start measurement")
    ap.add_argument("--workdir", help="keep files here (default: a temporary folder, removed)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of both tools per method, alternating")
    args = ap.parse_args(argv)
    py = sys.executable
    cores = os.cpu_count() or 1
    work = args.workdir or tempfile.mkdtemp(prefix="bench-speed-")
    os.makedirs(work, exist_ok=True)
    print(f"machine: {platform.machine()} {platform.processor()}, {cores} cores, python {platform.python_version()},"
          f" load average at start {os.getloadavg()[0]:.1f}")
    try:
        if not args.no_cold:
            cold, warm = cold_start(py, work)
            print("cold start (quick-start movie 1000x128x128, `localize demo.ome.tif --baseline 100 "
                  "--min-net-gradient 1200`):")
            for label, (wall, cpu, rss, out) in (("empty numba cache", cold), ("warm cache", warm)):
                split = time_split(out)
                print(f"  {label:18} wall {wall:6.2f} s  CPU {cpu:6.2f} s  peak {rss:5.0f} MiB  "
                      f"[identify {split.get('identify', 0):.2f} s, fit {split.get('fit', 0):.2f} s]")
            print(f"  compile cost (cold - warm): wall {cold[0] - warm[0]:.2f} s, CPU {cold[1] - warm[1]:.2f} s")

        movie = os.path.join(work, "m.ome.tif")
        subprocess.run([py, "-m", "napari_localize.cli", "simulate", movie, "--frames", str(args.frames),
                        "--height", str(args.size), "--width", str(args.size), "--spots-per-frame", str(args.spots),
                        "--poisson-count", "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
        gb = os.path.getsize(movie) / 1e9
        # untimed runs fill our numba cache (the cold start above used its own): every method, since each
        # (PSF model, noise model) pair has its own kernel, and enough frames that the crowded-fields refit
        # (its own kernel) runs at least once
        for method in args.methods:
            run([py, "-m", "napari_localize.cli", "localize", movie, *CAMERA, "--fit-method", method,
                 "--frames", "0", "999", "--suffix", "_warmup"])
        print(f"\nmovie: {args.frames} frames of {args.size}x{args.size} px uint16 ({gb:.2f} GB), "
              f"{args.spots:g} spots/frame; box 7, min net gradient 1200, baseline 100")
        print(f"{'method':6} {'tool':16} {'wall s':>7} {'CPU s':>7} {'peak MiB':>8} {'locs':>8} {'wall x':>6} "
              f"{'CPU x':>6} {'mem x':>6}  time split (ours)")
        for method in args.methods:
            ours = [py, "-m", "napari_localize.cli", "localize", movie, *CAMERA, "--fit-method", method,
                    "--suffix", "_ours"]
            pic = [py, "-m", "picasso", "localize", movie, "-a", method, *PICASSO_CAMERA, "-sf", "_picasso"]
            walls = {"napari-localize": [], "picassosr": []}
            for _ in range(max(1, args.repeats)):
                results = {}
                for tool, cmd, suffix in (("napari-localize", ours, "_ours"), ("picassosr", pic, "_picasso")):
                    if tool == "picassosr" and args.no_picasso:
                        continue
                    wall, cpu, rss, out = run(cmd)
                    results[tool] = (wall, cpu, rss, count_locs(os.path.join(work, f"m.ome{suffix}_locs.hdf5")),
                                     out)
                    walls[tool].append(wall)
                ref = results.get("picassosr")
                for tool, (wall, cpu, rss, nlocs, out) in results.items():
                    ratio = f"{wall / ref[0]:6.3f} {cpu / ref[1]:6.3f} {rss / ref[2]:6.2f}" if ref else " " * 20
                    detail = ""
                    if tool == "napari-localize":
                        s = time_split(out)
                        fitted = spots_fitted(out) or nlocs
                        rate = fitted / (s["fit"] * cores) if s.get("fit") else float("nan")
                        detail = (f"  read {s['read']:.2f} identify {s['identify']:.2f} fit {s['fit']:.2f} "
                                  f"write {s['write']:.2f} s; {rate:,.0f} fits/s/core; "
                                  f"identify {s['identify'] / (args.frames * args.size ** 2 / 1e6) * 1e3:.2f} ms/Mpx")
                    print(f"{method:6} {tool:16} {wall:7.2f} {cpu:7.2f} {rss:8.0f} {nlocs:8d} {ratio}{detail}",
                          flush=True)
            if len(walls["picassosr"]) > 1:
                per_round = [a / b for a, b in zip(walls["napari-localize"], walls["picassosr"], strict=True)]
                med_ours, med_pic = median(walls["napari-localize"]), median(walls["picassosr"])
                print(f"{method}: wall-time ratio per round {' '.join(f'{r:.3f}' for r in per_round)}; median "
                      f"{med_ours:.2f} s / {med_pic:.2f} s = {med_ours / med_pic:.3f}x", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
