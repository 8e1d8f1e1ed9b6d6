"""sCMOS side by side: napari-localize and picassosr 0.11.3, each calibrating the same simulated camera.

One simulated sCMOS chip (per-pixel offset, gain spread, log-normal read-noise variance, 2-3 % hot pixels):

1. a dark movie and three flat fields; ``napari-localize camera-calibrate`` and ``picasso camera-calibrate``
   each make their calibration from them;
2. blinking movies of isolated spots (400 and 800 photons, bg 10 photons/px) read by the same chip;
3. localized by ``napari-localize localize --camera-calibration OURS`` (variance-aware identification,
   sCMOS MLE), by ``napari-localize localize`` with the scalar median baseline/sensitivity (no model), and by
   ``picasso localize -cm THEIRS -a mle``, all with the same box and net-gradient threshold.

Printed per photon level: Jaccard, false positives on hot pixels (unmatched localizations within one pixel of a
true hot pixel), RMSE of x and y on matched spots, the sCMOS Cramér-Rao bound at the true parameters
(Huang et al. 2013: Poisson with per-pixel ``var/g²`` added to mean), wall time (warm numba cache) and peak
memory, and the throughput of the sCMOS path relative to the scalar path.

    python benchmarks/bench_scmos.py [--frames 500] [--workdir DIR]
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, env=None, cwd=None):
    """Run a command; (wall seconds, peak RSS MiB, output)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out = proc.stdout.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def ours(*args):
    return [sys.executable, "-m", "napari_localize.cli", *args]


def picasso(*args):
    return [sys.executable, "-m", "picasso", *args]


def env_ours():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def env_picasso():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# ------------------------------------------------------------------------------------------------ evaluation
def crlb_scmos_xy(truth, variance_e, box=7):
    """Mean Cramér-Rao bound (pixels, x and y) of the free-width Gaussian fit at the true parameters, with each
    box's per-pixel readout variance (photoelectrons²), from the engine's sCMOS Fisher information."""
    from napari_localize.core.engine import MODEL_GAUSS, NOISE_SCMOS, curvature

    r = box // 2
    h, w = variance_e.shape
    vx, vy = [], []
    for t in truth:
        cy, cx = int(round(float(t["y"]))), int(round(float(t["x"])))
        if not (r <= cy < h - r and r <= cx < w - r):
            continue
        v = variance_e[cy - r:cy + r + 1, cx - r:cx + r + 1]
        theta = [r + t["x"] - cx, r + t["y"] - cy, t["photons"], t["bg"], t["sx"], t["sy"]]
        c = np.linalg.inv(curvature(theta, box, MODEL_GAUSS, NOISE_SCMOS, variance=v))
        vx.append(c[0, 0])
        vy.append(c[1, 1])
    return float(np.sqrt(np.mean(vx))), float(np.sqrt(np.mean(vy)))


def score(truth, locs, hot):
    """Jaccard (Hungarian matching within 1 px per frame), FPs on hot pixels, RMSE of matched x and y."""
    from napari_localize.core.evaluate import match

    m = match(truth, locs, 1.0)
    unmatched = np.ones(len(locs), bool)
    unmatched[m.locs_index] = False
    fp_hot = 0
    h, w = hot.shape
    for j in np.nonzero(unmatched)[0]:
        y, x = int(round(float(locs["y"][j]))), int(round(float(locs["x"][j])))
        fp_hot += bool(hot[max(y - 1, 0):min(y + 2, h), max(x - 1, 0):min(x + 2, w)].any())
    ex = locs["x"][m.locs_index] - truth["x"][m.truth_index]
    ey = locs["y"][m.locs_index] - truth["y"][m.truth_index]
    return {"jaccard": m.jaccard, "tp": m.true_positives, "fp": m.false_positives, "fn": m.false_negatives,
            "fp_hot": fp_hot, "rmse_x": float(np.sqrt(np.mean(ex**2))), "rmse_y": float(np.sqrt(np.mean(ey**2)))}


