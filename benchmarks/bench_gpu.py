"""CPU engine vs CUDA engine on the same simulated spots: fits per second and agreement.

Simulates ``--n`` isolated spots (default 200 000 boxes of 7x7 px, 2000 photons, bg 20 photons/px, sigma 1 px,
positions uniform within +-0.5 px of the centre), fits them with the CPU engine (numba, every core) and the
CUDA engine (one GPU thread per spot), for MLE and LQ, and prints for each: fits/s, the GPU/CPU speed ratio,
the largest |difference| of the fitted positions between the engines, and whether the convergence flags agree.
The CUDA kernel's compile time (first call, on 1000 spots) is reported apart from the timed call.

    python benchmarks/bench_gpu.py [--n 200000] [--box 7] [--photons 2000] [--movie 8000]

``--movie FRAMES`` then runs the whole pipeline end to end on a simulated movie of FRAMES frames of 256x256 px
(55 spots per frame, as ``bench_speed.py``): ``napari-localize localize`` with ``--device cpu`` and with
``--device cuda`` (MLE and LQ, the crowded-fields default), each run's wall time and time split, and the
largest difference between the two tables' positions (0 frames: skip it).

Needs a CUDA GPU that numba can use (``pip install 'napari-localize[gpu]'``); without one it says so and
exits with status 2. ``--ptx-only`` compiles the kernel to PTX for a compute capability without a GPU (it
needs only the CUDA toolkit's NVVM) and prints the PTX size, as a check that the kernel compiles at all.
Takes well under a minute on a 16-core machine with an H100.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy.special import erf

from napari_localize.core import psf
from napari_localize.core.device import MAX_BOX, cuda_status


def simulate(n, box, photons, bg, sigma, seed=0):
    """Poisson spots of the pixel-integrated Gaussian, vectorised (independent of the fit code)."""
    rng = np.random.default_rng(seed)
    r = box // 2
    x = r + rng.uniform(-0.5, 0.5, n)
    y = r + rng.uniform(-0.5, 0.5, n)
    edges = np.arange(box + 1) - 0.5
    s = np.sqrt(2.0) * sigma
    ex = 0.5 * np.diff(erf((edges[None, :] - x[:, None]) / s), axis=1)
    ey = 0.5 * np.diff(erf((edges[None, :] - y[:, None]) / s), axis=1)
    mu = photons * ey[:, :, None] * ex[:, None, :] + bg
    return rng.poisson(mu).astype(np.float32), x, y


def ptx_only(cc):
    """Compile the kernel to PTX for compute capability ``cc`` without a GPU."""
    import types

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    # device functions ask the current device for its compute capability; answer for the target instead
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    from napari_localize.core import fit_cuda

    sig = ("void(int64, int64, float32[:, ::1], float64[:, ::1], float64[:, ::1], int64, float64[::1], "
           "float64[::1], float64[::1], boolean, float64, int64, boolean, float64[:, ::1], float64[:, ::1], "
           "float64[::1], int64[::1], uint8[::1], float64[::1])")
    t = time.perf_counter()
    ptx, _ = cuda.compile_ptx(fit_cuda.fit_kernel.py_func, sig, cc=cc)
    local = [line.strip() for line in ptx.splitlines() if "__local_depot" in line and ".b8" in line]
    print(f"kernel compiled to PTX for sm_{cc[0]}{cc[1]} in {time.perf_counter() - t:.1f} s: {len(ptx)} chars, "
          f"{local[0] if local else 'no local arrays'}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="spots (default 200000)")
    ap.add_argument("--box", type=int, default=7, help=f"box side in pixels, odd, at most {MAX_BOX} (default 7)")
    ap.add_argument("--photons", type=float, default=2000.0, help="photons per spot (default 2000)")
    ap.add_argument("--bg", type=float, default=20.0, help="background photons per pixel (default 20)")
    ap.add_argument("--ptx-only", metavar="CC", help="only compile to PTX for compute capability CC, e.g. 9.0")
    ap.add_argument("--movie", type=int, default=0, metavar="FRAMES",
                    help="also the end-to-end run of a simulated movie of FRAMES frames of 256x256 (default 0: skip)")
    args = ap.parse_args(argv)
    if args.ptx_only:
        major, minor = (int(v) for v in args.ptx_only.split("."))
        return ptx_only((major, minor))
    ok, why = cuda_status()
    if not ok:
        print(f"bench_gpu: no CUDA GPU usable here ({why}); nothing to compare. Run it on a machine with an "
              "NVIDIA GPU and numba-cuda installed (pip install 'napari-localize[gpu]').", file=sys.stderr)
        return 2
    if args.box > MAX_BOX:
        print(f"bench_gpu: --box must be at most {MAX_BOX}", file=sys.stderr)
        return 2

    import numba
    from numba import cuda
    from numba.core import config

    from napari_localize.core import fit_cuda

    if config.ENABLE_CUDASIM:
        gpu = "numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): timings mean nothing"
    else:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        gpu = f"{name}, compute capability {device.compute_capability}"
    print(f"GPU: {gpu}; CPU threads: {numba.config.NUMBA_NUM_THREADS}")
    t = time.perf_counter()
    spots, x, y = simulate(args.n, args.box, args.photons, args.bg, 1.0)
    print(f"{args.n} spots of {args.box}x{args.box} px, {args.photons:g} photons, bg {args.bg:g}: "
          f"simulated in {time.perf_counter() - t:.1f} s")
    warm = spots[:1000]
    for name, mode in (("mle", psf.MODE_POISSON), ("lq", psf.MODE_LSQ)):
        psf.fit_spots(warm, mode, 1e-3, 100)  # numba CPU compile / cache load
        t = time.perf_counter()
        fit_cuda.fit_spots(warm, mode, 1e-3, 100)
        compile_s = time.perf_counter() - t

        t = time.perf_counter()
        cpu = psf.fit_spots(spots, mode, 1e-3, 100)
        cpu_s = time.perf_counter() - t
        t = time.perf_counter()
        gpu = fit_cuda.fit_spots(spots, mode, 1e-3, 100)
        gpu_s = time.perf_counter() - t

        both = cpu[4] & gpu[4]
        dpos = np.abs(gpu[0][both, :2] - cpu[0][both, :2])
        rmse = np.sqrt(np.mean((gpu[0][gpu[4], 0] - x[gpu[4]]) ** 2))
        print(f"{name}: CPU {args.n / cpu_s:,.0f} fits/s ({cpu_s:.2f} s) | CUDA {args.n / gpu_s:,.0f} fits/s "
              f"({gpu_s:.2f} s, first call with compile {compile_s:.1f} s) | ratio {cpu_s / gpu_s:.1f}x")
        print(f"    max |position difference| {dpos.max() if dpos.size else float('nan'):.2e} px; "
              f"converged CPU {cpu[4].mean():.4f}, CUDA {gpu[4].mean():.4f}, flags differ in "
              f"{int((cpu[4] != gpu[4]).sum())} spots; mean iterations CPU {cpu[3].mean():.2f}, "
              f"CUDA {gpu[3].mean():.2f}; CUDA x RMSE vs truth {rmse:.4f} px")
    if args.movie > 0:
        end_to_end(args.movie)
    return 0


def end_to_end(frames: int) -> None:
    """``localize`` of one simulated movie with each engine (see the module docstring)."""
    import os
    import re
    import subprocess
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as work:
        movie = os.path.join(work, "m.ome.tif")
        cli = [sys.executable, "-m", "napari_localize.cli"]
        t = time.perf_counter()
        subprocess.run([*cli, "simulate", movie, "--frames", str(frames), "--height", "256", "--width", "256",
                        "--spots-per-frame", "55", "--poisson-count", "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
        gb = os.path.getsize(movie) / 1e9
        print(f"\nend to end: {frames} frames of 256x256 ({gb:.2f} GB) simulated in {time.perf_counter() - t:.0f} s")
        for method in ("mle", "lq"):
            tables = {}
            for device in ("cpu", "cuda", "cpu", "cuda"):  # the first pair fills the caches, the second is timed
                suffix = f"_{method}_{device}"
                t = time.perf_counter()
                done = subprocess.run([*cli, "localize", movie, "--baseline", "100", "--min-net-gradient", "1200",
                                       "--fit-method", method, "--device", device, "--suffix", suffix],
                                      capture_output=True, text=True)
                wall = time.perf_counter() - t
                if done.returncode != 0:
                    print(f"  {method} {device}: failed: {done.stderr.strip()[-500:]}")
                    break
                split = re.search(r"\[read.*\]", done.stdout)
                with h5py.File(os.path.join(work, f"m.ome{suffix}_locs.hdf5")) as f:
                    tables[device] = f["locs"][:]
                print(f"  {method} --device {device}: {wall:.2f} s wall, {len(tables[device])} locs "
                      f"{split.group(0) if split else ''}")
            if len(tables) == 2 and len(tables["cpu"]) == len(tables["cuda"]):
                d = max(float(np.max(np.abs(tables["cpu"][k] - tables["cuda"][k]))) for k in ("x", "y"))
                print(f"  {method}: largest |position difference| between the engines {d:.2e} px")
            elif len(tables) == 2:
                print(f"  {method}: the engines found {len(tables['cpu'])} vs {len(tables['cuda'])} localizations")


if __name__ == "__main__":
    sys.exit(main())
