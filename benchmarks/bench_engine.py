"""Fit-engine speed, this tree against another checkout (e.g. main before the engine) in one run.

Simulates boxes once (2D: ``--n2d`` boxes of 7x7 px, 2000 photons, bg 20, sigma 1 px; 3D: ``--nz`` astigmatic
boxes of 11x11 px over +-400 nm), then times, in a fresh process per tree and alternating between the trees,
the 2D MLE and LQ fits (``core.psf.fit_spots``) and the astigmatic z MLE (``core.zfit.fit_z_mle``), each after a
warm-up call (numba compile / cache load), best of ``--repeats``. Prints seconds and the ratio ours / other.

    python benchmarks/bench_engine.py --other /work/main [--n2d 200000] [--nz 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import numpy as np
from napari_localize.core import psf
from napari_localize.core.zfit import ZCalibration, fit_z_mle
d = np.load(sys.argv[1])
s2, sz = d["s2"], d["sz"]
cal = ZCalibration(d["cx"], d["cy"], 121, 10.0)
t0 = d["t0"]
out = {}
def best(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)
reps = int(sys.argv[2])
out["mle"] = best(lambda: psf.fit_spots(s2, psf.MODE_POISSON, 1e-3, 100), reps)
out["lq"] = best(lambda: psf.fit_spots(s2, psf.MODE_LSQ, 1e-3, 100), reps)
out["z_mle"] = best(lambda: fit_z_mle(sz, t0[:, 0], t0[:, 1], t0[:, 2], t0[:, 3], t0[:, 4], cal,
                                      z_bounds=(-600.0, 600.0)), reps)
th, _, ok, _ = fit_z_mle(sz, t0[:, 0], t0[:, 1], t0[:, 2], t0[:, 3], t0[:, 4], cal, z_bounds=(-600.0, 600.0))
out["z_rmse_nm"] = float(np.sqrt(np.mean((th[ok, 4] - d["z"][ok]) ** 2)))
out["z_converged"] = float(ok.mean())
print("RESULT " + json.dumps(out))
"""


def simulate(n2d, nz, path):
    sys.path.insert(0, str(ROOT))
    from napari_localize.core.engine.pixels import add_gaussian
    from napari_localize.core.simulate import astigmatic_widths, simulate_spots

    s2, _, _ = simulate_spots(n2d, 2000.0, 20.0, 1.0, 7, seed=1)
    zg = np.linspace(-600, 600, 121)
    wx, wy = astigmatic_widths(zg, 1.2, 300.0, 400.0)
    cx, cy = np.polyfit(zg, wx, 6), np.polyfit(zg, wy, 6)
    rng = np.random.default_rng(2)
    box = 11
    z = rng.uniform(-400, 400, nz)
    x = 5 + rng.uniform(-0.5, 0.5, nz)
    y = 5 + rng.uniform(-0.5, 0.5, nz)
    mu = np.full((nz, box, box), 20.0)
    ex, ey = np.empty(box), np.empty(box)
    for i in range(nz):
        add_gaussian(mu[i], x[i], y[i], 3000.0, np.polyval(cx, z[i]), np.polyval(cy, z[i]), 0, box, 0, box, ex, ey)
    sz = rng.poisson(mu).astype(np.float32)
    t0 = np.column_stack([x + rng.normal(0, 0.1, nz), y + rng.normal(0, 0.1, nz), np.full(nz, 2500.0),
                          np.full(nz, 18.0), z + rng.normal(0, 50, nz)])
    np.savez(path, s2=s2, sz=sz, cx=cx, cy=cy, t0=t0, z=z)


def run_tree(tree, data, repeats):
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, "-c", CHILD, data, str(repeats)], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads([s for s in r.stdout.splitlines() if s.startswith("RESULT ")][-1][7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="checkout to compare with (its repository root)")
    ap.add_argument("--n2d", type=int, default=200_000)
    ap.add_argument("--nz", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two trees")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "boxes.npz")
        simulate(a.n2d, a.nz, data)
        rows = {"ours": [], "other": []}
        for _ in range(a.rounds):
            rows["other"].append(run_tree(a.other, data, a.repeats))
            rows["ours"].append(run_tree(ROOT, data, a.repeats))
    print(f"{a.n2d} 2D boxes 7x7, {a.nz} z boxes 11x11, best of {a.repeats} x {a.rounds} rounds, "
          f"{os.cpu_count()} cores")
    for key in ("mle", "lq", "z_mle"):
        o = min(r[key] for r in rows["ours"])
        t = min(r[key] for r in rows["other"])
        print(f"{key:6s} ours {o:8.3f} s   other {t:8.3f} s   ours/other {o / t:5.2f}")
    for key in ("z_rmse_nm", "z_converged"):
        print(f"{key}: ours {rows['ours'][0][key]:.4f}  other {rows['other'][0][key]:.4f}")


if __name__ == "__main__":
    main()
