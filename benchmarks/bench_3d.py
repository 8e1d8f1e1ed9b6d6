"""3D by astigmatism: napari-localize vs picassosr on the same simulated bead stack and blinking movie.

Both tools calibrate on the same simulated bead z-stack (Picasso: ``picasso.localize`` + ``picasso.zfit
.calibrate_z``; ours: beads followed in fixed boxes) and fit z on the same blinking movie with known heights.
Prints, per z range, the axial RMSE, bias and median |error| against the ground truth, our CRLB (median lpz of
the MLE), and the detection Jaccard index.

    MPLBACKEND=Agg python benchmarks/bench_3d.py [--frames 400] [--photons 3000] [--z-max 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from napari_localize.api import calibrate_z_stack, localize_movie_3d  # noqa: E402
from napari_localize.core.parameters import LocalizeParameters  # noqa: E402
from napari_localize.core.simulate import (  # noqa: E402
    SimulationParameters,
    simulate_bead_stack,
    simulate_frames,
)
from napari_localize.core.zfit import ZFitOptions  # noqa: E402
from napari_localize.io.movies.write import write_movie  # noqa: E402

BASELINE = 100.0
PIXELSIZE = 130.0


def match(locs_frame, locs_x, locs_y, truth, radius=1.0):
    """Index of the nearest true spot of the same frame within ``radius`` px for each loc, one-to-one."""
    idx = np.full(len(locs_x), -1)
    taken = np.zeros(len(truth), bool)
    order = np.argsort(truth["frame"], kind="stable")
    tf = truth["frame"][order]
    for i in range(len(locs_x)):
        a, b = np.searchsorted(tf, [locs_frame[i], locs_frame[i] + 1])
        cand = order[a:b]
        if len(cand) == 0:
            continue
        d = np.hypot(truth["x"][cand] - locs_x[i], truth["y"][cand] - locs_y[i])
        d[taken[cand]] = np.inf
        j = int(np.argmin(d))
        if d[j] < radius:
            idx[i] = cand[j]
            taken[cand[j]] = True
    return idx


def summarise(name, z, frame, x, y, truth, bins, lpz=None):
    idx = match(frame, x, y, truth)
    tp = int((idx >= 0).sum())
    jac = tp / (len(z) + len(truth) - tp)
    err = np.asarray(z, float)[idx >= 0] - truth["z"][idx[idx >= 0]]
    zt = truth["z"][idx[idx >= 0]]
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        sel = (zt >= lo) & (zt < hi)
        e = err[sel]
        crlb = float(np.median(np.asarray(lpz)[idx >= 0][sel])) if lpz is not None and sel.any() else np.nan
        rows.append((lo, hi, len(e), np.sqrt(np.mean(e**2)) if len(e) else np.nan,
                     np.mean(e) if len(e) else np.nan, np.median(np.abs(e)) if len(e) else np.nan, crlb))
    total = (np.sqrt(np.mean(err**2)), np.mean(err), np.median(np.abs(err)),
             np.percentile(np.abs(err), 99))
    print(f"\n{name}: {len(z)} locs, Jaccard {jac:.3f}; axial RMSE {total[0]:.1f} nm, bias {total[1]:+.1f} nm, "
          f"median |err| {total[2]:.1f} nm, 99th pct |err| {total[3]:.1f} nm")
    print("   z range (nm)      n   RMSE   bias  med|e|  CRLB(med lpz)")
    for lo, hi, n, rmse, bias, med, crlb in rows:
        print(f"  {lo:6.0f} {hi:6.0f} {n:6d} {rmse:6.1f} {bias:+6.1f} {med:6.1f}  {crlb:6.1f}")
    return total[0], jac


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--photons", type=float, default=3000.0)
    ap.add_argument("--z-max", type=float, default=600.0, help="blinking spots at heights in +-z-max (nm)")
    ap.add_argument("--step", type=float, default=10.0, help="bead stack step (nm)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import picasso.io as pio
    import picasso.localize as ploc
    import picasso.zfit as pz

    tmp = tempfile.mkdtemp(prefix="bench3d-")
    sp = SimulationParameters(n_frames=121, height=128, width=128, photons=20000, bg=20, baseline=BASELINE,
                              seed=args.seed)
    sframes, _ = simulate_bead_stack(sp, n_beads=30, step_nm=args.step, bead_z_offset_sd=20.0)
    bp = SimulationParameters(n_frames=args.frames, height=128, width=128, spots_per_frame=20,
                              photons=args.photons, photon_spread=0.3, bg=20, baseline=BASELINE,
                              z_range=(-args.z_max, args.z_max), seed=args.seed + 1)
    bframes, truth = simulate_frames(bp)
    stack_path = os.path.join(tmp, "stack.ome.tif")
    movie_path = os.path.join(tmp, "movie.ome.tif")
    write_movie(stack_path, [sframes], sframes.shape, sframes.dtype, pixelsize_nm=PIXELSIZE)
    write_movie(movie_path, [bframes], bframes.shape, bframes.dtype, pixelsize_nm=PIXELSIZE)
    box, ng = 9, 1000.0
    print(f"bead stack: 121 frames, step {args.step} nm, 30 beads (height offsets sd 20 nm); movie: "
          f"{args.frames} frames 128x128, 20 spots/frame, {args.photons:g} photons (log-normal 30 %), bg 20, "
          f"z uniform in +-{args.z_max:g} nm; box {box}, min net gradient {ng:g}, magnification factor 1")

    # ---- Picasso
    cam = {"Baseline": BASELINE, "Sensitivity": 1.0, "Gain": 1.0, "Qe": 1.0, "Pixelsize": PIXELSIZE}
    ident = {"Box Size": box, "Min. Net Gradient": ng}
    t = time.perf_counter()
    smov, sinfo = pio.load_movie(stack_path)
    slocs, _ = ploc.localize(smov, camera_info=cam, identification_parameters=ident, movie_info=sinfo,
                             fitting_method="gaussmle")
    pcal = pz.calibrate_z(slocs, sinfo, args.step, 1.0, path=None)
    t_pcal = time.perf_counter() - t
    mov, minfo = pio.load_movie(movie_path)
    t = time.perf_counter()
    plocs2d, pinfo = ploc.localize(mov, camera_info=cam, identification_parameters=ident, movie_info=minfo,
                                   fitting_method="gaussmle")
    t_p2d = time.perf_counter() - t
    results = {}
    for filt in (0, 2):
        t = time.perf_counter()
        pl3, _ = pz.zfit(plocs2d, pinfo, calibration=pcal, magnification_factor=1.0, pixelsize=PIXELSIZE,
                         fitting_method="gaussmle", filter=filt)
        t_pz = time.perf_counter() - t
        results[f"picasso f{filt}"] = summarise(
            f"picassosr {filt and 'GUI filter 2' or 'CLI (filter 0)'} [2D {t_p2d:.1f} s, z fit {t_pz:.1f} s]",
            pl3["z"].to_numpy(), pl3["frame"].to_numpy(), pl3["x"].to_numpy(), pl3["y"].to_numpy(), truth,
            bins := np.linspace(-args.z_max, args.z_max, 7))

    # ---- ours
    p = LocalizeParameters(box_size=box, min_net_gradient=ng, baseline=BASELINE, pixelsize=PIXELSIZE)
    t = time.perf_counter()
    cal = calibrate_z_stack(sframes, p, args.step, 1.0)
    t_cal = time.perf_counter() - t
    print(f"\ncalibration: picasso {t_pcal:.1f} s; ours {t_cal:.1f} s, {cal.diagnostics['method']}, "
          f"own z precision {cal.diagnostics['z_precision_nm']:.1f} nm")
    from napari_localize.core.zfit import ZCalibration

    pcal_ours = ZCalibration(pcal["X Coefficients"], pcal["Y Coefficients"], pcal["Number of frames"],
                             pcal["Step size in nm"], 1.0)
    for label, c in (("our calibration", cal), ("Picasso's calibration", pcal_ours)):
        for method in ("huang", "mle"):
            localize_movie_3d(bframes[:2], p, c, ZFitOptions(method=method))  # JIT warm-up
            t = time.perf_counter()
            locs, _, _ = localize_movie_3d(bframes, p, c, ZFitOptions(method=method))
            dt = time.perf_counter() - t
            results[f"{label} {method}"] = summarise(
                f"napari-localize {method}, {label} [2D+z {dt:.1f} s]", locs["z"], locs["frame"], locs["x"],
                locs["y"], truth, bins, locs["lpz"])
    ref = results["picasso f0"][0]
    print("\naxial RMSE relative to picassosr (CLI, filter 0):")
    for k, (rmse, jac) in results.items():
        print(f"  {k:32s} RMSE {rmse:6.1f} nm  ratio {rmse / ref:5.2f}  Jaccard {jac:.3f}")


if __name__ == "__main__":
    main()
