"""The streaming localization pipeline: identify -> cut -> convert -> fit, chunk by chunk.

Frames are read in chunks (a background thread reads the next chunk while the current one is processed), so
memory is bounded by the chunk size, not the movie length. The Python API, the CLI and the napari widgets all
call :func:`iter_localize` or :func:`localize` with one :class:`LocalizeParameters`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .camera import adu_to_photons
from .device import select_device
from .fit_avg import fit_avg
from .fit_lq import fit_lq
from .fit_mle import fit_mle
from .identify import identify
from .locs import ellipticity, locs_dtype, sane
from .parameters import LocalizeParameters
from .spots import cut_spots

#: pixels per chunk; 8 Mpx is 512 frames of 128x128 and keeps a chunk well under a second
CHUNK_PIXELS = 8 * 1024 * 1024


class LocalizeCancelled(Exception):
    """The run was cancelled by the user; nothing was written."""


class CancelToken:
    """Thread-safe flag a caller sets to stop a running localization between chunks."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self):
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self):
        if self._event.is_set():
            raise LocalizeCancelled("localization cancelled")


@dataclass
class LocalizeStats:
    """Counts and timings of one run (seconds, wall clock)."""

    frames: int = 0
    identified: int = 0
    not_converged: int = 0
    not_sane: int = 0
    localized: int = 0
    #: fit engine that ran, "cpu" or "cuda" (set at the start of the run)
    device: str = ""
    seconds: dict = field(default_factory=lambda: {"read": 0.0, "identify": 0.0, "fit": 0.0, "write": 0.0})

    def merge(self, other: LocalizeStats):
        """Add the counts and timings of ``other`` (a block of the same run, e.g. a Dask task)."""
        for key in ("frames", "identified", "not_converged", "not_sane", "localized"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.device = self.device or other.device
        for key, value in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value

    def as_dict(self) -> dict:
        return {
            "Frames processed": int(self.frames),
            "Spots identified": int(self.identified),
            "Fits not converged (dropped)": int(self.not_converged),
            "Fits failing the sanity filter (dropped)": int(self.not_sane),
            "Localizations": int(self.localized),
            "Fit device": self.device or "cpu",
        }


@dataclass
class Chunk:
    """One processed chunk: ``locs`` for frames ``[start, stop)``, and those ``frames`` (ADU)."""

    start: int
    stop: int
    locs: np.ndarray
    frames: np.ndarray | None = None


def fit_spots_by_method(spots_photons, p: LocalizeParameters, device: str | None = None):
    """Fit photon spots with ``p.fit_method`` on ``device`` ("cpu", "cuda"; None: chosen automatically)."""
    em = p.em_gain > 1
    if device is None:
        device = select_device(p.box_size, p.fit_method)
    if p.fit_method == "mle":
        return fit_mle(spots_photons, p.convergence, p.max_iterations, em, device)
    if p.fit_method == "lq":
        return fit_lq(spots_photons, p.convergence, p.max_iterations, em, device)
    return fit_avg(spots_photons, em)


def localize_frames(frames, p: LocalizeParameters, first_frame: int = 0, stats: LocalizeStats | None = None):
    """Localize spots in an in-memory stack ``(n, height, width)`` of camera counts (ADU).

    Returns the structured localization array (Picasso fields for ``p.fit_method``), frame numbers offset by
    ``first_frame``. Fits that did not converge and rows failing Picasso's sanity filter are dropped and
    counted in ``stats``.
    """
    stats = stats if stats is not None else LocalizeStats()
    if not stats.device:
        stats.device = select_device(p.box_size, p.fit_method)
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    n, height, width = frames.shape
    t0 = time.perf_counter()
    ids = identify(frames, p.box_size, p.min_net_gradient, p.roi, first_frame)
    t1 = time.perf_counter()
    spots = cut_spots(frames, ids["frame"] - first_frame, ids["y"], ids["x"], p.box_size)
    photons = adu_to_photons(spots, p.baseline, p.sensitivity, p.em_gain)
    fit = fit_spots_by_method(photons, p, stats.device)
    t2 = time.perf_counter()
    stats.seconds["identify"] += t1 - t0
    stats.seconds["fit"] += t2 - t1
    stats.frames += n
    stats.identified += len(ids)

    locs = np.zeros(len(ids), locs_dtype(p.fit_method))
    locs["frame"] = ids["frame"]
    locs["x"] = ids["x"] + fit["dx"]
    locs["y"] = ids["y"] + fit["dy"]
    locs["net_gradient"] = ids["net_gradient"]
    for name in ("photons", "sx", "sy", "bg", "lpx", "lpy"):
        locs[name] = fit[name]
    locs["ellipticity"] = ellipticity(fit["sx"], fit["sy"])
    if p.fit_method == "mle":
        for name in ("log_likelihood", "iterations", "photons_unc", "bg_unc", "sx_unc", "sy_unc"):
            locs[name] = fit[name]
    converged = np.asarray(fit["converged"], bool)
    good_sanity = sane(locs, width, height)
    stats.not_converged += int((~converged).sum())
    stats.not_sane += int((converged & ~good_sanity).sum())
    locs = locs[converged & good_sanity]
    stats.localized += len(locs)
    return locs


def chunk_frames_for(height: int, width: int) -> int:
    return max(1, CHUNK_PIXELS // max(1, height * width))


def iter_localize(movie, p: LocalizeParameters, cancel: CancelToken | None = None,
                  chunk_frames: int | None = None, stats: LocalizeStats | None = None, localize_fn=None):
    """Localize a movie chunk by chunk, yielding a :class:`Chunk` after each.

    ``movie`` is anything of shape ``(frames, height, width)`` whose slices along the first axis give arrays
    (a :class:`~napari_localize.io.movies.Movie`, a numpy array or memmap, a dask array). Cancelling the
    token raises :class:`LocalizeCancelled` before the next chunk (within one chunk's time).
    ``localize_fn(frames, p, first_frame, stats)`` replaces :func:`localize_frames` (the spline PSF run).
    """
    n_frames, height, width = (int(s) for s in movie.shape[-3:])
    p.validate(n_frames, height, width)
    stats = stats if stats is not None else LocalizeStats()
    if not stats.device:
        # the engine is chosen (and a missing GPU reported) before the first frame is read
        stats.device = select_device(p.box_size, p.fit_method)
    start, stop = p.frame_span(n_frames)
    step = chunk_frames or chunk_frames_for(height, width)
    bounds = [(a, min(a + step, stop)) for a in range(start, stop, step)]

    def read(a, b):
        t = time.perf_counter()
        data = np.asarray(movie[a:b])
        stats.seconds["read"] += time.perf_counter() - t
        return data

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-localize-read") as reader:
        pending = reader.submit(read, *bounds[0]) if bounds else None
        for i, (a, b) in enumerate(bounds):
            if cancel is not None and cancel.cancelled:
                pending.cancel()
                raise LocalizeCancelled("localization cancelled")
            frames = pending.result()
            pending = reader.submit(read, *bounds[i + 1]) if i + 1 < len(bounds) else None
            locs = (localize_fn or localize_frames)(frames, p, a, stats)
            yield Chunk(a, b, locs, frames)
            del frames
        if cancel is not None:
            cancel.raise_if_cancelled()


def localize(movie, p: LocalizeParameters | None = None, progress=None, cancel: CancelToken | None = None,
             chunk_frames: int | None = None):
    """Localize a whole movie; return ``(locs, stats)``.

    ``progress(frames_done, frames_total)`` is called after every chunk.
    """
    p = p or LocalizeParameters()
    stats = LocalizeStats()
    n_frames = int(movie.shape[-3])
    p.validate(n_frames, int(movie.shape[-2]), int(movie.shape[-1]))
    start, stop = p.frame_span(n_frames)
    parts = []
    for chunk in iter_localize(movie, p, cancel, chunk_frames, stats):
        parts.append(chunk.locs)
        if progress is not None:
            progress(chunk.stop - start, stop - start)
    locs = np.concatenate(parts) if parts else np.zeros(0, locs_dtype(p.fit_method))
    return locs, stats
