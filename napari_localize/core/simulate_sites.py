"""DNA-PAINT binding sites with a known drift, simulated straight as localizations (no movie).

For drift correction tests and benchmarks: fixed sites, each blinking with two-state kinetics (exponential
bright and dark times, in frames), a smooth sample drift, and a Gaussian localization error per localization,
set by its photon count (``lp = sigma_psf / sqrt(photons)``, the shot-noise limit; the simulated ``lpx``/``lpy``
are the true standard deviations of the error). The table has Picasso's LQ columns, so it can be written as a
``_locs.hdf5`` and opened by Picasso.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .locs import ellipticity, locs_dtype


@dataclass
class SiteSimulation:
    """What to simulate. Positions in camera pixels, times in frames."""

    n_frames: int = 10000
    height: int = 64
    width: int = 64
    n_sites: int = 500
    #: mean bright (bound) time and mean dark time, frames
    bright_frames: float = 3.0
    dark_frames: float = 300.0
    #: mean photons per localization (exponentially distributed above ``min_photons``)
    photons: float = 3000.0
    min_photons: float = 500.0
    #: PSF standard deviation (pixels): localization error = psf_sigma / sqrt(photons)
    psf_sigma: float = 1.0
    #: drift amplitude (pixels): a linear part plus a slow wobble
    drift_px: float = 1.5
    pixelsize: float = 130.0
    margin: float = 3.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def true_drift(sim: SiteSimulation) -> np.ndarray:
    """The simulated drift per frame, ``(n_frames, 2)`` (dx, dy) in pixels, zero mean."""
    rng = np.random.default_rng([sim.seed, 1])
    t = np.arange(sim.n_frames) / max(sim.n_frames - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, 2)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    drift = np.empty((sim.n_frames, 2))
    for d in range(2):
        drift[:, d] = sim.drift_px * (0.7 * direction[d] * t + 0.3 * np.sin(2.2 * np.pi * t + phase[d]))
    return drift - drift.mean(axis=0)


def simulate_sites(sim: SiteSimulation) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Localizations of blinking sites with drift.

    Returns
    -------
    locs : structured array (Picasso's LQ columns), sorted by frame
    sites : (n_sites, 2) true site positions (x, y), pixels, in the drift-free frame
    drift : (n_frames, 2) the true drift added to every localization of a frame
    info : movie-info dict (Frames, Height, Width, Pixelsize)
    site_index : (n_locs,) the site of every localization
    """
    rng = np.random.default_rng([sim.seed, 0])
    m = sim.margin + sim.drift_px
    sites = np.column_stack([rng.uniform(m, sim.width - 1 - m, sim.n_sites),
                             rng.uniform(m, sim.height - 1 - m, sim.n_sites)])
    # binding events: a Poisson number per site, uniform start times, geometric durations (>= 1 frame)
    rate = sim.n_frames / (sim.bright_frames + sim.dark_frames)
    n_events = rng.poisson(rate, sim.n_sites)
    ev_site = np.repeat(np.arange(sim.n_sites), n_events)
    ev_start = rng.integers(0, sim.n_frames, len(ev_site))
    ev_len = rng.geometric(1.0 / sim.bright_frames, len(ev_site))
    site = np.repeat(ev_site, ev_len)
    offset = np.arange(len(site)) - np.repeat(np.cumsum(ev_len) - ev_len, ev_len)
    frame = np.repeat(ev_start, ev_len) + offset
    keep = frame < sim.n_frames
    key = np.unique(frame[keep].astype(np.int64) * sim.n_sites + site[keep])  # one loc per site and frame
    frame = key // sim.n_sites
    site = key % sim.n_sites
    n = len(frame)
    photons = sim.min_photons + rng.exponential(sim.photons - sim.min_photons, n)
    lp = sim.psf_sigma / np.sqrt(photons)
    drift = true_drift(sim)
    locs = np.zeros(n, locs_dtype("lq"))
    locs["frame"] = frame
    locs["x"] = sites[site, 0] + drift[frame, 0] + rng.normal(size=n) * lp
    locs["y"] = sites[site, 1] + drift[frame, 1] + rng.normal(size=n) * lp
    locs["photons"] = photons
    locs["sx"] = locs["sy"] = sim.psf_sigma
    locs["bg"] = 20.0
    locs["lpx"] = locs["lpy"] = lp
    locs["ellipticity"] = ellipticity(locs["sx"], locs["sy"])
    locs["net_gradient"] = photons
    info = {"Frames": int(sim.n_frames), "Height": int(sim.height), "Width": int(sim.width),
            "Pixelsize": float(sim.pixelsize), "Data Type": "uint16", "Byte Order": "<"}
    return locs, sites, drift, info, site


def site_residual(locs, sites, site_index) -> float:
    """RMS distance per axis (pixels) of the localizations from their true sites, after removing the one
    global offset (drift is only known up to a constant)."""
    dx = np.asarray(locs["x"], np.float64) - sites[site_index, 0]
    dy = np.asarray(locs["y"], np.float64) - sites[site_index, 1]
    dx -= dx.mean()
    dy -= dy.mean()
    return float(np.sqrt(0.5 * (np.mean(dx ** 2) + np.mean(dy ** 2))))


def drift_error(estimated: np.ndarray, truth: np.ndarray, frames=None) -> float:
    """RMS per axis (pixels) of estimated minus true drift after removing the mean difference, weighted by
    the frames given (e.g. the frames of the localizations) or over all frames."""
    e = np.asarray(estimated, np.float64)[:, :2] - np.asarray(truth, np.float64)[:, :2]
    if frames is not None:
        e = e[np.asarray(frames, np.int64)]
    e = e - e.mean(axis=0)
    return float(np.sqrt(np.mean(e ** 2)))
