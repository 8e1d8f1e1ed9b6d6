"""Density sweep: napari-localize and picassosr on the same simulated movies, from sparse to crowded.

For each density (spots per 128x128 frame) one movie is simulated (2000 photons, bg 20 photons/px, sigma 1 px,
spots anywhere: they may overlap) and localized by every tool variant as a separate process (our CLI and
``python -m picasso localize``) with the same box, threshold and photon conversion. Printed per run:

* Jaccard index at 1 px (one-to-one matching per frame, SMLM challenge),
* RMSE (per axis) / CRLB of the matched spots (CRLB of an isolated spot with the true parameters, box 7),
  also for the true spots with no other spot within 4 px and within 6 px,
* the fraction of matched errors beyond 5 CRLB sigma,
* the SMLM-challenge efficiency E = 100 - sqrt((100 - 100 J)^2 + (alpha RMSE_nm)^2), alpha = 1/nm, with the
  lateral RMSE sqrt(<dx^2 + dy^2>) in nm (pixel size ``--pixelsize``, default 100 nm),
* wall time of the process.

Writes ``density.json`` (all numbers) to the work folder and a plot (``--plot``, default
``benchmarks/density.png``): Jaccard, RMSE/CRLB, isolated RMSE/CRLB and E against density.

    python benchmarks/bench_density.py [--densities 5 20 80 150] [--spots 6000] [--ours "mle" "mle --max-emitters 1"]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from napari_localize.core.evaluate import accuracy, nearest_neighbour_distance
from napari_localize.core.psf import crlb
from napari_localize.core.simulate import SimulationParameters, simulate_frames
from napari_localize.io.locs import load_locs
from napari_localize.io.movies.write import write_movie

HERE = os.path.dirname(os.path.abspath(__file__))
DENSITIES = (5, 10, 20, 40, 80, 120, 150, 200)


def simulate(path, density, n_frames, photons, bg, sigma, baseline, seed):
    p = SimulationParameters(n_frames=n_frames, height=128, width=128, spots_per_frame=density, photons=photons,
                             bg=bg, sigma=sigma, baseline=baseline, min_separation=0.0, seed=seed)
    truths = []
    step = 256

    def chunks():
        for a in range(0, n_frames, step):
            frames, truth = simulate_frames(p, a, a + step)
            truths.append(truth)
            yield frames

    write_movie(path, chunks(), (n_frames, 128, 128), "uint16")
    return np.concatenate(truths)


def run(cmd):
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout.decode()[-3000:]}")
    return wall


def crlb_x_sd(truth, box=7, n=400, seed=0):
    """Root mean CRLB variance of x (pixels) over a sample of true spots (isolated-spot bound)."""
    r = box // 2
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(truth), min(n, len(truth)), replace=False)
    var = [crlb(float(t["photons"]), float(t["bg"]), float(t["sx"]), float(t["sy"]), box,
                r + t["x"] - round(float(t["x"])), r + t["y"] - round(float(t["y"])))[0] for t in truth[pick]]
    return float(np.sqrt(np.mean(var)))


def metrics(truth, locs, nn, bound, pixelsize):
    acc, m = accuracy(truth, locs, tolerance=1.0)
    ex = locs["x"][m.locs_index].astype(float) - truth["x"][m.truth_index]
    ey = locs["y"][m.locs_index].astype(float) - truth["y"][m.truth_index]
    near = nn[m.truth_index]

    def rmse_axis(sel):
        return float(np.sqrt(np.mean(np.concatenate([ex[sel], ey[sel]]) ** 2))) if sel.any() else math.nan

    every = np.ones(len(ex), bool)
    lateral_nm = float(np.sqrt(np.mean(ex**2 + ey**2))) * pixelsize if len(ex) else math.nan
    e = 100.0 - math.sqrt((100.0 - 100.0 * acc.jaccard) ** 2 + lateral_nm**2)
    iso4, iso6 = near > 4.0, near > 6.0
    tail = np.hypot(ex, ey) / bound
    return {
        "locs": int(len(locs)),
        "jaccard": acc.jaccard, "recall": acc.recall, "precision": acc.precision,
        "rmse_px": rmse_axis(every), "rmse_crlb": rmse_axis(every) / bound,
        "rmse_crlb_iso4": rmse_axis(iso4) / bound, "rmse_crlb_iso6": rmse_axis(iso6) / bound,
        "n_iso4": int(iso4.sum()), "n_iso6": int(iso6.sum()),
        "tail5_iso4": float(np.mean(tail[iso4] > 5.0 * math.sqrt(2.0))) if iso4.any() else math.nan,
        "rmse_lateral_nm": lateral_nm, "efficiency": e,
    }


def plot(results, path, densities):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    panels = [("jaccard", "Jaccard (1 px)"), ("rmse_crlb", "RMSE / CRLB, all matched"),
              ("rmse_crlb_iso4", "RMSE / CRLB, no neighbour within 4 px"), ("efficiency", "efficiency E")]
    labels = list(next(iter(results.values())).keys())
    for ax, (key, title) in zip(axes.ravel(), panels):
        for label in labels:
            ys = [results[f"{d:g}"][label][key] for d in densities]
            style = "--" if label.startswith("picasso") else "-"
            ax.plot(densities, ys, style, marker="o", ms=4, label=label)
        ax.set_xlabel("spots per 128x128 frame")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if key.startswith("rmse"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("density sweep: 2000 photons, bg 20, sigma 1 px, box 7")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", type=float, nargs="+", default=DENSITIES)
    ap.add_argument("--spots", type=int, default=6000, help="true spots per density (frames = spots / density)")
    ap.add_argument("--max-frames", type=int, default=1000)
    ap.add_argument("--photons", type=float, default=2000)
    ap.add_argument("--bg", type=float, default=20)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--pixelsize", type=float, default=100.0, help="nm, for the efficiency E")
    ap.add_argument("--min-net-gradient", type=float, default=1200)
    ap.add_argument("--ours", nargs="*", default=["mle", "mle --max-emitters 1"],
                    help="our variants: '--fit-method' value followed by extra CLI flags")
    ap.add_argument("--picasso", nargs="*", default=["lq", "mle"], help="picassosr fit methods")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", help="keep movies and results here (default: a temporary folder, removed)")
    ap.add_argument("--plot", default=os.path.join(HERE, "density.png"))
    args = ap.parse_args(argv)

    work = args.workdir or tempfile.mkdtemp(prefix="bench-density-")
    os.makedirs(work, exist_ok=True)
    py = sys.executable
    baseline, ng = 100, args.min_net_gradient
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {args.photons:g} photons, bg {args.bg:g}, sigma {args.sigma:g} px, box 7, "
          f"min net gradient {ng:g}, pixel {args.pixelsize:g} nm")
    head = f"{'spots/fr':>8} {'tool':28} {'wall s':>7} {'locs':>7} {'Jaccard':>7} {'RMSE/CRLB':>9} " \
           f"{'iso4':>6} {'iso6':>6} {'tail5':>6} {'E':>6}"
    print(head)
    print("-" * len(head))
    results = {}
    try:
        for density in args.densities:
            n_frames = int(min(args.max_frames, max(20, math.ceil(args.spots / density))))
            tag = f"d{density:g}"
            movie = os.path.join(work, f"{tag}.ome.tif")
            truth = simulate(movie, density, n_frames, args.photons, args.bg, args.sigma, baseline, args.seed)
            nn = nearest_neighbour_distance(truth)
            bound = crlb_x_sd(truth)
            runs = {}
            variants = [(f"ours {v}", "ours", v) for v in args.ours] + \
                       [(f"picassosr {m}", "picasso", m) for m in args.picasso]
            for i, (label, tool, spec) in enumerate(variants):
                suffix = f"_v{i}"
                if tool == "ours":
                    method, *extra = shlex.split(spec)
                    cmd = [py, "-m", "napari_localize.cli", "localize", movie, "--fit-method", method,
                           "--baseline", str(baseline), "--min-net-gradient", str(ng), "--suffix", suffix, *extra]
                else:
                    cmd = [py, "-m", "picasso", "localize", movie, "-a", spec, "-b", "7", "-g", str(ng),
                           "-bl", str(baseline), "-s", "1", "-ga", "1", "-d", "0", "-sf", suffix]
                wall = run(cmd)
                locs, _ = load_locs(os.path.join(work, f"{tag}.ome{suffix}_locs.hdf5"))
                r = metrics(truth, locs, nn, bound, args.pixelsize)
                r["wall_s"] = wall
                runs[label] = r
                print(f"{density:8g} {label:28} {wall:7.1f} {r['locs']:7d} {r['jaccard']:7.4f} "
                      f"{r['rmse_crlb']:9.3f} {r['rmse_crlb_iso4']:6.3f} {r['rmse_crlb_iso6']:6.3f} "
                      f"{100 * r['tail5_iso4']:5.2f}% {r['efficiency']:6.1f}", flush=True)
            results[f"{density:g}"] = runs
            os.remove(movie)
        with open(os.path.join(work, "density.json"), "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)
        if args.plot:
            plot(results, args.plot, list(args.densities))
            print(f"plot -> {args.plot}")
        for d, runs in results.items():
            pic = max((r["jaccard"] for k, r in runs.items() if k.startswith("picasso")), default=math.nan)
            best = {k: r["jaccard"] - pic for k, r in runs.items() if k.startswith("ours")}
            print(f"{d} spots/frame: Jaccard - Picasso's best ({pic:.4f}): "
                  + ", ".join(f"{k} {v:+.4f}" for k, v in best.items()))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
