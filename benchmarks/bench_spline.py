"""Experimental (spline) PSF: napari-localize vs picassosr 0.11 on the same pupil-simulated data, one run.

Data: a bead z-stack and a blinking movie rendered with the scalar pupil-function PSF
(:mod:`napari_localize.core.pupil`, astigmatism + spherical + coma: not a Gaussian), Poisson noise, a camera
offset. Every program calibrates on the stack and localizes the movie through its command line, as a user:

* ours, spline: ``napari-localize calibrate-z STACK --model spline`` + ``localize --zcalib CAL.hdf5``
* Picasso, spline: ``picasso spline-calibrate`` + ``picasso localize -a spline-mle -sc CAL.hdf5``
  (magnification factor 1: the pupil model is index-matched)
* ours, polynomial (contrast): ``calibrate-z --model poly`` + ``localize --zcalib CAL.yaml`` (z MLE)
* ours reading Picasso's calibration: ``localize --zcalib <Picasso's .hdf5>``, and Picasso fitting ours

Same box (``--box``), threshold and camera for all. For localizations matched one-to-one to the truth (same
frame, within 1 px): z RMSE, median |dz|, lateral spread (SD of x and y errors, nm), bias per 100 nm bin,
the detection Jaccard index; wall time, fits/s and peak memory (max RSS) of each localize command.

    MPLBACKEND=Agg python benchmarks/bench_spline.py [--frames 500] [--spots 10] [--photons 3000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, env=None):
    """Run a command; return (wall seconds, max RSS MB of that child)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        print(out)
        raise RuntimeError(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024.0, out


def match(locs, truth, radius=1.0):
    """One-to-one nearest match within ``radius`` px in the same frame: index into truth or -1."""
    idx = np.full(len(locs), -1)
    taken = np.zeros(len(truth), bool)
    order = np.argsort(truth["frame"], kind="stable")
    tf = truth["frame"][order]
    for i in np.argsort(-locs["photons"]):
        a, b = np.searchsorted(tf, [locs["frame"][i], locs["frame"][i] + 1])
        cand = order[a:b]
        if len(cand) == 0:
            continue
        d = np.hypot(truth["x"][cand] - locs["x"][i], truth["y"][cand] - locs["y"][i])
        d[taken[cand]] = np.inf
        j = int(np.argmin(d))
        if d[j] < radius:
            idx[i] = cand[j]
            taken[cand[j]] = True
    return idx


def metrics(locs, truth, pixelsize):
    idx = match(locs, truth)
    m = idx >= 0
    tp = int(m.sum())
    dz = locs["z"][m].astype(float) - truth["z"][idx[m]]
    dx = (locs["x"][m].astype(float) - truth["x"][idx[m]]) * pixelsize
    dy = (locs["y"][m].astype(float) - truth["y"][idx[m]]) * pixelsize
    zt = truth["z"][idx[m]]
    bins = {}
    for a in range(int(np.floor(zt.min() / 100) * 100), int(np.ceil(zt.max() / 100) * 100), 100):
        s = (zt >= a) & (zt < a + 100)
        if s.sum() >= 10:
            bins[a] = round(float(np.mean(dz[s])), 1)
    return {
        "localizations": int(len(locs)), "matched": tp,
        "jaccard": tp / (len(locs) + len(truth) - tp),
        "z_rmse_nm": float(np.sqrt(np.mean(dz**2))), "z_median_abs_nm": float(np.median(np.abs(dz))),
        "z_bias_nm": float(np.mean(dz)),
        "lateral_sd_nm": float(np.sqrt((dx.var() + dy.var()) / 2)),
        "lateral_bias_nm": [float(dx.mean()), float(dy.mean())],
        "z_bias_per_100nm": bins, "max_abs_bin_bias_nm": float(max(abs(v) for v in bins.values())),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--spots", type=float, default=10)
    ap.add_argument("--photons", type=float, default=3000)
    ap.add_argument("--bg", type=float, default=20)
    ap.add_argument("--z-range", type=float, nargs=2, default=(-600, 600))
    ap.add_argument("--beads", type=int, default=16)
    ap.add_argument("--step", type=float, default=20.0)
    ap.add_argument("--stack-frames", type=int, default=81)
    ap.add_argument("--box", type=int, default=13)
    ap.add_argument("--gradient", type=float, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", help="keep the files in this folder")
    ap.add_argument("--no-picasso", action="store_true")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="bench_spline_")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    ours = [sys.executable, "-m", "napari_localize.cli"]
    stack = os.path.join(work, "beads.ome.tif")
    movie = os.path.join(work, "movie.ome.tif")
    cam = ["--baseline", "100", "--sensitivity", "1", "--gain", "1"]
    results = {}
    print(f"work folder {work}")
    t, _, _ = run(ours + ["simulate", stack, "--psf", "pupil", "--beads", str(a.beads), "--frames",
                          str(a.stack_frames), "--height", "128", "--width", "128", "--photons", "20000", "--bg",
                          str(a.bg), "--min-separation", "22", "--step-nm", str(a.step), "--bead-z-sd", "5",
                          "--seed", str(a.seed)], env)
    print(f"simulated the bead stack in {t:.0f} s")
    t, _, _ = run(ours + ["simulate", movie, "--psf", "pupil", "--z-range", *map(str, a.z_range), "--frames",
                          str(a.frames), "--height", str(a.size), "--width", str(a.size), "--spots-per-frame",
                          str(a.spots), "--photons", str(a.photons), "--photon-spread", "0.3", "--bg", str(a.bg),
                          "--min-separation", "8", "--seed", str(a.seed + 1)], env)
    print(f"simulated the movie in {t:.0f} s")
    truth = h5py.File(os.path.join(work, "movie.ome_truth_locs.hdf5"))["locs"][()]
    n_truth = len(truth)

    def localize(name, cmd, locs_path, cal_seconds):
        wall, rss, _ = run(cmd, env)
        locs = h5py.File(locs_path)["locs"][()]
        r = metrics(locs, truth, 130.0)
        r.update({"calibrate_s": cal_seconds, "localize_s": wall, "fits_per_s": len(locs) / wall,
                  "peak_rss_mb": rss})
        results[name] = r
        print(f"{name}: {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})}")

    # ours, spline
    cal = os.path.join(work, "ours_spline.hdf5")
    t, _, out = run(ours + ["calibrate-z", stack, "--step-nm", str(a.step), "--model", "spline", "--box-size",
                            str(a.box), "--min-net-gradient", "1000", "--magnification-factor", "1", "--output",
                            cal] + cam, env)
    print(out.strip())
    localize("ours spline MLE", ours + ["localize", movie, "--zcalib", cal, "--min-net-gradient", str(a.gradient),
                                        "--suffix", "_ours_spline"] + cam,
             os.path.join(work, "movie.ome_ours_spline_locs.hdf5"), t)
    # ours, polynomial (contrast)
    yaml_cal = os.path.join(work, "ours_poly.yaml")
    t, _, _ = run(ours + ["calibrate-z", stack, "--step-nm", str(a.step), "--box-size", "9", "--min-net-gradient",
                          "1000", "--magnification-factor", "1", "--output", yaml_cal] + cam, env)
    localize("ours polynomial z MLE", ours + ["localize", movie, "--zcalib", yaml_cal, "--box-size", "9",
                                              "--min-net-gradient", str(a.gradient), "--suffix", "_ours_poly"] + cam,
             os.path.join(work, "movie.ome_ours_poly_locs.hdf5"), t)
    if not a.no_picasso:
        picasso = [sys.executable, "-m", "picasso"]
        pcal = os.path.join(work, "picasso_spline.hdf5")
        t, _, _ = run(picasso + ["spline-calibrate", stack, "-o", pcal, "-b", str(a.box), "-g", "1000", "-s",
                                 str(a.step), "-mf", "1", "-bl", "100", "-se", "1", "-ga", "1", "-px", "130"], env)
        localize("Picasso spline-mle", picasso + ["localize", movie, "-a", "spline-mle", "-sc", pcal, "-b",
                                                  str(a.box), "-g", str(a.gradient), "-bl", "100", "-s", "1", "-ga",
                                                  "1", "-px", "130", "-sf", "_picasso_spline"],
                 os.path.join(work, "movie.ome_picasso_spline_locs.hdf5"), t)
        localize("Picasso fitting our calibration", picasso + ["localize", movie, "-a", "spline-mle", "-sc", cal, "-b",
                                                               str(a.box), "-g", str(a.gradient), "-bl", "100", "-s",
                                                               "1", "-ga", "1", "-px", "130", "-sf", "_picasso_ours"],
                 os.path.join(work, "movie.ome_picasso_ours_locs.hdf5"), 0.0)
        localize("ours reading Picasso's calibration", ours + ["localize", movie, "--zcalib", pcal,
                                                                "--min-net-gradient", str(a.gradient), "--suffix",
                                                                "_ours_on_picasso_cal"] + cam,
                 os.path.join(work, "movie.ome_ours_on_picasso_cal_locs.hdf5"), 0.0)
        o, p = results["ours spline MLE"], results["Picasso spline-mle"]
        print("\nratios ours / Picasso (spline): z RMSE {:.2f} (target <= 0.8), median |dz| {:.2f} (<= 1), "
              "lateral SD {:.2f} (<= 1), Jaccard {:+.3f} (>= +0.03), localize time {:.2f}".format(
                  o["z_rmse_nm"] / p["z_rmse_nm"], o["z_median_abs_nm"] / p["z_median_abs_nm"],
                  o["lateral_sd_nm"] / p["lateral_sd_nm"], o["jaccard"] - p["jaccard"],
                  o["localize_s"] / p["localize_s"]))
    print(f"\n{n_truth} true spots; {os.cpu_count()} CPUs (shared with other jobs: timings are noisy)")
    with open(os.path.join(work, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