def in_process_times(frames, threshold, calibration_path, cam):
    """Best-of-3 wall time of the run on frames in memory, with the sCMOS maps and with the scalar conversion."""
    from napari_localize.api import camera_maps
    from napari_localize.core.parameters import LocalizeParameters
    from napari_localize.core.pipeline import localize

    p = LocalizeParameters(box_size=7, min_net_gradient=threshold, fit_method="mle",
                           baseline=round(float(np.median(cam.offset))), sensitivity=1 / float(np.median(cam.gain)))
    maps = camera_maps(calibration_path, frames, p)
    localize(frames[:20], p, camera=maps)
    localize(frames[:20], p)
    best = {True: np.inf, False: np.inf}
    for _ in range(3):
        for use in (True, False):
            t = time.perf_counter()
            localize(frames, p, camera=maps if use else None)
            best[use] = min(best[use], time.perf_counter() - t)
    return best[True], best[False]


def load(path):
    import h5py

    with h5py.File(path) as f:
        return f["locs"][()]


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500, help="frames per blinking movie (default 500)")
    ap.add_argument("--size", type=int, default=128, help="chip side, pixels (default 128)")
    ap.add_argument("--spots", type=float, default=12, help="spots per frame (default 12)")
    ap.add_argument("--photons", type=float, nargs="+", default=[400.0, 800.0])
    ap.add_argument("--hot", type=float, default=0.03, help="hot-pixel fraction (default 0.03)")
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    sys.path.insert(0, ROOT)
    from napari_localize.cli import suggested_min_net_gradient
    from napari_localize.core.camera import readout_variance_photons
    from napari_localize.core.simulate import SimulationParameters
    from napari_localize.core.simulate_scmos import SCMOSCamera, SCMOSModel, flat_field, simulate_scmos_movie
    from napari_localize.io.movies.write import write_movie

    work = args.workdir or tempfile.mkdtemp(prefix="bench_scmos_")
    os.makedirs(work, exist_ok=True)
    n = args.size
    model = SCMOSModel(chip_height=n, chip_width=n, hot_fraction=args.hot, seed=21)
    cam = SCMOSCamera(model)
    print(f"# sCMOS benchmark on {platform.node()} ({os.cpu_count()} cores, shared: timings are noisy), "
          f"{n}x{n} chip, {int(cam.hot.sum())} hot pixels ({100 * cam.hot.mean():.1f} %), gain {model.gain} "
          f"ADU/e-, read noise {model.read_noise} e- median")

    # calibration movies
    dark = os.path.join(work, "dark.ome.tif")
    write_movie(dark, (cam.frames(1000, 0.0, 1, a, a + 250) for a in range(0, 1000, 250)), (1000, n, n), "uint16")
    lights = []
    for i, lv in enumerate((30.0, 90.0, 250.0)):
        path = os.path.join(work, f"flat{i}.ome.tif")
        write_movie(path, [cam.frames(400, flat_field((n, n), lv), 10 + i)], (400, n, n), "uint16")
        lights.append(path)
    t_ours, _, _ = run(ours("camera-calibrate", dark, *sum((["--light", p] for p in lights), []), "--output",
                            os.path.join(work, "ours_calib.hdf5")), env_ours())
    t_pic, _, _ = run(picasso("camera-calibrate", dark, *sum((["-l", p] for p in lights), []), "-o",
                              os.path.join(work, "picasso_calib.hdf5")), env_picasso(), cwd=work)
    print(f"camera-calibrate (1000 dark + 3x400 light frames): napari-localize {t_ours:.1f} s, picasso {t_pic:.1f} s")

    var_e_true = readout_variance_photons(cam.variance, 1.0 / cam.gain)
    rows = []
    # each photon level with its own threshold, then one movie mixing 400-800 photons (log-normal around 600,
    # relative sd 0.2) with the threshold a user needs for its dimmest, 400-photon spots
    levels = [(ph, 0.0, ph) for ph in args.photons] + [(600.0, 0.2, 400.0)]
    for photons, spread, threshold_photons in levels:
        p = SimulationParameters(n_frames=args.frames, height=n, width=n, spots_per_frame=args.spots,
                                 photons=photons, photon_spread=spread, bg=10.0, sigma=1.0,
                                 seed=int(photons) + int(100 * spread), min_separation=9, margin=5)
        frames, truth = simulate_scmos_movie(p, model)
        label = f"{photons:.0f}" if spread == 0 else f"{photons:.0f}x{spread:g}"
        movie = os.path.join(work, f"blink{label}.ome.tif")
        write_movie(movie, [frames], frames.shape, frames.dtype)
        q = SimulationParameters(**{**p.as_dict(), "sensitivity": 1.0 / model.gain, "photons": threshold_photons})
        threshold = float(round(suggested_min_net_gradient(q)))  # Picasso takes an integer
        scalar = ["--baseline", f"{round(float(np.median(cam.offset)))}", "--sensitivity", f"{1 / np.median(cam.gain):.5f}"]
        common = ["--box-size", "7", "--min-net-gradient", f"{threshold:.1f}", "--fit-method", "mle"]
        runs = {
            "napari-localize sCMOS": ours("localize", movie, *common, *scalar, "--camera-calibration",
                                          os.path.join(work, "ours_calib.hdf5"), "--suffix", "_scmos"),
            "napari-localize scalar": ours("localize", movie, *common, *scalar, "--suffix", "_scalar"),
        }
        result = {}
        for name, cmd in runs.items():
            run(cmd, env_ours())  # warm the numba cache
            wall, rss, _ = run(cmd, env_ours())
            suffix = "_scmos" if "sCMOS" in name else "_scalar"
            result[name] = (load(os.path.splitext(movie)[0] + suffix + "_locs.hdf5"), wall, rss)
        cmd = picasso("localize", movie, "-b", "7", "-g", f"{threshold:.0f}", "-a", "mle", "-bl",
                      f"{round(float(np.median(cam.offset)))}", "-s", f"{1 / np.median(cam.gain):.5f}", "-ga", "1",
                      "-cm", os.path.join(work, "picasso_calib.hdf5"), "-sf", "_picasso", "-d", "0")
        wall, rss, _ = run(cmd, env_picasso(), cwd=work)
        base = os.path.splitext(movie)[0]
        pic_path = base + "_picasso_locs.hdf5"
        result["picasso 0.11.3 -cm"] = (load(pic_path), wall, rss)
        cx, cy = crlb_scmos_xy(truth, var_e_true)
        what = (f"{photons:.0f} photons" if spread == 0 else
                f"{photons:.0f} photons, log-normal relative sd {spread:g} (5-95 %: "
                f"{np.percentile(truth['photons'], 5):.0f}-{np.percentile(truth['photons'], 95):.0f})")
        print(f"\n## {what}, bg 10/px, {len(truth)} spots in {p.n_frames} frames, threshold "
              f"{threshold:.0f}; sCMOS CRLB (true maps, free-width fit) x {cx:.4f} px, y {cy:.4f} px")
        print("| run | Jaccard | FP | FP on hot pixels | RMSE x (px) | RMSE y (px) | RMSE/CRLB x | RMSE/CRLB y | "
              "wall (s) | peak RSS (MiB) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, (locs, wall, rss) in result.items():
            s = score(truth, locs, cam.hot)
            rows.append((label, name, s, wall))
            print(f"| {name} | {s['jaccard']:.4f} | {s['fp']} | {s['fp_hot']} | {s['rmse_x']:.4f} | "
                  f"{s['rmse_y']:.4f} | {s['rmse_x'] / cx:.3f} | {s['rmse_y'] / cy:.3f} | {wall:.1f} | {rss:.0f} |")
        ws = result["napari-localize sCMOS"][1]
        wl = result["napari-localize scalar"][1]
        print(f"throughput sCMOS / scalar path (whole CLI run, warm): {wl / ws:.2f} (wall {ws:.1f} vs {wl:.1f} s)")
        ts, tl = in_process_times(frames, threshold, os.path.join(work, "ours_calib.hdf5"), cam)
        print(f"throughput sCMOS / scalar path (in-process localize of the frames in memory, best of 3): "
              f"{tl / ts:.2f} ({len(frames) / ts:.0f} vs {len(frames) / tl:.0f} frames/s)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
