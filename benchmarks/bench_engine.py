"""Fit-engine speed and first-run compile time, this tree against another checkout, in one run.

Simulates boxes once (Gaussian 2D: ``--n2d`` boxes of 7x7 px, 2000 photons, bg 20, sigma 1 px; astigmatic z:
``--n2d / 5`` boxes of 11x11 px over +-400 nm; two emitters 2 px apart in 9x9 px boxes: ``--n2d / 5``), then,
in a fresh process per tree and alternating between the trees, fits every set with ``core.engine.fit_boxes``
for each (model, noise) case: Gaussian MLE and LQ, astigmatic z MLE, multi-emitter (K = 2) MLE.

Per case it reports the **first calls** (8 and 1024 boxes: numba compile or cache load; round 1 runs in a fresh
``NUMBA_CACHE_DIR``, so it is the first-run compile of that case) in wall and CPU seconds, and **fits per
CPU-second on one thread** (``NUMBA_NUM_THREADS=1``, best of ``--repeats``; CPU time, so other load on the
machine moves it less than wall time). It also checks that both trees return the same results (a checksum of
the converged parameters).

    python benchmarks/bench_engine.py --other /path/to/other/checkout [--n2d 50000] [--repeats 3] [--rounds 2]
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
CASES = ("gauss_mle", "gauss_lq", "astig_z_mle", "multi2_mle")

CHILD = r"""
import json, sys, time
import numpy as np
from napari_localize.core import engine as E
d = np.load(sys.argv[1])
reps = int(sys.argv[2])
aux_z = E.astig_aux(d["cx"], d["cy"])
cases = {
    "gauss_mle": (d["g2"], dict(model=E.MODEL_GAUSS, noise=E.NOISE_POISSON)),
    "gauss_lq": (d["g2"], dict(model=E.MODEL_GAUSS, noise=E.NOISE_LSQ)),
    "astig_z_mle": (d["gz"], dict(model=E.MODEL_ASTIG_Z, noise=E.NOISE_POISSON, aux=aux_z, theta0=d["t0z"])),
    "multi2_mle": (d["gm"], dict(model=E.MODEL_MULTI, noise=E.NOISE_POISSON, aux=np.array([2.0]),
                                 theta0=d["t0m"])),
}
out = {}
for name, (s, kw) in cases.items():
    t, c = time.perf_counter(), time.process_time()
    for m in (8, 1024):  # a small and a large batch: every driver a run uses (serial / parallel before)
        E.fit_boxes(s[:m], **{k: (v[:m] if k == "theta0" else v) for k, v in kw.items()})
    first, first_cpu = time.perf_counter() - t, time.process_time() - c
    best = 1e9
    for _ in range(reps):
        c = time.process_time()
        r = E.fit_boxes(s, **kw)
        best = min(best, time.process_time() - c)
    ok = r.converged
    out[name] = dict(first_s=first, first_cpu_s=first_cpu, fits_per_cpu_s=len(s) / best,
                     iterations=float(r.iterations.mean()), converged=float(ok.mean()),
                     checksum=float(np.sum(r.theta[ok])))
print("RESULT " + json.dumps(out))
"""


def _integrated(c, s, k):
    from scipy.special import erf

    return 0.5 * (erf((k + 0.5 - c) / (np.sqrt(2) * s)) - erf((k - 0.5 - c) / (np.sqrt(2) * s)))


def _spots(rng, box, emitters, sx, sy, bg):
    k = np.arange(box)[None]
    n = len(sx)
    mu = np.full((n, box, box), float(bg))
    for x, y, N in emitters:
        mu += N[:, None, None] * _integrated(y[:, None], sy[:, None], k)[:, :, None] * _integrated(
            x[:, None], sx[:, None], k)[:, None, :]
    return rng.poisson(mu).astype(np.float32)


def simulate(n2d, path):
    sys.path.insert(0, str(ROOT))
    from napari_localize.core.simulate import astigmatic_widths

    rng = np.random.default_rng(0)
    one = np.ones(n2d)
    c = 3 + rng.uniform(-0.5, 0.5, (2, n2d))
    g2 = _spots(rng, 7, [(c[0], c[1], 2000 * one)], one, one, 20)
    nz = max(1, n2d // 5)
    zg = np.linspace(-600, 600, 121)
    wx, wy = astigmatic_widths(zg, 1.2, 300.0, 400.0)
    cx, cy = np.polyfit(zg, wx, 6), np.polyfit(zg, wy, 6)
    z = rng.uniform(-400, 400, nz)
    xz, yz = 5 + rng.uniform(-0.5, 0.5, (2, nz))
    gz = _spots(rng, 11, [(xz, yz, np.full(nz, 3000.0))], np.polyval(cx, z), np.polyval(cy, z), 20)
    t0z = np.column_stack([xz + rng.normal(0, 0.1, nz), yz + rng.normal(0, 0.1, nz), np.full(nz, 2500.0),
                           np.full(nz, 18.0), z + rng.normal(0, 50, nz)])
    om = np.ones(nz)
    a = 4 + rng.uniform(-0.5, 0.5, (2, nz))
    gm = _spots(rng, 9, [(a[0] - 1, a[1], 1500 * om), (a[0] + 1, a[1], 1500 * om)], om, om, 20)
    t0m = np.column_stack([a[0] - 1 + rng.normal(0, 0.1, nz), a[1], 1400 * om, 18 * om, om, om,
                           a[0] + 1 + rng.normal(0, 0.1, nz), a[1], 1400 * om])
    np.savez(path, g2=g2, gz=gz, t0z=t0z, cx=cx, cy=cy, gm=gm, t0m=t0m)


def run_tree(tree, data, repeats, cache_dir):
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_NUM_THREADS="1", NUMBA_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", CHILD, data, str(repeats)], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads([s for s in r.stdout.splitlines() if s.startswith("RESULT ")][-1][7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="checkout to compare with (its repository root)")
    ap.add_argument("--n2d", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two trees (round 1: fresh cache)")
    a = ap.parse_args()
    trees = {"ours": ROOT, "other": Path(a.other)}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "boxes.npz")
        simulate(a.n2d, data)
        rows = {k: [] for k in trees}
        for _ in range(a.rounds):
            for name, tree in (("other", trees["other"]), ("ours", trees["ours"])):
                rows[name].append(run_tree(tree, data, a.repeats, Path(tmp) / f"numba-{name}"))
    print(f"{a.n2d} Gaussian boxes 7x7, {a.n2d // 5} z boxes 11x11, {a.n2d // 5} two-emitter boxes 9x9; one "
          f"thread; best of {a.repeats} x {a.rounds} rounds; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'case':12s} {'fits/CPU-s ours':>16s} {'other':>9s} {'ratio':>6s}   first call (compile) ours / other "
          f"[wall, CPU s]   same results")
    for key in CASES:
        o = max(r[key]["fits_per_cpu_s"] for r in rows["ours"])
        t = max(r[key]["fits_per_cpu_s"] for r in rows["other"])
        fo, ft = rows["ours"][0][key], rows["other"][0][key]
        same = all(r[key]["checksum"] == rows["other"][0][key]["checksum"] for r in rows["ours"])
        print(f"{key:12s} {o:16.0f} {t:9.0f} {o / t:6.2f}   {fo['first_s']:5.1f}, {fo['first_cpu_s']:5.1f} / "
              f"{ft['first_s']:5.1f}, {ft['first_cpu_s']:5.1f}   {same}")


if __name__ == "__main__":
    main()
