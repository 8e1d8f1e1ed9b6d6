"""Identification with and without the prefilters (temporal median, Gaussian) on simulated movies with
ground truth: best Jaccard index over a sweep of minimum net gradients (the threshold must be re-tuned
when a prefilter is on, so each side gets its best), and the prefilter's throughput.

    python benchmarks/bench_prefilter.py
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from napari_localize.core.prefilter import Prefilter, iter_prefiltered  # noqa: E402
from napari_localize.core.simulate import SimulationParameters, expected_image, simulate_frames  # noqa: E402
from tests.test_prefilter import best_jaccard  # noqa: E402


def debris_movie(n_frames=200):
    p = SimulationParameters(n_frames=n_frames, height=64, width=64, spots_per_frame=6, photons=1500, bg=10,
                             baseline=100, seed=4)
    frames, truth = simulate_frames(p)
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:64, 0:64]
    static = 40.0 * np.exp(-((xx - 10) ** 2 + (yy - 50) ** 2) / (2 * 20.0 ** 2))
    static += expected_image(64, 64, rng.uniform(5, 59, 12), rng.uniform(5, 59, 12), np.full(12, 2500.0),
                             1.3, 1.3, 0.0)
    return frames.astype(np.float32) + rng.poisson(static, frames.shape).astype(np.float32), truth


def main():
    movie, truth = debris_movie()
    th = [300, 500, 800, 1200, 1800, 2500, 3500]
    raw = best_jaccard(movie, truth, th)
    t = time.perf_counter()
    filt = np.concatenate([f for *_, f in iter_prefiltered(movie, Prefilter(temporal_median=41), chunk_frames=25)])
    dt = time.perf_counter() - t
    print(f"static debris + uneven illumination, 200 frames 64x64: best Jaccard raw {raw:.3f}, "
          f"temporal median 41 {best_jaccard(filt, truth, th):.3f} ({len(movie) / dt:.0f} frames/s)")
    p = SimulationParameters(n_frames=100, height=64, width=64, spots_per_frame=6, photons=150, bg=40,
                             baseline=100, seed=5)
    frames, truth = simulate_frames(p)
    th = [20, 30, 40, 60, 80, 100, 130, 160, 200, 260, 330, 420, 550]
    raw = best_jaccard(frames, truth, th)
    t = time.perf_counter()
    sm = np.concatenate([f for *_, f in iter_prefiltered(frames, Prefilter(gaussian_sigma=1.0))])
    dt = time.perf_counter() - t
    print(f"dim spots (150 photons, bg 40), 100 frames 64x64: best Jaccard raw {raw:.3f}, Gaussian sigma 1 "
          f"{best_jaccard(sm, truth, th):.3f} ({len(frames) / dt:.0f} frames/s)")
    big = np.random.default_rng(0).poisson(100, (400, 256, 256)).astype(np.uint16)
    t = time.perf_counter()
    for _ in iter_prefiltered(big, Prefilter(temporal_median=100), chunk_frames=64):
        pass
    dt = time.perf_counter() - t
    print(f"temporal median 100 on 400 frames 256x256 uint16: {len(big) / dt:.0f} frames/s")


if __name__ == "__main__":
    main()
