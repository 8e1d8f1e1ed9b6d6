"""3D by astigmatism: napari-localize vs picassosr as a Picasso user runs it, on the same simulated data.

Picasso: the bead z-stack is localized with its default GUI fit (LQ, ``picasso.localize.localize``) and
calibrated with ``picasso.zfit.calibrate_z``; the blinking movie goes through its CLI,
``python -m picasso localize movie -a lq-3d -zc cal.yaml -mf 1 ...`` (LQ 2D fit, then z, filter 0). Ours:
``calibrate_z_stack`` on the same stack and ``localize(..., calibration=)`` with each z method and 2D fit, and
variants of the z MLE (box size, neighbour model, goodness-of-fit filter).

The blinking spots have log-normal photons (mean ``--photons``, spread ``--photon-spread``) and heights
uniform over the whole calibrated range and ``--beyond`` nm past each end (real samples do not stop at the
calibration's edge). Prints, for matched localizations (nearest true spot of the same frame within 1 px),
the axial RMSE, median |error|, fraction of errors > 100 nm, 99th percentile, bias per z range and the
detection Jaccard index; separately for spots inside and beyond the calibrated range.

    MPLBACKEND=Agg python benchmarks/bench_3d.py [--frames 300] [--photons 2200] [--bg 30] [--beyond 150]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from napari_localize.api import calibrate_z_stack, localize  # noqa: E402
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
BOX = 9
MIN_NET_GRADIENT = 1000.0


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


def _stats(e):
    if len(e) == 0:
        return {"n": 0, "rmse": np.nan, "med": np.nan, "tail": np.nan, "p99": np.nan, "bias": np.nan}
    a = np.abs(e)
    return {"n": len(e), "rmse": float(np.sqrt(np.mean(e**2))), "med": float(np.median(a)),
            "tail": float(np.mean(a > 100)), "p99": float(np.percentile(a, 99)), "bias": float(np.mean(e))}


def summarise(name, z, frame, x, y, truth, z_range, bins, verbose=True, lpz=None):
    """Error statistics of ``z`` (nm) against the truth; returns a dict (all, inside, beyond, jaccard).

    With ``lpz`` (nm, the reported precision) also ``crlb_ratio`` = RMSE / RMS(lpz) of the matched locs (1 is
    an efficient estimator whose errors are as large as its Cramér-Rao bound says) and the expected fraction
    of |error| > 100 nm for Gaussian errors of sd lpz.
    """
    from math import erfc, sqrt

    idx = match(np.asarray(frame), np.asarray(x), np.asarray(y), truth)
    m = idx >= 0
    tp = int(m.sum())
    jac = tp / (len(z) + len(truth) - tp)
    zt = truth["z"][idx[m]]
    err = np.asarray(z, float)[m] - zt
    inside = (zt >= z_range[0]) & (zt <= z_range[1])
    n_in_truth = int(((truth["z"] >= z_range[0]) & (truth["z"] <= z_range[1])).sum())
    res = {"all": _stats(err), "inside": _stats(err[inside]), "beyond": _stats(err[~inside]), "jaccard": jac,
           "recall_inside": int(inside.sum()) / max(n_in_truth, 1), "n": len(z), "crlb_ratio": np.nan,
           "tail_expected": np.nan}
    if lpz is not None and len(err):
        lp = np.asarray(lpz, float)[m]
        res["crlb_ratio"] = float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(lp**2)))
        res["tail_expected"] = float(np.mean([erfc(100.0 / (sqrt(2.0) * v)) for v in lp]))
    if verbose:
        print(f"\n{name}: {len(z)} locs, Jaccard {jac:.3f}, recall inside the calibrated range "
              f"{res['recall_inside']:.3f}")
        if lpz is not None:
            print(f"  RMSE / RMS(lpz) {res['crlb_ratio']:.3f}; |e|>100 nm expected from lpz "
                  f"{100 * res['tail_expected']:.2f} %")
        for k in ("all", "inside", "beyond"):
            s = res[k]
            print(f"  {k:7s} n {s['n']:5d}  RMSE {s['rmse']:6.1f}  median|e| {s['med']:5.1f}  "
                  f"|e|>100 nm {100 * s['tail']:5.2f} %  99th pct {s['p99']:6.1f}  bias {s['bias']:+6.1f}")
        print("   z range (nm)      n   RMSE   bias  med|e|  >100nm%")
        for lo, hi in zip(bins[:-1], bins[1:], strict=True):
            s = _stats(err[(zt >= lo) & (zt < hi)])
            print(f"  {lo:6.0f} {hi:6.0f} {s['n']:6d} {s['rmse']:6.1f} {s['bias']:+6.1f} {s['med']:6.1f} "
                  f"{100 * s['tail']:6.2f}")
    return res


def run_picasso_cli(movie_path, cal_path):
    """``python -m picasso localize ... -a lq-3d``; returns the 3D locs (pandas DataFrame) and wall time."""
    import picasso.io as pio

    cmd = [sys.executable, "-m", "picasso", "localize", movie_path, "-a", "lq-3d", "-zc", cal_path, "-mf", "1",
           "-b", str(BOX), "-g", str(int(MIN_NET_GRADIENT)), "-bl", str(int(BASELINE)), "-s", "1", "-ga", "1",
           "-qe", "1", "-px", str(int(PIXELSIZE)), "-d", "0"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"picasso CLI failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    out = os.path.splitext(movie_path)[0] + "_locs.hdf5"
    locs, _ = pio.load_locs(out)
    return locs, dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--spots", type=int, default=20, help="spots per frame")
    ap.add_argument("--photons", type=float, default=2200.0, help="mean photons per spot (log-normal)")
    ap.add_argument("--photon-spread", type=float, default=0.35, help="relative sd of the photons")
    ap.add_argument("--bg", type=float, default=30.0, help="background (photons per pixel)")
    ap.add_argument("--beyond", type=float, default=150.0, help="spots this far past the calibrated range (nm)")
    ap.add_argument("--step", type=float, default=10.0, help="bead stack step (nm)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import picasso.io as pio
    import picasso.localize as ploc
    import picasso.zfit as pz
    import yaml

    tmp = tempfile.mkdtemp(prefix="bench3d-")
    n_stack = 121
    sp = SimulationParameters(n_frames=n_stack, height=128, width=128, photons=20000, bg=20, baseline=BASELINE,
                              seed=args.seed)
    sframes, _ = simulate_bead_stack(sp, n_beads=30, step_nm=args.step, bead_z_offset_sd=20.0)
    half = (n_stack - 1) * args.step / 2
    z_range = (-half, half)
    zr = (-half - args.beyond, half + args.beyond)
    bp = SimulationParameters(n_frames=args.frames, height=128, width=128, spots_per_frame=args.spots,
                              photons=args.photons, photon_spread=args.photon_spread, bg=args.bg,
                              baseline=BASELINE, z_range=zr, seed=args.seed + 1)
    bframes, truth = simulate_frames(bp)
    stack_path = os.path.join(tmp, "stack.ome.tif")
    movie_path = os.path.join(tmp, "movie.ome.tif")
    write_movie(stack_path, [sframes], sframes.shape, sframes.dtype, pixelsize_nm=PIXELSIZE)
    write_movie(movie_path, [bframes], bframes.shape, bframes.dtype, pixelsize_nm=PIXELSIZE)
    ph = truth["photons"]
    print(f"bead stack: {n_stack} frames, step {args.step:g} nm (calibrated range {z_range[0]:g}..{z_range[1]:g} "
          f"nm), 30 beads, 20000 photons; movie: {args.frames} frames 128x128, {args.spots} spots/frame, photons "
          f"log-normal mean {args.photons:g} (10-90 % {np.percentile(ph, 10):.0f}-{np.percentile(ph, 90):.0f}), "
          f"bg {args.bg:g}, z uniform in {zr[0]:g}..{zr[1]:g} nm ({100 * np.mean(np.abs(truth['z']) > half):.0f} % "
          f"beyond the calibration); box {BOX}, min net gradient {MIN_NET_GRADIENT:g}, magnification factor 1")
    bins = np.array([zr[0], -half, -400, -200, 0, 200, 400, half, zr[1]])

    # ---- Picasso: LQ-localized stack -> calibrate_z -> YAML; movie through the CLI (lq-3d)
    cam = {"Baseline": BASELINE, "Sensitivity": 1.0, "Gain": 1.0, "Qe": 1.0, "Pixelsize": PIXELSIZE}
    ident = {"Box Size": BOX, "Min. Net Gradient": MIN_NET_GRADIENT}
    smov, sinfo = pio.load_movie(stack_path)
    slocs, _ = ploc.localize(smov, camera_info=cam, identification_parameters=ident, movie_info=sinfo,
                             fitting_method="gausslq")
    pcal = pz.calibrate_z(slocs, sinfo, args.step, 1.0, path=None)
    cal_path = os.path.join(tmp, "picasso_3d_calib.yaml")
    with open(cal_path, "w") as f:
        yaml.dump({k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in pcal.items()}, f)
    plocs, t_p = run_picasso_cli(movie_path, cal_path)
    results = {"picasso lq-3d (CLI)": summarise(f"picassosr CLI lq-3d [{t_p:.1f} s incl. start-up]",
                                                plocs["z"].to_numpy(), plocs["frame"].to_numpy(),
                                                plocs["x"].to_numpy(), plocs["y"].to_numpy(), truth, z_range,
                                                bins, lpz=plocs["lpz"].to_numpy())}

    # ---- ours
    p = LocalizeParameters(box_size=BOX, min_net_gradient=MIN_NET_GRADIENT, baseline=BASELINE,
                           pixelsize=PIXELSIZE)
    cal = calibrate_z_stack(sframes, p, args.step, 1.0)
    print(f"\nour calibration: {cal.diagnostics['method']}, own z precision "
          f"{cal.diagnostics['z_precision_nm']:.1f} nm")
    variants = [  # (name, 2D fit, z options)
        ("2D mle, z mle (default)", "mle", ZFitOptions()),
        ("2D lq, z mle", "lq", ZFitOptions()),
        ("2D mle, z mle box 9, no neighbours (before)", "mle", ZFitOptions(box_size=BOX, neighbours=False)),
        ("2D mle, z mle box 9", "mle", ZFitOptions(box_size=BOX)),
        ("2D mle, z mle box 11", "mle", ZFitOptions(box_size=BOX + 2)),
        ("2D mle, z mle, max_gof 4", "mle", ZFitOptions(max_gof=4.0)),
        ("2D mle, z mle, drop edge", "mle", ZFitOptions(drop_out_of_range=True)),
        ("2D mle, z huang", "mle", ZFitOptions(method="huang")),
        ("2D lq, z huang", "lq", ZFitOptions(method="huang")),
    ]
    for name, fit2d, opt in variants:
        p2 = p.replace(fit_method=fit2d)
        localize(bframes[:2], p2, calibration=cal, z_options=opt)  # JIT warm-up
        t = time.perf_counter()
        locs = localize(bframes, p2, calibration=cal, z_options=opt).locs
        dt = time.perf_counter() - t
        key = f"ours {name}"
        results[key] = summarise(f"napari-localize {key} [{dt:.1f} s]", locs["z"], locs["frame"], locs["x"],
                                 locs["y"], truth, z_range, bins, lpz=locs["lpz"])
    ref = results["picasso lq-3d (CLI)"]
    print("\nsummary (RMSE, median |e| in nm; tail = |e| > 100 nm; ratio = RMSE / picassosr's):")
    print(f"  {'':52s} {'all: RMSE':>9s} {'ratio':>5s} {'med':>5s} {'tail%':>6s} | "
          f"{'inside: RMSE':>12s} {'ratio':>5s} {'tail%':>6s} | Jaccard | RMSE/lpz")
    for k, r in results.items():
        a, i = r["all"], r["inside"]
        print(f"  {k:52s} {a['rmse']:9.1f} {a['rmse'] / ref['all']['rmse']:5.2f} {a['med']:5.1f} "
              f"{100 * a['tail']:6.2f} | {i['rmse']:12.1f} {i['rmse'] / ref['inside']['rmse']:5.2f} "
              f"{100 * i['tail']:6.2f} | {r['jaccard']:.3f}   | {r['crlb_ratio']:.2f}")


if __name__ == "__main__":
    main()
