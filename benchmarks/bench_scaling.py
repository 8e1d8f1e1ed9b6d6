"""Scaling: wall time and peak memory against movie length, napari-localize vs picassosr, in one run.

Movies of 256x256 px with ~55 spots per frame (the density of the issue's 1 GB reference movie: 8000 frames,
436k localizations) are simulated chunk by chunk (never whole in memory) at each length, then localized by both
command-line tools with the same parameters. Prints a table, writes it as CSV and plots it (PNG) into --out.

    python benchmarks/bench_scaling.py [--lengths 1000 2000 4000 8000 16000] [--methods lq mle] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

from bench_localize import run_with_output

from napari_localize.io.locs import load_locs


def time_split(output: str) -> dict:
    """The time split napari-localize's CLI prints: ``[read R s, identify I s, fit F s, write W s]``."""
    m = re.search(r"\[read ([\d.]+) s, identify ([\d.]+) s, fit ([\d.]+) s, write ([\d.]+) s\]", output)
    if m is None:
        return {}
    return dict(zip(("read", "identify", "fit", "write"), (float(v) for v in m.groups())))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000])
    ap.add_argument("--methods", nargs="+", default=["lq", "mle"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spots", type=float, default=55)
    ap.add_argument("--no-picasso", action="store_true", help="only napari-localize")
    ap.add_argument("--out", default="benchmarks/out")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    py = sys.executable
    cores = os.cpu_count() or 1
    rows = []
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; movies {args.size}x{args.size} px uint16, "
          f"{args.spots:g} spots/frame, 2000 photons, bg 20")
    print(f"{'frames':>7} {'GB':>5} {'method':6} {'tool':16} {'wall s':>8} {'peak MiB':>9} {'locs':>8} {'ratio':>6}")
    for n in args.lengths:
        work = tempfile.mkdtemp(prefix="bench-scaling-", dir=args.out)
        try:
            movie = os.path.join(work, "m.ome.tif")
            subprocess.run([py, "-m", "napari_localize.cli", "simulate", movie, "--frames", str(n), "--height",
                            str(args.size), "--width", str(args.size), "--spots-per-frame", str(args.spots),
                            "--poisson-count", "--seed", "7"], check=True, stdout=subprocess.DEVNULL)
            gb = os.path.getsize(movie) / 1e9
            for method in args.methods:
                ours_cmd = [py, "-m", "napari_localize.cli", "localize", movie, "--fit-method", method,
                            "--baseline", "100", "--min-net-gradient", "1200", "--suffix", "_ours"]
                pic_cmd = [py, "-m", "picasso", "localize", movie, "-a", method, "-b", "7", "-g", "1200", "-bl",
                           "100", "-s", "1", "-ga", "1", "-d", "0", "-sf", "_picasso"]
                results = {}
                for tool, cmd in (("napari-localize", ours_cmd), ("picassosr", pic_cmd)):
                    if tool == "picassosr" and args.no_picasso:
                        continue
                    wall, rss, out = run_with_output(cmd)
                    split = time_split(out) if tool == "napari-localize" else {}
                    suffix = "_ours" if tool == "napari-localize" else "_picasso"
                    locs, _ = load_locs(os.path.join(work, f"m.ome{suffix}_locs.hdf5"))
                    results[tool] = (wall, rss, len(locs), split)
                for tool, (wall, rss, nlocs, split) in results.items():
                    ratio = wall / results["picassosr"][0] if "picassosr" in results else float("nan")
                    rows.append({"frames": n, "GB": round(gb, 3), "method": method, "tool": tool,
                                 "wall_s": round(wall, 2), "peak_MiB": round(rss), "locs": nlocs,
                                 "wall_ratio": round(ratio, 3),
                                 **{f"{k}_s": v for k, v in split.items()},
                                 "fits_per_s_per_core": round(nlocs / wall / cores) if wall else ""})
                    detail = ""
                    if split:
                        detail = (f"  [read {split['read']:.1f} identify {split['identify']:.1f} fit {split['fit']:.1f}"
                                  f" write {split['write']:.1f} s; {nlocs / wall / cores:,.0f} locs/s/core]")
                    print(f"{n:7d} {gb:5.2f} {method:6} {tool:16} {wall:8.2f} {rss:9.0f} {nlocs:8d} {ratio:6.2f}"
                          f"{detail}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "scaling.csv"), "w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for method in args.methods:
            for tool, style in (("napari-localize", "-o"), ("picassosr", "--s")):
                sel = [r for r in rows if r["method"] == method and r["tool"] == tool]
                if sel:
                    x = [r["frames"] for r in sel]
                    axes[0].plot(x, [r["wall_s"] for r in sel], style, label=f"{tool} {method}")
                    axes[1].plot(x, [r["peak_MiB"] for r in sel], style, label=f"{tool} {method}")
        for ax, label in zip(axes, ("wall time (s)", "peak memory (MiB)")):
            ax.set_xlabel("frames (256x256)")
            ax.set_ylabel(label)
            ax.set_xscale("log")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "scaling.png"), dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
